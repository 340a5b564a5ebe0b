"""The Ray Serve application, in one of two topologies (`ServeConfig.topology`).

    colocated (default):  proxy -> ingress (FastAPI + bundles + adaptive batching)
    split:                proxy -> ingress (FastAPI) --handle(multiplexed_model_id)--> rnn | vae | gan

colocated answers in the replica that parsed the request: one hop (and one serialization) fewer;
each replica keeps an LRU of `max_num_models_per_replica` loaded bundles and the replicas scale
together. split keeps one autoscaling deployment per family with Serve model multiplexing (a
model's requests go to replicas that already hold it), for clusters where families need different
hardware or scale. bench/serve_load.py measures both; docs/benchmarks.md has the numbers.

Batching is `serving/batching.py` in both (adaptive wait, `n` counts toward the batch size); the
batch settings are the serving deployment's `user_config`, so `serve deploy` with a new
`user_config` changes them live through `reconfigure`. Past `max_ongoing_requests` a replica's
callers queue up to `max_queued_requests`, then answer 503 with `Retry-After`.

`build_app(ServeConfig)` is the builder `creagen serve`, `serve/config.yaml`
(`import_path: creagen_ray.serving.app:app_builder`) and the tests use. `app` (for `serve build
creagen_ray.serving.app:app`) is built on first access from $CREAGEN_BUNDLES (comma-separated).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, AsyncIterator

import ray
import torch
from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from creagen_ray import storage
from creagen_ray.bundle import Bundle, BundleError, load_bundle, pinned
from creagen_ray.config import TextRequest
from creagen_ray.serving.api import Overloaded, build_api
from creagen_ray.serving.batching import BatchingBackend
from creagen_ray.serving.dataplane import current_dataplane
from creagen_ray.serving.engine import LocalBackend
from creagen_ray.serving.settings import BatchSettings, DeploymentSettings, ServeConfig
from creagen_ray.serving.store import BundleStore, UnknownModel

log = logging.getLogger(__name__)


def _batch_config(config: ServeConfig, families: list[str]) -> dict[str, Any]:
    """user_config: {family: BatchSettings} for the families a deployment answers."""
    return {f: config.family(f).batch.model_dump() for f in families}


def _apply_batch_config(user_config: dict[str, Any] | None) -> dict[str, BatchSettings]:
    """Validate a user_config ({family: batch settings}); unknown keys are a clear error."""
    from creagen_ray.families import family_names

    out = {}
    for family, batch in (user_config or {}).items():
        if family not in family_names():
            raise ValueError(f"user_config: unknown family {family!r}; known: {sorted(family_names())}")
        out[family] = BatchSettings.model_validate(batch)
    return out


@serve.deployment(logging_config={"enable_access_log": False})
class Generator:
    """One family's replicas (split topology): multiplexed bundles, adaptive batches, streaming."""

    def __init__(self, family: str, bundles: dict[str, str], max_models: int, digests: dict[str, str] | None = None) -> None:
        self.family = family
        self.paths = bundles  # model id -> verified bundle dir or storage URI (from the store scan)
        self.digests = digests or {}  # model id -> manifest sha256 pinned at the scan
        self.batch = {family: BatchSettings()}

        async def load(model_id: str) -> Bundle:
            if model_id not in self.paths:
                raise UnknownModel(f"model {model_id!r} is not a {family} bundle served here")
            path = self.paths[model_id]
            if storage.is_uri(path):  # into this node's cache, refused if changed since the scan
                path = await asyncio.to_thread(storage.fetch_bundle, path, self.digests.get(model_id))
            return pinned(await asyncio.to_thread(load_bundle, path), self.digests.get(model_id))  # re-verifies sha256

        # wrapped here, not with a class decorator, so the LRU bound comes from the config
        self.backend = BatchingBackend(
            serve.multiplexed(max_num_models_per_replica=max_models)(load),
            lambda _id: family,
            lambda f: self.batch.get(f, BatchSettings()),
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batch settings from `user_config` ({family: {max_batch_size, batch_wait_timeout_s}})."""
        self.batch.update(_apply_batch_config(user_config))

    async def generate(self, request: Any) -> Any:
        """One request, answered inside an adaptive batch of same-model, same-kind requests."""
        return await self.backend.generate(serve.get_multiplexed_model_id(), request)

    async def stream(self, request: TextRequest) -> AsyncIterator[str]:
        """Text pieces of one sample as they are produced (a streaming handle call)."""
        async for piece in self.backend.stream(serve.get_multiplexed_model_id(), request):
            yield piece

    async def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """A VAE reconstruction of images x [N, C, H, W] in [0, 1]."""
        return await self.backend.reconstruct(serve.get_multiplexed_model_id(), x)

    def stats(self) -> dict[str, Any]:
        """This replica's observed batches and live batch settings."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, **self.backend.family_stats(self.family)}


class ServeBackend:
    """The API's backend inside the split ingress: forwards to the family deployments by model id."""

    def __init__(self, store: BundleStore, generators: dict[str, DeploymentHandle], retry_after_s: float) -> None:
        self.store = store
        self.generators = generators
        self.retry_after_s = retry_after_s

    def _handle(self, model_id: str, stream: bool = False) -> DeploymentHandle:
        family = self.store.get(model_id).family
        return self.generators[family].options(multiplexed_model_id=model_id, stream=stream)

    async def generate(self, model_id: str, request: Any) -> Any:
        """Forward one generate request (batched on the family's replica)."""
        try:
            return await self._handle(model_id).generate.remote(request)
        except BackPressureError as e:
            raise Overloaded(str(e), e.retry_after_s or self.retry_after_s) from None

    async def stream(self, model_id: str, request: TextRequest) -> AsyncIterator[str]:
        """Forward a streaming text request; yields pieces as the replica produces them."""
        try:
            async for piece in self._handle(model_id, stream=True).stream.remote(request):
                yield piece
        except BackPressureError as e:
            raise Overloaded(str(e), e.retry_after_s or self.retry_after_s) from None

    async def reconstruct(self, model_id: str, x: torch.Tensor) -> torch.Tensor:
        """Forward a VAE reconstruction."""
        try:
            return await self._handle(model_id).reconstruct.remote(x)
        except BackPressureError as e:
            raise Overloaded(str(e), e.retry_after_s or self.retry_after_s) from None

    async def stats(self) -> dict[str, Any]:
        """Stats of one replica per family deployment."""
        names = sorted(self.generators)
        got = await asyncio.gather(*(self.generators[f].stats.remote() for f in names))
        return {"backend": "serve-split", "dataplane": current_dataplane(), "families": dict(zip(names, got))}


class ColocatedBackend(BatchingBackend):
    """The API's backend inside the colocated ingress: bundles loaded in this replica (LRU), batched."""

    def __init__(self, store: BundleStore, max_models: int, batch: dict[str, BatchSettings]) -> None:
        self.store = store
        self.batch = batch
        self.cache = LocalBackend(store, max_models=max_models)
        super().__init__(self.cache.bundle, lambda m: store.get(m).family, lambda f: self.batch.get(f, BatchSettings()))

    async def stats(self) -> dict[str, Any]:
        """This replica's batches per family and the bundles it holds."""
        families = sorted({info.family for info in self.store.models.values()})
        return {
            "backend": "serve-colocated",
            "dataplane": current_dataplane(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "loaded_models": list(self.cache._bundles),
            "families": {f: self.family_stats(f) for f in families},
        }


@serve.deployment(name="ingress", logging_config={"enable_access_log": False})
@serve.ingress()
class Ingress:
    """The HTTP entry point: validates, resolves model ids, then batches here (colocated) or forwards (split)."""

    def __init__(self, config: ServeConfig, store: BundleStore, generators: dict[str, DeploymentHandle]) -> None:
        self.config = config
        self.store = store
        if generators:
            self.backend: Any = ServeBackend(store, generators, config.retry_after_s)
        else:
            families = sorted(store.families())
            batch = _apply_batch_config(_batch_config(config, families))
            self.backend = ColocatedBackend(store, config.ingress.max_num_models_per_replica, batch)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Colocated: apply new batch settings ({family: {...}}) live on every replica."""
        if isinstance(self.backend, ColocatedBackend):
            self.backend.batch.update(_apply_batch_config(user_config))

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this once per replica, after __init__, for the ASGI app."""
        return build_api(self.store, self.backend, self.config)


def cluster_cpus() -> float:
    """Logical CPUs of the Ray cluster this builder runs in (this machine's CPUs before ray.init)."""
    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 0.0)) or float(os.cpu_count() or 1)
    return float(os.cpu_count() or 1)


def fit_to_cluster(settings: DeploymentSettings, share: float, cpus: float, default_cpus: float) -> dict[str, Any]:
    """Deployment options whose unset replica bound and CPU share fit `share` of the cluster's CPUs.

    max_replicas None -> max(1, floor(share * cpus / default_cpus)); num_cpus None -> the share split
    over max_replicas (at most `default_cpus`), so every replica of every deployment can be placed.
    """
    budget = max(0.01, share * cpus)
    auto = settings.autoscaling.model_dump()
    if auto["max_replicas"] is None:
        auto["max_replicas"] = max(1, auto["min_replicas"], int(budget // default_cpus))
    num_cpus = settings.num_cpus
    if num_cpus is None:
        num_cpus = round(min(default_cpus, budget / auto["max_replicas"]), 3)
    return {
        "autoscaling_config": auto,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "ray_actor_options": {"num_cpus": num_cpus},
    }


def build_app(config: ServeConfig | dict[str, Any]) -> serve.Application:
    """The Serve application for a ServeConfig: scan the store, then the configured topology."""
    config = ServeConfig.model_validate(config)
    store = BundleStore.scan(config.bundles, signing_key=config.signing_key())
    if not store.models:
        raise BundleError(f"no verified bundle under {config.bundles}; refused: {store.rejected}")
    cpus = cluster_cpus()
    backpressure = {"status_code": 503, "retry_after_s": config.retry_after_s}
    families = sorted(store.families())
    generators: dict[str, Any] = {}
    if config.topology == "colocated":
        opts = fit_to_cluster(config.ingress, 0.9, cpus, default_cpus=1.0)
        opts["user_config"] = _batch_config(config, families)
    else:
        opts = fit_to_cluster(config.ingress, 0.1, cpus, default_cpus=0.1)
        for family, paths in sorted(store.families().items()):
            fam = config.family(family)
            gen_opts = fit_to_cluster(fam, 0.8 / len(families), cpus, default_cpus=0.5)
            generators[family] = Generator.options(
                name=family, user_config=_batch_config(config, [family]), backpressure_config=backpressure, **gen_opts
            ).bind(family, paths, fam.max_num_models_per_replica, store.digests())
    return Ingress.options(backpressure_config=backpressure, **opts).bind(config, store, generators)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (`serve run creagen_ray.serving.app:app_builder bundles=DIR[,DIR]`)."""
    return build_app(ServeConfig.model_validate(args))


def __getattr__(name: str) -> Any:
    """`app`: the application for $CREAGEN_BUNDLES, built on first access (for `serve build`)."""
    if name == "app":
        bundles = os.environ.get("CREAGEN_BUNDLES")
        if not bundles:
            raise RuntimeError("creagen_ray.serving.app:app needs CREAGEN_BUNDLES=DIR[,DIR] (bundle dirs or folders)")
        return app_builder({"bundles": bundles})
    raise AttributeError(name)
