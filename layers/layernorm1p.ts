import * as tf from '@tensorflow/tfjs';
import { LAYERNORM1P_KERNEL, fusedKernelApplies } from '../src/kernels/fused';
import { HFNamedWeights, variableOf } from './weights';

export interface LayerNorm1PArgs {
  size: number;
  eps: number;
  name?: string;
}

/**
 * Nemotron's LayerNorm "1P": LayerNorm over the last axis whose scale is stored as (gamma - 1), so the
 * applied scale is (1 + weight). Zero-initialised weights are the identity scale, which keeps weight
 * decay pulling towards 1 rather than 0.
 */
export class NemotronLayerNorm1P extends tf.layers.Layer implements HFNamedWeights {
  static className = 'NemotronLayerNorm1P';
  readonly args: LayerNorm1PArgs;
  private weight!: tf.LayerVariable;
  private bias!: tf.LayerVariable;

  constructor(args: LayerNorm1PArgs) {
    super({ name: args.name });
    this.args = args;
    this.build([null, args.size]);
  }

  build(_inputShape: tf.Shape | tf.Shape[]): void {
    this.weight = this.addWeight('weight', [this.args.size], 'float32', tf.initializers.zeros());
    this.bias = this.addWeight('bias', [this.args.size], 'float32', tf.initializers.zeros());
    this.built = true;
  }

  call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    if (fusedKernelApplies(LAYERNORM1P_KERNEL)) {
      const attrs = { eps: this.args.eps };
      return tf.engine().runKernel(LAYERNORM1P_KERNEL, { x, weight: this.weight.read(), bias: this.bias.read() }, attrs) as tf.Tensor;
    }
    return tf.tidy(() => {
      const { mean, variance } = tf.moments(x, -1, true);
      const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, this.args.eps)));
      return tf.add(tf.mul(normed, tf.add(this.weight.read(), 1)), this.bias.read());
    });
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }

  namedWeights(): Array<[string, tf.Variable]> {
    return [['weight', variableOf(this.weight)], ['bias', variableOf(this.bias)]];
  }

  getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), size: this.args.size, eps: this.args.eps };
  }
}
tf.serialization.registerClass(NemotronLayerNorm1P);
