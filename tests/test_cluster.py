"""Experiments on Ray (core.cluster): the same stored results as the local executor, a worker node killed
mid-run (retried, resumed), a driver killed and restarted (only unfinished runs submitted).

Equality is exact: a run is deterministic given (seed, epoch) *and* TensorFlow's intra-op thread count, which
changes the summation order in oneDNN's kernels (measured: 1 thread against 2 moves the first epoch's loss in
the 7th digit and the scores in the 4th decimal after 2 epochs). So the reference runs with 2 threads
(``TF_NUM_INTRAOP_THREADS=2`` in a subprocess) and the Ray tasks with ``--cpus-per-task 2``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from engine_helpers import build_tiny, run_core

pytestmark = pytest.mark.slow


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path, monkeypatch):
    from core.cluster import ClusterError, ray_installed
    from core.experiment import run_experiment

    installed = ray_installed()
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ClusterError, match=r"pip install -r requirements-cluster\.txt"):
        run_experiment(tmp_path / "no-dataset", tmp_path / "store", executor="ray")
    assert not (tmp_path / "store").exists()  # refused before anything is written
    if installed:
        return
    r = run_core("run-experiment", str(tmp_path / "no-dataset"), "--store", str(tmp_path / "s"), "--executor", "ray")
    assert r.returncode == 2 and "requirements-cluster.txt" in r.stderr


@pytest.fixture(scope="module")
def ray():
    """The tests below need Ray (requirements-cluster.txt; .ci/run installs it)."""
    return pytest.importorskip("ray")

#: a tiny fast experiment: 3 short epochs (the worker is killed after the first)
ARGS = ("--preset", "fast", "--epochs", "3", "--max-batches", "3", "--cv", "off")  # the dataset's own split
THREADS = {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": "2"}


def _ray_executor():
    """Ray tasks of 2 CPUs (2 TensorFlow threads, as the reference run)."""
    from core.runs import ExecutorOptions, make_executor

    return make_executor("ray", ExecutorOptions(cpus_per_task=2))


def _cfg():
    from core.experiment import preset_config

    return preset_config("fast", max_epochs=3, max_train_batches=3)


@pytest.fixture(scope="module")
def tiny(ray, tmp_path_factory):
    """The tiny dataset and a reference store from the local executor (seeds 0, 1; snippet + linear)."""
    root = tmp_path_factory.mktemp("cluster")
    ds = build_tiny(root)
    ref = root / "ref"
    r = run_core("run-experiment", str(ds), "--store", str(ref), "--seeds", "2", "--models", "snippet,linear", *ARGS,
                 env=THREADS, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    return ds, ref


def _stored(store, run_ids=None) -> dict[str, list[dict]]:
    """Everything a run leaves in the store but its timings: epochs, metrics, predictions (with scores)."""
    from core.store import Store

    s = Store(store, create=False)
    out = {}
    for table, cols, order in (
            ("epochs", "run_id, epoch, loss, accuracy, val_loss, val_accuracy, val_track_accuracy, lr", "epoch"),
            ("metrics", "*", "level, split"), ("predictions", "*", "level, split, track, start_s")):
        rows = s.query(f"SELECT {cols} FROM {table} ORDER BY run_id, {order}")
        out[table] = [r for r in rows if run_ids is None or r["run_id"] in run_ids]
    out["runs"] = [(r["id"], r["status"], r["epochs"], r["best_epoch"]) for r in s.runs()
                   if run_ids is None or r["id"] in run_ids]
    return out


def _events(path) -> list[dict]:
    try:
        return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    except FileNotFoundError:
        return []


def test_local_ray_gives_the_local_executors_results_seed_for_seed(ray, tiny, tmp_path):
    from core.cluster import ClusterError, check_shared_storage, job_runtime_env
    from core.experiment import experiment_progress
    from core.experiment import run_experiment

    ds, ref = tiny
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env=job_runtime_env())
    try:
        events: list[dict] = []
        out = run_experiment(ds, tmp_path / "store", seeds=[0, 1], models=["snippet", "linear"], config=_cfg(),
                             progress=events.append, executor=_ray_executor())
        # the folder check: a path a worker cannot see is refused, naming the node and the path
        with pytest.raises(ClusterError, match="shared storage") as err:
            check_shared_storage(ray, [("the dataset", str(tmp_path / "nowhere" / "card.json"), "file")], 2)
        assert "nowhere" in str(err.value) and "not found" in str(err.value)
    finally:
        ray.shutdown()
    assert [(r["seed"], r["model"], r["status"]) for r in out["runs"]] == [
        (0, "snippet", "done"), (0, "linear", "done"), (1, "snippet", "done"), (1, "linear", "done")]
    assert _stored(tmp_path / "store") == _stored(ref)  # exact, prediction scores included
    # the dashboard's events: every epoch with its metrics, then the run done
    for seed in (0, 1):
        assert [e["epoch"] for e in events if e.get("seed") == seed and e.get("model") == "snippet"
                and e.get("phase") == "train" and e.get("metrics")] == [1, 2, 3]
    assert experiment_progress(events, 4)["n_done"] == 4


def test_worker_node_killed_mid_run_is_retried_and_resumes_to_the_same_result(ray, tiny, tmp_path):
    from ray.cluster_utils import Cluster

    from core.cluster import job_runtime_env
    from core.experiment import run_experiment

    ds, ref = tiny
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    first = cluster.add_node(num_cpus=2)
    killed: list[dict] = []

    def progress(ev: dict) -> None:
        if not killed and ev.get("phase") == "train" and ev.get("epoch") == 1:
            cluster.remove_node(first, allow_graceful=False)  # the worker node dies in epoch 2 of 3 ...
            cluster.add_node(num_cpus=2)  # ... and another one joins
            killed.append(ev)

    try:
        ray.init(address=cluster.address, logging_level="WARNING", runtime_env=job_runtime_env())
        out = run_experiment(ds, tmp_path / "store", seeds=[0], models=["snippet"], config=_cfg(),
                             progress=progress, executor=_ray_executor())
    finally:
        ray.shutdown()
        cluster.shutdown()
    run = out["runs"][0]
    assert killed and run["status"] == "done"
    assert run["attempts"] == 2 and run["resumed_from"] >= 1, run  # retried, from its last finished epoch
    assert _stored(tmp_path / "store") == _stored(ref, {run["run"]})


def test_driver_killed_and_restarted_submits_only_unfinished_runs(tiny, tmp_path):
    from ray.cluster_utils import Cluster

    ds, ref = tiny
    store = tmp_path / "store"
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        def command(events):
            return ["run-experiment", str(ds), "--store", str(store), "--seeds", "2", "--models", "snippet", *ARGS,
                    "--executor", "ray", "--ray-address", cluster.address, "--ray-cpus-per-task", "2",
                    "--events", str(events)]

        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
        env.pop("RAY_ADDRESS", None)
        first = subprocess.Popen([sys.executable, "-m", "core", *command(tmp_path / "ev1.jsonl")], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 400
            while time.time() < deadline and first.poll() is None:  # seed 0 done, seed 1 one epoch in
                ev = _events(tmp_path / "ev1.jsonl")
                if any(e.get("seed") == 0 and e.get("state") == "done" for e in ev) and \
                        any(e.get("seed") == 1 and e.get("epoch") == 1 for e in ev):
                    break
                time.sleep(0.2)
        finally:
            first.kill()
            first.wait()
        ev1 = _events(tmp_path / "ev1.jsonl")
        assert not any(e.get("phase") == "end" for e in ev1), "the first driver finished before it was killed"
        r = run_core(*command(tmp_path / "ev2.jsonl"), timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        cluster.shutdown()
    ev2 = _events(tmp_path / "ev2.jsonl")
    assert [e["seed"] for e in ev2 if e.get("phase") == "skip"] == [0]
    assert [e["n_runs"] for e in ev2 if e.get("phase") == "submit"] == [1]
    assert not any(e.get("seed") == 0 and e.get("phase") in ("train", "evaluate") for e in ev2)
    assert any(e.get("seed") == 1 and "resuming snippet model, seed 1 from epoch" in e.get("message", "") for e in ev2)
    ids = {row[0] for row in _stored(store)["runs"]}
    assert _stored(store) == _stored(ref, ids) and len(ids) == 2


def test_cross_validation_on_ray_gives_the_local_executors_results(ray, tiny, tmp_path):
    """--cv: every fold run is an ordinary Ray task (a fold is a dataset folder of its own); the driver pools each
    seed's folds as the local executor does, to the same stored results."""
    from core.cluster import job_runtime_env
    from core.experiment import run_experiment

    ds, _ = tiny
    ref = tmp_path / "ref"
    local = [a for a in ARGS if a not in ("--cv", "off")]
    r = run_core("run-experiment", str(ds), "--store", str(ref), "--seeds", "0,", "--models", "snippet,linear",
                 *local, "--cv", "3", env=THREADS, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env=job_runtime_env())
    try:
        out = run_experiment(ds, tmp_path / "store", seeds=[0], models=["snippet", "linear"], config=_cfg(), cv=3,
                             executor=_ray_executor())
    finally:
        ray.shutdown()
    assert out["n_folds"] == 3 and [r["status"] for r in out["runs"]] == ["done"] * 6 and len(out["pooled"]) == 2
    assert [(r["model"], r["fold"]) for r in out["runs"]] == [("snippet", f) for f in range(3)] + \
        [("linear", f) for f in range(3)]
    assert _stored(tmp_path / "store") == _stored(ref)  # folds and pooled runs, prediction scores included
