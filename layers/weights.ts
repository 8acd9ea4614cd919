import * as tf from '@tensorflow/tfjs';
import { LINEAR_KERNEL, TILED_PRODUCT_KERNEL, TRANSPOSED_PRODUCT_KERNEL, fusedKernelApplies, fusedKernelAvailable, recordingGradients } from '../src/kernels/fused';
import { FEW_ROWS } from '../src/kernels/webgpu-kernels';

/** A layer whose weights carry their Hugging Face names (relative to the layer), in HF layout. */
export interface HFNamedWeights {
  namedWeights(): Array<[string, tf.Variable]>;
}

/** The tf.Variable behind a tfjs-layers LayerVariable (what gradients and `assign` act on). */
export function variableOf(weight: tf.LayerVariable): tf.Variable {
  return weight.read() as tf.Variable;
}

let deferredInit = 0;

/**
 * Builds layers whose weights start as zeros instead of random draws: for loading a checkpoint, where every
 * value is overwritten (and drawing 4 billion normals would take minutes). Zero pages cost no memory until written.
 */
export function withDeferredInit<T>(build: () => T): T {
  deferredInit++;
  try {
    return build();
  } finally {
    deferredInit--;
  }
}

/** Whether a withDeferredInit build is under way (weights start as zeros). */
export function initDeferred(): boolean {
  return deferredInit > 0;
}

/** transformers' _init_weights for Linear/Embedding: normal(0, initializer_range); biases zero. */
export function normalInit(stddev: number, seed?: number): ReturnType<typeof tf.initializers.randomNormal> {
  return deferredInit ? tf.initializers.zeros() : tf.initializers.randomNormal({ mean: 0, stddev, seed });
}

/** Sees the input of a product with a weight (expert e of a stacked expert tensor): llama-imatrix's collection. */
export type ProductObserver = (weight: tf.Tensor, input: tf.Tensor, expert?: number) => void;
let productObserver: ProductObserver | null = null;

/** Sets (or, with null, clears) the observer of weight products; computeImatrix sets one while it runs. */
export function setProductObserver(observer: ProductObserver | null): void {
  productObserver = observer;
}

/** Whether an observer watches the products (fused kernels that hide them step aside while one does). */
export function observingProducts(): boolean {
  return productObserver !== null;
}

/** Shows `input`, about to be multiplied by `weight`, to the observer if one is set. */
export function observeProduct(weight: tf.Tensor, input: tf.Tensor, expert?: number): void {
  if (productObserver) productObserver(weight, input, expert);
}

/** y = x · Wᵀ + b with W in HF layout [out, in]; x of any rank ≥ 2. */
export function linear(x: tf.Tensor, weight: tf.Tensor, bias?: tf.Tensor | null): tf.Tensor {
  observeProduct(weight, x);
  return tf.tidy(() => {
    const inFeatures = x.shape[x.rank - 1];
    const outFeatures = weight.shape[0];
    const flat = x.rank === 2 ? (x as tf.Tensor2D) : x.reshape([-1, inFeatures]) as tf.Tensor2D;
    if (fusedKernelApplies(LINEAR_KERNEL, { rows: flat.shape[0] })) {
      const inputs: tf.NamedTensorMap = bias ? { x: flat, weight, bias } : { x: flat, weight };
      const y = tf.engine().runKernel(LINEAR_KERNEL, inputs) as tf.Tensor;
      return x.rank === 2 ? y : y.reshape([...x.shape.slice(0, -1), outFeatures]);
    }
    if (flat.shape[0] > FEW_ROWS && recordingGradients() && fusedKernelAvailable(TILED_PRODUCT_KERNEL, { k: inFeatures })) {
      const y = tiledLinear(flat, weight as tf.Tensor2D, bias ?? null);
      return x.rank === 2 ? y : y.reshape([...x.shape.slice(0, -1), outFeatures]);
    }
    // wasm multiplies by a transposed right operand 2–14× slower than by a plain one; (W·xᵀ)ᵀ keeps the weight
    // untransposed and moves only the (small) activations.
    let y: tf.Tensor = tf.getBackend() === 'wasm'
      ? tf.transpose(tf.matMul(weight as tf.Tensor2D, tf.transpose(flat)))
      : tf.matMul(flat, weight as tf.Tensor2D, false, true);
    if (bias) y = tf.add(y, bias);
    return x.rank === 2 ? y : y.reshape([...x.shape.slice(0, -1), outFeatures]);
  });
}

/** a [batch, m, k] · b [batch or 1, n, k]ᵀ by the tiled kernel; with transposeA, a [batch, depth, m]ᵀ · b [.., depth, n]. */
function tiled(a: tf.Tensor, b: tf.Tensor, bias?: tf.Tensor | null, transposeA = false): tf.Tensor {
  return tf.engine().runKernel(TILED_PRODUCT_KERNEL, bias ? { a, b, bias } : { a, b }, { transposeA }) as tf.Tensor;
}

/** Whether a gradient for `t` may be wanted: not a frozen variable (LoRA's base weights are). */
export function trains(t: tf.Tensor): boolean {
  return !(t instanceof tf.Variable) || t.trainable;
}

/**
 * x·Wᵀ (+ b) for training where the tiled product exists (WebGPU): forward by the kernel; backward dx = dy·W (tfjs's
 * matMul without a transposed operand) and dW = dyᵀ·x by the kernel's aᵀ·b form, which reads dy and x along their rows;
 * tfjs's matMul would read a transposed operand in both the forward and dW. A frozen weight or bias (LoRA's base) is
 * not an input of the gradient, so that its product is never computed.
 */
function tiledLinear(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor | null): tf.Tensor2D {
  const [rows, inFeatures] = x.shape;
  const outFeatures = weight.shape[0];
  const [weightTrains, biasTrains] = [trains(weight), bias !== null && trains(bias)];
  // customGrad hands its function the inputs, then a save callback; what the backward reads must be saved through it
  // (the weight too when it is not an input), or the forward's tidy frees it.
  const product = tf.customGrad(((...args: unknown[]) => {
    const xs = args[0] as tf.Tensor2D;
    (args[args.length - 1] as (ts: tf.Tensor[]) => void)([xs, weight]);
    const value = tiled(xs.reshape([1, rows, inFeatures]), weight.reshape([1, outFeatures, inFeatures]), bias).reshape([rows, outFeatures]);
    const gradFunc = (dy: tf.Tensor, [savedX, savedW]: tf.Tensor2D[]) => [
      tf.matMul(dy as tf.Tensor2D, savedW),
      ...(weightTrains ? [transposedProduct(dy as tf.Tensor2D, savedX)] : []),
      ...(biasTrains ? [tf.sum(dy, 0)] : []),
    ];
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return product(x, ...(weightTrains ? [weight] : []), ...(biasTrains ? [bias!] : [])) as tf.Tensor2D;
}

/**
 * Attention's batched products for training where the tiled product exists (WebGPU), every product reading its
 * operands along their rows: scores Y = a·bᵀ tiled, da = dY·b, db = dYᵀ·a (aᵀ·b form); context Y = a·b on tfjs's
 * untransposed matMul, da = dY·bᵀ tiled, db = aᵀ·dY (aᵀ·b form). Shapes the kernel does not take go to tfjs's matMul.
 */
function tiledBatchProduct(a: tf.Tensor, b: tf.Tensor, transposeB: boolean): tf.Tensor {
  const lead = a.shape.slice(0, -2);
  const batch = lead.reduce((x, y) => x * y, 1);
  const [m, k] = a.shape.slice(-2) as [number, number];
  const n = b.shape[b.rank - (transposeB ? 2 : 1)];
  const [aShape, bShape] = [[batch, m, k], transposeB ? [batch, n, k] : [batch, k, n]];
  // x [batch, rows, depth] · y [batch, cols, depth]ᵀ, and x [batch, depth, rows]ᵀ · y [batch, depth, cols].
  const nt = (x: tf.Tensor, y: tf.Tensor) => (fusedKernelAvailable(TILED_PRODUCT_KERNEL, { k: x.shape[2] })
    ? tiled(x, y) : tf.matMul(x as tf.Tensor3D, y as tf.Tensor3D, false, true));
  const tn = (x: tf.Tensor, y: tf.Tensor) => (fusedKernelAvailable(TILED_PRODUCT_KERNEL, { transposeA: true, m: x.shape[2], n: y.shape[2] })
    ? tiled(x, y, null, true) : tf.matMul(x as tf.Tensor3D, y as tf.Tensor3D, true, false));
  const product = tf.customGrad(((aIn: tf.Tensor, bIn: tf.Tensor, save: (ts: tf.Tensor[]) => void) => {
    save([aIn, bIn]);
    const [a3, b3] = [aIn.reshape(aShape), bIn.reshape(bShape)];
    const value = (transposeB ? nt(a3, b3) : tf.matMul(a3 as tf.Tensor3D, b3 as tf.Tensor3D)).reshape([...lead, m, n]);
    const gradFunc = (dy: tf.Tensor, [savedA, savedB]: tf.Tensor[]) => {
      const [dy3, sa, sb] = [dy.reshape([batch, m, n]), savedA.reshape(aShape), savedB.reshape(bShape)];
      return transposeB
        ? [tf.matMul(dy3 as tf.Tensor3D, sb as tf.Tensor3D).reshape(a.shape), tn(dy3, sa).reshape(b.shape)]
        : [nt(dy3, sb).reshape(a.shape), tn(sa, dy3).reshape(b.shape)];
    };
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return product(a, b);
}

/**
 * aᵀ · b for 2-D a [depth, m] and b [depth, n] (a weight's gradient dyᵀ·x): by the tiled kernel's aᵀ·b form where it
 * exists (WebGPU), with an explicit transpose on wasm (whose transposed-operand matMul is slow), else tfjs's matMul.
 */
export function transposedProduct(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const [depth, m] = a.shape;
    const n = b.shape[1];
    if (fusedKernelAvailable(TILED_PRODUCT_KERNEL, { transposeA: true, m, n })) {
      return tiled(a.reshape([1, depth, m]), b.reshape([1, depth, n]), null, true).reshape([m, n]) as tf.Tensor2D;
    }
    return tf.getBackend() === 'wasm' ? tf.matMul(tf.transpose(a), b) : tf.matMul(a, b, true, false);
  });
}

/** Layer.apply returns a lone tensor for a one-element output list; this undoes that. */
export function outputs(result: tf.Tensor | tf.Tensor[] | tf.SymbolicTensor | tf.SymbolicTensor[]): tf.Tensor[] {
  return Array.isArray(result) ? (result as tf.Tensor[]) : [result as tf.Tensor];
}

/**
 * Batched a · b (or a · bᵀ) over the last two axes, for attention. On wasm, batched and transposed-operand
 * matMuls miss XNNPACK (0.5–1 GFLOP/s); there b is transposed explicitly and each batch runs as a 2-D matMul
 * (4–5× faster at batch × kv heads ≤ 64, which covers attention).
 */
export function batchMatMul(a: tf.Tensor, b: tf.Tensor, transposeB = false): tf.Tensor {
  if (transposeB && fusedKernelApplies(TRANSPOSED_PRODUCT_KERNEL)) return tf.engine().runKernel(TRANSPOSED_PRODUCT_KERNEL, { a, b }) as tf.Tensor;
  if (recordingGradients() && fusedKernelAvailable(TILED_PRODUCT_KERNEL, { k: 4 }) && tf.util.arraysEqual(a.shape.slice(0, -2), b.shape.slice(0, -2))) {
    return tiledBatchProduct(a, b, transposeB);
  }
  if (tf.getBackend() !== 'wasm') return tf.matMul(a, b, false, transposeB);
  return tf.tidy(() => {
    const lead = a.shape.slice(0, -2);
    const batches = lead.reduce((x, y) => x * y, 1);
    const [m, k] = a.shape.slice(-2) as [number, number];
    const bt = transposeB ? b.reshape([batches, b.shape[b.rank - 2], k]).transpose([0, 2, 1]) : b.reshape([batches, k, -1]);
    const n = bt.shape[2] as number;
    if (batches > 64) return tf.matMul(a.reshape([batches, m, k]), bt).reshape([...lead, m, n]);
    // One batch: no unstack (tfjs hands a one-output kernel's gradient over as a tensor, not the list stack() wants).
    if (batches === 1) return tf.matMul(a.reshape([m, k]), bt.reshape([k, n])).reshape([...lead, m, n]);
    const as = tf.unstack(a.reshape([batches, m, k]));
    const bs = tf.unstack(bt);
    return tf.stack(as.map((x, i) => tf.matMul(x as tf.Tensor2D, bs[i] as tf.Tensor2D))).reshape([...lead, m, n]);
  });
}
