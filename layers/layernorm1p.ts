import * as tf from '@tensorflow/tfjs';
import { LAYERNORM1P_GRAD_KERNEL, LAYERNORM1P_KERNEL, fusedKernelApplies, fusedKernelAvailable, recordingGradients } from '../src/kernels/fused';
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
    if (fusedKernelAvailable(LAYERNORM1P_KERNEL) && fusedKernelAvailable(LAYERNORM1P_GRAD_KERNEL)) return this.fusedWithGradient(x);
    if (recordingGradients()) return this.withPlainGradient(x);
    return tf.tidy(() => {
      const { normed } = this.normalize(x);
      return tf.add(tf.mul(normed, tf.add(this.weight.read(), 1)), this.bias.read());
    });
  }

  /** (x − mean)·rsqrt(var + eps) over the last axis, as tf.moments computes them, and the rsqrt. */
  private normalize(x: tf.Tensor): { normed: tf.Tensor; invStd: tf.Tensor } {
    const { mean, variance } = tf.moments(x, -1, true);
    const invStd = tf.rsqrt(tf.add(variance, this.args.eps));
    return { normed: tf.mul(tf.sub(x, mean), invStd), invStd };
  }

  /**
   * Training on the other backends: the backward written out (~14 ops; autodiff through tf.moments takes ~35):
   * with g = dy·(1 + w) and x̂ the normalised input, dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), dw = Σ dy·x̂, db = Σ dy.
   */
  private withPlainGradient(x: tf.Tensor): tf.Tensor {
    const cols = this.args.size;
    const norm = tf.customGrad(((...args: unknown[]) => {
      const [input, weight, bias] = args as tf.Tensor[];
      const { normed, invStd } = this.normalize(input);
      (args[3] as (ts: tf.Tensor[]) => void)([normed, invStd, weight]);
      const value = tf.add(tf.mul(normed, tf.add(weight, 1)), bias);
      const gradFunc = (dy: tf.Tensor, [xHat, rstd, w]: tf.Tensor[]) => tf.tidy(() => {
        const g = tf.mul(dy, tf.add(w, 1));
        const meanG = tf.mean(g, -1, true);
        const meanGX = tf.mean(tf.mul(g, xHat), -1, true);
        const dx = tf.mul(tf.sub(tf.sub(g, meanG), tf.mul(xHat, meanGX)), rstd);
        const rows = dy.size / cols;
        const dw = tf.sum(tf.reshape(tf.mul(dy, xHat), [rows, cols]), 0);
        const db = tf.sum(tf.reshape(dy, [rows, cols]), 0);
        return [dx, dw, db];
      });
      return { value, gradFunc };
    }) as unknown as Parameters<typeof tf.customGrad>[0]);
    return norm(x, this.weight.read(), this.bias.read());
  }

  /** Training where the backend has both kernels (WebGPU): the fused forward, and the backward as one kernel. */
  private fusedWithGradient(x: tf.Tensor): tf.Tensor {
    const eps = this.args.eps;
    const cols = this.args.size;
    const norm = tf.customGrad(((...args: unknown[]) => {
      const [input, weight, bias] = args as tf.Tensor[];
      (args[3] as (ts: tf.Tensor[]) => void)([input, weight]);
      const value = tf.engine().runKernel(LAYERNORM1P_KERNEL, { x: input, weight, bias }, { eps }) as tf.Tensor;
      const gradFunc = (dy: tf.Tensor, [saved, w]: tf.Tensor[]) => {
        const rows = saved.size / cols;
        const [dx, dw, db] = tf.engine().runKernel(LAYERNORM1P_GRAD_KERNEL,
          { dy: dy.reshape([rows, cols]), x: saved.reshape([rows, cols]), weight: w }, { eps }) as tf.Tensor[];
        return [dx.reshape(saved.shape), dw, db];
      };
      return { value, gradFunc };
    }) as unknown as Parameters<typeof tf.customGrad>[0]);
    return norm(x, this.weight.read(), this.bias.read());
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
