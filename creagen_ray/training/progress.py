"""Progress lines for `creagen train`: step/total, losses, throughput, ETA, checkpoints.

`ProgressCallback` is a Ray Train `UserCallback`: it runs in the Train controller (one place that
sees every rank's report), sums the ranks' throughput, and prints one plain line per report.
Ray forwards the controller's stdout to the driver, so the lines appear in the terminal (and in a
Ray Job's logs).
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = int(max(0, round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def format_progress(
    name: str, metrics: list[dict[str, Any]], unit: str, checkpoint: bool, shown: tuple[str, ...] = ("loss",)
) -> str:
    """One progress line from every rank's metrics (rank 0's `shown` metrics, summed throughput)."""
    m = metrics[0]
    step, total = int(m.get("step", 0)), int(m.get("total_steps", 0))
    if m.get("nonfinite"):
        return f"[{name}] step {step}/{total}  STOPPED: {m.get('nonfinite_what', 'non-finite loss')}"
    parts = [f"[{name}] step {step}/{total}" + (f" ({100 * step / total:.0f}%)" if total else "")]
    parts += [f"{k} {float(m[k]):.4f}" for k in shown if k in m]
    rate = sum(float(r.get("items_per_s", 0.0)) for r in metrics)
    parts.append(f"{rate:,.0f} {unit}/s")
    steps_per_s = float(m.get("steps_per_s", 0.0))
    if steps_per_s > 0 and total > step:
        parts.append(f"eta {format_duration((total - step) / steps_per_s)}")
    if checkpoint:
        parts.append("checkpoint")
    return "  ".join(parts)


class ProgressCallback(UserCallback):
    """Print a progress line after every report (runs in the Ray Train controller)."""

    def __init__(self, name: str, unit: str, shown: tuple[str, ...] = ("loss",)) -> None:
        self.name = name
        self.unit = unit
        self.shown = shown  # the family's progress_metrics
        self.warned: set[str] = set()

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Called by Ray Train once all ranks reported."""
        warning = metrics[0].get("resume_warning") if metrics else None
        if warning and warning not in self.warned:  # a corrupt latest checkpoint was skipped on resume
            self.warned.add(warning)
            print(f"[{self.name}] WARNING: {warning}", flush=True)
        if metrics:
            print(format_progress(self.name, metrics, self.unit, checkpoint is not None, self.shown), flush=True)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """Say which rank failed and that Ray Train decides whether to restart from a checkpoint."""
        for rank, err in sorted(worker_exceptions.items()):
            print(f"[{self.name}] worker {rank} failed: {type(err).__name__}: {err}", flush=True)


class MetricsLogCallback(UserCallback):
    """Append every report of every rank to a JSON-lines file (one line per report: all ranks).

    Runs in the Train controller, so `path` must be on a filesystem that process can write
    (local runs, or a shared mount). Benchmarks and tests read it to see what each rank did.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Write one line: {"ranks": [metrics of rank 0, rank 1, ...], "checkpoint": path or null}."""
        import json

        line = {"ranks": metrics, "checkpoint": checkpoint.path if checkpoint is not None else None}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")
