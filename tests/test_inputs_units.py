"""Text, sequence, series and image-file inputs without Ray: the Preprocessor's transform_inputs, the one
forward(), custom factories' extra arguments, and the training loop and checkpoints of rnn/transformer models."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from orchestrator.data.kinds.image import ImageInput
from orchestrator.data.kinds.sequence import SequenceInput
from orchestrator.data.kinds.series import SERIES_TARGET, SeriesInput
from orchestrator.data.kinds.text import TextInput
from orchestrator.data.preprocess import Preprocessor
from orchestrator.data.text import CLS, PAD, BpeTokenizer, ByteTokenizer
from orchestrator.models.build import build_model, forward
from orchestrator.spec import parse_spec
from orchestrator.train.checkpoint import load_model
from orchestrator.train.loop import batch_dtypes, run_loop
from orchestrator.train.plan import ClusterResources, build_loop_config, plan_workers
from tests.loop_support import ColumnBatches, StandInSession

TEXTS = ["the quick brown fox", "a lazy dog sleeps all day", "hello world", "fox and dog again today"] * 4


def _text_pre(max_length=10, lowercase=False) -> Preprocessor:
    tok = BpeTokenizer.fit(sorted(TEXTS), 300)
    return Preprocessor(
        task="classification",
        label="y",
        input=TextInput(column="t", tokenizer=tok.to_state(), max_length=max_length, lowercase=lowercase, vocab_size=tok.vocab_size),
        classes=["a", "b"],
    )


def test_text_inputs_are_ids_with_cls_and_lengths():
    pre = _text_pre()
    out = pre.transform(pd.DataFrame({"t": ["hello world", "the quick brown fox jumps"], "y": ["a", "b"]}))
    assert set(out) == {"x", "len", "y"} and out["x"].dtype == np.int64 and out["x"].shape == (2, 10)
    assert (out["x"][:, 0] == CLS).all() and out["x"][0, out["len"][0] :].tolist() == [PAD] * (10 - out["len"][0])
    assert pre.kind == "text" and pre.input_shape == [10] and pre.vocab_size == pre.input.vocab_size and pre.max_length == 10
    assert pre.feature_columns == ["t"]
    with pytest.raises(ValueError, match="column 't': row 1: empty string"):
        pre.transform_inputs(pd.DataFrame({"t": ["fine", ""]}))
    with pytest.raises(ValueError, match="column 't': row 0: .* more than max_length 10"):
        pre.transform_inputs(pd.DataFrame({"t": ["the quick brown fox " * 5]}), truncate=False)
    lower = _text_pre(lowercase=True)
    np.testing.assert_array_equal(
        lower.transform_features(pd.DataFrame({"t": ["HELLO World"]})), lower.transform_features(pd.DataFrame({"t": ["hello world"]}))
    )
    again = Preprocessor.from_dict(pre.to_dict())  # the checkpoint's JSON state replays the same ids
    np.testing.assert_array_equal(again.transform_features(pd.DataFrame({"t": TEXTS})), pre.transform_features(pd.DataFrame({"t": TEXTS})))


def test_sequence_inputs_pad_to_max_length_standardise_real_steps_and_keep_the_latest():
    pre = Preprocessor(
        task="regression", label="y", input=SequenceInput(column="s", max_length=4, features=2, means=[1.0, 10.0], stds=[2.0, 5.0])
    )
    cell = np.empty(2, dtype=object)  # how Arrow hands over a list of vectors
    cell[:] = [np.array([3.0, 15.0]), np.array([1.0, 10.0])]
    out = pre.transform_inputs(pd.DataFrame({"s": [cell, [[1, 10]] * 6]}))
    assert out["x"].shape == (2, 4, 2) and out["len"].tolist() == [2, 4]
    np.testing.assert_allclose(out["x"][0], [[1, 1], [0, 0], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="column 's': row 0: steps have 3 values, expected 2"):
        pre.transform_inputs(pd.DataFrame({"s": [[[1, 2, 3]]]}))
    with pytest.raises(ValueError, match="column 's': row 0: 6 steps, more than max_length 4"):
        pre.transform_inputs(pd.DataFrame({"s": [[[1, 10]] * 6]}), truncate=False)


def test_series_inputs_are_standardised_windows_and_decode_back_to_forecasts():
    pre = Preprocessor(
        task="regression",
        label=SERIES_TARGET,
        input=SeriesInput(column="v", window=3, horizon=2, mean=10.0, std=2.0),
        target_mean=10.0,
        target_std=2.0,
    )
    out = pre.transform(pd.DataFrame({"v": [[10, 12, 14]], SERIES_TARGET: [[16, 18]]}))
    np.testing.assert_allclose(out["x"][0, :, 0], [0, 1, 2])
    np.testing.assert_allclose(out["y"], [[3, 4]])
    assert out["len"].tolist() == [3] and pre.num_outputs == 2 and pre.input_shape == [3, 1]
    assert pre.decode(np.array([[3.0, 4.0]])) == [[16.0, 18.0]]
    with pytest.raises(ValueError, match="column 'v': row 0: a window holds 3 values"):
        pre.transform_inputs(pd.DataFrame({"v": [[1, 2]]}))


def _png(size=(5, 7), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 20, 30) if mode == "RGB" else 40).save(buf, format="PNG")
    return buf.getvalue()


def test_image_files_and_bytes_decode_to_the_shape(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    pre = Preprocessor(
        task="classification",
        label="y",
        input=ImageInput(column="p", shape=[1, 4, 4], source="path", root=str(tmp_path), mean=0.0, std=1.0),
        classes=[0, 1],
    )
    x = pre.transform_features(pd.DataFrame({"p": ["a.png", str(tmp_path / "a.png")]}))  # relative and absolute
    assert x.shape == (2, 1, 4, 4) and np.allclose(x[0], x[1])
    grey = round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)
    assert np.allclose(x, grey, atol=1)
    with pytest.raises(ValueError, match=f"{tmp_path / 'gone.png'}: image file not found \\(column 'p'\\)"):
        pre.transform_features(pd.DataFrame({"p": ["gone.png"]}))
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png \\(column 'p'\\): not a readable image"):
        pre.transform_features(pd.DataFrame({"p": ["bad.png"]}))
    rgb = Preprocessor(task="classification", label="y", input=ImageInput(column="b", shape=[3, 2, 2], source="bytes"), classes=[0, 1])
    x = rgb.transform_features(pd.DataFrame({"b": [_png()]}))
    np.testing.assert_allclose(x[0, :, 0, 0], [10, 20, 30])


@pytest.mark.parametrize(
    "arch",
    [
        {"arch": "rnn", "hidden": 8, "embedding": 8, "bidirectional": True},
        {"arch": "transformer", "d_model": 8, "heads": 2, "layers": 1, "ff": 16},
    ],
    ids=["rnn", "transformer"],
)
def test_forward_trims_each_batch_and_padding_never_changes_a_prediction(arch):
    pre = _text_pre(max_length=16)
    model = build_model(arch, pre.input_shape, 2, 0.0, vocab_size=pre.vocab_size, max_length=pre.max_length).eval()
    inputs = {k: torch.from_numpy(v) for k, v in pre.transform_inputs(pd.DataFrame({"t": TEXTS[:4]})).items()}
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        trimmed = forward(model, inputs, arch)
        alone = forward(model, {k: v[:1] for k, v in inputs.items()}, arch)
        padded = model(inputs["x"], inputs["len"])
    handle.remove()
    assert seen[0] == int(inputs["len"].max()) < 16  # the batch was cut to its longest real row
    assert torch.allclose(trimmed, padded, atol=1e-5) and torch.allclose(trimmed[:1], alone, atol=1e-5)


def test_a_bare_tensor_is_still_the_table_and_image_input():
    model = build_model({"arch": "mlp", "hidden": [4]}, [1, 2, 2], 3, 0.0)
    x = torch.randn(5, 1, 2, 2)
    assert torch.equal(forward(model, x, {"arch": "mlp"}), forward(model, {"x": x}, {"arch": "mlp"}))


def test_custom_factories_get_vocab_size_and_max_length_when_they_take_them(monkeypatch):
    seen = {}
    module = ModuleType("factories_for_inputs")

    def by_name(input_shape, num_outputs, dropout, vocab_size, max_length):
        seen["by_name"] = (vocab_size, max_length)
        return torch.nn.Linear(1, 1)

    def any_kwargs(input_shape, num_outputs, dropout, **kwargs):
        seen["any"] = kwargs
        return torch.nn.Linear(1, 1)

    def table_only(input_shape, num_outputs, dropout, mode="ok"):
        seen["table"] = mode
        return torch.nn.Linear(1, 1)

    module.by_name, module.any_kwargs, module.table_only = by_name, any_kwargs, table_only
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for name in ("by_name", "any_kwargs", "table_only"):
        build_model({"arch": "custom", "factory": f"{module.__name__}:{name}", "kwargs": {}}, [12], 2, 0.0, vocab_size=300, max_length=12)
    assert seen == {"by_name": (300, 12), "any": {"vocab_size": 300, "max_length": 12}, "table": "ok"}
    build_model({"arch": "custom", "factory": f"{module.__name__}:any_kwargs", "kwargs": {"max_length": 5}}, [12], 2, 0.0, max_length=12)
    assert seen["any"] == {"max_length": 5}  # the spec's own kwargs win


def test_batch_dtypes_keep_token_ids_and_lengths_integers():
    assert batch_dtypes("text", "classification") == {"x": torch.int64, "len": torch.int64, "y": torch.int64}
    assert batch_dtypes("series", "regression") == {"x": torch.float32, "len": torch.int64, "y": torch.float32}
    assert batch_dtypes("image", "classification") == {"x": torch.float32, "y": torch.int64}


def _spec(data: dict, model: dict, metric: str):
    return parse_spec(
        {
            "name": "unit",
            "data": {"source": "x.parquet", **data},
            "model": model,
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "mixed_precision": "auto"},
            "scaling": {"workers": 1},
            "checkpoint": {"metric": metric},
        }
    )


@pytest.mark.parametrize("case", ["text-rnn", "series-transformer"])
def test_the_loop_trains_sequence_models_and_their_checkpoints_rebuild(tmp_path, case):
    if case == "text-rnn":
        spec = _spec(
            {"label": "y", "text": {"column": "t", "max_length": 10}}, {"arch": "rnn", "hidden": 8, "embedding": 8}, "val_accuracy"
        )
        pre = _text_pre()
        frame = pd.DataFrame({"t": TEXTS, "y": ["a", "b"] * 8})
        rows = pd.DataFrame({"t": TEXTS[:3]})
    else:
        spec = _spec(
            {"series": {"column": "v", "order_by": "d", "window": 4, "horizon": 2}},
            {"arch": "transformer", "d_model": 8, "heads": 2, "layers": 1, "ff": 16, "pooling": "mean"},
            "val_rmse",
        )
        pre = Preprocessor(
            task="regression",
            label=SERIES_TARGET,
            input=SeriesInput(column="v", window=4, horizon=2, mean=0.5, std=2.0),
            target_mean=0.5,
            target_std=2.0,
        )
        t = np.arange(24.0)
        frame = pd.DataFrame(
            {"v": [list(np.sin(t[i : i + 4])) for i in range(18)], SERIES_TARGET: [list(np.sin(t[i + 4 : i + 6])) for i in range(18)]}
        )
        rows = frame[["v"]].head(3)
    config = build_loop_config(spec, SimpleNamespace(preprocessor=pre), plan_workers(spec.scaling, ClusterResources(cpus=2, gpus=0)))
    assert (config.input_kind, config.vocab_size, config.max_length) == (pre.kind, pre.vocab_size, pre.max_length)
    session = StandInSession(ColumnBatches(pre.transform(frame)), keep=tmp_path)
    assert run_loop(config, session) is None  # mixed_precision auto: off on CPU, ids stay int64
    assert [m["epoch"] for m, _ in session.reports] == [1, 2]
    loaded = load_model(tmp_path / "epoch2")
    assert loaded.meta["input_kind"] == pre.kind and loaded.meta["max_length"] == pre.max_length
    inputs = {k: torch.from_numpy(v) for k, v in loaded.preprocessor.transform_inputs(rows).items()}
    with torch.no_grad():
        out = forward(loaded.model, inputs, loaded.meta["model"])
    assert out.shape == (3, pre.num_outputs) and torch.isfinite(out).all()


def test_byte_tokenizer_state_round_trips_through_the_preprocessor():
    pre = Preprocessor(
        task="classification",
        label="y",
        input=TextInput(column="t", tokenizer=ByteTokenizer().to_state(), max_length=6, vocab_size=ByteTokenizer().vocab_size),
        classes=[0, 1],
    )
    ids = Preprocessor.from_dict(pre.to_dict()).transform_features(pd.DataFrame({"t": ["ab"]}))
    assert ids.tolist() == [[CLS, ord("a") + 4, ord("b") + 4, PAD, PAD, PAD]]


def test_prepare_names_of_the_offline_corpora_are_dispatched(tmp_path):
    from orchestrator.data.ingest import ensure_prepared

    spec = parse_spec(
        {
            "name": "co2",
            "data": {
                "source": str(tmp_path / "co2.parquet"),
                "prepare": "series:co2",
                "series": {"column": "value", "order_by": "date", "window": 8},
            },
            "model": {"arch": "rnn"},
        },
        base_dir=tmp_path,
    )
    assert Path(ensure_prepared(spec)).is_file()
    df = pd.read_parquet(tmp_path / "co2.parquet")
    assert list(df.columns) == ["date", "value"] and len(df) > 2000
