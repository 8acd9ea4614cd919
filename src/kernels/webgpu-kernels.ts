import * as tf from '@tensorflow/tfjs';
import {
  ADAMW_KERNEL, AdamWAttrs, ATTENTION_KERNEL, AttentionShape, TRANSPOSED_PRODUCT_KERNEL, LAYERNORM1P_KERNEL, LINEAR_KERNEL, MLP_KERNEL, RELU2_KERNEL, ROTARY_KERNEL, TILED_PRODUCT_KERNEL,
  fusedKernelApplies, limitFusedKernel,
} from './fused';
import { tiledProduct, tiledProductApplies, tiledTransposedProduct, tiledTransposedProductApplies } from './webgpu-gemm';

/**
 * Fused kernels for the WebGPU backend, where an op costs 60–100 µs of dispatch whatever its size: one program per
 * LayerNorm1P instead of ten, one per rotary embedding instead of four, one per relu² instead of two. Used for inference only (while no gradient tape records; training keeps the plain tfjs
 * ops, whose gradients exist). Checked against those plain ops in test/webgpu/.
 */

export interface WebGPUBackendLike {
  runWebGPUProgram(program: object, inputs: tf.TensorInfo[], dtype: tf.DataType, uniforms?: Array<{ type: string; data: number[] }>): tf.TensorInfo;
  disposeData(dataId: object): boolean;
}

/** A program whose workgroups each own a unit of work (a row, a head, a few output columns): `main` reads workgroupId. */
export abstract class WorkgroupProgram {
  abstract readonly variableNames: string[];
  abstract readonly shaderKey: string;
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number];

  constructor(readonly outputShape: number[], workgroups: number, threads: number) {
    this.dispatchLayout = { x: outputShape.map((_, i) => i) };
    // At most 65535 workgroups a dimension: more spread over y (main reads workgroupId.y * numWorkgroups.x + workgroupId.x).
    this.dispatch = [Math.min(workgroups, 65535), Math.ceil(workgroups / 65535), 1];
    this.workgroupSize = [threads, 1, 1];
  }
}

/** WGSL that adds up `count` sums of `threads` threads each (partial[j·threads + tid]) into partial[j·threads]. */
export function sumAcrossThreads(threads: number, count: number): string {
  return `
      workgroupBarrier();
      for (var size = ${threads / 2}; size > 0; size = size >> 1) {
        if (tid < size) {
          for (var j = 0; j < ${count}; j++) {
            partial[j * ${threads} + tid] += partial[j * ${threads} + tid + size];
          }
        }
        workgroupBarrier();
      }`;
}

/** One workgroup a row: mean, then variance around it (two passes, as tf.moments), then (x - mean)·rsqrt(var + eps)·(1 + w) + b. */
class LayerNorm1PProgram extends WorkgroupProgram {
  readonly variableNames = ['x', 'w', 'b'];
  readonly uniforms = 'eps : f32,';
  readonly shaderKey: string;

  constructor(rows: number, cols: number) {
    super([rows, cols], rows, cols >= 4096 ? 256 : 64);
    this.shaderKey = `nemotron_layernorm1p_${this.workgroupSize[0]}`;
  }

  getUserCode(): string {
    const block = this.workgroupSize[0];
    return `
    var<workgroup> partial : array<f32, ${block}>;
    var<workgroup> rowMean : f32;
    var<workgroup> rowInvStd : f32;

    fn sumPartials(tid : i32) {
      for (var size = ${block / 2}; size > 0; size = size >> 1) {
        if (tid < size) {
          partial[tid] = partial[tid] + partial[tid + size];
        }
        workgroupBarrier();
      }
    }

    fn main(index : i32) {
      let row = index / ${block};
      let tid = i32(localId.x);
      let cols = uniforms.outShape[1];
      var sum = 0.0;
      for (var col = tid; col < cols; col += ${block}) {
        sum += getX(row, col);
      }
      partial[tid] = sum;
      workgroupBarrier();
      sumPartials(tid);
      if (tid == 0) {
        rowMean = partial[0] / f32(cols);
      }
      workgroupBarrier();
      var squares = 0.0;
      for (var col = tid; col < cols; col += ${block}) {
        let d = getX(row, col) - rowMean;
        squares += d * d;
      }
      partial[tid] = squares;
      workgroupBarrier();
      sumPartials(tid);
      if (tid == 0) {
        rowInvStd = inverseSqrt(partial[0] / f32(cols) + uniforms.eps);
      }
      workgroupBarrier();
      for (var col = tid; col < cols; col += ${block}) {
        setOutputAtCoords(row, col, (getX(row, col) - rowMean) * rowInvStd * (1.0 + getW(col)) + getB(col));
      }
    }
    `;
  }
}

/** A program with one invocation per output element (64 a workgroup): `main(index)` with getCoordsFromIndex. */
export abstract class PerElementProgram {
  readonly size = true;
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number] = [64, 1, 1];

  constructor(readonly outputShape: number[]) {
    this.dispatchLayout = { x: outputShape.map((_, i) => i) };
    this.dispatch = [Math.ceil(outputShape.reduce((a, b) => a * b, 1) / 64), 1, 1];
  }
}

/**
 * relu(x)² of each element (the MLP's activation), as tf.square(tf.relu(x)) computes it; with `gradient`, its gradient
 * dy·2·relu(x) (inputs x and dy).
 */
class Relu2Program extends PerElementProgram {
  readonly variableNames: string[];
  readonly shaderKey: string;

  constructor(shape: number[], private readonly gradient: boolean) {
    super(shape);
    this.variableNames = gradient ? ['x', 'dy'] : ['x'];
    this.shaderKey = `nemotron_relu2_${gradient}`;
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let r = max(getXByOutputIndex(index), 0.0);
        setOutputAtIndex(index, ${this.gradient ? 'getDyByOutputIndex(index) * 2.0 * r' : 'r * r'});
      }
    }
    `;
  }
}

/**
 * Rotary embedding of x [batch, heads, seq, headDim] with the tables of PartialRotaryEmbedding ([batch, 1, seq, headDim],
 * rotate_half's sign folded into sin): out[j] = x[j]·cos[j] + x[partner(j)]·sin[j], the partner of a rotated channel
 * being the one half a rotary width away; pass-through channels have sin 0.
 */
class RotaryProgram extends PerElementProgram {
  readonly variableNames = ['x', 'cos', 'sin'];
  /** sinSign −1 rotates back: the gradient of a rotation by the tables (their sin halves are ∓ the same values). */
  readonly uniforms = 'half : i32, sinSign : f32,';
  readonly shaderKey = 'nemotron_rotary';

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let c = getCoordsFromIndex(index);
        let j = c[3];
        var partner = j;
        if (j < uniforms.half) {
          partner = j + uniforms.half;
        } else if (j < 2 * uniforms.half) {
          partner = j - uniforms.half;
        }
        setOutputAtIndex(index, getX(c[0], c[1], c[2], j) * getCos(c[0], 0, c[2], j) +
          getX(c[0], c[1], c[2], partner) * getSin(c[0], 0, c[2], j) * uniforms.sinSign);
      }
    }
    `;
  }
}

/**
 * Attention scores of one new token per row: scores[b, h, k] = scale · q[b, h, 0, :]·keys[b, h / groups, k, :]
 * (+ mask[b, 0, 0, k]); GQA by indexing, K never repeated.
 */
class DecodeScoresProgram extends PerElementProgram {
  readonly variableNames: string[];
  readonly uniforms = 'groups : i32, headDim : i32, scale : f32,';
  readonly shaderKey: string;

  constructor(batch: number, heads: number, keyLen: number, private readonly masked: boolean) {
    super([batch, heads, keyLen]);
    this.variableNames = masked ? ['q', 'k', 'mask'] : ['q', 'k'];
    this.shaderKey = `nemotron_decode_scores_${masked}`;
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let c = getCoordsFromIndex(index);
        let kvHead = c[1] / uniforms.groups;
        var dot = 0.0;
        for (var j = 0; j < uniforms.headDim; j++) {
          dot += getQ(c[0], c[1], 0, j) * getK(c[0], kvHead, c[2], j);
        }
        var score = dot * uniforms.scale;
        ${this.masked ? 'score += getMask(c[0], 0, 0, c[2]);' : ''}
        setOutputAtIndex(index, score);
      }
    }
    `;
  }
}

/** context[b, h·d + j] = Σ_k probs[b, h, k] · values[b, h / groups, k, j]: heads already merged for o_proj. */
class DecodeContextProgram extends PerElementProgram {
  readonly variableNames = ['probs', 'v'];
  readonly uniforms = 'groups : i32, headDim : i32, keyLen : i32,';
  readonly shaderKey = 'nemotron_decode_context';

  constructor(batch: number, heads: number, headDim: number) {
    super([batch, heads * headDim]);
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let c = getCoordsFromIndex(index);
        let head = c[1] / uniforms.headDim;
        let j = c[1] - head * uniforms.headDim;
        let kvHead = head / uniforms.groups;
        var sum = 0.0;
        for (var k = 0; k < uniforms.keyLen; k++) {
          sum += getProbs(c[0], head, k) * getV(c[0], kvHead, k, j);
        }
        setOutputAtIndex(index, sum);
      }
    }
    `;
  }
}

/**
 * The attention kernel's contract (see tensorflow-ops.ts attention()) for one new token per row — decoding, where
 * WebGPU's per-dispatch cost dominates: rotary (2 dispatches), cache append (2), scores, softmax, context (1 each),
 * against ~20 for the plain ops. Longer sequences keep the plain ops (tfjs's tiled matMuls).
 */
function decodeAttention({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.TensorInfo[] {
  const gpu = backend as WebGPUBackendLike;
  const named = inputs as Record<string, tf.TensorInfo | undefined>;
  const { batch: b, numHeads: heads, kvHeads, headDim: d, rotaryDim, scale } = attrs as unknown as AttentionShape;
  const groups = heads / kvHeads;
  const temporaries: tf.TensorInfo[] = [];
  const temp = (t: tf.TensorInfo) => (temporaries.push(t), t);
  const rotate = (x: tf.TensorInfo, n: number) => rotary(gpu, temp(reshape(gpu, x, [b, n, 1, d])), named.cos!, named.sin!, rotaryDim);
  const append = (past: tf.TensorInfo | undefined, x: tf.TensorInfo) => {
    if (!past) return x;
    const concat = tf.getKernel('Concat', 'webgpu')!;
    const out = concat.kernelFunc({ inputs: [past, x] as unknown as tf.NamedTensorInfoMap, backend: backend as never, attrs: { axis: 2 } }) as tf.TensorInfo;
    temporaries.push(x);
    return out;
  };
  try {
    const query = temp(rotate(named.q!, heads));
    const keys = append(named.pastKeys, rotate(named.k!, kvHeads));
    const values = append(named.pastValues, reshape(gpu, named.v!, [b, kvHeads, 1, d]));
    const keyLen = keys.shape[2];
    const scoreInputs = named.mask ? [query, keys, named.mask] : [query, keys];
    const scores = temp(gpu.runWebGPUProgram(new DecodeScoresProgram(b, heads, keyLen, named.mask !== undefined), scoreInputs, 'float32', [
      { type: 'int32', data: [groups] }, { type: 'int32', data: [d] }, { type: 'float32', data: [scale] },
    ]));
    const softmax = tf.getKernel('Softmax', 'webgpu')!;
    const probs = temp(softmax.kernelFunc({ inputs: { logits: scores }, backend: backend as never, attrs: { dim: 2 } }) as tf.TensorInfo);
    const context = gpu.runWebGPUProgram(new DecodeContextProgram(b, heads, d), [probs, values], 'float32', [
      { type: 'int32', data: [groups] }, { type: 'int32', data: [d] }, { type: 'int32', data: [keyLen] },
    ]);
    return [context, keys, values];
  } finally {
    for (const t of temporaries) gpu.disposeData(t.dataId);
  }
}

/** Rows up to which the few-rows product below replaces tfjs's tiled matMul (decoding: one row per sequence). */
export const FEW_ROWS = 16;

export type Epilogue = 'none' | 'relu' | 'relu2';

/** What a few-rows product computes around x·Wᵀ (see FewRowsLinearProgram). */
export interface FewRowsOptions {
  /** LayerNorm1P of x first (inputs lnWeight, lnBias; uniform eps): the norm is recomputed by each workgroup. */
  norm?: boolean;
  /** Output widths of up to three weights read as one [Σ widths, in] matrix (q, k and v projections in one pass). */
  widths: number[];
  bias?: boolean;
  epilogue?: Epilogue;
  /** Adds an input `residual` [rows, out] to the result (after the activation). */
  residual?: boolean;
}

/**
 * y = act(x·Wᵀ + b) (+ residual) for a few rows x [M, K] (M ≤ FEW_ROWS) and W in HF layout [N, K]: a matrix-vector
 * product, bound by reading W once. Each workgroup owns `cols` rows of W and walks them with its threads side by
 * side along K (coalesced reads), keeps M·cols sums a thread, then adds the threads' sums up in workgroup memory.
 * tfjs's matMul tiles for large M and reads W with a stride for transposeB: 0.3–0.56 TB/s against 1.6–1.7 TB/s
 * here on the H100 (benchmarks/results/webgpu-h100-2026-11-28-run1.json).
 */
class FewRowsLinearProgram extends WorkgroupProgram {
  readonly variableNames: string[];
  readonly variableComponents: number[];
  readonly uniforms = 'k : i32, eps : f32,';
  readonly shaderKey: string;

  // Workgroup memory holds rows·cols·threads sums: 8 KB at most.
  private static threads(rows: number): number {
    return rows <= 2 ? 256 : rows <= 4 ? 128 : 64;
  }

  private static cols(rows: number): number {
    return rows <= 8 ? 4 : 2;
  }

  /** `vec4`: x, the norm's weights and W read four floats at a time (K a multiple of 4). */
  constructor(private readonly rows: number, private readonly o: FewRowsOptions, private readonly vec4: boolean) {
    const outFeatures = o.widths.reduce((a, b) => a + b, 0);
    super([rows, outFeatures], Math.ceil(outFeatures / FewRowsLinearProgram.cols(rows)), FewRowsLinearProgram.threads(rows));
    const weights = o.widths.map((_, i) => `w${i}`);
    const alongK = ['x', ...(o.norm ? ['lnw', 'lnb'] : []), ...weights];
    const perOutput = [...(o.bias ? ['b'] : []), ...(o.residual ? ['res'] : [])];
    this.variableNames = [...alongK, ...perOutput];
    this.variableComponents = [...alongK.map(() => (vec4 ? 4 : 1)), ...perOutput.map(() => 1)];
    this.shaderKey = `nemotron_few_rows_${rows}_${this.cols}_${this.workgroupSize[0]}_${o.widths.join('_')}_${!!o.norm}_${!!o.bias}_${o.epilogue ?? 'none'}_${!!o.residual}_${vec4}`;
  }

  private get cols(): number {
    return FewRowsLinearProgram.cols(this.rows);
  }

  getUserCode(): string {
    const { rows, cols, o, vec4 } = this;
    const threads = this.workgroupSize[0];
    const sums = rows * cols;
    const each = (f: (m: number, c: number) => string) => Array.from({ length: sums }, (_, j) => f(Math.floor(j / cols), j % cols)).join('\n');
    const perRow = (f: (m: number) => string) => Array.from({ length: rows }, (_, m) => f(m)).join('\n');
    const epilogue = o.epilogue ?? 'none';
    const act = epilogue === 'relu2' ? 'let r = max(v, 0.0); return r * r;' : epilogue === 'relu' ? 'return max(v, 0.0);' : 'return v;';
    // Along K the loops step over elements of type T (f32, or vec4 of four consecutive floats); kk counts them.
    const T = vec4 ? 'vec4<f32>' : 'f32';
    const total = (e: string) => (vec4 ? `dot(${e}, vec4<f32>(1.0))` : e);
    const product = (a: string, b: string) => (vec4 ? `dot(${a}, ${b})` : `${a} * ${b}`);
    // Row n of the stacked weights: which weight, and its row there.
    let offset = 0;
    const pick = o.widths.map((width, i) => {
      const line = i === o.widths.length - 1 ? `return w${i}[(n - ${offset}) * kk + k];` : `if (n < ${offset + width}) { return w${i}[(n - ${offset}) * kk + k]; }`;
      offset += width;
      return line;
    }).join('\n        ');
    // Sums over K of every row at once (two passes for the norm: mean, then variance around it, as tf.moments).
    const reduceRows = sumAcrossThreads(threads, rows);
    const norm = o.norm ? `
      ${perRow((m) => `var t${m} = 0.0;`)}
      for (var k = tid; k < kk; k += ${threads}) {
        ${perRow((m) => `t${m} += ${total(`x[${m} * kk + k]`)};`)}
      }
      ${perRow((m) => `partial[${m * threads} + tid] = t${m};`)}
      ${reduceRows}
      ${perRow((m) => `let mean${m} = partial[${m * threads}] / f32(uniforms.k);`)}
      workgroupBarrier();
      ${perRow((m) => `t${m} = 0.0;`)}
      for (var k = tid; k < kk; k += ${threads}) {
        ${perRow((m) => `let d${m} = x[${m} * kk + k] - mean${m}; t${m} += ${product(`d${m}`, `d${m}`)};`)}
      }
      ${perRow((m) => `partial[${m * threads} + tid] = t${m};`)}
      ${reduceRows}
      ${perRow((m) => `let inv${m} = inverseSqrt(partial[${m * threads}] / f32(uniforms.k) + uniforms.eps);`)}
      workgroupBarrier();` : '';
    const load = (m: number) => (o.norm
      ? `let xv${m} = (x[${m} * kk + k] - mean${m}) * inv${m} * g + lnb[k];`
      : `let xv${m} = x[${m} * kk + k];`);
    return `
    var<workgroup> partial : array<f32, ${sums * threads}>;

    fn activate(v : f32) -> f32 { ${act} }

    fn weight(n : i32, k : i32, kk : i32) -> ${T} {
        ${pick}
    }

    fn main(index : i32) {
      let tid = i32(localId.x);
      let n = uniforms.outShape[1];
      let kk = uniforms.k / ${vec4 ? 4 : 1};
      let first = i32(workgroupId.y * numWorkgroups.x + workgroupId.x) * ${cols};
      ${norm}
      ${Array.from({ length: cols }, (_, c) => `let n${c} = min(first + ${c}, n - 1);`).join('\n')}
      ${each((m, c) => `var s${m}_${c} = 0.0;`)}
      for (var k = tid; k < kk; k += ${threads}) {
        ${o.norm ? 'let g = 1.0 + lnw[k];' : ''}
        ${Array.from({ length: cols }, (_, c) => `let wv${c} = weight(n${c}, k, kk);`).join('\n')}
        ${perRow(load)}
        ${each((m, c) => `s${m}_${c} += ${product(`xv${m}`, `wv${c}`)};`)}
      }
      ${each((m, c) => `partial[${m * cols + c} * ${threads} + tid] = s${m}_${c};`)}
      ${sumAcrossThreads(threads, sums)}
      if (tid < ${sums}) {
        let m = tid / ${cols};
        let col = first + tid % ${cols};
        if (col < n) {
          let v = activate(partial[tid * ${threads}]${o.bias ? ' + b[col]' : ''});
          result[m * n + col] = v${o.residual ? ' + res[m * n + col]' : ''};
        }
      }
    }
    `;
  }
}

let vectorizedFewRows = true;

/**
 * Whether few-rows products read four floats at a time where K allows (the default). For the device benchmark, which
 * measures both; the results are the same up to float32 rounding.
 */
export function setVectorizedFewRows(on: boolean): void {
  vectorizedFewRows = on;
}

/**
 * Runs a few-rows product. `inputs`: x, then [lnWeight, lnBias] with options.norm, the weights, [bias], [residual].
 */
export function fewRowsProduct(gpu: WebGPUBackendLike, inputs: tf.TensorInfo[], options: FewRowsOptions, eps = 0): tf.TensorInfo {
  const [rows, k] = inputs[0].shape;
  return gpu.runWebGPUProgram(new FewRowsLinearProgram(rows, options, vectorizedFewRows && k % 4 === 0), inputs, 'float32',
    [{ type: 'int32', data: [k] }, { type: 'float32', data: [eps] }]);
}

function fewRowsLinear(gpu: WebGPUBackendLike, x: tf.TensorInfo, weight: tf.TensorInfo, bias: tf.TensorInfo | undefined, epilogue: Epilogue): tf.TensorInfo {
  return fewRowsProduct(gpu, bias ? [x, weight, bias] : [x, weight], { widths: [weight.shape[0]], bias: bias !== undefined, epilogue });
}

/** Runs one of tfjs's own WebGPU kernels on TensorInfos (no engine bookkeeping: the caller disposes). */
function tfjsKernel(gpu: WebGPUBackendLike) {
  return (name: string, inputs: Record<string, tf.TensorInfo>, attrs: Record<string, unknown> = {}) =>
    tf.getKernel(name, 'webgpu')!.kernelFunc({ inputs: inputs as tf.NamedTensorInfoMap, backend: gpu as never, attrs: attrs as tf.NamedAttrMap }) as tf.TensorInfo;
}

/**
 * a·bᵀ (attention scores) over the last two axes: the tiled product where it applies (leading axes of b equal to a's),
 * else bᵀ made explicit — tfjs's matMul reads vec4 only without a transposed operand, and K [.., keys, d] is small
 * next to the product.
 */
function transposedProduct({ inputs, backend }: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo {
  const gpu = backend as WebGPUBackendLike;
  const run = tfjsKernel(gpu);
  const { a, b } = inputs as Record<string, tf.TensorInfo>;
  const [m, k] = a.shape.slice(-2);
  const n = b.shape[b.shape.length - 2];
  const lead = a.shape.slice(0, -2);
  if (fusedKernelApplies(TILED_PRODUCT_KERNEL, { k }) && tf.util.arraysEqual(lead, b.shape.slice(0, -2))) {
    const batch = lead.reduce((x, y) => x * y, 1);
    return withReshaped(gpu, [[a, [batch, m, k]], [b, [batch, n, k]]], ([a3, b3]) => tiledProduct(gpu, a3, b3), [...lead, m, n]);
  }
  const perm = b.shape.map((_, i) => i);
  [perm[perm.length - 2], perm[perm.length - 1]] = [perm[perm.length - 1], perm[perm.length - 2]];
  const bT = run('Transpose', { x: b }, { perm });
  try {
    return run('BatchMatMul', { a, b: bT }, { transposeA: false, transposeB: false });
  } finally {
    gpu.disposeData(bT.dataId);
  }
}

/** Runs `f` on the inputs viewed with other shapes (no copies) and views its output as `outShape`. */
function withReshaped(gpu: WebGPUBackendLike, views: Array<[tf.TensorInfo, number[]]>, f: (ts: tf.TensorInfo[]) => tf.TensorInfo,
  outShape: number[]): tf.TensorInfo {
  const viewed = views.map(([t, shape]) => reshape(gpu, t, shape));
  try {
    const out = f(viewed);
    const shaped = reshape(gpu, out, outShape);
    gpu.disposeData(out.dataId);
    return shaped;
  } finally {
    for (const t of viewed) gpu.disposeData(t.dataId);
  }
}

/**
 * x·Wᵀ (+ b) for many rows (a prompt) as (W·xᵀ)ᵀ: tfjs's tiled matMul reads 4 floats at a time (vec4) only when
 * neither operand is transposed, and x·Wᵀ transposes the weight; transposing x [rows, in] and the result instead
 * moves the activations, not the weights.
 */
function weightFirstLinear(gpu: WebGPUBackendLike, x: tf.TensorInfo, weight: tf.TensorInfo, bias: tf.TensorInfo | undefined): tf.TensorInfo {
  const run = tfjsKernel(gpu);
  const temporaries: tf.TensorInfo[] = [];
  const temp = (t: tf.TensorInfo) => (temporaries.push(t), t);
  try {
    const xT = temp(run('Transpose', { x }, { perm: [1, 0] }));
    const product = temp(run('BatchMatMul', { a: weight, b: xT }, { transposeA: false, transposeB: false }));
    const y = run('Transpose', { x: product }, { perm: [1, 0] });
    if (!bias) return y;
    temp(y);
    return run('Add', { a: y, b: bias });
  } finally {
    for (const t of temporaries) gpu.disposeData(t.dataId);
  }
}

/** LINEAR_KERNEL (few rows: one product; more: the tiled product, or weight first) and MLP_KERNEL for x [rows ≤ FEW_ROWS, in] (up·relu² one dispatch). */
function registerFewRowsKernels(): void {
  const fewRows = (attrs: Record<string, unknown>) => typeof attrs.rows === 'number' && attrs.rows <= FEW_ROWS;
  tf.registerKernel({
    kernelName: LINEAR_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend }) => {
      const gpu = backend as unknown as WebGPUBackendLike;
      const { x, weight, bias } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo; bias?: tf.TensorInfo };
      const [rows, k] = x.shape;
      if (rows <= FEW_ROWS) return fewRowsLinear(gpu, x, weight, bias, 'none');
      if (!fusedKernelApplies(TILED_PRODUCT_KERNEL, { k })) return weightFirstLinear(gpu, x, weight, bias);
      const n = weight.shape[0];
      return withReshaped(gpu, [[x, [1, rows, k]], [weight, [1, n, k]]], ([x3, w3]) => tiledProduct(gpu, x3, w3, bias), [rows, n]);
    },
  });
  tf.registerKernel({
    kernelName: MLP_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const gpu = backend as unknown as WebGPUBackendLike;
      const { x, up, down, upBias, downBias } = inputs as Record<string, tf.TensorInfo | undefined>;
      const hidden = fewRowsLinear(gpu, x!, up!, upBias, (attrs as { activation: Epilogue }).activation);
      try {
        return fewRowsLinear(gpu, hidden, down!, downBias, 'none');
      } finally {
        gpu.disposeData(hidden.dataId);
      }
    },
  });
  limitFusedKernel(MLP_KERNEL, 'webgpu', fewRows);
}

export function reshape(backend: WebGPUBackendLike, x: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  const kernel = tf.getKernel('Reshape', 'webgpu')!;
  return kernel.kernelFunc({ inputs: { x }, backend: backend as never, attrs: { shape } }) as tf.TensorInfo;
}

/** An AdamW moment: β·m + (1 − β)·g (first) or β·v + (1 − β)·g² (second), as the plain update orders it. */
class AdamMomentProgram extends PerElementProgram {
  readonly variableNames = ['moment', 'grad'];
  readonly uniforms = 'beta : f32,';
  readonly shaderKey: string;

  constructor(shape: number[], private readonly squared: boolean) {
    super(shape);
    this.shaderKey = `nemotron_adam_moment_${squared}`;
  }

  getUserCode(): string {
    const g = this.squared ? 'grad[index] * grad[index]' : 'grad[index]';
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        result[index] = moment[index] * uniforms.beta + ${g} * (1.0 - uniforms.beta);
      }
    }
    `;
  }
}

/**
 * The AdamW parameter update, the moments recomputed in place (the same expressions as AdamMomentProgram):
 * p·(1 − lr·wd) − (m / (√v / c2 + ε))·(lr / c1), torch.optim.AdamW's order of operations.
 */
class AdamParamProgram extends PerElementProgram {
  readonly variableNames = ['param', 'grad', 'm0', 'v0'];
  readonly uniforms = 'beta1 : f32, beta2 : f32, keep : f32, stepSize : f32, c2 : f32, eps : f32,';
  readonly shaderKey = 'nemotron_adam_param';

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let g = grad[index];
        let m = m0[index] * uniforms.beta1 + g * (1.0 - uniforms.beta1);
        let v = v0[index] * uniforms.beta2 + g * g * (1.0 - uniforms.beta2);
        let denom = sqrt(v) / uniforms.c2 + uniforms.eps;
        result[index] = param[index] * uniforms.keep - (m / denom) * uniforms.stepSize;
      }
    }
    `;
  }
}

/** ADAMW_KERNEL: [param, expAvg, expAvgSq] after one step, in 3 dispatches (the plain ops take ~14 a parameter). */
function adamW({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.TensorInfo[] {
  const gpu = backend as WebGPUBackendLike;
  const { param, grad, expAvg, expAvgSq } = inputs as Record<string, tf.TensorInfo>;
  const a = attrs as unknown as AdamWAttrs;
  const f32 = (x: number) => ({ type: 'float32', data: [x] });
  const c1 = 1 - a.beta1 ** a.step;
  const c2 = Math.sqrt(1 - a.beta2 ** a.step);
  const updated = gpu.runWebGPUProgram(new AdamParamProgram(param.shape), [param, grad, expAvg, expAvgSq], 'float32',
    [f32(a.beta1), f32(a.beta2), f32(1 - a.decay), f32(a.lr / c1), f32(c2), f32(a.eps)]);
  const m = gpu.runWebGPUProgram(new AdamMomentProgram(param.shape, false), [expAvg, grad], 'float32', [f32(a.beta1)]);
  const v = gpu.runWebGPUProgram(new AdamMomentProgram(param.shape, true), [expAvgSq, grad], 'float32', [f32(a.beta2)]);
  return [updated, m, v];
}

/** LayerNorm1P of x [rows, cols] (the LayerNorm1P kernel's program). */
export function layerNorm1P(gpu: WebGPUBackendLike, x: tf.TensorInfo, weight: tf.TensorInfo, bias: tf.TensorInfo, eps: number): tf.TensorInfo {
  const [rows, cols] = x.shape;
  return gpu.runWebGPUProgram(new LayerNorm1PProgram(rows, cols), [x, weight, bias], 'float32', [{ type: 'float32', data: [eps] }]);
}

const GUARDED = Symbol('nemotron.bindingLimitGuard');

/**
 * Makes every WebGPU program refuse, with an error naming the tensor, a tensor larger than the device binds to a
 * shader (maxStorageBufferBindingSize: 2 GB on the H100, 128 MB on lavapipe). Dawn itself only prints a validation
 * message and skips the dispatch, so the result would silently be zeros. Idempotent; setBackend('webgpu') calls it.
 */
export function guardBindingLimit(backend: object): void {
  const gpu = backend as WebGPUBackendLike & { device?: { limits?: { maxStorageBufferBindingSize?: number } }; [GUARDED]?: boolean };
  const limit = gpu.device?.limits?.maxStorageBufferBindingSize;
  if (gpu[GUARDED] || limit === undefined) return;
  const run = gpu.runWebGPUProgram;
  const bytes = (shape: number[], dtype: tf.DataType) => shape.reduce((a, b) => a * b, 1) * (dtype === 'complex64' ? 8 : 4);
  gpu.runWebGPUProgram = function (this: WebGPUBackendLike, program: object, inputs: tf.TensorInfo[], dtype: tf.DataType, ...rest: unknown[]) {
    const outputShape = (program as { outputShape: number[] }).outputShape;
    const tensors: Array<[string, number[], tf.DataType]> = [['output', outputShape, dtype], ...inputs.map((t, i) => [`input ${i}`, t.shape, t.dtype] as [string, number[], tf.DataType])];
    for (const [what, shape, type] of tensors) {
      if (bytes(shape, type) > limit) {
        throw new Error(`WebGPU: ${program.constructor.name} would bind a [${shape}] ${type} tensor (its ${what}) of ${bytes(shape, type)} bytes; ` +
          `this device binds at most ${limit} bytes to a shader (maxStorageBufferBindingSize). Work on fewer positions at once ` +
          '(logitsToKeep, shorter or fewer sequences).');
      }
    }
    return (run as (...args: unknown[]) => tf.TensorInfo).call(this, program, inputs, dtype, ...rest);
  } as WebGPUBackendLike['runWebGPUProgram'];
  gpu[GUARDED] = true;
}

/** Registers the fused kernels for 'webgpu' (idempotent); setBackend('webgpu') calls it. */
export function registerWebGPUKernels(): void {
  if (tf.getKernel(LAYERNORM1P_KERNEL, 'webgpu')) return;
  registerRotary();
  registerFewRowsKernels();
  tf.registerKernel({ kernelName: ADAMW_KERNEL, backendName: 'webgpu', kernelFunc: adamW as unknown as tf.KernelFunc });
  tf.registerKernel({ kernelName: TRANSPOSED_PRODUCT_KERNEL, backendName: 'webgpu', kernelFunc: transposedProduct as unknown as tf.KernelFunc });
  tf.registerKernel({
    kernelName: TILED_PRODUCT_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const { a, b, bias } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo; bias?: tf.TensorInfo };
      const gpu = backend as unknown as WebGPUBackendLike;
      return (attrs as { transposeA?: boolean } | undefined)?.transposeA ? tiledTransposedProduct(gpu, a, b) : tiledProduct(gpu, a, b, bias);
    },
  });
  // attrs: { k } for a·bᵀ (the reduction runs along the rows), { transposeA: true, m, n } for aᵀ·b.
  limitFusedKernel(TILED_PRODUCT_KERNEL, 'webgpu', (attrs) => (attrs.transposeA
    ? tiledTransposedProductApplies(attrs.m as number, attrs.n as number)
    : typeof attrs.k === 'number' && tiledProductApplies(attrs.k)));
  tf.registerKernel({
    kernelName: RELU2_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend }) => {
      const { x, dy } = inputs as { x: tf.TensorInfo; dy?: tf.TensorInfo };
      return (backend as unknown as WebGPUBackendLike).runWebGPUProgram(new Relu2Program(x.shape, dy !== undefined), dy ? [x, dy] : [x], 'float32');
    },
  });
  tf.registerKernel({ kernelName: ATTENTION_KERNEL, backendName: 'webgpu', kernelFunc: decodeAttention as unknown as tf.KernelFunc });
  limitFusedKernel(ATTENTION_KERNEL, 'webgpu', (attrs) => attrs.seq === 1);
  tf.registerKernel({
    kernelName: LAYERNORM1P_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const gpu = backend as unknown as WebGPUBackendLike;
      const { x, weight, bias } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo; bias: tf.TensorInfo };
      const cols = x.shape[x.shape.length - 1];
      const rows = x.shape.reduce((a, b) => a * b, 1) / cols;
      const x2d = reshape(gpu, x, [rows, cols]);
      const out2d = gpu.runWebGPUProgram(new LayerNorm1PProgram(rows, cols), [x2d, weight, bias], 'float32',
        [{ type: 'float32', data: [(attrs as { eps: number }).eps] }]);
      const out = reshape(gpu, out2d, x.shape);
      gpu.disposeData(x2d.dataId);
      gpu.disposeData(out2d.dataId);
      return out;
    },
  });
}

/** x [b, h, s, d] rotated by cos/sin [b, 1, s, d] over the first rotaryDim channels (inverse: rotated back). */
function rotary(gpu: WebGPUBackendLike, x: tf.TensorInfo, cos: tf.TensorInfo, sin: tf.TensorInfo, rotaryDim: number, inverse = false): tf.TensorInfo {
  return gpu.runWebGPUProgram(new RotaryProgram(x.shape), [x, cos, sin], 'float32',
    [{ type: 'int32', data: [rotaryDim / 2] }, { type: 'float32', data: [inverse ? -1 : 1] }]);
}

/** Registers the rotary kernel (see registerWebGPUKernels). */
function registerRotary(): void {
  tf.registerKernel({
    kernelName: ROTARY_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const { x, cos, sin } = inputs as { x: tf.TensorInfo; cos: tf.TensorInfo; sin: tf.TensorInfo };
      const { rotaryDim, inverse } = attrs as { rotaryDim: number; inverse?: boolean };
      return rotary(backend as unknown as WebGPUBackendLike, x, cos, sin, rotaryDim, inverse);
    },
  });
}
