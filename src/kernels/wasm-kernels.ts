/**
 * Kernels that training (the backward pass) needs on the `wasm` backend and that
 * `@tensorflow/tfjs-backend-wasm` 4.22 does not ship.
 *
 * Found missing (probed by running the gradient of each op below on wasm and
 * recording the kernels the engine dispatched):
 *   - UnsortedSegmentSum: used by the gradient of GatherV2 (`tf.gather`, i.e. the
 *     embedding lookup and the rotary-table lookup). Registered here.
 *
 * Present on wasm (nothing to register), with the kernels their gradients run:
 *   - matMul / batched matMul: BatchMatMul, Sum, Reshape, Multiply
 *   - softmax: Softmax, Multiply, Sum, Sub; logSoftmax: Max, Sub, Exp, Sum, Log
 *   - transpose: Transpose; reshape: Reshape
 *   - slice: Slice, PadV2; pad: PadV2, Slice
 *   - concat: Concat, SplitV; split: SplitV, Concat
 *   - mul / add / sub / div with broadcasting: Multiply, Add, Sub, RealDiv, Neg,
 *     Square, Sum, Reshape
 *   - moments / mean: Mean, Sub, Square, RealDiv, Sum
 *   - rsqrt: Rsqrt, Pow, RealDiv, Neg; sqrt: Sqrt
 *   - relu: Relu, Step; abs: Abs, Step; square: Square
 *   - oneHot: OneHot; neg: Neg; exp: Exp; log: Log; log1p: Log1p
 *   - sigmoid: Sigmoid, Sub; tanh: Tanh; erf: Erf, Exp; pow: Pow, Greater, Select
 *   - max / maximum / minimum: Max, Equal, GreaterEqual, Less, LessEqual
 *   - stack / unstack / tile / expandDims / cast / cumsum / clipByValue
 *
 * Not wasm-specific (they fail the same way on the cpu backend, so they are tfjs-core
 * limitations and no kernel can fix them): `tf.stridedSlice` has no gradient; the
 * gradient of `tf.squaredDifference` does not reduce a broadcast input back to its
 * shape; and a `tf.where` whose condition is computed from a differentiated input
 * (e.g. `tf.greater(x, 0)`) fails with "gradient function not found for Greater".
 */
import * as tf from '@tensorflow/tfjs';

/** The part of the wasm backend (`BackendWasm`) a JS-implemented kernel needs. */
interface WasmBackendLike {
  readSync(dataId: tf.DataId): tf.backend_util.BackendValues;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): tf.backend_util.TypedArray;
}

const BACKEND = 'wasm';

function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * UnsortedSegmentSum: out[s, ...] = sum over positions p with segmentIds[p] == s of x[p, ...].
 * x has shape [...segmentIds.shape, ...inner]; out has shape [numSegments, ...inner].
 * Ids < 0 or >= numSegments are dropped, as TensorFlow does.
 */
function unsortedSegmentSumWasm(args: {
  inputs: tf.NamedTensorInfoMap;
  backend: unknown;
  attrs?: tf.NamedAttrMap;
}): tf.TensorInfo {
  const backend = args.backend as WasmBackendLike;
  const { x, segmentIds } = args.inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
  const numSegments = Number((args.attrs as { numSegments: number }).numSegments);
  if (x.dtype !== 'float32' && x.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum (wasm): unsupported dtype ${x.dtype}`);
  }
  const idsRank = segmentIds.shape.length;
  for (let i = 0; i < idsRank; i++) {
    if (x.shape[i] !== segmentIds.shape[i]) {
      throw new Error(
        `UnsortedSegmentSum (wasm): segmentIds shape [${segmentIds.shape}] must be a prefix of x shape [${x.shape}]`,
      );
    }
  }
  const innerShape = x.shape.slice(idsRank);
  const inner = sizeOf(innerShape);
  const outShape = [numSegments, ...innerShape];

  // readSync copies out of the heap, so these stay valid when makeOutput grows it.
  const ids = backend.readSync(segmentIds.dataId) as tf.backend_util.TypedArray;
  const xs = backend.readSync(x.dataId) as tf.backend_util.TypedArray;

  const out = backend.makeOutput(outShape, x.dtype);
  // No allocation happens between taking this view and filling it.
  const outVals = backend.typedArrayFromHeap(out);
  outVals.fill(0);
  const numIds = ids.length;
  for (let p = 0; p < numIds; p++) {
    const s = ids[p];
    if (!(s >= 0 && s < numSegments)) continue;
    const src = p * inner;
    const dst = s * inner;
    for (let j = 0; j < inner; j++) outVals[dst + j] += xs[src + j];
  }
  return out;
}

/**
 * Registers the JS kernels above for the wasm backend. Safe to call more than once, and
 * before or after the wasm backend is loaded; a kernel wasm already has is left alone.
 */
export function registerWasmTrainingKernels(): void {
  if (tf.getKernel('UnsortedSegmentSum', BACKEND) == null) {
    tf.registerKernel({
      kernelName: 'UnsortedSegmentSum',
      backendName: BACKEND,
      kernelFunc: unsortedSegmentSumWasm as unknown as tf.KernelFunc,
    });
  }
}
