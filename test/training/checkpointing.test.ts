import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronConfig, NemotronForCausalLM, NemotronForSequenceClassification } from '../../src/index';
import { CONFIGS, expected, fixtureDir, forEachBackend, testBackends } from '../helpers';

/** The loss and the gradient of every parameter, by HF name. */
function lossAndGradients(model: NemotronForCausalLM | NemotronForSequenceClassification, lossOf: () => tf.Scalar): { loss: tf.Scalar; grads: Map<string, tf.Tensor> } {
  const params = model.namedParameters();
  const { value, grads } = tf.variableGrads(lossOf, [...params.values()]);
  return { loss: value, grads: new Map([...params].map(([name, v]) => [name, grads[v.name]])) };
}

function maxDifference(a: Map<string, tf.Tensor>, b: Map<string, tf.Tensor>): number {
  return Math.max(...[...a].map(([name, g]) => tf.tidy(() => tf.max(tf.abs(tf.sub(g, b.get(name)!))).dataSync()[0])));
}

// Gradient checkpointing (each decoder layer recomputed in the backward) must not change a gradient: the recomputation
// runs the same kernels on the same inputs. The reference is the same model without it (and transformers' gradients,
// through the fixtures, which the run without it matches in gradients.test.ts).
forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    it(`gradient checkpointing gives the same loss and gradients (forward() and computeLoss()), leaves no tensor: ${config}`, async () => {
      const exp = expected(config);
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      const batch = { inputIds: exp.json.input_ids, attentionMask: exp.json.attention_mask, labels: exp.json.causal_labels };
      for (const lossOf of [() => model.computeLoss(batch), () => model.forward(batch).loss!]) {
        const plain = lossAndGradients(model, lossOf);
        const before = tf.memory().numTensors;
        model.gradientCheckpointingEnable();
        expect(model.isGradientCheckpointing).to.equal(true);
        const checkpointed = lossAndGradients(model, lossOf);
        model.gradientCheckpointingDisable();
        expect(checkpointed.loss.dataSync()[0]).to.equal(plain.loss.dataSync()[0]);
        expect(maxDifference(checkpointed.grads, plain.grads), 'max |gradient difference|').to.be.at.most(1e-6);
        tf.dispose([checkpointed.loss, ...checkpointed.grads.values()]);
        expect(tf.memory().numTensors, 'tensors left by a checkpointed step').to.equal(before);
        tf.dispose([plain.loss, ...plain.grads.values()]);
      }
      model.dispose();
    });
  }

  it('gradient checkpointing through a head with its own parameters (sequence classification, padded batch)', async () => {
    const exp = expected('tiny-mha-bias');
    const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-mha-bias', 'seqcls-single'));
    const batch = { inputIds: exp.json.input_ids, attentionMask: exp.json.attention_mask, labels: exp.json.seqcls_single_labels };
    const plain = lossAndGradients(model, () => model.computeLoss(batch));
    model.gradientCheckpointingEnable();
    const checkpointed = lossAndGradients(model, () => model.computeLoss(batch));
    expect(checkpointed.loss.dataSync()[0]).to.equal(plain.loss.dataSync()[0]);
    expect(maxDifference(checkpointed.grads, plain.grads)).to.be.at.most(1e-6);
    tf.dispose([plain.loss, checkpointed.loss, ...plain.grads.values(), ...checkpointed.grads.values()]);
    model.dispose();
  });
});

describe('gradient checkpointing memory', () => {
  it('a training step of 8 layers peaks lower: each layer keeps its input, not its activations', async () => {
    const config = new NemotronConfig({
      vocabSize: 64, hiddenSize: 32, intermediateSize: 128, numHiddenLayers: 8, numAttentionHeads: 4, numKeyValueHeads: 2,
      maxPositionEmbeddings: 256, padTokenId: 0,
    });
    const model = new NemotronForCausalLM(config);
    const ids = [0, 1].map((r) => Array.from({ length: 128 }, (_, i) => 1 + ((r * 31 + i * 7) % 63)));
    const peak = async () => {
      const before = tf.memory().numBytes;
      const info = await tf.profile(() => {
        const { value, grads } = tf.variableGrads(() => model.computeLoss({ inputIds: ids, labels: ids }), [...model.namedParameters().values()]);
        tf.dispose([value, ...Object.values(grads)]);
      });
      return info.peakBytes - before;
    };
    const plain = await peak();
    model.gradientCheckpointingEnable();
    const checkpointed = await peak();
    // Attention probabilities alone are 2 × 4 × 128² × 4 B = 512 kB a layer; the input a layer keeps, 32 kB.
    expect(checkpointed, `peak ${checkpointed} bytes checkpointed, ${plain} without`).to.be.below(plain / 3);
    model.dispose();
  });
});
