"""The ASGI guard in front of every route of ``lorabudget serve``, and the client-disconnect watch.

The guard answers, before any route or JSON parser sees the request, with ``{"error": "<one line>"}``:

    503  more requests open at once than ``max_open`` (each holds a connection; the connection is closed)
    415  a POST to a JSON route whose Content-Type is missing or not JSON
    413  a body over ``max_body_bytes`` (by its Content-Length, or counted while it streams in)
    408  a body not complete within ``body_timeout_s`` of its first byte being awaited (connection closed)

It reads the whole body itself, then replays it to the application, so a client that sends its body slowly
or never finishes it holds one request slot for at most ``body_timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional


def short(value: Any, limit: int = 60) -> str:
    """``value`` as one line of text, cut to ``limit`` characters: error messages quote what clients sent
    and what libraries raised, and stay one line."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def send_error(send, status: int, message: str, close: bool = True) -> None:
    """A complete JSON error response on a raw ASGI ``send``."""
    payload = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:  # the body may be unread: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def content_type_problem(header: Optional[bytes]) -> Optional[str]:
    """Why a POST body with this Content-Type header is not JSON, or None when it is."""
    if not header:
        return 'no Content-Type: send the body as JSON with the header "Content-Type: application/json"'
    media = header.decode("latin-1").split(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    return f'Content-Type {short(media)!r} is not JSON: send "Content-Type: application/json"'


class Guard:
    """ASGI middleware: request slots, content type, body size and body time, as the module says.

    ``max_open`` counts requests in progress (reading their body, waiting for the model, or answering); a
    request arriving over it gets 503 at once rather than waiting behind clients that may never finish.
    """

    def __init__(self, app, max_body_bytes: int, body_timeout_s: float, max_open: int, json_paths=()):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_open = max_open
        self.json_paths = frozenset(json_paths)
        self.open = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.open >= self.max_open:
            message = f"server busy: {self.open} requests open (at most {self.max_open}); retry later"
            return await send_error(send, 503, message)
        self.open += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.open -= 1

    async def _guarded(self, scope, receive, send):
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and scope["path"] in self.json_paths:
            problem = content_type_problem(headers.get(b"content-type"))
            if problem:
                return await send_error(send, 415, problem)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(send)
        body = await self._read_body(receive, send)
        if body is None:  # answered already, or the client left
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: waits for the disconnect (see until_disconnected)

        await self.app(scope, replay, send)

    async def _read_body(self, receive, send) -> Optional[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                message = f"request body not complete within {self.body_timeout_s:g} s ({size:,} bytes came)"
                await send_error(send, 408, message)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._too_large(send)
                return None
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _too_large(self, send):
        await send_error(send, 413, f"request body over {self.max_body_bytes:,} bytes")


async def until_disconnected(receive) -> None:
    """Returns when the client has closed its connection. Called once the body has been read: the
    server's next message for the request is then the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # a server that repeats empty body messages must not spin the loop
