import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronHConfig, NemotronHForCausalLM } from '../../src/index';
import { FIXTURES, forEachBackend, testBackends } from '../helpers';

// A tiny NemotronH ("M*M-": Mamba-2, attention, Mamba-2, MLP) and what transformers computes with it
// (scripts/reference/nemotron_h_fixtures.py).
const DIR = path.resolve(FIXTURES, '../nemotron-h');
interface Reference {
  prompt: number[][]; attention_mask: number[][]; logits: number[][][]; loss: number; greedy: number[];
  row1_alone_logits: number[][]; gradients: Record<string, number[]>;
}
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as Reference;

function maxDiff(a: number[], b: number[]): number {
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
}

describe('NemotronH (the hybrid Mamba-2 architecture of Nemotron-H and Nemotron Nano 2)', () => {
  it('reads config.json in transformers 5\'s layout and the checkpoints\' own (hybrid_override_pattern, mamba_* names); refuses experts by name', () => {
    const config = NemotronHConfig.fromPretrained(path.join(DIR, 'model'));
    expect(config.layerTypes).to.deep.equal(['mamba', 'attention', 'mamba', 'mlp']);
    expect([config.mambaNumHeads, config.mambaHeadDim, config.nGroups, config.ssmStateSize, config.convDim]).to.deep.equal([4, 8, 2, 8, 64]);
    const legacy = NemotronHConfig.fromJSON({ model_type: 'nemotron_h', vocab_size: 96, hidden_size: 32, hybrid_override_pattern: 'M-*', mamba_num_heads: 4,
      mamba_head_dim: 8, mamba_n_groups: 2, mamba_d_state: 8, mamba_d_conv: 4, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8 });
    expect(legacy.layerTypes).to.deep.equal(['mamba', 'mlp', 'attention']);
    expect([legacy.nGroups, legacy.ssmStateSize, legacy.convKernel]).to.deep.equal([2, 8, 4]);
    expect(() => NemotronHConfig.fromJSON({ hybrid_override_pattern: 'ME' })).to.throw(/layer 1 is a mixture of experts \("E"\)/);
    expect(() => NemotronHConfig.fromJSON({ hybrid_override_pattern: 'MX' })).to.throw(/hybrid_override_pattern has "X" at 1/);
  });

  forEachBackend(testBackends(), () => {
    it('logits of a left-padded batch and the loss equal transformers\'; gradients too; no tensor left', async () => {
      const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
      const before = tf.memory().numTensors;
      const { logits } = model.forward({ inputIds: reference.prompt, attentionMask: reference.attention_mask });
      const ours = await logits.array() as number[][][];
      logits.dispose();
      let worst = 0;
      reference.prompt.forEach((_, b) => reference.attention_mask[b].forEach((m, t) => {
        if (m) worst = Math.max(worst, maxDiff(ours[b][t], reference.logits[b][t]));
      }));
      expect(worst, 'logits').to.be.at.most(1e-4);
      const { logits: l2, loss } = model.forward({ inputIds: reference.prompt.slice(0, 1), labels: reference.prompt.slice(0, 1) });
      expect(Math.abs((await loss!.data())[0] - reference.loss)).to.be.at.most(1e-5);
      tf.dispose([l2, loss!]);
      const names = Object.keys(reference.gradients);
      const { grads, value } = tf.variableGrads(() => {
        const out = model.forward({ inputIds: reference.prompt.slice(0, 1), labels: reference.prompt.slice(0, 1) });
        out.logits.dispose();
        return out.loss!;
      }, names.map((n) => model.weights.get(n)!));
      for (const name of names) {
        const g = Array.from(await grads[model.weights.get(name)!.name].data()).slice(0, 16);
        expect(maxDiff(g, reference.gradients[name]), `gradient of ${name}`).to.be.at.most(1e-4);
      }
      tf.dispose([value, ...Object.values(grads)]);
      expect(tf.memory().numTensors).to.equal(before);
      model.dispose();
    });

    it('greedy generation with the kept state (convolution window, SSM state, attention cache) writes transformers\' tokens', async () => {
      const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
      const before = tf.memory().numTensors;
      const out = model.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null });
      expect(out[0]).to.deep.equal(reference.greedy);
      // A left-padded row generates as it does alone.
      const padded = model.generate([reference.prompt[1]], { maxNewTokens: 6, attentionMask: [reference.attention_mask[1]], eosTokenId: null });
      const alone = model.generate([reference.prompt[1].slice(3)], { maxNewTokens: 6, eosTokenId: null });
      expect(padded[0].slice(10)).to.deep.equal(alone[0].slice(7));
      expect(tf.memory().numTensors).to.equal(before);
      model.dispose();
    });
  });
});
