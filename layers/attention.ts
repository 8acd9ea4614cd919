import * as tf from '@tensorflow/tfjs';
import { Adapters, adaptedLinear } from './lora';
import { ATTENTION_KERNEL, ROTARY_KERNEL, fusedKernelApplies, fusedKernelAvailable } from '../src/kernels/fused';
import { KVCache } from './kv-cache';
import { applyRotary, rotaryWithGradient } from './rotary';
import { maxWeightBlockBytes } from './vocab-matrix';
import { HFNamedWeights, batchMatMul, linear, normalInit, variableOf } from './weights';

export { KVCache } from './kv-cache';

export interface AttentionArgs {
  hiddenSize: number;
  numHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  bias: boolean;
  layerIndex: number;
  initializerRange?: number;
  name?: string;
}

export interface AttentionKwargs {
  /** Additive float32 mask [batch, 1, queryLen, keyLen] (0 = attend, float32 min = masked), or null. */
  mask?: tf.Tensor | null;
  cache?: KVCache | null;
  outputAttentions?: boolean;
  /** Channels the rotary tables rotate: lets WebGPU run the embedding as one fused kernel. */
  rotaryDim?: number;
}

/**
 * Grouped-query self-attention (MHA, GQA and MQA) with q/k/v/o projections, partial rotary embedding and a
 * KV cache. Inputs: [hidden [batch·seq, hidden] or [batch, seq, hidden], cos, sin, permutation] (from
 * PartialRotaryEmbedding: tables() and permutation).
 * Outputs: [attnOutput] or [attnOutput, probabilities [batch, heads, seq, keyLen]].
 */
export class NemotronAttention extends tf.layers.Layer implements HFNamedWeights {
  static className = 'NemotronAttention';
  readonly args: AttentionArgs;
  private readonly projections: Record<'q_proj' | 'k_proj' | 'v_proj' | 'o_proj', { weight: tf.LayerVariable; bias: tf.LayerVariable | null }> =
    {} as never;
  private readonly scale: number;
  /** LoRA adapters of q_proj, k_proj, v_proj, o_proj (see LoraModel). */
  readonly adapters: Adapters = new Map();

  constructor(args: AttentionArgs) {
    super({ name: args.name });
    if (args.numHeads % args.numKeyValueHeads !== 0) {
      throw new Error(`NemotronAttention: numHeads ${args.numHeads} is not divisible by numKeyValueHeads ${args.numKeyValueHeads}`);
    }
    this.args = args;
    this.scale = 1 / Math.sqrt(args.headDim);
    this.build([null, null, args.hiddenSize]);
  }

  build(_inputShape: tf.Shape | tf.Shape[]): void {
    const { hiddenSize, numHeads, numKeyValueHeads, headDim, bias } = this.args;
    const init = normalInit(this.args.initializerRange ?? 0.02);
    const shapes: Record<string, [number, number]> = {
      q_proj: [numHeads * headDim, hiddenSize],
      k_proj: [numKeyValueHeads * headDim, hiddenSize],
      v_proj: [numKeyValueHeads * headDim, hiddenSize],
      o_proj: [hiddenSize, numHeads * headDim],
    };
    for (const [name, shape] of Object.entries(shapes)) {
      (this.projections as Record<string, unknown>)[name] = {
        weight: this.addWeight(`${name}.weight`, shape, 'float32', init),
        bias: bias ? this.addWeight(`${name}.bias`, [shape[0]], 'float32', tf.initializers.zeros()) : null,
      };
    }
    this.built = true;
  }

  private project(name: keyof NemotronAttention['projections'], x: tf.Tensor): tf.Tensor {
    const p = this.projections[name];
    return adaptedLinear(x, p.weight.read(), p.bias?.read(), this.adapters.get(name));
  }

  call(inputs: tf.Tensor | tf.Tensor[], kwargs: AttentionKwargs = {}): tf.Tensor[] {
    const [hidden, cos, sin, permutation] = inputs as [tf.Tensor, tf.Tensor4D, tf.Tensor4D, tf.Tensor2D];
    const { numHeads, numKeyValueHeads: kvHeads, headDim } = this.args;
    return tf.tidy(() => {
      // Hidden states come as [batch·seq, hidden] from the model (no reshapes around each projection) or as
      // [batch, seq, hidden]; for the former, seq is the rotary tables'.
      const seq = (hidden.rank === 3 ? hidden.shape[1] : cos.shape[2]) as number;
      const batch = hidden.rank === 3 ? hidden.shape[0] : hidden.shape[0] / seq;
      const flat = hidden.rank === 2 ? hidden : hidden.reshape([batch * seq, -1]);
      const [qFlat, kFlat, vFlat] = (['q_proj', 'k_proj', 'v_proj'] as const).map((name) => this.project(name, flat));
      if (!kwargs.outputAttentions && kwargs.rotaryDim !== undefined && fusedKernelApplies(ATTENTION_KERNEL, { seq })) {
        const context = this.fusedCore(qFlat, kFlat, vFlat, cos, sin, batch, seq, kwargs);
        const out = this.project('o_proj', context);
        return [hidden.rank === 2 ? out : out.reshape([batch, seq, -1])];
      }
      const heads = (t: tf.Tensor, n: number) => t.reshape([batch, seq, n, headDim]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
      const tables = kwargs.rotaryDim !== undefined && cos.shape[0] === batch;
      const fused = tables && fusedKernelApplies(ROTARY_KERNEL);
      // Training on WebGPU: the kernel with its inverse as the gradient (other backends keep the plain ops' gradients).
      const fusedForTraining = tables && !fused && tf.getBackend() === 'webgpu' && fusedKernelAvailable(ROTARY_KERNEL);
      const rotate = (x: tf.Tensor4D) => (fused
        ? tf.engine().runKernel(ROTARY_KERNEL, { x, cos, sin }, { rotaryDim: kwargs.rotaryDim! }) as tf.Tensor4D
        : fusedForTraining ? rotaryWithGradient(x, cos, sin, kwargs.rotaryDim!) : applyRotary(x, cos, sin, permutation));
      const q = rotate(heads(qFlat, numHeads));
      let k = rotate(heads(kFlat, kvHeads));
      let v = heads(vFlat, kvHeads);
      if (kwargs.cache) [k, v] = kwargs.cache.update(this.args.layerIndex, k, v);
      // Scores [batch, heads, positions, keys] larger than the backend binds at once (WebGPU: 2 GB on the H100, e.g.
      // 32 heads × 4,096² float32) are computed over chunks of query positions.
      const keyLen = k.shape[2];
      const chunk = Math.max(1, Math.floor(maxWeightBlockBytes() / (4 * batch * numHeads * keyLen)));
      const contexts: tf.Tensor[] = [];
      const probs: tf.Tensor[] = [];
      for (let start = 0; start < seq; start += chunk) {
        const n = Math.min(chunk, seq - start);
        const part = <T extends tf.Tensor>(t: T) => (n === seq ? t : t.slice([0, 0, start, 0], [-1, -1, n, -1]) as T);
        const mask = kwargs.mask && kwargs.mask.shape[2] === seq ? part(kwargs.mask) : kwargs.mask;
        const attended = this.attend(part(q), k, v, mask ?? null, n);
        contexts.push(attended.context);
        probs.push(attended.probs);
      }
      const context = (contexts.length === 1 ? contexts[0] : tf.concat(contexts, 2))
        .transpose([0, 2, 1, 3])
        .reshape([batch * seq, numHeads * headDim]);
      const out = this.project('o_proj', context);
      const shaped = hidden.rank === 2 ? out : out.reshape([batch, seq, -1]);
      return kwargs.outputAttentions ? [shaped, probs.length === 1 ? probs[0] : tf.concat(probs, 2)] : [shaped];
    });
  }

  /** softmax(scale·q·kᵀ + mask)·v for q [b, heads, n, d] against all keys: context [b, heads, n, d] and the probabilities. */
  private attend(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, mask: tf.Tensor | null, n: number): { context: tf.Tensor; probs: tf.Tensor } {
    const { numHeads, numKeyValueHeads: kvHeads, headDim } = this.args;
    const groups = numHeads / kvHeads;
    const [batch, , keyLen] = k.shape;
    // GQA without repeating K/V: head h = kv * groups + g, so [b, H, n, d] is [b, KV, groups·n, d] as is.
    const grouped = q.reshape([batch, kvHeads, groups * n, headDim]);
    // Scaled before the product (transformers scales after): the same up to rounding, on n × headDim values
    // instead of n × keyLen.
    let scores = batchMatMul(tf.mul(grouped, this.scale), k, true).reshape([batch, numHeads, n, keyLen]);
    if (mask) scores = tf.add(scores, mask);
    const probs = tf.softmax(scores, -1);
    const context = batchMatMul(probs.reshape([batch, kvHeads, groups * n, keyLen]), v).reshape([batch, numHeads, n, headDim]);
    return { context, probs };
  }

  /** The fused kernel's path (inference on backends that register it): the same steps as call(), cache append included. */
  private fusedCore(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, batch: number, seq: number,
    kwargs: AttentionKwargs): tf.Tensor {
    const { numHeads, numKeyValueHeads: kvHeads, headDim, layerIndex } = this.args;
    const inputs: tf.NamedTensorMap = { q, k, v, cos, sin };
    if (kwargs.mask) inputs.mask = kwargs.mask;
    const cache = kwargs.cache;
    if (cache?.keys[layerIndex]) [inputs.pastKeys, inputs.pastValues] = [cache.keys[layerIndex]!, cache.values[layerIndex]!];
    const attrs = { batch, seq, numHeads, kvHeads, headDim, rotaryDim: kwargs.rotaryDim!, scale: this.scale };
    const [context, keys, values] = tf.engine().runKernel(ATTENTION_KERNEL, inputs, attrs) as tf.Tensor[];
    if (cache) cache.replace(layerIndex, keys as tf.Tensor4D, values as tf.Tensor4D);
    return context;
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    return (inputShape as tf.Shape[])[0];
  }

  namedWeights(): Array<[string, tf.Variable]> {
    const out: Array<[string, tf.Variable]> = [];
    for (const [name, p] of Object.entries(this.projections)) {
      out.push([`${name}.weight`, variableOf(p.weight)]);
      if (p.bias) out.push([`${name}.bias`, variableOf(p.bias)]);
    }
    return out;
  }

  getConfig(): tf.serialization.ConfigDict {
    const { hiddenSize, numHeads, numKeyValueHeads, headDim, bias, layerIndex } = this.args;
    return { ...super.getConfig(), hiddenSize, numHeads, numKeyValueHeads, headDim, bias, layerIndex };
  }
}
tf.serialization.registerClass(NemotronAttention);
