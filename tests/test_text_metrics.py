"""Text-GAN literature metrics on known cases: BLEU, self-BLEU, LM score, n-gram JS."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from creagen_ray.metrics.text import (CharLM, bleu4, lm_at_self_bleu, lm_score, ngram_js, quality_front,
                                    reverse_lm_score, sample_report, self_bleu4, self_bleu4_scores)

@pytest.fixture
def one_thread():
    """One torch thread: two threads on a shared 2-core machine are several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TEXT = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 20


def test_bleu_and_self_bleu_known_cases() -> None:
    """BLEU of a sentence against itself is 1; self-BLEU of identical samples is 1; unrelated is near 0."""
    s = "the quick brown fox jumps over the lazy dog"
    assert bleu4([s], [s]) == 1.0
    assert self_bleu4([s, s, s]) == 1.0
    assert bleu4(["zz yy xx ww vv"], [s]) < 0.05
    mixed = [s, "the quick red fox runs past the sleepy cat", "a b c d e"]
    assert 0.0 < self_bleu4(mixed) < 1.0
    per = self_bleu4_scores(mixed + [""])  # one term per non-empty sample, self_bleu4 their mean
    assert len(per) == 3 and per[2] < per[0] and self_bleu4(mixed) == pytest.approx(sum(per) / 3)


def test_lm_at_self_bleu_reads_the_best_points_linearly() -> None:
    """A dominated point is off the front; between two front points the LM score is linear; outside, NaN."""
    # (self-BLEU, LM score): (0.15, 1.6) is beaten on both by (0.12, 1.5)
    pts = [(0.20, 1.2), (0.10, 1.6), (0.15, 1.6), (0.12, 1.5)]
    assert quality_front(pts) == [(0.10, 1.6), (0.12, 1.5), (0.20, 1.2)]
    assert lm_at_self_bleu(pts, 0.16) == pytest.approx(1.35)  # halfway from (0.12, 1.5) to (0.20, 1.2)
    assert lm_at_self_bleu(pts, 0.10) == pytest.approx(1.6) and lm_at_self_bleu(pts, 0.20) == pytest.approx(1.2)
    assert np.isnan(lm_at_self_bleu(pts, 0.05)) and np.isnan(lm_at_self_bleu(pts, 0.25))
    assert lm_at_self_bleu([(0.1, 1.4)], 0.1) == 1.4 and np.isnan(lm_at_self_bleu([], 0.1))


def test_lm_score_of_training_text_below_shuffled_characters(one_thread: None) -> None:
    """A char LM scores its own training text lower (nats/char) than the same characters shuffled."""
    vocab = sorted(set(TEXT))
    lm = CharLM.fit(TEXT, vocab, steps=60, seq_len=32, batch=8, hidden=32, lr=1e-2)
    chars = list(TEXT[:400])
    random.Random(0).shuffle(chars)
    real, shuffled = lm_score([TEXT[:400]], lm), lm_score(["".join(chars)], lm)
    assert real < shuffled - 0.5, (real, shuffled)
    # reverse LM: an LM trained on real text explains held-out real text better than one trained on noise
    fit = {"steps": 40, "seq_len": 32, "batch": 8, "hidden": 32, "lr": 1e-2}
    assert reverse_lm_score([TEXT[:600]], [TEXT[600:900]], vocab, **fit) < reverse_lm_score(
        ["".join(chars)], [TEXT[600:900]], vocab, **fit)
    report = sample_report([TEXT[:64], TEXT[64:128]], TEXT, [TEXT[200:264]], lm, reverse_steps=5)
    assert set(report) == {"lm_score", "reverse_lm_score", "bleu4", "self_bleu4", "novelty8"}
    assert report["novelty8"] == 0.0  # copied verbatim from the training text


def test_ngram_js_known_cases() -> None:
    """Same n-gram frequencies: 0; nothing in common: ln 2."""
    a = np.array([[1, 2, 3, 4, 5, 6]])
    assert ngram_js(a, a, 4) == 0.0
    assert abs(ngram_js(a, np.array([[7, 8, 9, 10, 11, 12]]), 4) - np.log(2)) < 1e-9
    assert ngram_js(["abcdef"], ["abcdef"], 2) == 0.0
