"""The HTTP API of ``lorabudget serve``: FastAPI routes over a loaded run and a :class:`DynamicBatcher`.

    POST /v1/classify   {"texts": [...]} (or {"inputs": text or [...]}) -> per text: label, label id, one
                        probability per class; with "top_k": k, the k most probable classes too. A
                        multi-label run answers per text its labels (a list, maybe empty), and per class
                        its sigmoid score, threshold and whether it is predicted; "threshold": T in a
                        request replaces the run's per-class thresholds for that request
    GET  /v1/health     liveness, queue length, batches run
    GET  /v1/model      run name, method, budget, trainable parameters, classes, evaluations
    GET  /              a page to try the model
    GET  /docs          the OpenAPI documentation (FastAPI's)

Every error is a JSON object ``{"error": "<one line>"}`` with its status: 404 and 405 for a route or method
that does not exist, 408 for a body not complete in time, 413 for a body, a text count or a text length over
the limits, 415 for a body that is not sent as JSON, 422 for a malformed request (unknown fields, a text
that is not valid Unicode), 503 while the queue is full or too many requests are open, 500 for a text the
model fails on (that request only: a failed batch is run again text by text). A request whose client
disconnected before its answer ends with 499 in the log; its texts not yet in a batch are never computed.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from lorabudget.errors import LorabudgetError
from lorabudget.inference.decisions import check_threshold, is_multi_label, label_sets, run_thresholds
from lorabudget.inference.runs import LoadedRun
from lorabudget.metrics import softmax
from lorabudget.report.modelcard import base_model_name
from lorabudget.rundir.layout import RunDir
from lorabudget.serve.batcher import DynamicBatcher, QueueFull
from lorabudget.serve.connections import KEEP_ALIVE_S, MAX_HEADER_BYTES, header_deadline_protocol
from lorabudget.serve.guards import Guard, short, until_disconnected
from lorabudget.serve.page import render_page
from lorabudget.serve.protocol import (
    ApiError,
    ClassifyRequest,
    ClassifyResponse,
    check_request,
    check_threshold_option,
    multilabel_results,
    results,
    validation_message,
)

CLASSIFY = "/v1/classify"


@dataclass(frozen=True)
class ServeSettings:
    """The server's batching and limits. Out-of-range values raise LorabudgetError (one line)."""

    max_batch: int = 32  # texts per forward pass
    # How long the oldest waiting text may wait for others to share its batch. 0: a batch is what queued up
    # while the model ran the previous one (on a loaded 2-core CPU, 5 ms cost a lone client 20 ms, see docs/guide/serve.md).
    max_wait_ms: float = 0.0
    max_texts: int = 64  # texts per request
    max_chars: int = 10_000  # characters per text (the model reads max_length tokens of it anyway)
    max_body_bytes: int = 1 << 20  # request body
    max_queued_texts: int = 4096  # texts waiting for the inference thread before requests get 503
    # Seconds a request body may take to arrive in full; then 408 and the connection is closed, so a client
    # that never finishes its body cannot hold a request slot for ever.
    body_timeout_s: float = 30.0
    # Seconds a request's headers may take to arrive in full, on a new connection or after an answer; then the
    # connection is closed (serve/connections.py), so a client that never ends them cannot hold it for ever.
    header_timeout_s: float = 10.0
    # Requests open at once, each on its own connection (reading a body, waiting for the model, answering);
    # one more gets 503 at once. It bounds what slow or stalled clients can hold.
    max_connections: int = 256
    # A multi-label run's one threshold for every class (``serve --threshold``); None: the run's own per class.
    threshold: Optional[float] = None

    def __post_init__(self) -> None:
        at_least_one = ("max_batch", "max_texts", "max_chars", "max_body_bytes", "max_queued_texts", "max_connections")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in at_least_one and not (isinstance(value, int) and value >= 1):
                raise LorabudgetError(f"serve setting {field.name} must be a whole number of at least 1, not {value!r}")
        if not 0 <= self.max_wait_ms < float("inf"):
            raise LorabudgetError(f"serve setting max_wait_ms must be 0 or more, not {self.max_wait_ms!r}")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not 0 < getattr(self, name) < float("inf"):
                raise LorabudgetError(f"serve setting {name} must be above 0, not {getattr(self, name)!r}")
        check_threshold(self.threshold)


def pair_column(run: LoadedRun) -> Optional[str]:
    """The run's second text column when it was trained on text pairs (a config attribute that runs
    without pair support do not have)."""
    return getattr(run.cfg.data, "text_pair_column", None) or None


def _evaluation(record: dict[str, Any]) -> dict[str, Any]:
    """One evaluation as ``/v1/model`` shows it: the data file by name only (no path of this machine), and
    ``held_out``: false when the evaluated rows overlapped the run's training or validation rows, null when
    the record does not say (runs evaluated before it was recorded)."""
    data = record.get("data")
    held_out = record.get("held_out")
    return {
        "data": Path(str(data)).name if data else data,
        "kind": record.get("kind"),
        "accuracy": record.get("accuracy"),
        "accuracy_ci95": record.get("accuracy_ci95"),
        # A multi-label run's ranking figure; its accuracy above is the subset accuracy.
        **(
            {"micro_f1": record["micro_f1"], "micro_f1_ci95": record.get("micro_f1_ci95")}
            if "micro_f1" in record
            else {}
        ),
        "rows": record.get("n"),
        "held_out": held_out if isinstance(held_out, bool) else None,
        "time": record.get("time"),
    }


def _threshold_info(run: LoadedRun, settings: ServeSettings) -> dict[str, Any]:
    """A multi-label run's decision thresholds per class, as the server applies them."""
    if not is_multi_label(run.cfg):
        return {}
    names = list(run.cfg.class_names)
    cuts = run_thresholds(run.run_dir, names, settings.threshold)
    return {"thresholds": {n: float(t) for n, t in zip(names, cuts)}}


def model_info(run: LoadedRun, settings: ServeSettings) -> dict[str, Any]:
    """What ``GET /v1/model`` returns: the run's facts from its config, summary and evaluations. The run is
    named by its folder's name: the server does not tell clients where its files are."""
    files = RunDir(run.run_dir)
    summary = files.read_summary()
    budget = files.read_budget() or {}
    evaluations = [_evaluation(record) for record in files.eval_records()]
    validation = next((e for e in reversed(evaluations) if e["kind"] == "validation"), None)
    trained_on_validation = bool(summary.get("validation_trained_on"))
    return {
        "name": Path(run.run_dir).resolve().name,
        # A hub name; a local model folder by its name only.
        "base_model": base_model_name(run.cfg) or Path(run.cfg.model.name).name,
        "method": run.cfg.adapter.method,
        "budget": run.cfg.budget.max_trainable_params,
        "trainable_params": summary.get("trainable_params", budget.get("total")),
        "classes": list(run.cfg.class_names),
        "problem_type": run.cfg.model.problem_type,
        **_threshold_info(run, settings),
        "max_length": run.cfg.model.max_length,
        "text_pairs": pair_column(run) is not None,
        # A run that trained on its validation rows has no estimate of its accuracy there.
        "validation": None if trained_on_validation else validation,
        "evaluations": evaluations,
        "precision": run.precision,
        "engine": run.engine,
        "limits": {
            "texts_per_request": settings.max_texts,
            "characters_per_text": settings.max_chars,
            "body_bytes": settings.max_body_bytes,
            "queued_texts": settings.max_queued_texts,
            "body_timeout_s": settings.body_timeout_s,
            "header_timeout_s": settings.header_timeout_s,
            "open_requests": settings.max_connections,
        },
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
    }


def _forward(run: LoadedRun, batch_size: int) -> Callable[[list], Any]:
    """The batcher's model call: texts, or a batch of (first, second) pairs (a run is one or the other)."""

    def logits(rows: list) -> Any:
        if rows and isinstance(rows[0], tuple):
            return run.logits([a for a, _ in rows], batch_size=batch_size, pairs=[b for _, b in rows])
        return run.logits(rows, batch_size=batch_size)

    return logits


async def _logits_while_connected(batcher: DynamicBatcher, rows: list, request: Request) -> Any:
    """The batcher's logits for ``rows``; if the client disconnects first, its texts not yet in a batch
    are dropped (the batcher skips a cancelled request) and ApiError 499 ends the request."""
    work = asyncio.ensure_future(batcher.logits(rows))
    gone = asyncio.ensure_future(until_disconnected(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
    if work.cancelled():
        raise ApiError(499, "the client closed the connection")
    try:
        return work.result()
    except QueueFull as err:
        raise ApiError(503, f"server busy: {err}; retry later") from None
    except Exception as err:  # noqa: BLE001 - this request's own texts failed (a failed batch is rerun per text)
        raise ApiError(500, f"the model failed on this request: {short(err, 200)}") from None


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answered as ``{"error": "<one line>"}``, FastAPI's and Starlette's own included."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        return JSONResponse({"error": validation_message(err)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        where = f"{request.method} {short(request.url.path)}"
        if err.status_code == 404:
            message = f"no route {where}: see /docs"
        elif err.status_code == 405:
            message = f"method not allowed: {where} (allowed: {(err.headers or {}).get('Allow', '?')})"
        else:
            message = short(err.detail, 200)
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        return JSONResponse({"error": "internal server error (the server log has the details)"}, status_code=500)


def _offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle`` package's files, so it renders with no network."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - docs",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )


def create_app(run: LoadedRun, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The application serving ``run``; its batcher starts and stops with the application's lifespan."""
    from contextlib import asynccontextmanager

    names = list(run.cfg.class_names)
    batcher = DynamicBatcher(
        _forward(run, settings.max_batch),
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queued_texts=settings.max_queued_texts,
    )
    info = model_info(run, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title=f"lorabudget serve: {info['name']}",
        description=f"Text classification with the lorabudget run `{info['name']}` ({run.cfg.adapter.method}, "
        f"{info['trainable_params'] or '?'} trainable parameters). Classes: {', '.join(names)}.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: FastAPI's default page loads Swagger UI from a CDN
    )
    _offline_docs(app)
    app.state.batcher = batcher
    app.state.run = run
    app.add_middleware(
        Guard,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_open=settings.max_connections,
        json_paths=[CLASSIFY],
    )
    _add_error_handlers(app)
    pairs = pair_column(run)
    multi_label = is_multi_label(run.cfg)
    if settings.threshold is not None and not multi_label:
        raise LorabudgetError("--threshold applies to multi-label runs; this run picks one class per text")
    thresholds = run_thresholds(run.run_dir, names, settings.threshold) if multi_label else None

    @app.post(CLASSIFY, response_model=ClassifyResponse, response_model_exclude_none=True, summary="classify texts")
    async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
        check_threshold_option(body, multi_label)
        rows = check_request(body, pairs, settings.max_texts, settings.max_chars)
        logits = await _logits_while_connected(batcher, rows, request)
        if not multi_label:
            return {"results": results(softmax(logits), names, body.top_k)}
        cuts = run_thresholds(run.run_dir, names, body.threshold) if body.threshold is not None else thresholds
        probs, decisions = label_sets(logits, cuts)
        return {"results": multilabel_results(probs, decisions, cuts, names, body.top_k)}

    @app.get("/v1/health", summary="liveness and load")
    async def health() -> dict[str, Any]:
        stats = batcher.stats
        return {
            "status": "ok",
            "queued_texts": batcher.queued_texts,
            "batches": stats.batches,
            "texts": stats.texts,
            "largest_batch": stats.largest_batch,
            "mean_batch": stats.texts / stats.batches if stats.batches else None,
            "inference_busy_s": round(stats.busy_s, 3),
        }

    @app.get("/v1/model", summary="the run being served")
    async def model() -> dict[str, Any]:
        return info

    page = render_page(info)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    return app


def load_for_serving(
    run_dir: Path, engine: str = "torch", precision: str = "auto", threads: Optional[int] = None
) -> LoadedRun:
    """The run loaded as ``predict`` loads it: integrity checked (``load_run`` verifies the adapter),
    and with ``engine="onnx"`` exported to ``RUN/onnx/`` first when that export is missing or stale."""
    from lorabudget.export.formats import load_exported
    from lorabudget.inference.runs import check_threads

    check_threads(threads)
    run = load_exported(run_dir, threads, precision, engine)
    if run.engine == "torch" and run.precision == "bf16" and run.cfg.model.quantization == "none":
        hold_weights_in_bf16(run.model)
    return run


def hold_weights_in_bf16(model) -> None:
    """Cast every floating-point parameter to bf16 once, for good. ``predict`` casts them for each call
    and puts the fp32 originals back (``inference_weights_in``); a server would pay that for every batch.
    The forward pass then finds them in bf16 already and computes exactly what ``predict`` computes."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != torch.bfloat16:
                param.data = param.data.to(torch.bfloat16)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn (which would exit on its own when the bind fails);
    LorabudgetError naming the address when the port is taken, the host unknown or not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise LorabudgetError(f"cannot listen on {address}: {err.strerror or err}") from None
    return sock


def serve(run: LoadedRun, host: str, port: int, settings: ServeSettings, sockets=None, log_level: str = "info"):
    """Run the server until interrupted (uvicorn handles Ctrl-C and SIGTERM: in-flight requests finish).
    The address is bound first (unless ``sockets`` are given): a taken port is a LorabudgetError."""
    import uvicorn

    own = None if sockets else [bind(host, port)]
    try:
        uvicorn.Server(server_config(run, settings, host, port, log_level)).run(sockets=sockets or own)
    finally:
        for sock in own or ():
            sock.close()


def server_config(run: LoadedRun, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level="info"):
    """uvicorn's config for the app of ``run``: the limits of :mod:`lorabudget.serve.connections` on every
    connection. uvicorn's ``limit_concurrency`` is not used: it counts open connections, those still sending
    their headers included, and would answer 503 to complete requests while slow clients hold connections;
    the guard's ``max_connections`` counts requests, and the header deadline bounds the rest."""
    import uvicorn

    return uvicorn.Config(
        create_app(run, settings),
        host=host,
        port=port,
        log_level=log_level,
        http=header_deadline_protocol(settings.header_timeout_s),
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
