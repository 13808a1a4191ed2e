"""Each private Ray API the package reaches (all of them in orchestrator/ray_internals.py) against the
installed Ray: one test per access, so that a Ray upgrade that moves one fails here by name."""

from __future__ import annotations

import logging
import os
import urllib.request

import pytest

from orchestrator import ray_internals
from orchestrator.errors import OrchestratorError


def test_the_installed_ray_is_the_known_release_and_another_is_refused_naming_both(monkeypatch):
    import ray

    ray_internals.require_known_ray()  # the pinned release: passes
    ray_internals.require_known_ray.cache_clear()
    monkeypatch.setattr(ray, "__version__", "2.61.0")
    try:
        with pytest.raises(OrchestratorError) as e:
            ray_internals.require_known_ray()
        assert "Ray 2.60.x" in str(e.value) and "Ray 2.61.0 is installed" in str(e.value) and "pip install" in str(e.value)
    finally:
        ray_internals.require_known_ray.cache_clear()


def test_the_job_sdk_loggers_exist_in_ray():
    import importlib

    for name in ray_internals.JOB_SDK_LOGGERS:
        importlib.import_module(name)  # a logger named for a module that no longer exists would quiet nothing


@pytest.mark.ray
def test_the_embedded_node_reports_its_session_folder(ray_session):
    folder = ray_internals.session_dir()
    assert os.path.isdir(os.path.join(folder, "logs")), folder


@pytest.mark.ray
def test_the_metrics_export_url_serves_prometheus_text(ray_session):
    url = ray_internals.metrics_export_url()
    assert url and url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200 and b"# TYPE" in r.read()


@pytest.mark.ray
def test_the_serve_proxy_address_is_read_once_serve_runs(ray_session):
    import socket

    from ray import serve

    from orchestrator.ports import free_port

    before = ray_internals.serve_http_address()
    if before is None:  # no Serve on this session's node yet: start one, and leave none behind
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            assert ray_internals.serve_http_address() == ("127.0.0.1", port)
            with socket.create_connection(("127.0.0.1", port), timeout=30):  # the proxy listens there
                pass
        finally:
            serve.shutdown()
        assert ray_internals.serve_http_address() is None
    else:
        with socket.create_connection(before, timeout=30):
            pass


@pytest.mark.ray
def test_ray_datas_log_file_handler_is_told_from_its_console_handlers(ray_session):
    import ray

    ray.data.range(3).count()  # Ray Data sets up its logging on first use
    handlers = logging.getLogger("ray.data").handlers
    assert [h for h in handlers if ray_internals.is_ray_data_log_file(h)], handlers
    assert not ray_internals.is_ray_data_log_file(logging.StreamHandler())


@pytest.mark.ray
def test_the_embedded_node_started_on_loopback_and_the_single_machine_switch_was_put_back(ray_session):
    """ray_session starts its node with start_embedded_node, as the CLI does."""
    import sys

    from ray._private import ray_constants

    assert {n["NodeManagerAddress"] for n in ray_session.nodes() if n["Alive"]} == {"127.0.0.1"}
    if sys.platform.startswith("linux") and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ:
        assert ray_constants.ENABLE_RAY_CLUSTER is True  # what Ray reads at import on Linux, put back


def test_a_trial_checkpoint_manager_round_trips_and_keeps_what_it_is_told(tmp_path):
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _TrainingResult

    manager = _CheckpointManager(CheckpointConfig(num_to_keep=None))
    for i in range(3):
        (tmp_path / f"checkpoint_{i:06d}").mkdir()
        manager.register_checkpoint(_TrainingResult(checkpoint=Checkpoint(str(tmp_path / f"checkpoint_{i:06d}")), metrics={"i": i}))
    copy = ray_internals.load_checkpoint_manager(ray_internals.dump_checkpoint_manager(manager))
    results, latest = ray_internals.checkpoint_results(copy)
    assert [os.path.basename(r.checkpoint.path) for r in results] == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    assert os.path.basename(latest.checkpoint.path) == "checkpoint_000002"
    ray_internals.set_checkpoint_results(copy, results[:1], results[0])
    again = ray_internals.load_checkpoint_manager(ray_internals.dump_checkpoint_manager(copy))
    results, latest = ray_internals.checkpoint_results(again)
    assert [os.path.basename(r.checkpoint.path) for r in results] == ["checkpoint_000000"] and latest.metrics == {"i": 0}


def test_a_pickled_search_algorithms_storage_is_rebased(tmp_path):
    import ray.cloudpickle as cloudpickle
    from ray.train._internal.storage import StorageContext

    state = {"searcher": {"storage": StorageContext(storage_path=str(tmp_path / "old"), experiment_dir_name="tune")}, "n": 1}
    state = cloudpickle.loads(cloudpickle.dumps(state))
    assert ray_internals.rebase_storage(state, str(tmp_path / "new"))
    assert state["searcher"]["storage"].storage_fs_path == str(tmp_path / "new")
    assert not ray_internals.rebase_storage({"n": 1}, "x")


def test_finished_trials_leave_the_live_sets_of_the_saved_search_algorithms():
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    basic = BasicVariantGenerator(max_concurrent=2).get_state()
    assert "_live_trials" in basic  # the attribute this access relies on
    basic["_live_trials"] = {"a", "b"}
    assert ray_internals.forget_live_trials(basic, {"a"}) and basic["_live_trials"] == {"b"}

    limited = ConcurrencyLimiter(OptunaSearch(metric="m", mode="min"), max_concurrent=2).get_state()
    assert "live_trials" in limited and "num_unfinished_live_trials" in limited
    limited["live_trials"], limited["num_unfinished_live_trials"] = {"a", "b"}, 2
    assert ray_internals.forget_live_trials({"limiter": limited}, {"a", "c"})
    assert limited["live_trials"] == {"b"} and limited["num_unfinished_live_trials"] == 1
    assert not ray_internals.forget_live_trials(basic, {"zzz"})
