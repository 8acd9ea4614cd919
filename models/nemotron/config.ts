import * as fs from 'fs';
import * as path from 'path';
// Circular on purpose: both sides use the other only at call time.
import { preset } from './presets';
import { ROPE_TYPES, RopeScaling, RopeType } from '../../layers/rope-frequencies';

/** Activation names transformers' ACT2FN accepts for Nemotron; relu2 is the one the family uses. */
export const SUPPORTED_ACTIVATIONS = ['relu2', 'relu', 'gelu', 'silu'] as const;
export type HiddenAct = (typeof SUPPORTED_ACTIVATIONS)[number];

export type ProblemType = 'regression' | 'single_label_classification' | 'multi_label_classification';

export type { RopeScaling, RopeType } from '../../layers/rope-frequencies';

/** rope_parameters' fields, camelCased, by their names in config.json. */
const ROPE_FIELDS: Array<[keyof RopeScaling, string]> = [
  ['factor', 'factor'], ['originalMaxPositionEmbeddings', 'original_max_position_embeddings'], ['attentionFactor', 'attention_factor'],
  ['betaFast', 'beta_fast'], ['betaSlow', 'beta_slow'], ['mscale', 'mscale'], ['mscaleAllDim', 'mscale_all_dim'], ['truncate', 'truncate'],
  ['lowFreqFactor', 'low_freq_factor'], ['highFreqFactor', 'high_freq_factor'], ['shortFactor', 'short_factor'], ['longFactor', 'long_factor'],
];
/** The fields each rope type needs (transformers' _validate_*_rope_parameters; original_max_position_embeddings has a default). */
const ROPE_REQUIRED: Record<RopeType, Array<keyof RopeScaling>> = {
  linear: ['factor'], dynamic: ['factor'], yarn: ['factor'], llama3: ['factor', 'lowFreqFactor', 'highFreqFactor'],
  longrope: ['shortFactor', 'longFactor'],
};

/** Every field of transformers' NemotronConfig (camelCased) plus what the heads read. */
export interface NemotronConfigFields {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  headDim: number;
  numKeyValueHeads: number;
  hiddenAct: HiddenAct;
  maxPositionEmbeddings: number;
  initializerRange: number;
  normEps: number;
  useCache: boolean;
  padTokenId: number | null;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  tieWordEmbeddings: boolean;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  partialRotaryFactor: number;
  attentionBias: boolean;
  attentionDropout: number;
  mlpBias: boolean;
  numLabels: number;
  id2label: Record<number, string>;
  label2id: Record<string, number>;
  problemType: ProblemType | null;
  architectures: string[] | null;
  torchDtype: string | null;
}

/** transformers' defaults (Nemotron-4 15B shapes). */
const DEFAULTS: Omit<NemotronConfigFields, 'headDim' | 'numKeyValueHeads' | 'id2label' | 'label2id'> = {
  vocabSize: 256000,
  hiddenSize: 6144,
  intermediateSize: 24576,
  numHiddenLayers: 32,
  numAttentionHeads: 48,
  hiddenAct: 'relu2',
  maxPositionEmbeddings: 4096,
  initializerRange: 0.0134,
  normEps: 1e-5,
  useCache: true,
  padTokenId: null,
  bosTokenId: 2,
  eosTokenId: 3,
  tieWordEmbeddings: false,
  ropeTheta: 10000,
  ropeScaling: null,
  partialRotaryFactor: 0.5,
  attentionBias: false,
  attentionDropout: 0,
  mlpBias: false,
  numLabels: 2,
  problemType: null,
  architectures: null,
  torchDtype: null,
};

const SNAKE: Record<string, string> = {
  vocabSize: 'vocab_size', hiddenSize: 'hidden_size', intermediateSize: 'intermediate_size',
  numHiddenLayers: 'num_hidden_layers', numAttentionHeads: 'num_attention_heads', headDim: 'head_dim',
  numKeyValueHeads: 'num_key_value_heads', hiddenAct: 'hidden_act',
  maxPositionEmbeddings: 'max_position_embeddings', initializerRange: 'initializer_range', normEps: 'norm_eps',
  useCache: 'use_cache', padTokenId: 'pad_token_id', bosTokenId: 'bos_token_id', eosTokenId: 'eos_token_id',
  tieWordEmbeddings: 'tie_word_embeddings', partialRotaryFactor: 'partial_rotary_factor',
  attentionBias: 'attention_bias', attentionDropout: 'attention_dropout', mlpBias: 'mlp_bias',
  problemType: 'problem_type', architectures: 'architectures',
};

/** Fields a config.json must hold: the shapes. Everything else has a transformers default. */
const REQUIRED_JSON_FIELDS = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads'];

export class NemotronConfig implements NemotronConfigFields {
  vocabSize!: number;
  hiddenSize!: number;
  intermediateSize!: number;
  numHiddenLayers!: number;
  numAttentionHeads!: number;
  headDim!: number;
  numKeyValueHeads!: number;
  hiddenAct!: HiddenAct;
  maxPositionEmbeddings!: number;
  initializerRange!: number;
  normEps!: number;
  useCache!: boolean;
  padTokenId!: number | null;
  bosTokenId!: number | null;
  eosTokenId!: number | number[] | null;
  tieWordEmbeddings!: boolean;
  ropeTheta!: number;
  ropeScaling!: RopeScaling | null;
  partialRotaryFactor!: number;
  attentionBias!: boolean;
  attentionDropout!: number;
  mlpBias!: boolean;
  numLabels!: number;
  id2label!: Record<number, string>;
  label2id!: Record<string, number>;
  problemType!: ProblemType | null;
  architectures!: string[] | null;
  torchDtype!: string | null;

  constructor(fields: Partial<NemotronConfigFields> = {}, source = 'NemotronConfig') {
    Object.assign(this, DEFAULTS);
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) (this as Record<string, unknown>)[k] = v;
    this.headDim ??= Math.floor(this.hiddenSize / this.numAttentionHeads);
    this.numKeyValueHeads ??= this.numAttentionHeads;
    if (!fields.id2label) {
      const n = fields.label2id ? Object.keys(fields.label2id).length : this.numLabels;
      this.id2label = fields.label2id
        ? Object.fromEntries(Object.entries(fields.label2id).map(([l, i]) => [i, l]))
        : Object.fromEntries(Array.from({ length: n }, (_, i) => [i, `LABEL_${i}`]));
    }
    if (fields.id2label && fields.numLabels === undefined) this.numLabels = Object.keys(fields.id2label).length;
    if (!fields.label2id) this.label2id = Object.fromEntries(Object.entries(this.id2label).map(([i, l]) => [l, Number(i)]));
    this.validate(source);
  }

  /** Channels of each head that rotary rotates: floor(head_dim × partial_rotary_factor), as transformers computes it. */
  get rotaryDim(): number {
    return Math.floor(this.headDim * this.partialRotaryFactor);
  }

  get eosTokenIds(): number[] {
    if (this.eosTokenId === null) return [];
    return Array.isArray(this.eosTokenId) ? this.eosTokenId : [this.eosTokenId];
  }

  private validate(source: string): void {
    const positive = ['vocabSize', 'hiddenSize', 'intermediateSize', 'numHiddenLayers', 'numAttentionHeads',
      'headDim', 'numKeyValueHeads', 'maxPositionEmbeddings', 'numLabels'] as const;
    for (const key of positive) {
      const v = this[key];
      if (!Number.isInteger(v) || v <= 0) {
        throw new Error(`${source}: ${SNAKE[key] ?? key} must be a positive integer, got ${JSON.stringify(v)}`);
      }
    }
    if (this.numAttentionHeads % this.numKeyValueHeads !== 0) {
      throw new Error(`${source}: num_attention_heads (${this.numAttentionHeads}) must be divisible by ` +
        `num_key_value_heads (${this.numKeyValueHeads})`);
    }
    if (!(this.partialRotaryFactor > 0 && this.partialRotaryFactor <= 1)) {
      throw new Error(`${source}: partial_rotary_factor must be in (0, 1], got ${this.partialRotaryFactor}`);
    }
    if (this.rotaryDim % 2 !== 0 || this.rotaryDim === 0) {
      throw new Error(`${source}: the rotary width floor(head_dim ${this.headDim} × partial_rotary_factor ` +
        `${this.partialRotaryFactor}) = ${this.rotaryDim} must be a positive even number`);
    }
    if (!(SUPPORTED_ACTIVATIONS as readonly string[]).includes(this.hiddenAct)) {
      throw new Error(`${source}: unknown hidden_act ${JSON.stringify(this.hiddenAct)}; expected one of ` +
        SUPPORTED_ACTIVATIONS.join(', '));
    }
    if (!(this.normEps > 0)) throw new Error(`${source}: norm_eps must be > 0, got ${this.normEps}`);
    if (!(this.ropeTheta > 0)) throw new Error(`${source}: rope_theta must be > 0, got ${this.ropeTheta}`);
    if (this.ropeScaling) this.validateRopeScaling(this.ropeScaling, source);
    const problems = [null, 'regression', 'single_label_classification', 'multi_label_classification'];
    if (!problems.includes(this.problemType)) {
      throw new Error(`${source}: problem_type ${JSON.stringify(this.problemType)} is not one of ${problems.join(', ')}`);
    }
  }

  private validateRopeScaling(scaling: RopeScaling, source: string): void {
    const type = scaling.ropeType;
    if (!(ROPE_TYPES as readonly string[]).includes(type)) {
      throw new Error(`${source}: rope scaling of type ${JSON.stringify(type)} is not supported; expected one of default, ${ROPE_TYPES.join(', ')}`);
    }
    const name = (key: keyof RopeScaling) => `rope_parameters.${ROPE_FIELDS.find(([k]) => k === key)![1]}`;
    for (const key of ROPE_REQUIRED[type]) {
      if (scaling[key] === undefined || scaling[key] === null) throw new Error(`${source}: ${type} rope scaling needs ${name(key)}`);
    }
    for (const key of ['factor', 'originalMaxPositionEmbeddings', 'attentionFactor', 'betaFast', 'betaSlow', 'lowFreqFactor', 'highFreqFactor'] as const) {
      const v = scaling[key];
      if (v !== undefined && !(typeof v === 'number' && v > 0)) throw new Error(`${source}: ${name(key)} must be a number > 0, got ${JSON.stringify(v)}`);
    }
    if (type === 'dynamic' && this.rotaryDim <= 2) {
      // Its base is stretched by a power dim / (dim − 2).
      throw new Error(`${source}: dynamic rope scaling needs more than 2 rotary channels, got ${this.rotaryDim}`);
    }
    if (type === 'llama3' && !(scaling.highFreqFactor! > scaling.lowFreqFactor!)) {
      throw new Error(`${source}: rope_parameters.high_freq_factor (${scaling.highFreqFactor}) must be larger than low_freq_factor (${scaling.lowFreqFactor})`);
    }
    for (const key of ['shortFactor', 'longFactor'] as const) {
      const v = scaling[key];
      if (v === undefined) continue;
      if (!Array.isArray(v) || v.length !== this.rotaryDim / 2 || !v.every((x) => typeof x === 'number' && x > 0)) {
        throw new Error(`${source}: ${name(key)} must be ${this.rotaryDim / 2} numbers > 0 (one per rotary frequency), got ${JSON.stringify(v)}`);
      }
    }
  }

  /**
   * The longest sequence the model takes: max_position_embeddings, except with dynamic NTK scaling, whose purpose is
   * to run beyond it (its frequencies stretch with the sequence), where transformers sets no limit.
   */
  get maxSequenceLength(): number {
    return this.ropeScaling?.ropeType === 'dynamic' ? Infinity : this.maxPositionEmbeddings;
  }

  /** Reads a config.json as transformers 4 (rope_theta at the top) or 5 (rope_parameters) writes it. */
  static fromJSON(json: Record<string, unknown>, source = 'config.json'): NemotronConfig {
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new Error(`${source}: expected a JSON object`);
    }
    if (json.model_type !== undefined && json.model_type !== 'nemotron') {
      throw new Error(`${source}: model_type is ${JSON.stringify(json.model_type)}, expected "nemotron"`);
    }
    const missing = REQUIRED_JSON_FIELDS.filter((k) => json[k] === undefined);
    if (missing.length) throw new Error(`${source}: missing required field(s) ${missing.join(', ')}`);
    const fields: Partial<NemotronConfigFields> = {};
    for (const [camel, snake] of Object.entries(SNAKE)) {
      if (json[snake] !== undefined) (fields as Record<string, unknown>)[camel] = json[snake];
    }
    const rope = json.rope_parameters as Record<string, unknown> | undefined;
    const legacyScaling = json.rope_scaling as Record<string, unknown> | undefined | null;
    fields.ropeTheta = Number(rope?.rope_theta ?? json.rope_theta ?? DEFAULTS.ropeTheta);
    if (rope?.partial_rotary_factor !== undefined) fields.partialRotaryFactor = Number(rope.partial_rotary_factor);
    const scaling = rope && rope.rope_type && rope.rope_type !== 'default' ? rope : legacyScaling;
    if (scaling) {
      const type = (scaling.rope_type ?? scaling.type) as string;
      if (type !== 'default') {
        const read: Record<string, unknown> = { ropeType: type };
        for (const [camel, snake] of ROPE_FIELDS) if (scaling[snake] !== undefined && scaling[snake] !== null) read[camel] = scaling[snake];
        // transformers' standardize_rope_params: the pretraining length from the top level, else max_position_embeddings.
        if (['yarn', 'llama3', 'longrope'].includes(type) && read.originalMaxPositionEmbeddings === undefined) {
          read.originalMaxPositionEmbeddings = json.original_max_position_embeddings ?? json.max_position_embeddings;
        }
        fields.ropeScaling = read as unknown as RopeScaling;
      }
    }
    if (json.id2label) {
      fields.id2label = Object.fromEntries(Object.entries(json.id2label as Record<string, string>)
        .map(([k, v]) => [Number(k), v]));
    }
    if (json.label2id) fields.label2id = json.label2id as Record<string, number>;
    if (json.num_labels !== undefined) fields.numLabels = Number(json.num_labels);
    fields.torchDtype = (json.dtype ?? json.torch_dtype ?? null) as string | null;
    return new NemotronConfig(fields, source);
  }

  /** A published checkpoint's shape by name (see presets.ts): minitron-4b, minitron-8b, nemotron-3-8b, nemotron-4-15b. */
  static preset(name: string, overrides: Partial<NemotronConfigFields> = {}): NemotronConfig {
    return preset(name, overrides);
  }

  static fromPretrained(dir: string): NemotronConfig {
    const file = path.join(dir, 'config.json');
    if (!fs.existsSync(file)) throw new Error(`No config.json in ${dir}`);
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new Error(`${file} is not valid JSON: ${(e as Error).message}`);
    }
    return NemotronConfig.fromJSON(json, file);
  }

  /** A copy with some fields replaced (validated again). */
  with(fields: Partial<NemotronConfigFields>): NemotronConfig {
    const own: Partial<NemotronConfigFields> = { ...this };
    if (fields.numLabels !== undefined && !fields.id2label) {
      delete own.id2label;
      delete own.label2id;
    }
    return new NemotronConfig({ ...own, ...fields });
  }

  /**
   * config.json in the transformers 5 layout (rope_parameters), with rope_theta and
   * partial_rotary_factor also at the top level so transformers 4 reads it too.
   */
  toJSON(): Record<string, unknown> {
    const out: Record<string, unknown> = { model_type: 'nemotron' };
    for (const [camel, snake] of Object.entries(SNAKE)) {
      const v = (this as Record<string, unknown>)[camel];
      if (v !== null && v !== undefined) out[snake] = v;
    }
    out.rope_theta = this.ropeTheta;
    const scaling: Record<string, unknown> = {};
    for (const [camel, snake] of ROPE_FIELDS) if (this.ropeScaling?.[camel] !== undefined) scaling[snake] = this.ropeScaling[camel];
    out.rope_parameters = {
      rope_type: this.ropeScaling?.ropeType ?? 'default',
      rope_theta: this.ropeTheta,
      partial_rotary_factor: this.partialRotaryFactor,
      ...scaling,
    };
    if (this.ropeScaling) out.rope_scaling = { rope_type: this.ropeScaling.ropeType, type: this.ropeScaling.ropeType, ...scaling };
    out.id2label = Object.fromEntries(Object.entries(this.id2label).map(([k, v]) => [String(k), v]));
    out.label2id = this.label2id;
    out.dtype = 'float32';
    out.transformers_version = '4.48.0';
    return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
  }

  save(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(this.toJSON(), null, 2) + '\n');
  }
}
