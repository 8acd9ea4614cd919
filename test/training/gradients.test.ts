import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM } from '../../src/index';
import { CONFIGS, expected, expectRelClose, fixtureDir, forEachBackend, testBackends } from '../helpers';

// Gradients within 1e-4 absolute or 1e-3 relative, whichever is larger; losses 1e-5 relative (fixtures README).
forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    it(`gradients of the causal loss match transformers for every parameter, and one SGD step: ${config}`, async () => {
      const exp = expected(config);
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      const batch = { inputIds: exp.json.input_ids, attentionMask: exp.json.attention_mask, labels: exp.json.causal_labels };
      const params = model.namedParameters();
      const before = tf.memory().numTensors;
      const { value, grads } = tf.variableGrads(() => model.forward(batch).loss!, [...params.values()]);
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
      const after = model.forward(batch);
      expectRelClose(after.loss!.dataSync()[0], exp.json['causal_loss_after_sgd_0.1'], 1e-5, 'loss after one SGD step');
      tf.dispose([after.logits, after.loss!]);
      model.dispose();
    });
  }
});
