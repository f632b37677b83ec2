"""`vaectl serve`: MLflow's scoring server (its FastAPI app, run by uvicorn in this process)
behind a small ASGI guard that bounds the request body (413) and keeps error replies short:
MLflow's own messages quote the whole request back ("Failed to predict data '<input>'"),
kilobytes per bad row, so only the reason is kept and tracebacks are dropped."""

from __future__ import annotations

import json
import os
from pathlib import Path

MAX_ERROR_CHARS = 500


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error_code": "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR",
                       "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def short_error(body: bytes) -> str:
    """The reason in an MLflow error reply, without the quoted input, at most MAX_ERROR_CHARS."""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    if "\nError: " in message:  # "Failed to predict data '<input>'. \nError: <reason>"
        message = message.rsplit("\nError: ", 1)[1]
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "…"


class Guard:
    """ASGI wrapper: 413 for a body over `max_body` bytes (declared or streamed), and 4xx/5xx
    replies rewritten by `short_error`."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"request body larger than {self.max_body} bytes (vaectl serve --max-body)"
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await _reply(send, 413, too_large)
        body, more = bytearray(), True  # MLflow reads the whole body anyway: read it here, bounded
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _reply(send, 413, too_large)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        start: dict = {}
        chunks: list[bytes] = []

        async def short_errors(message):
            if message["type"] == "http.response.start":
                start.update(message)
                if message["status"] < 400:
                    await send(message)
                return
            if start.get("status", 200) < 400:
                return await send(message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                await _reply(send, start["status"], short_error(b"".join(chunks)))

        await self.app(scope, replay, short_errors)


def serve(model_dir: Path, host: str, port: int, max_body: int, max_samples: int) -> None:
    """Load the (verified) bundle in `model_dir` and serve it until SIGINT / SIGTERM."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from vaectl.tracking.pyfunc import MAX_SAMPLES_ENV

    os.environ[MAX_SAMPLES_ENV] = str(max_samples)  # read by the pyfunc's predict
    app = scoring_server.init(scoring_server.load_model_with_mlflow_config(str(model_dir)))
    uvicorn.run(Guard(app, max_body), host=host, port=port, log_level="warning")
