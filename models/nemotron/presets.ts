import { NemotronConfig, NemotronConfigFields } from './config';

/**
 * Shapes of the published checkpoints that use NemotronForCausalLM (their config.json), all with
 * relu² MLPs, LayerNorm1P, half rotary (theta 1e4), a 256k vocabulary and 4k context.
 */
const PRESETS: Record<string, Partial<NemotronConfigFields>> = {
  // nvidia/Minitron-4B-Base (also the shape of Nemotron-Mini-4B-Instruct)
  'minitron-4b': { hiddenSize: 3072, intermediateSize: 9216, numHiddenLayers: 32, numAttentionHeads: 24, numKeyValueHeads: 8, headDim: 128 },
  // nvidia/Minitron-8B-Base
  'minitron-8b': { hiddenSize: 4096, intermediateSize: 16384, numHiddenLayers: 32, numAttentionHeads: 48, numKeyValueHeads: 8, headDim: 128 },
  // Nemotron-3-8B-Base-4k (multi-head attention)
  'nemotron-3-8b': { hiddenSize: 4096, intermediateSize: 16384, numHiddenLayers: 32, numAttentionHeads: 32, numKeyValueHeads: 32, headDim: 128 },
  // Nemotron-4-15B
  'nemotron-4-15b': { hiddenSize: 6144, intermediateSize: 24576, numHiddenLayers: 32, numAttentionHeads: 48, numKeyValueHeads: 8, headDim: 128 },
};

const COMMON: Partial<NemotronConfigFields> = {
  vocabSize: 256000, maxPositionEmbeddings: 4096, hiddenAct: 'relu2', normEps: 1e-5, ropeTheta: 10000,
  partialRotaryFactor: 0.5, tieWordEmbeddings: false, bosTokenId: 2, eosTokenId: 3, architectures: ['NemotronForCausalLM'],
};

export const PRESET_NAMES = Object.keys(PRESETS);

export function preset(name: string, overrides: Partial<NemotronConfigFields> = {}): NemotronConfig {
  const shape = PRESETS[name];
  if (!shape) throw new Error(`Unknown preset ${JSON.stringify(name)}; expected one of ${PRESET_NAMES.join(', ')}`);
  return new NemotronConfig({ ...COMMON, ...shape, ...overrides }, `preset ${name}`);
}

/** Parameters of the base model (embeddings, decoder layers, final norm). */
export function baseParameterCount(c: NemotronConfig): number {
  const h = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const attention = h * q + 2 * h * kv + q * h + (c.attentionBias ? q + 2 * kv + h : 0);
  const mlp = 2 * h * c.intermediateSize + (c.mlpBias ? c.intermediateSize + h : 0);
  const norms = 2 * 2 * h;
  return c.vocabSize * h + c.numHiddenLayers * (attention + mlp + norms) + 2 * h;
}

/** Parameters of a whole model of the given transformers class. */
export function parameterCount(c: NemotronConfig, architecture = 'NemotronForCausalLM'): number {
  const h = c.hiddenSize;
  const head: Record<string, number> = {
    NemotronModel: 0,
    NemotronForCausalLM: c.tieWordEmbeddings ? 0 : c.vocabSize * h,
    NemotronForSequenceClassification: c.numLabels * h,
    NemotronForTokenClassification: c.numLabels * h + c.numLabels,
    NemotronForQuestionAnswering: 2 * h + 2,
  };
  if (!(architecture in head)) throw new Error(`Unknown architecture ${architecture}`);
  return baseParameterCount(c) + head[architecture];
}

export interface MemoryEstimate {
  /** float32 weights: what every tfjs backend holds (tfjs has no bfloat16). */
  weightsBytes: number;
  kvCacheBytesPerToken: number;
  kvCacheBytes: number;
  /** Peak activations of one forward at this batch and length (one layer live at a time, plus the last logits). */
  activationBytes: number;
  totalBytes: number;
}

/** Memory a forward or generation at this batch and sequence length needs, in float32. */
export function estimateMemory(c: NemotronConfig, o: { batch?: number; sequenceLength?: number; architecture?: string } = {}): MemoryEstimate {
  const batch = o.batch ?? 1;
  const seq = o.sequenceLength ?? c.maxPositionEmbeddings;
  const weightsBytes = parameterCount(c, o.architecture) * 4;
  const kvCacheBytesPerToken = 2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * 4;
  const tokens = batch * seq;
  // residual + normed input + q/k/v/context, the MLP's up projection, the attention scores, and last-position logits
  const perLayer = tokens * (3 * c.hiddenSize + 2 * c.numAttentionHeads * c.headDim + 2 * c.numKeyValueHeads * c.headDim + c.intermediateSize)
    + batch * c.numAttentionHeads * seq * seq;
  const activationBytes = (perLayer + batch * c.vocabSize) * 4;
  const kvCacheBytes = kvCacheBytesPerToken * tokens;
  return { weightsBytes, kvCacheBytesPerToken, kvCacheBytes, activationBytes, totalBytes: weightsBytes + kvCacheBytes + activationBytes };
}
