"""An outside-style fuzzer: schemathesis cases from the live OpenAPI, `model` pinned to the served ids.

Cases are generated first (valid ones and deliberately invalid ones, per operation), then sent
concurrently over real HTTP, so a few hundred requests take seconds of serving time.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode


@dataclass
class FuzzReport:
    """Status counts of every fuzzed request, and the requests that got a 5xx."""

    statuses: Counter = field(default_factory=Counter)
    server_errors: list[tuple[str, str, Any, int, bytes]] = field(default_factory=list)
    invalid_sent: int = 0  # cases generated to violate the schema

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def pinned_schema(url: str, headers: dict[str, str], models: list[str]) -> Any:
    """The live OpenAPI with every `model` property narrowed to the served ids."""
    raw = httpx.get(f"{url}/openapi.json", headers=headers).json()
    for comp in raw["components"]["schemas"].values():
        if "model" in comp.get("properties", {}):
            comp["properties"]["model"] = {"type": "string", "enum": models}
    return schemathesis.openapi.from_dict(raw)


def fuzz(url: str, headers: dict[str, str], models: list[str], examples: int = 70, workers: int = 8) -> FuzzReport:
    """Up to `examples` valid and `examples` invalid cases per operation, sent `workers` at a time."""
    schema = pinned_schema(url, headers, models)
    cases: list[tuple[Any, bool]] = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def collect(case: Any) -> None:
                cases.append((case, mode == GenerationMode.NEGATIVE))

            try:
                collect()
            except Unsatisfiable:  # nothing to make invalid (a GET without parameters)
                pass

    def call(item: tuple[Any, bool]) -> tuple[Any, int, bytes]:
        case, _ = item
        r = case.call(base_url=url, headers=headers, timeout=300)
        return case, r.status_code, r.content[:300]

    report = FuzzReport(invalid_sent=sum(neg for _, neg in cases))
    with ThreadPoolExecutor(workers) as pool:
        for case, status, body in pool.map(call, cases):
            report.statuses[status] += 1
            if status >= 500:
                report.server_errors.append((case.method, case.path, case.body, status, body))
    return report
