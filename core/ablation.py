"""Ablation of the training recipe: which option helps, measured over seeds on the same budget.

``python -m core ablation DATASET OUT --seeds 3 --epochs 8`` trains every variant of :data:`VARIANTS` for each
seed (seed-major order, so a partial run is balanced across variants) with the same epoch budget, and scores
each run's best model (by its own monitor) on the dataset's validation and test snippets:

* ``segment``  accuracy of single snippets;
* ``track``    accuracy of the summed snippet scores of each track (the dataset's snippets, 2 s apart: the
  track-level rule without decoding the audio again, so an ablation costs training time only).

The 30 s variants train on the full-clip twin of the dataset (built on first use, 60 s stored per track) and
are scored on the first 30 s of each validation and test track. Every run resumes per epoch, finished runs are
skipped, and ``OUT/ablation.md`` / ``ablation.csv`` / ``ablation.json`` are rewritten after each run with the
command and the commit.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.utils import atomic_write_bytes, atomic_write_json, read_json

_BASE = {"lr": 1e-3, "patience": 100, "lr_patience": 3, "snippets_per_track": 14, "snippet_selection": "first"}
_REC = {**_BASE, "monitor": "val_track_accuracy", "schedule": "cosine", "snippet_selection": "random"}
#: name -> (model kind, TrainConfig overrides, description); early stopping is off (patience 100) so every
#: variant gets the same number of epochs and only the best-epoch choice differs
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "A_base": ("snippet", dict(_BASE), "Adam 1e-3, reduce-LR-on-plateau, best epoch by val loss, first 14 snippets"),
    "B_monitor": ("snippet", {**_BASE, "monitor": "val_track_accuracy"}, "A + best epoch by val track accuracy"),
    "C_cosine": ("snippet", {**_BASE, "monitor": "val_track_accuracy", "schedule": "cosine"},
                 "B + warm-up + cosine learning rate"),
    "D_random": ("snippet", dict(_REC), "C + 14 random snippets per track, re-drawn every epoch"),
    "E_smooth": ("snippet", {**_REC, "label_smoothing": 0.1}, "D + label smoothing 0.1"),
    "F_specaug": ("snippet", {**_REC, "time_masks": 2, "freq_masks": 2}, "D + SpecAugment (2 time, 2 freq masks)"),
    "G_mixup": ("snippet", {**_REC, "mixup": 0.2}, "D + mixup 0.2"),
    "I_lean": ("snippet", {**_REC, "arch": "lean"}, "D + lean CRNN (max-pool first, no BN on block 1)"),
    "J_recal": ("snippet", {**_REC, "bn_recalibrate": 1024, "arch": "keras_bn"},
                "D + batch-norm statistics re-estimated each epoch"),
    "K_recal_lean": ("snippet", {**_REC, "bn_recalibrate": 1024, "arch": "lean"}, "J + lean CRNN"),
    "L_fast_bn": ("snippet", {**_REC, "bn_recalibrate": 1024},
                  "J with the written-out batch norm (FastBatchNormalization; every other row: Keras' layer)"),
    "H_all": ("snippet", {**_REC, "snippets_per_track": 0}, "C + every snippet of each track every epoch"),
    "full_first": ("full", {"lr": 1e-3, "patience": 100, "lr_patience": 3, "batch_size": 16},
                   "30 s model: first 30 s, plateau, best epoch by val loss"),
    "full_random_lean": ("full", {"lr": 1e-3, "patience": 100, "batch_size": 16, "monitor": "val_track_accuracy",
                                  "schedule": "cosine", "full_crop": "random", "arch": "lean"},
                         "30 s model: random crops, cosine, best epoch by val accuracy, lean CRNN"),
    "full_random_recal": ("full", {"lr": 1e-3, "patience": 100, "batch_size": 16, "monitor": "val_track_accuracy",
                                   "schedule": "cosine", "full_crop": "random", "bn_recalibrate": 256},
                          "30 s model: random crops, cosine, best by val accuracy, batch-norm re-estimated"),
    "full_random": ("full", {"lr": 1e-3, "patience": 100, "batch_size": 16, "monitor": "val_track_accuracy",
                             "schedule": "cosine", "full_crop": "random"},
                    "30 s model: random 30 s crop per epoch, cosine, best epoch by val accuracy"),
}


def _score(model, dataset, split: str, norm_method: str) -> dict[str, float]:
    from core.features import apply_norm

    T = dataset.params.input_frames
    X, y, tr = dataset.X(split), np.asarray(dataset.y(split)), np.asarray(dataset.track(split))
    scores = np.concatenate([model.predict_on_batch(apply_norm(np.asarray(X[a:a + 256, :T]), dataset.norm,
                                                               norm_method)[..., None])
                             for a in range(0, len(y), 256)])
    from core.train import validation_metrics

    m = validation_metrics(np.asarray(scores), y, tr)
    return {"segment": m["val_accuracy"], "track": m["val_track_accuracy"]}


def run_ablation(dataset_path, out, seeds=(0, 1, 2), epochs: int = 8, variants=None, command: str | None = None,
                 progress: Callable[[str], None] = print, report_only: bool = False) -> list[dict]:
    """Train the variants' runs that are not finished (none with ``report_only``) and write the tables."""
    from core.dataset import load_dataset
    from core.experiment import FULL_STORE_S, ensure_full_dataset
    from core.reproduce import git_commit
    from core.models import load_model
    from core.train import TrainConfig, train_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(dataset_path)
    names = list(variants or VARIANTS)
    full = None
    rows: list[dict] = []
    for seed in seeds:
        for name in names:
            kind, over, _ = VARIANTS[name]
            run_dir = out / "runs" / name / f"s{seed}"
            done = run_dir / "result.json"
            if done.exists():
                rows.append(read_json(done))
                continue
            if report_only:
                continue
            data = ds
            if kind == "full":
                full = full or ensure_full_dataset(ds, None, None, FULL_STORE_S)
                data = full
            cfg = TrainConfig(**{**over, "max_epochs": epochs})
            t0 = time.time()
            res = train_run(data, kind, seed, cfg, run_dir,
                            on_epoch=lambda r: progress(f"{name} seed {r['seed']} epoch {r['epoch']}: "
                                                        f"val acc {r['val_accuracy']:.3f} track "
                                                        f"{r['val_track_accuracy']:.3f} ({r['seconds']:.0f} s)"))
            model = load_model(run_dir / "best.keras", compile=False)
            row = {"variant": name, "seed": seed, "kind": kind, "epochs": res.epochs_run,
                   "best_epoch": res.best_epoch, "monitor": cfg.monitor, "best_value": res.best_value,
                   "train_seconds": round(sum(h["seconds"] for h in res.history), 1),
                   "wall_seconds": round(time.time() - t0, 1)}
            for split in ("val", "test"):
                for level, v in _score(model, data, split, cfg.norm_method).items():
                    row[f"{split}_{level}"] = v
            atomic_write_json(done, row)
            rows.append(row)
            progress(f"{name} seed {seed}: test segment {row['test_segment']:.3f} track {row['test_track']:.3f} "
                     f"(best epoch {row['best_epoch']})")
            write_tables(out, rows, names, epochs, command, git_commit(), ds)
    write_tables(out, rows, names, epochs, command, git_commit(), ds)
    return rows


def write_tables(out: Path, rows: list[dict], names: list[str], epochs: int, command: str | None,
                 commit: str | None, ds) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    atomic_write_bytes(out / "ablation.csv", df.to_csv(index=False).encode("utf-8"))
    lines = [f"# Recipe ablation on `{Path(ds.path).name}` ({len(ds.classes)} classes; "
             f"{ds.card['counts']['train']['tracks']} / {ds.card['counts']['val']['tracks']} / "
             f"{ds.card['counts']['test']['tracks']} tracks), {epochs} epochs per run, no early stopping",
             "", "Accuracy %, mean ± SD over seeds; track = summed scores of the dataset's snippets of each track. "
             "The best epoch is chosen by each variant's own monitor on the validation tracks.", "",
             "| variant | what | seeds | val segment | val track | test segment | test track | best epoch | s / run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def ms(v) -> str:
        v = [x for x in v if x is not None and not math.isnan(x)]
        if not v:
            return "–"
        return f"{100 * np.mean(v):.1f} ± {100 * (np.std(v, ddof=1) if len(v) > 1 else 0):.1f}"

    for name in names:
        sub = df[df["variant"] == name] if len(df) else df
        if not len(sub):
            lines.append(f"| {name} | {VARIANTS[name][2]} | 0 | – | – | – | – | – | – |")
            continue
        lines.append(f"| {name} | {VARIANTS[name][2]} | {len(sub)} | {ms(sub['val_segment'])} | "
                     f"{ms(sub['val_track'])} | {ms(sub['test_segment'])} | {ms(sub['test_track'])} | "
                     f"{', '.join(str(int(b)) for b in sub['best_epoch'])} | {sub['train_seconds'].mean():.0f} |")
    lines += ["", f"Command: `{command}`" if command else "", f"Commit: `{commit}`", ""]
    atomic_write_bytes(out / "ablation.md", "\n".join(lines).encode("utf-8"))
    atomic_write_json(out / "ablation.json", {"command": command, "commit": commit, "epochs": epochs,
                                              "variants": {k: {"kind": v[0], "config": v[1], "what": v[2]}
                                                           for k, v in VARIANTS.items() if k in names},
                                              "runs": rows})


def register_cli(sub) -> None:
    p = sub.add_parser("ablation", help="measure the training recipe's options over seeds on one budget",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("dataset", help="snippet dataset built with every snippet (build-dataset --max-snippets 0)")
    p.add_argument("out", help="output folder (runs, ablation.md, ablation.csv, ablation.json)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (%(default)s)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per run (%(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of variants (default: all)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the tables from the runs that have finished")
    p.set_defaults(func=_cli)


def _cli(a) -> int:
    from core.experiment import _quiet_backend_logs

    _quiet_backend_logs()
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        print(f"error: unknown variants {', '.join(bad)} (use {', '.join(VARIANTS)})", file=sys.stderr)
        return 2
    command = "python -m core " + " ".join(x for x in sys.argv[1:] if x != "--report-only")
    run_ablation(a.dataset, a.out, list(range(a.seeds)), a.epochs, names, command, report_only=a.report_only)
    return 0
