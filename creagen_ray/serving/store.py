"""The bundle store: which verified bundles are served, under which model ids, from where.

A source is a bundle directory (its id is the directory name) or a folder holding bundles. Every
bundle is verified when the store is scanned: sha256 of each file, no file resolving outside its
directory, its weights loaded once (they must fit the modules its config builds and be finite),
and, with `serve.require_signature`, its manifest signed under the operator's key. One that fails
is never served and is listed, with the reason, in /v1/models' `rejected`. A model id is a plain
name ([A-Za-z0-9_.-], no leading dot) and resolves only to a catalog entry whose real path lies
inside its source folder, so no id can reach a path outside the store.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, Field

from creagen_ray import storage
from creagen_ray.bundle import MANIFEST, SIGNATURE, BundleError, load_bundle, verify_signature

log = logging.getLogger(__name__)

MODEL_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)


class StoreError(LookupError):
    """A model id that cannot be served; `status` is the HTTP status it maps to."""

    status = 404


class InvalidModelId(StoreError):
    """An id that is not a plain bundle name (traversal, separators, too long)."""

    status = 422


class UnknownModel(StoreError):
    """No verified bundle has this id."""

    status = 404


class RejectedModel(StoreError):
    """A bundle with this id exists but failed verification, so it is not served."""

    status = 409


class ModelInfo(BaseModel):
    """What the API says about a served bundle (and what the ingress needs to route it)."""

    id: str
    family: str
    modality: str
    capabilities: list[str]
    temperature: float | None = Field(
        None, description="text models: the temperature a request without one decodes at (the bundle's "
        "model.temperature; 0 = greedy); null for image models",
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    path: str = Field(..., exclude=True, description="bundle folder, or its storage URI")
    digest: str | None = Field(None, exclude=True, description="sha256 of the manifest verified at the scan (pinned)")
    vocab: list[str] | None = Field(None, exclude=True, description="char vocab: prompts must stay inside it")
    bundle_sha256: str | None = Field(None, description="sha256 of the bundle's manifest.json (provenance)")


def check_model_id(model_id: str) -> str:
    """Return the id when it is a plain bundle name, else raise InvalidModelId."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
        raise InvalidModelId(f"invalid model id {model_id!r}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'")
    return model_id


def inside(root: Path, candidate: Path) -> bool:
    """True when `candidate` (symlinks resolved) lies inside `root` (resolved)."""
    return candidate.resolve().is_relative_to(root.resolve())


def finite_json(value: Any) -> Any:
    """JSON-safe copy of metrics: NaN / inf (which JSON cannot carry) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def read_info(model_id: str, path: Path, signing_key: bytes | None = None, signature: str | None = None) -> ModelInfo:
    """Verify a bundle (signature, sha256, weights loaded once: shapes and finite values) and describe it."""
    if signing_key is not None:
        verify_signature(path, signing_key, signature)
    b = load_bundle(path, device="cpu", weights=True)  # the weights are checked here, then dropped
    return ModelInfo(
        id=model_id,
        family=b.family.name,
        modality=b.spec.modality,
        capabilities=sorted(b.family.capabilities),
        temperature=b.family.default_temperature,
        metrics=finite_json(b.metrics),
        spec=b.spec.model_dump(exclude_none=True),
        path=str(b.path.resolve()),
        vocab=getattr(b.tokenizer, "chars", None),
        bundle_sha256=b.sha256,
        digest=b.sha256,  # replicas refuse the bundle if its manifest changes after this scan
    )


def remote_bundles(source: str) -> list[tuple[str, str]]:
    """(model id, URI) of the bundles in a storage folder: the folder itself, `<id>/` or `<id>/bundle/`.

    `<id>/bundle/` is how training lays out runs (`<storage_path>/<run>/bundle`), so serving a
    storage path serves every finished run under its run name. A bundle folder named `bundle` is
    served under its run folder's name.
    """
    def named(uri: str) -> str:
        parts = uri.rstrip("/").split("/")
        return parts[-2] if parts[-1] == "bundle" and len(parts) > 3 else parts[-1]

    if storage.exists(storage.join(source, MANIFEST)):
        return [(named(source), source)]
    out = []
    for name in storage.list_dirs(source):
        for uri in (storage.join(source, name), storage.join(source, name, "bundle")):
            if storage.exists(storage.join(uri, MANIFEST)):
                out.append((name, uri))
                break
    return out


def scan_remote(
    source: str, models: dict[str, ModelInfo], rejected: dict[str, str], signing_key: bytes | None = None
) -> None:
    """Fetch and verify every bundle under a storage URI (into this node's cache) and describe it.

    The ModelInfo keeps the URI and the manifest's sha256: each replica fetches the same bundle
    into its own node's cache and refuses it if the manifest changed since this scan.
    """
    if not storage.exists(source):
        raise FileNotFoundError(f"bundle source {source} does not exist (or is not readable with these credentials)")
    for model_id, uri in remote_bundles(source):
        try:
            check_model_id(model_id)
            if model_id in models or model_id in rejected:
                raise BundleError(f"duplicate model id {model_id!r} ({uri}); keeping the first")
            local = storage.fetch_bundle(uri)
            signature = None
            if signing_key is not None:
                try:
                    signature = storage.read_bytes(storage.join(uri, SIGNATURE)).decode("utf-8", "replace")
                except OSError:
                    raise BundleError(f"{uri}: not signed ({SIGNATURE} is missing) and serve.require_signature is on") from None
            info = read_info(model_id, local, signing_key, signature)
            models[model_id] = info.model_copy(update={"path": uri, "digest": local.name})
        except (BundleError, StoreError) as e:
            log.warning("not serving bundle %s: %s", uri, e)
            if model_id not in models:
                rejected.setdefault(model_id, str(e))


class BundleStore:
    """The served catalog: model id -> verified ModelInfo, plus ids rejected with a reason."""

    def __init__(self, models: dict[str, ModelInfo], rejected: dict[str, str]) -> None:
        self.models = models
        self.rejected = rejected

    @classmethod
    def scan(cls, sources: Iterable[str | Path], signing_key: bytes | None = None) -> "BundleStore":
        """Verify every bundle under `sources` (signed under `signing_key` when given); a bad one is logged and remembered, never served."""
        models: dict[str, ModelInfo] = {}
        rejected: dict[str, str] = {}
        for source in sources:
            if storage.is_uri(str(source)):
                scan_remote(str(source), models, rejected, signing_key)
                continue
            src = Path(source).expanduser()
            if not src.is_dir():
                raise FileNotFoundError(f"bundle source {src} is not a directory")
            if (src / MANIFEST).is_file():  # one bundle: its folder is the store
                root, entries = src.parent, [src]
            else:
                root, entries = src, sorted(p for p in src.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
            for path in entries:
                model_id = path.name
                try:
                    check_model_id(model_id)
                    if not inside(root, path):
                        raise BundleError(f"{path} resolves outside the store {root}")
                    if model_id in models or model_id in rejected:
                        raise BundleError(f"duplicate model id {model_id!r} ({path}); keeping the first")
                    models[model_id] = read_info(model_id, path, signing_key)
                except (BundleError, StoreError) as e:
                    log.warning("not serving bundle %s: %s", path, e)
                    if model_id not in models:
                        rejected.setdefault(model_id, str(e))
        return cls(models, rejected)

    def get(self, model_id: str) -> ModelInfo:
        """The verified bundle served as `model_id`, or a StoreError saying why not."""
        check_model_id(model_id)
        if model_id in self.models:
            return self.models[model_id]
        if model_id in self.rejected:
            raise RejectedModel(f"model {model_id!r} is not served: {self.rejected[model_id]}")
        raise UnknownModel(f"unknown model {model_id!r}; served: {sorted(self.models)}")

    def digests(self) -> dict[str, str]:
        """model id -> the manifest sha256 verified at the scan: replicas load nothing else under that id."""
        return {i: m.digest for i, m in self.models.items() if m.digest}

    def families(self) -> dict[str, dict[str, str]]:
        """family -> {model id: bundle path}: what each family deployment may load."""
        out: dict[str, dict[str, str]] = {}
        for info in self.models.values():
            out.setdefault(info.family, {})[info.id] = info.path
        return out
