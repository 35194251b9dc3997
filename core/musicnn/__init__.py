"""musicnn (Pons & Serra 2019) in backend-neutral Keras 3, its log-mel front end in NumPy, the converter that
reads the original TF1 checkpoints from the ``musicnn`` 0.1.0 wheel, and a tagging command; split by concern as
the original package is:

* :mod:`core.musicnn.config`     constants, tags, weights file names, citation (the original's ``configuration.py``);
* :mod:`core.musicnn.frontend`   the NumPy log-mel and its 3 s patches (``extractor.py``'s ``batch_data``);
* :mod:`core.musicnn.network`    the Keras 3 network, its weights, the named features (``models.py``);
* :mod:`core.musicnn.inference`  the network rebuilt for fast Keras inference (fused branches, overlapping windows);
* :mod:`core.musicnn.convert`    ``python -m core convert-musicnn`` (TF1 checkpoint -> ``musicnn.weights.npz``);
* :mod:`core.musicnn.tagger`     ``python -m core musicnn-tags`` (``tagger.py``).

This package re-exports their public names (``from core import musicnn as mn``; ``mn.log_mel``,
``mn.build_musicnn``, ...). None of them imports Keras or TensorFlow at import time: the predictor and the demo
import this package without either. The NumPy forward pass is :mod:`core.musicnn_numpy`.

Pons, J. and Serra, X. (2019). *musicnn: pre-trained convolutional neural networks for music audio tagging.*
Late-breaking/demo session, ISMIR 2019. arXiv:1909.06654. Code and weights: https://github.com/jordipons/musicnn
(ISC licence, (c) Music Technology Group, Universitat Pompeu Fabra 2019). The graph below follows the wheel's
``musicnn/models.py`` (``build_musicnn``, ``frontend``, ``midend``, ``backend``); the front end follows its
``musicnn/extractor.py`` (``batch_data``) and ``musicnn/configuration.py``.

Input representation (:func:`log_mel`, exactly musicnn's ``batch_data`` librosa call)
    mono audio at **16 kHz**; ``librosa.feature.melspectrogram(y, sr=16000, hop_length=256, n_fft=512,
    n_mels=96)`` of librosa 0.7: centred frames with **reflect** padding, periodic Hann window, power 2,
    Slaney mel scale and Slaney (area) normalisation, 0 Hz to 8 kHz; then cast to **float16** (as musicnn
    does) and compressed with ``log10(10000 x + 1)``. Time first: ``(frames, 96)``; ``1 + len(y) // 256``
    frames.
Patches (:func:`patch_starts`)
    187 frames = 3 s (``librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1``); musicnn's
    extractor cuts them every 187 frames by default (no overlap).
Network (:func:`build_musicnn`), ``MSD_musicnn`` / ``MTT_musicnn``: 792k parameters, 50 sigmoid tags
    * input batch norm (one channel);
    * front end, "7774timbraltemporal": two **timbral** convolutions (204 filters of 7 frames x 38 and 7 x 67
      mel bands, i.e. 0.4 and 0.7 x 96; time zero-padded by 3, mel axis valid) and three **temporal**
      convolutions (51 filters of 128, 64 and 32 frames x 1 band, TF "same" padding), each ReLU -> batch
      norm -> max over the whole mel axis; concatenated: 561 channels per frame;
    * mid end: three 1D convolutions (64 filters, 7 frames, zero-padded by 3) with ReLU and batch norm, the
      2nd and 3rd with residual connections; the front end and the three mid-end outputs are concatenated
      ("dense" connections): 753 channels per frame;
    * back end: max and mean over time (1506), batch norm, dense 200 + ReLU, batch norm = **penultimate**
      (what musicnn's ``extractor`` returns as ``features['penultimate']``; 200-d, used as the embedding),
      dense 50 = tag logits, sigmoid = taggram. Dropout layers (0.5) are inference no-ops and left out;
      every batch norm runs in inference mode (moving statistics, epsilon 1e-3 as ``tf.layers``).
    One detail of the conversion: TF concatenates max and mean pooling per channel ``[max_0, mean_0, max_1,
    ...]``; here the two pooled vectors are concatenated ``[max_0..752, mean_0..752]``, and the converter
    permutes the weights of the 1506-wide batch norm and the first dense layer to match.

Only ``keras.layers`` / ``keras.ops`` are used in the model (TensorFlow, JAX or PyTorch via ``KERAS_BACKEND``).
The converter needs TensorFlow (its checkpoint reader) and nothing of musicnn's own code.
"""
from __future__ import annotations

from core.musicnn.config import (BN_EPSILON, CARD_FILE, CITATION, EMBEDDING_DIM, HOP, INPUT_PARAMS, LABELS, LICENCE,
                                 MODELS, MSD_LABELS, MTT_LABELS, N_FFT, N_MELS, PATCH_FRAMES, PATCH_SECONDS, SR,
                                 TRAINING_DATA, WEIGHTS_FILE, MusicnnError, default_model_dir)
from core.musicnn.frontend import frames_at, log_mel, mel_filterbank, patch_starts, patches
from core.musicnn.inference import TIMBRAL_CONTEXT, OverlappingWindows, inference_model, mel_pooled_conv
from core.musicnn.network import (BN_PARTS, CHECKPOINT_MAP, TEMPORAL_KERNELS, build_musicnn, count_macs,
                                  feature_model, load_musicnn, load_weights_npz, save_weights_npz, set_weights,
                                  weight_parts)
from core.musicnn.tagger import predict_patches, tag_audio

__all__ = [
    "BN_EPSILON", "BN_PARTS", "CARD_FILE", "CHECKPOINT_MAP", "CITATION", "EMBEDDING_DIM", "HOP", "INPUT_PARAMS",
    "LABELS", "LICENCE", "MODELS", "MSD_LABELS", "MTT_LABELS", "MusicnnError", "N_FFT", "N_MELS", "OverlappingWindows",
    "PATCH_FRAMES", "PATCH_SECONDS", "SR", "TEMPORAL_KERNELS", "TIMBRAL_CONTEXT", "TRAINING_DATA", "WEIGHTS_FILE",
    "build_musicnn", "count_macs", "default_model_dir", "feature_model", "frames_at", "inference_model",
    "load_musicnn", "load_weights_npz", "log_mel", "mel_filterbank", "mel_pooled_conv", "patch_starts", "patches",
    "predict_patches", "save_weights_npz", "set_weights", "tag_audio", "weight_parts",
]
