/**
 * `nemotron-tfjs info --model DIR`: a model card read from config.json and the safetensors headers only
 * (no weight is read into a tensor, so it is instant even for a 340B checkpoint).
 */
import * as fs from 'fs';
import { baseParameterCount, parameterCount } from '../../models/nemotron/presets';
import * as path from 'path';
import { Command } from 'commander';
import { GGUFFile, NemotronGGUF } from '../io/gguf';
import { NemotronHGGUF } from '../io/gguf-nemotron-h';
import { isGGUF, openCheckpoint } from '../../models/nemotron/pretrained';
import { NemotronConfig, RopeScaling } from '../../models/nemotron/config';
import { NemotronHConfig } from '../../models/nemotron_h/config';
import { CheckpointReader } from '../io/checkpoint';

/**
 * Checks that `dir` is a folder holding every file of `required`; the error names the missing file(s) and the folder.
 * Returns the absolute path.
 */
export function checkModelDir(dir: string, required: string[]): string {
  const abs = path.resolve(dir);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(abs);
  } catch {
    throw new Error(`model folder ${dir} does not exist`);
  }
  if (!stat.isDirectory()) throw new Error(`--model ${dir} is not a folder (expected a Hugging Face checkpoint folder)`);
  const missing = required.filter((f) => !fs.existsSync(path.join(abs, f)));
  if (missing.length) {
    throw new Error(`${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} missing from the model folder ${dir}`);
  }
  return abs;
}

/** 1536 → "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

/** 1234567 → "1.23 M". */
export function formatCount(n: number): string {
  const units: Array<[number, string]> = [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']];
  for (const [scale, suffix] of units) if (n >= scale) return `${(n / scale).toFixed(2)} ${suffix}`;
  return String(n);
}

const grouped = (n: number): string => n.toLocaleString('en-US');

export interface HeadInfo {
  /** lm_head, score or qa_outputs. */
  name: string;
  /** Shape of the weight ([out, in]); for a tied lm_head, the embedding's. */
  shape: number[];
  bias: boolean;
  /** lm_head only: no tensor of its own, it is the input embedding (tie_word_embeddings). */
  tied: boolean;
}

export interface ModelCard {
  model: string;
  architectures: string[];
  modelType: 'nemotron';
  config: {
    hiddenSize: number;
    numHiddenLayers: number;
    numAttentionHeads: number;
    numKeyValueHeads: number;
    headDim: number;
    intermediateSize: number;
    vocabSize: number;
    /** max_position_embeddings. */
    contextLength: number;
    partialRotaryFactor: number;
    rotaryDim: number;
    ropeTheta: number;
    ropeScaling: RopeScaling | null;
    tieWordEmbeddings: boolean;
    attentionBias: boolean;
    mlpBias: boolean;
    hiddenAct: string;
    normEps: number;
    numLabels: number;
    torchDtype: string | null;
    bosTokenId: number | null;
    eosTokenId: number | number[] | null;
    padTokenId: number | null;
  };
  parameters: {
    /** The sum of the element counts of every tensor in the checkpoint. */
    checkpoint: number;
    /** What the config implies for `configArchitecture`. */
    config: number;
    configArchitecture: string;
    /** Of `config`: the base model (embeddings, layers, final norm) and the head. */
    configBase: number;
    configHead: number;
  };
  checkpoint: {
    files: string[];
    sharded: boolean;
    tensors: number;
    /** Where the base weights are stored: "model.", "transformer." or "" (a bare NemotronModel). */
    basePrefix: string;
    dtypes: string[];
    /** Tensor data bytes (safetensors headers excluded). */
    tensorBytes: number;
    /** Sizes of the weight files, headers and index included. */
    fileBytes: number;
  };
  memory: {
    /** Every weight as float32: tfjs has no bfloat16, so every backend holds this much. */
    float32WeightBytes: number;
    /** 2 (K and V) × layers × KV heads × head_dim × 4 bytes, per token and sequence. */
    kvCacheBytesPerToken: number;
    /** For one sequence of max_position_embeddings tokens. */
    kvCacheBytesFullContext: number;
  };
  heads: HeadInfo[];
  /** No head at all: a bare NemotronModel checkpoint. */
  baseOnly: boolean;
  tokenizer: boolean;
  generationConfig: boolean;
}

/** Parameters of the head of an architecture (0 for an unknown one). */
function headParameterCount(c: NemotronConfig, architecture: string): number {
  try {
    return parameterCount(c, architecture) - baseParameterCount(c);
  } catch {
    return 0;
  }
}

const HEAD_ARCHITECTURE: Record<string, string> = {
  lm_head: 'NemotronForCausalLM',
  score: 'NemotronForSequenceClassification',
  qa_outputs: 'NemotronForQuestionAnswering',
};

/** Reads config.json and the safetensors headers of `dir` into a model card. */
/**
 * config.json's model_type of a checkpoint folder, or a GGUF file's by its architecture (nemotron; nemotron_h and
 * nemotron_h_moe as nemotron_h); null for a folder without one.
 */
export function modelType(location: string): string | null {
  if (isGGUF(location)) {
    const file = GGUFFile.open(location);
    try {
      const architecture = file.get('general.architecture');
      return architecture === 'nemotron_h_moe' ? 'nemotron_h' : typeof architecture === 'string' ? architecture : null;
    } finally {
      file.close();
    }
  }
  try {
    return (JSON.parse(fs.readFileSync(path.join(location, 'config.json'), 'utf8')) as { model_type?: string }).model_type ?? null;
  } catch {
    return null;
  }
}

/**
 * A NemotronH checkpoint's card (a folder, or a nemotron_h / nemotron_h_moe GGUF file): its layer pattern, parameters
 * and float32 memory (weights, state a sequence, KV a token); a GGUF's stored types too.
 */
export function nemotronHCard(location: string): Record<string, string | number | string[]> {
  let config: NemotronHConfig;
  let parameters = 0;
  let stored: string[] | null = null;
  if (isGGUF(location)) {
    const gguf = NemotronHGGUF.open(location);
    try {
      config = NemotronHConfig.fromJSON(gguf.configJson());
      for (const info of gguf.file.tensors.values()) parameters += info.shape.reduce((a, b) => a * b, 1);
      stored = [...gguf.dtypes()].sort();
    } finally {
      gguf.close();
    }
  } else {
    config = NemotronHConfig.fromPretrained(location);
    const reader = CheckpointReader.open(location);
    try {
      for (const name of reader.names()) parameters += reader.info(name).shape.reduce((a, b) => a * b, 1);
    } finally {
      reader.close();
    }
  }
  const count = (type: string) => config.layerTypes.filter((t) => t === type).length;
  const pattern = { mamba: 'M', attention: '*', mlp: '-', moe: 'E' } as const;
  const mambaState = (config.convKernel - 1) * config.convDim + config.mambaNumHeads * config.mambaHeadDim * config.ssmStateSize;
  return {
    architecture: 'NemotronHForCausalLM', layers: config.numHiddenLayers, pattern: config.layerTypes.map((t) => pattern[t]).join(''),
    mamba_layers: count('mamba'), attention_layers: count('attention'), mlp_layers: count('mlp'), moe_layers: count('moe'),
    hidden_size: config.hiddenSize, vocab_size: config.vocabSize, parameters, parameters_readable: formatCount(parameters),
    float32_weights: formatBytes(parameters * 4),
    state_per_sequence: formatBytes(count('mamba') * mambaState * 4),
    kv_cache_per_token: formatBytes(2 * count('attention') * config.numKeyValueHeads * config.headDim * 4),
    ...(stored ? { gguf_types: stored } : {}),
  };
}

export function modelCard(dir: string): ModelCard {
  // A GGUF file: its metadata is the config, its tensor table the checkpoint (types as stored, Q4_K, F32, …).
  const gguf = isGGUF(dir);
  const abs = gguf ? path.resolve(dir) : checkModelDir(dir, ['config.json']);
  const { reader, config } = openCheckpoint(abs);
  try {
    const names = reader.names();
    let checkpointParams = 0;
    for (const name of names) checkpointParams += reader.info(name).shape.reduce((a, b) => a * b, 1);

    const bases = ['model.', 'transformer.', ''];
    const basePrefix = bases.find((p) => reader.has(`${p}embed_tokens.weight`)) ?? '';

    const heads: HeadInfo[] = [];
    for (const head of ['lm_head', 'score', 'qa_outputs']) {
      if (!reader.has(`${head}.weight`)) continue;
      heads.push({ name: head, shape: reader.info(`${head}.weight`).shape, bias: reader.has(`${head}.bias`), tied: false });
    }
    const architectures = config.architectures ?? [];
    const wantsLmHead = architectures.length === 0 || architectures.includes('NemotronForCausalLM');
    if (!heads.some((h) => h.name === 'lm_head') && config.tieWordEmbeddings && wantsLmHead) {
      heads.unshift({ name: 'lm_head', shape: [config.vocabSize, config.hiddenSize], bias: false, tied: true });
    }

    // The architecture the config names, else the one the checkpoint's head implies.
    let architecture = architectures[0];
    if (!architecture) {
      const first = heads[0];
      architecture = !first ? 'NemotronModel'
        : first.name === 'score' ? (first.bias ? 'NemotronForTokenClassification' : 'NemotronForSequenceClassification')
          : HEAD_ARCHITECTURE[first.name];
    }
    const configBase = baseParameterCount(config);
    const configHead = headParameterCount(config, architecture);

    const files = reader.indexFile ? [reader.indexFile, ...reader.files] : reader.files;
    const fileBytes = files.reduce((sum, f) => sum + fs.statSync(f).size, 0);
    const kvPerToken = 2 * config.numHiddenLayers * config.numKeyValueHeads * config.headDim * 4;

    return {
      model: abs,
      architectures,
      modelType: 'nemotron',
      config: {
        hiddenSize: config.hiddenSize,
        numHiddenLayers: config.numHiddenLayers,
        numAttentionHeads: config.numAttentionHeads,
        numKeyValueHeads: config.numKeyValueHeads,
        headDim: config.headDim,
        intermediateSize: config.intermediateSize,
        vocabSize: config.vocabSize,
        contextLength: config.maxPositionEmbeddings,
        partialRotaryFactor: config.partialRotaryFactor,
        rotaryDim: config.rotaryDim,
        ropeTheta: config.ropeTheta,
        ropeScaling: config.ropeScaling,
        tieWordEmbeddings: config.tieWordEmbeddings,
        attentionBias: config.attentionBias,
        mlpBias: config.mlpBias,
        hiddenAct: config.hiddenAct,
        normEps: config.normEps,
        numLabels: config.numLabels,
        torchDtype: config.torchDtype,
        bosTokenId: config.bosTokenId,
        eosTokenId: config.eosTokenId,
        padTokenId: config.padTokenId,
      },
      parameters: {
        checkpoint: checkpointParams,
        config: configBase + configHead,
        configArchitecture: architecture,
        configBase,
        configHead,
      },
      checkpoint: {
        files: files.map((f) => (gguf ? path.basename(f) : path.relative(abs, f))),
        sharded: reader.indexFile !== null,
        tensors: names.length,
        basePrefix,
        dtypes: [...reader.dtypes()].sort(),
        tensorBytes: reader.totalBytes(),
        fileBytes,
      },
      memory: {
        float32WeightBytes: checkpointParams * 4,
        kvCacheBytesPerToken: kvPerToken,
        kvCacheBytesFullContext: kvPerToken * config.maxPositionEmbeddings,
      },
      heads,
      baseOnly: heads.length === 0,
      tokenizer: reader instanceof NemotronGGUF ? reader.file.get('tokenizer.ggml.tokens') !== undefined : fs.existsSync(path.join(abs, 'tokenizer.json')),
      generationConfig: !gguf && fs.existsSync(path.join(abs, 'generation_config.json')),
    };
  } finally {
    reader.close();
  }
}

const yesNo = (b: boolean): string => (b ? 'yes' : 'no');

/** The human-readable card. */
export function formatModelCard(card: ModelCard): string {
  const c = card.config;
  const p = card.parameters;
  const lines: string[] = [];
  const section = (title: string) => lines.push('', title);
  const row = (label: string, value: string | number) => lines.push(`  ${label.padEnd(26)}${value}`);

  lines.push(`model: ${card.model}`);
  row('architecture(s)', card.architectures.length ? card.architectures.join(', ') : `(none in config.json; ${p.configArchitecture} by its tensors)`);

  section('config');
  row('hidden size', c.hiddenSize);
  row('layers', c.numHiddenLayers);
  row('attention heads', c.numAttentionHeads);
  const group = c.numAttentionHeads / c.numKeyValueHeads;
  const kind = c.numKeyValueHeads === c.numAttentionHeads ? 'MHA' : c.numKeyValueHeads === 1 ? 'MQA' : `GQA, ${group} query heads each`;
  row('KV heads', `${c.numKeyValueHeads} (${kind})`);
  row('head dim', c.headDim);
  row('intermediate size', c.intermediateSize);
  row('vocab size', c.vocabSize);
  row('context length', `${c.contextLength} (max_position_embeddings)`);
  row('rotary', `${+(c.partialRotaryFactor * 100).toFixed(2)}% of head_dim (${c.rotaryDim} channels), theta ${c.ropeTheta}` +
    (c.ropeScaling ? `, ${c.ropeScaling.ropeType} scaling` + (c.ropeScaling.factor !== undefined ? ` × ${c.ropeScaling.factor}` : '') +
      (c.ropeScaling.originalMaxPositionEmbeddings !== undefined ? ` from ${c.ropeScaling.originalMaxPositionEmbeddings} positions` : '') : ''));
  row('activation', c.hiddenAct);
  row('norm eps', c.normEps);
  row('tied embeddings', yesNo(c.tieWordEmbeddings));
  row('biases', `attention ${yesNo(c.attentionBias)}, MLP ${yesNo(c.mlpBias)}`);
  if (c.torchDtype) row('dtype (config)', c.torchDtype);
  const eos = Array.isArray(c.eosTokenId) ? `[${c.eosTokenId.join(', ')}]` : String(c.eosTokenId);
  row('special ids', `bos ${c.bosTokenId}, eos ${eos}, pad ${c.padTokenId}`);

  section('parameters');
  row('from the checkpoint', `${grouped(p.checkpoint)} (${formatCount(p.checkpoint)})`);
  const match = p.config === p.checkpoint ? 'matches' : `differs by ${grouped(Math.abs(p.config - p.checkpoint))}`;
  row('from the config', `${grouped(p.config)} (${formatCount(p.config)}) as ${p.configArchitecture}: ` +
    `base ${grouped(p.configBase)} + head ${grouped(p.configHead)}; ${match}`);

  section('checkpoint');
  const k = card.checkpoint;
  row('files', k.sharded ? `${k.files.length - 1} shards + ${k.files[0]}` : k.files.join(', '));
  row('tensors', k.tensors);
  row('base prefix', k.basePrefix ? k.basePrefix : '(none: a bare NemotronModel)');
  row('dtype(s) on disk', k.dtypes.join(', '));
  row('bytes on disk', `${formatBytes(k.tensorBytes)} of tensors (${grouped(k.tensorBytes)} B), ${formatBytes(k.fileBytes)} in files`);

  section('memory (float32: tfjs has no bfloat16)');
  const m = card.memory;
  row('weights', `${formatBytes(m.float32WeightBytes)} (${grouped(m.float32WeightBytes)} B)`);
  row('KV cache per token', `${formatBytes(m.kvCacheBytesPerToken)} (2 × ${c.numHiddenLayers} layers × ${c.numKeyValueHeads} KV heads × ${c.headDim} × 4 B)`);
  row(`KV cache, ${c.contextLength} tokens`, formatBytes(m.kvCacheBytesFullContext));

  section('heads');
  if (card.baseOnly) lines.push('  base only (no head: a NemotronModel checkpoint)');
  for (const h of card.heads) {
    const detail = h.tied ? 'tied to embed_tokens (no tensor of its own)' : `[${h.shape.join(', ')}]${h.bias ? ' + bias' : ''}`;
    row(h.name, detail);
  }

  section('files');
  if (card.checkpoint.files.length === 1 && card.checkpoint.files[0].toLowerCase().endsWith('.gguf')) {
    row('vocabulary', card.tokenizer ? 'in the GGUF (tokenizer.ggml.*)' : 'absent (generate needs it)');
  } else {
    row('tokenizer.json', card.tokenizer ? 'present' : 'absent (generate needs it)');
    row('generation_config.json', card.generationConfig ? 'present' : 'absent');
  }
  return lines.join('\n') + '\n';
}

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('print a model card (config, parameter count, dtypes, memory, heads) without loading the weights')
    .requiredOption('-m, --model <dir>', 'Hugging Face checkpoint folder (config.json + safetensors), or a GGUF file')
    .option('--json', 'print the card as JSON', false)
    .addHelpText('after', `
Memory is given for float32, which every tfjs backend uses (there is no bfloat16 in tfjs).
KV cache bytes per token = 2 × layers × KV heads × head_dim × 4.

Example:
  nemotron-tfjs info --model ./Minitron-4B-Base --json`)
    .action((opts: { model: string; json: boolean }) => {
      if (modelType(opts.model) === 'nemotron_h') {
        const card = nemotronHCard(opts.model);
        process.stdout.write(opts.json ? JSON.stringify(card, null, 2) + '\n' : `${Object.entries(card).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(' ') : v}`).join('\n')}\n`);
        return;
      }
      const card = modelCard(opts.model);
      process.stdout.write(opts.json ? JSON.stringify(card, null, 2) + '\n' : formatModelCard(card));
    });
}
