import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { dequantize, GGUFFile, NemotronForCausalLM, NemotronHForCausalLM, quantizeGGUF, readImatrix, setBackend } from '../../src/index';
import { quantizeRows } from '../../src/io/gguf-quantize-imatrix';
import { type GGUFQuantMix } from '../../src/io/gguf-quantize';
import { writeGGUF } from '../../src/io/gguf';
import { type QuantizedFileDigest, expectLlamaBlocks, expectMixFiles, nemotronHWithImatrix, quantizeModel, sha256 } from './gguf-quantize-models';
import { tmpDir } from '../helpers';

/**
 * llama.cpp's lowest-bit types written byte for byte: IQ1_S and IQ1_M (with an importance matrix), TQ1_0, TQ2_0, Q1_0,
 * Q2_0, MXFP4 and NVFP4 against ggml_quantize_chunk, and the files of llama-quantize's IQ1_S, IQ1_M, TQ1_0, TQ2_0,
 * Q1_0, Q2_0 and MXFP4_MOE mixes. Fixtures: scripts/reference/gguf_lowbit_fixtures.py.
 */
const FIXTURES = path.resolve(__dirname, '../../../test/fixtures');
const DIR = path.join(FIXTURES, 'gguf-lowbit');
const IMATRIX = path.join(FIXTURES, 'gguf-imatrix');
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as {
  blocks: Record<string, string>; dequantized: Record<string, string>; files: Record<string, QuantizedFileDigest>; errors: Record<string, string>;
};
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const IMATRIX_MIXES: GGUFQuantMix[] = ['IQ1_S', 'IQ1_M'];
const PLAIN_MIXES: GGUFQuantMix[] = ['TQ1_0', 'TQ2_0', 'Q1_0', 'Q2_0', 'MXFP4_MOE'];
const floats = (raw: Buffer) => new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
const values = () => floats(fs.readFileSync(path.join(FIXTURES, 'gguf-kquants', 'blocks.f32')));

describe('The lowest-bit GGUF types: IQ1_S, IQ1_M, TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4, NVFP4 (llama.cpp\'s bytes)', function () {
  this.timeout(600000);
  before(async () => { await setBackend('cpu'); });

  it('quantizes as ggml_quantize_chunk does, byte for byte: IQ1_S and IQ1_M with importance weights (rows of 256 and 1024), IQ1_M without, TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4, NVFP4', () => {
    const x = values();
    expectLlamaBlocks(reference.blocks, IMATRIX);
    expect(Object.keys(reference.blocks)).to.have.length(11);
    expect(() => quantizeRows('IQ1_S', x)).to.throw(/IQ1_S needs an importance matrix/);
  });

  it('reads Q1_0 and Q2_0 as ggml\'s to_float does (exactly); what the types keep of Gaussian and of ternary weights', () => {
    const x = values();
    for (const type of ['Q1_0', 'Q2_0'] as const) {
      const bytes = Buffer.from(reference.blocks[`${type} none`], 'base64');
      expect([...dequantize(bytes, type, x.length)], type).to.deep.equal([...floats(Buffer.from(reference.dequantized[type], 'base64'))]);
    }
    // On Gaussian rows (row 1 of every 16: 0.5·N(0, 1)), each type's relative error.
    const gaussian = Float32Array.from([1, 17, 33].flatMap((r) => [...x.subarray(256 * r, 256 * (r + 1))]));
    const roundTrip = (type: Parameters<typeof quantizeRows>[0], v: Float32Array) =>
      dequantize(quantizeRows(type, v, type.startsWith('IQ1') ? new Float32Array(256).fill(1) : undefined), type, v.length);
    const error = (type: Parameters<typeof quantizeRows>[0]) => {
      const back = roundTrip(type, gaussian);
      let [num, den] = [0, 0];
      gaussian.forEach((v, i) => { num += (back[i] - v) ** 2; den += v * v; });
      return Math.sqrt(num / den);
    };
    // Sign-only Q1_0 keeps √(1 − 2/π) ≈ 0.60 of a Gaussian's error; IQ1_S / IQ1_M's searched splits and scales beat it.
    expect(error('Q1_0')).to.be.within(0.55, 0.65);
    for (const type of ['IQ1_S', 'IQ1_M'] as const) expect(error(type), type).to.be.below(error('Q1_0'));
    for (const type of ['MXFP4', 'NVFP4'] as const) expect(error(type), type).to.be.below(0.15);
    // The ternary types are made for ternary weights (BitNet b1.58): those come back exactly; both packings hold the same trits.
    const ternary = Float32Array.from({ length: 512 }, (_, i) => [-0.5, 0, 0.5][(i * 7) % 3]);
    for (const type of ['TQ1_0', 'TQ2_0'] as const) expect([...roundTrip(type, ternary)], type).to.deep.equal([...ternary]);
    expect([...roundTrip('TQ1_0', gaussian)]).to.deep.equal([...roundTrip('TQ2_0', gaussian)]);
  });

  for (const name of ['nemotron', 'nemotron-tied', 'nemotron-h'] as const) {
    it(`${name}: saveGGUF writes llama-quantize's ${PLAIN_MIXES.join(', ')} files${name === 'nemotron-tied' ? '' : `, and with its importance matrix ${IMATRIX_MIXES.join(', ')},`} byte for byte (or refuses as it does)`, async () => {
      // llama.cpp has no fallback for Q1_0's 128-value blocks: nemotron-tied's rows of 48 cannot be written.
      const refused = reference.errors[`${name} Q1_0`];
      if (refused) expect(refused).to.match(/no tensor type fallback is defined for type q1_0/);
      await expectMixFiles(name, reference.files, {
        plain: PLAIN_MIXES, imatrix: name === 'nemotron-tied' ? [] : IMATRIX_MIXES, imatrixDir: IMATRIX,
        refused: refused ? { Q1_0: /blk\.0\.attn_k\.weight's rows of 48 are not whole Q1_0 blocks of 128, and llama\.cpp has no fallback type for Q1_0/ } : {},
      });
    });
  }

  it('the files load: a model from each holds what an F32 file of its dequantized tensors holds (Nemotron, NemotronH)', async () => {
    const dir = tmpDir('gguf-lowbit-load');
    for (const [name, mix] of [['nemotron', 'Q2_0'], ['nemotron', 'TQ1_0'], ['nemotron-h', 'MXFP4_MOE'], ['nemotron-h', 'Q1_0']] as const) {
      const { model, tokenizer } = await quantizeModel(name);
      const quantized = path.join(dir, `${name}-${mix}.gguf`);
      await model.saveGGUF(quantized, tokenizer, { type: mix, name });
      model.dispose();
      // The twin: the same metadata, every tensor dequantized to F32.
      const source = GGUFFile.open(quantized);
      const twin = path.join(dir, `${name}-${mix}-f32.gguf`);
      try {
        const types = new Set([...source.tensors.values()].map((t) => t.type));
        expect([...types], `${name} ${mix}: tensor types`).to.include(mix === 'MXFP4_MOE' ? 'MXFP4' : mix);
        writeGGUF(twin, [...source.rawMetadata].map(([k, raw]) => [k, ['raw', raw]]), [...source.tensors.values()].map((t) => ({
          name: t.name, shape: t.shape, type: 'F32' as const, data: dequantize(source.readBytes(t.name), t.type, t.shape.reduce((a, b) => a * b, 1)),
        })));
      } finally {
        source.close();
      }
      const load = (file: string) => (name === 'nemotron-h' ? NemotronHForCausalLM.fromPretrained(file) : NemotronForCausalLM.fromPretrained(file));
      const [ours, f32] = [await load(quantized), await load(twin)];
      try {
        const theirs = f32.namedParameters();
        expect([...ours.namedParameters().keys()]).to.deep.equal([...theirs.keys()]);
        for (const [weight, v] of ours.namedParameters()) {
          expect(tf.tidy(() => tf.max(tf.abs(tf.sub(v, theirs.get(weight)!))).dataSync()[0]), `${name} ${mix}: ${weight}`).to.equal(0);
        }
      } finally {
        ours.dispose();
        f32.dispose();
      }
    }
  });

  it('quantizeGGUF and the CLI write the same files; IQ1_S and IQ1_M without an importance matrix are refused by tensor name', async () => {
    const dir = await nemotronHWithImatrix(IMATRIX);
    await quantizeGGUF(path.join(dir, 'nemotron-h-F32.gguf'), path.join(dir, 'api.gguf'), 'IQ1_M',
      { imatrix: { matrix: readImatrix(path.join(dir, 'imatrix.gguf')), file: 'imatrix.gguf' } });
    expect(sha256(fs.readFileSync(path.join(dir, 'api.gguf')))).to.equal(reference.files['nemotron-h imatrix IQ1_M'].sha256);
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: dir });
    const run = cli('convert', '--gguf', 'nemotron-h-F32.gguf', '--output', 'cli.gguf', '--type', 'MXFP4_MOE', '--threads', '2');
    expect(run.status, run.stderr).to.equal(0);
    expect(sha256(fs.readFileSync(path.join(dir, 'cli.gguf')))).to.equal(reference.files['nemotron-h MXFP4_MOE'].sha256);
    for (const mix of IMATRIX_MIXES) {
      const said = await quantizeGGUF(path.join(dir, 'nemotron-h-F32.gguf'), path.join(dir, 'x.gguf'), mix).then(() => 'written', (e: Error) => e.message);
      expect(said).to.match(new RegExp(`${mix} needs an importance matrix for blk\\.\\d+\\.\\w+\\.weight \\(${mix}\\)`));
    }
  });
});
