"""Object storage against a real S3 endpoint (moto's server on loopback, IAM auth on).

Fast tests (no Ray): bundles written to and read from s3://, the node cache keyed by the
manifest's sha256, a bundle altered in the bucket refused (by `creagen generate` and by the store
scan), and a wrong / missing credential or bucket failing `creagen train` before any Ray work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _serve_bundles import TEXT, text_bundle
from creagen_ray import storage
from creagen_ray.bundle import BundleError, load_bundle
from creagen_ray.cli import main
from creagen_ray.config import TextRequest
from creagen_ray.serving.store import BundleStore, RejectedModel

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
