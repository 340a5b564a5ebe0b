"""Quality at an equal number of images seen (load-independent): reference script vs a config's family.

    .venv/bin/python bench/quality_per_step.py vae --steps 1000 --out runs/qps
    .venv/bin/python bench/quality_per_step.py dcgan --steps 1500 --set model.g_channels=64 --out runs/qps
    .venv/bin/python bench/quality_per_step.py dcgan --steps 4000 --no-reference --seed 1 --score-at 2000,3000

`--score-at` also scores the project at those earlier steps of the same run (one row each, same
seed and batches: a shorter run with a constant lr follows the same trajectory). `--seed` changes the
project's init, batches and noise; `--no-reference` skips the reference script.

Timings depend on the machine's load; the scores below do not (seeded, same batches), so this is
how the shipped configs are tuned on a shared machine. Each side trains `--steps` optimizer steps
of the same number of images: the reference script (bench/reference, `--steps`, 1 thread) at its
own batch size, the project's family (the config's `train_step`, in this process, no Ray) on
batches of `num_workers x batch_size` rows, which is what one DDP step of the config averages
over. The project's steps are scaled so both see the same images (`--steps` counts reference
steps). Both are scored as bench/quality_per_time.py scores them: 2,000 prior samples against the
2,000 evaluation images under the project's FeatureNet classifier (fcd, precision, recall, largest
class share), and the VAE's -ELBO on all evaluation images. Grids go to
<out>/<model>-<tag>-s<seed>-<project steps>-grid.png (the path each JSON row names).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "reference"))
sys.path.insert(0, str(ROOT / "bench"))

from mnist_split import load_mnist  # noqa: E402
from quality_per_time import MODELS, N_SAMPLES, save_grids  # noqa: E402

from creagen_ray.config import DataSpec, validate_config  # noqa: E402
from creagen_ray.families import build_family  # noqa: E402
from creagen_ray.metrics import image_quality, train_feature_net  # noqa: E402

REF_BATCH = {"vae": 128, "dcgan": 64, "wgan": 64}


def parse_value(v: str) -> object:
    return yaml.safe_load(v)


def config(model: str, sets: list[str]) -> dict:
    raw = yaml.safe_load((ROOT / MODELS[model][1]).read_text())
    for kv in sets:
        key, value = kv.split("=", 1)
        node = raw
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = parse_value(value)
    return raw


def reference(model: str, steps: int, out: Path) -> dict:
    d = out / f"ref-{model}-{steps}"
    if not (d / "result.json").exists():
        args = MODELS[model][0]
        subprocess.run([sys.executable, *args, "--budget", "1e9", "--steps", str(steps), "--threads", "1",
                        "--out", str(d), "--samples", str(N_SAMPLES)], cwd=ROOT, check=True)
    return {**json.loads((d / "result.json").read_text()), "samples": torch.load(d / "samples.pt")}


def scores(model: str, fam, data: dict) -> dict:
    """The family's -ELBO (VAE) and 2,000 prior samples, as quality_per_time scores them."""
    out = {}
    if model == "vae":
        ev = data["eval_x"]
        m = fam.evaluate([{"image": ev[i : i + 500]} for i in range(0, len(ev), 500)])
        out["neg_elbo"] = m["val_neg_elbo"]
        out["active_units"] = m["val_active_units"]
    out["samples"] = torch.cat([fam.sample(500, seed=1000 + i).cpu() for i in range(N_SAMPLES // 500)])
    return out


def project(model: str, raw: dict, images: int, data: dict, seed: int = 0, at: tuple[int, ...] = (),
            on_score=None, device: str = "cpu") -> dict:
    """Train the config's family on `images` images in this process; scores at the end (and at `at`)."""
    cfg = validate_config(raw)
    rows = cfg.train.num_workers * cfg.train.batch_size
    steps = images // rows
    spec = DataSpec(modality="image", channels=1, image_size=28, num_classes=10)
    torch.manual_seed(seed)
    fam = build_family(cfg, spec, device=device, total_steps=cfg.train.steps)
    x = data["train_x"]
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - rows + 1, rows):
            fam.train_step({"image": x[perm[i : i + rows]]})
            done += 1
            if done in at and done < steps and on_score is not None:
                on_score({"steps": done, "rows_per_step": rows, **scores(model, fam, data)})
            if done >= steps:
                break
    train_s = time.perf_counter() - t0
    return {"steps": steps, "rows_per_step": rows, "train_s": train_s, **scores(model, fam, data)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--steps", type=int, required=True, help="reference steps; the project sees as many images")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    p.add_argument("--tag", default="shipped")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="the project's seed (init, batches, noise)")
    p.add_argument("--score-at", default="", help="comma list of earlier project steps to score too")
    p.add_argument("--no-reference", action="store_true", help="score the project side only")
    p.add_argument("--judge-steps", type=int, default=400, help="FeatureNet training steps (400 as quality_per_time)")
    p.add_argument("--device", default="cpu", help="where the project's family trains (cuda: a GPU; scores stay on the CPU)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality_per_step")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    data = load_mnist()
    judge = train_feature_net(data["train_x"], data["train_y"], num_classes=10, steps=args.judge_steps, seed=0)
    ref = None if args.no_reference else reference(args.model, args.steps, args.out)
    images = args.steps * REF_BATCH[args.model]
    real = data["eval_x"]

    def report(proj: dict) -> None:
        row = {"model": args.model, "images": images, "tag": args.tag, "set": args.set, "seed": args.seed,
               "load": os.getloadavg()[0]}
        for side, r in (("ref", ref), ("proj", proj)):
            if r is not None:
                row[side] = {**{k: v for k, v in r.items() if k != "samples"}, **image_quality(judge, real, r["samples"])}
        name = f"{args.model}-{args.tag}-s{args.seed}-{proj['steps']}"
        row["grid"] = str(save_grids(name, ref["samples"] if ref else proj["samples"], proj["samples"], args.out))
        print(json.dumps(row, default=str), flush=True)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    at = tuple(int(s) for s in args.score_at.split(",") if s)
    report(project(args.model, config(args.model, args.set), images, data, seed=args.seed, at=at, on_score=report,
                   device=args.device))


if __name__ == "__main__":
    main()
