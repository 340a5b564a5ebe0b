"""Issue 14, serving side, without Ray: sampling edge values, strict requests, per-request isolation
in a batch, hostile bundles at scan time (NaN / wrong-shape weights, escaping symlinks, signatures),
hostile uploads, the per-client concurrency limit, and secrets kept off the command line.

The HTTP checks use the plain uvicorn server (same `build_api` as the Serve ingress, in-process);
tests/test_serve.py repeats the hostile requests against real Serve and runs the fuzzer there.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from _serve_bundles import IMAGE_SIZE, image_bundle, shapes, text_bundle
from creagen_ray.bundle import MANIFEST, BundleError, load_bundle, sha256_file, sign_bundle
from creagen_ray.cli import main
from creagen_ray.config import ImageRequest, TextRequest
from creagen_ray.images import decode_png, png_bytes
from creagen_ray.sampling import sample_next
from creagen_ray.serving import engine
from creagen_ray.serving.plain import PlainServer
from creagen_ray.serving.settings import ServeConfig
from creagen_ray.serving.store import BundleStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny rnn, vae and gan bundle."""
    root = tmp_path_factory.mktemp("good")
    text_bundle(root / "rnn", steps=10)
    image_bundle(root / "vae", "vae", steps=5)
    image_bundle(root / "gan", "gan", steps=5)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rewrite(bundle: Path, change) -> None:
    """Rewrite a bundle's weights with `change(flat)` and re-hash the manifest (a hostile re-publish)."""
    flat = load_file(str(bundle / "weights.safetensors"))
    change(flat)
    save_file(flat, str(bundle / "weights.safetensors"), metadata={"family": "x"})
    rehash(bundle)


def rehash(bundle: Path) -> None:
    """Recompute every listed file's sha256 in the manifest."""
    m = json.loads((bundle / MANIFEST).read_text())
    m["files"] = {name: sha256_file(bundle / name) for name in m["files"]}
    (bundle / MANIFEST).write_text(json.dumps(m))


# ------------------------------------------------------------------------------------------------
# defect 2: numerical ranges and one bad request in a batch


def test_sampling_survives_extreme_temperature_and_top_p() -> None:
    logits = torch.randn(4, 50) * 30
    g = torch.Generator().manual_seed(0)
    ids = sample_next(logits, temperature=1e-300, generator=g)  # logits / T overflowed to inf -> NaN probs
    assert ids.tolist() == logits.argmax(-1).tolist()
    ids = sample_next(logits, temperature=1.0, top_p=1e-50, generator=g)  # below float32: dropped every token
    assert ids.tolist() == logits.argmax(-1).tolist()


def test_request_models_ranges_and_strict_types() -> None:
    ok = TextRequest.model_validate_json('{"temperature": 0, "top_p": 0.000001}')
    assert ok.temperature == 0.0 and ok.top_p == 1e-6
    assert TextRequest.model_validate_json('{"temperature": 1}').temperature == 1.0
    bad = [
        ('{"temperature": 1e-300}', "temperature"),
        ('{"top_p": 1e-50}', "top_p"),
        ('{"temperature": NaN}', "temperature"),
        ('{"temperature": Infinity}', "temperature"),
        ('{"top_p": NaN}', "top_p"),
        ('{"seed": false}', "seed"),
        ('{"n": true}', "n"),
        ('{"max_new_tokens": "5"}', "max_new_tokens"),
        ('{"prompt": "\\ud800"}', "prompt"),
        ('{"stop": ["\\udfff"]}', "stop"),
    ]
    for body, field in bad:
        with pytest.raises(ValidationError) as e:
            TextRequest.model_validate(json.loads(body))
        assert e.value.errors()[0]["loc"][0] == field, body
    with pytest.raises(ValidationError):
        ImageRequest.model_validate({"seed": False})


def test_one_poisoned_request_never_fails_its_batch(bundles: Path) -> None:
    family = load_bundle(bundles / "rnn").family
    good = [TextRequest(prompt="the ", max_new_tokens=12, seed=i, n=2) for i in range(8)]
    poisoned = TextRequest.model_construct(**{**good[0].model_dump(), "top_k": 0})  # past validation: fails in the family
    batch = good[:4] + [poisoned] + good[4:]
    with pytest.raises(ValueError):
        engine.generate_batch(family, batch)  # one model pass: the whole batch fails
    out = engine.generate_isolated(family, batch)
    assert isinstance(out[4], ValueError) and "top_k" in str(out[4])
    innocent = out[:4] + out[5:]
    assert sum(isinstance(r, Exception) for r in innocent) == 0  # 0 innocent failures
    assert innocent == [family.generate(r) for r in good]  # same answers as alone (per-request seeds)
    with pytest.raises(ValueError):
        engine.raise_if_failed(out[4])
    gan = load_bundle(bundles / "gan").family
    imgs = engine.generate_isolated(gan, [ImageRequest(n=2, seed=1), ImageRequest.model_construct(n=-1, seed=2)])
    assert imgs[0].shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE) and isinstance(imgs[1], Exception)


# ------------------------------------------------------------------------------------------------
# defect 4: hostile bundles


def test_hostile_bundles_refused_at_scan_with_reasons(bundles: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("rnn", "nan", "shape", "linked", "badlist"):
        shutil.copytree(bundles / ("rnn" if name != "shape" else "gan"), store / name)
    first = lambda flat: next(k for k, v in flat.items() if v.is_floating_point())  # noqa: E731
    rewrite(store / "nan", lambda flat: flat[first(flat)].view(-1).__setitem__(0, float("nan")))
    rewrite(store / "shape", lambda flat: flat.__setitem__(first(flat), torch.zeros(3, 3)))
    secret = tmp_path / "outside-secret.yaml"
    shutil.copy(store / "linked" / "config.yaml", secret)
    (store / "linked" / "config.yaml").unlink()
    (store / "linked" / "config.yaml").symlink_to(secret)  # same bytes, same sha256: only the link is wrong
    m = json.loads((store / "badlist" / MANIFEST).read_text())
    m["files"]["../rnn/config.yaml"] = m["files"]["config.yaml"]
    (store / "badlist" / MANIFEST).write_text(json.dumps(m))

    scanned = BundleStore.scan([store])
    assert set(scanned.models) == {"rnn"}
    assert set(scanned.rejected) == {"nan", "shape", "linked", "badlist"}
    assert "non-finite" in scanned.rejected["nan"]
    assert "do not fit" in scanned.rejected["shape"]
    assert "symlink" in scanned.rejected["linked"]
    assert "plain file name" in scanned.rejected["badlist"]


def test_bundle_changed_after_the_scan_is_not_loaded(bundles: Path, tmp_path: Path) -> None:
    """The scan pins each manifest's sha256: a re-hashed rewrite after the scan is refused at load.
    (And non-finite training metrics are listed as null, so /v1/models can always render.)"""
    from creagen_ray.bundle import BundleError as Refused
    from creagen_ray.serving.engine import LocalBackend

    shutil.copytree(bundles / "gan", tmp_path / "gan")
    (tmp_path / "gan" / "metrics.json").write_text('{"loss": NaN, "val": {"fid": Infinity}, "steps": 5}')
    rehash(tmp_path / "gan")  # a diverged run's metrics: JSON responses cannot carry NaN
    store = BundleStore.scan([tmp_path])
    assert json.loads(json.dumps(store.models["gan"].model_dump(), allow_nan=False))["metrics"] == {
        "loss": None, "val": {"fid": None}, "steps": 5
    }
    backend = LocalBackend(store)
    rewrite(tmp_path / "gan", lambda flat: [v.neg_() for v in flat.values() if v.is_floating_point()])
    with pytest.raises(Refused, match="changed since the store scan"):
        asyncio.run(backend.bundle("gan"))


def test_signed_bundles_only_with_require_signature(bundles: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("signed", "unsigned", "negated", "other_key"):
        shutil.copytree(bundles / "gan", store / name)
    key_file = tmp_path / "key"
    key_file.write_text("operator-secret\n")
    monkeypatch.delenv("CREAGEN_SIGNING_KEY", raising=False)
    sign = subprocess.run(  # as the README shows it, from another directory, relative paths
        [sys.executable, "-m", "creagen_ray.cli", "sign", "store/signed", "store/negated", "--key-file", "key"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert sign.returncode == 0, sign.stderr
    assert sign.stdout.count("signed ") == 2 and (store / "signed" / "manifest.sig").is_file()
    sign_bundle(store / "other_key", b"someone else")
    rewrite(store / "negated", lambda flat: [v.neg_() for v in flat.values() if v.is_floating_point()])  # finite, fits

    assert set(BundleStore.scan([store]).models) == {"signed", "unsigned", "negated", "other_key"}  # signing off
    cfg = ServeConfig(bundles=[str(store)], require_signature=True, signing_key_file=str(key_file))
    scanned = BundleStore.scan(cfg.bundles, signing_key=cfg.signing_key())
    assert set(scanned.models) == {"signed"}
    assert "not signed" in scanned.rejected["unsigned"]
    assert "does not match" in scanned.rejected["negated"] and "does not match" in scanned.rejected["other_key"]
    monkeypatch.setenv("CREAGEN_SIGNING_KEY", "operator-secret")
    env_cfg = ServeConfig(bundles=[str(store)], require_signature=True)
    assert set(BundleStore.scan(env_cfg.bundles, signing_key=env_cfg.signing_key()).models) == {"signed"}
    monkeypatch.delenv("CREAGEN_SIGNING_KEY")
    with pytest.raises(ValueError, match="no key"):
        env_cfg.signing_key()
    assert main(["sign", str(store / "signed")]) == 2  # no key anywhere


# ------------------------------------------------------------------------------------------------
# defect 3: hostile uploads


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries one tiny IDAT (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


HOSTILE_IMAGES = {
    "bomb-header": png_header_only(100_000, 100_000),  # Pillow: DecompressionBombError
    "oversize": encoded(Image.new("L", (2000, 16)), "PNG"),  # real, but 2000 px > 16 x 8
    "jpeg": encoded(Image.new("L", (16, 16)), "JPEG"),
    "gif": encoded(Image.new("L", (16, 16)), "GIF"),
    "truncated": png_bytes(shapes(1).float() / 255)[:40],
}


def test_decode_png_checks_format_and_size_before_decoding() -> None:
    good = png_bytes(shapes(1).float() / 255)
    assert decode_png(good, 1, IMAGE_SIZE, max_side=IMAGE_SIZE * 8).shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    for name, data in HOSTILE_IMAGES.items():
        with pytest.raises(Exception) as e:
            decode_png(data, 1, IMAGE_SIZE, max_side=IMAGE_SIZE * 8)
        assert not isinstance(e.value, MemoryError), name


# ------------------------------------------------------------------------------------------------
# HTTP: 4xx not 5xx, the per-client limit, the documented responses (plain server, no Ray)


def test_http_hostile_inputs_limits_and_openapi(bundles: Path) -> None:
    cfg = ServeConfig(bundles=[str(bundles)], max_concurrent_per_client=2)
    with PlainServer(cfg, free_port()) as url, httpx.Client(base_url=url, timeout=120) as http:
        raw = [
            ("/v1/text/generate", b'{"model": "rnn", "temperature": NaN}', "temperature"),
            ("/v1/text/generate", b'{"model": "rnn", "top_p": Infinity}', "top_p"),
            ("/v1/text/generate", b'{"model": "rnn", "temperature": 1e-300}', "temperature"),
            ("/v1/text/generate", b'{"model": "rnn", "top_p": 1e-50}', "top_p"),
            ("/v1/text/generate", b'{"model": "rnn", "prompt": "\\ud800"}', "prompt"),
            ("/v1/text/generate", b'{"model": "rnn", "\\ud800": 1}', None),
            ("/v1/images/generate", b'{"model": "gan", "seed": false}', "seed"),
            ("/v1/images/generate", b'{"model": "gan", "n": 1.5}', "n"),
        ]
        for path, body, field in raw:
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, (body, r.status_code, r.text)
            if field:
                assert any(e["loc"][-1] == field for e in r.json()["detail"]), r.text
        for name, data in HOSTILE_IMAGES.items():
            r = http.post("/v1/images/reconstruct", json={"model": "vae", "image": base64.b64encode(data).decode()})
            assert r.status_code == 422, (name, r.status_code, r.text)
        assert http.post("/v1/text/generate", json={"model": "rnn", "temperature": 0, "max_new_tokens": 5}).status_code == 200

        spec = http.get("/openapi.json").json()["paths"]
        for path in ("/v1/text/generate", "/v1/images/generate", "/v1/images/interpolate", "/v1/images/reconstruct"):
            assert {"400", "401", "404", "409", "413", "422", "429", "503", "504"} <= set(spec[path]["post"]["responses"])

        async def burst() -> tuple[list[httpx.Response], httpx.Response]:
            slow = {"model": "rnn", "max_new_tokens": 2048, "n": 4}  # n x max_new_tokens at the default cost cap
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                a = [c.post("/v1/text/generate", json=slow, headers={"X-API-Key": "client-a"}) for _ in range(5)]
                tasks = [asyncio.ensure_future(x) for x in a]
                await asyncio.sleep(0.3)
                other = await c.post("/v1/text/generate", json={"model": "rnn", "max_new_tokens": 4}, headers={"X-API-Key": "client-b"})
                return await asyncio.gather(*tasks), other

        answers, other = asyncio.run(burst())
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 200, 429, 429, 429], codes
        assert all(r.headers["retry-after"] == "1" for r in answers if r.status_code == 429)
        assert other.status_code == 200  # another client is not pinned by client-a's requests
        assert http.post("/v1/text/generate", json={"model": "rnn", "max_new_tokens": 4}, headers={"X-API-Key": "client-a"}).status_code == 200


# ------------------------------------------------------------------------------------------------
# defect 8b: secrets off the command line


def test_api_key_comes_from_env_or_file_never_argv(bundles: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["serve", str(bundles), "--api-key", "K"]) == 2
    assert "CREAGEN_API_KEY" in capsys.readouterr().err
    assert main(["generate", "--url", "http://127.0.0.1:1", "--model", "gan", "--api-key", "K"]) == 2
    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    port = free_port()
    with PlainServer(ServeConfig(bundles=[str(bundles)], api_key="file-key"), port) as url:
        out = tmp_path / "g.png"
        monkeypatch.delenv("CREAGEN_API_KEY", raising=False)
        args = ["generate", "--url", url, "--model", "gan", "--n", "1", "--out", str(out)]
        assert main(args) == 1 and "401" in capsys.readouterr().err
        assert main([*args, "--api-key-file", str(key_file)]) == 0 and out.is_file()
        monkeypatch.setenv("CREAGEN_API_KEY", "file-key")
        out.unlink()
        assert main(args) == 0 and out.is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # the parser `creagen serve --help` prints (in this process: no torch import)
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert done.value.code == 0 and "--api-key-file" in help_text and "--api-key " not in help_text
