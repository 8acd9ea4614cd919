/**
 * llama.cpp's quantizers as llama-quantize runs them with an importance matrix (`--imatrix`): each value's error
 * weighted by its column's mean squared activation (quantize_row_*_impl in ggml-quants.c: Q2_K, Q3_K, Q4_K, Q5_K,
 * Q6_K, Q4_0, Q5_0, Q5_1), and the non-linear 4-bit IQ4_NL and IQ4_XS (quantize_iq4_nl / quantize_iq4_xs, with or
 * without an importance matrix). Float32 rounding is emulated step by step as in gguf-quantize.ts, so the bytes equal
 * a portable build's; the tests compare them.
 */
import {
  GROUP_MAX_EPS, K_WITH_MINS_BYTES, QK_K, type GGMLWriteType, finishKWithMins, finishQ2_K, finishQ3_K, fitted, makeQkx2Quants,
  makeQpQuants, makeQxQuants, nearestInt, packFiveBits, packQ3Scale, quantizeQ4_0, quantizeQ6_K, quantizeQ8_0, quantizeValues, viaF16,
} from './gguf-quantize';
import { quantizeIQ2_S, quantizeIQ2_XS, quantizeIQ2_XXS, quantizeIQ3_S, quantizeIQ3_XXS } from './gguf-quantize-lattice';
import {
  quantizeIQ1_M, quantizeIQ1_S, quantizeMXFP4, quantizeNVFP4, quantizeQ1_0, quantizeQ2_0, quantizeTQ1_0, quantizeTQ2_0,
} from './gguf-quantize-lowbit';
import { float32ToF16Bits } from './safetensors';

const f = Math.fround;
const NINE_TENTHS = f(-0.9);
const TWENTIETH = f(0.05);

/** Σx² over n values from x0, summed in float32 in order. */
function sumOfSquares(values: Float32Array, x0: number, n: number): number {
  let sum = 0;
  for (let j = 0; j < n; j++) sum = f(sum + f(values[x0 + j] * values[x0 + j]));
  return sum;
}

/** The weights of n values from x0: importance × √(σ² + x²), and their sum. */
function importanceWeights(values: Float32Array, x0: number, n: number, importance: Float32Array, q0: number, sigma2: number,
  weights: Float32Array): number {
  let sum = 0;
  for (let l = 0; l < n; l++) {
    const v = values[x0 + l];
    weights[l] = f(importance[q0 + l] * f(Math.sqrt(f(sigma2 + f(v * v)))));
    sum = f(sum + weights[l]);
  }
  return sum;
}

const groupWeights = new Float32Array(32);
const groupAux = new Uint8Array(32);

/**
 * Q2_K, Q4_K and Q5_K with an importance matrix (quantize_row_q{2,4,5}_K_impl): each group's scale and minimum fit by
 * make_qkx3_quants on importance-weighted errors (37 steps of 0.05 from −0.9), the block's scales and minimums as
 * levels of two super-scales by make_qp_quants (weighted by the groups' total weight), then every value re-levelled.
 */
function quantizeWithMinsWeighted(values: Float32Array, importance: Float32Array, kind: 'Q2_K' | 'Q4_K' | 'Q5_K'): Buffer {
  const groupSize = kind === 'Q2_K' ? 16 : 32;
  const groups = QK_K / groupSize;
  const nmax = kind === 'Q2_K' ? 3 : kind === 'Q4_K' ? 15 : 31;
  const blockBytes = kind === 'Q2_K' ? 84 : K_WITH_MINS_BYTES[kind === 'Q4_K' ? 4 : 5];
  const blocks = values.length / QK_K;
  const out = Buffer.alloc(blocks * blockBytes);
  const L = new Uint8Array(QK_K);
  const [scales, mins, groupTotals] = [new Float32Array(groups), new Float32Array(groups), new Float32Array(groups)];
  const [Ls, Lm] = [new Uint8Array(groups), new Uint8Array(groups)];
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK_K;
    const at = b * blockBytes;
    // Q2_K's σ² is the block's mean square; Q4_K's and Q5_K's twice that.
    const sigma2 = f(f((kind === 'Q2_K' ? 1 : 2) * sumOfSquares(values, x0, QK_K)) / QK_K);
    for (let j = 0; j < groups; j++) {
      const start = x0 + groupSize * j;
      groupTotals[j] = importanceWeights(values, start, groupSize, importance, start % importance.length, sigma2, groupWeights);
      makeQkx2Quants(groupSize, nmax, values, start, groupWeights, L, groupSize * j, groupAux, NINE_TENTHS, TWENTIETH, 36);
      scales[j] = fitted.scale;
      mins[j] = fitted.min;
    }
    const superScale = makeQpQuants(groups, kind === 'Q2_K' ? 15 : 63, scales, Ls, groupTotals);
    const superMin = makeQpQuants(groups, kind === 'Q2_K' ? 15 : 63, mins, Lm, groupTotals);
    if (kind === 'Q2_K') {
      for (let j = 0; j < groups; j++) out[at + j] = Ls[j] | (Lm[j] << 4);
      finishQ2_K(values, x0, out, at, L, viaF16(superScale), viaF16(superMin));
    } else {
      for (let j = 0; j < groups; j++) { Ls[j] = Math.min(63, Ls[j]); Lm[j] = Math.min(63, Lm[j]); }
      finishKWithMins(values, x0, out, at, kind === 'Q4_K' ? 4 : 5, L, Ls, Lm, superScale, superMin);
    }
  }
  return out;
}

/**
 * Q3_K with an importance matrix (quantize_row_q3_K_impl): each group of 16 fit by make_qx_quants on
 * importance-weighted errors, the sixteen scales as 6-bit levels of one super-scale by make_qx_quants again (weighted
 * by the groups' total weight), then 3-bit levels against the stored scales.
 */
function quantizeQ3_KWeighted(values: Float32Array, importance: Float32Array): Buffer {
  const blocks = values.length / QK_K;
  const out = Buffer.alloc(blocks * 110);
  const L = new Int8Array(QK_K);
  const Ls = new Int8Array(16);
  const scales = new Float32Array(16);
  const groupTotals = new Float32Array(16);
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK_K;
    const at = b * 110;
    const sigma2 = f(f(2 * sumOfSquares(values, x0, QK_K)) / QK_K);
    for (let j = 0; j < 16; j++) {
      const start = x0 + 16 * j;
      groupTotals[j] = importanceWeights(values, start, 16, importance, start % importance.length, sigma2, groupWeights);
      scales[j] = makeQxQuants(16, 4, values, start, L, 16 * j, groupWeights, 0);
    }
    const superScale = makeQxQuants(16, 32, scales, 0, Ls, 0, groupTotals, 0);
    for (let j = 0; j < 16; j++) packQ3Scale(out, at + 96, j, Ls[j]);
    finishQ3_K(values, x0, out, at, L, viaF16(superScale));
  }
  return out;
}

/**
 * Q4_0, Q4_1, Q5_0 and Q5_1 with an importance matrix (quantize_row_q{4_0,4_1,5_0,5_1}_impl): σ² is the whole row's mean
 * square; each block of 32 fit by make_qx_quants (Q4_0, Q5_0) or make_qkx3_quants (Q4_1, Q5_1) on importance-weighted errors, its
 * levels stored as found.
 */
function quantizeLegacyWeighted(values: Float32Array, importance: Float32Array, kind: 'Q4_0' | 'Q4_1' | 'Q5_0' | 'Q5_1'): Buffer {
  const rowLength = importance.length;
  const blockBytes = { Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24 }[kind];
  const out = Buffer.alloc((values.length / 32) * blockBytes);
  const signed = new Int8Array(32);
  const unsigned = new Uint8Array(32);
  for (let r0 = 0; r0 < values.length; r0 += rowLength) {
    const sigma2 = f(sumOfSquares(values, r0, rowLength) / rowLength);
    for (let c = 0; c < rowLength; c += 32) {
      const at = ((r0 + c) / 32) * blockBytes;
      importanceWeights(values, r0 + c, 32, importance, c, sigma2, groupWeights);
      if (kind === 'Q5_1' || kind === 'Q4_1') {
        makeQkx2Quants(32, kind === 'Q5_1' ? 31 : 15, values, r0 + c, groupWeights, unsigned, 0, groupAux, NINE_TENTHS, TWENTIETH, 36);
        out.writeUInt16LE(float32ToF16Bits(fitted.scale), at);
        out.writeUInt16LE(float32ToF16Bits(-fitted.min), at + 2);
        if (kind === 'Q5_1') packFiveBits(out, at + 4, unsigned, 0, (l) => l);
        else for (let j = 0; j < 16; j++) out[at + 4 + j] = unsigned[j] | (unsigned[j + 16] << 4);
        continue;
      }
      const d = makeQxQuants(32, kind === 'Q4_0' ? 8 : 16, values, r0 + c, signed, 0, groupWeights, 0);
      out.writeUInt16LE(float32ToF16Bits(d), at);
      if (kind === 'Q5_0') packFiveBits(out, at + 2, signed, 0, (l) => l);
      else for (let j = 0; j < 16; j++) out[at + 2 + j] = signed[j] | (signed[j + 16] << 4);
    }
  }
  return out;
}

/** IQ4_NL's 16 levels (kvalues_iq4nl), ascending. */
const IQ4_LEVELS = Int8Array.of(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);

/** best_index_int8: the level nearest x (the upper one on a tie), by bisection. */
function nearestIQ4Level(x: number): number {
  if (x <= IQ4_LEVELS[0]) return 0;
  if (x >= IQ4_LEVELS[15]) return 15;
  let lo = 0;
  let hi = 15;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (x < IQ4_LEVELS[mid]) hi = mid; else lo = mid;
  }
  return f(x - IQ4_LEVELS[hi - 1]) < f(IQ4_LEVELS[hi] - x) ? hi - 1 : hi;
}

/** Σ w·q·x and Σ w·q² of a block of 32 on IQ4 levels at inverse scale `id` (levels into L from l0 when given). */
function iq4Sums(values: Float32Array, x0: number, weights: Float32Array, id: number, L?: Uint8Array, l0 = 0): [number, number] {
  let sumQX = 0;
  let sumQ2 = 0;
  for (let j = 0; j < 32; j++) {
    const x = values[x0 + j];
    const l = nearestIQ4Level(f(id * x));
    if (L) L[l0 + j] = l;
    const q = IQ4_LEVELS[l];
    const wq = f(weights[j] * q);
    sumQX = f(sumQX + f(wq * x));
    sumQ2 = f(sumQ2 + f(wq * q));
  }
  return [sumQX, sumQ2];
}

/**
 * IQ4_NL (one block of 32, an f16 scale) and IQ4_XS (256 values: eight blocks of 32 whose scales are 6-bit levels of
 * one f16 super-scale), as quantize_row_iq4_nl_impl with 7 tries: each block's scale from the 15 scales near
 * max / −127 that best fit x on the 16 non-linear levels, weighted by x² or importance × √(σ² + x²).
 */
function quantizeIQ4(values: Float32Array, superBlock: 32 | 256, importance?: Float32Array): Buffer {
  const blockBytes = superBlock === 32 ? 18 : 136;
  const quantsAt = superBlock === 32 ? 2 : 8;
  const groups = superBlock / 32;
  const out = Buffer.alloc((values.length / superBlock) * blockBytes);
  const L = new Uint8Array(superBlock);
  const scales = new Float32Array(groups);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += superBlock, at += blockBytes) {
    const sigma2 = f(sumOfSquares(values, x0, superBlock) * f(2 / superBlock));
    let maxScale = 0;
    let amaxScale = 0;
    for (let ib = 0; ib < groups; ib++) {
      const start = x0 + 32 * ib;
      if (importance) importanceWeights(values, start, 32, importance, start % importance.length, sigma2, groupWeights);
      else for (let j = 0; j < 32; j++) groupWeights[j] = f(values[start + j] * values[start + j]);
      let amax = 0;
      let max = 0;
      for (let j = 0; j < 32; j++) {
        const ax = Math.abs(values[start + j]);
        if (ax > amax) { amax = ax; max = values[start + j]; }
      }
      if (amax < GROUP_MAX_EPS) { scales[ib] = 0; continue; }
      let [sumQX, sumQ2] = iq4Sums(values, start, groupWeights, f(1 / f(-max / IQ4_LEVELS[0])), L, 32 * ib);
      let d = sumQ2 > 0 ? f(sumQX / sumQ2) : 0;
      let best = f(d * sumQX);
      for (let step = -7; step <= 7; step++) {
        [sumQX, sumQ2] = iq4Sums(values, start, groupWeights, f((step + IQ4_LEVELS[0]) / max));
        if (sumQ2 > 0 && f(sumQX * sumQX) > f(best * sumQ2)) {
          d = f(sumQX / sumQ2);
          best = f(d * sumQX);
        }
      }
      scales[ib] = d;
      if (Math.abs(d) > amaxScale) { amaxScale = Math.abs(d); maxScale = d; }
    }
    if (groups > 1) {
      const d = f(-maxScale / 32);
      out.writeUInt16LE(float32ToF16Bits(d), at);
      const id = d ? f(1 / d) : 0;
      let high = 0;
      for (let ib = 0; ib < groups; ib++) {
        const l = Math.max(-32, Math.min(31, nearestInt(f(id * scales[ib]))));
        const dl = f(d * l);
        const idl = dl ? f(1 / dl) : 0;
        for (let j = 0; j < 32; j++) L[32 * ib + j] = nearestIQ4Level(f(idl * values[x0 + 32 * ib + j]));
        out[at + 4 + (ib >> 1)] |= ((l + 32) & 0xf) << (4 * (ib & 1));
        high |= ((l + 32) >> 4) << (2 * ib);
      }
      out.writeUInt16LE(high, at + 2);
    } else {
      out.writeUInt16LE(float32ToF16Bits(scales[0]), at);
      const id = scales[0] ? f(1 / scales[0]) : 0;
      for (let j = 0; j < 32; j++) L[j] = nearestIQ4Level(f(id * values[x0 + j]));
    }
    for (let i = 0; i < groups; i++) {
      for (let j = 0; j < 16; j++) out[at + quantsAt + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4);
    }
  }
  return out;
}

/**
 * `values` (whole rows) in `type`, as llama-quantize's ggml_quantize_chunk: with `importance` (one weight per column,
 * its length the row length: the imatrix entry of these rows) the weighted quantizers, without it the reference ones.
 * Q8_0, TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4 and NVFP4 take no importance (llama.cpp ignores it for them).
 */
export function quantizeRows(type: Exclude<GGMLWriteType, 'F32' | 'F16' | 'BF16'>, values: Float32Array, importance?: Float32Array): Buffer {
  if (importance && values.length % importance.length !== 0) {
    throw new Error(`quantizeRows: ${values.length} values are not whole rows of ${importance.length} (the importance vector's length)`);
  }
  switch (type) {
    case 'IQ4_NL': return quantizeIQ4(values, 32, importance);
    case 'IQ4_XS': return quantizeIQ4(values, 256, importance);
    case 'IQ3_XXS': return quantizeIQ3_XXS(values, importance);
    case 'IQ3_S': return quantizeIQ3_S(values, importance);
    case 'IQ2_XXS': return quantizeIQ2_XXS(values, importance);
    case 'IQ2_XS': return quantizeIQ2_XS(values, importance);
    case 'IQ2_S': return quantizeIQ2_S(values, importance);
    case 'IQ1_S': return quantizeIQ1_S(values, importance);
    case 'IQ1_M': return quantizeIQ1_M(values, importance);
    // Quantizers that take no importance weights.
    case 'Q8_0': return quantizeQ8_0(values);
    case 'TQ1_0': return quantizeTQ1_0(values);
    case 'TQ2_0': return quantizeTQ2_0(values);
    case 'Q1_0': return quantizeQ1_0(values);
    case 'Q2_0': return quantizeQ2_0(values);
    case 'MXFP4': return quantizeMXFP4(values);
    case 'NVFP4': return quantizeNVFP4(values);
  }
  if (!importance) return type === 'Q4_0' ? quantizeQ4_0(values) : quantizeValues(type, values);
  switch (type) {
    case 'Q2_K': case 'Q4_K': case 'Q5_K': return quantizeWithMinsWeighted(values, importance, type);
    case 'Q3_K': return quantizeQ3_KWeighted(values, importance);
    case 'Q6_K': return quantizeQ6_K(values, importance);
    case 'Q4_0': case 'Q4_1': case 'Q5_0': case 'Q5_1': return quantizeLegacyWeighted(values, importance, type);
  }
}

/** One matrix's statistics: `sums` (experts × columns, row-major) and each expert's token count. */
export interface ImatrixEntry { sums: Float32Array; counts: Float32Array }

/** An importance matrix: entries by llama.cpp tensor name, the datasets it came from, its chunk count and size. */
export interface ImportanceMatrix {
  entries: Map<string, ImatrixEntry>;
  datasets: string[];
  chunkCount: number;
  chunkSize: number;
  /** Legacy `.dat` files store sums already divided by the count and scaled by the number of calls. */
  legacy?: boolean;
}

/**
 * The per-column weights llama-quantize takes from an entry (load_imatrix): each expert's sums divided by its token
 * count (1 where an expert saw no token); legacy sums divided by the call count.
 */
export function importanceOf(matrix: ImportanceMatrix, name: string): Float32Array | undefined {
  const entry = matrix.entries.get(name);
  if (!entry) return undefined;
  const { sums, counts } = entry;
  if (matrix.legacy) {
    const calls = counts[0];
    return calls > 0 ? Float32Array.from(sums, (v) => Math.fround(v / calls)) : sums.slice();
  }
  const columns = sums.length / counts.length;
  const out = new Float32Array(sums.length);
  for (let e = 0; e < counts.length; e++) {
    for (let i = 0; i < columns; i++) out[e * columns + i] = counts[e] > 0 ? Math.fround(sums[e * columns + i] / counts[e]) : 1;
  }
  return out;
}
