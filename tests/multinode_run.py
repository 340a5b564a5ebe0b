"""Train across a 3-node Ray cluster on one machine and lose a node mid-run; print what happened.

    python tests/multinode_run.py STORAGE_URI SOURCE_URI RUN_NAME

Run for tests/test_multinode.py in its own process (the session's local Ray must not share the
process; the session fixture `multinode_run` starts it with the session), with the S3 endpoint and
credentials in the environment. `ray.cluster_utils.Cluster`
starts a head (num_cpus=0 as in cluster.yaml, the dashboard for the state API, resource `head`) and
two worker nodes (2 logical CPUs, resources `trainer` + `node_a` / `node_b`), each a raylet with its
own node id. `creagen_ray.training.train` runs in a thread with 2 DDP workers
(`train.placement_strategy: STRICT_SPREAD`, `train.worker_resources: {trainer: 1}`), data from
SOURCE_URI, storage in STORAGE_URI. Once the controller has registered the first checkpoint
(`<run>/checkpoint_manager_snapshot.json` appears in storage) node_a is removed and node_c added;
FailureConfig restarts the worker group from that checkpoint. The last stdout line is a JSON
object of facts (node ids, task placement, resumed step, bundle URI); the test asserts on them.
Ray's files and `ray_current_cluster` stay in a private RAY_TMPDIR, removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

TEMP = tempfile.mkdtemp(prefix="crmn", dir="/tmp")  # short: Ray's socket paths have a length limit
os.environ["RAY_TMPDIR"] = TEMP  # Cluster() records itself in $RAY_TMPDIR/ray/ray_current_cluster
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "180")  # a loaded 2-core machine
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # the wait for a node's registration: beside other tests
# the Train controller collects reports (and so registers checkpoints) and sees a lost worker at each
# poll: every 0.5 s instead of 2 s, so the node goes right after the first registered checkpoint
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray Data 2.60 reads Parquet footers on a pool of actors, 32 by default, started for every streaming read
# (each worker-group start here): 6-7 of them got a process before the read ended, 10.5-12.6 CPU-s of this
# test; one reader measured under 2.4 (a few small shards). Every node inherits it (set before Cluster starts)
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors, list_tasks  # noqa: E402

from creagen_ray import storage  # noqa: E402
from creagen_ray.config import validate_config  # noqa: E402
from creagen_ray.training import train  # noqa: E402

NODE_MB = 150 * 2**20


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(storage_uri: str, source: str, run: str):
    """A small char GRU, 2 workers on 2 nodes, streaming data, 60 steps with a checkpoint every 10."""
    return validate_config({
        "name": "multinode",
        "data": {"source": source, "seq_len": 32},
        "model": {"family": "rnn", "embed_dim": 16, "hidden_size": 64, "num_layers": 1},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {
            "num_workers": 2, "cpus_per_worker": 0.5, "worker_resources": {"trainer": 1},
            "placement_strategy": "STRICT_SPREAD", "max_failures": 2,
            "steps": 60, "batch_size": 16, "checkpoint_every": 10,
            "eval_every": 1000, "eval_batches": 2, "log_every": 10, "materialize_mb": 0,
            "storage_path": storage_uri, "run_name": run,
        },
    })


def workers(alive_only: bool = False) -> list[dict]:
    """Ray Train's worker actors (public state API): id, node id, state."""
    filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", "ALIVE")] if alive_only else [])
    return [{"id": a.actor_id, "node": a.node_id, "state": a.state} for a in list_actors(filters=filters, limit=1000)]


def main() -> None:
    storage_uri, source, run = sys.argv[1:4]
    t0 = time.perf_counter()
    facts: dict = {}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0, "resources": {"head": 1}, "object_store_memory": NODE_MB,
            "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
            "include_log_monitor": False,  # it streams workers' output to a driver; this one has log_to_driver=False
        },
    )
    try:
        nodes = {
            name: cluster.add_node(num_cpus=2, resources={"trainer": 1, name: 1}, object_store_memory=NODE_MB,
                                   include_log_monitor=False)
            for name in ("node_a", "node_b")
        }
        ray.init(address=cluster.address, log_to_driver=False)
        facts["driver_node"] = ray.get_runtime_context().get_node_id()
        facts["nodes"] = {name: n.node_id for name, n in nodes.items()}
        facts["cluster_up_s"] = round(time.perf_counter() - t0, 1)

        outcome: dict = {}

        def run_training() -> None:
            try:
                res = train(config(storage_uri, source, run), progress=False)
                outcome["bundle"], outcome["metrics"] = str(res.bundle_path), res.metrics
            except BaseException as e:  # reported in the facts
                outcome["error"] = f"{type(e).__name__}: {e}"[:3000]

        thread = threading.Thread(target=run_training, daemon=True)
        thread.start()
        fs, root = storage.resolve(storage.join(storage_uri, run))
        snapshot = f"{root}/checkpoint_manager_snapshot.json"
        while thread.is_alive() and fs.get_file_info(snapshot).type == pafs.FileType.NotFound:
            time.sleep(0.2)
        if thread.is_alive():
            facts["checkpoints_at_removal"] = sorted(
                i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.base_name.startswith("checkpoint_")
                and i.type == pafs.FileType.Directory
            )
            facts["workers_before"] = workers(alive_only=True)
            t_rm = time.perf_counter()
            cluster.remove_node(nodes["node_a"])
            facts["removed_at_s"] = round(t_rm - t0, 1)
            node_c = cluster.add_node(num_cpus=2, resources={"trainer": 1, "node_c": 1}, object_store_memory=NODE_MB,
                                      include_log_monitor=False)
            facts["nodes"]["node_c"] = node_c.node_id
        thread.join(timeout=420)
        facts["training_finished"] = not thread.is_alive()
        facts.update(outcome)
        facts["workers_all"] = workers()
        tasks = list_tasks(limit=10000, raise_on_missing_output=False)
        facts["tasks"] = [
            {"name": t.name, "node": t.node_id} for t in tasks if t.type == "NORMAL_TASK" and t.node_id
        ]
    finally:
        facts["total_s"] = round(time.perf_counter() - t0, 1)
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(TEMP, ignore_errors=True)
    print(json.dumps(facts, default=str))


if __name__ == "__main__":
    main()
