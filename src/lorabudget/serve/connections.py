"""Connections of ``lorabudget serve`` before they hold a request: a deadline for each request's headers.

uvicorn's h11 protocol arms its keep-alive timer only after a response, stops it at every byte received, and
sets no deadline on a connection's first request, so a client that sends a request's headers a few bytes at
a time and never ends them (slowloris) would hold its connection for ever; the ASGI guard
(:class:`~lorabudget.serve.guards.Guard`) sees a request only once its headers are complete. Here a
connection must bring a complete request head within ``header_timeout_s`` of opening or of its previous
response, or it is closed (with no answer: there is no request to answer).
"""

from __future__ import annotations

# The largest request head (request line and headers) h11 buffers; a longer one gets 400 and is closed.
# h11's own default, set here so that the limit is this server's, not a library default that may change.
MAX_HEADER_BYTES = 16 * 1024
# Seconds an idle connection is kept open after a response for the client's next request (uvicorn's default).
KEEP_ALIVE_S = 5


def header_deadline_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol class whose connections are closed when a request's headers are not complete
    within ``header_timeout_s`` of the connection opening or of its previous response."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is complete (or refused with 400)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # waits for the next head
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
