"""Ray Serve's data plane: the environment flags that choose it, set before Ray starts.

Ray 2.60 reads these flags once, at import, in every Ray process (controller, proxy, replicas), so
they must be in the environment of every node *before* `ray start`; an application's
`runtime_env.env_vars` reaches its replicas only. `creagen serve` sets them when it starts its own
Ray; on a cluster they go in the node environment (deploy/k8s/*.yaml, cluster.yaml).

    python       Serve's Python proxy; Ray actor calls between proxy and replica
    throughput   RAY_SERVE_THROUGHPUT_OPTIMIZED: gRPC between Serve processes, direct ingress,
                 user code on the replica's event loop (creagen's model calls run in a worker
                 thread), frozen GC; the HTTP side stays on the host `creagen serve` binds
    haproxy      throughput + RAY_SERVE_ENABLE_HA_PROXY: HAProxy replaces the Python proxy. Ray then
                 binds the replicas' HTTP ports, HAProxy's stats (8404) and metrics (9101) ports on
                 every interface, so it is never loopback-only. HAProxy also replays a request whose
                 replica closed the connection without answering (`retry-on empty-response`, on top
                 of Ray's `conn-failure`): a killed replica's in-flight requests go to another one.
                 Ray leaves that off because a replayed POST may run twice; every creagen route
                 only generates (no state changes), so a replay is safe

Measured side by side by `bench/serve_load.py` (docs/benchmarks.md#serving-ray-serve): haproxy
wins every column on the colocated app; throughput alone is level with python. So the default is
haproxy where the service is meant to be reachable (a non-loopback host, clusters), and throughput
where `creagen serve` keeps it on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

Dataplane = Literal["python", "throughput", "haproxy"]

THROUGHPUT = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
HAPROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}
FLAGS: dict[str, dict[str, str]] = {
    "python": {},
    "throughput": THROUGHPUT,
    "haproxy": {**THROUGHPUT, **HAPROXY},
}
LOOPBACK_DEFAULT: Dataplane = "throughput"  # stays on the host creagen serve binds
CLUSTER_DEFAULT: Dataplane = "haproxy"  # the measured winner; binds every interface


def default_dataplane(host: str) -> Dataplane:
    """haproxy when serving on a reachable address, throughput when `host` is loopback."""
    loopback = host == "localhost" or host == "::1" or host.startswith("127.")
    return LOOPBACK_DEFAULT if loopback else CLUSTER_DEFAULT


def dataplane_env(name: Dataplane) -> dict[str, str]:
    """The environment variables that select data plane `name` (empty for Serve's default)."""
    return dict(FLAGS[name])


def current_dataplane(environ: Mapping[str, str] = os.environ) -> str:
    """The data plane this process's environment selects (what a replica reports in /v1/stats)."""
    for name in ("haproxy", "throughput"):
        if all(environ.get(k) == v for k, v in FLAGS[name].items()):
            return name
    return "python"
