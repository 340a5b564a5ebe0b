"""Standard Inception-v3 FID, available only when a local TorchScript weights file is configured.

Which file: NVIDIA's `inception-2015-12-05.pt`, a TorchScript export of the original TensorFlow FID
Inception graph, used by StyleGAN2-ADA/StyleGAN3 and clean-fid (published at
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt;
copy it onto the machine yourself, nothing here downloads). Being TorchScript it loads with
`torch.jit.load` alone: its call `detector(uint8 [N, 3, H, W], return_features=True)` resizes to
299 px inside and returns the 2048-d pool features, so numbers match published FIDs computed the
StyleGAN/clean-fid way.

Why not pytorch-fid or torch-fidelity: both declare torchvision as a dependency. pytorch-fid builds
its network from `torchvision.models.inception`; torch-fidelity's Inception module is plain torch,
but `import torch_fidelity` imports its CLIP/DINOv2 extractors, which import torchvision, and the
PyPI torchvision wheel does not import beside this torch build.

Trust: a TorchScript file is a program (`torch.jit.load` runs its code), so load only a file you
trust. Its sha256 must be configured beside the path (`sha256=` or $CREAGEN_INCEPTION_SHA256):
the file is hashed and refused on any mismatch, and an unconfigured digest is refused with the
file's actual digest in the message, for the operator to compare with the published file's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import torch

from creagen_ray.metrics.images import as_float01, frechet_distance, gaussian_stats

INCEPTION_WEIGHTS_ENV = "CREAGEN_INCEPTION_WEIGHTS"
INCEPTION_SHA256_ENV = "CREAGEN_INCEPTION_SHA256"
INCEPTION_FILE_NAME = "inception-2015-12-05.pt"


class InceptionUnavailable(RuntimeError):
    """No usable local Inception weights: the message says what is missing and how to supply it."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_inception(
    weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu", sha256: str | None = None
) -> torch.nn.Module:
    """Load the TorchScript FID Inception from `weights_path` (or $CREAGEN_INCEPTION_WEIGHTS) after checking its sha256.

    `sha256` (or $CREAGEN_INCEPTION_SHA256) is required: TorchScript runs code when loaded, so only a
    file whose digest the operator configured is ever loaded.
    """
    path = weights_path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not path:
        raise InceptionUnavailable(
            f"Inception FID needs a local {INCEPTION_FILE_NAME} (TorchScript; see creagen_ray/metrics/inception.py) "
            f"passed as weights_path or set in ${INCEPTION_WEIGHTS_ENV}; Inception weights cannot be downloaded here. "
            "Use metrics.fid with a FeatureNet (Fréchet classifier distance) instead."
        )
    p = Path(path)
    if not p.is_file():
        raise InceptionUnavailable(f"Inception weights file not found: {p} (expected NVIDIA's {INCEPTION_FILE_NAME})")
    want = (sha256 or os.environ.get(INCEPTION_SHA256_ENV) or "").strip().lower()
    got = _sha256(p)
    if not want:
        raise InceptionUnavailable(
            f"{p} is TorchScript (loading it runs its code): configure its sha256 (sha256= or ${INCEPTION_SHA256_ENV}) "
            f"after checking it against the published file; this file's sha256 is {got}"
        )
    if not hmac.compare_digest(got, want):
        raise InceptionUnavailable(f"{p}: sha256 {got} != the configured {want}; refusing to load it")
    try:
        return torch.jit.load(str(p), map_location=device).eval()
    except Exception as e:  # not TorchScript (e.g. a pytorch-fid .pth state dict, which needs torchvision's model)
        raise InceptionUnavailable(
            f"{p} is not a loadable TorchScript Inception ({type(e).__name__}: {e}); expected NVIDIA's "
            f"{INCEPTION_FILE_NAME}. pytorch-fid/torch-fidelity .pth files need torchvision, which is unavailable."
        ) from None


@torch.no_grad()
def inception_features(detector: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """2048-d Inception pool features [N, 2048] of images [N, 1|3, H, W] in [0, 1] (or uint8)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1|3, H, W], got {tuple(images.shape)}")
    device = next(iter(detector.parameters()), torch.empty(0)).device
    out = []
    for i in range(0, len(images), batch_size):
        x = (as_float01(images[i : i + batch_size]) * 255.0).round().clamp(0, 255).to(torch.uint8)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)  # gray -> RGB, as every published MNIST FID does
        out.append(detector(x.to(device), return_features=True).reshape(x.shape[0], -1).double().cpu())
    return torch.cat(out)


def inception_fid(
    real: torch.Tensor,
    fake: torch.Tensor,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    sha256: str | None = None,
) -> float:
    """Standard FID with Inception-v3 features (comparable with papers); raises InceptionUnavailable without weights.

    Slow on CPU (~6 GFLOP per image at 299 px): use it for final reports, not inside training.
    """
    detector = load_inception(weights_path, device, sha256)
    mu1, s1 = gaussian_stats(inception_features(detector, real, batch_size))
    mu2, s2 = gaussian_stats(inception_features(detector, fake, batch_size))
    return frechet_distance(mu1, s1, mu2, s2)
