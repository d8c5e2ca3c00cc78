"""``lorabudget serve``: a finished run behind an HTTP API (FastAPI on uvicorn), with requests from many
clients batched together for one inference thread, input limits, and a page at ``/`` to try the model."""
