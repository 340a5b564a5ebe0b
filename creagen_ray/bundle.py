"""Generator bundles: the only thing that crosses from training to serving.

A bundle is a directory that describes and verifies itself:

    weights.safetensors   module weights (no pickled code: safetensors)
    config.yaml           the resolved ExperimentConfig it was trained with
    spec.json             the DataSpec the model was built from
    tokenizer.json        text families only
    metrics.json          final training / evaluation metrics
    data_manifest.json    the prepared dataset's manifest (optional; used for novelty checks)
    ngrams.bin/.json      text families: the training corpus' n-gram index (memorization check)
    manifest.json         format, family, and the sha256 of every file above
    manifest.sig          optional: HMAC-SHA256 of manifest.json under an operator's key (`creagen sign`)

`load_bundle` refuses a bundle whose files do not match their sha256 (tampered or half-written),
whose files resolve outside the bundle directory (symlinks), or whose weights do not fit the
modules its config builds or hold a non-finite value. A sha256 only proves the files were not
corrupted; `verify_signature` proves the manifest was signed by whoever holds the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from creagen_ray.config import DataSpec, ExperimentConfig, dump_config, validate_config
from creagen_ray.families import Family, build_family
from creagen_ray.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "creagen-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNATURE_SCHEME = "hmac-sha256"


class BundleError(ValueError):
    """A bundle that is missing, malformed, or does not match its manifest."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(
    family: Family,
    out_dir: str | Path,
    metrics: dict[str, Any] | None = None,
    data_manifest: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path | str:
    """Export a trained family as a verified bundle directory (written to a temp dir, then renamed).

    `out_dir` may be a storage URI (s3://, gs://): the bundle is built locally, uploaded with its
    manifest last (a reader never trusts a folder without one) and the URI is returned.
    """
    from creagen_ray import storage

    if storage.is_uri(out_dir):
        with tempfile.TemporaryDirectory(prefix="creagen-bundle-") as tmp:
            local = write_bundle(family, Path(tmp) / "bundle", metrics, data_manifest, extra_files)
            return storage.upload_dir(local, str(out_dir), last=MANIFEST)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(family.weights(), str(tmp / "weights.safetensors"), metadata={"family": family.name})
        (tmp / "config.yaml").write_text(dump_config(family.cfg), encoding="utf-8")
        (tmp / "spec.json").write_text(family.spec.model_dump_json(indent=2), encoding="utf-8")
        if family.tokenizer is not None:
            (tmp / "tokenizer.json").write_text(json.dumps(family.tokenizer.to_dict()), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, sort_keys=True, default=float))
        if data_manifest is not None:
            (tmp / "data_manifest.json").write_text(json.dumps(data_manifest, indent=2, default=str))
        for name, data in (extra_files or {}).items():  # e.g. the memorization index (plain names only)
            if Path(name).name != name or name in (MANIFEST, SIGNATURE):
                raise BundleError(f"invalid extra bundle file name {name!r}")
            (tmp / name).write_bytes(data)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = {"format": FORMAT, "family": family.name, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check the manifest and every file's sha256; returns the manifest or raises BundleError."""
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{mpath}: not a {FORMAT} manifest")
    for name in ("weights.safetensors", "config.yaml", "spec.json"):
        if name not in manifest["files"]:
            raise BundleError(f"{root}: manifest does not list {name}")
    real_root = root.resolve()
    for name in [MANIFEST, *manifest["files"]]:  # every file, not only the directory
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise BundleError(f"{root}: manifest lists {name!r}, which is not a plain file name")
        if not (root / name).resolve().is_relative_to(real_root):
            raise BundleError(f"{root}: {name} is a symlink leaving the bundle directory; refused")
    for name, digest in manifest["files"].items():
        f = root / name
        if not f.is_file():
            raise BundleError(f"{root}: file {name!r} listed in the manifest is missing")
        if sha256_file(f) != digest:
            raise BundleError(f"{root}: {name} does not match its sha256 in the manifest (tampered or corrupt)")
    return manifest


def manifest_signature(manifest_bytes: bytes, key: bytes) -> str:
    """`hmac-sha256:<hex>` of the manifest's bytes under `key` (what manifest.sig holds)."""
    return f"{SIGNATURE_SCHEME}:{hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()}"


def sign_bundle(path: str | Path, key: bytes) -> Path:
    """Verify a bundle, then write manifest.sig: an HMAC-SHA256 of manifest.json under the operator's key."""
    if not key:
        raise BundleError("signing needs a non-empty key")
    root = Path(path)
    verify_bundle(root)
    sig = root / SIGNATURE
    tmp = sig.with_name(f".{SIGNATURE}.tmp")
    tmp.write_text(manifest_signature((root / MANIFEST).read_bytes(), key) + "\n", encoding="utf-8")
    os.replace(tmp, sig)
    return sig


def verify_signature(path: str | Path, key: bytes, signature: str | None = None) -> None:
    """Raise BundleError unless manifest.sig (or `signature`, read from storage) is this key's HMAC of manifest.json."""
    root = Path(path)
    if signature is None:
        sig = root / SIGNATURE
        if not sig.is_file() or not sig.resolve().is_relative_to(root.resolve()):
            raise BundleError(f"{root}: not signed ({SIGNATURE} is missing) and serve.require_signature is on")
        signature = sig.read_text(encoding="utf-8", errors="replace")
    want = manifest_signature((root / MANIFEST).read_bytes(), key)
    if not hmac.compare_digest(signature.strip().encode("utf-8", "replace"), want.encode()):
        raise BundleError(f"{root}: {SIGNATURE} does not match the manifest under the configured key (not signed by this operator)")


def pinned(bundle: "Bundle", digest: str | None) -> "Bundle":
    """The bundle when its manifest sha256 is `digest` (what the store scan verified and signed-checked)."""
    if digest is not None and not hmac.compare_digest(bundle.sha256, digest):
        raise BundleError(f"{bundle.path}: {MANIFEST} changed since the store scan verified it; refused")
    return bundle


def check_weights(flat: dict[str, torch.Tensor]) -> None:
    """Raise BundleError when a weight tensor holds NaN or +-inf."""
    for name, t in flat.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"weight {name!r} holds non-finite values (NaN or inf)")


@dataclass
class Bundle:
    """A loaded, verified bundle: config, spec, tokenizer, metrics and the family in eval mode."""

    path: Path
    cfg: ExperimentConfig
    spec: DataSpec
    family: Family
    tokenizer: Tokenizer | None
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The family name (rnn | vae | gan)."""
        return self.family.name

    @property
    def modality(self) -> str:
        """text | image."""
        return self.spec.modality

    def generate(self, request: Any) -> Any:
        """Forward a request to the family (see families/base.py for the result types)."""
        return self.family.generate(request)

    @property
    def sha256(self) -> str:
        """sha256 of manifest.json, which lists every file's sha256: the bundle's identity (provenance)."""
        return sha256_file(self.path / MANIFEST)

    def data_manifest(self) -> dict[str, Any] | None:
        """The prepared dataset's manifest, when the bundle carries it."""
        p = self.path / "data_manifest.json"
        return json.loads(p.read_text()) if p.is_file() else None


def load_bundle(path: str | Path, device: str | torch.device = "cpu", weights: bool = True) -> Bundle:
    """Verify a bundle and rebuild its family with the saved weights, ready to generate.

    With `weights=False` (and device="meta") the family is only built, not loaded: a cheap way to
    describe a bundle (capabilities, spec, vocab) without allocating its weights. A storage URI
    is first fetched into this node's bundle cache (storage.fetch_bundle), then verified here.
    """
    from creagen_ray import storage

    root = storage.fetch_bundle(str(path)) if storage.is_uri(path) else Path(path)
    manifest = verify_bundle(root)
    try:
        cfg = validate_config(yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")))
        spec = DataSpec.model_validate_json((root / "spec.json").read_text(encoding="utf-8"))
        tok_path = root / "tokenizer.json"
        tokenizer = tokenizer_from_dict(json.loads(tok_path.read_text())) if tok_path.is_file() else None
        metrics = json.loads((root / "metrics.json").read_text()) if (root / "metrics.json").is_file() else {}
        family = build_family(cfg, spec, device=device, tokenizer=tokenizer, trainable=False)
    except (ValueError, TypeError, yaml.YAMLError) as e:
        raise BundleError(f"{root}: invalid bundle contents: {e}") from None
    if cfg.model.family != manifest.get("family"):
        raise BundleError(f"{root}: manifest family {manifest.get('family')!r} != config {cfg.model.family!r}")
    if weights:
        try:
            flat = load_file(str(root / "weights.safetensors"), device=str(device))
            check_weights(flat)
            family.load_weights(flat)
        except (SafetensorError, ValueError, OSError) as e:  # BundleError is a ValueError
            raise BundleError(f"{root}: unusable weights: {e}") from None
    family.train(False)
    return Bundle(root, cfg, spec, family, tokenizer, metrics, manifest)
