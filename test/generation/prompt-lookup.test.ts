import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { GenerateOptions, NemotronForCausalLM, generate, lookupCandidates } from '../../src/index';
import { CONFIGS, fixtureDir, forEachBackend, testBackends } from '../helpers';

/** generate() with and without prompt lookup, and how many forward passes each took. */
async function both(model: NemotronForCausalLM, prompt: number[][], options: GenerateOptions) {
  const forward = model.forward.bind(model);
  let passes = 0;
  model.forward = ((inputs: Parameters<typeof forward>[0]) => { passes++; return forward(inputs); }) as typeof model.forward;
  try {
    const plain = await generate(model, prompt, options);
    const plainPasses = passes;
    passes = 0;
    const lookup = await generate(model, prompt, { ...options, promptLookupNumTokens: 4 });
    return { plain: plain.sequences, lookup: lookup.sequences, plainPasses, lookupPasses: passes };
  } finally {
    model.forward = forward;
  }
}

describe('prompt lookup decoding: candidates', () => {
  it('the tokens after the earliest earlier occurrence of the last n-gram, longest n first, within the limit', () => {
    expect(lookupCandidates([1, 2, 3, 4, 1, 2], 3, 2, 10)).to.deep.equal([3, 4, 1]);
    expect(lookupCandidates([1, 2, 3, 4, 1, 2], 3, 2, 1)).to.deep.equal([3]);
    expect(lookupCandidates([7, 2, 9, 5, 9, 4, 2], 2, 2, 10)).to.deep.equal([9, 5]); // no bigram match: the unigram 2
    expect(lookupCandidates([1, 2, 3], 4, 2, 10)).to.deep.equal([]);
    expect(lookupCandidates([5, 6, 5], 4, 2, 10)).to.deep.equal([6, 5]); // stops at the row's end
  });
});

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    it(`prompt lookup gives greedy decoding's tokens in fewer passes (with EOS, min length, penalties, stop strings); no tensor left: ${config}`, async () => {
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      // A prompt that repeats itself around the model's own continuation of it, as edited or quoted text does.
      const start = [2, 11, 17, 23, 5, 11, 17, 29, 31, 11, 17];
      const continuation = (await generate(model, [start], { maxNewTokens: 12, eosTokenId: null })).sequences[0].slice(start.length);
      const prompt = [[...start, ...continuation, ...start]];
      const before = tf.memory().numTensors;
      const free = await both(model, prompt, { maxNewTokens: 24, eosTokenId: null });
      expect(free.lookup).to.deep.equal(free.plain);
      expect(free.plainPasses).to.equal(24);
      expect(free.lookupPasses, 'passes with lookup').to.be.lessThan(free.plainPasses);
      // An EOS the generation meets, a minimum length that suppresses it first, processors, a stop string.
      const eos = free.plain[0][prompt[0].length + 3];
      for (const options of [
        { maxNewTokens: 24, eosTokenId: eos },
        { maxNewTokens: 24, eosTokenId: eos, minNewTokens: 6 },
        { maxNewTokens: 16, eosTokenId: null, repetitionPenalty: 1.3, noRepeatNgramSize: 3 },
        { maxNewTokens: 16, eosTokenId: null, badWordsIds: [[free.plain[0][prompt[0].length + 1]]] },
        { maxNewTokens: 16, eosTokenId: null, stopStrings: ['<9>'], tokenizer: { decode: (ids: number[]) => ids.map((i) => `<${i}>`).join('') } },
      ]) {
        const r = await both(model, prompt, options);
        expect(r.lookup, JSON.stringify({ ...options, tokenizer: undefined })).to.deep.equal(r.plain);
      }
      expect(tf.memory().numTensors, 'tensors left').to.equal(before);
      model.dispose();
    });
  }
});

forEachBackend(testBackends(), () => {
  it('assisted generation (a draft model) gives greedy decoding\'s tokens: the same weights (all accepted, fewer passes), random ones, schedules, EOS, processors, stop strings; no tensor left', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const same = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const random = new NemotronForCausalLM(model.config.with({ numHiddenLayers: 1, hiddenSize: 32, intermediateSize: 48, numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 16 }));
    const prompt = [[2, 11, 17, 23, 5, 11, 17, 29]];
    const before = tf.memory().numTensors;
    const forward = model.forward.bind(model);
    let passes = 0;
    model.forward = ((inputs: Parameters<typeof forward>[0]) => { passes++; return forward(inputs); }) as typeof model.forward;
    const plain = (await generate(model, prompt, { maxNewTokens: 24, eosTokenId: null })).sequences;
    passes = 0;
    const assisted = await generate(model, prompt, { maxNewTokens: 24, eosTokenId: null, assistantModel: same, assistantConfidenceThreshold: 0 });
    expect(assisted.sequences).to.deep.equal(plain);
    expect(passes, 'passes of the main model with its own weights drafting 20 tokens a round').to.equal(2);
    const eos = plain[0][prompt[0].length + 5];
    for (const options of [
      { maxNewTokens: 24, eosTokenId: null, assistantModel: random },
      { maxNewTokens: 24, eosTokenId: null, assistantModel: same, numAssistantTokens: 3, numAssistantTokensSchedule: 'heuristic' as const },
      { maxNewTokens: 24, eosTokenId: null, assistantModel: random, numAssistantTokens: 4, numAssistantTokensSchedule: 'heuristic' as const, assistantConfidenceThreshold: 0 },
      { maxNewTokens: 24, eosTokenId: eos, minNewTokens: 8, assistantModel: same },
      { maxNewTokens: 16, eosTokenId: null, repetitionPenalty: 1.3, noRepeatNgramSize: 2, assistantModel: same },
      { maxNewTokens: 16, eosTokenId: null, stopStrings: [`<${plain[0][prompt[0].length + 6]}>`], tokenizer: { decode: (ids: number[]) => ids.map((i) => `<${i}>`).join('') }, assistantModel: random },
    ]) {
      const { assistantModel, ...rest } = options;
      const expected = (await generate(model, prompt, rest)).sequences;
      const what = JSON.stringify({ ...rest, tokenizer: undefined, assistant: assistantModel === same ? 'same' : 'random' });
      expect((await generate(model, prompt, options)).sequences, what).to.deep.equal(expected);
    }
    model.forward = forward;
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    [model, same, random].forEach((m) => m.dispose());
  });
});

describe('prompt lookup decoding: what it refuses', () => {
  it('several rows, padding, sampling, beams', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const failure = (p: Promise<unknown>) => p.then(() => 'ran', (e: Error) => e.message);
    const o = { promptLookupNumTokens: 3 };
    expect(await failure(generate(model, [[2, 5], [2, 6]], o))).to.match(/takes one row \(as transformers\), got 2/);
    expect(await failure(generate(model, [[0, 5]], { ...o, attentionMask: [[0, 1]] }))).to.match(/unpadded row/);
    expect(await failure(generate(model, [[2, 5]], { ...o, doSample: true, outputScores: true }))).to.match(/greedy only; not with doSample, outputScores/);
    expect(await failure(generate(model, [[2, 5]], { promptLookupNumTokens: 0.5 }))).to.match(/promptLookupNumTokens must be a positive integer, got 0.5/);
    // Assisted generation: the same vocabulary, sane settings, one row, not with prompt lookup too.
    const other = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-mha-bias', 'causal-lm'));
    expect(await failure(generate(model, [[2, 5]], { assistantModel: other }))).to.match(/the assistant model's vocabulary \(80\) must be the model's \(96\)/);
    expect(await failure(generate(model, [[2, 5], [2, 6]], { assistantModel: model }))).to.match(/assisted generation takes one row/);
    expect(await failure(generate(model, [[2, 5]], { assistantModel: model, numAssistantTokens: 0 }))).to.match(/numAssistantTokens must be a positive integer, got 0/);
    expect(await failure(generate(model, [[2, 5]], { assistantModel: model, promptLookupNumTokens: 2 }))).to.match(/assistantModel or promptLookupNumTokens, not both/);
    other.dispose();
    model.dispose();
  });
});
