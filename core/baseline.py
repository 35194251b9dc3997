"""The reference baseline: a linear classifier on per-snippet mel-band mean and standard deviation.

Every comparison shows it beside the CRNNs so users see what the deep model adds over a simple one. It is a
Keras model like the CRNNs (input ``(frames, n_mels, 1)``, softmax output), so the same ``Predictor``,
track-level aggregation and evaluation code serve it:

    mel snippet -> MelStats (mean and std of each mel band over time, 2 * n_mels values)
                -> standardisation (training statistics) -> Dense softmax (L2-regularised)

That is multinomial logistic regression. The model (:class:`core.models.MelStats`,
:func:`core.models.build_linear`) is in :mod:`core.models` with the CRNNs (the registry of model kinds); this
module fits it. Training fits the Dense layer on the pre-computed statistics of the
training snippets with L-BFGS (a convex problem, so the fit is deterministic), which takes about a second.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.models import build_linear  # the baseline's model (and its MelStats layer): the registry's
from core.train import TrainResult
from core.utils import atomic_write_json


def mel_stats(X: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """numpy twin of :class:`core.models.MelStats` for ``(n, time, n_mels)`` arrays (chunked, so memmaps stay
    lazy)."""
    out = []
    for a in range(0, len(X), chunk):
        b = np.asarray(X[a:a + chunk], dtype=np.float64)
        out.append(np.concatenate([b.mean(axis=1), b.std(axis=1)], axis=1))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2 * X.shape[2]), np.float32)


def fit_softmax_regression(S: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2,
                           max_iter: int = 500) -> tuple[np.ndarray, np.ndarray, dict]:
    """Multinomial logistic regression with an L2 penalty, fitted by L-BFGS (convex: one optimum, no seed).

    ``S`` must be standardised. Returns ``(W (d, C), b (C,), info)``.
    """
    from scipy.optimize import minimize

    n, d = S.shape
    Y = np.eye(n_classes)[y]
    S64 = S.astype(np.float64)

    def loss_grad(theta):
        W, b = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes:]
        z = S64 @ W + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.mean(np.sum(Y * np.log(np.maximum(p, 1e-12)), axis=1)) + 0.5 * l2 * np.sum(W * W)
        g = (p - Y) / n
        return loss, np.concatenate([(S64.T @ g + l2 * W).ravel(), g.sum(axis=0)])

    res = minimize(loss_grad, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter})
    W, b = res.x[: d * n_classes].reshape(d, n_classes), res.x[d * n_classes:]
    return W.astype(np.float32), b.astype(np.float32), {"iterations": int(res.nit), "loss": float(res.fun)}


def train_linear(dataset, seed: int, run_dir: str | Path, *, norm_method: str = "minmax", l2: float = 1e-2,
                 on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Fit the baseline on a dataset's train split; writes ``best.keras`` and ``history.json`` in ``run_dir``
    like the CRNN runs (one "epoch": the L-BFGS fit). The fit is deterministic, so ``seed`` only names the run.
    Returns a ``core.train.TrainResult``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_cls, n_mels = len(dataset.classes), dataset.params.n_mels
    S_tr = mel_stats(dataset.normalize(np.asarray(dataset.X("train")), norm_method))
    y_tr = np.asarray(dataset.y("train"))
    mean, var = S_tr.mean(axis=0), S_tr.var(axis=0) + 1e-6
    Z = (S_tr - mean) / np.sqrt(var)
    W, b, info = fit_softmax_regression(Z, y_tr, n_cls, l2)
    full, head = build_linear(n_cls, n_mels, mean, var)
    head.get_layer("genre").set_weights([W, b])
    rec: dict[str, Any] = {"epoch": 1, "loss": info["loss"], "lr": 0.0, "seconds": 0.0, **info}
    p_tr = head.predict(S_tr, verbose=0)
    rec["accuracy"] = float((p_tr.argmax(1) == y_tr).mean())
    if len(dataset.y("val")):
        S_va = mel_stats(dataset.normalize(np.asarray(dataset.X("val")), norm_method))
        y_va = np.asarray(dataset.y("val"))
        p_va = head.predict(S_va, verbose=0)
        rec["val_loss"] = float(-np.mean(np.log(np.maximum(p_va[np.arange(len(y_va)), y_va], 1e-12))))
        rec["val_accuracy"] = float((p_va.argmax(1) == y_va).mean())
    rec["seconds"] = time.perf_counter() - t0
    tmp = run_dir / ".best.tmp.keras"
    full.save(tmp)
    tmp.replace(run_dir / "best.keras")
    atomic_write_json(run_dir / "history.json", [rec])
    if on_epoch:
        on_epoch(rec)
    return TrainResult(run_dir, "done", 1, 1, rec.get("val_loss", rec["loss"]), [rec], "L-BFGS converged"
                       if info["iterations"] < 500 else "L-BFGS iteration cap")
