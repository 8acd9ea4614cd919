/** nemotron-tfjs: the public entry point. */
import * as tf from '@tensorflow/tfjs';

export { tf };
export * from './backends';
export * from './tensors';
export * from './losses';
export {
  ADAMW_KERNEL, ATTENTION_KERNEL, DECODE_STEP_KERNEL, NEMOTRON_H_STEP_KERNEL, LAYERNORM1P_GRAD_KERNEL, LAYERNORM1P_KERNEL, LINEAR_KERNEL, MLP_KERNEL, RELU2_KERNEL, ROTARY_KERNEL, TILED_PRODUCT_KERNEL,
  TRANSPOSED_PRODUCT_KERNEL, useFusedKernels,
} from './kernels/fused';
export * from './io/safetensors';
export * from './io/checkpoint';
export * from './io/gguf';
export { type SplitLimit, mergeGGUF, parseSplitSize, splitGGUF } from './io/gguf-split';
export { type GGMLWriteType, type GGUFQuantMix, type TensorTypeOverrides, readTensorTypeFile } from './io/gguf-quantize';
export { type ImatrixEntry, type ImatrixSource, type ImportanceMatrix, filterImatrix, importanceOf, readImatrix, writeImatrix } from './io/imatrix';
export { NemotronHGGUF, type NemotronHGGUFConfig, hfNameOfNemotronHGGUF, writeNemotronHGGUF } from './io/gguf-nemotron-h';
export { parseConfigJson } from '../models/nemotron_h/config';
export { Relu2, relu2 } from '../layers/relu2';
export { NemotronLayerNorm1P } from '../layers/layernorm1p';
export { PartialRotaryEmbedding, applyRotary } from '../layers/rotary';
export { ROPE_TYPES, RopeFrequencies, defaultFrequencies, ropeFrequencies } from '../layers/rope-frequencies';
export { NemotronAttention, KVCache } from '../layers/attention';
export { NemotronMLP } from '../layers/mlp';
export { NemotronDecoderLayer } from '../layers/decoder-layer';
export { Linear } from '../layers/linear';
export { LoraAdapter } from '../layers/lora';
export { VocabMatrix, maxWeightBlockBytes, setLossChunkBytes, setMaxWeightBlockBytes } from '../layers/vocab-matrix';
export * from '../models/nemotron/config';
export * from '../models/nemotron/pretrained';
export * from '../models/nemotron/model';
export * from '../models/nemotron/heads';
export * from './generation/index';
export * from './inference/classification';
export * from './inference/logprobs';
export { type ComputeImatrixOptions, computeImatrix } from './inference/imatrix';
export * from './serving/openai';
export * from './serving/batcher';
export * from './training/index';
export * from './tokenizer';
export * from '../models/nemotron/presets';
export * from './response-parsing/index';
export * from './serving/prefix-cache';
export { NemotronHConfig, type NemotronHConfigFields, type NemotronHLayerType } from '../models/nemotron_h/config';
export { NemotronHForCausalLM, type NemotronHGenerateOptions, type NemotronHState, type NemotronHSteps, cloneState, disposeState, disposeSteps, joinStates, selectStateRows, stateLength } from '../models/nemotron_h/model';
export { NEMOTRON_H_LORA_MODULES, NemotronHLoraModel, type NemotronHLoraConfig } from '../models/nemotron_h/lora';
export { NemotronHBatcher, type NemotronHBatcherOptions } from './serving/nemotron-h-batcher';
