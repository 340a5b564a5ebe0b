"""Compatibility import target: `serve run serve.app:app_builder bundles=DIR[,DIR]` from the repo root.

The application lives in the installed package, so it works from any directory:

    serve run serve/config.yaml
    serve run creagen_ray.serving.app:app_builder bundles=runs/demo/bundles
    CREAGEN_BUNDLES=runs/demo/bundles serve build creagen_ray.serving.app:app -o built.yaml
"""

from __future__ import annotations

from creagen_ray.serving.app import app_builder

__all__ = ["app_builder"]
