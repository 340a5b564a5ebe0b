"""The same HTTP API without Ray: FastAPI + uvicorn in one process, models run in-process.

`python -m creagen_ray.serving.plain` is the benchmark's "no Serve" baseline (a process of its
own, as a user would run it) and the server of the `creagen generate --url` test; tests also run
`PlainServer` in-process. It shares `api.build_api` with the Serve ingress, so both answer the
same routes with the same checks.
"""

from __future__ import annotations

import threading
import time

import uvicorn

from creagen_ray.serving.api import build_api
from creagen_ray.serving.engine import LocalBackend
from creagen_ray.serving.settings import ServeConfig
from creagen_ray.serving.store import BundleStore


class PlainServer:
    """uvicorn serving `build_api(LocalBackend)` on a background thread: `with PlainServer(cfg, port) as url:`."""

    def __init__(self, config: ServeConfig, port: int, host: str = "127.0.0.1") -> None:
        store = BundleStore.scan(config.bundles, signing_key=config.signing_key())
        self.backend = LocalBackend(store)
        app = build_api(store, self.backend, config)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://{host}:{port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """`python -m creagen_ray.serving.plain BUNDLE_OR_DIR... --port P`: serve until killed (benchmark baseline)."""
    import argparse

    import torch

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = like a Serve replica)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with PlainServer(ServeConfig(bundles=args.bundles), args.port, args.host) as url:
        print(f"plain server at {url}", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
