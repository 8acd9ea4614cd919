import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  NemotronConfig, NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification,
  NemotronModel, PRESET_NAMES, estimateMemory, parameterCount, preset,
} from '../../src/index';
import { CONFIGS, fixtureDir } from '../helpers';

describe('presets and memory estimates', () => {
  before(() => tf.setBackend('cpu'));

  it('the parameter count formula equals the parameters of built models, every class, both fixture configs', () => {
    const classes = [NemotronModel, NemotronForCausalLM, NemotronForSequenceClassification, NemotronForTokenClassification, NemotronForQuestionAnswering];
    for (const name of CONFIGS) {
      const config = NemotronConfig.fromPretrained(fixtureDir(name, 'causal-lm')).with({ numLabels: 3 });
      for (const cls of classes) {
        const model = new cls(config);
        expect(parameterCount(config, cls.architecture), `${name} ${cls.architecture}`).to.equal(model.numParameters());
        model.dispose();
      }
    }
  });

  it('presets have the published shapes and sizes', () => {
    expect(PRESET_NAMES).to.include.members(['minitron-4b', 'minitron-8b', 'nemotron-3-8b', 'nemotron-4-15b']);
    const billions = (n: string) => parameterCount(preset(n)) / 1e9;
    expect(billions('minitron-4b')).to.be.closeTo(4.19, 0.02);
    expect(billions('minitron-8b')).to.be.closeTo(8.27, 0.3);
    expect(billions('nemotron-4-15b')).to.be.closeTo(15.6, 0.5);
    expect(NemotronConfig.preset('minitron-4b').rotaryDim).to.equal(64);
    expect(() => preset('llama')).to.throw(/Unknown preset "llama"/);
  });

  it('a scaled-down preset builds a model with the counted parameters', () => {
    const config = preset('minitron-4b', { vocabSize: 64, hiddenSize: 48, intermediateSize: 96, numHiddenLayers: 2, numAttentionHeads: 6, numKeyValueHeads: 2, headDim: 8 });
    const model = new NemotronForCausalLM(config);
    expect(model.numParameters()).to.equal(parameterCount(config));
    model.dispose();
  });

  it('memory: float32 weights, KV cache per token, activations', () => {
    const c = preset('minitron-4b');
    const m = estimateMemory(c, { batch: 1, sequenceLength: 4096 });
    expect(m.weightsBytes).to.equal(parameterCount(c) * 4);
    expect(m.kvCacheBytesPerToken).to.equal(2 * 32 * 8 * 128 * 4);
    expect(m.kvCacheBytes).to.equal(m.kvCacheBytesPerToken * 4096);
    expect(m.totalBytes).to.be.greaterThan(m.weightsBytes + m.kvCacheBytes);
  });
});
