/**
 * llama.cpp's reference quantizers for the types `llama-quantize` writes without an importance matrix: Q4_0, Q4_1, Q5_0,
 * Q5_1, Q8_0 and the k-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (ggml-quants.c, quantize_row_*_ref; the importance-
 * weighted ones and the i-quants are in gguf-quantize-imatrix.ts and gguf-quantize-lattice.ts), and the tensor mixes
 * of its file types (llama-quant.cpp's llama_tensor_get_type). Every step rounds to float32 as C's float arithmetic
 * does (`f` below), so the bytes equal those of a portable (non-FMA) build of llama-quantize; the tests compare them.
 */
import * as fs from 'fs';
import { f16BitsToFloat32, float32ToF16Bits } from './safetensors';

const f = Math.fround;

/** nearest_int: round to nearest, ties to even, by adding 1.5·2²³ in float32. */
export function nearestInt(v: number): number {
  return f(v + 12582912) - 12582912;
}

/** f16 round trip: the value a stored half scale dequantizes to. */
export function viaF16(v: number): { bits: number; value: number } {
  const bits = float32ToF16Bits(v);
  return { bits, value: f16BitsToFloat32(bits) };
}

/** What makeQkx2Quants found: the scale and the (negated) minimum. */
export const fitted = { scale: 0, min: 0 };
/** x − min for the group being fitted (float32, as C's float subtraction). */
const centered = new Float32Array(32);

/**
 * make_qkx2_quants: the scale and (negated) minimum of n values on levels 0..nmax that minimize the weighted squared
 * (or, `useMad`, absolute) error, trying nstep + 1 scales around the range's; levels into L, the fit into `fitted`.
 */
export function makeQkx2Quants(n: number, nmax: number, x: Float32Array, x0: number, weights: Float32Array, L: Uint8Array, l0: number,
  aux: Uint8Array, rmin: number, rdelta: number, nstep: number, useMad = false): void {
  let min = x[x0];
  let max = x[x0];
  let sumW = weights[0];
  let sumX = f(sumW * x[x0]);
  for (let i = 1; i < n; i++) {
    const v = x[x0 + i];
    if (v < min) min = v;
    if (v > max) max = v;
    sumW = f(sumW + weights[i]);
    sumX = f(sumX + f(weights[i] * v));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, l0, l0 + n);
    fitted.scale = 0;
    fitted.min = -min;
    return;
  }
  for (let i = 0; i < n; i++) centered[i] = x[x0 + i] - min;
  let iscale = f(nmax / f(max - min));
  let scale = f(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    let l = f(f(iscale * centered[i]) + 12582912) - 12582912;
    if (l < 0) l = 0; else if (l > nmax) l = nmax;
    L[l0 + i] = l;
    const diff = f(f(f(scale * l) + min) - x[x0 + i]);
    bestError = f(bestError + f(weights[i] * (useMad ? Math.abs(diff) : f(diff * diff))));
  }
  for (let step = 0; step <= nstep; step++) {
    // max − min with the best minimum so far, as llama.cpp does.
    iscale = f(f(f(rmin + f(rdelta * step)) + nmax) / f(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      let l = f(f(iscale * centered[i]) + 12582912) - 12582912;
      if (l < 0) l = 0; else if (l > nmax) l = nmax;
      aux[i] = l;
      const wl = f(weights[i] * l);
      sumL = f(sumL + wl);
      sumL2 = f(sumL2 + f(wl * l));
      sumXL = f(sumXL + f(wl * x[x0 + i]));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (D > 0) {
      let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
      let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = f(sumXL / sumL2);
      }
      let error = 0;
      for (let i = 0; i < n; i++) {
        const diff = f(f(f(thisScale * aux[i]) + thisMin) - x[x0 + i]);
        error = f(error + f(weights[i] * (useMad ? Math.abs(diff) : f(diff * diff))));
      }
      if (error < bestError) {
        for (let i = 0; i < n; i++) L[l0 + i] = aux[i];
        bestError = error;
        scale = thisScale;
        if (thisMin !== min) {
          min = thisMin;
          for (let i = 0; i < n; i++) centered[i] = x[x0 + i] - min;
        }
      }
    }
  }
  fitted.scale = scale;
  fitted.min = -min;
}

/** The first of the n values from x0 with the largest magnitude (0 if all are zero). */
export function largestMagnitude(x: ArrayLike<number>, x0: number, n: number): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[x0 + i]);
    if (ax > amax) { amax = ax; max = x[x0 + i]; }
  }
  return max;
}

/**
 * make_qx_quants with rmse_type 1: the signed scale of n values on levels −nmax..nmax−1 (stored + nmax in L), refined
 * over 18 nearby scales; each value weighted by x², or by `qw` from q0 (an importance matrix's weights).
 */
export function makeQxQuants(n: number, nmax: number, x: Float32Array, x0: number, L: Int8Array, l0: number, qw?: Float32Array, q0 = 0): number {
  const max = largestMagnitude(x, x0, n);
  if (Math.abs(max) < GROUP_MAX_EPS) {
    L.fill(0, l0, l0 + n);
    return 0;
  }
  // Each value's weight w and w·x, once (C computes w*x[i]*l as (w*x[i])*l, so the products are the same floats).
  for (let i = 0; i < n; i++) {
    const v = x[x0 + i];
    const w = qw ? qw[q0 + i] : f(v * v);
    qxWeights[i] = w;
    qxWeighted[i] = f(w * v);
  }
  let iscale = f(-nmax / max);
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    let l = f(f(iscale * x[x0 + i]) + 12582912) - 12582912;
    if (l < -nmax) l = -nmax; else if (l > nmax - 1) l = nmax - 1;
    L[l0 + i] = l + nmax;
    sumLX = f(sumLX + f(qxWeighted[i] * l));
    sumL2 = f(sumL2 + f(f(qxWeights[i] * l) * l));
  }
  let scale = sumL2 ? f(sumLX / sumL2) : 0;
  let best = f(scale * sumLX);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = f(-f(nmax + f(TENTH * is)) / max);
    sumLX = 0;
    sumL2 = 0;
    for (let i = 0; i < n; i++) {
      let l = f(f(iscale * x[x0 + i]) + 12582912) - 12582912;
      if (l < -nmax) l = -nmax; else if (l > nmax - 1) l = nmax - 1;
      sumLX = f(sumLX + f(qxWeighted[i] * l));
      sumL2 = f(sumL2 + f(f(qxWeights[i] * l) * l));
    }
    if (sumL2 > 0 && f(sumLX * sumLX) > f(best * sumL2)) {
      for (let i = 0; i < n; i++) {
        let l = f(f(iscale * x[x0 + i]) + 12582912) - 12582912;
        if (l < -nmax) l = -nmax; else if (l > nmax - 1) l = nmax - 1;
        L[l0 + i] = l + nmax;
      }
      scale = f(sumLX / sumL2);
      best = f(scale * sumLX);
    }
  }
  return scale;
}
const qxWeights = new Float32Array(256);
const qxWeighted = new Float32Array(256);

/**
 * make_q3_quants with do_rmse: the signed scale of n values on levels −nmax..nmax−1 (stored + nmax in L), each level
 * then moved where that lowers the x²-weighted error, for up to five rounds.
 */
function makeQ3Quants(n: number, nmax: number, x: Float32Array, x0: number, L: Int8Array, l0: number): number {
  const max = largestMagnitude(x, x0, n);
  if (Math.abs(max) < GROUP_MAX_EPS) {
    L.fill(0, l0, l0 + n);
    return 0;
  }
  const iscale = f(-nmax / max);
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const v = x[x0 + i];
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * v))));
    L[l0 + i] = l;
    const w = f(v * v);
    sumLX = f(sumLX + f(f(w * v) * l));
    sumL2 = f(sumL2 + f(f(w * l) * l));
  }
  for (let round = 0; round < 5; round++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const v = x[x0 + i];
      const w = f(v * v);
      const old = L[l0 + i];
      let slx = f(sumLX - f(f(w * v) * old));
      if (slx > 0) {
        let sl2 = f(sumL2 - f(f(w * old) * old));
        const level = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(f(v * sl2) / slx))));
        if (level !== old) {
          slx = f(slx + f(f(w * v) * level));
          sl2 = f(sl2 + f(f(w * level) * level));
          if (sl2 > 0 && f(f(slx * slx) * sumL2) > f(f(sumLX * sumLX) * sl2)) {
            L[l0 + i] = level;
            sumLX = slx;
            sumL2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) L[l0 + i] += nmax;
  return sumL2 > 0 ? f(sumLX / sumL2) : 0;
}

/**
 * make_qp_quants: levels 0..nmax of n non-negative values (a block's scales or minimums) under one scale, weighted by
 * `qw`: the best of nine scales near max / nmax, then each level moved while that lowers the weighted error.
 */
export function makeQpQuants(n: number, nmax: number, x: Float32Array, L: Uint8Array, qw: Float32Array): number {
  let max = 0;
  for (let i = 0; i < n; i++) if (!(max > x[i])) max = x[i];
  if (max < GROUP_MAX_EPS) {
    L.fill(0, 0, n);
    return 0;
  }
  let iscale = f(nmax / max);
  for (let i = 0; i < n; i++) L[i] = nearestInt(f(iscale * x[i]));
  const scale = f(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const diff = f(x[i] - f(scale * L[i]));
    bestError = f(bestError + f(f(qw[i] * diff) * diff));
  }
  for (let is = -4; is <= 4; is++) {
    if (is === 0) continue;
    const iscaleIs = f(f(f(TENTH * is) + nmax) / max);
    const scaleIs = f(1 / iscaleIs);
    let error = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.min(nmax, nearestInt(f(iscaleIs * x[i])));
      const diff = f(x[i] - f(scaleIs * l));
      error = f(error + f(f(qw[i] * diff) * diff));
    }
    if (error < bestError) {
      bestError = error;
      iscale = iscaleIs;
    }
  }
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const l = Math.min(nmax, nearestInt(f(iscale * x[i])));
    L[i] = l;
    sumLX = f(sumLX + f(f(qw[i] * x[i]) * l));
    sumL2 = f(sumL2 + f(f(qw[i] * l) * l));
  }
  for (let round = 0; round < 5; round++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const w = qw[i];
      let slx = f(sumLX - f(f(w * x[i]) * L[i]));
      let sl2 = f(sumL2 - f(f(w * L[i]) * L[i]));
      if (slx > 0 && sl2 > 0) {
        const level = Math.min(nmax, nearestInt(f(f(x[i] * sl2) / slx)));
        if (level !== L[i]) {
          slx = f(slx + f(f(w * x[i]) * level));
          sl2 = f(sl2 + f(f(w * level) * level));
          if (f(f(slx * slx) * sumL2) > f(f(sumLX * sumLX) * sl2)) {
            L[i] = level;
            sumLX = slx;
            sumL2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  return sumL2 > 0 ? f(sumLX / sumL2) : 0;
}

export const GROUP_MAX_EPS = f(1e-15);
const TENTH = f(0.1);
export const QK_K = 256;

/**
 * Q5_0 / Q5_1's layout from `qhAt`: the 32 fifth bits (a u32), then 16 bytes of low nibbles, value j with value
 * j + 16 above it; `level` gives each value's 5-bit level.
 */
export function packFiveBits(out: Buffer, qhAt: number, values: ArrayLike<number>, start: number, level: (v: number) => number): void {
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    const lo = level(values[start + j]);
    const hi = level(values[start + 16 + j]);
    out[qhAt + 4 + j] = (lo & 0xf) | ((hi & 0xf) << 4);
    qh |= ((lo & 0x10) >> 4) << j;
    qh |= ((hi & 0x10) >> 4) << (j + 16);
  }
  out.writeUInt32LE(qh >>> 0, qhAt);
}

/** quantize_row_q5_0_ref: per 32 values, d = (the value of largest magnitude) / −16, 5-bit levels trunc(x/d + 16.5). */
export function quantizeQ5_0(values: Float32Array): Buffer {
  const blocks = values.length / 32;
  const out = Buffer.alloc(blocks * 22);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = values[b * 32 + j];
      if (amax < Math.abs(v)) { amax = Math.abs(v); max = v; }
    }
    const d = f(max / -16);
    const id = d ? f(1 / d) : 0;
    const at = b * 22;
    out.writeUInt16LE(float32ToF16Bits(d), at);
    packFiveBits(out, at + 2, values, b * 32, (v) => Math.min(31, Math.trunc(f(f(v * id) + 16.5))));
  }
  return out;
}

/** quantize_row_q5_1_ref: per 32 values, d = (max − min) / 31 and m = min, 5-bit levels trunc((x − m)/d + 0.5). */
/**
 * llama.cpp's quantize_row_q4_1_ref: per 32 values, d = (max − min) / 15 and m = min (both f16), levels
 * trunc((x − min) / d + 0.5) up to 15, the first 16 values in the low nibbles, the next 16 in the high ones.
 */
export function quantizeQ4_1(values: Float32Array): Buffer {
  const blocks = values.length / 32;
  const out = Buffer.alloc(blocks * 20);
  for (let b = 0; b < blocks; b++) {
    let min = Infinity;
    let max = -Infinity;
    for (let j = 0; j < 32; j++) {
      const v = values[b * 32 + j];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const d = f(f(max - min) / 15);
    const id = d ? f(1 / d) : 0;
    const at = b * 20;
    out.writeUInt16LE(float32ToF16Bits(d), at);
    out.writeUInt16LE(float32ToF16Bits(min), at + 2);
    const q = (j: number) => Math.min(15, Math.trunc(f(f(f(values[b * 32 + j] - min) * id) + 0.5)));
    for (let j = 0; j < 16; j++) out[at + 4 + j] = q(j) | (q(j + 16) << 4);
  }
  return out;
}

export function quantizeQ5_1(values: Float32Array): Buffer {
  const blocks = values.length / 32;
  const out = Buffer.alloc(blocks * 24);
  for (let b = 0; b < blocks; b++) {
    let min = Infinity;
    let max = -Infinity;
    for (let j = 0; j < 32; j++) {
      const v = values[b * 32 + j];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const d = f(f(max - min) / 31);
    const id = d ? f(1 / d) : 0;
    const at = b * 24;
    out.writeUInt16LE(float32ToF16Bits(d), at);
    out.writeUInt16LE(float32ToF16Bits(min), at + 2);
    packFiveBits(out, at + 4, values, b * 32, (v) => Math.trunc(f(f(f(v - min) * id) + 0.5)) & 0xff);
  }
  return out;
}

const groupWeights = new Float32Array(32);
const groupAux = new Uint8Array(32);

/**
 * make_qkx2_quants over each group of `size` values of the 256-value block at x0 (weights from `weigh`, steps of 0.1
 * from `rmin`): scales and minimums into the arrays, levels into L; returns the largest scale and minimum (0 if none
 * is positive), from which the super-scales are made.
 */
function fitGroupsWithMins(values: Float32Array, x0: number, size: number, nmax: number, rmin: number, nstep: number, useMad: boolean,
  weigh: (start: number, weights: Float32Array) => void, L: Uint8Array, scales: Float32Array, mins: Float32Array): [number, number] {
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < QK_K / size; j++) {
    weigh(x0 + size * j, groupWeights);
    makeQkx2Quants(size, nmax, values, x0 + size * j, groupWeights, L, size * j, groupAux, rmin, TENTH, nstep, useMad);
    scales[j] = fitted.scale;
    mins[j] = fitted.min;
    if (scales[j] > maxScale) maxScale = scales[j];
    if (mins[j] > maxMin) maxMin = mins[j];
  }
  return [maxScale, maxMin];
}

/**
 * Q4_K and Q5_K (quantize_row_q4_K_ref / q5_K_ref): per 256 values, eight groups of 32 with a scale and a minimum
 * each (fit by make_qkx2_quants, weighted by rms + |x|), those stored as 6-bit multiples of two f16 super-scales,
 * then every value re-levelled against the stored scales.
 */
function quantizeKWithMins(values: Float32Array, bits: 4 | 5): Buffer {
  const nmax = bits === 4 ? 15 : 31;
  const blocks = values.length / QK_K;
  const out = Buffer.alloc(blocks * K_WITH_MINS_BYTES[bits]);
  const L = new Uint8Array(QK_K);
  const scales = new Float32Array(8);
  const mins = new Float32Array(8);
  const ls = new Uint8Array(8);
  const lm = new Uint8Array(8);
  // Weights: the group's rms plus each |x|.
  const weigh = (start: number, weights: Float32Array) => {
    let sumX2 = 0;
    for (let l = 0; l < 32; l++) { const v = values[start + l]; sumX2 = f(sumX2 + f(v * v)); }
    const avX = f(Math.sqrt(f(sumX2 / 32)));
    for (let l = 0; l < 32; l++) weights[l] = f(avX + Math.abs(values[start + l]));
  };
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK_K;
    const [maxScale, maxMin] = bits === 4 ? fitGroupsWithMins(values, x0, 32, 15, -1, 20, false, weigh, L, scales, mins)
      : fitGroupsWithMins(values, x0, 32, nmax, -0.5, 15, false, weigh, L, scales, mins);
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
    for (let j = 0; j < 8; j++) {
      ls[j] = Math.min(63, nearestInt(f(invScale * scales[j])) & 0xff);
      lm[j] = Math.min(63, nearestInt(f(invMin * mins[j])) & 0xff);
    }
    finishKWithMins(values, x0, out, b * K_WITH_MINS_BYTES[bits], bits, L, ls, lm, f(maxScale / 63), f(maxMin / 63));
  }
  return out;
}

export const K_WITH_MINS_BYTES = { 4: 144, 5: 176 } as const;

/**
 * The block of Q4_K / Q5_K at `at` from its groups' 6-bit scales `ls` and minimums `lm` (≤ 63) and the two super-scales
 * (stored as f16): every value re-levelled against the stored scales into L, then packed.
 */
export function finishKWithMins(values: Float32Array, x0: number, out: Buffer, at: number, bits: 4 | 5, L: Uint8Array, ls: Uint8Array,
  lm: Uint8Array, superScale: number, superMin: number): void {
  const nmax = bits === 4 ? 15 : 31;
  const quantsAt = bits === 4 ? 16 : 48;
  const packed = out.subarray(at + 4, at + 16);
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      packed[j] = ls[j];
      packed[j + 4] = lm[j];
    } else {
      packed[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
      packed[j - 4] |= (ls[j] >> 4) << 6;
      packed[j] |= (lm[j] >> 4) << 6;
    }
  }
  const d = viaF16(superScale);
  const dmin = viaF16(superMin);
  out.writeUInt16LE(d.bits, at);
  out.writeUInt16LE(dmin.bits, at + 2);
  for (let j = 0; j < 8; j++) {
    const [sc, m] = j < 4 ? [packed[j] & 63, packed[j + 4] & 63]
      : [(packed[j + 4] & 0xf) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4)];
    const scale = f(d.value * sc);
    if (!scale) continue;
    const dm = f(dmin.value * m);
    for (let i = 0; i < 32; i++) {
      L[32 * j + i] = Math.max(0, Math.min(nmax, nearestInt(f(f(values[x0 + 32 * j + i] + dm) / scale))));
    }
  }
  // Low nibbles: 32 values of group 2k and, above them, 32 of group 2k + 1; Q5_K's fifth bits in qh, two per 64.
  for (let n = 0; n < QK_K; n += 64) {
    for (let j = 0; j < 32; j++) {
      let lo = L[n + j];
      let hi = L[n + j + 32];
      if (bits === 5) {
        const bit = n / 32;
        if (lo > 15) { lo -= 16; out[at + 16 + j] |= 1 << bit; }
        if (hi > 15) { hi -= 16; out[at + 16 + j] |= 2 << bit; }
      }
      out[at + quantsAt + n / 2 + j] = lo | (hi << 4);
    }
  }
}

export function quantizeQ4_K(values: Float32Array): Buffer {
  return quantizeKWithMins(values, 4);
}

export function quantizeQ5_K(values: Float32Array): Buffer {
  return quantizeKWithMins(values, 5);
}

/**
 * The shared frame of Q6_K and Q3_K: for each 256-value block, its sixteen groups of 16 fitted with signed scales by
 * `fit` (levels into L), then `finish` writes the block at `at` knowing the scale of largest magnitude.
 */
function signedGroupBlocks(values: Float32Array, blockBytes: number, fit: (x0: number, L: Int8Array, l0: number) => number,
  finish: (x0: number, at: number, out: Buffer, L: Int8Array, scales: Float32Array, maxScale: number) => void): Buffer {
  const blocks = values.length / QK_K;
  const out = Buffer.alloc(blocks * blockBytes);
  const L = new Int8Array(QK_K);
  const scales = new Float32Array(16);
  for (let b = 0; b < blocks; b++) {
    for (let g = 0; g < 16; g++) scales[g] = fit(b * QK_K + 16 * g, L, 16 * g);
    finish(b * QK_K, b * blockBytes, out, L, scales, largestMagnitude(scales, 0, 16));
  }
  return out;
}

/**
 * Q6_K (quantize_row_q6_K_ref; with `importance`, quantize_row_q6_K_impl): per 256 values, sixteen groups of 16 with a
 * signed scale each (make_qx_quants, weighted by x² or by the importance), those as int8 multiples of one f16
 * super-scale, then 6-bit levels (−32..31) against the stored scales. `importance`: a weight per column of the rows.
 */
export function quantizeQ6_K(values: Float32Array, importance?: Float32Array): Buffer {
  const fit = (x0: number, L: Int8Array, l0: number) => makeQxQuants(16, 32, values, x0, L, l0, importance, importance && x0 % importance.length);
  return signedGroupBlocks(values, 210, fit, (x0, at, out, L, scales, maxScale) => {
    if (Math.abs(maxScale) < GROUP_MAX_EPS) return; // an all-zero block: d = 0 and zero bytes
    const iscale = f(-128 / maxScale);
    const d = viaF16(f(1 / iscale));
    out.writeUInt16LE(d.bits, at + 208);
    for (let g = 0; g < 16; g++) {
      const stored = (Math.min(127, nearestInt(f(iscale * scales[g]))) << 24) >> 24; // as int8
      out.writeInt8(stored, at + 192 + g);
      const scale = f(d.value * stored);
      if (!scale) continue;
      for (let i = 0; i < 16; i++) {
        L[16 * g + i] = Math.max(-32, Math.min(31, nearestInt(f(values[x0 + 16 * g + i] / scale)))) + 32;
      }
    }
    // ql: low nibbles of four 32-value runs, two to a byte; qh: their top two bits, four to a byte; per 128 values.
    for (let n = 0; n < QK_K; n += 128) {
      const ql = at + n / 2;
      const qh = at + 128 + n / 4;
      for (let l = 0; l < 32; l++) {
        const [q1, q2, q3, q4] = [L[n + l], L[n + l + 32], L[n + l + 64], L[n + l + 96]];
        out[ql + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
        out[ql + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
        out[qh + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    }
  });
}

/** Four 2-bit levels to a byte: per 128 values, byte l holds values l, l + 32, l + 64 and l + 96 (Q2_K, Q3_K). */
export function packTwoBits(out: Buffer, at: number, L: Int8Array | Uint8Array): void {
  for (let n = 0; n < QK_K; n += 128) {
    for (let l = 0; l < 32; l++) out[at + n / 4 + l] = L[n + l] | (L[n + l + 32] << 2) | (L[n + l + 64] << 4) | (L[n + l + 96] << 6);
  }
}

/**
 * Q2_K (quantize_row_q2_K_ref): per 256 values, sixteen groups of 16 with a scale and a minimum (make_qkx2_quants on
 * 2-bit levels, weighted by |x|, absolute error), both as 4-bit multiples of two f16 super-scales.
 */
export function quantizeQ2_K(values: Float32Array): Buffer {
  const blocks = values.length / QK_K;
  const out = Buffer.alloc(blocks * 84);
  const L = new Uint8Array(QK_K);
  const scales = new Float32Array(16);
  const mins = new Float32Array(16);
  const weigh = (start: number, weights: Float32Array) => { for (let l = 0; l < 16; l++) weights[l] = Math.abs(values[start + l]); };
  for (let b = 0; b < blocks; b++) {
    const x0 = b * QK_K;
    const at = b * 84;
    const [maxScale, maxMin] = fitGroupsWithMins(values, x0, 16, 3, -0.5, 15, true, weigh, L, scales, mins);
    let d = viaF16(0);
    if (maxScale > 0) {
      const iscale = f(15 / maxScale);
      for (let j = 0; j < 16; j++) out[at + j] = nearestInt(f(iscale * scales[j])) & 0xff;
      d = viaF16(f(maxScale / 15));
    }
    let dmin = viaF16(0);
    if (maxMin > 0) {
      const iscale = f(15 / maxMin);
      for (let j = 0; j < 16; j++) out[at + j] |= (nearestInt(f(iscale * mins[j])) << 4) & 0xff;
      dmin = viaF16(f(maxMin / 15));
    }
    finishQ2_K(values, x0, out, at, L, d, dmin);
  }
  return out;
}

/** The Q2_K block at `at` from its packed 4-bit scales and minimums and its super-scales: levels against them, packed. */
export function finishQ2_K(values: Float32Array, x0: number, out: Buffer, at: number, L: Uint8Array, d: { bits: number; value: number },
  dmin: { bits: number; value: number }): void {
  out.writeUInt16LE(d.bits, at + 80);
  out.writeUInt16LE(dmin.bits, at + 82);
  for (let j = 0; j < 16; j++) {
    const scale = f(d.value * (out[at + j] & 0xf));
    if (!scale) continue;
    const dm = f(dmin.value * (out[at + j] >> 4));
    for (let i = 0; i < 16; i++) L[16 * j + i] = Math.max(0, Math.min(3, nearestInt(f(f(values[x0 + 16 * j + i] + dm) / scale))));
  }
  packTwoBits(out, at + 16, L);
}

/**
 * Q3_K (quantize_row_q3_K_ref): per 256 values, sixteen groups of 16 with a signed scale (make_q3_quants), those as
 * 6-bit multiples of one f16 super-scale; 3-bit levels, the high bit of each in hmask.
 */
export function quantizeQ3_K(values: Float32Array): Buffer {
  return signedGroupBlocks(values, 110, (x0, L, l0) => makeQ3Quants(16, 4, values, x0, L, l0), (x0, at, out, L, scales, maxScale) => {
    const packed = at + 96;
    let d = viaF16(0);
    if (maxScale) {
      const iscale = f(-32 / maxScale);
      for (let j = 0; j < 16; j++) {
        packQ3Scale(out, packed, j, Math.max(-32, Math.min(31, (nearestInt(f(iscale * scales[j])) << 24) >> 24)) + 32);
      }
      d = viaF16(f(1 / iscale));
    }
    finishQ3_K(values, x0, out, at, L, d);
  });
}

/** Group j's 6-bit scale level l (0..63) into Q3_K's 12 scale bytes from `packed`: low nibbles, then 2-bit tops. */
export function packQ3Scale(out: Buffer, packed: number, j: number, l: number): void {
  if (j < 8) out[packed + j] = l & 0xf;
  else out[packed + j - 8] |= (l & 0xf) << 4;
  out[packed + 8 + (j % 4)] |= (l >> 4) << (2 * Math.floor(j / 4));
}

/**
 * The Q3_K block at `at` from its packed 6-bit scales and its super-scale: 3-bit levels against them (into L), the
 * high bit of each in hmask.
 */
export function finishQ3_K(values: Float32Array, x0: number, out: Buffer, at: number, L: Int8Array, d: { bits: number; value: number }): void {
  const packed = at + 96;
  out.writeUInt16LE(d.bits, at + 108);
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? out[packed + j] & 0xf : out[packed + j - 8] >> 4;
    const sc = (low | (((out[packed + 8 + (j % 4)] >> (2 * Math.floor(j / 4))) & 3) << 4)) - 32;
    const scale = f(d.value * sc);
    if (!scale) continue;
    for (let i = 0; i < 16; i++) L[16 * j + i] = Math.max(-4, Math.min(3, nearestInt(f(values[x0 + 16 * j + i] / scale)))) + 4;
  }
  // hmask: the high bit of value j in bit j / 32 of byte j % 32.
  for (let j = 0; j < QK_K; j++) {
    if (L[j] > 3) {
      out[at + (j % 32)] |= 1 << Math.floor(j / 32);
      L[j] -= 4;
    }
  }
  packTwoBits(out, at + 32, L);
}

/** A tensor type that `writeGGUF` writes. */
export type GGMLWriteType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_1' | 'Q5_0' | 'Q5_1' | 'Q2_K' | 'Q3_K' | 'Q4_K' | 'Q5_K' | 'Q6_K' | 'IQ4_NL' | 'IQ4_XS' | 'IQ3_XXS' | 'IQ3_S' | 'IQ2_XXS' | 'IQ2_XS' | 'IQ2_S'
  | 'IQ1_S' | 'IQ1_M' | 'TQ1_0' | 'TQ2_0' | 'Q1_0' | 'Q2_0' | 'MXFP4' | 'NVFP4';

/** ggml's type ids and block lengths of the types written. */
export const GGML_WRITE_TYPES: Record<GGMLWriteType, { id: number; blockValues: number }> = {
  F32: { id: 0, blockValues: 1 }, F16: { id: 1, blockValues: 1 }, BF16: { id: 30, blockValues: 1 }, Q4_0: { id: 2, blockValues: 32 },
  Q4_1: { id: 3, blockValues: 32 }, Q5_0: { id: 6, blockValues: 32 },
  Q5_1: { id: 7, blockValues: 32 }, Q8_0: { id: 8, blockValues: 32 }, Q2_K: { id: 10, blockValues: QK_K }, Q3_K: { id: 11, blockValues: QK_K },
  Q4_K: { id: 12, blockValues: QK_K }, Q5_K: { id: 13, blockValues: QK_K },
  Q6_K: { id: 14, blockValues: QK_K }, IQ4_NL: { id: 20, blockValues: 32 }, IQ4_XS: { id: 23, blockValues: QK_K },
  IQ3_XXS: { id: 18, blockValues: QK_K }, IQ3_S: { id: 21, blockValues: QK_K },
  IQ2_XXS: { id: 16, blockValues: QK_K }, IQ2_XS: { id: 17, blockValues: QK_K }, IQ2_S: { id: 22, blockValues: QK_K },
  IQ1_S: { id: 19, blockValues: QK_K }, IQ1_M: { id: 29, blockValues: QK_K }, TQ1_0: { id: 34, blockValues: QK_K }, TQ2_0: { id: 35, blockValues: QK_K },
  MXFP4: { id: 39, blockValues: 32 }, NVFP4: { id: 40, blockValues: 64 }, Q1_0: { id: 41, blockValues: 128 }, Q2_0: { id: 42, blockValues: 64 },
};

/**
 * llama-quantize's file types written here — every one it has (COPY apart, see quantizeGGUF): the legacy types Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, the float ones F16, BF16, F32 (no per-tensor rules for these three), the k-quant mixes,
 * IQ4_NL, IQ4_XS, IQ3_S, IQ3_M, TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4_MOE, and, only with an importance matrix (their IQ1 /
 * IQ2 / IQ3_XXS / Q2_K tensors need one), Q2_K_S, IQ3_XS, IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ1_S and IQ1_M — with
 * llama.cpp's LLAMA_FTYPE_* number and default type. (saveGGUF writes F32, F16, Q8_0 and Q4_0 as llama.cpp's converter
 * does instead: see CONVERTER_TYPES.)
 */
export const QUANT_MIXES = {
  F32: { fileType: 0, base: 'F32' }, F16: { fileType: 1, base: 'F16' }, BF16: { fileType: 32, base: 'BF16' },
  Q4_0: { fileType: 2, base: 'Q4_0' }, Q4_1: { fileType: 3, base: 'Q4_1' }, Q8_0: { fileType: 7, base: 'Q8_0' },
  Q5_0: { fileType: 8, base: 'Q5_0' }, Q5_1: { fileType: 9, base: 'Q5_1' },
  Q2_K: { fileType: 10, base: 'Q2_K' }, Q3_K_S: { fileType: 11, base: 'Q3_K' }, Q3_K_M: { fileType: 12, base: 'Q3_K' },
  Q3_K_L: { fileType: 13, base: 'Q3_K' }, Q4_K_S: { fileType: 14, base: 'Q4_K' }, Q4_K_M: { fileType: 15, base: 'Q4_K' },
  Q5_K_S: { fileType: 16, base: 'Q5_K' }, Q5_K_M: { fileType: 17, base: 'Q5_K' }, Q6_K: { fileType: 18, base: 'Q6_K' },
  Q2_K_S: { fileType: 21, base: 'Q2_K' }, IQ4_NL: { fileType: 25, base: 'IQ4_NL' }, IQ4_XS: { fileType: 30, base: 'IQ4_XS' },
  IQ3_XS: { fileType: 22, base: 'IQ3_S' }, IQ3_S: { fileType: 26, base: 'IQ3_S' }, IQ3_M: { fileType: 27, base: 'IQ3_S' },
  IQ3_XXS: { fileType: 23, base: 'IQ3_XXS' }, IQ2_XXS: { fileType: 19, base: 'IQ2_XXS' }, IQ2_XS: { fileType: 20, base: 'IQ2_XS' },
  IQ2_S: { fileType: 28, base: 'IQ2_XS' }, IQ2_M: { fileType: 29, base: 'IQ2_S' }, IQ1_S: { fileType: 24, base: 'IQ1_S' },
  IQ1_M: { fileType: 31, base: 'IQ1_M' }, TQ1_0: { fileType: 36, base: 'TQ1_0' }, TQ2_0: { fileType: 37, base: 'TQ2_0' },
  MXFP4_MOE: { fileType: 38, base: 'MXFP4' }, Q1_0: { fileType: 40, base: 'Q1_0' }, Q2_0: { fileType: 41, base: 'Q2_0' },
} as const satisfies Record<string, { fileType: number; base: GGMLWriteType }>;
export type GGUFQuantMix = keyof typeof QUANT_MIXES;

/** The 1- and 2-bit i-quant mixes, which llama.cpp treats apart. */
const IQ2_MIXES: GGUFQuantMix[] = ['IQ2_XXS', 'IQ2_XS', 'IQ2_S', 'IQ2_M', 'IQ1_S', 'IQ1_M'];
/** The ternary mixes and Q2_0, whose token embedding is Q4_K. */
const TERNARY_MIXES: GGUFQuantMix[] = ['TQ1_0', 'TQ2_0', 'Q2_0'];

export function isQuantMix(type: string): type is GGUFQuantMix {
  return Object.prototype.hasOwnProperty.call(QUANT_MIXES, type);
}

/** The types saveGGUF writes as llama.cpp's convert_hf_to_gguf.py does (every matrix in the type), not as llama-quantize. */
export const CONVERTER_TYPES = ['F32', 'F16', 'Q8_0', 'Q4_0'] as const;

/** Whether saveGGUF makes file type `type` as llama-quantize does (from the F32 file), rather than as the converter. */
export function isLlamaQuantizeMix(type: string): type is GGUFQuantMix {
  return isQuantMix(type) && !(CONVERTER_TYPES as readonly string[]).includes(type);
}

/** llama-quantize's order of tensors (llama_model_loader's weights_map): by layer (others first), then by name. */
export function compareTensorNames(a: string, b: string): number {
  const layer = (name: string) => { const m = /^blk\.(-?\d+)\./.exec(name); return m ? Number(m[1]) : -1; };
  const [la, lb] = [layer(a), layer(b)];
  if (la !== lb) return la - lb;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** tensor_allows_quantization for the tensors of Nemotron and NemotronH files: matrices named *weight, not norms. */
function allowsQuantization(name: string, shape: number[]): boolean {
  const dims = shape.length - shape.findIndex((d, i) => d > 1 || i === shape.length - 1);
  return dims >= 2 && name.endsWith('weight') && !name.includes('_norm.weight') && !name.includes('ffn_gate_inp.weight')
    && !name.includes('ssm_conv1d');
}

/**
 * The tensor types llama-quantize chooses for a file type `mix` (llama_tensor_get_type without overrides;
 * `hasImportance`: with an importance matrix): the base type, more bits for attn_v, attn_output and ffn_down (in the
 * layers `use_more_bits` picks for the Q4/Q5 _M mixes, the first ones for Q4_K_S and Q3_K_M, all of them for Q3_K_L
 * and Q2_K, by the model's GQA ratio for Q2_K's attn_v), fewer for the IQ3_XS / IQ3_XXS attention, the output matrix
 * (or the tied embedding) in Q6_K (Q5_K below 3 bits), the 2-bit mixes' own branch, its rules for 8-expert models, and
 * its fallbacks for rows that are not whole 256-value blocks (Q2_K, Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1,
 * Q6_K → Q8_0, the i-quants → IQ4_NL, then F16). `model.gqa`: heads / KV heads of the first layer (0 when it has no attention), as llama.cpp's n_gqa(). `tensors` as the F32 file has them
 * (numpy-order shapes); returned in llama-quantize's order (`inGivenOrder`: theirs) with each one's type, tensors it
 * leaves alone unchanged.
 */
export function quantizationMix<T extends { name: string; shape: number[]; type: string }>(mix: GGUFQuantMix, tensors: T[],
  model: { layerCount: number; expertCount: number; gqa: number }, hasImportance = false, overrides: TensorTypeOverrides = {}, inGivenOrder = false): T[] {
  // llama-quantize's order (by name), or with --keep-split the shards' own (shard, then offset): the rules count in it.
  const sorted = inGivenOrder ? tensors.slice() : tensors.slice().sort((a, b) => compareTensorNames(a.name, b.name));
  const isAttnV = (name: string) => /attn_(qkv|kv_b|v)\.weight/.test(name);
  const attentionValueCount = sorted.filter((t) => isAttnV(t.name)).length;
  const tied = !sorted.some((t) => t.name === 'output.weight');
  const useMoreBits = (i: number, n: number) => i < Math.trunc(n / 8) || i >= Math.trunc((7 * n) / 8) || (i - Math.trunc(n / 8)) % 3 === 2;
  const experts = Math.max(1, model.expertCount);
  let attentionValueIndex = 0;
  let ffnDownIndex = 0;
  let ffnUpIndex = 0;
  const layerOf = (counter: number, name: string): number => {
    if (experts <= 1) return counter;
    const m = /^blk\.(\d+)\./.exec(name);
    if (!m) throw new Error(`quantizationMix: cannot find the layer of ${name}`);
    return Number(m[1]);
  };
  // The mix's rules for one tensor (llama_tensor_get_type_impl; its counters advance only for tensors it decides).
  const ruleType = (t: T, columns: number): GGMLWriteType => {
    let type: GGMLWriteType = QUANT_MIXES[mix].base;
    const lowBits = mix === 'IQ3_XXS' || IQ2_MIXES.includes(mix);
    if (t.name === 'output.weight' || (tied && t.name === 'token_embd.weight')) {
      type = overrides.outputTensorType ?? (mix === 'MXFP4_MOE' || mix === 'Q8_0' || columns % GGML_WRITE_TYPES[type].blockValues !== 0 ? 'Q8_0' : lowBits ? 'Q5_K' : 'Q6_K');
    } else if (mix === 'MXFP4_MOE') {
      // Experts' stacked matrices in MXFP4, every other matrix Q8_0.
      type = t.shape.length === 3 && t.shape[0] > 1 ? 'MXFP4' : 'Q8_0';
    } else if (t.name === 'token_embd.weight') {
      if (mix === 'IQ2_XXS' || mix === 'IQ2_XS' || mix === 'IQ1_S' || mix === 'IQ1_M') type = 'Q2_K';
      else if (mix === 'IQ2_S' || mix === 'IQ2_M' || mix === 'IQ3_XXS') type = 'IQ3_S';
      else if (TERNARY_MIXES.includes(mix)) type = 'Q4_K';
    } else if (IQ2_MIXES.includes(mix)) {
      // The 1- and 2-bit mixes' own rules (llama.cpp's first branch for them): no 8-expert Q8_0, ffn_down by its count.
      const wider = mix === 'IQ2_S' || mix === 'IQ2_M' ? 'IQ3_S' : 'Q2_K';
      if (isAttnV(t.name)) {
        type = model.gqa >= 4 || experts >= 4 ? 'Q4_K' : wider;
        attentionValueIndex++;
      } else if (experts === 8 && t.name.includes('attn_k.weight')) {
        type = 'Q4_K';
      } else if (t.name.includes('ffn_down')) {
        if (ffnDownIndex < Math.trunc(model.layerCount / 8)) type = wider;
        ffnDownIndex++;
      } else if (t.name.includes('attn_output.weight')) {
        if (experts === 8) type = 'Q5_K';
        else if (mix === 'IQ1_S' || mix === 'IQ1_M') type = 'IQ2_XXS';
        else if (wider === 'IQ3_S') type = 'IQ3_S';
      }
    } else if (isAttnV(t.name)) {
      if (mix === 'Q2_K') type = model.gqa >= 4 ? 'Q4_K' : 'Q3_K';
      else if (mix === 'Q2_K_S' && model.gqa >= 4) type = 'Q4_K';
      else if (mix === 'IQ3_XXS') type = model.gqa >= 4 ? 'Q4_K' : hasImportance ? 'IQ3_XXS' : 'IQ3_S';
      else if ((mix === 'IQ3_XS' || mix === 'IQ3_S') && model.gqa >= 4) type = 'Q4_K';
      else if (mix === 'IQ3_M') type = 'Q4_K';
      else if ((mix === 'IQ4_NL' || mix === 'IQ4_XS') && model.gqa >= 4) type = 'Q5_K';
      else if (mix === 'Q3_K_M') type = attentionValueIndex < 2 ? 'Q5_K' : 'Q4_K';
      else if (mix === 'Q3_K_L') type = 'Q5_K';
      else if ((mix === 'Q4_K_M' || mix === 'Q5_K_M') && useMoreBits(attentionValueIndex, attentionValueCount)) type = 'Q6_K';
      else if (mix === 'Q4_K_S' && attentionValueIndex < 4) type = 'Q5_K';
      if (experts === 8) type = 'Q8_0';
      attentionValueIndex++;
    } else if (t.name.includes('attn_k.weight')) {
      if (experts === 8) type = 'Q8_0';
      else if (mix === 'IQ3_XS') type = 'IQ3_XXS';
      else if (mix === 'IQ3_XXS') type = 'IQ2_S';
    } else if (t.name.includes('attn_q.weight')) {
      if (mix === 'IQ3_XS') type = 'IQ3_XXS';
      else if (mix === 'IQ3_XXS') type = 'IQ2_S';
    } else if (t.name.includes('ffn_up')) {
      const layer = layerOf(ffnUpIndex, t.name);
      const n = model.layerCount;
      if (mix === 'IQ3_XS' && layer >= Math.trunc(n / 8) && layer < Math.trunc((7 * n) / 8)) type = 'IQ3_XXS';
      ffnUpIndex++;
    } else if (t.name.includes('ffn_down')) {
      const layer = layerOf(ffnDownIndex, t.name);
      const n = model.layerCount;
      if (mix === 'Q2_K') type = 'Q3_K';
      else if (mix === 'Q2_K_S' && layer < Math.trunc(n / 8)) type = 'Q4_K';
      else if (mix === 'IQ3_XXS' && !hasImportance) type = layer < Math.trunc(n / 8) ? 'Q4_K' : 'Q3_K';
      else if ((mix === 'IQ4_NL' || mix === 'IQ4_XS') && layer < Math.trunc(n / 8) && !hasImportance) type = 'Q5_K';
      else if (mix === 'IQ3_M' && (layer < Math.trunc(n / 8) || (experts === 8 && useMoreBits(layer, n)))) type = 'Q4_K';
      else if (mix === 'Q3_K_M') type = layer < Math.trunc(n / 16) ? 'Q5_K' : 'Q4_K';
      else if (mix === 'Q3_K_L') type = 'Q5_K';
      else if ((mix === 'Q4_K_M' || mix === 'Q5_K_M') && useMoreBits(layer, n)) type = 'Q6_K';
      else if (mix === 'Q4_K_S' && layer < Math.trunc(n / 8)) type = 'Q5_K';
      // With an importance matrix only, so that a Q4_0 / Q5_0 file without one stays as it always was.
      else if ((mix === 'Q4_0' || mix === 'Q5_0') && hasImportance && layer < Math.trunc(n / 8)) type = mix === 'Q4_0' ? 'Q4_1' : 'Q5_1';
      ffnDownIndex++;
    } else if (t.name.includes('attn_output.weight')) {
      if (experts === 8) {
        if (['Q2_K', 'Q3_K_S', 'Q3_K_M', 'Q4_K_S', 'Q4_K_M', 'IQ4_NL', 'IQ4_XS', 'IQ3_XS', 'IQ3_XXS', 'IQ3_S', 'IQ3_M'].includes(mix)) type = 'Q5_K';
      } else if (mix === 'Q2_K') type = 'Q3_K';
      else if (mix === 'Q3_K_M') type = 'Q4_K';
      else if (mix === 'Q3_K_L') type = 'Q5_K';
      else if (mix === 'IQ3_M') type = 'Q4_K';
      else if (mix === 'IQ3_XXS') type = 'IQ3_S';
    }
    return type;
  };
  const manual = (overrides.tensorTypes ?? []).map(([pattern, type]) => [typeof pattern === 'string' ? new RegExp(pattern.toLowerCase()) : pattern, type] as const);
  return sorted.map((t) => {
    if (!allowsQuantization(t.name, t.shape) || (overrides.leaveOutputTensor && t.name === 'output.weight')) return t;
    // llama_tensor_get_type: the embedding and output types given, as given; then a pattern's type, or the base
    // type alone (--pure), or the mix's rules; then the fallback for rows that are not whole blocks.
    if (overrides.tokenEmbeddingType && t.name === 'token_embd.weight') return { ...t, type: overrides.tokenEmbeddingType };
    if (overrides.outputTensorType && t.name === 'output.weight') return { ...t, type: overrides.outputTensorType };
    // F16, BF16 and F32 files: every other matrix in that type; no rules, patterns or fallbacks (llama.cpp applies
    // those only when the file type is a quantized one).
    if (FLOAT_TYPES.includes(QUANT_MIXES[mix].base)) return { ...t, type: QUANT_MIXES[mix].base };
    const columns = t.shape[t.shape.length - 1];
    let type = manual.find(([pattern]) => pattern.test(t.name))?.[1] ?? (overrides.pure ? QUANT_MIXES[mix].base : ruleType(t, columns));
    if (columns % GGML_WRITE_TYPES[type].blockValues !== 0) {
      const fallback = FALLBACKS[type] ?? (GGML_WRITE_TYPES[type].blockValues <= 32 ? type : undefined);
      if (!fallback) throw new Error(`quantize: ${t.name}'s rows of ${columns} are not whole ${type} blocks of ${GGML_WRITE_TYPES[type].blockValues}, and llama.cpp has no fallback type for ${type}`);
      type = columns % GGML_WRITE_TYPES[fallback].blockValues === 0 ? fallback : 'F16';
    }
    return { ...t, type };
  });
}

/**
 * llama-quantize's per-tensor options: `pure` (--pure: every matrix in the mix's base type, no rules),
 * `outputTensorType` / `tokenEmbeddingType` (--output-tensor-type / --token-embedding-type; the output type also
 * goes to a tied embedding), `tensorTypes` (--tensor-type PATTERN=TYPE: the first pattern found in a tensor's name —
 * a regular expression, lower-cased when given as a string, as llama-quantize lower-cases it — gives its type) and
 * `leaveOutputTensor` (--leave-output-tensor: output.weight as it is).
 */
export interface TensorTypeOverrides {
  pure?: boolean; outputTensorType?: GGMLWriteType; tokenEmbeddingType?: GGMLWriteType;
  tensorTypes?: Array<[string | RegExp, GGMLWriteType]>; leaveOutputTensor?: boolean;
}

const FLOAT_TYPES: GGMLWriteType[] = ['F32', 'F16', 'BF16'];

/** A ggml type name as llama-quantize takes one (any case), among those written here. */
export function parseGGMLType(value: string): GGMLWriteType {
  const type = Object.keys(GGML_WRITE_TYPES).find((t) => t.toLowerCase() === value.toLowerCase());
  if (!type) throw new Error(`${value}: expected a tensor type written here (${Object.keys(GGML_WRITE_TYPES).join(', ').toLowerCase()})`);
  return type as GGMLWriteType;
}

/** llama-quantize's --tensor-type PATTERN=TYPE (the pattern lower-cased later, by quantizationMix). */
export function parseTensorType(value: string): [string, GGMLWriteType] {
  const at = value.indexOf('=');
  if (at <= 0 || at === value.length - 1) throw new Error(`--tensor-type ${value}: expected PATTERN=TYPE, e.g. attn_v=q8_0`);
  return [value.slice(0, at), parseGGMLType(value.slice(at + 1))];
}

/** llama-quantize's --tensor-type-file: PATTERN=TYPE entries separated by spaces or newlines, in order. */
export function readTensorTypeFile(file: string): Array<[string, GGMLWriteType]> {
  if (!fs.existsSync(file)) throw new Error(`--tensor-type-file ${file}: no such file`);
  return fs.readFileSync(file, 'utf8').split(/\s+/).filter((entry) => entry !== '').map(parseTensorType);
}

/** tensor_type_fallback: the type a tensor whose rows are not whole blocks gets instead (then F16 if that fails too). */
const FALLBACKS: Partial<Record<GGMLWriteType, GGMLWriteType>> = {
  Q2_K: 'Q4_0', Q3_K: 'Q4_0', Q4_K: 'Q5_0', Q5_K: 'Q5_1', Q6_K: 'Q8_0', TQ1_0: 'Q4_0', TQ2_0: 'Q4_0', Q2_0: 'Q4_0',
  IQ4_XS: 'IQ4_NL', IQ3_S: 'IQ4_NL', IQ3_XXS: 'IQ4_NL', IQ2_XXS: 'IQ4_NL', IQ2_XS: 'IQ4_NL', IQ2_S: 'IQ4_NL', IQ1_S: 'IQ4_NL', IQ1_M: 'IQ4_NL',
};

/** The metadata llama-quantize writes: the source's keys in order, then general.quantization_version and general.file_type. */
export function quantizationMixMetadata<V>(kv: Array<[string, V]>, fileType: number, u32: (v: number) => V): Array<[string, V]> {
  return [...kv.filter(([key]) => key !== 'general.quantization_version' && key !== 'general.file_type'),
    ['general.quantization_version', u32(2)], ['general.file_type', u32(fileType)]];
}

/** `values` in a quantized type, rows of whole blocks (the caller checks). */
export function quantizeValues(type: 'Q2_K' | 'Q3_K' | 'Q4_K' | 'Q5_K' | 'Q6_K' | 'Q4_1' | 'Q5_0' | 'Q5_1', values: Float32Array): Buffer {
  switch (type) {
    case 'Q4_1': return quantizeQ4_1(values);
    case 'Q2_K': return quantizeQ2_K(values);
    case 'Q3_K': return quantizeQ3_K(values);
    case 'Q5_0': return quantizeQ5_0(values);
    case 'Q5_1': return quantizeQ5_1(values);
    case 'Q4_K': return quantizeQ4_K(values);
    case 'Q5_K': return quantizeQ5_K(values);
    case 'Q6_K': return quantizeQ6_K(values);
  }
}

/**
 * llama.cpp's quantize_row_q4_0_ref (as gguf-py): per 32 values, d = (the value of largest magnitude) / −8 (as f16)
 * and trunc(x / d + 8.5) in [0, 15], the first 16 values in the low nibbles, the next 16 in the high ones.
 */
export function quantizeQ4_0(values: Float32Array): Buffer {
  const blocks = values.length / 32;
  const out = Buffer.alloc(blocks * 18);
  for (let b = 0; b < blocks; b++) {
    let max = 0;
    for (let j = 0; j < 32; j++) if (Math.abs(values[b * 32 + j]) > Math.abs(max)) max = values[b * 32 + j];
    const d = f(max / -8);
    const id = d ? f(1 / d) : 0;
    out.writeUInt16LE(float32ToF16Bits(d), b * 18);
    const q = (j: number) => Math.min(15, Math.trunc(f(f(values[b * 32 + j] * id) + 8.5)));
    for (let j = 0; j < 16; j++) out[b * 18 + 2 + j] = q(j) | (q(j + 16) << 4);
  }
  return out;
}

/** llama.cpp's quantize_row_q8_0_ref: per 32 values, d = max|x| / 127 (as f16) and round(x / d) as int8. */
export function quantizeQ8_0(values: Float32Array): Buffer {
  const blocks = values.length / 32;
  const out = Buffer.alloc(blocks * 34);
  // Stored through an int8 view: Buffer's checked writeInt8 a value cost more than the rounding.
  const q = new Int8Array(out.buffer, out.byteOffset, out.length);
  const signs = new Int32Array(values.buffer, values.byteOffset, values.length);
  for (let b = 0, x0 = 0, at = 0; b < blocks; b++, x0 += 32, at += 34) {
    let amax = 0;
    for (let j = 0; j < 32; j++) { const a = Math.abs(values[x0 + j]); if (a > amax) amax = a; }
    const d = f(amax / 127);
    const id = d ? f(1 / d) : 0;
    const bits = float32ToF16Bits(d);
    out[at] = bits & 0xff;
    out[at + 1] = bits >> 8;
    // roundf (halves away from zero) without a branch: |x| + 0.5 truncated, the sign put back from the value's sign
    // bit, (k ^ s) − s. A branch on the sign mispredicts half the time on weights (~5× slower on random signs).
    for (let j = 0; j < 32; j++) {
      const k = (Math.abs(f(values[x0 + j] * id)) + 0.5) | 0;
      const s = signs[x0 + j] >> 31;
      q[at + 2 + j] = (k ^ s) - s;
    }
  }
  return out;
}
