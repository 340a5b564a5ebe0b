"""Next-token sampling from logits: temperature, top-k, top-p (nucleus), and a seeded draw.

Small pure functions over logits [N, V], shared by every text model (the RNN, the sentence VAE):

    next_ids = sample_next(logits, temperature=0.8, top_k=40, top_p=0.95, generator=g)  # [N]

Filters return new logits with the excluded tokens set to -inf, so they compose in any order;
`sample_next` applies temperature, then top-k, then top-p, then draws (temperature 0 = greedy).
A batch of requests draws its uniforms ahead, each request from its own seeded generator, so the
rows of one settings group are sampled in one call and no sample depends on its batch-mates.
"""

from __future__ import annotations

import torch


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits [N, V] by a temperature > 0 (< 1 sharpens, > 1 flattens the distribution).

    Each row is shifted by its max first, so the top logit stays 0 and a tiny temperature sends the
    others towards -inf instead of overflowing to +inf (softmax would be NaN).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy: use argmax), got {temperature}")
    t = max(float(temperature), torch.finfo(logits.dtype).tiny)  # 1e-300 would round to 0.0 in float32
    return (logits - logits.amax(dim=-1, keepdim=True)) / t


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits of each row of [N, V] (ties at the k-th value are kept), -inf the rest."""
    if k is None or k >= logits.size(-1):
        return logits
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [N, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep, per row of [N, V], the fewest most-likely tokens whose mass reaches p."""
    if p is None or p >= 1.0:
        return logits
    if p <= 0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [N, V]
    probs = torch.softmax(sorted_logits.float(), dim=-1)  # [N, V]
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the most likely token always stays, even when p underflows float32
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Temperature, then top-k, then top-p on logits [N, V]; the distribution `sample_next` draws from."""
    return top_p_filter(top_k_filter(apply_temperature(logits.float(), temperature), top_k), top_p)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token id per row from logits [N, V] -> [N] (int64); temperature 0 is greedy argmax.

    The draw is the inverse CDF of the filtered distribution at one uniform number per row: `u` [N]
    in [0, 1) when the caller drew them ahead (a batch of requests, each from its own generator),
    else drawn here from `generator`.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)  # [N, V]
    if u is None:
        u = torch.rand(probs.size(0), generator=generator, device=probs.device)  # [N]
    cdf = probs.cumsum(dim=-1)  # [N, V]
    # the first token whose cumulative mass exceeds u (scaled by the row's total, which float
    # rounding leaves a hair off 1): a token of probability 0 is never the first to exceed it
    ids = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1])[:, None], right=True).squeeze(-1)  # [N]
    return ids.clamp_(max=probs.size(-1) - 1)
