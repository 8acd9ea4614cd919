import * as tf from '@tensorflow/tfjs';
import type { WebGPUBackendLike } from './webgpu-kernels';

/**
 * a·bᵀ on WebGPU for the prefill products — x·Wᵀ with W in HF layout [out, in], and attention scores Q·Kᵀ — where both
 * operands run along K in memory, so both tiles load as vec4 with no transposed copy (tfjs's matMul reads vec4 only
 * when neither operand is transposed, hence the copies of weightFirstLinear/transposedProduct this replaces).
 *
 * 16×16 threads a workgroup, each thread an R×R block of the output (R = 8: 128×128 tiles, R = 4: 64×64), K in
 * steps of 16 through workgroup memory stored k-major, so a thread reads R/4 vec4 of each operand for R² FMAs
 * (tfjs's tiles are 32×32, 4×4 a thread). A thread's rows are ty·4 + i + 64·g: consecutive threads read consecutive
 * vec4 of a tile row (no bank conflicts) and write consecutive output columns.
 */
const THREADS = 16;
/** K per step through workgroup memory: 4 k-quads, so that a tile's (row quad, k-quad) pairs number `tile`. */
const K_STEP = 16;

export class TiledProductProgram {
  readonly variableNames: string[];
  readonly variableComponents: number[];
  /** depth: the reduction's length in vec4 (a·bᵀ, along the rows of both) or in rows (aᵀ·b, down both). */
  readonly uniforms = 'm : i32, n : i32, depth : i32, bStride : i32,';
  readonly shaderKey: string;
  readonly outputShape: number[];
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number] = [THREADS, THREADS, 1];

  /** transposeA: aᵀ·b with a [batch, depth, m] and b [batch or 1, depth, n], both read along their rows (m and n). */
  constructor(batch: number, m: number, n: number, private readonly r: 4 | 8, private readonly bias: boolean, private readonly transposeA = false) {
    const tile = THREADS * r;
    this.outputShape = [batch, m, n];
    this.dispatchLayout = { x: [0, 1, 2] };
    this.dispatch = [Math.ceil(n / tile), Math.ceil(m / tile), batch];
    this.variableNames = bias ? ['a', 'b', 'bias'] : ['a', 'b'];
    this.variableComponents = bias ? [4, 4, 1] : [4, 4];
    this.shaderKey = `nemotron_tiled_product_${r}_${bias}_${transposeA}`;
  }

  getUserCode(): string {
    const r = this.r;
    const tile = THREADS * r;
    const groups = r / 4; // 64-row (64-column) groups of a thread's block
    const rows = Array.from({ length: r }, (_, i) => i);
    const cols = Array.from({ length: groups }, (_, h) => h);
    // One operand's tile, stored k-major with zeros past the edges: thread p (of `tile`) reads the same k-quad of four
    // consecutive rows and writes four whole vec4 (one per k), so no two threads write parts of one vec4.
    const quad = [0, 1, 2, 3];
    // aᵀ·b: a tile is already k-major in memory (K_STEP rows of depth, `tile` columns): four whole vec4 a thread.
    const loadRows = (operand: 'a' | 'b', shared: string, first: string, limit: string, base: string) => `
          ${quad.map((j) => `{
            let e = p + ${j * tile};
            let k = e / ${tile / 4};
            let col = ${first} + (e % ${tile / 4}) * 4;
            var v = vec4<f32>(0.0);
            if (t + k < uniforms.depth && col < ${limit}) {
              v = ${operand}[${base} + ((t + k) * ${limit} + col) / 4];
            }
            ${shared}[e] = v;
          }`).join('\n          ')}`;
    const loadTile = (operand: 'a' | 'b', shared: string, first: string, limit: string, base: string) => this.transposeA
      ? loadRows(operand, shared, first, limit, base) : `
          let q = p % 4;
          let g = p / 4;
          let inK = t + q < uniforms.depth;
          ${quad.map((i) => `var v${i} = vec4<f32>(0.0);
          if (${first} + g * 4 + ${i} < ${limit} && inK) {
            v${i} = ${operand}[${base} + (${first} + g * 4 + ${i}) * uniforms.depth + t + q];
          }`).join('\n          ')}
          ${quad.map((c) => `${shared}[(q * 4 + ${c}) * ${tile / 4} + g] = vec4<f32>(v0[${c}], v1[${c}], v2[${c}], v3[${c}]);`).join('\n          ')}`;
    const store = rows.map((i) => {
      const row = `row0 + ${Math.floor(i / 4) * 64} + ty * 4 + ${i % 4}`;
      return `
      if (${row} < uniforms.m) {
        ${cols.map((h) => `
        for (var j = 0; j < 4; j++) {
          let col = col0 + ${h * 64} + tx * 4 + j;
          if (col < uniforms.n) {
            result[(batch * uniforms.m + ${row}) * uniforms.n + col] = acc${i}_${h}[j]${this.bias ? ' + bias[col]' : ''};
          }
        }`).join('')}
      }`;
    }).join('');
    return `
    var<workgroup> aTile : array<vec4<f32>, ${(K_STEP * tile) / 4}>;
    var<workgroup> bTile : array<vec4<f32>, ${(K_STEP * tile) / 4}>;

    fn main(index : i32) {
      let tx = i32(localId.x);
      let ty = i32(localId.y);
      let tid = ty * ${THREADS} + tx;
      let batch = i32(workgroupId.z);
      let row0 = i32(workgroupId.y) * ${tile};
      let col0 = i32(workgroupId.x) * ${tile};
      let aBase = batch * uniforms.m * uniforms.depth${this.transposeA ? ' / 4' : ''};
      let bBase = batch * uniforms.bStride;
      ${rows.map((i) => cols.map((h) => `var acc${i}_${h} = vec4<f32>(0.0);`).join(' ')).join('\n      ')}
      for (var t = 0; t < uniforms.depth; t += ${this.transposeA ? K_STEP : K_STEP / 4}) {
        // Threads 0..${tile - 1} load a's tile, the next ${tile} b's.
        if (tid < ${tile}) {
          let p = tid;
          ${loadTile('a', 'aTile', 'row0', 'uniforms.m', 'aBase')}
        } else if (tid < ${2 * tile}) {
          let p = tid - ${tile};
          ${loadTile('b', 'bTile', 'col0', 'uniforms.n', 'bBase')}
        }
        workgroupBarrier();
        for (var k = 0; k < ${K_STEP}; k++) {
          ${Array.from({ length: groups }, (_, g) => `let a${g} = aTile[k * ${tile / 4} + ${g * 16} + ty];`).join('\n          ')}
          ${cols.map((h) => `let b${h} = bTile[k * ${tile / 4} + ${h * 16} + tx];`).join('\n          ')}
          ${rows.map((i) => cols.map((h) => `acc${i}_${h} = fma(vec4<f32>(a${Math.floor(i / 4)}[${i % 4}]), b${h}, acc${i}_${h});`).join(' ')).join('\n          ')}
        }
        workgroupBarrier();
      }
      ${store}
    }
    `;
  }
}

/** Workgroups below which the 128×128 tiles leave much of a large GPU idle: smaller tiles then (about a wave of an H100). */
const FEW_TILES = 132;

/** Whether tiledProduct takes these operands: K a multiple of 4 (vec4 rows). */
export function tiledProductApplies(k: number): boolean {
  return k % 4 === 0;
}

/**
 * a [batch, m, k] · b [batch or 1, n, k]ᵀ (+ bias [n]) → [batch, m, n]. b with batch 1 is shared by every batch (a
 * weight); the caller reshapes higher ranks to these.
 */
export function tiledProduct(gpu: WebGPUBackendLike, a: tf.TensorInfo, b: tf.TensorInfo, bias?: tf.TensorInfo): tf.TensorInfo {
  const [batch, m, k] = a.shape;
  const [bBatch, n, bk] = b.shape;
  if (bk !== k || (bBatch !== 1 && bBatch !== batch) || !tiledProductApplies(k)) {
    throw new Error(`tiledProduct: cannot multiply [${a.shape}] by [${b.shape}]ᵀ (expected b [${batch} or 1, n, ${k}] with ${k} a multiple of 4)`);
  }
  const k4 = k / 4;
  return gpu.runWebGPUProgram(new TiledProductProgram(batch, m, n, tileFor(batch, m, n), bias !== undefined), bias ? [a, b, bias] : [a, b], 'float32', [
    { type: 'int32', data: [m] }, { type: 'int32', data: [n] }, { type: 'int32', data: [k4] }, { type: 'int32', data: [bBatch === 1 ? 0 : n * k4] },
  ]);
}

/** 8×8 outputs a thread (128×128 tiles) where there are enough tiles to fill the GPU, else 4×4. */
function tileFor(batch: number, m: number, n: number): 4 | 8 {
  const tiles = (edge: number) => Math.ceil(m / edge) * Math.ceil(n / edge) * batch;
  return tiles(THREADS * 8) >= FEW_TILES ? 8 : 4;
}

/** Whether tiledTransposedProduct takes these operands: m and n multiples of 4 (vec4 along both rows). */
export function tiledTransposedProductApplies(m: number, n: number): boolean {
  return m % 4 === 0 && n % 4 === 0;
}

/**
 * a [batch, depth, m]ᵀ · b [batch or 1, depth, n] → [batch, m, n] (a weight's gradient dyᵀ·x): both operands read along
 * their rows, so no transposed copy either.
 */
export function tiledTransposedProduct(gpu: WebGPUBackendLike, a: tf.TensorInfo, b: tf.TensorInfo): tf.TensorInfo {
  const [batch, depth, m] = a.shape;
  const [bBatch, bDepth, n] = b.shape;
  if (bDepth !== depth || (bBatch !== 1 && bBatch !== batch) || !tiledTransposedProductApplies(m, n)) {
    throw new Error(`tiledTransposedProduct: cannot multiply [${a.shape}]ᵀ by [${b.shape}] (expected b [${batch} or 1, ${depth}, n] with ${m} and n multiples of 4)`);
  }
  return gpu.runWebGPUProgram(new TiledProductProgram(batch, m, n, tileFor(batch, m, n), false, true), [a, b], 'float32', [
    { type: 'int32', data: [m] }, { type: 'int32', data: [n] }, { type: 'int32', data: [depth] }, { type: 'int32', data: [bBatch === 1 ? 0 : depth * n / 4] },
  ]);
}
