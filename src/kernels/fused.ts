import * as tf from '@tensorflow/tfjs';

/**
 * Fused inference kernels: one kernel where the plain tfjs ops take many. Backends register what they have
 * (src/kernels/webgpu-kernels.ts, src/kernels/tensorflow-kernels.ts); layers ask `fusedKernelApplies` and fall back
 * to the plain ops, which are the reference every fused kernel is tested against.
 */
export const LAYERNORM1P_KERNEL = 'NemotronLayerNorm1P';
/** LayerNorm1P's backward: [dx, dw, db] from dy, x [rows, cols] and the weight (attrs: eps). Training on WebGPU. */
export const LAYERNORM1P_GRAD_KERNEL = 'NemotronLayerNorm1PGrad';
/** Rotary embedding of x [b, h, s, d] by cos/sin [b, 1, s, d] (attrs: rotaryDim; on WebGPU also inverse, its gradient). */
export const ROTARY_KERNEL = 'NemotronRotary';
/** x [rows, in] · Wᵀ (+ b) with W in HF layout [out, in]. */
export const LINEAR_KERNEL = 'NemotronLinear';
/** a · bᵀ over the last two axes, batched over the others (attention scores Q·Kᵀ). */
export const TRANSPOSED_PRODUCT_KERNEL = 'NemotronTransposedProduct';
/**
 * a [batch, m, k] · b [batch or 1, n, k]ᵀ (+ bias) as one tiled product reading both operands along K (WebGPU): the
 * many-row path of LINEAR_KERNEL and TRANSPOSED_PRODUCT_KERNEL use it where registered and on; off, they fall back.
 * With attrs { transposeA: true }: a [batch, depth, m]ᵀ · b [batch or 1, depth, n] (a weight's gradient).
 */
export const TILED_PRODUCT_KERNEL = 'NemotronTiledProduct';
/** relu(x)², element-wise (Relu2); given dy as well, its gradient dy·2·relu(x) (WebGPU). */
export const RELU2_KERNEL = 'NemotronRelu2';
/** NemotronMLP's down(act(up(x))) on x [rows, hidden]. */
export const MLP_KERNEL = 'NemotronMLP';
/** NemotronAttention between the projections and o_proj, cache append included (see tensorflow-kernels.ts). */
export const ATTENTION_KERNEL = 'NemotronAttention';
/** The attention kernel's attrs: its shapes and the softmax scale. */
export interface AttentionShape {
  batch: number;
  seq: number;
  numHeads: number;
  kvHeads: number;
  headDim: number;
  rotaryDim: number;
  scale: number;
}
/** One AdamW update of a parameter: [param, expAvg, expAvgSq] after the step (see src/training/optimizer.ts). */
export const ADAMW_KERNEL = 'NemotronAdamW';
/** The AdamW kernel's attrs: torch.optim.AdamW's hyperparameters, the step t (from 1) and the decay factor lr·wd. */
export interface AdamWAttrs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** lr · weight decay for a parameter that decays, else 0. */
  decay: number;
  step: number;
}
/**
 * AdamW for one parameter whose moments stay on the backend between steps, updated in place: inputs param and grad
 * (and, on a slot's first step, expAvg and expAvgSq to start from; zeros without), attrs AdamWAttrs and `slot`;
 * output the parameter after the step.
 */
export const ADAMW_RESIDENT_KERNEL = 'NemotronAdamWResident';
/** Moments a backend keeps for ADAMW_RESIDENT_KERNEL. read() gives them as tensors, which the caller disposes. */
export interface ResidentMoments {
  read(): [tf.Tensor, tf.Tensor];
  dispose(): void;
}
/** Where ADAMW_RESIDENT_KERNEL keeps one parameter's moments: empty until the kernel's first step fills it. */
export interface MomentSlot {
  moments?: ResidentMoments;
}
/** A whole decoding step of NemotronModel, one new token per row with a KV cache (see tensorflow-graph.ts). */
export const DECODE_STEP_KERNEL = 'NemotronDecodeStep';
/** A whole decoding step of NemotronHForCausalLM (Mamba-2 state, attention KV) to the logits (see nemotron-h-graph.ts). */
export const NEMOTRON_H_STEP_KERNEL = 'NemotronHDecodeStep';
/** A Mamba-2 layer's decoding step between in_proj and out_proj: [y, conv window, SSM state] (see webgpu-nemotron-h.ts). */
export const NEMOTRON_H_MAMBA_STEP_KERNEL = 'NemotronHMambaStep';
/** RMSNorm: x·rsqrt(mean(x²) + eps)·w over the last axis (attrs: eps). */
export const RMS_NORM_KERNEL = 'NemotronRMSNorm';

let enabled = true;
const disabled = new Set<string>();

/**
 * Turns the fused kernels on (the default) or off — for comparing them with the plain ops they replace. With
 * `kernelNames`, only those (e.g. [DECODE_STEP_KERNEL] to keep the fused kernels but not the compiled decoding step).
 */
export function useFusedKernels(on: boolean, kernelNames?: readonly string[]): void {
  if (!kernelNames) {
    enabled = on;
    disabled.clear();
    return;
  }
  for (const name of kernelNames) {
    if (on) disabled.delete(name);
    else disabled.add(name);
  }
}

const limits = new Map<string, (attrs: Record<string, unknown>) => boolean>();

/** Restricts a backend's kernel to the calls `accepts` (e.g. WebGPU's attention kernel to one new token per row). */
export function limitFusedKernel(kernelName: string, backendName: string, accepts: (attrs: Record<string, unknown>) => boolean): void {
  limits.set(`${kernelName}/${backendName}`, accepts);
}

/**
 * True where `kernelName` is registered for the active backend, is on, and accepts `attrs` (see limitFusedKernel),
 * whether or not a gradient tape records: for a kernel called inside a custom gradient, which supplies its own backward.
 */
export function fusedKernelAvailable(kernelName: string, attrs: Record<string, unknown> = {}): boolean {
  const backend = tf.getBackend();
  if (!enabled || disabled.has(kernelName) || !tf.getKernel(kernelName, backend)) return false;
  const accepts = limits.get(`${kernelName}/${backend}`);
  return !accepts || accepts(attrs);
}

/**
 * True where `kernelName` is available (fusedKernelAvailable) and no gradient tape records (the fused kernels have
 * no gradients; training keeps the plain ops).
 */
export function fusedKernelApplies(kernelName: string, attrs: Record<string, unknown> = {}): boolean {
  return fusedKernelAvailable(kernelName, attrs) && !recordingGradients();
}

/** Whether a gradient tape records (inside tf.grad, tf.variableGrads, …): where custom gradients take over. */
export function recordingGradients(): boolean {
  return (tf.engine() as unknown as { state: { gradientDepth: number } }).state.gradientDepth > 0;
}
