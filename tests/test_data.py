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

    def write_then_crash(columns, out_dir, rows_per_shard):
        calls.append(out_dir)
        if len(calls) == 2:  # train written, crash on val
            raise RuntimeError("disk full")
        return real_write(columns, out_dir, rows_per_shard)

    real_write = prepare_mod._write_split
    monkeypatch.setattr(prepare_mod, "_write_split", write_then_crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_data(cfg, str(tmp_path), force=True)
    assert json.loads((out / "manifest.json").read_text()) == before
    assert load_prepared(out).manifest == good.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "small.txt"]  # temp dir removed
    assert not os.path.exists(calls[0])


def test_refuses_to_replace_a_foreign_folder_and_load_checks(tmp_path, small_text):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError, match="data.output_dir: .* is not a prepared data folder"):
        prepare_data(DataConfig(source=str(small_text), seq_len=8, output_dir=str(foreign)), str(tmp_path))
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"
    with pytest.raises(DataError, match="no readable manifest.json"):
        load_prepared(foreign)
