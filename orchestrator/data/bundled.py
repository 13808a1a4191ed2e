"""Built-in prepare steps: scikit-learn's bundled datasets written to Parquet.

Nothing is downloaded: these datasets ship inside the scikit-learn wheel.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def bundled_frame(name: str) -> pd.DataFrame:
    from sklearn import datasets

    if name == "sklearn:digits":
        d = datasets.load_digits()
        # 8x8 grey images with values 0..16, stored as one array per row (data.image).
        return pd.DataFrame({"image": [row.astype(np.float32) for row in d.data], "label": d.target.astype(np.int64)})
    loaders = {
        "sklearn:breast_cancer": datasets.load_breast_cancer,
        "sklearn:wine": datasets.load_wine,
        "sklearn:diabetes": datasets.load_diabetes,
    }
    if name not in loaders:
        raise ValueError(f"unknown bundled dataset {name!r}")
    d = loaders[name]()
    cols = [c.replace(" ", "_") for c in d.feature_names]
    df = pd.DataFrame(d.data, columns=cols)
    if name == "sklearn:diabetes":
        df["target"] = d.target.astype(np.float64)
    else:
        df["label"] = np.asarray(d.target_names)[d.target]  # string class names
    return df


def write_table(df: pd.DataFrame, dest: str | os.PathLike) -> Path:
    """Write `df` to `dest` (.csv, else Parquet) atomically, so two processes preparing at once
    never see half a file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    os.close(fd)
    try:
        if dest.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def write_bundled(name: str, dest: str | os.PathLike) -> Path:
    df = bundled_frame(name)
    if Path(dest).suffix == ".csv" and "image" in df:
        raise ValueError("image datasets need Parquet (arrays do not fit in CSV)")
    return write_table(df, dest)
