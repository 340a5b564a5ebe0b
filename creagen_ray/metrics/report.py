"""The `quality` section of a bundle's metrics.json (and so of /v1/models): what each number is, and of what.

Images (GAN samples; the conv VAE's prior samples), from the run's final evaluation over the
whole validation split, one sample per real image:
    fcd, precision, recall, max_class_share, classes_covered, class_balance_ok
    feature_extractor   the network the numbers were computed with (the FeatureNet classifier:
                        fcd is a Fréchet *classifier* distance, not Inception FID)
    eval_items / split_items   how many validation images the numbers cover, of how many
    (+ neg_elbo for the VAE: nats per image)
Text (RNN; sentence VAE; text GAN), from the final evaluation and a few unconditional samples drawn
here at the model's default temperature (`model.temperature`, as served):
    bits_per_char (bits per byte for the byte tokenizer), distinct_1..4, novelty_8gram (share of
    the samples' character 8-grams absent from the training split), samples (how many), sample_chars,
    sample_temperature (the temperature they were drawn at; train.sample_metrics' scores use it too)
"""

from __future__ import annotations

import math
from typing import Any

from creagen_ray.metrics.text import NGramIndex, distinct_n

IMAGE_KEYS = ("fcd", "precision", "recall", "max_class_share", "classes_covered", "class_balance_ok")
TEXT_SAMPLES = 16
TEXT_SAMPLE_TOKENS = 200
SAMPLE_KEYS = ("sample_lm_score", "sample_reverse_lm_score", "sample_bleu4", "sample_self_bleu4", "sample_novelty8")
NOVELTY_CORPUS_ROWS = 20000  # training windows indexed for the 8-gram check (about 2.5M chars at 128)


def image_quality_section(metrics: dict[str, Any]) -> dict[str, Any]:
    """Collect the image metrics of a final evaluation (val_* for GANs, val_prior_* for the conv VAE)."""
    prefix = "val_prior_" if "val_prior_fcd" in metrics else "val_"
    out: dict[str, Any] = {k: metrics[prefix + k] for k in IMAGE_KEYS if prefix + k in metrics}
    if not out:
        return {}
    out["samples"] = "vae prior samples" if prefix == "val_prior_" else "generator samples"
    out["feature_extractor"] = metrics.get(
        "feature_extractor", "a fixed random conv FeatureNet (the data has no labels): fcd on random features"
    )
    if "val_neg_elbo" in metrics:
        out["neg_elbo"] = metrics["val_neg_elbo"]
    return out


def text_quality_section(family: Any, metrics: dict[str, Any], prepared: Any) -> dict[str, Any]:
    """bits/char of the final evaluation, distinct-n and 8-gram novelty of samples at the model's default temperature."""
    from creagen_ray.config import TextRequest

    out: dict[str, Any] = {}
    tok = prepared.tokenizer
    unit = "bits_per_byte" if type(tok).__name__.lower().startswith("byte") else "bits_per_char"
    if "val_recon_per_token" in metrics:  # sentence VAE: the reconstruction term per token
        out[unit] = float(metrics["val_recon_per_token"]) / math.log(2)
        out[unit + "_note"] = "sentence VAE reconstruction term only (the KL comes on top)"
    elif "val_loss" in metrics:
        out[unit] = float(metrics["val_loss"]) / math.log(2)
    try:
        req = family.text_request(TextRequest(n=TEXT_SAMPLES, max_new_tokens=TEXT_SAMPLE_TOKENS, seed=0))
        samples = family.generate(req)
    except (ValueError, TypeError):
        return out
    samples = [s for s in samples if s]
    if not samples or tok is None:
        return out
    for n in (1, 2, 3, 4):
        out[f"distinct_{n}"] = distinct_n(samples, n)
    rows = prepared.read_numpy("train", ["tokens"])["tokens"][:NOVELTY_CORPUS_ROWS]
    corpus = [tok.decode([int(i) for i in row]) for row in rows]
    out["novelty_8gram"] = NGramIndex(corpus, n=8).novelty(samples)
    out["samples"] = len(samples)
    out["sample_chars"] = sum(len(s) for s in samples)
    out["sample_temperature"] = req.temperature
    out["novelty_corpus"] = f"character 8-grams of {len(corpus)} training windows"
    # train.sample_metrics: the text-GAN literature's scores (creagen_ray.training.sample_metrics)
    out.update({k: metrics[k] for k in SAMPLE_KEYS if k in metrics})
    return out


def quality_section(family: Any, metrics: dict[str, Any], prepared: Any) -> dict[str, Any]:
    """The bundle's `quality` dict for its modality, with which split size the numbers cover."""
    if prepared.spec.modality == "image":
        out = image_quality_section(metrics)
    else:
        out = text_quality_section(family, metrics, prepared)
    if "val_items" in metrics:
        out["eval_items"] = int(metrics["val_items"])
        out["split_items"] = int(metrics.get("val_split_items", metrics["val_items"]))
        out["whole_split"] = bool(metrics.get("val_final")) and out["eval_items"] == out["split_items"]
    return out
