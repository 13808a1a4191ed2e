"""Unit tests, without a Ray instance, for the pure pieces that the Ray tests only run end to end:
learning-rate schedule, metric sums, optimizer choice, mixed precision, loop config, search
concurrency, search-space encoding and decoding, trial status, and the spec's field descriptions.

Nothing here starts Ray: `ray.init` is replaced by a function that fails the test. Only the tests of
tune.search (Tune's domains and its callback) import Ray at all, and they import it themselves.
"""

from __future__ import annotations

import math
import pickle
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator.data.kinds.table import TableInput
from orchestrator.data.preprocess import UNKNOWN_LABEL, Preprocessor
from orchestrator.errors import ResourceError, RunDirError
from orchestrator.spec import (
    METRIC_MODES,
    METRIC_NAMES,
    METRICS,
    TASK_ONLY,
    TEST_METRICS,
    TRAIN_METRICS,
    VAL_METRICS,
    CheckpointSpec,
    JobSpec,
    Param,
    TrainSpec,
    TuneSpec,
    parse_promote,
    parse_spec,
)
from orchestrator.train.loop import Sums, amp_dtype, evaluate, lr_factor, make_loss, make_optimizer, read_whole, run_loop
from orchestrator.train.plan import (
    IN_MEMORY_MAX_SHARD_BYTES,
    ClusterResources,
    EarlyStopper,
    LoopConfig,
    autocast_dtype,
    build_loop_config,
    hold_in_memory,
    plan_workers,
)
from orchestrator.tune.plan import (
    FINAL_STATUSES,
    TRIAL_DRIVER_CPUS,
    TrialRecord,
    decode_config,
    expected_trials,
    load_records,
    plan_search,
    spec_point,
)
from tests.loop_support import ColumnBatches, StandInSession

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    """Fail any test that would start (or join) Ray, and check none is running afterwards."""
    ray = sys.modules.get("ray")
    # in a whole-suite run the Ray tests' session-wide instance may already be up: not this test's doing
    was_running = ray is not None and ray.is_initialized()
    if ray is not None:

        def refuse(*args, **kwargs):
            raise AssertionError("a unit test tried to start Ray")

        monkeypatch.setattr(ray, "init", refuse)
    yield
    ray = sys.modules.get("ray")  # also when this test imported it
    if ray is not None and not was_running:
        assert not ray.is_initialized()


def _spec(**sections) -> JobSpec:
    d = {"name": "unit", "data": {"source": "rows.parquet", "label": "y"}}
    d.update(sections)
    return parse_spec(d)


def _t(**train) -> TrainSpec:
    """The `train` section as the worker loop gets it (LoopConfig.train)."""
    return TrainSpec(**train)


# ------------------------------------------------------------------------- learning-rate schedule


def _factors(epochs: int, **train) -> list[float]:
    t = _t(epochs=epochs, **train)
    return [lr_factor(t, e) for e in range(epochs)]


def test_constant_schedule_keeps_the_peak_lr():
    assert _factors(5) == [1.0] * 5


def test_warmup_rises_linearly_then_holds_the_peak():
    assert _factors(5, warmup_epochs=3) == pytest.approx([1 / 4, 2 / 4, 3 / 4, 1.0, 1.0])


def test_cosine_decays_from_the_peak_over_all_epochs():
    f = _factors(10, schedule="cosine")
    assert f[0] == 1.0
    assert f[5] == pytest.approx(0.5)
    assert f[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))  # last epoch: close to 0, not 0
    assert all(a > b for a, b in zip(f, f[1:]))


def test_cosine_after_warmup_starts_its_decay_at_the_end_of_warmup():
    f = _factors(10, schedule="cosine", warmup_epochs=2)
    assert f[:2] == pytest.approx([1 / 3, 2 / 3])
    assert f[2] == 1.0
    assert f[6] == pytest.approx(0.5)  # half way through the 8 epochs after warm-up
    assert f[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs():
    assert _factors(7, schedule="step", step_size=3, gamma=0.1) == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])


def test_step_schedule_counts_epochs_from_zero_even_with_warmup():
    # warm-up replaces the first epochs; the decay steps stay where they are without it
    assert _factors(5, schedule="step", step_size=2, gamma=0.5, warmup_epochs=1) == pytest.approx([0.5, 1, 0.5, 0.5, 0.25])


def test_onecycle_rises_to_the_peak_at_30_percent_then_falls_towards_a_25th():
    f = _factors(10, schedule="onecycle")
    assert f[:4] == pytest.approx([0.1, 0.4, 0.7, 1.0])  # peak at int(0.3 * 10) = 3
    assert f[9] == pytest.approx(1 - 0.96 * 6 / 7)
    assert all(a > b for a, b in zip(f[3:], f[4:]))
    assert min(_factors(1000, schedule="onecycle")) == pytest.approx(1 - 0.96 * 699 / 700)
    assert min(_factors(1000, schedule="onecycle")) >= 0.04


def test_onecycle_of_one_epoch_trains_at_a_tenth_of_the_peak():
    assert _factors(1, schedule="onecycle") == [0.1]


# ------------------------------------------------------------------------------------ metric sums


def _cls_batch():
    out = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, UNKNOWN_LABEL])  # right, right, wrong, unknown label (counted wrong)
    return torch.tensor(6.0), out, y


def test_classification_sums_average_the_loss_over_known_labels_and_accuracy_over_rows():
    s = Sums(CPU)
    s.add("classification", *_cls_batch())
    assert s.t.tolist() == [6.0, 3.0, 4.0, 2.0, 0.0, 0.0]  # loss, rows the loss counts, rows, correct, |err|, err^2
    assert s.metrics("classification", "val_") == {"val_loss": 2.0, "val_accuracy": 0.5}


def test_sums_accumulate_over_batches():
    s = Sums(CPU)
    s.add("classification", *_cls_batch())
    s.add("classification", torch.tensor(1.0), torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert s.metrics("classification", "train_") == {"train_loss": 7 / 4, "train_accuracy": 3 / 5}


def test_regression_errors_are_reported_in_the_labels_units():
    s = Sums(CPU)
    out, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([0.0, 2.0, 1.0])  # errors 1, 0, 3
    s.add("regression", torch.tensor(10.0), out, y)
    m = s.metrics("regression", "test_", target_std=2.0)
    assert m == pytest.approx({"test_loss": 10 / 3, "test_rmse": math.sqrt(10 / 3) * 2, "test_mae": 4 / 3 * 2})


def test_worker_sums_add_up_to_row_weighted_global_metrics():
    """all_reduce adds the workers' sums, so a metric is the mean over all rows, not a mean of worker means."""
    a, b = Sums(CPU), Sums(CPU)
    a.add("regression", torch.tensor(4.0), torch.tensor([[2.0]]), torch.tensor([0.0]))  # 1 row, error 2
    b.add("regression", torch.tensor(0.0), torch.zeros(3, 1), torch.zeros(3))  # 3 rows, no error
    a.all_reduce()  # no process group: nothing to reduce
    assert a.t.tolist() == [4.0, 1.0, 1.0, 0.0, 2.0, 4.0]
    reduced = Sums(CPU)
    reduced.t = a.t + b.t  # what dist.all_reduce(SUM) leaves on every rank
    assert reduced.metrics("regression", "val_") == pytest.approx({"val_loss": 1.0, "val_rmse": 1.0, "val_mae": 0.5})


def test_empty_sums_do_not_divide_by_zero():
    assert Sums(CPU).metrics("classification", "val_") == {"val_loss": 0.0, "val_accuracy": 0.0}


def test_the_loop_reports_the_metric_names_the_spec_defines():
    from orchestrator.train.loop import evaluate, make_loss

    c, r = Sums(CPU), Sums(CPU)
    assert set(c.metrics("classification", "train_")) | set(r.metrics("regression", "train_")) == set(TRAIN_METRICS)

    def scored(task, prefix):  # validation and test go through evaluate(), over a whole split
        model = torch.nn.Linear(3, 2 if task == "classification" else 1)
        y = torch.tensor([0, 1, 1, 0]) if task == "classification" else torch.rand(4)
        batches = [{"x": torch.rand(4, 3), "y": y}]
        return evaluate(model, batches, task, {"arch": "mlp"}, CPU, make_loss(task, 0.0), 1.0, prefix)

    for prefix, names in (("val_", VAL_METRICS), ("test_", TEST_METRICS)):
        assert set(scored("classification", prefix)) | set(scored("regression", prefix)) == set(names)
    assert {n for n in METRIC_NAMES if METRICS[n][1] == "regression"} == {k[4:] for k in r.metrics("regression", "val_")} - {"loss"}


def test_whole_split_metrics_equal_scikit_learns():
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    from orchestrator.train.metrics import softmax, whole_split_metrics

    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        y = rng.integers(0, classes, 200)
        logits = rng.normal(size=(200, classes)) + 1.5 * np.eye(classes)[y]  # better than chance, not perfect
        m = whole_split_metrics(y, logits, "test_")
        pred = logits.argmax(axis=1)
        assert m["test_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert m["test_precision"] == pytest.approx(precision_score(y, pred, average="macro"))
        assert m["test_recall"] == pytest.approx(recall_score(y, pred, average="macro"))
        probs = softmax(logits)
        want = roc_auc_score(y, probs[:, 1]) if classes == 2 else roc_auc_score(y, probs, multi_class="ovr", average="macro")
        assert m["test_roc_auc"] == pytest.approx(want)
        assert 0.5 < m["test_roc_auc"] < 1 and 0 < m["test_f1"] < 1

    # a label the training split never had (-1) is nobody's class: its prediction is a false positive
    y, logits = np.array([0, 1, -1, 1]), np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    m = whole_split_metrics(y, logits, "val_")
    assert m["val_precision"] == pytest.approx((1 + 2 / 3) / 2) and m["val_recall"] == 1.0
    # a class with no rows in the split has no AUC; with no class that has both, the AUC is NaN
    assert np.isnan(whole_split_metrics(np.array([1, 1]), np.zeros((2, 2)), "val_")["val_roc_auc"])
    assert whole_split_metrics(np.array([0, 1, 1]), np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0.5, 0]]), "val_")["val_roc_auc"] == 1.0


def test_losses_are_sums_and_skip_unknown_labels():
    ce = make_loss("classification", 0.0)
    assert ce(torch.zeros(2, 2), torch.tensor([0, UNKNOWN_LABEL])).item() == pytest.approx(math.log(2))
    mse = make_loss("regression", 0.0)
    assert mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == 10.0


def test_evaluate_scores_a_model_over_batches():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.bias.fill_(0.5)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # predictions 1.5, -0.5, 0.5
    y = torch.tensor([1.0, 0.0, 0.5])  # errors 0.5, -0.5, 0
    batches = [{"x": x[:2], "y": y[:2]}, {"x": x[2:], "y": y[2:]}]
    m = evaluate(model, batches, "regression", {"arch": "custom"}, CPU, make_loss("regression", 0.0), 10.0, "val_")
    assert m == pytest.approx({"val_loss": 0.5 / 3, "val_rmse": math.sqrt(0.5 / 3) * 10, "val_mae": 1 / 3 * 10})
    assert not model.training


# ------------------------------------------------------------------------------- optimizer choice


def _param() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3))]


def test_sgd_gets_lr_momentum_and_weight_decay():
    opt = make_optimizer(_param(), _t(optimizer="sgd", lr=0.05, momentum=0.8, weight_decay=0.01))
    assert type(opt) is torch.optim.SGD
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.05, 0.8, 0.01)


def test_adam_gets_lr_and_weight_decay():
    opt = make_optimizer(_param(), _t(optimizer="adam", lr=0.002, weight_decay=0.1, momentum=0.5))
    assert type(opt) is torch.optim.Adam
    g = opt.param_groups[0]
    assert (g["lr"], g["weight_decay"]) == (0.002, 0.1)
    assert "momentum" not in g


def test_adamw_is_the_default_and_takes_the_specs_weight_decay():
    opt = make_optimizer(_param(), _t())
    assert type(opt) is torch.optim.AdamW
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (1e-3, 0.0)  # not torch's 0.01


def test_sgd_step_applies_lr_and_weight_decay():
    p = [nn.Parameter(torch.ones(1))]
    opt = make_optimizer(p, _t(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.5))
    p[0].grad = torch.full((1,), 2.0)
    opt.step()
    assert p[0].item() == pytest.approx(1 - 0.1 * (2.0 + 0.5 * 1))


# ---------------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("mode", ["auto", "bf16", "fp16", "off"])
def test_mixed_precision_is_always_off_on_cpu(mode):
    assert autocast_dtype(mode, on_gpu=False, bf16_supported=True) is None
    assert amp_dtype(mode, CPU) is None


@pytest.mark.parametrize(
    "mode,bf16_supported,expected",
    [
        ("auto", True, "bfloat16"),
        ("auto", False, "float16"),
        ("bf16", False, "bfloat16"),  # asked for explicitly: no capability check
        ("fp16", True, "float16"),
        ("off", True, None),
    ],
)
def test_mixed_precision_on_gpu(mode, bf16_supported, expected):
    assert autocast_dtype(mode, on_gpu=True, bf16_supported=bf16_supported) == expected


def test_the_loop_autocasts_to_the_chosen_torch_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", torch.device("cuda")) is torch.float16
    assert amp_dtype("bf16", torch.device("cuda")) is torch.bfloat16


# ------------------------------------------------------------------------------------- loop config


def test_loop_config_for_regression():
    spec = _spec(train={"epochs": 4, "lr": 0.01, "early_stopping": {"patience": 2}}, checkpoint={"metric": "val_rmse"})
    pre = Preprocessor(
        task="regression",
        label="y",
        input=TableInput(numeric=["a", "b"], means=[0.0, 1.0], stds=[1.0, 2.0]),
        target_mean=3.0,
        target_std=2.5,
    )
    plan = plan_workers(spec.scaling, ClusterResources(cpus=8, gpus=0))  # 2 workers x 3 CPUs, 1 CPU left for Ray Data
    config = build_loop_config(spec, SimpleNamespace(preprocessor=pre), plan)
    assert isinstance(config, LoopConfig)
    assert config.job_name == "unit" and config.task == "regression"
    assert config.model == {"arch": "mlp", "hidden": [128, 64], "activation": "relu", "batch_norm": False}  # as model.json keeps it
    assert config.train is spec.train  # the validated section itself: nothing is re-parsed on the worker
    assert config.train.epochs == 4 and config.train.lr == 0.01 and config.train.early_stopping.patience == 2
    assert (config.input_shape, config.num_outputs) == ([2], 1)
    assert config.preprocessing == pre.to_dict()
    assert config.target_std == 2.5
    assert (config.checkpoint_metric, config.checkpoint_mode) == ("val_rmse", "min")
    assert config.torch_threads == 3
    assert pickle.loads(pickle.dumps(config)) == config  # how it crosses the Ray boundary


def test_loop_config_for_classification_keeps_metrics_unscaled():
    spec = _spec(model={"arch": "mlp", "hidden": [8]}, checkpoint={"metric": "val_accuracy"}, scaling={"workers": 1})
    pre = Preprocessor(
        task="classification",
        label="y",
        input=TableInput(numeric=["a"], means=[0.0], stds=[1.0], categorical={"city": ["x", "y", "z"]}),
        classes=["no", "yes"],
        target_std=7.0,
    )
    plan = plan_workers(spec.scaling, ClusterResources(cpus=1.5, gpus=0))
    config = build_loop_config(spec, SimpleNamespace(preprocessor=pre), plan)
    assert (config.input_shape, config.num_outputs) == ([4], 2)  # 1 numeric + 3 one-hot columns; 2 classes
    assert config.target_std == 1.0  # only regression errors are scaled back to the label's units
    assert (config.checkpoint_metric, config.checkpoint_mode) == ("val_accuracy", "max")
    assert plan.cpus_per_worker == 0.5 and config.torch_threads == 1


# ------------------------------------------------------------------------- the loop, on a fake session


def _loop_config(scale: float = 1.0, **train) -> dict:
    spec = _spec(
        train={"epochs": 4, "batch_size": 16, "optimizer": "sgd", "momentum": 0.0, **train},
        model={"arch": "mlp", "hidden": [4]},
        scaling={"workers": 1},
        checkpoint={"metric": "val_mae"},
    )
    pre = Preprocessor(
        task="regression", label="y", input=TableInput(numeric=["a", "b"], means=[0.0, 0.0], stds=[1.0, 1.0]), target_std=3.0
    )
    config = build_loop_config(spec, SimpleNamespace(preprocessor=pre), plan_workers(spec.scaling, ClusterResources(cpus=2, gpus=0)))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g) * scale
    return config, ColumnBatches({"x": x, "y": x[:, 0] - x[:, 1]})


def test_the_loop_runs_on_the_config_built_from_a_spec():
    config, rows = _loop_config(lr=0.05, schedule="step", step_size=2, gamma=0.5)
    session = StandInSession(rows)
    assert run_loop(config, session) is None
    metrics = [m for m, _ in session.reports]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert [m["lr"] for m in metrics] == pytest.approx([0.05, 0.05, 0.025, 0.025])
    assert {"train_loss", "train_rmse", "train_mae", "val_loss", "val_rmse", "val_mae"} <= set(metrics[0])
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    assert all(m["restored_from_epoch"] == -1 and m["early_stopped"] is False and m["world_size"] == 1 for m in metrics)
    assert session.reports[0][1] == ["metrics.json", "model.json", "preprocessing.json", "state.pt"]


def test_an_in_memory_shard_is_read_once_and_shuffled_by_a_seeded_permutation_per_epoch():
    import dataclasses

    from orchestrator.train.loop import WorkerLoop

    config, rows = _loop_config()
    config = dataclasses.replace(config, in_memory=True)
    reads = []
    whole = rows.iter_torch_batches
    rows.iter_torch_batches = lambda **kw: reads.append(kw) or whole(**kw)

    def epoch_rows(loop, epoch):
        batches = list(loop.epoch_batches(epoch))
        assert [len(b["y"]) for b in batches] == [16, 16, 16, 16]  # 64 rows in fixed-size batches
        return torch.cat([b["x"] for b in batches])

    loop = WorkerLoop(config, StandInSession(rows))
    first, second = epoch_rows(loop, 0), epoch_rows(loop, 1)
    assert len(reads) == 1  # the shard is read once per run, not per epoch
    assert sorted(first[:, 0].tolist()) == sorted(rows.columns["x"][:, 0].tolist())  # every row, once
    assert not torch.equal(first, second)  # another order each epoch...
    assert torch.equal(epoch_rows(WorkerLoop(config, StandInSession(rows)), 1), second)  # ...the same for the same seed
    assert run_loop(config, StandInSession(rows)) is None


def test_a_shard_is_held_in_memory_only_when_materialised_and_small_enough_per_worker():
    cap = IN_MEMORY_MAX_SHARD_BYTES
    assert hold_in_memory(True, cap, 1) and hold_in_memory(True, 2 * cap, 2)
    assert not hold_in_memory(True, cap + 1, 1) and not hold_in_memory(True, 3 * cap, 2)  # streamed instead
    assert not hold_in_memory(False, 10, 1)  # a lazy dataset streams
    assert not hold_in_memory(True, None, 1)  # size unknown: stream


def test_a_diverging_loop_stops_and_says_when():
    config, rows = _loop_config(scale=1e3, lr=10.0)
    session = StandInSession(rows)
    result = run_loop(config, session)
    assert result["diverged_epoch"] == 1 and not math.isfinite(result["loss"])
    assert session.reports == []  # no report without validation metrics


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopper("min", patience=2, min_delta=0.1)
    assert [stopper.update(v) for v in (1.0, 0.95, 0.8, 0.85, 0.75)] == [False, False, False, False, True]
    assert (stopper.best, stopper.since_best) == (0.8, 2)  # 0.95 and 0.75 improve by less than min_delta
    stopper = EarlyStopper("max", patience=1)
    assert [stopper.update(v) for v in (0.5, 0.6, 0.6)] == [False, False, True]
    assert [EarlyStopper("min").update(v) for v in (1, 2, 3)] == [False, False, False]  # no early stopping


# ------------------------------------------------------------------------ search concurrency plan


def _search_spec(scaling=None, **tune) -> JobSpec:
    t = {"space": {"train.lr": {"loguniform": [1e-4, 1e-1]}}, "num_samples": 8, **tune}
    return _spec(tune=t, scaling=scaling or {"workers": 1})


def test_expected_trials_multiply_samples_by_grid_points():
    spec = _spec(
        tune={
            "space": {
                "train.lr": {"grid": [0.1, 0.01, 0.001]},
                "model.hidden": {"grid": [[8], [16]]},
                "train.dropout": {"uniform": [0.0, 0.5]},
            },
            "num_samples": 2,
            "search": "random",
        }
    )
    assert expected_trials(spec.tune) == 2 * 3 * 2
    assert expected_trials(_search_spec(num_samples=5).tune) == 5


def test_auto_concurrency_runs_at_least_two_trials_on_a_small_machine():
    k, plan = plan_search(_search_spec(), ClusterResources(cpus=2, gpus=0))
    assert k == 2  # (2 - 1 CPU for Ray Data) / 1 worker = 1, raised to the minimum of 2
    assert plan.workers == 1 and plan.cpus_per_worker == 0.49  # (2 - 2 x 0.01 trial drivers - 1) / 2, rounded down
    assert TRIAL_DRIVER_CPUS == 0.01


def test_auto_concurrency_gives_each_worker_a_whole_cpu_on_a_big_machine():
    k, plan = plan_search(_search_spec(scaling={"workers": 2}), ClusterResources(cpus=8, gpus=0))
    assert k == 3  # floor((8 - 1) / 2)
    assert plan.cpus_per_worker == 1.0 and plan.torch_threads == 1


def test_auto_concurrency_never_exceeds_the_trials():
    k, _ = plan_search(_search_spec(num_samples=3), ClusterResources(cpus=64, gpus=0))
    assert k == 3


def test_auto_concurrency_is_bounded_by_gpus():
    k, plan = plan_search(_search_spec(scaling={"workers": 1, "gpus_per_worker": 1}), ClusterResources(cpus=16, gpus=2))
    assert k == 2 and plan.gpus_per_worker == 1.0


def test_fixed_concurrency_is_capped_by_the_trials():
    assert plan_search(_search_spec(max_concurrent=4, num_samples=3), ClusterResources(cpus=64, gpus=0))[0] == 3
    assert plan_search(_search_spec(max_concurrent=1), ClusterResources(cpus=64, gpus=0))[0] == 1


def test_auto_concurrency_backs_off_until_the_trials_fit():
    spec = _search_spec(scaling={"workers": 2, "cpus_per_worker": 1})
    k, plan = plan_search(spec, ClusterResources(cpus=4, gpus=0))
    assert k == 1 and plan.total_cpus == 2.0  # two trials would need 2 x 2 + 1 CPUs
    with pytest.raises(ResourceError):
        plan_search(spec, ClusterResources(cpus=2.5, gpus=0))


def test_fixed_concurrency_that_does_not_fit_is_refused():
    with pytest.raises(ResourceError, match="concurrent trials"):
        plan_search(_search_spec(max_concurrent=10, num_samples=10), ClusterResources(cpus=2, gpus=0))  # 0.09 CPU each


# ------------------------------------------------------------------------ search-space encoding


SPACE = {
    "train.lr": {"loguniform": [1e-4, 1e-1]},
    "train.dropout": {"uniform": [0.0, 0.5]},
    "train.early_stopping.patience": {"randint": [2, 5]},
    "train.optimizer": {"choice": ["adam", "sgd"]},
    "model.hidden": {"choice": [[32], [64, 32]]},
}


def _space() -> dict[str, Param]:
    return TuneSpec(space=SPACE).space


def test_spec_space_becomes_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    from orchestrator.tune.search import to_tune_space

    out = to_tune_space(_space())
    lr, dropout, patience = out["train.lr"], out["train.dropout"], out["train.early_stopping.patience"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-1) and isinstance(lr.get_sampler(), Float._LogUniform)
    assert isinstance(dropout, Float) and (dropout.lower, dropout.upper) == (0.0, 0.5) and isinstance(dropout.get_sampler(), Float._Uniform)
    assert isinstance(patience, Integer) and (patience.lower, patience.upper) == (2, 6)  # spec high inclusive, Tune's exclusive
    assert isinstance(out["train.optimizer"], Categorical) and out["train.optimizer"].categories == ["adam", "sgd"]
    assert out["model.hidden"].categories == [0, 1]  # list values are searched by index


def test_grids_become_grid_search_and_list_grids_are_indexed():
    from orchestrator.tune.search import to_tune_space

    space = TuneSpec(space={"train.lr": {"grid": [0.1, 0.01]}, "model.hidden": {"grid": [[8], [16, 8], [4]]}}, search="random").space
    assert to_tune_space(space) == {"train.lr": {"grid_search": [0.1, 0.01]}, "model.hidden": {"grid_search": [0, 1, 2]}}


def test_tune_config_decodes_to_spec_values():
    config = {"train.lr": 0.003, "train.dropout": 0.2, "train.early_stopping.patience": 4, "train.optimizer": "sgd", "model.hidden": 1}
    assert decode_config(config, _space()) == {**config, "model.hidden": [64, 32]}
    assert decode_config({"other": 1}, _space()) == {"other": 1}  # keys outside the space pass through


def test_spec_point_encodes_the_specs_own_values_and_decodes_back():
    spec = _spec(
        train={"lr": 0.01, "dropout": 0.1, "optimizer": "sgd", "early_stopping": {"patience": 3}},
        model={"arch": "mlp", "hidden": [64, 32]},
        tune={"space": SPACE},
    )
    point = spec_point(spec)
    assert point == {
        "train.lr": 0.01,
        "train.dropout": 0.1,
        "train.early_stopping.patience": 3,
        "train.optimizer": "sgd",
        "model.hidden": 1,
    }
    assert decode_config(point, spec.tune.space)["model.hidden"] == [64, 32]


@pytest.mark.parametrize(
    "sections",
    [
        {"train": {"lr": 0.5, "early_stopping": {"patience": 3}}},  # lr outside [1e-4, 1e-1]
        {"train": {"lr": 0.01}},  # early stopping off: no value of patience stands for it
        {"train": {"lr": 0.01, "early_stopping": {"patience": 3}}, "model": {"arch": "mlp", "hidden": [7]}},  # not a choice
    ],
)
def test_no_spec_point_when_the_spec_is_outside_the_space(sections):
    assert spec_point(_spec(tune={"space": SPACE}, **sections)) == {}


# ------------------------------------------------------------------------ trial status


def _trial(trial_id="t1", config=None, **kw):
    return SimpleNamespace(**{"trial_id": trial_id, "config": config or {"train.lr": 0.01}, "error_file": None, "error_msg": None, **kw})


def _epochs(tracker, trial, n, **last):
    for e in range(1, n + 1):
        extra = last if e == n else {}
        tracker.on_trial_result(0, [], trial, {"epoch": e, "val_loss": 1.0 / e, "early_stopped": False, **extra})


def _tracker(path, max_epochs: int):
    from orchestrator.tune.search import TrialTracker  # a tune.Callback: imports Ray (without starting it)

    return TrialTracker(_space(), path, max_epochs=max_epochs)


@pytest.fixture
def tracker(tmp_path):
    return _tracker(tmp_path / "trials.json", 4)


def test_a_trial_that_ran_every_epoch_is_terminated(tracker):
    trial = _trial()
    tracker.on_trial_start(0, [], trial)
    assert tracker.records["t1"].status == "RUNNING"
    _epochs(tracker, trial, 4)
    tracker.on_trial_complete(0, [], trial)
    assert tracker.records["t1"].status == "TERMINATED"


def test_a_trial_the_scheduler_stopped_early_is_pruned(tracker):
    trial = _trial()
    _epochs(tracker, trial, 2)
    tracker.on_trial_complete(0, [], trial)
    assert tracker.records["t1"].status == "PRUNED"


def test_a_trial_that_stopped_itself_is_early_stopped(tracker):
    trial = _trial()
    _epochs(tracker, trial, 2, early_stopped=True)
    tracker.on_trial_complete(0, [], trial)
    assert tracker.records["t1"].status == "EARLY_STOPPED"


def test_a_failed_trial_is_an_error_with_the_root_cause(tracker, tmp_path):
    err = tmp_path / "error.txt"
    err.write_text(
        'Traceback (most recent call last):\n  File "loop.py", line 3, in run\n    raise ValueError("boom")\n'
        "ValueError: boom\n\nThe above exception was the direct cause of:\nray.exceptions.RayTaskError(ValueError): wrapped\n"
    )
    trial = _trial(error_file=str(err))
    tracker.on_trial_error(0, [], trial)
    assert (tracker.records["t1"].status, tracker.records["t1"].error) == ("ERROR", "ray.exceptions.RayTaskError(ValueError): wrapped")
    trial2 = _trial("t2")
    trial2.error_msg = "something odd\nno details"
    tracker.on_trial_error(0, [], trial2)
    assert tracker.records["t2"].error == "no details"
    assert {"TERMINATED", "PRUNED", "EARLY_STOPPED", "ERROR"} == set(FINAL_STATUSES)


def test_tracker_keeps_metric_columns_replaces_re_reported_epochs_and_decodes_configs(tracker, tmp_path):
    trial = _trial(config={"train.lr": 0.01, "model.hidden": 1})
    tracker.on_trial_result(
        0, [], trial, {"epoch": 1, "val_loss": 0.9, "train_loss": 1.2, "lr": 0.01, "pid": 123, "time_total_s": 3.0, "timestamp": 1700000000}
    )
    tracker.on_trial_result(0, [], trial, {"epoch": 1, "val_loss": 0.8})  # epoch 1 again, after a restart
    rec = tracker.records["t1"]
    assert rec.config == {"train.lr": 0.01, "model.hidden": [64, 32]}
    assert rec.epochs == [{"epoch": 1, "val_loss": 0.8, "time_total_s": None, "timestamp": None}]
    saved = load_records(tmp_path / "trials.json")
    assert saved["t1"].config == rec.config and saved["t1"].epochs == rec.epochs


def test_tracker_resumes_the_records_it_saved(tmp_path):
    first = _tracker(tmp_path / "trials.json", 2)
    trial = _trial()
    _epochs(first, trial, 2)
    first.on_trial_complete(0, [], trial)
    again = _tracker(tmp_path / "trials.json", 2)
    assert again.records["t1"].status == "TERMINATED" and len(again.records["t1"].epochs) == 2


def test_damaged_trial_records_are_a_run_dir_error(tmp_path):
    (tmp_path / "trials.json").write_text("[{")
    with pytest.raises(RunDirError, match="damaged trial records"):
        load_records(tmp_path / "trials.json")
    assert load_records(tmp_path / "missing.json") == {}


def test_trial_record_best_follows_the_metrics_direction():
    rec = TrialRecord(
        "t",
        {},
        epochs=[
            {"val_loss": 0.5, "val_accuracy": 0.7},
            {"val_loss": float("nan"), "val_accuracy": 0.9},
            {"val_loss": 0.4, "val_accuracy": 0.8},
        ],
    )
    assert (rec.best("val_loss"), rec.best("val_accuracy")) == (0.4, 0.9)
    assert TrialRecord("t", {}).best("val_loss") is None


# ------------------------------------------------------------------------------------ the spec


def _properties(schema: dict):
    for name, node in [("JobSpec", schema), *schema["$defs"].items()]:
        for field_name, prop in node.get("properties", {}).items():
            yield f"{name}.{field_name}", prop


def test_every_spec_field_has_a_one_line_description():
    props = dict(_properties(JobSpec.model_json_schema()))
    assert len(props) > 90
    missing = sorted(k for k, p in props.items() if not (p.get("description") or "").strip())
    assert missing == []
    multi_line = sorted(k for k, p in props.items() if "\n" in p["description"])
    assert multi_line == []


def test_metric_names_come_from_one_definition():
    assert METRIC_NAMES == ("loss", "accuracy", "f1", "precision", "recall", "roc_auc", "rmse", "mae")
    assert VAL_METRICS == tuple("val_" + n for n in METRIC_NAMES)
    assert TEST_METRICS == tuple("test_" + n for n in METRIC_NAMES)
    assert TRAIN_METRICS == ("train_loss", "train_accuracy", "train_rmse", "train_mae")
    assert METRIC_MODES == {
        "val_loss": "min",
        "val_accuracy": "max",
        "val_f1": "max",
        "val_precision": "max",
        "val_recall": "max",
        "val_roc_auc": "max",
        "val_rmse": "min",
        "val_mae": "min",
    }
    assert TASK_ONLY == {
        "classification": {"accuracy", "f1", "precision", "recall", "roc_auc", "label_smoothing", "class_weights"},
        "regression": {"rmse", "mae"},
    }
    schema = JobSpec.model_json_schema()["$defs"]
    assert schema["CheckpointSpec"]["properties"]["metric"]["enum"] == list(VAL_METRICS)
    assert CheckpointSpec(metric="val_mae").mode == "min"
    assert [parse_promote(f"{n} < 1")[0] for n in ("loss", "test_rmse", "mae")] == ["test_loss", "test_rmse", "test_mae"]


# ------------------------------------------------------------ early stopping, as the loop sets it up


def test_early_stopping_takes_the_specs_settings_and_a_resumed_count():
    spec = _spec(train={"early_stopping": {"patience": 3, "min_delta": 0.5}}, checkpoint={"metric": "val_accuracy"})
    pre = Preprocessor(task="classification", label="y", input=TableInput(numeric=["a"], means=[0.0], stds=[1.0]), classes=["a", "b"])
    config = build_loop_config(spec, SimpleNamespace(preprocessor=pre), plan_workers(spec.scaling, ClusterResources(cpus=3, gpus=0)))
    resumed = EarlyStopper.for_loop(config, best=0.9, since_best=2)  # restored from a checkpoint: one more flat epoch stops
    assert (resumed.mode, resumed.patience, resumed.min_delta) == ("max", 3, 0.5)
    assert resumed.update(0.95) is True  # not 0.5 better than 0.9
    off = EarlyStopper.for_loop(
        build_loop_config(_spec(), SimpleNamespace(preprocessor=pre), plan_workers(_spec().scaling, ClusterResources(cpus=3, gpus=0)))
    )
    assert off.patience is None and not any(off.update(1.0) for _ in range(20))


# ------------------------------------------------------------- trial outcome and the winner, pure


@pytest.mark.parametrize(
    "epochs,status",
    [
        ([{"epoch": 1}, {"epoch": 2}, {"epoch": 3}, {"epoch": 4}], "TERMINATED"),
        ([{"epoch": 1}, {"epoch": 2}], "PRUNED"),  # ended before max_epochs: the scheduler stopped it
        ([{"epoch": 1}, {"epoch": 2, "early_stopped": True}], "EARLY_STOPPED"),
        ([{"epoch": 1}, {"epoch": 2}, {"epoch": 3}, {"epoch": 4, "early_stopped": True}], "EARLY_STOPPED"),
        ([], "PRUNED"),
    ],
)
def test_a_finished_trial_is_classified_by_its_epochs(epochs, status):
    from orchestrator.tune.plan import finished_status

    assert finished_status(epochs, max_epochs=4) == status
    assert status in FINAL_STATUSES


def _rec(trial_id, status="TERMINATED", **best):
    return TrialRecord(trial_id, {}, status=status, epochs=[best] if best else [])


def test_the_winner_is_the_best_trial_by_the_metrics_direction():
    from orchestrator.tune.plan import pick_winner

    records = [
        _rec("a", val_loss=0.5, val_accuracy=0.8),
        _rec("b", val_loss=0.3, val_accuracy=0.7),
        _rec("c", "ERROR", val_loss=0.1, val_accuracy=0.99),
        _rec("d", "PRUNED", val_loss=0.4, val_accuracy=0.9),
        _rec("e"),
    ]
    assert pick_winner(records, "val_loss").trial_id == "b"  # failed c is not a candidate
    assert pick_winner(records, "val_accuracy").trial_id == "d"  # a pruned trial still counts
    assert pick_winner([_rec("x", val_loss=0.2), _rec("y", val_loss=0.2)], "val_loss").trial_id == "x"  # ties: the earlier
    assert pick_winner([_rec("e"), _rec("c", "ERROR", val_loss=0.1)], "val_loss") is None


# ---------------------------------------------------------------- search-space encoding, pure


def test_search_space_encoding_is_pure_and_indexes_list_choices():
    from orchestrator.tune.plan import encode_space

    assert encode_space(_space()) == {
        "train.lr": ("loguniform", (1e-4, 1e-1)),
        "train.dropout": ("uniform", (0.0, 0.5)),
        "train.early_stopping.patience": ("randint", (2, 6)),  # spec high inclusive, Tune's exclusive
        "train.optimizer": ("choice", (["adam", "sgd"],)),
        "model.hidden": ("choice", ([0, 1],)),
    }
    grid = TuneSpec(space={"train.lr": {"grid": [0.1, 0.01]}, "model.hidden": {"grid": [[8], [4]]}}, search="random").space
    assert encode_space(grid) == {"train.lr": ("grid_search", ([0.1, 0.01],)), "model.hidden": ("grid_search", ([0, 1],))}


def test_fixed_concurrency_is_the_specs_number_capped_by_the_trials():
    from orchestrator.tune.plan import fixed_concurrency

    assert fixed_concurrency(_search_spec().tune) is None  # auto: derived from the cluster
    assert fixed_concurrency(_search_spec(max_concurrent=3).tune) == 3
    assert fixed_concurrency(_search_spec(max_concurrent=6, num_samples=2).tune) == 2


# ------------------------------------------------------------ workers on a cluster built for the spec


@pytest.mark.parametrize(
    "scaling,cpus",
    [
        ({"workers": 3}, 1.0),
        ({"workers": 2, "cpus_per_worker": 2.5}, 2.5),
        ({"workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 1}, 0.5),
    ],
)
def test_requested_workers_are_what_the_spec_asks_and_fit_once_data_has_its_cpu(scaling, cpus):
    from orchestrator.train.plan import DATA_RESERVE_CPUS, requested_workers

    spec = _spec(scaling=scaling)
    want = requested_workers(spec.scaling)
    assert (want.workers, want.cpus_per_worker, want.gpus_per_worker) == (spec.scaling.workers, cpus, spec.scaling.gpus_per_worker)
    cluster = ClusterResources(cpus=want.total_cpus + DATA_RESERVE_CPUS, gpus=want.workers * want.gpus_per_worker)
    got = plan_workers(spec.scaling, cluster)  # the planner accepts that cluster and gives each worker at least as much
    assert got.workers == want.workers and got.cpus_per_worker >= want.cpus_per_worker


def test_sample_values_of_every_distribution_are_its_values():
    space = TuneSpec(
        space={"train.lr": {"uniform": [0.1, 0.2]}, "train.epochs": {"randint": [2, 4]}, "train.optimizer": {"choice": ["sgd"]}}
    ).space
    assert [p.sample_values() for p in space.values()] == [[0.1, 0.2], [2, 4], ["sgd"]]


# ------------------------------------------------------------------- one-line reasons, polling


def test_one_line_flattens_control_characters_and_shortens():
    from orchestrator.errors import one_line

    assert one_line("a\n  b\tc\x1b[31m") == "a b c [31m"
    assert one_line(ValueError("bad\nvalue")) == "bad value"
    long = one_line("x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("...")


def test_first_and_last_line_of_an_error_or_its_type():
    from orchestrator.errors import first_line, last_line

    traceback_text = 'Traceback (most recent call last):\n  File "x.py", line 1\n\nValueError: the real reason\n\n'
    assert last_line(traceback_text) == "ValueError: the real reason"
    assert first_line(RuntimeError("\n  summary\ndetails")) == "summary"
    assert last_line(KeyError()) == first_line(KeyError()) == "KeyError"  # no message: the type
    assert last_line("", "unknown error") == "unknown error" and last_line("   \n") is None


def test_poll_until_returns_the_first_result_that_holds():
    from orchestrator.polling import poll_until

    answers = iter([None, None, 200, 500])
    assert poll_until(lambda: next(answers), lambda code: code == 200, timeout=5, interval=0.01) == 200
    assert next(answers) == 500  # it stopped asking


def test_poll_until_gives_the_last_result_after_the_timeout_and_passes_errors_on():
    import time

    from orchestrator.polling import poll_until

    calls = []
    t0 = time.monotonic()
    assert poll_until(lambda: calls.append(1) or len(calls), lambda n: False, timeout=0.3, interval=0.05) == len(calls)
    assert 0.3 <= time.monotonic() - t0 < 2 and len(calls) >= 3

    def broken():
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        poll_until(broken, lambda _: True, timeout=5, interval=0.01)


def test_class_weights_weigh_the_training_loss_and_follow_scikit_learns_balanced_rule():
    from sklearn.utils.class_weight import compute_class_weight

    from orchestrator.errors import DataError
    from orchestrator.train.loop import make_loss
    from orchestrator.train.plan import class_weight_vector

    y = np.array(["a"] * 10 + ["b"] * 30 + ["c"] * 60)
    want = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=y)
    assert class_weight_vector("balanced", ["a", "b", "c"], [10, 30, 60]) == pytest.approx(list(want))
    assert class_weight_vector({"b": 3, 7: 2.0}, ["a", "b", 7], None) == [1.0, 3.0, 2.0]  # YAML keys: labels of any type
    assert class_weight_vector(None, ["a", "b"], None) is None
    with pytest.raises(DataError, match=r"train.class_weights: 'z' is no class of the training split \(its classes: 'a', 'b'\)"):
        class_weight_vector({"z": 3}, ["a", "b"], None)

    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, -1])  # -1: unseen label
    per_row = torch.nn.functional.cross_entropy(logits[:2], target[:2], reduction="none")
    weighted = make_loss("classification", 0.0, [1.0, 4.0])(logits, target)
    assert weighted.item() == pytest.approx((per_row[0] + 4 * per_row[1]).item())
    assert make_loss("classification", 0.0)(logits, target).item() == pytest.approx(per_row.sum().item())


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_rank_keeps_every_world_size_th_row_of_a_split_read_whole(monkeypatch, world_size):
    """A split held in memory reaches every rank whole; the ranks' shares are disjoint, cover it,
    and differ by at most one row, across batch boundaries that do not divide by world_size."""
    import orchestrator.train.loop as loop

    monkeypatch.setattr(loop, "IN_MEMORY_READ_BATCH", 7)
    n = 50
    data = ColumnBatches({"x": np.arange(n, dtype=np.float32).reshape(n, 1), "y": np.arange(n)})
    shares = [read_whole(data, {"x": torch.float32, "y": torch.int64}, rank, world_size) for rank in range(world_size)]
    rows = [s["y"].tolist() for s in shares]
    assert sorted(sum(rows, [])) == list(range(n))
    assert all(r == list(range(rank, n, world_size)) for rank, r in enumerate(rows))
    assert all(torch.equal(s["x"][:, 0].long(), s["y"]) for s in shares)
    assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_the_metrics_table_keeps_its_title_on_one_line_at_80_columns():
    import io

    from orchestrator.ui import make_console, metrics_table

    buf = io.StringIO()
    make_console(file=buf, width=80).print(metrics_table("winner on the held-out test split", {"test_loss": 0.1019, "test_rows": 81}))
    lines = buf.getvalue().splitlines()
    assert lines[0].strip() == "winner on the held-out test split" and "0.1019" in buf.getvalue(), buf.getvalue()


def test_the_predictions_table_keeps_its_title_on_one_line():
    import io

    from orchestrator.cli.serve import _predictions_table
    from orchestrator.ui import make_console

    rows = [
        {"row": i, "prediction": "malignant", "probabilities": {"benign": 0.1, "malignant": 0.9}, "model_version": "f9af6a27cad4"}
        for i in range(2)
    ]
    buf = io.StringIO()
    make_console(file=buf, width=80).print(_predictions_table(rows))
    assert buf.getvalue().splitlines()[0].strip() == "2 predictions (model version f9af6a27cad4)", buf.getvalue()
    assert "0.900" in buf.getvalue()


def test_sampled_values_are_shown_rounded_by_short_or_full_name():
    from orchestrator.ui import fmt_config

    config = {"train.lr": 0.0027416563468954775, "model.channels": [48, 96], "train.batch_size": 64}
    assert fmt_config(config) == "lr=0.00274, channels=[48, 96], batch_size=64"
    assert fmt_config(config, short=False) == "train.lr=0.00274, model.channels=[48, 96], train.batch_size=64"
