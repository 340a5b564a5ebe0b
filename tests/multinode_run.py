"""A 3-node Ray cluster on this machine (ray.cluster_utils.Cluster) running one creagen training.

Run by tests/test_multinode.py in its own process (its own Ray, its own environment holding the S3
endpoint and credentials, which every raylet inherits like a node's IAM role). Writes a JSON report:

    head (the driver's node, 1 CPU)       the Train controller and the data split coordinator
    node_a / node_b (1 CPU + trainer: 1)  one DDP worker each (train.placement_strategy STRICT_SPREAD)
    node_c                                added after node_b is removed mid-run (a replaced node)

    python tests/multinode_run.py CONFIG_JSON REPORT_JSON
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import ray
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from creagen_ray import storage  # noqa: E402
from creagen_ray.config import validate_config  # noqa: E402
from creagen_ray.training import train  # noqa: E402

MB = 2**20


def node_names() -> dict[str, str]:
    """node id -> the custom resource that names it (head for the driver's node)."""
    out = {}
    for n in ray.nodes():
        names = [r for r in n["Resources"] if r.startswith("node_")]
        out[n["NodeID"]] = names[0] if names else "head"
    return out


def worker_nodes() -> list[list[str]]:
    """For every created 2-bundle placement group (a Train worker group): the node of each bundle."""
    groups = []
    for pg in ray.util.placement_group_table().values():
        if pg["state"] == "CREATED" and len(pg["bundles"]) == 2:
            groups.append((pg["stats"].get("start_time_us", 0) if "stats" in pg else 0, pg["bundles_to_node_id"]))
    names = node_names()
    return [[names.get(b[i], "?") for i in sorted(b)] for _, b in sorted(groups, key=lambda g: g[0])]


def main(cfg_path: str, report_path: str) -> None:
    raw = json.loads(Path(cfg_path).read_text())
    cfg = validate_config(raw)
    report: dict = {"groups": [], "removed": None, "events": []}
    temp_dir = tempfile.mkdtemp(prefix="crmn", dir="/tmp")  # private: no other process finds this cluster
    address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    previous = address_file.read_bytes() if address_file.is_file() else None
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1, "object_store_memory": 150 * MB, "include_dashboard": True,
            "dashboard_port": free_port(), "temp_dir": temp_dir,
        },
    )
    # Cluster() records itself as "the current cluster" in /tmp/ray, where a bare ray.init() of any
    # other process on this machine would join it: put back what was there
    if previous is None:
        address_file.unlink(missing_ok=True)
    else:
        address_file.write_bytes(previous)
    nodes = {
        "node_a": cluster.add_node(num_cpus=1, resources={"node_a": 1, "trainer": 1}, object_store_memory=150 * MB),
        "node_b": cluster.add_node(num_cpus=1, resources={"node_b": 1, "trainer": 1}, object_store_memory=150 * MB),
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, log_to_driver=False)
    report["driver_node"] = ray.get_runtime_context().get_node_id()
    run_uri = storage.join(cfg.train.storage_path, cfg.train.run_name)
    outcome: dict = {}

    def run() -> None:
        try:
            result = train(cfg, progress=False)
            outcome["bundle"], outcome["metrics"] = str(result.bundle_path), result.metrics
        except BaseException as e:  # noqa: BLE001 - reported, the test decides
            outcome["error"] = repr(e)

    trainer = threading.Thread(target=run, name="train")
    trainer.start()
    t0 = time.monotonic()
    fs, path = storage.resolve(run_uri)
    try:
        # the driver's main thread plays the cluster: watch placement, and after the first checkpoint
        # lands in storage, remove node_b (a lost node) and add node_c (its replacement)
        while trainer.is_alive():
            for g in worker_nodes():
                if g not in report["groups"]:
                    report["groups"].append(g)
                    report["events"].append(f"{time.monotonic() - t0:.0f}s: worker group on {g}")
            if report["removed"] is None and report["groups"]:
                infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                if any(i.base_name.startswith("checkpoint_") for i in infos):
                    report["events"].append(f"{time.monotonic() - t0:.0f}s: checkpoint in storage; removing node_b")
                    cluster.remove_node(nodes.pop("node_b"), allow_graceful=False)
                    report["removed"] = "node_b"
                    nodes["node_c"] = cluster.add_node(
                        num_cpus=1, resources={"node_c": 1, "trainer": 1}, object_store_memory=150 * MB
                    )
                    report["events"].append(f"{time.monotonic() - t0:.0f}s: node_c added")
            trainer.join(timeout=0.5)
        report.update(outcome)
        from ray.util.state import list_tasks

        tasks = list_tasks(filters=[("type", "=", "NORMAL_TASK")], limit=10000, raise_on_missing_output=False)
        names = node_names()
        report["read_task_nodes"] = sorted({names.get(t.node_id, "gone") for t in tasks if "Read" in (t.name or "")})
    finally:
        Path(report_path).write_text(json.dumps(report, indent=2, default=str))
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
