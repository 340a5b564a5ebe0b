"""Text quality metrics: likelihood (perplexity, bits), diversity (distinct-n) and novelty (copy check).

Pure Python/NumPy, no Ray. Conventions:
  - Likelihood metrics take the *mean negative log-likelihood in nats per token*, which is what the
    families report as `val_loss`. With the char tokenizer a token is a character, so
    `bits_per_token` is bits per character (bpc); with the byte tokenizer it is bits per byte.
  - n-grams are over characters by default (`unit="char"`, the natural unit of a char-level model:
    an n-gram is a substring of n characters) or over whitespace-separated words (`unit="word"`,
    `str.split()`, no other normalisation). n-grams never cross the boundary between two samples.
  - A sample shorter than n contributes no n-grams. When no sample has any n-gram the share is
    undefined and the functions return NaN rather than a misleading 0 or 1.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal

import numpy as np

Unit = Literal["char", "word"]

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------
# likelihood


def perplexity(nats: float) -> float:
    """exp(mean nats/token): the effective branching factor; lower is better, 1 is perfect."""
    return math.exp(nats)


def bits_per_token(nats: float) -> float:
    """Mean nats/token in bits (= bits per character for a char tokenizer), for comparing with papers."""
    return nats / LN2


# ----------------------------------------------------------------------------------------------
# diversity


def _as_list(samples: str | Iterable[str]) -> list[str]:
    return [samples] if isinstance(samples, str) else list(samples)


def ngrams(text: str, n: int, unit: Unit = "char") -> list[str] | list[tuple[str, ...]]:
    """The n-grams of one text, in order: substrings for unit="char", word tuples for unit="word"."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if unit == "char":
        return [text[i : i + n] for i in range(len(text) - n + 1)]
    if unit == "word":
        words = text.split()
        return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")


def distinct_n(samples: str | Iterable[str], n: int, unit: Unit = "char") -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams over all samples; 1 = no repetition."""
    total = 0
    unique: set = set()
    for s in _as_list(samples):
        grams = ngrams(s, n, unit)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else float("nan")


def diversity(samples: str | Iterable[str], unit: Unit = "char") -> dict[str, float]:
    """distinct-1 and distinct-2 of a set of samples (the usual pair reported for generated text)."""
    samples = _as_list(samples)
    return {"distinct_1": distinct_n(samples, 1, unit), "distinct_2": distinct_n(samples, 2, unit)}


# ----------------------------------------------------------------------------------------------
# novelty: how much of the generated text is NOT copied verbatim from the training corpus

# Odd 64-bit multiplier for the polynomial rolling hash (arithmetic wraps modulo 2**64).
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every length-n window of an id array (vectorised: n passes over the array)."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    ids = ids.astype(np.uint64, copy=False)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _HASH_MULT + ids[k : k + count] + np.uint64(1)
    return h


class NGramIndex:
    """The set of n-grams of a training corpus, built once, for the copy check of generated text.

    Each n-gram is stored as a 64-bit rolling hash in one sorted NumPy array (8 bytes per distinct
    n-gram: about 8 MB for the 1 MB tinyshakespeare corpus), and membership is a vectorised binary
    search. A hash collision could only make a novel n-gram look copied; with 64-bit hashes and
    ~10^6 entries its chance is ~10^-7 per query n-gram, far below what the metric can resolve.

        index = NGramIndex(corpus_text)           # 8 characters per n-gram
        index.novelty(["To be or not", "xq zzkw"])  # share of sample 8-grams not in the corpus
    """

    def __init__(self, corpus: str | Iterable[str], n: int = 8, unit: Unit = "char") -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if unit not in ("char", "word"):
            raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
        self.n = n
        self.unit = unit
        self._vocab: dict[str, int] = {}  # word -> id (unit="word" only)
        docs = _as_list(corpus)
        parts = [_window_hashes(self._ids(d, grow=True), n) for d in docs]
        hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        self.num_ngrams = int(hashes.size)  # n-gram occurrences in the corpus
        self._hashes = np.unique(hashes)  # sorted distinct hashes

    def __len__(self) -> int:
        """Number of distinct n-grams in the corpus."""
        return int(self._hashes.size)

    def _ids(self, text: str, grow: bool = False) -> np.ndarray:
        """Characters -> code points; words -> vocabulary ids (unseen words get fresh, never-indexed ids)."""
        if self.unit == "char":
            return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        words = text.split()
        out = np.empty(len(words), dtype=np.uint64)
        next_unseen = 2**40  # ids no corpus word has: any n-gram holding such a word is novel
        for i, w in enumerate(words):
            wid = self._vocab.get(w)
            if wid is None:
                if grow:
                    wid = self._vocab[w] = len(self._vocab)
                else:
                    wid, next_unseen = next_unseen, next_unseen + 1
            out[i] = wid
        return out

    def contains(self, text: str) -> np.ndarray:
        """Boolean array: for each n-gram of `text` in order, whether it occurs in the corpus."""
        h = _window_hashes(self._ids(text), self.n)
        if h.size == 0 or self._hashes.size == 0:
            return np.zeros(h.size, dtype=bool)
        pos = np.searchsorted(self._hashes, h)
        pos[pos == self._hashes.size] = 0
        return self._hashes[pos] == h

    def copied_fraction(self, samples: str | Iterable[str]) -> float:
        """Share of the samples' n-grams (counted with repetition) found verbatim in the corpus."""
        found = total = 0
        for s in _as_list(samples):
            hit = self.contains(s)
            found += int(hit.sum())
            total += hit.size
        return found / total if total else float("nan")

    def novelty(self, samples: str | Iterable[str]) -> float:
        """Share of the samples' n-grams NOT in the corpus: 0 = everything copied, 1 = nothing copied."""
        return 1.0 - self.copied_fraction(samples)


def novelty(samples: str | Iterable[str], corpus: str | Iterable[str], n: int = 8, unit: Unit = "char") -> float:
    """One-shot novelty (builds an NGramIndex each call; keep an NGramIndex to check many times)."""
    return NGramIndex(corpus, n=n, unit=unit).novelty(samples)
