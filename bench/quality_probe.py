"""Probe: can small sequence models reach the quality bars on the offline corpora? (CPU, no Ray)

    .venv/bin/python bench/quality_probe.py [text-lstm text-transformer text-bow series-lstm ...]
        [--epochs N] [--threads T] [--out FILE]

Plain PyTorch on the same splits as bench/quality_baselines.py, to check before the orchestrator's
own models exist that the bars in the issue are reachable on these datasets:

- text-lstm, text-transformer: byte-level ids (0 = padding, byte + 1), max_length 256, masked mean
  pooling; the bar is test accuracy within 3 points of TF-IDF + logistic regression.
- text-bow: a one-hidden-layer MLP on TF-IDF unigrams (the "tiny bag-of-words" reference).
- spec-*: the project's own BpeTokenizer, build_transformer / build_rnn and the training loop's
  schedule, with every value named as the job spec names it (SPEC_PROBES; their epochs are part
  of the setting, --epochs does not apply), so a setting carries over to a job spec one to one.
- series-lstm: an LSTM on windows of 24, horizon 1, for co2 and elnino; inputs standardised with
  the training period's mean and std ("global"), or relative to the window's last value
  ("last"); the bar is test RMSE at least 20% below the naive last-value forecast.

Each model is scored on test at its best validation epoch. Results: bench/results/quality_probe.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality_baselines import FRACTIONS, SEED, _rmse, chronological_windows  # noqa: E402

from orchestrator.data.corpora import series_frame, text_frame  # noqa: E402
from orchestrator.data.preprocess import assign_splits  # noqa: E402

MAX_LENGTH = 256
RESULTS = ROOT / "bench" / "results" / "quality_probe.json"


def byte_ids(texts, max_length: int = MAX_LENGTH) -> torch.Tensor:
    out = np.zeros((len(texts), max_length), dtype=np.int64)
    for i, t in enumerate(texts):
        b = np.frombuffer(t.encode("utf-8")[:max_length], dtype=np.uint8)
        out[i, : len(b)] = b.astype(np.int64) + 1
    return torch.from_numpy(out)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def bpe_ids(texts, train_texts, vocab_size: int = 8000, max_length: int = 128) -> tuple[torch.Tensor, int]:
    """Byte-level BPE fitted on the training texts only (id 0 = padding)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(list(train_texts), trainer)
    out = np.zeros((len(texts), max_length), dtype=np.int64)
    for i, enc in enumerate(tok.encode_batch(list(texts))):
        ids = enc.ids[:max_length]
        out[i, : len(ids)] = ids
    return torch.from_numpy(out), tok.get_vocab_size()


class ByteLSTM(nn.Module):
    def __init__(self, classes: int, emb: int = 64, hidden: int = 128, layers: int = 2, dropout: float = 0.2, vocab: int = 257):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb, padding_idx=0)
        self.rnn = nn.LSTM(emb, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(ids), lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=ids.shape[1])
        return self.head(self.drop(masked_mean(h, mask)))


class ByteTransformer(nn.Module):
    def __init__(
        self,
        classes: int,
        d_model: int = 128,
        heads: int = 4,
        layers: int = 2,
        ff: int = 256,
        dropout: float = 0.1,
        vocab: int = 257,
        max_length: int = MAX_LENGTH,
    ):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model, padding_idx=0)
        self.pos = nn.Embedding(max_length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        x = self.emb(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))[None]
        h = self.enc(x, src_key_padding_mask=~mask)
        return self.head(self.norm(masked_mean(h, mask)))


def _fit_classifier(model: nn.Module, data: dict, epochs: int, lr: float, batch: int = 32) -> dict:
    torch.manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    xtr, ytr = data["train"]
    steps = epochs * ((len(ytr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    gen = torch.Generator().manual_seed(SEED)

    def accuracy(x, y):
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(y), 256)])
        return float((pred == y).float().mean())

    history, best = [], None
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(ytr), generator=gen).split(batch):
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        val = accuracy(*data["validation"])
        history.append({"epoch": epoch + 1, "validation_accuracy": val, "seconds": round(time.perf_counter() - t0, 1)})
        print(history[-1], flush=True)
        if best is None or val > best["validation_accuracy"]:
            best = {"epoch": epoch + 1, "validation_accuracy": val, "test_accuracy": accuracy(*data["test"])}
    return {
        "best": best,
        "history": history,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _text_splits():
    df = text_frame()
    split = assign_splits(df, SEED, FRACTIONS)
    classes = sorted(df["label"].unique())
    y = torch.tensor(df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy())
    return df, split, y, classes


def probe_text(kind: str, epochs: int, tokenizer: str = "byte", max_length: int = MAX_LENGTH) -> dict:
    df, split, y, classes = _text_splits()
    if tokenizer == "bpe":
        ids, vocab = bpe_ids(df["text"], df["text"][split == 0], max_length=max_length)
    else:
        ids, vocab = byte_ids(df["text"].tolist(), max_length), 257
    data = {name: (ids[split == code], y[split == code]) for code, name in enumerate(("train", "validation", "test"))}
    if kind == "lstm":
        model, lr = ByteLSTM(len(classes), emb=128 if tokenizer == "bpe" else 64, vocab=vocab), 3e-3
    else:
        model, lr = ByteTransformer(len(classes), vocab=vocab, max_length=max_length), 1e-3
    out = _fit_classifier(model, data, epochs, lr)
    return {"model": f"{tokenizer}-{kind}", "vocab": vocab, "max_length": max_length, "epochs": epochs, "lr": lr, **out}


def probe_bow(epochs: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    df, split, y, classes = _text_splits()
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=20000).fit(df["text"][split == 0])
    x = torch.tensor(vec.transform(df["text"]).toarray(), dtype=torch.float32)
    data = {name: (x[split == code], y[split == code]) for code, name in enumerate(("train", "validation", "test"))}
    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, len(classes)))
    out = _fit_classifier(model, data, epochs, 3e-3)
    return {"model": "tfidf-unigram-mlp-128", "features": int(x.shape[1]), "epochs": epochs, **out}


class WindowLSTM(nn.Module):
    def __init__(self, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.rnn = nn.LSTM(1, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x.unsqueeze(-1))
        return self.head(h[:, -1]).squeeze(-1)


def probe_series(name: str, norm: str, epochs: int) -> dict:
    w = chronological_windows(series_frame(name)["value"].to_numpy())
    xtr, ytr = w["train"]
    mean, std = float(xtr[:, -1].mean()), float(xtr[:, -1].std())

    def encode(x, y):
        ref = x[:, -1:] if norm == "last" else mean
        return (
            torch.tensor((x - ref) / std, dtype=torch.float32),
            torch.tensor((y - np.ravel(ref) if norm == "last" else y - ref) / std, dtype=torch.float32),
        )

    def decode(x, pred):
        return pred * std + (x[:, -1] if norm == "last" else mean)

    torch.manual_seed(SEED)
    model = WindowLSTM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(SEED)
    tx, ty = encode(xtr, ytr)

    def rmse(split):
        x, y = w[split]
        model.eval()
        with torch.no_grad():
            pred = model(encode(x, y)[0]).numpy()
        return _rmse(decode(x, pred), y)

    best, t0 = None, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(ty), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.mse_loss(model(tx[idx]), ty[idx]).backward()
            opt.step()
        val = rmse("validation")
        if best is None or val < best["validation_rmse"]:
            best = {"epoch": epoch + 1, "validation_rmse": val, "test_rmse": rmse("test")}
    naive = _rmse(w["test"][0][:, -1], w["test"][1])
    return {
        "dataset": f"series:{name}",
        "model": "lstm-2x64",
        "normalise": norm,
        "epochs": epochs,
        "best": best,
        "naive_test_rmse": naive,
        "test_rmse_vs_naive": best["test_rmse"] / naive,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


# ---- probes through the project's own tokenizer and models, one field per job-spec field ------------------------
# Each named setting lists the job spec's values (data.text.*, model.*, train.*); the loop mirrors the
# project's training loop: AdamW, lr set per epoch (linear warm-up epochs, then cosine towards 0),
# mean cross-entropy with label smoothing, CLS prepended by the tokenizer, BPE fitted on the sorted
# (lowercased when asked) training texts. Batches are cut to their longest row, which changes no
# output (the models are padding-invariant) but saves time.
SPEC_TEXT = {"tokenizer": "bpe", "vocab_size": 8000, "max_length": 256, "lowercase": False}
SPEC_TRAIN = {
    "epochs": 10,
    "batch_size": 32,
    "lr": 2e-3,
    "optimizer": "adamw",
    "weight_decay": 0.05,
    "dropout": 0.1,
    "label_smoothing": 0.1,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "grad_clip": None,
}
SPEC_PROBES: dict[str, dict] = {
    "spec-transformer-mean-1x64": {"model": {"type": "transformer", "d_model": 64, "heads": 4, "layers": 1, "ff": 128, "pooling": "mean"}},
    "spec-lstm-mean-bi128": {
        "model": {"type": "rnn", "cell": "lstm", "hidden": 128, "layers": 1, "bidirectional": True, "embedding": 128, "pooling": "mean"}
    },
    # the best of the probes run so far (bench/results/quality_probe.json "spec-sweep/*")
    "spec-transformer-mean-1x64-lc16k": {
        "data.text": {"vocab_size": 16000, "lowercase": True},
        "model": {"type": "transformer", "d_model": 64, "heads": 4, "layers": 1, "ff": 128, "pooling": "mean"},
        "train": {"lr": 4e-3, "weight_decay": 0.01, "dropout": 0.3},
    },
    "spec-lstm-mean-bi64": {
        "model": {"type": "rnn", "cell": "lstm", "hidden": 64, "layers": 1, "bidirectional": True, "embedding": 64, "pooling": "mean"},
        "train": {"epochs": 8, "lr": 3e-3},
    },
    # jobs/text-lstm.yaml since the corpus grew to 1100 texts per library ("spec-sweep-6600/*")
    "spec-lstm-max-bi64": {
        "model": {"type": "rnn", "cell": "lstm", "hidden": 64, "layers": 1, "bidirectional": True, "embedding": 64, "pooling": "max"},
        "train": {"epochs": 8, "lr": 3e-3},
    },
}


def _spec_lr_factor(t: dict, epoch: int) -> float:
    """orchestrator.train.loop.lr_factor for the constant and cosine schedules (kept here: no Ray import)."""
    warm = t["warmup_epochs"]
    if warm and epoch < warm:
        return (epoch + 1) / (warm + 1)
    if t["schedule"] == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, t["epochs"] - warm)))
    return 1.0


def spec_setting(name: str, **overrides) -> dict:
    """The full setting of a named probe, {"data.text": ..., "model": ..., "train": ...}; `overrides`
    are dotted keys such as train__lr=3e-3 or model__layers=2."""
    base = SPEC_PROBES[name]
    s = {
        "data.text": {**SPEC_TEXT, **base.get("data.text", {})},
        "model": dict(base["model"]),
        "train": {**SPEC_TRAIN, **base.get("train", {})},
    }
    for key, v in overrides.items():
        part, field = key.split("__")
        s["data.text" if part == "text" else part][field] = v
    return s


def probe_spec(setting: dict, max_epochs_below: dict | None = None) -> dict:
    """Train one setting; `max_epochs_below` {epoch: accuracy} stops a run whose validation accuracy
    at that epoch is below the given value (a hopeless setting)."""
    from orchestrator.data.text import BpeTokenizer, ByteTokenizer
    from orchestrator.models.rnn import build_rnn
    from orchestrator.models.transformer import build_transformer

    tx, m, t = setting["data.text"], setting["model"], setting["train"]
    df, split, y, classes = _text_splits()
    texts = [s.lower() for s in df["text"]] if tx["lowercase"] else df["text"].tolist()
    t0 = time.perf_counter()
    train_texts = sorted(s for s, code in zip(texts, split) if code == 0)
    tok = ByteTokenizer() if tx["tokenizer"] == "byte" else BpeTokenizer.fit(train_texts, tx["vocab_size"])
    ids, lengths = tok.encode(texts, tx["max_length"], add_cls=True)
    ids, lengths = torch.from_numpy(ids), torch.from_numpy(lengths)
    tok_seconds = round(time.perf_counter() - t0, 1)
    data = {
        name: (ids[split == code], lengths[split == code], y[split == code]) for code, name in enumerate(("train", "validation", "test"))
    }
    torch.manual_seed(SEED)
    common = {"vocab_size": tok.vocab_size, "input_dim": None, "num_outputs": len(classes), "dropout": t["dropout"]}
    if m["type"] == "transformer":
        model = build_transformer(
            **common,
            d_model=m["d_model"],
            heads=m["heads"],
            layers=m["layers"],
            ff=m["ff"],
            max_length=tx["max_length"],
            pooling=m["pooling"],
        )
    else:
        model = build_rnn(
            **common,
            cell=m["cell"],
            hidden=m["hidden"],
            layers=m["layers"],
            bidirectional=m["bidirectional"],
            embedding=m["embedding"],
            pooling=m["pooling"],
        )
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])
    gen = torch.Generator().manual_seed(SEED)

    def run(x, n):
        n_max = int(n.max())
        return model(x[:, :n_max], n)

    def accuracy(x, n, yy):
        model.eval()
        with torch.no_grad():
            pred = torch.cat([run(x[i : i + 256], n[i : i + 256]).argmax(1) for i in range(0, len(yy), 256)])
        return float((pred == yy).float().mean())

    xtr, ntr, ytr = data["train"]
    history, best, stopped = [], None, None
    t1 = time.perf_counter()
    for epoch in range(t["epochs"]):
        e0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = t["lr"] * _spec_lr_factor(t, epoch)
        model.train()
        loss_sum = 0.0
        for idx in torch.randperm(len(ytr), generator=gen).split(t["batch_size"]):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(run(xtr[idx], ntr[idx]), ytr[idx])
            loss.backward()
            loss_sum += float(loss.detach()) * len(idx)
            if t["grad_clip"]:
                nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
            opt.step()
        train_s = time.perf_counter() - e0
        val = accuracy(*data["validation"])
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(loss_sum / len(ytr), 4),
                "validation_accuracy": round(val, 4),
                "train_seconds": round(train_s, 1),
            }
        )
        print(history[-1], flush=True)
        if best is None or val > best["validation_accuracy"]:
            best = {"epoch": epoch + 1, "validation_accuracy": val, "test_accuracy": accuracy(*data["test"])}
        if max_epochs_below and epoch + 1 in max_epochs_below and val < max_epochs_below[epoch + 1]:
            stopped = f"validation accuracy {val:.3f} < {max_epochs_below[epoch + 1]} at epoch {epoch + 1}"
            break
    last = {"epoch": len(history), "validation_accuracy": history[-1]["validation_accuracy"], "test_accuracy": accuracy(*data["test"])}
    return {
        "setting": setting,
        "vocab": tok.vocab_size,
        "best": best,
        "last": last,
        "stopped_early": stopped,
        "seconds_per_epoch": round(sum(h["train_seconds"] for h in history) / len(history), 1),
        "tokenizer_seconds": tok_seconds,
        "train_seconds": round(time.perf_counter() - t1, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "history": history,
    }


PROBES = ("text-lstm", "text-transformer", "text-bpe-lstm", "text-bpe-transformer", "text-bow", "series-lstm", *SPEC_PROBES)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probes", nargs="*", default=list(PROBES), choices=PROBES)
    ap.add_argument("--epochs", type=int, default=10, help="Epochs for the text probes.")
    ap.add_argument("--series-epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    for probe in a.probes:
        if probe in SPEC_PROBES:
            runs = {probe: probe_spec(spec_setting(probe))}
        elif probe == "text-bow":
            runs = {probe: probe_bow(a.epochs)}
        elif probe.startswith("text-bpe-"):
            runs = {probe: probe_text(probe.rsplit("-", 1)[1], a.epochs, "bpe", 128)}
        elif probe.startswith("text-"):
            runs = {probe: probe_text(probe.split("-", 1)[1], a.epochs)}
        else:
            runs = {f"series-lstm-{s}-{n}": probe_series(s, n, a.series_epochs) for s in ("co2", "elnino") for n in ("global", "last")}
        for key, r in runs.items():
            print(key, json.dumps({k: v for k, v in r.items() if k != "history"}), flush=True)
        results.update(runs)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
