import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { GGUFFile, NemotronForCausalLM, NemotronHForCausalLM, quantizeGGUF, setBackend } from '../../src/index';
import { type GGUFQuantMix, quantizeValues } from '../../src/io/gguf-quantize';
import { QUANTIZE_MODELS, type QuantizedFileDigest, expectLlamaQuantizeFile, expectMixFiles, quantizeModel, sha256 } from './gguf-quantize-models';
import { tmpDir } from '../helpers';

/**
 * GGUF k-quant files as llama.cpp's llama-quantize makes them from the F32 file: the reference quantizers' bytes on
 * blocks of every kind, and whole files (tensor order, each tensor's type in the mix, metadata) byte for byte.
 * Fixtures: scripts/reference/gguf_kquant_fixtures.py (llama.cpp built from llama-cpp-python's source distribution).
 */
const DIR = path.resolve(__dirname, '../../../test/fixtures/gguf-kquants');
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as {
  blocks: Record<string, string>;
  files: Record<string, QuantizedFileDigest>;
};
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const MIXES: GGUFQuantMix[] = ['Q2_K', 'Q3_K_S', 'Q3_K_M', 'Q3_K_L', 'Q4_K_S', 'Q4_K_M', 'Q5_K_S', 'Q5_K_M', 'Q6_K'];

describe('GGUF k-quants (llama-quantize\'s Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K)', function () {
  this.timeout(300000);
  before(async () => { await setBackend('cpu'); });

  it('quantizes blocks of every kind as ggml_quantize_chunk does, byte for byte: Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K', () => {
    const raw = fs.readFileSync(path.join(DIR, 'blocks.f32'));
    const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
    for (const [type, encoded] of Object.entries(reference.blocks)) {
      const theirs = Buffer.from(encoded, 'base64');
      const ours = quantizeValues(type as 'Q4_K', values);
      expect(ours.length, `${type}: bytes`).to.equal(theirs.length);
      const rowBytes = theirs.length / 64;
      const differing = [...Array(64).keys()].filter((r) => !ours.subarray(r * rowBytes, (r + 1) * rowBytes).equals(theirs.subarray(r * rowBytes, (r + 1) * rowBytes)));
      expect(differing, `${type}: rows (256 values each) whose bytes differ from llama.cpp's`).to.deep.equal([]);
    }
  });

  for (const name of QUANTIZE_MODELS) {
    it(`${name}: saveGGUF in each k-quant mix writes llama-quantize's file byte for byte`, async () => {
      await expectMixFiles(name, reference.files, { plain: MIXES });
    });
  }


  it('the CLI converts a folder into a k-quant mix on worker threads (convert --type Q4_K_M --threads 2) as llama-quantize does', async () => {
    const dir = tmpDir('gguf-kquant-cli');
    const { model, tokenizer } = await quantizeModel('nemotron');
    await model.savePretrained(path.join(dir, 'folder'));
    tokenizer.savePretrained(path.join(dir, 'folder'));
    model.dispose();
    const file = path.join(dir, 'model.Q4_K_M.gguf');
    const run = spawnSync(process.execPath, [CLI, 'convert', '--model', path.join(dir, 'folder'), '--output', file, '--type', 'Q4_K_M', '--threads', '2', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    const written = GGUFFile.open(file);
    try {
      expect(written.get('general.file_type'), 'LLAMA_FTYPE_MOSTLY_Q4_K_M').to.equal(15);
      const tensors = [...written.tensors].map(([t, info]) => [t, info.type, sha256(written.readBytes(t))]);
      expect(tensors).to.deep.equal(reference.files['nemotron Q4_K_M'].tensors);
    } finally {
      written.close();
    }
    const refused = spawnSync(process.execPath, [CLI, 'convert', '--model', path.join(dir, 'folder'), '--output', file, '--type', 'Q4_K_M', '--threads', '0'], { encoding: 'utf8' });
    expect(refused.status).to.not.equal(0);
    expect(refused.stderr).to.match(/--threads <n>' argument '0' is invalid\. It must be a positive integer/);
  });

  it('quantizeGGUF (convert --gguf F32/F16 file --type MIX) writes llama-quantize\'s file from that file, byte for byte', async () => {
    const dir = tmpDir('gguf-requantize');
    for (const name of QUANTIZE_MODELS) {
      const { model, tokenizer } = await quantizeModel(name);
      for (const source of ['F32', 'F16'] as const) await model.saveGGUF(path.join(dir, `${name}-${source}.gguf`), tokenizer, { type: source, name });
      model.dispose();
      for (const [source, mix] of [['F32', 'Q2_K'], ['F32', 'Q5_K_M'], ['F16', 'Q2_K'], ['F16', 'Q4_K_M']] as const) {
        const out = path.join(dir, `${name}-${source}-${mix}.gguf`);
        await quantizeGGUF(path.join(dir, `${name}-${source}.gguf`), out, mix);
        const expected = reference.files[source === 'F32' ? `${name} ${mix}` : `${name} F16 ${mix}`];
        expect(sha256(fs.readFileSync(out)), `${name}: ${source} → ${mix}`).to.equal(expected.sha256);
      }
    }
    // From the CLI, on worker threads.
    const out = path.join(dir, 'cli.gguf');
    const run = spawnSync(process.execPath, [CLI, 'convert', '--gguf', path.join(dir, 'nemotron-h-F16.gguf'), '--output', out, '--type', 'Q4_K_M', '--threads', '2'], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    expect(sha256(fs.readFileSync(out))).to.equal(reference.files['nemotron-h F16 Q4_K_M'].sha256);
    const requantize = await quantizeGGUF(path.join(dir, 'nemotron-F32-Q2_K.gguf'), out, 'Q4_K_M').then(() => 'done', (e: Error) => e.message);
    expect(requantize).to.match(/is Q\d_K already; requantizing it to Q\d_K compounds the rounding and is refused without allowRequantize \(llama-quantize --allow-requantize\)/);
  });

  it('refuses a non-finite weight (naming the tensor) and a thread count that is not a positive integer', async () => {
    const { model, tokenizer } = await quantizeModel('nemotron-tied');
    const dir = tmpDir('gguf-kquant-bad');
    try {
      const weight = model.namedParameters().get('model.layers.1.mlp.up_proj.weight')!;
      const refuse = (options: object) => model.saveGGUF(path.join(dir, 'x.gguf'), tokenizer, options).then(() => 'written', (e: Error) => e.message);
      expect(await refuse({ type: 'Q4_K_M', threads: 0 })).to.match(/threads 0: expected a positive integer/);
      weight.assign(tf.tidy(() => tf.where(tf.equal(tf.range(0, weight.size).reshape(weight.shape), 5), tf.fill(weight.shape, NaN), weight)));
      for (const type of ['Q4_K_M', 'Q8_0', 'F32'] as const) {
        expect(await refuse({ type }), type).to.match(/blk\.1\.ffn_up\.weight has NaN at index 5; a GGUF tensor \((F16|F32)\) needs finite values/);
      }
      expect(fs.existsSync(path.join(dir, 'x.gguf')), 'nothing written').to.equal(false);
    } finally {
      model.dispose();
    }
  });

  it('quantizeGGUF refuses a non-finite stored value, decoded chunk by chunk on the workers, by tensor and index', async () => {
    const { model, tokenizer } = await quantizeModel('nemotron-h');
    const dir = tmpDir('gguf-quantize-nan');
    const input = path.join(dir, 'F16.gguf');
    await model.saveGGUF(input, tokenizer, { type: 'F16', name: 'nemotron-h' });
    model.dispose();
    // An expert tensor of 8 × 256 × 256 values spans two chunks of 2^18: the bad value sits in the second one.
    const source = GGUFFile.open(input);
    const info = source.tensors.get('blk.1.ffn_up_exps.weight')!;
    source.close();
    expect(info.type).to.equal('F16');
    const index = 400_000;
    expect(info.byteLength / 2, 'the tensor reaches past one chunk').to.be.above(index);
    for (const [bits, shown] of [[0x7e00, 'NaN'], [0xfc00, '-Infinity']] as const) {
      const bytes = fs.readFileSync(input);
      bytes.writeUInt16LE(bits, info.byteOffset + 2 * index);
      const bad = path.join(dir, 'bad.gguf');
      fs.writeFileSync(bad, bytes);
      for (const threads of [1, 2]) {
        const out = path.join(dir, 'out.gguf');
        const message = await quantizeGGUF(bad, out, 'Q8_0', { threads }).then(() => 'written', (e: Error) => e.message);
        expect(message, `threads ${threads}`).to.equal(`writeGGUF: blk.1.ffn_up_exps.weight has ${shown} at index ${index}; a GGUF tensor (Q8_0) needs finite values`);
        expect(fs.existsSync(out), 'nothing written').to.equal(false);
      }
    }
  });

  it('the files load back, their logits nearer the F32 model\'s the more bits the mix keeps', async () => {
    const dir = tmpDir('gguf-kquant-load');
    for (const name of ['nemotron', 'nemotron-h'] as const) {
      const { model, tokenizer } = await quantizeModel(name);
      const ids = [[5, 17, 42, 8, 63, 21, 2, 30]];
      const exact = model.forward({ inputIds: ids }).logits!;
      const errors: number[] = [];
      const mixes = ['Q2_K', 'Q3_K_M', 'Q4_K_S', 'Q5_K_S', 'Q6_K'] as const;
      for (const mix of mixes) {
        const file = path.join(dir, `${name}-${mix}.gguf`);
        await model.saveGGUF(file, tokenizer, { type: mix, name });
        const loaded = name === 'nemotron' ? await NemotronForCausalLM.fromPretrained(file) : await NemotronHForCausalLM.fromPretrained(file);
        const logits = loaded.forward({ inputIds: ids }).logits!;
        errors.push(tf.tidy(() => tf.div(tf.norm(tf.sub(logits, exact)), tf.norm(exact)).dataSync()[0]));
        tf.dispose(logits);
        loaded.dispose();
      }
      for (let i = 1; i < mixes.length; i++) {
        expect(errors[i], `${name}: ${mixes[i]}'s relative logit error below ${mixes[i - 1]}'s (${errors.map((e) => e.toFixed(3)).join(', ')})`).to.be.below(errors[i - 1]);
      }
      exact.dispose();
      model.dispose();
    }
  });
});
