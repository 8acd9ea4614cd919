import * as tf from '@tensorflow/tfjs';
import { NEMOTRON_H_MAMBA_STEP_KERNEL, RMS_NORM_KERNEL } from './fused';
import { PerElementProgram, type WebGPUBackendLike, WorkgroupProgram, reshape, sumAcrossThreads } from './webgpu-kernels';

/**
 * NemotronH's decoding step on WebGPU, where a dispatch costs 60–100 µs whatever its size: a Mamba-2 layer's step
 * between its two projections in four programs (the convolution over the kept window, the window moved on, the SSM
 * state updated, the read-out gated and normalized by groups) where tfjs's ops take some forty; the RMS norm in one
 * program where they take six. Checked against the plain ops (models/nemotron_h/model.ts) in test/webgpu/.
 */

/** The Mamba-2 step kernel's attrs: its sizes. */
export interface MambaStepAttrs {
  heads: number;
  headDim: number;
  groups: number;
  state: number;
  kernel: number;
  eps: number;
}

const sizes = (a: MambaStepAttrs) => {
  const inner = a.heads * a.headDim;
  return { inner, channels: inner + 2 * a.groups * a.state };
};

/** The causal convolution's output for the new token, through SiLU: act[b, c] = silu(Σ_j window_j[c]·w[c, j] + bias[c]). */
class ConvStepProgram extends PerElementProgram {
  readonly variableNames: string[];
  readonly uniforms = 'inner : i32,';
  readonly shaderKey: string;

  constructor(batch: number, channels: number, private readonly kernel: number, private readonly hasBias: boolean) {
    super([batch, channels]);
    this.variableNames = hasBias ? ['proj', 'conv', 'w', 'bias'] : ['proj', 'conv', 'w'];
    this.shaderKey = `nemotron_h_conv_step_${kernel}_${hasBias}`;
  }

  getUserCode(): string {
    const k = this.kernel;
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let b = index / uniforms.outShape[1];
        let c = index - b * uniforms.outShape[1];
        var sum = ${this.hasBias ? 'getBias(c)' : '0.0'};
        for (var j = 0; j < ${k - 1}; j++) {
          sum += getConv(b, j, c) * getW(c, j);
        }
        sum += getProj(b, uniforms.inner + c) * getW(c, ${k - 1});
        setOutputAtIndex(index, sum / (1.0 + exp(-sum)));
      }
    }
    `;
  }
}

/** The window a step leaves: the kept inputs moved on by one, the new input last. */
class WindowProgram extends PerElementProgram {
  readonly variableNames = ['proj', 'conv'];
  readonly uniforms = 'inner : i32,';
  readonly shaderKey = 'nemotron_h_window';

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let p = getCoordsFromIndex(index);
        let last = uniforms.outShape[1] - 1;
        if (p[1] < last) {
          setOutputAtIndex(index, getConv(p[0], p[1] + 1, p[2]));
        } else {
          setOutputAtIndex(index, getProj(p[0], uniforms.inner + p[2]));
        }
      }
    }
    `;
  }
}

/**
 * The SSM state after the token: h ← exp(Δt·A)·h + Δt·x·Bᵀ per head, Δt = softplus(dt + dt_bias) (unclamped, as the
 * eager step and transformers' selective_state_update), A = −exp(A_log), each head reading its group's B.
 */
class SsmStepProgram extends PerElementProgram {
  readonly variableNames = ['ssm', 'proj', 'act', 'dtBias', 'aLog'];
  readonly uniforms = 'inner : i32, channels : i32, headsPerGroup : i32,';
  readonly shaderKey = 'nemotron_h_ssm_step';

  getUserCode(): string {
    return `
    fn softplus(v : f32) -> f32 {
      return select(log(1.0 + exp(v)), v, v > 20.0);
    }

    fn main(index : i32) {
      if (index < uniforms.size) {
        let p = getCoordsFromIndex(index);
        let b = p[0];
        let h = p[1];
        let headDim = uniforms.outShape[2];
        let states = uniforms.outShape[3];
        let dt = softplus(getProj(b, uniforms.inner + uniforms.channels + h) + getDtBias(h));
        let decay = exp(dt * -exp(getALog(h)));
        let x = getAct(b, h * headDim + p[2]);
        let g = h / uniforms.headsPerGroup;
        let bValue = getAct(b, uniforms.inner + g * states + p[3]);
        setOutputAtIndex(index, getSsm(b, h, p[2], p[3]) * decay + dt * x * bValue);
      }
    }
    `;
  }
}

/** WGSL: the workgroup's sum of `squares` (each thread's) over `count` values into invRms = rsqrt(mean + eps). */
function inverseRms(threads: number, count: string, eps: string): string {
  return `
      partial[tid] = squares;
      ${sumAcrossThreads(threads, 1)}
      if (tid == 0) {
        invRms = inverseSqrt(partial[0] / f32(${count}) + ${eps});
      }
      workgroupBarrier();`;
}

/**
 * The read-out, gated and normalized: y = h·C + D·x per head, times silu(gate), RMS-normalized over each of the norm's
 * groups (inner / groups channels), times its weight. One workgroup a (row, group).
 */
class GatedNormProgram extends WorkgroupProgram {
  readonly variableNames = ['ssm', 'proj', 'act', 'd', 'normWeight'];
  readonly uniforms = 'groupSize : i32, groups : i32, inner : i32, headsPerGroup : i32, headDim : i32, states : i32, eps : f32,';
  readonly shaderKey: string;

  constructor(batch: number, inner: number, groups: number) {
    super([batch, inner], batch * groups, 64);
    this.shaderKey = 'nemotron_h_gated_norm_64';
  }

  getUserCode(): string {
    return `
    var<workgroup> partial : array<f32, 64>;
    var<workgroup> invRms : f32;

    fn gated(b : i32, e : i32) -> f32 {
      let h = e / uniforms.headDim;
      let p = e - h * uniforms.headDim;
      let g = h / uniforms.headsPerGroup;
      let cStart = uniforms.inner + (uniforms.groups + g) * uniforms.states;
      var y = getD(h) * getAct(b, e);
      for (var n = 0; n < uniforms.states; n++) {
        y += getSsm(b, h, p, n) * getAct(b, cStart + n);
      }
      let z = getProj(b, e);
      return y * z / (1.0 + exp(-z));
    }

    fn main(index : i32) {
      let unit = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
      let b = unit / uniforms.groups;
      let start = (unit - b * uniforms.groups) * uniforms.groupSize;
      let tid = i32(localId.x);
      var squares = 0.0;
      for (var e = start + tid; e < start + uniforms.groupSize; e += 64) {
        let v = gated(b, e);
        squares += v * v;
      }
      ${inverseRms(64, 'uniforms.groupSize', 'uniforms.eps')}
      for (var e = start + tid; e < start + uniforms.groupSize; e += 64) {
        setOutputAtCoords(b, e, gated(b, e) * invRms * getNormWeight(e));
      }
    }
    `;
  }
}

/** RMSNorm of each row: x·rsqrt(mean(x²) + eps)·w. One workgroup a row. */
class RmsNormProgram extends WorkgroupProgram {
  readonly variableNames = ['x', 'w'];
  readonly uniforms = 'eps : f32,';
  readonly shaderKey: string;

  constructor(rows: number, cols: number) {
    super([rows, cols], rows, cols >= 4096 ? 256 : 64);
    this.shaderKey = `nemotron_h_rms_norm_${this.workgroupSize[0]}`;
  }

  getUserCode(): string {
    const block = this.workgroupSize[0];
    return `
    var<workgroup> partial : array<f32, ${block}>;
    var<workgroup> invRms : f32;

    fn main(index : i32) {
      let row = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
      let tid = i32(localId.x);
      let cols = uniforms.outShape[1];
      var squares = 0.0;
      for (var col = tid; col < cols; col += ${block}) {
        let v = getX(row, col);
        squares += v * v;
      }
      ${inverseRms(block, 'cols', 'uniforms.eps')}
      for (var col = tid; col < cols; col += ${block}) {
        setOutputAtCoords(row, col, getW(col) * (getX(row, col) * invRms));
      }
    }
    `;
  }
}

/**
 * The kernel: inputs { proj [b, inner + channels + heads] (in_proj's output), conv [b, K-1, channels], convWeight
 * [channels, K], convBias? [channels], dtBias, aLog, d [heads], ssm [b, heads, head_dim, state], normWeight [inner] },
 * attrs MambaStepAttrs. Outputs [y [b, inner] (gated, normalized: out_proj's input), conv [b, K-1, channels], ssm].
 */
function mambaStep({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.TensorInfo[] {
  const gpu = backend as WebGPUBackendLike;
  const a = attrs as unknown as MambaStepAttrs;
  const { proj, conv, convWeight, convBias, dtBias, aLog, d, ssm, normWeight } = inputs as Record<string, tf.TensorInfo>;
  const batch = proj.shape[0];
  const { inner, channels } = sizes(a);
  const int = (v: number) => ({ type: 'int32', data: [v] });
  const act = gpu.runWebGPUProgram(new ConvStepProgram(batch, channels, a.kernel, convBias !== undefined),
    convBias ? [proj, conv, convWeight, convBias] : [proj, conv, convWeight], 'float32', [int(inner)]);
  const window = gpu.runWebGPUProgram(new WindowProgram(conv.shape), [proj, conv], 'float32', [int(inner)]);
  const headsPerGroup = a.heads / a.groups;
  const state = gpu.runWebGPUProgram(new SsmStepProgram(ssm.shape), [ssm, proj, act, dtBias, aLog], 'float32', [int(inner), int(channels), int(headsPerGroup)]);
  const y = gpu.runWebGPUProgram(new GatedNormProgram(batch, inner, a.groups), [state, proj, act, d, normWeight], 'float32',
    [int(inner / a.groups), int(a.groups), int(inner), int(headsPerGroup), int(a.headDim), int(a.state), { type: 'float32', data: [a.eps] }]);
  gpu.disposeData(act.dataId);
  return [y, window, state];
}

/** Registers the NemotronH kernels for 'webgpu' (idempotent). */
export function registerWebGPUNemotronHKernels(): void {
  if (tf.getKernel(NEMOTRON_H_MAMBA_STEP_KERNEL, 'webgpu')) return;
  tf.registerKernel({ kernelName: NEMOTRON_H_MAMBA_STEP_KERNEL, backendName: 'webgpu', kernelFunc: mambaStep as unknown as tf.KernelFunc });
  tf.registerKernel({
    kernelName: RMS_NORM_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const gpu = backend as unknown as WebGPUBackendLike;
      const { x, weight } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo };
      const cols = x.shape[x.shape.length - 1];
      const rows = x.shape.reduce((p, q) => p * q, 1) / cols;
      const x2d = reshape(gpu, x, [rows, cols]);
      const out2d = gpu.runWebGPUProgram(new RmsNormProgram(rows, cols), [x2d, weight], 'float32', [{ type: 'float32', data: [(attrs as { eps: number }).eps] }]);
      const out = reshape(gpu, out2d, x.shape);
      gpu.disposeData(x2d.dataId);
      gpu.disposeData(out2d.dataId);
      return out;
    },
  });
}
