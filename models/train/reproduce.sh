#!/usr/bin/env bash
# Reproduces the shipped shapes models (models/shapes-seg.onnx, models/shapes-det-stage{1,2}.onnx
# and their cards) from nothing but this repository: every training image is drawn by
# models/shapes/generate.py.  Needs Debian's python3-torch, python3-torchvision, python3-onnx
# (scripts/install-deps.sh --test installs them).
#
#   models/train/reproduce.sh [WORK_DIR]        # checkpoints and logs go to WORK_DIR (/tmp/maskd-train)
#
# shapes-seg trains first; shapes-det's backbone then starts from a trained seg backbone (it
# already knows the shapes): the 8000-step run the shipped detector was trained from.  Each script draws its pool of training images on both cores, then
# trains with two torch threads; the cards record the minutes each took ("training").
# OpenMP spins (OMP_WAIT_POLICY=ACTIVE): on an idle machine a step is ~20% faster than with
# sleeping threads, and the results are the same; on a busy one, run it as
# OMP_WAIT_POLICY=PASSIVE nice models/train/reproduce.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/maskd-train}
mkdir -p "$work" "$work/seg-for-det"
py=(/usr/bin/python3)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE}

"${py[@]}" models/train/train_seg.py --checkpoint "$work/seg.pt" \
    --steps 11000 --pool 16000 --crop 224 --lr 3e-3 --hard-pixels 0.3 > "$work/seg.log" 2>&1 \
  || { echo "train_seg.py failed: $work/seg.log" >&2; exit 1; }
# shapes-det's backbone started from an earlier, shorter shapes-seg run (8000 steps on 12000
# images), trained before the shipped shapes-seg above; it is trained again here for det only.
"${py[@]}" models/train/train_seg.py --checkpoint "$work/seg-for-det.pt" --out-dir "$work/seg-for-det" \
    --steps 8000 --pool 12000 --crop 224 --lr 3e-3 --hard-pixels 0.3 > "$work/seg-for-det.log" 2>&1 \
  || { echo "train_seg.py failed: $work/seg-for-det.log" >&2; exit 1; }
"${py[@]}" models/train/train_det.py --checkpoint "$work/det.pt" --init-backbone "$work/seg-for-det.pt" \
    --steps 1600 --pool 4000 --lr 2e-3 > "$work/det.log" 2>&1 \
  || { echo "train_det.py failed: $work/det.log" >&2; exit 1; }
ls -l models/shapes-seg.onnx models/shapes-seg.json models/shapes-det-stage1.onnx \
      models/shapes-det-stage2.onnx models/shapes-det.json
