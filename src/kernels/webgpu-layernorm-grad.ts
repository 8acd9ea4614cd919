import * as tf from '@tensorflow/tfjs';
import { LAYERNORM1P_GRAD_KERNEL } from './fused';
import { PerElementProgram, WebGPUBackendLike, WorkgroupProgram, sumAcrossThreads } from './webgpu-kernels';

/**
 * The backward of LayerNorm1P for training on WebGPU, in 4 dispatches where tfjs's gradients of the plain ops take
 * ~20 (and the forward 1 fused program instead of ~9). With x̂ = (x − μ)·r, r = 1/√(var + ε) and g = dy·(1 + w):
 *   dx = r·(g − mean(g) − x̂·mean(g·x̂))  (per row),   dw = Σ_rows dy·x̂,   db = Σ_rows dy.
 */
const THREADS = 64;

/** Per row: μ and r, two passes as tf.moments (mean, then the variance around it): [rows, 2]. */
class RowStatsProgram extends WorkgroupProgram {
  readonly variableNames = ['x'];
  readonly uniforms = 'cols : i32, eps : f32,';
  readonly shaderKey = 'nemotron_layernorm1p_stats';

  constructor(rows: number) {
    super([rows, 2], rows, THREADS);
  }

  getUserCode(): string {
    return `
    var<workgroup> partial : array<f32, ${THREADS}>;

    fn main(index : i32) {
      let tid = i32(localId.x);
      let row = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
      let base = row * uniforms.cols;
      var t = 0.0;
      for (var c = tid; c < uniforms.cols; c += ${THREADS}) {
        t += x[base + c];
      }
      partial[tid] = t;
      ${sumAcrossThreads(THREADS, 1)}
      let mean = partial[0] / f32(uniforms.cols);
      workgroupBarrier();
      t = 0.0;
      for (var c = tid; c < uniforms.cols; c += ${THREADS}) {
        let d = x[base + c] - mean;
        t += d * d;
      }
      partial[tid] = t;
      ${sumAcrossThreads(THREADS, 1)}
      if (tid == 0) {
        result[row * 2] = mean;
        result[row * 2 + 1] = inverseSqrt(partial[0] / f32(uniforms.cols) + uniforms.eps);
      }
    }
    `;
  }
}

/** dx, one workgroup a row: the two row means, then every element. */
class InputGradProgram extends WorkgroupProgram {
  readonly variableNames = ['dy', 'x', 'w', 'stats'];
  readonly uniforms = 'cols : i32,';
  readonly shaderKey = 'nemotron_layernorm1p_input_grad';

  constructor(rows: number, cols: number) {
    super([rows, cols], rows, THREADS);
  }

  getUserCode(): string {
    return `
    var<workgroup> partial : array<f32, ${2 * THREADS}>;

    fn main(index : i32) {
      let tid = i32(localId.x);
      let row = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
      let base = row * uniforms.cols;
      let mean = stats[row * 2];
      let r = stats[row * 2 + 1];
      var sg = 0.0;
      var sgx = 0.0;
      for (var c = tid; c < uniforms.cols; c += ${THREADS}) {
        let g = dy[base + c] * (1.0 + w[c]);
        sg += g;
        sgx += g * (x[base + c] - mean) * r;
      }
      partial[tid] = sg;
      partial[${THREADS} + tid] = sgx;
      ${sumAcrossThreads(THREADS, 2)}
      let meanG = partial[0] / f32(uniforms.cols);
      let meanGX = partial[${THREADS}] / f32(uniforms.cols);
      for (var c = tid; c < uniforms.cols; c += ${THREADS}) {
        let g = dy[base + c] * (1.0 + w[c]);
        result[base + c] = r * (g - meanG - (x[base + c] - mean) * r * meanGX);
      }
    }
    `;
  }
}

/** Σ over rows, one invocation a column: of dy·x̂ (dw) or of dy (db). */
class ColumnSumProgram extends PerElementProgram {
  readonly variableNames: string[];
  readonly uniforms = 'rows : i32,';
  readonly shaderKey: string;

  constructor(cols: number, private readonly normed: boolean) {
    super([cols]);
    this.variableNames = normed ? ['dy', 'x', 'stats'] : ['dy'];
    this.shaderKey = `nemotron_layernorm1p_column_sum_${normed}`;
  }

  getUserCode(): string {
    const term = this.normed ? 'dy[i] * (x[i] - stats[row * 2]) * stats[row * 2 + 1]' : 'dy[i]';
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        var s = 0.0;
        for (var row = 0; row < uniforms.rows; row++) {
          let i = row * uniforms.size + index;
          s += ${term};
        }
        result[index] = s;
      }
    }
    `;
  }
}

/** LAYERNORM1P_GRAD_KERNEL: [dx, dw, db] for dy and x [rows, cols] and the weight [cols]. */
function layerNorm1PGrad({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.TensorInfo[] {
  const gpu = backend as WebGPUBackendLike;
  const { dy, x, weight } = inputs as Record<string, tf.TensorInfo>;
  const [rows, cols] = x.shape;
  const i32 = (v: number) => ({ type: 'int32', data: [v] });
  const stats = gpu.runWebGPUProgram(new RowStatsProgram(rows), [x], 'float32', [i32(cols), { type: 'float32', data: [(attrs as { eps: number }).eps] }]);
  try {
    const dx = gpu.runWebGPUProgram(new InputGradProgram(rows, cols), [dy, x, weight, stats], 'float32', [i32(cols)]);
    const dw = gpu.runWebGPUProgram(new ColumnSumProgram(cols, true), [dy, x, stats], 'float32', [i32(rows)]);
    const db = gpu.runWebGPUProgram(new ColumnSumProgram(cols, false), [dy], 'float32', [i32(rows)]);
    return [dx, dw, db];
  } finally {
    gpu.disposeData(stats.dataId);
  }
}

/** Registers LAYERNORM1P_GRAD_KERNEL for 'webgpu' (setBackend('webgpu') calls it through registerWebGPUKernels). */
export function registerLayerNorm1PGrad(): void {
  tf.registerKernel({ kernelName: LAYERNORM1P_GRAD_KERNEL, backendName: 'webgpu', kernelFunc: layerNorm1PGrad as unknown as tf.KernelFunc });
}
