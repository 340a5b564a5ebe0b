"""Across nodes: a head + 2 worker raylets (`ray.cluster_utils.Cluster`), data and runs in S3, a node lost.

One run (tests/multinode_run.py, in its own process so the session's local Ray is not in the way)
shows: the 2 DDP workers on different nodes (STRICT_SPREAD), the data tasks on the worker nodes
(never the driver's), the bundle in the bucket, and a worker node removed after the first
checkpoint survived by resuming from that checkpoint on a replacement node.

The run starts with the test session (the session fixture `multinode_run` in tests/conftest.py), beside the
tests before this one: they fill the time its cluster waits on process start-ups (alone it took 64 s of
wall for 96 CPU-s of 2 cores). This test waits for it and checks what it printed.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_two_nodes_spread_data_off_driver_node_loss_resumes(multinode_run, s3_server) -> None:
    s3 = s3_server
    bg, runs, run = multinode_run
    cwd = bg.cwd
    rc, stdout, stderr = bg.result()
    assert rc == 0, stderr[-4000:]
    facts = json.loads(stdout.strip().splitlines()[-1])
    print({k: facts.get(k) for k in ("cluster_up_s", "removed_at_s", "total_s", "checkpoints_at_removal")},
          "resumed from step", facts.get("metrics", {}).get("start_step"), "to", facts.get("metrics", {}).get("step"))
    assert facts["training_finished"] and "error" not in facts, facts.get("error")
    assert "workers_before" in facts, "the run ended before its first checkpoint was registered: no node was removed"
    nodes, driver = facts["nodes"], facts["driver_node"]

    # 2 DDP workers on 2 different worker nodes, before and after the node loss
    before = facts["workers_before"]
    assert len(before) == 2 and {w["node"] for w in before} == {nodes["node_a"], nodes["node_b"]}
    after = [w for w in facts["workers_all"] if w["id"] not in {b["id"] for b in before}]
    assert len(after) == 2 and {w["node"] for w in after} == {nodes["node_b"], nodes["node_c"]}

    # data preparation and the training reads ran as tasks on the worker nodes, none on the driver's
    prep = [t for t in facts["tasks"] if "_piece_batch" in t["name"] or "MapBatches" in t["name"]]
    reads = [t for t in facts["tasks"] if t["name"].startswith("Read")]  # the training split, from the bucket
    assert prep and reads, sorted({t["name"] for t in facts["tasks"]})
    assert driver not in {t["node"] for t in prep + reads}
    assert {t["node"] for t in prep + reads} <= set(nodes.values())

    # resumed from the checkpoint the controller had registered, not from scratch
    resumed = facts["metrics"]["start_step"]
    ckpt_steps = facts["checkpoints_at_removal"]
    assert ckpt_steps and resumed > 0 and resumed % 10 == 0
    assert facts["metrics"]["step"] > resumed

    # the bundle is in the bucket, and nothing was written to the working directory
    assert facts["bundle"] == f"{runs}/{run}/bundle"
    keys = s3.keys(f"multinode/runs/{run}/")
    assert f"multinode/runs/{run}/bundle/manifest.json" in keys
    assert any(k.startswith("multinode/runs/data/") and k.endswith("manifest.json") for k in s3.keys("multinode/runs/data/"))
    assert list(cwd.iterdir()) == []
