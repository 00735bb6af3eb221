#!/usr/bin/env bash
# HTTP benchmark of the daemon: wrk POSTs a 640x480 and a 4000x3000 JPEG to
# /v1/models/MODEL/predict over loopback at several client concurrencies;
# between the wrk runs, `maskd predict --repeat --workers` runs the same
# pipeline on the same image without HTTP, on the daemon's workers x engine
# threads.  One command, from anywhere in the repository:
#
#   bench/http/run.sh [--duration S] [--concurrency "1 2 4 16"] [--model shapes-det]
#                     [--sizes "640x480 4000x3000"] [--repeat N]
#
# Per image: concurrency, requests/s (200 answers only), p50/p90/p99 latency,
# every answer that was not a 200 (by status) and wrk's socket errors, the
# daemon's median queue/decode/infer/post ms from its request log, the
# daemon's CPU time per request, and two efficiencies:
#   eff     requests/s / images/s of `maskd predict --decode-each`: the same
#           work per image as the daemon (decode the JPEG, then the pipeline),
#           run just before and just after each wrk run (their mean), so a
#           shared machine's drift lands on both sides;
#   eff px  requests/s / images/s of plain `maskd predict --repeat`, which
#           decodes once and times the pipeline on the decoded pixels (the
#           faster of a run before all wrk runs and one after them).
# On a machine whose CPUs are all busy (wrk shares them, and anything else
# running does) requests/s follows CPU time, so cpu ms/req beside the
# engine-only cpu ms/image shows the server's own cost most steadily.
# --repeat: runs per engine-only worker (default: about --duration / 2 s).
# Uses build/server/maskd (MASKD=... overrides), config/maskd.json, --port 0,
# --queue_depth 64 (16 connections never see a 503), wrk --timeout 60s; the
# workers and engine threads are the config's (MASKD_CONCURRENCY and
# MASKD_THREADS in the environment change them for both halves).  Installs
# Debian's wrk if missing.  The JPEGs (PIL, quality 90, seeded shapes on a
# gradient: the same bytes every run), wrk outputs and the daemon log go to
# ${MASKD_BENCH_DIR:-/tmp/maskd-bench-http}.  wrk shares the daemon's CPUs.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the environment sets them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
maskd=${MASKD:-$root/build/server/maskd}
work=${MASKD_BENCH_DIR:-/tmp/maskd-bench-http}
duration=10
concurrency="1 2 4 16"
model=shapes-det
sizes="640x480 4000x3000"
repeat=""
usage() { sed -n 2,23p "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench/http: unknown option $1" >&2; usage >&2; exit 64 ;;
  esac
done
[[ $duration =~ ^[1-9][0-9]*$ ]] || { echo "bench/http: --duration wants whole seconds" >&2; exit 64; }
[[ -z $repeat || $repeat =~ ^[1-9][0-9]*$ ]] || { echo "bench/http: --repeat wants a positive number" >&2; exit 64; }
for c in $concurrency; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || { echo "bench/http: --concurrency wants positive numbers, got '$c'" >&2; exit 64; }
done
for s in $sizes; do
  [[ $s =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || { echo "bench/http: --sizes wants WxH, got '$s'" >&2; exit 64; }
done
[[ -n ${concurrency// /} && -n ${sizes// /} ]] || { echo "bench/http: nothing to run" >&2; exit 64; }

"$root/scripts/install-deps.sh" --bench   # wrk

if [[ ! -x $maskd ]]; then
  echo "bench/http: no maskd at $maskd; build it first, from $root:" >&2
  echo "  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2" >&2
  echo "(or point MASKD at a maskd binary)" >&2
  exit 1
fi

cd "$root"
mkdir -p "$work"
serve_args=(--config config/maskd.json --port 0 --queue_depth 64 --drain_grace_ms 0)

# The card the daemon will serve under that name, for the engine-only run.
"$maskd" check-config "${serve_args[@]}" >"$work/config.json"
card=$(/usr/bin/python3 - "$work/config.json" "$model" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
if sys.argv[2] not in cfg["models"]:
    sys.exit(f"bench/http: model '{sys.argv[2]}' is not in config/maskd.json (it has: {', '.join(cfg['models'])})")
print(cfg["models"][sys.argv[2]])
PY
)

# ---- the images ---------------------------------------------------------------
# shellcheck disable=SC2086  # one argument per size
/usr/bin/python3 - "$work" $sizes <<'PY'
import hashlib, io, math, random, sys
from PIL import Image, ImageDraw

work, sizes = sys.argv[1], sys.argv[2:]
for size in sizes:
    w, h = map(int, size.split("x"))
    rng = random.Random(w * 100003 + h)
    ramp = Image.linear_gradient("L")
    r = ramp.resize((w, h), Image.BILINEAR).point(lambda v: 40 + v * 150 // 255)
    g = ramp.rotate(90).resize((w, h), Image.BILINEAR).point(lambda v: 60 + v * 120 // 255)
    b = Image.new("L", (w, h), 110)
    im = Image.merge("RGB", (r, g, b))
    d = ImageDraw.Draw(im)
    short = min(w, h)
    for k in range(8):
        kind = ("square", "circle", "triangle", "star")[k % 4]
        radius = rng.uniform(0.06, 0.14) * short
        cx = rng.uniform(radius, w - radius)
        cy = rng.uniform(radius, h - radius)
        angle = rng.uniform(0, 2 * math.pi)
        colour = tuple(rng.choice((rng.randint(0, 40), rng.randint(215, 255))) for _ in range(3))
        if kind == "circle":
            d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
            continue
        if kind == "star":
            points = [(radius * (1.0 if i % 2 == 0 else 0.45), angle + i * math.pi / 5) for i in range(10)]
        else:
            n = 4 if kind == "square" else 3
            points = [(radius, angle + i * 2 * math.pi / n) for i in range(n)]
        d.polygon([(cx + rr * math.cos(a), cy + rr * math.sin(a)) for rr, a in points], fill=colour)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, subsampling="4:2:0")
    data = out.getvalue()
    with open(f"{work}/shapes_{size}.jpg", "wb") as f:
        f.write(data)
    print(f"bench/http: shapes_{size}.jpg {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}",
          file=sys.stderr)
PY

# ---- the daemon -----------------------------------------------------------------
daemon_pid=""
stop_daemon() {
  [[ -n $daemon_pid ]] || return 0
  local pid=$daemon_pid rc=0
  daemon_pid=""
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "bench/http: the daemon did not exit 60 s after SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" || rc=$?
  return "$rc"
}
trap 'stop_daemon || true' EXIT
trap 'exit 130' INT TERM

log=$work/maskd.log
"$maskd" serve "${serve_args[@]}" >"$log" 2>&1 &
daemon_pid=$!
port="" workers="" engine_threads=""
for _ in $(seq 900); do
  if ! kill -0 "$daemon_pid" 2>/dev/null; then break; fi
  line=$(grep -o 'listening on 127\.0\.0\.1:[0-9]* ([^)]*)[^"]*' "$log" | head -1 || true)
  if [[ $line =~ :([0-9]+)\ .*\ ([0-9]+)\ worker.*\ ([0-9]+)\ engine ]]; then
    port=${BASH_REMATCH[1]} workers=${BASH_REMATCH[2]} engine_threads=${BASH_REMATCH[3]}
    break
  fi
  sleep 0.1
done
if [[ -z $port ]]; then
  echo "bench/http: the daemon did not start; its log ($log):" >&2
  cat "$log" >&2
  exit 1
fi
base=http://127.0.0.1:$port
/usr/bin/python3 - "$base" <<'PY' || { echo "bench/http: /readyz never said 200; log: $log" >&2; exit 1; }
import sys, time, urllib.request
deadline = time.time() + 180
while time.time() < deadline:
    try:
        if urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=5).status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY

# ---- the runs ---------------------------------------------------------------------
results=$work/results.tsv
: >"$results"

# Engine-only: the same pipeline on the same image through `maskd predict`,
# the daemon's workers on a pool of its engine threads; mode `decode` decodes
# the JPEG in every run as the daemon does, `pixels` only once.
engine_only() {  # size image mode when repeat
  local rc=0 out=$work/predict_$1_$3_$4.txt flag=()
  [[ $3 == decode ]] && flag=(--decode-each)
  echo "bench/http: $1: maskd predict --repeat $5 --workers $workers --threads $engine_threads ${flag[*]} ($4)" >&2
  "$maskd" predict "$2" --model "$card" --repeat "$5" --workers "$workers" \
    --threads "$engine_threads" "${flag[@]}" >/dev/null 2>"$out" || rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q 'images/s; every answer identical' "$out"; then
    echo "bench/http: $1: the engine-only run failed (exit $rc):" >&2
    cat "$out" >&2
  fi
  echo "size=$1 engine mode=$3 when=$4 rc=$rc $(grep -o 'maskd: .*' "$out" | tail -1)" >>"$results"
}

# The daemon's CPU time so far (every thread, user + system), in ms.
clock_ticks=$(getconf CLK_TCK)
daemon_cpu_ms() {
  awk -v hz="$clock_ticks" '{ print ($14 + $15) * 1000 / hz }' "/proc/$daemon_pid/stat"
}

for size in $sizes; do
  image=$work/shapes_$size.jpg
  # One request first: the answer must be a 200 with detections, the first
  # large image's buffers should not land in the c=1 numbers, and its time
  # sizes the engine-only runs.
  warm_ms=$(/usr/bin/python3 - "$base/v1/models/$model/predict" "$image" "$size" <<'PY'
import json, sys, time, urllib.error, urllib.request
url, path, size = sys.argv[1:]
req = urllib.request.Request(url, data=open(path, "rb").read(), headers={"Content-Type": "image/jpeg"})
t0 = time.time()
try:
    with urllib.request.urlopen(req, timeout=120) as r:
        doc = json.load(r)
        found = len(doc.get("detections", doc.get("segments", [])))
        print(f"bench/http: {size}: warm-up 200, {found} detection(s)/segment(s)", file=sys.stderr)
except urllib.error.HTTPError as e:
    print(f"bench/http: {size}: warm-up answered {e.code}: {e.read()[:300]!r}", file=sys.stderr)
print(max(1, int((time.time() - t0) * 1000)))
PY
)
  # About --duration / 2 seconds: throughput ~ 1 / latency whatever the workers.
  w_repeat=${repeat:-$(( (duration * 500 / warm_ms + workers - 1) / workers ))}
  if ((w_repeat < 2)); then w_repeat=2; fi
  engine_only "$size" "$image" pixels before "$w_repeat"
  slot=0
  engine_only "$size" "$image" decode "d$slot" "$w_repeat"
  for c in $concurrency; do
    t=$((c < 2 ? c : 2))
    echo "bench/http: $size: wrk -t $t -c $c -d ${duration}s" >&2
    from=$(wc -l <"$log")
    out=$work/wrk_${size}_c$c.txt
    cpu_before=$(daemon_cpu_ms)
    BENCH_IMAGE=$image BENCH_CONTENT_TYPE=image/jpeg \
      wrk -t "$t" -c "$c" -d "${duration}s" --timeout 60s --latency -s "$here/post.lua" \
      "$base/v1/models/$model/predict" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    cpu_ms=$(awk -v a="$cpu_before" -v b="$(daemon_cpu_ms)" 'BEGIN { print b - a }')
    stats=$(grep '^maskd-bench ' "$out") || { echo "bench/http: no summary from wrk:" >&2; cat "$out" >&2; exit 1; }
    server=$(/usr/bin/python3 - "$log" "$from" <<'PY'
import json, statistics, sys
# The daemon's request log lines written during this run: where the time
# goes inside the server.
stages = {"queue_ms": [], "decode_ms": [], "infer_ms": [], "post_ms": []}
warn = 0
for line in open(sys.argv[1]).readlines()[int(sys.argv[2]):]:
    try:
        o = json.loads(line)
    except ValueError:
        continue
    warn += o.get("level") in ("warn", "error") and o.get("msg") != "request"
    if o.get("msg") == "request" and o.get("status") == 200:
        for k in stages:
            stages[k].append(o.get(k, 0.0))
med = lambda v: f"{statistics.median(v):.1f}" if v else "-"
print(f"server={'/'.join(med(v) for v in stages.values())} logwarn={warn}")
PY
)
    echo "size=$size c=$c slot=$slot cpu_ms=$cpu_ms $stats $server" >>"$results"
    slot=$((slot + 1))
    engine_only "$size" "$image" decode "d$slot" "$w_repeat"
  done
  engine_only "$size" "$image" pixels after "$w_repeat"
done

rc=0
stop_daemon || rc=$?
if [[ $rc -ne 0 ]]; then
  echo "bench/http: the daemon exited with status $rc after SIGTERM (log: $log)" >&2
fi

# ---- the report ---------------------------------------------------------------------
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
/usr/bin/python3 - "$results" <<PY
import re, sys
print("maskd HTTP benchmark: $($maskd version 2>/dev/null), model $model ($card), wrk $(wrk --version 2>&1 | awk 'NR==1 {print $2}'), ${duration} s per run")
print("CPU: ${cpu:-unknown} x $(nproc); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-(unset)} (left as the environment sets them)")
print("daemon: $workers worker(s) x $engine_threads engine thread(s), queue_depth 64; wrk on the same CPUs")
print("req/s counts 200 answers; non-200 lists every other status; sock err = wrk connect/read/write/timeout")
print("server ms = the daemon log's median queue/decode/infer/post of the 200s; cpu = the daemon's CPU ms per request")
print("eff = req/s / images/s of maskd predict --decode-each (decode + pipeline, as the daemon), mean of the runs")
print("      just before and after; eff px = req/s / images/s of maskd predict on pixels decoded once (the faster run);")
print("      cpu eff = --decode-each cpu ms/image (same runs) / the daemon's cpu ms/request: steadier on a busy machine")
rows = {}
engine = {}
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    if " engine " in line:
        m = re.search(r"cpu ([0-9.]+) ms/image, ([0-9.]+) images/s; (.*)", line)
        ok = m and f["rc"] == "0" and m.group(3).strip() == "every answer identical"
        engine.setdefault(f["size"], {})[(f["mode"], f["when"])] = (
            (float(m.group(2)), float(m.group(1))) if ok else None)
    else:
        rows.setdefault(f["size"], []).append(f)
for size, runs in rows.items():
    e = engine.get(size, {})
    decode = lambda slot: e.get(("decode", f"d{slot}"))
    pixels = [v for (mode, _), v in e.items() if mode == "pixels" and v]
    # The faster run: drift on a shared machine then lowers eff px rather
    # than flattering it.
    best_px = max(v[0] for v in pixels) if pixels else None
    print()
    print(f"== {size} JPEG ==")
    print(f"{'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-200':>12} {'sock err':>8} "
          f"{'server ms q/dec/inf/post':>26} {'cpu ms':>7} {'eff':>6} {'eff px':>6} {'cpu eff':>7}")
    for f in runs:
        secs = int(f["duration_us"]) / 1e6
        rps = (int(f["requests"]) - int(f["non200"])) / secs
        non200 = f["non200"] if f["non200"] == "0" else f"{f['non200']} ({f['statuses']})"
        sock = sum(int(f[k]) for k in ("connect", "read", "write", "timeout"))
        around = [v for v in (decode(int(f["slot"])), decode(int(f["slot"]) + 1)) if v]
        eff = f"{rps / (sum(v[0] for v in around) / len(around)):.2f}" if around else "-"
        eff_px = f"{rps / best_px:.2f}" if best_px else "-"
        cpu = float(f["cpu_ms"]) / int(f["requests"]) if int(f["requests"]) else None
        cpu_eff = f"{sum(v[1] for v in around) / len(around) / cpu:.2f}" if around and cpu else "-"
        cpu = f"{cpu:.1f}" if cpu else "-"
        print(f"{f['c']:>4} {rps:8.2f} {int(f['p50_us']) / 1e3:8.1f} {int(f['p90_us']) / 1e3:8.1f} "
              f"{int(f['p99_us']) / 1e3:8.1f} {non200:>12} {sock:>8} {f['server']:>26} {cpu:>7} {eff:>6} "
              f"{eff_px:>6} {cpu_eff:>7}")
        if f["logwarn"] != "0":
            print(f"     ({f['logwarn']} warn/error line(s) in the daemon log besides requests)")
    for mode, what in (("decode", "--decode-each"), ("pixels", "pixels decoded once")):
        shown = ", ".join(f"{v[0]:.2f} ({v[1]:.1f} cpu ms) {when}" if v else
                          f"FAILED {when} (see $work/predict_{size}_{mode}_{when}.txt)"
                          for (m, when), v in e.items() if m == mode)
        print(f"engine-only, {what} (maskd predict, $workers worker(s) x $engine_threads thread(s)): "
              f"images/s {shown or 'none'}")
print()
print("daemon exit status after SIGTERM: $rc" + ("" if $rc == 0 else "  <-- NOT 0, see $log"))
PY
exit "$rc"
