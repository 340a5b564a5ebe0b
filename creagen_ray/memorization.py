"""Memorization check per response: the longest span of a generated text copied from the training corpus.

At bundle time (`index_files`) the training split of a text model is decoded and its character
12-grams are hashed into `ngrams.bin` (sorted little-endian uint64, no pickle) with `ngrams.json`
(n, how many windows and characters it covers). Both are ordinary bundle files: listed in the
manifest with their sha256 and verified when the server loads them. The index is capped at
MAX_NGRAMS n-grams (8 bytes each: 8 MB); a corpus beyond it is covered from its start (only the
shards needed are read), and `ngrams.json` says how much.

At serve time (`ServeConfig.memorization`, mode off | flag | refuse) each text response gets
`longest_copied_chars` per sample: the longest run of the sample whose every 12-gram occurs in
the indexed corpus (run + 11 characters). A sample at or above `max_copied_chars` is flagged
(JSON `memorization`, `X-Creagen-Memorization: flagged`) or, in refuse mode, the request gets 451.

Images: the bundle keeps the features of up to MAX_NEIGHBOURS training images, evenly spaced over
the first shards holding 8 x MAX_NEIGHBOURS images (`neighbours.bin`,
float16; `neighbours.json`). The feature of an image is its 8x8 mean-pooled pixels per channel
(values in [0, 1]); the distance is the root-mean-square difference of two features, so 0 is the
same picture at that resolution and 1 is black against white. Each generated image gets its
distance to the nearest stored training image; at or below `min_neighbour_rms` it is flagged.
This is a copy detector at thumbnail scale over a sample of the training set, not a perceptual
similarity: a near copy of an image outside the sample, or a shifted copy, is not detected.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import numpy as np

from creagen_ray.metrics.text import NGramIndex

NEIGHBOURS_FILE = "neighbours.bin"
NEIGHBOURS_META = "neighbours.json"
MAX_NEIGHBOURS = 2048
POOL = 8
INDEX_FILE = "ngrams.bin"
INDEX_META = "ngrams.json"
NGRAM = 12  # characters: shorter spans recur in any English text by chance
MAX_NGRAMS = 1_000_000


def index_files(prepared: Any, max_ngrams: int = MAX_NGRAMS) -> dict[str, bytes]:
    """{ngrams.bin, ngrams.json} for a text model's bundle, built from the training split; {} for images."""
    tok = prepared.tokenizer
    if prepared.spec.modality == "image":
        return image_index_files(_first_rows(prepared, "image", 8 * MAX_NEIGHBOURS), total=prepared.num_rows("train"))
    if tok is None or prepared.spec.modality != "text":
        return {}
    seq = int(prepared.spec.seq_len or 64)
    rows = _first_rows(prepared, "tokens", max_ngrams // max(1, seq - NGRAM + 1) + 1)

    def decoded() -> Any:
        for row in rows:
            yield tok.decode([int(i) for i in row])

    return text_index_files(decoded(), max_ngrams, total=prepared.num_rows("train"))


def _first_rows(prepared: Any, column: str, limit: int) -> np.ndarray:
    """At least `limit` rows of the training split's `column` (whole shards, in order), never the whole of a big split."""
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (registers Ray's tensor extension types, as PreparedData.read_numpy does)

    parts: list[np.ndarray] = []
    got = 0
    for f in prepared.files("train"):
        if got >= limit:
            break
        chunks = pq.read_table(str(f), columns=[column], filesystem=prepared.filesystem).column(column).chunks
        arr = np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks]) if chunks else np.empty(0)
        if arr.dtype == object:  # tensor extension columns come back as arrays of arrays
            arr = np.stack(list(arr)) if len(arr) else arr
        parts.append(arr)
        got += len(arr)
    return np.concatenate(parts) if parts else np.empty(0)


def text_index_files(docs: Any, max_ngrams: int = MAX_NGRAMS, total: int | None = None) -> dict[str, bytes]:
    """The index files of an iterable of training texts, taken in order until MAX_NGRAMS windows."""
    kept: list[str] = []
    windows = 0
    for text in docs:
        if windows >= max_ngrams:
            break
        kept.append(text)
        windows += max(0, len(text) - NGRAM + 1)
    index = NGramIndex(kept, n=NGRAM)
    meta = {
        "kind": "char-ngram-hashes",
        "n": NGRAM,
        "distinct": len(index),
        "texts_indexed": len(kept),
        "texts_total": total if total is not None else len(kept),
        "chars_indexed": sum(len(d) for d in kept),
    }
    return {INDEX_FILE: index.hashes_bytes(), INDEX_META: json.dumps(meta, indent=2).encode()}


def image_features(images: Any) -> np.ndarray:
    """[N, C, H, W] images (uint8 0-255 or float in [0, 1]) -> [N, C*8*8] mean-pooled pixels in [0, 1]."""
    import torch

    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, POOL)
    return pooled.flatten(1).numpy().astype(np.float32)


def image_index_files(images: Any, max_images: int = MAX_NEIGHBOURS, total: int | None = None) -> dict[str, bytes]:
    """{neighbours.bin, neighbours.json}: features of up to `max_images` training images, evenly spaced."""
    n = len(images)
    if n == 0:
        return {}
    pick = np.linspace(0, n - 1, min(n, max_images)).astype(int)
    feats = image_features(np.asarray(images)[pick])
    meta = {"kind": "mean-pooled-pixels", "pool": POOL, "dim": int(feats.shape[1]), "count": int(len(feats)),
            "images_sampled_from": int(n), "split_images": int(total if total is not None else n), "distance": "rms difference of the pooled pixels, in [0, 1]"}
    return {NEIGHBOURS_FILE: feats.astype("<f2").tobytes(), NEIGHBOURS_META: json.dumps(meta, indent=2).encode()}


def nearest_distances(sample: np.ndarray, features: np.ndarray) -> np.ndarray:
    """For each feature row of `sample`, the RMS distance to its nearest row of `features`."""
    d2 = (sample**2).sum(1)[:, None] + (features**2).sum(1)[None, :] - 2.0 * sample @ features.T
    return np.sqrt(np.maximum(d2.min(1), 0.0) / sample.shape[1])


def check_images(features: np.ndarray | None, images: Any, threshold: float) -> dict[str, Any]:
    """The memorization record of an image response: nearest-training-neighbour distance per image."""
    if features is None:
        return {"checked": False, "reason": "the bundle has no training-feature sample (trained before it existed)"}
    dist = nearest_distances(image_features(images), features)
    return {
        "checked": True,
        "nearest_training_rms": [round(float(d), 5) for d in dist],
        "min_neighbour_rms": threshold,
        "flagged": bool((dist <= threshold).any()),
    }


@functools.lru_cache(maxsize=8)
def load_index(location: str, digest: str | None) -> NGramIndex | None:
    """The bundle's verified n-gram index (None when it has none); cached per (bundle, manifest digest)."""
    blobs = _verified_files(location, digest, (INDEX_FILE, INDEX_META))
    if blobs is None:
        return None
    meta = json.loads(blobs[INDEX_META])
    return NGramIndex.from_hashes(blobs[INDEX_FILE], int(meta["n"]))


def _verified_files(location: str, digest: str | None, names: tuple[str, ...]) -> dict[str, bytes] | None:
    """The named bundle files, each checked against the manifest's sha256; None when the manifest lacks one."""
    from creagen_ray import storage
    from creagen_ray.bundle import MANIFEST, BundleError

    manifest_bytes = storage.read_bytes(storage.join(location, MANIFEST))
    if digest is not None and hashlib.sha256(manifest_bytes).hexdigest() != digest:
        raise BundleError(f"{location}: manifest changed since it was verified")
    files = json.loads(manifest_bytes).get("files", {})
    if any(n not in files for n in names):
        return None
    out = {}
    for name in names:
        data = storage.read_bytes(storage.join(location, name))
        if hashlib.sha256(data).hexdigest() != files[name]:
            raise BundleError(f"{location}/{name} does not match its sha256 in the manifest")
        out[name] = data
    return out


@functools.lru_cache(maxsize=8)
def load_features(location: str, digest: str | None) -> np.ndarray | None:
    """The bundle's verified training-feature sample [count, dim] (None when it has none); cached."""
    blobs = _verified_files(location, digest, (NEIGHBOURS_FILE, NEIGHBOURS_META))
    if blobs is None:
        return None
    meta = json.loads(blobs[NEIGHBOURS_META])
    feats = np.frombuffer(blobs[NEIGHBOURS_FILE], dtype="<f2").astype(np.float32)
    return feats.reshape(int(meta["count"]), int(meta["dim"]))


def check_texts(index: NGramIndex | None, texts: list[str], threshold: int) -> dict[str, Any]:
    """The memorization record of one response: longest copied span per sample, and whether it is flagged."""
    if index is None:
        return {"checked": False, "reason": "the bundle has no n-gram index (trained before it existed)"}
    spans = [index.longest_copied_span(t) for t in texts]
    return {
        "checked": True,
        "longest_copied_chars": spans,
        "max_copied_chars": threshold,
        "flagged": any(s >= threshold for s in spans),
    }


def headers(record: dict[str, Any] | None) -> dict[str, str]:
    """X-Creagen-Memorization (ok | flagged | unchecked), X-Creagen-Copied-Chars (text) / -Nearest-Training-Rms (images)."""
    if record is None:
        return {}
    if not record["checked"]:
        return {"X-Creagen-Memorization": "unchecked"}
    out = {"X-Creagen-Memorization": "flagged" if record["flagged"] else "ok"}
    if "longest_copied_chars" in record:
        out["X-Creagen-Copied-Chars"] = str(max(record["longest_copied_chars"], default=0))
    else:
        out["X-Creagen-Nearest-Training-Rms"] = str(min(record["nearest_training_rms"], default=1.0))
    return out
