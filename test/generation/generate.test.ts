import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM, applyMinP, applyRepetitionPenalty, applyTopK, applyTopP, generate } from '../../src/index';
import { CONFIGS, expected, fixtureDir, forEachBackend, testBackends } from '../helpers';

// Scores within 1e-4 absolute, sequences exact (fixtures README).
const ABS = 1e-4;

function maxDiff(scores: Float32Array[][], reference: tf.Tensor, row: number): number {
  const ref = reference.arraySync() as number[][][];
  let worst = 0;
  scores.forEach((step, s) => step[row].forEach((v, i) => { worst = Math.max(worst, Math.abs(v - ref[row][s][i])); }));
  return worst;
}

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    describe(`greedy generation matches transformers: ${config}`, () => {
      const exp = expected(config);
      let model: NemotronForCausalLM;
      before(async () => { model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm')); });
      after(() => model.dispose());

      it('a single prompt: sequences exact, scores within 1e-4', async () => {
        const out = await model.generate(exp.json.gen_single_prompt, { maxNewTokens: 8, eosTokenId: null, outputScores: true });
        expect(out.sequences).to.deep.equal(exp.json.gen_single_output);
        const ref = exp.tensor('gen.single.scores');
        expect(out.scores).to.have.length(8);
        expect(maxDiff(out.scores!, ref, 0)).to.be.at.most(ABS);
        ref.dispose();
      });

      it('a left-padded batch: positions from the mask, sequences exact, scores within 1e-4', async () => {
        const out = await model.generate(exp.json.gen_batch_prompt, {
          attentionMask: exp.json.gen_batch_mask, maxNewTokens: 6, eosTokenId: null, padTokenId: 0, outputScores: true,
        });
        expect(out.sequences).to.deep.equal(exp.json.gen_batch_output);
        const ref = exp.tensor('gen.batch.scores');
        for (const row of [0, 1]) expect(maxDiff(out.scores!, ref, row), `row ${row}`).to.be.at.most(ABS);
        ref.dispose();
      });

      it('the same tokens with and without the cache', async () => {
        const opts = { attentionMask: exp.json.gen_batch_mask, maxNewTokens: 6, eosTokenId: null };
        const cached = await model.generate(exp.json.gen_batch_prompt, opts);
        const recomputed = await model.generate(exp.json.gen_batch_prompt, { ...opts, useCache: false });
        expect(recomputed.sequences).to.deep.equal(cached.sequences);
      });
    });
  }
});

describe('generation options', () => {
  let model: NemotronForCausalLM;
  const prompt = [[76, 5, 48, 57, 60]];
  before(async () => {
    await tf.setBackend('cpu');
    model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
  });
  after(() => model.dispose());

  it('sampling: the same seed gives the same tokens, another seed other tokens', async () => {
    const opts = { maxNewTokens: 12, doSample: true, temperature: 1.5, eosTokenId: null };
    const a = await model.generate(prompt, { ...opts, seed: 7 });
    const b = await model.generate(prompt, { ...opts, seed: 7 });
    const c = await model.generate(prompt, { ...opts, seed: 8 });
    expect(a.sequences).to.deep.equal(b.sequences);
    expect(a.sequences).to.not.deep.equal(c.sequences);
  });

  it('topK 1 sampling is greedy', async () => {
    const greedy = await model.generate(prompt, { maxNewTokens: 6, eosTokenId: null });
    const k1 = await model.generate(prompt, { maxNewTokens: 6, eosTokenId: null, doSample: true, topK: 1, seed: 3 });
    expect(k1.sequences).to.deep.equal(greedy.sequences);
  });

  it('stops a row at EOS and pads it while the others go on', async () => {
    const exp = expected('tiny-gqa');
    // Token 20 is the 3rd generated token of row 0 in the reference; make it the EOS.
    const out = await model.generate(exp.json.gen_batch_prompt, {
      attentionMask: exp.json.gen_batch_mask, maxNewTokens: 6, eosTokenId: 20, padTokenId: 0,
    });
    const ref = exp.json.gen_batch_output as number[][];
    expect(out.sequences[0]).to.deep.equal([...ref[0].slice(0, 8), 0, 0, 0]);
    expect(out.sequences[1]).to.deep.equal(ref[1]);
  });

  it('minNewTokens suppresses EOS until reached; maxLength counts the prompt', async () => {
    const out = await model.generate(prompt, { maxLength: 9, eosTokenId: 41, minNewTokens: 2, padTokenId: 0 });
    expect(out.sequences[0]).to.have.length(9);
    expect(out.sequences[0][5]).to.not.equal(41);
  });

  it('streams each token as it is chosen (callback and async iterator)', async () => {
    const seen: number[] = [];
    const out = await model.generate(prompt, { maxNewTokens: 5, eosTokenId: null, onToken: (t) => seen.push(t[0]) });
    expect(seen).to.deep.equal(out.sequences[0].slice(5));
    const streamed: number[] = [];
    for await (const step of model.generateStream(prompt, { maxNewTokens: 5, eosTokenId: null })) streamed.push(step.tokens[0]);
    expect(streamed).to.deep.equal(seen);
  });

  it('an iterator abandoned early frees its cache', async () => {
    const before = tf.memory().numTensors;
    for await (const step of model.generateStream(prompt, { maxNewTokens: 5, eosTokenId: null })) if (step.step === 1) break;
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('50 generate calls in a row leave the tensor count where it started', async () => {
    await generate(model, prompt, { maxNewTokens: 3, eosTokenId: null });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 50; i++) {
      await generate(model, prompt, { maxNewTokens: 3, eosTokenId: null, doSample: i % 2 === 1, seed: i, outputScores: i % 3 === 0 });
    }
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('clear errors for bad requests', async () => {
    const cases: Array<[Parameters<typeof generate>[1], Parameters<typeof generate>[2], RegExp]> = [
      [[[]], {}, /prompt is empty/],
      [[], {}, /prompt is empty/],
      [prompt, { maxNewTokens: 0 }, /maxNewTokens must be a positive integer/],
      [prompt, { maxNewTokens: 60 }, /plus 60 new tokens is longer than max_position_embeddings 64/],
      [prompt, { topP: 0 }, /topP must be in \(0, 1\], got 0/],
      [prompt, { topP: 1.5 }, /topP must be in \(0, 1\]/],
      [prompt, { doSample: true, temperature: 0 }, /temperature must be > 0 when sampling, got 0/],
    ];
    for (const [ids, opts, pattern] of cases) {
      let error: Error | null = null;
      try { await generate(model, ids, opts); } catch (e) { error = e as Error; }
      expect(error?.message, String(pattern)).to.match(pattern);
    }
  });
});

describe('logits processors', () => {
  it('topK keeps the k largest', () => {
    const s = Float32Array.from([1, 5, 3, 4]);
    applyTopK(s, 2);
    expect(Array.from(s)).to.deep.equal([-Infinity, 5, -Infinity, 4]);
  });
  it('topP keeps the smallest set reaching p', () => {
    const s = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
    applyTopP(s, 0.7);
    expect(s[2]).to.equal(-Infinity);
    expect(s[1]).to.be.greaterThan(-Infinity);
  });
  it('minP drops tokens below minP × the top probability', () => {
    const s = Float32Array.from([Math.log(0.6), Math.log(0.3), Math.log(0.1)]);
    applyMinP(s, 0.2);
    expect(Array.from(s).map(Number.isFinite)).to.deep.equal([true, true, false]);
  });
  it('repetition penalty divides positive and multiplies negative scores', () => {
    const s = Float32Array.from([2, -2, 1]);
    applyRepetitionPenalty(s, [0, 1, 1], 2);
    expect(Array.from(s)).to.deep.equal([1, -4, 1]);
  });
});
