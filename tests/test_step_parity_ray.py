"""Every rank takes the same number of training steps every epoch, on data of many small blocks.

Ray Data's local shuffle can yield short batches mid-stream at block boundaries, so equal rows per
rank do not make equal batches; a rank that takes one step more than another waits forever in DDP's
gradient all-reduce. The real loop runs on 2 workers over a Parquet folder of many tiny files (a
block each), with a batch size that divides neither the files nor the shards, both in memory and
streamed; each rank records the steps it took per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest

from orchestrator.data.ingest import prepare_data
from orchestrator.runtime import cluster_resources
from orchestrator.spec import parse_spec
from orchestrator.train.driver import build_trainer
from orchestrator.train.plan import build_loop_config, plan_workers
from tests.conftest import spec_dict

pytestmark = pytest.mark.ray

EPOCHS = 2  # every epoch reshuffles: two show the counts stay equal across epochs
ROWS_PER_FILE = 29  # 20 files of the 569 rows; 29 % 8 = 5: batches straddle every block boundary
BATCH_SIZE = 8


def recording_loop(config):
    """The real worker loop, on a session that also writes what each rank reports to its own file."""
    from orchestrator.train.driver import LOOP_CONFIG_KEY, TrainSession
    from orchestrator.train.loop import run_loop

    class RecordingSession(TrainSession):
        def report(self, metrics, checkpoint_dir):
            with open(Path(config["out_dir"], f"rank{self.rank}.jsonl"), "a") as f:
                f.write(json.dumps({"epoch": metrics["epoch"], "steps": metrics["steps"]}) + "\n")
            super().report(metrics, checkpoint_dir)

    return run_loop(config[LOOP_CONFIG_KEY], RecordingSession())


@pytest.fixture(scope="module")
def many_files(data_dir, tmp_path_factory) -> Path:
    df = pd.read_parquet(data_dir / "breast_cancer.parquet")
    folder = tmp_path_factory.mktemp("many") / "breast_cancer"
    folder.mkdir()
    for i in range(0, len(df), ROWS_PER_FILE):
        df.iloc[i : i + ROWS_PER_FILE].to_parquet(folder / f"part-{i // ROWS_PER_FILE:03d}.parquet", index=False)
    return folder


@pytest.mark.timeout(300)  # a rank stuck in an all-reduce would hang here, not pass
@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_every_rank_takes_the_same_steps_every_epoch(ray_session, many_files, tmp_path, cache):
    d = spec_dict(
        "breast-cancer-mlp.yaml", train={"epochs": EPOCHS, "batch_size": BATCH_SIZE, "early_stopping": None}, scaling={"workers": 2}
    )
    d["data"].update(source=str(many_files), format="parquet", cache=cache)
    d["data"].pop("prepare", None)
    spec = parse_spec(d)
    prepared = prepare_data(spec)
    assert len(list(many_files.iterdir())) >= 20  # many small blocks: Ray Data reads a block per file
    plan = plan_workers(spec.scaling, cluster_resources())
    assert plan.workers == 2
    assert build_loop_config(spec, prepared, plan).in_memory is (cache == "memory")  # materialised and small: held in memory
    cloudpickle.register_pickle_by_value(__import__(__name__))
    out = tmp_path / "ranks"
    out.mkdir()
    trainer = build_trainer(
        spec,
        prepared,
        plan,
        storage_path=str(tmp_path / "runs"),
        name=f"parity-{cache}",
        callbacks=[],
        extra_config={"out_dir": str(out)},
        train_loop=recording_loop,
    )
    trainer.fit()

    steps = {r: [json.loads(line) for line in (out / f"rank{r}.jsonl").read_text().splitlines()] for r in range(2)}
    assert [e["epoch"] for e in steps[0]] == [e["epoch"] for e in steps[1]] == list(range(1, EPOCHS + 1))
    for a, b in zip(steps[0], steps[1]):
        assert a["steps"] == b["steps"] > 0, steps
    train_rows = prepared.transformed["train"].count()
    assert ROWS_PER_FILE % BATCH_SIZE  # batches straddle the block boundaries
    per_rank = train_rows // 2
    if cache == "memory":  # the whole equalised shard, in fixed-size batches (the last one shorter)
        assert all(e["steps"] == -(-per_rank // BATCH_SIZE) for e in steps[0]), steps
    else:  # at most a couple of batches short of that
        assert all(-(-per_rank // BATCH_SIZE) - 3 <= e["steps"] <= -(-per_rank // BATCH_SIZE) + 3 for e in steps[0]), steps
