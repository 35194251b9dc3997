"""musicnn's configuration: the input representation's constants, the two networks' tags, where the weights
live, the citation and licence (the original's ``musicnn/configuration.py``), and :class:`MusicnnError`."""
from __future__ import annotations

from pathlib import Path

from core.errors import GenreLabError

SR = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s
PATCH_SECONDS = 3.0
EMBEDDING_DIM = 200
BN_EPSILON = 1e-3

MODELS = ("MSD_musicnn", "MTT_musicnn")

MTT_LABELS = ['guitar', 'classical', 'slow', 'techno', 'strings', 'drums', 'electronic', 'rock', 'fast',
              'piano', 'ambient', 'beat', 'violin', 'vocal', 'synth', 'female', 'indian', 'opera', 'male',
              'singing', 'vocals', 'no vocals', 'harpsichord', 'loud', 'quiet', 'flute', 'woman', 'male vocal',
              'no vocal', 'pop', 'soft', 'sitar', 'solo', 'man', 'classic', 'choir', 'voice', 'new age',
              'dance', 'male voice', 'female vocal', 'beats', 'harp', 'cello', 'no voice', 'weird', 'country',
              'metal', 'female voice', 'choral']
MSD_LABELS = ['rock', 'pop', 'alternative', 'indie', 'electronic', 'female vocalists', 'dance', '00s',
              'alternative rock', 'jazz', 'beautiful', 'metal', 'chillout', 'male vocalists', 'classic rock',
              'soul', 'indie rock', 'Mellow', 'electronica', '80s', 'folk', '90s', 'chill', 'instrumental',
              'punk', 'oldies', 'blues', 'hard rock', 'ambient', 'acoustic', 'experimental', 'female vocalist',
              'guitar', 'Hip-Hop', '70s', 'party', 'country', 'easy listening', 'sexy', 'catchy', 'funk',
              'electro', 'heavy metal', 'Progressive rock', '60s', 'rnb', 'indie pop', 'sad', 'House', 'happy']
LABELS = {"MSD_musicnn": MSD_LABELS, "MTT_musicnn": MTT_LABELS}

CITATION = ("Pons, J. and Serra, X. (2019). musicnn: pre-trained convolutional neural networks for music audio "
            "tagging. ISMIR 2019 late-breaking/demo. arXiv:1909.06654")
LICENCE = ("ISC (musicnn 0.1.0 wheel, musicnn-0.1.0.dist-info/LICENSE.md): Copyright (c) Music Technology Group, "
           "Universitat Pompeu Fabra 2019. Code developed by Jordi Pons. Permission to use, copy, modify, and/or "
           "distribute this software for any purpose with or without fee is hereby granted, provided that the "
           "above copyright notice and this permission notice appear in all copies. THE SOFTWARE IS PROVIDED "
           "\"AS IS\" AND THE AUTHOR DISCLAIMS ALL WARRANTIES ...")
TRAINING_DATA = {
    "MSD_musicnn": "Million Song Dataset (Last.fm top-50 tags), ~200k training tracks",
    "MTT_musicnn": "MagnaTagATune (top-50 tags), ~19k training clips",
}
WEIGHTS_FILE = "musicnn.weights.npz"
CARD_FILE = "musicnn_card.json"  # not model_card.json: a tagger, not one of the classifiers the demo lists

#: the input representation, as stored in every card
INPUT_PARAMS = {
    "sample_rate": SR, "n_fft": N_FFT, "hop_length": HOP, "n_mels": N_MELS, "window": "hann (periodic)",
    "center": True, "pad_mode": "reflect", "power": 2.0, "mel_scale": "slaney", "mel_norm": "slaney",
    "fmin": 0.0, "fmax": SR / 2, "dtype_before_log": "float16", "compression": "log10(10000 x + 1)",
    "patch_frames": PATCH_FRAMES, "patch_seconds": PATCH_SECONDS,
}


class MusicnnError(GenreLabError, ValueError):
    """A musicnn input, weights file or wheel that cannot be used; the message says which and why (also a
    ``ValueError``, which callers of the front end and of :func:`core.musicnn.network.set_weights` catch)."""


def default_model_dir() -> Path:
    """The shipped converted MSD_musicnn (``models/msd-musicnn``)."""
    return Path(__file__).resolve().parents[2] / "models" / "msd-musicnn"

