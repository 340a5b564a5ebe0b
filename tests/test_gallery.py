"""`creagen demo` writes gallery.md: every family's sample grid / interpolation strip / text samples."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from creagen_ray.demo import write_gallery


def test_gallery_links_every_sample(tmp_path: Path) -> None:
    """Images are linked by relative name, text samples inlined, validation metrics shown."""
    Image.new("L", (8, 8)).save(tmp_path / "gan_samples.png")
    Image.new("L", (8, 8)).save(tmp_path / "gan_interpolation.png")
    (tmp_path / "rnn_samples.txt").write_text("--- prompt 'def ' ---\ndef f(x):", encoding="utf-8")
    summary = {
        "rnn": {"wall_s": 30.0, "samples": [str(tmp_path / "rnn_samples.txt")], "metrics": {"val_loss": 1.62, "step": 400}},
        "gan": {"wall_s": 40.0, "samples": [str(tmp_path / f"gan_{k}.png") for k in ("samples", "interpolation")],
                "metrics": {"val_fcd": 82.0}},
        "total_wall_s": 70.0,
    }
    text = write_gallery(tmp_path, summary).read_text()
    assert "![gan_samples](gan_samples.png)" in text and "![gan_interpolation](gan_interpolation.png)" in text
    assert "def f(x):" in text and "val_loss 1.62" in text and "val_fcd 82" in text and "total_wall_s" not in text



def test_readme_gallery_copies_exist_and_are_small() -> None:
    """The README's gallery images are committed, each under 60 KB, and carry creagen provenance."""
    from creagen_ray.provenance import is_creagen, read_png_text

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    images = [line.split("(")[1].rstrip(")") for line in readme.splitlines() if line.startswith("![") and "docs/gallery/" in line]
    assert images, "README shows no gallery image"
    for rel in images:
        assert (root / rel).is_file() and (root / rel).stat().st_size < 60_000, rel
        assert is_creagen(read_png_text(root / rel)), rel
