"""The 5 track-wise stratified folds of models/emotify-crnn, over every Emotify track of the 4 genres.

Fold i tests 16 tracks per class, validates on 8 per class drawn from the rest, trains on the other 56 per class.
``python make_folds.py EMOTIFY_DIR [K] [OUT]`` writes OUT/fold<i>.json (default: this folder, where the folds used
for the shipped model are committed; seed 2026, so the same audio folder gives the same files).
"""
import json
import random
import sys
from pathlib import Path

AUDIO = (".mp3", ".flac", ".wav")


def make_folds(src: Path, k: int = 5, seed: int = 2026) -> list[dict]:
    rng = random.Random(seed)
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    folds = [{"train": [], "val": [], "test": []} for _ in range(k)]
    for c in classes:
        keys = sorted(f"{c}/{p.stem}" for p in (src / c).iterdir() if p.suffix.lower() in AUDIO)
        rng.shuffle(keys)
        parts = [keys[i::k] for i in range(k)]
        for i in range(k):
            rest = [x for j in range(k) if j != i for x in parts[j]]
            random.Random(1000 + i).shuffle(rest)
            n_val = max(1, round(len(keys) * 0.1))
            folds[i]["test"] += parts[i]
            folds[i]["val"] += rest[:n_val]
            folds[i]["train"] += rest[n_val:]
    return folds


if __name__ == "__main__":
    src = Path(sys.argv[1])
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parent
    out.mkdir(parents=True, exist_ok=True)
    for i, fold in enumerate(make_folds(src, k)):
        (out / f"fold{i}.json").write_text(json.dumps(fold, indent=1))
        print(i, {s: len(v) for s, v in fold.items()})
