"""Tokenizers, sequence padding, series windows and the sequence models (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orchestrator.data.sequences import SequenceInputError, chronological_split, make_windows, pad_sequences
from orchestrator.data.text import CLS, NUM_SPECIALS, PAD, SPECIAL_TOKENS, BpeTokenizer, ByteTokenizer, TextInputError, tokenizer_from_state
from orchestrator.models.rnn import build_rnn
from orchestrator.models.transformer import build_transformer

TRAIN_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a lazy dog sleeps in the sun all day",
    "the brown fox runs quick through the forest",
    "every dog has its day and every fox its night",
    "quick thinking saves the day for the brown dog",
] * 8
HELD_OUT = "the fox met a zorblatt in the forest"  # "zorblatt" appears in no training text


# ---------------------------------------------------------------- tokenizers


def test_byte_tokenizer_ids_padding_cls_and_truncation():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 + NUM_SPECIALS
    ids, lengths = tok.encode(["hé", "abcdef"], max_length=5, add_cls=True)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64 and ids.shape == (2, 5)
    assert ids[0].tolist() == [CLS, ord("h") + NUM_SPECIALS, 0xC3 + NUM_SPECIALS, 0xA9 + NUM_SPECIALS, PAD]
    assert ids[1].tolist() == [CLS] + [ord(c) + NUM_SPECIALS for c in "abcd"]  # the head is kept
    assert lengths.tolist() == [4, 5]
    ids, lengths = tok.encode(["ab"], max_length=4, add_cls=False)
    assert ids.tolist() == [[ord("a") + NUM_SPECIALS, ord("b") + NUM_SPECIALS, PAD, PAD]] and lengths.tolist() == [2]
    assert isinstance(tokenizer_from_state(json.loads(json.dumps(tok.to_state()))), ByteTokenizer)


@pytest.mark.parametrize("tok", [ByteTokenizer(), BpeTokenizer.fit(TRAIN_TEXTS[:5] * 2, 300)], ids=["byte", "bpe"])
def test_bad_texts_are_named_by_index(tok):
    with pytest.raises(TextInputError, match="text 1: empty string") as e:
        tok.encode(["fine", ""], max_length=8, add_cls=False)
    assert e.value.index == 1 and isinstance(e.value, ValueError)
    with pytest.raises(TextInputError, match="text 0: expected a string, got int"):
        tok.encode([3], max_length=8, add_cls=False)
    with pytest.raises(TypeError, match="list of strings"):
        tok.encode("not a list", max_length=8, add_cls=False)
    with pytest.raises(TextInputError, match="text 0: .* tokens, more than max_length 3"):
        tok.encode(["a much longer text than three tokens"], max_length=3, add_cls=True, truncate=False)
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(["x"], max_length=1, add_cls=True)  # no room for a token after CLS


def test_bpe_learns_only_the_training_texts():
    tok = BpeTokenizer.fit(iter(TRAIN_TEXTS), vocab_size=400)
    vocab = json.loads(tok.to_state()["tokenizer_json"])["model"]["vocab"]
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.vocab_size <= 400
    assert "Ġfox" in vocab and tok.tokens("fox") == ["Ġfox"]  # a training word is one token
    assert not any("zorbl" in t for t in vocab)  # the held-out word left no trace in the vocabulary
    pieces = tok.tokens("zorblatt")
    assert len(pieces) > 2 and "Ġzorblatt" not in vocab
    ids, lengths = tok.encode([HELD_OUT], max_length=64, add_cls=False)
    assert int(lengths[0]) > len(HELD_OUT.split())  # more pieces than words: the new word is split up
    assert 1 not in ids[0].tolist()  # byte-level: nothing is UNK


def test_bpe_is_deterministic_and_round_trips_through_json():
    a = BpeTokenizer.fit(TRAIN_TEXTS, vocab_size=350)
    b = BpeTokenizer.fit(list(TRAIN_TEXTS), vocab_size=350)
    assert a.to_state() == b.to_state()
    restored = tokenizer_from_state(json.loads(json.dumps(a.to_state())))
    texts = [HELD_OUT, "héllo wörld ✓", "the lazy dog"]
    for add_cls in (False, True):
        ids_a, len_a = a.encode(texts, max_length=16, add_cls=add_cls)
        ids_r, len_r = restored.encode(texts, max_length=16, add_cls=add_cls)
        assert (ids_a == ids_r).all() and (len_a == len_r).all()
    assert restored.vocab_size == a.vocab_size


def test_bpe_fit_and_state_errors():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 260"):
        BpeTokenizer.fit(TRAIN_TEXTS, 100)
    with pytest.raises(TextInputError, match="text 1: expected a string"):
        BpeTokenizer.fit(["ok", None], 300)
    with pytest.raises(ValueError, match="unknown tokenizer state kind 'word'"):
        tokenizer_from_state({"kind": "word"})


# ---------------------------------------------------------------- sequences


def test_pad_sequences_numbers_and_vectors():
    values, lengths = pad_sequences([[1, 2, 3], [4.5], [6, 7]])
    assert values.dtype == np.float32 and lengths.dtype == np.int64 and values.shape == (3, 3, 1)
    assert values[:, :, 0].tolist() == [[1, 2, 3], [4.5, 0, 0], [6, 7, 0]] and lengths.tolist() == [3, 1, 2]
    values, lengths = pad_sequences([[[1, 2], [3, 4]], np.array([[5.0, 6.0]])], num_features=2)
    assert values.shape == (2, 2, 2) and values[1].tolist() == [[5, 6], [0, 0]] and lengths.tolist() == [2, 1]


def test_pad_sequences_truncation_keeps_the_most_recent_steps():
    values, lengths = pad_sequences([[1, 2, 3, 4, 5], [9]], max_length=3)
    assert values[:, :, 0].tolist() == [[3, 4, 5], [9, 0, 0]] and lengths.tolist() == [3, 1]
    values, _ = pad_sequences([[1, 2]], max_length=10)
    assert values.shape == (1, 2, 1)  # T is the longest row, not max_length
    with pytest.raises(SequenceInputError, match="row 0: 5 steps, more than max_length 3"):
        pad_sequences([[1, 2, 3, 4, 5]], max_length=3, truncate=False)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([[1, 2], []], "row 1: empty sequence"),
        ([[1, 2], [[1, 2], [3]]], "row 1: step 1 has 1 values, earlier steps have 2"),
        ([[1, "x"]], "row 0: step 1: non-numeric value 'x'"),
        ([[1, True]], "row 0: step 1: non-numeric value True"),
        ([[1, None]], "row 0: step 1: missing value"),
        ([[0], [1, float("nan")]], "row 1: step 1: value nan is not finite"),
        ([[1, [2, 3]]], "row 0: step 1 mixes numbers and vectors"),
        ([[[1, 2]], [[1, 2, 3]]], "row 1: steps have 3 values, expected 2 like the rows before"),
        (["abc"], "row 0: expected a list of numbers"),
        ([[[]]], "row 0: step 0 is an empty vector"),
    ],
)
def test_pad_sequences_errors_name_the_row(rows, message):
    with pytest.raises(SequenceInputError, match=message):
        pad_sequences(rows)


def test_pad_sequences_checks_the_trained_feature_count():
    with pytest.raises(SequenceInputError, match=r"row 0: steps have 1 values, expected 3 \(as in training\)"):
        pad_sequences([[1, 2]], num_features=3)


def test_make_windows():
    series = np.arange(10, dtype=float)
    x, y = make_windows(series, window=3, horizon=1)
    assert x.shape == (7, 3, 1) and y.shape == (7,) and x.dtype == np.float32 and y.dtype == np.float32
    assert x[0, :, 0].tolist() == [0, 1, 2] and y[0] == 3 and x[-1, :, 0].tolist() == [6, 7, 8] and y[-1] == 9
    x, y = make_windows(series, window=4, horizon=3)
    assert x.shape == (4, 4, 1) and y.shape == (4, 3) and y[0].tolist() == [4, 5, 6] and y[-1].tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="10 points is too short for window 8 \\+ horizon 3"):
        make_windows(series, window=8, horizon=3)
    with pytest.raises(ValueError, match="series point 2 is nan"):
        make_windows([1, 2, float("nan"), 4, 5], window=2, horizon=1)


@pytest.mark.parametrize(
    "n_points, window, horizon, fractions",
    [
        (100, 5, 1, (0.7, 0.15, 0.15)),
        (600, 24, 1, (0.8, 0.1, 0.1)),
        (300, 12, 6, (0.6, 0.2, 0.2)),
        (60, 3, 2, (0.5, 0.25, 0.25)),
        (120, 7, 3, (0.8, 0.0, 0.2)),
    ],
)
def test_chronological_split_shares_no_point_between_splits(n_points, window, horizon, fractions):
    series = np.arange(n_points, dtype=float)  # each value is its own time index
    x, y = make_windows(series, window, horizon)
    ranges = chronological_split(len(x), fractions, window, horizon)
    assert set(ranges) == {"train", "validation", "test"}
    points = {}
    for name, r in ranges.items():
        idx = np.asarray(r, dtype=int)
        inputs = set(x[idx].reshape(-1).astype(int).tolist())
        targets = set(y[idx].reshape(-1).astype(int).tolist())
        points[name] = (inputs, targets)
    train_points = points["train"][0] | points["train"][1]
    for later in ("validation", "test"):
        inputs, targets = points[later]
        assert not (inputs & train_points) and not (targets & train_points), later  # no leak from training
        assert not inputs or min(inputs) > max(train_points)  # strictly later in time
    v_points = points["validation"][0] | points["validation"][1]
    assert not (v_points & (points["test"][0] | points["test"][1]))
    # Ranges are in order and the gap is as small as the rule allows.
    tr, va, te = ranges["train"], ranges["validation"], ranges["test"]
    assert tr.start == 0 and te.stop == len(x) and len(tr) > 0 and len(te) > 0
    if len(va):
        assert va.start - tr.stop == window + horizon - 1 and te.start - va.stop == window + horizon - 1
    else:
        assert te.start - tr.stop == window + horizon - 1


def test_chronological_split_errors():
    with pytest.raises(ValueError, match="too few for a validation split: .* drops 24 windows"):
        chronological_split(100, (0.8, 0.1, 0.1), window=24, horizon=1)
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers summing to 1"):
        chronological_split(100, (0.8, 0.3, 0.1), window=2, horizon=1)


# ---------------------------------------------------------------- models

VOCAB, FEATURES, OUTPUTS = 50, 3, 4
ROW_LENGTHS = [3, 5, 1, 4]


def _rows(kind: str, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    if kind == "text":
        return [torch.randint(NUM_SPECIALS, VOCAB, (n,), generator=g) for n in ROW_LENGTHS]
    return [torch.randn(n, FEATURES, generator=g) for n in ROW_LENGTHS]


def _batch(rows: list, total: int, kind: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded to `total` steps with garbage (not PAD/zeros): only the lengths say where rows end."""
    g = torch.Generator().manual_seed(seed)
    if kind == "text":
        x = torch.randint(NUM_SPECIALS, VOCAB, (len(rows), total), generator=g)
    else:
        x = torch.randn(len(rows), total, FEATURES, generator=g) * 100
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    return x, torch.tensor([len(r) for r in rows])


def _model(arch: str, kind: str, **kw) -> torch.nn.Module:
    inputs = {"vocab_size": VOCAB, "input_dim": None} if kind == "text" else {"vocab_size": None, "input_dim": FEATURES}
    if arch == "rnn":
        args = dict(cell="lstm", hidden=8, layers=2, bidirectional=False, embedding=6, pooling="last", dropout=0.1)
        args.update(kw)
        return build_rnn(**inputs, num_outputs=OUTPUTS, **args)
    args = dict(d_model=16, heads=2, layers=2, ff=32, dropout=0.1, max_length=16, pooling="cls")
    args.update(kw)
    return build_transformer(**inputs, num_outputs=OUTPUTS, **args)


MODEL_CASES = [
    ("rnn", {"cell": "lstm", "pooling": "last"}),
    ("rnn", {"cell": "lstm", "pooling": "mean"}),
    ("rnn", {"cell": "gru", "pooling": "last"}),
    ("rnn", {"cell": "gru", "pooling": "mean"}),
    ("rnn", {"cell": "lstm", "pooling": "last", "bidirectional": True}),
    ("rnn", {"cell": "gru", "pooling": "mean", "bidirectional": True}),
    ("rnn", {"cell": "gru", "pooling": "last", "bidirectional": True, "layers": 1}),
    ("rnn", {"cell": "lstm", "pooling": "max", "bidirectional": True, "layers": 1}),
    ("rnn", {"cell": "gru", "pooling": "max"}),
    ("transformer", {"pooling": "cls"}),
    ("transformer", {"pooling": "mean"}),
]
CASE_IDS = [f"{a}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for a, kw in MODEL_CASES]


@pytest.mark.parametrize("kind", ["text", "numeric"])
@pytest.mark.parametrize("arch, kw", MODEL_CASES, ids=CASE_IDS)
def test_padding_never_changes_the_output(arch, kw, kind):
    torch.manual_seed(0)
    model = _model(arch, kind, **kw).eval()
    rows = _rows(kind)
    if kind == "text" and arch == "transformer":
        rows = [torch.cat([torch.tensor([CLS]), r]) for r in rows]  # what encode(add_cls=True) does
    with torch.no_grad():
        alone = torch.cat([model(*_batch([r], len(r), kind)) for r in rows])  # each row unpadded, batch of one
        tight = model(*_batch(rows, max(ROW_LENGTHS) + (kind == "text" and arch == "transformer"), kind))
        loose = model(*_batch(rows, 12, kind, seed=2))  # padded further, with other garbage
        longer = rows + [torch.randn(14, FEATURES) if kind == "numeric" else torch.randint(NUM_SPECIALS, VOCAB, (14,))]
        mixed = model(*_batch(longer[::-1], 14, kind))[1:].flip(0)  # batched with a longer row, in another order
    assert alone.shape == (len(rows), OUTPUTS)
    for other in (tight, loose, mixed):
        torch.testing.assert_close(other, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["text", "numeric"])
@pytest.mark.parametrize("arch, kw", MODEL_CASES, ids=CASE_IDS)
def test_gradients_reach_every_parameter(arch, kw, kind):
    torch.manual_seed(0)
    model = _model(arch, kind, **kw).train()
    rows = _rows(kind)
    if kind == "text" and arch == "transformer":
        rows = [torch.cat([torch.tensor([CLS]), r]) for r in rows]
    x, lengths = _batch(rows, 8, kind)
    out = model(x, lengths)
    assert out.shape == (len(rows), OUTPUTS)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_text_embeddings_keep_pad_at_zero():
    for arch in ("rnn", "transformer"):
        model = _model(arch, "text")
        assert model.embed.padding_idx == PAD and model.embed.weight[PAD].abs().sum() == 0


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_follows_width_and_depth():
    base = _count(_model("rnn", "numeric", hidden=8, layers=1))
    assert _count(_model("rnn", "numeric", hidden=16, layers=1)) > base
    assert _count(_model("rnn", "numeric", hidden=8, layers=2)) > base
    assert _count(_model("rnn", "numeric", hidden=8, layers=1, bidirectional=True)) > base
    base = _count(_model("transformer", "text", layers=1))
    assert _count(_model("transformer", "text", layers=3)) > base
    assert _count(_model("transformer", "text", layers=1, d_model=32)) > base
    # Positional encoding is fixed: max_length adds no parameters and nothing to the state dict.
    assert _count(_model("transformer", "text", layers=1, max_length=512)) == base
    assert "positions" not in _model("transformer", "text").state_dict()


def test_builder_and_forward_errors():
    with pytest.raises(ValueError, match="exactly one of vocab_size"):
        build_rnn(
            vocab_size=10,
            input_dim=3,
            num_outputs=2,
            cell="lstm",
            hidden=4,
            layers=1,
            bidirectional=False,
            embedding=4,
            pooling="last",
            dropout=0.0,
        )
    with pytest.raises(ValueError, match="cell must be one of"):
        _model("rnn", "numeric", cell="rnn")
    with pytest.raises(ValueError, match="pooling must be one of"):
        _model("rnn", "numeric", pooling="cls")
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by heads \(4\)"):
        _model("transformer", "numeric", d_model=30, heads=4)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        _model("transformer", "numeric", dropout=1.0)
    model = _model("transformer", "numeric", max_length=4)
    with pytest.raises(ValueError, match="input of 5 steps is longer than max_length 4"):
        model(torch.zeros(1, 5, FEATURES), torch.tensor([5]))
    with pytest.raises(ValueError, match="lengths must be between 1 and the padded length 3"):
        _model("rnn", "numeric")(torch.zeros(2, 3, FEATURES), torch.tensor([0, 3]))


def test_a_few_steps_learn_a_length_dependent_target():
    """Both models can fit something only the real steps reveal (sum of the numeric inputs)."""
    torch.manual_seed(0)
    rows = [torch.randn(int(n), 1) for n in torch.randint(1, 10, (64,))]
    x, lengths = _batch(rows, 10, "numeric")
    x = x[..., :1]
    target = torch.stack([r.sum() for r in rows])[:, None]
    for build in (
        lambda: build_rnn(
            vocab_size=None,
            input_dim=1,
            num_outputs=1,
            cell="gru",
            hidden=16,
            layers=1,
            bidirectional=False,
            embedding=0,
            pooling="last",
            dropout=0.0,
        ),
        lambda: build_transformer(
            vocab_size=None, input_dim=1, num_outputs=1, d_model=16, heads=2, layers=1, ff=32, dropout=0.0, max_length=10, pooling="mean"
        ),
    ):
        model = build()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        first = None
        for _ in range(150):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x, lengths), target)
            loss.backward()
            opt.step()
            first = first if first is not None else loss.item()
        assert loss.item() < 0.3 * first, (first, loss.item())
