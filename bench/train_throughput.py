"""Training throughput under Ray Train vs a plain PyTorch loop, DDP scaling, and Ray Data wait share.

    .venv/bin/python bench/train_throughput.py            # RNN + GAN throughput table (~6 min on 2 cores)
    .venv/bin/python bench/train_throughput.py --only gaps  # epoch-boundary gaps only (~2 min)

Smaller runs: --models, --workers (which Ray runs each row has), --steps, --epochs, --set KEY=VALUE (the
epoch-gap runs' config, e.g. data.max_items); --address joins a running cluster instead of starting a
private 2-CPU Ray.

(The quality-per-wall-clock comparison is `time creagen train jobs/configs/rnn-shakespeare.yaml`,
end to end; see docs/benchmarks.md.)

One process, side by side, same model, same per-worker batch, one torch thread per worker:
  plain     the Family's train_step in a loop over in-memory batches (no Ray at all)
  ray x1    TorchTrainer, 1 worker, batches streamed by Ray Data
  ray x2    TorchTrainer, 2 DDP workers (gloo), 0.5 logical CPU each, 1 thread each
Throughput is the steady state: every report window except the first (pipeline start-up and the
FeatureNet fit live there); the data-wait share is the time a worker waited for its next batch
divided by the window's wall time. Start-up is reported separately (time to the first report).
The numbers depend on what else runs on the machine: say so next to them.

Epoch-boundary gaps ("gaps"): the MNIST conv VAE (vae-mnist.yaml, 2 workers; builtin shapes when
../shared is absent) for 4 epochs, once with the training split materialized in Ray's object store
(the default below train.materialize_mb) and once streamed (materialize_mb=0). The gap is the wall
time between a worker finishing its last batch of epoch k and receiving the first batch of epoch
k+1 (`epoch_gap_s` in the loop's reports); the table shows the largest over ranks and epochs.
Target: at most 50 ms for MNIST-sized data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

import torch  # noqa: E402

from creagen_ray.config import ExperimentConfig, load_config  # noqa: E402
from creagen_ray.families import build_family  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
MNIST = Path(os.environ.get("CREAGEN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "mnist" / "t10k-images-idx3-ubyte.gz"


def rnn_cfg(storage: str, workers: int, steps: int) -> ExperimentConfig:
    """The rnn-shakespeare model (or the embedded text when ../shared is absent), fixed steps."""
    source = str(SHAKESPEARE) if SHAKESPEARE.is_file() else "builtin:python-docs"
    return load_config(
        ROOT / "jobs/configs/rnn-shakespeare.yaml",
        [f"data.source={source}", f"train.storage_path={storage}", f"train.num_workers={workers}",
         f"train.steps={steps}", "train.log_every=50", "train.eval_every=100000", "train.checkpoint_every=100000",
         "train.torch_threads=1", f"train.cpus_per_worker={1.0 if workers == 1 else 0.5}"],
    )


def gan_cfg(storage: str, workers: int, steps: int) -> ExperimentConfig:
    """The demo GAN on embedded shapes, fixed steps."""
    return load_config(
        ROOT / "jobs/configs/demo-gan.yaml",
        [f"train.storage_path={storage}", f"train.num_workers={workers}", f"train.steps={steps}",
         "train.log_every=50", "train.eval_every=100000", "train.checkpoint_every=100000",
         "train.torch_threads=1", f"train.cpus_per_worker={1.0 if workers == 1 else 0.5}"],
    )


def plain_rate(cfg: ExperimentConfig, prepared: Any, steps: int) -> float:
    """Items/s of family.train_step over in-memory batches, one thread, after 10 warm-up steps."""
    torch.set_num_threads(1)
    col = "tokens" if prepared.spec.modality == "text" else "image"
    data = torch.as_tensor(prepared.read_numpy("train", [col])[col])
    if col == "tokens":
        data = data.long()
    family = build_family(cfg, prepared.spec, total_steps=steps + 10, tokenizer=prepared.tokenizer)
    bs = cfg.train.batch_size
    per_item = data.shape[1] - 1 if col == "tokens" else 1
    t0 = 0.0
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(data), (bs,))
        family.train_step({col: data[idx]})
    return steps * bs * per_item / (time.perf_counter() - t0)


def ray_rates(cfg: ExperimentConfig) -> dict[str, float]:
    """Run train() with a MetricsLogCallback; steady-state items/s (sum of ranks), wait share, start-up."""
    from creagen_ray.training import MetricsLogCallback, train

    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "log.jsonl"
        t0 = time.perf_counter()
        train(cfg, progress=False, callbacks=[MetricsLogCallback(str(log))])
        wall = time.perf_counter() - t0
        rows = [json.loads(line)["ranks"] for line in log.read_text().splitlines()]
    steady = rows[1:] or rows
    return {
        "items_per_s": statistics.median(sum(r["items_per_s"] for r in ranks) for ranks in steady),
        "wait_share": statistics.mean(r["data_wait_share"] for ranks in steady for r in ranks),
        "first_report_s": rows[0][0]["time_s"],
        "wall_s": wall,
    }


def throughput(name: str, make_cfg: Any, steps: int, storage: str, workers: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """plain vs ray x1 vs ray x2 (those of `workers`) for one model; prints and returns the ratios."""
    from creagen_ray.data import prepare_data

    cfg1 = make_cfg(storage, 1, steps)
    prepared = prepare_data(cfg1.data, storage_path=storage)
    plain = plain_rate(cfg1, prepared, min(steps, 200))
    runs = {w: ray_rates(make_cfg(storage, w, steps)) for w in workers}
    unit = "tokens/s" if prepared.spec.modality == "text" else "images/s"
    out: dict[str, Any] = {"model": name, "unit": unit, "plain": plain}
    cells = [f"{name:4} {unit:9} plain {plain:9,.0f}"]
    for w, r in runs.items():  # x1 against plain, x2 against x1 (against plain when x1 did not run)
        base, base_name = (runs[1]["items_per_s"], "x1") if w == 2 and 1 in runs else (plain, "plain")
        out[f"ray_{w}"] = r["items_per_s"]
        out[f"ray{w}_over_{'ray1' if base_name == 'x1' else 'plain'}"] = r["items_per_s"] / base
        cells.append(f"ray x{w} {r['items_per_s']:9,.0f} ({r['items_per_s'] / base:.2f}x {base_name})")
    for w, r in runs.items():
        out[f"wait_share_{w}"] = r["wait_share"]
    first = runs[workers[0]]
    out[f"startup_s_{workers[0]}"] = first["first_report_s"]
    out[f"wall_s_{workers[-1]}"] = runs[workers[-1]]["wall_s"]
    cells.append("data wait " + " / ".join(f"{r['wait_share']:.1%}" for r in runs.values()))
    cells.append(f"first report after {first['first_report_s']:.0f} s")
    print(" | ".join(cells), flush=True)
    return out


def gap_cfg(storage: str, materialize_mb: float, epochs: int, sets: tuple[str, ...] = ()) -> ExperimentConfig:
    """vae-mnist.yaml (or the demo VAE on shapes without ../shared) for a few epochs, rare evals; `sets`: more overrides."""
    common = [f"train.storage_path={storage}", "train.steps=null", f"train.epochs={epochs}", "train.time_budget_s=null",
              "train.log_every=20", "train.eval_every=100000", "train.checkpoint_every=100000",
              f"train.materialize_mb={materialize_mb}", *sets]
    if MNIST.is_file():
        return load_config(ROOT / "jobs/configs/vae-mnist.yaml", [
            f"data.source={MNIST}", f"data.labels={MNIST.parent / 't10k-labels-idx1-ubyte.gz'}", *common])
    return load_config(ROOT / "jobs/configs/demo-vae.yaml", common)


def epoch_gaps(storage: str, epochs: int = 4, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Largest and median epoch-boundary gap, materialized vs streamed; prints one line each."""
    from creagen_ray.training import MetricsLogCallback, train

    out: dict[str, Any] = {}
    for label, budget in (("materialized", 256.0), ("streaming", 0.0)):
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "log.jsonl"
            t0 = time.perf_counter()
            train(gap_cfg(storage, budget, epochs, sets), progress=False, callbacks=[MetricsLogCallback(str(log))])
            wall = time.perf_counter() - t0
            rows = [json.loads(line)["ranks"] for line in log.read_text().splitlines()]
        # each report repeats the latest gap until the next epoch starts: one value per (rank, gap)
        gaps = sorted({(i, r["epoch_gap_s"]) for ranks in rows for i, r in enumerate(ranks) if "epoch_gap_s" in r})
        values = [g for _, g in gaps]
        mode = rows[-1][0].get("data_mode")
        out[label] = {"data_mode": mode, "gaps_s": values, "max_s": max(values, default=float("nan")),
                      "median_s": statistics.median(values) if values else float("nan"), "wall_s": wall}
        print(f"epoch gap  {label:12} (data_mode {mode}): max {out[label]['max_s'] * 1000:7.1f} ms, "
              f"median {out[label]['median_s'] * 1000:7.1f} ms over {len(values)} rank-epochs; run {wall:.0f} s; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def main() -> None:
    """Parse flags, run the throughput table (and the quality run), print JSON at the end."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400, help="steps per Ray run (the GAN's: half)")
    p.add_argument("--only", choices=["all", "throughput", "gaps"], default="all")
    p.add_argument("--models", default="rnn,gan", help="comma list of the throughput table's models: rnn, gan")
    p.add_argument("--workers", default="1,2", help="the Ray runs of each throughput row: 1 (x1), 2 (x2 DDP) or 1,2")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each epoch-gap run")
    p.add_argument("--set", action="append", default=[], help="one more KEY=VALUE for the epoch-gap runs (repeatable)")
    p.add_argument("--address", default="local",
                   help="Ray to run on: 'local' starts a private one (2 CPUs), else a running cluster's address")
    args = p.parse_args()
    models = {"rnn": (rnn_cfg, args.steps), "gan": (gan_cfg, args.steps // 2)}
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    if not chosen or set(chosen) - set(models):
        p.error(f"--models: a comma list of {', '.join(models)}")
    workers = tuple(sorted({int(w) for w in args.workers.split(",") if w.strip()}))
    if not workers or set(workers) - {1, 2}:
        p.error("--workers: 1, 2 or 1,2")

    import ray

    if args.address == "local":
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 2**20,
                 log_to_driver=False)
    else:
        ray.init(address=args.address, log_to_driver=False)
    results: dict[str, Any] = {"load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as storage:
        if args.only in ("all", "gaps"):
            results["epoch_gaps"] = epoch_gaps(storage, args.epochs, tuple(args.set))
        if args.only in ("all", "throughput"):
            for name in chosen:
                make_cfg, steps = models[name]
                results[name] = throughput(name, make_cfg, steps, storage, workers)
    results["load_avg_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
