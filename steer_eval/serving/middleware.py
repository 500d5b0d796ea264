"""The ASGI middleware `steer-eval serve` gives vLLM's OpenAI-compatible server (its --middleware option).

- At start-up (the ASGI lifespan), before the server takes a request: the spare rows are masked from sampling,
  every steering token is written into its row (read back and compared) and the prefix cache is reset.
- POST /v1/chat/completions and /v1/completions: steering fields are taken out of the body and the prompt
  rewritten (steering_request.py); a bad field is a 400 in OpenAI's error format, one line naming the field. The
  rest of the request is vLLM's: its validation, batching, streaming and errors.
- Every steered answer carries `x-steer-eval-tokens` (the tokens it used and their fingerprints) and every answer
  `x-steer-eval-engine` (the model fingerprint a grid's manifest records).
- GET /v1/steering: what the server steers with (`ServedSteering.provenance`).
The API key is checked by vLLM's own AuthenticationMiddleware before any of this (vLLM adds --middleware outside
its own, so this one wraps its handling in that class); the key is never logged.
"""
from __future__ import annotations

import json
import logging

import torch
from starlette.responses import JSONResponse
from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

from steer_eval.backends.vllm import check_written_rows
from steer_eval.serving.served_model import ServedSteering
from steer_eval.serving.steering_request import RequestError, has_steering_fields, steer

log = logging.getLogger(__name__)
STEERED_PATHS = ("/v1/chat/completions", "/v1/completions")
MAX_BODY_BYTES = 16 * 1024 ** 2
_installed: tuple[ServedSteering, tuple[str, ...]] | None = None


def install(served: ServedSteering, api_keys: tuple[str, ...]) -> None:
    """What the middleware serves; vLLM builds the middleware itself, in this process, from its class path."""
    global _installed
    _installed = (served, tuple(api_keys))


def error_response(message: str, field: str | None, status: int = 400) -> JSONResponse:
    """OpenAI's error body, as vLLM's own errors have it."""
    kind = "BadRequestError" if status == 400 else "Error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": field, "code": status}},
                        status_code=status)


class SteeringMiddleware:
    def __init__(self, app):
        if _installed is None:
            raise RuntimeError("SteeringMiddleware is installed by `steer-eval serve`, which starts vLLM's server "
                               "with it; it cannot be named in a plain `vllm serve`")
        self.app = app
        self.served, keys = _installed
        self.handle = AuthenticationMiddleware(self._route, tokens=list(keys)) if keys else self._route

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._after_start_up(scope, send))
        elif scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _after_start_up(self, scope, send):
        async def send_when_ready(message):
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._fill_rows(scope["app"].state.engine_client)
                except Exception as error:  # noqa: BLE001 - the server must not start without its rows
                    log.error(f"steering rows could not be set up: {error}")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
            await send(message)
        return send_when_ready

    async def _fill_rows(self, engine) -> None:
        served = self.served
        await engine.collective_rpc("steer_eval_mask_rows_from", args=(served.original_vocab_size,))
        answers = await engine.collective_rpc("steer_eval_write_rows",
                                              args=(list(served.token_ids.values()), served.rows))
        dtype = engine.model_config.dtype
        check_written_rows(answers, torch.tensor(served.rows), dtype)
        await engine.reset_prefix_cache()
        served.started(str(dtype))
        log.info(f"{len(served.token_ids)} steering tokens in spare rows of the engine: "
                 f"{', '.join(served.token_ids)}")

    async def _route(self, scope, receive, send):
        path, method = scope["path"], scope["method"]
        if path == "/v1/steering":
            response = JSONResponse(self.served.provenance()) if method == "GET" else \
                error_response("GET /v1/steering lists the steering tokens; nothing else is allowed", None, 405)
            await response(scope, receive, send)
        elif method == "POST" and path in STEERED_PATHS:
            await self._steered(scope, receive, send)
        else:
            await self.app(scope, receive, self._with_engine_header(send, []))

    async def _steered(self, scope, receive, send):
        body = await _read_body(receive)
        if body is None:
            await error_response(f"the request body is over {MAX_BODY_BYTES // 1024 ** 2} MiB", None)(
                scope, receive, send)
            return
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None  # not JSON: vLLM answers it as it does any malformed request
        used: list[str] = []
        if isinstance(payload, dict):
            rewritten = has_steering_fields(payload)
            try:
                used = steer(scope["path"], payload, self.served)
            except RequestError as error:
                log.info(f"400 on {scope['path']}: {error}")
                await error_response(str(error), error.field)(scope, receive, send)
                return
            if rewritten:  # a plain request reaches vLLM byte for byte
                body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay(body, receive), self._with_engine_header(send, used))

    def _with_engine_header(self, send, used: list[str]):
        served = self.served

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-steer-eval-engine", served.engine_identity.get("model_fingerprint", "").encode())]
                if used:
                    tokens = ";".join(f"{name}={served.fingerprints[name]}" for name in dict.fromkeys(used))
                    extra.append((b"x-steer-eval-tokens", tokens.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)
        return send_with_headers


async def _read_body(receive) -> bytes | None:
    """The whole request body; None when it is over MAX_BODY_BYTES."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that hands vLLM the (rewritten) body once, then the client's own messages (a disconnect)."""
    delivered = False

    async def replayed():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed
