import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM, generate, generateStream } from '../../src/index';
import { CONFIGS, FIXTURES, fixtureDir, forEachBackend, testBackends } from '../helpers';

// transformers' beam search on the tiny fixture models (scripts/reference/beam_fixtures.py): left-padded prompts, an
// EOS id the beams meet, every early_stopping mode, length penalties, several returned sequences, repetition penalty
// and min_new_tokens. Sequences exact, scores within 1e-4. (The live harness checks more settings on random models.)
interface BeamCase {
  setting: { num_beams: number; num_return_sequences: number; length_penalty: number; early_stopping: boolean | 'never'; max_new_tokens: number;
    repetition_penalty?: number; min_new_tokens?: number };
  sequences: number[][];
  scores: number[];
}

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../beam-search', `${config}.json`), 'utf8')) as {
      prompt: number[][]; attention_mask: number[][]; eos_token_id: number; cases: BeamCase[];
    };
    it(`beam search equals transformers' (${reference.cases.length} settings), leaving no tensor: ${config}`, async () => {
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      const before = tf.memory().numTensors;
      for (const { setting, sequences, scores } of reference.cases) {
        const out = await generate(model, reference.prompt, {
          attentionMask: reference.attention_mask, eosTokenId: reference.eos_token_id, padTokenId: 0, maxNewTokens: setting.max_new_tokens,
          numBeams: setting.num_beams, numReturnSequences: setting.num_return_sequences, lengthPenalty: setting.length_penalty,
          earlyStopping: setting.early_stopping, repetitionPenalty: setting.repetition_penalty, minNewTokens: setting.min_new_tokens,
        });
        expect(out.sequences, JSON.stringify(setting)).to.deep.equal(sequences);
        out.sequencesScores!.forEach((s, i) => expect(s, `${JSON.stringify(setting)}: score ${i}`).to.be.closeTo(scores[i], 1e-4));
      }
      expect(tf.memory().numTensors, 'tensors left by beam search').to.equal(before);
      model.dispose();
    });

    it(`beam sampling: near-zero temperature gives beam search's sequences; a seed repeats, other seeds differ; no tensor left: ${config}`, async () => {
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      const before = tf.memory().numTensors;
      for (const { setting, sequences } of reference.cases.slice(0, 2)) {
        const out = await generate(model, reference.prompt, {
          attentionMask: reference.attention_mask, eosTokenId: reference.eos_token_id, padTokenId: 0, maxNewTokens: setting.max_new_tokens,
          numBeams: setting.num_beams, numReturnSequences: setting.num_return_sequences, lengthPenalty: setting.length_penalty,
          earlyStopping: setting.early_stopping, doSample: true, temperature: 1e-4, seed: 3,
        });
        expect(out.sequences, `sampled at temperature 1e-4: ${JSON.stringify(setting)}`).to.deep.equal(sequences);
      }
      const sample = (seed: number) => generate(model, reference.prompt, {
        attentionMask: reference.attention_mask, eosTokenId: null, padTokenId: 0, maxNewTokens: 8, numBeams: 3, doSample: true,
        temperature: 20, topK: 0, seed,
      }).then((o) => o.sequences.map((r) => r.join()).join('|'));
      const first = await sample(1);
      expect(await sample(1)).to.equal(first);
      const others = await Promise.all([2, 3, 4, 5].map(sample));
      expect(others.some((o) => o !== first), 'other seeds give other beams').to.equal(true);
      expect(tf.memory().numTensors, 'tensors left by beam sampling').to.equal(before);
      model.dispose();
    });
  }
});

describe('beam search: what it refuses', () => {
  it('streaming, score lists, more sequences than beams, several sequences without beams', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const failure = (p: Promise<unknown>) => p.then(() => 'ran', (e: Error) => e.message);
    expect(await failure(generate(model, [[2, 5]], { numBeams: 2, outputScores: true }))).to.match(/outputScores is not supported with beam search/);
    expect(await failure(generate(model, [[2, 5]], { numBeams: 2, numReturnSequences: 3 }))).to.match(/numReturnSequences must be an integer in \[1, numBeams 2\], got 3/);
    expect(await failure(generate(model, [[2, 5]], { numReturnSequences: 2 }))).to.match(/numReturnSequences 2 needs beam search/);
    expect(await failure(generateStream(model, [[2, 5]], { numBeams: 2 }).next())).to.match(/beam search does not stream/);
    model.dispose();
  });
});
