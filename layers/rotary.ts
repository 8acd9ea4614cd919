import * as tf from '@tensorflow/tfjs';
import { ROTARY_KERNEL } from '../src/kernels/fused';
import { RopeFrequencies, RopeScaling, ropeFrequencies } from './rope-frequencies';

export interface RotaryArgs {
  headDim: number;
  /** Channels rotated: floor(headDim × partial_rotary_factor); the rest pass through. */
  rotaryDim: number;
  base: number;
  /** Linear rope scaling: positions are divided by this factor (the same as scaling { ropeType: 'linear', factor }). */
  scalingFactor?: number;
  /** transformers' rope scaling (config.json's rope_parameters): linear, dynamic, yarn, llama3 or longrope. */
  scaling?: RopeScaling | null;
  /** max_position_embeddings, which dynamic, yarn and longrope read (default 4096, transformers' Nemotron default). */
  maxPositionEmbeddings?: number;
  /** Table size built up front; it grows on demand for longer positions. */
  initialPositions?: number;
  name?: string;
}

/**
 * Rotary position embedding on the first `rotaryDim` channels of each head (rotate-half convention, as in
 * transformers' Nemotron), the remaining channels passed through. Positions come from explicit position ids
 * so that left padding and cache offsets work. cos/sin tables are computed once and gathered per call.
 *
 * The frequencies follow transformers' rope types. Two of them change with the call's longest sequence, as there:
 * longrope takes its long factors beyond the original length; dynamic NTK recomputes its frequencies whenever a call
 * is longer than any before it (beyond max_position_embeddings) and keeps them until a call shorter than
 * max_position_embeddings resets them — state of the layer, as of transformers' rotary module.
 */
export class PartialRotaryEmbedding extends tf.layers.Layer {
  static className = 'PartialRotaryEmbedding';
  readonly args: RotaryArgs;
  private readonly scaling: RopeScaling | null;
  private readonly maxPositions: number;
  /** The frequencies in use (transformers' inv_freq buffer) and those the model was built with. */
  private frequencies: RopeFrequencies;
  private readonly initialFrequencies: RopeFrequencies;
  /** dynamic: the longest sequence the frequencies were computed for (transformers' max_seq_len_cached). */
  private dynamicLength: number;
  private tableFrequencies: RopeFrequencies | null = null;
  private cosTable: tf.Tensor2D | null = null;
  private sinTable: tf.Tensor2D | null = null;
  private permutationTensor: tf.Tensor2D | null = null;
  private tableSize = 0;

  constructor(args: RotaryArgs) {
    super({ name: args.name, trainable: false });
    if (args.rotaryDim % 2 !== 0 || args.rotaryDim <= 0 || args.rotaryDim > args.headDim) {
      throw new Error(`PartialRotaryEmbedding: rotaryDim must be even and in (0, headDim=${args.headDim}], got ${args.rotaryDim}`);
    }
    this.args = args;
    this.scaling = args.scaling ?? (args.scalingFactor !== undefined && args.scalingFactor !== 1 ? { ropeType: 'linear', factor: args.scalingFactor } : null);
    this.maxPositions = args.maxPositionEmbeddings ?? 4096;
    this.dynamicLength = this.maxPositions;
    this.frequencies = this.initialFrequencies = ropeFrequencies(this.scaling, args.base, args.rotaryDim, this.maxPositions);
    this.ensureTable(args.initialPositions ?? 0);
    void this.permutation; // built with the tables, not on first use, so that a forward adds no lasting tensor
  }

  /** The inverse frequencies in use (transformers' rotary_emb.inv_freq) and the scale of cos and sin. */
  get currentFrequencies(): RopeFrequencies {
    return this.frequencies;
  }

  /**
   * The frequencies for a call whose longest sequence is `seqLen` (transformers' dynamic_rope_update), and whether they
   * are lasting (worth a table) or one call's (dynamic NTK while it grows: new frequencies at each longer call).
   */
  private frequenciesFor(seqLen: number): { frequencies: RopeFrequencies; lasting: boolean } {
    const type = this.scaling?.ropeType;
    if (type === 'dynamic') {
      if (seqLen > this.dynamicLength) {
        this.frequencies = ropeFrequencies(this.scaling, this.args.base, this.args.rotaryDim, this.maxPositions, seqLen);
        this.dynamicLength = seqLen;
      }
      if (seqLen < this.maxPositions && this.dynamicLength > this.maxPositions) {
        this.frequencies = this.initialFrequencies;
        this.dynamicLength = this.maxPositions;
      }
      return { frequencies: this.frequencies, lasting: this.frequencies === this.initialFrequencies };
    }
    if (type === 'longrope') {
      const long = seqLen > (this.scaling!.originalMaxPositionEmbeddings ?? this.maxPositions);
      this.frequencies = long
        ? ropeFrequencies(this.scaling, this.args.base, this.args.rotaryDim, this.maxPositions, seqLen)
        : this.initialFrequencies;
      return { frequencies: this.frequencies, lasting: true };
    }
    return { frequencies: this.frequencies, lasting: true };
  }

  /**
   * cos and sin rows [positions.length, headDim] for these positions. Rows span the whole head: cos is 1 and sin 0 on
   * the pass-through channels, and rotate_half's minus sign is folded into sin, so that a rotation is
   * x·cos + (x·P)·sin with P a permutation matrix (see applyRotary).
   */
  private rows(positions: ArrayLike<number>, { invFreq, attentionScaling }: RopeFrequencies): [Float32Array, Float32Array] {
    const { headDim, rotaryDim } = this.args;
    const half = rotaryDim / 2;
    const cos = new Float32Array(positions.length * headDim);
    const sin = new Float32Array(positions.length * headDim);
    const scale = Math.fround(attentionScaling);
    for (let r = 0; r < positions.length; r++) {
      const row = r * headDim;
      for (let i = 0; i < half; i++) {
        // emb = cat(freqs, freqs): both halves use the same angle; cos and sin times the attention scaling (yarn,
        // longrope), in float32 as torch.
        const angle = Math.fround(positions[r] * invFreq[i]);
        const c = scale === 1 ? Math.cos(angle) : Math.fround(Math.fround(Math.cos(angle)) * scale);
        const s = scale === 1 ? Math.sin(angle) : Math.fround(Math.fround(Math.sin(angle)) * scale);
        cos[row + i] = cos[row + i + half] = c;
        sin[row + i] = -s;
        sin[row + i + half] = s;
      }
      for (let i = rotaryDim; i < headDim; i++) cos[row + i] = 1;
    }
    return [cos, sin];
  }

  /** Grows the cos/sin tables to cover positions [0, positions) with the frequencies in use. */
  ensureTable(positions: number): void {
    if (positions <= this.tableSize && this.tableFrequencies === this.frequencies) return;
    const size = Math.max(64, 2 ** Math.ceil(Math.log2(Math.max(positions, this.tableSize, 1))));
    const [cos, sin] = this.rows(Int32Array.from({ length: size }, (_, p) => p), this.frequencies);
    this.cosTable?.dispose();
    this.sinTable?.dispose();
    this.cosTable = tf.keep(tf.tensor2d(cos, [size, this.args.headDim]));
    this.sinTable = tf.keep(tf.tensor2d(sin, [size, this.args.headDim]));
    this.tableSize = size;
    this.tableFrequencies = this.frequencies;
  }

  /**
   * The permutation matrix P [headDim, headDim] with (x·P)[j] = x[partner(j)], rotate_half's channel order: the second
   * half of the rotated channels, then the first; pass-through channels map to themselves (their sin is 0). A matMul
   * by P is exact and, on TensorFlow, 3× faster than a gather along the last axis. Owned by the layer: do not dispose.
   */
  get permutation(): tf.Tensor2D {
    if (!this.permutationTensor) {
      const { headDim, rotaryDim } = this.args;
      const half = rotaryDim / 2;
      const matrix = new Float32Array(headDim * headDim);
      for (let j = 0; j < headDim; j++) {
        const partner = j < half ? j + half : j < rotaryDim ? j - half : j;
        matrix[partner * headDim + j] = 1;
      }
      this.permutationTensor = tf.keep(tf.tensor2d(matrix, [headDim, headDim]));
    }
    return this.permutationTensor;
  }

  /**
   * cos and sin for these positions, shaped [batch, 1, seq, headDim] to broadcast over heads (see rows). `maxPosition`:
   * the largest of them, which picks the frequencies of the rope types that depend on the sequence length.
   */
  tables(positionIds: tf.Tensor2D, maxPosition: number): [tf.Tensor4D, tf.Tensor4D] {
    const { frequencies, lasting } = this.frequenciesFor(maxPosition + 1);
    const [b, s] = positionIds.shape;
    const shape: [number, number, number, number] = [b, 1, s, this.args.headDim];
    if (!lasting) {
      // One call's frequencies: the rows it needs, computed for it.
      const [cos, sin] = this.rows(positionIds.dataSync(), frequencies);
      return [tf.tensor4d(cos, shape), tf.tensor4d(sin, shape)];
    }
    this.ensureTable(maxPosition + 1);
    return tf.tidy(() => {
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
      return applyRotary(x as tf.Tensor4D, cos, sin, this.permutation);
    });
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    return (inputShape as tf.Shape[])[0];
  }

  getConfig(): tf.serialization.ConfigDict {
    const { headDim, rotaryDim, base } = this.args;
    return {
      ...super.getConfig(), headDim, rotaryDim, base, maxPositionEmbeddings: this.maxPositions,
      scaling: this.scaling as unknown as tf.serialization.ConfigDictValue,
    };
  }

  /** Frees the cos/sin tables (the layer has no weights; tables are rebuilt if it is used again). */
  disposeWeights(): number {
    this.cosTable?.dispose();
    this.sinTable?.dispose();
    this.permutationTensor?.dispose();
    this.cosTable = this.sinTable = this.permutationTensor = null;
    this.tableSize = 0;
    this.tableFrequencies = null;
    return super.disposeWeights();
  }
}
tf.serialization.registerClass(PartialRotaryEmbedding);

/**
 * The fused rotary kernel for training on WebGPU: its gradient is the inverse rotation, the same kernel with the sin
 * table negated (`inverse`), as the tables' sin halves are −sin θ and +sin θ (and 0 on pass-through channels). One
 * dispatch each way where the plain ops and their gradients take ~11. The tables are constants: saved for the backward
 * (the forward's tidy would free them), not differentiated.
 */
export function rotaryWithGradient(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D, rotaryDim: number): tf.Tensor4D {
  const rotate = tf.customGrad(((input: tf.Tensor, save: (ts: tf.Tensor[]) => void) => {
    save([cos, sin]);
    const value = tf.engine().runKernel(ROTARY_KERNEL, { x: input, cos, sin }, { rotaryDim }) as tf.Tensor;
    const gradFunc = (dy: tf.Tensor, [savedCos, savedSin]: tf.Tensor[]) =>
      tf.engine().runKernel(ROTARY_KERNEL, { x: dy, cos: savedCos, sin: savedSin }, { rotaryDim, inverse: true }) as tf.Tensor;
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return rotate(x) as tf.Tensor4D;
}

/**
 * Rotary embedding with the tables and permutation matrix of PartialRotaryEmbedding: x·cos + (x·P)·sin, which is
 * x·cos + rotate_half(x)·sin on the rotated channels and x itself on the pass-through ones.
 */
export function applyRotary(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D, permutation: tf.Tensor2D): tf.Tensor4D {
  return tf.tidy(() => {
    const headDim = x.shape[3];
    // As one 2-D matMul: wasm's batched kernel is slow, and every backend runs a 2-D one well.
    const partners = tf.matMul(x.reshape([-1, headDim]) as tf.Tensor2D, permutation).reshape(x.shape);
    return tf.add(tf.mul(x, cos), tf.mul(partners, sin)) as tf.Tensor4D;
  });
}
