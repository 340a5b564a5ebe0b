"""A toy model family that lives outside the package: the proof that a new family is one file.

It registers itself at import. Test modules import it as `tests.toy_family` before the session's
Ray cluster starts, so the registration (the `CREAGEN_FAMILIES` environment variable) reaches every
Ray worker, Tune trial and Serve replica, which import this module by that name.

    model:  tokens [B, T] -> Embedding(V, V) = next-token logits [B, T, V]   (a bigram table)
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Literal

import torch
from pydantic import Field
from torch import nn

from creagen_ray.config import TextModelConfig
from creagen_ray.families import register_family
from creagen_ray.families.base import Batch, Family, seeded_generator
from creagen_ray.losses import cross_entropy
from creagen_ray.sampling import sample_next


class ToyConfig(TextModelConfig):
    """A bigram table over the vocabulary (a text model: `model.temperature`, default 1, is its decoding default)."""

    family: Literal["toy"] = "toy"
    init_scale: float = Field(0.01, ge=0.0, description="std of the initial logits")


class ToyFamily(Family):
    """Bigram language model: one table of next-token logits per token."""

    name: ClassVar[str] = "toy"
    config_model = ToyConfig
    losses = ("cross_entropy",)
    default_loss = "cross_entropy"
    modalities = frozenset({"text"})
    capabilities = frozenset({"text", "prompt"})
    val_metric = "val_toy_nll"
    progress_metrics = ("loss", "val_toy_nll")

    def build(self) -> None:
        """One module: the [V, V] table."""
        table = nn.Embedding(self.spec.vocab_size, self.spec.vocab_size)
        nn.init.normal_(table.weight, std=self.cfg.model.init_scale)
        self.modules = {"table": table}

    def train_step(self, batch: Batch) -> dict[str, float]:
        """Cross-entropy of tokens[:, 1:] given tokens[:, :-1]."""
        tokens = batch["tokens"].to(self.device).long()  # [B, T+1]
        loss = cross_entropy(self.modules["table"](tokens[:, :-1]), tokens[:, 1:])
        self.steppers["main"].backward(loss)
        self.step += 1
        return {"loss": loss.item()}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Mean held-out nats/token."""
        total, count = 0.0, 0
        for batch in batches:
            tokens = batch["tokens"].to(self.device).long()
            total += cross_entropy(self.raw("table")(tokens[:, :-1]), tokens[:, 1:], reduction="sum").item()
            count += tokens[:, 1:].numel()
        return {"val_toy_nll": total / max(count, 1)}

    @torch.no_grad()
    def generate(self, request: Any) -> list[str]:
        """`request.n` samples of `max_new_tokens` characters after the prompt's last character."""
        req = self.text_request(request)  # validated, temperature unset -> model.temperature
        g = seeded_generator(req.seed)
        last = torch.tensor(self.tokenizer.encode(req.prompt[-1:] or self.tokenizer.decode([0])) * req.n)
        out = []
        for _ in range(req.max_new_tokens):
            last = sample_next(self.raw("table")(last).float(), req.temperature, req.top_k, req.top_p, g)
            out.append(last)
        ids = torch.stack(out, dim=1)  # [n, max_new_tokens]
        return [self.tokenizer.decode(row.tolist()) for row in ids]


register_family(ToyFamily)
