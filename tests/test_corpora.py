"""Offline corpora for the text, series and image-file jobs (pure pandas/PIL, no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from orchestrator.data.corpora import (
    DOCSTRING_MODULES,
    TEXT_MAX_CHARS,
    TEXT_MIN_CHARS,
    TEXT_PER_CLASS,
    digits_png_folder,
    series_frame,
    text_frame,
    write_corpus,
)


@pytest.fixture(scope="module")
def texts() -> pd.DataFrame:
    return text_frame()


def test_text_frame_is_deterministic(texts):
    pd.testing.assert_frame_equal(texts, text_frame())


def test_text_frame_shape_and_balance(texts):
    assert list(texts.columns) == ["text", "label"]
    assert sorted(texts["label"].unique()) == sorted(DOCSTRING_MODULES)
    counts = texts["label"].value_counts()
    assert len(texts) >= 3000
    assert counts.max() <= TEXT_PER_CLASS and counts.min() >= TEXT_PER_CLASS // 2


def test_texts_are_clean(texts):
    lengths = texts["text"].str.len()
    assert lengths.between(TEXT_MIN_CHARS, TEXT_MAX_CHARS).all()
    assert (texts["text"] == texts["text"].str.strip()).all()
    assert not texts["text"].duplicated().any()


@pytest.mark.parametrize("name,points", [("co2", 2284), ("elnino", 732)])
def test_series_is_ordered_finite_and_deterministic(name, points):
    df = series_frame(name)
    assert list(df.columns) == ["date", "value"] and len(df) == points
    assert df["date"].is_monotonic_increasing and df["date"].is_unique
    assert np.isfinite(df["value"].to_numpy()).all()
    pd.testing.assert_frame_equal(df, series_frame(name))


def test_co2_gaps_are_interpolated_between_neighbours():
    from statsmodels.datasets import co2

    raw = co2.load_pandas().data["co2"].to_numpy()
    filled = series_frame("co2")["value"].to_numpy()
    gaps = np.flatnonzero(np.isnan(raw))
    assert len(gaps) > 0
    known = ~np.isnan(raw)
    assert (filled[known] == raw[known]).all()
    for i in gaps:
        before = raw[:i][known[:i]][-1]
        after = raw[i + 1 :][known[i + 1 :]][0]
        assert min(before, after) <= filled[i] <= max(before, after)


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown series 'nile'"):
        series_frame("nile")
    with pytest.raises(ValueError, match="unknown corpus 'text:novels'"):
        write_corpus("text:novels", tmp_path / "x.csv")


def test_digit_pngs_decode_to_the_source_digits(tmp_path):
    from sklearn.datasets import load_digits

    table = digits_png_folder(tmp_path, scale=4)
    src = load_digits()
    assert list(table.columns) == ["path", "label"] and len(table) == len(src.target)
    assert (table["label"].to_numpy() == src.target).all()
    for i in (0, 1, 500, len(table) - 1):
        img = Image.open(tmp_path / table["path"][i])
        assert img.mode == "L" and img.size == (32, 32)
        px = np.asarray(img, dtype=np.float64)
        down = px.reshape(8, 4, 8, 4).mean(axis=(1, 3))  # back to 8x8 by averaging each 4x4 block
        expected = src.images[i] * 255.0 / 16.0
        assert np.abs(down - expected).mean() < 32.0  # bilinear upscaling blurs the edges
        assert np.corrcoef(down.ravel(), expected.ravel())[0, 1] > 0.95


def test_digit_folder_is_idempotent_and_checks_its_scale(tmp_path):
    first = digits_png_folder(tmp_path, scale=2)
    png = tmp_path / first["path"][7]
    stamp, data = png.stat().st_mtime_ns, png.read_bytes()
    pd.testing.assert_frame_equal(first, digits_png_folder(tmp_path, scale=2))
    assert png.stat().st_mtime_ns == stamp and png.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="scale 3"):
        digits_png_folder(tmp_path, scale=3)


def test_write_corpus_tables_round_trip(tmp_path):
    images = write_corpus("images:digits-png", tmp_path / "digits" / "table.csv")
    table = pd.read_csv(images)
    assert (images.parent / table["path"][0]).is_file()
    assert Image.open(images.parent / table["path"][0]).size == (32, 32)

    series = write_corpus("series:elnino", tmp_path / "elnino.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(series), series_frame("elnino"), check_dtype=False)

    text = write_corpus("text:docstrings", tmp_path / "docstrings.csv")
    back = pd.read_csv(text, keep_default_na=False)
    pd.testing.assert_frame_equal(back, text_frame())
