#!/usr/bin/env node
// Runs an ONNX model under ONNX Runtime (npm onnxruntime-node, CPU) on .npy
// inputs and prints one JSON line: load time, min/median latency, peak RSS.
//   node ort_run.js MODEL.onnx NAME=FILE.npy [...] [--threads N] [--repeat N] [--warmup-ms MS]
//                   [--profile DIR]
// Untimed runs go on until MS ms have passed since the first began (at least one).
// --profile: ORT's own per-node trace of the timed runs (a JSON file in DIR, named in
// the output line as profile_file; bench/engine/layers.py --ort reads it).
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

function readNpy(path) {
  const buf = fs.readFileSync(path);
  if (buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${path}: not a .npy file`);
  const major = buf[6];
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1]
    .split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const types = { '<f4': ['float32', Float32Array], '<i8': ['int64', BigInt64Array],
                  '<i4': ['int32', Int32Array], '|u1': ['uint8', Uint8Array] };
  if (!types[descr]) throw new Error(`${path}: unsupported dtype ${descr}`);
  const [type, Arr] = types[descr];
  const body = buf.subarray(start + hlen);
  const copy = new Uint8Array(body.length);
  copy.set(body);
  return new ort.Tensor(type, new Arr(copy.buffer), shape);
}

async function main() {
  const args = process.argv.slice(2);
  let threads = 1, repeat = 10, warmupMs = 0, profileDir = null;
  const feeds = {};
  let model = null;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--threads') threads = Number(args[++i]);
    else if (args[i] === '--repeat') repeat = Number(args[++i]);
    else if (args[i] === '--warmup-ms') warmupMs = Number(args[++i]);
    else if (args[i] === '--profile') profileDir = args[++i];
    else if (args[i].includes('=')) {
      const [name, file] = args[i].split('=');
      feeds[name] = readNpy(file);
    } else model = args[i];
  }
  const t0 = process.hrtime.bigint();
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: 'all' };
  let earlier = null;
  if (profileDir) {
    fs.mkdirSync(profileDir, { recursive: true });
    earlier = new Set(fs.readdirSync(profileDir));
    Object.assign(options, { enableProfiling: true, profileFilePrefix: path.join(profileDir, 'ort') });
  }
  const session = await ort.InferenceSession.create(model, options);
  const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const w0 = process.hrtime.bigint();
  do await session.run(feeds); // warm-up
  while (Number(process.hrtime.bigint() - w0) / 1e6 < warmupMs);
  // Profiling starts with the session, so the trace holds the warm-up runs too; they are
  // told apart by count (the last `repeat` model_run events are the timed ones).
  const times = [];
  for (let r = 0; r < repeat; r++) {
    const s = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  times.sort((a, b) => a - b);
  const result = { runtime: 'onnxruntime-node', version: ort.env.versions ? ort.env.versions.common : undefined,
    threads, load_ms: loadMs, min_ms: times[0], median_ms: times[Math.floor(times.length / 2)],
    peak_rss_mb: process.resourceUsage().maxRSS / 1024 };
  if (profileDir) {
    // The trace is complete when profiling ends (endProfiling, or the session's release).
    if (session.endProfiling) session.endProfiling();
    if (session.release) await session.release();
    const written = fs.readdirSync(profileDir).filter((f) => f.startsWith('ort') && !earlier.has(f));
    if (written.length !== 1) throw new Error(`no single new profile in ${profileDir}`);
    result.profile_file = path.join(profileDir, written[0]);
  }
  console.log(JSON.stringify(result));
}
main().catch((e) => { console.error(`ort_run: ${e.message}`); process.exit(1); });
