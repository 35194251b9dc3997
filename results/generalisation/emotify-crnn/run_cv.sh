#!/bin/bash
# models/emotify-crnn from scratch: the snippet CRNN (recommended preset) trained on each of the 5 committed
# folds (fold<i>.json) of all 320 Emotify tracks with 3 seeds, then every fold model shipped as one ensemble.
# Resumable: run it again after a stop and it continues (builds and runs that finished are kept).
#   bash results/generalisation/emotify-crnn/run_cv.sh EMOTIFY_DIR WORK_DIR [DEST]
# EMOTIFY_DIR: python -m core download-emotify EMOTIFY_DIR; WORK_DIR: datasets and stores (2.4 GB);
# DEST: the model folder (default models/emotify-crnn). About 5 hours on 2 cores (391 epochs, 4.4 h of them).
set -eu
[ $# -ge 2 ] || { sed -n 2,7p "$0"; exit 2; }
SRC=$1; WORK=$2; DEST=${3:-models/emotify-crnn}
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../../.."   # the repository root
for seeds in 1 2 3; do   # seeds round by round: a stopped run leaves whole seeds over every fold
  for i in 0 1 2 3 4; do
    [ -f "$WORK/fold$i/ds/card.json" ] || python -m core build-dataset "$SRC" "$WORK/fold$i/ds" \
        --split "$HERE/fold$i.json" --max-snippets 0
    python -m core run-experiment "$WORK/fold$i/ds" --store "$WORK/fold$i/store" --models snippet --seeds $seeds
  done
done
python -m core ship-ensemble "$DEST" "$WORK"/fold{0,1,2,3,4}/store --name emotify-crnn \
    --source-name "Emotify (320 one-minute Magnatune tracks, 4 genres)" \
    --citation "Aljanaki, Wiering & Veltkamp, 'Studying emotion induced by music through a crowdsourcing game', Information Processing & Management, 2016 (Magnatune recordings)" \
    --description "Snippet CRNN (recommended recipe) from scratch: 3 seeds x 5 cross-validation folds over all 320 Emotify tracks, 15 members whose class scores are averaged" \
    --reproduce "bash results/generalisation/emotify-crnn/run_cv.sh EMOTIFY_DIR WORK_DIR"
