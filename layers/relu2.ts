import * as tf from '@tensorflow/tfjs';
import { RELU2_KERNEL, fusedKernelApplies, fusedKernelAvailable, recordingGradients } from '../src/kernels/fused';

/** Squared ReLU, relu(x)², the activation of the Nemotron MLP (Primer, So et al. 2021). */
export function relu2(x: tf.Tensor): tf.Tensor {
  // One program instead of two where a backend fuses it (WebGPU, inference only).
  if (fusedKernelApplies(RELU2_KERNEL)) return tf.engine().runKernel(RELU2_KERNEL, { x }) as tf.Tensor;
  // Training on WebGPU: the kernel both ways (1 dispatch each instead of ~2 forward and ~4 backward).
  if (tf.getBackend() === 'webgpu' && fusedKernelAvailable(RELU2_KERNEL)) return relu2WithGradient(x);
  // Training elsewhere: the derivative written out, 2·relu(x)·dy (3 ops; autodiff of square∘relu takes ~10, relu's
  // step function alone is 5 on the tensorflow backend).
  if (recordingGradients()) return relu2WithPlainGradient(x);
  return tf.tidy(() => tf.square(tf.relu(x)));
}

function relu2WithPlainGradient(x: tf.Tensor): tf.Tensor {
  const activate = tf.customGrad(((input: tf.Tensor, save: (ts: tf.Tensor[]) => void) => {
    const positive = tf.relu(input);
    save([positive]);
    const value = tf.square(positive);
    const gradFunc = (dy: tf.Tensor, [saved]: tf.Tensor[]) => tf.tidy(() => tf.mul(dy, tf.mul(saved, 2)));
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return activate(x);
}

function relu2WithGradient(x: tf.Tensor): tf.Tensor {
  const activate = tf.customGrad(((input: tf.Tensor, save: (ts: tf.Tensor[]) => void) => {
    save([input]);
    const value = tf.engine().runKernel(RELU2_KERNEL, { x: input }) as tf.Tensor;
    const gradFunc = (dy: tf.Tensor, [saved]: tf.Tensor[]) => tf.engine().runKernel(RELU2_KERNEL, { x: saved, dy }) as tf.Tensor;
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return activate(x);
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
