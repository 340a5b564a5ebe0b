"""Serving benchmark (one invocation, not a test): every serving option side by side vs plain uvicorn.

    .venv/bin/python bench/serve_load.py [--seconds 4] [--clients 1,8,32] [--variants all] [--kill-seconds 20]

Variants, each in its own process (the data-plane flags must be in the environment before Ray
starts; creagen_ray/serving/dataplane.py names them):
  plain                 `python -m creagen_ray.serving.plain`: build_api + LocalBackend under uvicorn in
                        a server process of its own (not sharing the load generator's GIL), 1 torch
                        thread, no Ray, no batching
  split                 proxy -> ingress -> family replica (Serve multiplexing on the family deployments)
  colocated             proxy -> one deployment holding HTTP, bundles and batching (one hop fewer)
  <topology>+throughput the same on the `throughput` data plane (RAY_SERVE_THROUGHPUT_OPTIMIZED)
  <topology>+haproxy    the same on the `haproxy` data plane (throughput + RAY_SERVE_ENABLE_HA_PROXY)
For text (GRU 2x512, 32 new tokens) and image (DCGAN 64 ch, 64x64 RGB, n=1) at each client count:
p50 / p99 latency, throughput and mean batch size (requests per model call, from /v1/stats); then
streamed-text time to first token (p50 of sequential streams), and for the colocated variants a
replica-kill check: 2 replicas under 8-client load, one killed with ray.kill; failed requests (split
into those in flight at the kill and those sent after it) and the time until 2 replicas run again. The
check runs once per client library, because HAProxy (as Ray configures it) replays a request whose replica
died only if it held the whole request before forwarding it: aiohttp writes a small POST in one send,
httpx writes the headers and the body in two.
Models are untrained (latency does not depend on training).
Every variant gets 1 replica per deployment and 1 torch thread, like the plain server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
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

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from creagen_ray.serving.dataplane import dataplane_env  # noqa: E402

TEXT_BODY = {"model": "rnn", "prompt": "the ", "max_new_tokens": 32}
IMAGE_BODY = {"model": "gan", "n": 1}
VARIANTS: dict[str, tuple[str | None, str]] = {  # name -> (topology, data plane)
    "plain": (None, "python"),
    **{f"{t}{'' if d == 'python' else '+' + d}": (t, d) for t in ("split", "colocated") for d in ("python", "throughput", "haproxy")},
}


def make_bundles(root: Path) -> None:
    """An untrained GRU text bundle and an untrained DCGAN image bundle."""
    from creagen_ray.bundle import write_bundle
    from creagen_ray.config import DataConfig, DataSpec, ExperimentConfig
    from creagen_ray.families import build_family
    from creagen_ray.tokenizer import CharTokenizer

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


def secs(x: float | None) -> str:
    """Seconds to one decimal, or 'never' (within the check's window)."""
    return "never" if x is None else f"{x:.1f} s"


def uptime() -> str:
    """The load average line of `uptime` (logged beside every number)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


KILL_CLIENTS = ("aiohttp", "httpx")  # one send per small POST / headers and body in two sends


@contextlib.asynccontextmanager
async def poster(url: str, connections: int, library: str = "httpx"):
    """`post(path, body) -> status` over a keep-alive pool of `connections`, with httpx or aiohttp."""
    if library == "httpx":
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            async def post(path: str, body: dict) -> int:
                return (await c.post(path, json=body)).status_code

            yield post
    else:
        async with aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=connections),
                                         timeout=aiohttp.ClientTimeout(total=120)) as s:
            async def post(path: str, body: dict) -> int:
                async with s.post(path, json=body) as r:
                    await r.read()
                    return r.status

            yield post


async def load(url: str, path: str, body: dict, clients: int, seconds: float, library: str = "httpx") -> dict[str, float]:
    """`clients` closed-loop clients for `seconds`: p50/p99 latency (ms), throughput (req/s), errors."""
    lat: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}  # why requests failed: HTTP status or exception name
    failed_at: list[float] = []  # when each failed request was sent (perf_counter)
    async with poster(url, clients + 4, library) as post:
        await post(path, body)  # warm: model loaded, connection open
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    status = await post(path, body)
                    why = "" if status == 200 else str(status)
                except (httpx.HTTPError, aiohttp.ClientError) as e:
                    why = type(e).__name__
                if not why:
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1
                    kinds[why] = kinds.get(why, 0) + 1
                    failed_at.append(t)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"p50": 1000 * pct(lat, 0.5), "p99": 1000 * pct(lat, 0.99), "rps": len(lat) / elapsed, "n": len(lat), "err": errors,
            "err_kinds": kinds, "failed_at": failed_at}


async def ttft(url: str, requests: int) -> float:
    """p50 time (ms) to the first SSE event of sequential streaming text requests (200 new tokens)."""
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        for i in range(requests + 1):
            t = time.perf_counter()
            body = {**TEXT_BODY, "max_new_tokens": 200, "stream": True, "seed": i}
            async with c.stream("POST", "/v1/text/generate", json=body) as r:
                first = None
                async for line in r.aiter_lines():  # read to the end: the server finishes each stream
                    if first is None and line.startswith("data:"):
                        first = 1000 * (time.perf_counter() - t)
                if i and first is not None:  # the first request warms up
                    out.append(first)
    return statistics.median(out) if out else float("nan")


def batch_counts(url: str) -> dict[str, dict[int, int]]:
    """{kind: {requests per batch: batches}} summed over the families' replicas (empty for plain)."""
    stats = httpx.get(f"{url}/v1/stats", timeout=60).json()
    out: dict[str, dict[int, int]] = {"text": {}, "image": {}}
    for fam in stats.get("families", {}).values():
        for kind, sizes in fam["batch_sizes"].items():
            for k, v in sizes.items():
                out[kind][int(k)] = out[kind].get(int(k), 0) + v
    return out


def mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    """Mean requests per batch between two batch_counts snapshots (1.0 when no batching happened)."""
    new = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    return sum(k * v for k, v in new.items()) / sum(new.values()) if new else 1.0


def measure(url: str, clients: list[int], seconds: float, streams: int) -> dict:
    """Every load point, the mean batch per point, and TTFT, against a running server."""
    rows = {}
    for kind, path, body in (("text", "/v1/text/generate", TEXT_BODY), ("image", "/v1/images/generate", IMAGE_BODY)):
        for c in clients:
            before = batch_counts(url)[kind]
            r = asyncio.run(load(url, path, body, c, seconds))
            r["batch"] = mean_batch(before, batch_counts(url)[kind])
            rows[f"{kind}/{c}"] = r
            print(f"  {kind:5s} clients={c:2d}  p50={r['p50']:8.1f} ms  p99={r['p99']:8.1f} ms  {r['rps']:7.1f} req/s  "
                  f"batch={r['batch']:5.1f}  (n={r['n']}, errors={r['err']})", flush=True)
    rows["ttft_ms"] = asyncio.run(ttft(url, streams))
    print(f"  text TTFT p50 {rows['ttft_ms']:.1f} ms", flush=True)
    return rows


def running_replicas(deployment: str) -> int:
    """RUNNING replicas of a deployment of the app now."""
    from ray import serve

    status = serve.status().applications["creagen"].deployments[deployment]
    return sum(n for state, n in status.replica_states.items() if getattr(state, "value", state) == "RUNNING")


def kill_check(url: str, seconds: float, library: str) -> dict:
    """2 replicas under 8-client text load from `library`; ray.kill one; failures and seconds to 2 again."""
    import ray

    def replica_names() -> dict[str, str]:
        return {a["name"]: a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA::creagen#ingress" in a["name"]}

    victim_name, namespace = sorted(replica_names().items())[0]
    victim = ray.get_actor(victim_name, namespace=namespace)

    async def main() -> dict:
        task = asyncio.create_task(load(url, "/v1/text/generate", {**TEXT_BODY, "max_new_tokens": 8}, 8, seconds, library))
        await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        ray.kill(victim, no_restart=True)
        back = None
        while back is None and time.perf_counter() - t0 < seconds + 60:
            await asyncio.sleep(0.5)
            names = replica_names()  # replaced: a new replica actor, and Serve counts 2 RUNNING
            if victim_name not in names and len(names) >= 2 and running_replicas("ingress") >= 2:
                back = time.perf_counter() - t0
        r = await task
        in_flight = sum(1 for t in r["failed_at"] if t < t0)  # sent before the kill: on the victim or queued
        return {"failed": r["err"], "in_flight": in_flight, "after": r["err"] - in_flight, "ok": r["n"],
                "replaced_s": back, "why": r["err_kinds"]}

    out = asyncio.run(main())
    print(f"  replica kill under {library} load: {out['failed']} failed {out['why']} of {out['failed'] + out['ok']} "
          f"({out['in_flight']} in flight at the kill, {out['after']} sent after it), "
          f"2 replicas again after {secs(out['replaced_s'])}", flush=True)
    return out


def run_variant(name: str, store: Path, args: argparse.Namespace) -> dict:
    """One variant, in this process: start the server, measure, stop."""
    topology, _ = VARIANTS[name]
    clients = [int(c) for c in args.clients.split(",")]
    from creagen_ray.serving.settings import ServeConfig

    cfg = ServeConfig(bundles=[str(store)])
    if topology is None:  # its own process, like a user's plain server: the clients here do not share its GIL
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "creagen_ray.serving.plain", str(store), "--port", str(port),
                                   "--threads", "1"], stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline() if server.stdout else ""
            if not line.startswith("plain server at"):
                raise RuntimeError(f"the plain server did not start (exit {server.poll()}): {line!r}")
            return measure(f"http://127.0.0.1:{port}", clients, args.seconds, args.streams)
        finally:
            server.terminate()
            server.wait(timeout=30)

    import ray
    from ray import serve

    from creagen_ray.serving.app import build_app

    one = {"autoscaling": {"min_replicas": 1, "max_replicas": 1}, "num_cpus": 0.5}
    cfg = ServeConfig(bundles=[str(store)], topology=topology, ingress=one if topology == "colocated" else {},
                      families={"rnn": one, "gan": one})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        t = time.perf_counter()
        serve.run(build_app(cfg), name="creagen", route_prefix="/")
        print(f"  serve.run {time.perf_counter() - t:.1f} s", flush=True)
        url = f"http://127.0.0.1:{port}"
        rows = measure(url, clients, args.seconds, args.streams)
        rows["dataplane"] = httpx.get(f"{url}/v1/stats", timeout=30).json().get("dataplane")
        if topology == "colocated" and args.kill_seconds > 0:
            two = {**one, "autoscaling": {"min_replicas": 2, "max_replicas": 2}}
            serve.run(build_app(cfg.model_copy(update={"ingress": cfg.ingress.model_validate(two)})), name="creagen",
                      route_prefix="/")
            rows["kill"] = {lib: kill_check(url, args.kill_seconds, lib) for lib in KILL_CLIENTS}
        return rows
    finally:
        serve.shutdown()
        ray.shutdown()


def fmt_table(results: dict, clients: list[int]) -> str:
    """A markdown table: one row per variant, ratios against plain."""
    plain = results.get("plain")
    head = ["variant"]
    for kind in ("text", "image"):
        head += [f"{kind} p50/p99 ms c={c}" for c in clients] + [f"{kind} req/s c={clients[-1]} (batch)"]
    head += ["TTFT p50 ms", "replica kill"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} |")
            continue
        cells = [f"{name} [{r.get('dataplane', '-')}]"]  # the data plane the replica reported
        for kind in ("text", "image"):
            cells += [f"{r[f'{kind}/{c}']['p50']:.0f} / {r[f'{kind}/{c}']['p99']:.0f}" for c in clients]
            top = r[f"{kind}/{clients[-1]}"]
            ratio = f" {top['rps'] / plain[f'{kind}/{clients[-1]}']['rps']:.2f}x" if plain and "error" not in plain else ""
            cells.append(f"{top['rps']:.1f}{ratio} ({top['batch']:.1f})")
        cells.append(f"{r['ttft_ms']:.1f}")
        kills = r.get("kill") or {}
        cells.append("; ".join(f"{lib}: {k['failed']} failed ({k['in_flight']} in flight, {k['after']} after) of "
                               f"{k['failed'] + k['ok']}, replaced in {secs(k['replaced_s'])}"
                               for lib, k in kills.items()) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run every variant in its own process and print one table with ratios against plain."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=4.0, help="per load point")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--streams", type=int, default=10, help="sequential streams for TTFT")
    p.add_argument("--kill-seconds", type=float, default=20.0, help="load window of the replica-kill check (0: skip)")
    p.add_argument("--variants", default="all", help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.variant:  # child: one variant, JSON to --out
        try:
            result = run_variant(args.variant, Path(args.store), args)
        except Exception as e:  # noqa: BLE001 - reported in the table
            import traceback

            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"}
        Path(args.out).write_text(json.dumps(result))
        return

    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    store = Path(tempfile.mkdtemp(prefix="creagen-bench-"))
    make_bundles(store)
    results: dict = {}
    for name in names:
        out = store / f"{name}.json"
        env = {**os.environ, **dataplane_env(VARIANTS[name][1])}
        print(f"== {name}  [{uptime()}]", flush=True)
        cmd = [sys.executable, __file__, "--variant", name, "--store", str(store), "--out", str(out),
               "--seconds", str(args.seconds), "--clients", args.clients, "--streams", str(args.streams),
               "--kill-seconds", str(args.kill_seconds)]
        child = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            child.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        results[name] = json.loads(out.read_text()) if out.exists() else {"error": f"exit {child.returncode}"}
    clients = [int(c) for c in args.clients.split(",")]
    print(f"\n[{uptime()}]\n" + fmt_table(results, clients))
    plain = results.get("plain", {})
    if "error" not in plain and plain:
        c = clients[-1]
        print("\ntargets (vs plain):")
        for name, r in results.items():
            if name == "plain" or "error" in r:
                continue
            print(f"  {name:17s} text c={c}: {r[f'text/{c}']['rps'] / plain[f'text/{c}']['rps']:.2f}x (>=3x), "
                  f"batch {r[f'text/{c}']['batch']:.1f} (>=8); image c={c}: "
                  f"{r[f'image/{c}']['rps'] / plain[f'image/{c}']['rps']:.2f}x (>=1x); p50 c=1 text "
                  f"{r['text/1']['p50'] / plain['text/1']['p50']:.2f}x (<=1.3x), image "
                  f"{r['image/1']['p50'] / plain['image/1']['p50']:.2f}x (<=1.8x); TTFT {r['ttft_ms']:.1f} ms (<=10)"
                  + "".join(f"; kill {lib} {k['failed']} failed (0)" for lib, k in (r.get("kill") or {}).items()))


if __name__ == "__main__":
    main()
