"""`lorabudget serve` at its edges: a text the tokenizer rejects, clients that leave, bodies that never end,
too many open requests, a taken port, errors of every route in one JSON shape, the Hugging Face request
convention with "top_k", and what /v1/model tells about the run.

Servers run in this process (uvicorn in a thread, on 127.0.0.1 and a port of our own); load is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import yaml

from lorabudget.cli import main
from lorabudget.errors import LorabudgetError
from lorabudget.rundir.layout import RunDir

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from lorabudget.serve.app import ServeSettings, load_for_serving, serve, server_config  # noqa: E402
from lorabudget.serve.connections import MAX_HEADER_BYTES  # noqa: E402

NAMES = ["World", "Sports", "Business", "Sci/Tech"]
TEXTS = [
    "the team won the match and the coach praised the league",
    "stocks and shares rallied after the earnings report",
    "the new phone chip uses less power",
    "the minister met the president for talks",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, make_config):
    """A tiny trained run in a folder named differently from its config's `name`, with two evaluations
    that say whether they were held out and the training's validation record, which does not."""
    tmp = tmp_path_factory.mktemp("serve-edges")
    values = make_config(tmp / "cache", name="tiny-edges", budget={"max_trainable_params": 5000})
    values["training"].update(epochs=1)
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(values))
    run = tmp / "edge-run"
    assert main(["train", str(tmp / "cfg.yaml"), "--output", str(run), "--no-report"]) == 0
    files = RunDir(run)
    files.write_eval({"accuracy": 0.9, "n": 12, "held_out": False}, str(tmp / "private" / "seen.csv"), "evaluate")
    time.sleep(1.1)  # records are ordered by the second they were written
    files.write_eval({"accuracy": 0.5, "n": 8, "held_out": True}, str(tmp / "private" / "fresh.csv"), "evaluate")
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_for_serving(run_dir, precision="fp32", threads=1)


class SlowRun:
    """A loaded run whose forward pass takes ``per_text_s`` per text, and fails on the text "boom"."""

    def __init__(self, run, per_text_s: float = 0.0):
        self._run = run
        self.per_text_s = per_text_s
        self.texts_computed = 0

    def __getattr__(self, name):
        return getattr(self._run, name)

    def logits(self, texts, **kwargs):
        if "boom" in texts:
            raise RuntimeError("the model cannot\n take boom")  # a library message over two lines
        time.sleep(self.per_text_s * len(texts))
        self.texts_computed += len(texts)
        return self._run.logits(texts, **kwargs)


@contextmanager
def serving(run, **settings):
    """The app on uvicorn in a thread, on 127.0.0.1 and a port bound here; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(server_config(run, ServeSettings(**settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _raw_request(url: str, body: bytes, content_length: int | None = None) -> socket.socket:
    """A POST /v1/classify sent over a socket of our own; the body may be shorter than announced."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if content_length is None else content_length}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _one_line_error(response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    return body["error"]


def test_a_lone_surrogate_or_a_failing_text_fails_its_own_request_only(loaded):
    """50 requests at once, one of them `{"texts": ["\\ud800"]}` (valid JSON; the tokenizer rejects it) and
    one a text the model fails on: those two fail alone, with one-line JSON errors, the 48 others answer."""
    slow = SlowRun(loaded, per_text_s=0.005)  # the queue builds up: the bad requests share batches
    bodies = [json.dumps({"texts": [TEXTS[i % len(TEXTS)]]}).encode() for i in range(50)]
    bodies[7] = b'{"texts": ["\\ud800"]}'
    bodies[30] = b'{"texts": ["boom"]}'
    with serving(slow, max_batch=16, max_wait_ms=20) as url:

        async def send_all():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                headers = {"content-type": "application/json"}
                return await asyncio.gather(*(client.post("/v1/classify", content=b, headers=headers) for b in bodies))

        responses = asyncio.run(send_all())
        statuses = [r.status_code for r in responses]
        assert statuses == [422 if i == 7 else 500 if i == 30 else 200 for i in range(50)]
        assert "text 0 is not valid Unicode: a lone surrogate U+D800 at character 0" in _one_line_error(responses[7])
        assert "the model failed on this request: the model cannot take boom" in _one_line_error(responses[30])
        for i, response in enumerate(responses):
            if statuses[i] == 200:
                assert response.json()["results"][0]["label"] in NAMES
        assert httpx.get(url + "/v1/health").json()["largest_batch"] > 1  # requests did share batches


def test_a_failed_batch_is_rerun_text_by_text(loaded):
    """The real model on `"\\ud800"` past the request checks: only that request fails; the seven texts that
    shared its batch get the logits they get alone."""
    from lorabudget.serve.app import _forward
    from lorabudget.serve.batcher import DynamicBatcher

    async def scenario():
        batcher = DynamicBatcher(_forward(loaded, 8), max_batch=8, max_wait_ms=200)
        await batcher.start()
        try:
            requests = [[TEXTS[i % 4] + f" {i}"] for i in range(7)] + [["\ud800"]]
            answers = await asyncio.gather(*(batcher.logits(r) for r in requests), return_exceptions=True)
            return requests, answers, batcher.stats
        finally:
            await batcher.stop()

    requests, answers, stats = asyncio.run(scenario())
    assert isinstance(answers[7], Exception)
    for texts, answer in zip(requests[:7], answers[:7]):
        assert isinstance(answer, np.ndarray), answer
        np.testing.assert_allclose(answer, loaded.logits(texts), atol=1e-5)
    assert stats.largest_batch == 8  # all eight were in the batch that failed


def test_texts_of_departed_clients_are_not_computed(loaded):
    """30 clients send 64 texts each and leave: a one-text request after them answers at once, and the
    model ran only what it had started (the slow model would take 38 s for all 1,920 texts)."""
    slow = SlowRun(loaded, per_text_s=0.02)
    with serving(slow, max_batch=16) as url:
        body = json.dumps({"texts": [f"{TEXTS[i % 4]} number {i}" for i in range(64)]}).encode()
        clients = [_raw_request(url, body) for _ in range(30)]
        time.sleep(0.3)
        for sock in clients:
            sock.close()
        started = time.monotonic()
        response = httpx.post(url + "/v1/classify", json={"texts": [TEXTS[0]]}, timeout=60)
        waited = time.monotonic() - started
        assert response.status_code == 200
        assert waited < 8, f"a new request waited {waited:.1f} s behind departed clients"
        assert slow.texts_computed < 30 * 64 // 4
        deadline = time.monotonic() + 10
        while httpx.get(url + "/v1/health").json()["queued_texts"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(url + "/v1/health").json()["queued_texts"] == 0


def test_a_body_that_never_completes_gets_408_and_its_connection_closed(loaded):
    with serving(loaded, body_timeout_s=1.0) as url:
        sock = _raw_request(url, b'{"texts": ["th', content_length=1000)
        started = time.monotonic()
        answer = _read_all(sock)  # returns when the server closes the connection
        elapsed = time.monotonic() - started
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.8 < elapsed < 10
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body == {"error": "request body not complete within 1 s (14 bytes came)"}
        assert httpx.post(url + "/v1/classify", json={"texts": [TEXTS[1]]}).status_code == 200


def _one_response(sock: socket.socket) -> bytes:
    """One whole response (it has a Content-Length), the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _dripped_until_closed(sock: socket.socket, limit_s: float) -> float | None:
    """Send one more header byte every 0.2 s (never a complete head, never idle long) until the server
    closes the connection; the seconds that took, or None when it was still open after ``limit_s``."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            if select.select([sock], [], [], 0.2)[0]:
                assert sock.recv(1024) == b"", "an answer to a request whose headers never ended"
                return time.monotonic() - started
            sock.sendall(b"a")
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None


def test_a_client_that_never_finishes_its_headers_is_disconnected(loaded):
    """Slowloris: a request head sent a byte at a time and never finished is closed within
    `header_timeout_s`, on a new connection and on a kept-alive one after its first answer (uvicorn's own
    keep-alive timer starts only after a response, and every byte received stops it)."""
    with serving(loaded, header_timeout_s=1.0) as url:
        host, port = url.removeprefix("http://").split(":")
        fresh = socket.create_connection((host, int(port)), timeout=30)
        fresh.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elapsed = _dripped_until_closed(fresh, limit_s=8)
        fresh.close()
        assert elapsed is not None and 0.8 < elapsed < 5, elapsed
        kept = socket.create_connection((host, int(port)), timeout=30)
        kept.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _one_response(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elapsed = _dripped_until_closed(kept, limit_s=8)
        kept.close()
        assert elapsed is not None and elapsed < 5, elapsed
        # A head over the header limit is refused at once; the server keeps serving.
        big = socket.create_connection((host, int(port)), timeout=30)
        big.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1))
        assert _read_all(big).startswith(b"HTTP/1.1 400")
        big.close()
        assert httpx.get(url + "/v1/health").status_code == 200


def test_requests_over_max_connections_get_503_until_slots_free(loaded):
    with serving(loaded, max_connections=3, body_timeout_s=60) as url:
        stalled = [_raw_request(url, b'{"texts": [', content_length=500) for _ in range(3)]
        try:
            deadline = time.monotonic() + 10  # until the three are reading their bodies
            while (response := httpx.get(url + "/v1/health", timeout=10)).status_code == 200:
                assert time.monotonic() < deadline, "three stalled requests did not fill three slots"
                time.sleep(0.1)
            assert response.status_code == 503
            assert "server busy: 3 requests open (at most 3)" in _one_line_error(response)
        finally:
            for sock in stalled:
                sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/v1/health").status_code != 200:
            assert time.monotonic() < deadline, "slots were not freed when the stalled clients left"
            time.sleep(0.1)


def test_a_taken_port_is_one_line_exit_2(run_dir, loaded, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(LorabudgetError, match=f"cannot listen on 127.0.0.1:{port}: "):
            serve(loaded, "127.0.0.1", port, ServeSettings())
        assert main(["serve", str(run_dir), "--port", str(port), "--precision", "fp32", "--threads", "1"]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # (after the weights' loading bar)
        assert last == f"lorabudget serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    finally:
        taken.close()


@pytest.mark.parametrize(
    "method, path, kwargs, status, message",
    [
        ("POST", "/v1/classify", {"content": b'{"texts": ["a"]}'}, 415, "no Content-Type"),
        ("POST", "/v1/classify", {"content": b"texts=a", "headers": {"content-type": "text/plain"}}, 415,
         "Content-Type 'text/plain' is not JSON"),
        ("GET", "/v1/nothing-here", {}, 404, "no route GET /v1/nothing-here"),
        ("GET", "/v1/classify", {}, 405, "method not allowed: GET /v1/classify (allowed: POST)"),
        ("POST", "/v1/model", {"json": {}}, 405, "method not allowed: POST /v1/model"),
        ("POST", "/v1/classify", {"json": {"texts": ["a"], "foo": 1}}, 422, 'unknown field "foo"'),
        ("POST", "/v1/classify", {"json": {"inputs": "a", "top_k": 0}}, 422, "invalid request at top_k"),
        ("POST", "/v1/classify", {"json": {"inputs": "a", "texts": ["b"]}}, 422, 'send exactly one of "texts"'),
    ],
)  # fmt: skip
def test_every_error_is_one_json_line(loaded, method, path, kwargs, status, message):
    with serving(loaded) as url:
        response = httpx.request(method, url + path, timeout=30, **kwargs)
        if "content" in kwargs and "headers" not in kwargs:
            assert "content-type" not in response.request.headers
        assert response.status_code == status
        assert message in _one_line_error(response)
        assert httpx.post(url + "/v1/classify", json={"texts": [TEXTS[2]]}).status_code == 200


def test_inputs_and_top_k(loaded):
    with serving(loaded) as url:

        def results(body):
            response = httpx.post(url + "/v1/classify", json=body, timeout=30)
            assert response.status_code == 200, response.text
            return response.json()["results"]

        # Compared with requests of the same texts, so padding (and so every float) is the same.
        assert results({"inputs": TEXTS[0]}) == results({"texts": TEXTS[:1]})
        plain = results({"texts": TEXTS[:2]})
        assert "top_k" not in plain[0]
        assert results({"inputs": TEXTS[:2]}) == plain
        for result, base in zip(results({"inputs": TEXTS[:2], "top_k": 2}), plain):
            top = result.pop("top_k")
            assert result == base
            probs = {p["label"]: p["probability"] for p in base["probabilities"]}
            assert [t["label"] for t in top] == sorted(probs, key=probs.get, reverse=True)[:2]
            assert top[0] == {"label": base["label"], "label_id": base["label_id"], "probability": base["probability"]}
            assert [t["probability"] for t in top] == [probs[t["label"]] for t in top]
        everything = results({"texts": [TEXTS[3]], "top_k": 10})[0]["top_k"]
        assert sorted(t["label_id"] for t in everything) == [0, 1, 2, 3]
        response = httpx.post(url + "/v1/classify", json={"texts": ["a"], "foo": 1, "bar": 2})
        assert 'unknown fields "foo", "bar"' in _one_line_error(response)


def test_model_info_names_the_folder_and_marks_held_out(loaded, run_dir):
    with serving(loaded) as url:
        response = httpx.get(url + "/v1/model")
        page = httpx.get(url + "/").text
    info = response.json()
    assert info["name"] == "edge-run"  # the folder, not the config's "tiny-edges"
    assert str(run_dir.parent) not in response.text and "run_dir" not in info
    evaluations = {e["data"]: e for e in info["evaluations"]}
    assert evaluations["seen.csv"]["held_out"] is False and evaluations["seen.csv"]["accuracy"] == 0.9
    assert evaluations["fresh.csv"]["held_out"] is True
    assert info["validation"]["kind"] == "validation" and info["validation"]["held_out"] is None  # not recorded
    assert "<h1>edge-run</h1>" in page and str(run_dir.parent) not in page


def test_settings_are_checked():
    bad_values = ({"body_timeout_s": 0}, {"header_timeout_s": 0}, {"max_connections": 0}, {"max_batch": 0})
    for bad in (*bad_values, {"max_wait_ms": float("nan")}):
        with pytest.raises(LorabudgetError, match=f"serve setting {next(iter(bad))} must be"):
            ServeSettings(**bad)
    assert ServeSettings().body_timeout_s == 30 and ServeSettings().max_connections == 256
    assert ServeSettings().header_timeout_s == 10
