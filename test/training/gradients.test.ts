import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { HeadInputs, NemotronForCausalLM, setLossChunkBytes } from '../../src/index';
import { CONFIGS, expected, expectRelClose, fixtureDir, forEachBackend, testBackends } from '../helpers';

// Gradients within 1e-4 absolute or 1e-3 relative, whichever is larger; losses 1e-5 relative (fixtures README).
// The loss two ways: forward()'s (logits whole, as transformers) and computeLoss(), the training path (the logits by
// chunks of positions, recomputed in the backward); here chunks of 3 positions, so that the 10–12 counted positions
// cross chunk edges and end on a short chunk.
const LOSSES: Array<[string, (model: NemotronForCausalLM, batch: HeadInputs) => tf.Scalar, number | null]> = [
  ['forward().loss', (model, batch) => model.forward(batch).loss!, null],
  ['computeLoss() in chunks of 3 positions', (model, batch) => model.computeLoss(batch), 3],
];

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) for (const [how, lossOf, chunkPositions] of LOSSES) {
    it(`gradients of the causal loss (${how}) match transformers for every parameter, and one SGD step: ${config}`, async () => {
      const exp = expected(config);
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      setLossChunkBytes(chunkPositions === null ? null : chunkPositions * 4 * model.config.vocabSize);
      try {
        const batch = { inputIds: exp.json.input_ids, attentionMask: exp.json.attention_mask, labels: exp.json.causal_labels };
        const params = model.namedParameters();
        const before = tf.memory().numTensors;
        const { value, grads } = tf.variableGrads(() => lossOf(model, batch), [...params.values()]);
        expectRelClose(value.dataSync()[0], exp.json.causal_loss, 1e-5, 'loss');
        const gradNames = exp.keys().filter((k) => k.startsWith('causal.grad.')).map((k) => k.slice('causal.grad.'.length));
        expect([...params.keys()].sort()).to.deep.equal(gradNames.sort());
        for (const [name, variable] of params) {
          const reference = exp.tensor(`causal.grad.${name}`);
          const [worst] = tf.tidy(() => {
            const diff = tf.abs(tf.sub(grads[variable.name], reference));
            const allowed = tf.maximum(1e-4, tf.mul(1e-3, tf.abs(reference)));
            return [tf.max(tf.sub(diff, allowed)).dataSync()[0]];
          });
          reference.dispose();
          expect(worst, `gradient of ${name} exceeds the tolerance by ${worst}`).to.be.at.most(0);
        }
        // one plain SGD step, lr 0.1
        for (const variable of params.values()) tf.tidy(() => variable.assign(tf.sub(variable, tf.mul(0.1, grads[variable.name]))));
        tf.dispose([value, ...Object.values(grads)]);
        expect(tf.memory().numTensors).to.equal(before);
        const stepped = tf.tidy(() => lossOf(model, batch));
        expectRelClose(stepped.dataSync()[0], exp.json['causal_loss_after_sgd_0.1'], 1e-5, 'loss after one SGD step');
        stepped.dispose();
        expect(tf.memory().numTensors, 'tensors left after the step and the loss').to.equal(before);
      } finally {
        setLossChunkBytes(null);
        model.dispose();
      }
    });
  }
});
