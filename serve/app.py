"""Import target of `serve run serve/config.yaml` and `serve deploy serve/config.yaml`.

The deployments live in creagen_ray/serving/app.py (importable from the installed package);
this file only turns the config's `args` (a ServeConfig) into the application.

    serve run serve/config.yaml                      # from the repository root
    serve run serve.app:app_builder bundles=runs/demo/bundles
"""

from __future__ import annotations

from ray.serve import Application

from creagen_ray.serving.app import build_app
from creagen_ray.serving.settings import ServeConfig


def app_builder(args: ServeConfig) -> Application:
    """Serve application builder: Ray validates `args` into a ServeConfig, we build the app."""
    return build_app(args)
