import * as tf from '@tensorflow/tfjs';

/** What the public API accepts wherever transformers takes a LongTensor. */
export type IntMatrixLike = tf.Tensor | number[][] | number[];

/**
 * What the additive attention mask adds at a masked position. transformers adds torch.finfo(float32).min; on WebGPU
 * that overflows to -inf in rows where every key is masked (left padding), whose NaNs then reach the real rows
 * through the cache. -1e9 masks just as completely (exp underflows to exactly 0) and stays finite. Rows that are
 * wholly padding get other (unused) values than in transformers; every real position is identical.
 */
export const MASK_MIN = -1e9;

/**
 * Reads a batch of integer rows from a tensor or plain arrays: the values (for validation and pooling)
 * and the [batch, seq] shape. A 1-D input is one row.
 */
export function readIntRows(value: IntMatrixLike, name: string): number[][] {
  let rows: unknown;
  if (value instanceof tf.Tensor) {
    if (value.rank !== 2 && value.rank !== 1) throw new Error(`${name} must be a 2-D tensor [batch, seq], got shape [${value.shape}]`);
    rows = value.rank === 1 ? [value.arraySync()] : value.arraySync();
  } else if (Array.isArray(value)) {
    rows = value.length > 0 && !Array.isArray(value[0]) ? [value] : value;
  } else {
    throw new Error(`${name} must be a tensor or an array of integer rows, got ${typeof value}`);
  }
  const out = rows as unknown[][];
  if (out.length === 0 || !Array.isArray(out[0]) || out[0].length === 0) throw new Error(`${name} is empty`);
  const width = out[0].length;
  out.forEach((row, r) => {
    if (!Array.isArray(row) || row.length !== width) {
      throw new Error(`${name}: row ${r} has length ${Array.isArray(row) ? row.length : typeof row}, expected ${width} (rows must be equally long)`);
    }
    row.forEach((v, c) => {
      if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error(`${name}[${r}][${c}] = ${String(v)} is not an integer`);
    });
  });
  return out as number[][];
}

/** Plain numbers (1-D or 2-D) from a tensor or an array, with the shape. */
export function readNumbers(value: tf.Tensor | number[] | number[][], name: string): { values: number[]; shape: number[]; isInteger: boolean } {
  if (value instanceof tf.Tensor) {
    return { values: Array.from(value.dataSync()), shape: value.shape.slice(), isInteger: value.dtype === 'int32' };
  }
  if (!Array.isArray(value)) throw new Error(`${name} must be a tensor or an array of numbers, got ${typeof value}`);
  const twoD = value.length > 0 && Array.isArray(value[0]);
  const flat = twoD ? (value as number[][]).flat() : (value as number[]);
  flat.forEach((v, i) => {
    if (typeof v !== 'number' || Number.isNaN(v)) throw new Error(`${name}: element ${i} is ${String(v)}, expected a number`);
  });
  const shape = twoD ? [value.length, (value[0] as number[]).length] : [value.length];
  if (twoD && (value as number[][]).some((r) => r.length !== shape[1])) throw new Error(`${name}: rows must be equally long`);
  return { values: flat, shape, isInteger: flat.every((v) => Number.isInteger(v)) };
}

export function shapesEqual(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Positions as transformers derives them for left padding: cumsum(mask) - 1, and 1 where masked. */
export function positionsFromMask(mask: number[][]): number[][] {
  return mask.map((row) => {
    let seen = 0;
    return row.map((m) => (m ? seen++ : 1));
  });
}
