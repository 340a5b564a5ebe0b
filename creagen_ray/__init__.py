"""creagen-ray: train, tune and serve creative generative models (RNN, VAE, GAN) on Ray."""

__version__ = "0.1.0"
