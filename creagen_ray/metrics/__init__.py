"""Quality metrics for generated text and images (pure PyTorch/NumPy, no Ray).

text:   perplexity, bits_per_token, distinct_n, diversity, NGramIndex(corpus).novelty(samples)
images: precision_recall, class_coverage, image_quality (manifold.py), frechet_distance, FeatureNet, train_feature_net, random_feature_net, fid, inception_score,
        nearest_neighbour_distance; inception_fid when a local Inception weights file exists.

    net = train_feature_net(train_images, train_labels, num_classes=10, steps=400)
    real = feature_stats(net, val_images)          # once
    fid(net, real, family.generate(ImageRequest(n=64)))
"""

from creagen_ray.metrics.images import (
    FeatureNet,
    classifier_accuracy,
    extract_features,
    feature_net_bytes,
    feature_net_from_bytes,
    feature_stats,
    fid,
    frechet_distance,
    gaussian_stats,
    inception_score,
    nearest_neighbour_distance,
    nearest_neighbour_distances,
    random_feature_net,
    train_feature_net,
)
from creagen_ray.metrics.manifold import class_coverage, image_quality, precision_recall
from creagen_ray.metrics.inception import InceptionUnavailable, inception_fid, load_inception
from creagen_ray.metrics.text import (
    NGramIndex,
    bits_per_token,
    distinct_n,
    diversity,
    ngrams,
    novelty,
    perplexity,
)

__all__ = [
    "FeatureNet",
    "InceptionUnavailable",
    "NGramIndex",
    "bits_per_token",
    "class_coverage",
    "classifier_accuracy",
    "distinct_n",
    "diversity",
    "extract_features",
    "feature_net_bytes",
    "feature_net_from_bytes",
    "feature_stats",
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "image_quality",
    "inception_fid",
    "inception_score",
    "load_inception",
    "nearest_neighbour_distance",
    "nearest_neighbour_distances",
    "ngrams",
    "novelty",
    "perplexity",
    "precision_recall",
    "random_feature_net",
    "train_feature_net",
]
