#!/usr/bin/env bash
# Reproduces the shipped shapes models (models/shapes-seg.onnx, models/shapes-det-stage{1,2}.onnx
# and their cards) from nothing but this repository: every training image is drawn on the fly by
# models/shapes/generate.py.  Needs Debian's python3-torch, python3-torchvision, python3-onnx
# (scripts/install-deps.sh --test installs them).
#
#   models/train/reproduce.sh [WORK_DIR]        # checkpoints and logs go to WORK_DIR (/tmp/maskd-train)
#
# Each model trains in two phases.  Phase 1 learns from whole 320x320 (seg) / 384x384 (det)
# inputs; phase 2 starts from phase 1's weights with a fresh one-cycle schedule on images phase 1
# never saw (shapes-seg on 224x224 crops, two per drawn image, which trains about twice as fast).
# The det backbone starts from the seg backbone's step-500 snapshot.  Both models' phase 1 can
# run side by side once the snapshot exists; the script runs them so, one torch thread each
# (see the "training" section of each card for the measured minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/maskd-train}
mkdir -p "$work"
py=(nice -n 19 /usr/bin/python3)
export OMP_WAIT_POLICY=PASSIVE

seg1=(--checkpoint "$work/seg-phase1.pt" --out-dir "$work/phase1")
det1=(--checkpoint "$work/det-phase1.pt" --out-dir "$work/phase1")
mkdir -p "$work/phase1"

# phase 1 -- seg first until its step-500 snapshot exists, then det beside it
"${py[@]}" models/train/train_seg.py "${seg1[@]}" --steps 3000 > "$work/seg-phase1.log" 2>&1 &
seg_pid=$!
while [[ ! -e "$work/seg-phase1-step500.pt" ]]; do
  kill -0 "$seg_pid" 2>/dev/null || { echo "train_seg.py phase 1 failed: $work/seg-phase1.log" >&2; exit 1; }
  sleep 30
done
"${py[@]}" models/train/train_det.py "${det1[@]}" --steps 3000 \
    --init-backbone "$work/seg-phase1-step500.pt" > "$work/det-phase1.log" 2>&1 &
det_pid=$!
wait "$seg_pid"
wait "$det_pid"

# phase 2 -- fresh schedules on unseen images (data-start = the images phase 1 drew)
"${py[@]}" models/train/train_seg.py --checkpoint "$work/seg.pt" --init-from "$work/seg-phase1.pt" \
    --data-start 24000 --crop 224 --views 2 --steps 3500 --lr 1.5e-3 --pct-start 0.1 \
    > "$work/seg.log" 2>&1 &
seg_pid=$!
"${py[@]}" models/train/train_det.py --checkpoint "$work/det.pt" --init-from "$work/det-phase1.pt" \
    --data-start 12000 --steps 2000 --lr 1e-3 --pct-start 0.1 > "$work/det.log" 2>&1 &
det_pid=$!
wait "$seg_pid"
wait "$det_pid"
ls -l models/shapes-seg.onnx models/shapes-seg.json models/shapes-det-stage1.onnx \
      models/shapes-det-stage2.onnx models/shapes-det.json
