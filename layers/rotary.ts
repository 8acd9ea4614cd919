import * as tf from '@tensorflow/tfjs';

export interface RotaryArgs {
  headDim: number;
  /** Channels rotated: floor(headDim × partial_rotary_factor); the rest pass through. */
  rotaryDim: number;
  base: number;
  /** Linear rope scaling: positions are divided by this factor. */
  scalingFactor?: number;
  /** Table size built up front; it grows on demand for longer positions. */
  initialPositions?: number;
  name?: string;
}

/**
 * Rotary position embedding on the first `rotaryDim` channels of each head (rotate-half convention, as in
 * transformers' Nemotron), the remaining channels passed through. Positions come from explicit position ids
 * so that left padding and cache offsets work. cos/sin tables are computed once and gathered per call.
 */
export class PartialRotaryEmbedding extends tf.layers.Layer {
  static className = 'PartialRotaryEmbedding';
  readonly args: RotaryArgs;
  private readonly invFreq: Float32Array;
  private cosTable: tf.Tensor2D | null = null;
  private sinTable: tf.Tensor2D | null = null;
  private tableSize = 0;

  constructor(args: RotaryArgs) {
    super({ name: args.name, trainable: false });
    if (args.rotaryDim % 2 !== 0 || args.rotaryDim <= 0 || args.rotaryDim > args.headDim) {
      throw new Error(`PartialRotaryEmbedding: rotaryDim must be even and in (0, headDim=${args.headDim}], got ${args.rotaryDim}`);
    }
    this.args = args;
    // inv_freq = 1 / base^(2i/dim), rounded to float32 at each step as torch computes it.
    const half = args.rotaryDim / 2;
    this.invFreq = new Float32Array(half);
    const factor = args.scalingFactor ?? 1;
    for (let i = 0; i < half; i++) {
      const exponent = Math.fround((2 * i) / args.rotaryDim);
      this.invFreq[i] = Math.fround(Math.fround(1 / Math.fround(Math.pow(args.base, exponent))) / factor);
    }
    this.ensureTable(args.initialPositions ?? 0);
  }

  /** Grows the cos/sin tables to cover positions [0, positions). */
  ensureTable(positions: number): void {
    if (positions <= this.tableSize) return;
    const size = Math.max(64, 2 ** Math.ceil(Math.log2(positions)));
    const dim = this.args.rotaryDim;
    const half = dim / 2;
    const cos = new Float32Array(size * dim);
    const sin = new Float32Array(size * dim);
    for (let p = 0; p < size; p++) {
      for (let i = 0; i < half; i++) {
        const angle = Math.fround(p * this.invFreq[i]);
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        // emb = cat(freqs, freqs): both halves use the same angle.
        cos[p * dim + i] = c;
        cos[p * dim + i + half] = c;
        sin[p * dim + i] = s;
        sin[p * dim + i + half] = s;
      }
    }
    this.cosTable?.dispose();
    this.sinTable?.dispose();
    this.cosTable = tf.keep(tf.tensor2d(cos, [size, dim]));
    this.sinTable = tf.keep(tf.tensor2d(sin, [size, dim]));
    this.tableSize = size;
  }

  /** cos and sin for these positions, shaped [batch, 1, seq, rotaryDim] to broadcast over heads. */
  tables(positionIds: tf.Tensor2D, maxPosition: number): [tf.Tensor4D, tf.Tensor4D] {
    this.ensureTable(maxPosition + 1);
    return tf.tidy(() => {
      const [b, s] = positionIds.shape;
      const shape: [number, number, number, number] = [b, 1, s, this.args.rotaryDim];
      const flat = positionIds.reshape([-1]);
      return [
        tf.gather(this.cosTable!, flat).reshape(shape) as tf.Tensor4D,
        tf.gather(this.sinTable!, flat).reshape(shape) as tf.Tensor4D,
      ];
    });
  }

  /** Inputs [x: [batch, heads, seq, headDim], positionIds: [batch, seq] int32]. */
  call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const [x, positionIds] = inputs as tf.Tensor[];
    return tf.tidy(() => {
      const maxPosition = Math.max(0, ...(positionIds.dataSync() as Int32Array));
      const [cos, sin] = this.tables(positionIds as tf.Tensor2D, maxPosition);
      return applyRotary(x as tf.Tensor4D, cos, sin);
    });
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    return (inputShape as tf.Shape[])[0];
  }

  getConfig(): tf.serialization.ConfigDict {
    const { headDim, rotaryDim, base, scalingFactor } = this.args;
    return { ...super.getConfig(), headDim, rotaryDim, base, scalingFactor: scalingFactor ?? 1 };
  }

  /** Frees the cos/sin tables (the layer has no weights; tables are rebuilt if it is used again). */
  disposeWeights(): number {
    this.cosTable?.dispose();
    this.sinTable?.dispose();
    this.cosTable = this.sinTable = null;
    this.tableSize = 0;
    return super.disposeWeights();
  }
}
tf.serialization.registerClass(PartialRotaryEmbedding);

/** x·cos + rotate_half(x)·sin on the first cos.shape[-1] channels; the rest of x passes through. */
export function applyRotary(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => {
    const headDim = x.shape[3];
    const rotaryDim = cos.shape[3];
    const half = rotaryDim / 2;
    const rot = rotaryDim === headDim ? x : x.slice([0, 0, 0, 0], [-1, -1, -1, rotaryDim]);
    const x1 = rot.slice([0, 0, 0, 0], [-1, -1, -1, half]);
    const x2 = rot.slice([0, 0, 0, half], [-1, -1, -1, half]);
    const rotated = tf.concat([tf.neg(x2), x1], 3);
    const embedded = tf.add(tf.mul(rot, cos), tf.mul(rotated, sin));
    if (rotaryDim === headDim) return embedded as tf.Tensor4D;
    const pass = x.slice([0, 0, 0, rotaryDim], [-1, -1, -1, headDim - rotaryDim]);
    return tf.concat([embedded, pass], 3) as tf.Tensor4D;
  });
}
