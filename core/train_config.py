"""Every number of a training run (``TrainConfig``) and the training error, without importing Keras: the
dashboard and the command line read presets and run configs through this module, and Keras (with TensorFlow
behind it) loads only when a model is built or trained (``core.train``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from core.errors import GenreLabError
from core.kinds import KIND_TABLE

#: the names of core.models.ARCHS (here so that validating a config imports no Keras; a test keeps them equal)
ARCH_NAMES = ("standard", "lean", "keras_bn")
#: every model kind (the table of core.kinds: core.models.BUILDERS' snippet, full, linear and the musicnn head of
#: core.embeddings), with the name each kind's saved model carries; Keras-free, so that checking a model card
#: imports no Keras (a test keeps them equal to the registry and the builders)
KIND_MODEL_NAMES = {k.key: k.model_name for k in KIND_TABLE}
KINDS = tuple(KIND_MODEL_NAMES)


class TrainError(GenreLabError):
    """A problem with a run folder, its dataset or its settings; the message is for the user."""


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every number of a training run. Defaults follow the article (Adam 1e-4, batch 32, min-max scaling)."""

    lr: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 10  # early stopping on val_loss (best weights restored = best.keras)
    min_delta: float = 0.0  # an improvement must lower val_loss by more than this
    lr_factor: float = 0.5  # reduce-LR-on-plateau factor
    lr_patience: int = 3  # ... after this many epochs without improvement
    min_lr: float = 1e-6
    norm_method: str = "minmax"  # "minmax" (article) or "standard"
    dropout: float = 0.1
    shuffle: bool = True
    max_train_batches: int = 0  # 0 = all; > 0 caps batches per epoch (smoke runs)
    workers: int = 1  # PyDataset worker threads (1 = load in the training thread)
    jit_compile: bool = False  # XLA; measured slower than oneDNN for this CRNN on CPU
    precision: str = "float32"  # Keras dtype policy: "float32" or "mixed_bfloat16"
    # --- added after state version 1; left out of to_dict() at their defaults so earlier run ids hold
    monitor: str = "val_loss"  # "val_loss" (article), "val_accuracy" or "val_track_accuracy"
    schedule: str = "plateau"  # "plateau" (reduce-LR-on-plateau, article) or "cosine" (warm-up + cosine decay)
    warmup_epochs: float = 1.0  # linear warm-up of the cosine schedule, in epochs
    label_smoothing: float = 0.0
    time_masks: int = 0  # SpecAugment: number of time masks per training sample ...
    time_mask_frames: int = 20  # ... each up to this many frames wide
    freq_masks: int = 0  # ... and frequency masks
    freq_mask_bins: int = 12  # ... each up to this many mel bands wide
    mixup: float = 0.0  # mixup Beta(alpha, alpha) parameter; 0 = off
    snippets_per_track: int = 0  # training snippets per track and epoch (0 = every snippet in the dataset)
    snippet_selection: str = "first"  # "first" (the same ones every epoch) or "random" (re-drawn every epoch)
    full_crop: str = "first"  # 30 s model: "first" 30 s, or "random" crop re-drawn every epoch
    arch: str = "standard"  # CRNN architecture (core.models.ARCHS): "standard", "lean" or "keras_bn"
    bn_recalibrate: int = 0  # after each epoch, re-estimate batch-norm statistics on this many training samples
    full_batch_size: int = 0  # batch size of the 30 s model (0 = batch_size): it has ~14x fewer samples per epoch

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1:
            raise TrainError("lr must be > 0, batch_size >= 1 and max_epochs >= 1")
        if self.patience < 1 or self.lr_patience < 1:
            raise TrainError("patience and lr_patience must be >= 1")
        if not 0 < self.lr_factor <= 1:
            raise TrainError("lr_factor must be in (0, 1]")
        if self.norm_method not in ("minmax", "standard"):
            raise TrainError("norm_method must be 'minmax' or 'standard'")
        if self.precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
            raise TrainError("precision must be float32, mixed_bfloat16 or mixed_float16")
        if self.monitor not in MONITORS:
            raise TrainError(f"monitor must be one of {', '.join(MONITORS)}")
        if self.schedule not in ("plateau", "cosine"):
            raise TrainError("schedule must be 'plateau' or 'cosine'")
        if not 0 <= self.label_smoothing < 1:
            raise TrainError("label_smoothing must be in [0, 1)")
        if min(self.time_masks, self.freq_masks, self.time_mask_frames, self.freq_mask_bins) < 0 or self.mixup < 0:
            raise TrainError("mask counts, mask widths and mixup must be >= 0")
        if self.warmup_epochs < 0:
            raise TrainError("warmup_epochs must be >= 0")
        if self.full_batch_size < 0:
            raise TrainError("full_batch_size must be >= 0 (0 = batch_size)")
        if self.bn_recalibrate < 0:
            raise TrainError("bn_recalibrate must be >= 0 (0 = off)")
        if self.snippets_per_track < 0:
            raise TrainError("snippets_per_track must be >= 0 (0 = all)")
        if self.snippet_selection not in ("first", "random"):
            raise TrainError("snippet_selection must be 'first' or 'random'")
        if self.full_crop not in ("first", "random"):
            raise TrainError("full_crop must be 'first' or 'random'")
        if self.arch not in ARCH_NAMES:
            raise TrainError(f"arch must be one of {', '.join(map(repr, ARCH_NAMES))}")

    def to_dict(self) -> dict[str, Any]:
        """Every setting; those added after state version 1 only when they differ from their default, so the
        run ids (a hash of this dict) of stores written before them stay valid."""
        d = asdict(self)
        for k in _V2_FIELDS:
            if d[k] == _V2_DEFAULTS[k]:
                d.pop(k)
        return d

    def full_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


MONITORS = ("val_loss", "val_accuracy", "val_track_accuracy")
_V2_FIELDS = ("monitor", "schedule", "warmup_epochs", "label_smoothing", "time_masks", "time_mask_frames",
              "freq_masks", "freq_mask_bins", "mixup", "snippets_per_track", "snippet_selection", "full_crop", "arch",
              "bn_recalibrate", "full_batch_size")
_V2_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.name in _V2_FIELDS}


#: settings that may change between a run's start and its resume (everything else must match)
RESUMABLE_CHANGES = frozenset({"max_epochs", "patience", "workers", "max_train_batches"})
