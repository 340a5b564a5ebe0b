"""The rnn family: a character/byte-level GRU or LSTM language model, and how to sample from it.

    model:  tokens [B, T] -> Embedding [B, T, E] -> GRU|LSTM x num_layers [B, T, H] -> logits [B, T, V]
    loss:   next-token cross-entropy in nats per token (val_bpc = val_loss / ln 2 = bits per char
            for the char tokenizer, bits per byte for the byte tokenizer)

Sampling is stateful and incremental: each prompt is run once (all prompts of a batch together as
one packed sequence, so prompts of different lengths each end in their own state), then every new
token costs a single RNN step on the carried hidden state. `generate_many` decodes all samples of
all requests as one batch; `stream` yields the text of each token as it is produced.

An empty prompt starts from the newline token when the vocabulary has one (the model has seen
"\n" as the boundary before a new line or passage; the newline itself is not part of the output),
else from token id 0.
"""

from __future__ import annotations

import codecs
import contextlib
import math
from typing import Any, Iterable, Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from creagen_ray.config import TextModelConfig, TextRequest, temperature_field
from creagen_ray.families.base import Batch, Family, seeded_generator
from creagen_ray.losses import cross_entropy
from creagen_ray.sampling import sample_next



class RNNConfig(TextModelConfig):
    """Character/byte-level recurrent language model."""

    family: Literal["rnn"] = "rnn"
    temperature: float = temperature_field(
        0.8, "Default 0.8: measured (docs/benchmarks.md, 2,000 steps, two seeds) its samples' 8-gram novelty is "
        "then within 0.1 of real text's on both corpora; at T 1 it is 0.21-0.24 above; greedy writes one same sample for every seed",
    )
    cell: Literal["gru", "lstm"] = "gru"
    embed_dim: int = Field(64, ge=1)
    hidden_size: int = Field(256, ge=1)
    num_layers: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    tie_weights: bool = False


State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # GRU: h [L, B, H]; LSTM: (h, c) [L, B, H] each


class CharRNN(nn.Module):
    """Embedding -> stacked GRU/LSTM -> linear head over the vocabulary (optionally tied to the embedding)."""

    def __init__(self, vocab_size: int, cfg: RNNConfig) -> None:
        super().__init__()
        E, H = cfg.embed_dim, cfg.hidden_size
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, E)
        cell = nn.GRU if cfg.cell == "gru" else nn.LSTM
        # torch applies `dropout` between stacked layers only, so a single layer gets none there
        self.rnn = cell(E, H, cfg.num_layers, batch_first=True, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.tie_weights = cfg.tie_weights
        if cfg.tie_weights:
            # the head reuses embed.weight [V, E]; a projection H -> E bridges different sizes.
            # No separate head.weight exists, so the flat weights hold no shared tensors (safetensors).
            self.proj = nn.Linear(H, E, bias=False) if H != E else nn.Identity()
            self.head_bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.head = nn.Linear(H, vocab_size)

    def forward(
        self, idx: torch.Tensor, state: State | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """Token ids [B, T] (+ carried state) -> logits [B, T, V] and the new state.

        `lengths` [B] marks right-padded rows: the returned state is each row's state after its own
        last real token (padded positions' logits are garbage and must be ignored).
        """
        x = self.drop(self.embed(idx))  # [B, T, E]
        if lengths is None:
            out, state = self.rnn(x, state)  # [B, T, H]
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, state = self.rnn(packed, state)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=idx.size(1))  # [B, T, H]
        out = self.drop(out)
        if self.tie_weights:
            logits = F.linear(self.proj(out), self.embed.weight, self.head_bias)  # [B, T, V]
        else:
            logits = self.head(out)  # [B, T, V]
        return logits, state


class _TextSink:
    """One sample's text as its tokens arrive: incremental decoding, cut at the first stop string."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        # byte tokens are decoded incrementally so multi-byte characters come out whole
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace") if tokenizer.kind == "byte" else None
        self.text = ""
        self.done = False  # a stop string was seen (the text ends just before it)

    def push(self, token: int) -> None:
        """Append one token's text; look for a stop string that ends in the new piece."""
        if self.done:
            return
        piece = self.utf8.decode(bytes([token])) if self.utf8 else self.tokenizer.token_text(token)
        self._append(piece)

    def finish(self) -> None:
        """Flush an incomplete multi-byte tail (as U+FFFD, like ByteTokenizer.decode)."""
        if self.utf8 and not self.done:
            self._append(self.utf8.decode(b"", final=True))

    def _append(self, piece: str) -> None:
        start = max(0, len(self.text) - self.longest + 1)  # earliest start of a match ending in `piece`
        self.text += piece
        hits = [j for s in self.stops if (j := self.text.find(s, start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.done = True

    def safe_len(self) -> int:
        """Length of the text that can be emitted: all of it, minus a tail that may begin a stop string."""
        if self.done:
            return len(self.text)
        for k in range(min(self.longest - 1, len(self.text)), 0, -1):
            if any(s.startswith(self.text[-k:]) for s in self.stops):
                return len(self.text) - k
        return len(self.text)


class RNNFamily(Family):
    """GRU/LSTM language model trained with cross-entropy; samples, batches and streams text."""

    name = "rnn"
    config_model = RNNConfig
    losses = ("cross_entropy",)
    default_loss = "cross_entropy"
    modalities = frozenset({"text"})
    capabilities = frozenset({"text", "prompt", "stream"})
    val_metric = "val_loss"
    progress_metrics = ("loss", "val_loss")

    def build(self) -> None:
        """One module, "model": a CharRNN over the spec's vocabulary."""
        if not isinstance(self.cfg.model, RNNConfig):
            raise ValueError(f"RNNFamily needs an RNNConfig, got model.family={self.cfg.model.family!r}")
        if self.spec.modality != "text" or not self.spec.vocab_size:
            raise ValueError(f"the rnn family needs text data with a vocab_size, got spec {self.spec}")
        if self.tokenizer is not None and self.tokenizer.vocab_size != self.spec.vocab_size:
            raise ValueError(
                f"tokenizer vocab_size={self.tokenizer.vocab_size} does not match data spec "
                f"vocab_size={self.spec.vocab_size}"
            )
        self.vocab_size = self.spec.vocab_size
        self.modules = {"model": CharRNN(self.vocab_size, self.cfg.model)}

    # -- training -------------------------------------------------------------------------------

    def _tokens(self, batch: Batch) -> torch.Tensor:
        """The batch's tokens [B, T+1] as int64 on this device; ids outside the vocabulary are errors."""
        tokens = batch["tokens"].to(self.device, non_blocking=True).long()
        if tokens.dim() != 2 or tokens.size(1) < 2:
            raise ValueError(f"rnn batches need tokens [B, T+1] with T >= 1, got {tuple(tokens.shape)}")
        hi = int(tokens.max())
        if hi >= self.vocab_size or int(tokens.min()) < 0:
            raise ValueError(f"token id {hi} is outside the model's vocabulary of {self.vocab_size}")
        return tokens

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One step on {"tokens": int [B, T+1]}: predict tokens[:, 1:] from tokens[:, :-1]."""
        model = self.modules["model"]
        model.train()
        tokens = self._tokens(batch)
        x, y = tokens[:, :-1], tokens[:, 1:]  # inputs [B, T], next-token targets [B, T]
        stepper = self.steppers["main"]
        lr = stepper.lr  # the rate this step uses (the scheduler moves on after the step)
        with self.autocast():
            logits, _ = model(x)  # [B, T, V]
        loss = cross_entropy(logits, y, label_smoothing=self.cfg.loss.label_smoothing)
        stepper.backward(loss)
        self.step += 1
        return {"loss": loss.item(), "lr": lr, "tokens": float(y.numel())}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Held-out val_loss (nats/token), val_ppl = exp(val_loss), val_bpc = val_loss / ln 2, val_tokens."""
        total, count = 0.0, 0
        with self._eval_mode() as model:
            for batch in batches:
                tokens = self._tokens(batch)  # [B, T+1]
                with self.autocast():
                    logits, _ = model(tokens[:, :-1])  # [B, T, V]
                total += cross_entropy(logits, tokens[:, 1:], reduction="sum").item()
                count += tokens[:, 1:].numel()
        if count == 0:
            raise ValueError("evaluate() got no batches")
        loss = total / count
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 700.0)),  # capped: exp overflows a float past ~709
            "val_bpc": loss / math.log(2),
            "val_tokens": float(count),
        }

    # -- sampling -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[CharRNN]:
        """The unwrapped model in eval mode (no dropout), restoring its mode afterwards."""
        model = self.raw("model")
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("this rnn family was built without a tokenizer, so it cannot read or write text")
        return self.tokenizer

    @property
    def start_id(self) -> int:
        """The token an empty prompt starts from: newline when the vocabulary has it, else id 0."""
        tok = self._require_tokenizer()
        try:
            return tok.encode("\n")[0]
        except ValueError:
            return 0

    def prompt_ids(self, prompt: str) -> list[int]:
        """Encode a prompt (empty -> [start_id]); a character outside the vocabulary is a ValueError naming it."""
        ids = self._require_tokenizer().encode(prompt) if prompt else [self.start_id]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the model's vocabulary of {self.vocab_size}")
        return ids

    @torch.no_grad()
    def _decode(self, requests: list[TextRequest]) -> Iterator[torch.Tensor]:
        """Yield the next token ids [N] of all N = sum(r.n) samples, one RNN step per yield.

        Rows are each request's n samples in order. Prompts are right-padded into [N, L] and run
        once as a packed sequence, so each row starts from its own prompt's last state; row i's
        first logits sit at position len_i - 1. Each request draws from its own seeded generator,
        so its samples do not depend on what else shares the batch.
        """
        model = self.raw("model")
        prompts = [self.prompt_ids(r.prompt) for r in requests for _ in range(r.n)]
        N = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts])  # [N]
        x = torch.zeros(N, int(lengths.max()), dtype=torch.long)  # [N, L], right-padded
        for i, p in enumerate(prompts):
            x[i, : len(p)] = torch.tensor(p)
        x = x.to(self.device)
        with self.autocast():
            logits, state = model(x, lengths=lengths)  # [N, L, V]
        rows = torch.arange(N, device=self.device)
        last = logits[rows, lengths.to(self.device) - 1].float()  # [N, V]: each row's next-token logits
        T = max(r.max_new_tokens for r in requests)
        # every request's uniforms for all its steps, from its own seeded generator: [T, N]
        u = torch.cat([torch.rand(T, r.n, generator=seeded_generator(r.seed, self.device), device=self.device)
                       for r in requests], dim=1)
        groups: dict[tuple, list[int]] = {}  # rows that share sampling settings draw in one call
        row = 0
        for r in requests:
            groups.setdefault((r.temperature, r.top_k, r.top_p), []).extend(range(row, row + r.n))
            row += r.n
        rows_of = {k: (slice(None) if len(v) == N else torch.tensor(v, device=self.device)) for k, v in groups.items()}
        for t in range(T):
            nxt = torch.empty(N, dtype=torch.long, device=self.device)  # [N]
            for (temperature, top_k, top_p), rows in rows_of.items():
                nxt[rows] = sample_next(last[rows], temperature, top_k, top_p, u=u[t, rows])
            yield nxt
            with self.autocast():
                logits, state = model(nxt[:, None], state)  # one step: [N, 1, V]
            last = logits[:, -1].float()  # [N, V]

    def generate_many(self, requests: list[TextRequest]) -> list[list[str]]:
        """Answer many requests in one batch: for each request its n continuations (prompt excluded)."""
        requests = [self.text_request(r) for r in requests]
        if not requests:
            return []
        tok = self._require_tokenizer()
        sinks = [[_TextSink(tok, r.stop) for _ in range(r.n)] for r in requests]
        flat = [(sink, r.max_new_tokens) for r, row in zip(requests, sinks) for sink in row]
        with self._eval_mode():
            for t, ids in enumerate(self._decode(requests)):
                for (sink, limit), i in zip(flat, ids.tolist()):
                    if t < limit:
                        sink.push(i)
                if all(sink.done or t + 1 >= limit for sink, limit in flat):
                    break
        for sink, _ in flat:
            sink.finish()
        return [[sink.text for sink in row] for row in sinks]

    def generate(self, request: TextRequest) -> list[str]:
        """The request's n continuations (prompt excluded), each cut before its first stop string."""
        return self.generate_many([request])[0]

    def stream(self, request: TextRequest) -> Iterator[str]:
        """Yield the text of each new token as it is produced (n must be 1); joins to generate()'s text.

        Text that might be the start of a stop string is held back until it is known not to be.
        The request is validated (and the prompt encoded) before the first token, so bad input
        fails at the call, not in the middle of a stream.
        """
        request = self.text_request(request)
        if request.n != 1:
            raise ValueError(f"stream() produces one sample; got n={request.n}")
        self.prompt_ids(request.prompt)
        return self._stream(request)

    def _stream(self, request: TextRequest) -> Iterator[str]:
        sink = _TextSink(self._require_tokenizer(), request.stop)
        emitted = 0
        with self._eval_mode():
            for t, ids in enumerate(self._decode([request])):
                sink.push(int(ids[0]))
                if t + 1 >= request.max_new_tokens:
                    sink.finish()
                end = sink.safe_len()
                if end > emitted:
                    yield sink.text[emitted:end]
                    emitted = end
                if sink.done:
                    return
        if len(sink.text) > emitted:
            yield sink.text[emitted:]
