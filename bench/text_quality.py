"""Sample quality of the text generators side by side (the text-GAN literature's table).

    .venv/bin/python bench/text_quality.py rnn=RUN1/bundle vae=RUN2/bundle textgan=RUN3/bundle
    .venv/bin/python bench/text_quality.py --train 400     # rnn, sentence VAE, text GAN trained here

With --train STEPS the three families are trained in this process (no Ray Train: each family's own
train_step on random windows of jobs/configs/text-gan.yaml's prepared data, one torch thread) for
STEPS steps each: a quick, reproducible comparison, not the models' best.

Every bundle must be trained on the same corpus (the first bundle's prepared data is used: its
train split for the reference LM and novelty, its validation windows as held-out "sentences").
Rows: real held-out windows (the reference), then each bundle's unconditional samples (temperature
1, seeds 0..n-1, one window of data.seq_len chars each). Columns (creagen_ray.metrics.text):
LM score and reverse LM score (nats/char, lower is better), BLEU-4 vs held-out and self-BLEU-4,
8-gram novelty vs the training text (closest to the real row is best, higher is not better).
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

from creagen_ray.bundle import load_bundle  # noqa: E402
from creagen_ray.config import TextRequest  # noqa: E402
from creagen_ray.metrics.text import CharLM, sample_report  # noqa: E402
from creagen_ray.training.sample_metrics import split_texts  # noqa: E402


TRAINED = {  # --train: small models of each family on the same windows
    "char RNN": {"family": "rnn", "embed_dim": 32, "hidden_size": 128, "num_layers": 1},
    "sentence VAE (prior)": {"family": "vae", "arch": "sentence", "latent_dim": 16, "embed_dim": 32,
                             "hidden_size": 128, "kl_anneal_steps": 200, "word_dropout": 0.25},
    "text GAN": {"family": "textgan", "latent_dim": 64, "channels": 64, "blocks": 2, "n_critic": 5},
}


def train_here(prepared: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    """Each TRAINED family, trained `steps` steps in this process on random train windows."""
    import torch

    from creagen_ray.config import load_config
    from creagen_ray.families import build_family

    torch.set_num_threads(1)
    tokens = torch.from_numpy(prepared.read_numpy("train", ["tokens"])["tokens"]).long()
    base = load_config(ROOT / "jobs/configs/text-gan.yaml").model_dump(mode="json")
    out = {}
    for label, model in TRAINED.items():
        raw = {**base, "model": model, "loss": {}}
        if model["family"] == "textgan":
            raw["optimizer"] = {"name": "adam", "lr": 1e-3, "betas": [0.5, 0.9], "grad_clip": None}
        else:
            raw["optimizer"] = {"name": "adam", "lr": 3e-3}
        from creagen_ray.config import validate_config

        cfg = validate_config(raw)
        torch.manual_seed(seed)
        fam = build_family(cfg, prepared.spec, total_steps=steps, tokenizer=prepared.tokenizer)
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for _ in range(steps):
            fam.train_step({"tokens": tokens[torch.randint(0, len(tokens), (32,), generator=g)]})
        fam.train(False)
        print(f"{label}: {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        out[label] = fam
    return out


def main() -> None:
    """Print a markdown table (and JSON) of sample metrics for the real held-out text and each bundle."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundles", nargs="*", help="label=bundle_dir")
    p.add_argument("--train", type=int, default=0, help="train the three families here for this many steps each")
    p.add_argument("--n", type=int, default=128, help="samples per generator (and held-out windows)")
    p.add_argument("--lm-steps", type=int, default=600, help="training steps of the reference and reverse LMs")
    p.add_argument("--storage", default="./runs", help="where the bundles' prepared data lives")
    args = p.parse_args()
    import ray
    import torch

    from creagen_ray.data import prepare_data

    torch.set_num_threads(1)  # two threads on a shared 2-core machine measured several times slower

    t0 = time.perf_counter()
    bundles = {k: load_bundle(Path(v)) for k, v in (b.split("=", 1) for b in args.bundles)}
    if not bundles and not args.train:
        p.error("give label=bundle_dir arguments or --train STEPS")
    from creagen_ray.config import load_config

    data = next(iter(bundles.values())).cfg.data if bundles else load_config(ROOT / "jobs/configs/text-gan.yaml").data
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    try:
        prepared = prepare_data(data, storage_path=args.storage)
    finally:
        ray.shutdown()
    families = {k: b.family for k, b in bundles.items()}
    if args.train:
        families.update(train_here(prepared, args.train))
    length = int(prepared.spec.seq_len)
    train = "".join(split_texts(prepared, "train", 20000))
    heldout = split_texts(prepared, "val", 2 * args.n)
    real, refs = heldout[: args.n], heldout[args.n :]
    rows = {"real held-out": real}
    for label, fam in families.items():
        reqs = [TextRequest(n=1, seed=i, max_new_tokens=length) for i in range(args.n)]
        rows[label] = [t[0] for t in fam.generate_many(reqs)]
    vocab = sorted(set(train).union(*[c for r in rows.values() for c in r], *refs))
    lm = CharLM.fit(train, vocab, steps=args.lm_steps)
    table = {k: sample_report(v, train, refs, lm, reverse_steps=args.lm_steps) for k, v in rows.items()}
    cols = ["lm_score", "reverse_lm_score", "bleu4", "self_bleu4", "novelty8"]
    print("| samples | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for k, m in table.items():
        print(f"| {k} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    for k, v in rows.items():
        print(f"{k} sample: {v[0]!r}")
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "n": args.n, "lm_steps": args.lm_steps,
                      "train_steps": args.train, "uptime": os.popen("uptime").read().strip()}))


if __name__ == "__main__":
    main()
