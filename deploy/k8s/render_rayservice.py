"""Write deploy/k8s/rayservice.yaml from serve/config.yaml (the one Serve config) and raycluster.yaml.

    python deploy/k8s/render_rayservice.py          # rewrites deploy/k8s/rayservice.yaml

The RayService's `serveConfigV2` is serve/config.yaml with the Kubernetes differences applied:
HTTP on 0.0.0.0 (the pod network; the Service in front decides exposure) and bundles read from
the shared runs volume that rayjob.yaml trains into. Its cluster is raycluster.yaml's spec, with
the cluster default Serve data plane's flags (haproxy) (creagen_ray/serving/dataplane.py) in every Ray container's
environment: Ray reads them when a node starts, so the application's runtime_env is too late.
tests/test_k8s.py checks the committed file is this rendering and validates it against KubeRay's CRD.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from creagen_ray.serving.dataplane import DEFAULT, dataplane_env  # noqa: E402
BUNDLES = "/home/ray/runs/bundles"
HEADER = """\
# Serving on Kubernetes (KubeRay operator >= 1.3), GENERATED from serve/config.yaml by
#   python deploy/k8s/render_rayservice.py
#   kubectl apply -f deploy/k8s/rayservice.yaml
#   kubectl port-forward svc/creagen-serve-svc 8000:8000    # then http://127.0.0.1:8000/
# Bundles: /home/ray/runs/bundles on the creagen-runs volume (copy or train them there: rayjob.yaml).
# Cluster: the same head and CPU/GPU worker groups as raycluster.yaml.
"""


def render() -> dict:
    """The RayService manifest as a dict."""
    serve_cfg = yaml.safe_load((ROOT / "serve/config.yaml").read_text())
    cluster = yaml.safe_load((ROOT / "deploy/k8s/raycluster.yaml").read_text())
    serve_cfg = copy.deepcopy(serve_cfg)
    serve_cfg["http_options"] = {**serve_cfg.get("http_options", {}), "host": "0.0.0.0"}
    for app in serve_cfg["applications"]:
        app.setdefault("args", {})["bundles"] = [BUNDLES]
    spec = cluster["spec"]
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        for container in group["template"]["spec"]["containers"]:
            env = container.setdefault("env", [])
            env += [{"name": k, "value": v} for k, v in dataplane_env(DEFAULT).items() if k not in {e["name"] for e in env}]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "creagen-serve", "labels": {"app.kubernetes.io/name": "creagen-ray"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_cfg, sort_keys=False),
            "rayClusterConfig": cluster["spec"],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as readable `|` blocks."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def render_text() -> str:
    """rayservice.yaml's text."""
    return HEADER + yaml.dump(render(), Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    out = ROOT / "deploy/k8s/rayservice.yaml"
    out.write_text(render_text())
    print(f"wrote {out}", file=sys.stderr)
