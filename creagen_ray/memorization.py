"""Memorization check per response: the longest span of a generated text copied from the training corpus.

At bundle time (`index_files`) the training split of a text model is decoded and its character
12-grams are hashed into `ngrams.bin` (sorted little-endian uint64, no pickle) with `ngrams.json`
(n, how many windows and characters it covers). Both are ordinary bundle files: listed in the
manifest with their sha256 and verified when the server loads them. The index is capped at
MAX_NGRAMS n-grams (8 bytes each: 8 MB); a corpus beyond it is covered from its start, and
`ngrams.json` says how much.

At serve time (`ServeConfig.memorization`, mode off | flag | refuse) each text response gets
`longest_copied_chars` per sample: the longest run of the sample whose every 12-gram occurs in
the indexed corpus (run + 11 characters). A sample at or above `max_copied_chars` is flagged
(JSON `memorization`, `X-Creagen-Memorization: flagged`) or, in refuse mode, the request gets 451.
Image models are not checked yet.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import numpy as np

from creagen_ray.metrics.text import NGramIndex

INDEX_FILE = "ngrams.bin"
INDEX_META = "ngrams.json"
NGRAM = 12  # characters: shorter spans recur in any English text by chance
MAX_NGRAMS = 1_000_000


def index_files(prepared: Any, max_ngrams: int = MAX_NGRAMS) -> dict[str, bytes]:
    """{ngrams.bin, ngrams.json} for a text model's bundle, built from the training split; {} for images."""
    tok = prepared.tokenizer
    if tok is None or prepared.spec.modality != "text":
        return {}
    rows = prepared.read_numpy("train", ["tokens"])["tokens"]

    def decoded() -> Any:
        for row in rows:
            yield tok.decode([int(i) for i in row])

    return text_index_files(decoded(), max_ngrams, total=len(rows))


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


@functools.lru_cache(maxsize=8)
def load_index(location: str, digest: str | None) -> NGramIndex | None:
    """The bundle's verified n-gram index (None when it has none); cached per (bundle, manifest digest)."""
    from creagen_ray import storage
    from creagen_ray.bundle import MANIFEST, BundleError

    manifest_bytes = storage.read_bytes(storage.join(location, MANIFEST))
    if digest is not None and hashlib.sha256(manifest_bytes).hexdigest() != digest:
        raise BundleError(f"{location}: manifest changed since it was verified")
    files = json.loads(manifest_bytes).get("files", {})
    if INDEX_FILE not in files or INDEX_META not in files:
        return None
    blobs = {}
    for name in (INDEX_FILE, INDEX_META):
        data = storage.read_bytes(storage.join(location, name))
        if hashlib.sha256(data).hexdigest() != files[name]:
            raise BundleError(f"{location}/{name} does not match its sha256 in the manifest")
        blobs[name] = data
    meta = json.loads(blobs[INDEX_META])
    return NGramIndex.from_hashes(blobs[INDEX_FILE], int(meta["n"]))


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
    """X-Creagen-Memorization (ok | flagged | unchecked) and X-Creagen-Copied-Chars (the longest span)."""
    if record is None:
        return {}
    if not record["checked"]:
        return {"X-Creagen-Memorization": "unchecked"}
    return {
        "X-Creagen-Memorization": "flagged" if record["flagged"] else "ok",
        "X-Creagen-Copied-Chars": str(max(record["longest_copied_chars"], default=0)),
    }
