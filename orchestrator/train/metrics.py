"""Classification metrics that need a whole split's predictions (validation on rank 0, test on the
driver): macro F1, precision and recall, and ROC AUC, computed with scikit-learn.

- F1, precision and recall: scikit-learn's average="macro" over the classes the model knows, with
  zero_division=0 (a class never predicted has precision 0). A row whose label the training split
  never had (UNKNOWN_LABEL) has no class of its own: its prediction counts as a false positive.
- ROC AUC: for two classes, the AUC of the second class's probability; for more, the mean of the
  one-vs-rest AUCs of the classes that have positive and negative rows in the split (a class
  absent from the split has no AUC). NaN when no class has both.
Pure: numpy and scikit-learn, no torch.
"""

from __future__ import annotations

import math

import numpy as np

from orchestrator.spec import F1, PRECISION, RECALL, ROC_AUC


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def whole_split_metrics(y: np.ndarray, logits: np.ndarray, prefix: str, unknown_label: int = -1) -> dict[str, float]:
    """`y`: labels [n] (unknown_label for a class the training split never had); `logits`: [n, classes]."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    if len(y) == 0:
        return {}
    classes = logits.shape[1]
    pred = logits.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=list(range(classes)), average="macro", zero_division=0)
    probs = softmax(logits.astype(np.float64))
    aucs = []
    for c in range(1, 2) if classes == 2 else range(classes):
        positive = y == c
        if positive.any() and not positive.all():
            aucs.append(roc_auc_score(positive, probs[:, c]))
    return {
        prefix + F1: float(f1),
        prefix + PRECISION: float(precision),
        prefix + RECALL: float(recall),
        prefix + ROC_AUC: float(np.mean(aucs)) if aucs else math.nan,
    }


TEST_DETAILS_FILE = "test_details.json"  # in the run directory: split_details of the test split
MAX_POINTS = 1000  # regression pairs kept for the report's plots (evenly spaced over the split)


def split_details(
    task: str, y: np.ndarray, outputs: np.ndarray, *, classes: list, target_mean: float = 0.0, target_std: float = 1.0
) -> dict:
    """What the report draws of a split beyond its metrics (test_details.json).
    classification: the confusion matrix (rows: true class, columns: predicted), per-class
    precision, recall, F1 and support, and what rows with a label the training split never had
    were predicted as. regression: up to MAX_POINTS (true, predicted) pairs in the label's units,
    each a list of `horizon` values for a multi-step forecast."""
    from sklearn.metrics import precision_recall_fscore_support

    n = len(y)
    if task == "classification":
        c = len(classes)
        pred = outputs.argmax(axis=1) if n else np.zeros(0, dtype=int)
        known = y >= 0
        confusion: np.ndarray = np.zeros((c, c), dtype=np.int64)
        np.add.at(confusion, (y[known], pred[known]), 1)
        per_class = []
        if n:
            p, r, f, support = precision_recall_fscore_support(y, pred, labels=list(range(c)), zero_division=0)
            per_class = [
                {"class": str(k), "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
                for i, k in enumerate(classes)
            ]
        unseen = np.bincount(pred[~known], minlength=c).tolist() if (~known).any() else None
        return {
            "task": task,
            "rows": n,
            "classes": [str(k) for k in classes],
            "confusion": confusion.tolist(),
            "per_class": per_class,
            "unseen_label_predictions": unseen,
        }
    true = y.reshape(n, -1).astype(np.float64) * target_std + target_mean
    pred = outputs.reshape(n, -1).astype(np.float64) * target_std + target_mean
    keep = np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).astype(int)) if n else np.zeros(0, dtype=int)
    flat = true.shape[1] == 1
    return {
        "task": task,
        "rows": n,
        "horizon": int(true.shape[1]) if n else 1,
        "true": (true[keep, 0] if flat else true[keep]).tolist(),
        "predicted": (pred[keep, 0] if flat else pred[keep]).tolist(),
    }
