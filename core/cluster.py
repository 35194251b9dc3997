"""Experiments on a Ray cluster: the same (model kind, seed) runs as the local executor, one Ray task each.

``run_experiment(..., executor="ray")`` hands its runs to :func:`run_on_ray`. Each task trains (or resumes)
one run in its run folder and evaluates it there: ``core.train.train_run`` / ``core.baseline.train_linear``,
then ``core.evaluate.evaluate_run`` on ``core.evaluate.run_predictor(run_dir)``, exactly the calls of the local
loop. The task returns the training history and the evaluation to the driver, which alone writes the SQLite
store (one writer, as with the local executor).

**Shared storage.** Every node must see, at the same absolute paths as the driver: the dataset folder(s)
(``<dataset>`` and ``<dataset>-full*`` for the 30 s model), the source audio the dataset was built from
(track-level evaluation decodes it) and the store folder (run folders: ``state.json``, ``last.keras``,
``best.keras``, ``history.json``). :func:`check_shared_storage` runs a tiny task on every node that can take a
run and stops with a message naming the node and the path when one cannot see them. The code need not be on
the nodes (a Ray started or joined by the driver gets its ``core`` package: Ray ``py_modules``); the packages of
``requirements-cluster.txt`` must be installed on every node.

**Faults.** A task whose worker or node dies is retried by Ray (``max_retries``) and resumes from the last
finished epoch: ``train_run`` resumes from ``state.json``, and since every random choice is a function of
(seed, epoch), the resumed run ends where an uninterrupted one ends. A driver killed and restarted with the
same command finds the runs the store records as ``done`` and submits only the rest (Ray stops the tasks of a
dead driver; their run folders resume).

**Progress.** The driver polls the run folders of the submitted runs every ``poll_s`` seconds (``progress.json``
written by the task when it starts and evaluates, ``history.json`` after every epoch) and emits the local
executor's events: ``running``/``train`` when a task starts (``resuming`` after a retry), one
``running``/``train`` event with the epoch's metrics per finished epoch (and the epoch rows go into the store
as they come, so the dashboard's curves grow as with the local executor), ``running``/``evaluate``, then
``done``/``evaluate`` or ``failed``. Batch events are not relayed: runs go in parallel, there is no single
current batch.

Ray is optional (``pip install -r requirements-cluster.txt``) and imported only here, lazily.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from core.experiment import ExperimentError, plan_run

INSTALL_HINT = "pip install -r requirements-cluster.txt"
#: written by the task into its run folder: where it runs and what it does (the driver relays it as events)
PROGRESS_NAME = "progress.json"
#: created by the driver in a run folder to stop that run's task at its next batch (resumable)
STOP_NAME = "STOP"
DEFAULT_CPUS_PER_TASK = 2
DEFAULT_MAX_RETRIES = 3
#: environment variables passed from the driver to the tasks when set there
PASS_ENV = ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")


class ClusterError(ExperimentError):
    """Ray missing, a cluster that cannot be reached or cannot see the shared folders; message for the user."""


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(f"the Ray executor needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def task_runtime_env(cpus_per_task: int) -> dict[str, Any]:
    """The tasks' runtime environment: TensorFlow's thread pools sized to the task's CPUs (set before the
    worker process imports TensorFlow; Ray does not share a worker between different runtime envs)."""
    n = str(int(cpus_per_task))
    env = {"OMP_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n,
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    return {"env_vars": env}


def job_runtime_env() -> dict[str, Any]:
    """The job's runtime environment: this ``core`` package, shipped to every node (Ray ``py_modules``)."""
    return {"py_modules": [str(Path(__file__).resolve().parent)]}


@contextmanager
def ray_session(address: str | None = None):
    """Ray connected for the duration: an already initialised Ray as it is; else ``address`` (``auto``,
    ``HOST:6379``, ``ray://...``), else ``$RAY_ADDRESS``, else a local Ray started for the run (and shut
    down after it)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    addr = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "runtime_env": job_runtime_env()}
    try:
        if addr:
            ray.init(address=addr, **kwargs)
        else:
            ray.init(address="local", include_dashboard=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError ... all mean "no cluster"
        where = f"the Ray cluster at {addr}" if addr else "a local Ray instance"
        raise ClusterError(f"could not start or reach {where}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------------------
# what runs on the workers
# ---------------------------------------------------------------------------------------------------------
def probe_paths(checks: list[tuple[str, str, str]]) -> dict[str, Any]:
    """On a worker: which of ``checks`` (what, path, "file" | "writable-dir") this node cannot use."""
    problems = []
    for what, path, mode in checks:
        p = Path(path)
        if mode == "file":
            if not p.is_file():
                problems.append(f"{what} ({p}): not found")
        elif not p.is_dir():
            problems.append(f"{what} ({p}): folder not found")
        else:
            probe = p / f".probe-{socket.gethostname()}-{os.getpid()}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                problems.append(f"{what} ({p}): not writable ({exc.strerror or exc})")
    return {"host": socket.gethostname(), "pid": os.getpid(), "problems": problems}


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """On a worker: train (or resume) and evaluate one run in ``spec["run_dir"]``; returns what the driver
    writes to the store. Errors propagate (the driver records them as the run's failure)."""
    import logging

    from core.utils import atomic_write_json, read_json

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing warnings, as in the CLI
    t0 = time.time()
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    stop_path = run_dir / STOP_NAME
    state_path = run_dir / "state.json"
    resumed_from = int(read_json(state_path).get("epoch", 0)) if state_path.exists() else 0
    where = {"host": socket.gethostname(), "pid": os.getpid(), "resumed_from": resumed_from, "started": t0,
             "threads": os.environ.get("TF_NUM_INTRAOP_THREADS")}
    seq = [0]

    def report(phase: str, message: str) -> None:
        seq[0] += 1
        atomic_write_json(run_dir / PROGRESS_NAME, {**where, "seq": seq[0], "phase": phase, "message": message})

    report("train", "")
    from core.baseline import train_linear
    from core.dataset import load_dataset
    from core.evaluate import evaluate_run, run_predictor
    from core.experiment import _model_card
    from core.model_card import write_model_card
    from core.train import TrainConfig, train_run

    kind, seed = spec["kind"], int(spec["seed"])
    config = TrainConfig.from_dict(spec["config"])
    ds = load_dataset(spec["dataset"])
    if not (run_dir / "model_card.json").exists():
        write_model_card(run_dir, _model_card(spec["run_id"], kind, seed, ds, config))
    last_check = [0.0, False]

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last_check[0] > 1.0:
            last_check[0], last_check[1] = now, stop_path.exists()
        return last_check[1]

    if kind == "linear":
        result = train_linear(ds, seed, run_dir, norm_method=config.norm_method)
    else:
        result = train_run(ds, kind, seed, config, run_dir, should_stop=should_stop)
    out = {"status": result.status, "history": result.history, "epochs_run": result.epochs_run,
           "best_epoch": result.best_epoch, "monitor": result.monitor, "best_value": result.best_value,
           **where}
    if result.status == "stopped":
        return out
    best = (f"best epoch {result.best_epoch} of {result.epochs_run}"
            + (f", {result.monitor} {result.best_value:.3f}" if result.best_value is not None
               and kind != "linear" else ""))
    report("evaluate", f"evaluating ({best})")

    def on_track(done, total, path):
        if done == total or done % 20 == 0:
            report("evaluate", f"track-level evaluation {done}/{total} tracks")

    out["results"] = evaluate_run(run_predictor(run_dir), ds, kind, tuple(spec["splits"]), float(spec["hop_s"]),
                                  progress=on_track)
    out["seconds"] = round(time.time() - t0, 3)
    return out


# ---------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------
def _task_nodes(ray, cpus_per_task: int) -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= cpus_per_task]


def check_shared_storage(ray, checks: list[tuple[str, str, str]], cpus_per_task: int,
                         runtime_env: dict | None = None, timeout_s: float = 300.0) -> list[dict]:
    """Run :func:`probe_paths` on every node that can take a task; raise :class:`ClusterError` naming the node
    and the path when one cannot see them. Returns the probe answers."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _task_nodes(ray, cpus_per_task)
    if not nodes:
        total = ray.cluster_resources().get("CPU", 0)
        raise ClusterError(f"no node of the Ray cluster has {cpus_per_task} CPUs for a task (the cluster has "
                           f"{total:g} CPUs in all): lower --ray-cpus-per-task or add nodes")
    probe = ray.remote(probe_paths)
    refs = {probe.options(num_cpus=0, max_retries=0, runtime_env=runtime_env,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(checks):
            n for n in nodes}
    ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if waiting:
        late = ", ".join(refs[r].get("NodeManagerAddress", "?") for r in waiting)
        raise ClusterError(f"the storage check on node(s) {late} did not answer in {timeout_s:g} s")
    answers, bad = [], []
    for r in ready:
        node = refs[r].get("NodeManagerAddress", "?")
        try:
            a = ray.get(r)
        except Exception as exc:  # noqa: BLE001 - a node that cannot run the probe cannot run a run
            raise ClusterError(f"node {node} could not run the storage check: {type(exc).__name__}: "
                               f"{str(exc)[:300]}") from exc
        answers.append({**a, "node": node})
        bad += [f"node {node} ({a['host']}): {p}" for p in a["problems"]]
    if bad:
        raise ClusterError("every node of the cluster must see the dataset, the source audio and the store at the "
                           "same paths as the driver (shared storage); " + "; ".join(bad))
    return answers


def storage_checks(datasets: dict, store) -> list[tuple[str, str, str]]:
    """What each node must see: every dataset's card, one source file of each split that track-level
    evaluation decodes, and the store's run folder (writable)."""
    checks: list[tuple[str, str, str]] = []
    seen = set()
    for kind, ds in datasets.items():
        path = Path(ds.path).resolve()
        if path in seen:
            continue
        seen.add(path)
        checks.append(("the dataset", str(path / "card.json"), "file"))
        if ds.params.mode != "full":
            tracks = ds.tracks("val")
            if len(tracks):
                checks.append(("the source audio", str(Path(tracks.iloc[0]["abs_path"]).resolve()), "file"))
    checks.append(("the store", str((Path(store.path) / "runs").resolve()), "writable-dir"))
    return checks


def _error_message(exc: BaseException, max_retries: int) -> str:
    """A task's failure in words: the run's own error, or the worker / node that died."""
    from ray import exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None and not isinstance(cause, rex.RayError):
            from core.dataset import DatasetError
            from core.predictor import PredictorError
            from core.train import TrainError

            if isinstance(cause, (TrainError, PredictorError, DatasetError, ExperimentError)):
                return str(cause)
            return f"{type(cause).__name__}: {cause}"[:500]
    if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError)) or "died" in str(exc).lower():
        return (f"the worker running it died {max_retries + 1} times (Ray retries a task {max_retries} times): "
                f"{type(exc).__name__}: {str(exc)[:300]}")
    return f"{type(exc).__name__}: {str(exc)[:400]}"


class _Watch:
    """Driver-side view of one submitted run: relays its run folder's files as events and epoch rows."""

    def __init__(self, job: dict, store, emit, max_epochs: int):
        self.job, self.store, self.emit, self.max_epochs = job, store, emit, max_epochs
        self.run_dir: Path = job["run_dir"]
        self.seq = self.attempt = 0
        self.started_at = None
        self.epochs = 0
        self.mtimes: dict[str, int] = {}
        hist = self._read("history.json", force=True) or []
        if hist:  # epochs of a previous driver: in the store (idempotent), no events
            store.add_epochs(job["run_id"], hist)
            self.epochs = max(int(r["epoch"]) for r in hist)

    def _read(self, name: str, force: bool = False):
        from core.utils import read_json

        p = self.run_dir / name
        try:
            m = p.stat().st_mtime_ns
        except OSError:
            return None
        if not force and self.mtimes.get(name) == m:
            return None
        self.mtimes[name] = m
        try:
            return read_json(p)
        except (OSError, ValueError):  # replaced while reading: next poll
            self.mtimes.pop(name, None)
            return None

    def base(self) -> dict:
        return dict(self.job["base"])

    def epochs_from(self, records: list[dict]) -> None:
        new = sorted((r for r in records if int(r["epoch"]) > self.epochs), key=lambda r: r["epoch"])
        if not new:
            return
        self.store.add_epochs(self.job["run_id"], new)
        for r in new:
            self.emit({**self.base(), "state": "running", "phase": "train", "epoch": r["epoch"],
                       "max_epochs": self.max_epochs if self.job["kind"] != "linear" else 1,
                       "metrics": {k: r[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                                     "val_track_accuracy", "lr", "seconds") if k in r},
                       "message": f"epoch {r['epoch']} done"})
        self.epochs = max(int(r["epoch"]) for r in new)

    def poll(self) -> None:
        prog = self._read(PROGRESS_NAME)
        if prog and prog.get("started") != self.started_at:  # a (new) attempt started
            self.started_at, self.seq = prog.get("started"), 0
            self.attempt += 1
            if self.attempt == 1:
                self.store.set_status(self.job["run_id"], "running")
            e = prog.get("resumed_from", 0)
            kind, seed = self.job["kind"], self.job["seed"]
            what = f"resuming {kind} model, seed {seed} from epoch {e}" if e else f"starting {kind} model, seed {seed}"
            again = f" (attempt {self.attempt})" if self.attempt > 1 else ""
            self.emit({**self.base(), "state": "running", "phase": "train", "node": prog.get("host"),
                       "message": f"{what} on {prog.get('host')}{again}"})
        hist = self._read("history.json")
        if hist:
            self.epochs_from(hist)
        if prog and prog.get("seq", 0) > self.seq:
            self.seq = prog["seq"]
            if prog.get("phase") == "evaluate":
                self.emit({**self.base(), "state": "running", "phase": "evaluate", "message": prog["message"]})


def run_on_ray(store, datasets: dict, seeds: list[int], models: list[str], config, *,
               emit: Callable[[dict], None], should_stop: Callable[[], bool] | None = None, hop_s: float = 1.0,
               splits=("val", "test"), address: str | None = None, cpus_per_task: int = DEFAULT_CPUS_PER_TASK,
               max_retries: int = DEFAULT_MAX_RETRIES, poll_s: float = 0.5,
               folds: list | tuple = (None,)) -> tuple[list[dict], bool]:
    """Every (seed, kind, fold) run not yet ``done`` in ``store`` as one Ray task; returns ``(runs, stopped)``
    like the local loop of ``run_experiment``. ``datasets``: ``{(kind, fold): dataset}`` (``fold`` None without
    cross-validation; a fold of ``core.folds`` is an ordinary dataset folder, so the task is the same).
    Failed runs are recorded and the others carry on; then :class:`ExperimentError` names the failures."""

    if cpus_per_task < 1:
        raise ClusterError("--ray-cpus-per-task must be >= 1")
    runs: dict[tuple[int, str, Any], dict] = {}
    todo = []
    for seed in seeds:
        for kind in models:
            for fold in folds:
                ds = datasets[(kind, fold)]
                run_id, base, done = plan_run(store, ds, kind, seed, config, emit)
                if done:
                    runs[(seed, kind, fold)] = done
                    continue
                todo.append({"seed": seed, "kind": kind, "fold": fold, "run_id": run_id, "ds": ds, "base": base,
                             "run_dir": store.run_dir(run_id).resolve()})
    order = [(s, k, f) for s in seeds for k in models for f in folds]
    if not todo:
        return [runs[key] for key in order], False
    stopped = False
    failures: list[str] = []
    env = task_runtime_env(cpus_per_task)
    with ray_session(address) as ray:
        check_shared_storage(ray, storage_checks(datasets, store), cpus_per_task, env)
        remote = ray.remote(run_task).options(num_cpus=cpus_per_task, max_retries=max_retries,
                                              retry_exceptions=False, runtime_env=env)
        pending: dict[Any, tuple[dict, _Watch]] = {}
        for job in todo:
            rd: Path = job["run_dir"]
            rd.mkdir(parents=True, exist_ok=True)
            for stale in (STOP_NAME, PROGRESS_NAME):
                (rd / stale).unlink(missing_ok=True)
            ds = job["ds"]
            store.upsert_run(job["run_id"], str(ds.path), ds.card.get("build_id"), job["kind"], job["seed"],
                             config.to_dict(), "queued", fold=job["fold"], n_folds=job["base"].get("n_folds"))
            spec = {"run_id": job["run_id"], "kind": job["kind"], "seed": job["seed"],
                    "dataset": str(Path(ds.path).resolve()), "run_dir": str(rd), "config": config.to_dict(),
                    "hop_s": hop_s, "splits": list(splits)}
            pending[remote.remote(spec)] = (job, _Watch(job, store, emit, config.max_epochs))
        emit({"state": "running", "phase": "submit", "n_runs": len(todo),
              "message": f"submitted {len(todo)} run(s) to Ray ({cpus_per_task} CPUs each); "
                         f"{len(order) - len(todo)} already done"})
        try:
            while pending:
                if not stopped and should_stop and should_stop():
                    stopped = True
                    for ref, (job, w) in pending.items():
                        if w.attempt:  # running: stops at its next batch, resumable
                            (job["run_dir"] / STOP_NAME).touch()
                        else:
                            ray.cancel(ref)
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s)
                for w in (w for _, w in pending.values()):
                    w.poll()
                for ref in ready:
                    job, w = pending.pop(ref)
                    w.poll()
                    base = w.base()
                    key = (job["seed"], job["kind"], job["fold"])
                    try:
                        res = ray.get(ref)
                    except ray.exceptions.TaskCancelledError:
                        store.set_status(job["run_id"], "stopped", "stopped before it started")
                        runs[key] = {**base, "status": "stopped"}
                        continue
                    except Exception as exc:  # noqa: BLE001 - the run's failure, recorded; the others go on
                        msg = _error_message(exc, max_retries)
                        store.set_status(job["run_id"], "failed", msg)
                        emit({**base, "state": "failed", "message": msg})
                        runs[key] = {**base, "status": "failed", "message": msg}
                        where = f" fold {job['fold']}" if job["fold"] is not None else ""
                        failures.append(f"{job['kind']} seed {job['seed']}{where}: {msg}")
                        continue
                    w.epochs_from(res["history"])
                    store.add_epochs(job["run_id"], res["history"])
                    if res["status"] == "stopped":
                        store.set_status(job["run_id"], "stopped", f"stopped after epoch {res['epochs_run']}")
                        emit({**base, "state": "stopped", "phase": "train", "epoch": res["epochs_run"],
                              "message": "stopped on request; run again to resume"})
                        runs[key] = {**base, "status": "stopped"}
                        continue
                    results = res["results"]
                    store.write_evaluation(job["run_id"], results, "done")
                    summary = {f"{lvl}/{sp}": round(r["metrics"]["accuracy"], 4) for (lvl, sp), r in results.items()}
                    emit({**base, "state": "done", "phase": "evaluate", "metrics": summary, "node": res["host"],
                          "message": f"{job['kind']} seed {job['seed']}"
                                     + (f", fold {base['fold'] + 1} of {base['n_folds']}" if base.get("n_folds") else "")
                                     + " done"})
                    runs[key] = {**base, "status": "done", "metrics": summary, "node": res["host"],
                                 "resumed_from": res["resumed_from"], "attempts": w.attempt,
                                 "task_seconds": res.get("seconds")}
        except BaseException:  # KeyboardInterrupt, a lost cluster ...: stop the tasks; their runs resume
            for ref, (job, _) in pending.items():
                ray.cancel(ref, force=True)
                store.set_status(job["run_id"], "stopped", "interrupted; run again to resume")
            raise
        finally:
            for job in todo:
                (job["run_dir"] / STOP_NAME).unlink(missing_ok=True)
    if failures:
        raise ExperimentError(f"{len(failures)} of {len(todo)} run(s) failed on Ray: " + "; ".join(failures))
    return [runs[key] for key in order if key in runs], stopped
