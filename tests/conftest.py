"""Shared fixtures: one real local Ray cluster per test session, and the ../shared data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CREAGEN_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Set before Ray starts so every worker process sees them.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster only
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Train V2's controller takes each worker's report (the worker blocks until it does) and sees a run end
# at its polls, every 2 s by default: most of a tiny test run's reports wait on it (0.5 s here)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Every Ray here runs on this one machine, which is never preempted: Ray Train's preemption watcher would be
# one more actor process (about 2 s of CPU) per worker group for nothing. creagen's own private runtimes turn
# it off themselves (console.private_runtime_env); this covers the clusters tests start (`ray start`, Cluster).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# ray.data.read_parquet lists a dataset's files on a pool of FooterReader actors (up to 32 asked for; on 2 CPUs two
# start per read, ~2.6 CPU-s each, killed after the listing): the few shards of a test dataset need one.
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
# Ray's log monitor (in every Ray a test or a command it runs starts with ray.init: the session cluster lives through
# the whole suite) globs the session's log folder for new worker files on every 0.1 s pass while it holds fewer than
# this many files; at 0 it globs every 0.5 s (LOG_NAME_UPDATE_INTERVAL_S) and still reads the open files every pass.
# Measured under load (proccpu.py, tests/test_training.py): its CPU 1.73 s -> 1.16 s in a 2-minute module.
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# A process joining Ray waits up to 2 minutes for its node's registration in the GCS (RAY_raylet_start_wait_time_s,
# 30 s by default; the commands the tests run set it too): the session cluster starts beside test_multinode's run
# (multinode_run below), and on a loaded 2-core machine 30 s ran out before
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray runtime (2 CPUs, no dashboard) shared by the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # a new cluster even when someone's `ray start` cluster runs on this machine
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=512 * 2**20,
            log_to_driver=False,
            # workers inherit PYTHONPATH (set above) from this process, as every Ray process it starts does: a
            # job runtime_env would route each worker through Ray's setup_worker (about 0.5 s of CPU more)
        )
    yield ray
    ray.shutdown()


def _shared(rel: str) -> Path:
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"{p} is absent: this test needs the read-only ../shared/data corpus")
    return p


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """../shared/data/tinyshakespeare/input.txt (skips when absent)."""
    return _shared("tinyshakespeare/input.txt")


@pytest.fixture(scope="session")
def mnist_paths() -> tuple[Path, Path]:
    """The MNIST t10k images and labels idx files (skips when absent)."""
    return _shared("mnist/t10k-images-idx3-ubyte.gz"), _shared("mnist/t10k-labels-idx1-ubyte.gz")


# ----------------------------------------------------------------------------------------------
# a real S3 endpoint: moto's standalone server on a loopback port, with IAM authentication on


class S3Endpoint:
    """A running moto S3 server: its URL, a bucket, and the environment a client needs."""

    def __init__(self, url: str, bucket: str, access_key: str, secret_key: str) -> None:
        self.url, self.bucket = url, bucket
        self.env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookup on a test machine
        }

    def uri(self, *parts: str) -> str:
        """s3://<bucket>/<parts...>."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def client(self):
        """A boto3 S3 client with the test credentials (to inspect or tamper with objects)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix` in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_server():
    """moto_server on 127.0.0.1:<free port>; an IAM user allowed s3:* and a bucket, then auth is enforced.

    Requests with a wrong or missing key are refused from then on, as real S3 does.
    """
    import json
    import socket
    import subprocess
    import time
    import urllib.request

    pytest.importorskip("moto", reason="moto[server] is in the [test] extras")
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on {url}") from None
                time.sleep(0.2)
        setup = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="creagen")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="creagen", PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="creagen")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket="creagen")
        req = urllib.request.Request(
            f"{url}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(req, timeout=10).close()  # from now on every request is authenticated
        yield S3Endpoint(url, "creagen", key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def s3(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Endpoint:
    """The S3 endpoint with its credentials in this process's environment (and a private bundle cache)."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CREAGEN_CACHE_DIR", str(tmp_path / "cache"))
    return s3_server


# ----------------------------------------------------------------------------------------------
# tests/test_multinode.py's run, started with the session


class BackgroundRun:
    """A command started in its own process group, its output in files; the test that checks it waits for it."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], out_dir: Path, timeout_s: float) -> None:
        import subprocess
        import time

        self.cwd, self.deadline = cwd, time.monotonic() + timeout_s
        self.stdout, self.stderr = out_dir / "stdout.txt", out_dir / "stderr.txt"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)

    def result(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once it ended; fails the test past the deadline."""
        import subprocess
        import time

        try:
            rc = self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.proc.args[:2]} ran past its deadline:\n{self.stderr.read_text()[-4000:]}")
        return rc, self.stdout.read_text(), self.stderr.read_text()

    def stop(self) -> None:
        """Stop it and everything it started (its process group), if it still runs."""
        from tests.procs import stop_group

        if self.proc.poll() is None:
            stop_group(self.proc)


@pytest.fixture(scope="session")
def multinode_run(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory):
    """tests/multinode_run.py (a 3-node Cluster of its own, data and runs in S3; see tests/test_multinode.py),
    started in the background; yields (the BackgroundRun, runs URI, run name).

    Started with the session when test_multinode is selected (_start_background_runs): its cluster spends
    much of its minute waiting on process start-ups, which the tests before it fill (it ran alone before:
    64 s of wall for 96 CPU-s on 2 cores).
    """
    from creagen_ray.data.builtin import python_docs_text

    s3 = s3_server
    text = python_docs_text()
    quarter = len(text) // 4
    client = s3.client()
    for i in range(4):  # several files: several read pieces, split by file
        client.put_object(Bucket=s3.bucket, Key=f"multinode/corpus/part{i}.txt", Body=text[i * quarter:(i + 1) * quarter].encode())
    runs, run = s3.uri("multinode/runs"), "mn"
    base = tmp_path_factory.mktemp("multinode")
    cwd = base / "cwd"
    cwd.mkdir()
    env = {**os.environ, **s3.env, "CREAGEN_CACHE_DIR": str(base / "cache")}
    env.pop("RAY_ADDRESS", None)
    bg = BackgroundRun([sys.executable, str(ROOT / "tests" / "multinode_run.py"), runs, s3.uri("multinode/corpus"), run],
                       cwd, env, base, timeout_s=900)
    try:
        yield bg, runs, run
    finally:
        bg.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_background_runs(request: pytest.FixtureRequest) -> None:
    """Start the selected tests' background runs at the session's start (today: test_multinode's)."""
    if any(item.path.name == "test_multinode.py" for item in request.session.items):
        try:
            request.getfixturevalue("multinode_run")
        except pytest.skip.Exception:
            pass  # moto absent: test_multinode skips with the same reason when it asks for the run
