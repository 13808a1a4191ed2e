"""Input kinds: one module per kind of model input, behind a registry (see base.py)."""

from orchestrator.data.kinds.base import (
    ColumnCheck,
    Columns,
    InputKind,
    OrderedSplits,
    RequestTooLarge,
    TrainSplit,
)
from orchestrator.data.kinds.registry import for_spec, from_dict, get, names, register, unregister
