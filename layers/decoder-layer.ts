import * as tf from '@tensorflow/tfjs';
import { AttentionKwargs, NemotronAttention } from './attention';
import { NemotronLayerNorm1P } from './layernorm1p';
import { Activation, NemotronMLP } from './mlp';
import { HFNamedWeights, outputs } from './weights';

export interface DecoderLayerArgs {
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  attentionBias: boolean;
  mlpBias: boolean;
  activation: Activation;
  normEps: number;
  layerIndex: number;
  initializerRange?: number;
  name?: string;
}

/** Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h)). Inputs [hidden, cos, sin, permutation] (see NemotronAttention); outputs [hidden, probs?]. */
export class NemotronDecoderLayer extends tf.layers.Layer implements HFNamedWeights {
  static className = 'NemotronDecoderLayer';
  readonly args: DecoderLayerArgs;
  readonly inputLayernorm: NemotronLayerNorm1P;
  readonly selfAttn: NemotronAttention;
  readonly postAttentionLayernorm: NemotronLayerNorm1P;
  readonly mlp: NemotronMLP;

  constructor(args: DecoderLayerArgs) {
    super({ name: args.name });
    this.args = args;
    const { hiddenSize, normEps: eps, initializerRange } = args;
    this.inputLayernorm = new NemotronLayerNorm1P({ size: hiddenSize, eps });
    this.selfAttn = new NemotronAttention({
      hiddenSize, numHeads: args.numHeads, numKeyValueHeads: args.numKeyValueHeads, headDim: args.headDim,
      bias: args.attentionBias, layerIndex: args.layerIndex, initializerRange,
    });
    this.postAttentionLayernorm = new NemotronLayerNorm1P({ size: hiddenSize, eps });
    this.mlp = new NemotronMLP({
      hiddenSize, intermediateSize: args.intermediateSize, bias: args.mlpBias, activation: args.activation, initializerRange,
    });
    this.built = true;
  }

  call(inputs: tf.Tensor | tf.Tensor[], kwargs: AttentionKwargs = {}): tf.Tensor[] {
    const [hidden, cos, sin, permutation] = inputs as tf.Tensor[];
    return tf.tidy(() => {
      const normed = this.inputLayernorm.apply(hidden) as tf.Tensor;
      const [attnOut, probs] = outputs(this.selfAttn.apply([normed, cos, sin, permutation], kwargs));
      const h = tf.add(hidden, attnOut);
      const out = tf.add(h, this.mlp.apply(this.postAttentionLayernorm.apply(h) as tf.Tensor) as tf.Tensor);
      return probs ? [out, probs] : [out];
    });
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    return (inputShape as tf.Shape[])[0];
  }

  /** The variables of the LoRA adapters attached to this layer's projections (none without LoraModel). */
  adapterVariables(): tf.Variable[] {
    return [...this.selfAttn.adapters.values(), ...this.mlp.adapters.values()].flatMap((a) => [a.a, a.b]);
  }

  namedWeights(): Array<[string, tf.Variable]> {
    const parts: Array<[string, HFNamedWeights]> = [
      ['input_layernorm', this.inputLayernorm], ['self_attn', this.selfAttn],
      ['post_attention_layernorm', this.postAttentionLayernorm], ['mlp', this.mlp],
    ];
    return parts.flatMap(([prefix, layer]) => layer.namedWeights().map(([n, v]): [string, tf.Variable] => [`${prefix}.${n}`, v]));
  }

  getConfig(): tf.serialization.ConfigDict {
    const { name: _name, ...rest } = this.args;
    return { ...super.getConfig(), ...rest };
  }
}
tf.serialization.registerClass(NemotronDecoderLayer);
