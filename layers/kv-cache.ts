import * as tf from '@tensorflow/tfjs';

/**
 * Keys and values of every attention layer, [batch, kvHeads, length, headDim] each, grown by concatenation.
 * Owned by whoever starts a generation; `dispose()` frees it. tfjs tensors are immutable, so an append is a
 * concat and the previous tensors are freed at once.
 */
export class KVCache {
  readonly keys: Array<tf.Tensor4D | null>;
  readonly values: Array<tf.Tensor4D | null>;

  constructor(readonly numLayers: number) {
    this.keys = new Array(numLayers).fill(null);
    this.values = new Array(numLayers).fill(null);
  }

  /** Tokens already cached (what the next positions start from). */
  get length(): number {
    return this.keys[0]?.shape[2] ?? 0;
  }

  get batchSize(): number | null {
    return this.keys[0]?.shape[0] ?? null;
  }

  /** Appends new keys/values for one layer and returns the full ones; the cache keeps them alive past tf.tidy. */
  update(layer: number, keys: tf.Tensor4D, values: tf.Tensor4D): [tf.Tensor4D, tf.Tensor4D] {
    if (layer < 0 || layer >= this.numLayers) throw new Error(`KVCache: layer ${layer} out of range [0, ${this.numLayers})`);
    const oldK = this.keys[layer];
    const oldV = this.values[layer];
    const newK = oldK ? (tf.concat([oldK, keys], 2) as tf.Tensor4D) : keys.clone();
    const newV = oldV ? (tf.concat([oldV, values], 2) as tf.Tensor4D) : values.clone();
    this.keys[layer] = tf.keep(newK);
    this.values[layer] = tf.keep(newV);
    oldK?.dispose();
    oldV?.dispose();
    return [newK, newV];
  }

  /** Stores a layer's full keys/values computed elsewhere (a fused kernel that appended them itself); frees the old ones. */
  replace(layer: number, keys: tf.Tensor4D, values: tf.Tensor4D): void {
    if (layer < 0 || layer >= this.numLayers) throw new Error(`KVCache: layer ${layer} out of range [0, ${this.numLayers})`);
    this.keys[layer]?.dispose();
    this.values[layer]?.dispose();
    this.keys[layer] = tf.keep(keys);
    this.values[layer] = tf.keep(values);
  }

  /**
   * Keeps the batch rows `rows` (in that order) and drops the first `dropPositions` positions of every layer: a
   * scheduler's rows that ended leave the batch, and padding no remaining row attends to goes.
   */
  selectRows(rows: number[], dropPositions = 0): void {
    const length = this.length;
    if (dropPositions < 0 || dropPositions > length) throw new Error(`KVCache: cannot drop ${dropPositions} of ${length} positions`);
    const batch = this.batchSize ?? 0;
    rows.forEach((r) => {
      if (!Number.isInteger(r) || r < 0 || r >= batch) throw new Error(`KVCache: row ${r} out of range [0, ${batch})`);
    });
    for (let layer = 0; layer < this.numLayers; layer++) {
      const [keys, values] = [this.keys[layer]!, this.values[layer]!];
      this.replace(layer, ...tf.tidy(() => {
        const index = tf.tensor1d(rows, 'int32');
        const pick = (t: tf.Tensor4D) => tf.gather(t, index).slice([0, 0, dropPositions, 0], [-1, -1, -1, -1]) as tf.Tensor4D;
        return [pick(keys), pick(values)] as [tf.Tensor4D, tf.Tensor4D];
      }));
    }
  }

  /**
   * Adds the batch rows of `other` after this cache's rows; the shorter side is left-padded with zeros to the longer
   * length (positions its attention mask must mark as padding). `other` is left as it was.
   */
  appendRows(other: KVCache): void {
    if (other.numLayers !== this.numLayers) throw new Error(`KVCache: cannot join a cache of ${other.numLayers} layers to one of ${this.numLayers}`);
    const length = Math.max(this.length, other.length);
    for (let layer = 0; layer < this.numLayers; layer++) {
      const ours = [this.keys[layer], this.values[layer]];
      const theirs = [other.keys[layer]!, other.values[layer]!];
      if (!ours[0]) {
        this.replace(layer, theirs[0].clone(), theirs[1].clone());
        continue;
      }
      this.replace(layer, ...tf.tidy(() => {
        const padded = (t: tf.Tensor4D) => (t.shape[2] === length ? t : tf.pad(t, [[0, 0], [0, 0], [length - t.shape[2], 0], [0, 0]]));
        return [0, 1].map((i) => tf.concat([padded(ours[i]!), padded(theirs[i])], 0)) as [tf.Tensor4D, tf.Tensor4D];
      }));
    }
  }

  /**
   * A new one-row cache of batch row `row`'s positions [start, end) (end: the cache's length): what a prefix cache
   * keeps of a finished row, or hands a new one that begins with the same tokens.
   */
  slice(row: number, start: number, end = this.length): KVCache {
    const batch = this.batchSize ?? 0;
    if (!Number.isInteger(row) || row < 0 || row >= batch) throw new Error(`KVCache: row ${row} out of range [0, ${batch})`);
    if (!(start >= 0 && start <= end && end <= this.length)) throw new Error(`KVCache: positions [${start}, ${end}) are not within [0, ${this.length})`);
    const out = new KVCache(this.numLayers);
    for (let layer = 0; layer < this.numLayers; layer++) {
      const part = (t: tf.Tensor4D) => t.slice([row, 0, start, 0], [1, -1, end - start, -1]) as tf.Tensor4D;
      out.replace(layer, part(this.keys[layer]!), part(this.values[layer]!));
    }
    return out;
  }

  dispose(): void {
    for (let i = 0; i < this.numLayers; i++) {
      this.keys[i]?.dispose();
      this.values[i]?.dispose();
      this.keys[i] = this.values[i] = null;
    }
  }
}
