"""Sample metrics of a trained text generator, written into its bundle's metrics (`train.sample_metrics`).

Samples come from the family's own `generate_many` (the same call Serve makes: unconditional, at
the model's default temperature `model.temperature`, recorded as `sample_temperature`, seeds
0..n-1); the reference char LM is trained on up to 20,000 windows of the prepared train split, novelty8 looks for the samples' 8-grams in the whole train split (as
bench/text_quality.py does), and the held-out "sentences" are the validation windows. See
creagen_ray.metrics.text for the definitions.

The reference LM depends only on the prepared data and its training settings, so it is kept next
to the data (`<data>/sample_lm/<key>.safetensors`, key: the manifest's source checksum and config,
the vocabulary, steps and seed), as the image FeatureNet is: a later run on the same data (another
`creagen train`, every Tune trial) loads it instead of training it again. Its vocabulary is the
data's: the char tokenizer's characters (byte tokenizer: those of the train and held-out text),
plus U+FFFD; a sample character outside it (a byte sequence the data never had) is scored as
U+FFFD, the character `ByteTokenizer.decode` already writes for broken sequences. The reverse LM is
trained on the samples, so it is trained anew each time.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from creagen_ray.config import TextRequest
from creagen_ray.metrics.text import CharLM, sample_report
from creagen_ray.training.checkpoint import one_torch_thread

UNKNOWN = "\ufffd"
TRAIN_WINDOWS = 20000  # training windows the reference LM learns from (about 640k chars at seq_len 32)
HELDOUT_WINDOWS = 256


def spread(items: Any, limit: int) -> Any:
    """Up to `limit` of `items` (a list or an array), evenly spread from the first to the last."""
    if len(items) <= limit:
        return items
    idx = np.linspace(0, len(items) - 1, limit).astype(int)
    return items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]


def split_texts(prepared: Any, split: str, limit: int) -> list[str]:
    """Up to `limit` windows of a prepared text split, decoded (the first seq_len chars of each)."""
    rows = spread(prepared.read_numpy(split, ["tokens"])["tokens"], limit)
    return [prepared.tokenizer.decode(r[:-1].tolist()) for r in rows]


def data_vocab(prepared: Any, train: str, heldout: list[str]) -> list[str]:
    """The reference LM's characters: fixed by the data (not by the samples), plus U+FFFD."""
    chars = getattr(prepared.tokenizer, "chars", None)
    seen = set(chars) if chars is not None else set(train).union(*heldout)
    return sorted(seen | {UNKNOWN})


def reference_lm(prepared: Any, train: str, vocab: list[str], steps: int) -> CharLM:
    """CharLM.fit(train, vocab, steps), loaded from the data folder's cache when it is there (else written)."""

    def load(data: bytes) -> CharLM:
        lm = CharLM.from_bytes(data)
        if lm.chars != vocab:
            raise ValueError("another vocabulary")
        return lm

    def build() -> tuple[CharLM, bytes]:
        lm = CharLM.fit(train, vocab, steps=steps)
        return lm, lm.to_bytes()

    return prepared.cached("sample_lm", [TRAIN_WINDOWS, vocab, steps, "charlm-1"], load, build)


def text_sample_metrics(family: Any, prepared: Any, n: int = 64, lm_steps: int = 300) -> dict[str, float]:
    """lm_score, reverse_lm_score, bleu4, self_bleu4, novelty8 of n samples of one window each, and their temperature.

    Runs on one torch thread (as Ray's workers do): the LMs are small GRUs (batch 32), for which
    intra-op threads only add synchronisation. Measured on the shared 2-core machine: 20 CharLM
    steps took 1.7-4.3 s on 1 thread and 13-125 s on 2 (load average 16-27, alternated).
    """
    with one_torch_thread():
        return _sample_metrics(family, prepared, n, lm_steps)


def _sample_metrics(family: Any, prepared: Any, n: int, lm_steps: int) -> dict[str, float]:
    length = int(prepared.spec.seq_len)
    reqs = [family.text_request(TextRequest(n=1, seed=i, max_new_tokens=length)) for i in range(n)]  # at model.temperature
    samples = [texts[0] for texts in family.generate_many(reqs)]
    windows = split_texts(prepared, "train", sys.maxsize)  # the whole train split, read once
    whole = "".join(windows)  # novelty8 looks in all of it
    train = "".join(spread(windows, TRAIN_WINDOWS))  # what the reference LM learns from
    heldout = split_texts(prepared, "val", HELDOUT_WINDOWS)
    vocab = data_vocab(prepared, train, heldout)
    known = set(vocab)
    samples = ["".join(c if c in known else UNKNOWN for c in s) for s in samples]
    lm = reference_lm(prepared, train, vocab, lm_steps)
    out = {f"sample_{k}": v for k, v in sample_report(samples, whole, heldout, lm, reverse_steps=lm_steps).items()}
    return {**out, "sample_temperature": float(reqs[0].temperature)}
