/**
 * llama.cpp's lowest-bit writers (ggml-quants.c): the 1-bit i-quants IQ1_S (1.56 bits a weight) and IQ1_M (1.75),
 * the ternary TQ1_0 / TQ2_0, Q1_0 (signs and a mean magnitude) and Q2_0, and the 4-bit floats MXFP4 and NVFP4. Each
 * float step rounded to float32 as C rounds it, so the bytes equal a portable build's; the tests compare them.
 */
import { KVALUES_FP4, e8m0Half, ue4m3Half } from './gguf-iquants';
import { lattice, type Lattice } from './gguf-quantize-lattice';
import { nearestInt } from './gguf-quantize';
import { float32ToF16Bits } from './safetensors';

const f = Math.fround;
const FLT_MAX = 3.4028234663852886e38;
const QK_K = 256;
const DELTA = 0.125;
// The three levels of a 1-bit group shifted up (+) or down (−) by DELTA: x_p and x_m of quantize_row_iq1_*_impl.
const SHIFTED_UP = [-1 + DELTA, DELTA, 1 + DELTA];
const SHIFTED_DOWN = [-1 - DELTA, -DELTA, 1 - DELTA];

/** C's roundf / lroundf: halves away from zero. */
const roundAway = (v: number) => Math.sign(v) * Math.floor(Math.abs(v) + 0.5);

const weight = new Float32Array(32);
const L = new Int8Array(32);
const order = Array.from({ length: 32 }, (_, i) => i);

/**
 * The weights of the n values from x0 (importance × √(σ² + x²), or x² without an importance matrix) into `weight`;
 * returns the largest magnitude.
 */
function weighGroup(values: Float32Array, x0: number, n: number, importance: Float32Array | undefined, sigma2: number): number {
  let max = 0;
  for (let i = 0; i < n; i++) {
    const v = values[x0 + i];
    weight[i] = importance ? f(importance[(x0 + i) % importance.length] * f(Math.sqrt(f(sigma2 + f(v * v))))) : f(v * v);
    if (Math.abs(v) > max) max = Math.abs(v);
  }
  return max;
}

/** Indices 0..n−1 ordered by value, ties in index order (glibc's qsort of these few pairs is a stable merge sort). */
function sortedOrder(values: Float32Array, x0: number, n: number): number[] {
  const idx = order.slice(0, n);
  return idx.sort((a, b) => (values[x0 + a] < values[x0 + b] ? -1 : values[x0 + a] > values[x0 + b] ? 1 : 0));
}

/** The levels of the sorted values split at i1 ≤ i2 (0 below i1, 1 up to i2, 2 after) into L. */
function splitLevels(idx: number[], i1: number, i2: number): void {
  idx.forEach((i, j) => { L[i] = j < i1 ? 0 : j < i2 ? 1 : 2; });
}

/**
 * iq1_find_best_neighbour2: among the neighbours of lattice point u, the grid point nearest the 8 values from x0 at
 * `scale` on the shifted levels `xg` (weighted squared error, the first on ties); its levels into L from k0.
 */
function bestNeighbour(grid: Lattice, u: number, values: Float32Array, x0: number, k0: number, scale: number, xg: number[]): number {
  const at = -grid.map[u] - 1;
  let best = FLT_MAX;
  let index = -1;
  for (let j = 1; j <= grid.neighbours[at]; j++) {
    const n = grid.neighbours[at + j];
    let d2 = 0;
    for (let i = 0; i < 8; i++) {
      const diff = f(f(scale * xg[(grid.points[8 * n + i] - 1) / 2]) - values[x0 + i]);
      d2 = f(d2 + f(f(weight[k0 + i] * diff) * diff));
    }
    if (d2 < best) { best = d2; index = n; }
  }
  if (index < 0) throw new Error('quantize: no grid point near a 1-bit group (non-finite values?)');
  for (let i = 0; i < 8; i++) L[k0 + i] = (grid.points[8 * index + i] - 1) / 2;
  return index;
}

/**
 * The grid indices of a group's points (L from 8k, on the levels `shiftOf(k)`), neighbours for points off the grid;
 * then, if any was, the scale refit to the points chosen (when the fit is positive).
 */
function placeGroup(grid: Lattice, values: Float32Array, x0: number, n: number, scale: number, shiftOf: (k: number) => number[]): { indices: number[]; scale: number } {
  const indices: number[] = [];
  let allOnGrid = true;
  for (let k = 0; k < n / 8; k++) {
    let u = 0;
    for (let j = 0; j < 8; j++) u |= L[8 * k + j] << (2 * j);
    let index = grid.map[u];
    if (index < 0) {
      allOnGrid = false;
      index = bestNeighbour(grid, u, values, x0 + 8 * k, 8 * k, scale, shiftOf(k));
    }
    indices.push(index);
  }
  if (!allOnGrid) {
    let sumQX = 0;
    let sumQ2 = 0;
    indices.forEach((index, k) => {
      const xg = shiftOf(k);
      for (let j = 0; j < 8; j++) {
        const w = weight[8 * k + j];
        const q = xg[(grid.points[8 * index + j] - 1) / 2];
        sumQX = f(sumQX + f(f(w * q) * values[x0 + 8 * k + j]));
        sumQ2 = f(sumQ2 + f(f(w * q) * q));
      }
    });
    if (sumQX > 0 && sumQ2 > 0) scale = f(sumQX / sumQ2);
  }
  if (!(scale >= 0)) throw new Error(`quantize: a 1-bit group's scale came out ${scale}`);
  return { indices, scale };
}

/** σ² of a 256-value block: 2·Σx² / 256. */
function blockSigma2(values: Float32Array, x0: number): number {
  let sum = 0;
  for (let i = 0; i < QK_K; i++) sum = f(sum + f(values[x0 + i] * values[x0 + i]));
  return f(f(2 * sum) / QK_K);
}

/**
 * IQ1_S (quantize_iq1_s; 50 bytes a 256; an importance matrix required): per 32 values each one −1, 0 or +1, all
 * shifted by ±1/8, the split searched exhaustively over the sorted values; four points of the 2048-point grid
 * (index low bytes, then per group a u16 of the top 3 bits of each, a 3-bit scale and the shift's sign).
 */
export function quantizeIQ1_S(values: Float32Array, importance?: Float32Array): Buffer {
  if (!importance) throw new Error('quantize: IQ1_S needs an importance matrix (llama.cpp asserts one)');
  const grid = lattice('IQ1_S');
  const out = Buffer.alloc((values.length / QK_K) * 50);
  const scales = new Float32Array(8);
  const shifts = new Int8Array(8);
  const sumX = new Float32Array(33);
  const sumW = new Float32Array(33);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += QK_K, at += 50) {
    const sigma2 = blockSigma2(values, x0);
    let maxScale = 0;
    for (let ib = 0; ib < 8; ib++) {
      const xb = x0 + 32 * ib;
      scales[ib] = 0;
      shifts[ib] = 1;
      const max = weighGroup(values, xb, 32, importance, sigma2);
      if (max < f(1e-12)) continue;
      const idx = sortedOrder(values, xb, 32);
      for (let j = 0; j < 32; j++) {
        const i = idx[j];
        sumX[j + 1] = f(sumX[j] + f(weight[i] * values[xb + i]));
        sumW[j + 1] = f(sumW[j] + weight[i]);
      }
      let best = -FLT_MAX;
      let scale = max;
      let best1 = -1;
      let best2 = -1;
      let bestShift = 0;
      for (let i1 = 0; i1 <= 32; i1++) {
        for (let i2 = i1; i2 <= 32; i2++) {
          for (const [xs, shift] of [[SHIFTED_UP, 1], [SHIFTED_DOWN, -1]] as const) {
            const sumQX = f(f(f(sumX[i1] * xs[0]) + f(f(sumX[i2] - sumX[i1]) * xs[1])) + f(f(sumX[32] - sumX[i2]) * xs[2]));
            const sumQ2 = f(f(f(f(sumW[i1] * xs[0]) * xs[0]) + f(f(f(sumW[i2] - sumW[i1]) * xs[1]) * xs[1])) + f(f(f(sumW[32] - sumW[i2]) * xs[2]) * xs[2]));
            if (sumQ2 > 0 && f(sumQX * sumQX) > f(best * sumQ2)) {
              scale = f(sumQX / sumQ2);
              best = f(scale * sumQX);
              best1 = i1; best2 = i2; bestShift = shift;
            }
          }
        }
      }
      if (best1 < 0) continue;
      splitLevels(idx, best1, best2);
      if (scale < 0) {
        for (let j = 0; j < 32; j++) L[j] = 2 - L[j];
        scale = -scale;
        bestShift = -bestShift;
      }
      const xs = bestShift === 1 ? SHIFTED_UP : SHIFTED_DOWN;
      const placed = placeGroup(grid, values, xb, 32, scale, () => xs);
      let high = 0;
      placed.indices.forEach((index, k) => {
        out[at + 2 + 4 * ib + k] = index & 255;
        high |= (index >> 8) << (3 * k);
      });
      out.writeUInt16LE(high, at + 34 + 2 * ib);
      scales[ib] = placed.scale;
      shifts[ib] = bestShift;
      if (!(maxScale > placed.scale)) maxScale = placed.scale;
    }
    if (!maxScale) continue;
    const d = f(maxScale / 15);
    out.writeUInt16LE(float32ToF16Bits(f(d * 1.125)), at);
    const id = f(1 / d);
    for (let ib = 0; ib < 8; ib++) {
      let l = Math.max(0, Math.min(7, nearestInt(f(0.5 * f(f(id * scales[ib]) - 1)))));
      if (shifts[ib] === -1) l |= 8;
      out.writeUInt16LE(out.readUInt16LE(at + 34 + 2 * ib) | (l << 12), at + 34 + 2 * ib);
    }
  }
  return out;
}

/** IQ1_M's shift flags in a group's qh byte, by shift pattern (bit 3: first point shifted down; bit 7: second). */
const IQ1M_MASKS = [0x00, 0x80, 0x08, 0x88];
/** IQ1_M's levels for point k of a group with shift pattern s (0 ++, 1 +−, 2 −+, 3 −−). */
const iq1mShift = (s: number, k: number) => ((k === 0 ? s < 2 : s % 2 === 0) ? SHIFTED_UP : SHIFTED_DOWN);

/**
 * IQ1_M (quantize_iq1_m; 56 bytes a 256): per 16 values each −1, 0 or +1, each half of the group with its own
 * ±1/8 shift, the split searched over the sorted values with per-half sums; two grid points (index low bytes, a qh
 * byte of their top bits and shift flags), 3-bit group scales, and the super-scale refit to all of them and stored
 * as f16 in the scales' top nibbles. Without an importance matrix each value is weighted by x².
 */
export function quantizeIQ1_M(values: Float32Array, importance?: Float32Array): Buffer {
  const grid = lattice('IQ1_S');
  const out = Buffer.alloc((values.length / QK_K) * 56);
  const scales = new Float32Array(16);
  const shifts = new Int8Array(16);
  const px = [new Float32Array(17), new Float32Array(17)];
  const pw = [new Float32Array(17), new Float32Array(17)];
  const [p2, m2] = [SHIFTED_UP[2], SHIFTED_DOWN[2]];
  const cp1 = f(f(SHIFTED_UP[0] * SHIFTED_UP[0]) - f(SHIFTED_UP[1] * SHIFTED_UP[1]));
  const cp2 = f(f(SHIFTED_UP[1] * SHIFTED_UP[1]) - f(SHIFTED_UP[2] * SHIFTED_UP[2]));
  const cm1 = f(f(SHIFTED_DOWN[0] * SHIFTED_DOWN[0]) - f(SHIFTED_DOWN[1] * SHIFTED_DOWN[1]));
  const cm2 = f(f(SHIFTED_DOWN[1] * SHIFTED_DOWN[1]) - f(SHIFTED_DOWN[2] * SHIFTED_DOWN[2]));
  const qx = [0, 0, 0, 0];
  const q2 = [0, 0, 0, 0];
  for (let x0 = 0, at = 0; x0 < values.length; x0 += QK_K, at += 56) {
    const sigma2 = blockSigma2(values, x0);
    let maxScale = 0;
    for (let ib = 0; ib < 16; ib++) {
      const xb = x0 + 16 * ib;
      scales[ib] = 0;
      shifts[ib] = 0;
      const max = weighGroup(values, xb, 16, importance, sigma2);
      if (max < f(1e-7)) continue;
      const idx = sortedOrder(values, xb, 16);
      for (let j = 0; j < 16; j++) {
        const i = idx[j];
        const h = i < 8 ? 0 : 1;
        px[h][j + 1] = f(px[h][j] + f(weight[i] * values[xb + i]));
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = f(pw[h][j] + weight[i]);
        pw[1 - h][j + 1] = pw[1 - h][j];
      }
      let best = -FLT_MAX;
      let scale = max;
      let best1 = -1;
      let best2 = -1;
      let bestK = -1;
      for (let i1 = 0; i1 <= 16; i1++) {
        for (let i2 = i1; i2 <= 16; i2++) {
          const halves = [0, 1].map((h) => {
            const sx = f(px[h][i1] + px[h][i2]);
            return {
              up: f(f(px[h][16] * p2) - sx), down: f(f(px[h][16] * m2) - sx),
              up2: f(f(f(f(pw[h][16] * p2) * p2) + f(pw[h][i1] * cp1)) + f(pw[h][i2] * cp2)),
              down2: f(f(f(f(pw[h][16] * m2) * m2) + f(pw[h][i1] * cm1)) + f(pw[h][i2] * cm2)),
            };
          });
          const [a, b] = halves;
          qx[0] = f(a.up + b.up); qx[1] = f(a.up + b.down); qx[2] = f(a.down + b.up); qx[3] = f(a.down + b.down);
          q2[0] = f(a.up2 + b.up2); q2[1] = f(a.up2 + b.down2); q2[2] = f(a.down2 + b.up2); q2[3] = f(a.down2 + b.down2);
          for (let k = 0; k < 4; k++) {
            if (q2[k] > 0 && f(qx[k] * qx[k]) > f(best * q2[k])) {
              scale = f(qx[k] / q2[k]);
              best = f(scale * qx[k]);
              best1 = i1; best2 = i2; bestK = k;
            }
          }
        }
      }
      if (best1 < 0) continue;
      splitLevels(idx, best1, best2);
      if (scale < 0) {
        for (let j = 0; j < 16; j++) L[j] = 2 - L[j];
        scale = -scale;
        bestK = 3 - bestK;
      }
      const placed = placeGroup(grid, values, xb, 16, scale, (k) => iq1mShift(bestK, k));
      out[at + 2 * ib] = placed.indices[0] & 255;
      out[at + 2 * ib + 1] = placed.indices[1] & 255;
      out[at + 32 + ib] = (placed.indices[0] >> 8) | ((placed.indices[1] >> 8) << 4);
      scales[ib] = placed.scale;
      shifts[ib] = bestK;
      if (!(maxScale > placed.scale)) maxScale = placed.scale;
    }
    if (!maxScale) continue;
    let d = f(maxScale / 15);
    const id = f(1 / d);
    let sumQX = 0;
    let sumQ2 = 0;
    const packed = [0, 0, 0, 0];
    for (let ib = 0; ib < 16; ib++) {
      const l = Math.max(0, Math.min(7, nearestInt(f(0.5 * f(f(id * scales[ib]) - 1)))));
      packed[ib >> 2] |= l << (3 * (ib % 4));
      out[at + 32 + ib] |= IQ1M_MASKS[shifts[ib]];
      const xb = x0 + 16 * ib;
      weighGroup(values, xb, 16, importance, sigma2);
      for (let k = 0; k < 2; k++) {
        const xg = iq1mShift(shifts[ib], k);
        const index = out[at + 2 * ib + k] + (((out[at + 32 + ib] << (8 - 4 * k)) & 0x700));
        for (let j = 0; j < 8; j++) {
          const w = weight[8 * k + j];
          const q = f(xg[(grid.points[8 * index + j] - 1) / 2] * (2 * l + 1));
          sumQX = f(sumQX + f(f(w * q) * values[xb + 8 * k + j]));
          sumQ2 = f(sumQ2 + f(f(w * q) * q));
        }
      }
    }
    if (sumQ2 > 0) d = f(sumQX / sumQ2);
    // The f16 super-scale, a nibble in the top of each of the four u16 scale words.
    const s = float32ToF16Bits(f(d * f(1.1125)));
    for (let w = 0; w < 4; w++) out.writeUInt16LE(packed[w] | (((s >> (4 * w)) & 0xf) << 12), at + 48 + 2 * w);
  }
  return out;
}

/** The largest magnitude of n values from x0. */
function absMax(values: Float32Array, x0: number, n: number): number {
  let amax = 0;
  for (let j = 0; j < n; j++) if (Math.abs(values[x0 + j]) > amax) amax = Math.abs(values[x0 + j]);
  return amax;
}

/** round(x / amax) + 1 in {0, 1, 2} for the ternary types (lroundf; id = 1 / amax, 0 for an all-zero block). */
const trit = (v: number, id: number) => roundAway(f(v * id)) + 1;

/**
 * TQ1_0 (quantize_row_tq1_0_ref; 54 bytes a 256): d = max |x| (f16 at the end) and each value's trit (−1, 0, +1),
 * five to a byte as a base-3 fraction of 256 — 32 bytes over the first 160 values, 16 over the next 80, then 4
 * bytes of four over the last 16.
 */
export function quantizeTQ1_0(values: Float32Array): Buffer {
  const out = Buffer.alloc((values.length / QK_K) * 54);
  // `count` trits of values from `from`, `stride` apart, as a base-3 fraction of 256 (a 5th trit of 0 for four).
  const pack = (from: number, stride: number, count: number, id: number) => {
    let q = 0;
    for (let n = 0; n < count; n++) q = q * 3 + trit(values[from + stride * n], id);
    if (count === 4) q *= 3;
    return Math.floor((q * 256 + 242) / 243);
  };
  for (let x0 = 0, at = 0; x0 < values.length; x0 += QK_K, at += 54) {
    const d = absMax(values, x0, QK_K);
    const id = d ? f(1 / d) : 0;
    out.writeUInt16LE(float32ToF16Bits(d), at + 52);
    for (let m = 0; m < 32; m++) out[at + m] = pack(x0 + m, 32, 5, id);
    for (let m = 0; m < 16; m++) out[at + 32 + m] = pack(x0 + 160 + m, 16, 5, id);
    // The first value in the most significant trit.
    for (let j = 0; j < 4; j++) out[at + 48 + j] = pack(x0 + 240 + j, 4, 4, id);
  }
  return out;
}

/** TQ2_0 (quantize_row_tq2_0_ref; 66 bytes a 256): d = max |x| (f16 at the end), trits + 1 as 2-bit fields, four a byte. */
export function quantizeTQ2_0(values: Float32Array): Buffer {
  const out = Buffer.alloc((values.length / QK_K) * 66);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += QK_K, at += 66) {
    const d = absMax(values, x0, QK_K);
    const id = d ? f(1 / d) : 0;
    out.writeUInt16LE(float32ToF16Bits(d), at + 64);
    for (let c = 0; c < 2; c++) {
      for (let m = 0; m < 32; m++) {
        let q = 0;
        for (let n = 0; n < 4; n++) q |= (trit(values[x0 + 128 * c + m + 32 * n], id) & 3) << (2 * n);
        out[at + 32 * c + m] = q;
      }
    }
  }
  return out;
}

/** Q1_0 (quantize_row_q1_0_ref; 18 bytes a 128): d = mean |x| (f16), one bit a value, set where x ≥ 0. */
export function quantizeQ1_0(values: Float32Array): Buffer {
  const out = Buffer.alloc((values.length / 128) * 18);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += 128, at += 18) {
    let sum = 0;
    for (let j = 0; j < 128; j++) sum = f(sum + Math.abs(values[x0 + j]));
    out.writeUInt16LE(float32ToF16Bits(f(sum / 128)), at);
    for (let j = 0; j < 128; j++) if (values[x0 + j] >= 0) out[at + 2 + (j >> 3)] |= 1 << (j & 7);
  }
  return out;
}

/** Q2_0 (quantize_row_q2_0_ref; 18 bytes a 64): d = max |x| (f16), round(x / d) + 1 clamped to 0..3, four a byte. */
export function quantizeQ2_0(values: Float32Array): Buffer {
  const out = Buffer.alloc((values.length / 64) * 18);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += 64, at += 18) {
    const d = absMax(values, x0, 64);
    const id = d > 0 ? f(1 / d) : 0;
    out.writeUInt16LE(float32ToF16Bits(d), at);
    for (let j = 0; j < 64; j++) {
      const q = Math.max(0, Math.min(3, roundAway(f(values[x0 + j] * id)) + 1));
      out[at + 2 + (j >> 2)] |= q << (2 * (j & 3));
    }
  }
  return out;
}

/** best_index_mxfp4: the first code whose value times e is nearest x. */
function nearestFP4(x: number, e: number): number {
  let best = 0;
  let bestErr = Math.abs(f(f(KVALUES_FP4[0] * e) - x));
  for (let i = 1; i < 16; i++) {
    const err = Math.abs(f(f(KVALUES_FP4[i] * e) - x));
    if (err < bestErr) { best = i; bestErr = err; }
  }
  return best;
}

/**
 * MXFP4 (quantize_row_mxfp4_ref; 17 bytes a 32): an e8m0 exponent floor(log2 max |x|) − 2 + 127, then the nearest
 * E2M1 code of each value, the first 16 in the low nibbles.
 */
export function quantizeMXFP4(values: Float32Array): Buffer {
  const out = Buffer.alloc((values.length / 32) * 17);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += 32, at += 17) {
    const amax = absMax(values, x0, 32);
    const e = amax > 0 ? (Math.floor(f(Math.log2(amax))) - 2 + 127) & 255 : 0;
    const d = e8m0Half(e);
    out[at] = e;
    for (let j = 0; j < 16; j++) out[at + 1 + j] = nearestFP4(values[x0 + j], d) | (nearestFP4(values[x0 + 16 + j], d) << 4);
  }
  return out;
}

/** ggml_fp32_to_ue4m3: unsigned e4m3 (bias 7) of a positive x, its mantissa rounded half up; 448 at most. */
function toUE4M3(value: number): number {
  if (!(value > 0)) return 0;
  const x = Math.min(value, 448);
  const bits = new Uint32Array(new Float32Array([x]).buffer)[0];
  let exp = ((bits >>> 23) & 0xff) - 127 + 7;
  if (exp <= 0) {
    const man = Math.min(7, Math.trunc(f(f(x * 512) + 0.5)));
    return man < 1 ? 0 : man;
  }
  if (exp >= 15) return 0x7e;
  let man = ((bits >>> 20) & 7) + ((bits >>> 19) & 1);
  if (man > 7) {
    man = 0;
    if (++exp >= 15) return 0x7e;
  }
  return (exp << 3) | man;
}

/**
 * NVFP4 (quantize_row_nvfp4_ref; 36 bytes a 64): per 16 values a ue4m3 scale of max |x| / 6, then the nearest E2M1
 * codes, eight bytes a 16 (low nibbles its first 8).
 */
export function quantizeNVFP4(values: Float32Array): Buffer {
  const out = Buffer.alloc((values.length / 64) * 36);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += 64, at += 36) {
    for (let s = 0; s < 4; s++) {
      const xb = x0 + 16 * s;
      const ue = toUE4M3(f(absMax(values, xb, 16) / 6));
      out[at + s] = ue;
      const d = ue4m3Half(ue);
      for (let j = 0; j < 8; j++) out[at + 4 + 8 * s + j] = nearestFP4(values[xb + j], d) | (nearestFP4(values[xb + 8 + j], d) << 4);
    }
  }
  return out;
}
