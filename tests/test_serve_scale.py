"""Serving at scale, default (colocated) topology, one shared app on loopback, real HTTP.

Mechanisms, not timings: adaptive batching (none when idle, larger than 1 under concurrency, `n`
counted), 503 + Retry-After past the queue bound, 504 past the deadline, a disconnect stops the
generation, cost caps (422 naming both fields), and the app started the way `serve run
serve/config.yaml`, `serve build` and `serve deploy` start it (the `serve` CLI against this
session's cluster, from another directory). The fast tests at the top need no Ray.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

import tests.toy_family  # noqa: F401  (registers "toy" before the session's Ray starts: its replicas serve it)
from _serve_bundles import TEXT, image_bundle, toy_bundle
from creagen_ray.bundle import write_bundle
from creagen_ray.config import DataConfig, DataSpec, ExperimentConfig
from creagen_ray.families import build_family
from creagen_ray.serving.settings import ServeConfig
from creagen_ray.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
SERVE_CLI = Path(sys.executable).parent / "serve"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_text_bundle(out: Path) -> Path:
    """An untrained GRU 2x512 (slow enough per token that a 2048-token stream outlives a disconnect)."""
    tok = CharTokenizer.fit("abcdefghijklmnopqrstuvwxyz .,")
    cfg = ExperimentConfig(data=DataConfig(modality="text"), model={"family": "rnn", "hidden_size": 512, "num_layers": 2})
    return write_bundle(build_family(cfg, DataSpec(modality="text", vocab_size=tok.vocab_size), tokenizer=tok), out)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """big (text, two ids so the deadline test has its own queue), gan (16x16 images) and toy (the family
    registered from tests/toy_family.py, served here for tests/test_family_seam.py)."""
    root = tmp_path_factory.mktemp("scale-store")
    big_text_bundle(root / "big")
    shutil.copytree(root / "big", root / "big2")
    image_bundle(root / "gan", "gan", steps=2)
    toy_bundle(root / "toy", steps=40)
    return root


# -- no Ray -----------------------------------------------------------------------------------------


def test_cli_string_args_and_builder(store: Path) -> None:
    """`serve run ...:app_builder bundles=a,b` hands the builder strings; they become the list."""
    from ray.serve import Application

    from creagen_ray.serving.app import app_builder

    assert ServeConfig.model_validate({"bundles": f"{store}/big, {store}/gan"}).bundles == [f"{store}/big", f"{store}/gan"]
    assert isinstance(app_builder({"bundles": str(store)}), Application)
    assert isinstance(app_builder({"bundles": str(store), "topology": "split"}), Application)


def test_dataplane_names_their_flags(capsys: pytest.CaptureFixture) -> None:
    """Each data plane's flags are what a replica reports back; a private haproxy runtime gets free stats and
    metrics ports unless the operator set them; `creagen serve --dataplane` takes only those names."""
    from creagen_ray.cli import build_parser
    from creagen_ray.serving.dataplane import FLAGS, HAPROXY_SIDE_PORTS, current_dataplane, dataplane_env, private_dataplane_env

    assert {name: current_dataplane(dataplane_env(name)) for name in FLAGS} == {name: name for name in FLAGS}
    assert current_dataplane({"RAY_SERVE_ENABLE_HA_PROXY": "1"}) == "python"  # HAProxy alone is not a creagen data plane
    assert current_dataplane({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}) == "python"
    mine = private_dataplane_env("haproxy", environ={})
    assert current_dataplane(mine) == "haproxy"
    ports = [int(mine[k]) for k in HAPROXY_SIDE_PORTS]
    assert len(set(ports)) == 2 and not {8404, 9101} & set(ports), ports  # not Ray's fixed ones
    assert private_dataplane_env("haproxy", environ={HAPROXY_SIDE_PORTS[0]: "9000"}).get(HAPROXY_SIDE_PORTS[0]) is None
    assert private_dataplane_env("throughput", environ={}) == dataplane_env("throughput")
    parser = build_parser()
    assert parser.parse_args(["serve", "b"]).dataplane is None  # haproxy (dataplane.DEFAULT)
    assert parser.parse_args(["serve", "b", "--dataplane", "haproxy"]).dataplane == "haproxy"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "b", "--dataplane", "grpc"])
    assert "invalid choice: 'grpc'" in capsys.readouterr().err


def test_default_deployments_fit_the_cluster() -> None:
    """Unset replica bounds / CPU shares fit the CPUs: every replica of every deployment can be placed."""
    from creagen_ray.serving.app import fit_to_cluster

    cfg = ServeConfig(bundles=["x"])
    for cpus in (2.0, 4.0, 16.0):
        colocated = fit_to_cluster(cfg.ingress, 0.9, cpus, default_cpus=1.0)
        assert colocated["autoscaling_config"]["max_replicas"] * colocated["ray_actor_options"]["num_cpus"] <= cpus
        split = [fit_to_cluster(cfg.ingress, 0.1, cpus, default_cpus=0.1)]
        split += [fit_to_cluster(cfg.family(f), 0.8 / 3, cpus, default_cpus=0.5) for f in ("rnn", "vae", "gan")]
        assert sum(o["autoscaling_config"]["max_replicas"] * o["ray_actor_options"]["num_cpus"] for o in split) <= cpus
        assert all(o["max_queued_requests"] > 0 for o in split)  # bounded by default
    assert fit_to_cluster(cfg.ingress, 0.9, 16.0, 1.0)["autoscaling_config"]["max_replicas"] == 14


def test_adaptive_batcher_in_process() -> None:
    """The batcher itself: idle requests run alone without waiting; queued ones gather; n counts."""
    from creagen_ray.serving.batching import Batcher
    from creagen_ray.serving.settings import BatchSettings

    async def main() -> Batcher:
        async def run(key: str, requests: list[int]) -> list[int]:
            await asyncio.sleep(0.02)
            return [r * 10 for r in requests]

        b = Batcher(run, lambda key: BatchSettings(max_batch_size=8, batch_wait_timeout_s=0.01))
        assert [await b.submit("k", i) for i in range(3)] == [0, 10, 20]
        assert b.stats["k"].sizes == {1: 3} and b.stats["k"].waited == 0
        assert await asyncio.gather(*(b.submit("k", i, cost=3) for i in range(6))) == [i * 10 for i in range(6)]
        assert max(b.stats["k"].costs) <= 8 and max(b.stats["k"].sizes) == 2  # cost 3: two fit in 8
        assert await asyncio.gather(b.submit("k", 1, cost=20), b.submit("k", 2)) == [10, 20]  # larger than a batch
        return b

    assert 20 in asyncio.run(main()).stats["k"].costs


def test_batcher_keeps_closed_loop_clients_in_one_cohort() -> None:
    """Right after a multi-request batch, the first returning request waits for the others; once idle, none waits."""
    from creagen_ray.serving.batching import Batcher
    from creagen_ray.serving.settings import BatchSettings

    async def main() -> tuple[dict, dict, int, int]:
        async def run(key: str, requests: list[int]) -> list[int]:
            await asyncio.sleep(0.01)
            return [r * 10 for r in requests]

        async def later(i: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return await b.submit("k", i)

        b = Batcher(run, lambda key: BatchSettings(max_batch_size=8, batch_wait_timeout_s=0.3))
        assert await asyncio.gather(*(b.submit("k", i) for i in range(4))) == [0, 10, 20, 30]  # one batch of 4
        after_load = dict(b.stats["k"].sizes)
        # the clients come back 0 and 30 ms after their answers: one batch, not two of one
        assert await asyncio.gather(later(1, 0.0), later(2, 0.03)) == [10, 20]
        returned = dict(b.stats["k"].sizes)
        waited = b.stats["k"].waited
        await asyncio.sleep(0.35)  # longer than the wait: idle again
        assert await b.submit("k", 5) == 50
        return after_load, returned, waited, b.stats["k"].waited

    after_load, returned, waited, idle_waited = asyncio.run(main())
    assert after_load == {4: 1}
    assert returned == {4: 1, 2: 1}, returned
    assert idle_waited == waited  # the lone request after the pause ran without waiting


# -- one colocated app ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(ray_cluster, store: Path):
    """The default (colocated) app with small bounds: 6 ongoing + 8 queued (Serve counts a request as queued until its router assigns it), one replica."""
    from ray import serve

    from creagen_ray.serving.app import build_app

    cfg = ServeConfig(
        bundles=[str(store)],
        max_request_pixels=16 * 16 * 16,
        retry_after_s=2,
        ingress={"autoscaling": {"min_replicas": 1, "max_replicas": 1}, "max_ongoing_requests": 6,
                 "max_queued_requests": 8, "num_cpus": 0.5},
        families={f: {"batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}} for f in ("rnn", "gan")},
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="creagen", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.mark.slow
def test_family_registered_from_a_test_module_serves(url: str) -> None:
    """The family seam (tests/test_family_seam.py) through Ray Serve: the toy bundle, in the same app as the
    package's families, answers a seeded request of in-vocabulary text (its own Serve start cost about 9 CPU-s)."""
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=60).json()["models"]}
    assert models["toy"]["family"] == "toy", models.get("toy")
    body = {"model": "toy", "prompt": "d", "max_new_tokens": 12, "seed": 3}
    r = httpx.post(f"{url}/v1/text/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    text = r.json()["texts"][0]
    assert len(text) == 12 and set(text) <= set(TEXT)
    assert httpx.post(f"{url}/v1/text/generate", json=body, timeout=60).json()["texts"][0] == text  # seeded


def rnn_stats(url: str) -> dict:
    return httpx.get(f"{url}/v1/stats", timeout=60).json()["families"]["rnn"]


def delta(after: dict, before: dict) -> dict[int, int]:
    return {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


@pytest.mark.slow
def test_batches_adaptive_and_n_counts(url: str) -> None:
    before = rnn_stats(url)
    for i in range(4):  # idle: one at a time, never a wait
        r = httpx.post(f"{url}/v1/text/generate", json={"model": "big", "max_new_tokens": 5, "seed": i}, timeout=60)
        assert r.status_code == 200, r.text
    idle = rnn_stats(url)
    assert delta(idle["batch_sizes"]["text"], before["batch_sizes"]["text"]) == {1: 4}
    assert idle["waited"] == before["waited"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            body = {"model": "big", "max_new_tokens": 40, "n": 3}
            return await asyncio.gather(*(c.post("/v1/text/generate", json={**body, "seed": i}) for i in range(6)))

    rs = asyncio.run(burst())
    assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
    assert all(len(r.json()["texts"]) == 3 for r in rs)
    loaded = rnn_stats(url)
    sizes = delta(loaded["batch_sizes"]["text"], idle["batch_sizes"]["text"])
    costs = delta(loaded["batch_costs"]["text"], idle["batch_costs"]["text"])
    assert max(sizes) == 2, sizes  # concurrent requests share a batch; n=3 each: two fit in 8, three do not
    assert max(costs) <= 8 and 6 in costs, costs
    assert loaded["waited"] > idle["waited"]


@pytest.mark.slow
def test_queue_bound_gives_503_with_retry_after(url: str) -> None:
    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            body = {"model": "big", "max_new_tokens": 1000}  # long enough that all 40 arrive while 6 run
            return await asyncio.gather(*(c.post("/v1/text/generate", json=body) for _ in range(40)))

    rs = asyncio.run(flood())
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 10, codes  # past 6 ongoing + 8 queued (slack: arrivals spread over a batch)
    assert codes.count(200) >= 6, codes
    assert all(r.headers.get("retry-after") == "2" for r in rs if r.status_code == 503)
    assert httpx.post(f"{url}/v1/text/generate", json={"model": "big", "max_new_tokens": 5}, timeout=60).status_code == 200


@pytest.mark.slow
def test_cost_caps_name_both_fields(url: str) -> None:
    cases = [
        ("/v1/text/generate", {"model": "big", "n": 8, "max_new_tokens": 2048}, {"n", "max_new_tokens"}),
        ("/v1/images/generate", {"model": "gan", "n": 17}, {"n", "model"}),
        ("/v1/images/interpolate", {"model": "gan", "steps": 20}, {"steps", "model"}),
    ]
    for path, body, fields in cases:
        r = httpx.post(f"{url}{path}", json=body, timeout=60)
        assert r.status_code == 422, r.text
        assert {e["loc"][-1] for e in r.json()["detail"]} == fields, r.text
    assert httpx.post(f"{url}/v1/images/generate", json={"model": "gan", "n": 16}, timeout=60).status_code == 200


@pytest.mark.slow
def test_disconnect_stops_generation(url: str) -> None:
    before = rnn_stats(url)["tokens_streamed"]
    body = {"model": "big", "max_new_tokens": 2048, "stream": True, "seed": 1}
    with httpx.Client(base_url=url, timeout=60) as c:
        with c.stream("POST", "/v1/text/generate", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # first piece, then hang up
    time.sleep(1.0)
    at_1s = rnn_stats(url)["tokens_streamed"]
    time.sleep(2.0)
    at_3s = rnn_stats(url)["tokens_streamed"]
    assert at_1s - before < 2048, (before, at_1s)  # it did not run to the end
    assert at_3s - at_1s <= 2, (at_1s, at_3s)  # and nothing more after the disconnect


@pytest.mark.slow
def test_deadline_gives_504_and_service_goes_on(url: str) -> None:
    """The config's deadline (60 s) or a shorter X-Request-Timeout; 4 x 2048 tokens take seconds even when idle."""
    body = {"model": "big2", "n": 4, "max_new_tokens": 2048}
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/text/generate", json=body, headers={"X-Request-Timeout": "0.5"}, timeout=120)
    assert r.status_code == 504, r.text
    assert "0.5 s deadline" in r.json()["detail"]
    assert time.perf_counter() - start < 30  # not the ~20 s the work takes on this loaded machine
    stream = {**body, "n": 1, "stream": True}
    r = httpx.post(f"{url}/v1/text/generate", json=stream, headers={"X-Request-Timeout": "0.5"}, timeout=120)
    assert r.status_code == 200 and '"status": 504' in r.text.splitlines()[-2], r.text[-300:]  # in-band error event
    assert httpx.post(f"{url}/v1/text/generate", json=body, headers={"X-Request-Timeout": "soon"}).status_code == 400
    assert httpx.post(f"{url}/v1/text/generate", json={"model": "big", "max_new_tokens": 5}, timeout=60).status_code == 200


def serve_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run the `serve` CLI as a user would (another working directory), failing on a non-zero exit."""
    r = subprocess.run([str(SERVE_CLI), *args], cwd=cwd, env={**os.environ, **(env or {})},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def wait_generating(url: str, model: str = "big", timeout: float = 240) -> httpx.Response:
    """Poll until the freshly deployed app answers a generate request."""
    end = time.monotonic() + timeout
    while True:
        try:
            r = httpx.post(f"{url}/v1/text/generate", json={"model": model, "max_new_tokens": 8, "seed": 3}, timeout=60)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        assert time.monotonic() < end, "the deployed app never answered"
        time.sleep(0.25)  # a refused connection costs nothing: a shorter wait ends the test sooner


@pytest.mark.slow
def test_config_yaml_and_serve_build_deploy_from_elsewhere(url: str, store: Path, tmp_path: Path) -> None:
    """serve/config.yaml (bundles edited) and a `serve build` output, deployed by the serve CLI from /tmp."""
    import ray

    address = ray.get_runtime_context().gcs_address
    port = int(url.rsplit(":", 1)[1])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert config["applications"][0]["import_path"].startswith("creagen_ray.")  # the installed package
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["bundles"] = [str(store)]
    (elsewhere / "config.yaml").write_text(yaml.safe_dump(config))
    serve_cli(["run", "--address", address, "--non-blocking", "config.yaml"], cwd=elsewhere)
    texts = wait_generating(url).json()["texts"]
    assert len(texts) == 1 and len(texts[0]) == 8

    serve_cli(["build", "creagen_ray.serving.app:app", "-o", "built.yaml"], cwd=elsewhere, env={"CREAGEN_BUNDLES": str(store)})
    built = yaml.safe_load((elsewhere / "built.yaml").read_text())
    built["http_options"] = {"host": "127.0.0.1", "port": port}
    app = built["applications"][0]
    app["runtime_env"] = {"env_vars": {"CREAGEN_BUNDLES": str(store)}}  # where the cluster finds the bundles
    assert [d["name"] for d in app["deployments"]] == ["ingress"]
    (elsewhere / "built.yaml").write_text(yaml.safe_dump(built))
    serve_cli(["run", "--address", address, "--non-blocking", "built.yaml"], cwd=elsewhere)
    from ray import serve

    end = time.monotonic() + 240
    while "app1" not in serve.status().applications or serve.status().applications["app1"].status != "RUNNING":
        assert time.monotonic() < end, serve.status()
        time.sleep(0.25)
    assert "creagen" not in serve.status().applications  # the declarative config replaced it
    assert wait_generating(url).status_code == 200
