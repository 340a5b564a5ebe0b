"""Responsible serving: the memorization check per text response, and the opt-in (unredacted) request log."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from _serve_bundles import TEXT, text_bundle
from creagen_ray import memorization
from creagen_ray.bundle import verify_bundle
from creagen_ray.metrics.text import NGramIndex
from creagen_ray.serving.plain import PlainServer
from creagen_ray.serving.settings import ServeConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parrot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A char GRU trained until it recites its pangram corpus, with the corpus' n-gram index in its bundle."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("memo")
        text_bundle(root / "parrot", steps=300, extra_files=memorization.text_index_files([TEXT]))
    finally:
        torch.set_num_threads(threads)
    return root


def test_longest_copied_span_known_cases() -> None:
    """The span is the longest run whose every 12-gram is in the corpus; unrelated text copies nothing."""
    index = NGramIndex([TEXT], n=memorization.NGRAM)
    assert index.longest_copied_span("XYZ" + TEXT[5:45] + "QQQ") == 40
    assert index.longest_copied_span("qwpzmvxkjqwpzmvxkjlqqq") == 0
    again = NGramIndex.from_hashes(index.hashes_bytes(), memorization.NGRAM)
    assert again.longest_copied_span(TEXT[:30]) == 30


def test_index_is_a_verified_bundle_file(parrot: Path) -> None:
    """ngrams.bin/.json are in the manifest with their sha256; a tampered index is refused on load."""
    files = verify_bundle(parrot / "parrot")["files"]
    assert memorization.INDEX_FILE in files and memorization.INDEX_META in files
    assert json.loads((parrot / "parrot" / memorization.INDEX_META).read_text())["n"] == memorization.NGRAM


def test_serve_flags_and_refuses_copied_text(parrot: Path) -> None:
    """flag: a greedy continuation of a corpus prompt is flagged in JSON and headers, a near-uniform sample
    is not; refuse: the copy gets 451 with a clear reason; off: no memorization field at all."""
    req_copy = {"model": "parrot", "prompt": "the quick brown", "max_new_tokens": 120, "top_k": 1, "seed": 0}
    req_random = {"model": "parrot", "prompt": "the quick brown", "max_new_tokens": 120, "temperature": 10.0, "seed": 1}
    flag = ServeConfig(bundles=[str(parrot)], memorization={"mode": "flag", "max_copied_chars": 24})
    with PlainServer(flag, free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/text/generate", json=req_copy)
        assert r.status_code == 200, r.text
        memo = r.json()["memorization"]
        assert memo["flagged"] and memo["longest_copied_chars"][0] >= 24, (memo, r.json()["texts"])
        assert r.headers["x-creagen-memorization"] == "flagged"
        assert int(r.headers["x-creagen-copied-chars"]) == memo["longest_copied_chars"][0]
        r = http.post("/v1/text/generate", json=req_random)
        memo = r.json()["memorization"]
        assert r.status_code == 200 and not memo["flagged"] and memo["longest_copied_chars"][0] < 24, memo
        assert r.headers["x-creagen-memorization"] == "ok"
    refuse = flag.model_copy(update={"memorization": flag.memorization.model_copy(update={"mode": "refuse"})})
    with PlainServer(refuse, free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/text/generate", json=req_copy)
        assert r.status_code == 451 and "copies" in r.json()["detail"] and "max_copied_chars=24" in r.json()["detail"]
        assert http.post("/v1/text/generate", json=req_random).status_code == 200
        assert http.post("/v1/text/generate", json={**req_random, "stream": True}).status_code == 422
    with PlainServer(ServeConfig(bundles=[str(parrot)]), free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/text/generate", json=req_copy)
        assert r.status_code == 200 and "memorization" not in r.json() and "x-creagen-memorization" not in r.headers


def test_prompts_never_logged_by_default_and_request_log_is_opt_in(
    parrot: Path, tmp_path: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Default: a prompt and its output reach no log line and no file. request_log: one unredacted JSON line
    per request (text, streamed text, images), file mode 0600, and a start-up warning that says so."""
    import logging

    caplog.set_level(logging.DEBUG)
    marker = "the quick brown fox jumps over"  # in the vocabulary; must appear nowhere but the reply
    req = {"model": "parrot", "prompt": marker, "max_new_tokens": 20, "seed": 3}
    before = set(tmp_path.rglob("*"))
    with PlainServer(ServeConfig(bundles=[str(parrot)]), free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        reply = http.post("/v1/text/generate", json=req).json()["texts"][0]
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert marker not in logged and reply not in logged and "request log ON" not in logged
    assert set(tmp_path.rglob("*")) == before

    log = tmp_path / "requests.jsonl"
    cfg = ServeConfig(bundles=[str(parrot)], request_log=str(log))
    with PlainServer(cfg, free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        reply = http.post("/v1/text/generate", json=req).json()["texts"][0]
        with http.stream("POST", "/v1/text/generate", json={**req, "stream": True}) as s:
            s.read()
    assert "request log ON" in caplog.text and "UNREDACTED" in caplog.text and str(log) in caplog.text
    lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 2 and oct(log.stat().st_mode & 0o777) == "0o600"
    assert lines[0]["request"]["prompt"] == marker and lines[0]["output"]["texts"] == [reply]
    assert lines[1]["request"]["stream"] is True and lines[1]["output"]["texts"][0] and lines[1]["output"]["stream"]


def test_image_nearest_training_neighbour_known_cases(tmp_path: Path) -> None:
    """A training image is at distance 0 and flagged, a blank image is far; through HTTP, a GAN whose stored
    training sample holds its own seed-7 output is flagged for seed 7 and refused (451); the same GAN with
    only the training shapes stored is not flagged."""
    from _serve_bundles import image_bundle, shapes
    from creagen_ray.bundle import load_bundle, write_bundle
    from creagen_ray.config import ImageRequest

    train = shapes(64).numpy()
    files = memorization.image_index_files(train)
    meta = json.loads(files[memorization.NEIGHBOURS_META])
    feats = np.frombuffer(files[memorization.NEIGHBOURS_FILE], dtype="<f2").astype(np.float32).reshape(meta["count"], -1)
    assert memorization.check_images(feats, train[:3], 0.02)["flagged"]
    far = memorization.check_images(feats, np.zeros((1, 1, 16, 16), dtype=np.uint8), 0.02)
    assert not far["flagged"] and far["nearest_training_rms"][0] > 0.05

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        family = load_bundle(image_bundle(tmp_path / "raw", "gan", steps=3)).family
        copied = family.generate(ImageRequest(n=4, seed=7))  # what the server will answer for seed 7
        extra = memorization.image_index_files(torch.cat([copied, torch.as_tensor(train[:32]).float() / 255]))
        write_bundle(family, tmp_path / "store" / "gan", extra_files=extra)
        write_bundle(family, tmp_path / "store" / "gan_shapes", extra_files=memorization.image_index_files(train))
    finally:
        torch.set_num_threads(threads)
    cfg = ServeConfig(bundles=[str(tmp_path / "store")], memorization={"mode": "flag", "min_neighbour_rms": 0.01})
    with PlainServer(cfg, free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/images/generate", json={"model": "gan", "n": 4, "seed": 7, "format": "json"})
        assert r.status_code == 200 and r.json()["memorization"]["flagged"], r.text[:500]
        assert r.headers["x-creagen-memorization"] == "flagged" and float(r.headers["x-creagen-nearest-training-rms"]) <= 0.01
        r = http.post("/v1/images/generate", json={"model": "gan_shapes", "n": 4, "seed": 7})
        assert r.status_code == 200 and r.headers["x-creagen-memorization"] == "ok", r.headers
        assert float(r.headers["x-creagen-nearest-training-rms"]) > 0.01
    refuse = cfg.model_copy(update={"memorization": cfg.memorization.model_copy(update={"mode": "refuse"})})
    with PlainServer(refuse, free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/images/generate", json={"model": "gan", "n": 4, "seed": 7})
        assert r.status_code == 451 and "training image" in r.json()["detail"]
