"""Across nodes: a head + 2 worker nodes (ray.cluster_utils.Cluster), data and results in S3 (moto).

One run shows: 2 DDP workers placed on different nodes (STRICT_SPREAD), Ray Data read tasks off the
driver's node, a worker node removed mid-run and the run resuming from its last checkpoint on a
replacement node (FailureConfig max_failures), and the bundle in object storage. The cluster lives
in its own process (tests/multinode_run.py) so its raylets inherit the S3 credentials as nodes would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_three_node_run_survives_losing_a_worker_node(s3_server, tmp_path: Path) -> None:
    import yaml

    s3 = s3_server
    raw = yaml.safe_load((ROOT / "jobs/configs/demo-rnn.yaml").read_text())
    raw["data"].update(max_items=20000, seq_len=32)
    raw["model"].update(hidden_size=32, embed_dim=16)
    raw["train"].update(
        steps=20, eval_every=10, checkpoint_every=10, log_every=10, batch_size=16, num_to_keep=2,
        storage_path=s3.uri("multinode/runs"), run_name="mn", max_failures=1,
        cpus_per_worker=0.5, worker_resources={"trainer": 1}, placement_strategy="STRICT_SPREAD",
        materialize_mb=0,  # stream: read tasks keep running during training, on the worker nodes
    )
    cfg_path, report_path = tmp_path / "cfg.json", tmp_path / "report.json"
    cfg_path.write_text(json.dumps(raw))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {
        **os.environ, **s3.env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",  # a replacement node may take a while to join
        "RAY_raylet_start_wait_time_s": "120",  # 3 raylets on 2 busy cores start slowly
    }
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/multinode_run.py"), str(cfg_path), str(report_path)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole cluster: raylets, workers, dashboard
        out, err = proc.communicate()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    print(f"multi-node run: {time.perf_counter() - t0:.0f} s")
    assert report_path.is_file(), r.stderr[-4000:]
    report = json.loads(report_path.read_text())
    print(json.dumps({k: v for k, v in report.items() if k != "metrics"}, indent=1))
    assert r.returncode == 0, r.stderr[-4000:]

    groups = report["groups"]
    assert sorted(groups[0]) == ["node_a", "node_b"]  # one DDP worker per node
    assert report["removed"] == "node_b"
    assert any(sorted(g) == ["node_a", "node_c"] for g in groups[1:]), groups  # restarted on the new node
    m = report["metrics"]
    print(f"resumed from step {m['start_step']} after losing node_b")
    assert m["step"] == 20 and m["start_step"] == 10  # resumed from the step-10 checkpoint, not from scratch
    assert m["world_size"] == 2
    assert report["bundle"] == s3.uri("multinode/runs/mn/bundle")
    assert "multinode/runs/mn/bundle/manifest.json" in s3.keys("multinode/runs/mn/")
    assert set(report.get("read_task_nodes", [])) - {"head"}, report  # Ray Data reads ran off the driver's node
    assert list(cwd.iterdir()) == []
