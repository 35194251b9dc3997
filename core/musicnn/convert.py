"""``python -m core convert-musicnn``: musicnn's TF1 checkpoints from the ``musicnn`` 0.1.0 wheel (PyPI) into
this package's layout (``musicnn.weights.npz`` + ``musicnn_card.json`` + ``MODEL_CARD.md``).

The converter needs TensorFlow (its checkpoint reader) and nothing of musicnn's own code. One detail: TF
concatenates max and mean pooling per channel ``[max_0, mean_0, max_1, ...]``; :func:`core.musicnn.network.build_musicnn`
concatenates the two pooled vectors ``[max_0..752, mean_0..752]``, so the weights of the 1506-wide batch norm and of
the first dense layer are permuted to match (:func:`_pool_permutation`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from core.musicnn.config import (CARD_FILE, CITATION, EMBEDDING_DIM, INPUT_PARAMS, LABELS, MODELS, N_MELS,
                                 PATCH_FRAMES, TRAINING_DATA, WEIGHTS_FILE, MusicnnError)
from core.musicnn.network import BN_PARTS, CHECKPOINT_MAP, count_macs, load_musicnn, save_weights_npz


def _pool_permutation(n: int = 1506) -> np.ndarray:
    """TF order ``[max_0, mean_0, max_1, mean_1, ...]`` -> ours ``[max_0.., mean_0..]``: ours[j] = tf[perm[j]]."""
    return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """Every model variable (not the Adam slots) of a TF1 checkpoint, read with TensorFlow's reader."""
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        if "Adam" in name or name.endswith("_power"):
            continue
        out[name] = np.asarray(reader.get_tensor(name))
    return out


def convert_variables(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF1 musicnn variables -> ``{"<keras layer>/<weight>": array}`` in this module's layout."""
    perm = _pool_permutation()
    out: dict[str, np.ndarray] = {}
    for layer, scope in CHECKPOINT_MAP.items():
        if layer.endswith("_conv") or layer in ("penultimate_dense", "tag_logits"):
            kernel = variables[f"{scope}/kernel"].astype(np.float32)
            if layer.startswith("midend"):  # conv2d [7, C, 1, F] over a (T, C, 1) map == Conv1D [7, C, F]
                kernel = kernel[:, :, 0, :]
            if layer == "penultimate_dense":
                kernel = kernel[perm]
            out[f"{layer}/kernel"] = kernel
            out[f"{layer}/bias"] = variables[f"{scope}/bias"].astype(np.float32)
        else:
            for part in BN_PARTS:
                v = variables[f"{scope}/{part}"].astype(np.float32)
                out[f"{layer}/{part}"] = v[perm] if layer == "pool_bn" else v
    return out


def find_wheel_checkpoint(wheel: str | os.PathLike, model: str, workdir: str | os.PathLike) -> str:
    """Extract ``musicnn/<model>/`` from the wheel into ``workdir``; return the checkpoint prefix."""
    if model not in MODELS:
        raise MusicnnError(f"unknown model {model!r} (use one of {', '.join(MODELS)})")
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(f"musicnn/{model}/")]
        if not names:
            raise MusicnnError(f"{wheel} has no musicnn/{model}/ checkpoint")
        lic = [n for n in zf.namelist() if n.endswith("LICENSE.md")]
        zf.extractall(workdir, members=names + lic)
    return os.path.join(workdir, "musicnn", model) + "/"  # the checkpoint's prefix is the folder itself


def wheel_licence(wheel: str | os.PathLike) -> str:
    with zipfile.ZipFile(wheel) as zf:
        lic = [n for n in zf.namelist() if n.endswith("LICENSE.md")]
        return zf.read(lic[0]).decode("utf-8") if lic else ""


def download_wheel(dest: str | os.PathLike) -> Path:
    """``pip download musicnn==0.1.0 --no-deps -d dest`` (the package index's ordinary client)."""
    import subprocess

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "musicnn==0.1.0", "--no-deps", "--only-binary", ":all:",
                    "-d", str(dest)], check=True)
    wheels = sorted(dest.glob("musicnn-0.1.0-*.whl"))
    if not wheels:
        raise MusicnnError("pip download gave no musicnn 0.1.0 wheel")
    return wheels[0]


def convert(wheel: str | os.PathLike, out_dir: str | os.PathLike, model: str = "MSD_musicnn",
            check: bool = True) -> dict:
    """Read ``model``'s TF1 checkpoint from the musicnn 0.1.0 wheel and write ``out_dir`` (weights + card)."""
    import hashlib

    wheel = Path(wheel)
    out_dir = Path(out_dir)
    licence = wheel_licence(wheel)
    if "Permission to use, copy, modify, and/or distribute this software for any purpose" not in licence:
        raise MusicnnError("the wheel's LICENSE.md is not the expected ISC licence: check it before converting")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = find_wheel_checkpoint(wheel, model, tmp)
        variables = read_checkpoint(prefix)
        train_cfg = json.loads(Path(prefix, "config.json").read_text()) if Path(prefix, "config.json").exists() else {}
    weights = convert_variables(variables)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights_npz(out_dir / WEIGHTS_FILE, weights)
    n_params = int(sum(v.size for v in weights.values()))
    name = model.lower().replace("_", "-")
    card = {
        "format": 1,
        "kind": "musicnn-tagger",
        "name": name,
        "model": model,
        "description": f"musicnn ({model}) converted to Keras 3 from the TF1 checkpoint of the musicnn 0.1.0 wheel: "
                       f"50 tags; its 200-d penultimate layer is Genre Lab's music embedding.",
        "labels": LABELS[model],
        "weights_file": WEIGHTS_FILE,
        "n_params": n_params,
        "macs_per_patch": count_macs(),
        "input": dict(INPUT_PARAMS),
        "embedding": {"layer": "penultimate", "dim": EMBEDDING_DIM,
                      "what": "batch-normalised output of the 200-unit dense layer (musicnn's 'penultimate')"},
        "source": {"package": "musicnn==0.1.0 (PyPI wheel)", "wheel": wheel.name,
                   "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                   "checkpoint": f"musicnn/{model}/", "upstream": "https://github.com/jordipons/musicnn",
                   "training": TRAINING_DATA[model],
                   "training_config": {k: train_cfg.get(k) for k in ("n_frames", "pre_processing", "pad_short",
                                                                      "epochs", "batch_size", "learning_rate",
                                                                      "optimizer")} if train_cfg else {}},
        "licence": {"name": "ISC", "checked": "musicnn-0.1.0.dist-info/LICENSE.md read from the wheel at conversion: "
                    "ISC, permits use, copying, modification and redistribution with the copyright and permission "
                    "notice kept (reproduced in full in MODEL_CARD.md)", "text": licence.strip()},
        "citation": CITATION,
        "conversion": {"tool": "python -m core convert-musicnn", "weights_layout": "Keras layer/weight names of "
                       "core.musicnn.build_musicnn; pool_bn and penultimate_dense rows permuted from TF's "
                       "interleaved [max, mean] order", "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    from core.utils import atomic_write_json

    atomic_write_json(out_dir / CARD_FILE, card)
    (out_dir / "MODEL_CARD.md").write_text(model_card_md(card))
    if check:
        m, _ = load_musicnn(out_dir)
        out = m.predict(np.zeros((1, PATCH_FRAMES, N_MELS), np.float32), verbose=0)
        if not np.all(np.isfinite(out["taggram"])):
            raise MusicnnError("converted model gives non-finite outputs")
    return card


def model_card_md(card: dict) -> str:
    inp = card["input"]
    return f"""# {card['name']}: musicnn ({card['model']}) in Keras 3

{card['description']}

* **Source**: `{card['source']['package']}`, checkpoint `{card['source']['checkpoint']}` of
  `{card['source']['wheel']}` (sha256 `{card['source']['wheel_sha256']}`); upstream {card['source']['upstream']}.
  Trained by its authors on the {card['source']['training']}.
* **Converted with** `python -m core convert-musicnn --wheel {card['source']['wheel']} OUT --model {card['model']}`
  (TensorFlow's checkpoint reader; weights in `{card['weights_file']}`, {card['n_params']:,} parameters,
  float32; the network is `core.musicnn.build_musicnn`). {card['macs_per_patch'] / 1e9:.2f} G multiply-accumulates
  per 3 s patch.
* **Port checked** against the original network (musicnn 0.1.0 on TensorFlow 1.15.5 in a scratch environment):
  `tests/test_musicnn.py` on `tests/fixtures/musicnn_msd_reference.npz`; see `docs/musicnn.md`.
* **Input**: mono audio at {inp['sample_rate']} Hz; log-mel with n_fft {inp['n_fft']}, hop {inp['hop_length']},
  {inp['n_mels']} mel bands (Slaney scale and normalisation, 0 to {inp['fmax']:.0f} Hz), centred frames with reflect
  padding, periodic Hann window, power 2, cast to float16, `log10(10000 x + 1)`; patches of {inp['patch_frames']}
  frames ({inp['patch_seconds']:.0f} s). `core.musicnn.log_mel` computes it in NumPy.
* **Outputs**: 50 sigmoid tags (`labels` in `musicnn_card.json`) and the 200-d `penultimate` layer (the embedding).
* **Citation**: {card['citation']}

## Licence (checked)

The wheel's `musicnn-0.1.0.dist-info/LICENSE.md` is the ISC licence; it permits use, copying, modification and
distribution of the software (the package ships the weights) for any purpose, provided the copyright notice and
this permission notice appear in all copies. Both are reproduced here:

```
{card['licence']['text']}
```
"""


def _cmd_convert(args) -> int:
    if bool(args.wheel) == bool(args.download):
        print("give exactly one of --wheel PATH or --download", file=sys.stderr)
        return 2
    tmp = None
    try:
        if args.download:
            tmp = tempfile.mkdtemp(prefix="musicnn-wheel-")
            wheel = download_wheel(tmp)
        else:
            wheel = Path(args.wheel)
            if not wheel.exists():
                print(f"no such wheel: {wheel}", file=sys.stderr)
                return 2
        card = convert(wheel, args.out_dir, args.model)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    size = (Path(args.out_dir) / WEIGHTS_FILE).stat().st_size
    print(f"{card['model']} -> {args.out_dir} ({card['n_params']:,} parameters, {size / 1e6:.2f} MB weights)")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("convert-musicnn", help="convert musicnn's TF1 checkpoint (musicnn 0.1.0 wheel) to Keras 3",
                       description="Read MSD_musicnn or MTT_musicnn from the musicnn 0.1.0 wheel with TensorFlow's "
                                   "checkpoint reader and write OUT_DIR: musicnn.weights.npz, musicnn_card.json, "
                                   "MODEL_CARD.md (source, ISC licence, citation, input parameters).")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--wheel", help="path of musicnn-0.1.0-py3-none-any.whl (pip download musicnn==0.1.0 --no-deps)")
    p.add_argument("--download", action="store_true", help="fetch the wheel with pip download first")
    p.add_argument("--model", default="MSD_musicnn", choices=MODELS)
    p.set_defaults(func=_cmd_convert)
