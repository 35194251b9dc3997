"""Training throughput: Genre Lab's default training path vs a plain ``model.fit`` on in-memory arrays.

Both use the same snippet CRNN (16/32/64/128 filters, 130 x 100 inputs, batch 32, Adam) in the same process:

* ``plain``    ``model.fit(X, Y, batch_size=32)`` on normalised float32 numpy arrays held in memory;
* ``default``  what ``core.train.train_run`` runs each epoch: ``model.fit(SnippetSequence)`` reading the
               dataset's ``.npy`` memmap, normalising each batch on the fly, shuffled per epoch, with the
               stop-request callback, using the default ``TrainConfig`` (float32, no XLA).

After one warm-up epoch each (tracing), timed epochs alternate between the variants (plain, default, plain, ...) so
that load from other processes on a shared machine hits both alike; medians are reported, with the process CPU time
per sample (robust to such load). Each epoch is timed from the end of its first batch to the end of its last (the
steady training steps); what each fit() call spends outside them (start-up and the data iterator's tear-down,
0.15-0.35 s and now and then up to ~1 s: what made short epochs look "bimodal" in earlier runs) is printed apart. A
third line, always, is the plain fit of the same CRNN built with Keras' own ``BatchNormalization`` layers
(``--arch keras_bn``) instead of ``core.models.FastBatchNormalization`` (the same function with a written-out training step):
the ratio printed for it is what that layer saves. ``--extra`` adds bf16 mixed precision, XLA and 2 loader threads
for the default path; ``--wide`` adds a plain fit of a wide-filter variant (64/128/128/128).

Every line also gives the achieved GFLOP/s (samples/s x 3 x the forward FLOPs of one snippet: forward + backward)
and its fraction of the fp32 matmul peak measured at the start of the same run. ``--arch`` adds the architecture
variants (no batch norm on the widest map, ReLU, an unrolled GRU loop). ``--profile`` adds a profile by removal:
the same plain fit with one kind of layer taken out at a time (every batch norm, the ELUs, the dropouts, the GRUs:
replaced by a mean over time) and with all of them out (convolutions + pooling + the softmax layer only); the
difference to the full model is what that kind of layer costs per step, and the convolution-only line is the
ceiling that the fraction of peak can reach with this architecture on this machine.

Usage: ``python bench/train_throughput.py [--samples 640] [--repeats 3] [--extra] [--wide] [--arch] [--profile]``
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=640, help="training snippets per timed epoch")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per variant")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--extra", action="store_true", help="also bf16, XLA and 2-thread loader variants")
    ap.add_argument("--wide", action="store_true", help="also the wide-filter (64/128/128/128) plain fit")
    ap.add_argument("--arch", action="store_true",
                    help="also plain fits of the architecture variants (no BN on block 1, ReLU, unrolled GRU)")
    ap.add_argument("--profile", action="store_true",
                    help="also a profile by removal: plain fits without the batch norms, the ELUs, the dropouts, "
                         "the GRUs, and without all of them (convolutions only)")
    a = ap.parse_args()

    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import keras

    from core.features import apply_norm
    from core.features import FeatureParams
    from core.models import build_snippet_crnn, count_flops
    from core.train import SnippetSequence, TrainConfig, _StopCheck, build_compiled, compile_model

    p = FeatureParams()
    n, bs, n_classes = a.samples, a.batch, 10
    rng = np.random.default_rng(0)
    tmp = tempfile.TemporaryDirectory()
    xpath = Path(tmp.name) / "train_X.npy"
    np.save(xpath, (rng.standard_normal((n, p.snippet_frames, p.n_mels)) * 20 - 40).astype(np.float32))
    X_mm = np.load(xpath, mmap_mode="r")
    y = rng.integers(0, n_classes, n)
    norm = {"min": float(X_mm.min()), "max": float(X_mm.max()),
            "mean": X_mm.mean(axis=(0, 1)).tolist(), "std": X_mm.std(axis=(0, 1)).tolist()}
    X_mem = apply_norm(np.asarray(X_mm), norm, "minmax")[..., None]
    Y_mem = np.eye(n_classes, dtype=np.float32)[y]

    variants = {}
    clock = batch_clock()

    def plain(model):
        return lambda: model.fit(X_mem, Y_mem, batch_size=bs, epochs=1, shuffle=True, verbose=0, callbacks=[clock])

    def default_path(cfg):
        model = build_compiled("snippet", n_classes, p, cfg)
        seq = SnippetSequence(X_mm, y, n_classes, norm, cfg, batch_size=bs)
        state = {"epoch": 0}

        def run():
            seq.set_epoch(state["epoch"])
            state["epoch"] += 1
            model.fit(seq, epochs=1, verbose=0, shuffle=False,
                      callbacks=[_StopCheck(lambda: False, None, 0, len(seq)), clock])
        return run

    keras.utils.set_random_seed(0)
    arch_models = {}
    m = build_snippet_crnn(n_classes)
    compile_model(m, 1e-4)
    variants["plain model.fit (in-memory numpy)"] = plain(m)
    variants["default path (train_run: PyDataset over memmap)"] = default_path(TrainConfig())
    # the plain fit with Keras' own BatchNormalization layers (--arch keras_bn): what FastBatchNormalization saves
    # (plain against plain: the loader's share of the default path varies more than the difference)
    m_keras_bn = build_snippet_crnn(n_classes, arch={"fast_bn": False})
    compile_model(m_keras_bn, 1e-4)
    arch_models["plain model.fit, Keras' BatchNormalization"] = m_keras_bn
    variants["plain model.fit, Keras' BatchNormalization"] = plain(m_keras_bn)
    if a.extra:
        variants["default path + mixed_bfloat16"] = default_path(TrainConfig(precision="mixed_bfloat16"))
        variants["default path + jit_compile (XLA)"] = default_path(TrainConfig(jit_compile=True))
        variants["default path + 2 loader threads"] = default_path(TrainConfig(workers=2))
    if a.arch:
        for label, arch, frames in (("no BN on block 1", {"bn_first": False}, None),
                                    ("no BN on block 1 + ReLU", {"bn_first": False, "activation": "relu"}, None),
                                    ("pool first (BN + ELU on pooled maps)", {"pool_first": True}, None),
                                    ("pool first + ReLU", {"pool_first": True, "activation": "relu"}, None),
                                    ("pool first, no BN on block 1", {"pool_first": True, "bn_first": False}, None),
                                    ("unrolled GRU", {"unroll": True}, p.snippet_frames)):
            mv = build_snippet_crnn(n_classes, frames=frames, arch=arch)
            compile_model(mv, 1e-4)
            arch_models[f"plain model.fit, {label}"] = mv
            variants[f"plain model.fit, {label}"] = plain(mv)
    if a.profile:
        for label, kw in (("without batch norm", {"norm": False}), ("without ELU", {"activation": "linear"}),
                          ("without dropout", {"dropout": 0.0}), ("without GRU (mean over time)", {"gru": False}),
                          ("convolutions + pooling only", {"norm": False, "activation": "linear", "dropout": 0.0,
                                                           "gru": False})):
            mv = profile_variant(n_classes, p.n_mels, **kw)
            compile_model(mv, 1e-4)
            arch_models[f"profile: {label}"] = mv
            variants[f"profile: {label}"] = plain(mv)
    if a.wide:
        w = build_snippet_crnn(n_classes, filters=(64, 128, 128, 128))
        compile_model(w, 1e-4)
        variants["plain model.fit, wide filters 64/128/128/128"] = plain(w)

    peak = matmul_peak_gflops()
    np_peak = matmul_peak_gflops(repeats=5, backend="numpy")
    flops = {name: 3 * count_flops(arch_models.get(name, m), (p.snippet_frames, p.n_mels))["flops"]
             for name in variants}  # one training sample: forward + backward ~ 3 x the forward FLOPs
    print(f"fp32 matmul peak measured now (2048 x 2048, {os.cpu_count()} threads): {peak:.0f} GFLOP/s; training "
          f"FLOPs per sample (3 x forward): {flops[next(iter(flops))] / 1e6:.0f} MFLOP", flush=True)
    print(f"(NumPy's matmul, {np_peak:.0f} GFLOP/s here, is a lower bar: the 'of peak' column uses the backend's)",
          flush=True)
    print(f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs, {n} samples of "
          f"{p.snippet_frames}x{p.n_mels}, batch {bs}, {a.repeats} timed epochs per variant", flush=True)
    for name, fn in variants.items():  # warm-up: tracing / compilation
        t0 = time.perf_counter()
        fn()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    per_fit = []  # seconds of each fit() call outside its batches (start-up and tear-down)
    for _ in range(a.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            steady_s, steady_cpu, steady_n = clock.steady(bs)
            wall[name].append(steady_n / steady_s)
            cpu[name].append(1000 * steady_cpu / steady_n)
            per_fit.append(time.perf_counter() - t0 - steady_s)
    print(f"{'variant':56s} {'samples/s (median)':>18s} {'runs':>18s} {'CPU ms/sample':>14s} {'GFLOP/s':>8s} "
          f"{'of peak':>8s}")
    for name in variants:
        runs = " ".join(f"{v:.0f}" for v in wall[name])
        g = np.median(wall[name]) * flops[name] / 1e9
        print(f"{name:56s} {np.median(wall[name]):18.1f} {runs:>18s} {np.median(cpu[name]):14.2f} {g:8.1f} "
              f"{g / peak:8.1%}")
    print(f"each fit() call also spends {1000 * np.median(per_fit):.0f} ms (median; up to "
          f"{1000 * max(per_fit):.0f}) starting and tearing down its data iterator, outside the steady state above; "
          f"train_run calls fit() once per epoch (~{1000 * max(per_fit) / 112:.0f} ms per batch at 112 batches)")
    names = list(variants)
    g_default = np.median(wall[names[1]]) * flops[names[1]] / 1e9
    print(f"default path: {g_default:.0f} GFLOP/s = {g_default / peak:.0%} of the backend's matmul peak, "
          f"{g_default / np_peak:.0%} of NumPy's")
    ratio = np.median(wall[names[1]]) / np.median(wall[names[0]])
    cpu_ratio = np.median(cpu[names[0]]) / np.median(cpu[names[1]])
    print(f"ratio default / plain: {ratio:.2f}x samples/s ({cpu_ratio:.2f}x by CPU time per sample)")
    kb = names[2]
    print(f"ratio plain / plain with Keras' BatchNormalization (FastBatchNormalization's gain): "
          f"{np.median(wall[names[0]]) / np.median(wall[kb]):.2f}x samples/s "
          f"({np.median(cpu[kb]) / np.median(cpu[names[0]]):.2f}x by CPU time per sample)")
    for name in names[3:]:
        print(f"ratio {name} / plain: {np.median(wall[name]) / np.median(wall[names[0]]):.2f}x samples/s")
    if a.profile:  # by process CPU time per sample: steadier than wall time when anything else runs
        step = bs * np.median(cpu[names[0]])
        print(f"profile by removal (plain fit, CPU ms per batch of {bs}, both cores; full step {step:.0f} ms):")
        for name in names:
            if name.startswith("profile: without"):
                saved = step - bs * np.median(cpu[name])
                print(f"  {name[len('profile: without '):]:40s} {saved:6.0f} ms  {saved / step:6.1%} of the step")
        conv = "profile: convolutions + pooling only"
        c_step = bs * np.median(cpu[conv])
        g = np.median(wall[conv]) * flops[conv] / 1e9
        print(f"  convolutions + pooling + softmax alone: {c_step:.0f} ms per batch ({c_step / step:.0%} of the step), "
              f"{g:.0f} GFLOP/s = {g / peak:.0%} of peak on {flops[conv] / flops[names[0]]:.0%} of the FLOPs")
    tmp.cleanup()


def batch_clock():
    """A Keras callback that stamps wall and process CPU time at the end of every training batch of a fit();
    ``steady(batch)`` then gives ``(seconds, cpu_seconds, samples)`` from the end of the first batch to the end of
    the last: the training steps alone, without fit()'s start-up and the data iterator's tear-down (which take a
    few hundred ms now and then and would swamp a short epoch)."""
    import keras

    class BatchClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.stamps = []

        def on_train_batch_end(self, batch, logs=None):
            self.stamps.append((time.perf_counter(), time.process_time()))

        def steady(self, batch_size: int) -> tuple[float, float, int]:
            (w0, c0), (w1, c1) = self.stamps[0], self.stamps[-1]
            return w1 - w0, c1 - c0, (len(self.stamps) - 1) * batch_size

    return BatchClock()


def profile_variant(n_classes: int, n_mels: int, norm: bool = True, activation: str = "elu", dropout: float = 0.1,
                    gru: bool = True):
    """The snippet CRNN (``core.models.build_snippet_crnn``'s layers and sizes) with kinds of layers left out:
    ``norm=False`` no batch norm, ``activation="linear"`` no ELU, ``dropout=0`` no dropout layers, ``gru=False``
    a mean over time instead of the two GRUs."""
    import keras
    from keras import layers

    from core.models import FILTERS, FastBatchNormalization, _freq_after_pools

    x = inputs = keras.Input(shape=(None, n_mels, 1), name="mel")
    pools = [(2, 2), (2, 2), (2, 2), (1, _freq_after_pools(n_mels))]
    for i, (f, pool) in enumerate(zip(FILTERS, pools), start=1):
        x = layers.Conv2D(f, 3, padding="same")(x)
        if norm:
            x = FastBatchNormalization(momentum=0.9)(x)
        if activation == "elu":
            x = layers.ELU()(x)
        x = layers.MaxPooling2D(pool_size=pool, strides=pool)(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    x = layers.Reshape((-1, FILTERS[-1]))(x)
    if gru:
        x = layers.GRU(96)(layers.GRU(192, return_sequences=True)(x))
    else:
        x = layers.GlobalAveragePooling1D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, layers.Dense(n_classes, activation="softmax")(x))


def matmul_peak_gflops(n: int = 2048, repeats: int = 8, backend: str = "keras") -> float:
    """fp32 ``n x n`` matmul throughput on this machine now (best of ``repeats``, after a warm-up), in GFLOP/s:
    of the Keras backend, or of NumPy's BLAS (``backend="numpy"``: OpenBLAS in the wheels, the figure a quick
    ``a @ b`` check gives)."""
    import keras

    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    if backend == "numpy":
        def matmul():
            return x @ y
    else:
        xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)

        def matmul():
            return keras.ops.convert_to_numpy(keras.ops.matmul(xt, yt))
    matmul()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


if __name__ == "__main__":
    main()
