import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'child_process';
import { GGUFFile, NemotronConfig, NemotronForCausalLM, NemotronTokenizer, generate, quantizeQ4_0, quantizeQ8_0, setBackend, writeGGUF } from '../../src/index';
import { FIXTURES, forEachBackend, testBackends, tmpDir } from '../helpers';
import seedrandom from 'seedrandom';
import { storedBytes } from '../../src/io/gguf';
import { I_QUANT_TYPES } from '../../src/io/gguf-iquants';

const CLI = path.resolve(__dirname, '../../src/cli/main.js');

// GGUF reading against gguf-py (scripts/reference/gguf_fixtures.py): every ggml type's dequantization, on random blocks.
const DIR = path.resolve(FIXTURES, '../gguf');

describe('GGUF', () => {
  it('dequantizes every type it reads as gguf-py does (random blocks: F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, Q2_K … Q6_K)', () => {
    const expected = JSON.parse(fs.readFileSync(path.join(DIR, 'dequant.json'), 'utf8')) as { values: Record<string, number[]> };
    const file = GGUFFile.open(path.join(DIR, 'dequant.gguf'));
    try {
      expect(file.get('general.architecture')).to.equal('nemotron');
      // The writer's Q8_0 and Q4_0 are gguf-py's byte for byte (zero blocks and rounding ties included).
      const source = file.read('Q8_0_SOURCE').data;
      expect(quantizeQ8_0(source).equals(file.readBytes('Q8_0_OF_SOURCE')), 'Q8_0').to.equal(true);
      expect(quantizeQ4_0(source).equals(file.readBytes('Q4_0_OF_SOURCE')), 'Q4_0').to.equal(true);
      for (const [name, values] of Object.entries(expected.values)) {
        const { data } = file.read(name);
        expect(data.length, name).to.equal(values.length);
        let worst = 0;
        data.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - values[i]) / Math.max(1e-6, Math.abs(values[i]))); });
        expect(worst, `${name}: largest relative difference`).to.be.lessThan(1e-5);
      }
    } finally {
      file.close();
    }
  });

  it('decodes a large tensor on worker threads (shared memory) as on one thread, for every type it reads', function () {
    this.timeout(120000);
    const file = path.join(tmpDir('gguf-parallel-decode'), 'random.gguf');
    // 4,097 rows of 1,024: past the parallel threshold (2^22 values), its last chunk of 2^20 a partial one. Random bytes:
    // NaN and infinite scales included, which must come out the same too.
    const shape = [4097, 1024];
    const count = shape[0] * shape[1];
    const types = ['F32', 'F16', 'BF16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', ...I_QUANT_TYPES.map(([name]) => name)];
    const rng = seedrandom('parallel-decode');
    const tensors = types.map((type) => {
      const bytes = Buffer.alloc(storedBytes(type, count));
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rng() * 256);
      return { name: type, shape, type, data: new Float32Array(0), bytes };
    });
    writeGGUF(file, [['general.architecture', ['str', 'test']]], [...tensors, { name: 'small', shape: [2, 1024], type: 'F32', data: new Float32Array(2048).fill(0.5) }]);
    const one = GGUFFile.open(file, { decodeThreads: 1 });
    const three = GGUFFile.open(file, { decodeThreads: 3 });
    try {
      for (const type of types) {
        const serial = one.read(type).data;
        const parallel = three.read(type).data;
        expect(parallel.buffer, `${type}: decoded in shared memory`).to.be.instanceOf(SharedArrayBuffer);
        expect(parallel.length, type).to.equal(count);
        // The same values: equal, or both NaN (a NaN's payload bits may depend on how the JIT ordered an operation).
        let differing = -1;
        let finite = 0;
        for (let i = 0; i < count; i++) {
          const [a, b] = [serial[i], parallel[i]];
          if (a - a === 0) finite++;
          if (differing < 0 && a !== b && !(a !== a && b !== b)) differing = i;
        }
        expect(differing, `${type}: first differing value`).to.equal(-1);
        // Not all NaN: most values of random blocks are finite.
        expect(finite, type).to.be.above(count / 2);
      }
      expect(Array.from(three.read('small').data.subarray(0, 3))).to.deep.equal([0.5, 0.5, 0.5]);
    } finally {
      one.close();
      three.close();
      fs.rmSync(file, { force: true });
    }
    expect(() => GGUFFile.open(file, { decodeThreads: 0 })).to.throw(/decodeThreads 0: expected a positive integer/);
  });

  it('writes and reads a tensor over 2 GiB (Node refuses one read or write call that large; Minitron-4B\'s F32 embedding is 3.1 GB)', function () {
    this.timeout(120000);
    const file = path.join(tmpDir('gguf-large'), 'large.gguf');
    const columns = 2 ** 29 + 2 ** 18;   // 2 GiB + 1 MiB of F32
    const bytes = Buffer.alloc(4 * columns);
    const marks = [0, 2 ** 30 - 3, 2 ** 31 - 1, 2 ** 31, bytes.length - 1];
    marks.forEach((at, i) => { bytes[at] = 17 + i; });
    writeGGUF(file, [['general.architecture', ['str', 'nemotron']]], [{ name: 'large', shape: [1, columns], type: 'F32', data: new Float32Array(0), bytes }]);
    try {
      const gguf = GGUFFile.open(file);
      try {
        const read = gguf.readBytes('large');
        expect(read.length).to.equal(bytes.length);
        expect(marks.map((at) => read[at])).to.deep.equal(marks.map((_, i) => 17 + i));
      } finally {
        gguf.close();
      }
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
});

describe('GGUF i-quants, ternary and FP4 types', () => {
  it('dequantizes IQ1_S/M, IQ2_XXS/XS/S, IQ3_XXS/S, IQ4_NL/XS, TQ1_0/TQ2_0, MXFP4 and NVFP4 as gguf-py does (random blocks)', () => {
    const expected = JSON.parse(fs.readFileSync(path.join(DIR, 'iquants.json'), 'utf8')) as { values: Record<string, number[]> };
    expect(Object.keys(expected.values)).to.have.length(13);
    const file = GGUFFile.open(path.join(DIR, 'iquants.gguf'));
    try {
      for (const [name, values] of Object.entries(expected.values)) {
        expect(file.tensors.get(name)?.type, name).to.equal(name);
        const { data } = file.read(name);
        expect(data.length, name).to.equal(values.length);
        let worst = 0;
        data.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - values[i]) / Math.max(1e-6, Math.abs(values[i]))); });
        expect(worst, `${name}: largest relative difference`).to.be.lessThan(1e-5);
        // Not a trivial pass: the blocks hold values of both signs and several magnitudes.
        expect(new Set(values.map((v) => Math.sign(v))).size, name).to.be.at.least(2);
      }
    } finally {
      file.close();
    }
  });
});

// A Nemotron GGUF as llama.cpp writes one (the tiny-gqa model, tensors in Q8_0, Q4_0/1, Q5_0/1, F16 and F32): what
// transformers computes from it (from_pretrained(gguf_file=...)), and how its tokenizer encodes.
const model = JSON.parse(fs.readFileSync(path.join(DIR, 'tiny-gqa-gguf.json'), 'utf8')) as {
  types: Record<string, string>; config: Record<string, number>; input_ids: number[][]; logits: number[][][];
  gen_prompt: number[][]; generated: number[][]; texts: string[]; encoded: number[][]; decoded: string[];
};

forEachBackend(testBackends(), () => {
  it('a Nemotron GGUF loads as transformers loads it: config, logits of every position, greedy generation', async () => {
    const lm = await NemotronForCausalLM.fromPretrained(path.join(DIR, 'tiny-gqa.gguf'));
    const c = lm.config;
    expect([c.vocabSize, c.hiddenSize, c.numHiddenLayers, c.numAttentionHeads, c.numKeyValueHeads, c.intermediateSize, c.maxPositionEmbeddings])
      .to.deep.equal([model.config.vocab_size, model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads,
        model.config.num_key_value_heads, model.config.intermediate_size, model.config.max_position_embeddings]);
    expect(c.rotaryDim).to.equal(8);
    expect([...new Set(Object.values(model.types))]).to.include.members(['Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'F16', 'F32']);
    const before = tf.memory().numTensors;
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(lm.forward({ inputIds: model.input_ids }).logits, tf.tensor3d(model.logits)))).dataSync()[0]);
    expect(diff, 'max |logits diff|').to.be.lessThan(1e-4);
    const out = await generate(lm, model.gen_prompt, { maxNewTokens: 8, eosTokenId: null, padTokenId: 0 });
    expect(out.sequences).to.deep.equal(model.generated);
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    lm.dispose();
  });

  it('a model with tensors of 4 M values loads exactly: from an F32 GGUF (decoded on worker threads, shared memory) and from safetensors', async function () {
    this.timeout(120000);
    // up_proj and down_proj are 8,192 × 512 = 2^22 values: the size from which GGUFFile.read decodes in parallel, and
    // far above the size from which the loaders place float32 arrays for the backend.
    const tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, 'tiny-gqa.gguf'));
    const config = new NemotronConfig({ vocabSize: 96, hiddenSize: 512, numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 8192, numHiddenLayers: 1, tieWordEmbeddings: false });
    const original = new NemotronForCausalLM(config);
    const dir = tmpDir('gguf-parallel-load');
    await original.saveGGUF(path.join(dir, 'model.gguf'), tokenizer, { type: 'F32' });
    await original.savePretrained(path.join(dir, 'hf'));
    const ids = [[5, 17, 42, 8, 63, 21]];
    const expected = original.forward({ inputIds: ids }).logits!;
    const before = tf.memory().numTensors;
    for (const source of [path.join(dir, 'model.gguf'), path.join(dir, 'hf')]) {
      const loaded = await NemotronForCausalLM.fromPretrained(source);
      const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(loaded.forward({ inputIds: ids }).logits!, expected))).dataSync()[0]);
      expect(diff, `${source}: max |logits diff| from the saved model`).to.equal(0);
      loaded.dispose();
    }
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    expected.dispose();
    original.dispose();
  });
});

describe('GGUF tokenizer', () => {
  it('the GGUF vocabulary encodes and decodes as transformers\' tokenizer from the same file (merges recovered from the scores)', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, 'tiny-gqa.gguf'));
    model.texts.forEach((text, i) => {
      expect(tokenizer.encode(text), text).to.deep.equal(model.encoded[i]);
      expect(tokenizer.decode(model.encoded[i], { skipSpecialTokens: true }), text).to.equal(model.decoded[i]);
    });
    expect([tokenizer.bosTokenId, tokenizer.eosTokenId, tokenizer.padTokenId]).to.deep.equal([2, 3, 0]);
  });

  it('convert writes a Hugging Face folder with the same weights and vocabulary (what fromPretrained then reads), and back to GGUF', async () => {
    const out = tmpDir('gguf-convert-');
    const run = spawnSync(process.execPath, [CLI, 'convert', '--gguf', path.join(DIR, 'tiny-gqa.gguf'), '--output', out, '--backend', 'cpu'], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stdout).to.match(/converted .*tiny-gqa\.gguf \(0\.1 M parameters, vocabulary 96\)/);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) expect(fs.existsSync(path.join(out, f)), f).to.equal(true);
    await setBackend('cpu');
    const lm = await NemotronForCausalLM.fromPretrained(out);
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(lm.forward({ inputIds: model.input_ids }).logits, tf.tensor3d(model.logits)))).dataSync()[0]);
    expect(diff).to.be.lessThan(1e-4);
    lm.dispose();
    const tokenizer = await NemotronTokenizer.fromPretrained(out);
    model.texts.forEach((text, i) => expect(tokenizer.encode(text), text).to.deep.equal(model.encoded[i]));
    // And back: the folder to a Q8_0 GGUF, which loads with logits within Q8_0's rounding.
    const back = path.join(out, 'back.gguf');
    const toGGUF = spawnSync(process.execPath, [CLI, 'convert', '--model', out, '--output', back, '--type', 'Q8_0', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(toGGUF.status, toGGUF.stderr).to.equal(0);
    const reloaded = await NemotronForCausalLM.fromPretrained(back);
    const backDiff = tf.tidy(() => tf.max(tf.abs(tf.sub(reloaded.forward({ inputIds: model.input_ids }).logits, tf.tensor3d(model.logits)))).dataSync()[0]);
    expect(backDiff).to.be.lessThan(0.1);
    reloaded.dispose();
    const refused = spawnSync(process.execPath, [CLI, 'convert', '--model', out, '--gguf', back, '--output', out], { encoding: 'utf8' });
    expect(refused.stderr).to.match(/give --gguf FILE \(GGUF → folder or GGUF\) or --model DIR \(folder → GGUF\)/);
  });

  it('saveGGUF writes what it reads back: F32 the same logits and vocabulary, F16, Q8_0 and Q4_0 within their rounding', async () => {
    await setBackend('cpu');
    const source = path.join(DIR, 'tiny-gqa.gguf');
    const lm = await NemotronForCausalLM.fromPretrained(source);
    const tokenizer = await NemotronTokenizer.fromPretrained(source);
    const dir = tmpDir('gguf-write-');
    for (const [type, tolerance] of [['F32', 1e-4], ['F16', 1e-2], ['Q8_0', 0.1], ['Q4_0', 1]] as const) {
      const file = path.join(dir, `tiny-${type}.gguf`);
      await lm.saveGGUF(file, tokenizer, { type });
      const written = GGUFFile.open(file);
      const types = new Set([...written.tensors.values()].filter((t) => t.shape.length === 2).map((t) => t.type));
      written.close();
      expect([...types], type).to.deep.equal([type]);
      const back = await NemotronForCausalLM.fromPretrained(file);
      const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(back.forward({ inputIds: model.input_ids }).logits, tf.tensor3d(model.logits)))).dataSync()[0]);
      expect(diff, `${type}: max |logits diff|`).to.be.lessThan(tolerance);
      back.dispose();
      const reread = await NemotronTokenizer.fromPretrained(file);
      model.texts.forEach((text, i) => expect(reread.encode(text), `${type}: ${text}`).to.deep.equal(model.encoded[i]));
    }
    lm.dispose();
  });

  it('refuses what is not a Nemotron GGUF, by name', async () => {
    const failure = (p: Promise<unknown>) => p.then(() => 'loaded', (e: Error) => e.message);
    // dequant.gguf says nemotron but holds tensors of no Nemotron model.
    expect(await failure(NemotronForCausalLM.fromPretrained(path.join(DIR, 'dequant.gguf')))).to.match(/tensor \S+ is not one of a Nemotron model's/);
    const notGGUF = path.join(DIR, 'dequant.json');
    expect(() => GGUFFile.open(notGGUF)).to.throw(/is not a GGUF file \(no "GGUF" magic\)/);
  });
});
