import * as tf from '@tensorflow/tfjs';
import { DECODE_STEP_KERNEL, limitFusedKernel } from './fused';
import type { DecodeStepSpec } from './tensorflow-graph';
import { FEW_ROWS, FewRowsOptions, PerElementProgram, WebGPUBackendLike, WorkgroupProgram, fewRowsProduct, layerNorm1P } from './webgpu-kernels';

/**
 * A whole decoding step (one new token per row after a KV cache) on WebGPU in 7 dispatches a layer, where the layers'
 * own kernels take ~17 and tfjs's ops ~60: at ~50 µs of JavaScript a dispatch (measured on the H100), the op count is
 * what a step costs. Per layer:
 *   1. LayerNorm1P + q, k and v projections in one pass (FewRowsLinearProgram with a norm prologue)
 *   2. keys: past keys and the new one, rotated (a new cache tensor)      3. values likewise
 *   4. attention of the new token over all keys: one workgroup a head, softmax online over tiles of keys
 *   5. o_proj + the residual          6. LayerNorm1P + up_proj + relu²          7. down_proj + the residual
 * then the final LayerNorm1P and, when asked, the output projection. Same inputs and outputs as the native
 * backend's compiled step (tensorflow-graph.ts decodeStepInputs): hidden, cos, sin, [mask], past keys/values, weights.
 */

/** The new token's keys (rotated) or values appended to the cache: [b, kvHeads, past + 1, d]. */
class AppendToCacheProgram extends PerElementProgram {
  readonly variableNames: string[];
  readonly uniforms = 'past : i32, width : i32, offset : i32, half : i32,';
  readonly shaderKey: string;

  constructor(private readonly shape: number[], private readonly rotate: boolean) {
    super(shape);
    this.variableNames = rotate ? ['cache', 'qkv', 'cos', 'sin'] : ['cache', 'qkv'];
    this.shaderKey = `nemotron_append_${shape[1]}_${shape[3]}_${rotate}`;
  }

  getUserCode(): string {
    const [, kvHeads, , d] = this.shape;
    const fresh = this.rotate
      ? `var partner = j;
          if (j < uniforms.half) {
            partner = j + uniforms.half;
          } else if (j < 2 * uniforms.half) {
            partner = j - uniforms.half;
          }
          result[index] = qkv[base + j] * cos[b * ${d} + j] + qkv[base + partner] * sin[b * ${d} + j];`
      : 'result[index] = qkv[base + j];';
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let length = uniforms.past + 1;
        let j = index % ${d};
        let t = (index / ${d}) % length;
        let g = (index / (${d} * length)) % ${kvHeads};
        let b = index / (${d} * length * ${kvHeads});
        if (t < uniforms.past) {
          result[index] = cache[((b * ${kvHeads} + g) * uniforms.past + t) * ${d} + j];
        } else {
          let base = b * uniforms.width + uniforms.offset + g * ${d};
          ${fresh}
        }
      }
    }
    `;
  }
}

/** Keys a workgroup scores at a time (workgroup memory); longer caches take several tiles. */
const KEY_TILE = 1024;

/**
 * context[b, h·d + j] of one new token: softmax(scale·q̃·Kᵀ + mask)·V for head h, q̃ the rotated query read from the
 * fused q/k/v output; one workgroup a (row, head), the softmax kept online over tiles of keys (running max and sum,
 * as flash-decoding does), GQA by indexing (K and V never repeated).
 */
class DecodeAttentionProgram extends WorkgroupProgram {
  readonly variableNames: string[];
  readonly uniforms = 'keyLen : i32, width : i32, half : i32, scale : f32,';
  readonly shaderKey: string;

  constructor(batch: number, private readonly heads: number, private readonly kvHeads: number, private readonly d: number,
    private readonly masked: boolean) {
    super([batch, heads * d], batch * heads, d <= 64 ? 64 : d <= 128 ? 128 : 256);
    this.variableNames = masked ? ['qkv', 'cos', 'sin', 'keys', 'values', 'mask'] : ['qkv', 'cos', 'sin', 'keys', 'values'];
    this.shaderKey = `nemotron_decode_attention_${heads}_${kvHeads}_${d}_${masked}`;
  }

  getUserCode(): string {
    const { heads, kvHeads, d, masked } = this;
    const threads = this.workgroupSize[0];
    const groups = heads / kvHeads;
    const reduce = (op: string) => `
      workgroupBarrier();
      for (var size = ${threads / 2}; size > 0; size = size >> 1) {
        if (tid < size) {
          red[tid] = ${op};
        }
        workgroupBarrier();
      }`;
    return `
    var<workgroup> qs : array<f32, ${d}>;
    var<workgroup> tile : array<f32, ${KEY_TILE}>;
    var<workgroup> red : array<f32, ${threads}>;

    fn main(index : i32) {
      let tid = i32(localId.x);
      let row = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
      let b = row / ${heads};
      let h = row % ${heads};
      let kvBase = (b * ${kvHeads} + h / ${groups}) * uniforms.keyLen;
      let keyLen = uniforms.keyLen;
      if (tid < ${d}) {
        var partner = tid;
        if (tid < uniforms.half) {
          partner = tid + uniforms.half;
        } else if (tid < 2 * uniforms.half) {
          partner = tid - uniforms.half;
        }
        let q = b * uniforms.width + h * ${d};
        qs[tid] = (qkv[q + tid] * cos[b * ${d} + tid] + qkv[q + partner] * sin[b * ${d} + tid]) * uniforms.scale;
      }
      workgroupBarrier();
      var runMax = -3.0e38;
      var runSum = 0.0;
      var acc = 0.0;
      for (var t0 = 0; t0 < keyLen; t0 += ${KEY_TILE}) {
        let n = min(${KEY_TILE}, keyLen - t0);
        var localMax = -3.0e38;
        for (var i = tid; i < n; i += ${threads}) {
          let key = (kvBase + t0 + i) * ${d};
          var dot = 0.0;
          for (var j = 0; j < ${d}; j++) {
            dot += qs[j] * keys[key + j];
          }
          ${masked ? 'dot += mask[b * keyLen + t0 + i];' : ''}
          tile[i] = dot;
          localMax = max(localMax, dot);
        }
        red[tid] = localMax;
        ${reduce('max(red[tid], red[tid + size])')}
        let newMax = max(runMax, red[0]);
        workgroupBarrier();
        var localSum = 0.0;
        for (var i = tid; i < n; i += ${threads}) {
          let e = exp(tile[i] - newMax);
          tile[i] = e;
          localSum += e;
        }
        red[tid] = localSum;
        ${reduce('red[tid] + red[tid + size]')}
        let correction = exp(runMax - newMax);
        runSum = runSum * correction + red[0];
        if (tid < ${d}) {
          var s = 0.0;
          for (var i = 0; i < n; i++) {
            s += tile[i] * values[(kvBase + t0 + i) * ${d} + tid];
          }
          acc = acc * correction + s;
        }
        runMax = newMax;
        workgroupBarrier();
      }
      if (tid < ${d}) {
        result[(b * ${heads} + h) * ${d} + tid] = acc / runSum;
      }
    }
    `;
  }
}

let normPrologue = true;

/**
 * Whether the step folds each LayerNorm1P into the product after it (the default: each workgroup recomputes the row's
 * statistics, one dispatch fewer) or runs it as its own dispatch first. For the device benchmark, which measures both.
 */
export function setDecodeNormPrologue(on: boolean): void {
  normPrologue = on;
}

/** LayerNorm1P(x) · Wᵀ for the stacked weights: folded into one product, or a norm dispatch and then the product. */
function normedProduct(gpu: WebGPUBackendLike, x: tf.TensorInfo, lnWeight: tf.TensorInfo, lnBias: tf.TensorInfo, weights: tf.TensorInfo[],
  options: FewRowsOptions, eps: number): tf.TensorInfo {
  if (normPrologue) return fewRowsProduct(gpu, [x, lnWeight, lnBias, ...weights], { ...options, norm: true }, eps);
  const normed = layerNorm1P(gpu, x, lnWeight, lnBias, eps);
  try {
    return fewRowsProduct(gpu, [normed, ...weights], options);
  } finally {
    gpu.disposeData(normed.dataId);
  }
}

function decodeStep({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.TensorInfo[] {
  const gpu = backend as WebGPUBackendLike;
  const spec = attrs as unknown as DecodeStepSpec;
  const named = inputs as Record<string, tf.TensorInfo>;
  const { batch: b, numHeads: heads, kvHeads, headDim: d, rotaryDim, eps } = spec;
  const [qWidth, kvWidth] = [heads * d, kvHeads * d];
  const width = qWidth + 2 * kvWidth;
  const { cos, sin, mask } = named;
  const half = rotaryDim / 2;
  const scale = 1 / Math.sqrt(d);
  const caches: tf.TensorInfo[] = [];
  const free = (...ts: tf.TensorInfo[]) => ts.forEach((t) => gpu.disposeData(t.dataId));
  // The hidden state between layers; the input itself belongs to the caller.
  let x = named.hidden;
  let last: tf.TensorInfo | null = null;
  try {
    for (let i = 0; i < spec.numLayers; i++) {
      const p = (name: string) => named[`layers.${i}.${name}`];
      const temporaries: tf.TensorInfo[] = [];
      const temp = (t: tf.TensorInfo) => (temporaries.push(t), t);
      try {
        const qkv = temp(normedProduct(gpu, x, p('input_layernorm.weight'), p('input_layernorm.bias'),
          [p('self_attn.q_proj.weight'), p('self_attn.k_proj.weight'), p('self_attn.v_proj.weight')], { widths: [qWidth, kvWidth, kvWidth] }, eps));
        const past = named[`past.keys.${i}`].shape[2];
        const shape = [b, kvHeads, past + 1, d];
        const keys = gpu.runWebGPUProgram(new AppendToCacheProgram(shape, true), [named[`past.keys.${i}`], qkv, cos, sin], 'float32', [
          { type: 'int32', data: [past] }, { type: 'int32', data: [width] }, { type: 'int32', data: [qWidth] }, { type: 'int32', data: [half] },
        ]);
        caches.push(keys);
        const values = gpu.runWebGPUProgram(new AppendToCacheProgram(shape, false), [named[`past.values.${i}`], qkv], 'float32', [
          { type: 'int32', data: [past] }, { type: 'int32', data: [width] }, { type: 'int32', data: [qWidth + kvWidth] }, { type: 'int32', data: [half] },
        ]);
        caches.push(values);
        const context = temp(gpu.runWebGPUProgram(new DecodeAttentionProgram(b, heads, kvHeads, d, mask !== undefined),
          mask ? [qkv, cos, sin, keys, values, mask] : [qkv, cos, sin, keys, values], 'float32', [
            { type: 'int32', data: [past + 1] }, { type: 'int32', data: [width] }, { type: 'int32', data: [half] }, { type: 'float32', data: [scale] },
          ]));
        const attended = temp(fewRowsProduct(gpu, [context, p('self_attn.o_proj.weight'), x], { widths: [spec.hiddenSize], residual: true }));
        const up = temp(normedProduct(gpu, attended, p('post_attention_layernorm.weight'), p('post_attention_layernorm.bias'), [p('mlp.up_proj.weight')],
          { widths: [spec.intermediateSize], epilogue: spec.activation }, eps));
        const next = fewRowsProduct(gpu, [up, p('mlp.down_proj.weight'), attended], { widths: [spec.hiddenSize], residual: true });
        if (x !== named.hidden) free(x);
        x = next;
      } finally {
        free(...temporaries);
      }
    }
    last = layerNorm1P(gpu, x, named['norm.weight'], named['norm.bias'], eps);
    const projected = spec.vocabSize > 0 ? [fewRowsProduct(gpu, [last, named['output.weight']], { widths: [spec.vocabSize] })] : [];
    return [last, ...projected, ...caches];
  } catch (e) {
    free(...caches, ...(last ? [last] : []));
    throw e;
  } finally {
    if (x !== named.hidden) free(x);
  }
}

/**
 * DECODE_STEP_KERNEL for WebGPU: batches up to FEW_ROWS rows, models without biases (the fused products bind at
 * most 8 buffers, WebGPU's default), heads up to 256 wide. Other steps run layer by layer with the other kernels.
 */
export function registerWebGPUDecodeStep(): void {
  if (tf.getKernel(DECODE_STEP_KERNEL, 'webgpu')) return;
  tf.registerKernel({ kernelName: DECODE_STEP_KERNEL, backendName: 'webgpu', kernelFunc: decodeStep as unknown as tf.KernelFunc });
  limitFusedKernel(DECODE_STEP_KERNEL, 'webgpu', (attrs) => {
    const spec = attrs as unknown as Partial<DecodeStepSpec>;
    // Asked before the step's spec exists (the model checks for a kernel first): the spec decides.
    if (spec.batch === undefined) return true;
    return spec.batch <= FEW_ROWS && !spec.attentionBias && !spec.mlpBias
      && spec.headDim !== undefined && spec.headDim <= 256;
  });
}
