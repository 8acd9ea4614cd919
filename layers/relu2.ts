import * as tf from '@tensorflow/tfjs';
import { RELU2_KERNEL, fusedKernelApplies } from '../src/kernels/fused';

/** Squared ReLU, relu(x)², the activation of the Nemotron MLP (Primer, So et al. 2021). */
export function relu2(x: tf.Tensor): tf.Tensor {
  // One program instead of two where a backend fuses it (WebGPU, inference only).
  if (fusedKernelApplies(RELU2_KERNEL)) return tf.engine().runKernel(RELU2_KERNEL, { x }) as tf.Tensor;
  return tf.tidy(() => tf.square(tf.relu(x)));
}

export class Relu2 extends tf.layers.Layer {
  static className = 'Relu2';

  call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return relu2(Array.isArray(inputs) ? inputs[0] : inputs);
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }
}
tf.serialization.registerClass(Relu2);
