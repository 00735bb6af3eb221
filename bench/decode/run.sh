#!/usr/bin/env bash
# Decode benchmark (issue 6, bench/decode): a 4000x3000 and a 640x480 JPEG to
# a 320x320 and a 512x512 float model input, with and without libjpeg-turbo's
# DCT-domain scaling.  One command, from the repository root:
#
#   bench/decode/run.sh [--repeat N] [--wall]
#
# Times are the decoding thread's CPU time (robust on a shared machine);
# --wall measures wall-clock time instead.
# Builds bench_decode.c with server/image*.c (gcc -O3, like the Release
# build) and writes the JPEGs (PIL, quality 90, 4:2:0, photo-like content:
# multi-scale noise, edges and sensor-like grain) into
# ${MASKD_BENCH_DIR:-/tmp/maskd-bench-decode}.  Needs gcc, pkg-config,
# libjpeg62-turbo-dev, libpng-dev and python3-pil + python3-numpy.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${MASKD_BENCH_DIR:-/tmp/maskd-bench-decode}
mkdir -p "$work"

gcc -std=c11 -D_GNU_SOURCE -O3 -DNDEBUG -Wall -Wextra -Werror \
    -I "$root/engine/include" -I "$root/server" \
    "$root/bench/decode/bench_decode.c" "$root/server/image.c" \
    "$root/server/image_jpeg.c" "$root/server/image_png.c" \
    -o "$work/bench_decode" $(pkg-config --libs libjpeg libpng)

if [[ ! -f "$work/photo_4000x3000.jpg" || ! -f "$work/photo_640x480.jpg" ]]; then
  /usr/bin/python3 - "$work" <<'PY'
import sys
import numpy as np
from PIL import Image

out = sys.argv[1]
rng = np.random.default_rng(2024)
h, w = 3000, 4000
img = np.zeros((h, w, 3), np.float32)
# value noise at several scales: large soft shapes down to fine texture
for cell, amp in ((500, 90), (120, 50), (30, 25), (8, 12)):
    small = rng.uniform(-1, 1, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
    up = np.asarray(Image.fromarray(((small + 1) * 127.5).astype(np.uint8)).resize(
        ((w // cell + 2) * cell, (h // cell + 2) * cell), Image.Resampling.BICUBIC), np.float32)
    img += (up[:h, :w] / 127.5 - 1) * amp
img += 128
y, x = np.mgrid[0:h, 0:w]
for _ in range(30):  # hard-edged objects
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(50, 400)
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
img += rng.normal(0, 3, img.shape)  # grain
photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
photo.save(f"{out}/photo_4000x3000.jpg", quality=90)
photo.resize((640, 480), Image.Resampling.LANCZOS).save(f"{out}/photo_640x480.jpg", quality=90)
PY
fi
ls -l "$work"/photo_*.jpg | awk '{print $5, $9}'
OPENBLAS_NUM_THREADS=1 "$work/bench_decode" "$@" "$work/photo_4000x3000.jpg" "$work/photo_640x480.jpg"
