"""`creagen generate`: a local bundle (text to stdout, images to a PNG grid) and --url against a server."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from _serve_bundles import IMAGE_SIZE, TEXT, image_bundle, text_bundle
from creagen_ray.cli import main


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny rnn (trained with model.temperature 0.5, not the rnn's default 0.8) and a tiny gan bundle."""
    root = tmp_path_factory.mktemp("bundles")
    text_bundle(root / "rnn", steps=10, temperature=0.5)
    image_bundle(root / "gan", "gan", steps=5)
    return root


def size_of(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file."""
    img = Image.open(io.BytesIO(path.read_bytes()))
    assert img.format == "PNG"
    return img.size


def test_local_text_to_stdout(bundles: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["generate", str(bundles / "rnn"), "--prompt", "the ", "--max-new-tokens", "30", "--n", "2", "--seed", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    samples = out.rstrip("\n").split("\n\n" + "-" * 40 + "\n")
    assert len(samples) == 2
    assert all(s.startswith("the ") and len(s) == 4 + 30 and set(s) <= set(TEXT) for s in samples)
    assert main(args) == 0 and capsys.readouterr().out == out  # seeded
    # no --temperature: the bundle's model.temperature (0.5); an explicit one (1 included) overrides it
    assert main([*args, "--temperature", "0.5"]) == 0 and capsys.readouterr().out == out
    assert main([*args, "--temperature", "1"]) == 0 and capsys.readouterr().out != out


def test_old_bundle_without_model_temperature_gets_the_family_default(bundles: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """A bundle written before model.temperature existed (its config.yaml lacks it) loads and decodes at the rnn's 0.8."""
    import json

    import yaml

    from creagen_ray.bundle import MANIFEST, sha256_file

    old = tmp_path / "old"
    shutil.copytree(bundles / "rnn", old)
    raw = yaml.safe_load((old / "config.yaml").read_text(encoding="utf-8"))
    del raw["model"]["temperature"]
    (old / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["files"] = {f: sha256_file(old / f) for f in manifest["files"]}
    (old / MANIFEST).write_text(json.dumps(manifest))
    args = ["generate", str(old), "--prompt", "the ", "--max-new-tokens", "30", "--n", "2", "--seed", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert main([*args, "--temperature", "0.8"]) == 0 and capsys.readouterr().out == out


def test_local_images_to_png_grid(bundles: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "grid.png"
    assert main(["generate", str(bundles / "gan"), "--n", "6", "--seed", "1", "--out", str(out)]) == 0
    side = IMAGE_SIZE + 2
    assert size_of(out) == (3 * side + 2, 2 * side + 2)  # 6 images: 3 per row, 2 rows


def test_bad_arguments_and_bundles(bundles: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", str(bundles / "gan"), "--n", "100000"]) == 2
    assert "n:" in capsys.readouterr().err
    assert main(["generate"]) == 2  # neither BUNDLE nor --url
    assert main(["generate", str(tmp_path)]) == 1  # not a bundle
    assert "manifest.json is missing" in capsys.readouterr().err


@contextlib.contextmanager
def plain_server_process(bundles: Path) -> Iterator[str]:
    """`python -m creagen_ray.serving.plain BUNDLE_OR_DIR --port P` as its docstring shows, run from the bundles'
    parent folder with a relative path; yields its URL once it says it serves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "creagen_ray.serving.plain", bundles.name, "--port", str(port)],
                              cwd=bundles.parent, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert line.strip() == f"plain server at http://127.0.0.1:{port}", (line, server.poll())
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_url_mode_against_a_server(bundles: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with plain_server_process(bundles) as url:
        out = tmp_path / "remote.png"
        assert main(["generate", "--url", url, "--model", "gan", "--n", "4", "--seed", "2", "--out", str(out)]) == 0
        assert size_of(out) == (2 * (IMAGE_SIZE + 2) + 2,) * 2
        local = tmp_path / "local.png"
        assert main(["generate", str(bundles / "gan"), "--n", "4", "--seed", "2", "--out", str(local)]) == 0
        assert out.read_bytes() == local.read_bytes()  # same bundle, same seed, same PNG
        capsys.readouterr()
        rnn = ["--prompt", "the ", "--n", "1", "--max-new-tokens", "20", "--seed", "4"]
        assert main(["generate", "--url", url, "--model", "rnn", *rnn]) == 0
        text = capsys.readouterr().out.rstrip("\n")
        assert text.startswith("the ") and len(text) == 24 and set(text) <= set(TEXT)
        # no --temperature over HTTP either: the served bundle's model.temperature (0.5), as locally
        assert main(["generate", str(bundles / "rnn"), *rnn, "--temperature", "0.5"]) == 0
        assert capsys.readouterr().out.rstrip("\n") == text
        assert main(["generate", "--url", url, "--model", "missing", "--n", "1"]) == 1
        assert "404" in capsys.readouterr().err


def test_url_mode_imports_no_torch() -> None:
    """`creagen generate --url` is an HTTP client: its code path imports neither torch nor Ray (~3 CPU-s each)."""
    probe = (
        "import sys; from creagen_ray import cli, generate; from creagen_ray.serving import client; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]", out
