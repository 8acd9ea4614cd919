import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM, logprobOf, sequenceLogprobs } from '../../src/index';
import { CONFIGS, expected, fixtureDir, forEachBackend, testBackends } from '../helpers';

// Logits within 1e-4 absolute (fixtures README); a log-softmax moves by at most twice that.
const ABS = 2e-4;

/** log_softmax of transformers' logits [positions][vocab], in float64. */
function logSoftmax(rows: number[][]): number[][] {
  return rows.map((row) => {
    const max = Math.max(...row);
    const logZ = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    return row.map((v) => v - logZ);
  });
}

/** The k largest entries of a row, most likely first (ties: lower id first, as tf.topk and torch.topk on CPU). */
function topOf(row: number[], k: number): Array<{ token: number; logprob: number }> {
  return row.map((logprob, token) => ({ token, logprob })).sort((a, b) => b.logprob - a.logprob || a.token - b.token).slice(0, k);
}

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    describe(`token log-probabilities from transformers' logits: ${config}`, () => {
      const exp = expected(config);
      let model: NemotronForCausalLM;
      before(async () => { model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm')); });
      after(() => model.dispose());

      it('sequenceLogprobs: log p(token | before) and the top 5 at every position of an unpadded row, in one or many chunks', async () => {
        const ids = exp.json.input_ids[0] as number[];
        expect((exp.json.attention_mask[0] as number[]).every((m) => m === 1)).to.equal(true);
        const logits = exp.tensor('causal.logits');
        const reference = logSoftmax((logits.arraySync() as number[][][])[0]);
        logits.dispose();
        const before = tf.memory().numTensors;
        for (const maxChunkBytes of [undefined, 4 * model.config.vocabSize * 2]) {
          const scored = await sequenceLogprobs(model, ids, { topK: 5, maxChunkBytes });
          expect(scored.map((s) => s.token)).to.deep.equal(ids.slice(1));
          scored.forEach((s, t) => {
            expect(Math.abs(s.logprob - reference[t][ids[t + 1]]), `position ${t}`).to.be.at.most(ABS);
            const top = topOf(reference[t], 5);
            expect(s.top.map((e) => e.token), `top at ${t}`).to.deep.equal(top.map((e) => e.token));
            s.top.forEach((e, j) => expect(Math.abs(e.logprob - top[j].logprob)).to.be.at.most(ABS));
          });
        }
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('generate with outputLogits: each step\'s raw logits (transformers\' output_logits), and logprobOf agrees with them', async () => {
        const out = await model.generate(exp.json.gen_single_prompt, { maxNewTokens: 8, eosTokenId: null, outputLogits: true });
        expect(out.sequences).to.deep.equal(exp.json.gen_single_output);
        const ref = exp.tensor('gen.single.scores');
        const steps = (ref.arraySync() as number[][][])[0];
        ref.dispose();
        expect(out.logits).to.have.length(8);
        const reference = logSoftmax(steps);
        out.logits!.forEach((step, s) => {
          step[0].forEach((v, i) => expect(Math.abs(v - steps[s][i])).to.be.at.most(1e-4));
          const token = out.sequences[0][exp.json.gen_single_prompt[0].length + s];
          const scored = logprobOf(step[0], token, 3);
          expect(Math.abs(scored.logprob - reference[s][token])).to.be.at.most(ABS);
          // Greedy: the chosen token is the most likely one.
          expect(scored.top[0].token).to.equal(token);
          expect(scored.top.map((e) => e.token)).to.deep.equal(topOf(reference[s], 3).map((e) => e.token));
        });
      });
    });
  }
});

describe('sequenceLogprobs: bad input', () => {
  let model: NemotronForCausalLM;
  before(async () => { model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm')); });
  after(() => model.dispose());

  it('names the id outside the vocabulary, the empty list and a bad topK', async () => {
    const failure = async (ids: number[], topK?: number) => sequenceLogprobs(model, ids, { topK }).then(() => '', (e: Error) => e.message);
    expect(await failure([2, 96])).to.equal('sequenceLogprobs: ids[1] = 96 is outside [0, vocab_size 96)');
    expect(await failure([])).to.match(/non-empty list/);
    expect(await failure([2, 5], -1)).to.match(/topK must be an integer in \[0, 96\], got -1/);
    expect(await sequenceLogprobs(model, [2])).to.deep.equal([]);
  });
});
