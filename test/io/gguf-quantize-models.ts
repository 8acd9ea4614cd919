/**
 * The models whose k-quant GGUF files are compared with llama-quantize's (test/io/gguf-quantize.test.ts): shapes where
 * llama.cpp's mixes differ by layer (8 layers), by tensor (attn_v, ffn_down, output, the tied embedding) and by row
 * length (384-value rows of ffn_down fall back from the k-quants, 48-value ones to F16), NemotronH with Mamba, attention and eight
 * experts (llama.cpp's rules for 8-expert models). Weights from a fixed seed, so that
 * `scripts/reference/gguf_kquant_fixtures.py` and `llama_cpp_fixtures.py` (which run this file to write their F32 GGUFs)
 * and the tests see the same. Shapes llama.cpp loads (its Nemotron needs heads × head_dim = hidden size).
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import seedrandom from 'seedrandom';
import { type GGMLWriteType, type GGUFQuantMix, parseTensorType, readTensorTypeFile } from '../../src/io/gguf-quantize';
import { type ImportanceMatrix, quantizeRows } from '../../src/io/gguf-quantize-imatrix';
import { type QuantizeOptions } from '../../src/io/gguf';
import { filterImatrix, type ImatrixSource, readImatrix } from '../../src/io/imatrix';
import { GGUFFile, LoraModel, NemotronConfig, NemotronForCausalLM, NemotronHConfig, NemotronHForCausalLM, NemotronHLoraModel, NemotronTokenizer } from '../../src/index';

const FIXTURES = path.resolve(__dirname, '../../../test/fixtures');

export const QUANTIZE_MODELS = ['nemotron', 'nemotron-tied', 'nemotron-h'] as const;
export type QuantizeModelName = (typeof QUANTIZE_MODELS)[number];

/** Every parameter, in name order, drawn from a seeded normal distribution. */
function fillWeights(params: Map<string, { shape: number[]; assign(t: unknown): void }>, seed: string, tensor: (shape: number[], data: Float32Array) => unknown,
  spread = 0.02): void {
  const rng = seedrandom(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  for (const name of [...params.keys()].sort()) {
    const v = params.get(name)!;
    const data = new Float32Array(v.shape.reduce((a, b) => a * b, 1));
    // A_log and D as Mamba keeps them, RMSNorm's weights around 1 (LayerNorm1P's are offsets from 1), the rest around 0.
    const [scale, offset] = /A_log$/.test(name) ? [0.5, 1] : /\.D$/.test(name) ? [0.1, 1]
      : seed === 'nemotron-h' && /norm\.weight$/.test(name) ? [0.02, 1] : [spread, 0];
    for (let i = 0; i < data.length; i++) data[i] = offset + scale * normal();
    v.assign(tensor(v.shape, data));
  }
}

/** One of the models, its weights filled, with the tokenizer its GGUF takes. */
export async function quantizeModel(name: QuantizeModelName): Promise<{ model: NemotronForCausalLM | NemotronHForCausalLM; tokenizer: NemotronTokenizer }> {
  const tf = await import('@tensorflow/tfjs');
  const tensor = (shape: number[], data: Float32Array) => tf.tensor(data, shape);
  if (name === 'nemotron-h') {
    const tokenizer = await NemotronTokenizer.fromPretrained(path.join(FIXTURES, 'nemotron-h-gguf', 'tokenizer'));
    const config = new NemotronHConfig({
      vocabSize: 320, hiddenSize: 256, layerTypes: ['mamba', 'moe', 'attention', 'moe', 'mamba', 'moe'],
      mambaNumHeads: 8, mambaHeadDim: 32, nGroups: 2, ssmStateSize: 16, convKernel: 4, chunkSize: 8,
      numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 64, intermediateSize: 256,
      nRoutedExperts: 8, numExpertsPerTok: 2, moeIntermediateSize: 256, moeSharedExpertIntermediateSize: 256, routedScalingFactor: 2.5,
    });
    const model = new NemotronHForCausalLM(config);
    fillWeights(model.namedParameters() as never, name, tensor);
    return { model, tokenizer };
  }
  const tokenizer = await NemotronTokenizer.fromPretrained(path.join(FIXTURES, 'gguf', 'tiny-gqa.gguf'));
  const config = name === 'nemotron'
    ? new NemotronConfig({ vocabSize: 96, hiddenSize: 256, numAttentionHeads: 4, numKeyValueHeads: 1, headDim: 64, intermediateSize: 384, numHiddenLayers: 8, tieWordEmbeddings: false })
    : new NemotronConfig({ vocabSize: 96, hiddenSize: 48, numAttentionHeads: 2, numKeyValueHeads: 1, intermediateSize: 64, numHiddenLayers: 2, tieWordEmbeddings: true });
  const model = new NemotronForCausalLM(config);
  fillWeights(model.namedParameters() as never, name, tensor);
  return { model, tokenizer };
}

/**
 * LoRA adapters on every linear module of a model from `quantizeModel` (Nemotron's as rsLoRA, whose scaling llama.cpp
 * lacks), A and B drawn from a fixed seed (B is zero when attached: nothing would show), as GGUF files llama.cpp takes.
 */
export async function adaptModel(name: 'nemotron' | 'nemotron-h', model: NemotronForCausalLM | NemotronHForCausalLM): Promise<LoraModel | NemotronHLoraModel> {
  const tf = await import('@tensorflow/tfjs');
  const lora = name === 'nemotron'
    ? LoraModel.attach(model as NemotronForCausalLM, { r: 4, loraAlpha: 8, targetModules: 'all-linear', useRslora: true })
    : NemotronHLoraModel.attach(model as NemotronHForCausalLM, { r: 4, loraAlpha: 8, targetModules: 'all-linear' });
  // Wider draws than the weights', so that the adapters move the logits well past the tolerance.
  fillWeights(lora.namedParameters() as never, `${name}-lora`, (shape, data) => tf.tensor(data, shape), 0.2);
  return lora;
}

/** What the fixture scripts record of a file llama-quantize wrote: its SHA-256, and each tensor's name, type and SHA-256. */
export interface QuantizedFileDigest { sha256: string; tensors: Array<[string, string, string]> }

export const sha256 = (data: Buffer | Uint8Array): string => crypto.createHash('sha256').update(data).digest('hex');

/** Asserts `file` is llama-quantize's file byte for byte; if not, says where: the tensors (order, types, bytes) or the rest. */
export function expectLlamaQuantizeFile(file: string, expected: QuantizedFileDigest, label: string): void {
  if (sha256(fs.readFileSync(file)) === expected.sha256) return;
  const ours = GGUFFile.open(file);
  const tensors = [...ours.tensors].map(([t, info]) => [t, info.type, sha256(ours.readBytes(t))]);
  ours.close();
  expect(tensors, `${label}: tensors in order, with their types and bytes`).to.deep.equal(expected.tensors);
  expect.fail(`${label}: the tensors agree but the file does not (metadata or layout)`);
}

/**
 * ggml_quantize_chunk's bytes for test/fixtures/gguf-kquants/blocks.f32 (64 stretches of 256 values, each a kind of
 * block), keyed "TYPE ROWS" (ROWS: the importance vector's length, `importance-ROWS.f32` in `importanceDir`, or
 * "none"), against `quantizeRows`' bytes, stretch by stretch.
 */
export function expectLlamaBlocks(blocks: Record<string, string>, importanceDir: string): void {
  const floats = (file: string) => { const raw = fs.readFileSync(file); return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)); };
  const values = floats(path.join(FIXTURES, 'gguf-kquants', 'blocks.f32'));
  for (const [key, encoded] of Object.entries(blocks)) {
    const [type, rows] = key.split(' ') as [Parameters<typeof quantizeRows>[0], string];
    const importance = rows === 'none' ? undefined : floats(path.join(importanceDir, `importance-${rows}.f32`));
    const theirs = Buffer.from(encoded, 'base64');
    const ours = quantizeRows(type, values, importance);
    expect(ours.length, `${key}: bytes`).to.equal(theirs.length);
    const stretch = theirs.length / 64;
    const differing = [...Array(64).keys()].filter((b) => !ours.subarray(b * stretch, (b + 1) * stretch).equals(theirs.subarray(b * stretch, (b + 1) * stretch)));
    expect(differing, `${key}: 256-value stretches whose bytes differ from llama.cpp's`).to.deep.equal([]);
  }
}

/**
 * llama-quantize's flags as saveGGUF's / quantizeGGUF's options (its type names in any case; patterns lower-cased by
 * saveGGUF): `--imatrix` is model `model`'s fixture matrix, recorded under the name given; `--tensor-type-file` is
 * read from the working directory.
 */
export function llamaQuantizeOptions(flags: string[], model: QuantizeModelName): QuantizeOptions & { imatrix?: ImatrixSource } {
  const type = (name: string) => name.toUpperCase() as GGMLWriteType;
  const options: QuantizeOptions & { imatrix?: ImatrixSource } = {};
  const weights: { include: string[]; exclude: string[] } = { include: [], exclude: [] };
  let imatrix: { matrix: ImportanceMatrix; file: string } | undefined;
  for (let i = 0; i < flags.length; i++) {
    switch (flags[i]) {
      case '--pure': options.pure = true; break;
      case '--leave-output-tensor': options.leaveOutputTensor = true; break;
      case '--allow-requantize': options.allowRequantize = true; break;
      case '--output-tensor-type': options.outputTensorType = type(flags[++i]); break;
      case '--token-embedding-type': options.tokenEmbeddingType = type(flags[++i]); break;
      case '--override-kv': options.overrideKv = [...(options.overrideKv ?? []), flags[++i]]; break;
      case '--prune-layers': options.pruneLayers = flags[++i].split(',').map(Number); break;
      case '--imatrix': imatrix = { matrix: readImatrix(path.join(FIXTURES, 'gguf-imatrix', `${model}.imatrix.gguf`)), file: flags[++i] }; break;
      case '--include-weights': weights.include.push(flags[++i]); break;
      case '--exclude-weights': weights.exclude.push(flags[++i]); break;
      case '--tensor-type': options.tensorTypes = [...(options.tensorTypes ?? []), parseTensorType(flags[++i])]; break;
      case '--tensor-type-file': options.tensorTypes = [...(options.tensorTypes ?? []), ...readTensorTypeFile(flags[++i])]; break;
      default: throw new Error(`unknown flag ${flags[i]}`);
    }
  }
  if (imatrix) options.imatrix = filterImatrix(imatrix, weights);
  return options;
}

/** A fresh directory holding nemotron-h's F32 GGUF (`nemotron-h-F32.gguf`) and its llama-imatrix file from `imatrixDir` (`imatrix.gguf`). */
export async function nemotronHWithImatrix(imatrixDir: string): Promise<string> {
  const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'nemotron-requantize-'));
  const { model, tokenizer } = await quantizeModel('nemotron-h');
  await model.saveGGUF(path.join(dir, 'nemotron-h-F32.gguf'), tokenizer, { type: 'F32', name: 'nemotron-h' });
  model.dispose();
  fs.copyFileSync(path.join(imatrixDir, 'nemotron-h.imatrix.gguf'), path.join(dir, 'imatrix.gguf'));
  return dir;
}

/** Runs `body` with the working directory `dir` (llama-quantize records the imatrix path as it was given). */
export async function inDirectory<T>(dir: string, body: () => Promise<T>): Promise<T> {
  const previous = process.cwd();
  process.chdir(dir);
  try { return await body(); } finally { process.chdir(previous); }
}

/**
 * Saves model `name` (from `quantizeModel`) in each of the `plain` mixes, then with its llama-imatrix file from
 * `imatrixDir` (as `imatrix.gguf` in the working directory, the path the fixtures gave llama-quantize) in each of
 * the `imatrix` ones, and asserts llama-quantize's file: `files["NAME MIX"]`, `files["NAME imatrix MIX"]`. A mix
 * in `refused` must fail instead, with that message. No tensor is left behind.
 */
export async function expectMixFiles(name: QuantizeModelName, files: Record<string, QuantizedFileDigest>,
  mixes: { plain: GGUFQuantMix[]; imatrix?: GGUFQuantMix[]; imatrixDir?: string; refused?: Record<string, RegExp> }): Promise<void> {
  const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), `nemotron-mix-files-`));
  await withQuantizeModel(name, (model, tokenizer) => inDirectory(dir, async () => {
    const write = async (mix: GGUFQuantMix, key: string, imatrix?: string) => {
      const file = `${key.replace(/ /g, '-')}.gguf`;
      const refusal = mixes.refused?.[mix];
      const said = await model.saveGGUF(file, tokenizer, { type: mix, name, ...(imatrix ? { imatrix } : {}) }).then(() => null, (e: Error) => e.message);
      if (refusal) expect(said, `${key}: refused`).to.match(refusal);
      else if (said) expect.fail(`${key}: ${said}`);
      else expectLlamaQuantizeFile(file, files[key], key);
    };
    for (const mix of mixes.plain) await write(mix, `${name} ${mix}`);
    if (mixes.imatrix?.length) {
      fs.copyFileSync(path.join(mixes.imatrixDir!, `${name}.imatrix.gguf`), 'imatrix.gguf');
      for (const mix of mixes.imatrix) await write(mix, `${name} imatrix ${mix}`, 'imatrix.gguf');
    }
  }));
}

/** Runs `body` on model `name` (from `quantizeModel`), asserts it left no tensor behind, and disposes the model. */
export async function withQuantizeModel(name: QuantizeModelName,
  body: (model: NemotronForCausalLM | NemotronHForCausalLM, tokenizer: NemotronTokenizer) => Promise<void>): Promise<void> {
  const tf = await import('@tensorflow/tfjs');
  const { model, tokenizer } = await quantizeModel(name);
  const before = tf.memory().numTensors;
  try {
    await body(model, tokenizer);
    expect(tf.memory().numTensors, 'no tensor left').to.equal(before);
  } finally {
    model.dispose();
  }
}

/**
 * `node dist/test/io/gguf-quantize-models.js DIR`: each model's F32 and F16 GGUFs (DIR/NAME-f32.gguf, NAME-f16.gguf),
 * llama-quantize's inputs, and for Nemotron and NemotronH an adapter's GGUF (DIR/NAME-lora.gguf).
 */
async function main(dir: string): Promise<void> {
  const tf = await import('@tensorflow/tfjs');
  await tf.setBackend('cpu');
  for (const name of QUANTIZE_MODELS) {
    const { model, tokenizer } = await quantizeModel(name);
    await model.saveGGUF(path.join(dir, `${name}-f32.gguf`), tokenizer, { type: 'F32', name });
    await model.saveGGUF(path.join(dir, `${name}-f16.gguf`), tokenizer, { type: 'F16', name });
    if (name !== 'nemotron-tied') await (await adaptModel(name, model)).saveGGUF(path.join(dir, `${name}-lora.gguf`));
    model.dispose();
  }
}

if (require.main === module) {
  main(process.argv[2]).catch((e) => { console.error(e); process.exit(1); });
}
