"""Data preparation on a real local Ray: every source kind, the manifest, Ray Data read-back, bad inputs.

Expected counts are computed here independently of the code under test (plain Python over the
source), and bad inputs must leave nothing behind in the storage folder.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from creagen_ray.cli import main
from creagen_ray.config import DataConfig
from creagen_ray.data import DataError, load_prepared, prepare_data
from creagen_ray.data import prepare as prepare_mod
from creagen_ray.data.builtin import make_shapes, python_docs_text

pytestmark = pytest.mark.usefixtures("ray_cluster")


def expected_windows(n_tokens: int, seq_len: int, stride: int | None = None) -> int:
    """How many windows of seq_len + 1 tokens start at 0, stride, ... and fit in n_tokens."""
    return len(range(0, n_tokens - (seq_len + 1) + 1, stride or seq_len))


def first_batch(ds, **kwargs) -> dict[str, torch.Tensor]:
    return next(iter(ds.iter_torch_batches(batch_size=8, **kwargs)))


def leftovers(root) -> list[str]:
    """Everything under a storage folder (should be nothing after a failed prepare)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def small_text(tmp_path):
    p = tmp_path / "small.txt"
    p.write_text("To be, or not to be, that is the question.\n" * 60 + "Ünïcödé ok — ✓\n", encoding="utf-8")
    return p


# ----------------------------------------------------------------------------------------------
# text


def test_tinyshakespeare_full(shakespeare_path, tmp_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    n_train = int(len(text) * 0.9)
    cfg = DataConfig(source=str(shakespeare_path), seq_len=128, val_fraction=0.1)

    t0 = time.perf_counter()
    prepared = prepare_data(cfg, str(tmp_path))
    first_s = time.perf_counter() - t0
    m = prepared.manifest
    rows = {"train": expected_windows(n_train, 128), "val": expected_windows(len(text) - n_train, 128)}
    assert (rows["train"], rows["val"]) == (7842, 871)
    for split in ("train", "val"):
        assert m["splits"][split]["rows"] == rows[split]
        assert m["splits"][split]["tokens"] == rows[split] * 129
    assert prepared.spec.vocab_size == 65 == len(set(text))
    assert prepared.spec.seq_len == 128
    assert m["source_sha256"] == hashlib.sha256(shakespeare_path.read_bytes()).hexdigest()  # = sha256sum

    # vocab round trip, and the shards hold exactly the corpus in order: train from the start,
    # val from the split point on (so no window crosses the split)
    tok = prepared.tokenizer
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]
    train = prepared.read_numpy("train")["tokens"]
    val = prepared.read_numpy("val")["tokens"]
    assert train.dtype == np.int32 and train.shape == (rows["train"], 129)
    assert tok.decode(train[:, :-1].ravel().tolist()) == text[: rows["train"] * 128]
    assert tok.decode(val[:, :-1].ravel().tolist()) == text[n_train : n_train + rows["val"] * 128]
    assert (train[1:, 0] == train[:-1, -1]).all()  # stride seq_len: the target of one window starts the next
    # identical to the single-process implementation the Ray Data pipeline replaced: sha256 of its
    # int32 token rows, recorded from that implementation before it was removed
    assert hashlib.sha256(train.astype("<i4").tobytes()).hexdigest().startswith("4e3c6b22bcd766be")
    assert hashlib.sha256(val.astype("<i4").tobytes()).hexdigest().startswith("724eb4c1eacb03bc")

    # Ray Data reads back exactly the expected windows and tokens
    import ray.data

    ds = ray.data.read_parquet(str(prepared.path / "train"))
    n_rows = n_tokens = 0
    for batch in ds.iter_torch_batches(batch_size=1024):
        assert batch["tokens"].dtype == torch.int32 and batch["tokens"].shape[1] == 129
        n_rows += batch["tokens"].shape[0]
        n_tokens += batch["tokens"].numel()
    assert (n_rows, n_tokens) == (rows["train"], rows["train"] * 129)

    # a second run on the same input is a fast no-op that touches nothing
    mtimes = {f: f.stat().st_mtime_ns for f in prepared.files("train")}
    t0 = time.perf_counter()
    again = prepare_data(cfg, str(tmp_path))
    rerun_s = time.perf_counter() - t0
    assert again.status == "up to date" and again.path == prepared.path
    assert {f: f.stat().st_mtime_ns for f in again.files("train")} == mtimes
    assert rerun_s < first_s
    print(f"\ntinyshakespeare: {rows} rows, vocab 65, prepare {first_s:.2f} s, no-op re-run {rerun_s:.3f} s")
    print(prepared.summary())


def test_text_split_is_deterministic_and_reads_back(small_text, tmp_path):
    cfg = DataConfig(source=str(small_text), seq_len=16, stride=8, val_fraction=0.2)
    a = prepare_data(cfg, str(tmp_path / "a"))
    b = prepare_data(cfg, str(tmp_path / "b"))
    text = small_text.read_text(encoding="utf-8")
    n_train = int(len(text) * 0.8)
    assert a.num_rows("train") == expected_windows(n_train, 16, 8)
    assert a.num_rows("val") == expected_windows(len(text) - n_train, 16, 8)
    for split in ("train", "val"):
        np.testing.assert_array_equal(a.read_numpy(split)["tokens"], b.read_numpy(split)["tokens"])
    # disjoint: every train window lies in text[:n_train], every val window in text[n_train:]
    tok = a.tokenizer
    assert all(tok.decode(w.tolist()) in text[:n_train] for w in a.read_numpy("train")["tokens"])
    assert all(tok.decode(w.tolist()) in text[n_train:] for w in a.read_numpy("val")["tokens"])
    assert "✓" in tok.chars  # the vocab covers characters that only occur in the val part

    batch = first_batch(a.val_dataset(), dtypes=a.torch_dtypes())
    assert set(batch) == {"tokens"} and batch["tokens"].shape == (8, 17)
    assert batch["tokens"].dtype == torch.int64  # what embeddings and cross-entropy take (stored as int32)


def test_changed_input_is_detected(small_text, tmp_path):
    out = tmp_path / "prepared"
    cfg = DataConfig(source=str(small_text), seq_len=8, output_dir=str(out))
    first = prepare_data(cfg, str(tmp_path))
    assert first.status == "prepared" and first.path == out
    assert prepare_data(cfg, str(tmp_path)).status == "up to date"

    small_text.write_text(small_text.read_text(encoding="utf-8") + "Zebra quartz!\n", encoding="utf-8")
    second = prepare_data(cfg, str(tmp_path))
    assert second.status == "prepared"
    assert second.manifest["source_sha256"] != first.manifest["source_sha256"]
    assert "Z" in second.tokenizer.chars and "Z" not in first.tokenizer.chars
    assert load_prepared(out).manifest == second.manifest  # replaced in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "small.txt"]  # no temp dirs left

    assert prepare_data(cfg, str(tmp_path), force=True).status == "prepared"
    changed = cfg.model_copy(update={"seq_len": 9})
    assert prepare_data(changed, str(tmp_path)).status == "prepared"  # a changed config re-prepares too


def test_default_output_dir_follows_source_and_config(small_text, tmp_path):
    cfg = DataConfig(source=str(small_text), seq_len=8)
    a = prepare_data(cfg, str(tmp_path / "store"))
    assert a.path.parent == tmp_path / "store" / "data" and a.path.name.startswith("small-")
    small_text.write_text("a different corpus, long enough for windows\n" * 10, encoding="utf-8")
    b = prepare_data(cfg, str(tmp_path / "store"))
    assert b.status == "prepared" and b.path != a.path


def test_byte_tokenizer_takes_any_bytes(tmp_path):
    raw = "héllo wörld ✓ ".encode("utf-8") * 20 + b"\xff\xfe latin-1: caf\xe9 " * 5
    p = tmp_path / "mixed.bin.txt"
    p.write_bytes(raw)
    prepared = prepare_data(DataConfig(source=str(p), tokenizer="byte", seq_len=16), str(tmp_path))
    assert prepared.spec.vocab_size == 256
    train = prepared.read_numpy("train")["tokens"]
    assert bytes(train[0].astype(np.uint8).tolist()) == raw[:17]
    tok = prepared.tokenizer
    assert tok.decode(tok.encode("any UTF-8 ✓ 你好")) == "any UTF-8 ✓ 你好"


def test_builtin_python_docs(tmp_path):
    text = python_docs_text()
    prepared = prepare_data(DataConfig(source="builtin:python-docs", seq_len=64), str(tmp_path))
    n_train = int(len(text) * 0.9)
    assert prepared.num_rows("train") == expected_windows(n_train, 64)
    assert prepared.num_rows("val") == expected_windows(len(text) - n_train, 64)
    assert prepared.spec.vocab_size == len(set(text))
    first = prepared.read_numpy("train")["tokens"][0].tolist()
    assert prepared.tokenizer.decode(first) == text[:65]
    assert f"{prepared.num_rows('train'):,} rows" in prepared.summary()


# ----------------------------------------------------------------------------------------------
# images


def read_idx_gz(path, header: int) -> np.ndarray:
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=header)


def test_mnist_idx(mnist_paths, tmp_path):
    images_path, labels_path = mnist_paths
    cfg = DataConfig(source=str(images_path), labels=str(labels_path), modality="image", val_fraction=0.2)
    t0 = time.perf_counter()
    prepared = prepare_data(cfg, str(tmp_path))
    seconds = time.perf_counter() - t0
    assert prepared.manifest["kind"] == "idx"
    assert (prepared.num_rows("train"), prepared.num_rows("val")) == (8000, 2000)
    spec = prepared.spec
    assert (spec.channels, spec.image_size, spec.num_classes) == (1, 28, 10)

    images = read_idx_gz(images_path, 16).reshape(10000, 1, 28, 28)
    labels = read_idx_gz(labels_path, 8).astype(np.int64)
    is_val = np.arange(10000) % 5 == 0
    for split, mask in (("train", ~is_val), ("val", is_val)):
        got = prepared.read_numpy(split)
        np.testing.assert_array_equal(got["image"], images[mask])
        np.testing.assert_array_equal(got["label"], labels[mask])

    import ray.data

    batch = first_batch(ray.data.read_parquet(str(prepared.path / "val")))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 1, 28, 28)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (8,)
    print(f"\nMNIST idx: 8000/2000 rows in {seconds:.2f} s")


def test_make_shapes_is_deterministic():
    a, fa = make_shapes(300, size=32, seed=3, chunk=64)
    b, fb = make_shapes(300, size=32, seed=3, chunk=1000)  # chunking does not change the result
    c, _ = make_shapes(300, size=32, seed=4)
    np.testing.assert_array_equal(a, b)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)
    assert not np.array_equal(a, c)
    assert a.shape == (300, 1, 32, 32) and a.dtype == np.uint8
    assert set(np.unique(fa["label"])) == {0, 1, 2}
    ink = (a > 127).reshape(300, -1).sum(1)
    assert ink.min() > 5  # every image shows a shape
    # a bigger scale draws more ink, for the same class
    sq = fa["label"] == 0
    assert np.corrcoef(fa["scale"][sq], ink[sq])[0, 1] > 0.8


def test_builtin_shapes(tmp_path):
    cfg = DataConfig(source="builtin:shapes", modality="image", builtin_size=500, image_size=16, channels=3, seed=7)
    t0 = time.perf_counter()
    prepared = prepare_data(cfg, str(tmp_path))
    seconds = time.perf_counter() - t0
    assert (prepared.num_rows("train"), prepared.num_rows("val")) == (450, 50)  # val = index % 10 == 0
    assert (prepared.spec.channels, prepared.spec.image_size, prepared.spec.num_classes) == (3, 16, 3)
    images, factors = make_shapes(500, size=16, channels=3, seed=7)
    val = prepared.read_numpy("val", ["image", "label", "scale", "rotation", "pos_x", "pos_y"])
    np.testing.assert_array_equal(val["image"], images[::10])
    np.testing.assert_array_equal(val["label"], factors["label"][::10])
    np.testing.assert_allclose(val["rotation"], factors["rotation"][::10])

    batch = first_batch(prepared.train_dataset())
    assert set(batch) == {"image", "label"}  # the factors stay out of training batches by default
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 3, 16, 16)
    print(f"\nbuiltin:shapes 500 images in {seconds:.2f} s")


def test_npy_source_with_labels_and_conversion(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 20, 20, 3), dtype=np.uint8)  # [N, H, W, C]
    np.save(tmp_path / "imgs.npy", arr)
    np.save(tmp_path / "labels.npy", np.arange(40) % 4)
    cfg = DataConfig(
        source=str(tmp_path / "imgs.npy"), labels=str(tmp_path / "labels.npy"), modality="image",
        channels=1, image_size=10, val_fraction=0.25,
    )
    prepared = prepare_data(cfg, str(tmp_path / "store"))
    assert prepared.manifest["kind"] == "npy"
    assert (prepared.num_rows("train"), prepared.num_rows("val")) == (30, 10)
    assert prepared.spec.channels == 1 and prepared.spec.image_size == 10 and prepared.spec.num_classes == 4
    val = prepared.read_numpy("val")
    assert val["image"].shape == (10, 1, 10, 10)
    np.testing.assert_array_equal(val["label"], (np.arange(40) % 4)[::4])
    # grayscale of a constant-colour image is its luma
    const = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    const[..., 0] = 200
    np.save(tmp_path / "const.npy", const)
    gray = prepare_data(DataConfig(source=str(tmp_path / "const.npy"), modality="image", channels=1), str(tmp_path / "s2"))
    assert (gray.read_numpy("train")["image"] == round(0.299 * 200)).all()


def test_png_folder_with_class_folders(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("cats", "dogs"):
        (tmp_path / "pngs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "pngs" / cls / f"{i}.png")
    prepared = prepare_data(DataConfig(source=str(tmp_path / "pngs"), modality="image", val_fraction=0.2), str(tmp_path / "store"))
    assert prepared.manifest["kind"] == "png"
    assert prepared.spec.channels == 3 and prepared.spec.image_size == 12 and prepared.spec.num_classes == 2
    assert (prepared.num_rows("train"), prepared.num_rows("val")) == (8, 2)
    labels = np.concatenate([prepared.read_numpy(s)["label"] for s in ("train", "val")])
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 5
    first = np.asarray(Image.open(tmp_path / "pngs" / "cats" / "1.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(prepared.read_numpy("train")["image"][0], first)  # index 0 went to val


def test_parquet_source_round_trip(tmp_path):
    shapes = prepare_data(DataConfig(source="builtin:shapes", modality="image", builtin_size=60), str(tmp_path / "a"))
    again = prepare_data(
        DataConfig(source=str(shapes.path / "train"), modality="image", val_fraction=0.0), str(tmp_path / "b")
    )
    assert again.manifest["kind"] == "parquet"
    assert again.val_dataset() is None and again.num_rows("val") == 0
    np.testing.assert_array_equal(again.read_numpy("train")["image"], shapes.read_numpy("train")["image"])
    np.testing.assert_array_equal(again.read_numpy("train")["label"], shapes.read_numpy("train")["label"])


def test_cli_prepare_prints_summary(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "builtin:python-docs", "seq_len": 32, "max_items": 20000},
                                   "train": {"storage_path": str(tmp_path / "runs")}}), encoding="utf-8")
    assert main(["prepare", str(cfg), "--set", "data.val_fraction=0.5"]) == 0
    out = capsys.readouterr().out
    assert "prepared in" in out and "vocab size" in out
    assert f"{expected_windows(10000, 32):,} rows" in out


# ----------------------------------------------------------------------------------------------
# bad inputs: a clear error, and nothing left behind


def _non_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait\n".encode("latin-1") * 50)
    return DataConfig(source=str(p), seq_len=8)


def _empty(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    return DataConfig(source=str(tmp_path / "empty.txt"))


def _wrong_magic(tmp_path):
    # the labels file passed as the images file: magic 2049 where 2051 is expected
    p = tmp_path / "train-idx1-ubyte"
    p.write_bytes((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    return DataConfig(source=str(p), modality="image")


def _mixed_png(tmp_path):
    (tmp_path / "pngs").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "pngs" / "a.png")
    Image.new("L", (20, 16)).save(tmp_path / "pngs" / "b.png")
    return DataConfig(source=str(tmp_path / "pngs"), modality="image")


def _too_short(tmp_path):
    (tmp_path / "short.txt").write_text("tiny corpus", encoding="utf-8")
    return DataConfig(source=str(tmp_path / "short.txt"), seq_len=64)


def _labels_mismatch(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.zeros(4, dtype=np.int64))
    return DataConfig(source=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), modality="image")


def _float_npy(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((5, 8, 8), dtype=np.float32))
    return DataConfig(source=str(tmp_path / "f.npy"), modality="image")


@pytest.mark.parametrize(
    "make_cfg, message",
    [
        (lambda t: DataConfig(source=str(t / "nope.txt")), r"data\.source: .*nope\.txt.* does not exist"),
        (_empty, r"data\.source: the text corpus .*empty\.txt is empty"),
        (_non_utf8, r"latin1\.txt is not valid UTF-8 \(byte 0xe9 at offset 3\).*data\.tokenizer=byte"),
        (_wrong_magic, r"idx magic number 2049 \(that is an idx labels file\); expected 2051"),
        (_mixed_png, r"different sizes, e\.g\. a\.png is 16x16 and b\.png is 20x16; set data\.image_size"),
        (_too_short, r"data\.seq_len: the train part .* fewer than one window of seq_len \+ 1 = 65"),
        (_labels_mismatch, r"data\.labels: .*y\.npy' has 4 labels for 5 images"),
        (_float_npy, r"dtype float32; images must be uint8"),
        (lambda t: DataConfig(source="builtin:poems"), r"unknown builtin 'builtin:poems'"),
        (lambda t: DataConfig(source="builtin:shapes", builtin_size=20), r"data\.modality='text' but .* is image data"),
        (lambda t: DataConfig(source=str(t / "x.npy"), labels=str(t / "none.npy"), modality="image"), "does not exist"),
    ],
    ids=["missing", "empty", "non-utf8", "idx-magic", "png-mixed", "too-short", "labels", "npy-dtype", "builtin",
         "modality", "labels-missing"],
)
def test_bad_inputs_fail_clearly_and_leave_nothing(tmp_path, make_cfg, message):
    (tmp_path / "x.npy").exists() or np.save(tmp_path / "x.npy", np.zeros((5, 8, 8), dtype=np.uint8))
    cfg = make_cfg(tmp_path)
    store = tmp_path / "store"
    with pytest.raises(DataError, match=message):
        prepare_data(cfg, str(store))
    assert leftovers(store) == []


def test_crash_while_writing_leaves_previous_version_intact(small_text, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    cfg = DataConfig(source=str(small_text), seq_len=8, output_dir=str(out))
    good = prepare_data(cfg, str(tmp_path))
    before = json.loads((out / "manifest.json").read_text())

    calls = []

    def crash_after_shards(fs, root, manifest):  # every shard is written by now; the manifest fails
        calls.append(root)
        assert any(Path(root, "train").iterdir())
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_mod, "_write_manifest", crash_after_shards)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_data(cfg, str(tmp_path), force=True)
    assert json.loads((out / "manifest.json").read_text()) == before
    assert load_prepared(out).manifest == good.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "small.txt"]  # temp dir removed
    assert calls and not os.path.exists(calls[0])


def test_refuses_to_replace_a_foreign_folder_and_load_checks(tmp_path, small_text):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError, match="data.output_dir: .* is not a prepared data folder"):
        prepare_data(DataConfig(source=str(small_text), seq_len=8, output_dir=str(foreign)), str(tmp_path))
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"
    with pytest.raises(DataError, match="no readable manifest.json"):
        load_prepared(foreign)


# ----------------------------------------------------------------------------------------------
# the Ray Data pipeline: pieces, many files, skipping, column mapping


def reference_windows(ids: list[int], n_train: int, seq_len: int, stride: int) -> dict[str, np.ndarray]:
    """Windows of seq_len + 1 ids at 0, stride, ... inside train = ids[:n_train] and val = the rest."""
    out = {}
    for split, part in (("train", ids[:n_train]), ("val", ids[n_train:])):
        rows = [part[s : s + seq_len + 1] for s in range(0, len(part) - seq_len, stride)]
        out[split] = np.array(rows, dtype=np.int32).reshape(-1, seq_len + 1)
    return out


def test_text_pieces_tile_the_corpus(tmp_path, monkeypatch):
    # 1- to 4-byte UTF-8 characters, cut into 97-byte pieces: every cut lands somewhere odd
    rng = np.random.default_rng(5)
    alphabet = list("abcdefgh ijklm\n") + ["é", "ß", "—", "✓", "你", "好", "🙂", "𝄞"]
    text = "".join(rng.choice(alphabet, 3000))
    src = tmp_path / "multi.txt"
    src.write_text(text, encoding="utf-8")
    monkeypatch.setattr(prepare_mod, "TEXT_PIECE_BYTES", 97)
    raw = text.encode("utf-8")
    cases = [
        (DataConfig(source=str(src), seq_len=16), list(text), 16),
        (DataConfig(source=str(src), seq_len=10, stride=3, max_items=2501, val_fraction=0.3), list(text[:2501]), 3),
        (DataConfig(source=str(src), seq_len=16, stride=5, tokenizer="byte"), list(raw), 5),
    ]
    for i, (cfg, tokens, stride) in enumerate(cases):
        prepared = prepare_data(cfg, str(tmp_path / f"s{i}"))
        vocab = list(range(256)) if cfg.tokenizer == "byte" else sorted(set(tokens))
        assert prepared.spec.vocab_size == len(vocab)
        index = {t: j for j, t in enumerate(vocab)}
        ids = [index[t] for t in tokens]
        want = reference_windows(ids, int(len(ids) * (1 - cfg.val_fraction)), cfg.seq_len, stride)
        for split in ("train", "val"):
            np.testing.assert_array_equal(prepared.read_numpy(split)["tokens"], want[split])
        assert len(prepared.files("train")) > 10  # really cut into many pieces, each its own task
    assert prepared.tokenizer.decode(prepared.read_numpy("train")["tokens"][0].tolist()) == raw[:17].decode("utf-8", "replace")


def test_many_text_files_split_by_file(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "more").mkdir(parents=True)
    texts = {}
    for i in range(12):
        name = f"more/doc{i:02d}.txt" if i % 4 == 0 else f"doc{i:02d}.txt"
        texts[name] = f"document {i} says: " + " ".join(f"w{i}x{j}" for j in range(40)) + "\n"
        (corpus / name).write_text(texts[name], encoding="utf-8")
    (corpus / ".hidden.txt").write_text("never read", encoding="utf-8")
    cfg = DataConfig(source=str(corpus), seq_len=16, val_fraction=0.25)
    prepared = prepare_data(cfg, str(tmp_path / "store"))
    m = prepared.manifest
    score = {n: int(hashlib.sha256(n.encode()).hexdigest()[:15], 16) / 16**15 for n in texts}
    val_names = sorted(n for n in texts if score[n] < 0.25)
    assert m["val_files"] == val_names and 0 < len(val_names) < 12 and m["source_files"] == 12
    tok = prepared.tokenizer
    assert "never" not in "".join(tok.chars) or all("never" not in t for t in texts.values())
    for split, names in (("train", sorted(set(texts) - set(val_names))), ("val", val_names)):
        rows = prepared.read_numpy(split)["tokens"]
        assert len(rows) == sum(expected_windows(len(texts[n]), 16) for n in names)
        for w in rows:  # each window lies inside one file of its split: none crosses a file boundary
            assert any(tok.decode(w.tolist()) in texts[n] for n in names)
    # a glob picks the same files; adding a file moves no other file between the splits
    (corpus / "doc99.txt").write_text("document 99 " * 30, encoding="utf-8")
    again = prepare_data(DataConfig(source=str(corpus / "**.txt"), seq_len=16, val_fraction=0.25), str(tmp_path / "store"))
    assert again.manifest["source_files"] == 13
    assert set(again.manifest["val_files"]) - {"doc99.txt"} == set(val_names)
    # a list of files, split by position across them; split by file needs two files
    two = [str(corpus / "doc01.txt"), str(corpus / "doc02.txt")]
    pos = prepare_data(DataConfig(source=two, seq_len=16, split="position", val_fraction=0.5), str(tmp_path / "store"))
    assert pos.num_rows("train") == expected_windows(len(texts["doc01.txt"]), 16)
    with pytest.raises(DataError, match="data.split=file needs at least 2 files"):
        prepare_data(DataConfig(source=two[0], seq_len=16, split="file"), str(tmp_path / "store"))
    # one file that is not UTF-8 among many: named, or skipped and counted
    (corpus / "bad.txt").write_bytes(b"caf\xe9 au lait " * 20)
    with pytest.raises(DataError, match=r"bad\.txt is not valid UTF-8 \(byte 0xe9 at offset 3\).*skip_bad_files=true"):
        prepare_data(DataConfig(source=str(corpus), seq_len=16), str(tmp_path / "store"))
    skip = prepare_data(DataConfig(source=str(corpus), seq_len=16, skip_bad_files=True), str(tmp_path / "store"))
    assert skip.manifest["skipped_files"]["count"] == 1 and "bad.txt" in skip.manifest["skipped_files"]["files"][0]
    assert skip.num_rows("train") + skip.num_rows("val") == again.num_rows("train") + again.num_rows("val")


def _png(path, size=(12, 12), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def test_image_folder_skip_bad_files_and_jpeg(tmp_path):
    root = tmp_path / "imgs"
    for i in range(6):
        _png(root / ("cats" if i % 2 else "dogs") / f"{i}.png", seed=i)
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(root / "dogs" / "9.jpg", quality=95)
    good = prepare_data(DataConfig(source=str(root), modality="image", val_fraction=0.0), str(tmp_path / "a"))
    assert good.num_rows("train") == 7 and good.spec.num_classes == 2
    (root / "dogs" / "7.png").write_bytes((root / "dogs" / "0.png").read_bytes()[:60])  # truncated
    with pytest.raises(DataError, match=r"dogs/7\.png in .* cannot be read: .*skip_bad_files"):
        prepare_data(DataConfig(source=str(root), modality="image"), str(tmp_path / "b"))
    assert leftovers(tmp_path / "b") == []
    skip = prepare_data(DataConfig(source=str(root), modality="image", skip_bad_files=True, val_fraction=0.0), str(tmp_path / "b"))
    assert skip.num_rows("train") == 7
    assert skip.manifest["skipped_files"]["count"] == 1 and "dogs/7.png" in skip.manifest["skipped_files"]["files"][0]
    np.testing.assert_array_equal(skip.read_numpy("train")["image"], good.read_numpy("train")["image"])
    assert "skipped 1 unreadable file(s)" in skip.summary()


def test_parquet_column_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray

    lines = [f"line {i}: the quick brown fox" for i in range(50)]
    pq.write_table(pa.table({"body": lines, "n": list(range(50))}), tmp_path / "t.parquet")
    text = prepare_data(DataConfig(source=str(tmp_path / "t.parquet"), seq_len=16, columns={"text": "body"}), str(tmp_path / "s"))
    joined = "\n".join(lines)
    assert text.num_rows("train") == expected_windows(int(len(joined) * 0.9), 16)
    assert text.tokenizer.decode(text.read_numpy("train")["tokens"][0].tolist()) == joined[:17]

    imgs = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    pq.write_table(pa.table({"img": ArrowTensorArray.from_numpy(imgs), "y": np.arange(20) % 3}), tmp_path / "i.parquet")
    cfg = DataConfig(source=str(tmp_path / "i.parquet"), modality="image", columns={"image": "img", "label": "y"}, val_fraction=0.25)
    prepared = prepare_data(cfg, str(tmp_path / "s"))
    assert prepared.spec.num_classes == 3 and (prepared.num_rows("train"), prepared.num_rows("val")) == (15, 5)
    np.testing.assert_array_equal(prepared.read_numpy("val")["image"][:, 0], imgs[::4])


# `creagen prepare` on bad sources: one line naming the file, exit 2, no traceback, nothing written


def _corrupt_png(t):
    _png(t / "imgs" / "a.png")
    raw = bytearray((t / "imgs" / "a.png").read_bytes())
    raw[60:90] = b"\0" * 30
    _png(t / "imgs" / "b.png", seed=1)
    (t / "imgs" / "c.png").write_bytes(bytes(raw))
    return {"source": str(t / "imgs"), "modality": "image"}, "c.png"


def _text_as_png(t):
    _png(t / "imgs" / "a.png")
    (t / "imgs" / "notes.png").write_text("just some text\n", encoding="utf-8")
    return {"source": str(t / "imgs"), "modality": "image"}, "notes.png"


def _truncated_png(t):
    _png(t / "imgs" / "a.png", size=(64, 64))
    raw = (t / "imgs" / "a.png").read_bytes()
    (t / "imgs" / "b.png").write_bytes(raw[: len(raw) // 2])
    return {"source": str(t / "imgs"), "modality": "image"}, "b.png"


def _int_text_parquet(t):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": list(range(100))}), t / "ints.parquet")
    return {"source": str(t / "ints.parquet")}, "ints.parquet"


def _corrupt_parquet(t):
    (t / "pq").mkdir()
    (t / "pq" / "bad.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 40)
    return {"source": str(t / "pq"), "modality": "image"}, "bad.parquet"


def _object_npy(t):
    np.save(t / "objs.npy", np.array([{"a": 1}, None, "x"], dtype=object), allow_pickle=True)
    return {"source": str(t / "objs.npy"), "modality": "image"}, "objs.npy"


def _mixed_modes(t):
    _png(t / "imgs" / "a.png", mode="L")
    _png(t / "imgs" / "b.png", mode="RGB")
    return {"source": str(t / "imgs"), "modality": "image"}, "b.png"


def _unknown_scheme(t):
    return {"source": "nosuch://bucket/corpus.txt"}, "nosuch://bucket/corpus.txt"


def _empty_prefix(t):
    (t / "empty").mkdir()
    return {"source": str(t / "empty")}, "empty"


@pytest.mark.parametrize(
    "make",
    [_corrupt_png, _text_as_png, _truncated_png, _int_text_parquet, _corrupt_parquet, _object_npy, _mixed_modes,
     _unknown_scheme, _empty_prefix],
    ids=lambda f: f.__name__.strip("_"),
)
def test_cli_prepare_bad_source_exits_2_naming_the_file(tmp_path, capsys, make):
    data, name = make(tmp_path)
    store = tmp_path / "store"
    cfg = tmp_path / "exp.yaml"
    family = {"family": "vae"} if data.get("modality") == "image" else {"family": "rnn"}
    cfg.write_text(yaml.safe_dump({"data": data, "model": family, "train": {"storage_path": str(store)}}), encoding="utf-8")
    assert main(["prepare", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err, err
    assert leftovers(store) == []
