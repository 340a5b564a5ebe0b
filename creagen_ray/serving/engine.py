"""Running requests on loaded bundles, without Ray: shared by the Serve replicas and the plain baseline.

Model calls are blocking torch code, so they run in a worker thread (`asyncio.to_thread`) and the
event loop stays free to accept (and batch) more requests. `stream_text` runs a family's token
iterator in a thread and yields whatever text has been produced since the last read, so the first
token leaves as soon as it exists and a slow reader gets coalesced chunks.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any, AsyncIterator, Callable, Sequence

import torch

from creagen_ray import storage
from creagen_ray.bundle import Bundle, load_bundle, pinned
from creagen_ray.config import TextRequest
from creagen_ray.families import Family
from creagen_ray.serving.store import BundleStore

_END = object()


def generate_batch(family: Family, requests: Sequence[Any]) -> list[Any]:
    """Answer a batch of same-kind requests with one model pass (raises on any failure)."""
    return list(family.generate_many(list(requests)))


def generate_isolated(family: Family, requests: Sequence[Any]) -> list[Any]:
    """Like `generate_batch`, but one bad request never fails the others: results or exceptions, in order.

    The batch runs as one model pass; only if that pass raises is each request answered on its own
    (same results: families draw every request from its own seeded generator), so a failing request
    gets its own exception back and every other request its normal result.
    """
    try:
        return generate_batch(family, requests)
    except Exception as batch_error:  # noqa: BLE001 - sorted out per request below
        if len(requests) == 1:
            return [batch_error]
    out: list[Any] = []
    for r in requests:
        try:
            out.append(generate_batch(family, [r])[0])
        except Exception as e:  # noqa: BLE001 - handed back to this request's caller only
            out.append(e)
    return out


def raise_if_failed(result: Any) -> Any:
    """A result of `generate_isolated`: raise it when it is that request's exception, else return it."""
    if isinstance(result, BaseException):
        raise result
    return result


def reconstruct(family: Family, x: torch.Tensor) -> torch.Tensor:
    """A VAE's reconstruction of images [N, C, H, W] in [0, 1]."""
    return family.reconstruct(x)


async def stream_text(
    family: Family, request: TextRequest, on_piece: Callable[[], None] | None = None
) -> AsyncIterator[str]:
    """Yield text pieces as the family produces them (one piece at the end if it cannot stream).

    `on_piece` is called (in the producing thread) for every piece the model produces.
    """
    if "stream" not in family.capabilities:
        texts = await asyncio.to_thread(family.generate, request)
        yield texts[0]
        return
    pieces = family.stream(request)  # validates the request before any thread starts
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: the reader left
            cancelled.set()

    def pump() -> None:
        try:
            for piece in pieces:
                if cancelled.is_set():
                    return
                if on_piece is not None:
                    on_piece()
                put(piece)
        except Exception as e:  # surfaced to the reader
            put(e)
        finally:
            put(_END)

    loop.run_in_executor(None, pump)
    try:
        done = False
        while not done:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            text = []
            for item in items:
                if item is _END:
                    done = True
                elif isinstance(item, Exception):
                    raise item
                else:
                    text.append(item)
            if text:
                yield "".join(text)
    finally:
        cancelled.set()  # the thread stops after its current token


class LocalBackend:
    """In-process backend (no Ray, no batching): an LRU of loaded bundles answering one request at a time."""

    def __init__(self, store: BundleStore, max_models: int = 4) -> None:
        self.store = store
        self.max_models = max_models
        self._bundles: OrderedDict[str, Bundle] = OrderedDict()
        self._lock = asyncio.Lock()
        self.calls = 0

    async def bundle(self, model_id: str) -> Bundle:
        """The loaded bundle for a served id (loaded on first use, least recently used evicted)."""
        async with self._lock:
            if model_id not in self._bundles:
                info = self.store.get(model_id)
                path = info.path
                if storage.is_uri(path):  # into this node's cache, refused if changed since the scan
                    path = await asyncio.to_thread(storage.fetch_bundle, path, info.digest)
                self._bundles[model_id] = pinned(await asyncio.to_thread(load_bundle, path), info.digest)
                while len(self._bundles) > self.max_models:
                    self._bundles.popitem(last=False)
            self._bundles.move_to_end(model_id)
            return self._bundles[model_id]

    async def generate(self, model_id: str, request: Any) -> Any:
        """One TextRequest / ImageRequest / InterpolateRequest, answered in a worker thread."""
        family = (await self.bundle(model_id)).family
        self.calls += 1
        return raise_if_failed((await asyncio.to_thread(generate_isolated, family, [request]))[0])

    async def stream(self, model_id: str, request: TextRequest) -> AsyncIterator[str]:
        """Text pieces of one sample as they are produced."""
        family = (await self.bundle(model_id)).family
        async for piece in stream_text(family, request):
            yield piece

    async def reconstruct(self, model_id: str, x: torch.Tensor) -> torch.Tensor:
        """A VAE reconstruction of images x."""
        family = (await self.bundle(model_id)).family
        return await asyncio.to_thread(reconstruct, family, x)

    async def stats(self) -> dict[str, Any]:
        """What this backend has done (no batching here: every call is a batch of one)."""
        return {"backend": "local", "calls": self.calls, "loaded_models": list(self._bundles)}
