"""The rnn family: it learns, samples reproducibly and within its filters, batches, streams, stops,
saves, resumes, and fails clearly on vocabulary mismatches. CPU, small models, seconds each."""

from __future__ import annotations

import io
import math
import time

import pytest
import torch
from pydoc_data.topics import topics
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from creagen_ray.config import DataSpec, ExperimentConfig, TextRequest
from creagen_ray.families import build_family
from creagen_ray.families.rnn import RNNFamily, _TextSink
from creagen_ray.sampling import filter_logits, sample_next, top_k_filter, top_p_filter
from creagen_ray.tokenizer import ByteTokenizer, CharTokenizer

# Python's own docs: real English text that ships with every Python, so no download is needed.
EMBEDDED_TEXT = "".join(topics[k] for k in sorted(topics))[:120_000]
SEQ_LEN = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models run fastest on one thread, and the test machine's cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_family(tokenizer, seed: int = 0, steps: int | None = None, **model) -> RNNFamily:
    """A small RNN family over `tokenizer`'s vocabulary."""
    torch.manual_seed(seed)
    cfg = ExperimentConfig.model_validate(
        {
            "model": {"family": "rnn", "embed_dim": 16, "hidden_size": 64, "num_layers": 1, **model},
            "optimizer": {"name": "adam", "lr": 4e-3},
            "train": {"amp": "off"},
        }
    )
    spec = DataSpec(modality="text", vocab_size=tokenizer.vocab_size, seq_len=SEQ_LEN)
    return build_family(cfg, spec, total_steps=steps, tokenizer=tokenizer)


class Windows:
    """Random training windows {"tokens": int64 [B, T+1]} from a token stream, reproducibly seeded."""

    def __init__(self, ids: list[int], seed: int = 0) -> None:
        self.ids = torch.tensor(ids)
        self.g = torch.Generator().manual_seed(seed)

    def batch(self, B: int = 16, T: int = SEQ_LEN) -> dict[str, torch.Tensor]:
        starts = torch.randint(0, len(self.ids) - T - 1, (B,), generator=self.g)
        return {"tokens": torch.stack([self.ids[s : s + T + 1] for s in starts.tolist()])}


def split(text: str, tok) -> tuple[Windows, list[dict[str, torch.Tensor]]]:
    """Train windows over the first 90% of the text; 8 fixed validation batches from the last 10%."""
    ids = tok.encode(text)
    cut = int(len(ids) * 0.9)
    val = Windows(ids[cut:], seed=123)
    return Windows(ids[:cut]), [val.batch(32) for _ in range(8)]


def train(fam: RNNFamily, windows: Windows, steps: int, B: int = 16) -> list[float]:
    """Run `steps` train_steps; returns the per-step losses."""
    return [fam.train_step(windows.batch(B))["loss"] for _ in range(steps)]


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.fit(EMBEDDED_TEXT)


@pytest.fixture(scope="module")
def trained(tok) -> RNNFamily:
    """A GRU trained briefly on the embedded text: peaked enough that top-k / top-p are meaningful."""
    fam = make_family(tok)
    train(fam, split(EMBEDDED_TEXT, tok)[0], 150)
    return fam


def replay_logits(fam: RNNFamily, prompt: str, continuation: str) -> torch.Tensor:
    """The model's logits [len(continuation), V] for each continuation token, by one full (non-incremental) pass."""
    ids = fam.prompt_ids(prompt) + fam.tokenizer.encode(continuation)
    model = fam.raw("model").eval()
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))  # [1, L, V]
    n0 = len(fam.prompt_ids(prompt))
    return logits[0, n0 - 1 : n0 - 1 + len(continuation)]


# -- learning -------------------------------------------------------------------------------------


def test_loss_falls_on_embedded_text(tok):
    fam = make_family(tok)
    windows, val = split(EMBEDDED_TEXT, tok)
    before = fam.evaluate(val)
    assert before["val_loss"] == pytest.approx(math.log(tok.vocab_size), abs=0.3)  # untrained ~ uniform
    t0 = time.time()
    losses = train(fam, windows, 150)
    after = fam.evaluate(val)
    print(f"embedded text: val {before['val_loss']:.3f} -> {after['val_loss']:.3f} nats/char, "
          f"bpc {after['val_bpc']:.3f}, 150 steps x 16 x {SEQ_LEN} in {time.time() - t0:.1f}s")
    assert fam.step == 150
    assert sum(losses[-20:]) / 20 < losses[0] - 1.5
    assert after["val_loss"] < before["val_loss"] - 1.5  # ~4.6 -> ~2.5 nats
    assert after["val_bpc"] == pytest.approx(after["val_loss"] / math.log(2))
    assert after["val_ppl"] == pytest.approx(math.exp(after["val_loss"]))
    assert after["val_tokens"] == 8 * 32 * SEQ_LEN


@pytest.mark.shared
def test_loss_falls_on_tinyshakespeare(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")[:300_000]
    tok = CharTokenizer.fit(text)
    fam = make_family(tok, hidden_size=96)
    windows, val = split(text, tok)
    before = fam.evaluate(val)
    t0 = time.time()
    train(fam, windows, 200, B=32)
    after = fam.evaluate(val)
    print(f"tinyshakespeare: val {before['val_loss']:.3f} -> {after['val_loss']:.3f} nats/char, "
          f"bpc {before['val_bpc']:.3f} -> {after['val_bpc']:.3f}, "
          f"200 steps x 32 x {SEQ_LEN} in {time.time() - t0:.1f}s")
    assert after["val_loss"] < before["val_loss"] - 1.8  # ~4.2 -> ~2.0 nats
    assert after["val_bpc"] < 3.2


@pytest.mark.parametrize(
    "model",
    [
        {"cell": "gru"},
        {"cell": "lstm"},
        {"cell": "lstm", "num_layers": 2, "dropout": 0.1},
        {"cell": "gru", "num_layers": 2, "tie_weights": True},  # embed 16 != hidden 64: projected
        {"cell": "lstm", "embed_dim": 64, "tie_weights": True},  # equal sizes: tied directly
    ],
)
def test_cells_layers_and_tying_all_learn_and_sample(tok, model):
    fam = make_family(tok, **model)
    windows = split(EMBEDDED_TEXT, tok)[0]
    losses = train(fam, windows, 60)
    assert sum(losses[-10:]) / 10 < losses[0] - 0.8
    (text,) = fam.generate(TextRequest(prompt="The ", max_new_tokens=20, seed=0))
    assert len(text) == 20
    assert fam.generate(TextRequest(prompt="The ", max_new_tokens=20, seed=0)) == [text]


@pytest.mark.parametrize("tokenizer", [CharTokenizer(["a", "b"]), CharTokenizer(list("xyz\n")), ByteTokenizer()])
def test_any_vocab_size_trains_and_generates(tokenizer):
    fam = make_family(tokenizer, hidden_size=16)
    V = tokenizer.vocab_size
    assert fam.raw("model").embed.num_embeddings == V
    g = torch.Generator().manual_seed(0)
    m = fam.train_step({"tokens": torch.randint(0, V, (4, 9), generator=g, dtype=torch.int32)})  # int32 as in Parquet
    assert m["tokens"] == 32 and math.isfinite(m["loss"])
    assert len(fam.generate(TextRequest(max_new_tokens=5, seed=1))[0]) >= 1


# -- sampling ---------------------------------------------------------------------------------------


def test_same_seed_same_text_and_different_seeds_differ(trained):
    req = TextRequest(prompt="The ", max_new_tokens=60, seed=7, n=3)
    a, b = trained.generate(req), trained.generate(req)
    assert a == b and len(a) == 3
    assert len(set(a)) > 1  # the n samples of one request are different draws
    assert trained.generate(req.model_copy(update={"seed": 8})) != a
    # no temperature = the model's default (model.temperature, 0.8 for the rnn); an explicit one overrides it
    assert req.temperature is None and trained.default_temperature == 0.8
    assert trained.generate(req.model_copy(update={"temperature": 0.8})) == a
    assert trained.generate(req.model_copy(update={"temperature": 1.0})) != a


def test_incremental_decoding_equals_rerunning_the_prefix(trained):
    prompt, n_new = "for loop", 40
    (text,) = trained.generate(TextRequest(prompt=prompt, max_new_tokens=n_new, temperature=0))
    # naive greedy: re-run the whole prefix every step
    ids = trained.prompt_ids(prompt)
    model = trained.raw("model").eval()
    with torch.no_grad():
        for _ in range(n_new):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert text == trained.tokenizer.decode(ids[len(prompt) :])


def test_greedy_ignores_the_seed(trained):
    req = TextRequest(prompt="import ", max_new_tokens=30, temperature=0, n=2)
    a = trained.generate(req.model_copy(update={"seed": 1}))
    assert a[0] == a[1] == trained.generate(req.model_copy(update={"seed": 2}))[0]


def test_top_k_never_leaves_the_k_most_likely(trained):
    k = 3
    req = TextRequest(prompt="The ", max_new_tokens=25, temperature=1.5, top_k=k, seed=3, n=8)
    samples = trained.generate(req)
    chosen_rank_gt0 = 0
    for s in samples:
        logits = replay_logits(trained, req.prompt, s)  # [T, V] the model's own distribution
        ids = torch.tensor(trained.tokenizer.encode(s))
        ranks = (logits > logits.gather(1, ids[:, None])).sum(dim=1)  # tokens strictly more likely
        assert ranks.max().item() < k
        chosen_rank_gt0 += int((ranks > 0).sum())
    assert chosen_rank_gt0 > 0  # not just greedy: lower-ranked tokens inside the k were drawn


def test_top_p_stays_inside_the_nucleus(trained):
    p, temperature = 0.6, 1.2
    req = TextRequest(prompt="def ", max_new_tokens=25, temperature=temperature, top_p=p, seed=4, n=8)
    for s in trained.generate(req):
        probs = torch.softmax(replay_logits(trained, req.prompt, s) / temperature, dim=-1)  # [T, V]
        ids = torch.tensor(trained.tokenizer.encode(s))
        p_tok = probs.gather(1, ids[:, None]).squeeze(1)  # [T]
        mass_more_likely = (probs * (probs > p_tok[:, None])).sum(dim=1)  # [T]
        assert (mass_more_likely < p + 1e-5).all()  # a token is kept only if the mass above it is < p


def test_filters_on_known_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    inf = float("-inf")
    assert torch.equal(top_k_filter(logits, 2).isinf(), torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]]).bool())
    assert torch.equal(top_k_filter(logits, 10), logits)
    kept = ~top_p_filter(logits, 0.75).isinf()
    # row 0: 0.5 < 0.75, 0.5 + 0.3 >= 0.75 -> keep 2; row 1: 0.4 + 0.3 < 0.75 -> keep 3
    assert kept.tolist() == [[True, True, False, False], [False, True, True, True]]
    assert (~top_p_filter(logits, 0.01).isinf()).sum(dim=1).tolist() == [1, 1]  # always keeps the best
    assert top_p_filter(logits, 1.0) is logits
    both = filter_logits(logits, temperature=1.0, top_k=1, top_p=0.99)
    assert torch.softmax(both, -1)[0].tolist() == [1.0, 0.0, 0.0, 0.0] and both[0, 1] == inf  # logits are max-shifted
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_p=0.75, generator=g) for _ in range(200)])  # [200, 2]
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {1, 2, 3}
    assert sample_next(logits, 0.0).tolist() == [0, 3]
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)


def test_stop_strings_cut_at_the_first_occurrence(trained):
    base = TextRequest(prompt="The ", max_new_tokens=80, seed=11)
    (full,) = trained.generate(base)
    stop = full[20:22]  # a string known to occur in this sample
    (cut,) = trained.generate(base.model_copy(update={"stop": [stop, "\x00never"]}))
    assert cut == full[: full.find(stop)]
    assert stop not in cut
    streamed = "".join(trained.stream(base.model_copy(update={"stop": [stop]})))
    assert streamed == cut


def test_stream_yields_token_by_token_and_joins_to_generate(trained):
    req = TextRequest(prompt="while ", max_new_tokens=30, seed=5)
    pieces = list(trained.stream(req))
    assert len(pieces) == 30  # char tokenizer, no stop strings: one piece per token
    assert "".join(pieces) == trained.generate(req)[0]
    with pytest.raises(ValueError, match="n=2"):
        trained.stream(req.model_copy(update={"n": 2}))
    with pytest.raises(ValueError, match="'\\\\u2603'|☃"):
        trained.stream(req.model_copy(update={"prompt": "snow ☃"}))  # fails at the call, not mid-stream


def test_batched_prompts_of_different_lengths_match_one_at_a_time(trained):
    reqs = [
        TextRequest(prompt="A much longer prompt than the others, ", max_new_tokens=30, seed=1, n=2),
        TextRequest(prompt="x", max_new_tokens=12, seed=2, top_k=5),
        TextRequest(prompt="", max_new_tokens=25, seed=3, top_p=0.8, temperature=0.7),
        TextRequest(prompt="class ", max_new_tokens=20, temperature=0, stop=["e"]),
    ]
    batched = trained.generate_many(reqs)
    assert batched == [trained.generate(r) for r in reqs]
    assert [len(x) for x in batched[0]] == [30, 30] and len(batched[1][0]) == 12
    assert "e" not in batched[3][0]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_padded_prompts_end_in_each_prompts_own_state(tok, cell):
    fam = make_family(tok, cell=cell, num_layers=2)
    model = fam.raw("model").eval()
    prompts = [fam.prompt_ids(p) for p in ("def f(x):", "x", "if a")]
    lengths = torch.tensor([len(p) for p in prompts])  # [3]
    x = torch.full((3, int(lengths.max())), tok.encode("z")[0])  # [3, L], padded with a real token
    for i, p in enumerate(prompts):
        x[i, : len(p)] = torch.tensor(p)
    with torch.no_grad():
        logits, state = model(x, lengths=lengths)
        _, unpacked = model(x)
        for i, p in enumerate(prompts):
            alone_logits, alone = model(torch.tensor([p]))
            assert torch.allclose(logits[i, len(p) - 1], alone_logits[0, -1], atol=1e-5)
            for s, a, u in zip(*(t if cell == "lstm" else (t,) for t in (state, alone, unpacked))):
                assert torch.allclose(s[:, i], a[:, 0], atol=1e-5)  # [layers, H]
                if len(p) < x.size(1):  # guard: the padding would have changed this row's state
                    assert not torch.allclose(u[:, i], a[:, 0], atol=1e-3)


def test_empty_prompt_starts_from_newline_or_token_zero(trained, tok):
    assert trained.start_id == tok.encode("\n")[0]
    (a,) = trained.generate(TextRequest(prompt="", max_new_tokens=30, temperature=0))
    (b,) = trained.generate(TextRequest(prompt="\n", max_new_tokens=30, temperature=0))
    assert a == b
    assert make_family(CharTokenizer(list("ab")), hidden_size=8).start_id == 0


def test_byte_tokens_decode_whole_characters_and_stops_span_tokens():
    sink = _TextSink(ByteTokenizer(), ["END"])
    for b in "héllo ☃ EN".encode():
        sink.push(b)
    assert sink.text == "héllo ☃ EN" and not sink.done
    assert sink.safe_len() == len("héllo ☃ ")  # "EN" might begin "END": held back while streaming
    for b in "D more".encode():
        sink.push(b)
    assert sink.done and sink.text == "héllo ☃ "


# -- errors, saving, resuming ---------------------------------------------------------------------


def test_vocabulary_mismatches_are_clear_errors(trained, tok):
    with pytest.raises(ValueError, match="'☃'"):
        trained.generate(TextRequest(prompt="snow ☃"))
    other = make_family(CharTokenizer(list("abc")))
    with pytest.raises(ValueError, match="do not fit module 'model'"):
        other.load_weights(trained.weights())
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        other.train_step({"tokens": torch.tensor([[0, 1, 7]])})
    cfg = ExperimentConfig.model_validate({"model": {"family": "rnn"}})
    with pytest.raises(ValueError, match="does not match"):
        RNNFamily(cfg, DataSpec(modality="text", vocab_size=50), tokenizer=tok)


def test_save_load_generate_identical(trained, tok):
    req = TextRequest(prompt="The ", max_new_tokens=50, seed=9, n=2, top_k=10)
    expected = trained.generate(req)

    via_state = make_family(tok, seed=123)
    assert via_state.generate(req) != expected  # a fresh model really is different
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    via_state.load_state_dict(torch.load(buf, weights_only=True))
    assert via_state.generate(req) == expected
    assert via_state.step == trained.step

    via_weights = make_family(tok, seed=456)
    via_weights.load_weights(st_load(st_save(trained.weights())))  # through safetensors bytes
    assert via_weights.generate(req) == expected


def test_tied_weights_survive_safetensors(tok):
    fam = make_family(tok, tie_weights=True)
    flat = fam.weights()
    assert not any(k.startswith("model.head.") for k in flat)  # the head reuses embed.weight
    other = make_family(tok, seed=1, tie_weights=True)
    other.load_weights(st_load(st_save(flat)))
    req = TextRequest(prompt="a", max_new_tokens=20, seed=0)
    assert other.generate(req) == fam.generate(req)


def test_resume_continues_step_count_and_optimizer_state(tok):
    windows = split(EMBEDDED_TEXT, tok)[0]
    batches = [windows.batch(8) for _ in range(10)]
    a = make_family(tok, steps=10)
    for b in batches[:4]:
        a.train_step(b)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b_fam = make_family(tok, seed=99, steps=10)
    b_fam.load_state_dict(torch.load(buf, weights_only=True))
    assert b_fam.step == 4 and b_fam.steppers["main"].steps == 4
    assert b_fam.steppers["main"].lr == a.steppers["main"].lr
    for batch in batches[4:]:
        ma, mb = a.train_step(batch), b_fam.train_step(batch)
        assert ma == mb  # same loss, same lr, same token count
    assert a.step == b_fam.step == 10
    for (ka, pa), (kb, pb) in zip(a.weights().items(), b_fam.weights().items()):
        assert ka == kb and torch.equal(pa, pb)
