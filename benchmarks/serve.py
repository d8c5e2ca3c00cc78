"""`lorabudget serve` against a per-request `transformers.pipeline` server, side by side on loopback.

Both servers run the same trained run on this machine's CPU, with the same torch thread count, as
separate processes on 127.0.0.1:

- **lorabudget serve**: `lorabudget serve RUN` (dynamic batching: texts of concurrent requests share
  forward passes on one inference thread).
- **pipeline per request** (the baseline): the run exported with `lorabudget export RUN --format hf`
  and loaded with `pipeline("text-classification", ...)` in a minimal FastAPI app whose (sync) route
  runs `pipe(texts)` for each request: no batching across requests (FastAPI runs sync routes on its
  thread pool, so concurrent requests run concurrent forward passes).

For each number of concurrent clients (1, 8 and 32 by default) each server gets the same requests
(one text each, drawn in order from the data file), at most `--requests` of them and for at most
`--max-seconds`, from an httpx client in this process; the two servers take turns (the order
alternates between levels) and only one is under load at a time. Reported: requests/s, p50 and p99
latency (ms, client side), errors, and how often the two servers gave the same label.
The load generator shares the CPU with the servers: on a 2-core machine that costs both sides.

Typical use (the real MiniLM preset, texts the run did not train on):

    python benchmarks/serve.py runs/minilm-cpu --data held_out.csv --out docs/serve-bench.md

Smoke run: `python benchmarks/serve.py RUN --data tiny.csv --requests 20 --concurrency 1,4`.

Usage: python benchmarks/serve.py RUN [--data CSV] [--requests N] [--max-seconds S] [--concurrency LIST]
                                      [--threads T] [--max-batch B] [--max-wait-ms MS] [--precision P] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, lorabudget, machine  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def read_texts(path: Path, limit: int) -> list[str]:
    """The first column of a CSV (a header row named text or sentence is skipped)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if rows and rows[0][0].strip().lower() in ("text", "sentence"):
        rows = rows[1:]
    return [r[0] for r in rows[-limit:]]  # the last rows: what benchmarks hold out of train_5k.csv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pipeline_server(folder: str, port: int, threads: int) -> None:
    """The baseline: a minimal FastAPI app running the exported model's pipeline once per request."""
    import json

    import torch
    import uvicorn
    from fastapi import Body, FastAPI
    from transformers import pipeline

    torch.set_num_threads(threads)
    meta = json.loads((Path(folder) / "lorabudget_export.json").read_text())
    pipe = pipeline(
        "text-classification",
        model=folder,
        trust_remote_code=bool(meta.get("trust_remote_code")),
        truncation=True,
        device="cpu",
    )
    app = FastAPI()

    @app.get("/v1/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/classify")
    def classify(request: dict = Body(...)):  # noqa: B008 - sync: FastAPI runs it on its thread pool
        return {"results": [{"label": r["label"], "probability": r["score"]} for r in pipe(request["texts"])]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start(command: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "w") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env)


def wait_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit(f"server at {url} did not come up in {timeout:.0f}s")


async def load(url: str, texts: list[str], clients: int, requests: int, max_seconds: float) -> dict:
    """``clients`` concurrent clients, each sending one request after the other (one text each) until
    ``requests`` were sent or ``max_seconds`` passed."""
    import httpx

    latencies: list[float] = []
    labels: dict[int, str] = {}
    errors = 0
    next_index = 0
    stop_at = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index, errors
        while next_index < requests and time.perf_counter() < stop_at:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            try:
                response = await http.post("/v1/classify", json={"texts": [texts[i % len(texts)]]})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            if ok:
                labels[i] = response.json()["results"][0]["label"]
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await http.post("/v1/classify", json={"texts": texts[:1]})  # warm-up, not timed
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
        "labels": labels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="run directory")
    parser.add_argument(
        "--data", type=Path, default=TRAIN_5K, help="CSV of texts (first column; the last rows are used)"
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per server and concurrency level")
    parser.add_argument("--max-seconds", type=float, default=60, help="time limit per server and concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="numbers of concurrent clients")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of each server")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--precision", default="fp32", help="lorabudget serve's precision (the pipeline runs fp32)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--baseline-server", help=argparse.SUPPRESS)  # internal: run the pipeline server
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        pipeline_server(args.baseline_server, args.port, args.threads)
        return
    if not args.run:
        parser.error("name the run directory to serve")
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (pass --data with a CSV of texts)")
        return
    if args.requests < 1 or args.max_seconds <= 0:
        parser.error("--requests must be at least 1 and --max-seconds positive")
    levels = [int(c) for c in args.concurrency.split(",")]
    texts = read_texts(args.data, max(args.requests, 50))

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        hf_dir = work / "hf"
        subprocess.run(lorabudget("export", args.run, "--format", "hf", "--output", str(hf_dir)), check=True,
                       env=dict(os.environ, PYTHONPATH=str(SRC)))  # fmt: skip
        servers = {}
        port = free_port()
        servers["lorabudget serve"] = (
            start(
                lorabudget("serve", args.run, "--port", str(port), "--threads", str(args.threads),
                           "--precision", args.precision, "--max-batch", str(args.max_batch),
                           "--max-wait-ms", str(args.max_wait_ms)),
                work / "serve.log", args.threads,
            ),
            f"http://127.0.0.1:{port}",
            work / "serve.log",
        )  # fmt: skip
        port = free_port()
        servers["pipeline per request"] = (
            start(
                [sys.executable, __file__, "--baseline-server", str(hf_dir), "--port", str(port),
                 "--threads", str(args.threads)],
                work / "pipeline.log", args.threads,
            ),
            f"http://127.0.0.1:{port}",
            work / "pipeline.log",
        )  # fmt: skip
        try:
            for process, url, log in servers.values():
                wait_up(url, process, log)
            results = []
            for n, clients in enumerate(levels):
                order = list(servers) if n % 2 == 0 else list(reversed(servers))
                measured = {}
                for name in order:
                    _, url, _ = servers[name]
                    measured[name] = asyncio.run(load(url, texts, clients, args.requests, args.max_seconds))
                ours, theirs = measured["lorabudget serve"]["labels"], measured["pipeline per request"]["labels"]
                common = sorted(set(ours) & set(theirs))
                agree = sum(ours[i] == theirs[i] for i in common) / len(common) if common else float("nan")
                for name in servers:
                    results.append((clients, name, measured[name], agree))
        finally:
            for process, _, _ in servers.values():
                process.terminate()
            for process, _, _ in servers.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()

    lines = [
        "# lorabudget serve vs a per-request pipeline server",
        "",
        f"Machine: {machine()}",
        f"Run: {args.run}; texts: last rows of {args.data}; one text per request; loopback (127.0.0.1);",
        f"each server: {args.threads} torch threads; lorabudget serve: --max-batch {args.max_batch} "
        f"--max-wait-ms {args.max_wait_ms:g} --precision {args.precision}; pipeline: fp32, no batching;",
        f"at most {args.requests} requests or {args.max_seconds:g} s per server and level.",
        "",
        "| clients | server | requests | requests/s | p50 ms | p99 ms | errors | same label |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, name, m, agree in results:
        lines.append(
            f"| {clients} | {name} | {m['requests']} | {m['rps']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} | "
            f"{m['errors']} | {agree:.1%} |"
        )
    speedups = []
    for clients in levels:
        by_name = {name: m for c, name, m, _ in results if c == clients}
        speedups.append(
            f"{clients} clients: {by_name['lorabudget serve']['rps'] / by_name['pipeline per request']['rps']:.2f}x"
        )
    lines += ["", "Requests/s of lorabudget serve over the pipeline server: " + ", ".join(speedups) + "."]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
