"""The model card: the schema of ``model_card.json``, its validation, and what a card says about its model folder.

Every model folder has a ``model_card.json`` next to its model files: classes, feature parameters (``params``:
:class:`core.features.FeatureParams`), normalisation statistics (``norm``) and method (``norm_method``), model
``kind`` (one of :data:`core.train_config.KINDS`); optionally an ensemble's ``members`` (each ``.keras`` file with
its own ``norm``), musicnn heads' ``embedding`` (the network's ``.npz`` weights and the named features the heads
take) and the model's test-time defaults ``aggregation`` / ``hop_s`` (:func:`default_aggregation`,
:func:`default_hop_s`). :func:`make_model_card` / :func:`write_model_card` write one,
:func:`read_model_card` / :func:`validate_model_card` read and check one, :func:`model_files` lists the model
files it describes, :func:`check_model_matches_card` checks a loaded model against it (outputs, kind, frames).

Nothing here runs a model or imports Keras, TensorFlow or librosa: the dashboard's model list, the store and the
predictor read cards through this module. :mod:`core.predictor` runs the models a card describes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from core import musicnn as mn
from core.errors import GenreLabError
from core.features import FeatureParams
from core.train_config import KIND_MODEL_NAMES, KINDS
from core.utils import atomic_write_json, read_json

#: how a track's window scores can be aggregated (:func:`core.predictor.aggregate`); a card's ``aggregation``
#: names one of them
AGGREGATIONS = ("sum", "vote", "logprob")
CARD_NAME = "model_card.json"
CARD_FORMAT = 1


class ModelError(GenreLabError):
    """A model folder, model file or model card that cannot be used; the message is for the user (what
    :mod:`core.predictor` raises as ``PredictorError``)."""


class ModelCardError(ModelError):
    """A model card that breaks the schema (wrong type, out of range, kind that does not fit the model); the
    message names the file and the field."""


def make_model_card(kind: str, classes: list[str], params: FeatureParams | dict, norm: dict, norm_method: str,
                    **extra: Any) -> dict:
    p = params.to_dict() if isinstance(params, FeatureParams) else dict(params)
    card = {"format": CARD_FORMAT, "kind": kind, "classes": list(classes), "params": p,
            "norm": {k: norm[k] for k in ("min", "max", "mean", "std") if k in norm},
            "norm_method": norm_method}
    card.update(extra)
    return card


def write_model_card(folder: str | os.PathLike, card: dict) -> Path:
    path = Path(folder) / CARD_NAME
    atomic_write_json(path, card)
    return path


def read_model_card(path: str | os.PathLike) -> dict:
    """Read and validate (:func:`validate_model_card`) a ``model_card.json``; :class:`ModelError` with the
    file and the reason otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"no {CARD_NAME} at {path}: a model needs its card (classes, features, normalisation)")
    try:
        card = read_json(path)
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable model card: {exc}") from exc
    return validate_model_card(card, path)


#: FeatureParams fields of a card: (type, lowest, highest); bool and str fields are checked by type only
_PARAM_RULES: dict[str, tuple[type, float | None, float | None]] = {
    "sample_rate": (int, 1000, 384_000), "snippet_s": (float, 0.01, 3600.0), "overlap_s": (float, 0.0, 3600.0),
    "max_snippets": (int, 0, 1_000_000), "selection_seed": (int, None, None), "n_fft": (int, 16, 65_536),
    "hop_length": (int, 1, 65_536), "n_mels": (int, 1, 1024), "full_clip_s": (float, 0.01, 36_000.0),
    "log": (bool, None, None), "peak_normalize": (bool, None, None), "pad_short": (bool, None, None),
    "selection": (str, None, None), "mode": (str, None, None),
}
NORM_METHODS = ("minmax", "standard", "none")


def _type_name(x: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(x), "number" if isinstance(x, (int, float)) else type(x).__name__)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


def validate_model_card(card: Any, path: str | os.PathLike = CARD_NAME) -> dict:
    """Check a model card against the schema: an object with ``kind`` (string), ``classes`` (unique non-empty
    strings), ``params`` (FeatureParams fields of the right types and ranges), ``norm_method`` (minmax,
    standard or none) and ``norm`` (finite numbers; per-mel lists of ``n_mels`` for standard), optional fields
    of the right type. Returns the card; raises :class:`ModelCardError` naming the file and the field."""

    def bad(why: str) -> ModelCardError:
        return ModelCardError(f"model card {path} is not usable: {why}")

    if not isinstance(card, dict):
        raise bad(f"it is a JSON {_type_name(card)}, not an object")
    fmt = card.get("format", 0)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 0:
        raise bad(f"format is {fmt!r} (a card format number is expected)")
    if fmt > CARD_FORMAT:
        raise ModelError(f"{path} was written by a newer Genre Lab (card format {fmt}); update")
    missing = [k for k in ("kind", "classes", "params", "norm", "norm_method") if k not in card]
    if missing:
        raise ModelError(f"model card {path} lacks {', '.join(missing)}")
    if card["kind"] not in KINDS:
        raise bad(f"kind is {card['kind']!r} (one of {', '.join(KINDS)} is expected)")
    classes = card["classes"]
    if not isinstance(classes, list) or not classes:
        raise bad(f"classes is a {_type_name(classes)}{'' if classes else ' (empty)'}, not a list of class names")
    if not all(isinstance(c, str) and c for c in classes):
        raise bad("classes must all be non-empty strings")
    if len(set(classes)) != len(classes):
        raise bad("classes are listed twice")
    params = card["params"]
    if not isinstance(params, dict):
        raise bad(f"params is a {_type_name(params)}, not an object")
    for key, (kind, lo, hi) in _PARAM_RULES.items():
        if key not in params:
            continue
        v = params[key]
        if kind is bool:
            ok = isinstance(v, bool)
        elif kind is str:
            ok = isinstance(v, str)
        elif kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = _is_number(v)
        if not ok:
            want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
            raise bad(f"params.{key} is {v!r} ({_type_name(v)}; {want} is expected)")
        if lo is not None and not (lo <= v <= hi):
            raise bad(f"params.{key} is {v!r} (it must be between {lo:g} and {hi:g})")
    try:
        fp = FeatureParams.from_dict(params)
    except (ValueError, TypeError) as exc:
        raise bad(f"params: {exc}") from None
    method = card["norm_method"]
    if method not in NORM_METHODS:
        raise bad(f"norm_method is {method!r} (one of {', '.join(NORM_METHODS)} is expected)")
    _check_norm(card["norm"], method, fp, "norm", bad)
    for k in ("name", "description", "model_file"):
        if k in card and card[k] is not None and not isinstance(card[k], str):
            raise bad(f"{k} is a {_type_name(card[k])}, not a string")
    for k in ("accuracy", "training_data", "reproduction", "metrics", "config"):
        if k in card and card[k] is not None and not isinstance(card[k], dict):
            raise bad(f"{k} is a {_type_name(card[k])}, not an object")
    shape = card.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and all(
            x is None or (isinstance(x, int) and not isinstance(x, bool) and x > 0) for x in shape)):
        raise bad(f"input_shape is {shape!r} (a list of positive integers is expected)")
    _check_defaults(card, bad)
    _check_members(card, method, fp, bad)
    _check_embedding(card, bad)
    return card


def _check_norm(norm: Any, method: str, fp: FeatureParams, where: str, bad) -> None:
    """A normalisation object for ``method``: the statistics the method uses must be there (min/max numbers for
    minmax, per-mel lists for standard); any that are there (a card keeps both kinds) must be sound: finite, max
    above min, std above 0."""
    if not isinstance(norm, dict):
        raise bad(f"{where} is a {_type_name(norm)}, not an object")
    for k in ("min", "max"):
        if (method == "minmax" or k in norm) and not _is_number(norm.get(k)):
            raise bad(f"{where}.{k} is {norm.get(k)!r} (a finite number is expected"
                      + (" for minmax scaling)" if method == "minmax" else ")"))
    if "min" in norm and "max" in norm and not norm["max"] > norm["min"]:
        raise bad(f"{where}.max ({norm['max']}) is not above {where}.min ({norm['min']}): min-max scaling would "
                  "divide by zero or flip the features")
    for k in ("mean", "std"):
        v = norm.get(k)
        if (method == "standard" or k in norm) and (
                not isinstance(v, list) or len(v) != fp.n_mels or not all(_is_number(x) for x in v)):
            raise bad(f"{where}.{k} must be a list of {fp.n_mels} finite numbers (one per mel band)")
    if "std" in norm and any(x <= 0 for x in norm["std"]):
        raise bad(f"{where}.std holds a value <= 0 (standardising would divide by zero or flip a band)")


#: the longest default hop a card may give (seconds)
MAX_HOP_S = 60.0


def _check_defaults(card: dict, bad) -> None:
    """The model's test-time defaults: ``aggregation`` (sum, vote or logprob) and ``hop_s`` (seconds)."""
    agg = card.get("aggregation")
    if agg is not None and agg not in AGGREGATIONS:
        raise bad(f"aggregation is {agg!r} (one of {', '.join(AGGREGATIONS)} is expected)")
    hop = card.get("hop_s")
    if hop is not None and not (_is_number(hop) and 0 < hop <= MAX_HOP_S):
        raise bad(f"hop_s is {hop!r} (a number of seconds above 0 and at most {MAX_HOP_S:g} is expected)")


def _is_inside_name(name: Any, suffix: str) -> bool:
    """A file name relative to the model folder (no absolute path, no ``..``) with the given suffix."""
    if not isinstance(name, str) or not name or not name.endswith(suffix):
        return False
    parts = Path(name).parts
    return not Path(name).is_absolute() and ".." not in parts and "\\" not in name


def _check_members(card: dict, method: str, fp: FeatureParams, bad) -> None:
    """``members``: a non-empty list of ``{"file": "<name>.keras", "norm": {...}?}`` (an ensemble: the mean
    of the members' class scores); each file once."""
    members = card.get("members")
    if members is None:
        return
    if not isinstance(members, list) or not members:
        what = "an empty list" if members == [] else ("an " if _type_name(members)[0] in "aeiou" else "a ") + \
            _type_name(members)
        raise bad(f"members is {what} (a list of "
                  "{\"file\": \"<name>.keras\"} objects is expected)")
    seen = set()
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise bad(f"members[{i}] is a {_type_name(m)}, not an object with a \"file\"")
        if not _is_inside_name(m.get("file"), ".keras"):
            raise bad(f"members[{i}].file is {m.get('file')!r} (the name of a .keras file in the model folder is "
                      "expected)")
        if m["file"] in seen:
            raise bad(f"members[{i}].file {m['file']!r} is listed twice")
        seen.add(m["file"])
        if m.get("norm") is not None:
            _check_norm(m["norm"], method, fp, f"members[{i}].norm", bad)


def _check_embedding(card: dict, bad) -> None:
    """``embedding``: the heads take named musicnn features: ``{"network": "MSD_musicnn" | "MTT_musicnn",
    "weights": "<name>.npz", "features": [names from core.musicnn_numpy.FEATURES]}`` (kind musicnn only)."""
    emb = card.get("embedding")
    if emb is None:
        return
    from core.musicnn_numpy import FEATURES

    if not isinstance(emb, dict):
        raise bad(f"embedding is a {_type_name(emb)}, not an object")
    if card.get("kind") != "musicnn":
        raise bad(f"embedding is given but kind is {card.get('kind')!r} (embedding heads are kind 'musicnn')")
    if emb.get("network") not in mn.MODELS:
        raise bad(f"embedding.network is {emb.get('network')!r} (one of {', '.join(mn.MODELS)} is expected)")
    if not _is_inside_name(emb.get("weights"), ".npz"):
        raise bad(f"embedding.weights is {emb.get('weights')!r} (the name of the network's .npz weights in the "
                  "model folder is expected, e.g. musicnn.weights.npz)")
    feats = emb.get("features")
    if not isinstance(feats, list) or not feats or not all(isinstance(f, str) for f in feats):
        raise bad(f"embedding.features is {feats!r} (a non-empty list of feature names is expected: "
                  f"{', '.join(FEATURES)})")
    unknown = [f for f in feats if f not in FEATURES]
    if unknown:
        raise bad(f"embedding.features names {unknown[0]!r}, not a musicnn feature ({', '.join(FEATURES)})")
    if len(set(feats)) != len(feats):
        raise bad("embedding.features lists a feature twice")


def check_model_file(path: str | os.PathLike) -> None:
    """A ``.keras`` file must be a complete zip archive holding ``config.json`` and ``model.weights.h5``; a
    truncated or damaged file is reported as unreadable (not as missing)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ModelError(f"model file {path} is unreadable: not a complete .keras archive ({size:,} bytes; "
                             f"truncated or damaged: {exc})") from None
    lacking = [n for n in ("config.json", "model.weights.h5") if n not in names]
    if lacking:
        raise ModelError(f"model file {path} is unreadable: the .keras archive lacks {', '.join(lacking)}")


def model_kind(model_name: str | None) -> str | None:
    """The kind a saved model's name says it is (:data:`core.train_config.KIND_MODEL_NAMES`: ``snippet_crnn``,
    ``full_crnn``, ``linear_baseline``, ``musicnn_classifier``), or None for a name no builder gives."""
    for kind, name in KIND_MODEL_NAMES.items():
        if model_name == name:
            return kind
    return None


def check_model_matches_card(input_shape: tuple, n_outputs: int, card: dict, params: FeatureParams,
                             path: str | os.PathLike, model_name: str | None = None) -> None:
    """The model and its card must agree: outputs vs classes, the card's ``kind`` vs the model's name
    (:func:`model_kind`: a "linear" card on a CRNN is refused), mel bands, and the kind vs the frames the model
    takes (a snippet model takes ``snippet_frames``, a full-clip model ``full_frames``) and vs the card's own
    ``input_shape``."""
    where = f"model card {Path(path).parent / CARD_NAME if Path(path).suffix == '.keras' else path}"
    classes = card["classes"]
    if n_outputs != len(classes):
        raise ModelCardError(f"the model has {n_outputs} outputs but its card lists {len(classes)} classes "
                             f"({where})")
    if len(input_shape) >= 3:  # a spectrogram model (the CRNNs, the baseline; musicnn takes (frames, mels))
        _check_frames(input_shape, card, params, where)
    family = model_kind(model_name)
    if family is not None and family != card["kind"]:
        what = {"snippet": "a snippet CRNN", "full": "a 30 s CRNN", "linear": "the linear baseline",
                "musicnn": "a musicnn classifier"}[family]
        raise ModelCardError(f"{where} is not usable: kind {card['kind']!r}, but the model is {what} ({model_name})")


def _check_frames(input_shape: tuple, card: dict, params: FeatureParams, where: str) -> None:
    """A spectrogram model's mel bands and frames vs its card's ``params``, ``kind`` and ``input_shape``."""
    if input_shape[2] is not None and int(input_shape[2]) != params.n_mels:
        raise ModelCardError(f"the model takes {input_shape[2]} mel bands, its card says {params.n_mels} ({where})")
    frames = input_shape[1]
    kind = card["kind"]
    shape = card.get("input_shape")
    declared = shape[0] if isinstance(shape, list) and len(shape) >= 2 else None
    if kind in ("snippet", "full"):
        expect = params.full_frames if kind == "full" else params.snippet_frames
        for what, n in (("the model takes", frames), ("its input_shape says", declared)):
            if n is not None and int(n) != expect:
                raise ModelCardError(f"{where} is not usable: kind {kind!r} means {expect}-frame inputs, but {what} "
                                     f"{int(n)} frames")
    if declared is not None and frames is not None and int(declared) != int(frames):
        raise ModelCardError(f"{where} is not usable: input_shape says {declared} frames, the model takes "
                             f"{int(frames)}")



def default_aggregation(card: dict) -> str:
    """The aggregation a card's model uses when a caller gives none: the card's ``aggregation``, else ``sum``."""
    return card.get("aggregation") or "sum"


def default_hop_s(card: dict) -> float:
    """The hop between windows (seconds) a card's model uses when a caller gives none: ``hop_s``, else 1 s."""
    return float(card.get("hop_s") or 1.0)


def front_end_of(card: dict) -> str:
    """The feature front end a model card's model takes: ``"musicnn"`` (musicnn's own 16 kHz, 96-mel log-mel in
    3 s patches; the card carries ``musicnn_input``, kind ``"musicnn"``) or ``"mel"`` (:mod:`core.features` with
    the card's ``params`` and ``norm``: the CRNNs and the linear baseline)."""
    return "musicnn" if card.get("musicnn_input") or card.get("kind") == "musicnn" else "mel"



def is_tagger_folder(path: str | os.PathLike) -> bool:
    """A converted musicnn folder (``musicnn_card.json`` + weights, e.g. ``models/msd-musicnn``) without a
    classifier card: a 50-tag tagger, not a genre classifier (``predict`` prints its tags)."""
    p = Path(path)
    return p.is_dir() and (p / mn.CARD_FILE).is_file() and not (p / CARD_NAME).exists()



def resolve_model_path(path: str | os.PathLike) -> Path:
    """A ``.keras`` file, or a folder holding ``best.keras`` (a run folder) or a single ``.keras`` file."""
    p = Path(path)
    if p.is_dir():
        if (p / "best.keras").exists():
            return p / "best.keras"
        found = sorted(p.glob("*.keras"))
        if len(found) == 1:
            return found[0]
        raise ModelError(f"{p} holds {'no' if not found else 'several'} .keras model files: name one")
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    return p



def model_files(path: str | os.PathLike, card: dict) -> list[tuple[Path, dict | None]]:
    """The model files a model folder's card describes, each with its own normalisation (None: the card's):
    the ``members`` of an ensemble, else ``model_file`` (when it is in the folder), else the folder's
    ``best.keras`` or single ``.keras`` file (:func:`resolve_model_path`). A ``.keras`` path given directly is
    that one model (with its member ``norm`` when the card lists it). Each file is checked to be a complete
    archive; a listed member that is missing is a :class:`ModelCardError`."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    members = card.get("members") or []
    if not p.is_dir():
        if not p.exists():
            raise ModelError(f"model file not found: {p}")
        norm = next((m.get("norm") for m in members if (folder / m["file"]).resolve() == p.resolve()), None)
        files = [(p, norm)]
    elif members:
        files = [(folder / m["file"], m.get("norm")) for m in members]
        for f, _ in files:
            if not f.is_file():
                raise ModelCardError(f"model card {folder / CARD_NAME} lists the member {f.name}, which is not in "
                                     f"{folder}")
    else:
        mf = card.get("model_file")
        files = [(folder / mf, None) if mf and (folder / mf).is_file() else (resolve_model_path(folder), None)]
    for f, _ in files:
        check_model_file(f)  # truncated / damaged: "unreadable", not "not found"
    return files



def embedding_weights(folder: str | os.PathLike, card: dict) -> Path | None:
    """The musicnn weights file (``.npz``) a card's ``embedding`` names in ``folder``; None for a card without
    ``embedding``; a :class:`ModelCardError` when the file is not there."""
    emb = card.get("embedding")
    if emb is None:
        return None
    folder = Path(folder)
    path = folder / emb["weights"]
    if not path.is_file():
        raise ModelCardError(f"model card {folder / CARD_NAME} names the musicnn weights {emb['weights']}, which are "
                             f"not in {folder}")
    return path
