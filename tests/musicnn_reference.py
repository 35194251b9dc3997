"""Reference outputs of the ORIGINAL musicnn network, for the port test (tests/test_musicnn.py).

Two parts:

* :func:`clip` generates the test clips (deterministic NumPy synthesis, no recorded audio anywhere); the
  test regenerates them from this code, so the fixture holds no audio.
* Run as a script (``python tests/musicnn_reference.py OUT.npz WAV_DIR``) in a scratch environment that has
  the original ``musicnn==0.1.0`` with TensorFlow 1.15 / numpy < 1.17 / librosa 0.7.2 installed: it writes the
  clips as 16 kHz float WAV files, runs musicnn's own ``extractor`` (MSD_musicnn, 3 s patches, no overlap) on
  them and saves the input mel patches (musicnn's ``batch_data``), the sigmoid taggram and the penultimate
  layer into ``OUT.npz``. Python 3.7 compatible on purpose. How the shipped fixture was made:
  ``docs/musicnn.md``.
"""
import sys

import numpy as np

SR = 16000
CLIPS = ("tones", "beat")


def clip(name):
    """A deterministic synthetic clip at 16 kHz, float32 in [-1, 1].

    ``tones``: 7 s of a harmonic melody (five partials, 0.5 s notes) over soft noise (2 patches of 3 s).
    ``beat``: 4 s of a 120 bpm noise-burst drum pattern with a sine bass (1 patch).
    Uses ``np.random.RandomState`` (its stream is stable across NumPy versions).
    """
    rng = np.random.RandomState(7 if name == "tones" else 11)
    if name == "tones":
        n = 7 * SR
        t = np.arange(n) / SR
        y = np.zeros(n)
        notes = [220.0, 247.0, 262.0, 294.0, 330.0, 349.0, 392.0, 440.0]
        note_len = SR // 2
        for i in range(n // note_len):
            f0 = notes[(i * 3) % len(notes)]
            seg = slice(i * note_len, (i + 1) * note_len)
            tt = t[seg] - t[seg][0]
            env = np.minimum(1.0, tt / 0.02) * np.exp(-2.0 * tt)
            for k in range(1, 6):
                y[seg] += env * np.sin(2 * np.pi * f0 * k * tt) / k
        y = 0.3 * y / np.max(np.abs(y)) + 0.01 * rng.randn(n)
    elif name == "beat":
        n = 4 * SR
        t = np.arange(n) / SR
        y = 0.2 * np.sin(2 * np.pi * 55.0 * t)
        beat = SR // 2
        for i in range(n // beat):
            start = i * beat
            m = min(n - start, SR // 8)
            env = np.exp(-np.arange(m) / (0.02 * SR))
            y[start:start + m] += (0.6 if i % 2 == 0 else 0.3) * env * rng.randn(m)
        y = 0.8 * y / np.max(np.abs(y))
    else:
        raise ValueError("unknown clip %r" % (name,))
    return y.astype(np.float32)


def main(out_npz, wav_dir):  # pragma: no cover - runs in the scratch environment only
    import os

    import soundfile as sf
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn import extractor as ex

    def run_graph(batch):
        """musicnn's own graph (its models.define_model) and checkpoint, as its extractor builds them."""
        from musicnn import models

        tf.compat.v1.reset_default_graph()
        with tf.name_scope("model"):
            x = tf.compat.v1.placeholder(tf.float32, [None, 187, config.N_MELS])
            is_training = tf.compat.v1.placeholder(tf.bool)
            y, _, _, _, _, _, mean_pool, max_pool, penultimate = models.define_model(
                x, is_training, "MSD_musicnn", 50)
            normalized_y = tf.nn.sigmoid(y)
        sess = tf.compat.v1.Session()
        sess.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().restore(sess, os.path.dirname(models.__file__) + "/MSD_musicnn/")
        res = sess.run([normalized_y, penultimate, mean_pool, max_pool], feed_dict={x: batch, is_training: False})
        sess.close()
        return res

    out = {}
    for name in CLIPS:
        wav = os.path.join(wav_dir, name + ".wav")
        sf.write(wav, clip(name), SR, subtype="FLOAT")
        taggram, labels, feats = ex.extractor(wav, model="MSD_musicnn", input_length=3, input_overlap=False,
                                              extract_features=True)
        batch, _ = ex.batch_data(wav, 187, 187)
        out[name + "_mel"] = batch.astype(np.float32)
        out[name + "_taggram"] = taggram.astype(np.float32)
        # musicnn 0.1.0's extractor returns the FIRST patch's penultimate (and cnn1..3) for every later patch
        # (its loop unpacks them into other names), so run the original graph on all patches at once for them
        tg, pen, meanp, maxp = run_graph(batch)
        assert np.abs(tg - taggram).max() < 1e-5
        out[name + "_penultimate"] = pen.astype(np.float32)
        out[name + "_mean_pool"] = meanp.astype(np.float32)
        out[name + "_max_pool"] = maxp.astype(np.float32)
        out[name + "_extractor_penultimate"] = np.asarray(feats["penultimate"], dtype=np.float32).reshape(len(batch), -1)
    import librosa

    out["versions"] = np.array(["tensorflow " + tf.__version__, "numpy " + np.__version__,
                                "librosa " + librosa.__version__, "musicnn 0.1.0", "model MSD_musicnn"])
    out["labels"] = np.array(config.MSD_LABELS)
    np.savez_compressed(out_npz, **out)
    for k in sorted(out):
        print(k, getattr(out[k], "shape", None))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1], sys.argv[2])
