"""Every shipped config, run exactly as the README shows it: `creagen train jobs/configs/X.yaml`.

Each training config trains once in a subprocess, a handful of steps set with `--set`, in one of
two places (configs on the same data in the same one, see WHERE): from the repository root (its
own `storage_path: ./runs`, so into <repo>/runs; the README's headline `rnn-shakespeare.yaml` is
one of these) or from another directory with the config named by a relative path (so into
<that dir>/runs). Each must print the bundle path and leave a
verified bundle. From the other place, `creagen config show` must resolve the same inputs and put
outputs under that directory (no Ray: training every config from both places took 13 min of a
2-core machine). This is the test that was missing when the headline command crashed: relative
paths reached Ray Train workers, which run in another working directory.

Each command starts its own local Ray, as on a machine with no cluster running; two run at a
time (one Train worker each). Configs that read ../shared/data skip when it is absent. The search configs validate (their paths
resolved); demo-tune.yaml also runs a tiny search from another directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "jobs" / "configs"
BIN = Path(sys.executable).parent
TRAIN_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.endswith("-tune"))
TUNE_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*-tune.yaml"))
# where each config trains; the other place gets `creagen config show`. Configs that share a
# prepared data folder (same data section) train in the same place, so the folder is prepared once
# and the image configs share its cached FeatureNet: the MNIST ones (and the README's headline
# rnn-shakespeare) from the root, the embedded-data demos from elsewhere.
ROOT_CONFIGS = {"rnn-shakespeare", "dcgan-mnist", "vae-mnist", "wgan-gp-mnist"}
WHERE = {name: "root" if name in ROOT_CONFIGS else "elsewhere" for name in TRAIN_CONFIGS}
# a handful of steps on one worker; every config's own data, model and storage_path stay as shipped
FEW_STEPS = [
    "train.num_workers=1", "train.steps=4", "train.epochs=null", "train.eval_every=2", "train.eval_batches=2",
    "train.checkpoint_every=4", "train.log_every=2",
]
RUN_TIMEOUT_S = 600


def missing_inputs(name: str) -> list[str]:
    """Input files a config names (resolved as `creagen` resolves them) that are not on this machine."""
    from creagen_ray.config import read_config

    data = read_config(CONFIGS / f"{name}.yaml").get("data", {})
    paths = [data.get("source"), data.get("labels")]
    flat = [p for v in paths for p in (v if isinstance(v, list) else [v]) if isinstance(p, str)]
    return [p for p in flat if not p.startswith("builtin:") and not Path(p).exists()]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A `creagen` command as a user types it, in `cwd`, on its own private local Ray.

    TMPDIR is private to the command, so it neither joins a cluster someone else started on this
    machine (`ray start` records one under <tmp>/ray) nor leaves Ray files in the shared /tmp.
    """
    tmp = tempfile.mkdtemp(prefix="crs", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "TMPDIR": tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_raylet_start_wait_time_s": "120"}  # slow starts on a loaded box
    env.pop("RAY_ADDRESS", None)
    try:
        return subprocess.run(
            [str(BIN / "creagen"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def selected(request, test_name: str) -> set[tuple[str, str]]:
    """(name, where) of the parametrized cases of `test_name` this session runs (-k respected)."""
    out = set()
    for item in request.session.items:
        if getattr(item, "originalname", None) == test_name and hasattr(item, "callspec"):
            name = item.callspec.params["name"]
            out.add((name, WHERE[name]))
    return out


@pytest.fixture(scope="module")
def config_shows(tmp_path_factory, request):
    """Start the selected `creagen config show` commands, one at a time beside the training runs.

    Each is seconds of imports; started with the module (shipped_runs asks for this first), they
    overlap the training runs, which mostly wait on Ray. Yields {name: (future, cwd)}.
    """
    other = tmp_path_factory.mktemp("show")
    pool = ThreadPoolExecutor(max_workers=1)
    futures: dict[str, tuple[Future, Path]] = {}
    for item in request.session.items:
        if getattr(item, "originalname", None) == "test_shipped_config_resolves_from_the_other_place":
            name = item.callspec.params["name"]
            cwd = other if WHERE[name] == "root" else ROOT
            args = ["config", "show", os.path.relpath(CONFIGS / f"{name}.yaml", cwd)]
            futures[name] = (pool.submit(run, args, cwd), cwd)
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory, request, config_shows):
    """Start the selected configs' runs (root, elsewhere) and the tiny search, 2 at a time; futures by key."""
    t0 = time.perf_counter()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    tag = uuid.uuid4().hex[:8]
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, tuple[Future, Path]] = {}
    made: list[Path] = []
    wanted = selected(request, "test_shipped_config_trains")
    for name in TRAIN_CONFIGS:
        if missing_inputs(name):
            continue
        for where, cwd in (("root", ROOT), ("elsewhere", elsewhere)):
            if (name, where) not in wanted:
                continue
            run_name = f"pytest-{name}-{where}-{tag}"
            config = os.path.relpath(CONFIGS / f"{name}.yaml", cwd)  # jobs/configs/X.yaml from the root
            args = ["train", config, *(f"--set={o}" for o in FEW_STEPS), f"--set=train.run_name={run_name}"]
            run_dir = cwd / "runs" / run_name
            made.append(run_dir)
            futures[f"{name}@{where}"] = (pool.submit(run, args, cwd), run_dir)
    if any(getattr(i, "originalname", None) == "test_demo_tune_runs_from_elsewhere" for i in request.session.items):
        search_dir = tmp_path_factory.mktemp("search")
        tune_args = [
            "tune", os.path.relpath(CONFIGS / "demo-tune.yaml", search_dir), "--set=tune.num_samples=2",
            "--set=train.steps=4", "--set=train.eval_every=2", "--set=train.checkpoint_every=2", "--set=train.log_every=2",
        ]
        futures["demo-tune@elsewhere"] = (pool.submit(run, tune_args, search_dir), search_dir / "runs")
    yield futures
    pool.shutdown(wait=True)
    print(f"\nshipped-config runs: {len(futures)} commands in {time.perf_counter() - t0:.0f} s (2 at a time)")
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_config_trains(name: str, shipped_runs) -> None:
    """`creagen train jobs/configs/<name>.yaml --set train.steps=4 ...` exits 0 and leaves a verified bundle."""
    where = WHERE[name]
    if f"{name}@{where}" not in shipped_runs:
        pytest.skip(f"{name}.yaml reads {missing_inputs(name)}, absent on this machine")
    from creagen_ray.bundle import load_bundle

    future, run_dir = shipped_runs[f"{name}@{where}"]
    proc = future.result()
    _check(proc, f"creagen train {name}.yaml from {where}")
    bundle = run_dir / "bundle"
    assert f"bundle: {bundle}" in proc.stdout, proc.stdout[-2000:]
    loaded = load_bundle(bundle)  # verifies every file's sha256
    assert loaded.metrics["step"] == 4
    assert (run_dir.parent / "data").is_dir(), "prepared data belongs under the config's storage_path"


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_config_resolves_from_the_other_place(name: str, config_shows) -> None:
    """`creagen config show <relative path>` from where the config does not train: inputs next to the file."""
    import yaml

    future, cwd = config_shows[name]
    proc = future.result()
    _check(proc, f"creagen config show {name}.yaml")
    shown = yaml.safe_load(proc.stdout)
    assert shown["train"]["storage_path"] == str(cwd / "runs")  # outputs: the working directory
    sources = shown["data"]["source"] if isinstance(shown["data"]["source"], list) else [shown["data"]["source"]]
    for src in sources + [shown["data"].get("labels")]:
        if src and not src.startswith("builtin:"):
            assert Path(src).is_absolute() and Path(src).is_relative_to(ROOT.parent), src
            assert Path(src).exists() or missing_inputs(name), src


@pytest.mark.slow
def test_demo_tune_runs_from_elsewhere(shipped_runs) -> None:
    """`creagen tune jobs/configs/demo-tune.yaml` (2 tiny trials) from another directory writes best.yaml."""
    future, runs = shipped_runs["demo-tune@elsewhere"]
    proc = future.result()
    _check(proc, "creagen tune demo-tune.yaml")
    assert (runs / "tune" / "demo-tune" / "best.yaml").is_file(), proc.stdout[-2000:]
    assert (runs / "tune" / "demo-tune" / "best_bundle" / "manifest.json").is_file()


@pytest.mark.parametrize("name", TUNE_CONFIGS)
def test_shipped_search_configs_validate(name: str, tmp_path: Path, monkeypatch) -> None:
    """Each *-tune.yaml checks at every corner of its space, its input paths resolved next to the file."""
    from creagen_ray.config import read_config
    from creagen_ray.tuning.space import parse_space

    monkeypatch.chdir(tmp_path)  # the working directory must not matter for inputs
    raw = read_config(CONFIGS / f"{name}.yaml")
    base, dims, cfg = parse_space(raw)
    assert dims, f"{name}.yaml searches nothing"
    assert Path(cfg.train.storage_path) == tmp_path / "runs"  # outputs: the working directory
    src = cfg.data.source if isinstance(cfg.data.source, str) else cfg.data.source[0]
    if not src.startswith("builtin:"):
        assert Path(src).is_absolute() and Path(src).is_relative_to(ROOT.parent), src


def test_path_rule(tmp_path: Path, monkeypatch) -> None:
    """Config-file inputs resolve next to the file; outputs and --set values against the cwd; URIs untouched."""
    from creagen_ray.config import load_config

    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "x.yaml").write_text(
        "data: {source: corpus.txt, output_dir: prepared}\ntrain: {storage_path: ./out}\n", encoding="utf-8"
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config("../cfgs/x.yaml")
    assert cfg.data.source == str(cfg_dir / "corpus.txt")
    assert cfg.data.output_dir == str(work / "prepared")
    assert cfg.train.storage_path == str(work / "out")
    cfg = load_config("../cfgs/x.yaml", ["data.source=mine.txt", "train.storage_path=s3://bucket/runs"])
    assert cfg.data.source == str(work / "mine.txt")
    assert cfg.train.storage_path == "s3://bucket/runs"
    assert load_config(None).train.storage_path == str(work / "runs")  # the default, resolved
    cfg = load_config(None, ["data.source=[builtin:python-docs]"])
    assert cfg.data.source == ["builtin:python-docs"]
