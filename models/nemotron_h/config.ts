/**
 * NemotronHConfig: transformers' NemotronHConfig (model_type "nemotron_h": Nemotron-H, Nemotron Nano 2) as camelCase
 * fields. Reads config.json in transformers 5's layout (`layers_block_type`) and the checkpoints' own
 * (`hybrid_override_pattern` of M, *, -, E and the `mamba_*` names).
 */
import * as fs from 'fs';
import * as path from 'path';

/** A layer's mixer: a Mamba-2 block, attention (no position embedding), a relu² MLP, or a mixture of experts. */
export type NemotronHLayerType = 'mamba' | 'attention' | 'mlp' | 'moe';

const PATTERN: Record<string, NemotronHLayerType> = { M: 'mamba', '*': 'attention', '-': 'mlp', E: 'moe' };
const TYPE_NAMES: Record<string, NemotronHLayerType> = {
  linear_attention: 'mamba', mamba: 'mamba', full_attention: 'attention', attention: 'attention', mlp: 'mlp', moe: 'moe',
};

export interface NemotronHConfigFields {
  vocabSize: number;
  hiddenSize: number;
  layerTypes: NemotronHLayerType[];
  mambaNumHeads: number;
  mambaHeadDim: number;
  nGroups: number;
  ssmStateSize: number;
  convKernel: number;
  chunkSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  intermediateSize: number;
  layerNormEpsilon: number;
  useConvBias: boolean;
  /** Bias of the Mamba in/out projections. */
  useBias: boolean;
  mlpBias: boolean;
  /** The least Δt of the initialization (dt_bias's draw); kept for config.json. */
  timeStepMin: number;
  /** Δt's bounds in a prompt pass (transformers' chunked scan clamps there; the one-token step does not): (0, ∞) by default. */
  timeStepLimit: [number, number];
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  padTokenId: number | null;
  /** Mixture-of-experts layers (Nemotron 3 Nano's "E"): relu² experts, a sigmoid router choosing among groups, a shared expert. */
  nRoutedExperts: number;
  numExpertsPerTok: number;
  moeIntermediateSize: number;
  moeSharedExpertIntermediateSize: number;
  /** Router groups, and how many of them a token's experts may come from. */
  nGroup: number;
  topkGroup: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
  /** Experts work in a smaller space (fc1/fc2_latent_proj) when set. */
  moeLatentSize: number | null;
}

type Json = Record<string, unknown>;

/**
 * config.json's text as an object. Python's json writes ±Infinity and NaN bare (Mamba-2 configs' time_step_limit),
 * which JSON does not allow: read as the numbers they are (1e999 parses as Infinity), NaN as null.
 */
export function parseConfigJson(text: string, source: string): Json {
  try {
    return JSON.parse(text) as Json;
  } catch {
    const patched = text.replace(/([[,:]\s*)(-?)Infinity(?=\s*[,\]}])/g, '$1$21e999').replace(/([[,:]\s*)NaN(?=\s*[,\]}])/g, '$1null');
    try {
      return JSON.parse(patched) as Json;
    } catch (e) {
      throw new Error(`${source} is not valid JSON: ${(e as Error).message}`);
    }
  }
}

/** time_step_limit as transformers writes it: numbers, or {"__float__": "Infinity"} for what JSON cannot hold. */
function timeStepLimit(value: unknown): [number, number] | undefined {
  if (value === undefined) return undefined;
  const number = (v: unknown): number => {
    if (typeof v === 'number') return v;
    const special = (v as { __float__?: string } | null)?.__float__;
    if (special !== undefined && !Number.isNaN(Number(special))) return Number(special);
    throw new Error(`NemotronHConfig: time_step_limit holds ${JSON.stringify(v)}; expected a number`);
  };
  if (!Array.isArray(value) || value.length !== 2) throw new Error(`NemotronHConfig: time_step_limit must be [low, high], got ${JSON.stringify(value)}`);
  const [low, high] = value.map(number);
  if (!(low <= high)) throw new Error(`NemotronHConfig: time_step_limit [${low}, ${high}] has its low bound above its high one`);
  return [low, high];
}

/** transformers' NemotronHConfig defaults (a Nemotron-H 8B's shape). */
const DEFAULTS: NemotronHConfigFields = {
  vocabSize: 131072,
  hiddenSize: 4096,
  layerTypes: ['mamba', 'moe', 'attention', 'mlp'],
  mambaNumHeads: 128,
  mambaHeadDim: 64,
  nGroups: 8,
  ssmStateSize: 128,
  convKernel: 4,
  chunkSize: 128,
  numAttentionHeads: 32,
  numKeyValueHeads: 8,
  headDim: 128,
  intermediateSize: 21504,
  layerNormEpsilon: 1e-5,
  useConvBias: true,
  useBias: false,
  mlpBias: false,
  timeStepMin: 0.001,
  timeStepLimit: [0, Infinity],
  maxPositionEmbeddings: 4096,
  tieWordEmbeddings: false,
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: 0,
  nRoutedExperts: 8,
  numExpertsPerTok: 2,
  moeIntermediateSize: 7688,
  moeSharedExpertIntermediateSize: 7688,
  nGroup: 1,
  topkGroup: 1,
  normTopkProb: true,
  routedScalingFactor: 1,
  moeLatentSize: null,
};

// The fields are the interface's (declaration merging): one list of names, DEFAULTS fills them.
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface NemotronHConfig extends NemotronHConfigFields {}

export class NemotronHConfig {
  constructor(fields: Partial<NemotronHConfigFields> = {}) {
    Object.assign(this, DEFAULTS, { layerTypes: [...DEFAULTS.layerTypes] }, fields);
    this.validate();
  }

  /** The longest sequence generation plans for (max_position_embeddings; attention here has no position embedding). */
  get maxSequenceLength(): number {
    return this.maxPositionEmbeddings;
  }

  get numHiddenLayers(): number {
    return this.layerTypes.length;
  }

  /** Mamba heads × head_dim: the width of a Mamba block's inner stream. */
  get mambaIntermediateSize(): number {
    return this.mambaNumHeads * this.mambaHeadDim;
  }

  /** Channels of the causal convolution: the inner stream and B and C of every group. */
  get convDim(): number {
    return this.mambaIntermediateSize + 2 * this.nGroups * this.ssmStateSize;
  }

  private validate(): void {
    const positive = ['vocabSize', 'hiddenSize', 'mambaNumHeads', 'mambaHeadDim', 'nGroups', 'ssmStateSize', 'convKernel', 'chunkSize',
      'numAttentionHeads', 'numKeyValueHeads', 'headDim', 'intermediateSize', 'maxPositionEmbeddings'] as const;
    for (const key of positive) {
      if (!Number.isInteger(this[key]) || this[key] <= 0) throw new Error(`NemotronHConfig: ${key} must be a positive integer, got ${this[key]}`);
    }
    if (this.mambaNumHeads % this.nGroups !== 0) throw new Error(`NemotronHConfig: mamba_num_heads ${this.mambaNumHeads} must be a multiple of n_groups ${this.nGroups}`);
    if (this.numAttentionHeads % this.numKeyValueHeads !== 0) {
      throw new Error(`NemotronHConfig: num_attention_heads ${this.numAttentionHeads} must be a multiple of num_key_value_heads ${this.numKeyValueHeads}`);
    }
    if (this.layerTypes.length === 0) throw new Error('NemotronHConfig: no layers (layers_block_type / hybrid_override_pattern is empty)');
    if (this.layerTypes.includes('moe')) {
      if (this.nRoutedExperts % this.nGroup !== 0) throw new Error(`NemotronHConfig: n_routed_experts ${this.nRoutedExperts} must be a multiple of n_group ${this.nGroup}`);
      if (this.topkGroup > this.nGroup) throw new Error(`NemotronHConfig: topk_group ${this.topkGroup} is more than n_group ${this.nGroup}`);
      if (this.numExpertsPerTok > (this.nRoutedExperts / this.nGroup) * this.topkGroup) {
        throw new Error(`NemotronHConfig: num_experts_per_tok ${this.numExpertsPerTok} is more than the experts of ${this.topkGroup} group(s)`);
      }
    }
  }

  /** From config.json's object (transformers 5's names or the checkpoints' own). */
  static fromJSON(json: Json): NemotronHConfig {
    if (json.model_type !== undefined && json.model_type !== 'nemotron_h') {
      throw new Error(`NemotronHConfig: config.json has model_type ${JSON.stringify(json.model_type)}, expected "nemotron_h"`);
    }
    const pick = <T>(...keys: string[]): T | undefined => {
      for (const key of keys) if (json[key] !== undefined && json[key] !== null) return json[key] as T;
      return undefined;
    };
    let layerTypes: NemotronHLayerType[] | undefined;
    const listed = pick<string[]>('layers_block_type', 'layer_types');
    const pattern = pick<string>('hybrid_override_pattern');
    if (listed) {
      layerTypes = listed.map((t, i) => {
        const type = TYPE_NAMES[t];
        if (!type) throw new Error(`NemotronHConfig: layers_block_type[${i}] is ${JSON.stringify(t)}; expected one of ${Object.keys(TYPE_NAMES).join(', ')}`);
        return type;
      });
    } else if (pattern !== undefined) {
      layerTypes = [...pattern].map((c, i) => {
        const type = PATTERN[c];
        if (!type) throw new Error(`NemotronHConfig: hybrid_override_pattern has ${JSON.stringify(c)} at ${i}; expected M (Mamba), * (attention), - (MLP) or E (experts)`);
        return type;
      });
    }
    const fields: Partial<NemotronHConfigFields> = {
      vocabSize: pick('vocab_size'), hiddenSize: pick('hidden_size'), layerTypes,
      mambaNumHeads: pick('mamba_num_heads'), mambaHeadDim: pick('mamba_head_dim'), nGroups: pick('n_groups', 'mamba_n_groups'),
      ssmStateSize: pick('ssm_state_size', 'mamba_d_state'), convKernel: pick('conv_kernel', 'mamba_d_conv'),
      chunkSize: pick('chunk_size', 'mamba_chunk_size'), numAttentionHeads: pick('num_attention_heads'),
      numKeyValueHeads: pick('num_key_value_heads', 'num_attention_heads'), headDim: pick('head_dim', 'attention_head_dim'),
      intermediateSize: pick('intermediate_size'), layerNormEpsilon: pick('layer_norm_epsilon'), useConvBias: pick('use_conv_bias', 'mamba_conv_bias'),
      useBias: pick('use_bias'), mlpBias: pick('mlp_bias'), timeStepMin: pick('time_step_min', 'mamba_dt_min'),
      timeStepLimit: timeStepLimit(pick('time_step_limit', 'mamba_dt_limit')),
      maxPositionEmbeddings: pick('max_position_embeddings'), tieWordEmbeddings: pick('tie_word_embeddings'),
      bosTokenId: pick('bos_token_id'), eosTokenId: pick('eos_token_id'), padTokenId: pick('pad_token_id'),
      nRoutedExperts: pick('n_routed_experts', 'num_local_experts'), numExpertsPerTok: pick('num_experts_per_tok'), moeIntermediateSize: pick('moe_intermediate_size'),
      moeSharedExpertIntermediateSize: pick('moe_shared_expert_intermediate_size'), nGroup: pick('n_group'), topkGroup: pick('topk_group'),
      normTopkProb: pick('norm_topk_prob'), routedScalingFactor: pick('routed_scaling_factor'), moeLatentSize: pick('moe_latent_size'),
    };
    const act = pick<string>('mlp_hidden_act');
    if (act !== undefined && act !== 'relu2') throw new Error(`NemotronHConfig: mlp_hidden_act ${JSON.stringify(act)} is not supported (Nemotron-H uses relu2)`);
    const mambaAct = pick<string>('mamba_hidden_act');
    if (mambaAct !== undefined && mambaAct !== 'silu') throw new Error(`NemotronHConfig: mamba_hidden_act ${JSON.stringify(mambaAct)} is not supported (Nemotron-H uses silu)`);
    if (fields.headDim === undefined && fields.hiddenSize !== undefined && fields.numAttentionHeads !== undefined) {
      fields.headDim = fields.hiddenSize / fields.numAttentionHeads;
    }
    return new NemotronHConfig(Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as Partial<NemotronHConfigFields>);
  }

  static fromPretrained(dir: string): NemotronHConfig {
    const file = path.join(dir, 'config.json');
    if (!fs.existsSync(file)) throw new Error(`${dir}: config.json is missing`);
    return NemotronHConfig.fromJSON(parseConfigJson(fs.readFileSync(file, 'utf8'), file));
  }
}
