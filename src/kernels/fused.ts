import * as tf from '@tensorflow/tfjs';

/**
 * Fused inference kernels: one kernel where the plain tfjs ops take many. Backends register what they have
 * (src/kernels/webgpu-kernels.ts, src/kernels/tensorflow-kernels.ts); layers ask `fusedKernelApplies` and fall back
 * to the plain ops, which are the reference every fused kernel is tested against.
 */
export const LAYERNORM1P_KERNEL = 'NemotronLayerNorm1P';
export const ROTARY_KERNEL = 'NemotronRotary';
/** x [rows, in] · Wᵀ (+ b) with W in HF layout [out, in]. */
export const LINEAR_KERNEL = 'NemotronLinear';
/** NemotronMLP's down(act(up(x))) on x [rows, hidden]. */
export const MLP_KERNEL = 'NemotronMLP';
/** NemotronAttention between the projections and o_proj, cache append included (see tensorflow-kernels.ts). */
export const ATTENTION_KERNEL = 'NemotronAttention';
/** A whole decoding step of NemotronModel, one new token per row with a KV cache (see tensorflow-graph.ts). */
export const DECODE_STEP_KERNEL = 'NemotronDecodeStep';

let enabled = true;

/** Turns the fused kernels off (true: on, the default) — for comparing them with the plain ops they replace. */
export function useFusedKernels(on: boolean): void {
  enabled = on;
}

const limits = new Map<string, (attrs: Record<string, unknown>) => boolean>();

/** Restricts a backend's kernel to the calls `accepts` (e.g. WebGPU's attention kernel to one new token per row). */
export function limitFusedKernel(kernelName: string, backendName: string, accepts: (attrs: Record<string, unknown>) => boolean): void {
  limits.set(`${kernelName}/${backendName}`, accepts);
}

/**
 * True where `kernelName` is registered for the active backend, accepts `attrs` (see limitFusedKernel), and no gradient
 * tape records (the fused kernels have no gradients; training keeps the plain ops).
 */
export function fusedKernelApplies(kernelName: string, attrs: Record<string, unknown> = {}): boolean {
  const backend = tf.getBackend();
  if (!enabled || !tf.getKernel(kernelName, backend)) return false;
  const accepts = limits.get(`${kernelName}/${backend}`);
  if (accepts && !accepts(attrs)) return false;
  const state = (tf.engine() as unknown as { state: { gradientDepth: number } }).state;
  return state.gradientDepth === 0;
}
