import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification,
  NemotronModel,
} from '../../src/index';
import { CONFIGS, expectClose, expectRelClose, expected, fixtureDir, forEachBackend, testBackends, tmpDir } from '../helpers';

// Tolerances from the fixtures README: hidden states, logits 1e-4 absolute; losses 1e-5 relative.
const ABS = 1e-4;
const REL = 1e-5;

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    describe(`parity with transformers: ${config}`, function () {
      const exp = expected(config);
      const inputs = { inputIds: exp.json.input_ids as number[][], attentionMask: exp.json.attention_mask as number[][] };

      it('NemotronModel: every hidden state, every attention map, the last hidden state', async () => {
        const model = await NemotronModel.fromPretrained(fixtureDir(config, 'causal-lm'), { quiet: true });
        const before = tf.memory().numTensors;
        const out = model.forward({ ...inputs, outputHiddenStates: true, outputAttentions: true });
        const layers = model.config.numHiddenLayers;
        expect(out.hiddenStates).to.have.length(layers + 1);
        expect(out.attentions).to.have.length(layers);
        out.hiddenStates!.forEach((h, i) => expectClose(h, exp.tensor(`base.hidden_states.${i}`), ABS, `hidden state ${i}`));
        out.attentions!.forEach((a, i) => expectClose(a, exp.tensor(`base.attentions.${i}`), ABS, `attention ${i}`));
        expectClose(out.lastHiddenState, exp.tensor('base.last_hidden_state'), ABS, 'last hidden state');
        tf.dispose([out.lastHiddenState, ...out.hiddenStates!, ...out.attentions!]);
        expect(tf.memory().numTensors, 'tensors left after disposing the outputs').to.equal(before);
        model.dispose();
      });

      it('NemotronForCausalLM: logits and loss; no tensor left but the outputs', async () => {
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const before = tf.memory().numTensors;
        const out = model.forward({ ...inputs, labels: exp.json.causal_labels });
        expect(tf.memory().numTensors - before, 'only logits and loss remain').to.equal(2);
        expectClose(out.logits, exp.tensor('causal.logits'), ABS, 'logits');
        expectRelClose(out.loss!.dataSync()[0], exp.json.causal_loss, REL, 'causal loss');
        tf.dispose([out.logits, out.loss!]);
        expect(tf.memory().numTensors).to.equal(before);
        const afterLoad = tf.memory().numTensors;
        const params = model.namedParameters().size;
        model.dispose();
        expect(afterLoad - tf.memory().numTensors, 'dispose frees every weight (and the rotary tables and permutation)').to.equal(params + 3);
      });

      it('logitsToKeep computes the last positions only, equal to the full logits there', async () => {
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const out = model.forward({ ...inputs, logitsToKeep: 1 });
        expect(out.logits.shape).to.deep.equal([2, 1, model.config.vocabSize]);
        const full = exp.tensor('causal.logits');
        expectClose(out.logits, full.slice([0, 6, 0], [-1, 1, -1]), ABS, 'last logits');
        tf.dispose([out.logits, full]);
        model.dispose();
      });

      it('BF16 checkpoint: logits computed in float32', async () => {
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm-bf16'));
        const out = model.forward(inputs);
        expectClose(out.logits, exp.tensor('bf16.logits_fp32_compute'), ABS, 'bf16 logits');
        out.logits.dispose();
        model.dispose();
      });

      it('sharded checkpoint equals the single file', async () => {
        const single = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const sharded = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm-sharded'));
        for (const [name, v] of single.namedParameters()) {
          const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(v, sharded.namedParameters().get(name)!))).dataSync()[0]);
          expect(diff, name).to.equal(0);
        }
        const out = sharded.forward(inputs);
        expectClose(out.logits, exp.tensor('causal.logits'), ABS, 'sharded logits');
        out.logits.dispose();
        single.dispose();
        sharded.dispose();
      });

      it('a config.json in the transformers 4 layout loads to the same logits', async () => {
        const dir = tmpDir('v4');
        const json = JSON.parse(fs.readFileSync(fixtureDir(config, 'causal-lm/config.json'), 'utf8'));
        const rope = json.rope_parameters;
        delete json.rope_parameters;
        json.rope_theta = rope.rope_theta;
        json.partial_rotary_factor = rope.partial_rotary_factor;
        json.rope_scaling = null;
        json.transformers_version = '4.44.0';
        fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(json));
        fs.copyFileSync(fixtureDir(config, 'causal-lm/model.safetensors'), path.join(dir, 'model.safetensors'));
        const model = await NemotronForCausalLM.fromPretrained(dir);
        expect(model.config.ropeTheta).to.equal(rope.rope_theta);
        const out = model.forward(inputs);
        expectClose(out.logits, exp.tensor('causal.logits'), ABS, 'v4-layout logits');
        out.logits.dispose();
        model.dispose();
        fs.rmSync(dir, { recursive: true });
      });

      for (const variant of ['single', 'multi', 'regression'] as const) {
        it(`NemotronForSequenceClassification (${variant}): pooled logits and loss`, async () => {
          const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir(config, `seqcls-${variant}`));
          const labels = exp.json[`seqcls_${variant}_labels`];
          const out = model.forward({ ...inputs, labels });
          expectClose(out.logits, exp.tensor(`seqcls.${variant}.logits`), ABS, 'logits');
          expectRelClose(out.loss!.dataSync()[0], exp.json[`seqcls_${variant}_loss`], REL, `${variant} loss`);
          tf.dispose([out.logits, out.loss!]);
          model.dispose();
        });
      }

      it('NemotronForQuestionAnswering: span logits and the clamped, ignored loss', async () => {
        const model = await NemotronForQuestionAnswering.fromPretrained(fixtureDir(config, 'qa'));
        expect([...model.namedParameters().keys()][0]).to.equal('transformer.embed_tokens.weight');
        const out = model.forward({ ...inputs, startPositions: exp.json.qa_start_positions, endPositions: exp.json.qa_end_positions });
        expectClose(out.startLogits, exp.tensor('qa.start_logits'), ABS, 'start logits');
        expectClose(out.endLogits, exp.tensor('qa.end_logits'), ABS, 'end logits');
        expectRelClose(out.loss!.dataSync()[0], exp.json.qa_loss, REL, 'qa loss');
        tf.dispose([out.startLogits, out.endLogits, out.loss!]);
        model.dispose();
      });

      it('NemotronForTokenClassification: per-token logits and loss', async () => {
        const model = await NemotronForTokenClassification.fromPretrained(fixtureDir(config, 'tokcls'));
        const out = model.forward({ ...inputs, labels: exp.json.tokcls_labels });
        expectClose(out.logits, exp.tensor('tokcls.logits'), ABS, 'logits');
        expectRelClose(out.loss!.dataSync()[0], exp.json.tokcls_loss, REL, 'tokcls loss');
        tf.dispose([out.logits, out.loss!]);
        model.dispose();
      });
    });
  }
});
