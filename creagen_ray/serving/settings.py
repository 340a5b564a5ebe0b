"""The serving config: which bundles, limits, and per-family Serve deployment settings.

`creagen serve`, `serve/config.yaml` (as the application's `args`) and the benchmark all build a
`ServeConfig`; every Serve option the app uses comes from here, never from a raw dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from creagen_ray.config import Strict


class BatchSettings(Strict):
    """Dynamic batching (`@serve.batch`); the deployment's `user_config`, so it changes live."""

    max_batch_size: int = Field(8, ge=1, le=256, description="requests per model call")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=5.0, description="wait for a fuller batch")


class AutoscalingSettings(Strict):
    """Ray Serve `autoscaling_config` of one family deployment."""

    min_replicas: int = Field(1, ge=0, le=64)
    max_replicas: int = Field(2, ge=1, le=64)
    target_ongoing_requests: float = Field(4.0, gt=0.0, description="per replica, before scaling up")
    upscale_delay_s: float = Field(3.0, ge=0.0)
    downscale_delay_s: float = Field(5.0, ge=0.0)
    look_back_period_s: float = Field(12.0, gt=10.0, description="Ray 2.60 wants > the 10 s metrics interval")

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSettings":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas={self.max_replicas} < min_replicas={self.min_replicas}")
        return self


class FamilySettings(Strict):
    """One family deployment: replicas, batching, multiplexing cache, CPU share."""

    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    max_ongoing_requests: int = Field(64, ge=1, description="per replica; keep >= max_batch_size")
    max_num_models_per_replica: int = Field(4, ge=1, description="LRU bound of loaded bundles per replica")
    num_cpus: float = Field(0.5, ge=0.0)

    def deployment_options(self) -> dict[str, Any]:
        """The `Deployment.options(...)` of this family's deployment."""
        return {
            "autoscaling_config": self.autoscaling.model_dump(),
            "max_ongoing_requests": self.max_ongoing_requests,
            "user_config": self.batch.model_dump(),
            "ray_actor_options": {"num_cpus": self.num_cpus},
        }


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
    """Everything the serving app needs: bundle sources, HTTP limits, per-family deployments."""

    bundles: list[str] = Field(
        ..., min_length=1, description="bundle dirs, folders holding bundles, or storage URIs (s3://bucket/runs)"
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
    ingress_max_ongoing_requests: int = Field(256, ge=1)
    ingress_num_cpus: float = Field(0.1, ge=0.0)
    families: dict[str, FamilySettings] = Field(
        default_factory=dict, description="per family name; a family not listed gets the defaults"
    )

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
