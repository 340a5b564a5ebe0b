"""Ray Tune hyperparameter search around the Ray Train loop (see docs/tuning.md).

    from creagen_ray.tuning import tune_from_file
    result = tune_from_file("jobs/configs/demo-tune.yaml")
    print(result.summary())

`space` (search-space parsing and checks) is pure Python; Ray is imported only when a search runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creagen_ray.tuning.results import TuneResult
    from creagen_ray.tuning.search import run_search, tune_from_file

__all__ = ["TuneResult", "run_search", "tune_from_file"]


def __getattr__(name: str) -> Any:
    """Import the Ray-dependent parts lazily, so `tuning.space` stays free of Ray."""
    if name in ("run_search", "tune_from_file"):
        from creagen_ray.tuning import search

        return getattr(search, name)
    if name == "TuneResult":
        from creagen_ray.tuning.results import TuneResult

        return TuneResult
    raise AttributeError(name)
