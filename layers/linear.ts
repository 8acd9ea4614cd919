import * as tf from '@tensorflow/tfjs';
import { HFNamedWeights, linear, normalInit, variableOf } from './weights';

export interface LinearArgs {
  inFeatures: number;
  outFeatures: number;
  bias: boolean;
  initializerRange?: number;
  name?: string;
}

/** torch.nn.Linear with its weight in HF layout [out, in]: used by the heads (lm_head, score, qa_outputs). */
export class Linear extends tf.layers.Layer implements HFNamedWeights {
  static className = 'NemotronLinear';
  readonly args: LinearArgs;
  private weight!: tf.LayerVariable;
  private biasWeight: tf.LayerVariable | null = null;

  constructor(args: LinearArgs) {
    super({ name: args.name });
    this.args = args;
    this.build([null, args.inFeatures]);
  }

  build(_inputShape: tf.Shape | tf.Shape[]): void {
    const init = normalInit(this.args.initializerRange ?? 0.02);
    this.weight = this.addWeight('weight', [this.args.outFeatures, this.args.inFeatures], 'float32', init);
    if (this.args.bias) this.biasWeight = this.addWeight('bias', [this.args.outFeatures], 'float32', tf.initializers.zeros());
    this.built = true;
  }

  call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    return linear(x, this.weight.read(), this.biasWeight?.read());
  }

  computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    const shape = inputShape as tf.Shape;
    return [...shape.slice(0, -1), this.args.outFeatures];
  }

  namedWeights(): Array<[string, tf.Variable]> {
    const out: Array<[string, tf.Variable]> = [['weight', variableOf(this.weight)]];
    if (this.biasWeight) out.push(['bias', variableOf(this.biasWeight)]);
    return out;
  }

  getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), inFeatures: this.args.inFeatures, outFeatures: this.args.outFeatures, bias: this.args.bias };
  }
}
tf.serialization.registerClass(Linear);
