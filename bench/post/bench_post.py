#!/usr/bin/env python3
"""maskd's box post-processing against torchvision 0.14, in one run, 1 thread.

    /usr/bin/python3 bench/post/bench_post.py [--build DIR] [--rounds N]

Builds tests/post's maskd_post_driver in DIR (default: build-bench next to
this repository's CMakeLists.txt, configured as Release) and times, on the
same inputs, with one thread each:

  * hard NMS on 10 000 boxes (IoU 0.5): boxes spread uniformly over a
    1000x1000 image, and boxes clustered around 200 objects the way a
    detector's raw output is;                       goal: maskd <= 0.5x torchvision
  * ROI Align of 1 000 ROIs to 7x7 from a 256x64x64 map (stride 8 of a
    512x512 image), sampling_ratio 2 and 0, aligned=False;
                                                    goal: maskd <= 1.0x torchvision

maskd is timed inside the driver (the library call only, no file I/O);
torchvision inside this process.  Each round runs both back to back; the
reported time is the median over all rounds' repetitions.  The ratio is
maskd / torchvision (below 1: maskd is faster).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def build(build_dir):
    if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
        subprocess.run(["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build_dir, "--target", "maskd_post_driver", "-j2"],
                   check=True, stdout=subprocess.DEVNULL)
    return os.path.join(build_dir, "tests", "post", "maskd_post_driver")


def time_maskd(driver, work, command, reps, **kw):
    args = [driver, command, work, f"reps={reps}"] + [f"{k}={v}" for k, v in kw.items()]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return float(out.split("median_ms")[1])


def time_torch(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def nms_sets(rng, n=10000):
    xy = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(1, 100, (n, 2))
    uniform = np.concatenate([xy, xy + wh], 1)
    centres = rng.uniform(50, 950, (200, 2))
    sizes = rng.uniform(20, 150, (200, 2))
    k = rng.integers(0, 200, n)
    c = centres[k] + rng.normal(0, 0.1, (n, 2)) * sizes[k]
    s = sizes[k] * rng.uniform(0.8, 1.25, (n, 2))
    clustered = np.concatenate([c - s / 2, c + s / 2], 1)
    scores = rng.uniform(0, 1, n)
    return [("uniform", uniform.astype(np.float32), scores.astype(np.float32)),
            ("clustered", clustered.astype(np.float32), scores.astype(np.float32))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    driver = build(a.build)
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="maskd_bench_post_")
    rng = np.random.default_rng(0)
    rows = []

    for name, boxes, scores in nms_sets(rng):
        np.save(os.path.join(work, "boxes.npy"), boxes)
        np.save(os.path.join(work, "scores.npy"), scores)
        tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
        kept = torchvision.ops.nms(tb, ts, 0.5).numel()
        m, t = [], []
        for _ in range(a.rounds):
            m.append(time_maskd(driver, work, "bench_nms", 7, method="hard", agnostic=1,
                                iou=0.5))
            t.append(time_torch(lambda: torchvision.ops.nms(tb, ts, 0.5), 7))
        rows.append((f"hard NMS, 10000 boxes ({name}, {kept} kept)", np.median(m),
                     np.median(t), 0.5))
        os.remove(os.path.join(work, "boxes.npy"))
        os.remove(os.path.join(work, "scores.npy"))

    x = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    xy = rng.uniform(-16, 480, (1000, 2))
    wh = rng.uniform(8, 256, (1000, 2))
    rois = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    np.save(os.path.join(work, "features.npy"), x)
    np.save(os.path.join(work, "rois.npy"), rois)
    tx = torch.from_numpy(x)
    tr = torch.from_numpy(np.concatenate([np.zeros((1000, 1), np.float32), rois], 1))
    for ratio in (2, 0):
        m, t = [], []
        for _ in range(a.rounds):
            m.append(time_maskd(driver, work, "bench_roi_align", 5, ph=7, pw=7, scale=0.125,
                                ratio=ratio, aligned=0))
            t.append(time_torch(lambda: torchvision.ops.roi_align(tx, tr, (7, 7), 0.125, ratio,
                                                                  False), 5))
        rows.append((f"ROI Align, 1000 ROIs 7x7, 256x64x64, sampling_ratio {ratio}",
                     np.median(m), np.median(t), 1.0))

    print(f"{'case':<58} {'maskd ms':>9} {'torchvision ms':>15} {'ratio':>6}  goal")
    ok = True
    for name, m, t, goal in rows:
        r = m / t
        ok &= r <= goal
        print(f"{name:<58} {m:9.2f} {t:15.2f} {r:6.3f}  <= {goal} {'met' if r <= goal else 'MISSED'}")
    for f in os.listdir(work):
        os.remove(os.path.join(work, f))
    os.rmdir(work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
