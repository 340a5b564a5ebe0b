"""Ray Serve's data plane: the environment flags that choose it, set before Ray starts.

Ray 2.60 reads these flags once, at import, in every Ray process (controller, proxy, replicas), so
they must be in the environment of every node *before* `ray start`; an application's
`runtime_env.env_vars` reaches its replicas only. `creagen serve` sets them when it starts its own
Ray; on a cluster they go in the node environment (deploy/k8s/*.yaml, cluster.yaml).

    python       Serve's Python proxy; Ray actor calls between proxy and replica
    throughput   RAY_SERVE_THROUGHPUT_OPTIMIZED: gRPC between Serve processes, direct ingress,
                 user code on the replica's event loop (creagen's model calls run in a worker
                 thread), frozen GC; the HTTP side stays on the host `creagen serve` binds
    haproxy      throughput + RAY_SERVE_ENABLE_HA_PROXY: HAProxy replaces the Python proxy and
                 forwards to the replicas' own HTTP ports (direct ingress). It also replays a
                 request whose replica closed the connection without answering (`retry-on
                 empty-response`, on top of Ray's `conn-failure`), so a killed replica's in-flight
                 requests go to another one. Ray leaves that off because a replayed POST may run
                 twice; every creagen route only generates (no state changes), so a replay is safe.
                 HAProxy can replay only a request it held whole when it first forwarded it, and
                 httpx and `requests` write the headers and the body in two sends: `option
                 http-buffer-request` makes it wait for the body first. Ray 2.60 has no setting for
                 HAProxy options; its template writes RAY_SERVE_HAPROXY_RETRY_ON verbatim as the
                 `retry-on` line of the `defaults` section, so the option is that value's second line

HAProxy's frontend binds the host `creagen serve` is given and the replicas' direct-ingress ports
bind that host too; only HAProxy's read-only stats page and Prometheus metrics listen on every
interface, at fixed ports (8404, 9101) unless RAY_SERVE_HAPROXY_STATS_PORT / _METRICS_PORT say
otherwise. So a private runtime gets free ports for those two (`private_dataplane_env`): a second
`creagen serve` on the same host would otherwise fail to start ("Some protocols failed to start
their listeners").

Measured side by side by `bench/serve_load.py` (docs/benchmarks.md#serving-ray-serve, quiet
machine, plain uvicorn in a process of its own): haproxy meets every latency and throughput target
(text 3.43x plain at 32 clients, p50 1.21x, first streamed token 6.6 ms); python and throughput
miss most of them (text 1.9-2.7x, images 0.74-0.78x, first token 14-16 ms). So haproxy is the
default everywhere: `creagen serve`, `cluster.yaml` and the Kubernetes manifests.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Literal

Dataplane = Literal["python", "throughput", "haproxy"]

THROUGHPUT = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# the retry policy's line in HAProxy's `defaults`, then one more line there (see the docstring)
HAPROXY_RETRY_ON = "conn-failure empty-response\n    option http-buffer-request"
HAPROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON}
FLAGS: dict[str, dict[str, str]] = {
    "python": {},
    "throughput": THROUGHPUT,
    "haproxy": {**THROUGHPUT, **HAPROXY},
}
DEFAULT: Dataplane = "haproxy"  # the measured winner, on loopback and on clusters
HAPROXY_SIDE_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def dataplane_env(name: Dataplane) -> dict[str, str]:
    """The environment variables that select data plane `name` (empty for Serve's default)."""
    return dict(FLAGS[name])


def private_dataplane_env(name: Dataplane, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`dataplane_env(name)` for a runtime `creagen serve` starts itself: with haproxy, free ports for
    HAProxy's stats and metrics listeners unless `environ` already sets them (the fixed defaults
    collide when two instances share a host)."""
    env = dataplane_env(name)
    if name == "haproxy":
        with contextlib.ExitStack() as held:  # held open together, so the two ports differ
            for key in HAPROXY_SIDE_PORTS:
                if key not in environ:
                    s = held.enter_context(socket.socket())
                    s.bind(("", 0))  # HAProxy binds these on every interface
                    env[key] = str(s.getsockname()[1])
    return env


def current_dataplane(environ: Mapping[str, str] = os.environ) -> str:
    """The data plane this process's environment selects (what a replica reports in /v1/stats)."""
    for name in ("haproxy", "throughput"):
        if all(environ.get(k) == v for k, v in FLAGS[name].items()):
            return name
    return "python"
