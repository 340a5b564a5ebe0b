"""The HTTP API (FastAPI): request/response models, limits, errors, and the routes.

`build_api(store, backend, config)` is used twice: inside the Serve ingress deployment (the
backend forwards to the family deployments) and by the benchmark's plain uvicorn baseline (the
backend runs the model in-process). Request bodies subclass the config tree's request models, so
the caps in `creagen_ray/config.py` are the API's caps; a bad value is a 422 naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Literal, Protocol

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from creagen_ray.bundle import BundleError
from creagen_ray.config import ImageRequest, InterpolateRequest, Strict, TextRequest
from creagen_ray.images import decode_png, png_bytes
from creagen_ray import memorization
from creagen_ray.provenance import headers as provenance_headers
from creagen_ray.provenance import provenance, with_png_text
from creagen_ray.serving.settings import ServeConfig
from creagen_ray.serving.store import MODEL_ID_PATTERN, BundleStore, ModelInfo, StoreError

DEADLINE_HEADER = "X-Request-Timeout"  # seconds; a client may shorten (never extend) its deadline
_client_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("client_deadline", default=None)
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})  # "/": the playground page
PLAYGROUND = Path(__file__).with_name("static") / "playground.html"
UPLOAD_SIDE_FACTOR = 8  # an uploaded image may be at most this many times the model's image size per side


class Backend(Protocol):
    """Where the API sends validated requests (Serve handles, or an in-process model)."""

    async def generate(self, model_id: str, request: Any) -> Any: ...
    def stream(self, model_id: str, request: TextRequest) -> AsyncIterator[str]: ...
    async def reconstruct(self, model_id: str, x: torch.Tensor) -> torch.Tensor: ...
    async def stats(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------------------
# request and response bodies

ModelId = Field(..., pattern=MODEL_ID_PATTERN, max_length=128, description="a served model id (GET /v1/models)")


class TextBody(TextRequest):
    """POST /v1/text/generate: a TextRequest plus the model and whether to stream (SSE)."""

    model: str = ModelId
    stream: bool = Field(False, description="server-sent events, one per produced piece of text (n must be 1)")


class ImageBody(ImageRequest):
    """POST /v1/images/generate."""

    model: str = ModelId
    format: Literal["png", "json"] = Field("png", description="png: one PNG grid; json: base64 PNG per image")


class InterpolateBody(InterpolateRequest):
    """POST /v1/images/interpolate: a latent walk between two seeds' draws."""

    model: str = ModelId
    format: Literal["png", "json"] = "png"


class ReconstructBody(Strict):
    """POST /v1/images/reconstruct (VAE): a base64 PNG in, its reconstruction out."""

    model: str = ModelId
    image: str = Field(..., min_length=1, description="base64-encoded PNG")
    format: Literal["png", "json"] = "png"


class TextResponse(BaseModel):
    """n continuations of the prompt (the prompt is not repeated), with their provenance record."""

    model: str
    texts: list[str]
    provenance: dict[str, str] = Field(default_factory=dict, description="also sent as X-Creagen-* headers")
    memorization: dict[str, Any] | None = Field(
        None, description="with memorization.mode flag/refuse: longest span per text copied from the training corpus"
    )


class ImagesResponse(BaseModel):
    """Images as base64 PNGs (format=json)."""

    model: str
    width: int
    height: int
    channels: int
    images: list[str]
    provenance: dict[str, str] = Field(default_factory=dict, description="also in each PNG's text chunks")
    memorization: dict[str, Any] | None = Field(
        None, description="with memorization.mode flag/refuse: each image's distance to its nearest training image"
    )


class ErrorResponse(BaseModel):
    """Every error: a message, or (422) one entry per bad field with its location."""

    detail: str | list[dict[str, Any]]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("the model's family cannot answer this endpoint"),
    401: _error("missing or wrong X-API-Key header"),
    404: _error("unknown model id"),
    409: _error("the bundle failed verification and is not served"),
    451: _error("memorization.mode=refuse: the output copies the training data past the configured threshold"),
    413: _error("request body over max_body_bytes"),
    429: _error("this client already has max_concurrent_per_client requests in flight (see Retry-After)"),
    503: _error("the service is overloaded or starting"),
    504: _error("the request ran past its deadline"),
}
IMAGE_OK: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}, **ERRORS}


class ModelsResponse(BaseModel):
    """GET /v1/models: the served bundles, and ids of bundles refused because they did not verify."""

    models: list[ModelInfo]
    rejected: list[str]


def request_of(body: BaseModel, kind: type[BaseModel]) -> Any:
    """The plain config-tree request inside an API body (what the family receives)."""
    return kind.model_validate(body.model_dump(include=set(kind.model_fields)))


def field_error(field: str, msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming one body field."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": msg, "input": value}])


def printable(text: str) -> str:
    """Text that always encodes as UTF-8: lone surrogates become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without their inputs (never echo a value: NaN, a lone surrogate, a 2 MiB string)."""
    out = []
    for e in errors:
        loc = [x if isinstance(x, int) else printable(str(x)) for x in e.get("loc", ())]
        out.append({"type": str(e.get("type", "value_error")), "loc": loc, "msg": printable(str(e.get("msg", "")))})
    return out


def decode_upload(image_b64: str, channels: int, size: int) -> torch.Tensor:
    """A base64 PNG upload -> [1, C, size, size]; anything else (or larger than size x 8 per side) is a 422."""
    try:
        raw = base64.b64decode(image_b64, validate=True)
        return decode_png(raw, channels, size, max_side=size * UPLOAD_SIDE_FACTOR)
    except Exception as e:  # noqa: BLE001 - whatever a hostile upload makes Pillow raise is bad input
        raise field_error("image", f"not an acceptable base64-encoded PNG: {printable(str(e))[:300]}") from None


def require(info: ModelInfo, capability: str) -> None:
    """400 unless the model's family can answer this endpoint."""
    if capability not in info.capabilities:
        raise CapabilityError(f"model {info.id!r} ({info.family}) cannot do {capability!r}; it offers {info.capabilities}")


class CapabilityError(ValueError):
    """The endpoint is valid but this model's family cannot answer it (HTTP 400)."""


class Overloaded(RuntimeError):
    """Past the serving queue bound (HTTP 503 with Retry-After): try again later."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Memorized(RuntimeError):
    """memorization.mode=refuse: the output copies the training data past the threshold (451)."""


class DeadlineExceeded(RuntimeError):
    """The request ran past `request_timeout_s` (HTTP 504); its work was cancelled."""


def cost_cap(fields: tuple[str, str], values: tuple[int, int], cap: int, what: str) -> None:
    """422 naming both fields when their product (the work of one request) exceeds `cap`."""
    if values[0] * values[1] > cap:
        msg = f"{fields[0]} x {what} = {values[0]} x {values[1]} = {values[0] * values[1]} exceeds the cap {cap}"
        raise RequestValidationError([
            {"type": "value_error", "loc": ("body", f), "msg": msg, "input": v} for f, v in zip(fields, values)
        ])


def record_of(info: ModelInfo, req: BaseModel) -> dict[str, str]:
    """The provenance record of one request to one model (see creagen_ray/provenance.py)."""
    params = req.model_dump(exclude={"seed", "prompt"})  # the prompt is the user's: not echoed
    return provenance(info.id, info.bundle_sha256, getattr(req, "seed", None), params)


REQUEST_LOG_NOTICE = (
    "request log ON: every generation request and its output (prompts, uploaded images, generated texts) "
    "is appended UNREDACTED to {path}"
)


class RequestLog:
    """The opt-in request log (`ServeConfig.request_log`): one JSON line per generation, nothing redacted.

    Each line is one `os.write` to a file opened with O_APPEND (mode 0600), so lines from several
    replicas on one machine do not interleave. Text outputs are written whole; image outputs as
    their provenance record (model, bundle sha256, seed, parameters: enough to remake them), not pixels.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        logging.getLogger("creagen_ray.serving").warning(REQUEST_LOG_NOTICE.format(path=path))

    def write(self, endpoint: str, request: dict[str, Any], output: dict[str, Any]) -> None:
        """Append one line: time, endpoint, the request as received, the output."""
        line = {"time": time.time(), "endpoint": endpoint, "request": request, "output": output}
        data = (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def seeded(req: Any) -> Any:
    """The request with a seed drawn when it had none, so the provenance record can reproduce it."""
    if getattr(req, "seed", 0) is None:
        return req.model_copy(update={"seed": secrets.randbelow(2**31)})
    return req


def image_response(
    model_id: str,
    images: torch.Tensor,
    fmt: str,
    nrow: int | None = None,
    record: dict[str, str] | None = None,
    check: dict[str, Any] | None = None,
) -> Response:
    """Images [N, C, H, W] in [0, 1] as one PNG grid, or JSON with one base64 PNG each; PNGs carry `record`."""
    record = record or {}
    hdrs = {**provenance_headers(record), **memorization.headers(check)}
    if fmt == "png":
        return Response(with_png_text(png_bytes(images, nrow), record), media_type="image/png", headers=hdrs)
    n, c, h, w = images.shape
    pngs = [base64.b64encode(with_png_text(png_bytes(images[i : i + 1]), record)).decode("ascii") for i in range(n)]
    body = ImagesResponse(model=model_id, width=w, height=h, channels=c, images=pngs, provenance=record, memorization=check)
    return JSONResponse(body.model_dump(exclude_none=True), headers=hdrs)


def sse(event: str | None, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


# ------------------------------------------------------------------------------------------------
# ASGI middlewares: run before FastAPI parses anything


async def _reply(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DeadlineMiddleware:
    """Reads the optional X-Request-Timeout header (seconds > 0) into this request's context; bad -> 400."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or []).get(DEADLINE_HEADER.lower().encode())
        value = None
        if raw is not None:
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 0 < value < float("inf"):
                return await _reply(send, 400, f"{DEADLINE_HEADER} must be a positive number of seconds")
        token = _client_deadline.set(value)
        try:
            return await self.app(scope, receive, send)
        finally:
            _client_deadline.reset(token)


def deadline_s(config: ServeConfig) -> float:
    """This request's deadline: the config's, or the client's X-Request-Timeout when shorter."""
    client = _client_deadline.get()
    return config.request_timeout_s if client is None else min(client, config.request_timeout_s)


class GuardMiddleware:
    """API key (401) and body size (413) checks, before routing or parsing the body."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.api_key.encode()):
                return await _reply(send, 401, "missing or wrong X-API-Key header")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body_bytes:
                return await _reply(send, 413, f"request body over {self.max_body_bytes} bytes")
            return await self.app(scope, receive, send)
        # no length (chunked): read up to the limit first, then replay the body
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.max_body_bytes:
                return await _reply(send, 413, f"request body over {self.max_body_bytes} bytes")
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


class ClientLimitMiddleware:
    """At most `max_per_client` requests in flight per client (429 + Retry-After beyond that).

    A client is its X-API-Key (hashed, never stored) when it sends one, else its address. Counts are
    per ingress replica; a streamed response counts until its last byte.
    """

    def __init__(self, app: Any, max_per_client: int | None, retry_after_s: int = 1) -> None:
        self.app = app
        self.max_per_client = max_per_client
        self.retry_after_s = retry_after_s
        self.active: Counter[str] = Counter()

    @staticmethod
    def client_of(scope: dict) -> str:
        """The key a request is counted under: its API key's digest, else its client address."""
        key = dict(scope.get("headers") or []).get(b"x-api-key")
        if key:
            return "key:" + hashlib.sha256(key).hexdigest()[:16]
        client = scope.get("client")
        return f"addr:{client[0] if client else 'unknown'}"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.max_per_client or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        who = self.client_of(scope)
        if self.active[who] >= self.max_per_client:
            body = json.dumps({"detail": f"too many concurrent requests from this client (limit {self.max_per_client})"}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.retry_after_s).encode()),
            ]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            return await send({"type": "http.response.body", "body": body})
        self.active[who] += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.active[who] -= 1
            if self.active[who] <= 0:
                del self.active[who]


# ------------------------------------------------------------------------------------------------
# the app


def build_api(store: BundleStore, backend: Backend, config: ServeConfig) -> FastAPI:
    """The FastAPI app: routes, error mapping and guards over `backend` for the bundles in `store`."""
    api = FastAPI(
        title="creagen-ray",
        version="1",
        description="Generate text and images from trained RNN, VAE and GAN bundles.",
    )
    log = RequestLog(config.request_log) if config.request_log else None  # opt-in, unredacted

    @api.exception_handler(Memorized)
    async def _memorized(_: Request, e: Memorized) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=451)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": safe_errors(e.errors())}, status_code=422)

    @api.exception_handler(StoreError)
    async def _store_error(_: Request, e: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @api.exception_handler(BundleError)
    async def _bundle_error(_: Request, e: BundleError) -> JSONResponse:
        return JSONResponse({"detail": f"bundle failed verification, not served: {e}"}, status_code=409)

    @api.exception_handler(CapabilityError)
    async def _capability_error(_: Request, e: CapabilityError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        """The playground page: plain HTML + JS over this API (no build step, no external assets)."""
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @api.exception_handler(Overloaded)
    async def _overloaded(_: Request, e: Overloaded) -> JSONResponse:
        retry = {"Retry-After": str(max(0, math.ceil(e.retry_after_s)))}
        return JSONResponse({"detail": f"server busy, retry later: {e}"}, status_code=503, headers=retry)

    @api.exception_handler(DeadlineExceeded)
    async def _deadline(_: Request, e: DeadlineExceeded) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=504)

    async def within(work: Awaitable[Any]) -> Any:
        """Await `work` under the per-request deadline; past it cancel the work and answer 504."""
        limit = deadline_s(config)
        try:
            async with asyncio.timeout(limit):
                return await work
        except TimeoutError:
            raise DeadlineExceeded(f"request exceeded its {limit:g} s deadline") from None

    async def image_check(info: ModelInfo, images: torch.Tensor) -> dict[str, Any] | None:
        """memorization flag/refuse: nearest-training-neighbour distances; refuse raises Memorized (451)."""
        memo = config.memorization
        if memo.mode == "off":
            return None
        feats = await asyncio.to_thread(memorization.load_features, info.path, info.digest)
        check = memorization.check_images(feats, images, memo.min_neighbour_rms)
        if memo.mode == "refuse" and check.get("flagged"):
            nearest = min(check["nearest_training_rms"])
            raise Memorized(f"refused: a generated image lies {nearest:g} (rms, 8x8 pooled) from a training image "
                            f"(memorization.min_neighbour_rms={memo.min_neighbour_rms:g})")
        return check

    def pixels(info: ModelInfo) -> int:
        size = int(info.spec.get("image_size", 0))
        return size * size

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: answers while the ingress runs."""
        return {"status": "ok", "models": len(store.models)}

    @api.get("/v1/models", response_model=ModelsResponse, responses={401: ERRORS[401], 429: ERRORS[429]})
    async def models() -> ModelsResponse:
        """The served bundles with family, modality, capabilities and training metrics."""
        return ModelsResponse(models=list(store.models.values()), rejected=sorted(store.rejected))

    @api.get("/v1/stats", responses={401: ERRORS[401], 429: ERRORS[429], 503: ERRORS[503]})
    async def stats() -> dict[str, Any]:
        """Batch sizes seen by the batch handlers (per family) and live batching settings."""
        return await backend.stats()

    @api.post("/v1/text/generate", response_model=TextResponse, responses=ERRORS)
    async def text_generate(body: TextBody) -> Any:
        """Sample text; with stream=true, server-sent events as the text is produced."""
        info = store.get(body.model)
        require(info, "text")
        if body.prompt:
            require(info, "prompt")  # an unconditional generator (textgan) refuses a prompt: 400
        if info.vocab is not None:
            bad = sorted(set(body.prompt) - set(info.vocab))
            if bad:
                raise field_error("prompt", f"characters not in the model's vocabulary: {bad[:10]}", body.prompt[:64])
        req: TextRequest = seeded(request_of(body, TextRequest))
        cost_cap(("n", "max_new_tokens"), (req.n, req.max_new_tokens), config.max_request_tokens, "max_new_tokens")
        record = record_of(info, req)
        memo = config.memorization
        if not body.stream:
            texts = await within(backend.generate(info.id, req))
            check = None
            if memo.mode != "off":
                index = await asyncio.to_thread(memorization.load_index, info.path, info.digest)
                check = memorization.check_texts(index, texts, memo.max_copied_chars)
            hdrs = {**provenance_headers(record), **memorization.headers(check)}
            if memo.mode == "refuse" and check is not None and check.get("flagged"):
                longest = max(check["longest_copied_chars"])
                detail = (f"refused: a sample copies {longest} characters verbatim from the training corpus "
                          f"(memorization.max_copied_chars={memo.max_copied_chars})")
                return JSONResponse({"detail": detail}, status_code=451, headers=hdrs)
            body_out = TextResponse(model=info.id, texts=texts, provenance=record, memorization=check)
            if log is not None:
                await asyncio.to_thread(log.write, "/v1/text/generate", body.model_dump(), body_out.model_dump(exclude_none=True))
            return JSONResponse(body_out.model_dump(exclude_none=True), headers=hdrs)
        if memo.mode == "refuse":
            raise field_error("stream", "memorization.mode=refuse checks whole responses: use stream=false", True)
        if req.n != 1:
            raise field_error("n", "stream=true produces one sample; use n=1", req.n)
        pieces = backend.stream(info.id, req)
        if log is not None:
            pieces = _logged(pieces, log, body.model_dump(), record)
        return StreamingResponse(
            _events(pieces, deadline_s(config)),
            media_type="text/event-stream",
            headers=provenance_headers(record),
        )

    @api.post("/v1/images/generate", responses=IMAGE_OK)
    async def images_generate(body: ImageBody) -> Response:
        """n images from the prior: a PNG grid, or base64 PNGs in JSON."""
        info = store.get(body.model)
        require(info, "image")
        cost_cap(("n", "model"), (body.n, pixels(info)), config.max_request_pixels, "pixels per image")
        req = seeded(request_of(body, ImageRequest))
        images = await within(backend.generate(info.id, req))
        record = record_of(info, req)
        if log is not None:
            await asyncio.to_thread(log.write, "/v1/images/generate", body.model_dump(), {"images": len(images), "provenance": record})
        check = await image_check(info, images)
        return await asyncio.to_thread(image_response, info.id, images, body.format, None, record, check)

    @api.post("/v1/images/interpolate", responses=IMAGE_OK)
    async def images_interpolate(body: InterpolateBody) -> Response:
        """A latent walk (VAE, GAN) between two seeds' draws, as one row of a PNG or JSON."""
        info = store.get(body.model)
        require(info, "interpolate")
        cost_cap(("steps", "model"), (body.steps, pixels(info)), config.max_request_pixels, "pixels per image")
        req = request_of(body, InterpolateRequest)
        images = await within(backend.generate(info.id, req))
        record = record_of(info, req)
        if log is not None:
            await asyncio.to_thread(log.write, "/v1/images/interpolate", body.model_dump(), {"images": len(images), "provenance": record})
        check = await image_check(info, images)
        return await asyncio.to_thread(image_response, info.id, images, body.format, body.steps, record, check)

    @api.post("/v1/images/reconstruct", responses=IMAGE_OK)
    async def images_reconstruct(body: ReconstructBody) -> Response:
        """A VAE's reconstruction of a base64 PNG (resized to the model's image size)."""
        info = store.get(body.model)
        require(info, "reconstruct")
        x = await asyncio.to_thread(decode_upload, body.image, int(info.spec["channels"]), int(info.spec["image_size"]))
        images = await within(backend.reconstruct(info.id, x))
        record = provenance(info.id, info.bundle_sha256, None, {"reconstruct": True})
        if log is not None:
            await asyncio.to_thread(log.write, "/v1/images/reconstruct", body.model_dump(), {"images": len(images), "provenance": record})
        return await asyncio.to_thread(image_response, info.id, images, body.format, None, record)

    api.add_middleware(DeadlineMiddleware)
    api.add_middleware(ClientLimitMiddleware, max_per_client=config.max_concurrent_per_client)
    api.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)  # outermost
    return api


async def _logged(pieces: AsyncIterator[str], log: RequestLog, request: dict[str, Any], record: dict[str, str]) -> AsyncIterator[str]:
    """Pass a text stream through, then log the request with the whole streamed text (also when cut short)."""
    got: list[str] = []
    try:
        async for piece in pieces:
            got.append(piece)
            yield piece
    finally:
        close = getattr(pieces, "aclose", None)
        if close is not None:
            await close()  # stop the generation now, as _events would
        await asyncio.to_thread(
            log.write, "/v1/text/generate", request, {"texts": ["".join(got)], "provenance": record, "stream": True}
        )


async def _events(pieces: AsyncIterator[str], deadline_s: float) -> AsyncIterator[bytes]:
    """SSE stream: `data: {"text": ...}` per piece, then `event: done`, or `event: error`.

    Past `deadline_s` the generation is cancelled and the stream ends with an error event (the
    status line is gone by then); a reader that disconnects closes this generator, which stops
    the generation.
    """
    it = aiter(pieces)
    end = asyncio.get_running_loop().time() + deadline_s
    try:
        while True:
            try:  # the deadline bounds each read, never a yield (the reader's time is not ours)
                piece = await asyncio.wait_for(anext(it), end - asyncio.get_running_loop().time())
            except StopAsyncIteration:
                break
            yield sse(None, {"text": piece})
    except TimeoutError:
        yield sse("error", {"detail": f"request exceeded its {deadline_s:g} s deadline", "status": 504})
        return
    except Overloaded as e:
        yield sse("error", {"detail": f"server busy, retry later: {e}", "status": 503})
        return
    except Exception as e:  # headers are gone: report in-band
        yield sse("error", {"detail": str(e)})
        return
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    yield sse("done", {})
