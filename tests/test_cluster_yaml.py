"""cluster.yaml is a real Ray cluster-launcher config: it validates against the installed Ray's schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import validate_config

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict:
    """cluster.yaml as a dict."""
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_ray_schema() -> None:
    """jsonschema against ray/autoscaler/ray-schema.json, then Ray's own extra checks."""
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = load()
    jsonschema.validate(cfg, schema)
    validate_config(cfg)  # head_node_type among the node types, min/max workers consistent, ...


def test_cluster_yaml_has_cpu_and_gpu_workers_and_installs_the_project() -> None:
    """A head, a CPU and a GPU worker type; every node installs the locked dependencies, then the project."""
    cfg = load()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert any(v["resources"].get("GPU", 0) >= 1 for v in workers.values()), "no GPU worker type"
    assert any("GPU" not in v["resources"] for v in workers.values()), "no CPU worker type"
    assert "." in cfg["file_mounts"].values(), "the repository is not mounted on the nodes"
    installs = [cfg["head_setup_commands"]] + [v["worker_setup_commands"] for v in workers.values()]
    for commands, lock in zip(installs, ["cpu"] + ["gpu" if "GPU" in v["resources"] else "cpu" for v in workers.values()]):
        assert any(f"-r deploy/requirements-{lock}.lock" in c and "--no-deps -e ." in c for c in commands), commands
        assert (ROOT / f"deploy/requirements-{lock}.lock").is_file()


def test_cluster_yaml_storage_through_the_node_role() -> None:
    """Worker nodes reach the bucket through the instance profile docs/storage.md creates; the head runs no
    training (CPU: 0, as tests/test_multinode.py runs it); no key or secret anywhere in the file."""
    cfg = load()
    text = (ROOT / "cluster.yaml").read_text()
    docs = (ROOT / "docs" / "storage.md").read_text()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = [v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    for node in workers:
        profile = node["node_config"]["IamInstanceProfile"]["Name"]
        assert f"--instance-profile-name {profile}" in docs and f"--role-name {profile}" in docs
    assert "s3://" in text and "docs/storage.md" in text
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert secret not in text


def test_cluster_yaml_starts_every_node_on_the_cluster_data_plane() -> None:
    """Serve's data-plane flags are read when a node starts: every `ray start` line sets exactly the flags
    creagen_ray/serving/dataplane.py names for clusters (one source of truth, quoted for the shell)."""
    import shlex

    from creagen_ray.serving.dataplane import DEFAULT, dataplane_env

    cfg = load()
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for line in starts:
        words = shlex.split(line.split(";")[-1])  # after `ulimit ...;`: VAR=value ... ray start ...
        env = dict(w.split("=", 1) for w in words[: next(i for i, w in enumerate(words) if "=" not in w)])
        assert {k: env.get(k) for k in dataplane_env(DEFAULT)} == dataplane_env(DEFAULT), line
