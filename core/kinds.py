"""The one table of model kinds: what each kind is called, how one of its runs trains, evaluates and writes its
card, how the dashboard labels and colours it, whether it may run as a remote task and which data it needs.

Every list of kinds reads this table: ``core.train_config.KINDS`` (model cards are checked against it), the
experiment engine (``core.experiment``: which data to prepare, the order within a seed, the most epochs),
one run (``core.runs``: trainer, evaluator, card writer), the executors (``core.runs``: ``remote``), the
``--models`` / ``--kind`` options of ``run-experiment``, ``reproduce`` and ``ship-model``, and the dashboard's
words and figures (``ui.text``: labels, table columns, headline bars; ``ui.charts``: colours and bands; the
experiment page's model choices).

No Keras, no NumPy: the dashboard reads this module on every view. The functions a kind runs are named
``"module:function"`` and imported only when a run needs them (:func:`resolve`).

A new kind is one module holding its trainer, evaluator and card writer (the signatures of
:mod:`core.runs`) and one :class:`ModelKind` row in :data:`KIND_TABLE` (docs/ARCHITECTURE.md, "How to add
a model kind").
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from core.errors import GenreLabError

#: what a kind trains on (``ModelKind.needs``): the snippet dataset itself; its full-clip twin
#: (``DATASET-full``, built from the same tracks and split); the snippet dataset with cached pretrained
#: embeddings (``core.embeddings.embed_dataset``, folded with the dataset under cross-validation)
NEEDS = ("snippets", "full_twin", "embeddings")
#: ``ModelKind.colour``: the article's models in the lab's colours; the others drawn lighter, on a shaded band
COLOURS = ("lab", "reference")


class UnknownKind(GenreLabError, KeyError):
    """A model kind the table does not have; the message names the known ones. Also a ``KeyError`` (a lookup
    that failed)."""

    __str__ = Exception.__str__  # the message as it is (KeyError quotes it)


@dataclass(frozen=True)
class ModelKind:
    """One model kind. ``trainer``, ``evaluator`` and ``card_writer`` are ``"module:function"`` names
    (:func:`resolve`), with the signatures of ``core.runs.train_crnn``, ``core.runs.evaluate_windows`` and
    ``core.runs.write_crnn_card``; ``card_writer`` None: the trainer writes the card itself."""

    key: str  # runs.kind in the store, kind in a model card, --models in the CLI
    model_name: str  # the name its saved Keras model carries (core.predictor checks a card against it)
    label: str  # the dashboard's name ("snippet CRNN")
    description: str  # in a line (the demo page's model card)
    short: str  # before a level in table columns and figure labels ("CRNN segment")
    levels: tuple[str, ...]  # the evaluation levels of the headline, the per-seed table and reproduce's figure
    headline: tuple[str, ...]  # the headline figure's bar label of each level (same order)
    compared_as: tuple[str, ...]  # what the results heading calls it ("segment vs track vs 30 s ...")
    colour: str  # "lab" (the article's CRNNs) or "reference" (lighter, on a shaded band of its own)
    needs: str  # one of NEEDS
    remote: bool  # may run as a remote task (Ray); False: trains in the driver (seconds on cached data)
    cost: int  # order within a seed: the cheap kinds first (their results, and the time estimates, come early)
    trainer: str
    evaluator: str
    card_writer: str | None
    epochs: str = "config"  # the most epochs a run trains: "config" (TrainConfig.max_epochs), a number, or a
    #                         "module:NAME" constant
    uses_config: bool = True  # trained with the run's TrainConfig (the experiment's settings describe it)
    band: str = ""  # the shaded band's label in the headline figure (colour "reference")
    compare_first: bool = False  # in a paired comparison with the snippet CRNN, named first (expected to beat it)
    aggregations: bool = False  # the Aggregation tab compares its sum / vote / log-prob track levels
    shippable: bool = True  # ship-model / ship-ensemble copy a run of it into a model folder

    @property
    def track_level(self) -> str:
        """The level its track accuracy is read at: ``track_sum``, or ``full`` for a one-look model."""
        return "track_sum" if "track_sum" in self.levels else self.levels[-1]

    def max_epochs(self, config: Any) -> int:
        """The most epochs one of its runs trains with ``config`` (a ``TrainConfig``)."""
        if self.epochs == "config":
            return int(config.max_epochs)
        if isinstance(self.epochs, int) or str(self.epochs).isdigit():
            return int(self.epochs)
        return int(resolve(self.epochs))


KIND_TABLE: tuple[ModelKind, ...] = (
    ModelKind(
        key="snippet", model_name="snippet_crnn", label="snippet CRNN",
        description="snippet CRNN (votes over windows)", short="CRNN", levels=("segment", "track_sum"),
        headline=("segment level<br>(each 3 s snippet)", "track level<br>(sum of snippet votes)"),
        compared_as=("segment", "track"), colour="lab", needs="snippets", remote=True, cost=2,
        trainer="core.runs:train_crnn", evaluator="core.runs:evaluate_windows", card_writer="core.runs:write_crnn_card",
        aggregations=True),
    ModelKind(
        key="full", model_name="full_crnn", label="30 s CRNN", description="30 s CRNN (one look at the clip)",
        short="30 s CRNN", levels=("full",), headline=("30 s model<br>(whole clip at once)",), compared_as=("30 s",),
        colour="lab", needs="full_twin", remote=True, cost=3, trainer="core.runs:train_crnn",
        evaluator="core.runs:evaluate_windows", card_writer="core.runs:write_crnn_card"),
    ModelKind(
        key="linear", model_name="linear_baseline", label="linear baseline",
        description="linear baseline: mel-band mean/std + softmax regression (votes over windows)", short="linear",
        levels=("segment", "track_sum"),
        headline=("linear baseline:<br>segment level", "linear baseline:<br>track level (sum)"),
        compared_as=("linear baseline",), colour="reference", needs="snippets", remote=True, cost=0,
        trainer="core.runs:train_linear_run", evaluator="core.runs:evaluate_windows",
        card_writer="core.runs:write_crnn_card", epochs="1", uses_config=False,
        band="<b>linear baseline</b> (reference)", aggregations=True),
    ModelKind(
        key="musicnn", model_name="musicnn_classifier", label="musicnn embedding + head",
        description="pretrained musicnn embeddings + a small head (votes over windows)", short="musicnn",
        levels=("segment", "track_sum"),
        headline=("musicnn + head:<br>segment level", "musicnn + head:<br>track level (sum)"),
        compared_as=("musicnn",), colour="reference", needs="embeddings", remote=False, cost=1,
        trainer="core.runs:train_musicnn_head", evaluator="core.runs:evaluate_embeddings", card_writer=None,
        epochs="core.embeddings:HEAD_EPOCHS", uses_config=False, band="<b>pretrained musicnn</b> + head",
        compare_first=True, shippable=False),
)


def kinds() -> tuple[ModelKind, ...]:
    """The table (a function, so that a test can put a kind in with ``monkeypatch.setattr(core.kinds,
    "KIND_TABLE", ...)`` and every reader sees it)."""
    return KIND_TABLE


def kind_keys() -> tuple[str, ...]:
    return tuple(k.key for k in kinds())


def get_kind(key: str) -> ModelKind:
    """The row of ``key``; :class:`UnknownKind` naming the known kinds."""
    for k in kinds():
        if k.key == key:
            return k
    raise UnknownKind(f"unknown model kind {key!r} (one of {', '.join(kind_keys())})")


def track_level_of(key: str) -> str:
    """The level a kind's track accuracy is read at (``track_sum`` for a kind the table does not know)."""
    try:
        return get_kind(key).track_level
    except UnknownKind:
        return "track_sum"


def cheap_first(keys) -> list[str]:
    """``keys`` in the order a seed trains them: by ``cost``, unknown ones last."""
    cost = {k.key: k.cost for k in kinds()}
    return sorted(keys, key=lambda k: cost.get(k, len(cost)))


def models_help() -> str:
    """``snippet, full, linear and musicnn`` (the ``--models`` help texts and messages)."""
    keys = kind_keys()
    return ", ".join(keys[:-1]) + " and " + keys[-1] if len(keys) > 1 else "".join(keys)


def resolve(name: str) -> Any:
    """``"module:attribute"`` -> the attribute (the module imported now)."""
    module, _, attr = name.partition(":")
    return getattr(import_module(module), attr)
