"""The experiment page's default experiment on small real-music folders, timed: ``results/small-folder/``.

    python bench/small_folder.py SRC --draws 1-5 --per-class 10 --work /tmp/small-folder [--out results/small-folder]

For each draw ``d``: ``--per-class`` tracks of every class folder of ``SRC`` (e.g. ``download-emotify``'s
``emotify/``), drawn at random with seed ``1000 + d``, linked into ``WORK/draw<d>/<class>/``; a dataset built with
the data page's defaults (``python -m core build-dataset``, timed on its own); then exactly the job the experiment
page starts for that dataset with its defaults (``core.experiment.default_experiment``: the same arguments as
``app_pages/experiment.py``), in a fresh store, from a dataset without cached embeddings or folds, timed from start
to finish with the load average before, during (every 30 s) and after; its progress events (``--events``, as the
page's job writes them) give the time-left estimate the page showed at a quarter, half and three quarters of the
run, against the time that was really left. Writes, after every draw, ``OUT/runs.csv`` (one row per draw, model
and seed: test accuracy of the pooled folds, epochs and best epochs fold by fold), ``OUT/draws.json`` (per draw:
the command, the page's defaults it came from, the commit, the tracks, the loads, the estimates) and
``OUT/table.md`` (one row per draw). A draw whose ``OUT`` row exists is skipped (``--again`` reruns it).

The machine is shared: the wall times hold only with the load average beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def draw_folder(src: Path, work: Path, d: int, per_class: int) -> Path:
    import numpy as np

    from core.audio import AUDIO_EXTENSIONS

    out = work / f"draw{d}"
    rng = np.random.default_rng(1000 + d)
    for cls in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted((f for f in cls.iterdir() if f.suffix.lower() in AUDIO_EXTENSIONS),
                       key=lambda f: (len(f.stem), f.stem))
        if not files:
            continue
        (out / cls.name).mkdir(parents=True, exist_ok=True)
        for i in sorted(rng.choice(len(files), min(per_class, len(files)), replace=False)):
            link = out / cls.name / files[i].name
            if not link.exists():
                os.symlink(files[i].resolve(), link)
    return out


def core_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "core", *args]


def page_args(ds: Path, store: Path) -> tuple[list[str], dict]:
    """The arguments the experiment page starts with for this dataset and its default settings, and those
    defaults (``core.experiment.default_experiment``)."""
    from core.dataset import load_dataset
    from core.experiment import DEFAULT_PRESET, default_experiment

    d = default_experiment(load_dataset(ds))
    args = ["run-experiment", str(ds), "--store", str(store), "--seeds", str(d["seeds"]), "--models",
            ",".join(d["models"]), "--preset", d.get("preset", DEFAULT_PRESET), "--cv", d["cv"]]
    return args + (["--epochs", str(d["epochs"])] if d["epochs"] else []), d


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def run_timed(cmd: list[str], log: Path) -> tuple[float, int, list[float], float]:
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(30):
            loads.append(float(loadavg()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    started = time.time()
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")).returncode
    wall = time.perf_counter() - t0
    done.set()
    return wall, rc, loads, started


def eta_checks(events_path: Path, started: float, wall: float) -> list[dict]:
    """The page's time-left estimate (``core.experiment.experiment_progress`` on the events so far, as the page
    computes it) at a quarter, half and three quarters of the run, beside the time that was really left."""
    from core.experiment import experiment_progress
    from core.jobs import read_events

    events, _ = read_events(events_path)
    out = []
    for frac in (0.25, 0.5, 0.75):
        now = started + frac * wall
        prog = experiment_progress([e for e in events if float(e.get("ts") or 0) <= now], 0, now=now)
        out.append({"at_s": round(frac * wall, 1), "elapsed_s": round(prog["elapsed_s"], 1),
                    "eta_s": None if prog["eta_s"] is None else round(prog["eta_s"], 1),
                    "at_least": bool(prog["eta_partial"]), "left_s": round((1 - frac) * wall, 1)})
    return out


def draw_rows(store: Path, d: int) -> list[dict]:
    from core.store import Store, results_frame

    s = Store(store, create=False)
    runs = s.runs()
    df = results_frame(s)
    rows = []
    for (kind, seed), sub in df.groupby(["kind", "seed"]):
        level = "full" if kind == "full" else "track_sum"
        r = sub[(sub["level"] == level) & (sub["split"] == "test")].iloc[0]
        folds = sorted((x for x in runs if x["kind"] == kind and x["seed"] == seed and x["fold"] is not None),
                       key=lambda x: x["fold"])
        rows.append({"draw": d, "kind": kind, "seed": int(seed), "test_track": round(float(r["accuracy"]), 4),
                     "n_tracks": int(r["n"]), "n_folds": int(r["n_folds"] or 0),
                     "best_epochs": " ".join(str(x["best_epoch"]) for x in folds if kind != "linear"),
                     "epochs": " ".join(str(x["epochs"]) for x in folds if kind != "linear")})
    return rows


def write_tables(out: Path, draws: list[dict], rows: list[dict], commit: str) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    (out / "draws.json").write_text(json.dumps(draws, indent=1) + "\n")
    names = {"snippet": "snippet CRNN", "linear": "linear", "musicnn": "musicnn + head", "full": "30 s CRNN"}
    kinds = [k for k in ("snippet", "full", "musicnn", "linear") if any(r["kind"] == k for r in rows)]
    lines = ["| draw | wall time | load avg before / during (max) / after | build | "
             + " | ".join(f"{names[k]} test % per seed" for k in kinds)
             + " | CRNN best epochs, fold by fold, per seed | time left shown at 1/4, 1/2, 3/4 (really left) "
               "| ≤ 8 min, every CRNN seed > chance |", "|" + " --- |" * (len(kinds) + 7)]

    def mmss(x: float | None) -> str:
        return "–" if x is None else f"{int(x) // 60}:{int(x) % 60:02d}"

    for dr in draws:
        mine = sorted((r for r in rows if r["draw"] == dr["draw"]), key=lambda r: r["seed"])

        def acc(kind: str) -> str:
            return ", ".join(f"{100 * r['test_track']:.1f}" for r in mine if r["kind"] == kind) or "–"

        best = "; ".join(str(r["best_epochs"]) for r in mine if r["kind"] in ("snippet", "full"))
        during = f"{sum(dr['load_during']) / len(dr['load_during']):.1f} ({max(dr['load_during']):.1f})" \
            if dr["load_during"] else "–"
        etas = ", ".join(f"{'≥ ' if e['at_least'] else ''}{mmss(e['eta_s'])} ({mmss(e['left_s'])})"
                         for e in dr.get("eta_checks") or []) or "–"
        chance = 1.0 / max(1, int(dr.get("n_classes") or 4))
        ok = dr["wall_s"] <= 480 and all(r["test_track"] > chance for r in mine if r["kind"] in ("snippet", "full"))
        lines.append(f"| {dr['draw']} | {dr['wall_s'] / 60:.1f} min ({dr['wall_s']:.0f} s) | {dr['load_before']} / "
                     f"{during} / {dr['load_after']} | {dr['build_s']:.0f} s | "
                     + " | ".join(acc(k) for k in kinds) + f" | {best} | {etas} | {'yes' if ok else 'NO'} |")
    commits = sorted({dr["commit"] for dr in draws})
    (out / "table.md").write_text("\n".join(lines) + f"\n\nCommit{'s' if len(commits) > 1 else ''}: "
                                  + ", ".join(f"`{c}`" for c in commits) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="class-folder tree of real music (e.g. emotify/)")
    ap.add_argument("--draws", default="1-5", help="draw numbers: 1-5 or 1,3 (%(default)s)")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/small-folder"), help="draw folders, datasets, stores")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "small-folder")
    ap.add_argument("--again", action="store_true", help="rerun draws already in OUT")
    a = ap.parse_args()
    from core.experiment import parse_seeds

    text = a.draws.strip()
    draws_wanted = ([int(text)] if text.isdigit() else parse_seeds(text) if "-" not in text
                    else list(range(int(text.split("-")[0]), int(text.split("-")[1]) + 1)))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "core", "app_pages", "ui"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    commit += "-dirty" if dirty else ""
    old_draws = json.loads((a.out / "draws.json").read_text()) if (a.out / "draws.json").exists() else []
    old_rows = __import__("pandas").read_csv(a.out / "runs.csv").to_dict("records") if (a.out / "runs.csv").exists() \
        else []
    draws = [x for x in old_draws if a.again is False or x["draw"] not in draws_wanted]
    rows = [x for x in old_rows if any(x["draw"] == dr["draw"] for dr in draws)]
    for d in draws_wanted:
        if any(x["draw"] == d for x in draws):
            print(f"draw {d}: in {a.out} already (--again reruns it)")
            continue
        src = draw_folder(a.src, a.work, d, a.per_class)
        ds, store = a.work / f"ds{d}", a.work / f"store{d}"
        shutil.rmtree(ds, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
        build_s, rc, _, _ = run_timed(core_cmd("build-dataset", str(src), str(ds)), a.work / f"build{d}.log")
        if rc:
            print(f"draw {d}: build failed, see {a.work / f'build{d}.log'}")
            return 1
        args, defaults = page_args(ds, store)
        events = a.work / f"events{d}.jsonl"
        events.unlink(missing_ok=True)
        before = loadavg()
        wall, rc, loads, started = run_timed(core_cmd(*args, "--events", str(events)), a.work / f"experiment{d}.log")
        after = loadavg()
        if rc:
            print(f"draw {d}: experiment failed, see {a.work / f'experiment{d}.log'}")
            return 1
        from core.dataset import load_dataset

        draws.append({"draw": d, "wall_s": round(wall, 1), "build_s": round(build_s, 1), "load_before": before,
                      "load_during": loads, "load_after": after, "command": "python -m core " + " ".join(args),
                      "page_defaults": defaults, "n_classes": len(load_dataset(ds).classes),
                      "eta_checks": eta_checks(events, started, wall), "commit": commit,
                      "tracks": sorted(str(p.relative_to(src)) for p in src.rglob("*.*"))})
        rows += draw_rows(store, d)
        draws.sort(key=lambda x: x["draw"])
        rows.sort(key=lambda r: (r["draw"], r["kind"], r["seed"]))
        write_tables(a.out, draws, rows, commit)
        print(f"draw {d}: {wall:.0f} s (load {before} -> {after})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
