"""Transfer classifiers: a linear head on pretrained musicnn features, judged by cross-validation over every track.

``python -m core train-transfer SRC OUT`` turns any folder of class sub-folders of audio into a model folder that
the :class:`core.predictor.Predictor` (and so ``predict`` and the demo page) runs in NumPy:

1. **Features.** musicnn (:mod:`core.musicnn_numpy`, no TensorFlow) on 3 s windows every second of every track;
   the named per-window features (default ``penultimate``, the 200-d embedding) are cached per track in the data
   home (``cache/musicnn-features/``), keyed by the network's weights and the file's content: a stopped run
   resumes, a second run with other head settings computes nothing again.
2. **Cross-validation.** Repeated stratified K-fold over the *tracks* (never the windows): each track is tested
   once per repeat by a head fitted on the other folds, its windows' class scores aggregated three ways (sum,
   vote, log-prob). The figure is the accuracy over all tracks, mean ± SD over the repeats; the aggregation
   with the best mean becomes the model's default (``aggregation`` in the card).
3. **The shipped head** is fitted on every track: multinomial logistic regression (L2 penalty ``1 / C``) on
   standardised features, fitted with L-BFGS (SciPy); the standardisation is folded into one Dense softmax layer
   saved as ``head.keras`` beside a copy of the network's weights (``musicnn.weights.npz``).

Why a linear head: on the 320 Emotify tracks of this project's development set, a logistic regression on the
penultimate layer reached the same cross-validated accuracy as the one-hidden-layer heads of
:mod:`core.embeddings` (83-84 %), is deterministic (no seed to pick) and fits in seconds
(``results/generalisation/``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import musicnn as mn
from core.errors import GenreLabError, Stopped
from core.utils import atomic_write_json, sha256_file, stable_hash

AGGREGATIONS = ("sum", "vote", "logprob")
DEFAULT_FEATURES = ("penultimate",)
DEFAULT_C = 0.1
DEFAULT_FOLDS = 5
DEFAULT_REPEATS = 3
TRAIN_EVERY = 3  # windows every 1 s overlap by 2 s: every 3rd is enough to fit the head (no overlap)
HEAD_FILE = "head.keras"
RESULTS_FILE = "cv.json"


class TransferError(GenreLabError):
    """A transfer classifier that cannot be made (too few tracks, an unusable source, ...)."""


class TransferStopped(Stopped):
    """Stopped on request while computing features; the next run resumes from the cached tracks."""


# =========================================================================================================
# features, cached per track
# =========================================================================================================
@dataclass
class TrackFeatures:
    key: str  # "class/relative/path"
    label: str
    X: np.ndarray  # (n_windows, dim) float32, windows every second


def cache_dir() -> Path:
    """``<data home>/cache/musicnn-features`` (not shipped; safe to delete: it is recomputed)."""
    from core.workspace import data_home

    return data_home() / "cache" / "musicnn-features"


def track_features(tracks, weights: str | os.PathLike, names: Sequence[str], *, cache: Path | None = None,
                   progress: Callable[[int, int, str], None] | None = None, should_stop=None,
                   ) -> tuple[list[TrackFeatures], list[dict[str, str]]]:
    """musicnn features of ``tracks`` (:class:`core.dataset.Track` items), every second, from the cache when there.

    Returns ``(features, skipped)``: files that cannot be decoded (or hold non-finite samples) are skipped with
    their reason, as in a dataset build. ``should_stop()`` is checked between tracks (:class:`TransferStopped`)."""
    from core.audio import AudioError
    from core import musicnn_numpy as mnp

    try:
        net = mnp.network(weights)
        names = net.check_names(names)
    except mnp.MusicnnNumpyError as exc:
        raise TransferError(str(exc)) from exc
    tag = stable_hash({"weights": net.digest, "names": list(names), "hop_s": 1.0})
    root = (cache or cache_dir()) / tag
    out: list[TrackFeatures] = []
    skipped: list[dict[str, str]] = []
    for i, t in enumerate(tracks):
        if should_stop is not None and should_stop():
            raise TransferStopped(f"stopped after {i} of {len(tracks)} tracks")
        if progress is not None:
            progress(i, len(tracks), t.relpath)
        try:
            digest = sha256_file(t.abs_path)
        except OSError as exc:
            skipped.append({"path": t.relpath, "reason": f"unreadable: {exc.strerror or exc}"})
            continue
        path = root / f"{digest}.npz"
        X = None
        if path.exists():
            try:
                with np.load(path) as z:
                    X = np.asarray(z["X"], np.float32)
            except (OSError, ValueError, KeyError):
                X = None  # a damaged cache entry is computed again
        if X is None:
            try:
                wf = mnp.file_window_features(t.abs_path, names, 1.0, net)
            except (AudioError, ValueError) as exc:
                skipped.append({"path": t.relpath, "reason": str(exc)})
                continue
            X = wf.concatenated(names).astype(np.float32)
            if not np.isfinite(X).all():
                skipped.append({"path": t.relpath, "reason": "non-finite musicnn features"})
                continue
            root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp.npz")
            os.close(fd)
            try:
                np.savez(tmp, X=X)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        out.append(TrackFeatures(t.relpath, t.label, X))
    if progress is not None:
        progress(len(tracks), len(tracks), "features ready")
    return out, skipped


# =========================================================================================================
# the head: multinomial logistic regression, L2, L-BFGS
# =========================================================================================================
@dataclass
class LinearHead:
    """Softmax regression on standardised features: ``softmax(((X - mean) / scale) @ W + b)``."""
    mean: np.ndarray
    scale: np.ndarray
    W: np.ndarray  # (dim, n_classes)
    b: np.ndarray  # (n_classes,)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = ((np.asarray(X, np.float64) - self.mean) / self.scale) @ self.W + self.b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """``(kernel, bias)`` of one Dense layer on the raw features: the standardisation folded in."""
        kernel = self.W / self.scale[:, None]
        return kernel.astype(np.float32), (self.b - (self.mean / self.scale) @ self.W).astype(np.float32)


def fit_linear_head(X: np.ndarray, y: np.ndarray, n_classes: int, C: float = DEFAULT_C,
                    max_iter: int = 3000) -> LinearHead:
    """Minimise ``sum of cross-entropies + ||W||^2 / (2 C)`` (the bias is not penalised) on standardised ``X``."""
    from scipy.optimize import minimize

    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.int64)
    if C <= 0:
        raise TransferError("C must be positive")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-8] = 1.0
    Z = (X - mean) / scale
    n, d = Z.shape
    Y = np.zeros((n, n_classes))
    Y[np.arange(n), y] = 1.0

    def f(theta):
        W = theta[:d * n_classes].reshape(d, n_classes)
        b = theta[d * n_classes:]
        s = Z @ W + b
        s -= s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        loss = float((lse - (s * Y).sum(axis=1)).sum() + (W * W).sum() / (2 * C))
        P = np.exp(s - lse[:, None])
        G = P - Y
        return loss, np.concatenate([(Z.T @ G + W / C).ravel(), G.sum(axis=0)])

    theta0 = np.zeros(d * n_classes + n_classes)
    res = minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-6})
    W = res.x[:d * n_classes].reshape(d, n_classes)
    return LinearHead(mean, scale, W, res.x[d * n_classes:])


def aggregate_windows(P: np.ndarray, how: str) -> np.ndarray:
    """A track's class scores from its windows' (``core.predictor.aggregate``, without the import)."""
    from core.predictor import aggregate

    return aggregate(P, how)


# =========================================================================================================
# cross-validation over tracks
# =========================================================================================================
def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number per track: each class's tracks shuffled (seeded) and dealt round the folds in turn, the
    deal of each class starting where the previous class's stopped (fold sizes differ by at most one)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    pos = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        fold[idx] = (pos + np.arange(len(idx))) % k
        pos += len(idx)
    return fold


@dataclass
class CVResult:
    folds: int
    repeats: int
    seed: int
    accuracy: dict[str, list[float]]  # aggregation -> accuracy per repeat
    confusion: dict[str, list[list[int]]]  # aggregation -> summed over repeats
    oof: list[dict[str, list[float]]] = field(default_factory=list)  # per repeat: track -> mean window scores

    def summary(self) -> dict[str, dict[str, float]]:
        return {a: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                for a, v in self.accuracy.items()}

    def best_aggregation(self) -> str:
        """The aggregation with the best mean accuracy (ties: sum, then vote, then log-prob)."""
        s = self.summary()
        return max(AGGREGATIONS, key=lambda a: (round(s[a]["mean"], 6), -AGGREGATIONS.index(a)))


def cross_validate(feats: list[TrackFeatures], classes: list[str], C: float = DEFAULT_C, folds: int = DEFAULT_FOLDS,
                   repeats: int = DEFAULT_REPEATS, seed: int = 0,
                   progress: Callable[[int, int, str], None] | None = None, should_stop=None) -> CVResult:
    """Repeated stratified K-fold over tracks: every track tested once per repeat."""
    y = np.array([classes.index(f.label) for f in feats])
    counts = np.bincount(y, minlength=len(classes))
    k = int(min(folds, counts.min()))
    if k < 2:
        raise TransferError("cross-validation needs at least 2 tracks of every class "
                            f"(fewest: {counts.min()} in {classes[int(counts.argmin())]})")
    acc = {a: [] for a in AGGREGATIONS}
    conf = {a: np.zeros((len(classes), len(classes)), np.int64) for a in AGGREGATIONS}
    oof = []
    total, step = repeats * k, 0
    for r in range(repeats):
        fold = stratified_folds(y, k, seed + r)
        right = {a: 0 for a in AGGREGATIONS}
        scores: dict[str, list[float]] = {}
        for f in range(k):
            if should_stop is not None and should_stop():
                raise TransferStopped("stopped during cross-validation (the features are cached)")
            if progress is not None:
                progress(step, total, f"repeat {r + 1} of {repeats}, fold {f + 1} of {k}")
            step += 1
            tr = np.flatnonzero(fold != f)
            Xtr = np.concatenate([feats[i].X[::TRAIN_EVERY] for i in tr])
            ytr = np.concatenate([np.full(len(feats[i].X[::TRAIN_EVERY]), y[i]) for i in tr])
            head = fit_linear_head(Xtr, ytr, len(classes), C)
            for i in np.flatnonzero(fold == f):
                P = head.predict_proba(feats[i].X)
                scores[feats[i].key] = [round(float(v), 5) for v in P.mean(axis=0)]
                for a in AGGREGATIONS:
                    pred = int(np.argmax(aggregate_windows(P, a)))
                    right[a] += pred == y[i]
                    conf[a][y[i], pred] += 1
        for a in AGGREGATIONS:
            acc[a].append(right[a] / len(y))
        oof.append(scores)
    if progress is not None:
        progress(total, total, "cross-validation done")
    return CVResult(k, repeats, seed, acc, {a: m.tolist() for a, m in conf.items()}, oof)


# =========================================================================================================
# the model folder
# =========================================================================================================
def save_head_keras(head: LinearHead, path: Path, name: str = "head") -> None:
    """One Dense softmax layer on the raw features (the standardisation folded in), as a ``.keras`` file."""
    import keras

    kernel, bias = head.folded()
    inp = keras.Input(shape=(kernel.shape[0],), name="features")
    dense = keras.layers.Dense(kernel.shape[1], activation="softmax", name="classes")
    model = keras.Model(inp, dense(inp), name=name)
    dense.set_weights([kernel, bias])
    model.save(path)


def _network_card(weights: Path) -> dict:
    card_path = (weights if weights.is_dir() else weights.parent) / mn.CARD_FILE
    try:
        return json.loads(card_path.read_text())
    except (OSError, ValueError):
        return {}


def model_card_md(card: dict) -> str:
    cv = card["cv"]
    s = cv["accuracy"][card["aggregation"]]
    rows = "\n".join(f"| {a} | {cv['accuracy'][a]['mean']:.1%} ± {cv['accuracy'][a]['sd']:.1%} |"
                     for a in AGGREGATIONS)
    return f"""# {card['name']}

{card['description']}

- **Classes** ({len(card['classes'])}): {', '.join(card['classes'])}
- **Model**: musicnn {card['embedding']['network']} (frozen, NumPy; `musicnn.weights.npz`, ISC licence, see
  `models/msd-musicnn/MODEL_CARD.md`) -> {' + '.join(card['embedding']['features'])} of 3 s windows every
  second -> `head.keras` (logistic regression, L2 1/C with C = {card['head']['C']:g}, fitted on every track)
- **Cross-validated track accuracy**: **{s['mean']:.1%} ± {s['sd']:.1%}** ({cv['folds']} folds x {cv['repeats']}
  repeats over {cv['n_tracks']} tracks; every track tested once per repeat by a head that never saw it;
  aggregation `{card['aggregation']}`, the best of the three):

| aggregation | accuracy (mean ± SD over repeats) |
| --- | --- |
{rows}

- **Training data**: {card['training_data']['source']} ({cv['n_tracks']} tracks)
- **Reproduce**: `{card['reproduction']['command']}` (commit {card['reproduction'].get('commit') or 'unknown'})
- **Citation** (musicnn): {mn.CITATION}

Cross-validation estimates accuracy on music like the training folder; expect less on music unlike it.
"""


def train_transfer(src: str | os.PathLike, out: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                   features: Sequence[str] = DEFAULT_FEATURES, C: float = DEFAULT_C, folds: int = DEFAULT_FOLDS,
                   repeats: int = DEFAULT_REPEATS, seed: int = 0, name: str | None = None,
                   source_name: str | None = None, citation: str | None = None, command: str | None = None,
                   overwrite: bool = False, cache: Path | None = None,
                   progress: Callable[[str, int, int, str], None] | None = None, should_stop=None) -> dict:
    """Features, cross-validation and the final head for ``src``; writes the model folder ``out`` (atomically:
    a temporary folder renamed at the end). Returns the card."""
    from core.dataset import scan_source
    from core.model_card import make_model_card, validate_model_card

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TransferError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    weights = Path(weights) if weights is not None else mn.default_model_dir()
    net_card = _network_card(weights)
    network_name = net_card.get("model") or "MSD_musicnn"
    try:
        tracks, scan_skipped, classes = scan_source(src)
    except GenreLabError as exc:
        raise TransferError(str(exc)) from exc
    if len(classes) < 2:
        raise TransferError(f"{src} needs at least two class folders with audio (found {len(classes)})")
    t0 = time.time()
    feats, skipped = track_features(tracks, weights, features, cache=cache, should_stop=should_stop,
                                    progress=(lambda d, t, m: progress("features", d, t, m)) if progress else None)
    classes = sorted({f.label for f in feats})
    if len(classes) < 2:
        raise TransferError("fewer than two classes have usable tracks: " +
                            "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5]))
    cv = cross_validate(feats, classes, C, folds, repeats, seed, should_stop=should_stop,
                        progress=(lambda d, t, m: progress("cross-validation", d, t, m)) if progress else None)
    y = np.array([classes.index(f.label) for f in feats])
    X_all = np.concatenate([f.X[::TRAIN_EVERY] for f in feats])
    y_all = np.concatenate([np.full(len(f.X[::TRAIN_EVERY]), y[i]) for i, f in enumerate(feats)])
    head = fit_linear_head(X_all, y_all, len(classes), C)
    agg = cv.best_aggregation()
    summary = cv.summary()
    src_name = source_name or Path(src).resolve().name
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    name = name or out.name
    from core.features import FeatureParams

    params = FeatureParams(sample_rate=mn.SR, snippet_s=mn.PATCH_SECONDS, overlap_s=2.0, max_snippets=0,
                           n_fft=mn.N_FFT, hop_length=mn.HOP, n_mels=mn.N_MELS, log=True)
    card = make_model_card(
        "musicnn", classes, params, {}, "none",
        name=name,
        description=(f"{len(classes)}-class classifier ({', '.join(classes)}): musicnn ({network_name}, Pons & "
                     f"Serra 2019) {' + '.join(features)} features of 3 s windows + a logistic-regression head "
                     f"fitted on all {len(feats)} tracks; windows vote by {agg}."),
        model_file=HEAD_FILE,
        musicnn_input=dict(mn.INPUT_PARAMS), input_shape=[mn.PATCH_FRAMES, mn.N_MELS],
        embedding={"network": network_name, "weights": mn.WEIGHTS_FILE, "features": list(features)},
        base_model={"name": net_card.get("name"), "model": network_name, "citation": mn.CITATION,
                    "licence": (net_card.get("licence") or {}).get("name") if isinstance(net_card.get("licence"), dict)
                    else net_card.get("licence")},
        aggregation=agg, hop_s=1.0,
        head={"type": "logistic regression", "C": C, "features_dim": int(X_all.shape[1]),
              "windows_fitted": int(len(X_all)), "train_every": TRAIN_EVERY},
        training_data={"source": src_name, "citation": citation, "n_tracks": len(feats), "per_class": counts,
                       "skipped": len(skipped) + len(scan_skipped)},
        cv={"folds": cv.folds, "repeats": cv.repeats, "seed": cv.seed, "n_tracks": len(feats), "unit": "track",
            "accuracy": {a: {**summary[a], "per_repeat": [round(v, 4) for v in cv.accuracy[a]]}
                         for a in AGGREGATIONS},
            "chosen_aggregation": agg, "confusion": cv.confusion[agg]},
        accuracy={f"track_{a}/cv": round(summary[a]["mean"], 4) for a in AGGREGATIONS},
        selected_by=(f"cross-validation over all {len(feats)} tracks ({cv.folds} folds x {cv.repeats} repeats); "
                     f"the aggregation with the best mean ({agg})"),
        reproduction={"command": command, "commit": _commit()},
        seconds=round(time.time() - t0, 1),
    )
    card = validate_model_card(card, out / "model_card.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(weights / mn.WEIGHTS_FILE if weights.is_dir() else weights, tmp / mn.WEIGHTS_FILE)
        save_head_keras(head, tmp / HEAD_FILE, name=name.replace("-", "_"))
        atomic_write_json(tmp / "model_card.json", card)
        atomic_write_json(tmp / RESULTS_FILE, {"classes": classes, "oof": cv.oof,
                                               "skipped": skipped + [{"path": s.get("path", ""), "reason": s.get("reason", "")}
                                                                     for s in scan_skipped]})
        (tmp / "MODEL_CARD.md").write_text(model_card_md(card), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp / mkstemp make private files: a model folder is for sharing
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return card


def _commit() -> str | None:
    from core.reproduce import git_commit

    try:
        return git_commit()
    except Exception:  # noqa: BLE001  (no git, not a checkout: the card says unknown)
        return None


# =========================================================================================================
# CLI
# =========================================================================================================
def register_cli(sub) -> None:
    from core.jobs import add_job_args

    p = sub.add_parser(
        "train-transfer",
        help="a musicnn-feature classifier for a folder of class sub-folders, cross-validated over every track",
        description="Compute musicnn features (NumPy, cached) of 3 s windows every second of every track in SRC "
                    "(one sub-folder per class), cross-validate a logistic-regression head over the tracks "
                    "(repeated stratified K-fold: every track tested once per repeat; accuracy mean ± SD over the "
                    "repeats for sum, vote and log-prob aggregation), then fit the head on every track and write "
                    "the model folder OUT (model_card.json with the cross-validated figures, head.keras, "
                    "musicnn.weights.npz, MODEL_CARD.md, cv.json with the out-of-fold scores). `python -m core "
                    "predict --model OUT` and the demo page run it in NumPy. Resumable: features are cached in "
                    "the data home.")
    p.add_argument("src", help="folder with one sub-folder of audio files per class")
    p.add_argument("out", help="model folder to write")
    p.add_argument("--weights", help="converted musicnn folder or musicnn.weights.npz (default: models/msd-musicnn; "
                                     "MTT_musicnn: python -m core convert-musicnn --model MTT_musicnn DIR)")
    p.add_argument("--features", default=",".join(DEFAULT_FEATURES),
                   help="comma list of musicnn outputs per window: penultimate (200), max_pool, mean_pool (753 "
                        "each), taggram (50) (default: penultimate)")
    p.add_argument("--C", type=float, default=DEFAULT_C, help=f"inverse L2 strength of the head ({DEFAULT_C})")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help=f"cross-validation folds ({DEFAULT_FOLDS})")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help=f"cross-validation repeats, each with other folds ({DEFAULT_REPEATS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the first repeat's folds (0)")
    p.add_argument("--name", help="model name on the card (default: OUT's folder name)")
    p.add_argument("--source-name", help="training data's name on the card (default: SRC's folder name)")
    p.add_argument("--citation", help="training data's citation on the card")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_job_args(p)
    p.set_defaults(func=_cli_train)


def _cli_train(a) -> int:
    from core.jobs import JobReport

    report = JobReport(a, "train-transfer")
    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int, msg: str) -> None:
        if report.active:
            report.progress(done, total, f"{stage}: {msg}", force=done in (0, total))
            return
        from tqdm import tqdm

        if stage not in bars:
            for b in bars.values():
                b.close()
            bars[stage] = tqdm(total=total, unit="track" if stage == "features" else "fold", desc=stage,
                               dynamic_ncols=True, mininterval=0.5)
        bar = bars[stage]
        bar.set_postfix_str(msg[-40:], refresh=False)
        bar.update(done - bar.n)

    def work():
        for n in (a.folds, a.repeats):
            if n < 1:
                raise TransferError("--folds and --repeats must be at least 1")
        command = "python -m core train-transfer " + " ".join(_quote(x) for x in sys.argv[2:]) if sys.argv[1:2] == [
            "train-transfer"] else None
        card = train_transfer(a.src, a.out, weights=a.weights, features=[f.strip() for f in a.features.split(",")
                                                                         if f.strip()],
                              C=a.C, folds=a.folds, repeats=a.repeats, seed=a.seed, name=a.name,
                              source_name=a.source_name, citation=a.citation, command=command,
                              overwrite=a.overwrite, progress=progress, should_stop=report.should_stop)
        return "model written", (a.out, card)

    try:
        code = report.run(work, failed_code=2)
    finally:
        for b in bars.values():
            b.close()
    if code == 0 and not report.active:
        card = json.loads((Path(a.out) / "model_card.json").read_text())
        cv = card["cv"]
        print(f"{a.out}: {len(card['classes'])} classes, {cv['n_tracks']} tracks; cross-validated track accuracy "
              f"({cv['folds']} folds x {cv['repeats']} repeats, mean ± SD over repeats):")
        for agg in AGGREGATIONS:
            s = cv["accuracy"][agg]
            mark = "  <- default" if agg == card["aggregation"] else ""
            print(f"  {agg:8s} {s['mean']:.1%} ± {s['sd']:.1%}{mark}")
        if card["training_data"].get("skipped"):
            print(f"  {card['training_data']['skipped']} files skipped (reasons in {Path(a.out) / RESULTS_FILE})")
    return code


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
