"""Provenance (PNG text chunks, HTTP headers, `creagen inspect`) and the notebook API (`creagen_ray.load`)."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

import creagen_ray
from _serve_bundles import image_bundle, text_bundle
from creagen_ray.cli import main
from creagen_ray.config import ConfigError
from creagen_ray.provenance import read_png_text
from creagen_ray.serving.plain import PlainServer
from creagen_ray.serving.settings import ServeConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny real rnn, vae and gan bundles."""
    root = tmp_path_factory.mktemp("prov")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few steps each: provenance does not need good samples
    try:
        text_bundle(root / "rnn", steps=3)
        image_bundle(root / "vae", "vae", steps=3)
        image_bundle(root / "gan", "gan", steps=3)
    finally:
        torch.set_num_threads(threads)
    return root


def creagen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("creagen")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_notebook_api_readme_lines(store: Path, tmp_path: Path) -> None:
    """The README's notebook lines: load, generate text / images, interpolate, reconstruct, inline PNG."""
    g = creagen_ray.load(str(store / "gan"))
    assert "gan" in repr(g) and g.modality == "image"
    images = g.generate(n=4, seed=0)
    assert len(images) == 4 and all(isinstance(im, Image.Image) and im.size == (16, 16) for im in images)
    assert [im.tobytes() for im in g.generate(n=4, seed=0)] == [im.tobytes() for im in images]  # seeded
    png = images._repr_png_()
    rec = read_png_text(png)
    assert rec["generator"] == "creagen-ray" and rec["model"] == "gan" and rec["seed"] == "0" and rec["synthetic"] == "true"
    assert rec["bundle_sha256"] == g.bundle.sha256 and len(rec["bundle_sha256"]) == 64
    assert json.loads(rec["parameters"]) == {"n": 4}
    walk = g.interpolate(seed_a=1, seed_b=2, steps=5)
    assert len(walk) == 5 and Image.open(io.BytesIO(walk._repr_png_())).size[0] > 5 * 16
    rnn = creagen_ray.load(store / "rnn")
    texts = rnn.generate(prompt="the ", n=2, seed=0, max_new_tokens=20)
    assert len(texts) == 2 and all(isinstance(t, str) and len(t) == 20 for t in texts)
    assert texts == rnn.generate(prompt="the ", n=2, seed=0, max_new_tokens=20)
    # no temperature: the bundle's model.temperature (the rnn's 0.8); image models have none
    assert rnn.default_temperature == 0.8 and g.default_temperature is None
    assert texts == rnn.generate(prompt="the ", n=2, seed=0, max_new_tokens=20, temperature=0.8)
    assert len("".join(rnn.stream(prompt="the ", seed=0, max_new_tokens=20))) == 20
    vae = creagen_ray.load(store / "vae")
    rec_img = vae.reconstruct(images[0])
    assert len(rec_img) == 1 and rec_img[0].size == (16, 16)
    path = rec_img.save(tmp_path / "rec.png")
    assert read_png_text(path)["model"] == "vae"
    with pytest.raises(ConfigError, match="top_p"):
        rnn.generate(prompt="the ", top_p=2.0)
    with pytest.raises(ConfigError, match="cannot reconstruct"):
        g.reconstruct(images[0])


def test_cli_generate_png_carries_provenance_and_inspect_reads_it(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`creagen generate ... --out x.png` then `creagen inspect x.png`; a plain PNG has no record (exit 1)."""
    r = creagen("generate", str(store / "gan"), "--n", "4", "--seed", "3", "--out", "grid.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = creagen("inspect", "grid.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["generator"] == "creagen-ray" and rec["model"] == "gan" and rec["seed"] == "3"
    assert rec["DigitalSourceType"].endswith("trainedAlgorithmicMedia")
    monkeypatch.chdir(tmp_path)  # the rest in-process (each subprocess pays torch's import)
    assert main(["generate", str(store / "gan"), "--n", "4", "--out", "unseeded.png"]) == 0
    seed = read_png_text(tmp_path / "unseeded.png")["seed"]
    assert seed.isdigit()  # drawn, and recorded: the grid can be remade
    assert main(["generate", str(store / "gan"), "--n", "4", "--seed", seed, "--out", "again.png"]) == 0
    assert Image.open(tmp_path / "again.png").tobytes() == Image.open(tmp_path / "unseeded.png").tobytes()
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    assert main(["inspect", "plain.png"]) == 1
    assert "no creagen-ray provenance" in capsys.readouterr().err
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert main(["inspect", "junk.png"]) == 2
    assert "junk.png" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_responses_carry_provenance(store: Path) -> None:
    """Every generation response has X-Creagen-* headers; PNGs the chunks; text JSON the record."""
    with PlainServer(ServeConfig(bundles=[str(store)]), free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        sha = {m["id"]: m["bundle_sha256"] for m in http.get("/v1/models").json()["models"]}
        assert sha["gan"] == creagen_ray.load(store / "gan").bundle.sha256
        r = http.post("/v1/images/generate", json={"model": "gan", "n": 4, "seed": 5})
        assert r.status_code == 200
        assert r.headers["x-creagen-generator"] == "creagen-ray" and r.headers["x-creagen-synthetic"] == "true"
        assert r.headers["x-creagen-seed"] == "5" and r.headers["x-creagen-bundle-sha256"] == sha["gan"]
        assert read_png_text(r.content)["bundle_sha256"] == sha["gan"]
        r = http.post("/v1/images/generate", json={"model": "vae", "n": 2, "format": "json"})
        body = r.json()
        assert body["provenance"]["seed"].isdigit() and r.headers["x-creagen-model"] == "vae"
        assert read_png_text(base64.b64decode(body["images"][0]))["seed"] == body["provenance"]["seed"]
        r = http.post("/v1/images/interpolate", json={"model": "gan", "seed_a": 1, "seed_b": 2, "steps": 3})
        assert json.loads(r.headers["x-creagen-parameters"]) == {"seed_a": 1, "seed_b": 2, "steps": 3}
        r = http.post("/v1/text/generate", json={"model": "rnn", "prompt": "the ", "max_new_tokens": 8, "seed": 2})
        body = r.json()
        assert body["provenance"]["model"] == "rnn" and body["provenance"]["seed"] == "2"
        assert "the " not in body["provenance"]["parameters"]  # the prompt is not echoed into records
        assert json.loads(body["provenance"]["parameters"])["temperature"] is None  # none given: the bundle's own
        assert r.headers["x-creagen-bundle-sha256"] == sha["rnn"]
        with http.stream("POST", "/v1/text/generate", json={"model": "rnn", "prompt": "the ", "stream": True}) as s:
            assert s.headers["x-creagen-generator"] == "creagen-ray" and s.headers["x-creagen-seed"].isdigit()
            s.read()
