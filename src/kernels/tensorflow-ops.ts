import type { AttentionShape } from './fused';

export type { AttentionShape };

/**
 * The fused computations of the native backend, written once against `TFOps` and run two ways: eagerly on raw
 * TensorFlow handles (tensorflow-kernels.ts, one tfjs kernel each) and recorded into a TensorFlow graph
 * (tensorflow-graph.ts, a whole decoding step as one session run). H is a handle: a raw tensor id, or a graph
 * node's output name.
 */

export type AttrValue =
  | { bool: boolean }
  | { int: number }
  | { float: number }
  | { type: 'float32' | 'int32' };

export type Attrs = Record<string, AttrValue>;

export interface TFOps<H> {
  /** A float32 op (attr T = float32 unless `attrs` sets it) with one output. */
  op(name: string, inputs: H[], attrs?: Attrs): H;
  /** An op whose attrs are all given (no T added). */
  opUntyped(name: string, inputs: H[], attrs: Attrs): H;
  /**
   * A constant; `values` may be a function, called only when a backend needs the data. Constants are cached by dtype,
   * shape and `key`, which defaults to the values themselves (give one for large constants).
   */
  constant(dtype: 'float32' | 'int32', shape: number[], values: ArrayLike<number> | (() => ArrayLike<number>), key?: string): H;
}

const int32: AttrValue = { type: 'int32' };
const float32: AttrValue = { type: 'float32' };

/** Below this many multiply-adds, BatchMatMulV3 (Eigen, ~20 µs) beats BatchMatMulV2 (oneDNN, ~90 µs of set-up). */
const SMALL_BATCH_MATMUL = 65536;

export function reshape<H>(ops: TFOps<H>, x: H, shape: number[]): H {
  return ops.op('Reshape', [x, ops.constant('int32', [shape.length], shape)], { Tshape: int32 });
}

export function transpose<H>(ops: TFOps<H>, x: H, permutation: number[]): H {
  return ops.op('Transpose', [x, ops.constant('int32', [permutation.length], permutation)], { Tperm: int32 });
}

export function concat<H>(ops: TFOps<H>, a: H, b: H, axis: number): H {
  return ops.op('ConcatV2', [a, b, ops.constant('int32', [], [axis])], { N: { int: 2 }, Tidx: int32 });
}

export function scalar<H>(ops: TFOps<H>, value: number): H {
  return ops.constant('float32', [], [value]);
}

/** BatchMatMulV3: Eigen's batch matMul, which oneDNN does not take over (its float32 types are attrs Ta, Tb, Tout). */
function batchMatMulV3<H>(ops: TFOps<H>, a: H, b: H, transposeB: boolean): H {
  return ops.opUntyped('BatchMatMulV3', [a, b], { Ta: float32, Tb: float32, Tout: float32, adj_x: { bool: false }, adj_y: { bool: transposeB } });
}

/** a · b (or a · bᵀ) over the last two axes, batch axes broadcast; `macs` (multiply-adds) picks the faster op. */
export function batchMatMul<H>(ops: TFOps<H>, a: H, b: H, transposeB: boolean, macs: number): H {
  if (macs <= SMALL_BATCH_MATMUL) return batchMatMulV3(ops, a, b, transposeB);
  return ops.op('BatchMatMulV2', [a, b], { adj_x: { bool: false }, adj_y: { bool: transposeB } });
}

/**
 * How TensorFlow is asked for x [m, k] · Wᵀ with W [n, k] (HF's layout). Some CPUs read a large transposed right
 * operand slowly: on this machine's AMD EPYC (AVX2, no AVX-512; MatMul, BatchMatMulV2 and V3 alike) 8 × 3,072 by
 * 9,216 × 3,072 takes 52 ms as x·Wᵀ and 9 ms as (W·xᵀ)ᵀ, 512 rows 396 and 180 ms; on the Intel Xeon measured on
 * 2026-11-28 x·Wᵀ was the faster. 'auto' (setBackend's default) times both once per process and swaps where it pays:
 * 'swapped'. 'direct' never swaps; 'always-swapped' swaps every product of two rows or more (tests use it to run the
 * swapped form on small models).
 */
export type TransposedProductMode = 'direct' | 'swapped' | 'always-swapped';

let transposedProducts: TransposedProductMode = 'direct';

export function setTransposedProductMode(mode: TransposedProductMode): void {
  transposedProducts = mode;
}

export function transposedProductMode(): TransposedProductMode {
  return transposedProducts;
}

/**
 * Whether x [m, k] · Wᵀ (W [n, k]) is computed as (W·xᵀ)ᵀ. On the slow machine the swapped form wins (up to 15×) where
 * W is large and has more rows than x: n·k ≥ 2^20 and m < n, or n·k ≥ 2^18 and m ≤ n/2, k ≥ 512 in both — measured
 * for k 128–9,216, n 256–9,216, m 1–2,048 — and loses by up to 3× on small weights, short rows (k < 512) or when x
 * is about as large as W.
 */
export function swapsTransposedProduct(m: number, k: number, n: number): boolean {
  if (transposedProducts === 'always-swapped') return m >= 2;
  if (transposedProducts !== 'swapped' || k < 512) return false;
  const weight = n * k;
  return weight >= 1 << 20 ? m < n : weight >= 1 << 18 && 2 * m <= n;
}

/** x [m, k] · b [n, k]ᵀ as (b · xᵀ)ᵀ: MatMul with the small operand transposed, then its [n, m] result. */
export function swappedProduct<H>(ops: TFOps<H>, x: H, b: H): H {
  return transpose(ops, ops.op('MatMul', [b, x], { transpose_a: { bool: false }, transpose_b: { bool: true } }), [1, 0]);
}

export interface LinearSize {
  rows: number;
  inFeatures: number;
  outFeatures: number;
}

/**
 * x [rows, in] · Wᵀ (+ b) with W [out, in]. Decoding multiplies one or two rows, where the op matters (measured over
 * minitron-small's 559 MB of weights on the Xeon's two cores: BatchMatMulV2, what tf.matMul runs, 11 GB/s; MatMul 15;
 * BatchMatMulV3 as W · xᵀ 19–22, like torch's 21): one row takes W · xᵀ, two take MatMul. From four rows on
 * BatchMatMulV2 is as fast or faster there; machines that read Wᵀ slowly swap (swapsTransposedProduct).
 */
export function linear<H>(ops: TFOps<H>, x: H, weight: H, size: LinearSize, bias?: H): H {
  const { rows, inFeatures, outFeatures } = size;
  let out: H;
  if (rows === 1) out = reshape(ops, batchMatMulV3(ops, weight, x, true), [1, outFeatures]);
  else if (swapsTransposedProduct(rows, inFeatures, outFeatures)) out = swappedProduct(ops, x, weight);
  else if (rows === 2) out = ops.op('MatMul', [x, weight], { transpose_a: { bool: false }, transpose_b: { bool: true } });
  else out = ops.op('BatchMatMulV2', [x, weight], { adj_x: { bool: false }, adj_y: { bool: true } });
  return bias === undefined ? out : ops.op('AddV2', [out, bias]);
}

/** NemotronLayerNorm1P with the plain path's arithmetic: tf.moments, then (x − mean)·rsqrt(var + eps)·(1 + w) + b. */
export function layerNorm1P<H>(ops: TFOps<H>, x: H, weight: H, bias: H, eps: number): H {
  const axes = ops.constant('int32', [1], [-1]);
  const keepDims: Attrs = { keep_dims: { bool: true }, Tidx: int32 };
  const mean = ops.op('Mean', [x, axes], keepDims);
  const centered = ops.op('Sub', [x, mean]);
  const variance = ops.op('Mean', [ops.op('Square', [centered]), axes], keepDims);
  const rstd = ops.op('Rsqrt', [ops.op('AddV2', [variance, scalar(ops, eps)])]);
  const scale = ops.op('AddV2', [weight, scalar(ops, 1)]);
  return ops.op('AddV2', [ops.op('Mul', [ops.op('Mul', [centered, rstd]), scale]), bias]);
}

/** PartialRotaryEmbedding.permutation: (x·P)[j] = x[partner(j)], pass-through channels mapped to themselves. */
export function rotaryPermutation(headDim: number, rotaryDim: number): Float32Array {
  const half = rotaryDim / 2;
  const matrix = new Float32Array(headDim * headDim);
  for (let j = 0; j < headDim; j++) {
    const partner = j < half ? j + half : j < rotaryDim ? j - half : j;
    matrix[partner * headDim + j] = 1;
  }
  return matrix;
}

/** applyRotary's x·cos + (x·P)·sin on x [..., headDim] of `elements` values; cos/sin broadcast. */
export function rotary<H>(ops: TFOps<H>, x: H, cos: H, sin: H, headDim: number, rotaryDim: number, elements: number): H {
  const permutation = ops.constant('float32', [headDim, headDim], () => rotaryPermutation(headDim, rotaryDim), `rotary${rotaryDim}`);
  const partners = batchMatMul(ops, x, permutation, false, elements * headDim);
  return ops.op('AddV2', [ops.op('Mul', [x, cos]), ops.op('Mul', [partners, sin])]);
}

export interface MLPWeights<H> {
  up: H;
  down: H;
  upBias?: H;
  downBias?: H;
}

/** NemotronMLP, down(act(up(x))) with act relu² or relu, on x [rows, hidden]. */
export function mlp<H>(ops: TFOps<H>, x: H, w: MLPWeights<H>, rows: number, sizes: { hidden: number; intermediate: number },
  activation: 'relu2' | 'relu'): H {
  const hidden = ops.op('Relu', [linear(ops, x, w.up, { rows, inFeatures: sizes.hidden, outFeatures: sizes.intermediate }, w.upBias)]);
  const activated = activation === 'relu2' ? ops.op('Square', [hidden]) : hidden;
  return linear(ops, activated, w.down, { rows, inFeatures: sizes.intermediate, outFeatures: sizes.hidden }, w.downBias);
}

/**
 * Attention of one new token per row (query [b, H, 1, d], keys and values [b, KV, L, d]) as one matrix-vector product
 * per head: keys viewed as [b, KV, 1, L, d] broadcast over the `groups` query heads that share them ([b, KV, groups, d,
 * 1]), so BatchMatMulV3 shards b·H products of L×d by a vector over the threads, with no set-up that depends on L. The
 * grouped products of the general path cost oneDNN a new primitive for every key length (BatchMatMulV2), or run
 * Eigen's tensor contraction (V3) at 3–4× the time at 512 keys; measured in a decoding graph of minitron-small.
 */
export function decodingAttention<H>(ops: TFOps<H>, query: H, keys: H, values: H, mask: H | undefined, shape: AttentionShape): H {
  const { batch: b, numHeads: heads, kvHeads, headDim: d, scale } = shape;
  const groups = heads / kvHeads;
  const column = reshape(ops, ops.op('Mul', [query, scalar(ops, scale)]), [b, kvHeads, groups, d, 1]);
  let scores = reshape(ops, batchMatMulV3(ops, reshape(ops, keys, [b, kvHeads, 1, -1, d]), column, false), [b, heads, 1, -1]);
  if (mask !== undefined) scores = ops.op('AddV2', [scores, mask]);
  // Softmax spelled out: in a graph oneDNN takes Softmax over (_MklSoftmax), ~100 µs a call at these sizes; the
  // five plain ops cost a few µs each (measured, minitron-small decoding step: 1–2 ms a step).
  const lastAxis = ops.constant('int32', [1], [-1]);
  const keepDims: Attrs = { keep_dims: { bool: true }, Tidx: int32 };
  const exp = ops.op('Exp', [ops.op('Sub', [scores, ops.op('Max', [scores, lastAxis], keepDims)])]);
  const probs = reshape(ops, ops.op('RealDiv', [exp, ops.op('Sum', [exp, lastAxis], keepDims)]), [b, kvHeads, groups, 1, -1]);
  const context = batchMatMulV3(ops, probs, reshape(ops, values, [b, kvHeads, 1, -1, d]), false);
  return reshape(ops, context, [b, heads * d]);
}

export interface AttentionInputs<H> {
  q: H;
  k: H;
  v: H;
  cos: H;
  sin: H;
  mask?: H;
  pastKeys?: H;
  pastValues?: H;
}

/**
 * NemotronAttention between the projections and o_proj: heads split, rotary on q and k, keys/values appended to the
 * cached ones, scaled GQA scores (K/V not repeated), mask, softmax, context. q [b·s, H·d], k and v [b·s, KV·d],
 * cos/sin [b, 1, s, d], mask [b, 1, s, L], past [b, KV, past, d]. Returns context [b·s, H·d] and the full keys and
 * values [b, KV, L, d]. `keyLen` sizes the batch matMuls' choice of op (an estimate where it is not known).
 */
export function attention<H>(ops: TFOps<H>, x: AttentionInputs<H>, shape: AttentionShape, keyLen: number): { context: H; keys: H; values: H } {
  const { batch: b, seq: s, numHeads: heads, kvHeads, headDim: d, rotaryDim, scale } = shape;
  const groups = heads / kvHeads;
  // [b·s, n·d] → [b, n, s, d]; for one token that is a reshape alone.
  const split = (t: H, n: number) => (s === 1 ? reshape(ops, t, [b, n, 1, d]) : transpose(ops, reshape(ops, t, [b, s, n, d]), [0, 2, 1, 3]));
  const query = rotary(ops, split(x.q, heads), x.cos, x.sin, d, rotaryDim, b * heads * s * d);
  let keys = rotary(ops, split(x.k, kvHeads), x.cos, x.sin, d, rotaryDim, b * kvHeads * s * d);
  let values = split(x.v, kvHeads);
  if (x.pastKeys !== undefined) keys = concat(ops, x.pastKeys, keys, 2);
  if (x.pastValues !== undefined) values = concat(ops, x.pastValues, values, 2);
  if (s === 1) return { context: decodingAttention(ops, query, keys, values, x.mask, shape), keys, values };
  // GQA without repeating K/V: head h = kv·groups + g, so [b, H, s, d] is [b, KV, groups·s, d] as is.
  const grouped = reshape(ops, ops.op('Mul', [query, scalar(ops, scale)]), [b, kvHeads, groups * s, d]);
  const macs = b * heads * s * keyLen * d;
  let scores = batchMatMul(ops, grouped, keys, true, macs);
  if (x.mask !== undefined) {
    // The mask [b, 1, s, L] broadcasts over heads, not over [KV, groups·s].
    const masked = ops.op('AddV2', [reshape(ops, scores, [b, heads, s, -1]), x.mask]);
    scores = reshape(ops, masked, [b, kvHeads, groups * s, -1]);
  }
  const context = batchMatMul(ops, ops.op('Softmax', [scores]), values, false, macs);
  const flat = s === 1
    ? reshape(ops, context, [b, heads * d])
    : reshape(ops, transpose(ops, reshape(ops, context, [b, heads, s, d]), [0, 2, 1, 3]), [b * s, heads * d]);
  return { context: flat, keys, values };
}
