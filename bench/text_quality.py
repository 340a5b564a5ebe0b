"""Sample quality of the text generators side by side (the text-GAN literature's table).

    .venv/bin/python bench/text_quality.py rnn=runs/demo/bundles/rnn vae=RUN/bundle textgan=RUN/bundle

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

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from creagen_ray.bundle import load_bundle  # noqa: E402
from creagen_ray.config import TextRequest  # noqa: E402
from creagen_ray.metrics.text import CharLM, sample_report  # noqa: E402
from creagen_ray.training.sample_metrics import split_texts  # noqa: E402


def main() -> None:
    """Print a markdown table (and JSON) of sample metrics for the real held-out text and each bundle."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundles", nargs="+", help="label=bundle_dir")
    p.add_argument("--n", type=int, default=128, help="samples per generator (and held-out windows)")
    p.add_argument("--lm-steps", type=int, default=600, help="training steps of the reference and reverse LMs")
    p.add_argument("--storage", default="./runs", help="where the bundles' prepared data lives")
    args = p.parse_args()
    import ray

    from creagen_ray.data import prepare_data

    t0 = time.perf_counter()
    bundles = {k: load_bundle(Path(v)) for k, v in (b.split("=", 1) for b in args.bundles)}
    first = next(iter(bundles.values()))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    try:
        prepared = prepare_data(first.cfg.data, storage_path=args.storage)
    finally:
        ray.shutdown()
    length = int(prepared.spec.seq_len)
    train = "".join(split_texts(prepared, "train", 20000))
    heldout = split_texts(prepared, "val", 2 * args.n)
    real, refs = heldout[: args.n], heldout[args.n :]
    rows = {"real held-out": real}
    for label, b in bundles.items():
        reqs = [TextRequest(n=1, seed=i, max_new_tokens=length) for i in range(args.n)]
        rows[label] = [t[0] for t in b.family.generate_many(reqs)]
    vocab = sorted(set(train).union(*[c for r in rows.values() for c in r], *refs))
    lm = CharLM.fit(train, vocab, steps=args.lm_steps)
    table = {k: sample_report(v, train, refs, lm, reverse_steps=args.lm_steps) for k, v in rows.items()}
    cols = ["lm_score", "reverse_lm_score", "bleu4", "self_bleu4", "novelty8"]
    print("| samples | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for k, m in table.items():
        print(f"| {k} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    for k, v in rows.items():
        print(f"{k} sample: {v[0]!r}")
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "n": args.n, "lm_steps": args.lm_steps}))


if __name__ == "__main__":
    main()
