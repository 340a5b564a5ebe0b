"""Precision/recall in feature space (Kynkäänniemi et al. 2019) and class coverage of a sample set.

FID mixes quality and diversity into one number. These two separate them:

  precision  share of generated samples that fall inside the real data's k-NN manifold
             (each real feature vector's ball reaches its k-th nearest real neighbour): quality;
  recall     share of real samples inside the generated samples' k-NN manifold: diversity.

Both are in [0, 1]; identical sets give 1.0 for both. k = 3 as in the paper. Features come from the
same extractor as FID (the project's FeatureNet classifier, see images.py), so the numbers are only
comparable under the same extractor.

Class coverage asks the classifier which class each sample is: a generator that drops modes (or
makes every third sample a 9) shows a large `max_class_share` or few `classes_covered`.

    p, r = precision_recall(real_features, fake_features)          # [N, D], [M, D]
    cov = class_coverage(classifier_logits.argmax(1), num_classes=10)
"""

from __future__ import annotations

import numpy as np
import torch

# a class counts as covered when it holds at least this share of what a uniform split would give it
COVERED_SHARE = 0.25
# the bar: no class may hold more than this share of the samples
MAX_CLASS_SHARE = 0.15


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()


def kth_neighbour_radii(features: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance [N] from each row of features [N, D] to its k-th nearest other row."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} feature vectors, got {n}")
    out = torch.empty(n, dtype=features.dtype)
    for i in range(0, n, chunk):
        d = torch.cdist(features[i : i + chunk], features)  # [c, N]; the row itself is at distance 0
        out[i : i + chunk] = d.kthvalue(k + 1, dim=1).values
    return out


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Bool [M]: whether each point lies within radius of at least one centre."""
    hits = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # [c, N]
        hits.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def precision_recall(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake vs real features [N, D], [M, D]."""
    r, f = _as_tensor(real), _as_tensor(fake)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"need feature matrices [N, D] and [M, D], got {tuple(r.shape)} and {tuple(f.shape)}")
    precision = _inside(f, r, kth_neighbour_radii(r, k)).double().mean().item()
    recall = _inside(r, f, kth_neighbour_radii(f, k)).double().mean().item()
    return float(precision), float(recall)


def class_coverage(predicted: np.ndarray | torch.Tensor, num_classes: int) -> dict[str, float]:
    """How evenly predicted class ids [N] spread over num_classes classes.

    Returns max_class_share (largest share of one class), min_class_share, classes_covered (classes
    holding at least COVERED_SHARE / num_classes of the samples) and class_balance_ok (1.0 when no
    class holds more than MAX_CLASS_SHARE, i.e. 15%; for fewer than 7 classes the bar is 1.5 / num_classes).
    """
    p = torch.as_tensor(np.asarray(predicted) if not isinstance(predicted, torch.Tensor) else predicted).long().flatten()
    if p.numel() == 0:
        raise ValueError("class_coverage needs at least one prediction")
    if num_classes < 1 or p.min() < 0 or p.max() >= num_classes:
        raise ValueError(f"predictions must lie in [0, {num_classes})")
    share = torch.bincount(p, minlength=num_classes).double() / p.numel()
    bar = max(MAX_CLASS_SHARE, 1.5 / num_classes)
    return {
        "max_class_share": float(share.max()),
        "min_class_share": float(share.min()),
        "classes_covered": float((share >= COVERED_SHARE / num_classes).sum()),
        "class_balance_ok": float(share.max() <= bar),
    }


@torch.no_grad()
def image_quality(net: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Everything the image bundles report, under one feature extractor `net` (a FeatureNet).

    real, fake: images [N, C, H, W] in [0, 1] (or uint8). Returns fcd (the Fréchet distance of the
    net's features: a *classifier* distance, not Inception FID), precision, recall and, when the
    net is a trained classifier (num_classes >= 2), the class coverage of `fake`.
    """
    from creagen_ray.metrics.images import extract_features, frechet_distance, gaussian_stats

    fr, ff = extract_features(net, real), extract_features(net, fake)
    out = {"fcd": frechet_distance(*gaussian_stats(fr), *gaussian_stats(ff))}
    out["precision"], out["recall"] = precision_recall(fr, ff, k=k)
    if getattr(net, "num_classes", 0) >= 2:
        device = next(net.parameters()).device
        pred = torch.cat([net.head(ff[i : i + 1024].to(device)).argmax(1).cpu() for i in range(0, len(ff), 1024)])
        out.update(class_coverage(pred, net.num_classes))
    return out
