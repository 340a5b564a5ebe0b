"""creagen-ray: train, tune and serve creative generative models (RNN, VAE, GAN) on Ray."""

__version__ = "0.1.0"


def load(uri: str, device: str = "cpu") -> "Generator":  # noqa: F821
    """Load a trained bundle (folder or s3:// / gs:// URI) as a notebook-friendly Generator."""
    from creagen_ray.notebook import load as _load

    return _load(uri, device=device)
