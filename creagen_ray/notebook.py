"""The notebook facade: `creagen_ray.load(uri)` -> a Generator that reads well in Jupyter.

    import creagen_ray
    g = creagen_ray.load("runs/demo/bundles/gan")     # a bundle folder or an s3:// / gs:// URI
    g.generate(n=16, seed=0)                          # 16 PIL images; shown inline as one grid
    g.interpolate(seed_a=1, seed_b=2, steps=8)        # a latent walk (VAE, GAN)
    creagen_ray.load("runs/demo/bundles/rnn").generate(prompt="def ", n=2, seed=0)  # 2 strings

Requests validate through the same models as the CLI and the server (TextRequest, ImageRequest,
InterpolateRequest), so the caps and error messages are the same everywhere. Saved images carry
the provenance record (`creagen inspect` reads it).
"""

from __future__ import annotations

import io
import secrets
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from pydantic import ValidationError

from creagen_ray.bundle import Bundle, load_bundle
from creagen_ray.config import ConfigError, ImageRequest, InterpolateRequest, TextRequest, format_validation_error
from creagen_ray.images import decode_png, make_grid, png_bytes, to_pil
from creagen_ray.provenance import provenance, with_png_text


class Images(list):
    """A list of PIL images that displays as one grid (`_repr_png_`) and saves with provenance."""

    def __init__(self, tensor: torch.Tensor, record: dict[str, str], nrow: int | None = None) -> None:
        super().__init__(to_pil(make_grid(tensor[i : i + 1], padding=0)) for i in range(tensor.shape[0]))
        self.tensor = tensor  # [N, C, H, W] in [0, 1]
        self.record = record
        self.nrow = nrow

    def png(self) -> bytes:
        """The grid as PNG bytes with the provenance text chunks."""
        return with_png_text(png_bytes(self.tensor, self.nrow), self.record)

    def _repr_png_(self) -> bytes:
        return self.png()

    def save(self, path: str | Path) -> Path:
        """Write the grid PNG (with provenance) to `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.png())
        return path


class Generator:
    """A loaded, verified bundle with notebook-friendly methods."""

    def __init__(self, bundle: Bundle, name: str) -> None:
        self.bundle = bundle
        self.name = name

    def __repr__(self) -> str:
        caps = ", ".join(sorted(self.bundle.family.capabilities))
        return f"<creagen_ray.Generator {self.name!r}: {self.bundle.cfg.model.family} ({self.modality}; {caps})>"

    @property
    def modality(self) -> str:
        """text | image."""
        return self.bundle.modality

    @property
    def default_temperature(self) -> float | None:
        """Text models: the temperature a call without one decodes at (the bundle's model.temperature; 0 = greedy)."""
        return self.bundle.family.default_temperature

    @property
    def metrics(self) -> dict[str, Any]:
        """The bundle's final training metrics."""
        return dict(self.bundle.metrics)

    def _record(self, req: Any, seed: int | None) -> dict[str, str]:
        params = req.model_dump(exclude={"seed", "prompt"})
        return provenance(self.name, self.bundle.sha256, seed, params)

    def generate(self, prompt: str = "", n: int = 1, seed: int | None = None, **options: Any) -> list[str] | Images:
        """Text models: n continuations of `prompt` (strings). Image models: n images (PIL, shown as a grid).

        options: max_new_tokens, temperature (unset: the model's default, `default_temperature`), top_k,
        top_p, stop (text). A seed is drawn when none is given and kept in the images' provenance record.
        """
        if self.modality == "text":
            req = _validate(TextRequest, {"prompt": prompt, "n": n, "seed": seed, **options})
            return list(self.bundle.generate(req))
        if prompt or options:
            raise ConfigError(f"image models take n and seed only (got prompt/options {sorted(options) or ['prompt']})")
        req = _validate(ImageRequest, {"n": n, "seed": secrets.randbelow(2**31) if seed is None else seed})
        return Images(self.bundle.generate(req), self._record(req, req.seed))

    def stream(self, prompt: str = "", seed: int | None = None, **options: Any) -> Iterator[str]:
        """Text pieces of one sample as the model produces them (text models that can stream)."""
        if "stream" not in self.bundle.family.capabilities:
            raise ConfigError(f"{self.name} ({self.bundle.cfg.model.family}) cannot stream text")
        req = _validate(TextRequest, {"prompt": prompt, "seed": seed, **options})
        return self.bundle.family.stream(req)  # type: ignore[attr-defined]

    def interpolate(self, seed_a: int = 0, seed_b: int = 1, steps: int = 8) -> Images:
        """A latent walk of `steps` images between the draws of two seeds (VAE, GAN)."""
        self._require("interpolate")
        req = _validate(InterpolateRequest, {"seed_a": seed_a, "seed_b": seed_b, "steps": steps})
        return Images(self.bundle.generate(req), self._record(req, None), nrow=steps)

    def reconstruct(self, image: Image.Image | str | Path | bytes) -> Images:
        """A VAE's reconstruction of an image (PIL image, path or PNG bytes), resized to the model's size."""
        self._require("reconstruct")
        if isinstance(image, Image.Image):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            image = buf.getvalue()
        elif not isinstance(image, bytes):
            image = Path(image).read_bytes()
        spec = self.bundle.spec
        x = decode_png(image, int(spec.channels), int(spec.image_size))
        with torch.no_grad():
            out = self.bundle.family.reconstruct(x)  # type: ignore[attr-defined]
        return Images(out, provenance(self.name, self.bundle.sha256, None, {"reconstruct": True}))

    def _require(self, capability: str) -> None:
        if capability not in self.bundle.family.capabilities:
            have = sorted(self.bundle.family.capabilities)
            raise ConfigError(f"{self.name} ({self.bundle.cfg.model.family}) cannot {capability}; it offers {have}")


def _validate(kind: type, fields: dict[str, Any]) -> Any:
    try:
        return kind.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e).replace("invalid config", "invalid request")) from None


def load(uri: str | Path, device: str = "cpu") -> Generator:
    """Load and verify a bundle (folder or storage URI) as a Generator."""
    name = str(uri).rstrip("/").split("/")[-1]
    if name == "bundle":  # <storage_path>/<run>/bundle: name it after the run
        name = str(uri).rstrip("/").split("/")[-2]
    return Generator(load_bundle(uri, device=device), name)
