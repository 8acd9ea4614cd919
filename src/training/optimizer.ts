import * as tf from '@tensorflow/tfjs';
import { ADAMW_KERNEL, fusedKernelApplies } from '../kernels/fused';
import { BLOCK_SEPARATOR, blockOf, groupBlocks, joinRows } from '../../layers/vocab-matrix';

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** Parameters that get weight decay; default: all but biases and LayerNorm weights (as the HF Trainer). */
  decays?: (name: string) => boolean;
}

/** The HF Trainer's rule: no weight decay on biases and LayerNorm parameters. */
export function defaultDecays(name: string): boolean {
  return !name.endsWith('.bias') && !/(^|\.)(input_layernorm|post_attention_layernorm|norm)\./.test(name);
}

/**
 * AdamW exactly as torch.optim.AdamW steps: decoupled decay p ← p(1 − lr·wd), then the bias-corrected Adam update
 * p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε).
 * Moments are keyed by parameter name so that they can be saved and restored with the checkpoint.
 */
export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly decays: (name: string) => boolean;
  /** Steps taken (t in the bias correction). */
  step = 0;
  readonly expAvg = new Map<string, tf.Tensor>();
  readonly expAvgSq = new Map<string, tf.Tensor>();

  constructor(readonly params: Map<string, tf.Variable>, options: AdamWOptions = {}) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
    this.decays = options.decays ?? defaultDecays;
    for (const [name, value] of [['beta1', this.beta1], ['beta2', this.beta2]] as const) {
      if (!(value >= 0 && value < 1)) throw new Error(`AdamW: ${name} must be in [0, 1), got ${value}`);
    }
    if (!(this.weightDecay >= 0)) throw new Error(`AdamW: weightDecay must be ≥ 0, got ${this.weightDecay}`);
  }

  /** One update with gradients keyed by parameter name. */
  apply(grads: Map<string, tf.Tensor>, lr: number): void {
    if (!(lr > 0)) throw new Error(`AdamW: learning rate must be > 0, got ${lr}`);
    this.step++;
    const c1 = 1 - this.beta1 ** this.step;
    const c2 = Math.sqrt(1 - this.beta2 ** this.step);
    const fused = fusedKernelApplies(ADAMW_KERNEL);
    // A row block that no token reached (the embedding gathers only from blocks that hold the batch's ids) has no
    // gradient, yet it is part of one matrix whose gradient torch would hold, zero in those rows: it steps with zeros.
    const touched = new Set([...grads.keys()].map((name) => blockOf(name)?.[0]).filter((base) => base !== undefined));
    for (const [name, param] of this.params) {
      const base = blockOf(name)?.[0];
      const zeros = !grads.has(name) && base !== undefined && touched.has(base) ? tf.zerosLike(param) : undefined;
      const grad = grads.get(name) ?? zeros;
      if (!grad) continue;
      if (fused) {
        this.applyFused(name, param, grad, lr);
        zeros?.dispose();
        continue;
      }
      const [m, v] = tf.tidy(() => {
        const m0 = this.expAvg.get(name) ?? tf.zerosLike(param);
        const v0 = this.expAvgSq.get(name) ?? tf.zerosLike(param);
        return [
          tf.add(tf.mul(m0, this.beta1), tf.mul(grad, 1 - this.beta1)),
          tf.add(tf.mul(v0, this.beta2), tf.mul(tf.square(grad), 1 - this.beta2)),
        ];
      });
      tf.tidy(() => {
        const decayed = this.decays(name) && this.weightDecay > 0 ? tf.mul(param, 1 - lr * this.weightDecay) : param;
        const denom = tf.add(tf.div(tf.sqrt(v), c2), this.eps);
        param.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), lr / c1)));
      });
      this.expAvg.get(name)?.dispose();
      this.expAvgSq.get(name)?.dispose();
      this.expAvg.set(name, tf.keep(m));
      this.expAvgSq.set(name, tf.keep(v));
      zeros?.dispose();
    }
  }

  /** The same update as one kernel where the backend has it (the native backend: one pass over memory). */
  private applyFused(name: string, param: tf.Variable, grad: tf.Tensor, lr: number): void {
    const zeros = this.expAvg.has(name) ? [] : [tf.zerosLike(param), tf.zerosLike(param)];
    const [m0, v0] = zeros.length ? zeros : [this.expAvg.get(name)!, this.expAvgSq.get(name)!];
    const decay = this.decays(name) && this.weightDecay > 0 ? lr * this.weightDecay : 0;
    const attrs = { lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, decay, step: this.step };
    const [p, m, v] = tf.engine().runKernel(ADAMW_KERNEL, { param, grad, expAvg: m0, expAvgSq: v0 }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor[];
    param.assign(p);
    p.dispose();
    tf.dispose([...zeros, this.expAvg.get(name) ?? [], this.expAvgSq.get(name) ?? []]);
    this.expAvg.set(name, tf.keep(m));
    this.expAvgSq.set(name, tf.keep(v));
  }

  /**
   * Named host copies of the moments, for saving. Moments of a matrix stored in row blocks (see VocabMatrix) are joined
   * under its HF name, so that a state saved on one backend resumes on another.
   */
  async stateTensors(): Promise<Array<{ name: string; shape: number[]; data: Float32Array }>> {
    const out: Array<{ name: string; shape: number[]; data: Float32Array }> = [];
    for (const [prefix, map] of [['exp_avg', this.expAvg], ['exp_avg_sq', this.expAvgSq]] as const) {
      for (const [name, t] of map) {
        if (!blockOf(name)) out.push({ name: `${prefix}.${name}`, shape: t.shape.slice(), data: await t.data() as Float32Array });
      }
      for (const [name, blocks] of groupBlocks(map)) out.push({ name: `${prefix}.${name}`, ...await joinRows(blocks) });
    }
    return out;
  }

  /** Restores moments saved by stateTensors (split into row blocks where this model stores the matrix so). */
  loadState(step: number, tensors: Map<string, { shape: number[]; data: Float32Array | Int32Array }>): void {
    this.dispose();
    this.step = step;
    for (const [key, t] of tensors) {
      const [, prefix, name] = /^(exp_avg_sq|exp_avg)\.(.+)$/.exec(key) ?? [];
      const target = prefix === 'exp_avg' ? this.expAvg : this.expAvgSq;
      if (name && this.params.has(name)) {
        target.set(name, tf.keep(tf.tensor(t.data, t.shape, 'float32')));
        continue;
      }
      const blocks: Array<[string, tf.Variable]> = [];
      const blockName = (i: number) => `${name}${BLOCK_SEPARATOR}${i}`;
      while (name && this.params.has(blockName(blocks.length))) blocks.push([blockName(blocks.length), this.params.get(blockName(blocks.length))!]);
      const rows = blocks.reduce((n, [, b]) => n + b.shape[0], 0);
      if (!prefix || blocks.length === 0 || rows !== t.shape[0]) throw new Error(`Optimizer state holds ${key}, which matches no parameter`);
      let offset = 0;
      for (const [blockParam, block] of blocks) {
        target.set(blockParam, tf.keep(tf.tensor(t.data.subarray(offset, offset + block.size), block.shape, 'float32')));
        offset += block.size;
      }
    }
  }

  dispose(): void {
    for (const t of [...this.expAvg.values(), ...this.expAvgSq.values()]) t.dispose();
    this.expAvg.clear();
    this.expAvgSq.clear();
  }
}

/** Scales gradients in place so that their global L2 norm is at most maxNorm; returns the norm before clipping. */
export async function clipByGlobalNorm(grads: Map<string, tf.Tensor>, maxNorm: number): Promise<number> {
  // Pairwise adds, not tf.addN: WebGPU's AddN binds one buffer per input and fails past the adapter's limit (8).
  const normTensor = tf.tidy(() => tf.sqrt([...grads.values()].map((g) => tf.sum(tf.square(g))).reduce((a, b) => tf.add(a, b))));
  const norm = (await normTensor.data())[0];
  normTensor.dispose();
  if (maxNorm > 0 && norm > maxNorm) {
    // torch's clip_grad_norm_: coefficient max_norm / (norm + 1e-6)
    const coefficient = maxNorm / (norm + 1e-6);
    for (const [name, g] of grads) {
      grads.set(name, tf.tidy(() => tf.mul(g, coefficient)));
      g.dispose();
    }
  }
  return norm;
}
