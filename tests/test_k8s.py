"""deploy/k8s/*.yaml are valid KubeRay resources, consistent with the project's versions and configs.

Each manifest's `spec` is validated against KubeRay's own CRD schema (../shared/kuberay-crds, or
$CREAGEN_KUBERAY_CRDS), and every field must be one the schema knows (what `kubectl apply
--validate=strict` would refuse). No Kubernetes cluster is needed.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from creagen_ray.cli import build_parser
from creagen_ray.config import load_config
from creagen_ray.serving.settings import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(os.environ.get("CREAGEN_KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay-crds"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob", "rayservice.yaml": "RayService"}


def crd_schema(kind: str, version: str) -> dict:
    """The openAPIV3Schema of `kind`'s served `version` in KubeRay's CRD."""
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"{path} is absent: KubeRay's CRDs are needed to validate the manifests")
    return _crd_schema(path, version)


@functools.cache
def _crd_schema(path: Path, version: str) -> dict:
    crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # 1 MB files: libyaml, read once
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    return ver["schema"]["openAPIV3Schema"]


def unknown_fields(value: object, schema: dict, path: str = "") -> list[str]:
    """Paths of fields the structural schema does not declare (Kubernetes would prune or refuse them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for k, v in value.items():
            if k in schema["properties"]:
                out += unknown_fields(v, schema["properties"][k], f"{path}.{k}")
            elif not schema.get("additionalProperties"):
                out.append(f"{path}.{k}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for k, v in value.items():
            out += unknown_fields(v, schema["additionalProperties"], f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += unknown_fields(v, schema["items"], f"{path}[{i}]")
    return out


def load(name: str) -> dict:
    """One manifest as a dict."""
    return yaml.safe_load((K8S / name).read_text())


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_validates_against_kuberay_crd(name: str) -> None:
    """apiVersion/kind match the CRD, spec validates, no field outside the schema, versions agree."""
    doc = load(name)
    kind = MANIFESTS[name]
    assert doc["kind"] == kind and doc["apiVersion"] == "ray.io/v1"
    schema = crd_schema(kind, "v1")
    jsonschema.Draft7Validator(schema["properties"]["spec"]).validate(doc["spec"])
    assert unknown_fields(doc["spec"], schema["properties"]["spec"], "spec") == []
    # a typo is caught: the check above can fail
    assert unknown_fields({"headGroupSpec": {"rayStartParam": {}}}, crd_schema("RayCluster", "v1")["properties"]["spec"])
    cluster = {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"], "RayService": lambda s: s["rayClusterConfig"]}[
        kind
    ](doc["spec"])
    assert cluster["rayVersion"] == ray.__version__
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    for g in groups:
        for c in g["template"]["spec"]["containers"]:
            assert re.fullmatch(r"creagen-ray:0\.1\.0-(cpu|gpu)", c["image"]), c["image"]
            wants_gpu = "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
            assert c["image"].endswith("-gpu") == wants_gpu, (name, c["image"])
    docker = (ROOT / "deploy/Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-{py}-cpu" in docker and "requirements-cpu.lock" in docker


def test_raycluster_has_cpu_and_gpu_worker_groups() -> None:
    """A CPU group and a GPU group (one GPU per pod), both autoscaled from zero or more."""
    groups = {g["groupName"]: g for g in load("raycluster.yaml")["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_rayjob_entrypoint_is_a_valid_creagen_command() -> None:
    """The entrypoint parses as `creagen train` and its config (with the overrides) validates."""
    argv = shlex.split(load("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[0] == "creagen"
    args = build_parser().parse_args(argv[1:])
    cfg = load_config(ROOT / args.config, args.overrides)
    assert cfg.train.storage_path == "/home/ray/runs"


def test_rayservice_is_rendered_from_serve_config() -> None:
    """serveConfigV2 is serve/config.yaml (bundles on the runs volume, host 0.0.0.0); args validate."""
    sys.path.insert(0, str(K8S))
    try:
        from render_rayservice import BUNDLES, render_text
    finally:
        sys.path.remove(str(K8S))
    committed = (K8S / "rayservice.yaml").read_text()
    assert committed == render_text(), "stale: run `python deploy/k8s/render_rayservice.py`"
    serve_cfg = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    source = yaml.safe_load((ROOT / "serve/config.yaml").read_text())
    assert serve_cfg["http_options"]["host"] == "0.0.0.0"
    for app, src in zip(serve_cfg["applications"], source["applications"], strict=True):
        assert app["import_path"] == src["import_path"] == "creagen_ray.serving.app:app_builder"
        assert {k: v for k, v in app["args"].items() if k != "bundles"} == {k: v for k, v in src["args"].items() if k != "bundles"}
        assert ServeConfig.model_validate(app["args"]).bundles == [BUNDLES]
