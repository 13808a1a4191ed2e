"""Every metric a run reports, spelled here once, and the promotion rule that names one."""

from __future__ import annotations

import math
import re
from typing import Literal, Optional

# Every metric a run reports, spelled here once. Each split reports them under its prefix:
# train_ (per epoch), val_ (per epoch, ranks checkpoints and trials) and test_ (once, at the end).
# F1, precision and recall are macro averages over the classes (scikit-learn's average="macro");
# ROC AUC is the binary AUC for two classes, else the macro average of one-vs-rest AUCs. They
# need the whole split's predictions, so validation and test report them and training does not.
LOSS, ACCURACY, RMSE, MAE = "loss", "accuracy", "rmse", "mae"
F1, PRECISION, RECALL, ROC_AUC = "f1", "precision", "recall", "roc_auc"
METRICS: dict[str, tuple[str, Optional[str]]] = {  # name -> (better when, the only task it fits; None: both)
    LOSS: ("min", None),
    ACCURACY: ("max", "classification"),
    F1: ("max", "classification"),
    PRECISION: ("max", "classification"),
    RECALL: ("max", "classification"),
    ROC_AUC: ("max", "classification"),
    RMSE: ("min", "regression"),
    MAE: ("min", "regression"),
}
METRIC_NAMES = tuple(METRICS)
WHOLE_SPLIT_METRICS = (F1, PRECISION, RECALL, ROC_AUC)  # not reported for the training split
FRACTIONS = (ACCURACY, *WHOLE_SPLIT_METRICS)  # between 0 and 1
TRAIN_PREFIX, VAL_PREFIX, TEST_PREFIX = "train_", "val_", "test_"
VAL_LOSS = VAL_PREFIX + LOSS  # the default checkpoint metric
TRAIN_METRICS = tuple(TRAIN_PREFIX + n for n in METRIC_NAMES if n not in WHOLE_SPLIT_METRICS)
VAL_METRICS = tuple(VAL_PREFIX + n for n in METRIC_NAMES)
TEST_METRICS = tuple(TEST_PREFIX + n for n in METRIC_NAMES)
ValMetric = Literal[VAL_METRICS]  # type: ignore[valid-type]  # Literal["val_loss", "val_accuracy", ...]
# Whether a lower ("min") or higher ("max") value is better, for the metrics a spec can name.
METRIC_MODES = {VAL_PREFIX + n: mode for n, (mode, _) in METRICS.items()}


PROMOTE_RE = re.compile(rf"^\s*({TEST_PREFIX})?({'|'.join(METRIC_NAMES)})\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(e[-+]?\d+)?)\s*$")


def parse_promote(rule: str) -> tuple[str, str, float]:
    m = PROMOTE_RE.match(rule)
    if not m:
        raise ValueError(
            f"expected '<metric> <op> <number>' with metric {', '.join(METRIC_NAMES[:-1])} or {METRIC_NAMES[-1]} "
            "and op >=, >, <= or <, e.g. 'accuracy >= 0.95'"
        )
    name, op, value = m.group(2), m.group(3), float(m.group(4))
    # A gate no model can pass (or every model passes) is a typo, found now rather than after training.
    if not math.isfinite(value):
        raise ValueError(f"threshold {m.group(4)} is not a finite number")
    if name in FRACTIONS and not 0 <= value <= 1:
        raise ValueError(f"{name} is a fraction between 0 and 1; the threshold {value:g} is outside it")
    if name not in FRACTIONS and value < 0:
        raise ValueError(f"{name} is never negative; the threshold {value:g} is below 0")
    if (op == ">" and name in FRACTIONS and value == 1) or (op == "<" and value == 0):
        raise ValueError(f"'{name} {op} {value:g}' can never pass")
    return TEST_PREFIX + name, op, value
