import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { NemotronConfig } from '../../src/index';
import { fixtureDir, tmpDir } from '../helpers';

describe('NemotronConfig', () => {
  it("has transformers' defaults", () => {
    const c = new NemotronConfig();
    expect(c).to.include({
      vocabSize: 256000, hiddenSize: 6144, intermediateSize: 24576, numHiddenLayers: 32, numAttentionHeads: 48,
      headDim: 128, numKeyValueHeads: 48, hiddenAct: 'relu2', maxPositionEmbeddings: 4096, normEps: 1e-5,
      ropeTheta: 10000, partialRotaryFactor: 0.5, attentionBias: false, mlpBias: false, tieWordEmbeddings: false,
      bosTokenId: 2, eosTokenId: 3, numLabels: 2,
    });
    expect(c.rotaryDim).to.equal(64);
  });

  it('reads the transformers 5 layout (rope_parameters)', () => {
    const c = NemotronConfig.fromPretrained(fixtureDir('tiny-mha-bias', 'causal-lm'));
    expect(c).to.include({ headDim: 24, hiddenSize: 48, ropeTheta: 500, partialRotaryFactor: 0.25, tieWordEmbeddings: true });
    expect(c.rotaryDim).to.equal(6);
  });

  it('reads the transformers 4 layout and linear rope scaling', () => {
    const c = NemotronConfig.fromJSON({
      model_type: 'nemotron', vocab_size: 10, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1,
      num_attention_heads: 2, rope_theta: 1234, partial_rotary_factor: 0.5, rope_scaling: { type: 'linear', factor: 4 },
    });
    expect(c.ropeTheta).to.equal(1234);
    expect(c.ropeScaling).to.deep.equal({ ropeType: 'linear', factor: 4 });
    expect(c.headDim).to.equal(4);
    expect(c.numKeyValueHeads).to.equal(2);
  });

  it('toJSON round-trips and writes both layouts', () => {
    const c = NemotronConfig.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-single'));
    const json = c.toJSON();
    expect(json).to.include({ rope_theta: 10000, partial_rotary_factor: 0.5, num_key_value_heads: 2, model_type: 'nemotron' });
    expect(json.rope_parameters).to.deep.equal({ rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.5 });
    const back = NemotronConfig.fromJSON(json);
    expect(back).to.deep.equal(c);
    expect(back.numLabels).to.equal(3);
  });

  it('save writes config.json', () => {
    const dir = tmpDir('config');
    new NemotronConfig({ vocabSize: 10, hiddenSize: 8, intermediateSize: 8, numHiddenLayers: 1, numAttentionHeads: 2 }).save(dir);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).vocab_size).to.equal(10);
  });

  describe('validation names the field', () => {
    const base = { vocabSize: 10, hiddenSize: 16, intermediateSize: 8, numHiddenLayers: 1, numAttentionHeads: 4 };
    it('heads not divisible by KV heads', () => {
      expect(() => new NemotronConfig({ ...base, numKeyValueHeads: 3 })).to.throw(/num_attention_heads \(4\).*num_key_value_heads \(3\)/);
    });
    it('an odd rotary width', () => {
      expect(() => new NemotronConfig({ ...base, headDim: 6, partialRotaryFactor: 0.5 })).to.throw(/rotary width.*= 3/);
    });
    it('non-positive sizes', () => {
      expect(() => new NemotronConfig({ ...base, hiddenSize: 0 })).to.throw(/hidden_size must be a positive integer, got 0/);
      expect(() => new NemotronConfig({ ...base, numHiddenLayers: -1 })).to.throw(/num_hidden_layers/);
    });
    it('an unknown hidden_act', () => {
      expect(() => new NemotronConfig({ ...base, hiddenAct: 'swish' as never })).to.throw(/unknown hidden_act "swish"/);
    });
    it('missing required fields in config.json', () => {
      expect(() => NemotronConfig.fromJSON({ model_type: 'nemotron', vocab_size: 5 }, 'x/config.json'))
        .to.throw(/x\/config.json: missing required field\(s\) hidden_size, intermediate_size, num_hidden_layers, num_attention_heads/);
    });
    it('another model_type', () => {
      expect(() => NemotronConfig.fromJSON({ ...base, model_type: 'llama' })).to.throw(/model_type is "llama"/);
    });
    it('a folder without config.json', () => {
      expect(() => NemotronConfig.fromPretrained(tmpDir('noconfig'))).to.throw(/No config.json in/);
    });
  });
});
