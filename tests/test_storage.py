"""Object storage against a real S3 endpoint (moto's server on loopback, IAM auth on).

Fast tests (no Ray): bundles written to and read from s3://, the node cache keyed by the
manifest's sha256, a bundle altered in the bucket refused (by `creagen generate` and by the store
scan), and a wrong / missing credential or bucket failing `creagen train` before any Ray work.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from _serve_bundles import TEXT, text_bundle
from creagen_ray import storage
from creagen_ray.bundle import BundleError, load_bundle
from creagen_ray.cli import main
from creagen_ray.config import TextRequest
from creagen_ray.serving.store import BundleStore, RejectedModel
from tests.procs import ray_head

ROOT = Path(__file__).resolve().parents[1]


def test_bundle_in_s3_roundtrip_cache_and_tamper(s3, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """write_bundle to s3:// -> load/generate by URI (cached by manifest sha256) -> serve scan -> tamper refused."""
    uri = text_bundle(s3.uri("unit/runs/run-a/bundle"), steps=5)  # what train writes: <storage>/<run>/bundle
    assert uri == s3.uri("unit/runs/run-a/bundle")
    keys = s3.keys("unit/runs/run-a/bundle/")
    assert {k.rsplit("/", 1)[1] for k in keys} >= {"manifest.json", "weights.safetensors", "config.yaml", "spec.json"}

    bundle = load_bundle(uri)  # fetched into $CREAGEN_CACHE_DIR/bundles/<sha256 of manifest.json>
    digest = storage.manifest_digest(uri)
    assert bundle.path == tmp_path / "cache" / "bundles" / digest
    assert set(bundle.generate(TextRequest(prompt="the ", max_new_tokens=10, seed=1))[0]) <= set(TEXT)

    assert main(["generate", uri, "--prompt", "the ", "--max-new-tokens", "12", "--seed", "2", "--n", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("the ") and len(out) == 16

    store = BundleStore.scan([s3.uri("unit/runs")])  # a storage folder of runs: served under run names
    assert list(store.models) == ["run-a"]
    info = store.get("run-a")
    assert info.path == uri and info.digest == digest

    # tamper: overwrite the weights in the bucket, leave the manifest as it was
    client = s3.client()
    wkey = "unit/runs/run-a/bundle/weights.safetensors"
    body = bytearray(client.get_object(Bucket=s3.bucket, Key=wkey)["Body"].read())
    body[-1] ^= 0xFF
    client.put_object(Bucket=s3.bucket, Key=wkey, Body=bytes(body))

    # a node that already verified this manifest keeps its verified copy; a fresh node refuses
    assert load_bundle(uri).path == bundle.path
    fresh = tmp_path / "fresh-node-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CREAGEN_CACHE_DIR", str(fresh))
        with pytest.raises(BundleError, match="weights.safetensors does not match its sha256"):
            load_bundle(uri)
        assert main(["generate", uri, "--prompt", "the "]) == 1
        assert "does not match its sha256" in capsys.readouterr().err
        store = BundleStore.scan([s3.uri("unit/runs")])
        assert store.models == {}
        with pytest.raises(RejectedModel, match="weights.safetensors"):
            store.get("run-a")
        assert not [p for p in (fresh / "bundles").iterdir() if not p.name.startswith(".")]  # nothing half-cached

    # a manifest rewritten consistently after the scan is refused by the pinned digest
    mkey = "unit/runs/run-a/bundle/manifest.json"
    manifest = json.loads(client.get_object(Bucket=s3.bucket, Key=mkey)["Body"].read())
    manifest["files"]["weights.safetensors"] = storage.hashlib.sha256(bytes(body)).hexdigest()
    client.put_object(Bucket=s3.bucket, Key=mkey, Body=json.dumps(manifest).encode())
    with pytest.raises(BundleError, match="changed in storage since it was verified"):
        storage.fetch_bundle(uri, digest)


@pytest.mark.parametrize(
    "case, why",
    [
        ("no bucket", "the bucket does not exist"),
        ("wrong secret", "access denied"),
        ("no credentials", "no AWS credentials"),
    ],
)
def test_bad_storage_fails_before_training(
    case: str, why: str, s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """`creagen train` with an unusable storage_path exits 2 naming the URI, before Ray or data work."""
    import ray

    storage_path = s3.uri("bad-case/runs")
    if case == "no bucket":
        storage_path = "s3://no-such-bucket/runs"
    elif case == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials either
    was_up = ray.is_initialized()
    code = main(["train", str(ROOT / "jobs/configs/demo-rnn.yaml"), "--set", f"train.storage_path={storage_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert storage_path in err and why in err and "AWS_ACCESS_KEY_ID" in err
    assert ray.is_initialized() == was_up  # failed before joining Ray
    monkeypatch.undo()
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    assert s3.keys("bad-case/") == []  # nothing written


# ----------------------------------------------------------------------------------------------
# end to end, as a user runs it: every command a subprocess in an empty working directory


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def creagen(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run `creagen ARGS` (this venv's console script) and capture its output."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("creagen")), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def upload_png_folder(s3, prefix: str, per_class: int = 6) -> None:
    """Two class folders of 12x12 grayscale PNGs (dark / bright squares) into the bucket."""
    from PIL import Image

    client = s3.client()
    for label, value in (("dark", 40), ("bright", 220)):
        for i in range(per_class):
            buf = io.BytesIO()
            Image.new("L", (12, 12), value + i % 30).save(buf, format="PNG")
            client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{label}/{i:03d}.png", Body=buf.getvalue())


@pytest.mark.slow
def test_prepare_train_serve_generate_all_in_s3(s3_server, tmp_path: Path) -> None:
    """prepare from s3:// (text, PNG folder) -> train with storage_path s3://bucket/runs -> bundle and
    checkpoints in the bucket, nothing on local disk -> serve s3://bucket/runs -> generate over HTTP;
    beside it, `creagen tune` with storage_path s3://: Tune's experiment, the trial runs, results
    table, best.yaml and best bundle all land in the bucket, nothing in the working directory. One
    trial is enough for where things land (ranking and several trials: tests/test_tuning.py). That tune
    command names the shipped jobs/configs/demo-tune.yaml by a relative path from another directory: it is
    also that config's shipped-config run (tests/test_shipped_configs.py ran a second search of it before,
    one more Train run, ~25 CPU-s)."""
    s3 = s3_server
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {
        **os.environ, **s3.env,
        "CREAGEN_CACHE_DIR": str(tmp_path / "cache"),
        "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_raylet_start_wait_time_s": "120",  # a loaded 2-core box: train's node start timed out at 30 s (load 34)
    }
    env.pop("RAY_ADDRESS", None)  # every command joins the test's head through its TMPDIR
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="e2e/corpus/a.txt", Body=(TEXT * 20).encode())
    upload_png_folder(s3, "e2e/pngs", per_class=150)  # 300 files: the header checks span two tasks
    good = client.get_object(Bucket=s3.bucket, Key="e2e/pngs/bright/000.png")["Body"].read()
    client.put_object(Bucket=s3.bucket, Key="e2e/pngs/bright/137.png", Body=good[:40])  # one truncated file
    runs, bad_runs = s3.uri("e2e/runs"), s3.uri("e2e/bad-runs")

    # three independent threads of commands at once (each mostly waits on Ray), all joining one
    # `ray start --head` (their TMPDIR, so they find it as after `ray start`; the S3 credentials in the
    # head's environment, as a node's IAM role would give them), and serve after them, which saves four
    # Ray start-ups of a 2-core machine's CPU. A private Ray's own start-up is not what this test is
    # about: the shipped configs and tests/test_shutdown.py run train and serve that way (the latter
    # also checks serve's default data plane on its own Ray). The threads:
    # an image folder in the bucket with one corrupt file: named, exit 2, nothing written under its
    # storage path; then with data.skip_bad_files: Parquet shards in the bucket, the manifest counts and
    # names it; beside them the tune command (its own empty working directory) ...
    tmp = tempfile.mkdtemp(prefix="crs", dir="/tmp")  # short: Ray's socket paths live under it
    t_start = time.monotonic()
    phases: dict[str, float] = {}
    tune_cwd = tmp_path / "tune-cwd"
    tune_cwd.mkdir()
    tune_runs = s3.uri("tune-e2e/runs")

    def prepare(storage_path: str, *more: str) -> list[str]:
        return ["prepare", str(ROOT / "jobs/configs/demo-gan.yaml"), "--set", f"data.source={s3.uri('e2e/pngs')}",
                "--set", "data.kind=png", "--set", "data.image_size=12", "--set", "data.channels=1",
                "--set", f"train.storage_path={storage_path}", *more]

    head_up = threading.Event()

    def wait_for_head() -> None:
        head_up.wait()
        if "head up" not in phases:
            raise RuntimeError("ray start --head did not come up")

    def prepare_bad_then_skip() -> tuple[subprocess.CompletedProcess, list[str], subprocess.CompletedProcess]:
        wait_for_head()
        e = {**env, "TMPDIR": tmp}
        bad = creagen(prepare(bad_runs), e, cwd)
        written = s3.keys("e2e/bad-runs/data/")  # shards, temp folder (.pngs-*.tmp-*)
        skip = creagen(prepare(runs, "--set", "data.skip_bad_files=true"), e, cwd)
        phases["prepares"] = time.monotonic() - t_start
        return bad, written, skip

    def tune_command() -> subprocess.CompletedProcess:
        wait_for_head()
        r = creagen(
            ["tune", os.path.relpath(ROOT / "jobs/configs/demo-tune.yaml", tune_cwd), "--set", f"train.storage_path={tune_runs}",
             "--set", "tune.num_samples=1", "--set", "train.steps=10", "--set", "train.eval_every=10",
             "--set", "train.checkpoint_every=10", "--set", "data.max_items=20000"],
            {**env, "TMPDIR": tmp, "CREAGEN_CACHE_DIR": str(tmp_path / "tune-cache")}, tune_cwd, 900,
        )
        phases["tune"] = time.monotonic() - t_start
        return r

    head = contextlib.ExitStack()
    pool = ThreadPoolExecutor(max_workers=4)
    side = pool.submit(prepare_bad_then_skip)
    tune_run = pool.submit(tune_command)

    def train_command() -> subprocess.CompletedProcess:
        wait_for_head()
        return creagen(
            ["train", str(ROOT / "jobs/configs/demo-rnn.yaml"), "--set", f"data.source={s3.uri('e2e/corpus/a.txt')}",
             "--set", "data.seq_len=32", "--set", f"train.storage_path={runs}", "--set", "train.run_name=s3run",
             "--set", "train.num_workers=1",
             "--set", "train.steps=6", "--set", "train.eval_every=3", "--set", "train.checkpoint_every=3",
             "--set", "train.batch_size=16", "--set", "model.hidden_size=32", "--set", "model.embed_dim=16"],
            {**env, "TMPDIR": tmp}, cwd,
        )

    # ... and text from the bucket, trained on one Train worker, everything written to the bucket (2 DDP
    # workers with their checkpoints and data in the bucket, on two nodes: tests/test_multinode.py)
    train_run = pool.submit(train_command)
    server = None
    try:
        head.enter_context(ray_head(Path(tmp), {**env, "CREAGEN_CACHE_DIR": str(tmp_path / "head-cache")}))
        phases["head up"] = time.monotonic() - t_start
        head_up.set()
        r = train_run.result()
        phases["train"] = time.monotonic() - t_start
        assert r.returncode == 0, r.stderr[-3000:]
        bundle_uri = s3.uri("e2e/runs/s3run/bundle")
        assert f"bundle: {bundle_uri}" in r.stdout
        keys = s3.keys("e2e/runs/s3run/")
        assert "e2e/runs/s3run/bundle/manifest.json" in keys and "e2e/runs/s3run/bundle/weights.safetensors" in keys
        assert any("/checkpoint_" in k and k.endswith("state.pt") for k in keys)
        assert "e2e/runs/s3run/checkpoint_manager_snapshot.json" in keys

        # serve the storage folder of runs (on the head: the replicas fetch with the node's credentials):
        # the run is served under its name, fetched by the replicas;
        # meanwhile `creagen generate` fetches the bundle by its URI
        port = free_port()
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("creagen")), "serve", runs, "--port", str(port)],
            cwd=cwd, env={**env, "TMPDIR": tmp}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        by_uri = pool.submit(creagen, ["generate", bundle_uri, "--prompt", "the ", "--max-new-tokens", "20", "--n", "1"],
                             env, cwd, 120)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 900  # Ray start-up alone took over 5 min on this machine under load
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                pytest.fail(f"creagen serve exited {server.returncode}:\n{server.stdout.read()[-4000:]}")
            assert time.monotonic() < deadline, "creagen serve did not come up"
            time.sleep(0.5)
        phases["serve up"] = time.monotonic() - t_start
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
        assert [m["id"] for m in models] == ["s3run"]
        r = creagen(["generate", "--url", url, "--model", "s3run", "--prompt", "the ", "--max-new-tokens", "20",
                     "--n", "1", "--seed", "1"], env, cwd, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("the ") and set(r.stdout.strip()) <= set(TEXT)
        r = by_uri.result()
        assert r.returncode == 0 and r.stdout.startswith("the "), r.stderr

        bad, written, r = side.result()
        assert bad.returncode == 2 and "bright/137.png" in bad.stderr and "data.skip_bad_files" in bad.stderr, (
            f"rc={bad.returncode}", bad.stderr[-3000:], bad.stdout[-1000:])
        assert written == []
        assert r.returncode == 0, r.stderr[-3000:]
        assert "skipped 1 unreadable file(s)" in r.stdout and "bright/137.png" in r.stdout, r.stdout
        phases["all checked"] = time.monotonic() - t_start
    finally:
        head_up.set()  # a failed head start: the side commands fail at once rather than wait forever
        if server is not None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        pool.shutdown(wait=True)
        head.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nseconds from the start:", {k: round(v) for k, v in phases.items()})
    data_keys = s3.keys("e2e/runs/data/pngs-")  # the PNG folder's shards (the text's: data/a-...)
    assert any(k.endswith(".parquet") for k in data_keys)
    mkey = next(k for k in data_keys if k.endswith("manifest.json"))
    manifest = json.loads(client.get_object(Bucket=s3.bucket, Key=mkey)["Body"].read())
    assert manifest["skipped_files"]["count"] == 1 and "bright/137.png" in manifest["skipped_files"]["files"][0]
    assert sum(v["rows"] for v in manifest["splits"].values()) == 299
    assert list(cwd.iterdir()) == []  # no ./runs, no data folder, nothing else on local disk

    # the tune command: everything in the bucket, nothing in its working directory
    tune = tune_run.result()
    assert tune.returncode == 0, tune.stderr[-3000:]
    exp = "tune-e2e/runs/tune/demo-tune/"
    keys = s3.keys(exp)
    for name in ("results.parquet", "results.csv", "best.yaml", "best_bundle/manifest.json"):
        assert exp + name in keys, (name, keys[:20])
    assert any(k.startswith(exp + "trial_runs/") and k.endswith("state.pt") for k in keys)
    assert any(k.rsplit("/", 1)[-1].startswith("experiment_state-") for k in keys)
    assert f"bundle: {s3.uri(exp + 'best_bundle')}" in tune.stdout
    assert list(tune_cwd.iterdir()) == []
    with pytest.MonkeyPatch.context() as mp:  # this process reads the bucket with the test credentials
        for k, v in s3.env.items():
            mp.setenv(k, v)
        mp.setenv("CREAGEN_CACHE_DIR", str(tmp_path / "cache-here"))
        assert load_bundle(s3.uri(exp + "best_bundle")).name == "rnn"


@pytest.mark.parametrize(
    "case, why",
    [
        ("missing bucket", "the bucket 'no-such-bucket' does not exist"),
        ("wrong secret", "access denied: the credentials are wrong"),
        ("empty prefix", "no objects under that prefix"),
    ],
)
def test_prepare_bad_s3_source_names_it_and_writes_nothing(
    case: str, why: str, s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """`creagen prepare` from an unreadable bucket or an empty prefix: exit 2, one line naming the URI, and
    nothing written under the storage path in the bucket (these fail while listing, before Ray starts)."""
    source = {"missing bucket": "s3://no-such-bucket/corpus/", "wrong secret": s3.uri("badsrc/corpus/"),
              "empty prefix": s3.uri("badsrc/nothing-here/")}[case]
    s3.client().put_object(Bucket=s3.bucket, Key="badsrc/corpus/a.txt", Body=(TEXT * 20).encode())
    if case == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"data: {{source: '{source}'}}\ntrain: {{storage_path: '{s3.uri('badsrc/runs')}'}}\n", encoding="utf-8")
    code = main(["prepare", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert source.rstrip("/") in err and why in err and "Traceback" not in err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.env["AWS_SECRET_ACCESS_KEY"])
    assert s3.keys("badsrc/") == ["badsrc/corpus/a.txt"]  # nothing under badsrc/runs
