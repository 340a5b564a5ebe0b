"""The Ray Serve application: a FastAPI ingress and one deployment per model family.

    ingress (FastAPI, api.build_api) --handle.options(multiplexed_model_id=ID)--> rnn | vae | gan

Each family deployment autoscales (`autoscaling_config`), loads bundles on demand through Serve
model multiplexing (model id -> bundle dir, an LRU of `max_num_models_per_replica` per replica;
Serve routes a model's requests to replicas that already hold it), and batches generate requests
with `@serve.batch`; batches are split by model id, so one batch is one model call. The batch
size and wait come from `user_config`, so `serve deploy` with a new `user_config` changes them
live through `reconfigure`, without restarting replicas.

`build_app(ServeConfig)` is the application builder that `creagen serve`, `serve/app.py` and the
tests use.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, AsyncIterator

import torch
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from creagen_ray import storage
from creagen_ray.bundle import Bundle, BundleError, load_bundle, pinned
from creagen_ray.config import TextRequest
from creagen_ray.serving import engine
from creagen_ray.serving.api import build_api
from creagen_ray.serving.settings import BatchSettings, ServeConfig
from creagen_ray.serving.store import BundleStore, UnknownModel

log = logging.getLogger(__name__)
_DEFAULT_BATCH = BatchSettings()


@serve.deployment(logging_config={"enable_access_log": False})
class Generator:
    """One family's replicas: multiplexed bundles, batched generation, streaming, reconstruction."""

    def __init__(self, family: str, bundles: dict[str, str], max_models: int, digests: dict[str, str] | None = None) -> None:
        self.family = family
        self.paths = bundles  # model id -> verified bundle dir or storage URI (from the store scan)
        self.digests = digests or {}  # model id -> manifest sha256 pinned at the scan
        self.batch = _DEFAULT_BATCH
        self.batch_sizes: dict[str, Counter[int]] = {"text": Counter(), "image": Counter()}

        async def load(model_id: str) -> Bundle:
            if model_id not in self.paths:
                raise UnknownModel(f"model {model_id!r} is not a {family} bundle served here")
            path = self.paths[model_id]
            if storage.is_uri(path):  # into this node's cache, refused if changed since the scan
                path = await asyncio.to_thread(storage.fetch_bundle, path, self.digests.get(model_id))
            return pinned(await asyncio.to_thread(load_bundle, path), self.digests.get(model_id))  # re-verifies sha256

        # wrapped here, not with a class decorator, so the LRU bound comes from the config
        self.load = serve.multiplexed(max_num_models_per_replica=max_models)(load)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new batch size / wait from `user_config` (live, on every replica)."""
        self.batch = BatchSettings.model_validate(user_config or {})
        for handler in (self._text_batch, self._image_batch):
            handler.set_max_batch_size(self.batch.max_batch_size)
            handler.set_batch_wait_timeout_s(self.batch.batch_wait_timeout_s)

    async def _run_batch(self, kind: str, requests: list[Any]) -> list[Any]:
        bundle = await self.load(serve.get_multiplexed_model_id())
        self.batch_sizes[kind][len(requests)] += 1
        return await asyncio.to_thread(engine.generate_isolated, bundle.family, requests)  # a result or exception each

    @serve.batch(max_batch_size=_DEFAULT_BATCH.max_batch_size, batch_wait_timeout_s=_DEFAULT_BATCH.batch_wait_timeout_s)
    async def _text_batch(self, requests: list[TextRequest]) -> list[list[str]]:
        return await self._run_batch("text", requests)

    @serve.batch(max_batch_size=_DEFAULT_BATCH.max_batch_size, batch_wait_timeout_s=_DEFAULT_BATCH.batch_wait_timeout_s)
    async def _image_batch(self, requests: list[Any]) -> list[torch.Tensor]:
        return await self._run_batch("image", requests)

    async def generate(self, request: Any) -> Any:
        """One request, answered inside a dynamic batch of same-model, same-kind requests."""
        if isinstance(request, TextRequest):
            return engine.raise_if_failed(await self._text_batch(request))
        return engine.raise_if_failed(await self._image_batch(request))

    async def stream(self, request: TextRequest) -> AsyncIterator[str]:
        """Text pieces of one sample as they are produced (a streaming handle call)."""
        bundle = await self.load(serve.get_multiplexed_model_id())
        async for piece in engine.stream_text(bundle.family, request):
            yield piece

    async def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """A VAE reconstruction of images x [N, C, H, W] in [0, 1]."""
        bundle = await self.load(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(engine.reconstruct, bundle.family, x)

    def stats(self) -> dict[str, Any]:
        """This replica's observed batch sizes ({size: count}) and live batch settings."""
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batch_sizes": {k: dict(sorted(c.items())) for k, c in self.batch_sizes.items()},
            "max_batch_size": self.batch.max_batch_size,
            "batch_wait_timeout_s": self.batch.batch_wait_timeout_s,
        }


class ServeBackend:
    """The API's backend inside the ingress: forwards to the family deployments by model id."""

    def __init__(self, store: BundleStore, generators: dict[str, DeploymentHandle]) -> None:
        self.store = store
        self.generators = generators

    def _handle(self, model_id: str, stream: bool = False) -> DeploymentHandle:
        family = self.store.get(model_id).family
        return self.generators[family].options(multiplexed_model_id=model_id, stream=stream)

    async def generate(self, model_id: str, request: Any) -> Any:
        """Forward one generate request (batched on the family's replica)."""
        return await self._handle(model_id).generate.remote(request)

    async def stream(self, model_id: str, request: TextRequest) -> AsyncIterator[str]:
        """Forward a streaming text request; yields pieces as the replica produces them."""
        async for piece in self._handle(model_id, stream=True).stream.remote(request):
            yield piece

    async def reconstruct(self, model_id: str, x: torch.Tensor) -> torch.Tensor:
        """Forward a VAE reconstruction."""
        return await self._handle(model_id).reconstruct.remote(x)

    async def stats(self) -> dict[str, Any]:
        """Stats of one replica per family deployment."""
        names = sorted(self.generators)
        got = await asyncio.gather(*(self.generators[f].stats.remote() for f in names))
        return {"backend": "serve", "families": dict(zip(names, got))}


@serve.deployment(name="ingress", logging_config={"enable_access_log": False})
@serve.ingress()
class Ingress:
    """The HTTP entry point: validates, resolves model ids, and calls the family deployments."""

    def __init__(self, config: ServeConfig, store: BundleStore, generators: dict[str, DeploymentHandle]) -> None:
        self.config = config
        self.store = store
        self.backend = ServeBackend(store, generators)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this once per replica, after __init__, for the ASGI app."""
        return build_api(self.store, self.backend, self.config)


def build_app(config: ServeConfig | dict[str, Any]) -> serve.Application:
    """The Serve application for a ServeConfig: scan the store, one Generator per family present."""
    config = ServeConfig.model_validate(config)
    store = BundleStore.scan(config.bundles, signing_key=config.signing_key())
    if not store.models:
        raise BundleError(f"no verified bundle under {config.bundles}; refused: {store.rejected}")
    generators = {
        family: Generator.options(name=family, **config.family(family).deployment_options()).bind(
            family, paths, config.family(family).max_num_models_per_replica, store.digests()
        )
        for family, paths in sorted(store.families().items())
    }
    ingress = Ingress.options(
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress_num_cpus},
    )
    return ingress.bind(config, store, generators)
