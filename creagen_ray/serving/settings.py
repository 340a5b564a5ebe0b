"""The serving config: which bundles, limits, topology, and per-deployment Serve settings.

`creagen serve`, `serve/config.yaml` (as the application's `args`) and the benchmark all build a
`ServeConfig`; every Serve option the app uses comes from here, never from a raw dict. Replica
counts and CPU shares left unset (None) are derived from the cluster's CPUs when the app is built
(`creagen_ray.serving.app.fit_to_cluster`), so the default fits the machine it starts on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from creagen_ray.config import Strict


class BatchSettings(Strict):
    """Adaptive dynamic batching (serving/batching.py); live through `user_config`."""

    max_batch_size: int = Field(32, ge=1, le=256, description="samples per model call: a request's n counts n")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0.0, le=5.0,
        description="extra wait for a fuller batch, only under load: requests queued, or a multi-request batch just answered",
    )


class AutoscalingSettings(Strict):
    """Ray Serve `autoscaling_config` of one deployment; max_replicas None = derived from cluster CPUs."""

    min_replicas: int = Field(1, ge=0, le=64)
    max_replicas: int | None = Field(None, ge=1, le=64, description="None: fit to the cluster's CPUs at build time")
    target_ongoing_requests: float = Field(8.0, gt=0.0, description="per replica, before scaling up")
    upscale_delay_s: float = Field(3.0, ge=0.0)
    downscale_delay_s: float = Field(30.0, ge=0.0)
    look_back_period_s: float = Field(12.0, gt=10.0, description="Ray 2.60 wants > the 10 s metrics interval")

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSettings":
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"max_replicas={self.max_replicas} < min_replicas={self.min_replicas}")
        return self


class DeploymentSettings(Strict):
    """One Serve deployment: replicas, admission (ongoing + queued), model cache, CPU share."""

    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    max_ongoing_requests: int = Field(64, ge=1, description="per replica; these reach the batcher concurrently")
    max_queued_requests: int = Field(64, ge=-1, description="per caller past max_ongoing; beyond it 503 + Retry-After")
    max_num_models_per_replica: int = Field(4, ge=1, description="LRU bound of loaded bundles per replica")
    num_cpus: float | None = Field(None, ge=0.0, description="None: fit to the cluster's CPUs at build time")


class FamilySettings(DeploymentSettings):
    """A family's batching, and its deployment's settings when topology is 'split'."""

    batch: BatchSettings = Field(default_factory=BatchSettings)


class MemorizationSettings(Strict):
    """Memorization check per response: text against the bundle's training n-gram index, images against its
    stored training-feature sample (creagen_ray/memorization.py)."""

    mode: Literal["off", "flag", "refuse"] = Field(
        "off", description="off; flag: report copied spans in JSON and X-Creagen-* headers; refuse: 451 past the threshold"
    )
    max_copied_chars: int = Field(
        64, ge=12, le=100_000, description="a sample whose longest span copied from the training corpus reaches this is flagged"
    )
    min_neighbour_rms: float = Field(
        0.02, ge=0.0, le=1.0,
        description="an image whose 8x8-pooled rms distance to a stored training image is at most this is flagged",
    )


SIGNING_KEY_ENV = "CREAGEN_SIGNING_KEY"


def read_secret(path: str | Path) -> str:
    """A secret from a file (first line, whitespace stripped); a ValueError when missing or empty."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"secret file not found: {p}")
    value = p.read_text(encoding="utf-8").strip()
    if not value:
        raise ValueError(f"secret file {p} is empty")
    return value


class ServeConfig(Strict):
    """Everything the serving app needs: bundle sources, HTTP limits, costs, topology, deployments."""

    bundles: list[str] = Field(
        ..., min_length=1, description="bundle dirs, folders holding bundles, or storage URIs (s3://bucket/runs)"
    )
    topology: Literal["colocated", "split"] = Field(
        "colocated",
        description="colocated: one deployment (HTTP + models + batching); split: ingress -> one deployment per family",
    )
    api_key: str | None = Field(None, min_length=1, description="when set, requests need X-API-Key")
    max_body_bytes: int = Field(2 * 2**20, ge=1024, description="larger request bodies get 413")
    max_concurrent_per_client: int | None = Field(
        None, ge=1, description="requests in flight per API key (else client address); more get 429. None = off"
    )
    require_signature: bool = Field(
        False, description=f"serve only bundles whose manifest.sig verifies under the key in signing_key_file or ${SIGNING_KEY_ENV}"
    )
    signing_key_file: str | None = Field(None, description="file holding the HMAC key bundles are signed with (`creagen sign`)")
    request_timeout_s: float = Field(60.0, gt=0.0, description="per-request deadline; past it 504")
    max_request_tokens: int = Field(8192, ge=1, description="cap on n * max_new_tokens of one request (422 past it)")
    max_request_pixels: int = Field(64 * 64 * 64, ge=1, description="cap on n (or steps) * height * width (422 past it)")
    retry_after_s: float = Field(1.0, ge=0.0, description="Retry-After of a 503 past the queue bound")
    memorization: MemorizationSettings = Field(default_factory=MemorizationSettings)
    request_log: str | None = Field(
        None,
        description="opt-in: append every generation request and its output, UNREDACTED (prompts, uploads, texts), "
        "as JSON lines to this file (mode 0600). Off by default: nothing of a request is logged",
    )
    ingress: DeploymentSettings = Field(default_factory=DeploymentSettings)
    families: dict[str, FamilySettings] = Field(
        default_factory=dict, description="per family name; a family not listed gets the defaults"
    )

    @field_validator("bundles", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        """`serve run ... bundles=a,b` passes one string: split it on commas."""
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: dict[str, FamilySettings]) -> dict[str, FamilySettings]:
        from creagen_ray.families import family_names

        unknown = sorted(set(v) - set(family_names()))
        if unknown:
            raise ValueError(f"unknown model families {unknown}; known: {sorted(family_names())}")
        return v

    def signing_key(self) -> bytes | None:
        """The operator's bundle-signing key when `require_signature` is on (file first, then the env var)."""
        if not self.require_signature:
            return None
        if self.signing_key_file:
            return read_secret(self.signing_key_file).encode()
        key = os.environ.get(SIGNING_KEY_ENV, "").strip()
        if not key:
            raise ValueError(f"require_signature is on but no key: set signing_key_file or ${SIGNING_KEY_ENV}")
        return key.encode()

    def family(self, name: str) -> FamilySettings:
        """The settings of the deployment serving family `name` (defaults when not configured)."""
        return self.families.get(name) or FamilySettings()
