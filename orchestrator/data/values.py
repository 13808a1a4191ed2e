"""Cell values as plain Python: what JSON carries and what compares equal across pandas, Arrow and numpy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def is_missing(v: Any) -> bool:
    """None, pandas' NA and NaT, or a float NaN: a cell without a value."""
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def plain_value(v: Any, *, nan_as_none: bool = False) -> Any:
    """numpy scalars and arrays -> Python scalars and lists (all the way down), so values compare
    and serialise as JSON values; with `nan_as_none`, NaN becomes None (JSON has no NaN)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [plain_value(x, nan_as_none=nan_as_none) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if nan_as_none and isinstance(v, float) and math.isnan(v):
        return None
    return v
