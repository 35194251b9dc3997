"""Ray executor overhead: the same small experiment run locally and on a two-node Ray cluster on this machine.

One tiny generated dataset (3 classes x ``--per-class`` 6 s tracks, 1 s snippets, 16 mel bands), ``--seeds``
snippet-CRNN runs of ``--epochs`` epochs of at most ``--max-batches`` batches, each evaluated (segment and
track level). Three ways, each into a fresh store, each driver in this process (TensorFlow already imported):

* ``local``      ``run_experiment(executor="local")``: one run after the other, ``--threads`` TF threads;
* ``ray 2 CPUs`` a two-node ``ray.cluster_utils.Cluster`` (a head with 0 CPUs, like a login node, and one worker
                 node with 2 CPUs), ``--cpus-per-task 2``: one run at a time with the same threads as
                 ``local``, so the difference in wall time is Ray's overhead;
* ``ray 1+1``    a head with 1 CPU and a worker node with 1 CPU, ``--cpus-per-task 1``: two runs at a time,
                 one thread each (on 2 shared cores this shows thread scaling, not a cluster's speed-up).

``run_experiment`` connects to the running cluster (the executor's ``address``) as the CLI does, ships ``core``, checks the
shared folders on every node, submits, relays progress and writes the store. Reported per way: the wall time;
connect + storage check (start to the ``submit`` event); per run, the time from its ``starting`` event to its
``done`` event (for Ray: in the worker, including the worker's TensorFlow import on its first task, plus the
result's trip to the driver and the store write). **Overhead per task** = (wall of ``ray 2 CPUs`` - wall of
``local``) / runs: everything Ray adds, the one-off connection and worker start-up amortised over the runs.
The stored results of ``local`` and ``ray 2 CPUs`` are compared (equal when the TF thread counts are equal).

Usage: ``python bench/cluster_overhead.py [--seeds 4] [--epochs 3] [--max-batches 10] [--per-class 5]``
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(root: Path, per_class: int) -> Path:
    from core.dataset import SplitConfig, build_dataset
    from core.features import FeatureParams
    from core.synth import make_dataset_folder

    src = make_dataset_folder(root / "src", n_classes=3, per_class=per_class, seconds=6.0)
    params = FeatureParams(n_mels=16, snippet_s=1.0, overlap_s=0.5, max_snippets=0, full_clip_s=6.0, n_fft=1024,
                           hop_length=512)
    return build_dataset(src, root / "ds", params, SplitConfig(0.2, 0.2, 0), workers=1)


def timed(ds: Path, store: Path, seeds: int, config, **kw) -> dict:
    from core.experiment import run_experiment

    t0 = time.perf_counter()
    ev: list[tuple[float, dict]] = []
    out = run_experiment(ds, store, seeds=list(range(seeds)), models=["snippet"], config=config,
                         progress=lambda e: ev.append((time.perf_counter() - t0, e)), **kw)
    wall = time.perf_counter() - t0
    assert not out["stopped"] and all(r["status"] == "done" for r in out["runs"]), out["runs"]
    start = {e["run"]: t for t, e in ev if e.get("phase") == "train" and "message" in e
             and str(e["message"]).startswith(("starting", "resuming"))}
    done = {e["run"]: t for t, e in ev if e.get("state") == "done" and e.get("phase") == "evaluate"}
    per_run = [done[r] - start[r] for r in done]
    submit = next((t for t, e in ev if e.get("phase") == "submit"), None)
    first = min(start.values())
    train_s = sum(float(r[0] or 0) for r in sqlite3.connect(store / "experiments.sqlite").execute(
        "SELECT seconds FROM epochs"))
    return {"wall": wall, "submit": submit, "first_start": first, "per_run": per_run, "train_s": train_s}


def stored(store: Path) -> list:
    con = sqlite3.connect(store / "experiments.sqlite")
    return [con.execute("SELECT run_id, epoch, loss, val_loss FROM epochs ORDER BY run_id, epoch").fetchall(),
            con.execute("SELECT run_id, level, split, accuracy, macro_f1 FROM metrics ORDER BY 1, 2, 3").fetchall(),
            con.execute("SELECT run_id, level, split, track, start_s, scores FROM predictions "
                        "ORDER BY 1, 2, 3, 4, 5").fetchall()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-batches", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=5, help="tracks per class of the generated dataset")
    ap.add_argument("--threads", type=int, default=2, help="TF intra-op threads of the local run (= CPUs per task)")
    a = ap.parse_args()
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(a.threads)

    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import ray
    from ray.cluster_utils import Cluster

    from core.experiment import preset_config
    from core.runs import ExecutorOptions, make_executor

    config = preset_config("fast", max_epochs=a.epochs, max_train_batches=a.max_batches)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        root = Path(tmp)
        ds = build(root, a.per_class)
        res = {"local": timed(ds, root / "local", a.seeds, config)}
        for name, head, node, cpt in (("ray 2 CPUs", 0, 2, 2), ("ray 1+1", 1, 1, 1)):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head, "include_dashboard": False})
            cluster.add_node(num_cpus=node)
            cluster.wait_for_nodes()
            try:
                res[name] = timed(ds, root / name.replace(" ", "-"), a.seeds, config,
                                  executor=make_executor("ray", ExecutorOptions(cluster.address, cpt)))
            finally:
                if ray.is_initialized():
                    ray.shutdown()
                cluster.shutdown()
        same = stored(root / "local") == stored(root / "ray-2-CPUs")
    load = os.getloadavg()[0]
    print(f"{a.seeds} snippet-CRNN runs x {a.epochs} epochs (<= {a.max_batches} batches), tiny dataset; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(f"{'way':12} {'wall s':>7} {'connect+check s':>15} {'to 1st start s':>14} {'per run s (mean, min-max)':>26} "
          f"{'train s (sum)':>13}")
    for name, r in res.items():
        pr = r["per_run"]
        sub = f"{r['submit']:.1f}" if r["submit"] is not None else "-"
        rows.append(f"{name:12} {r['wall']:7.1f} {sub:>15} {r['first_start']:14.1f} "
                    f"{sum(pr) / len(pr):10.1f} ({min(pr):.1f}-{max(pr):.1f}){'':6} {r['train_s']:13.1f}")
    print("\n".join(rows))
    over = (res["ray 2 CPUs"]["wall"] - res["local"]["wall"]) / a.seeds
    print(f"overhead per task (ray 2 CPUs - local) / {a.seeds} runs: {over:.1f} s "
          f"({100 * over / (res['local']['wall'] / a.seeds):.0f} % of a local run of "
          f"{res['local']['wall'] / a.seeds:.1f} s)")
    print(f"stored results of local and ray 2 CPUs identical: {same}")


if __name__ == "__main__":
    main()
