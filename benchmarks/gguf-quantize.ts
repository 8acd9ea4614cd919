/**
 * Writing GGUF files, ours against llama.cpp's llama-quantize on the same machine:
 *
 *   node dist/benchmarks/gguf-quantize.js [--config minitron-small] [--types F32,Q8_0,Q4_K_M,Q6_K] [--threads 1,2]
 *     [--imatrix-chunks 4 --imatrix-types Q2_K_S,IQ4_XS --backend tensorflow]
 *     [--requantize Q8_0:Q4_K_M,Q4_K_M:Q3_K_S] [--llama-quantize PATH] [--out benchmarks/results/gguf-quantize-minitron-small.md]
 *
 * With --imatrix-chunks, an importance matrix is computed first (computeImatrix over that many 512-token chunks of
 * random token ids, on --backend), and the --imatrix-types mixes are written with it, by us and by
 * `llama-quantize --imatrix` from the same F32 file and the same matrix.
 * Random weights (N(0, 0.02²)), one run each. For a k-quant mix the time is saveGGUF's whole call (weights read from
 * the backend, the mix chosen, quantized on `threads` worker threads, the file written); llama-quantize (built from
 * llama-cpp-python's sources, see scripts/reference/gguf_kquant_fixtures.py) makes the same file from the F32 one,
 * timed as a child process, and the two files are compared byte for byte. F32, F16, Q8_0 and Q4_0 are the converter's
 * (saveGGUF), not compared. --requantize FROM:TO: quantizeGGUF from llama-quantize's FROM file (made from the F32 one)
 * to TO with allowRequantize, against `llama-quantize --allow-requantize` on the same input.
 */
import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { computeImatrix, NemotronConfig, NemotronForCausalLM, NemotronTokenizer, quantizeGGUF, setBackend, writeImatrix } from '../src/index';
import type { GGUFWriteType } from '../src/io/gguf';
import { type GGUFQuantMix, isLlamaQuantizeMix } from '../src/io/gguf-quantize';
import { benchConfig } from './configs';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const arg = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const backend = await setBackend(arg('--backend', 'cpu') as Parameters<typeof setBackend>[0]);
  const config = benchConfig(arg('--config', 'minitron-small'));
  const types = arg('--types', 'F32,Q8_0,Q4_K_M,Q6_K').split(',') as GGUFWriteType[];
  const threadCounts = arg('--threads', `1,${os.availableParallelism()}`).split(',').map(Number);
  const llamaQuantize = arg('--llama-quantize', process.env.LLAMA_QUANTIZE ?? '');
  const out = arg('--out', `benchmarks/results/gguf-quantize-${config.name}.md`);
  const model = new NemotronForCausalLM(new NemotronConfig(config.fields));
  // A SentencePiece-style vocabulary of the configuration's size is not at hand: the tiny fixture's tokenizer, its
  // vocabulary written as the file's (llama-quantize copies metadata, so the comparison is not affected).
  const tokenizer = await NemotronTokenizer.fromPretrained(path.resolve(__dirname, '../../test/fixtures/gguf/tiny-gqa.gguf'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gguf-bench-'));
  const values = model.numParameters();
  const sha = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const rows: string[] = [];
  const f32 = path.join(dir, 'F32.gguf');
  const imatrixChunks = Number(arg('--imatrix-chunks', '0'));
  const imatrixFile = path.join(dir, 'imatrix.gguf');
  const runs: Array<[GGUFWriteType, boolean]> = types.map((t) => [t, false]);
  let imatrixNote = '';
  if (imatrixChunks > 0) {
    const ids = Array.from({ length: imatrixChunks * 512 }, (_, i) => 1 + ((i * 7919) % ((config.fields.vocabSize ?? 32000) - 1)));
    const t = performance.now();
    const matrix = computeImatrix(model, null, ids, { chunkSize: 512, dataset: 'random ids' });
    const seconds = (performance.now() - t) / 1000;
    writeImatrix(imatrixFile, matrix);
    imatrixNote = `computeImatrix on ${backend}: ${imatrixChunks} chunks of 512 tokens in ${seconds.toFixed(2)} s (${(imatrixChunks * 512 / seconds).toFixed(1)} tokens/s), ${matrix.entries.size} matrices.`;
    console.log(imatrixNote);
    if (!types.includes('F32')) runs.unshift(['F32', false]);
    runs.push(...arg('--imatrix-types', 'IQ4_XS').split(',').map((t): [GGUFWriteType, boolean] => [t as GGUFWriteType, true]));
  }
  for (const [type, weighted] of runs) {
    for (const threads of isLlamaQuantizeMix(type) ? threadCounts : [1]) {
      const file = path.join(dir, `${type}-${threads}.gguf`);
      const t = performance.now();
      await model.saveGGUF(file, tokenizer, { type, name: config.name, threads, imatrix: weighted ? imatrixFile : undefined });
      const seconds = (performance.now() - t) / 1000;
      if (type === 'F32') fs.copyFileSync(file, f32);
      const size = fs.statSync(file).size;
      const label = `${type}${weighted ? ' + imatrix' : ''}`;
      rows.push(`| ours | ${label} | ${threads} | ${seconds.toFixed(2)} | ${(values / seconds / 1e6).toFixed(2)} | ${(size / 1e6).toFixed(1)} | |`);
      console.log(rows[rows.length - 1]);
      if (!llamaQuantize || !isLlamaQuantizeMix(type) || !fs.existsSync(f32)) continue;
      const theirs = path.join(dir, `${type}-llama-${threads}.gguf`);
      const start = performance.now();
      // The same path string as ours recorded, so that the files can be equal byte for byte.
      const run = spawnSync(llamaQuantize, [...(weighted ? ['--imatrix', imatrixFile] : []), f32, theirs, type, String(threads)], { encoding: 'utf8' });
      const theirSeconds = (performance.now() - start) / 1000;
      if (run.status !== 0) throw new Error(`llama-quantize failed: ${run.stderr.slice(-2000)}`);
      const same = sha(theirs) === sha(file);
      rows.push(`| llama-quantize | ${label} | ${threads} | ${theirSeconds.toFixed(2)} | ${(values / theirSeconds / 1e6).toFixed(2)} | ${(fs.statSync(theirs).size / 1e6).toFixed(1)} | ${same ? 'identical' : 'DIFFERENT'} |`);
      console.log(rows[rows.length - 1]);
      fs.rmSync(theirs);
    }
  }
  model.dispose();
  for (const pair of arg('--requantize', '').split(',').filter(Boolean)) {
    const [from, to] = pair.split(':') as [GGUFQuantMix, GGUFQuantMix];
    if (!llamaQuantize || !fs.existsSync(f32)) throw new Error('--requantize needs --llama-quantize PATH and F32 among --types');
    const input = path.join(dir, `${from}-input.gguf`);
    const made = spawnSync(llamaQuantize, [f32, input, from, String(Math.max(...threadCounts))], { encoding: 'utf8' });
    if (made.status !== 0) throw new Error(`llama-quantize failed: ${made.stderr.slice(-2000)}`);
    for (const threads of threadCounts) {
      const [ours, theirs] = [path.join(dir, `${to}-from-${from}.gguf`), path.join(dir, `${to}-from-${from}-llama.gguf`)];
      let start = performance.now();
      await quantizeGGUF(input, ours, to, { allowRequantize: true, threads });
      const seconds = (performance.now() - start) / 1000;
      start = performance.now();
      const run = spawnSync(llamaQuantize, ['--allow-requantize', input, theirs, to, String(threads)], { encoding: 'utf8' });
      const theirSeconds = (performance.now() - start) / 1000;
      if (run.status !== 0) throw new Error(`llama-quantize failed: ${run.stderr.slice(-2000)}`);
      const label = `${from} → ${to} (requantize)`;
      rows.push(`| ours | ${label} | ${threads} | ${seconds.toFixed(2)} | ${(values / seconds / 1e6).toFixed(2)} | ${(fs.statSync(ours).size / 1e6).toFixed(1)} | |`,
        `| llama-quantize | ${label} | ${threads} | ${theirSeconds.toFixed(2)} | ${(values / theirSeconds / 1e6).toFixed(2)} | ${(fs.statSync(theirs).size / 1e6).toFixed(1)} | ${sha(theirs) === sha(ours) ? 'identical' : 'DIFFERENT'} |`);
      console.log(rows.slice(-2).join('\n'));
      fs.rmSync(ours);
      fs.rmSync(theirs);
    }
  }
  fs.rmSync(dir, { recursive: true });
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const text = [`# GGUF writing: ${config.name} (${(values / 1e6).toFixed(1)} M parameters), ${new Date().toISOString().slice(0, 10)}`, '',
    `${cpu}, ${os.availableParallelism()} threads available, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; random weights, one run each.`, '',
    ...(imatrixNote ? [imatrixNote, ''] : []),
    '| writer | type | threads | seconds | M parameters/s | MB | file vs ours |', '| --- | --- | ---: | ---: | ---: | ---: | --- |', ...rows, ''].join('\n');
  fs.writeFileSync(out, text);
  console.log(`wrote ${out}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
