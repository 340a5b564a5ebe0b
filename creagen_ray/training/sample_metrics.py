"""Sample metrics of a trained text generator, written into its bundle's metrics (`train.sample_metrics`).

Samples come from the family's own `generate_many` (the same call Serve makes: unconditional,
temperature 1, seeds 0..n-1); the reference char LM is trained on the prepared train split and the
held-out "sentences" are the validation windows. See creagen_ray.metrics.text for the definitions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from creagen_ray.config import TextRequest
from creagen_ray.metrics.text import CharLM, sample_report


def split_texts(prepared: Any, split: str, limit: int) -> list[str]:
    """Up to `limit` windows of a prepared text split, decoded (the first seq_len chars of each)."""
    tokens = prepared.read_numpy(split, ["tokens"])["tokens"]
    rows = tokens[np.linspace(0, len(tokens) - 1, min(limit, len(tokens))).astype(int)] if len(tokens) else tokens
    return [prepared.tokenizer.decode(r[:-1].tolist()) for r in rows]


def text_sample_metrics(family: Any, prepared: Any, n: int = 64, lm_steps: int = 300) -> dict[str, float]:
    """lm_score, reverse_lm_score, bleu4, self_bleu4, novelty8 of n samples of one window each."""
    length = int(prepared.spec.seq_len)
    reqs = [TextRequest(n=1, seed=i, max_new_tokens=length) for i in range(n)]
    samples = [texts[0] for texts in family.generate_many(reqs)]
    train = "".join(split_texts(prepared, "train", 20000))
    heldout = split_texts(prepared, "val", 256)
    vocab = sorted(set(train).union(*samples, *heldout))  # byte tokenizers may decode to any character
    lm = CharLM.fit(train, vocab, steps=lm_steps)
    return {f"sample_{k}": v for k, v in sample_report(samples, train, heldout, lm, reverse_steps=lm_steps).items()}
