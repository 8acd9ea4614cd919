import * as tf from '@tensorflow/tfjs';
import { ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL, MomentSlot, fusedKernelApplies } from '../kernels/fused';
import { BLOCK_SEPARATOR, blockOf, groupBlocks, joinRows } from '../../layers/vocab-matrix';

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** Parameters that get weight decay; default: all but biases and LayerNorm weights (as the HF Trainer). */
  decays?: (name: string) => boolean;
  /** Step the small parameters together, as one flat tensor per weight decay (torch's foreach). Default true. */
  foreach?: boolean;
}

/** Parameters up to this many values step together when `foreach` (LoRA's A and B of rank 16 are 16–150 k). */
const FOREACH_MAX_SIZE = 1 << 18;

interface Update {
  name: string;
  param: tf.Variable;
  grad: tf.Tensor;
  /** lr · weight decay for this parameter, 0 without. */
  decay: number;
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
  private readonly foreach: boolean;
  /** Steps taken (t in the bias correction). */
  step = 0;
  private readonly avg = new Map<string, tf.Tensor>();
  private readonly avgSq = new Map<string, tf.Tensor>();
  /** Moments the backend keeps between steps (ADAMW_RESIDENT_KERNEL), by parameter; read into the maps when asked. */
  private readonly slots = new Map<string, MomentSlot>();

  constructor(readonly params: Map<string, tf.Variable>, options: AdamWOptions = {}) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
    this.decays = options.decays ?? defaultDecays;
    this.foreach = options.foreach ?? true;
    for (const [name, value] of [['beta1', this.beta1], ['beta2', this.beta2]] as const) {
      if (!(value >= 0 && value < 1)) throw new Error(`AdamW: ${name} must be in [0, 1), got ${value}`);
    }
    if (!(this.weightDecay >= 0)) throw new Error(`AdamW: weightDecay must be ≥ 0, got ${this.weightDecay}`);
  }

  /**
   * First moments by parameter name. Moments the backend keeps are read into the map when it is asked for; those
   * tensors, like every moment here, are disposed by the next step.
   */
  get expAvg(): Map<string, tf.Tensor> {
    this.readResident();
    return this.avg;
  }

  /** Second moments by parameter name (see expAvg). */
  get expAvgSq(): Map<string, tf.Tensor> {
    this.readResident();
    return this.avgSq;
  }

  private releaseResident(name: string): void {
    const slot = this.slots.get(name);
    if (!slot) return;
    this.slots.delete(name);
    if (!slot.moments) return;
    if (!this.avg.has(name)) {
      const [m, v] = slot.moments.read();
      this.avg.set(name, tf.keep(m));
      this.avgSq.set(name, tf.keep(v));
    }
    slot.moments.dispose(); // the tensors read keep the values
  }

  private readResident(): void {
    for (const [name, slot] of this.slots) {
      if (!slot.moments || this.avg.has(name)) continue;
      const [m, v] = slot.moments.read();
      this.avg.set(name, tf.keep(m));
      this.avgSq.set(name, tf.keep(v));
    }
  }

  /** One update with gradients keyed by parameter name. */
  apply(grads: Map<string, tf.Tensor>, lr: number): void {
    if (!(lr > 0)) throw new Error(`AdamW: learning rate must be > 0, got ${lr}`);
    this.step++;
    // A row block that no token reached (the embedding gathers only from blocks that hold the batch's ids) has no
    // gradient, yet it is part of one matrix whose gradient torch would hold, zero in those rows: it steps with zeros.
    const touched = new Set([...grads.keys()].map((name) => blockOf(name)?.[0]).filter((base) => base !== undefined));
    const updates: Update[] = [];
    const zeros: tf.Tensor[] = [];
    for (const [name, param] of this.params) {
      const base = blockOf(name)?.[0];
      let grad = grads.get(name);
      if (!grad && base !== undefined && touched.has(base)) zeros.push(grad = tf.zerosLike(param));
      if (grad) updates.push({ name, param, grad, decay: this.decays(name) && this.weightDecay > 0 ? lr * this.weightDecay : 0 });
    }
    // Many small parameters (LoRA's A and B, norms, biases) step as one flat tensor per decay (torch's foreach): the
    // same element-wise update in a few ops instead of a dozen each; large ones step alone (no copies of them).
    const groups = new Map<number, Update[]>();
    for (const u of updates) {
      if (this.foreach && u.param.size <= FOREACH_MAX_SIZE) groups.set(u.decay, [...(groups.get(u.decay) ?? []), u]);
      else this.update([u], lr);
    }
    for (const group of groups.values()) this.update(group, lr);
    tf.dispose(zeros);
  }

  /** Steps `group` (one parameter, or several of one decay as one flat tensor) and keeps their new moments. */
  private update(group: Update[], lr: number): void {
    const single = group.length === 1;
    if (single && fusedKernelApplies(ADAMW_RESIDENT_KERNEL)) return this.updateResident(group[0], lr);
    // Moments the backend kept (the kernel off now, or another backend) become tensors here again.
    for (const u of group) this.releaseResident(u.name);
    const [p, m, v] = tf.tidy(() => {
      const flat = (ts: tf.Tensor[]) => (single ? ts[0] : tf.concat(ts.map((t) => t.reshape([-1]))));
      const moment = (map: Map<string, tf.Tensor>) => flat(group.map((u) => map.get(u.name) ?? tf.zerosLike(u.param)));
      return this.adamStep(flat(group.map((u) => u.param)), flat(group.map((u) => u.grad)), moment(this.avg), moment(this.avgSq), group[0].decay, lr);
    });
    const pieces = (t: tf.Tensor) => (single ? [t] : tf.split(t, group.map((u) => u.param.size)).map((piece, i) => {
      const shaped = piece.reshape(group[i].param.shape);
      piece.dispose();
      return shaped;
    }));
    const [ps, ms, vs] = [pieces(p), pieces(m), pieces(v)];
    if (!single) tf.dispose([p, m, v]);
    group.forEach((u, i) => {
      u.param.assign(ps[i]);
      ps[i].dispose();
      this.avg.get(u.name)?.dispose();
      this.avgSq.get(u.name)?.dispose();
      this.avg.set(u.name, tf.keep(ms[i]));
      this.avgSq.set(u.name, tf.keep(vs[i]));
    });
  }

  /**
   * Steps one parameter whose moments the backend keeps (updated in place: a moment held by a tensor would be copied
   * on write each step). Its first step starts them from the moments held here, if any (loadState, or steps taken on
   * another path), else zeros.
   */
  private updateResident(u: Update, lr: number): void {
    let slot = this.slots.get(u.name);
    if (!slot) this.slots.set(u.name, (slot = {}));
    const started = slot.moments !== undefined;
    const held = [this.avg.get(u.name), this.avgSq.get(u.name)].filter((t): t is tf.Tensor => t !== undefined);
    this.avg.delete(u.name);
    this.avgSq.delete(u.name);
    // Views read since the last step go first, so that the backend's moments are its own again.
    if (started) tf.dispose(held);
    const inputs: tf.NamedTensorMap = { param: u.param, grad: u.grad };
    if (!started && held.length === 2) Object.assign(inputs, { expAvg: held[0], expAvgSq: held[1] });
    const attrs = { lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, decay: u.decay, step: this.step, slot };
    const p = tf.engine().runKernel(ADAMW_RESIDENT_KERNEL, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor;
    if (!started) tf.dispose(held); // the backend's moments started from them
    u.param.assign(p);
    p.dispose();
  }

  /**
   * The update of p with gradient g and moments m, v: [p', m', v'], as one kernel where the backend has it (the native
   * backend: one pass over memory), else the plain ops.
   */
  private adamStep(p: tf.Tensor, g: tf.Tensor, m0: tf.Tensor, v0: tf.Tensor, decay: number, lr: number): tf.Tensor[] {
    if (fusedKernelApplies(ADAMW_KERNEL)) {
      const attrs = { lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, decay, step: this.step };
      return tf.engine().runKernel(ADAMW_KERNEL, { param: p, grad: g, expAvg: m0, expAvgSq: v0 }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor[];
    }
    const c1 = 1 - this.beta1 ** this.step;
    const c2 = Math.sqrt(1 - this.beta2 ** this.step);
    const m = tf.add(tf.mul(m0, this.beta1), tf.mul(g, 1 - this.beta1));
    const v = tf.add(tf.mul(v0, this.beta2), tf.mul(tf.square(g), 1 - this.beta2));
    const decayed = decay > 0 ? tf.mul(p, 1 - decay) : p;
    const denom = tf.add(tf.div(tf.sqrt(v), c2), this.eps);
    return [tf.sub(decayed, tf.mul(tf.div(m, denom), lr / c1)), m, v];
  }

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
      const target = prefix === 'exp_avg' ? this.avg : this.avgSq;
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
    for (const t of [...this.avg.values(), ...this.avgSq.values()]) t.dispose();
    this.avg.clear();
    this.avgSq.clear();
    for (const slot of this.slots.values()) slot.moments?.dispose();
    this.slots.clear();
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
