"""Quality at equal wall-clock: creagen-ray's shipped image configs vs plain single-process PyTorch.

    .venv/bin/python bench/quality_per_time.py                       # vae 180 s, dcgan + wgan 300 s (~30 min)
    .venv/bin/python bench/quality_per_time.py --only vae --vae-budget 60 --out runs/qpt-smoke

For each model, one after the other in this one invocation (never in parallel: 2 cores):
  reference  bench/reference/{vae,gan}.py for `budget` seconds of training, single process, 2 threads
  project    `creagen train jobs/configs/<config>.yaml --set train.time_budget_s=<budget>`: the same
             seconds of training loop (Ray start-up, data preparation and the bundle export come on
             top: the table shows the project's end-to-end wall time too)
Both are then scored here, identically, on the same 2,000 evaluation images (MNIST t10k, index % 5
== 0) against 2,000 prior samples:
  fcd        Fréchet distance in the features of the project's own FeatureNet classifier, trained
             here on all 8,000 training images (400 steps, seed 0): a *classifier* FID, NOT Inception
             FID. The judge is the project's network, so an outside extractor may rank differently.
  precision, recall   Kynkäänniemi et al. 2019, k = 3, same features;
  max class  the largest share of one class among the samples, by that classifier (bar: 15%);
  -ELBO      VAE only: nats per image on all 2,000 evaluation images, one z draw per image.
Ratios are project / reference (below 1 is better for fcd and -ELBO, above 1 for precision/recall).
Grids (reference left, project right) go to <out>/<model>-grid.png. Log `uptime` beside the numbers.
Smaller runs: --samples, --judge-steps, --set KEY=VALUE (the project's run only); --address runs the
project on a running cluster instead of a private Ray.
MNIST comes from ../shared/data/mnist, or $CREAGEN_SHARED_DATA/mnist when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "reference"))

from mnist_split import MNIST_DIR, load_mnist  # noqa: E402

from creagen_ray.bundle import load_bundle  # noqa: E402
from creagen_ray.config import ImageRequest  # noqa: E402
from creagen_ray.images import make_grid, to_pil  # noqa: E402
from creagen_ray.metrics import classifier_accuracy, image_quality, train_feature_net  # noqa: E402

MODELS = {  # name: (reference command args, project config, default budget flag)
    "vae": (["bench/reference/vae.py"], "jobs/configs/vae-mnist.yaml", "vae_budget"),
    "dcgan": (["bench/reference/gan.py", "--loss", "bce"], "jobs/configs/dcgan-mnist.yaml", "gan_budget"),
    "wgan": (["bench/reference/gan.py", "--loss", "wgan-gp"], "jobs/configs/wgan-gp-mnist.yaml", "gan_budget"),
}
N_SAMPLES = 2000


def run(cmd: list[str], log: Path) -> float:
    """Run a command from the repo root, output to `log`; returns its wall seconds (raises on failure)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def reference(model: str, budget: float, out: Path, n_samples: int = N_SAMPLES) -> dict[str, Any]:
    """Train the plain reference; its samples and result.json."""
    d = out / f"ref-{model}"
    args, _, _ = MODELS[model]
    wall = run([sys.executable, *args, "--budget", str(budget), "--out", str(d), "--samples", str(n_samples)],
               out / f"ref-{model}.log")
    res = json.loads((d / "result.json").read_text())
    return {**res, "wall_s": wall, "samples": torch.load(d / "samples.pt")}


def project(model: str, budget: float, out: Path, n_samples: int = N_SAMPLES, address: str = "local",
            sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train the shipped config for `budget` seconds of loop (`sets`: more --set overrides); its bundle's samples and metrics."""
    _, config, _ = MODELS[model]
    run_name = f"qpt-{model}-{int(time.time())}"
    creagen = str(Path(sys.executable).with_name("creagen"))
    data = [f"data.source={MNIST_DIR / 't10k-images-idx3-ubyte.gz'}", f"data.labels={MNIST_DIR / 't10k-labels-idx1-ubyte.gz'}"]
    wall = run([creagen, "train", config, "--address", address, *(x for kv in [*data, *sets] for x in ("--set", kv)),
                "--set", f"train.time_budget_s={budget}",
                "--set", f"train.storage_path={out / 'runs'}", "--set", f"train.run_name={run_name}"],
               out / f"project-{model}.log")
    bundle = load_bundle(out / "runs" / run_name / "bundle")
    samples = torch.cat([bundle.generate(ImageRequest(n=min(50, n_samples - i * 50), seed=1000 + i))
                         for i in range(-(-n_samples // 50))])
    m = bundle.metrics
    return {"steps": m.get("step"), "train_s": m.get("time_s"), "wall_s": wall, "samples": samples,
            "neg_elbo": m.get("val_neg_elbo"), "eval_images": m.get("val_items"), "bundle": str(bundle.path)}


def save_grids(model: str, ref: torch.Tensor, proj: torch.Tensor, out: Path) -> Path:
    """64 reference samples left, 64 project samples right, one PNG."""
    import numpy as np

    left, right = make_grid(ref[:64].float() / 255.0 if ref.dtype == torch.uint8 else ref[:64], nrow=8), make_grid(
        proj[:64], nrow=8)
    gap = np.full((left.shape[0], 8, *left.shape[2:]), 255, dtype=left.dtype)
    path = out / f"{model}-grid.png"
    to_pil(np.concatenate([left, gap, right], axis=1)).save(path)
    return path


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="vae,dcgan,wgan", help="comma list of vae, dcgan, wgan")
    p.add_argument("--vae-budget", type=float, default=180.0, help="seconds of training for the VAEs")
    p.add_argument("--gan-budget", type=float, default=300.0, help="seconds of training for the GANs")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality_per_time")
    p.add_argument("--samples", type=int, default=N_SAMPLES, help="prior samples scored per side")
    p.add_argument("--judge-steps", type=int, default=400, help="FeatureNet (the judge) training steps")
    p.add_argument("--set", action="append", default=[], help="one more --set KEY=VALUE for the project's run (repeatable)")
    p.add_argument("--address", default="local",
                   help="Ray for the project's run: 'local' starts a private one, else a running cluster's address")
    args = p.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(2)  # scoring only; the runs set their own threads

    data = load_mnist()
    judge = train_feature_net(data["train_x"], data["train_y"], num_classes=10, steps=args.judge_steps, seed=0)
    acc = classifier_accuracy(judge, data["eval_x"], data["eval_y"])
    print(f"judge: creagen FeatureNet trained here on 8,000 train images, {args.judge_steps} steps; eval accuracy {acc:.3f}"
          f" (classifier FID = fcd, not Inception FID)", flush=True)
    real = data["eval_x"]
    rows = []
    for model in [m.strip() for m in args.only.split(",") if m.strip()]:
        budget = getattr(args, MODELS[model][2])
        load0 = os.getloadavg()[0]
        try:
            ref = reference(model, budget, args.out, args.samples)
            proj = project(model, budget, args.out, args.samples, args.address, tuple(args.set))
        except RuntimeError as err:  # one failed run (e.g. Ray start-up timing out) does not lose the others
            print(f"{model}: FAILED: {err}", flush=True)
            continue
        q = {k: image_quality(judge, real, r["samples"]) for k, r in (("ref", ref), ("proj", proj))}
        grid = save_grids(model, ref["samples"], proj["samples"], args.out)
        row = {"model": model, "budget_s": budget, "load_start": load0, "load_end": os.getloadavg()[0], "grid": str(grid)}
        for side, r in (("ref", ref), ("proj", proj)):
            row[side] = {**{k: v for k, v in r.items() if k != "samples"}, **q[side]}
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)

    print(f"\nquality per wall-clock (judge accuracy {acc:.3f}; load avg now {os.getloadavg()[0]:.1f})")
    head = f"{'model':6} {'side':5} {'steps':>6} {'train s':>7} {'wall s':>6} {'-ELBO':>6} {'fcd':>7} {'prec':>5} {'rec':>5} {'max cls':>7}"
    print(head)
    for row in rows:
        for side in ("ref", "proj"):
            r = row[side]
            print(f"{row['model']:6} {side:5} {fmt(r.get('steps'), 'd') if isinstance(r.get('steps'), int) else fmt(r.get('steps'))!s:>6}"
                  f" {fmt(r.get('train_s'), '.0f'):>7} {fmt(r.get('wall_s'), '.0f'):>6} {fmt(r.get('neg_elbo')):>6}"
                  f" {r['fcd']:7.1f} {r['precision']:5.2f} {r['recall']:5.2f} {r.get('max_class_share', 0):7.1%}")
        ref, proj = row["ref"], row["proj"]
        elbo = proj["neg_elbo"] / ref["neg_elbo"] if proj.get("neg_elbo") and ref.get("neg_elbo") else None
        print(f"{row['model']:6} ratio project/reference: fcd {proj['fcd'] / ref['fcd']:.2f}"
              + (f", -ELBO {elbo:.3f}" if elbo else "")
              + f", precision {proj['precision'] / max(ref['precision'], 1e-9):.2f}"
              f", recall {proj['recall'] / max(ref['recall'], 1e-9):.2f}   grid {row['grid']}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
