"""The HTTP API of ``lorabudget serve``: FastAPI routes over a loaded run and a :class:`DynamicBatcher`.

    POST /v1/classify   {"texts": [...]} -> per text: label, label id, one probability per class
    GET  /v1/health     liveness, queue length, batches run
    GET  /v1/model      run name, method, budget, trainable parameters, classes, validation accuracy
    GET  /              a page to try the model
    GET  /docs          the OpenAPI documentation (FastAPI's)

Every error is a JSON object ``{"error": "<one line>"}`` with its status: 413 for a body, a text count
or a text length over the limits, 422 for a malformed request, 503 while the queue is full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from lorabudget.inference.runs import LoadedRun
from lorabudget.metrics import softmax
from lorabudget.rundir.layout import RunDir
from lorabudget.serve.batcher import DynamicBatcher, QueueFull
from lorabudget.serve.page import render_page


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 32  # texts per forward pass
    # How long the oldest waiting text may wait for others to share its batch. 0: a batch is what queued up
    # while the model ran the previous one (on a loaded 2-core CPU, 5 ms cost a lone client 20 ms, see README).
    max_wait_ms: float = 0.0
    max_texts: int = 64  # texts per request
    max_chars: int = 10_000  # characters per text (the model reads max_length tokens of it anyway)
    max_body_bytes: int = 1 << 20  # request body
    max_queued_texts: int = 4096  # texts waiting for the inference thread before requests get 503


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ClassifyRequest(BaseModel):
    texts: Optional[list[str]] = Field(None, description="texts to classify, one result each, in order")
    pairs: Optional[list[tuple[str, str]]] = Field(
        None, description="text pairs [[a, b], ...], only for runs trained on pairs (data.text_pair_column)"
    )


class ClassProbability(BaseModel):
    label: str
    probability: float


class Classification(BaseModel):
    label: str = Field(description="the predicted class name")
    label_id: int = Field(description="its index into the run's classes")
    probability: float = Field(description="its probability")
    probabilities: list[ClassProbability] = Field(description="every class, in the run's class order")


class ClassifyResponse(BaseModel):
    results: list[Classification]


def pair_column(run: LoadedRun) -> Optional[str]:
    """The run's second text column when it was trained on text pairs (a config attribute that runs
    without pair support do not have)."""
    return getattr(run.cfg.data, "text_pair_column", None) or None


def model_info(run: LoadedRun, settings: ServeSettings) -> dict[str, Any]:
    """What ``GET /v1/model`` returns: the run's facts from its config, summary and evaluations."""
    files = RunDir(run.run_dir)
    summary = files.read_summary()
    budget = files.read_budget() or {}
    validation = None
    evaluations = []
    for record in files.eval_records():
        entry = {
            "data": record.get("data"),
            "kind": record.get("kind"),
            "accuracy": record.get("accuracy"),
            "accuracy_ci95": record.get("accuracy_ci95"),
            "rows": record.get("n"),
            "time": record.get("time"),
        }
        evaluations.append(entry)
        if record.get("kind") == "validation":
            validation = entry
    trained_on_validation = bool(summary.get("validation_trained_on"))
    return {
        "name": run.cfg.name,
        "run_dir": str(run.run_dir),
        "base_model": run.cfg.model.name,
        "method": run.cfg.adapter.method,
        "budget": run.cfg.budget.max_trainable_params,
        "trainable_params": summary.get("trainable_params", budget.get("total")),
        "classes": list(run.cfg.class_names),
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
        },
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
    }


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before any route parses it
    (by its Content-Length, or while a body without one is streamed in)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        payload = json.dumps({"error": f"request body over {self.limit:,} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers + [(b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _check_request(request: ClassifyRequest, run: LoadedRun, settings: ServeSettings) -> list:
    """The rows to classify (texts, or (first, second) pairs for a pair run), after the limits and the
    pair rules; ApiError otherwise."""
    if (request.texts is None) == (request.pairs is None):
        raise ApiError(422, 'send exactly one of "texts" (a list of strings) and "pairs"')
    pairs_column = pair_column(run)
    if request.pairs is not None and pairs_column is None:
        raise ApiError(422, 'this run was trained on single texts, not pairs: send "texts"')
    if request.texts is not None and pairs_column is not None:
        raise ApiError(422, f'this run was trained on text pairs ({pairs_column}): send "pairs"')
    rows = list(request.pairs) if request.pairs is not None else list(request.texts or [])
    if not rows:
        key = "pairs" if request.pairs is not None else "texts"
        raise ApiError(422, f'"{key}" is empty: send one or more {key}')
    if len(rows) > settings.max_texts:
        raise ApiError(413, f"{len(rows)} texts in one request; at most {settings.max_texts}")
    for i, row in enumerate(rows):
        for text in row if isinstance(row, tuple) else (row,):
            if len(text) > settings.max_chars:
                raise ApiError(413, f"text {i} has {len(text):,} characters; at most {settings.max_chars:,}")
            if not text.strip():
                raise ApiError(422, f"text {i} is empty")
    return [tuple(row) for row in rows] if request.pairs is not None else rows


def _forward(run: LoadedRun, batch_size: int) -> Callable[[list], Any]:
    """The batcher's model call: texts, or a batch of (first, second) pairs (a run is one or the other)."""

    def logits(rows: list) -> Any:
        if rows and isinstance(rows[0], tuple):
            return run.logits([a for a, _ in rows], batch_size=batch_size, pairs=[b for _, b in rows])
        return run.logits(rows, batch_size=batch_size)

    return logits


def _validation_message(err: RequestValidationError) -> str:
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"invalid request at {where}: {first.get('msg', 'malformed')}"


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
        title=f"lorabudget serve: {run.cfg.name}",
        description=f"Text classification with the lorabudget run `{run.cfg.name}` ({run.cfg.adapter.method}, "
        f"{info['trainable_params'] or '?'} trainable parameters). Classes: {', '.join(names)}.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: FastAPI's default page loads Swagger UI from a CDN
    )
    _offline_docs(app)
    app.state.batcher = batcher
    app.state.run = run
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        return JSONResponse({"error": _validation_message(err), "detail": err.errors()}, status_code=422)

    @app.post("/v1/classify", response_model=ClassifyResponse, summary="classify texts")
    async def classify(request: ClassifyRequest) -> dict[str, Any]:
        texts = _check_request(request, run, settings)
        try:
            logits = await batcher.logits(texts)
        except QueueFull as err:
            raise ApiError(503, f"server busy: {err}; retry later") from None
        probs = softmax(logits)
        results = []
        for row in probs:
            best = int(row.argmax())
            results.append(
                {
                    "label": names[best],
                    "label_id": best,
                    "probability": float(row[best]),
                    "probabilities": [{"label": n, "probability": float(p)} for n, p in zip(names, row)],
                }
            )
        return {"results": results}

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
    from lorabudget.inference.runs import check_threads, load_run

    check_threads(threads)
    files = RunDir(run_dir)
    if engine == "onnx" and files.is_run():
        from lorabudget.export.formats import ensure_onnx_export

        ensure_onnx_export(files.path)
    run = load_run(run_dir, threads=threads, precision=precision, engine=engine)
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


def serve(run: LoadedRun, host: str, port: int, settings: ServeSettings, sockets=None, log_level: str = "info"):
    """Run the server until interrupted (uvicorn handles Ctrl-C and SIGTERM: in-flight requests finish)."""
    import uvicorn

    config = uvicorn.Config(create_app(run, settings), host=host, port=port, log_level=log_level)
    uvicorn.Server(config).run(sockets=sockets)
