"""Serving benchmark (one process run, not a test): Ray Serve vs a plain FastAPI + uvicorn process.

    .venv/bin/python bench/serve_load.py [--seconds 4] [--port 8200]

Side by side, for text (RNN, 32 new tokens) and image (GAN, 1 image per request) generation at
1, 8 and 32 concurrent clients: p50 / p99 latency and throughput for
  serve-batched   Serve, @serve.batch max_batch_size=32, wait 2 ms, 1 replica
  serve-batch1    the same replica reconfigured live to max_batch_size=1
  plain           build_api + LocalBackend under uvicorn in one process, no Ray, no batching
then text time-to-first-token (SSE) at 1 client, and autoscaling 1 -> 2 -> 1 replicas under
sustained load (replica counts printed over time). Models are untrained (latency does not
depend on training) at realistic small sizes: GRU 2x512, DCGAN 64 channels on 64x64 RGB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from creagen_ray.bundle import write_bundle  # noqa: E402
from creagen_ray.config import DataConfig, DataSpec, ExperimentConfig  # noqa: E402
from creagen_ray.families import build_family  # noqa: E402
from creagen_ray.serving.settings import ServeConfig  # noqa: E402
from creagen_ray.tokenizer import CharTokenizer  # noqa: E402

TEXT_BODY = {"model": "rnn", "prompt": "the ", "max_new_tokens": 32}
IMAGE_BODY = {"model": "gan", "n": 1}
CLIENTS = (1, 8, 32)


def make_bundles(root: Path) -> None:
    """An untrained GRU text bundle and an untrained DCGAN image bundle."""
    tok = CharTokenizer.fit("abcdefghijklmnopqrstuvwxyz .,\n")
    cfg = ExperimentConfig(data=DataConfig(modality="text"), model={"family": "rnn", "hidden_size": 512, "num_layers": 2})
    write_bundle(build_family(cfg, DataSpec(modality="text", vocab_size=tok.vocab_size), tokenizer=tok), root / "rnn")
    cfg = ExperimentConfig(data=DataConfig(modality="image"), model={"family": "gan"})
    write_bundle(build_family(cfg, DataSpec(modality="image", channels=3, image_size=64)), root / "gan")


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of xs (nearest rank)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def load(url: str, path: str, body: dict, clients: int, seconds: float) -> dict[str, float]:
    """`clients` closed-loop clients for `seconds`: p50/p99 latency (ms) and throughput (req/s)."""
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        await c.post(path, json=body)  # warm: model loaded, connection open
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                r = await c.post(path, json=body)
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"p50": 1000 * pct(lat, 0.5), "p99": 1000 * pct(lat, 0.99), "rps": len(lat) / elapsed, "n": len(lat), "err": errors}


async def ttft(url: str, requests: int = 20) -> list[float]:
    """Time to the first SSE event (ms) of sequential streaming text requests."""
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        for i in range(requests + 1):
            t = time.perf_counter()
            async with c.stream("POST", "/v1/text/generate", json={**TEXT_BODY, "max_new_tokens": 200, "stream": True, "seed": i}) as r:
                first = None
                async for line in r.aiter_lines():  # read to the end: the server finishes each stream
                    if first is None and line.startswith("data:"):
                        first = 1000 * (time.perf_counter() - t)
                if i and first is not None:  # the first request warms up
                    out.append(first)
    return out


def table(name: str, url: str, seconds: float, results: dict) -> None:
    """Run text and image load at each client count; print and keep the rows."""
    for kind, path, body in (("text", "/v1/text/generate", TEXT_BODY), ("image", "/v1/images/generate", IMAGE_BODY)):
        for c in CLIENTS:
            r = asyncio.run(load(url, path, body, c, seconds))
            results[(name, kind, c)] = r
            print(f"{name:15s} {kind:5s} clients={c:2d}  p50={r['p50']:8.1f} ms  p99={r['p99']:8.1f} ms  "
                  f"{r['rps']:7.1f} req/s  (n={r['n']}, errors={r['err']})", flush=True)


def replicas(app: str = "creagen", deployment: str = "gan") -> int:
    """RUNNING replicas of a deployment now."""
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return sum(n for state, n in status.replica_states.items() if getattr(state, "value", state) == "RUNNING")


def autoscaling(url: str, seconds: float) -> None:
    """Sustained 32-client image load for `seconds`, then idle; print the gan replica count over time."""
    async def sustained() -> None:
        await load(url, "/v1/images/generate", {**IMAGE_BODY, "n": 4}, 32, seconds)

    async def watch(until: float, label: str) -> None:
        while time.perf_counter() < until:
            print(f"  t={time.perf_counter() - t0:5.1f}s  {label:5s}  gan replicas={replicas()}", flush=True)
            await asyncio.sleep(2)

    async def main() -> None:
        end = time.perf_counter() + seconds
        await asyncio.gather(sustained(), watch(end, "load"))
        await watch(time.perf_counter() + seconds, "idle")

    t0 = time.perf_counter()
    asyncio.run(main())


def main() -> None:
    """Run every phase and print the ratios against the targets."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=4.0, help="per load point")
    p.add_argument("--autoscale-seconds", type=float, default=45.0)
    args = p.parse_args()
    import ray
    from ray import serve

    from creagen_ray.serving.app import build_app

    store = Path(tempfile.mkdtemp(prefix="creagen-bench-"))
    make_bundles(store)
    results: dict = {}

    # -- plain baseline (its own process, 1 torch thread like a replica) --------------------------
    plain_port = free_port()
    plain = subprocess.Popen([sys.executable, "-m", "creagen_ray.serving.plain", str(store), "--port", str(plain_port)])
    try:
        plain_url = f"http://127.0.0.1:{plain_port}"
        for _ in range(600):
            try:
                if httpx.get(f"{plain_url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        table("plain", plain_url, args.seconds, results)
        plain_ttft = asyncio.run(ttft(plain_url))
    finally:
        plain.terminate()
        plain.wait()

    # -- Serve, one replica per family: batched, then batch size 1 --------------------------------
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    one = {"autoscaling": {"min_replicas": 1, "max_replicas": 1}, "batch": {"max_batch_size": 32, "batch_wait_timeout_s": 0.002},
           "num_cpus": 0.5}
    serve.run(build_app(ServeConfig(bundles=[str(store)], families={"rnn": one, "gan": one})), name="creagen", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    table("serve-batched", url, args.seconds, results)
    for fam, st in httpx.get(f"{url}/v1/stats").json()["families"].items():
        sizes = {int(k): v for kind in st["batch_sizes"].values() for k, v in kind.items()}
        mean = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        print(f"  {fam}: batches {sum(sizes.values())}, mean size {mean:.1f}, max {max(sizes, default=0)}", flush=True)
    serve_ttft = asyncio.run(ttft(url))
    for fam in ("rnn", "gan"):  # what a new user_config does on each replica
        serve.get_deployment_handle(fam, app_name="creagen").reconfigure.remote({"max_batch_size": 1, "batch_wait_timeout_s": 0.0}).result()
    table("serve-batch1", url, args.seconds, results)

    # -- autoscaling 1 -> 2 -> 1 ------------------------------------------------------------------
    scaling = {"autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 2,
                               "downscale_delay_s": 5}, "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}, "num_cpus": 0.5}
    serve.run(build_app(ServeConfig(bundles=[str(store)], families={"rnn": one, "gan": scaling})), name="creagen", route_prefix="/")
    print("autoscaling (gan: min 1, max 2, target 2 ongoing requests per replica):", flush=True)
    autoscaling(url, args.autoscale_seconds)
    serve.shutdown()
    ray.shutdown()

    # -- summary ----------------------------------------------------------------------------------
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    b, u = results[("serve-batched", "image", 32)], results[("serve-batch1", "image", 32)]
    print("\nsummary")
    print(f"  image throughput at 32 clients, batched / batch-1: {ratio(b['rps'], u['rps'])}  (target >= 4x)")
    bt, ut = results[("serve-batched", "text", 32)], results[("serve-batch1", "text", 32)]
    print(f"  text throughput at 32 clients, batched / batch-1:  {ratio(bt['rps'], ut['rps'])}")
    for kind in ("text", "image"):
        s, pl = results[("serve-batched", kind, 1)], results[("plain", kind, 1)]
        print(f"  {kind} p50 at 1 client, Serve / plain: {s['p50']:.1f} / {pl['p50']:.1f} ms = {ratio(s['p50'], pl['p50'])}  (target <= 1.5x)")
    print(f"  text time-to-first-token p50: Serve {statistics.median(serve_ttft):.1f} ms, plain {statistics.median(plain_ttft):.1f} ms  (target <= 50 ms)")


if __name__ == "__main__":
    main()
