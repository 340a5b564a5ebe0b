"""`creagen serve BUNDLE_OR_DIR...`: Ray (local if none is running), Serve on HOST:PORT, block until Ctrl-C."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import ray
from ray import serve

from creagen_ray.cluster import connect_ray

from creagen_ray.serving.api import REQUEST_LOG_NOTICE
from creagen_ray.serving.app import build_app
from creagen_ray.serving.dataplane import DEFAULT, Dataplane, private_dataplane_env
from creagen_ray.serving.settings import ServeConfig

APP_NAME = "creagen"


def start_serve(
    config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, dataplane: Dataplane | None = None
) -> tuple[str, bool]:
    """Start Ray (if needed) and Serve, deploy the app for `config`; (base URL, True if Ray is our own).

    `dataplane` (creagen_ray/serving/dataplane.py; None: haproxy) applies when Ray is started
    here; a running cluster serves with the flags its nodes were started with.
    """
    private = connect_ray(private_env=private_dataplane_env(dataplane or DEFAULT))
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}", private


def serve_forever(
    bundles: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    signing_key_file: str | None = None,
    max_concurrent_per_client: int | None = None,
    memorization: str = "off",
    request_log: str | None = None,
    dataplane: Dataplane | None = None,
) -> int:
    """Serve `bundles` until Ctrl-C, then shut Serve down; the CLI's exit code."""
    config = ServeConfig(
        bundles=bundles,
        api_key=api_key,
        require_signature=signing_key_file is not None,
        signing_key_file=signing_key_file,
        max_concurrent_per_client=max_concurrent_per_client,
        memorization={"mode": memorization},
        request_log=str(Path(request_log).expanduser().resolve()) if request_log else None,
    )
    if config.request_log:
        print("creagen serve: " + REQUEST_LOG_NOTICE.format(path=config.request_log), flush=True)
    url, private = start_serve(config, host, port, dataplane)
    # Our own SIGINT/SIGTERM handlers, installed once Ray and Serve are up: Ctrl-C and a supervisor's
    # SIGTERM both stop cleanly, whatever handlers Ray's start-up left (twice in a quiet full test
    # run, SIGINT never reached a KeyboardInterrupt in the sleeping main thread).
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"creagen serving at {url}  (models: {url}/v1/models, docs: {url}/docs); Ctrl-C stops", flush=True)
    try:
        while not stop.wait(0.5):  # a bounded wait: the handler runs between waits at the latest
            pass
        print("stopping", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if private:  # our own runtime: ending it ends Serve too, seconds sooner than serve.shutdown() first
            ray.shutdown()
        else:  # someone's cluster: take our app down, leave their Ray running
            serve.shutdown()
    return 0
