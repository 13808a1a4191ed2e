"""Offline corpora for the text, time-series and image-file example jobs.

Every dataset here is built only from data that ships inside a Python package the project
installs (numpy, pandas, scipy, torch, scikit-learn, matplotlib, statsmodels); nothing is
downloaded. Each builder reads a fixed list of modules or files and sorts what it reads, so the
result is the same on every machine that has the same package versions installed.

Names for a job's ``data.prepare``:

- ``text:docstrings``   docstrings of public functions, classes and methods; label = library
- ``series:co2``        Mauna Loa weekly atmospheric CO2, 1958-2001 (statsmodels)
- ``series:elnino``     monthly Pacific sea surface temperature, 1950-2010 (statsmodels)
- ``images:digits-png`` scikit-learn's 8x8 digits written as upscaled grey PNG files
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

# label -> the modules whose public callables (and the public methods of their public classes)
# give that label's docstrings. Fixed, so the corpus does not depend on what else is installed.
# A module missing from an older version of its library is skipped.
DOCSTRING_MODULES: dict[str, tuple[str, ...]] = {
    "matplotlib": (
        "matplotlib",
        "matplotlib.animation",
        "matplotlib.axes",
        "matplotlib.axis",
        "matplotlib.backend_bases",
        "matplotlib.category",
        "matplotlib.cbook",
        "matplotlib.cm",
        "matplotlib.collections",
        "matplotlib.colorbar",
        "matplotlib.colors",
        "matplotlib.contour",
        "matplotlib.dates",
        "matplotlib.figure",
        "matplotlib.font_manager",
        "matplotlib.gridspec",
        "matplotlib.image",
        "matplotlib.legend",
        "matplotlib.lines",
        "matplotlib.mlab",
        "matplotlib.offsetbox",
        "matplotlib.patches",
        "matplotlib.patheffects",
        "matplotlib.projections.polar",
        "matplotlib.scale",
        "matplotlib.spines",
        "matplotlib.table",
        "matplotlib.text",
        "matplotlib.ticker",
        "matplotlib.transforms",
        "matplotlib.tri",
        "matplotlib.units",
        "matplotlib.widgets",
    ),
    "numpy": (
        "numpy",
        "numpy.char",
        "numpy.ctypeslib",
        "numpy.dtypes",
        "numpy.exceptions",
        "numpy.fft",
        "numpy.lib",
        "numpy.lib.format",
        "numpy.lib.npyio",
        "numpy.lib.recfunctions",
        "numpy.lib.scimath",
        "numpy.lib.stride_tricks",
        "numpy.linalg",
        "numpy.ma",
        "numpy.polynomial",
        "numpy.polynomial.chebyshev",
        "numpy.polynomial.hermite",
        "numpy.polynomial.hermite_e",
        "numpy.polynomial.laguerre",
        "numpy.polynomial.legendre",
        "numpy.polynomial.polynomial",
        "numpy.random",
        "numpy.rec",
        "numpy.strings",
        "numpy.testing",
    ),
    "pandas": (
        "pandas",
        "pandas.api.extensions",
        "pandas.api.indexers",
        "pandas.api.types",
        "pandas.api.typing",
        "pandas.arrays",
        "pandas.core.groupby",
        "pandas.core.indexes.accessors",
        "pandas.core.resample",
        "pandas.core.strings.accessor",
        "pandas.core.window",
        "pandas.errors",
        "pandas.io.formats.style",
        "pandas.plotting",
        "pandas.testing",
        "pandas.tseries.offsets",
    ),
    "scipy": (
        "scipy.cluster.hierarchy",
        "scipy.fft",
        "scipy.integrate",
        "scipy.interpolate",
        "scipy.io",
        "scipy.linalg",
        "scipy.ndimage",
        "scipy.optimize",
        "scipy.signal",
        "scipy.sparse",
        "scipy.spatial",
        "scipy.special",
        "scipy.stats",
    ),
    "sklearn": (
        "sklearn.base",
        "sklearn.calibration",
        "sklearn.cluster",
        "sklearn.compose",
        "sklearn.covariance",
        "sklearn.cross_decomposition",
        "sklearn.datasets",
        "sklearn.decomposition",
        "sklearn.discriminant_analysis",
        "sklearn.dummy",
        "sklearn.ensemble",
        "sklearn.exceptions",
        "sklearn.feature_extraction",
        "sklearn.feature_extraction.text",
        "sklearn.feature_selection",
        "sklearn.gaussian_process",
        "sklearn.impute",
        "sklearn.inspection",
        "sklearn.isotonic",
        "sklearn.kernel_approximation",
        "sklearn.kernel_ridge",
        "sklearn.linear_model",
        "sklearn.manifold",
        "sklearn.metrics",
        "sklearn.metrics.pairwise",
        "sklearn.mixture",
        "sklearn.model_selection",
        "sklearn.multiclass",
        "sklearn.multioutput",
        "sklearn.naive_bayes",
        "sklearn.neighbors",
        "sklearn.neural_network",
        "sklearn.pipeline",
        "sklearn.preprocessing",
        "sklearn.random_projection",
        "sklearn.semi_supervised",
        "sklearn.svm",
        "sklearn.tree",
        "sklearn.utils",
        "sklearn.utils.extmath",
        "sklearn.utils.multiclass",
        "sklearn.utils.sparsefuncs",
        "sklearn.utils.validation",
    ),
    "torch": (
        "torch",
        "torch.autograd",
        "torch.distributions",
        "torch.fft",
        "torch.linalg",
        "torch.nn",
        "torch.nn.functional",
        "torch.optim",
        "torch.sparse",
        "torch.special",
        "torch.utils.data",
    ),
}
TEXT_MIN_CHARS = 40  # shorter docstrings ("Alias for x.") carry no signal
TEXT_MAX_CHARS = 512  # first characters kept of each docstring
TEXT_PER_CLASS = 1100  # cap per library, so the classes are balanced (numpy, the smallest, has ~1120)

SERIES = ("co2", "elnino")
CORPORA = ("text:docstrings", "series:co2", "series:elnino", "images:digits-png")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _docstrings(label: str, modules: tuple[str, ...]) -> list[str]:
    texts: list[str] = []
    for modname in modules:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = getattr(mod, name, None)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            owner = getattr(obj, "__module__", None)
            if isinstance(owner, str) and owner.split(".")[0] != label:
                continue  # re-exported from another library
            objs = [obj]
            if inspect.isclass(obj):
                for attr, value in sorted(vars(obj).items()):
                    if attr.startswith("_"):
                        continue
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    if inspect.isfunction(value) or isinstance(value, property):
                        objs.append(value)
            for o in objs:
                doc = getattr(o, "__doc__", None)
                if isinstance(doc, str):
                    texts.append(inspect.cleandoc(doc).strip())
    return texts


def text_frame(name: str = "docstrings") -> pd.DataFrame:
    """Docstrings labelled with the library they come from: columns ``text`` and ``label``.

    Source: the ``__doc__`` strings of the public functions and classes (and the public methods
    those classes define) found in the modules listed in ``DOCSTRING_MODULES``, i.e. text that
    ships inside the installed numpy, pandas, scipy, torch, scikit-learn and matplotlib wheels.
    Objects re-exported from another library are skipped. Each text is cut to its first
    ``TEXT_MAX_CHARS`` characters; texts shorter than ``TEXT_MIN_CHARS``, texts that mention the
    platform (numpy's scalar types name the local C type aliases), texts that occur under more
    than one library, and repeats are dropped. Each library keeps at most ``TEXT_PER_CLASS``
    texts, chosen by the SHA-256 of the text, and rows are ordered by that hash. The content
    depends only on the installed versions of those libraries.
    """
    if name != "docstrings":
        raise ValueError(f"unknown text corpus {name!r}; known: docstrings")
    rows = []
    for label in sorted(DOCSTRING_MODULES):
        for text in _docstrings(label, DOCSTRING_MODULES[label]):
            text = text[:TEXT_MAX_CHARS].strip()
            if len(text) >= TEXT_MIN_CHARS and "this platform" not in text:
                rows.append((text, label))
    df = pd.DataFrame(rows, columns=["text", "label"])
    shared = df.groupby("text")["label"].nunique()
    df = df[df["text"].map(shared) == 1].drop_duplicates("text")
    df = df.assign(_h=df["text"].map(_digest)).sort_values(["label", "_h"])
    df = df.groupby("label", sort=True).head(TEXT_PER_CLASS).sort_values("_h")
    return df[["text", "label"]].reset_index(drop=True)


def series_frame(name: str) -> pd.DataFrame:
    """One long real series, ordered by date: columns ``date`` (datetime64) and ``value`` (float64).

    - ``co2``: ``statsmodels.datasets.co2`` (file ``statsmodels/datasets/co2/co2.csv`` in the
      statsmodels wheel): weekly atmospheric CO2 at Mauna Loa in ppmv, March 1958 - December
      2001, 2284 weeks. The 59 weeks with no measurement are filled by linear interpolation
      between their neighbours.
    - ``elnino``: ``statsmodels.datasets.elnino`` (``statsmodels/datasets/elnino/elnino.csv``):
      monthly sea surface temperature in degrees Celsius, Nino 1+2 region, 1950-2010, 732
      months, no gaps. Each month is dated on its first day.
    """
    if name == "co2":
        from statsmodels.datasets import co2

        raw = co2.load_pandas().data["co2"].astype(np.float64)
        value = raw.interpolate(method="linear", limit_direction="both")
        df = pd.DataFrame({"date": raw.index.to_numpy(), "value": value.to_numpy()})
    elif name == "elnino":
        from statsmodels.datasets import elnino

        wide = elnino.load_pandas().data
        months = [c for c in wide.columns if c != "YEAR"]
        long = wide.melt(id_vars="YEAR", value_vars=months, var_name="month", value_name="value")
        long["date"] = pd.to_datetime(
            {"year": long["YEAR"].astype(int), "month": long["month"].map(lambda m: months.index(m) + 1), "day": 1}
        )
        df = long[["date", "value"]].astype({"value": np.float64})
    else:
        raise ValueError(f"unknown series {name!r}; known: {', '.join(SERIES)}")
    df["date"] = df["date"].astype("datetime64[ns]")
    return df.sort_values("date").reset_index(drop=True)


def _digit_png(pixels: np.ndarray, scale: int) -> bytes:
    import io

    from PIL import Image

    grey = np.rint(np.asarray(pixels, dtype=np.float64).reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8)
    img = Image.fromarray(grey, mode="L").resize((8 * scale, 8 * scale), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def digits_png_folder(dest: str | os.PathLike, scale: int = 4) -> pd.DataFrame:
    """Write scikit-learn's digits (``sklearn.datasets.load_digits``, shipped in the wheel) as PNGs.

    Each 8x8 image (values 0..16) becomes a grey PNG of ``8*scale`` x ``8*scale`` pixels (values
    scaled to 0..255, upscaled bilinearly) at ``dest/images/NNNN.png``, numbered in dataset
    order. Returns the table: ``path`` (relative to ``dest``, where the table belongs) and
    ``label`` (int). The folder is written to a temporary name and renamed into place, so a
    reader never sees half of it; calling again with the same ``scale`` reuses it, and an
    existing folder made with another scale is an error.
    """
    from sklearn.datasets import load_digits

    if not isinstance(scale, int) or not 1 <= scale <= 32:
        raise ValueError(f"scale must be an integer from 1 to 32, got {scale!r}")
    dest = Path(dest)
    d = load_digits()
    paths = [f"images/{i:04d}.png" for i in range(len(d.target))]
    table = pd.DataFrame({"path": paths, "label": d.target.astype(np.int64)})
    manifest = {"source": "sklearn.datasets.load_digits", "scale": scale, "count": len(paths)}
    folder = dest / "images"
    if not folder.exists():
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".images-"))
        try:
            for rel, pixels in zip(paths, d.data):
                (tmp / Path(rel).name).write_bytes(_digit_png(pixels, scale))
            (tmp / "MANIFEST.json").write_text(json.dumps(manifest, sort_keys=True) + "\n")
            try:
                os.replace(tmp, folder)
            except OSError:
                if not folder.exists():  # anything but "another writer got there first"
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        found = json.loads((folder / "MANIFEST.json").read_text())
    except (OSError, ValueError):
        found = None
    if found != manifest:
        raise ValueError(
            f"{folder} exists but does not hold the digits at scale {scale} "
            f"(its MANIFEST.json says {found}); remove it or write to another folder"
        )
    return table


def corpus_frame(name: str, dest: str | os.PathLike | None = None) -> pd.DataFrame:
    """The table for one of ``CORPORA``; image corpora write their files next to ``dest``."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    kind, _, which = name.partition(":")
    if kind == "text":
        return text_frame(which)
    if kind == "series":
        return series_frame(which)
    if kind == "images" and which == "digits-png":
        if dest is None:
            raise ValueError("images:digits-png needs a destination folder for its files")
        return digits_png_folder(Path(dest).parent)
    raise AssertionError(name)


def write_corpus(name: str, dest: str | os.PathLike) -> Path:
    """Write the table for ``name`` to ``dest`` (.csv or .parquet), atomically.

    Image files go to ``images/`` next to ``dest``; the table's ``path`` column is relative to
    the table's folder.
    """
    from orchestrator.data.bundled import write_table

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return write_table(corpus_frame(name, dest), dest)
