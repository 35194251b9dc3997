"""The data home: where sources, datasets, models, experiments and jobs live, and what is there.

Data home (``$GENRELAB_HOME``, else ``./data`` at the repository root)::

    HOME/
      sources/<name>/          audio folders: extracted zips, GTZAN (sources/gtzan/genres), Emotify
      datasets/<name>/         built datasets (core.dataset.build_dataset)
      experiments/             the experiment store (core.store)
      models/<name>/           models you trained or copied here (model file + model_card.json)
      jobs/<name>/             background job folders (core.jobs)
      uploads/                 (reserved)

Shipped models live in ``models/<name>/`` at the repository root, in the layout that
:class:`core.predictor.Predictor` loads (a ``.keras`` file with ``model_card.json`` beside it).
Nothing here imports Streamlit or TensorFlow.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from core.utils import read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
HOME_ENV = "GENRELAB_HOME"


# ---------------------------------------------------------------------------------------------------------
# where things live
# ---------------------------------------------------------------------------------------------------------
def data_home() -> Path:
    """``$GENRELAB_HOME`` if set, else ``<repo>/data`` (gitignored)."""
    env = os.environ.get(HOME_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data"


def home_dir(kind: str, home: Path | None = None) -> Path:
    """``HOME/<kind>`` for kind in sources, datasets, models, jobs, experiments (not created)."""
    if kind not in ("sources", "datasets", "models", "jobs", "experiments", "uploads"):
        raise ValueError(f"unknown data-home folder {kind!r}")
    return (home or data_home()) / kind


def safe_name(text: str, default: str = "dataset") -> str:
    """A folder name from free text: letters, digits, ``-`` and ``_`` only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", text.strip()).strip("-_")
    return name[:60] or default


def unique_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3`` ... whichever does not exist yet."""
    p = parent / name
    i = 2
    while p.exists():
        p = parent / f"{name}-{i}"
        i += 1
    return p


# ---------------------------------------------------------------------------------------------------------
# what is there
# ---------------------------------------------------------------------------------------------------------
def _count_audio(folder: Path) -> dict[str, int]:
    """``{class folder: audio files under it}`` for the visible sub-folders of ``folder`` that hold audio."""
    from core.archives import count_audio

    out: dict[str, int] = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name != "__MACOSX":
            n = count_audio(child)
            if n:
                out[child.name] = n
    return out


def describe_source(folder: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "classes": {class: n_audio_files}, "n_files", "ok", "message"}`` for a class-folder tree."""
    p = Path(folder).expanduser()
    info: dict[str, Any] = {"path": str(p), "classes": {}, "n_files": 0, "ok": False, "message": ""}
    if not str(folder).strip():
        info["message"] = "enter the path of a folder"
    elif not p.exists():
        info["message"] = f"folder not found: {p}"
    elif not p.is_dir():
        info["message"] = f"not a folder: {p}"
    else:
        try:
            classes = _count_audio(p)
        except OSError as exc:
            info["message"] = f"cannot read {p}: {exc.strerror or exc}"
            return info
        info["classes"], info["n_files"] = classes, sum(classes.values())
        if len(classes) < 2:
            info["message"] = ("need one sub-folder per class with audio files inside (at least two classes), "
                               f"found {len(classes)} with audio")
        else:
            info["ok"] = True
            info["message"] = f"{len(classes)} classes, {info['n_files']} audio files"
    return info


def _subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return [c for c in sorted(folder.iterdir()) if c.is_dir() and not c.name.startswith(".")]


def list_sources(home: Path | None = None) -> list[dict[str, Any]]:
    """Audio folders under ``HOME/sources`` usable as a build source (GTZAN's ``genres`` folder included)."""
    root = home_dir("sources", home)
    out = []
    for child in _subfolders(root):
        for c in [child, *_subfolders(child)]:
            d = describe_source(c)
            if d["ok"]:
                d["name"] = c.relative_to(root).as_posix()
                out.append(d)
                break
    return out


def list_datasets(home: Path | None = None) -> list[dict[str, Any]]:
    """Dataset folders under ``HOME/datasets``: ``{"name", "path", "complete", "card"}`` (newest first)."""
    root = home_dir("datasets", home)
    out = []
    for child in _subfolders(root):
        card_path = child / "card.json"
        card = None
        if card_path.is_file():
            try:
                card = read_json(card_path)
            except (ValueError, OSError):
                card = None
        unfinished = any(child.glob(".work-*"))
        if card is None and not unfinished:
            continue
        out.append({"name": child.name, "path": str(child), "complete": card is not None, "card": card,
                    "mtime": card_path.stat().st_mtime if card is not None else child.stat().st_mtime})
    out.sort(key=lambda d: (-d["mtime"], d["name"]))
    return out


def model_dirs(home: Path | None = None) -> list[tuple[str, Path]]:
    """Where model folders are looked for: ``("shipped", <repo>/models)`` and ``("local", HOME/models)``."""
    return [("shipped", REPO_ROOT / "models"), ("local", home_dir("models", home))]


def list_model_folders(home: Path | None = None) -> list[dict[str, Any]]:
    """Model folders (a ``.keras`` file + ``model_card.json``): ``{"name", "path", "origin", "card", "modified"}``
    (``modified``: the model file's time, ``YYYY-MM-DD HH:MM``: tells same-named folders apart).

    Folders whose card or model file is unusable (unreadable, against the card schema, truncated ``.keras``)
    are listed with ``"error"`` (which file and why) and ``"card": None``, so the page lists them as unusable
    and the other models keep working; nothing a folder holds can make this listing fail.
    """
    from core.model_card import CARD_NAME, ModelError, embedding_weights, model_files, read_model_card

    out = []
    seen: set[str] = set()
    for origin, root in model_dirs(home):
        for child in _subfolders(root):
            if not (child / CARD_NAME).exists():
                continue
            key = str(child.resolve())
            if key in seen:
                continue
            seen.add(key)
            rec: dict[str, Any] = {"name": child.name, "path": str(child), "origin": origin, "card": None}
            try:
                card = read_model_card(child / CARD_NAME)
                files = model_files(child, card)  # a truncated .keras, a missing member: listed as unusable
                embedding_weights(child, card)
                rec["model_file"] = str(files[0][0])
                rec["card"] = card
                rec["modified"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(files[0][0].stat().st_mtime))
            except ModelError as exc:
                rec["error"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one odd folder must not take the page down
                rec["error"] = f"{child} cannot be read: {type(exc).__name__}: {exc}"[:300]
            out.append(rec)
    return out


def list_tagger_folders(home: Path | None = None) -> list[dict[str, Any]]:
    """Converted musicnn folders (``musicnn_card.json``, no ``model_card.json``: e.g. ``models/msd-musicnn``):
    taggers (50 tags), not genre classifiers, so the demo does not list them as models; ``{"name", "path",
    "origin", "model"}`` so that it can say why."""
    from core import musicnn as mn
    from core.model_card import is_tagger_folder

    out = []
    for origin, root in model_dirs(home):
        for child in _subfolders(root):
            if is_tagger_folder(child):
                try:
                    model = read_json(child / mn.CARD_FILE).get("model")
                except (ValueError, OSError, AttributeError):
                    model = None
                out.append({"name": child.name, "path": str(child), "origin": origin, "model": model})
    return out


# ---------------------------------------------------------------------------------------------------------
# telling models apart
# ---------------------------------------------------------------------------------------------------------
#: a model within this many points of chance (1 / classes) on its test tracks counts as "at chance"
CHANCE_MARGIN = 0.05


def at_chance(accuracy: float | None, n_classes: int | None) -> bool:
    """True when a measured accuracy is at most chance level (1 / classes) plus :data:`CHANCE_MARGIN`; False
    when either is unknown."""
    if accuracy is None or not n_classes or accuracy != accuracy:
        return False
    return float(accuracy) <= 1.0 / int(n_classes) + CHANCE_MARGIN


def distinct_labels(models: list[dict[str, Any]]) -> None:
    """Make the ``label`` of every model unique: labels that two models share gain, in turn, what tells them
    apart (``details``: e.g. the folder, the data set, the kind, seed / fold, the date), until none is shared."""
    for step in range(1, 1 + max((len(m.get("details") or []) for m in models), default=0)):
        seen: dict[str, int] = {}
        for m in models:
            seen[m["label"]] = seen.get(m["label"], 0) + 1
        dup = {k for k, n in seen.items() if n > 1}
        if not dup:
            return
        for m in models:
            extra = (m.get("details") or [])[step - 1:step]
            if m["label"] in dup and extra and extra[0] not in m["label"]:
                m["label"] = f"{m['label']} · {extra[0]}"
    seen = {}
    for m in models:  # still equal (same folder name, same minute ...): number them
        n = seen.get(m["label"], 0) + 1
        seen[m["label"]] = n
        if n > 1:
            m["label"] = f"{m['label']} ({n})"
