import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { CheckpointReader, saveCheckpoint } from '../../src/io/checkpoint';
import { GGUFVocabularySource, GGUFWriteType, NemotronGGUF, isGGUF, writeNemotronGGUF } from '../../src/io/gguf';
import { type TensorTypeOverrides } from '../../src/io/gguf-quantize';
import { type ImatrixSource, resolveImatrix } from '../../src/io/imatrix';
import { shapesEqual } from '../../src/tensors';
import { collectGarbage } from '../../src/gc';
import { NemotronConfig, NemotronConfigFields } from './config';
import { withDeferredInit } from '../../layers/weights';
import { BLOCK_SEPARATOR, VocabMatrix, groupBlocks, joinRows } from '../../layers/vocab-matrix';
import { estimateMemory } from './presets';

export interface FromPretrainedOptions {
  /** Fields that replace those of config.json (e.g. numLabels for a new classification head). */
  config?: Partial<NemotronConfigFields>;
  /** Called after each tensor is loaded. */
  onProgress?: (progress: { loadedBytes: number; totalBytes: number; tensor: string }) => void;
  /** Silence the warning that lists newly initialised tensors. */
  quiet?: boolean;
  /** Skip the check that the float32 weights fit in this machine's memory (and in wasm's 4 GB). */
  skipMemoryCheck?: boolean;
}

/** What loading reads weights from: a checkpoint folder (CheckpointReader) or a GGUF file (NemotronGGUF). */
interface WeightReader {
  readonly dir: string;
  readonly files: string[];
  names(): string[];
  info(name: string): { shape: number[]; file: string; byteOffset: number; byteLength: number };
  read(name: string): { data: Float32Array | Int32Array };
  totalBytes(): number;
  close(): void;
}

export { isGGUF };

/**
 * A checkpoint folder (config.json + safetensors; `required` files checked first) or a GGUF file, opened: its weights'
 * reader and its config (the reader closed again where the config does not read).
 */
export function openCheckpoint(location: string, required: string[] = ['config.json']): { reader: CheckpointReader | NemotronGGUF; config: NemotronConfig } {
  if (!isGGUF(location)) {
    for (const file of required) if (!fs.existsSync(path.join(location, file))) throw new Error(`No ${file} in ${location}`);
  }
  const reader = isGGUF(location) ? NemotronGGUF.open(location) : CheckpointReader.open(location);
  try {
    return { reader, config: reader instanceof NemotronGGUF ? NemotronConfig.fromJSON(reader.configJson(), location) : NemotronConfig.fromPretrained(location) };
  } catch (e) {
    reader.close();
    throw e;
  }
}

/** wasm's linear memory is 32-bit: 4 GB for everything, weights and activations. */
const WASM_MEMORY_BYTES = 4 * 1024 ** 3;

export interface ResizeTokenEmbeddingsOptions {
  /** Round the new size up to a multiple of this (transformers' pad_to_multiple_of). */
  padToMultipleOf?: number;
  /**
   * Added rows drawn around the old rows' mean, with 1e-9 times their covariance (default true, as transformers: new
   * tokens then barely move the next-token distribution); false: normal(0, initializer_range).
   */
  meanResizing?: boolean;
  /** Seed of the added rows' random values. */
  seed?: number;
}

export interface SavePretrainedOptions {
  /** Split into shards of at most this many bytes, with model.safetensors.index.json, as transformers does. */
  maxShardBytes?: number;
  /** Store float weights as BF16 (default F32). */
  dtype?: 'F32' | 'BF16';
}

/** Base-model parameter names (after the base prefix) every class shares. */
const BASE_NAME = /^(embed_tokens\.weight|norm\.(weight|bias)|layers\.\d+\..+)$/;
/** The prefixes transformers stores base weights under, by class. */
const BASE_PREFIXES = ['model.', 'transformer.'];
/** Head weights of the classes other than this one: present in another class's checkpoint, ignored here. */
const OTHER_HEADS = /^(lm_head|score|qa_outputs)\.(weight|bias)$/;

type ModelConstructor<T> = new (config: NemotronConfig) => T;

/**
 * What every Nemotron class shares: config, HF-named parameters, loading and saving checkpoints.
 * Subclasses define `namedParameters()` (HF names, HF layout) and `basePrefix`.
 */
export abstract class NemotronPreTrainedModel {
  /** The class name transformers gives this model (written to config.json's architectures). */
  static readonly architecture: string = 'NemotronPreTrainedModel';
  /** Where the base model's parameters live in this class's checkpoints ('' for NemotronModel). */
  abstract readonly basePrefix: string;

  /** generation_config.json as read by fromPretrained (snake_case, as transformers writes it), or null. */
  generationConfig: Record<string, unknown> | null = null;

  constructor(readonly config: NemotronConfig) {}

  /** Every trainable parameter by its HF name, in HF layout (Linear weights [out, in]). */
  abstract namedParameters(): Map<string, tf.Variable>;

  numParameters(): number {
    let n = 0;
    for (const v of this.namedParameters().values()) n += v.size;
    return n;
  }

  /** Frees every weight and cached table. The model is unusable afterwards. */
  dispose(): void {
    for (const v of this.namedParameters().values()) v.dispose();
    this.disposeExtras();
  }

  protected disposeExtras(): void {}

  /** The [vocab, hidden] matrices: the input embeddings, and an untied LM head. */
  protected abstract vocabularyMatrices(): VocabMatrix[];

  /**
   * transformers' resize_token_embeddings(): the input embeddings (and an untied LM head) to `newNumTokens` rows — the
   * first rows kept, added ones drawn as `meanResizing` says, extra ones dropped — and config.vocabSize with them.
   * Without `newNumTokens`, `padToMultipleOf` pads the current size. Returns the new vocabulary size. The parameters
   * become new variables: make optimizers and LoRA adapters after resizing.
   */
  resizeTokenEmbeddings(newNumTokens?: number | null, options: ResizeTokenEmbeddingsOptions = {}): number {
    const matrices = this.vocabularyMatrices();
    let rows = newNumTokens ?? matrices[0].rows;
    if (!(Number.isInteger(rows) && rows >= 1)) throw new Error(`resizeTokenEmbeddings: newNumTokens must be a positive integer, got ${newNumTokens}`);
    const multiple = options.padToMultipleOf;
    if (multiple !== undefined) {
      if (!(Number.isInteger(multiple) && multiple >= 1)) throw new Error(`resizeTokenEmbeddings: padToMultipleOf must be a positive integer, got ${multiple}`);
      rows = Math.ceil(rows / multiple) * multiple;
    }
    const meanResizing = options.meanResizing ?? true;
    matrices.forEach((matrix, i) => {
      // tfjs takes a seed of 0 for none: never hand it one.
      const seed = options.seed === undefined ? undefined : 1 + options.seed + 1000 * i;
      matrix.resize(rows, (count) => (meanResizing
        ? matrix.meanRows(count, seed)
        : tf.randomNormal([count, matrix.cols], 0, this.config.initializerRange, 'float32', seed) as tf.Tensor2D));
    });
    // One config object serves a head and its base model; transformers updates config.vocab_size in place too.
    (this.config as { vocabSize: number }).vocabSize = rows;
    return rows;
  }

  /** Where the gradient-checkpointing switch lives: the base model (a head's `model`). */
  protected abstract checkpointingSwitch(): { gradientCheckpointing: boolean };

  /**
   * transformers' gradient_checkpointing_enable(): while a gradient tape records, each decoder layer keeps only its
   * input and runs again in the backward, instead of keeping every activation inside it (for Minitron-4B at 2,048
   * tokens, ~1.4 GB a layer). Costs one more forward of the layers a training step; gradients are unchanged.
   */
  gradientCheckpointingEnable(): void {
    this.checkpointingSwitch().gradientCheckpointing = true;
  }

  gradientCheckpointingDisable(): void {
    this.checkpointingSwitch().gradientCheckpointing = false;
  }

  get isGradientCheckpointing(): boolean {
    return this.checkpointingSwitch().gradientCheckpointing;
  }

  /**
   * Builds the model from a Hugging Face checkpoint folder (config.json + safetensors, single or sharded).
   * Base weights load from any Nemotron class's checkpoint; head weights the checkpoint lacks are
   * initialised as transformers initialises them, with a warning that names them.
   */
  static async fromPretrained<T extends NemotronPreTrainedModel>(
    this: ModelConstructor<T> & { architecture: string },
    dir: string,
    options: FromPretrainedOptions = {},
  ): Promise<T> {
    // A GGUF file (llama.cpp's format) instead of a folder: the config from its metadata, the weights dequantized.
    const gguf = isGGUF(dir);
    const opened = openCheckpoint(dir);
    const reader: WeightReader = opened.reader;
    let config = opened.config;
    if (options.config) config = config.with(options.config);
    let model: T | null = null;
    try {
      if (!options.skipMemoryCheck) checkMemory(config, this.architecture, dir);
      model = withDeferredInit(() => new this(config));
      model.loadWeights(reader, (config.architectures ?? []).includes(this.architecture), options);
      const generationFile = path.join(gguf ? path.dirname(dir) : dir, 'generation_config.json');
      if (!gguf && fs.existsSync(generationFile)) model.generationConfig = JSON.parse(fs.readFileSync(generationFile, 'utf8'));
      return model;
    } catch (e) {
      model?.dispose();
      throw e;
    } finally {
      reader.close();
    }
  }

  /** Maps a checkpoint tensor name to this model's parameter name, or null when it is not one of ours. */
  private resolveName(name: string, params: Map<string, unknown>): string | null {
    if (params.has(name)) return name;
    const prefix = this.basePrefix;
    for (const p of ['', ...BASE_PREFIXES]) {
      if (!name.startsWith(p)) continue;
      const bare = name.slice(p.length);
      if (BASE_NAME.test(bare) && params.has(prefix + bare)) return prefix + bare;
    }
    return null;
  }

  private loadWeights(reader: WeightReader, sameArchitecture: boolean, options: FromPretrainedOptions): void {
    const blocked = groupBlocks(this.namedParameters());
    // One entry a checkpoint tensor: a blocked matrix under its HF name (its blocks are filled row range by row range).
    const params = new Map<string, tf.Variable | tf.Variable[]>([...this.namedParameters()].filter(([n]) => !n.includes(BLOCK_SEPARATOR)));
    for (const [name, blocks] of blocked) params.set(name, blocks);
    const loaded = new Set<string>();
    const totalBytes = reader.totalBytes();
    let loadedBytes = 0;
    const lazy = uploadsLazily();
    // Shard by shard, in file order: sequential reads, one tensor in host memory at a time.
    const order = reader.names().map((name) => ({ name, info: reader.info(name) }))
      .sort((a, b) => reader.files.indexOf(a.info.file) - reader.files.indexOf(b.info.file) || a.info.byteOffset - b.info.byteOffset);
    for (const { name } of order) {
      const target = this.resolveName(name, params);
      if (target === null) {
        const bare = name.replace(/^(model|transformer)\./, '');
        if (OTHER_HEADS.test(bare) || (this.config.tieWordEmbeddings && bare === 'lm_head.weight')) continue;
        throw new Error(`Unexpected tensor ${name} in the checkpoint at ${reader.dir}: ` +
          `${this.constructor.name} has no such parameter`);
      }
      const info = reader.info(name);
      const entry = params.get(target)!;
      const blocks = Array.isArray(entry) ? entry : [entry];
      const shape = [blocks.reduce((n, b) => n + b.shape[0], 0), ...blocks[0].shape.slice(1)];
      if (!shapesEqual(info.shape, shape)) {
        throw new Error(`Shape mismatch for ${name} in ${info.file}: the checkpoint has [${info.shape}], ` +
          `${this.constructor.name} expects [${shape}] for ${target}`);
      }
      if (loaded.has(target)) throw new Error(`The checkpoint at ${reader.dir} holds ${target} twice (as ${name})`);
      const host = reader.read(name);
      let offset = 0;
      for (const block of blocks) {
        tf.tidy(() => {
          const value = tf.tensor(host.data.subarray(offset, offset + block.size), block.shape, 'float32');
          // tensorflow and webgpu keep a written array on the JS heap until an op first reads it; running one now moves
          // the weight into backend memory, so a full-size load never holds the weights twice.
          block.assign(lazy ? moveToBackend(value) : value);
        });
        offset += block.size;
      }
      // A copied array is garbage now; V8 does not see the backend's memory, so collect before reading the next
      // large tensor rather than let garbage and weights pile up (the difference between 1.0× and 2× at full size).
      if (lazy && info.byteLength > 64 * 1024 ** 2) collectGarbage();
      loaded.add(target);
      loadedBytes += info.byteLength;
      options.onProgress?.({ loadedBytes, totalBytes, tensor: name });
    }
    const missing = [...params.keys()].filter((n) => !loaded.has(n));
    const missingBase = missing.filter((n) => BASE_NAME.test(n.slice(this.basePrefix.length)) && n.startsWith(this.basePrefix));
    if (missingBase.length || (missing.length && sameArchitecture)) {
      const list = (missingBase.length ? missingBase : missing);
      throw new Error(`The checkpoint at ${reader.dir} lacks ${list.length} tensor(s) that ${this.constructor.name} needs: ` +
        `${list.slice(0, 8).join(', ')}${list.length > 8 ? ', …' : ''}`);
    }
    // Built with deferred init: what the checkpoint lacks gets transformers' init now (weights normal, biases zero).
    for (const name of missing) {
      const entry = params.get(name)!;
      if (name.endsWith('.bias')) continue;
      for (const v of Array.isArray(entry) ? entry : [entry]) {
        tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, this.config.initializerRange, 'float32')));
      }
    }
    if (missing.length && !options.quiet) {
      console.warn(`${this.constructor.name}: newly initialised from normal(0, ${this.config.initializerRange}) ` +
        `(not in the checkpoint at ${reader.dir}): ${missing.join(', ')}. Train them before use.`);
    }
  }

  /**
   * Writes config.json, generation_config.json and model.safetensors (or shards) as transformers writes them.
   * Async because weights are read back from the backend, which WebGPU can only do asynchronously.
   */
  async savePretrained(dir: string, options: SavePretrainedOptions = {}): Promise<void> {
    const architecture = (this.constructor as unknown as { architecture: string }).architecture;
    const config = this.config.with({ architectures: [architecture] });
    config.save(dir);
    // The generation settings loaded with the model go back out (an instruct model's sampling defaults survive
    // fine-tuning and merging, as with transformers' save_pretrained); the config's token ids fill what they lack.
    const generation: Record<string, unknown> = this.generationConfig
      ? { ...this.generationConfig }
      : { _from_model_config: true, transformers_version: '4.48.0' };
    if (config.bosTokenId !== null) generation.bos_token_id ??= config.bosTokenId;
    if (config.eosTokenId !== null) generation.eos_token_id ??= config.eosTokenId;
    if (config.padTokenId !== null) generation.pad_token_id ??= config.padTokenId;
    fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify(generation, null, 2) + '\n');
    const tensors = (await this.hostTensors()).map((t) => ({ ...t, dtype: 'float32' as const }));
    saveCheckpoint(dir, tensors, { maxShardBytes: options.maxShardBytes, dtype: options.dtype });
  }

  /**
   * Writes the model as a GGUF file, as llama.cpp's convert_hf_to_gguf.py would (llama.cpp and transformers'
   * gguf_file= read it): matrices in `type` (F32, F16, Q8_0 or Q4_0), or as llama-quantize makes one of its file types
   * (BF16, Q4_1, Q5_0, Q5_1, Q2_K … Q6_K, IQ4/IQ3/IQ2/IQ1, TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4_MOE) from the F32 one, quantized
   * on `threads` worker threads (default: the machine's parallelism), weighted by an importance matrix `imatrix` when
   * given (a file's path or computeImatrix's result), with llama-quantize's per-tensor options (`pure`,
   * `outputTensorType`, `tokenEmbeddingType`, `tensorTypes`, `leaveOutputTensor`), `overrideKv` and `pruneLayers`; the
   * tokenizer's vocabulary in SentencePiece form.
   */
  async saveGGUF(file: string, tokenizer: GGUFVocabularySource,
    options: { type?: GGUFWriteType; name?: string; threads?: number; imatrix?: ImatrixSource; overrideKv?: string[]; pruneLayers?: number[] } & TensorTypeOverrides = {}): Promise<void> {
    const { type = 'F32', name, imatrix, ...quantizeOptions } = options;
    await writeNemotronGGUF(file, this.config, await this.hostTensors(), tokenizer, type, name, { ...quantizeOptions, imatrix: resolveImatrix(imatrix) });
  }

  /** Every parameter as a host tensor under its HF name; a matrix stored in row blocks as one, as transformers has it. */
  private async hostTensors(): Promise<Array<{ name: string; shape: number[]; data: Float32Array }>> {
    const tensors = [];
    const blocked = groupBlocks(this.namedParameters());
    for (const [name, v] of this.namedParameters()) {
      if (!name.includes(BLOCK_SEPARATOR)) tensors.push({ name, shape: v.shape.slice(), data: await v.data() as Float32Array });
    }
    for (const [name, blocks] of blocked) {
      const { shape, data } = await joinRows(blocks);
      tensors.push({ name, shape, data });
    }
    return tensors;
  }
}

/**
 * Makes the backend take a written tensor into its own memory now. tfjs-node exposes that step itself
 * (getInputTensorIds: a copy into TensorFlow, with no second tensor); elsewhere an identity-like op does it.
 */
function moveToBackend(value: tf.Tensor): tf.Tensor {
  const backend = tf.backend() as unknown as { getInputTensorIds?: (t: tf.Tensor[]) => unknown };
  if (typeof backend.getInputTensorIds === 'function') {
    backend.getInputTensorIds([value]);
    return value;
  }
  return tf.add(value, 0);
}

function uploadsLazily(): boolean {
  return !['cpu', 'wasm'].includes(tf.getBackend());
}

/** Refuses, before reading any weight, a checkpoint whose float32 weights cannot fit where they would go. */
function checkMemory(config: NemotronConfig, architecture: string, dir: string): void {
  const { weightsBytes } = estimateMemory(config, { batch: 1, sequenceLength: 1, architecture });
  const gb = (n: number) => `${(n / 1e9).toFixed(1)} GB`;
  if (tf.getBackend() === 'wasm' && weightsBytes > WASM_MEMORY_BYTES) {
    throw new Error(`The checkpoint at ${dir} needs ${gb(weightsBytes)} for its float32 weights; the wasm backend is capped at ` +
      `${gb(WASM_MEMORY_BYTES)}. Use the tensorflow or cpu backend.`);
  }
  if (weightsBytes > os.totalmem()) {
    throw new Error(`The checkpoint at ${dir} needs ${gb(weightsBytes)} for its float32 weights (tfjs has no bfloat16), ` +
      `more than this machine's ${gb(os.totalmem())} of memory`);
  }
}

/** Prefixes each name of a layer's weights. */
export function prefixed(prefix: string, weights: Array<[string, tf.Variable]>): Array<[string, tf.Variable]> {
  return weights.map(([n, v]) => [`${prefix}${n}`, v]);
}
