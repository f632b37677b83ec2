"""`vaectl serve`: MLflow's scoring server (its FastAPI app, run by uvicorn in this process)
behind a small ASGI guard that bounds the request body in size (413) and time (408), refuses
JSON it cannot parse (400), lets a sample request go without an input, and keeps error
replies short: MLflow's own messages quote the whole request back ("Failed to predict data
'<input>'"), kilobytes per bad row, so only the reason is kept and tracebacks are dropped.
Connections are bounded in number (503 past it, idle ones shed first) and in how long their
request headers may take (slowloris clients are cut)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vaectl import UserError

MAX_ERROR_CHARS = 500
KEEP_ALIVE_S = 5  # an idle connection after a reply is closed (uvicorn's default)


@dataclass(frozen=True)
class Limits:
    """What one client may take; `vaectl serve`'s options set them."""

    max_body: int  # bytes; more get 413
    max_samples: int  # sample mode's n; more get 400
    max_connections: int  # open connections and requests in flight; more get 503
    header_timeout_s: float  # from a connection's opening (or its last reply) to a request's headers
    body_timeout_s: float  # from a request's headers to the end of its body; slower get 408


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps(
        {"error_code": "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR", "message": message}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
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


def parsed_json(body: bytes) -> tuple[object, str | None]:
    """(the request, None), or (None, why the body cannot be parsed) without quoting it
    (MLflow's reply did, and a body nested past Python's recursion limit was a 500)."""
    try:
        return json.loads(body), None
    except RecursionError:
        return None, "request body nests JSON deeper than it can be parsed"
    except UnicodeDecodeError:
        return None, "request body is not UTF-8 JSON"
    except json.JSONDecodeError as err:
        return None, f"request body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"


# the keys MLflow's scoring server reads the model input from; sample mode needs none, but
# the server refuses a request without one, so the guard puts in a one-pixel placeholder
MLFLOW_INPUT_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records")


def with_sample_placeholder(request: object, body: bytes) -> bytes:
    """`{"params": {"mode": "sample", ...}}` (`request`, parsed from `body`) as the scoring
    server takes it: with a placeholder input that sample mode ignores. Any other request's
    body is returned as it is."""
    if (
        isinstance(request, dict)
        and isinstance(request.get("params"), dict)
        and request["params"].get("mode") == "sample"
        and not set(MLFLOW_INPUT_KEYS) & set(request)
    ):
        return json.dumps({**request, "inputs": [[0.0]]}).encode()
    return body


class Guard:
    """ASGI wrapper: 413 for a body over `max_body` bytes (declared or streamed), 408 for one
    not complete within `body_timeout_s`, 400 for JSON that does not parse (parsed once, here),
    and 4xx/5xx replies rewritten by `short_error`."""

    def __init__(self, app, max_body: int, body_timeout_s: float):
        self.app, self.max_body, self.body_timeout_s = app, max_body, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        body, refusal = await self._admit(headers, receive)
        if refusal is None and body and b"json" in headers.get(b"content-type", b""):
            request, reason = parsed_json(body)
            if reason is not None:
                return await _reply(send, 400, reason)
            body = with_sample_placeholder(request, body)
            scope = {
                **scope,
                "headers": [
                    (k, str(len(body)).encode() if k == b"content-length" else v) for k, v in scope["headers"]
                ],
            }
        if refusal is not None:
            return await _reply(send, *refusal)
        if body is None:  # the client went away
            return
        await self.app(scope, _replaying(body, receive), _shortening_errors(send))

    async def _admit(self, headers: dict, receive) -> tuple[bytes | None, tuple[int, str] | None]:
        """(the body, or None if the client left; the refusal (status, reason) of its size or
        time, if any)."""
        declared = headers.get(b"content-length")
        too_large = (413, f"request body larger than {self.max_body} bytes (vaectl serve --max-body)")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return None, too_large
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._body(receive)
        except TimeoutError:
            return None, (
                408,
                f"request body not complete within {self.body_timeout_s:g} s (vaectl serve --body-timeout)",
            )
        if body is not None and len(body) > self.max_body:
            return None, too_large
        return (None if body is None else bytes(body)), None

    async def _body(self, receive) -> bytearray | None:
        """The whole body, or as much as passes max_body; None if the client went away.
        MLflow reads the whole body anyway: read it here, bounded."""
        body, more = bytearray(), True
        while more and len(body) <= self.max_body:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
        return body


def _replaying(body: bytes, receive):
    """An ASGI receive that hands the app the body already read, then the client's events."""
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _shortening_errors(send):
    """An ASGI send that passes replies under 400 through and rewrites the others' bodies by
    `short_error` (the status stays)."""
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

    return short_errors


def header_deadline_protocol(timeout_s: float, max_connections: int):
    """uvicorn's h11 protocol with a deadline on request headers (uvicorn closes a connection
    idle after a reply, but not one that sends its headers a byte at a time: slowloris), and
    idle connections shed first: at the cap, a new connection closes the one that has waited
    longest without a request, so held-open sockets cannot starve clients that send requests
    (uvicorn's limit_concurrency counts every open connection)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class WithHeaderDeadline(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_deadline()
            self._shed_idle()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self):
            self.waiting_since, self.waiting_after = self.loop.time(), self.cycle  # headers make a new cycle
            self.loop.call_later(timeout_s, self._cut_if_still_waiting, self.waiting_after)

        def _cut_if_still_waiting(self, waiting_after):
            if self.cycle is waiting_after and not self.transport.is_closing():
                self.transport.close()

        def _waiting(self) -> bool:
            return self.cycle is getattr(self, "waiting_after", object()) and not self.transport.is_closing()

        def _shed_idle(self):
            open_ = [c for c in self.connections if not c.transport.is_closing()]
            idle = sorted(
                (c for c in open_ if c is not self and isinstance(c, WithHeaderDeadline) and c._waiting()),
                key=lambda c: c.waiting_since,
            )
            for connection in idle[: max(0, len(open_) - (max_connections - 1))]:
                connection.transport.close()

    return WithHeaderDeadline


def serve(model_dir: Path, host: str, port: int, limits: Limits, on_listening=lambda: None) -> None:
    """Load the (verified) bundle in `model_dir` and serve it until SIGINT / SIGTERM;
    `on_listening` is called once the socket is bound (uvicorn's own line is silenced)."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from vaectl.tracking.pyfunc import MAX_SAMPLES_ENV

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                on_listening()

    os.environ[MAX_SAMPLES_ENV] = str(limits.max_samples)  # read by the pyfunc's predict
    app = scoring_server.init(scoring_server.load_model_with_mlflow_config(str(model_dir)))
    config = uvicorn.Config(
        Guard(app, limits.max_body, limits.body_timeout_s),
        host=host,
        port=port,
        log_level="warning",
        http=header_deadline_protocol(limits.header_timeout_s, limits.max_connections),
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        if not server.started:
            raise  # stopped before it listened: interrupted, like a stop while loading
        return  # uvicorn shut down cleanly, then re-raised the signal it caught
    if not server.started:  # uvicorn logged why (an address in use, say)
        raise UserError(f"serve could not listen on {host}:{port} (uvicorn's message above says why)")
