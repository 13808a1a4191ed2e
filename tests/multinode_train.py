"""A real training run on a 2-node Ray cluster (ray.cluster_utils.Cluster: two raylets on this
machine), in its own process so its driver does not clash with the test session's Ray.

    python -m tests.multinode_train OUT_DIR      (run by tests/test_cluster_multinode.py)

Each node has 2 CPUs and each DDP worker asks for 1.5, so no node can hold both workers: Ray
Train's PACK placement has to spread them, and 0.5 CPU per node stays free for Ray Data. The run
goes through `orchestrator.pipeline.train_job`, the code path of `orchestrator train/run`.
Writes OUT_DIR/result.json: the nodes, the node of every RayTrainWorker, the run directory.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

from orchestrator.ports import free_port


def main(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors
    from rich.console import Console

    from orchestrator.pipeline import train_job
    from orchestrator.spec import load_spec
    from tests.conftest import spec_dict

    d = spec_dict("digits-cnn.yaml", train={"epochs": 2}, scaling={"workers": 2, "cpus_per_worker": 1.5})
    d.pop("tune"), d.pop("promote")
    d["data"]["source"] = str(out / "digits.parquet")  # absolute: every node reads the same file
    spec_path = out / "digits-2nodes.yaml"
    spec_path.write_text(yaml.safe_dump(d))

    # Explicit ports and temp dir: Ray's defaults (dashboard 8265, agent 52365, /tmp/ray) are shared
    # with any other Ray on this machine.
    temp = tempfile.mkdtemp(prefix="orch-mn-")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            "dashboard_agent_listen_port": free_port("0.0.0.0"),
            "temp_dir": temp,
        },
    )
    try:
        cluster.add_node(num_cpus=2, dashboard_agent_listen_port=free_port("0.0.0.0"))
        cluster.wait_for_nodes()
        result = train_job(load_spec(spec_path), spec_path, output=out / "runs", address=cluster.address, console=Console(stderr=True))
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        workers = list_actors(
            address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=100, raise_on_missing_output=False
        )
        (out / "result.json").write_text(
            json.dumps(
                {
                    "nodes": nodes,
                    "worker_nodes": sorted(w.node_id for w in workers),
                    "run_dir": str(result.run_dir),
                    "test_metrics": result.test_metrics,
                },
                indent=2,
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
