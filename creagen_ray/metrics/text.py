"""Text quality metrics: likelihood (perplexity, bits), diversity (distinct-n), novelty (copy check), and
the text-GAN literature's sample metrics (Cifka et al. 2018; Texygen, Zhu et al. 2018):

  lm_score          mean nats/char of samples under a char RNN trained separately on the real corpus
                    (quality: lower = more like the corpus)
  reverse_lm_score  mean nats/char of real held-out text under a char RNN trained on the samples
                    (coverage and diversity: a collapsed generator teaches a poor LM)
  bleu4 / self_bleu4  word BLEU-4 of each sample against held-out sentences / against the other
                    samples (nltk's sentence BLEU, smoothing method 1, averaged as Texygen does)
  ngram_js          Jensen-Shannon divergence of two sets' char n-gram distributions (Gulrajani et al.)
  lm_at_self_bleu   a generator's best LM score at a given self-BLEU, read off the points it reached with
                    its diversity knobs (temperature, latent scale): two generators compared at equal
                    diversity (Caccia et al. 2018)

Pure Python/NumPy (the char LM: PyTorch), no Ray. Conventions:
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
from typing import Any, Iterable, Literal

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

    def longest_copied_span(self, text: str) -> int:
        """Length (in units) of the longest run of `text` whose every n-gram is in the corpus; 0 when none is.

        A run of r consecutive copied n-grams spans r + n - 1 units (the usual n-gram approximation
        of a verbatim copy: each overlapping window occurs in the corpus).
        """
        hit = self.contains(text)
        if not hit.any():
            return 0
        edges = np.diff(np.concatenate(([0], hit.astype(np.int8), [0])))
        runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        return int(runs.max()) + self.n - 1

    def hashes_bytes(self) -> bytes:
        """The sorted distinct n-gram hashes as little-endian uint64 bytes (what a bundle stores)."""
        return self._hashes.astype("<u8").tobytes()

    @classmethod
    def from_hashes(cls, data: bytes, n: int) -> "NGramIndex":
        """A char-unit index from `hashes_bytes` output (plain numbers, no pickle)."""
        if len(data) % 8:
            raise ValueError("n-gram index: length is not a multiple of 8 bytes")
        index = cls.__new__(cls)
        index.n, index.unit, index._vocab = n, "char", {}
        index._hashes = np.frombuffer(data, dtype="<u8").astype(np.uint64)
        index.num_ngrams = int(index._hashes.size)
        return index

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


# ----------------------------------------------------------------------------------------------
# n-gram distributions, BLEU


def ngram_js(a: Any, b: Any, n: int = 4) -> float:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) between the n-gram distributions of two sets.

    `a`, `b`: id arrays [N, T] (rows are separate sequences) or lists of strings (char n-grams).
    0 = the same n-gram frequencies; ln 2 = no n-gram in common.
    """
    ha, hb = _ngram_hashes(a, n), _ngram_hashes(b, n)
    if ha.size == 0 or hb.size == 0:
        return float("nan")
    keys, inv = np.unique(np.concatenate([ha, hb]), return_inverse=True)
    p = np.bincount(inv[: ha.size], minlength=keys.size) / ha.size
    q = np.bincount(inv[ha.size :], minlength=keys.size) / hb.size
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def _ngram_hashes(rows: Any, n: int) -> np.ndarray:
    if isinstance(rows, np.ndarray):
        seqs = [r for r in rows]
    else:
        seqs = [np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32) for s in _as_list(rows)]
    parts = [_window_hashes(np.asarray(r), n) for r in seqs]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)


def _words(texts: Iterable[str]) -> list[list[str]]:
    return [t.split() for t in texts]


def bleu4(samples: str | Iterable[str], references: Iterable[str]) -> float:
    """Mean word BLEU-4 of each sample against all `references` (nltk sentence_bleu, smoothing method1)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    refs = [r for r in _words(references) if r]
    hyps = [h for h in _words(_as_list(samples)) if h]
    if not refs or not hyps:
        return float("nan")
    smooth = SmoothingFunction().method1
    return float(np.mean([sentence_bleu(refs, h, smoothing_function=smooth) for h in hyps]))


def self_bleu4_scores(samples: Iterable[str]) -> list[float]:
    """BLEU-4 of each (non-empty) sample against all the others: self_bleu4's terms (for a standard error)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyps = [h for h in _words(samples) if h]
    if len(hyps) < 2:
        return []
    smooth = SmoothingFunction().method1
    return [float(sentence_bleu(hyps[:i] + hyps[i + 1 :], h, smoothing_function=smooth)) for i, h in enumerate(hyps)]


def self_bleu4(samples: Iterable[str]) -> float:
    """Mean BLEU-4 of each sample against all the others (Texygen's self-BLEU; 1 = all alike)."""
    scores = self_bleu4_scores(samples)
    return float(np.mean(scores)) if scores else float("nan")


# ----------------------------------------------------------------------------------------------
# LM score and reverse LM score: a small char GRU trained for the purpose


class CharLM:
    """A char GRU language model over a fixed character vocabulary, trained on some text (for scoring).

        lm = CharLM.fit(train_text, vocab, steps=300)
        lm.nats_per_char(["some samples", ...])   # mean nats/char, each sample scored from its first char
    """

    def __init__(self, vocab: str | list[str], hidden: int = 128, seed: int = 0) -> None:
        import torch
        from torch import nn

        self.chars = list(vocab)
        self.index = {c: i for i, c in enumerate(self.chars)}
        torch.manual_seed(seed)
        V = len(self.chars)
        self.embed, self.rnn, self.head = nn.Embedding(V, 32), nn.GRU(32, hidden, batch_first=True), nn.Linear(hidden, V)
        self.params = [*self.embed.parameters(), *self.rnn.parameters(), *self.head.parameters()]

    def encode(self, text: str) -> list[int]:
        """Character ids; a character outside the vocabulary is a ValueError naming it."""
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the LM's vocabulary") from None

    def logits(self, x: Any) -> Any:
        """ids [B, T] -> next-char logits [B, T, V]."""
        return self.head(self.rnn(self.embed(x))[0])

    @classmethod
    def fit(cls, text: str, vocab: str | list[str], steps: int = 300, seq_len: int = 64, batch: int = 32,
            hidden: int = 128, lr: float = 3e-3, seed: int = 0) -> "CharLM":
        """Train on random windows of `text` with Adam; deterministic for a seed."""
        import torch
        import torch.nn.functional as F

        lm = cls(vocab, hidden=hidden, seed=seed)
        ids = torch.tensor(lm.encode(text), dtype=torch.long)
        if ids.numel() < seq_len + 2:
            raise ValueError(f"CharLM.fit needs more than {seq_len + 1} characters, got {ids.numel()}")
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(lm.params, lr=lr)
        for _ in range(steps):
            starts = torch.randint(0, ids.numel() - seq_len - 1, (batch,), generator=g)
            w = torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])  # [B, T+1]
            loss = F.cross_entropy(lm.logits(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.params, 1.0)
            opt.step()
        return lm

    def to_bytes(self) -> bytes:
        """The LM's weights, vocabulary and width as safetensors bytes (no pickled code), for a cache file."""
        import json

        from safetensors.torch import save

        tensors = {f"{name}.{k}": v.detach().contiguous() for name, m in (("embed", self.embed), ("rnn", self.rnn), ("head", self.head))
                   for k, v in m.state_dict().items()}
        return save(tensors, metadata={"chars": json.dumps(self.chars), "hidden": str(self.rnn.hidden_size)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "CharLM":
        """The LM `to_bytes` wrote; ValueError if the bytes are not one."""
        import json

        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            meta = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
            lm = cls(json.loads(meta["chars"]), hidden=int(meta["hidden"]))
            tensors = load(data)
            for name, m in (("embed", lm.embed), ("rnn", lm.rnn), ("head", lm.head)):
                m.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == name})
        except (SafetensorError, KeyError, ValueError, RuntimeError, TypeError) as err:
            raise ValueError(f"not a CharLM safetensors file: {err}") from None
        return lm

    def nats_per_char(self, texts: str | Iterable[str]) -> float:
        """Mean nats per predicted character over all texts (each text's chars 2.. given its prefix)."""
        import torch
        import torch.nn.functional as F

        total, count = 0.0, 0
        with torch.no_grad():
            for t in _as_list(texts):
                if len(t) < 2:
                    continue
                ids = torch.tensor(self.encode(t), dtype=torch.long).unsqueeze(0)  # [1, T]
                total += F.cross_entropy(self.logits(ids[:, :-1])[0], ids[0, 1:], reduction="sum").item()
                count += ids.size(1) - 1
        return total / count if count else float("nan")


def lm_score(samples: Iterable[str], lm: CharLM) -> float:
    """Mean nats/char of the samples under a char LM trained on the real corpus (quality; lower is better)."""
    return lm.nats_per_char(samples)


def reverse_lm_score(samples: Iterable[str], heldout: Iterable[str], vocab: str | list[str], **fit: Any) -> float:
    """Mean nats/char of real held-out text under a char LM trained on the samples (coverage; lower is better)."""
    sep = next((c for c in ("\n", " ") if c in vocab), "")  # samples are separate texts
    return CharLM.fit(sep.join(samples), vocab, **fit).nats_per_char(heldout)


def quality_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (self-BLEU, LM score) points no other point beats on both (lower is better on each), by self-BLEU."""
    front: list[tuple[float, float]] = []
    for s, lm in sorted(points):
        if not front or lm < front[-1][1]:
            front.append((s, lm))
    return front


def lm_at_self_bleu(points: Iterable[tuple[float, float]], self_bleu: float) -> float:
    """A generator's best LM score at this self-BLEU: its quality_front, linear between the two neighbouring
    points (Caccia et al. 2018's quality-diversity frontier); NaN outside the front's self-BLEU range."""
    front = quality_front(points)
    for (s0, l0), (s1, l1) in zip(front, front[1:]):
        if s0 <= self_bleu <= s1:
            return l0 + (l1 - l0) * (self_bleu - s0) / (s1 - s0)
    return next((lm for s, lm in front if s == self_bleu), float("nan"))


def sample_report(
    samples: list[str], train_text: str, heldout: list[str], lm: CharLM, reverse_steps: int = 300
) -> dict[str, float]:
    """All the sample metrics of one generator: lm_score, reverse_lm_score, bleu4, self_bleu4, novelty8."""
    return {
        "lm_score": lm_score(samples, lm),
        "reverse_lm_score": reverse_lm_score(samples, heldout, lm.chars, steps=reverse_steps),
        "bleu4": bleu4(samples, heldout),
        "self_bleu4": self_bleu4(samples),
        "novelty8": novelty(samples, train_text, n=8),
    }
