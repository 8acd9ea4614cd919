import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM, applyPresenceFrequencyPenalty, generate } from '../../src/index';
import { CONFIGS, FIXTURES, fixtureDir, forEachBackend, testBackends } from '../helpers';

// OpenAI's presence and frequency penalties (vLLM's rule) written as a LogitsProcessor and run by transformers' generate()
// on the tiny fixture models, alone and with repetition_penalty and sequence_bias (scripts/reference/penalty_fixtures.py).
interface PenaltyCase {
  setting: { presence_penalty: number; frequency_penalty: number; repetition_penalty?: number; sequence_bias?: Array<[number[], number]> };
  sequences: number[][];
}
const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../generation-processors/penalties.json'), 'utf8')) as
  Record<string, { prompt: number[][]; attention_mask: number[][]; cases: PenaltyCase[] }>;

describe('presence and frequency penalties (OpenAI\'s, as vLLM applies them)', () => {
  it('subtract frequency × count + presence from each generated token\'s score, once per distinct token', () => {
    const scores = Float32Array.from([1, 2, 3, 4, 5]);
    applyPresenceFrequencyPenalty(scores, [1, 3, 3, 3], 0.5, 0.25);
    expect(Array.from(scores)).to.deep.equal([1, 2 - 0.25 - 0.5, 3, 4 - 0.75 - 0.5, 5]);
  });

  forEachBackend(testBackends(), () => {
    for (const config of CONFIGS) {
      it(`greedy decoding with them equals transformers' generate() with the same rule, alone and beside repetition_penalty and sequence_bias: ${config}`, async () => {
        const ref = reference[config];
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const before = tf.memory().numTensors;
        const plain = ref.cases.find((c) => c.setting.presence_penalty === 0 && c.setting.frequency_penalty === 0)!.sequences;
        let bites = 0;
        for (const { setting, sequences } of ref.cases) {
          const out = await generate(model, ref.prompt, {
            attentionMask: ref.attention_mask, padTokenId: 0, maxNewTokens: 16, eosTokenId: null,
            presencePenalty: setting.presence_penalty, frequencyPenalty: setting.frequency_penalty,
            repetitionPenalty: setting.repetition_penalty, sequenceBias: setting.sequence_bias,
          });
          expect(out.sequences, JSON.stringify(setting)).to.deep.equal(sequences);
          if (JSON.stringify(sequences) !== JSON.stringify(plain)) bites++;
        }
        // The penalties change what is chosen in most settings (the fixture would not test them otherwise).
        expect(bites).to.be.greaterThan(config === 'tiny-gqa' ? 4 : 0);
        expect(tf.memory().numTensors).to.equal(before);
        model.dispose();
      });
    }
  });

  it('refuses a penalty that is not a finite number', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    try {
      let error = '';
      await generate(model, [[5, 6]], { maxNewTokens: 2, presencePenalty: NaN }).catch((e: Error) => { error = e.message; });
      expect(error).to.equal('generate: presencePenalty must be a finite number, got NaN');
    } finally {
      model.dispose();
    }
  });
});
