"""A Tune trial's channel to its Ray Train run: reports come in, a stop flag goes out.

One small actor per Train run. This module imports nothing but Ray: Ray pickles an actor class by
reference, so the actor's process imports the module that defines it; defined next to the trial
(torch, Ray Train, the families) it paid about 3.7 s of CPU for that import, and a second actor
(`ray.util.queue.Queue`) carried the reports. One light actor does both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray


@ray.remote(num_cpus=0)
class TrialChannel:
    """Reports from the Train controller to the trial (a queue of one) and the trial's stop flag."""

    def __init__(self) -> None:
        self._items: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._stop = False

    async def put(self, item: Any, timeout: float | None = None) -> bool:
        """Queue `item` once the previous one was taken; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._items.put(item), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def get(self, timeout: float | None = None) -> tuple[bool, Any]:
        """(True, the next item), or (False, None) when `timeout` passed first."""
        try:
            return True, await asyncio.wait_for(self._items.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    async def set(self) -> None:
        """Ask the run to end at its next report."""
        self._stop = True

    async def is_set(self) -> bool:
        """Whether the run should end now (the training loop asks at every report)."""
        return self._stop
