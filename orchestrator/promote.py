"""The promotion gate: does the winner's held-out test metric clear the spec's threshold? Pure."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Optional

from orchestrator.spec import parse_promote

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Decision:
    promoted: bool
    rule: Optional[str]
    metric: Optional[str]
    value: Optional[float]
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def decide(rule: Optional[str], test_metrics: dict[str, float]) -> Decision:
    if rule is None:
        return Decision(True, None, None, None, "no promote rule in the spec: the winner is promoted")
    metric, op, threshold = parse_promote(rule)
    value = test_metrics.get(metric)
    if value is None:
        return Decision(False, rule, metric, None, f"{metric} was not measured on the test split")
    ok = OPS[op](value, threshold)
    verdict = "meets" if ok else "does not meet"
    return Decision(ok, rule, metric, value, f"{metric} = {value:.4f} {verdict} '{rule}'")
