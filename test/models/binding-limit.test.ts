import * as fs from 'fs';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronModel } from '../../src/index';
import { setMaxWeightBlockBytes } from '../../layers/vocab-matrix';
import { fixtureParity } from '../fixture-parity';
import { CONFIGS, expected, fixtureDir, forEachBackend, kernelsRun, testBackends } from '../helpers';

/**
 * Attention scores [batch, heads, positions, keys] over the largest tensor the backend binds at once (WebGPU's
 * maxStorageBufferBindingSize: 2 GB on the H100, e.g. 32 heads × 4,096² float32) are computed over chunks of query
 * positions. Forced here with a small limit: every head, gradients and generation still match transformers.
 */
forEachBackend(testBackends(), () => {
  afterEach(() => setMaxWeightBlockBytes(null));

  for (const config of CONFIGS) {
    it(`attention over chunks of query positions: every output matches transformers: ${config}`, async () => {
      const exp = expected(config);
      const settings = JSON.parse(fs.readFileSync(fixtureDir(config, 'causal-lm/config.json'), 'utf8'));
      const [batch, seq] = [exp.json.input_ids.length, exp.json.input_ids[0].length];
      // Scores of three positions at a time: chunks of 3, 3 and 1 for the fixture's 7-token prompts.
      setMaxWeightBlockBytes(3 * 4 * batch * settings.num_attention_heads * seq);
      const model = await NemotronModel.fromPretrained(fixtureDir(config, 'causal-lm'), { quiet: true });
      const before = tf.memory().numTensors;
      const counts = kernelsRun(() => {
        const out = model.forward({ inputIds: exp.json.input_ids, attentionMask: exp.json.attention_mask, outputAttentions: true });
        expect(out.attentions![0].shape, 'the probabilities joined back').to.deep.equal([batch, settings.num_attention_heads, seq, seq]);
        tf.dispose([out.lastHiddenState, ...out.attentions!]);
      });
      expect(counts.get('Softmax'), 'a softmax per chunk and layer').to.equal(3 * settings.num_hidden_layers);
      expect(tf.memory().numTensors, 'no tensor left').to.equal(before);
      model.dispose();
      const result = await fixtureParity(fixtureDir(config));
      expect(result.pass, JSON.stringify(result)).to.equal(true);
    });
  }
});
