import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { computeImatrix, dequantize, GGUFFile, type ImportanceMatrix, importanceOf, quantizeGGUF, readImatrix, setBackend, writeImatrix } from '../../src/index';
import { quantizeRows } from '../../src/io/gguf-quantize-imatrix';
import { type GGUFQuantMix } from '../../src/io/gguf-quantize';
import { type QuantizedFileDigest, expectLlamaBlocks, expectMixFiles, nemotronHWithImatrix, quantizeModel, sha256 } from './gguf-quantize-models';
import { testBackends, tmpDir } from '../helpers';

/**
 * Importance matrices as llama.cpp makes and uses them: the weighted quantizers and IQ4_NL / IQ4_XS byte for byte
 * against ggml_quantize_chunk, whole files against llama-quantize (--imatrix), our importance matrix against
 * llama-imatrix's on the same model and text. Fixtures: scripts/reference/gguf_imatrix_fixtures.py.
 */
const DIR = path.resolve(__dirname, '../../../test/fixtures/gguf-imatrix');
const KQUANT_BLOCKS = path.resolve(__dirname, '../../../test/fixtures/gguf-kquants/blocks.f32');
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as {
  chunk: number; blocks: Record<string, string>; tokens: Record<string, number[]>; files: Record<string, QuantizedFileDigest>;
};
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const IMATRIX_MIXES: GGUFQuantMix[] = ['Q2_K_S', 'Q3_K_M', 'Q4_K_M', 'Q6_K', 'IQ4_NL', 'IQ4_XS', 'IQ3_XXS', 'IQ3_XS', 'IQ3_S', 'IQ3_M', 'IQ2_XXS', 'IQ2_XS', 'IQ2_S', 'IQ2_M'];
const PLAIN_MIXES: GGUFQuantMix[] = ['IQ4_NL', 'IQ4_XS', 'IQ3_S', 'IQ3_M'];
const WEIGHTED_TYPES = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q4_0', 'Q5_0', 'Q5_1', 'IQ4_NL', 'IQ4_XS', 'IQ3_XXS', 'IQ3_S', 'IQ2_XXS', 'IQ2_XS', 'IQ2_S'] as const;
/** The types llama.cpp also quantizes without an importance matrix (IQ2_XXS and IQ2_XS assert one). */
const UNWEIGHTED_TOO = WEIGHTED_TYPES.filter((t) => t !== 'IQ2_XXS' && t !== 'IQ2_XS');
const floats = (file: string) => { const raw = fs.readFileSync(file); return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)); };

/** Each sum of `ours` within 1e-4 of llama-imatrix's, relative to that sum or (for near-zero ones) the entry's mean. */
function expectSameStatistics(ours: ImportanceMatrix, theirs: ImportanceMatrix, label: string): void {
  expect([...ours.entries.keys()].sort(), `${label}: the matrices collected`).to.deep.equal([...theirs.entries.keys()].sort());
  for (const [name, entry] of theirs.entries) {
    const mine = ours.entries.get(name)!;
    expect([...mine.counts], `${label}: ${name}'s token counts (per expert)`).to.deep.equal([...entry.counts]);
    const mean = entry.sums.reduce((s, v) => s + Math.abs(v), 0) / entry.sums.length;
    let worst = 0;
    entry.sums.forEach((v, i) => { worst = Math.max(worst, Math.abs(mine.sums[i] - v) / Math.max(Math.abs(v), mean)); });
    expect(worst, `${label}: ${name}'s sums of squares`).to.be.below(1e-4);
  }
}

describe('Importance matrices (llama-imatrix, llama-quantize --imatrix) and IQ4_NL / IQ4_XS', function () {
  this.timeout(600000);
  before(async () => { await setBackend('cpu'); });

  it('quantizes with importance weights as ggml_quantize_chunk does, byte for byte: Q2_K…Q6_K, Q4_0, Q5_0, Q5_1, IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S; the i-quants without too', () => {
    const values = floats(KQUANT_BLOCKS);
    expectLlamaBlocks(reference.blocks, DIR);
    expect(Object.keys(reference.blocks)).to.have.length(2 * WEIGHTED_TYPES.length + 5);
    expect(() => quantizeRows('IQ2_XS', values)).to.throw(/IQ2_XS needs an importance matrix/);
  });

  it('weighted by the activations\' mean squares, each type\'s error in x·Wᵀ drops to under half the unweighted one', () => {
    // Columns of very different scale (as an LLM's hidden states have): where the importance matrix earns its keep.
    const rng = seedrandom('imatrix-error');
    const normal = () => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
    const [rows, columns, tokens] = [64, 256, 256];
    const weight = Float32Array.from({ length: rows * columns }, () => 0.02 * normal());
    const scale = Array.from({ length: columns }, () => Math.exp(1.5 * normal()));
    const x = Float32Array.from({ length: tokens * columns }, (_, i) => scale[i % columns] * normal());
    const importance = new Float32Array(columns);
    for (let t = 0; t < tokens; t++) for (let j = 0; j < columns; j++) importance[j] += x[t * columns + j] ** 2 / tokens;
    const productError = (w: Float32Array) => tf.tidy(() => {
      const delta = tf.sub(tf.tensor2d(weight, [rows, columns]), tf.tensor2d(w, [rows, columns]));
      return tf.sum(tf.square(tf.matMul(tf.tensor2d(x, [tokens, columns]), delta, false, true))).dataSync()[0];
    });
    for (const type of UNWEIGHTED_TOO) {
      const plain = productError(dequantize(quantizeRows(type, weight), type, weight.length));
      const weighted = productError(dequantize(quantizeRows(type, weight, importance), type, weight.length));
      expect(weighted / plain, `${type}: error with / without the importance weights`).to.be.below(0.5);
    }
  });

  for (const name of ['nemotron', 'nemotron-tied', 'nemotron-h'] as const) {
    it(`${name}: saveGGUF writes llama-quantize's ${PLAIN_MIXES.join(', ')} files${name === 'nemotron-tied' ? '' : `, and with its importance matrix ${IMATRIX_MIXES.join(', ')},`} byte for byte`, async () => {
      await expectMixFiles(name, reference.files, { plain: PLAIN_MIXES, imatrix: name === 'nemotron-tied' ? [] : IMATRIX_MIXES, imatrixDir: DIR });
    });
  }

  it('quantizeGGUF and the CLI (convert --gguf F32 --type MIX --imatrix FILE) write llama-quantize --imatrix\'s file; bad inputs are refused by name', async () => {
    const dir = await nemotronHWithImatrix(DIR);
    const matrix = readImatrix(path.join(dir, 'imatrix.gguf'));
    await quantizeGGUF(path.join(dir, 'nemotron-h-F32.gguf'), path.join(dir, 'api.gguf'), 'IQ4_XS', { imatrix: { matrix, file: 'imatrix.gguf' } });
    expect(sha256(fs.readFileSync(path.join(dir, 'api.gguf')))).to.equal(reference.files['nemotron-h imatrix IQ4_XS'].sha256);
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: dir });
    const run = cli('convert', '--gguf', 'nemotron-h-F32.gguf', '--output', 'cli.gguf', '--type', 'Q2_K_S', '--imatrix', 'imatrix.gguf', '--threads', '2');
    expect(run.status, run.stderr).to.equal(0);
    expect(sha256(fs.readFileSync(path.join(dir, 'cli.gguf')))).to.equal(reference.files['nemotron-h imatrix Q2_K_S'].sha256);
    // Q2_K_S without an importance matrix; one without an entry for a tensor; one whose entry has the wrong size.
    const refused = (mix: GGUFQuantMix, m?: ImportanceMatrix) => quantizeGGUF(path.join(dir, 'nemotron-h-F32.gguf'), path.join(dir, 'x.gguf'), mix,
      m ? { imatrix: { matrix: m } } : {}).then(() => 'written', (e: Error) => e.message);
    expect(await refused('Q2_K_S')).to.match(/Q2_K_S needs an importance matrix for blk\.\d+\.\w+\.weight \(Q2_K\) \(llama-quantize --imatrix FILE/);
    const partial = { ...matrix, entries: new Map([...matrix.entries].filter(([n]) => n !== 'blk.0.ssm_in.weight')) };
    expect(await refused('Q2_K_S', partial)).to.match(/Q2_K_S needs an importance matrix for blk\.0\.ssm_in\.weight \(Q2_K\) and the one given has no entry for it/);
    expect(await refused('IQ3_XS')).to.match(/IQ3_XS needs an importance matrix for blk\.\d+\.\w+\.weight \(IQ3_XXS\)/);
    const wrong = { ...matrix, entries: new Map([...matrix.entries].map(([n, e]) => [n, n === 'blk.2.attn_q.weight' ? { sums: e.sums.subarray(0, 128), counts: e.counts } : e])) };
    expect(await refused('Q4_K_M', wrong)).to.match(/the importance matrix has 128 values for blk\.2\.attn_q\.weight, whose 256×256 tensor needs 256/);
    const typeMismatch = cli('convert', '--gguf', 'nemotron-h-F32.gguf', '--output', 'folder', '--imatrix', 'imatrix.gguf');
    expect(typeMismatch.stderr).to.match(/--imatrix weighs llama-quantize's job \(--gguf FILE --output FILE\.gguf, or --model DIR with --type Q4_K_M, …\), not a GGUF into a folder/);
    expect(cli('convert', '--gguf', 'nemotron-h-F32.gguf', '--output', 'y.gguf', '--type', 'Q4_K_M', '--imatrix', 'missing.gguf').stderr).to.match(/--imatrix missing\.gguf: no such file/);
    expect(() => readImatrix(path.join(dir, 'nemotron-h-F32.gguf'))).to.throw(/has no \*\.in_sum2 tensors; it is not an importance matrix/);
  });

  for (const backend of testBackends()) {
    it(`computeImatrix on ${backend} gives llama-imatrix's matrix (same text and chunks): its entries, token counts, sums within 1e-4`, async () => {
      await setBackend(backend);
      const text = fs.readFileSync(path.join(DIR, 'calibration.txt'), 'utf8');
      for (const name of ['nemotron', 'nemotron-h'] as const) {
        const { model, tokenizer } = await quantizeModel(name);
        try {
          expect(tokenizer.encode(text), `${name}: our tokens are llama.cpp's`).to.deep.equal(reference.tokens[name]);
          const before = tf.memory().numTensors;
          const ours = computeImatrix(model, tokenizer, text, { chunkSize: reference.chunk, dataset: 'calibration.txt' });
          expect(tf.memory().numTensors, 'no tensor left').to.equal(before);
          const theirs = readImatrix(path.join(DIR, `${name}.imatrix.gguf`));
          expect([ours.chunkCount, ours.chunkSize, ours.datasets]).to.deep.equal([theirs.chunkCount, theirs.chunkSize, theirs.datasets]);
          expectSameStatistics(ours, theirs, `${name} on ${backend}`);
        } finally {
          model.dispose();
        }
      }
      await setBackend('cpu');
    });
  }

  it('writeImatrix writes llama-imatrix\'s layout (readImatrix and llama.cpp\'s loader read it), and the legacy .dat file reads as its GGUF', async () => {
    const theirs = readImatrix(path.join(DIR, 'nemotron.imatrix.gguf'));
    const file = path.join(tmpDir('imatrix-write'), 'ours.gguf');
    writeImatrix(file, theirs);
    const back = readImatrix(file);
    expect(back.datasets).to.deep.equal(theirs.datasets);
    for (const [name, entry] of theirs.entries) expect(back.entries.get(name), name).to.deep.equal(entry);
    // Same keys, tensor names, shapes and types as llama-imatrix's file, in its order.
    const layout = (f: string) => { const g = GGUFFile.open(f); try { return { keys: [...g.metadata.keys()], tensors: [...g.tensors].map(([n, t]) => [n, t.type, t.shape]) }; } finally { g.close(); } };
    expect(layout(file)).to.deep.equal(layout(path.join(DIR, 'nemotron.imatrix.gguf')));
    // The legacy format stores sums / count · calls; llama-quantize's weights from it equal those from the GGUF.
    const legacy = readImatrix(path.join(DIR, 'nemotron.imatrix.dat'));
    expect(legacy.chunkCount).to.equal(theirs.chunkCount);
    for (const name of theirs.entries.keys()) {
      const [a, b] = [importanceOf(legacy, name)!, importanceOf(theirs, name)!];
      const worst = a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]) / Math.max(Math.abs(b[i]), 1e-30)), 0);
      expect(worst, name).to.be.below(1e-6);
    }
  });

  it('the imatrix command computes one from a folder and a text file (and refuses text too short for two chunks)', async () => {
    const dir = tmpDir('imatrix-cli');
    const { model, tokenizer } = await quantizeModel('nemotron');
    await model.savePretrained(path.join(dir, 'folder'));
    tokenizer.savePretrained(path.join(dir, 'folder'));
    model.dispose();
    fs.copyFileSync(path.join(DIR, 'calibration.txt'), path.join(dir, 'calibration.txt'));
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args, '--backend', 'cpu'], { encoding: 'utf8', cwd: dir });
    const run = cli('imatrix', '--model', 'folder', '--text', 'calibration.txt', '--output', 'imatrix.gguf', '--chunk-size', String(reference.chunk));
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stdout).to.match(/wrote imatrix\.gguf: 48 matrices over 19 chunks of 32 tokens/);
    expectSameStatistics(readImatrix(path.join(dir, 'imatrix.gguf')), readImatrix(path.join(DIR, 'nemotron.imatrix.gguf')), 'CLI');
    fs.writeFileSync(path.join(dir, 'short.txt'), 'the stop');
    const short = cli('imatrix', '--model', 'folder', '--text', 'short.txt', '--output', 'x.gguf');
    expect(short.status).to.not.equal(0);
    expect(short.stderr).to.match(/computeImatrix: \d+ tokens; at least 1024 \(two chunks of 512\) are needed/);
  });
});
