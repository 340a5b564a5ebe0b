"""Adaptive dynamic batching, and the backend that answers requests with it inside one replica.

Why not `@serve.batch`: it waits `batch_wait_timeout_s` after every first request, even when no
other request is queued (a latency tax at low load), fails a request whose size alone exceeds
`max_batch_size`, and sends a request that does not fit to the back of the queue. `Batcher`:

- one FIFO queue per key (model id + kind) and one batch in flight per key;
- **adaptive wait**: when a batch starts and nothing else is queued it runs at once; under load it
  takes what is queued and waits up to `batch_wait_timeout_s` for more, until the batch is full.
  Load means requests already waiting, or a previous batch of several requests that ended less
  than `batch_wait_timeout_s` ago: closed-loop clients answered together come back a few
  milliseconds apart, and without that memory the first of them would start a batch alone and
  split the clients into two half-size cohorts that alternate on the model for good;
- a request's **cost** (its `n`, or `steps`) counts toward `max_batch_size`; a request larger than
  the whole batch runs alone; one that does not fit stays first in line for the next batch;
- a request whose caller went away (deadline, disconnect) is dropped before it reaches the model.

While a batch runs in a worker thread the event loop keeps accepting requests, so under load the
queue fills and the next batch is large without any timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable, AsyncIterator

import torch

from creagen_ray.bundle import Bundle
from creagen_ray.config import InterpolateRequest, TextRequest
from creagen_ray.serving import engine
from creagen_ray.serving.settings import BatchSettings

log = logging.getLogger(__name__)


@dataclass
class _Item:
    request: Any
    cost: int
    future: asyncio.Future


@dataclass
class BatchStats:
    """What one key's batches looked like: requests and samples per batch, and how often it waited."""

    sizes: Counter = field(default_factory=Counter)  # requests per batch -> batches
    costs: Counter = field(default_factory=Counter)  # samples (sum of n) per batch -> batches
    waited: int = 0  # batches that waited for more requests (only ever under load)
    dropped: int = 0  # requests whose caller left before their batch ran
    last_size: int = 0  # requests in the latest batch
    last_end: float = float("-inf")  # time.monotonic() when the latest batch was answered


class Batcher:
    """Per-key queues feeding `run(key, requests) -> results` one adaptive batch at a time."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], Awaitable[list[Any]]],
        settings: Callable[[Hashable], BatchSettings],
    ) -> None:
        self.run = run
        self.settings = settings
        self.stats: dict[Hashable, BatchStats] = {}
        self._queues: dict[Hashable, deque[_Item]] = {}
        self._ready: dict[Hashable, asyncio.Event] = {}
        self._tasks: dict[Hashable, asyncio.Task] = {}

    def queued(self, key: Hashable) -> int:
        """Requests waiting for a batch under `key` (not the one running)."""
        return len(self._queues.get(key, ()))

    async def submit(self, key: Hashable, request: Any, cost: int = 1) -> Any:
        """Queue one request and wait for its own result (cancelling the wait drops the request)."""
        if key not in self._queues:
            self._queues[key] = deque()
            self._ready[key] = asyncio.Event()
            self.stats[key] = BatchStats()
            self._tasks[key] = asyncio.get_running_loop().create_task(self._consume(key))
        future = asyncio.get_running_loop().create_future()
        self._queues[key].append(_Item(request, max(1, int(cost)), future))
        self._ready[key].set()
        return await future

    async def _next(self, key: Hashable, timeout: float | None) -> bool:
        """Wait until `key`'s queue holds a live request; False on timeout."""
        queue, ready = self._queues[key], self._ready[key]
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            while queue and queue[0].future.done():  # caller gone
                queue.popleft()
                self.stats[key].dropped += 1
            if queue:
                return True
            ready.clear()
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(ready.wait(), left)
            except asyncio.TimeoutError:
                return False

    def _take(self, key: Hashable, batch: list[_Item], cost: int, limit: int) -> int:
        """Move queued live requests into `batch` while they fit; returns the batch's cost."""
        queue = self._queues[key]
        while queue:
            item = queue[0]
            if item.future.done():
                queue.popleft()
                self.stats[key].dropped += 1
                continue
            if cost + item.cost > limit:
                break  # stays first in line
            batch.append(queue.popleft())
            cost += item.cost
        return cost

    async def _form(self, key: Hashable) -> list[_Item]:
        """The next batch: at once when idle, gathered (up to the wait) when requests are queued."""
        await self._next(key, None)
        settings = self.settings(key)
        queue = self._queues[key]
        first = queue.popleft()
        batch = [first]
        st = self.stats[key]
        recent = st.last_size > 1 and time.monotonic() - st.last_end < settings.batch_wait_timeout_s
        loaded = bool(queue) or recent  # others waiting, or a multi-request batch just answered: gather
        cost = self._take(key, batch, first.cost, settings.max_batch_size)
        if loaded and cost < settings.max_batch_size and settings.batch_wait_timeout_s > 0:
            st.waited += 1
            end = time.monotonic() + settings.batch_wait_timeout_s
            while cost < settings.max_batch_size and not (queue and cost + queue[0].cost > settings.max_batch_size):
                if not await self._next(key, end - time.monotonic()):
                    break
                cost = self._take(key, batch, cost, settings.max_batch_size)
        st.sizes[len(batch)] += 1
        st.costs[cost] += 1
        return batch

    async def _consume(self, key: Hashable) -> None:
        while True:
            batch = await self._form(key)
            try:
                results = await self.run(key, [item.request for item in batch])
            except Exception as e:  # noqa: BLE001 - the batch's callers get the error
                results = [e] * len(batch)
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            self.stats[key].last_size, self.stats[key].last_end = len(batch), time.monotonic()


def cost_of(request: Any) -> int:
    """Samples a request produces: its n (text, images) or steps (interpolation)."""
    if isinstance(request, InterpolateRequest):
        return request.steps
    return int(getattr(request, "n", 1))


def kind_of(request: Any) -> str:
    """Batch kind: requests of one kind and one model share a model call."""
    return "text" if isinstance(request, TextRequest) else "image"


class BatchingBackend:
    """The API backend inside a replica: bundles from `load`, generate requests batched per model and kind.

    `family_of(model_id)` names the family whose `BatchSettings` (`batch_of(family)`) apply. Used by
    the colocated ingress (every family in one replica) and by each family deployment (split).
    """

    def __init__(
        self,
        load: Callable[[str], Awaitable[Bundle]],
        family_of: Callable[[str], str],
        batch_of: Callable[[str], BatchSettings],
    ) -> None:
        self.load = load
        self.family_of = family_of
        self.batch_of = batch_of
        self.batcher = Batcher(self._run, lambda key: batch_of(family_of(key[0])))
        self.tokens_streamed: Counter[str] = Counter()  # family -> pieces produced by streams

    async def _run(self, key: tuple[str, str], requests: list[Any]) -> list[Any]:
        bundle = await self.load(key[0])
        return await asyncio.to_thread(engine.generate_isolated, bundle.family, requests)  # a result or exception each

    async def generate(self, model_id: str, request: Any) -> Any:
        """One request, answered inside an adaptive batch of same-model, same-kind requests."""
        return await self.batcher.submit((model_id, kind_of(request)), request, cost_of(request))

    async def stream(self, model_id: str, request: TextRequest) -> AsyncIterator[str]:
        """Text pieces of one sample as they are produced (generation stops when the reader leaves)."""
        bundle = await self.load(model_id)
        family = self.family_of(model_id)

        def produced() -> None:
            self.tokens_streamed[family] += 1

        async for piece in engine.stream_text(bundle.family, request, on_piece=produced):
            yield piece

    async def reconstruct(self, model_id: str, x: torch.Tensor) -> torch.Tensor:
        """A VAE reconstruction of images x [N, C, H, W] in [0, 1]."""
        bundle = await self.load(model_id)
        return await asyncio.to_thread(engine.reconstruct, bundle.family, x)

    def family_stats(self, family: str) -> dict[str, Any]:
        """Batches seen for `family`'s models: {kind: {size: count}} by requests and by samples."""
        out: dict[str, Any] = {"batch_sizes": {"text": Counter(), "image": Counter()},
                               "batch_costs": {"text": Counter(), "image": Counter()}, "waited": 0, "dropped": 0}
        for (model_id, kind), st in self.batcher.stats.items():
            if self.family_of(model_id) != family:
                continue
            out["batch_sizes"][kind].update(st.sizes)
            out["batch_costs"][kind].update(st.costs)
            out["waited"] += st.waited
            out["dropped"] += st.dropped
        for k in ("batch_sizes", "batch_costs"):
            out[k] = {kind: dict(sorted(c.items())) for kind, c in out[k].items()}
        batch = self.batch_of(family)
        out.update(max_batch_size=batch.max_batch_size, batch_wait_timeout_s=batch.batch_wait_timeout_s,
                   tokens_streamed=self.tokens_streamed[family], cpu_s=time.process_time())
        return out
