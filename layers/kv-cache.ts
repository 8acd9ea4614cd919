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

  dispose(): void {
    for (let i = 0; i < this.numLayers; i++) {
      this.keys[i]?.dispose();
      this.values[i]?.dispose();
      this.keys[i] = this.values[i] = null;
    }
  }
}
