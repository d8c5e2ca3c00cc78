"""`lorabudget serve`: the real server (uvicorn, loopback, a free port) on a tiny trained run.

Concurrent clients get `lorabudget predict`'s labels, requests over the limits get a JSON 413/422 and the
server keeps serving, the info routes and the OpenAPI docs answer, and the page works in a real headless
Chromium. The batcher is also checked alone with a fake model (batch sizes, order, splitting, errors).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import lorabudget
from lorabudget.cli import main

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SRC = Path(lorabudget.__file__).resolve().parents[1]
ROOT = SRC.parent
CHROMIUM = Path("/usr/bin/chromium")
MAX_BATCH = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen | None, log: Path | None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server at {url} did not come up in {timeout:.0f}s")


def _predicted(run: Path, texts_csv: Path, out: Path, *engine: str) -> tuple[list[int], np.ndarray]:
    assert main(["predict", str(run), "--input", str(texts_csv), "--output", str(out), "--probabilities",
                 "--precision", "fp32", "--no-report", *engine]) == 0  # fmt: skip
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [int(r["Label"]) for r in rows]
    probs = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])
    return labels, probs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_config, data_dir):
    """A tiny run trained through the CLI, its texts, and `lorabudget predict`'s labels for them."""
    tmp = tmp_path_factory.mktemp("serve")
    values = make_config(
        tmp / "cache",
        name="tiny-serve",
        head={"type": "linear", "pooling": "mean"},
        budget={"max_trainable_params": 5000},
        training={"epochs": 3, "learning_rate": 2e-2, "log_every": 5},
    )
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    run = tmp / "tiny-serve"  # /v1/model and the page name a run by its folder
    assert main(["train", str(cfg), "--output", str(run), "--no-report"]) == 0
    texts_csv = data_dir / "unlabelled.csv"
    with open(texts_csv, newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    labels, probs = _predicted(run, texts_csv, tmp / "pred.csv")
    return {"run": run, "texts": texts, "texts_csv": texts_csv, "labels": labels, "probs": probs, "tmp": tmp}


@pytest.fixture(scope="module")
def server(trained):
    """`lorabudget serve RUN` as its own process on 127.0.0.1 and a free port."""
    port = _free_port()
    log = trained["tmp"] / "server.log"
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "lorabudget.cli", "serve", str(trained["run"]), "--port", str(port),
             "--precision", "fp32", "--threads", "1", "--max-batch", str(MAX_BATCH), "--max-wait-ms", "20"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _classify(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/classify", json=body, timeout=60, **kwargs)


def test_concurrent_clients_get_predicts_labels_in_shared_batches(server, trained):
    texts, names = trained["texts"], ["World", "Sports", "Business", "Sci/Tech"]
    # 200 requests at once: one text each, every fifth request three texts (so requests straddle batches).
    requests = [[i % len(texts)] if i % 5 else [i % len(texts), (i + 1) % len(texts), (i + 7) % len(texts)]
                for i in range(200)]  # fmt: skip
    before = httpx.get(server + "/v1/health").json()

    async def send_all():
        async with httpx.AsyncClient(base_url=server, timeout=120, limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(
                *(client.post("/v1/classify", json={"texts": [texts[j] for j in rows]}) for rows in requests)
            )

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(requests)
    for rows, response in zip(requests, responses):
        results = response.json()["results"]
        assert len(results) == len(rows)
        for j, result in zip(rows, results):
            assert result["label_id"] == trained["labels"][j]
            assert result["label"] == names[trained["labels"][j]]
            assert [p["label"] for p in result["probabilities"]] == names
            got = [p["probability"] for p in result["probabilities"]]
            np.testing.assert_allclose(got, trained["probs"][j], atol=1e-4)
            assert result["probability"] == pytest.approx(max(got))
    after = httpx.get(server + "/v1/health").json()
    sent = sum(len(rows) for rows in requests)
    assert after["texts"] - before["texts"] == sent
    batches = after["batches"] - before["batches"]
    # Requests shared forward passes: on average a batch held more texts than the largest request has,
    # which only batches of texts from several requests can do.
    assert sent / batches > max(len(rows) for rows in requests), (sent, batches)
    assert after["largest_batch"] <= MAX_BATCH
    assert after["queued_texts"] == 0


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"texts": ["word"] * 65}, 413, "65 texts in one request; at most 64"),
        ({"texts": ["ok", "x" * 10_001]}, 413, "text 1 has 10,001 characters; at most 10,000"),
        ({"texts": []}, 422, '"texts" is empty'),
        ({"texts": ["fine", "  "]}, 422, "text 1 is empty"),
        ({"texts": "a string, not a list"}, 422, "invalid request at texts"),
        ({"texts": [3, 4]}, 422, "invalid request at texts.0"),
        ({}, 422, 'send exactly one of "texts"'),
        ({"texts": ["a"], "pairs": [["a", "b"]]}, 422, 'send exactly one of "texts"'),
        ({"pairs": [["the market", "stocks rose"]]}, 422, "trained on single texts, not pairs"),
    ],
)
def test_bad_and_oversized_requests_get_json_errors(server, body, status, message):
    response = _classify(server, body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["error"]
    assert _classify(server, {"texts": ["the team won the match"]}).status_code == 200  # still serving


def test_oversized_bodies_get_413_and_the_server_keeps_serving(server):
    big = json.dumps({"texts": ["market " * 1000] * 200}).encode()  # about 1.4 MB, over the 1 MiB limit
    assert len(big) > 1 << 20
    response = httpx.post(server + "/v1/classify", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "request body over 1,048,576 bytes" in response.json()["error"]

    def chunks():  # no Content-Length: counted while it streams in
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    response = httpx.post(server + "/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "error" in response.json()
    response = httpx.post(server + "/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "invalid request" in response.json()["error"]
    assert _classify(server, {"texts": ["stocks and shares"]}).status_code == 200


def test_health_model_and_docs(server, trained):
    health = httpx.get(server + "/v1/health").json()
    assert health["status"] == "ok" and health["queued_texts"] >= 0
    info = httpx.get(server + "/v1/model").json()
    summary = json.loads((trained["run"] / "summary.json").read_text())
    assert info["name"] == "tiny-serve" and info["method"] == "lora"
    assert info["budget"] == 5000 and info["trainable_params"] == summary["trainable_params"] > 0
    assert info["classes"] == ["World", "Sports", "Business", "Sci/Tech"]
    validation = info["validation"]
    assert validation["accuracy"] == pytest.approx(summary["validation_accuracy"]) and validation["rows"] == 40
    low, high = validation["accuracy_ci95"]
    assert low <= validation["accuracy"] <= high
    assert info["precision"] == "fp32" and info["engine"] == "torch"
    assert info["batching"] == {"max_batch": MAX_BATCH, "max_wait_ms": 20.0}
    assert info["limits"]["texts_per_request"] == 64
    docs = httpx.get(server + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn" not in docs.text and "/docs-static/swagger-ui-bundle.js" in docs.text  # renders offline
    assert httpx.get(server + "/docs-static/swagger-ui-bundle.js").status_code == 200
    schema = httpx.get(server + "/openapi.json").json()
    assert {"/v1/classify", "/v1/health", "/v1/model"} <= set(schema["paths"])
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "tiny-serve" in page.text and "lora" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_page_in_headless_chromium(server, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.goto(server + "/")
            assert "tiny-serve" in page.locator("h1").inner_text()
            assert "lora" in page.locator(".facts").inner_text()
            typed = ["the team won the match and the coach praised the league", "stocks and shares rallied"]
            page.fill("#texts", "\n".join(typed))
            page.click("#classify")
            page.wait_for_selector(".result", timeout=30_000)
            cards = page.locator(".result")
            assert cards.count() == 2
            first = cards.nth(0)
            expected = _classify(server, {"texts": [typed[0]]}).json()["results"][0]["label"]
            assert first.locator(".label .top").inner_text() == expected
            assert first.locator(".bar").count() == 4
            widths = [
                float(w.rstrip("%")) for w in first.locator(".fill").evaluate_all("e => e.map(x => x.style.width)")
            ]
            assert sum(widths) == pytest.approx(100, abs=0.5)
            assert "texts in" in page.locator("#status").inner_text()
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5000
            if os.environ.get("LORABUDGET_SERVE_SCREENSHOT"):  # how docs/serve.png was made (once, by hand)
                shutil.copy(shot, os.environ["LORABUDGET_SERVE_SCREENSHOT"])
        finally:
            browser.close()


def test_onnx_engine_in_process_server(trained):
    """`--engine onnx` exports RUN/onnx first and serves `predict --engine onnx`'s labels."""
    pytest.importorskip("onnxruntime")
    import uvicorn

    from lorabudget.serve.app import ServeSettings, create_app, load_for_serving

    run = load_for_serving(trained["run"], engine="onnx", threads=1)
    assert run.engine == "onnx" and (trained["run"] / "onnx").is_dir()
    labels, _ = _predicted(trained["run"], trained["texts_csv"], trained["tmp"] / "onnx.csv", "--engine", "onnx")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(run, ServeSettings(max_batch=8)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_until_up(url, None, None, timeout=30)
        assert httpx.get(url + "/v1/model").json()["engine"] == "onnx"
        texts = trained["texts"][:20]
        response = _classify(url, {"texts": texts})
        assert response.status_code == 200
        assert [r["label_id"] for r in response.json()["results"]] == labels[:20]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_bf16_weights_are_cast_once_and_give_predicts_logits(trained):
    import torch

    from lorabudget.inference.runs import load_run
    from lorabudget.serve.app import load_for_serving

    served = load_for_serving(trained["run"], precision="bf16", threads=1)
    assert served.precision == "bf16"
    assert {p.dtype for p in served.model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    reference = load_run(trained["run"], threads=1, precision="bf16")  # casts per call, as predict does
    texts = trained["texts"][:24]
    np.testing.assert_array_equal(served.logits(texts, batch_size=8), reference.logits(texts, batch_size=8))
    assert {p.dtype for p in reference.model.parameters() if p.is_floating_point()} == {torch.float32}


def test_serve_refuses_a_missing_or_corrupted_run_before_listening(trained, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--port", str(_free_port())]) == 2
    assert "run directory not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(trained["run"], broken, ignore=shutil.ignore_patterns("onnx"))
    weights = broken / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["serve", str(broken), "--port", str(_free_port())]) == 2
    assert "sha256 does not match" in capsys.readouterr().err
    assert main(["serve", str(trained["run"]), "--max-batch", "0"]) == 2


# ---- the batcher alone, with a fake model whose logits say which text they belong to


def _fake_infer(sizes: list[int]):
    def infer(texts: list[str]) -> np.ndarray:
        sizes.append(len(texts))
        time.sleep(0.01)
        if "boom" in texts:
            raise RuntimeError("the model failed")
        return np.array([[float(t.split("-")[1]), 0.0] for t in texts], dtype=np.float32)

    return infer


def test_batcher_splits_and_orders_and_respects_max_batch():
    from lorabudget.serve.batcher import DynamicBatcher

    sizes: list[int] = []

    async def scenario():
        batcher = DynamicBatcher(_fake_infer(sizes), max_batch=8, max_wait_ms=50)
        await batcher.start()
        try:
            requests = [[f"t-{r * 100 + k}" for k in range(1 + r % 4)] for r in range(12)] + [
                [f"t-{9000 + k}" for k in range(19)]  # larger than a batch: split across three
            ]
            answers = await asyncio.gather(*(batcher.logits(texts) for texts in requests))
            for texts, logits in zip(requests, answers):
                assert logits[:, 0].tolist() == [float(t.split("-")[1]) for t in texts]
            return batcher.stats
        finally:
            await batcher.stop()

    stats = asyncio.run(scenario())
    total = sum(1 + r % 4 for r in range(12)) + 19
    assert sum(sizes) == stats.texts == total
    assert max(sizes) == 8 and all(0 < s <= 8 for s in sizes)
    assert len(sizes) == -(-total // 8)  # every batch but the last one full: all requests were waiting


def test_batcher_sends_a_failed_batch_error_to_its_requests_only():
    from lorabudget.serve.batcher import DynamicBatcher, QueueFull

    async def scenario():
        batcher = DynamicBatcher(_fake_infer([]), max_batch=4, max_wait_ms=0, max_queued_texts=10)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="the model failed"):
                await batcher.logits(["boom"])
            assert (await batcher.logits(["t-5"]))[0, 0] == 5.0  # the next batch runs
            with pytest.raises(QueueFull):
                await batcher.logits([f"t-{i}" for i in range(11)])
        finally:
            await batcher.stop()

    asyncio.run(scenario())
