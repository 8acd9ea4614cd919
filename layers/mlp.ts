import * as tf from '@tensorflow/tfjs';
import { MLP_KERNEL, fusedKernelApplies } from '../src/kernels/fused';
import { relu2 } from './relu2';
import { Adapters, adaptedLinear } from './lora';
import { HFNamedWeights, normalInit, observingProducts, variableOf } from './weights';

export type Activation = 'relu2' | 'relu' | 'gelu' | 'silu';

const ACTIVATIONS: Record<Activation, (x: tf.Tensor) => tf.Tensor> = {
  relu2,
  relu: (x) => tf.relu(x),
  // transformers' "gelu" is the exact erf form.
  gelu: (x) => tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.div(x, Math.SQRT2))))),
  silu: (x) => tf.tidy(() => tf.mul(x, tf.sigmoid(x))),
};

export interface MLPArgs {
  hiddenSize: number;
  intermediateSize: number;
  bias: boolean;
  activation: Activation;
  initializerRange?: number;
  name?: string;
}

/** Nemotron's MLP: down_proj(act(up_proj(x))), no gate; act is relu² for the whole family. */
export class NemotronMLP extends tf.layers.Layer implements HFNamedWeights {
  static className = 'NemotronMLP';
  readonly args: MLPArgs;
  private upWeight!: tf.LayerVariable;
  private upBias: tf.LayerVariable | null = null;
  private downWeight!: tf.LayerVariable;
  private downBias: tf.LayerVariable | null = null;
  /** LoRA adapters of up_proj and down_proj (see LoraModel). */
  readonly adapters: Adapters = new Map();

  constructor(args: MLPArgs) {
    super({ name: args.name });
    if (!(args.activation in ACTIVATIONS)) throw new Error(`NemotronMLP: unknown activation ${JSON.stringify(args.activation)}`);
    this.args = args;
    this.build([null, args.hiddenSize]);
  }

  build(_inputShape: tf.Shape | tf.Shape[]): void {
    const { hiddenSize, intermediateSize, bias } = this.args;
    const init = normalInit(this.args.initializerRange ?? 0.02);
    this.upWeight = this.addWeight('up_proj.weight', [intermediateSize, hiddenSize], 'float32', init);
    this.downWeight = this.addWeight('down_proj.weight', [hiddenSize, intermediateSize], 'float32', init);
    if (bias) {
      this.upBias = this.addWeight('up_proj.bias', [intermediateSize], 'float32', tf.initializers.zeros());
      this.downBias = this.addWeight('down_proj.bias', [hiddenSize], 'float32', tf.initializers.zeros());
    }
    this.built = true;
  }

  call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    const { activation } = this.args;
    if ((activation === 'relu2' || activation === 'relu') && x.rank === 2 && this.adapters.size === 0 && !observingProducts() && fusedKernelApplies(MLP_KERNEL, { rows: x.shape[0] })) {
      const inputs: tf.NamedTensorMap = { x, up: this.upWeight.read(), down: this.downWeight.read() };
      if (this.upBias) [inputs.upBias, inputs.downBias] = [this.upBias.read(), this.downBias!.read()];
      return tf.engine().runKernel(MLP_KERNEL, inputs, { activation }) as tf.Tensor;
    }
    return tf.tidy(() => {
      const up = ACTIVATIONS[this.args.activation](adaptedLinear(x, this.upWeight.read(), this.upBias?.read(), this.adapters.get('up_proj')));
      return adaptedLinear(up, this.downWeight.read(), this.downBias?.read(), this.adapters.get('down_proj'));
    });
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }

  namedWeights(): Array<[string, tf.Variable]> {
    const out: Array<[string, tf.Variable]> = [['up_proj.weight', variableOf(this.upWeight)]];
    if (this.upBias) out.push(['up_proj.bias', variableOf(this.upBias)]);
    out.push(['down_proj.weight', variableOf(this.downWeight)]);
    if (this.downBias) out.push(['down_proj.bias', variableOf(this.downBias)]);
    return out;
  }

  getConfig(): tf.serialization.ConfigDict {
    const { hiddenSize, intermediateSize, bias, activation } = this.args;
    return { ...super.getConfig(), hiddenSize, intermediateSize, bias, activation };
  }
}
tf.serialization.registerClass(NemotronMLP);
