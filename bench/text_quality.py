"""Sample quality of the text generators side by side (the text-GAN literature's table).

    .venv/bin/python bench/text_quality.py rnn=RUN1/bundle vae=RUN2/bundle textgan=RUN3/bundle
    .venv/bin/python bench/text_quality.py --train 400     # rnn, sentence VAE, text GANs trained here
    .venv/bin/python bench/text_quality.py --train 400 --corpus shakespeare   # tinyshakespeare windows
    .venv/bin/python bench/text_quality.py --train 400 --row-temperature "char RNN=0.7" --row-temperature "sentence VAE=0" --row-temperature "text GAN=0"

With --train STEPS the families are trained in this process (no Ray Train: each family's own
train_step on random windows of the corpus's prepared data, batch 32, one torch thread): the char
RNN, the sentence VAE, the latent text GAN (the same sentence VAE config trained the same STEPS on
the VAE row's trained VAE as its first phase, then --gan-steps latent WGAN-GP steps on its codes:
the same decoder, prior codes vs GAN codes) and, with --char-gan, the char-level text GAN (STEPS
critic steps). A quick, reproducible comparison, not the models' best. --vae KEY=VALUE (repeatable)
changes the sentence VAE config of both; --gan KEY=VALUE changes the latent GAN's model config, and
with a `vae.` key (--gan vae.free_bits=4.0) the GAN trains its own VAE phase: that VAE's prior
samples are then a row of their own ("text GAN's VAE (prior)", with --latent-scales rows too).

--corpus python-docs: builtin:python-docs (jobs/configs/text-gan.yaml's data); --corpus
shakespeare: $CREAGEN_SHARED_DATA (default ../shared/data)/tinyshakespeare/input.txt (nanoGPT's split, last 10% held out), 32-char
windows (about one verse line each). Both: 32-char windows, held-out windows as the "sentences".

Every bundle must be trained on the same corpus (the first bundle's prepared data is used: its
whole train split for the reference LM and novelty, its validation windows as held-out "sentences").
Rows: real held-out windows (the reference), then each bundle's unconditional samples (--temperature,
default 1; seeds 0..n-1, one window of data.seq_len chars each), and for
each distinct sentence VAE (the VAE row's, which --train's latent GAN reuses) "decoding held-out
codes": its decoder on the posterior means of the real held-out windows, and with --train-codes
"decoding train codes": its decoder on the posterior means of n training windows spread over the
train split, i.e. what a latent GAN that matched its critic's real codes exactly would write with
this decoder (the held-out row is not that target: the validation split is other text, which the
decoder may write more or less easily).
--row-temperature PREFIX=T (repeatable) samples the rows whose label starts with PREFIX at T instead
(0 = greedy; the longest matching PREFIX wins; "sentence VAE" matches its decoding rows too): one
temperature per model in one table, whose temperature column says which each row used. The
--also-temperatures tables re-sample every generator row at each given temperature alike.
--latent-scales S [S ...] adds, for each S, a row "sentence VAE (prior) z xS" (the VAE row's prior
draws times S: z from N(0, (S * model.prior_scale)^2 I); --train's VAE has prior_scale 1, so x0.8 is
the served default 0.8) and a row "text GAN (latent) noise xS" (G fed S times its own noise draws, whose
spread is model.noise_scale), the same
seeds and draws otherwise (at S = 1 each equals its model's own row): the latent spread as a second
diversity knob beside the decoding temperature, to compare the two models at equal self-BLEU
(a quality-diversity frontier per model, as Caccia et al. 2018 compare text GANs by temperature).
The "matched self-BLEU" lines do that comparison: each text GAN's points (its row and its xS rows, at
every temperature scored) against each sentence VAE prior's best LM score at the same self-BLEU
(creagen_ray.metrics.text.lm_at_self_bleu over that prior's rows; nan outside their range), and the
same for each sentence VAE's "decoding ... codes" rows (with --train-codes: a latent GAN's target decoded).
Columns (creagen_ray.metrics.text): the sampling temperature ("-" for the real row), LM score and
its standard error over the samples, reverse LM score (nats/char, lower is better), BLEU-4 vs
held-out and self-BLEU-4, 8-gram novelty vs the training text (closest to the real row is best,
higher is not better). Each sentence VAE's latent
use is printed too: held-out nats/char teacher-forced under each window's own code, under another
window's code and under z = 0, and its KL in nats (own << other: the decoder reads the latent).
Log `uptime` beside the numbers: they are CPU-time bound and the table says how long it took.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from creagen_ray.bundle import load_bundle  # noqa: E402
from creagen_ray.config import TextRequest, apply_overrides  # noqa: E402
from creagen_ray.metrics.text import (CharLM, bleu4, lm_at_self_bleu, lm_score, novelty, reverse_lm_score,  # noqa: E402
                                      self_bleu4_scores)
from creagen_ray.training.sample_metrics import split_texts, spread  # noqa: E402


CORPORA = {  # --corpus: the data section (32-char windows; python-docs is text-gan.yaml's)
    "python-docs": {"source": "builtin:python-docs", "modality": "text", "tokenizer": "char", "seq_len": 32},
    "shakespeare": {"source": str(Path(os.environ.get("CREAGEN_SHARED_DATA", ROOT.parent / "shared/data"))
                                  / "tinyshakespeare/input.txt"), "modality": "text",
                    "tokenizer": "char", "seq_len": 32, "val_fraction": 0.1},
}
# prior_scale 1: the prior row samples N(0, I), as every table in docs/benchmarks.md (--latent-scales 0.8: the
# served default, model.prior_scale 0.8)
SENTENCE_VAE = {"arch": "sentence", "latent_dim": 16, "embed_dim": 32, "hidden_size": 128, "kl_anneal_steps": 200,
                "word_dropout": 0.4, "free_bits": 0.25, "prior_scale": 1.0}
VAE_OPT = {"name": "adam", "lr": 2e-3, "grad_clip": 1.0}
GAN_OPT = {"name": "adam", "lr": 1e-4, "betas": [0.5, 0.9], "grad_clip": None}
# --train: label -> (model, optimizer); the latent GAN's VAE is SENTENCE_VAE with VAE_OPT, as the VAE row
TRAINED = {
    "char RNN": ({"family": "rnn", "embed_dim": 32, "hidden_size": 128, "num_layers": 1}, VAE_OPT),
    "sentence VAE (prior)": ({"family": "vae", **SENTENCE_VAE}, VAE_OPT),
    "text GAN (latent)": ({"family": "textgan", "approach": "latent", "latent_dim": 16, "channels": 256,
                           "blocks": 2, "n_critic": 5, "vae": SENTENCE_VAE, "vae_optimizer": VAE_OPT}, GAN_OPT),
    "text GAN (char)": ({"family": "textgan", "latent_dim": 64, "channels": 64, "blocks": 2, "n_critic": 5},
                        {**GAN_OPT, "lr": 1e-3}),
}


def train_here(prepared: Any, data: dict, steps: int, gan_steps: int, char_gan: bool, seed: int = 0) -> dict[str, Any]:
    """Each TRAINED family, trained in this process on random train windows (the same batches for all)."""
    import torch

    from creagen_ray.config import validate_config
    from creagen_ray.families import build_family

    torch.set_num_threads(1)
    tokens = torch.from_numpy(prepared.read_numpy("train", ["tokens"])["tokens"]).long()
    out = {}
    vae_row = {k: v for k, v in TRAINED["sentence VAE (prior)"][0].items() if k != "family"}
    for label, (model, opt) in TRAINED.items():
        if label == "text GAN (char)" and not char_gan:
            continue
        latent = model.get("approach") == "latent"
        n = steps + gan_steps if latent else steps
        if latent:
            model = {**model, "vae_share": steps / n}
        cfg = validate_config({"name": "text-quality", "data": data, "model": model, "optimizer": opt,
                               "train": {"steps": n, "batch_size": 32}})
        torch.manual_seed(seed)
        fam = build_family(cfg, prepared.spec, total_steps=n, tokenizer=prepared.tokenizer)
        if latent and model["vae"] == vae_row:  # phase 1 is the VAE row's model (same config, steps, batches): reuse it
            fam.vae.load_state_dict(out["sentence VAE (prior)"].state_dict())
            fam.step = fam.vae.step
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        last: dict[str, float] = {}
        for _ in range(fam.step, n):
            last = fam.train_step({"tokens": tokens[torch.randint(0, len(tokens), (32,), generator=g)]})
        fam.train(False)
        shown = {k: round(v, 3) for k, v in last.items() if k in ("loss", "recon", "kl", "loss_d", "loss_g", "wdist")}
        print(f"{label}: {n - steps if latent else n} steps in {time.perf_counter() - t0:.0f} s, last {shown}", flush=True)
        out[label] = fam
    return out


def sentence_vae(fam: Any) -> Any:
    """The sentence VAE behind a generator (a sentence VAE, or a latent text GAN's), else None."""
    vae = getattr(fam, "vae", None) if getattr(fam, "approach", None) == "latent" else fam
    return vae if getattr(vae, "arch", None) == "sentence" else None


def same_weights(a: Any, b: Any) -> bool:
    """Whether two VAE families hold equal weights (--train: the GAN's VAE is a copy of the VAE row's)."""
    import torch

    sa, sb = a.raw("vae").state_dict(), b.raw("vae").state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def heldout_tokens(prepared: Any, n: int) -> Any:
    """The "real held-out" row's n windows as tokens [n, seq_len + 1] (split_texts' choice of 2n, first half)."""
    import torch

    tokens = prepared.read_numpy("val", ["tokens"])["tokens"]
    return torch.from_numpy(spread(tokens, 2 * n)[:n]).long()


def train_tokens(prepared: Any, n: int) -> Any:
    """n training windows as tokens [n, seq_len + 1], evenly spread over the train split."""
    import torch

    return torch.from_numpy(spread(prepared.read_numpy("train", ["tokens"])["tokens"], n)).long()


def decode_codes(vae: Any, tokens: Any, length: int, temperature: float) -> list[str]:
    """The VAE's decoder on the posterior means of `tokens`' windows [n, T+1] (sample i from seed i).

    On held-out windows: what this decoder writes from the codes of the real held-out text. On
    training windows: what a latent GAN that matched its critic's real codes (posterior means of
    training windows) exactly would write with this decoder.
    """
    import torch

    from creagen_ray.families.base import seeded_generator

    vae.train(False)
    with torch.no_grad():
        mu, _ = vae.raw("vae").encode(tokens.to(vae.device))  # [n, Z]
    req = TextRequest(n=1, seed=0, max_new_tokens=length, temperature=temperature)
    return [vae.decode_text(mu[i : i + 1].cpu(), req, seeded_generator(i))[0] for i in range(len(tokens))]


def scaled_samples(fam: Any, scale: float, n: int, length: int, temperature: float) -> list[str]:
    """n windows with the latent scaled: a sentence VAE's prior draws, or a latent GAN's noise, times `scale`.

    Sample i draws its latent from seed i and decodes with the same generator, as fam.generate(seed=i)
    does, so at scale 1 the samples are that model's own row.
    """
    import torch

    from creagen_ray.families.base import seeded_generator

    gan = getattr(fam, "approach", None) == "latent"
    vae = fam.vae if gan else fam
    dim = fam.latent_dim if gan else vae.raw("vae").latent_dim
    scale *= fam.cfg.model.noise_scale if gan else fam.cfg.model.prior_scale  # relative to the model's own draws
    req = TextRequest(n=1, seed=0, max_new_tokens=length, temperature=temperature)
    out = []
    for i in range(n):
        g = seeded_generator(i)
        z = torch.randn(1, dim, generator=g) * scale  # [1, dim]
        out.append(vae.decode_text(fam.distributions(z) if gan else z, req, g)[0])
    return out


def latent_use_report(vae: Any, prepared: Any, n: int) -> dict[str, float]:
    """How much the decoder uses z: held-out nats/char given each window's own code, another window's, the prior's mean."""
    import torch
    import torch.nn.functional as F

    vae.train(False)
    m = vae.raw("vae")
    tokens = heldout_tokens(prepared, n).to(vae.device)  # [n, T+1]
    with torch.no_grad():
        mu, logvar = m.encode(tokens)
        inputs = torch.cat([torch.full_like(tokens[:, :1], m.bos_id), tokens[:, :-1]], dim=1)

        def nats(z: Any) -> float:
            return round(F.cross_entropy(m.decode(inputs, z)[0].flatten(0, 1).float(), tokens.flatten()).item(), 3)

        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean().item()
        return {"own_code": nats(mu), "other_code": nats(mu.roll(1, 0)), "zero_code": nats(torch.zeros_like(mu)),
                "kl_nats": round(kl, 2)}


def code_spread(gan: Any, prepared: Any, n: int) -> dict[str, dict[str, float]]:
    """A latent GAN's n codes (seeds 0..n-1, as its row) beside its VAE's train codes and n prior draws.

    Per set: `dim_std` the per-dim standard deviation averaged over dims, `pair` the mean pairwise L2
    distance (spread: a collapsed G has both below its target's), `nn_train` the mean distance to the
    nearest of 2,048 other training windows' posterior means (closeness to the target), `norm` the
    mean L2 norm. "train codes" are the posterior means of the --train-codes row's windows.
    """
    import torch

    vae = gan.vae.raw("vae")
    vae.eval()
    tokens = torch.from_numpy(prepared.read_numpy("train", ["tokens"])["tokens"]).long()
    with torch.no_grad():
        train = vae.encode(train_tokens(prepared, n).to(gan.device))[0].float().cpu()  # [n, Z]
        pick = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(12345))[:2048]
        ref = vae.encode(tokens[pick].to(gan.device))[0].float().cpu()  # [2048, Z]
    codes = gan.distributions(torch.cat([gan.latents(1, i) for i in range(n)]))  # [n, Z], as the GAN row's samples
    prior = torch.randn(n, train.size(1), generator=torch.Generator().manual_seed(54321))

    def stats(x: Any) -> dict[str, float]:
        d = torch.cdist(x, x)
        return {"dim_std": round(x.std(0).mean().item(), 3), "pair": round((d.sum() / (len(x) * (len(x) - 1))).item(), 3),
                "nn_train": round(torch.cdist(x, ref).min(1).values.mean().item(), 3),
                "norm": round(x.norm(dim=1).mean().item(), 3)}

    return {"train codes": stats(train), "GAN codes": stats(codes), "prior draws": stats(prior)}


def model_points(model: str, table: dict[str, dict[str, float]], temps: dict[str, float],
                 also: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Every scored row of one generator (its own row and its --latent-scales rows, at each temperature), labelled
    "xS T t" (S relative to the model's own latent spread)."""
    out = []
    for t, tab in [(None, table), *((float(k), v) for k, v in also.items())]:
        for k, m in tab.items():
            if k == model or k.startswith((f"{model} noise x", f"{model} z x")):
                scale = k.rsplit(" x", 1)[1] if k != model else "1"
                out.append({"where": f"x{scale} T{temps[k] if t is None else t:g}", **m})
    return sorted(out, key=lambda m: m["self_bleu4"])


def matched_self_bleu(generators: dict[str, Any], table: dict[str, dict[str, float]], temps: dict[str, float],
                      also: dict[str, dict[str, dict[str, float]]]) -> dict[str, list[dict[str, Any]]]:
    """For each text GAN (and each sentence VAE's decoded codes: what a latent GAN that matched them would write)
    and sentence VAE prior: every GAN point, and the prior's LM score at its self-BLEU."""
    gans = [k for k, f in generators.items() if getattr(f, "approach", None) in ("latent", "char")]
    gans += [code for k, f in generators.items() if sentence_vae(f) is not None
             for code in (f"{k.split(' (')[0]} decoding {which} codes" for which in ("train", "held-out")) if code in table]
    priors = [k for k, f in generators.items() if sentence_vae(f) is f]
    fronts = {v: [(m["self_bleu4"], m["lm_score"]) for m in model_points(v, table, temps, also)] for v in priors}
    out = {}
    for g in gans:
        for v, front in fronts.items():
            out[f"{g} vs {v}"] = [
                {**{c: p[c] for c in ("where", "lm_score", "lm_se", "self_bleu4")}, "other": round(other, 4),
                 "diff": round(p["lm_score"] - other, 4)}
                for p in model_points(g, table, temps, also) for other in [lm_at_self_bleu(front, p["self_bleu4"])]]
    return out


def row_temperature(arg: str) -> tuple[str, float]:
    """--row-temperature's PREFIX=T, T checked as TextRequest checks it (0 = greedy, else sane)."""
    prefix, sep, t = arg.rpartition("=")
    if not sep or not prefix:
        raise argparse.ArgumentTypeError(f"expected LABEL_PREFIX=T, got {arg!r}")
    try:
        return prefix, TextRequest(temperature=float(t)).temperature
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{arg!r}: {e}") from e


def temperature_of(label: str, default: float, by_prefix: list[tuple[str, float]]) -> float:
    """A row's sampling temperature: the longest matching --row-temperature prefix's, else the default."""
    hits = [(len(p), t) for p, t in by_prefix if label.startswith(p)]
    return max(hits)[1] if hits else default


def main() -> None:
    """Print a markdown table (and JSON) of sample metrics for the real held-out text and each bundle."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundles", nargs="*", help="label=bundle_dir")
    p.add_argument("--train", type=int, default=0, help="train the families here for this many steps each")
    p.add_argument("--gan-steps", type=int, default=1000, help="--train: latent-GAN steps after its VAE's")
    p.add_argument("--char-gan", action="store_true", help="--train: also the char-level text GAN")
    p.add_argument("--free-bits", type=float, help=f"--train: the sentence VAE's free bits per latent (default {SENTENCE_VAE['free_bits']})")
    p.add_argument("--vae", action="append", default=[], metavar="KEY=VALUE",
                   help="--train: one more sentence VAE setting, for the VAE row and the latent GAN's VAE (repeatable)")
    p.add_argument("--gan", action="append", default=[], metavar="KEY=VALUE",
                   help="--train: one more latent text GAN model setting (repeatable)")
    p.add_argument("--gan-lr", type=float, help=f"--train: the latent GAN's G and D Adam lr (default {GAN_OPT['lr']})")
    p.add_argument("--train-codes", action="store_true",
                   help="also decode the posterior means of n training windows (the latent GAN's target)")
    p.add_argument("--corpus", choices=sorted(CORPORA), default="python-docs", help="--train: the text")
    p.add_argument("--source", help="--train: the corpus's text file (default for shakespeare: ../shared/data/...)")
    p.add_argument("--n", type=int, default=128, help="samples per generator (and held-out windows)")
    p.add_argument("--lm-steps", type=int, default=600, help="training steps of the reference and reverse LMs")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of every generator row")
    p.add_argument("--row-temperature", type=row_temperature, action="append", default=[], metavar="LABEL_PREFIX=T",
                   help="sample the rows whose label starts with LABEL_PREFIX at T (0 = greedy; repeatable)")
    p.add_argument("--also-temperatures", type=float, nargs="*", default=[],
                   help="also score every generator row at these temperatures (all rows alike; no reverse LM)")
    p.add_argument("--latent-scales", type=float, nargs="*", default=[], metavar="S",
                   help="also sample the VAE prior at N(0, S^2 I) and the latent GAN's noise times S (rows '... xS')")
    p.add_argument("--no-reverse-lm", action="store_true", help="skip the reverse LM column (nan): much faster")
    p.add_argument("--seed", type=int, default=0, help="--train: the families' training seed (init and batches)")
    p.add_argument("--storage", default="./runs", help="where the bundles' prepared data lives")
    p.add_argument("--prepared", help="an already prepared data folder to use (instead of preparing --corpus)")
    args = p.parse_args()
    import ray
    import torch

    from creagen_ray.data import prepare_data

    torch.set_num_threads(1)  # two threads on a shared 2-core machine measured several times slower

    t0 = time.perf_counter()
    bundles = {k: load_bundle(Path(v)) for k, v in (b.split("=", 1) for b in args.bundles)}
    if not bundles and not args.train:
        p.error("give label=bundle_dir arguments or --train STEPS")
    gen_labels = [*bundles, *(k for k in TRAINED if args.train and (args.char_gan or k != "text GAN (char)"))]
    labels = gen_labels + [f"{k.split(' (')[0]} decoding {c} codes" for k in gen_labels for c in ("held-out", "train")]
    for prefix, _ in args.row_temperature:  # a typo must not silently leave a row at --temperature
        if not any(k.startswith(prefix) for k in labels):
            p.error(f"--row-temperature {prefix!r} matches no row (rows: {', '.join(gen_labels)})")
    from creagen_ray.config import DataConfig

    corpus = {**CORPORA[args.corpus], **({"source": args.source} if args.source else {})}
    data = next(iter(bundles.values())).cfg.data if bundles else DataConfig(**corpus)
    if args.prepared:  # a folder `creagen prepare` (or an earlier run of this script) wrote: no Ray needed
        from creagen_ray.data import load_prepared

        prepared = load_prepared(args.prepared)
        data = DataConfig(**prepared.manifest["config"])
    else:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
        try:
            prepared = prepare_data(data, storage_path=args.storage)
        finally:
            ray.shutdown()
    families = {k: b.family for k, b in bundles.items()}
    latent_use: dict[str, dict[str, float]] = {}
    vae_sets = ([f"free_bits={args.free_bits}"] if args.free_bits is not None else []) + args.vae
    if args.train and vae_sets:  # the VAE row and the latent GAN's VAE alike
        for model, _ in TRAINED.values():
            if model["family"] == "vae":
                model.update(apply_overrides(model, vae_sets))
            if "vae" in model:
                model["vae"] = apply_overrides(model["vae"], vae_sets)
    if args.train and args.gan:
        model, opt = TRAINED["text GAN (latent)"]
        TRAINED["text GAN (latent)"] = (apply_overrides(model, args.gan), opt)
    if args.train and args.gan_lr is not None:
        model, opt = TRAINED["text GAN (latent)"]
        TRAINED["text GAN (latent)"] = (model, {**opt, "lr": args.gan_lr})
    if args.train:
        families.update(train_here(prepared, data.model_dump(mode="json"), args.train, args.gan_steps, args.char_gan,
                                   seed=args.seed))
    length = int(prepared.spec.seq_len)
    train_windows = prepared.read_numpy("train", ["tokens"])["tokens"]
    train = "".join(split_texts(prepared, "train", len(train_windows)))  # the whole train split (novelty8, LM)
    heldout = split_texts(prepared, "val", 2 * args.n)
    real, refs = heldout[: args.n], heldout[args.n :]
    # a latent GAN trained on its own VAE (--gan vae.KEY=VALUE): that VAE's prior samples get a row too
    vae_rows = [f for f in families.values() if sentence_vae(f) is f]
    generators = {**families, **{f"{k.split(' (')[0]}'s VAE (prior)": f.vae for k, f in families.items()
                                 if getattr(f, "approach", None) == "latent"
                                 and not any(same_weights(f.vae, v) for v in vae_rows)}}

    def sample_rows(temp: Any) -> tuple[dict[str, list[str]], dict[str, float]]:
        """Every generator's samples (and each distinct sentence VAE's decoded codes), row label -> temp(label)
        as its temperature; and those temperatures."""
        rows, temps = {"real held-out": real}, {}
        seen: list[Any] = []  # sentence VAEs (one row each, however many generators share its weights)
        for label, fam in generators.items():
            temps[label] = temp(label)
            reqs = [TextRequest(n=1, seed=i, max_new_tokens=length, temperature=temps[label]) for i in range(args.n)]
            rows[label] = [t[0] for t in fam.generate_many(reqs)]
            vae = sentence_vae(fam)
            if vae is not None and not any(same_weights(vae, v) for v in seen):
                seen.append(vae)
                name = label.split(" (")[0]
                codes = {"held-out": heldout_tokens(prepared, args.n)}
                if args.train_codes:
                    codes["train"] = train_tokens(prepared, args.n)
                for which, tokens in codes.items():
                    k = f"{name} decoding {which} codes"
                    temps[k] = temp(k)
                    rows[k] = decode_codes(vae, tokens, length, temps[k])
                latent_use[label] = latent_use_report(vae, prepared, args.n)
        for scale in args.latent_scales:  # the same models with their latent spread scaled
            for label, fam in generators.items():
                gan = getattr(fam, "approach", None) == "latent"
                if gan or sentence_vae(fam) is fam:
                    k = f"{label} {'noise' if gan else 'z'} x{scale:g}"
                    temps[k] = temp(k)
                    rows[k] = scaled_samples(fam, scale, args.n, length, temps[k])
        return rows, temps

    rows, temps = sample_rows(lambda k: temperature_of(k, args.temperature, args.row_temperature))
    spreads = {k: code_spread(f, prepared, args.n) for k, f in families.items() if getattr(f, "approach", None) == "latent"}
    vocab = sorted(set(train).union(*[c for r in rows.values() for c in r], *refs))
    lm = CharLM.fit(train, vocab, steps=args.lm_steps)
    def lm_se(v: list[str]) -> float:  # the LM score's standard error over samples (each sample is one window)
        per = np.array([lm.nats_per_char([t]) for t in v if len(t) > 1])
        return float(per.std(ddof=1) / len(per) ** 0.5)

    def bleu_se(v: list[str]) -> tuple[float, float]:  # self-BLEU-4 and its standard error over the samples
        per = np.array(self_bleu4_scores(v))
        return float(per.mean()), float(per.std(ddof=1) / len(per) ** 0.5)

    def scores(v: list[str], reverse: bool) -> dict[str, float]:
        """sample_report's metrics (the same functions), each once, with the standard errors beside them."""
        sb, sb_se = bleu_se(v)
        rev = reverse_lm_score(v, refs, lm.chars, steps=args.lm_steps) if reverse else float("nan")
        return {"lm_score": lm_score(v, lm), "lm_se": lm_se(v), "reverse_lm_score": rev, "bleu4": bleu4(v, refs),
                "self_bleu4": sb, "self_bleu_se": sb_se, "novelty8": novelty(v, train, n=8)}

    # --no-reverse-lm: nan in that column (the reverse LMs are most of the scoring time)
    table = {k: scores(v, reverse=not args.no_reverse_lm) for k, v in rows.items()}
    cols = ["lm_score", "lm_se", "reverse_lm_score", "bleu4", "self_bleu4", "novelty8"]
    print("| samples | temperature | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
    for k, m in table.items():
        print(f"| {k} | {temps.get(k, '-')} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    print("self-BLEU-4 standard errors: " + ", ".join(f"{k} {m['self_bleu_se']:.4f}" for k, m in table.items()))
    for k, v in rows.items():
        print(f"{k} sample: {v[0]!r}")
    for k, v in latent_use.items():
        print(f"{k} latent use (held-out, nats/char): {v}")
    for k, v in spreads.items():
        print(f"{k} code spread (n {args.n}): {v}")
    also: dict[str, dict[str, dict[str, float]]] = {}
    for temp in args.also_temperatures:  # the same seeds and scorers, every generator row at `temp`
        cols_t = ["lm_score", "lm_se", "bleu4", "self_bleu4", "self_bleu_se", "novelty8"]
        print(f"\ntemperature {temp} (every generator row; real held-out unchanged)\n| samples | "
              + " | ".join(cols_t) + " |\n|---|" + "---|" * len(cols_t))
        also[str(temp)] = {}
        for k, v in sample_rows(lambda _, t=temp: t)[0].items():
            m = scores(v, reverse=False)
            also[str(temp)][k] = {c: round(m[c], 4) for c in cols_t}
            print(f"| {k} | " + " | ".join(f"{m[c]:.3f}" for c in cols_t) + " |", flush=True)
    matched = matched_self_bleu(generators, table, temps, also)
    if matched:
        print("\nmatched self-BLEU: each text GAN point (latent scale x, temperature T) against each sentence VAE prior's "
              "best LM score at that self-BLEU (its --latent-scales and temperature points, linear between neighbours; "
              "diff < 0: the GAN better; nan: outside the prior's range)")
    for pair, pts in matched.items():
        print(f"{pair}: " + " | ".join(f"{p['where']} {p['lm_score']:.3f} / {p['self_bleu4']:.3f} vs {p['other']:.3f}: "
                                       f"{p['diff']:+.3f}" for p in pts))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "n": args.n, "lm_steps": args.lm_steps,
                      "train_steps": args.train, "gan_steps": args.gan_steps,
                      "temperature": args.temperature, "row_temperatures": temps, "free_bits": args.free_bits, "vae": args.vae, "gan": args.gan, "gan_lr": args.gan_lr,
                      "seed": args.seed, "no_reverse_lm": args.no_reverse_lm, "latent_scales": args.latent_scales, "also_temperatures": also, "code_spread": spreads, "matched": matched,
                      "table": {k: {c: round(m[c], 4) for c in [*cols, "self_bleu_se"]} for k, m in table.items()},
                      "corpus": next((k for k, c in CORPORA.items() if c["source"] == data.source), data.source),
                      "source": data.source,
                      "uptime": os.popen("uptime").read().strip()}))


if __name__ == "__main__":
    main()
