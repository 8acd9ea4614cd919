/**
 * llama.cpp's 3-bit i-quants: IQ3_XXS (3.06 bits a weight) and IQ3_S (3.44), as quantize_iq3_xxs / quantize_iq3_s
 * write them (ggml-quants.c). Each 32 values get a scale; their magnitudes go in fours to the nearest point of a
 * lattice grid (256 or 512 points of {1, 3, …, 15}⁴; off-grid points searched among the nearest grid neighbours,
 * iq3xs_init_impl's tables, rebuilt here from the grids the dequantizer reads), their signs stored apart. Every
 * float step rounded to float32 as C rounds it, so the bytes equal a portable build's; the tests compare them.
 */
import { gridCodes } from './gguf-iquants';
import { GROUP_MAX_EPS, makeQpQuants, nearestInt } from './gguf-quantize';
import { float32ToF16Bits } from './safetensors';

const f = Math.fround;
const FLT_MAX = 3.4028234663852886e38;
const FIFTH = f(0.2);
const TENTH = f(0.1);

/**
 * A grid with llama.cpp's search tables: its points (levels 2l + 1, `dim` a point), the map of the lattice points
 * (`bits` a level) to grid indices, and each off-grid lattice point's list of neighbours.
 */
export interface Lattice { dim: 4 | 8; bits: 2 | 3; levels: number; points: Uint8Array; map: Int32Array; neighbours: Uint16Array }

/** The grids: dequantizer's grid, point size, bits a level, lattice points mapped, neighbour distances kept. */
const LATTICES = {
  IQ3_XXS: { dim: 4, bits: 3, levels: 8, mapSize: 4096, nwant: 2 }, IQ3_S: { dim: 4, bits: 3, levels: 8, mapSize: 4096, nwant: 3 },
  IQ2_XXS: { dim: 8, bits: 2, levels: 3, mapSize: 43692, nwant: 2 }, IQ2_XS: { dim: 8, bits: 2, levels: 3, mapSize: 43692, nwant: 2 },
  IQ2_S: { dim: 8, bits: 2, levels: 3, mapSize: 43692, nwant: 1 }, IQ1_S: { dim: 8, bits: 2, levels: 3, mapSize: 43692, nwant: 3 },
} as const;
type LatticeType = keyof typeof LATTICES;

const lattices = new Map<LatticeType, Lattice>();

/**
 * iq2xs_init_impl / iq3xs_init_impl: each lattice point on the grid maps to its index; each other one to a list of
 * the grid points at its `nwant` smallest distances, by distance then index.
 */
export function lattice(type: LatticeType): Lattice {
  const cached = lattices.get(type);
  if (cached) return cached;
  const { dim, bits, levels, mapSize, nwant } = LATTICES[type];
  const points = Uint8Array.from(gridCodes(type), (l) => 2 * l + 1);
  const size = points.length / dim;
  const map = new Int32Array(mapSize).fill(-1);
  for (let j = 0; j < size; j++) {
    let index = 0;
    for (let k = 0; k < dim; k++) index |= ((points[dim * j + k] - 1) / 2) << (bits * k);
    map[index] = j;
  }
  const lists: number[] = [];
  const d2 = new Int32Array(size);
  const mask = (1 << bits) - 1;
  const outside = (i: number) => { for (let k = 0; k < dim; k++) if (((i >> (bits * k)) & mask) >= levels) return true; return false; };
  for (let i = 0; i < mapSize; i++) {
    // Points with a level the quantizers never produce (2-bit fields of 3) get no list: none is ever looked up.
    if (map[i] >= 0 || outside(i)) continue;
    let nearest = [Infinity, Infinity, Infinity].slice(0, nwant);
    for (let j = 0; j < size; j++) {
      let d = 0;
      for (let k = 0; k < dim; k++) { const diff = points[dim * j + k] - (2 * ((i >> (bits * k)) & mask) + 1); d += diff * diff; }
      d2[j] = d;
      // The nwant smallest distinct distances so far, ascending.
      if (d < nearest[nwant - 1] && !nearest.includes(d)) nearest = [...nearest.slice(0, nwant - 1), d].sort((x, y) => x - y);
    }
    map[i] = -(lists.length + 1);
    const at = lists.length;
    lists.push(0);
    for (const d of nearest) if (d !== Infinity) for (let j = 0; j < size; j++) if (d2[j] === d) lists.push(j);
    lists[at] = lists.length - at - 1;
  }
  const built = { dim, bits, levels, points, map, neighbours: Uint16Array.from(lists) };
  lattices.set(type, built);
  return built;
}

/**
 * iq2/iq3_find_best_neighbour: among the neighbours listed at `at`, the grid point nearest the `dim` values from x0
 * at `scale` (weighted squared error, the first on ties); its levels into L from x0. Returns its index.
 */
function bestNeighbour(grid: Lattice, at: number, x0: number, scale: number, L: Int8Array): number {
  let best = FLT_MAX;
  let index = -1;
  for (let j = 1; j <= grid.neighbours[at]; j++) {
    const n = grid.neighbours[at + j];
    let d2 = 0;
    for (let i = 0; i < grid.dim; i++) {
      const diff = f(f(scale * grid.points[grid.dim * n + i]) - xval[x0 + i]);
      d2 = f(d2 + f(f(waux[x0 + i] * diff) * diff));
    }
    if (d2 < best) { best = d2; index = n; }
  }
  for (let i = 0; i < grid.dim; i++) L[x0 + i] = (grid.points[grid.dim * index + i] - 1) / 2;
  return index;
}

/** The lattice index of the levels of point k (L from k·dim). */
function latticeIndex(grid: Lattice, L: Int8Array, k: number): number {
  let u = 0;
  for (let i = 0; i < grid.dim; i++) u |= L[grid.dim * k + i] << (grid.bits * i);
  return u;
}

/** Σ w·x·q and Σ w·q² of n values on levels L (q = 2l + 1). */
function levelSums(n: number, levels: Int8Array): [number, number] {
  let sumQX = 0;
  let sumQ2 = 0;
  for (let i = 0; i < n; i++) {
    const q = 2 * levels[i] + 1;
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
 * Point k's levels at inverse scale `id` into `levels` (clamped to the grid's), placed on the grid: its lattice index
 * if on it, else the best neighbour at `scale` (levels rewritten). Returns whether it was on the grid.
 */
function placePoint(grid: Lattice, k: number, id: number, scale: number, levels: Int8Array): boolean {
  for (let i = 0; i < grid.dim; i++) {
    levels[grid.dim * k + i] = Math.max(0, Math.min(grid.levels - 1, nearestInt(f(0.5 * f(f(id * xval[grid.dim * k + i]) - 1)))));
  }
  const u = latticeIndex(grid, levels, k);
  if (grid.map[u] >= 0) return true;
  bestNeighbour(grid, -grid.map[u] - 1, grid.dim * k, scale, levels);
  return false;
}

/**
 * The scale of n magnitudes (xval) on the grid, as the i-quants search it: trial scales (2·levels − 1 + is·`step`) /
 * `max` for is in ±`steps`, each point placed on the grid, the best fit kept (levels into L); then points placed
 * again at the chosen scale — those that were off the grid (`refit` 'off-grid'), or all of them ('all') if any was
 * — and the scale refit. `max` is the trials' reference (the largest magnitude, or IQ2_XXS's effective one).
 */
function searchScale(grid: Lattice, n: number, max: number, steps: number, step: number, refit: 'all' | 'off-grid', initial: number): number {
  const points = n / grid.dim;
  let best = 0;
  let scale = initial;
  const onGrid = new Array<boolean>(points).fill(refit === 'off-grid');
  const onGridAux = new Array<boolean>(points);
  for (let is = -steps; is <= steps; is++) {
    const id = f(f((2 * grid.levels - 1) + f(is * step)) / max);
    const thisScale = f(1 / id);
    for (let k = 0; k < points; k++) onGridAux[k] = placePoint(grid, k, id, thisScale, Laux);
    const [sumQX, sumQ2] = levelSums(n, Laux);
    if (sumQ2 > 0 && f(sumQX * sumQX) > f(best * sumQ2)) {
      scale = f(sumQX / sumQ2);
      best = f(scale * sumQX);
      L.set(Laux.subarray(0, n));
      for (let k = 0; k < points; k++) onGrid[k] = onGridAux[k];
    }
  }
  if (onGrid.some((on) => !on) && scale > 0) {
    const id = f(1 / scale);
    for (let k = 0; k < points; k++) if (refit === 'all' || !onGrid[k]) placePoint(grid, k, id, scale, L);
    const [sumQX, sumQ2] = levelSums(n, L);
    if (sumQ2 > 0) scale = f(sumQX / sumQ2);
  }
  return scale;
}

/** The largest of n magnitudes (MAX's order: the later one on ties). */
function largest(n: number): number {
  let max = xval[0];
  for (let i = 1; i < n; i++) if (!(max > xval[i])) max = xval[i];
  return max;
}

/**
 * The n values from x0: their weights (importance × √(σ² + x²), or `plain`(x) without an importance matrix), the
 * square roots of those (the neighbour search's weights), and their magnitudes into xval.
 */
function weighGroup(values: Float32Array, x0: number, n: number, importance: Float32Array | undefined, sigma2: number, plain: (v: number) => number): void {
  for (let i = 0; i < n; i++) {
    const v = values[x0 + i];
    weight[i] = importance ? f(importance[(x0 + i) % importance.length] * f(Math.sqrt(f(sigma2 + f(v * v))))) : plain(v);
    waux[i] = f(Math.sqrt(weight[i]));
    xval[i] = Math.abs(v);
  }
}

/**
 * Signs of the eight values from x0 (bit i set: negative). With `parity`, an odd count of negatives flips the value
 * of least weighted square (its magnitude in xval negated, its bit toggled) and 7 bits are kept: the 8th is implied.
 */
function signsOf(values: Float32Array, x0: number, at: number, parity: boolean): number {
  let signs = 0;
  let flips = 0;
  for (let i = 0; i < 8; i++) if (!(values[x0 + i] >= 0)) { flips++; signs |= 1 << i; }
  if (!parity) return signs;
  if (flips % 2) {
    let least = 0;
    let min = f(f(weight[at] * values[x0]) * values[x0]);
    for (let i = 1; i < 8; i++) {
      const v = values[x0 + i];
      const a = f(f(weight[at + i] * v) * v);
      if (a < min) { min = a; least = i; }
    }
    xval[at + least] = -xval[at + least];
    signs ^= 1 << least;
  }
  return signs & 127;
}

/** The 4-bit level of a group's scale against the super-scale's inverse `id`. */
const scaleLevel = (id: number, scale: number) => Math.max(0, Math.min(15, nearestInt(f(0.5 * f(f(id * scale) - 1)))));

/** How one i-quant lays a 256-value block out, and searches its groups. */
interface Layout {
  type: LatticeType; blockBytes: number; group: 16 | 32; steps: number; step: number; refit: 'all' | 'off-grid';
  /** σ² from the block's Σx². */
  sigma2: (sum: number) => number;
  /** A group's weight of x without an importance matrix (IQ2_XXS and IQ2_XS require one). */
  plain?: (v: number, sigma2: number) => number;
  /** Whether a group of largest magnitude `max` is skipped (scale 0, nothing written). */
  negligible: (max: number) => boolean;
  /** Signs with the parity trick (7 bits a byte). */
  parity: boolean;
  /** The super-scale's fudge factor. */
  fudge: number;
  /** Whether a block whose scales are all zero is cleared (its written groups too), or keeps what was written. */
  clearUnscaled: boolean;
  /** Writes group ib's grid indices and signs (`signs`, one a point of 8) into the block at `at`. */
  write: (out: Buffer, at: number, ib: number, indices: number[], signs: number[], slot: { qs: number; signs: number }) => void;
  /** Writes the groups' 4-bit scale levels. */
  scales: (out: Buffer, at: number, levels: number[]) => void;
}

/**
 * The frame of the i-quants: per 256 values, groups of 16 or 32 weighed, signed and fitted (`fit`, or the layout's
 * trial-scale search), written by the layout; then the f16 super-scale (largest scale / 31, times the fudge factor)
 * and each group's 4-bit level against it.
 */
function quantizeLattice(values: Float32Array, importance: Float32Array | undefined, layout: Layout,
  fit?: (grid: Lattice, max: number) => number | null): Buffer {
  const grid = lattice(layout.type);
  const groups = 256 / layout.group;
  const out = Buffer.alloc((values.length / 256) * layout.blockBytes);
  const scales = new Float32Array(groups);
  if (!importance && !layout.plain) throw new Error(`quantize: ${layout.type} needs an importance matrix (llama.cpp asserts one)`);
  for (let x0 = 0, at = 0; x0 < values.length; x0 += 256, at += layout.blockBytes) {
    let sum = 0;
    for (let i = 0; i < 256; i++) sum = f(sum + f(values[x0 + i] * values[x0 + i]));
    const sigma2 = layout.sigma2(sum);
    let maxScale = 0;
    // IQ3_S moves later groups up over a skipped one (its pointers advance only when a group is written).
    const slot = { qs: 0, signs: 0 };
    for (let ib = 0; ib < groups; ib++) {
      const start = x0 + layout.group * ib;
      weighGroup(values, start, layout.group, importance, sigma2, (v) => layout.plain!(v, sigma2));
      let signs: number[] = [];
      for (let k = 0; k < layout.group / 8; k++) signs.push(signsOf(values, start + 8 * k, 8 * k, layout.parity));
      const max = largest(layout.group);
      L.fill(0);
      let scale = layout.negligible(max) ? null
        : fit ? fit(grid, max) : searchScale(grid, layout.group, max, layout.steps, layout.step, layout.refit, f(max / (2 * grid.levels - 1)));
      if (scale === null) { scales[ib] = 0; continue; }
      if (scale < 0) {
        scale = -scale;
        signs = signs.map((s) => ~s & (layout.parity ? 127 : 255));
      }
      const indices = Array.from({ length: layout.group / grid.dim }, (_, k) => grid.map[latticeIndex(grid, L, k)]);
      layout.write(out, at, ib, indices, signs, slot);
      scales[ib] = scale;
      if (!(maxScale > scale)) maxScale = scale;
    }
    if (!maxScale) { if (layout.clearUnscaled) out.fill(0, at, at + layout.blockBytes); continue; }
    const d = f(maxScale / 31);
    out.writeUInt16LE(float32ToF16Bits(layout.fudge === 1 ? d : f(d * f(layout.fudge))), at);
    const id = f(1 / d);
    layout.scales(out, at, Array.from(scales, (scale) => scaleLevel(id, scale)));
  }
  return out;
}

/** Two 4-bit scale levels a byte from `from`. */
function nibbleScales(out: Buffer, from: number, levels: number[]): void {
  for (let ib = 0; ib < levels.length; ib += 2) out[from + ib / 2] = levels[ib] | (levels[ib + 1] << 4);
}

/**
 * IQ3_XXS (quantize_iq3_xxs; 98 bytes a 256): f16 super-scale, 64 grid indices, then per 32 values a u32 of four
 * 7-bit sign groups (the 8th sign their parity: an odd count flips the least important value) and a 4-bit scale.
 */
export function quantizeIQ3_XXS(values: Float32Array, importance?: Float32Array): Buffer {
  return quantizeLattice(values, importance, {
    type: 'IQ3_XXS', blockBytes: 98, group: 32, steps: 15, step: FIFTH, refit: 'off-grid', sigma2: (sum) => f(f(2 * sum) / 256),
    plain: (v) => f(v * v), negligible: (max) => max < f(1e-8), parity: true, fudge: 1.0125, clearUnscaled: true,
    write: (out, at, ib, indices, signs) => {
      indices.forEach((index, k) => { out[at + 2 + 8 * ib + k] = index; });
      out.writeUInt32LE((signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)) >>> 0, at + 66 + 4 * ib);
    },
    scales: (out, at, levels) => levels.forEach((l, ib) => out.writeUInt32LE((out.readUInt32LE(at + 66 + 4 * ib) | (l << 28)) >>> 0, at + 66 + 4 * ib)),
  });
}

/**
 * IQ3_S (quantize_iq3_s; 110 bytes a 256): f16 super-scale, the low 8 bits of 64 grid indices, their 9th bits,
 * 256 sign bits, eight 4-bit scales (odd multiples of the super-scale). A group of 32 zeros writes nothing, and the
 * groups after it move up in the index and sign bytes, as llama.cpp's loop does.
 */
export function quantizeIQ3_S(values: Float32Array, importance?: Float32Array): Buffer {
  return quantizeLattice(values, importance, {
    type: 'IQ3_S', blockBytes: 110, group: 32, steps: 9, step: FIFTH, refit: 'all', sigma2: (sum) => f(f(2 * sum) / 256),
    plain: (v) => f(v * v), negligible: (max) => !max, parity: false, fudge: 1.033, clearUnscaled: false,
    write: (out, at, ib, indices, signs, slot) => {
      indices.forEach((index, k) => {
        out[at + 2 + slot.qs + k] = index & 255;
        out[at + 66 + ((8 * ib + k) >> 3)] |= (index >> 8) << ((8 * ib + k) & 7);
      });
      signs.forEach((s, k) => { out[at + 74 + slot.signs + k] = s; });
      slot.qs += 8;
      slot.signs += 4;
    },
    scales: (out, at, levels) => nibbleScales(out, at + 106, levels),
  });
}

/**
 * IQ2_XS (quantize_iq2_xs; 74 bytes a 256; an importance matrix required): per 16 values two points of the
 * 512-point grid of {1, 3, 5}⁸ with 7 sign bits each (parity implied), as u16 index | signs << 9; eight bytes of
 * 4-bit scales.
 */
export function quantizeIQ2_XS(values: Float32Array, importance?: Float32Array): Buffer {
  return quantizeLattice(values, importance, {
    type: 'IQ2_XS', blockBytes: 74, group: 16, steps: 9, step: TENTH, refit: 'off-grid', sigma2: (sum) => f(sum / 256),
    negligible: (max) => max < GROUP_MAX_EPS, parity: true, fudge: 1, clearUnscaled: true,
    write: (out, at, ib, indices, signs) => indices.forEach((index, k) => out.writeUInt16LE(index | (signs[k] << 9), at + 2 + 4 * ib + 2 * k)),
    scales: (out, at, levels) => nibbleScales(out, at + 66, levels),
  });
}

/**
 * IQ2_S (quantize_iq2_s; 82 bytes a 256): per 16 values two points of the 1024-point grid (low 8 bits of the index,
 * then all 32 sign bytes, then the indices' top 2 bits), eight bytes of 4-bit scales; without an importance matrix
 * each value weighted by σ²/4 + x².
 */
export function quantizeIQ2_S(values: Float32Array, importance?: Float32Array): Buffer {
  return quantizeLattice(values, importance, {
    type: 'IQ2_S', blockBytes: 82, group: 16, steps: 9, step: TENTH, refit: 'off-grid', sigma2: (sum) => f(f(2 * sum) / 256),
    plain: (v, sigma2) => f(f(0.25 * sigma2) + f(v * v)), negligible: (max) => max < f(1e-8), parity: false, fudge: 0.9875, clearUnscaled: false,
    write: (out, at, ib, indices, signs) => indices.forEach((index, k) => {
      const i8 = 2 * ib + k;
      out[at + 2 + i8] = index & 255;
      out[at + 66 + (i8 >> 2)] |= (index >> 8) << (2 * (i8 % 4));
      out[at + 2 + 32 + i8] = signs[k];
    }),
    scales: (out, at, levels) => nibbleScales(out, at + 74, levels),
  });
}

const qpLevels = new Uint8Array(32);

/**
 * IQ2_XXS (quantize_iq2_xxs; 66 bytes a 256; an importance matrix required): per 32 values four points of the
 * 256-point grid (a byte each) and a u32 of four 7-bit sign groups and a 4-bit scale. Its search starts from
 * make_qp_quants' scale, tries 13 around it, and always places every point again at the chosen one.
 */
export function quantizeIQ2_XXS(values: Float32Array, importance?: Float32Array): Buffer {
  return quantizeLattice(values, importance, {
    type: 'IQ2_XXS', blockBytes: 66, group: 32, steps: 6, step: TENTH, refit: 'off-grid', sigma2: (sum) => f(sum / 256),
    negligible: (max) => max < GROUP_MAX_EPS, parity: true, fudge: 1, clearUnscaled: true,
    write: (out, at, ib, indices, signs) => {
      indices.forEach((index, k) => { out[at + 2 + 8 * ib + k] = index; });
      out.writeUInt32LE((signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)) >>> 0, at + 2 + 8 * ib + 4);
    },
    scales: (out, at, levels) => levels.forEach((l, ib) => out.writeUInt32LE((out.readUInt32LE(at + 6 + 8 * ib) | (l << 28)) >>> 0, at + 6 + 8 * ib)),
  }, (grid) => {
    let scale = makeQpQuants(32, grid.levels + 1, xval, qpLevels, weight);
    for (let i = 0; i < 32; i++) L[i] = (qpLevels[i] << 24) >> 24;
    const effectiveMax = f(scale * 3);
    if (effectiveMax <= 0) return null;
    let best = 0;
    for (let is = -6; is <= 6; is++) {
      const id = f(f(5 + f(is * TENTH)) / effectiveMax);
      const thisScale = f(1 / id);
      for (let k = 0; k < 4; k++) placePoint(grid, k, id, thisScale, Laux);
      const [sumQX, sumQ2] = levelSums(32, Laux);
      if (sumQ2 > 0 && f(sumQX * sumQX) > f(best * sumQ2)) {
        scale = f(sumQX / sumQ2);
        best = f(scale * sumQX);
        L.set(Laux);
      }
    }
    if (scale > 0) {
      const id = f(1 / scale);
      for (let k = 0; k < 4; k++) placePoint(grid, k, id, scale, L);
      const [sumQX, sumQ2] = levelSums(32, L);
      if (sumQ2 > 0) scale = f(sumQX / sumQ2);
    }
    return scale;
  });
}
