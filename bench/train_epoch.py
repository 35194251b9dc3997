"""Wall time per training epoch of ``core.train.train_run``: the default CRNN vs the code it replaced, same run.

``bench/train_throughput.py`` times the training steps alone; an epoch of ``train_run`` also re-estimates the
batch-norm statistics (the recommended preset: 1024 training snippets), scores the validation snippets, and saves
the model. This benchmark trains the snippet CRNN with the recommended preset for ``--epochs`` epochs, twice, in one
process, alternating nothing but the two implementations:

* ``default``   ``core.models.FastBatchNormalization`` and the compiled recalibration (``recalibrate_batchnorm``
                through a model of the layers up to the last batch norm);
* ``baseline``  ``--arch keras_bn`` (Keras' own ``BatchNormalization``) and the eager recalibration (forward passes
                in training mode, layer by layer): the training code of the reference reproductions (``c84ec4d``).

It prints each epoch's seconds (the first includes tracing), the median of the later epochs, their ratio, and the
validation track accuracy per epoch of both (the same function: they differ by float rounding only).

Usage: ``python bench/train_epoch.py [DATASET] [--epochs 3] [--seed 0]``. Without ``DATASET`` it builds a
generated one (4 classes x 80 tracks of 30 s: 256 training tracks of 14 snippets, 112 batches per epoch, as on
Emotify).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", help="a built snippet dataset (default: a generated one)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import core.train as train
    from core.dataset import SplitConfig, build_dataset, load_dataset
    from core.experiment import preset_config
    from core.features import FeatureParams

    tmp = tempfile.TemporaryDirectory()
    if a.dataset:
        ds = load_dataset(a.dataset)
    else:
        from core.synth import make_dataset_folder

        t0 = time.perf_counter()
        src = make_dataset_folder(Path(tmp.name) / "audio", n_classes=4, per_class=80, seconds=30.0)
        ds = load_dataset(build_dataset(src, Path(tmp.name) / "ds", FeatureParams(), SplitConfig(0.1, 0.1, 0)))
        print(f"generated dataset: 320 tracks of 30 s ({time.perf_counter() - t0:.0f} s to build)", flush=True)
    cfg = replace(preset_config("recommended"), max_epochs=a.epochs)
    counts = ds.card["counts"]["train"]
    print(f"recommended preset, {a.epochs} epochs, {counts['tracks']} training tracks, batch {cfg.batch_size}, "
          f"recalibration on {cfg.bn_recalibrate} snippets", flush=True)

    rows = {}
    eager = train._batch_stats_model
    for name, arch, stats_model in (("baseline (Keras batch norm, eager recalibration)", "keras_bn", None),
                                    ("default (FastBatchNormalization, compiled recalibration)", "standard", eager)):
        train._batch_stats_model = stats_model or (lambda model, bns: None)
        try:
            t0 = time.perf_counter()
            res = train.train_run(ds, "snippet", a.seed, replace(cfg, arch=arch), Path(tmp.name) / arch)
        finally:
            train._batch_stats_model = eager
        secs = [h["seconds"] for h in res.history]
        rows[name] = secs
        accs = ", ".join(f"{h['val_track_accuracy']:.3f}" for h in res.history)
        print(f"{name}: epochs {', '.join(f'{s:.1f}' for s in secs)} s (total {time.perf_counter() - t0:.0f} s); "
              f"val track accuracy {accs}", flush=True)
    base, new = (float(np.median(v[1:] or v)) for v in rows.values())
    print(f"median epoch after the first: baseline {base:.1f} s, default {new:.1f} s: {base / new:.2f}x")
    tmp.cleanup()


if __name__ == "__main__":
    main()
