import * as tf from '@tensorflow/tfjs';
import { recordingGradients } from '../src/kernels/fused';
import { linear } from './weights';

/**
 * A LoRA adapter of one linear layer, as PEFT's lora.Linear adds it: y = W·x (+ b) + scaling · B·A·dropout(x), with
 * A [r, in] and B [out, r] in PEFT's layout (their checkpoint keys are `…lora_A.weight`, `…lora_B.weight`).
 * PEFT's default initialisation: A kaiming-uniform (a = √5, so U(±1/√in)), B zeros, so a new adapter changes nothing.
 */
export class LoraAdapter {
  readonly a: tf.Variable;
  readonly b: tf.Variable;

  constructor(readonly inFeatures: number, readonly outFeatures: number, readonly r: number, readonly scaling: number,
    readonly dropout = 0, seed?: number) {
    if (!(Number.isInteger(r) && r > 0)) throw new Error(`LoRA rank r must be a positive integer, got ${r}`);
    if (!(dropout >= 0 && dropout < 1)) throw new Error(`LoRA dropout must be in [0, 1), got ${dropout}`);
    const bound = 1 / Math.sqrt(inFeatures);
    this.a = tf.variable(tf.randomUniform([r, inFeatures], -bound, bound, 'float32', seed), true);
    this.b = tf.variable(tf.zeros([outFeatures, r]), true);
  }

  /**
   * scaling · (dropout(x)·Aᵀ)·Bᵀ for x [..., in]; dropout only while a gradient tape records (training). The scaling
   * multiplies the r-wide intermediate rather than the out-wide result (PEFT's order): the same product, out/r times
   * fewer multiplications each way.
   */
  delta(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const dropped = this.dropout > 0 && recordingGradients() ? tf.dropout(x, this.dropout) : x;
      return linear(tf.mul(linear(dropped, this.a), this.scaling), this.b);
    });
  }

  /** scaling · B·A [out, in]: what merging adds to W. */
  weightDelta(): tf.Tensor2D {
    return tf.tidy(() => tf.mul(tf.matMul(this.b, this.a), this.scaling) as tf.Tensor2D);
  }

  dispose(): void {
    this.a.dispose();
    this.b.dispose();
  }
}

/** Where a layer keeps the adapters of its linear projections, by HF projection name (q_proj, up_proj, …). */
export type Adapters = Map<string, LoraAdapter>;

/** linear(x, W, b) plus the projection's adapter, where it has one. */
export function adaptedLinear(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | null | undefined, adapter: LoraAdapter | undefined): tf.Tensor {
  if (!adapter) return linear(x, weight, bias);
  return tf.tidy(() => tf.add(linear(x, weight, bias), adapter.delta(x)));
}
