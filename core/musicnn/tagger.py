"""musicnn as a tagger (the original's ``musicnn/tagger.py`` and ``extractor``): the top tags of audio files
(``python -m core musicnn-tags``, run in NumPy by :mod:`core.musicnn_numpy`: no TensorFlow), and the Keras
reference :func:`predict_patches` / :func:`tag_audio`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.musicnn.config import CARD_FILE, EMBEDDING_DIM, PATCH_FRAMES, default_model_dir
from core.musicnn.frontend import log_mel, patches


def predict_patches(model, x: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run a musicnn model on ``(n, 187, 96)`` patches in batches; ``{"taggram", "penultimate"}`` as NumPy."""
    outs: dict[str, list] = {"taggram": [], "penultimate": []}
    for a in range(0, len(x), batch_size):
        o = model.predict_on_batch(x[a:a + batch_size])  # compiled (tf.function on TensorFlow): ~1.7x eager
        for k in outs:
            outs[k].append(np.asarray(o[k]))
    if not outs["taggram"]:
        return {"taggram": np.zeros((0, 50), np.float32), "penultimate": np.zeros((0, EMBEDDING_DIM), np.float32)}
    return {k: np.concatenate(v, axis=0) for k, v in outs.items()}


def tag_audio(model, y: np.ndarray, labels: list[str], hop_frames: int = PATCH_FRAMES, top: int = 5):
    """musicnn's ``extractor`` on a 16 kHz signal: taggram, penultimate and the top tags by mean likelihood."""
    x, _ = patches(log_mel(y), hop_frames)
    out = predict_patches(model, x)
    mean = out["taggram"].mean(axis=0)
    order = np.argsort(-mean)[:top]
    return out, [(labels[i], float(mean[i])) for i in order]


def _cmd_tag(args) -> int:
    """musicnn's extractor (patches every 187 frames, mean likelihood per tag), run in NumPy
    (:mod:`core.musicnn_numpy`: no TensorFlow)."""
    from core import musicnn_numpy as mnp

    net = mnp.network(args.model_dir)
    labels = json.loads((Path(args.model_dir) / CARD_FILE).read_text())["labels"]
    for f in args.files:
        mean = mnp.file_window_features(f, ["taggram"], weights=net, hop_frames=PATCH_FRAMES).features["taggram"].mean(0)
        print(f"{f}: " + ", ".join(f"{labels[i]} {mean[i]:.2f}" for i in np.argsort(-mean)[:args.top]))
    return 0


def register_cli(sub) -> None:
    t = sub.add_parser("musicnn-tags", help="musicnn's top tags of audio files (converted model, run in NumPy)")
    t.add_argument("files", nargs="+")
    t.add_argument("--model-dir", default=str(default_model_dir()))
    t.add_argument("--top", type=int, default=5)
    t.set_defaults(func=_cmd_tag)
