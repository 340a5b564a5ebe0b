"""Every shipped config, run exactly as the README shows it: `creagen train jobs/configs/X.yaml`.

Each training config trains once in a subprocess, a handful of steps set with `--set`, in one of
two places (configs on the same data in the same one, see WHERE): from the repository root (its
own `storage_path: ./runs`, so into <repo>/runs; the README's headline `rnn-shakespeare.yaml` is
one of these) or from another directory with the config named by a relative path (so into
<that dir>/runs). Each must print the bundle path and leave a
verified bundle. From the other place, `creagen config show` must resolve the same inputs and put
outputs under that directory (no Ray: training every config from both places took 13 min of a
2-core machine; the command itself runs for two configs, SHOW_CLI, the same calls in-process for the rest). This is the test that was missing when the headline command crashed: relative
paths reached Ray Train workers, which run in another working directory.

Where the commands run: every command joins one `ray start --head` cluster that this module starts
(RAY_ADDRESS, as a user with a cluster runs them; its workers run in another directory too), which
saves each a Ray start. Three commands run at a time. `creagen train` on a private local Ray, as on a
machine with no cluster running (the path the README's headline `rnn-shakespeare.yaml` takes there),
runs in tests/test_shutdown.py, with the console checks of a private Ray beside others (a sentence-vae
run here started one of its own for them before: one more Ray start, ~12 CPU-seconds). The sentence-vae
run doubles as the console check of a joined run: its default console shows progress and the bundle
line and none of Ray's noise. demo-vae trains with its own 2 DDP workers (the others with one) and carries the DDP
checks of an image family: loss falls, replicas equal, a PNG grid, a tampered bundle refused. demo-gan
does too and carries the DCGAN's: fcd falls by a quarter, replicas equal at every kept checkpoint, the
bundle generates, its FeatureNet is cached next to the data (a separate Train run in
tests/test_training.py did this before, ~40 CPU-seconds). text-gan
trains on its shipped 2 DDP workers too: replicas equal, its validation and sample metrics in the bundle
(the text GAN on Serve: tests/test_serve.py).
`demo-rnn.yaml` trains as the README's Ray Job (`ray job submit --working-dir . -- python jobs/train.py
jobs/configs/demo-rnn.yaml`, which is `creagen train` inside the job, from the repository root, storage in
a moto S3 bucket): that one run is both its shipped-config check (the same overrides, a verified bundle,
fetched from the bucket) and the Job's (a separate `creagen train` of the same file cost one more Train
run, ~30 CPU-seconds). It runs on the same head, whose dashboard is on for Ray's job server: one cluster
start for all of them. `vae-mnist.yaml` trains as bench/quality_per_time.py's project run instead (TRAINED_ELSEWHERE:
`creagen train jobs/configs/vae-mnist.yaml` from the root; its test makes the same checks). Configs that read
../shared/data skip when it is absent. The search configs
validate (their paths resolved); demo-tune.yaml's one-trial search from another directory (the config named by a
relative path) runs in tests/test_storage.py::test_prepare_train_serve_generate_all_in_s3, its storage in S3.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from tests.console_noise import NOISE
from tests.procs import stop_group

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "jobs" / "configs"
BIN = Path(sys.executable).parent
TRAIN_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.endswith("-tune"))
TUNE_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*-tune.yaml"))
# where each config trains; the other place gets `creagen config show`. Configs that share a
# prepared data folder (same data section) train in the same place, so the folder is prepared once
# and the image configs share its cached FeatureNet: the MNIST ones (and the README's headline
# rnn-shakespeare) from the root, the embedded-data demos from elsewhere.
# The Ray Job (JOB_CONFIG) is submitted from the root too.
ROOT_CONFIGS = {"rnn-shakespeare", "dcgan-mnist", "vae-mnist", "wgan-gp-mnist", "demo-rnn"}
WHERE = {name: "root" if name in ROOT_CONFIGS else "elsewhere" for name in TRAIN_CONFIGS}
# the console check of a joined run (tests/test_shutdown.py: that of a private Ray)
CONSOLE_CHECK = "sentence-vae"
# trained by the README's Ray Job (submit_job), not by a `creagen train` of its own
JOB_CONFIG = "demo-rnn"
# trained by another test's `creagen train` of the same file from the root (its checks there), not here: vae-mnist.yaml
# by bench/quality_per_time.py's project run (tests/test_bench_commands.py; its data section, the same files by
# absolute path, is dcgan-mnist's and wgan-gp-mnist's, which train here as shipped): one Train run fewer (~25 CPU-s)
TRAINED_ELSEWHERE = {"vae-mnist": "tests/test_bench_commands.py::test_quality_per_time_vae_scores_both_sides_and_prints_ratios"}
# a handful of steps on one worker; every config's own data, model and storage_path stay as shipped
FEW_STEPS = [
    "train.num_workers=1", "train.steps=4", "train.epochs=null", "train.eval_every=2", "train.eval_batches=2",
    "train.checkpoint_every=4", "train.log_every=2",
]
# demo-vae, demo-gan: their own 2 DDP workers and enough steps for the loss / fcd to fall; text-gan: its own 2 DDP workers
DDP_30 = ["train.num_workers=2", "train.steps=30", "train.eval_every=10", "train.checkpoint_every=10", "train.log_every=5"]
# text-gan: short sample-metric LMs too (the shipped 300 steps each cost about 20 CPU-seconds of the driver;
# the test checks that the metrics reach the bundle, not their values)
# demo-gan: 40 steps (its spectrally normalized D at Adam 1.2e-3 moves fcd by about a quarter in the first 30)
MORE = {"demo-vae": DDP_30, "demo-gan": [*DDP_30, "train.steps=40"], "text-gan": ["train.num_workers=2", "train.sample_lm_steps=20"]}
STEPS = {"demo-vae": 30, "demo-gan": 40}
# the order commands start in, 3 at a time, longest first; configs on the same prepared data run one
# after another in one chain, so the data is prepared once and the image configs' FeatureNet is
# trained once (cached next to the data; the VAE's val_prior_fcd uses it too)
CHAINS = [["dcgan-mnist", "wgan-gp-mnist"], ["text-gan"], ["rnn-shakespeare"], ["demo-gan", "demo-vae"],
          ["sentence-vae"], ["job"]]
RUN_TIMEOUT_S = 600


def overrides(name: str) -> list[str]:
    """FEW_STEPS with the config's MORE in place of the same keys."""
    merged = dict(o.split("=", 1) for o in FEW_STEPS)
    merged.update(o.split("=", 1) for o in MORE.get(name, []))
    return [f"{k}={v}" for k, v in merged.items()]


def missing_inputs(name: str) -> list[str]:
    """Input files a config names (resolved as `creagen` resolves them) that are not on this machine."""
    from creagen_ray.config import read_config

    data = read_config(CONFIGS / f"{name}.yaml").get("data", {})
    paths = [data.get("source"), data.get("labels")]
    flat = [p for v in paths for p in (v if isinstance(v, list) else [v]) if isinstance(p, str)]
    return [p for p in flat if not p.startswith("builtin:") and not Path(p).exists()]


def run(args: list[str], cwd: Path, address: str | None = None, console: bool = False) -> subprocess.CompletedProcess:
    """A `creagen` command as a user types it, in `cwd`: on the cluster at `address`, else on its own private local Ray.

    TMPDIR is private to the command, so without `address` it neither joins a cluster someone else
    started on this machine (`ray start` records one under <tmp>/ray) nor leaves Ray files in the
    shared /tmp. `console`: the environment a user's shell has (Ray's log dedup at its default, and on a
    private Ray its token authentication too; a cluster's is the cluster's), to check what the console shows.
    """
    tmp = tempfile.mkdtemp(prefix="crs", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "TMPDIR": tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_raylet_start_wait_time_s": "120"}  # slow starts on a loaded box
    env.pop("RAY_ADDRESS", None)
    if console:
        env.pop("RAY_DEDUP_LOGS", None)
        if not address:
            env.pop("RAY_AUTH_MODE", None)
    if address:
        env["RAY_ADDRESS"] = address
    try:
        return subprocess.run(
            [str(BIN / "creagen"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def free_port() -> int:
    """A TCP port nobody listens on right now (the head's fixed default ports may be another user's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """`ray start --head --block` in a private TMPDIR and working directory; yields (address, process,
    dashboard URL).

    --block: the head's processes are this child's; SIGTERM stops what it started (`ray stop`
    would stop every Ray on the machine, other users' too). 4 logical CPUs: three commands' Train
    workers (0.5 CPU each) and their Ray Data tasks fit at once. The dashboard (Ray's job server)
    is on for the README's `ray job submit` (test_train_job_succeeds); the head's environment holds
    the S3 endpoint and credentials, as a node's IAM role would (the submitting shell has none), and
    `python` on its PATH is this venv's, as in an activated shell. No log monitor: it streams workers' output to
    drivers that ask for it, and none here does (creagen's quiet console; the Ray Job's log is its driver's
    output, kept by the job server); polling every worker's log files it cost 18 s of CPU in one run of this module.
    """
    tmp = Path(tempfile.mkdtemp(prefix="crh", dir="/tmp"))
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_raylet_start_wait_time_s": "120", **s3_server.env,
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=4", "--include-dashboard=true", "--port=0",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
         "--object-store-memory=500000000", "--disable-usage-stats", "--include-log-monitor=false"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    record = tmp / "ray" / "ray_current_cluster"
    try:
        deadline = time.monotonic() + 120
        while not (record.is_file() and record.read_text().strip()):
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        yield record.read_text().strip(), head, f"http://127.0.0.1:{dash}"
    finally:
        stop_group(head)
        shutil.rmtree(tmp, ignore_errors=True)


def selected(request, test_name: str) -> set[tuple[str, str]]:
    """(name, where) of the parametrized cases of `test_name` this session runs (-k respected)."""
    out = set()
    for item in request.session.items:
        if getattr(item, "originalname", None) == test_name and hasattr(item, "callspec"):
            name = item.callspec.params["name"]
            out.add((name, WHERE[name]))
    return out


# `creagen config show` as a subprocess, as a user types it, for two configs: one shown from another directory,
# one from the root. Each subprocess imports torch (~2.4 CPU-seconds); the other configs' resolution from the
# other place is checked with the same calls in this process (read_config, validate_config, dump_config).
SHOW_CLI = {"rnn-shakespeare", "demo-gan"}


@pytest.fixture(scope="module")
def config_shows(tmp_path_factory, request):
    """Start the selected SHOW_CLI `creagen config show` commands, one at a time beside the training runs.

    Each is seconds of imports; started with the module (shipped_runs asks for this first), they
    overlap the training runs, which mostly wait on Ray. Yields ({name: (future, cwd)}, the other directory).
    """
    other = tmp_path_factory.mktemp("show")
    pool = ThreadPoolExecutor(max_workers=1)
    futures: dict[str, tuple[Future, Path]] = {}
    for item in request.session.items:
        if getattr(item, "originalname", None) == "test_shipped_config_resolves_from_the_other_place":
            name = item.callspec.params["name"]
            if name not in SHOW_CLI:
                continue
            cwd = other if WHERE[name] == "root" else ROOT
            args = ["config", "show", os.path.relpath(CONFIGS / f"{name}.yaml", cwd)]
            futures[name] = (pool.submit(run, args, cwd), cwd)
    yield futures, other
    pool.shutdown(wait=True)


def _run_chain(jobs: list[tuple[str, Future, Callable[[], subprocess.CompletedProcess]]], t0: float,
               spans: list[str]) -> None:
    """Run commands one after another, each result into its future; "name start-end s" of each into `spans`."""
    for name, future, command in jobs:
        start = time.perf_counter() - t0
        try:
            future.set_result(command())
        except BaseException as e:  # noqa: BLE001 - the test that waits on it re-raises
            future.set_exception(e)
        spans.append(f"{name} {start:.0f}-{time.perf_counter() - t0:.0f} s")


def wait_http(url: str, timeout: float) -> None:
    """Poll `url` until it answers 200 or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(1.0)


# the README's Ray Job: demo-rnn.yaml into the S3 bucket, with the shipped-config check's overrides
JOB_SET = [*(f"{k}={v}" for k, v in dict(o.split("=", 1) for o in FEW_STEPS).items()), "train.run_name=job-test"]


def submit_job(dashboard: str, storage: str) -> subprocess.CompletedProcess:
    """`ray job submit --address <dashboard> --working-dir . -- python jobs/train.py jobs/configs/demo-rnn.yaml
    --set train.storage_path=<storage> ...` (FEW_STEPS) from the repository root, from a shell holding no credentials."""
    wait_http(f"{dashboard}/api/version", timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".", "--", "python", "jobs/train.py",
         "jobs/configs/demo-rnn.yaml", "--set", f"train.storage_path={storage}",
         *(a for kv in JOB_SET for a in ("--set", kv))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory, request, config_shows, ray_head, s3_server):
    """Start the selected configs' runs (root, elsewhere) and the Ray Job, 3 at a time; futures by key."""
    t0 = time.perf_counter()
    address, _, dashboard = ray_head
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    tag = uuid.uuid4().hex[:8]
    futures: dict[str, tuple[Future, Path]] = {}
    made: list[Path] = []
    wanted = selected(request, "test_shipped_config_trains")
    jobs: dict[str, tuple[Future, Callable[[], subprocess.CompletedProcess]]] = {}
    for name in TRAIN_CONFIGS:
        if missing_inputs(name) or name == JOB_CONFIG:
            continue
        for where, cwd in (("root", ROOT), ("elsewhere", elsewhere)):
            if (name, where) not in wanted:
                continue
            run_name = f"pytest-{name}-{where}-{tag}"
            config = os.path.relpath(CONFIGS / f"{name}.yaml", cwd)  # jobs/configs/X.yaml from the root
            args = ["train", config, *(f"--set={o}" for o in overrides(name)), f"--set=train.run_name={run_name}"]
            run_dir = cwd / "runs" / run_name
            made.append(run_dir)
            future: Future = Future()
            futures[f"{name}@{where}"] = (future, run_dir)
            jobs[name] = (future, functools.partial(run, args, cwd, address, name == CONSOLE_CHECK))
    if any(getattr(i, "originalname", None) == "test_train_job_succeeds" for i in request.session.items) or (
        (JOB_CONFIG, WHERE[JOB_CONFIG]) in wanted
    ):
        storage = s3_server.uri("jobs/runs")
        future = Future()
        futures["job"] = (future, storage)
        futures[f"{JOB_CONFIG}@{WHERE[JOB_CONFIG]}"] = (future, storage + "/job-test")  # the same run
        jobs["job"] = (future, functools.partial(submit_job, dashboard, storage))
    chains = [[(n, *jobs.pop(n)) for n in chain if n in jobs] for chain in CHAINS]
    chains += [[(n, *job)] for n, job in jobs.items()]  # a config CHAINS does not name yet
    pool = ThreadPoolExecutor(max_workers=3)
    spans: list[str] = []
    for chain in chains:
        if chain:
            pool.submit(_run_chain, chain, t0, spans)
    yield futures
    pool.shutdown(wait=True)
    print(f"\nshipped-config runs: {len(futures)} commands in {time.perf_counter() - t0:.0f} s (3 at a time): "
          + ", ".join(spans))
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}"


def trained(shipped_runs: dict, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    """(the finished `creagen train <name>.yaml` from elsewhere, checked to exit 0; its run folder); skips when deselected."""
    if f"{name}@elsewhere" not in shipped_runs:
        pytest.skip(f"{name} was deselected")
    future, run_dir = shipped_runs[f"{name}@elsewhere"]
    proc = future.result()
    _check(proc, f"creagen train {name}.yaml")
    return proc, run_dir


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TRAIN_CONFIGS if n not in TRAINED_ELSEWHERE])
def test_shipped_config_trains(name: str, shipped_runs, request) -> None:
    """`creagen train jobs/configs/<name>.yaml --set train.steps=4 ...` exits 0 and leaves a verified bundle
    (demo-rnn.yaml: as the README's Ray Job, `creagen train` inside the job, its bundle in the S3 bucket)."""
    where = WHERE[name]
    if f"{name}@{where}" not in shipped_runs:
        pytest.skip(f"{name}.yaml reads {missing_inputs(name)}, absent on this machine")
    from creagen_ray.bundle import load_bundle

    future, run_dir = shipped_runs[f"{name}@{where}"]
    proc = future.result()
    _check(proc, f"creagen train {name}.yaml from {where}")
    if name == JOB_CONFIG:  # run_dir: s3://<bucket>/jobs/runs/job-test
        s3 = request.getfixturevalue("s3")  # the credentials in this process, to fetch the bundle
        assert f"bundle: {run_dir}/bundle" in proc.stdout, proc.stdout[-2000:]
        loaded = load_bundle(f"{run_dir}/bundle")  # fetched, then every file's sha256 verified
        assert s3.keys("jobs/runs/data/"), "prepared data belongs under the config's storage_path"
    else:
        bundle = run_dir / "bundle"
        assert f"bundle: {bundle}" in proc.stdout, proc.stdout[-2000:]
        loaded = load_bundle(bundle)  # verifies every file's sha256
        assert (run_dir.parent / "data").is_dir(), "prepared data belongs under the config's storage_path"
    assert loaded.metrics["step"] == STEPS.get(name, 4)


@pytest.mark.slow
def test_train_console_is_quiet_on_a_cluster(shipped_runs) -> None:
    """Default console of `creagen train jobs/configs/sentence-vae.yaml` joining this module's cluster: progress +
    bundle line, none of Ray's noise. (On a private Ray beside others, and `--verbose` bringing Ray's lines back:
    tests/test_shutdown.py's `creagen train` and `creagen demo --verbose`.)"""
    name = CONSOLE_CHECK
    if f"{name}@elsewhere" not in shipped_runs:
        pytest.skip(f"{name} was deselected")
    future, run_dir = shipped_runs[f"{name}@elsewhere"]
    proc = future.result()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for pattern in NOISE:
        assert pattern not in out, (pattern, out[-3000:])
    progress = [ln for ln in proc.stdout.splitlines() if re.match(rf"\[{run_dir.name}\] step 4/4 \(100%\)", ln)]
    assert progress and "loss " in progress[0] and "tokens/s" in progress[0], proc.stdout[:2000]
    bundle = re.search(r"^bundle: (.+/bundle)$", proc.stdout, re.M)
    assert bundle and (Path(bundle.group(1)) / "ngrams.bin").is_file()  # the memorization index (text)


@pytest.mark.slow
def test_demo_vae_ddp_loss_falls_replicas_equal_png_and_tampered_bundle(shipped_runs, tmp_path: Path) -> None:
    """demo-vae.yaml on its 2 DDP workers: loss falls, both replicas' weights equal at the end, the bundle
    makes images and a PNG grid; a bundle whose weight file changed is refused."""
    from PIL import Image

    from creagen_ray.bundle import BundleError, load_bundle
    from creagen_ray.config import ImageRequest
    from creagen_ray.images import save_png_grid

    proc, run_dir = trained(shipped_runs, "demo-vae")
    losses = [float(m.group(1)) for m in re.finditer(r"^\[\S+\] step \d+/30 .*?\bloss (\S+)", proc.stdout, re.M)]
    assert len(losses) >= 2 and losses[-1] < 0.8 * losses[0], f"loss did not fall: {losses}\n{proc.stdout[-2000:]}"
    loaded = load_bundle(run_dir / "bundle")
    assert_replicas_equal(loaded.metrics)

    images = loaded.generate(ImageRequest(n=4, seed=0))
    side = images.shape[-1]
    assert images.shape == (4, 1, side, side) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    png = save_png_grid(images, tmp_path / "grid.png", nrow=2)
    assert Image.open(png).size == (2 * side + 3 * 2, 2 * side + 3 * 2)

    copy = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.safetensors does not match its sha256"):
        load_bundle(copy)


@pytest.mark.slow
def test_text_gan_ddp_bundle_has_val_and_sample_metrics(shipped_runs) -> None:
    """text-gan.yaml on its shipped 2 DDP workers (latent: VAE steps, then WGAN-GP steps): replicas equal, the
    final validation's js4 and the shipped sample metrics reach the bundle, and it writes seeded in-vocab text."""
    from creagen_ray.bundle import load_bundle
    from creagen_ray.config import TextRequest

    _, run_dir = trained(shipped_runs, "text-gan")
    loaded = load_bundle(run_dir / "bundle")
    assert_replicas_equal(loaded.metrics)
    assert 0.0 < loaded.metrics["val_js4"] <= 0.7, loaded.metrics  # Jensen-Shannon of 4-gram counts, in nats
    for k in ("sample_lm_score", "sample_reverse_lm_score", "sample_bleu4", "sample_self_bleu4", "sample_novelty8"):
        assert math.isfinite(loaded.metrics[k]), (k, loaded.metrics)
    # scored at the model's default decoding temperature (greedy), and say so
    assert loaded.metrics["sample_temperature"] == loaded.metrics["quality"]["sample_temperature"] == 0.0
    texts = loaded.generate(TextRequest(n=3, seed=5, max_new_tokens=20))
    assert texts == loaded.generate(TextRequest(n=3, seed=5, max_new_tokens=20)) and len(texts) == 3
    assert all(len(t) == 20 and set(t) <= set(loaded.family.tokenizer.chars) for t in texts), texts


@pytest.mark.slow
def test_demo_gan_ddp_fcd_falls_replicas_equal_feature_net_cached(shipped_runs, monkeypatch) -> None:
    """demo-gan.yaml on its 2 DDP workers, 40 steps: fcd (FeatureNet, seeded so deterministic) falls by a quarter
    from the first evaluation to the last, both replicas equal at every kept checkpoint, the bundle generates, and
    the run left its FeatureNet next to the prepared data, which a later run loads instead of training it."""
    import torch

    from creagen_ray.bundle import load_bundle
    from creagen_ray.config import ImageRequest, load_config
    from creagen_ray.training import load_checkpoint

    proc, run_dir = trained(shipped_runs, "demo-gan")
    fids = [float(m.group(1)) for m in re.finditer(r"^\[\S+\] step (?:10|20|30|40)/40 .*?\bval_fcd (\S+)", proc.stdout, re.M)]
    assert len(fids) == 4 and all(math.isfinite(f) and f >= 0 for f in fids), proc.stdout[-2000:]
    assert fids[-1] < 0.75 * fids[0], f"fcd did not fall: {fids}"  # D's loss is no progress measure for a GAN
    loaded = load_bundle(run_dir / "bundle")
    assert_replicas_equal(loaded.metrics)
    kept = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2 and all(load_checkpoint(p)["metrics"]["replicas_in_sync"] == 1.0 for p in kept)
    images = loaded.generate(ImageRequest(n=3, seed=0))
    side = images.shape[-1]
    assert images.shape == (3, 1, side, side)

    from creagen_ray.data import prepare_data
    from creagen_ray.families import build_family
    from creagen_ray.metrics import feature_net_from_bytes
    from creagen_ray.training import loop

    monkeypatch.chdir(run_dir.parent.parent)  # where the run was started: its storage_path ./runs
    cfg = load_config(str(CONFIGS / "demo-gan.yaml"), overrides("demo-gan"))
    prepared = prepare_data(cfg.data, storage_path=cfg.train.storage_path)  # up to date: the run's folder
    assert Path(prepared.path).parent == run_dir.parent / "data"
    cached = list((Path(prepared.path) / "feature_net").glob("*.safetensors"))
    assert len(cached) == 1, cached
    saved = feature_net_from_bytes(cached[0].read_bytes())
    family = build_family(cfg, prepared.spec, device="cpu", total_steps=1)
    # a cache hit: training it again would fail here
    monkeypatch.setattr("creagen_ray.metrics.train_feature_net", lambda *a, **k: pytest.fail("FeatureNet trained again"))
    loop._attach_feature_net(family, str(prepared.path), prepared.spec)
    assert family.feature_extractor.startswith("creagen FeatureNet classifier (200 steps on ")
    for k, v in saved.state_dict().items():
        assert torch.equal(family.feature_net.state_dict()[k], v), k
    with pytest.raises(ValueError, match="not a FeatureNet"):
        feature_net_from_bytes(cached[0].read_bytes()[:100])  # a torn file is refused (then retrained)


def assert_replicas_equal(metrics: dict) -> None:
    """A 2-worker run's bundle metrics: both ranks' parameter hashes at the last checkpoint are equal."""
    hashes = metrics["param_hashes"].split(",")
    assert metrics["world_size"] == 2 and len(hashes) == 2 and hashes[0] == hashes[1], metrics
    assert metrics["replicas_in_sync"] == 1.0, metrics


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_config_resolves_from_the_other_place(name: str, config_shows, monkeypatch) -> None:
    """`creagen config show <relative path>` from where the config does not train: inputs next to the file
    (SHOW_CLI: the command itself; the others: the calls it makes, in this process, from that directory)."""
    import yaml

    futures, other = config_shows
    if name in SHOW_CLI:
        future, cwd = futures[name]
        proc = future.result()
        _check(proc, f"creagen config show {name}.yaml")
        shown = yaml.safe_load(proc.stdout)
    else:
        from creagen_ray.config import dump_config, read_config, validate_config

        cwd = other if WHERE[name] == "root" else ROOT
        monkeypatch.chdir(cwd)
        shown = yaml.safe_load(dump_config(validate_config(read_config(os.path.relpath(CONFIGS / f"{name}.yaml", cwd)))))
    assert shown["train"]["storage_path"] == str(cwd / "runs")  # outputs: the working directory
    sources = shown["data"]["source"] if isinstance(shown["data"]["source"], list) else [shown["data"]["source"]]
    for src in sources + [shown["data"].get("labels")]:
        if src and not src.startswith("builtin:"):
            assert Path(src).is_absolute() and Path(src).is_relative_to(ROOT.parent), src
            assert Path(src).exists() or missing_inputs(name), src


@pytest.mark.slow
def test_train_job_succeeds(shipped_runs, s3_server) -> None:
    """The README's command as a user runs it from the repo root: `ray job submit --working-dir . -- python
    jobs/train.py jobs/configs/demo-rnn.yaml --set train.storage_path=s3://...` (on this module's head, beside
    the other commands) waits for the job, exits 0, and its log prints the bundle's URI; the bundle and
    checkpoints are in the bucket. (The same run is demo-rnn.yaml's test_shipped_config_trains.)"""
    future, storage = shipped_runs["job"]
    r = future.result()
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
    assert "succeeded" in r.stdout.lower() and f"bundle: {storage}/job-test/bundle" in r.stdout, r.stdout[-3000:]
    keys = s3_server.keys("jobs/runs/job-test/")
    assert "jobs/runs/job-test/bundle/manifest.json" in keys and any("/checkpoint_" in k for k in keys)


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
