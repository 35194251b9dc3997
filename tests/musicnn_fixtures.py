"""A musicnn classifier in the combined format (musicnn + head in one ``model.keras``, what the experiment's
musicnn runs save), built from the shipped ``models/msd-musicnn`` weights and a seeded random head: the tests of
that format do not depend on which format the shipped ``models/emotify-musicnn`` uses."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MSD = ROOT / "models" / "msd-musicnn"
CLASSES = ["classical", "electronic", "pop", "rock"]


def combined_classifier(folder: Path, hidden: int = 16, seed: int = 3) -> Path:
    """Write ``folder/model.keras`` (musicnn + head) and its ``model_card.json``; returns ``folder``."""
    import keras

    from core import musicnn as mn
    from core.embeddings import build_head, combined_model, musicnn_card
    from core.model_card import write_model_card

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model.keras").is_file():
        keras.utils.set_random_seed(seed)
        net, net_card = mn.load_musicnn(MSD)
        rng = np.random.default_rng(seed)  # a standardisation layer as the experiment's heads have
        head = build_head(len(CLASSES), hidden=hidden, mean=rng.normal(0, 0.5, mn.EMBEDDING_DIM),
                          var=rng.uniform(0.5, 2.0, mn.EMBEDDING_DIM))
        combined_model(net, head).save(folder / "model.keras")
        card = musicnn_card(CLASSES, net_card, name="combined-musicnn", description="musicnn + a random head (tests)")
        write_model_card(folder, {**card, "model_file": "model.keras"})
    return folder
