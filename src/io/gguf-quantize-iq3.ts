/**
 * llama.cpp's 3-bit i-quants: IQ3_XXS (3.06 bits a weight) and IQ3_S (3.44), as quantize_iq3_xxs / quantize_iq3_s
 * write them (ggml-quants.c). Each 32 values get a scale; their magnitudes go in fours to the nearest point of a
 * lattice grid (256 or 512 points of {1, 3, …, 15}⁴; off-grid points searched among the nearest grid neighbours,
 * iq3xs_init_impl's tables, rebuilt here from the grids the dequantizer reads), their signs stored apart. Every
 * float step rounded to float32 as C rounds it, so the bytes equal a portable build's; the tests compare them.
 */
import { gridCodes } from './gguf-iquants';
import { nearestInt } from './gguf-quantize';
import { float32ToF16Bits } from './safetensors';

const f = Math.fround;
const FLT_MAX = 3.4028234663852886e38;
const FIFTH = f(0.2);

/** A grid with llama.cpp's search tables: points (2l + 1, four a point), the map of the 4096 lattice points, neighbours. */
interface Lattice { points: Uint8Array; map: Int32Array; neighbours: Uint16Array }

const lattices = new Map<number, Lattice>();

/**
 * iq3xs_init_impl: each lattice point on the grid maps to its index; each other one to a list of the grid points at
 * its `nwant` smallest distances (2 for the 256-point grid, 3 for the 512-point one), by distance then index.
 */
function lattice(size: 256 | 512): Lattice {
  const cached = lattices.get(size);
  if (cached) return cached;
  const points = Uint8Array.from(gridCodes(size === 256 ? 'IQ3_XXS' : 'IQ3_S'), (l) => 2 * l + 1);
  const map = new Int32Array(4096).fill(-1);
  for (let j = 0; j < size; j++) {
    let index = 0;
    for (let k = 0; k < 4; k++) index |= ((points[4 * j + k] - 1) / 2) << (3 * k);
    map[index] = j;
  }
  const nwant = size === 256 ? 2 : 3;
  const lists: number[] = [];
  const d2 = new Int32Array(size);
  for (let i = 0; i < 4096; i++) {
    if (map[i] >= 0) continue;
    for (let j = 0; j < size; j++) {
      let d = 0;
      for (let k = 0; k < 4; k++) { const diff = points[4 * j + k] - (2 * ((i >> (3 * k)) & 7) + 1); d += diff * diff; }
      d2[j] = d;
    }
    const distances = [...new Set(d2)].sort((a, b) => a - b).slice(0, nwant);
    map[i] = -(lists.length + 1);
    const at = lists.length;
    lists.push(0);
    for (const d of distances) for (let j = 0; j < size; j++) if (d2[j] === d) lists.push(j);
    lists[at] = lists.length - at - 1;
  }
  const built = { points, map, neighbours: Uint16Array.from(lists) };
  lattices.set(size, built);
  return built;
}

/**
 * iq3_find_best_neighbour: among the neighbours listed at `at`, the grid point nearest the four values from x0 at
 * `scale` (weighted squared error, the first on ties); its levels into L from l0. Returns its index.
 */
function bestNeighbour(grid: Lattice, at: number, xval: Float32Array, x0: number, weight: Float32Array, scale: number, L: Int8Array, l0: number): number {
  let best = FLT_MAX;
  let index = -1;
  for (let j = 1; j <= grid.neighbours[at]; j++) {
    const n = grid.neighbours[at + j];
    let d2 = 0;
    for (let i = 0; i < 4; i++) {
      const diff = f(f(scale * grid.points[4 * n + i]) - xval[x0 + i]);
      d2 = f(d2 + f(f(weight[x0 + i] * diff) * diff));
    }
    if (d2 < best) { best = d2; index = n; }
  }
  for (let i = 0; i < 4; i++) L[l0 + i] = (grid.points[4 * index + i] - 1) / 2;
  return index;
}

/** The lattice index of levels L[l0..l0+4). */
function latticeIndex(L: Int8Array, l0: number): number {
  return L[l0] | (L[l0 + 1] << 3) | (L[l0 + 2] << 6) | (L[l0 + 3] << 9);
}

/** Σ w·x·q and Σ w·q² of 32 values on levels L (q = 2l + 1). */
function levelSums(weight: Float32Array, xval: Float32Array, L: Int8Array): [number, number] {
  let sumQX = 0;
  let sumQ2 = 0;
  for (let i = 0; i < 32; i++) {
    const q = 2 * L[i] + 1;
    sumQX = f(sumQX + f(f(weight[i] * xval[i]) * q));
    sumQ2 = f(sumQ2 + f(f(weight[i] * q) * q));
  }
  return [sumQX, sumQ2];
}

const weight = new Float32Array(32);
const waux = new Float32Array(32);
const xval = new Float32Array(32);
const L = new Int8Array(32);
const Laux = new Int8Array(32);

/**
 * The scale of 32 magnitudes (xval) on the grid, as both quantizers search it: `steps` trial scales around max / 15,
 * each group of four to its lattice point (or best neighbour), the best fit kept (levels into L); then, if groups
 * were off the grid, they are placed again at the chosen scale (all of them: IQ3_S; only those: IQ3_XXS) and the
 * scale refit. Returns the scale, or null for a group `negligible` finds too small to quantize (L zero).
 */
function fitGroup(grid: Lattice, steps: number, negligible: (max: number) => boolean, refitAll: boolean): number | null {
  let max = xval[0];
  for (let i = 1; i < 32; i++) if (!(max > xval[i])) max = xval[i];
  L.fill(0);
  if (negligible(max)) return null;
  let best = 0;
  let scale = f(max / 15);
  const onGrid = new Array<boolean>(8).fill(!refitAll);
  const onGridAux = new Array<boolean>(8);
  for (let is = -steps; is <= steps; is++) {
    const id = f(f(15 + f(is * FIFTH)) / max);
    const thisScale = f(1 / id);
    for (let k = 0; k < 8; k++) {
      for (let i = 0; i < 4; i++) Laux[4 * k + i] = Math.max(0, Math.min(7, nearestInt(f(0.5 * f(f(id * xval[4 * k + i]) - 1)))));
      const u = latticeIndex(Laux, 4 * k);
      onGridAux[k] = grid.map[u] >= 0;
      if (!onGridAux[k]) bestNeighbour(grid, -grid.map[u] - 1, xval, 4 * k, waux, thisScale, Laux, 4 * k);
    }
    const [sumQX, sumQ2] = levelSums(weight, xval, Laux);
    if (sumQ2 > 0 && f(sumQX * sumQX) > f(best * sumQ2)) {
      scale = f(sumQX / sumQ2);
      best = f(scale * sumQX);
      L.set(Laux);
      for (let k = 0; k < 8; k++) onGrid[k] = onGridAux[k];
    }
  }
  if (onGrid.some((on) => !on) && scale > 0) {
    const id = f(1 / scale);
    for (let k = 0; k < 8; k++) {
      if (!refitAll && onGrid[k]) continue;
      let u = 0;
      for (let i = 0; i < 4; i++) u |= Math.max(0, Math.min(7, nearestInt(f(0.5 * f(f(id * xval[4 * k + i]) - 1))))) << (3 * i);
      const index = grid.map[u] >= 0 ? grid.map[u] : bestNeighbour(grid, -grid.map[u] - 1, xval, 4 * k, waux, scale, L, 4 * k);
      for (let i = 0; i < 4; i++) L[4 * k + i] = (grid.points[4 * index + i] - 1) / 2;
    }
    const [sumQX, sumQ2] = levelSums(weight, xval, L);
    if (sumQ2 > 0) scale = f(sumQX / sumQ2);
  }
  return scale;
}

/** The 32 values from x0: their weights (x², or importance × √(σ² + x²)), √ of those, and magnitudes into xval. */
function weighGroup(values: Float32Array, x0: number, importance: Float32Array | undefined, sigma2: number): void {
  for (let i = 0; i < 32; i++) {
    const v = values[x0 + i];
    weight[i] = importance ? f(importance[(x0 + i) % importance.length] * f(Math.sqrt(f(sigma2 + f(v * v))))) : f(v * v);
    waux[i] = f(Math.sqrt(weight[i]));
    xval[i] = Math.abs(v);
  }
}

/**
 * The frame of both quantizers: for each 256-value block (`blockBytes` of output from `at`), its eight groups of 32
 * weighed (σ² twice the block's mean square) and handed to `group` in turn, then `finish` with the largest scale.
 */
function quantizeBlocks(values: Float32Array, importance: Float32Array | undefined, blockBytes: number,
  group: (out: Buffer, ib: number, start: number, at: number) => number, finish: (out: Buffer, at: number, maxScale: number) => void): Buffer {
  const out = Buffer.alloc((values.length / 256) * blockBytes);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += 256, at += blockBytes) {
    let sum = 0;
    for (let i = 0; i < 256; i++) sum = f(sum + f(values[x0 + i] * values[x0 + i]));
    const sigma2 = f(f(2 * sum) / 256);
    let maxScale = 0;
    for (let ib = 0; ib < 8; ib++) {
      weighGroup(values, x0 + 32 * ib, importance, sigma2);
      const scale = group(out, ib, x0 + 32 * ib, at);
      if (!(maxScale > scale)) maxScale = scale;
    }
    finish(out, at, maxScale);
  }
  return out;
}

/** The 4-bit level of a group's scale against the super-scale's inverse `id`. */
const scaleLevel = (id: number, scale: number) => Math.max(0, Math.min(15, nearestInt(f(0.5 * f(f(id * scale) - 1)))));

/**
 * IQ3_XXS (quantize_iq3_xxs; 98 bytes a 256): f16 super-scale, 64 grid indices, then per 32 values a u32 of four
 * 7-bit sign groups (the 8th sign their parity: an odd count flips the least important value) and a 4-bit scale.
 */
export function quantizeIQ3_XXS(values: Float32Array, importance?: Float32Array): Buffer {
  const grid = lattice(256);
  const scales = new Float32Array(8);
  return quantizeBlocks(values, importance, 98, (out, ib, start, at) => {
    const signs = [0, 0, 0, 0];
    for (let k = 0; k < 4; k++) {
      let flips = 0;
      for (let i = 0; i < 8; i++) if (!(values[start + 8 * k + i] >= 0)) { flips++; signs[k] |= 1 << i; }
      if (flips % 2) {
        let least = 0;
        let min = f(f(weight[8 * k] * values[start + 8 * k]) * values[start + 8 * k]);
        for (let i = 1; i < 8; i++) {
          const v = values[start + 8 * k + i];
          const a = f(f(weight[8 * k + i] * v) * v);
          if (a < min) { min = a; least = i; }
        }
        xval[8 * k + least] = -xval[8 * k + least];
        signs[k] ^= 1 << least;
      }
      signs[k] &= 127;
    }
    let scale = fitGroup(grid, 15, (max) => max < f(1e-8), false);
    if (scale === null) return scales[ib] = 0;
    if (scale < 0) {
      scale = -scale;
      for (let k = 0; k < 4; k++) signs[k] = ~signs[k] & 127;
    }
    for (let k = 0; k < 8; k++) out[at + 2 + 8 * ib + k] = grid.map[latticeIndex(L, 4 * k)];
    out.writeUInt32LE((signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)) >>> 0, at + 66 + 4 * ib);
    return scales[ib] = scale;
  }, (out, at, maxScale) => {
    if (!maxScale) { out.fill(0, at, at + 98); return; }
    const d = f(maxScale / 31);
    out.writeUInt16LE(float32ToF16Bits(f(d * f(1.0125))), at);
    const id = f(1 / d);
    for (let ib = 0; ib < 8; ib++) out.writeUInt32LE((out.readUInt32LE(at + 66 + 4 * ib) | (scaleLevel(id, scales[ib]) << 28)) >>> 0, at + 66 + 4 * ib);
  });
}

/**
 * IQ3_S (quantize_iq3_s; 110 bytes a 256): f16 super-scale, the low 8 bits of 64 grid indices, their 9th bits,
 * 256 sign bits, eight 4-bit scales (odd multiples of the super-scale). A group of 32 zeros writes nothing, and the
 * groups after it move up in the index and sign bytes, as llama.cpp's loop does.
 */
export function quantizeIQ3_S(values: Float32Array, importance?: Float32Array): Buffer {
  const grid = lattice(512);
  const scales = new Float32Array(8);
  let qs = 0;
  let signsAt = 0;
  return quantizeBlocks(values, importance, 110, (out, ib, start, at) => {
    if (ib === 0) [qs, signsAt] = [at + 2, at + 74];
    const signs = [0, 0, 0, 0];
    for (let k = 0; k < 4; k++) for (let i = 0; i < 8; i++) if (!(values[start + 8 * k + i] >= 0)) signs[k] |= 1 << i;
    let scale = fitGroup(grid, 9, (max) => !max, true);
    if (scale === null) return scales[ib] = 0;
    if (scale < 0) {
      scale = -scale;
      for (let k = 0; k < 4; k++) signs[k] = ~signs[k] & 255;
    }
    for (let k = 0; k < 8; k++) {
      const index = grid.map[latticeIndex(L, 4 * k)];
      out[qs + k] = index & 255;
      out[at + 66 + ((8 * ib + k) >> 3)] |= (index >> 8) << ((8 * ib + k) & 7);
    }
    qs += 8;
    for (let k = 0; k < 4; k++) out[signsAt + k] = signs[k];
    signsAt += 4;
    return scales[ib] = scale;
  }, (out, at, maxScale) => {
    if (!maxScale) return;
    const d = f(maxScale / 31);
    out.writeUInt16LE(float32ToF16Bits(f(d * f(1.033))), at);
    const id = f(1 / d);
    for (let ib = 0; ib < 8; ib += 2) out[at + 106 + ib / 2] = scaleLevel(id, scales[ib]) | (scaleLevel(id, scales[ib + 1]) << 4);
  });
}
