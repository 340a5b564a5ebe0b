"""jobs/train.py as a real Ray Job: `ray job submit --working-dir . -- python jobs/train.py ...` from the repo root.

The job server lives in the dashboard, which the session test cluster turns off, so this test
starts its own head node (`ray start --head --block --include-dashboard=true` on free ports, a
private temp dir so no other process picks it up as "the current cluster") and stops exactly that
process group afterwards (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.procs import stop_group

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")

TRAIN_CONFIGS = [
    "demo-rnn", "demo-vae", "demo-gan", "rnn-shakespeare", "vae-mnist", "dcgan-mnist", "wgan-gp-mnist", "sentence-vae", "text-gan",
]


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_job_configs_validate(name: str) -> None:
    """Every training config in jobs/configs/ loads and validates (no Ray needed)."""
    from creagen_ray.config import load_config

    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml")
    assert cfg.train.num_workers == 2


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    """Poll `url` until it answers 200 or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@pytest.fixture()
def job_cluster(s3_server):
    """A private head node with the dashboard (job server), its environment holding the S3 endpoint
    and credentials (as a node's IAM role would); yields its dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="crj", dir="/tmp")  # short: Ray's socket paths have a length limit
    dash = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(ROOT),
        "PATH": os.pathsep.join([str(RAY.parent), os.environ.get("PATH", "")]),  # `python` = this venv, as when activated
        **s3_server.env,
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(RAY), "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true",
        f"--port={free_port()}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        f"--temp-dir={temp_dir}", "--object-store-memory=300000000",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_http(f"{url}/api/version", timeout=120)
        print(f"\njob cluster up in {time.perf_counter() - t0:.1f} s")
        yield url
    finally:
        t1 = time.perf_counter()
        stop_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
        print(f"job cluster down in {time.perf_counter() - t1:.1f} s")


@pytest.mark.slow
def test_train_job_succeeds(job_cluster: str, s3_server) -> None:
    """The README's command as a user runs it from the repo root: `ray job submit --working-dir . -- python
    jobs/train.py jobs/configs/demo-rnn.yaml --set train.storage_path=s3://...` waits for the job, exits 0,
    and its log prints the bundle's URI; the bundle and checkpoints are in the bucket."""
    storage = s3_server.uri("jobs/runs")
    small = ["data.max_items=30000", "model.hidden_size=32", "model.embed_dim=16", "train.steps=10",
             "train.eval_every=5", "train.log_every=5", "train.checkpoint_every=10"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the client holds no credentials
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    t0 = time.perf_counter()
    r = subprocess.run(
        [str(RAY), "job", "submit", "--address", job_cluster, "--working-dir", ".", "--", "python", "jobs/train.py", "jobs/configs/demo-rnn.yaml",
         "--set", f"train.storage_path={storage}", "--set", "train.run_name=job-test",
         *(a for kv in small for a in ("--set", kv))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    print(f"ray job submit exited {r.returncode} in {time.perf_counter() - t0:.1f} s")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
    assert "succeeded" in r.stdout.lower() and f"bundle: {storage}/job-test/bundle" in r.stdout, r.stdout[-3000:]
    keys = s3_server.keys("jobs/runs/job-test/")
    assert "jobs/runs/job-test/bundle/manifest.json" in keys and any("/checkpoint_" in k for k in keys)
