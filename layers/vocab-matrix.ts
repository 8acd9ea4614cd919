import * as tf from '@tensorflow/tfjs';
import { linear, normalInit } from './weights';

/** Separates a parameter's HF name from its block index: `model.embed_tokens.weight#1`. */
export const BLOCK_SEPARATOR = '#';

/** `name#i` → [name, i]; null for a parameter stored whole. */
export function blockOf(name: string): [string, number] | null {
  const at = name.lastIndexOf(BLOCK_SEPARATOR);
  return at < 0 ? null : [name.slice(0, at), Number(name.slice(at + 1))];
}

/** Values stored in row blocks, grouped under their HF name in block order (`name#0`, `name#1`, …). */
export function groupBlocks<T>(entries: Iterable<[string, T]>): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const [name, value] of entries) {
    const block = blockOf(name);
    if (!block) continue;
    if (!groups.has(block[0])) groups.set(block[0], []);
    groups.get(block[0])![block[1]] = value;
  }
  return groups;
}

/** Row blocks read back and joined into one host tensor (what a checkpoint holds). */
export async function joinRows(blocks: tf.Tensor[]): Promise<{ shape: number[]; data: Float32Array }> {
  const shape = [blocks.reduce((n, b) => n + b.shape[0], 0), ...blocks[0].shape.slice(1)];
  const data = new Float32Array(blocks.reduce((n, b) => n + b.size, 0));
  let offset = 0;
  for (const block of blocks) {
    data.set(await block.data() as Float32Array, offset);
    offset += block.size;
  }
  return { shape, data };
}

let blockBytesOverride: number | null = null;

/**
 * Sets the largest float32 block a vocabulary matrix may be stored in (null: the backend's own limit). For tests:
 * blocking is otherwise only needed on WebGPU, which binds at most maxStorageBufferBindingSize bytes (2 GB on the
 * H100) to a shader, less than Minitron-4B's 3.1 GB embedding.
 */
export function setMaxWeightBlockBytes(bytes: number | null): void {
  if (bytes !== null && !(Number.isInteger(bytes) && bytes > 0)) throw new Error(`setMaxWeightBlockBytes: expected a positive integer or null, got ${bytes}`);
  blockBytesOverride = bytes;
}

/** The largest float32 tensor the active backend can hand to one kernel (Infinity where nothing binds buffers). */
export function maxWeightBlockBytes(): number {
  if (blockBytesOverride !== null) return blockBytesOverride;
  if (tf.getBackend() !== 'webgpu') return Infinity;
  const device = (tf.backend() as unknown as { device?: { limits?: { maxStorageBufferBindingSize?: number } } }).device;
  return device?.limits?.maxStorageBufferBindingSize ?? Infinity;
}

/**
 * A [vocab, hidden] weight (the embeddings, the LM head), as one tensor or, where the backend cannot bind that
 * many bytes at once, as row blocks of equal height. Blocks are separate parameters (`name#0`, `name#1`, …) for
 * training; checkpoints still hold one tensor under the HF name (fromPretrained splits it, savePretrained joins it).
 * The choice is made when the model is built, on the backend active then.
 */
export class VocabMatrix {
  readonly blocks: tf.Variable[];
  /** First row of each block. */
  readonly starts: number[];

  constructor(readonly rows: number, readonly cols: number, stddev: number) {
    const limit = maxWeightBlockBytes();
    const tallest = Math.floor(limit / (4 * cols));
    if (tallest < 1) throw new Error(`A row of ${cols} float32 values (${4 * cols} bytes) is larger than the backend's largest buffer (${limit} bytes)`);
    // As few blocks as fit, of equal height (the last one shorter where the rows do not divide).
    const height = Math.ceil(rows / Math.ceil(rows / Math.min(rows, tallest)));
    this.starts = Array.from({ length: Math.ceil(rows / height) }, (_, i) => i * height);
    this.blocks = this.starts.map((start) => tf.tidy(() =>
      tf.variable(normalInit(stddev).apply([Math.min(height, rows - start), cols], 'float32'), true)));
  }

  /** The whole matrix when it is one block, else null. */
  get single(): tf.Variable | null {
    return this.blocks.length === 1 ? this.blocks[0] : null;
  }

  /** HF-named parameters: `[name, weight]`, or `name#i` per block. */
  named(name: string): Array<[string, tf.Variable]> {
    return this.blocks.length === 1 ? [[name, this.blocks[0]]] : this.blocks.map((b, i) => [`${name}${BLOCK_SEPARATOR}${i}`, b]);
  }

  /** Rows `ids` (validated by the caller): [ids.length, cols]. Differentiable. */
  embed(ids: number[]): tf.Tensor2D {
    return tf.tidy(() => {
      if (this.blocks.length === 1) return tf.gather(this.blocks[0], tf.tensor1d(ids, 'int32')) as tf.Tensor2D;
      // Each block that holds some of the ids gathers them; one more gather puts the rows back in order (none when
      // they are in order already, as for one token a row). A decoding step touches one block or a few.
      const parts: tf.Tensor[] = [];
      const order = new Array<number>(ids.length);
      let gathered = 0;
      this.blocks.forEach((block, i) => {
        const [start, end] = [this.starts[i], this.starts[i] + block.shape[0]];
        const mine = ids.flatMap((id, j) => (id >= start && id < end ? [j] : []));
        if (mine.length === 0) return;
        mine.forEach((j, r) => { order[j] = gathered + r; });
        gathered += mine.length;
        parts.push(tf.gather(block, tf.tensor1d(mine.map((j) => ids[j] - start), 'int32')));
      });
      const joined = parts.length === 1 ? parts[0] : tf.concat(parts);
      return (order.every((o, j) => o === j) ? joined : tf.gather(joined, tf.tensor1d(order, 'int32'))) as tf.Tensor2D;
    });
  }

  /** x [..., cols] · Wᵀ: [..., rows]. */
  project(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => (this.blocks.length === 1
      ? linear(x, this.blocks[0])
      : tf.concat(this.blocks.map((b) => linear(x, b)), -1)));
  }
}
