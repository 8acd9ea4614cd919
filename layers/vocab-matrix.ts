import * as tf from '@tensorflow/tfjs';
import { linear, normalInit, trains, transposedProduct } from './weights';
import { recordingGradients } from '../src/kernels/fused';

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

/** The default bytes of logits a chunk of the chunked cross entropy holds at once (before the backend's own limit). */
const DEFAULT_LOSS_CHUNK_BYTES = 256 * 2 ** 20;
let lossChunkBytes = DEFAULT_LOSS_CHUNK_BYTES;

/**
 * Sets how many bytes of float32 logits one chunk of `VocabMatrix.projectedCrossEntropy` may hold (null: 256 MiB).
 * Smaller chunks hold less memory and dispatch more kernels; tests force small ones to cross chunk edges.
 */
export function setLossChunkBytes(bytes: number | null): void {
  if (bytes !== null && !(Number.isInteger(bytes) && bytes > 0)) throw new Error(`setLossChunkBytes: expected a positive integer or null, got ${bytes}`);
  lossChunkBytes = bytes ?? DEFAULT_LOSS_CHUNK_BYTES;
}

/**
 * A [vocab, hidden] weight (the embeddings, the LM head), as one tensor or, where the backend cannot bind that
 * many bytes at once, as row blocks of equal height. Blocks are separate parameters (`name#0`, `name#1`, …) for
 * training; checkpoints still hold one tensor under the HF name (fromPretrained splits it, savePretrained joins it).
 * The choice is made when the model is built, on the backend active then.
 */
/** First rows of the blocks of a [rows, cols] matrix: as few as the backend binds, of equal height (the last shorter). */
function blockStarts(rows: number, cols: number): number[] {
  const limit = maxWeightBlockBytes();
  const tallest = Math.floor(limit / (4 * cols));
  if (tallest < 1) throw new Error(`A row of ${cols} float32 values (${4 * cols} bytes) is larger than the backend's largest buffer (${limit} bytes)`);
  const height = Math.ceil(rows / Math.ceil(rows / Math.min(rows, tallest)));
  return Array.from({ length: Math.ceil(rows / height) }, (_, i) => i * height);
}

export class VocabMatrix {
  /** The blocks (one unless the backend cannot bind the whole matrix); replaced, not changed, by resize. */
  blocks: tf.Variable[];
  /** First row of each block. */
  starts: number[];
  rows: number;

  constructor(rows: number, readonly cols: number, stddev: number) {
    this.rows = rows;
    this.starts = blockStarts(rows, cols);
    this.blocks = this.starts.map((start, i) => tf.tidy(() =>
      tf.variable(normalInit(stddev).apply([(this.starts[i + 1] ?? rows) - start, cols], 'float32'), true)));
  }

  /**
   * To `rows` rows: the first min(old, new) rows kept, the rest from `added(count)` [count, cols] (called only when
   * growing). The blocks become new variables (trainable as the old ones were); the old ones are freed, so an optimizer
   * made before holds stale parameters.
   */
  resize(rows: number, added: (count: number) => tf.Tensor2D): void {
    if (!(Number.isInteger(rows) && rows >= 1)) throw new Error(`VocabMatrix.resize: rows must be a positive integer, got ${rows}`);
    if (rows === this.rows) return;
    const extra = rows > this.rows ? added(rows - this.rows) : null;
    if (extra && (extra.shape[0] !== rows - this.rows || extra.shape[1] !== this.cols)) {
      extra.dispose();
      throw new Error(`VocabMatrix.resize: the added rows must be [${rows - this.rows}, ${this.cols}]`);
    }
    const starts = blockStarts(rows, this.cols);
    const trainable = this.blocks[0].trainable;
    // Each new block: the pieces of old blocks and of the added rows that cover its range.
    const blocks = starts.map((start, i) => tf.tidy(() => {
      const end = starts[i + 1] ?? rows;
      const pieces: tf.Tensor2D[] = [];
      this.blocks.forEach((block, j) => {
        const [from, to] = [Math.max(start, this.starts[j]), Math.min(end, this.starts[j] + block.shape[0])];
        if (from < to) pieces.push(tf.slice(block as tf.Tensor2D, [from - this.starts[j], 0], [to - from, this.cols]));
      });
      if (extra && end > this.rows) pieces.push(tf.slice(extra, [Math.max(start, this.rows) - this.rows, 0], [end - Math.max(start, this.rows), this.cols]));
      return tf.variable(pieces.length === 1 ? pieces[0] : tf.concat(pieces), trainable);
    }));
    extra?.dispose();
    for (const block of this.blocks) block.dispose();
    [this.blocks, this.starts, this.rows] = [blocks, starts, rows];
  }

  /**
   * `count` rows drawn as transformers' mean_resizing draws added embeddings: from a normal distribution with the rows'
   * mean and 1e-9 times their covariance, sampled as mean + √(1e-9 / rows) · G·(W − mean) with G standard normal
   * [count, rows] (covariance exactly (W − mean)ᵀ(W − mean) / rows, and no factorisation of it). Where the covariance
   * cannot be positive definite (no more rows than columns) transformers takes the mean itself; so does this.
   */
  meanRows(count: number, seed?: number): tf.Tensor2D {
    return tf.tidy(() => {
      const mean = tf.div(tf.addN(this.blocks.map((b) => tf.sum(b, 0))), this.rows);
      const atMean = tf.tile(mean.reshape([1, this.cols]), [count, 1]) as tf.Tensor2D;
      if (this.rows <= this.cols) return atMean;
      const noise = tf.addN(this.blocks.map((block, i) =>
        tf.matMul(tf.randomNormal([count, block.shape[0]], 0, 1, 'float32', seed === undefined ? undefined : seed + i), tf.sub(block, mean))));
      return tf.add(atMean, tf.mul(noise, Math.sqrt(1e-9 / this.rows))) as tf.Tensor2D;
    });
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
    return projectBlocks(x, this.blocks);
  }

  /**
   * Mean cross entropy of the logits x·Wᵀ against `targets` (one class id per row of x, none ignored), as torch's
   * CrossEntropyLoss computes it, without the logits ever existing whole: rows of x go through in chunks of at most
   * setLossChunkBytes() of logits, and the gradient recomputes each chunk's logits rather than keeping them. For a
   * 256,000-token vocabulary the logits of 2,048 tokens are 2.1 GB (more than WebGPU binds at once), and the
   * log-softmax, one-hot and gradient that a plain loss adds are as large again each.
   */
  projectedCrossEntropy(x: tf.Tensor2D, targets: number[]): tf.Scalar {
    const [count, cols] = x.shape;
    if (cols !== this.cols) throw new Error(`projectedCrossEntropy: x has ${cols} columns, expected ${this.cols}`);
    if (targets.length !== count) throw new Error(`projectedCrossEntropy: ${targets.length} targets for ${count} rows`);
    if (count === 0) throw new Error('projectedCrossEntropy: no rows: a mean over nothing is undefined');
    targets.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= this.rows) throw new Error(`projectedCrossEntropy: targets[${i}] = ${t} is outside [0, ${this.rows})`);
    });
    const chunkRows = Math.max(1, Math.floor(Math.min(lossChunkBytes, maxWeightBlockBytes()) / (4 * this.rows)));
    const chunks = Array.from({ length: Math.ceil(count / chunkRows) }, (_, i) => [i * chunkRows, Math.min(count, (i + 1) * chunkRows)]);
    const vocab = this.rows;
    const blockStarts = this.starts;
    // The chunk's logits [rows, vocab] and its targets.
    const chunkLogits = (xs: tf.Tensor2D, ws: tf.Tensor2D[], [start, end]: number[]) =>
      projectBlocks(xs.slice([start, 0], [end - start, cols]), ws) as tf.Tensor2D;
    // A frozen block (LoRA's base) is not an input of the gradient: its dW is never computed.
    const blocks = this.blocks as tf.Tensor2D[];
    const trained = blocks.map(trains);
    const loss = tf.customGrad(((...args: unknown[]) => {
      const xs = args[0] as tf.Tensor2D;
      const ws = blocks;
      // The last chunk's softmax is kept for the backward (one chunk's logits more, at most), which then recomputes
      // the other chunks only: none where the logits fit in one chunk.
      const keepLast = recordingGradients();
      let lastProbs = null as tf.Tensor | null;
      let total: tf.Tensor = tf.scalar(0);
      chunks.forEach((chunk, i) => {
        const next = tf.tidy(() => {
          const logits = chunkLogits(xs, ws, chunk);
          // The target's logit of each row, gathered from the flattened chunk: row r's is at r·vocab + target.
          const at = targets.slice(chunk[0], chunk[1]).map((t, r) => r * vocab + t);
          const picked = tf.gather(logits.reshape([-1]), tf.tensor1d(at, 'int32'));
          // logsumexp as tf.logSumExp computes it, its exponentials reused for the softmax.
          const max = tf.max(logits, 1, true);
          const exps = tf.exp(tf.sub(logits, max));
          const sums = tf.sum(exps, 1, true);
          if (keepLast && i === chunks.length - 1) lastProbs = tf.keep(tf.div(exps, sums));
          const lse = tf.add(tf.log(sums), max).reshape([-1]);
          return tf.add(total, tf.sum(tf.sub(lse, picked)));
        });
        total.dispose();
        total = next;
      });
      (args[args.length - 1] as (ts: tf.Tensor[]) => void)(lastProbs ? [xs, ...blocks, lastProbs] : [xs, ...blocks]);
      lastProbs?.dispose(); // kept out of the chunk's tidy for save(), which keeps a clone
      const value = tf.div(total, count) as tf.Scalar;
      // d loss / d logits = (softmax − onehot(target)) / count, chunk by chunk; then dx = dlogits·W and
      // dW = dlogitsᵀ·x, block by block, the block gradients summed over chunks.
      const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, ...rest] = saved as tf.Tensor2D[];
        const sw = rest.slice(0, blocks.length);
        const keptProbs = rest.length > blocks.length ? rest[blocks.length] : null;
        const dws: Array<tf.Tensor | null> = trained.filter(Boolean).map(() => null);
        const dxs: tf.Tensor[] = [];
        for (const [i, chunk] of chunks.entries()) {
          const [dx, ...dw] = tf.tidy(() => {
            const probs = keptProbs && i === chunks.length - 1 ? keptProbs : tf.softmax(chunkLogits(sx, sw, chunk));
            const onehot = tf.oneHot(tf.tensor1d(targets.slice(chunk[0], chunk[1]), 'int32'), vocab);
            const dlogits = tf.mul(tf.sub(probs, onehot), tf.div(dy, count)) as tf.Tensor2D;
            const xc = sx.slice([chunk[0], 0], [chunk[1] - chunk[0], cols]);
            const perBlock = sw.map((w, b) => (sw.length === 1 ? dlogits : dlogits.slice([0, blockStarts[b]], [-1, w.shape[0]])));
            // Summed pairwise: tf.addN binds every block at once, more than WebGPU's 8 buffers a shader.
            const dxc = perBlock.map((d, b) => tf.matMul(d, sw[b])).reduce((a, b) => tf.add(a, b));
            return [dxc, ...perBlock.map((d, b) => (trained[b] ? transposedProduct(d, xc) : null)).filter((d): d is tf.Tensor2D => d !== null)];
          });
          dxs.push(dx);
          // dw holds the trained blocks' gradients, in block order.
          dw.forEach((d, b) => {
            const previous = dws[b];
            dws[b] = previous ? tf.tidy(() => tf.add(previous, d)) : d;
            if (previous) {
              previous.dispose();
              d.dispose();
            }
          });
        }
        const dx = dxs.length === 1 ? dxs[0] : tf.concat(dxs);
        if (dxs.length > 1) tf.dispose(dxs);
        return [dx, ...(dws as tf.Tensor[])];
      };
      return { value, gradFunc };
    }) as unknown as Parameters<typeof tf.customGrad>[0]);
    return loss(x, ...blocks.filter((_, b) => trained[b])) as tf.Scalar;
  }
}

/** x [..., cols] times each block transposed, joined along the last axis: [..., rows]. */
function projectBlocks(x: tf.Tensor, blocks: tf.Tensor[]): tf.Tensor {
  return tf.tidy(() => (blocks.length === 1 ? linear(x, blocks[0]) : tf.concat(blocks.map((b) => linear(x, b)), -1)));
}
