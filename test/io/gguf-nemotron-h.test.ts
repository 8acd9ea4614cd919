import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'child_process';
import { GGUFFile, NemotronForCausalLM, NemotronHConfig, NemotronHForCausalLM, NemotronHGGUF, NemotronTokenizer, generate, parseConfigJson, setBackend,
  writeGGUF } from '../../src/index';
import { FIXTURES, forEachBackend, testBackends, tmpDir } from '../helpers';

const CLI = path.resolve(__dirname, '../../src/cli/main.js');

// NemotronH GGUFs as llama.cpp's convert_hf_to_gguf.py writes them, made from two tiny checkpoints (hybrid "M*M-";
// experts "ME*E" with latent projections) with a tekken-style byte-level tokenizer, F32 and mostly-Q8_0
// (scripts/reference/nemotron_h_gguf_fixtures.py). transformers reads no NemotronH GGUF: the judge is the checkpoint
// each file came from, and what transformers computes with it (with Q8_0's rounding applied, for the Q8_0 files).
const DIR = path.resolve(FIXTURES, '../nemotron-h-gguf');
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as {
  input_ids: number[][]; attention_mask: number[][]; texts: string[]; encoded: number[][]; decoded: string[];
  models: Record<'hybrid' | 'moe', { logits: number[][][]; q8_0_logits: number[][][]; greedy: number[]; q8_0_types: Record<string, string> }>;
  vocab_only: Record<string, { encoded: number[][]; decoded: string[] }>;
};
const MODELS = ['hybrid', 'moe'] as const;

/** The largest difference at the real (unpadded) positions. */
function worstAtRealPositions(ours: number[][][], theirs: number[][][]): number {
  let worst = 0;
  reference.attention_mask.forEach((row, b) => row.forEach((on, t) => {
    if (on) theirs[b][t].forEach((v, j) => { worst = Math.max(worst, Math.abs(v - ours[b][t][j])); });
  }));
  return worst;
}

describe('NemotronH GGUF', () => {
  before(async () => { await setBackend('cpu'); });

  it('reads the configuration and every weight of the checkpoint it was made from (A from A_log, q/k rows unpermuted, experts stacked)', async () => {
    for (const name of MODELS) {
      const folder = await NemotronHForCausalLM.fromPretrained(path.join(DIR, name));
      const gguf = await NemotronHForCausalLM.fromPretrained(path.join(DIR, `${name}-f32.gguf`));
      // What the format keeps equals the folder's; what it does not is left out (max positions: llama.cpp writes 2**20;
      // an experts-only model's unused MLP width).
      const fields = (c: NemotronHConfig) => ({ ...c, maxPositionEmbeddings: 0, timeStepMin: 0, chunkSize: 0, intermediateSize: name === 'moe' ? 0 : c.intermediateSize });
      expect(fields(gguf.config), name).to.deep.equal(fields(folder.config));
      expect(gguf.config.layerTypes).to.deep.equal(name === 'hybrid' ? ['mamba', 'attention', 'mamba', 'mlp'] : ['mamba', 'moe', 'attention', 'moe']);
      expect([...gguf.weights.keys()].sort()).to.deep.equal([...folder.weights.keys()].sort());
      for (const [weight, value] of folder.weights) {
        const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(value, gguf.weights.get(weight)!))).dataSync()[0]);
        // A_log comes back through log(-(-exp(A_log))): within float32's rounding; everything else exactly.
        expect(diff, `${name}: ${weight}`).to.be.at.most(weight.endsWith('A_log') ? 1e-6 : 0);
      }
      folder.dispose();
      gguf.dispose();
    }
  });

  it('refuses by name what it cannot read: another architecture, a vocabulary-only file, a positive A, attention biases', async () => {
    const failure = (p: Promise<unknown>) => p.then(() => 'loaded', (e: Error) => e.message);
    expect(await failure(NemotronHForCausalLM.fromPretrained(path.resolve(FIXTURES, '../gguf/tiny-gqa.gguf'))))
      .to.match(/general\.architecture is "nemotron", expected "nemotron_h" or "nemotron_h_moe"/);
    expect(await failure(NemotronForCausalLM.fromPretrained(path.join(DIR, 'hybrid-f32.gguf')))).to.match(/a NemotronH GGUF, which NemotronHForCausalLM reads/);
    expect(await failure(NemotronHForCausalLM.fromPretrained(path.join(DIR, 'vocab-gpt-2.gguf')))).to.match(/has no token_embd\.weight: a vocabulary-only GGUF holds no model/);
    // The hybrid file rewritten with one entry of A made positive, and with an attention bias added.
    const source = GGUFFile.open(path.join(DIR, 'hybrid-f32.gguf'));
    const kv = [...source.metadata].map(([key, value]): [string, ['u32', number] | ['f32', number] | ['bool', boolean] | ['str', string] | ['strs', string[]] | ['i32s', number[]]] => {
      if (typeof value === 'string') return [key, ['str', value]];
      if (typeof value === 'boolean') return [key, ['bool', value]];
      if (Array.isArray(value)) return [key, typeof value[0] === 'string' ? ['strs', value as string[]] : ['i32s', value as number[]]];
      return [key, Number.isInteger(value) ? ['u32', value as number] : ['f32', value as number]];
    });
    const tensors = [...source.tensors.values()].map((t) => ({ name: t.name, shape: t.shape, data: source.read(t.name).data, type: 'F32' as const }));
    source.close();
    const dir = tmpDir('gguf-h-bad');
    const positive = tensors.map((t) => (t.name === 'blk.0.ssm_a' ? { ...t, data: Float32Array.from(t.data, (v, i) => (i === 2 ? 0.5 : v)) } : t));
    writeGGUF(path.join(dir, 'positive-a.gguf'), kv, positive);
    expect(await failure(NemotronHForCausalLM.fromPretrained(path.join(dir, 'positive-a.gguf')))).to.match(/blk\.0\.ssm_a\[2\] is 0\.5; A = -exp\(A_log\) must be negative/);
    writeGGUF(path.join(dir, 'bias.gguf'), kv, [...tensors, { name: 'blk.1.attn_q.bias', shape: [32], data: new Float32Array(32), type: 'F32' }]);
    expect(await failure(NemotronHForCausalLM.fromPretrained(path.join(dir, 'bias.gguf')))).to.match(/attention biases \(attn_q\.bias, …\) are not part of NemotronH/);
    writeGGUF(path.join(dir, 'stray.gguf'), kv, [...tensors, { name: 'blk.9.ssm_in.weight', shape: [4, 32], data: new Float32Array(128), type: 'F32' }]);
    expect(await failure(NemotronHForCausalLM.fromPretrained(path.join(dir, 'stray.gguf')))).to.match(/holds tensors this configuration has no place for: model\.layers\.9\.mixer\.in_proj\.weight/);
  });

  it('passes over trailing multi-token prediction blocks (nextn_predict_layers, as llama.cpp writes Nemotron 3\'s MTP head)', async () => {
    const source = GGUFFile.open(path.join(DIR, 'moe-f32.gguf'));
    type Meta = ['u32', number] | ['f32', number] | ['bool', boolean] | ['str', string] | ['strs', string[]] | ['i32s', number[]];
    const meta = (withNextn: boolean) => [...source.metadata].map(([key, value]): [string, Meta] => {
      if (key === 'nemotron_h_moe.block_count') return [key, ['u32', 5]];
      if (Array.isArray(value) && typeof value[0] === 'number' && key.startsWith('nemotron_h_moe.')) return [key, ['i32s', [...value as number[], Math.max(...value as number[])]]];
      if (typeof value === 'string') return [key, ['str', value]];
      if (typeof value === 'boolean') return [key, ['bool', value]];
      if (Array.isArray(value)) return [key, typeof value[0] === 'string' ? ['strs', value as string[]] : ['i32s', value as number[]]];
      return [key, Number.isInteger(value) ? ['u32', value as number] : ['f32', value as number]];
    }).concat(withNextn ? [['nemotron_h_moe.nextn_predict_layers', ['u32', 1]]] : []);
    const tensors = [...source.tensors.values()].map((t) => ({ name: t.name, shape: t.shape, data: source.read(t.name).data, type: 'F32' as const }));
    // The MTP block: an attention layer's and an experts layer's tensors again, and its own input projection.
    const mtp = tensors.filter((t) => t.name.startsWith('blk.2.') || t.name.startsWith('blk.3.')).map((t) => ({ ...t, name: t.name.replace(/^blk\.\d+\./, 'blk.4.') }))
      .filter((t, i, all) => all.findIndex((u) => u.name === t.name) === i);
    mtp.push({ name: 'blk.4.nextn.eh_proj.weight', shape: [32, 64], data: new Float32Array(32 * 64), type: 'F32' });
    source.close();
    const dir = tmpDir('gguf-h-mtp');
    writeGGUF(path.join(dir, 'mtp.gguf'), meta(true), [...tensors, ...mtp]);
    const withMtp = await NemotronHForCausalLM.fromPretrained(path.join(dir, 'mtp.gguf'));
    const plain = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'moe-f32.gguf'));
    expect(withMtp.config.layerTypes).to.deep.equal(plain.config.layerTypes);
    for (const [name, value] of plain.weights) expect(tf.tidy(() => tf.max(tf.abs(tf.sub(value, withMtp.weights.get(name)!))).dataSync()[0]), name).to.equal(0);
    withMtp.dispose();
    plain.dispose();
    writeGGUF(path.join(dir, 'unmarked.gguf'), meta(false), [...tensors, ...mtp]);
    const message = await NemotronHForCausalLM.fromPretrained(path.join(dir, 'unmarked.gguf')).then(() => 'loaded', (e: Error) => e.message);
    expect(message).to.match(/tensor blk\.4\.nextn\.eh_proj\.weight is not one of a NemotronH model's/);
  });

  it('saveGGUF writes what llama.cpp\'s converter writes: the same metadata and the same tensor bytes (F32; Q8_0 with its F16 fallback)', async () => {
    const dir = tmpDir('gguf-h-write');
    for (const name of MODELS) {
      const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, name));
      const tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, name));
      for (const type of ['F32', 'Q8_0'] as const) {
        const file = path.join(dir, `${name}-${type}.gguf`);
        await model.saveGGUF(file, tokenizer, { type, name: 'tiny-nemotron-h' });
        const ours = GGUFFile.open(file);
        const theirs = GGUFFile.open(path.join(DIR, `${name}-${type.toLowerCase()}.gguf`));
        try {
          // gguf-py's SpecialVocab also writes add_sep_token (false); add_eos_token (false) is ours. Nothing else differs.
          const keys = (f: GGUFFile) => [...f.metadata.keys()].filter((k) => k !== 'tokenizer.ggml.add_sep_token' && k !== 'tokenizer.ggml.add_eos_token').sort();
          expect(keys(ours), `${name} ${type}: keys`).to.deep.equal(keys(theirs));
          for (const key of keys(theirs)) expect(ours.get(key), `${name} ${type}: ${key}`).to.deep.equal(theirs.get(key));
          expect([...ours.tensors.keys()].sort()).to.deep.equal([...theirs.tensors.keys()].sort());
          for (const [tensor, info] of theirs.tensors) {
            const mine = ours.tensors.get(tensor)!;
            expect([mine.type, mine.shape], `${name} ${type}: ${tensor}`).to.deep.equal([info.type, info.shape]);
            expect(ours.readBytes(tensor).equals(theirs.readBytes(tensor)), `${name} ${type}: ${tensor}'s bytes`).to.equal(true);
          }
          if (type === 'Q8_0') expect(Object.fromEntries([...ours.tensors].map(([t, i]) => [t, i.type]))).to.deep.equal(reference.models[name].q8_0_types);
        } finally {
          ours.close();
          theirs.close();
        }
      }
      model.dispose();
    }
  });

  it('convert: GGUF → a folder transformers reads (same weights, tokenizer.json encoding as the original) → GGUF again, byte for byte', async () => {
    const out = tmpDir('gguf-h-convert');
    const folder = path.join(out, 'moe');
    const run = spawnSync(process.execPath, [CLI, 'convert', '--gguf', path.join(DIR, 'moe-q8_0.gguf'), '--output', folder, '--backend', 'cpu'], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stdout).to.match(/converted .*moe-q8_0\.gguf \(0\.1 M parameters, vocabulary 320\)/);
    const config = parseConfigJson(fs.readFileSync(path.join(folder, 'config.json'), 'utf8'), 'config.json');
    expect(config.time_step_limit).to.deep.equal([0, { __float__: 'Infinity' }]);
    expect(fs.readFileSync(path.join(folder, 'config.json'), 'utf8')).to.include('"time_step_limit": [0.0, { "__float__": "Infinity" }]');
    const tokenizer = await NemotronTokenizer.fromPretrained(folder);
    reference.texts.forEach((text, i) => expect(tokenizer.encode(text), text).to.deep.equal(reference.encoded[i]));
    const fromFolder = await NemotronHForCausalLM.fromPretrained(folder);
    const logits = tf.tidy(() => fromFolder.forward({ inputIds: reference.input_ids, attentionMask: reference.attention_mask }).logits.arraySync());
    expect(worstAtRealPositions(logits, reference.models.moe.q8_0_logits)).to.be.at.most(1e-4);
    fromFolder.dispose();
    const back = path.join(out, 'back.gguf');
    const toGGUF = spawnSync(process.execPath, [CLI, 'convert', '--model', path.join(DIR, 'hybrid'), '--output', back, '--type', 'Q8_0', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(toGGUF.status, toGGUF.stderr).to.equal(0);
    const written = GGUFFile.open(back);
    const original = GGUFFile.open(path.join(DIR, 'hybrid-q8_0.gguf'));
    try {
      for (const tensor of original.tensors.keys()) expect(written.readBytes(tensor).equals(original.readBytes(tensor)), tensor).to.equal(true);
    } finally {
      written.close();
      original.close();
    }
    const info = spawnSync(process.execPath, [CLI, 'info', '--model', path.join(DIR, 'moe-q8_0.gguf')], { encoding: 'utf8' });
    expect(info.status, info.stderr).to.equal(0);
    expect(info.stdout).to.match(/pattern: ME\*E/).and.to.match(/moe_layers: 2/).and.to.match(/gguf_types: F16 F32 Q8_0/);
  });

  it('evaluate and finetune take a NemotronH GGUF: the F32 file\'s loss is its checkpoint\'s; the trained folder loads with its tokenizer', async () => {
    const dir = tmpDir('gguf-h-cli');
    const data = path.join(dir, 'data.jsonl');
    fs.writeFileSync(data, reference.texts.slice(0, 4).map((text) => JSON.stringify({ text })).join('\n'));
    const loss = (model: string) => {
      const r = spawnSync(process.execPath, [CLI, 'evaluate', '--model', model, '--data', data, '--backend', 'cpu'], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      return Number(/loss ([\d.]+)/.exec(r.stdout)?.[1]);
    };
    const fromGGUF = loss(path.join(DIR, 'hybrid-f32.gguf'));
    expect(fromGGUF).to.be.greaterThan(0);
    expect(Math.abs(fromGGUF - loss(path.join(DIR, 'hybrid'))), 'loss, GGUF vs folder').to.be.at.most(1e-4);
    const output = path.join(dir, 'trained');
    const train = spawnSync(process.execPath, [CLI, 'finetune', '--task', 'causal-lm', '--model', path.join(DIR, 'moe-q8_0.gguf'), '--train', data, '--output', output,
      '--max-steps', '2', '--batch-size', '2', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(train.status, train.stderr).to.equal(0);
    expect(train.stdout).to.match(/trained 2 steps: loss [\d.]+ → [\d.]+/);
    const trained = await NemotronHForCausalLM.fromPretrained(output);
    expect(trained.config.layerTypes).to.deep.equal(['mamba', 'moe', 'attention', 'moe']);
    trained.dispose();
    const tokenizer = await NemotronTokenizer.fromPretrained(output);
    expect(tokenizer.encode(reference.texts[1])).to.deep.equal(reference.encoded[1]);
  });

  it('the CLI generates from a NemotronH GGUF as transformers does from its checkpoint (greedy)', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, 'hybrid-f32.gguf'));
    const prompt = 'The quick brown fox jumps over the lazy dog.';
    expect(tokenizer.encode(prompt)).to.deep.equal(reference.input_ids[0]);
    const run = spawnSync(process.execPath, [CLI, 'generate', '--model', path.join(DIR, 'hybrid-f32.gguf'), '--prompt', prompt, '-n', '8', '--greedy',
      '--backend', 'cpu'], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stdout).to.equal(`${tokenizer.decode(reference.models.hybrid.greedy, { skipSpecialTokens: true })}\n`);
  });
});

describe('byte-level GGUF vocabularies ("gpt2")', () => {
  it('tekken (Nemotron-H\'s): encodes and decodes as the checkpoint\'s tokenizer (specials, added tokens, digits, CamelCase, CJK, emoji, newlines)', async () => {
    for (const file of ['hybrid-f32.gguf', 'moe-q8_0.gguf']) {
      const tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, file));
      reference.texts.forEach((text, i) => {
        expect(tokenizer.encode(text), `${file}: ${JSON.stringify(text)}`).to.deep.equal(reference.encoded[i]);
        expect(tokenizer.decode(reference.encoded[i], { skipSpecialTokens: true }), text).to.equal(reference.decoded[i]);
      });
      expect([tokenizer.bosTokenId, tokenizer.eosTokenId, tokenizer.padTokenId, tokenizer.addBosToken]).to.deep.equal([1, 2, 0, true]);
      expect(tokenizer.renderChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: true })).to.equal('<s>user\nhi</s>\n<s>assistant\n');
    }
  });

  it('GPT-2\'s, Llama 3\'s ("llama-bpe") and Qwen 2\'s pre-tokenizers too, each against a tokenizer trained with it', async () => {
    expect(Object.keys(reference.vocab_only).sort()).to.deep.equal(['gpt-2', 'llama-bpe', 'qwen2']);
    for (const [pre, expected] of Object.entries(reference.vocab_only)) {
      const tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, `vocab-${pre}.gguf`));
      reference.texts.forEach((text, i) => {
        expect(tokenizer.encode(text), `${pre}: ${JSON.stringify(text)}`).to.deep.equal(expected.encoded[i]);
        expect(tokenizer.decode(expected.encoded[i], { skipSpecialTokens: true }), `${pre}: ${JSON.stringify(text)}`).to.equal(expected.decoded[i]);
      });
    }
  });

  it('refuses a pre-tokenizer it does not know, naming it and the ones it reads', async () => {
    const source = GGUFFile.open(path.join(DIR, 'vocab-qwen2.gguf'));
    const kv = [...source.metadata].filter(([k]) => k.startsWith('tokenizer.')).map(([key, value]): [string, ['str', string] | ['strs', string[]] | ['i32s', number[]] | ['u32', number] | ['bool', boolean]] => {
      if (key === 'tokenizer.ggml.pre') return [key, ['str', 'deepseek-coder']];
      if (typeof value === 'string') return [key, ['str', value]];
      if (typeof value === 'boolean') return [key, ['bool', value]];
      if (Array.isArray(value)) return [key, typeof value[0] === 'string' ? ['strs', value as string[]] : ['i32s', value as number[]]];
      return [key, ['u32', value as number]];
    });
    source.close();
    const file = path.join(tmpDir('gguf-pre'), 'unknown-pre.gguf');
    writeGGUF(file, [['general.architecture', ['str', 'nemotron_h']], ...kv], []);
    const message = await NemotronTokenizer.fromPretrained(file).then(() => 'loaded', (e: Error) => e.message);
    expect(message).to.match(/tokenizer\.ggml\.pre is "deepseek-coder"; the byte-level pre-tokenizers read are gpt-2, llama-bpe, qwen2, tekken/);
  });
});

forEachBackend(testBackends(), () => {
  it('logits of every real position as transformers computes them from the checkpoint (F32) and with Q8_0\'s rounding; greedy generation; no tensor left', async () => {
    for (const name of MODELS) {
      for (const kind of ['f32', 'q8_0'] as const) {
        const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, `${name}-${kind}.gguf`));
        const before = tf.memory().numTensors;
        const logits = tf.tidy(() => model.forward({ inputIds: reference.input_ids, attentionMask: reference.attention_mask }).logits.arraySync());
        const theirs = kind === 'f32' ? reference.models[name].logits : reference.models[name].q8_0_logits;
        expect(worstAtRealPositions(logits, theirs), `${name} ${kind}`).to.be.at.most(1e-4);
        if (kind === 'f32') {
          const out = await generate(model, [reference.input_ids[0]], { maxNewTokens: 8, eosTokenId: null, padTokenId: 0 });
          expect(out.sequences[0], `${name}: greedy`).to.deep.equal(reference.models[name].greedy);
        }
        expect(tf.memory().numTensors, 'tensors left').to.equal(before);
        model.dispose();
      }
    }
  });
});

describe('config.json with bare Infinity (Python\'s json)', () => {
  it('reads ±Infinity and NaN where JSON has no word for them; a broken file still fails by name', () => {
    const parsed = parseConfigJson('{"time_step_limit": [0.0, Infinity], "x": -Infinity, "y": NaN, "s": "Infinity"}', 'config.json');
    expect(parsed).to.deep.equal({ time_step_limit: [0, Infinity], x: -Infinity, y: null, s: 'Infinity' });
    expect(new NemotronHConfig({ timeStepLimit: [0, Infinity] }).timeStepLimit).to.deep.equal([0, Infinity]);
    expect(NemotronHConfig.fromJSON(parsed).timeStepLimit).to.deep.equal([0, Infinity]);
    expect(() => NemotronHConfig.fromJSON({ time_step_limit: [0.1, 0.01] })).to.throw(/time_step_limit \[0\.1, 0\.01\] has its low bound above its high one/);
    expect(() => parseConfigJson('{"a": [1,}', 'broken/config.json')).to.throw(/broken\/config\.json is not valid JSON/);
  });
});
