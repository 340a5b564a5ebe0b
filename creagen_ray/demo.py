"""`creagen demo` (`make demo`): train one small generator per family on the embedded data, with Ray Train.

For each family it loads `jobs/configs/demo-<family>.yaml` (builtin:python-docs text for the RNN,
builtin:shapes images for the VAE and the GAN: nothing is downloaded, ../shared is not used), runs
`training.train` with 2 DDP workers on a private local Ray, and writes into `out_dir`:

    rnn_samples.txt        text continuations of a few prompts
    vae_samples.png        64 images from the prior; vae_interpolation.png a latent walk
    gan_samples.png        64 generated images;      gan_interpolation.png a latent walk
    gallery.md             the samples above on one page (README shows a committed copy)
    metrics.json           per family: final metrics, first/last train loss, wall time, bundle path
    <family>_log.jsonl     every report of every rank (MetricsLogCallback)
    bundles/<family>       the verified bundles (`creagen generate` / `creagen serve` take them)
    <run name>/            the Ray Train runs: checkpoints and the bundle each exported
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from creagen_ray.config import ExperimentConfig, ImageRequest, InterpolateRequest, TextRequest, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
PROMPTS = ["def ", "The ", "import ", "class "]


def demo_families() -> list[str]:
    """Every registered family that has a jobs/configs/demo-<family>.yaml, in registry order."""
    from creagen_ray.families import family_names

    return [f for f in family_names() if (CONFIGS / f"demo-{f}.yaml").is_file()]


def demo_config(family: str, out_dir: Path, steps: int | None) -> ExperimentConfig:
    """jobs/configs/demo-<family>.yaml with storage under out_dir (and optionally fewer steps)."""
    path = CONFIGS / f"demo-{family}.yaml"
    overrides = [f"train.storage_path={out_dir}"]
    if steps is not None:
        every = max(1, steps // 4)
        overrides += [f"train.steps={steps}", f"train.eval_every={every}", f"train.log_every={every}",
                      f"train.checkpoint_every={steps}"]
    return load_config(path, overrides)


def write_samples(family: str, bundle: Any, out_dir: Path) -> list[Path]:
    """Generate from a trained bundle: a text file for text models, PNG grids for image models."""
    from creagen_ray.images import save_png_grid  # torch: imported only when the demo runs
    from creagen_ray.provenance import provenance

    if bundle.modality == "text":
        blocks = []
        for i, prompt in enumerate(PROMPTS):
            text = bundle.generate(TextRequest(prompt=prompt, max_new_tokens=240, seed=i))[0]  # model.temperature
            blocks.append(f"--- prompt {prompt!r} ---\n{prompt}{text}\n")
        path = out_dir / f"{family}_samples.txt"
        path.write_text("\n".join(blocks), encoding="utf-8")
        return [path]
    grid, walk_req = ImageRequest(n=64, seed=0), InterpolateRequest(seed_a=1, seed_b=2, steps=10)
    record = provenance(family, bundle.sha256, grid.seed, grid.model_dump(exclude={"seed"}))
    samples = save_png_grid(bundle.generate(grid), out_dir / f"{family}_samples.png", nrow=8, record=record)
    record = provenance(family, bundle.sha256, None, walk_req.model_dump())
    walk = save_png_grid(bundle.generate(walk_req), out_dir / f"{family}_interpolation.png", nrow=10, record=record)
    return [samples, walk]


def write_gallery(out: Path, summary: dict[str, Any]) -> Path:
    """gallery.md in the demo folder: each family's grid, interpolation strip or text samples, with its metric."""
    lines = ["# creagen demo gallery", "", "Made by `make demo` (`creagen demo`); every PNG carries its provenance "
             "(`creagen inspect FILE.png`).", ""]
    for family, info in summary.items():
        if not isinstance(info, dict):
            continue
        lines += [f"## {family}", "", f"trained {info['wall_s']} s; final metrics: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in sorted(info["metrics"].items()) if k.startswith("val_") and isinstance(v, float)), ""]
        for f in map(Path, info["samples"]):
            if f.suffix == ".png":
                lines += [f"![{f.stem}]({f.name})", ""]
            else:
                lines += ["```text", f.read_text(encoding="utf-8")[:1500].rstrip(), "```", ""]
    path = out / "gallery.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_demo(out_dir: str = "runs/demo", families: list[str] | None = None, steps: int | None = None) -> int:
    """Train each family briefly on embedded data with Ray Train, write samples and metrics; 0 on success."""
    from creagen_ray.bundle import load_bundle
    from creagen_ray.training import MetricsLogCallback, connect_ray, train

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    families = families or demo_families()
    cfgs = {f: demo_config(f, out, steps) for f in families}  # all configs validate before any work
    connect_ray("local")  # a private runtime: never lands on someone else's cluster
    summary: dict[str, Any] = {}
    t_all = time.perf_counter()
    for family, cfg in cfgs.items():
        print(f"== {family}: {cfg.model.family} on {cfg.data.source}, {cfg.train.steps} steps, "
              f"{cfg.train.num_workers} workers", flush=True)
        t0 = time.perf_counter()
        log = out / f"{family}_log.jsonl"
        log.unlink(missing_ok=True)
        result = train(cfg, callbacks=[MetricsLogCallback(str(log))])
        wall = time.perf_counter() - t0
        reports = [json.loads(line)["ranks"][0] for line in log.read_text().splitlines()]
        served = out / "bundles" / family  # `creagen serve <out>/bundles` serves them as rnn / vae / gan
        shutil.rmtree(served, ignore_errors=True)
        shutil.copytree(result.bundle_path, served)
        bundle = load_bundle(served)  # verifies the copy's sha256 manifest
        files = write_samples(family, bundle, out)
        summary[family] = {
            "wall_s": round(wall, 1),
            "bundle": str(served),
            "samples": [str(f) for f in files],
            "loss_first_report": reports[0].get("loss"),
            "loss_last_report": reports[-1].get("loss"),
            "metrics": {k: v for k, v in result.metrics.items() if not isinstance(v, str) or k == "run_name"},
        }
        val = {k: round(v, 4) for k, v in result.metrics.items() if k == bundle.family.val_metric}
        print(f"== {family}: done in {wall:.0f} s  {val}  samples: {', '.join(f.name for f in files)}", flush=True)
    summary["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    write_gallery(out, summary)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    print(f"demo finished in {summary['total_wall_s']:.0f} s; samples and metrics.json in {out}")
    print(f"serve the generators: creagen serve {out / 'bundles'}")
    return 0
