/**
 * quantizeGGUF at a published checkpoint's shape, against llama-quantize on the same file:
 *
 *   node dist/benchmarks/gguf-full-size.js [--preset minitron-4b] [--type Q8_0] [--threads 2] [--dir /tmp]
 *     [--llama-quantize PATH] [--load-model] [--keep] [--out benchmarks/results/gguf-full-size-minitron-4b.md]
 *
 * Writes the preset's F16 GGUF as llama.cpp's converter lays it out (tensor names, norms in F32) with random values —
 * a 64 MB pool of N(0, 0.02²) halves, tiled from a different offset for each tensor: no model is built, so an 8 GB
 * file is made in a minute — then times quantizeGGUF to `--type` in a child process and records its peak RSS
 * (VmHWM), and llama-quantize's (`/usr/bin/time -v`), and compares the two files byte for byte; then times reading
 * every tensor of our file back to float32 (GGUFFile.read) on one thread and on `--threads`, and with `--load-model`
 * loads it as a model (tensorflow backend) and runs one forward (`--keep` leaves the files; `--model-only --input FILE`
 * is that last step alone). Node flags given to this
 * process (`node --cpu-prof …`) go to the children too.
 */
import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GGUFFile, NemotronConfig, NemotronForCausalLM, initBackend, quantizeGGUF, writeGGUF } from '../src/index';
import { type GGUFMetaValue } from '../src/io/gguf';
import { type GGUFQuantMix } from '../src/io/gguf-quantize';
import { float32ArrayToF16 } from '../src/io/safetensors';

/** The preset's tensors as the converter names and types them (numpy-order shapes). */
function tensorsOf(config: NemotronConfig): Array<{ name: string; shape: number[]; type: 'F16' | 'F32' }> {
  const { hiddenSize: h, intermediateSize: ffn, numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim, vocabSize, numHiddenLayers } = config;
  const vector = (name: string) => ({ name, shape: [h], type: 'F32' as const });
  const matrix = (name: string, rows: number, columns: number) => ({ name, shape: [rows, columns], type: 'F16' as const });
  const layers = Array.from({ length: numHiddenLayers }, (_, i) => [
    vector(`blk.${i}.attn_norm.weight`), vector(`blk.${i}.attn_norm.bias`), matrix(`blk.${i}.attn_q.weight`, heads * headDim, h),
    matrix(`blk.${i}.attn_k.weight`, kvHeads * headDim, h), matrix(`blk.${i}.attn_v.weight`, kvHeads * headDim, h),
    matrix(`blk.${i}.attn_output.weight`, h, heads * headDim), vector(`blk.${i}.ffn_norm.weight`), vector(`blk.${i}.ffn_norm.bias`),
    matrix(`blk.${i}.ffn_up.weight`, ffn, h), matrix(`blk.${i}.ffn_down.weight`, h, ffn),
  ]).flat();
  return [matrix('token_embd.weight', vocabSize, h), ...layers, vector('output_norm.weight'), vector('output_norm.bias'), matrix('output.weight', vocabSize, h)];
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const arg = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const threads = Number(arg('--threads', String(os.availableParallelism())));
  const type = arg('--type', 'Q8_0') as GGUFQuantMix;
  if (argv.includes('--read-only')) {
    // The child: every tensor of a GGUF dequantized (GGUFFile.read, as fromPretrained reads it) on `threads` threads.
    const start = performance.now();
    const file = GGUFFile.open(arg('--input', ''), { decodeThreads: threads });
    let values = 0;
    try {
      for (const name of file.tensors.keys()) values += file.read(name).data.length;
    } finally {
      file.close();
    }
    const peak = Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
    console.log(JSON.stringify({ seconds: (performance.now() - start) / 1000, peakBytes: peak, values }));
    return;
  }
  if (argv.includes('--model-only')) {
    // The child: the quantized file loaded as a model on the tensorflow backend (fromPretrained), then one forward.
    const backend = await initBackend('tensorflow', { quiet: true }).catch(() => initBackend());
    let start = performance.now();
    const model = await NemotronForCausalLM.fromPretrained(arg('--input', ''));
    const loadSeconds = (performance.now() - start) / 1000;
    const loadPeak = Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
    start = performance.now();
    const out = model.forward({ inputIds: [[2, 1014, 338, 263, 1243, 29889, 450, 4996]], logitsToKeep: 1 });
    const logits = out.logits.dataSync();
    out.logits.dispose();
    const forwardSeconds = (performance.now() - start) / 1000;
    const finite = logits.every((v) => Number.isFinite(v));
    model.dispose();
    console.log(JSON.stringify({ backend, loadSeconds, loadPeak, forwardSeconds, finite }));
    return;
  }
  if (argv.includes('--quantize-only')) {
    // The child: one quantizeGGUF call, its time and this process's peak RSS.
    const start = performance.now();
    await quantizeGGUF(arg('--input', ''), arg('--output', ''), type, { threads });
    const peak = Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
    console.log(JSON.stringify({ seconds: (performance.now() - start) / 1000, peakBytes: peak }));
    return;
  }
  const presetName = arg('--preset', 'minitron-4b');
  const config = NemotronConfig.preset(presetName);
  const dir = fs.mkdtempSync(path.join(arg('--dir', os.tmpdir()), 'gguf-full-size-'));
  const llamaQuantize = arg('--llama-quantize', process.env.LLAMA_QUANTIZE ?? '');
  const out = arg('--out', `benchmarks/results/gguf-full-size-${presetName}.md`);
  const u32 = (v: number): GGUFMetaValue => ['u32', v];
  const kv: Array<[string, GGUFMetaValue]> = [
    ['general.architecture', ['str', 'nemotron']], ['general.name', ['str', `${presetName} (random)`]], ['general.file_type', u32(1)],
    ['nemotron.context_length', u32(config.maxPositionEmbeddings)], ['nemotron.embedding_length', u32(config.hiddenSize)],
    ['nemotron.block_count', u32(config.numHiddenLayers)], ['nemotron.feed_forward_length', u32(config.intermediateSize)],
    ['nemotron.attention.head_count', u32(config.numAttentionHeads)], ['nemotron.attention.head_count_kv', u32(config.numKeyValueHeads)],
    ['nemotron.rope.freq_base', ['f32', config.ropeTheta]], ['nemotron.vocab_size', u32(config.vocabSize)],
    ['nemotron.attention.layer_norm_epsilon', ['f32', config.normEps]],
    ['nemotron.rope.dimension_count', u32(Math.round(config.headDim * config.partialRotaryFactor))],
  ];
  // A pool of random halves (Box–Muller from a fixed LCG), tiled into every matrix from its own offset.
  const poolValues = 1 << 25;
  const values = new Float32Array(poolValues);
  let seed = 12345;
  const uniform = () => { seed = (seed * 1103515245 + 12345) >>> 0; return (seed + 0.5) / 2 ** 32; };
  for (let i = 0; i < poolValues; i++) values[i] = 0.02 * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  const pool = Buffer.from(float32ArrayToF16(values).buffer);
  const tensors = tensorsOf(config);
  const f16 = path.join(dir, 'F16.gguf');
  let start = performance.now();
  writeGGUF(f16, kv, tensors.map((t, index) => ({
    ...t, data: new Float32Array(0), read: () => {
      const count = t.shape.reduce((a, b) => a * b, 1);
      if (t.type === 'F32') return Buffer.from(new Float32Array(count).fill(t.name.endsWith('bias') ? 0 : 1).buffer);
      const bytes = Buffer.alloc(2 * count);
      for (let at = 0, from = (index * 7919 * 2) % pool.length; at < bytes.length;) {
        const n = Math.min(bytes.length - at, pool.length - from);
        pool.copy(bytes, at, from, from + n);
        at += n;
        from = 0;
      }
      return bytes;
    },
  })));
  const makeSeconds = (performance.now() - start) / 1000;
  const parameters = tensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
  console.log(`wrote ${f16}: ${(fs.statSync(f16).size / 1e9).toFixed(2)} GB, ${(parameters / 1e9).toFixed(2)} B parameters, in ${makeSeconds.toFixed(1)} s`);
  const ours = path.join(dir, `${type}.gguf`);
  // The child takes this process's node flags (e.g. `node --cpu-prof` profiles it and its worker threads).
  const child = spawnSync(process.execPath, [...process.execArgv, __filename, '--quantize-only', '--input', f16, '--output', ours, '--type', type, '--threads', String(threads)],
    { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (child.status !== 0) throw new Error(`quantizeGGUF failed: ${child.stderr.slice(-2000)}`);
  const measured = JSON.parse(child.stdout.trim().split('\n').pop()!) as { seconds: number; peakBytes: number };
  const rows = [`| ours (quantizeGGUF) | ${measured.seconds.toFixed(1)} | ${(measured.peakBytes / 2 ** 30).toFixed(2)} | ${(fs.statSync(ours).size / 1e9).toFixed(2)} | |`];
  console.log(rows[0]);
  if (llamaQuantize) {
    const theirs = path.join(dir, `${type}-llama.gguf`);
    start = performance.now();
    const run = spawnSync('/usr/bin/time', ['-v', llamaQuantize, f16, theirs, type, String(threads)], { encoding: 'utf8', maxBuffer: 1 << 26 });
    const seconds = (performance.now() - start) / 1000;
    if (run.status !== 0) throw new Error(`llama-quantize failed: ${run.stderr.slice(-2000)}`);
    const peakKb = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(run.stderr)![1]);
    // Hashed in pieces: the files are larger than one read may be.
    const sha = (file: string) => {
      const hash = crypto.createHash('sha256');
      const piece = Buffer.alloc(1 << 26);
      const fd = fs.openSync(file, 'r');
      try {
        for (let n; (n = fs.readSync(fd, piece, 0, piece.length, null)) > 0;) hash.update(piece.subarray(0, n));
      } finally {
        fs.closeSync(fd);
      }
      return hash.digest('hex');
    };
    const same = sha(theirs) === sha(ours);
    rows.push(`| llama-quantize | ${seconds.toFixed(1)} | ${(peakKb / 2 ** 20).toFixed(2)} (mmap'd input pages count) | ${(fs.statSync(theirs).size / 1e9).toFixed(2)} | ${same ? 'identical' : 'DIFFERENT'} |`);
    console.log(rows[1]);
  }
  // Reading the quantized file back, as a GGUF model load dequantizes it: on one thread and on `threads`.
  const loads: string[] = [];
  for (const readThreads of [...new Set([1, threads])]) {
    const read = spawnSync(process.execPath, [...process.execArgv, __filename, '--read-only', '--input', ours, '--threads', String(readThreads)],
      { encoding: 'utf8', maxBuffer: 1 << 24 });
    if (read.status !== 0) throw new Error(`reading ${ours} failed: ${read.stderr.slice(-2000)}`);
    const r = JSON.parse(read.stdout.trim().split('\n').pop()!) as { seconds: number; peakBytes: number; values: number };
    loads.push(`| ${readThreads} | ${r.seconds.toFixed(1)} | ${(r.values / r.seconds / 1e6).toFixed(0)} | ${(r.peakBytes / 2 ** 30).toFixed(2)} |`);
    console.log(loads[loads.length - 1]);
  }
  let modelLoad = '';
  if (argv.includes('--load-model')) {
    const run = spawnSync(process.execPath, [...process.execArgv, __filename, '--model-only', '--input', ours], { encoding: 'utf8', maxBuffer: 1 << 24 });
    if (run.status !== 0) throw new Error(`loading ${ours} failed: ${run.stderr.slice(-2000)}`);
    const m = JSON.parse(run.stdout.trim().split('\n').pop()!) as { backend: string; loadSeconds: number; loadPeak: number; forwardSeconds: number; finite: boolean };
    modelLoad = `NemotronForCausalLM.fromPretrained of that file on the ${m.backend} backend (dequantized on ${threads} threads, float32 weights): ` +
      `${m.loadSeconds.toFixed(1)} s, peak RSS ${(m.loadPeak / 2 ** 30).toFixed(2)} GiB; a forward of 8 tokens ${m.forwardSeconds.toFixed(2)} s, ` +
      `logits ${m.finite ? 'finite' : 'NOT FINITE'}.`;
    console.log(modelLoad);
  }
  if (argv.includes('--keep')) console.log(`kept ${dir}`);
  else fs.rmSync(dir, { recursive: true });
  const text = [`# quantizeGGUF at ${presetName}'s shape: F16 → ${type}, ${new Date().toISOString().slice(0, 10)}`, '',
    `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism()} threads available, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ${threads} threads;`,
    `random F16 values (a tiled pool), ${(parameters / 1e9).toFixed(2)} B parameters; the F16 file written in ${makeSeconds.toFixed(1)} s. One run.`, '',
    '| writer | seconds | peak RSS GiB | output GB | file vs ours |', '| --- | ---: | ---: | ---: | --- |', ...rows, '',
    `Every tensor of our ${type} file dequantized to float32 (GGUFFile.read, what a GGUF model load does before the backend), each in a child process:`, '',
    '| decode threads | seconds | M values/s | peak RSS GiB |', '| ---: | ---: | ---: | ---: |', ...loads, '', ...(modelLoad ? [modelLoad, ''] : [])].join('\n');
  fs.writeFileSync(out, text);
  console.log(`wrote ${out}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
