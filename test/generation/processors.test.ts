import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  NemotronForCausalLM, NemotronTokenizer, applyBadWords, applyNoRepeatNgram, processScores, endsWithStopString, generate, generateStream, resolveGenerateOptions,
} from '../../src/index';
import { CONFIGS, FIXTURES, fixtureDir, forEachBackend, testBackends } from '../helpers';

// transformers' no_repeat_ngram_size, bad_words_ids and stop_strings on the tiny fixture models
// (scripts/reference/processor_fixtures.py): greedy and beam search over the left-padded prompt batch, bad words taken
// from what unconstrained decoding chooses, stop strings through a SentencePiece-style tokenizer of the model's vocabulary
// (for beam search, strings from the hypotheses of a search without them).
interface ProcessorCase {
  setting: {
    no_repeat_ngram_size?: number; repetition_penalty?: number; bad_words_ids?: number[][]; min_new_tokens?: number; eos_token_id?: number;
    num_beams?: number; num_return_sequences?: number; length_penalty?: number;
    sequence_bias?: Array<[number[], number]>; suppress_tokens?: number[]; begin_suppress_tokens?: number[]; forced_eos_token_id?: number;
    exponential_decay_length_penalty?: [number, number]; min_length?: number;
  };
  sequences: number[][];
}
interface StopCase { stop_strings: string[]; eos_token_id: number | null; sequences: number[][] }
interface BeamStopCase {
  stop_strings: string[];
  setting: { num_beams: number; num_return_sequences?: number; eos_token_id: number | null; length_penalty?: number };
  sequences: number[][];
}
interface Reference { prompt: number[][]; attention_mask: number[][]; cases: ProcessorCase[]; stop_cases: StopCase[]; beam_stop_cases: BeamStopCase[] }

const DIR = path.resolve(FIXTURES, '../generation-processors');
const reference = (config: string): Reference => JSON.parse(fs.readFileSync(path.join(DIR, `${config}.json`), 'utf8')) as Reference;

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    it(`no_repeat_ngram_size, bad_words_ids, sequence_bias, suppress and forced tokens, length penalties and stop_strings (greedy and beams) equal transformers', leaving no tensor: ${config}`, async () => {
      const ref = reference(config);
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      const tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, `${config}-tokenizer`));
      const before = tf.memory().numTensors;
      for (const { setting, sequences } of ref.cases) {
        const out = await generate(model, ref.prompt, {
          attentionMask: ref.attention_mask, padTokenId: 0, maxNewTokens: 12, eosTokenId: setting.eos_token_id ?? null,
          noRepeatNgramSize: setting.no_repeat_ngram_size, badWordsIds: setting.bad_words_ids, repetitionPenalty: setting.repetition_penalty,
          minNewTokens: setting.min_new_tokens, numBeams: setting.num_beams, numReturnSequences: setting.num_return_sequences,
          lengthPenalty: setting.length_penalty, sequenceBias: setting.sequence_bias, suppressTokens: setting.suppress_tokens,
          beginSuppressTokens: setting.begin_suppress_tokens, forcedEosTokenId: setting.forced_eos_token_id,
          exponentialDecayLengthPenalty: setting.exponential_decay_length_penalty, minLength: setting.min_length,
        });
        expect(out.sequences, JSON.stringify(setting)).to.deep.equal(sequences);
      }
      for (const { stop_strings: stopStrings, eos_token_id: eos, sequences } of ref.stop_cases) {
        const out = await generate(model, ref.prompt, {
          attentionMask: ref.attention_mask, padTokenId: 0, maxNewTokens: 12, eosTokenId: eos, stopStrings, tokenizer,
        });
        expect(out.sequences, `stop strings ${JSON.stringify(stopStrings)}, eos ${eos}`).to.deep.equal(sequences);
      }
      for (const { stop_strings: stopStrings, setting, sequences } of ref.beam_stop_cases) {
        const out = await generate(model, ref.prompt, {
          attentionMask: ref.attention_mask, padTokenId: 0, maxNewTokens: 12, eosTokenId: setting.eos_token_id, stopStrings, tokenizer,
          numBeams: setting.num_beams, numReturnSequences: setting.num_return_sequences, lengthPenalty: setting.length_penalty,
        });
        expect(out.sequences, `beam search, stop strings ${JSON.stringify(stopStrings)}, ${JSON.stringify(setting)}`).to.deep.equal(sequences);
      }
      expect(tf.memory().numTensors, 'tensors left').to.equal(before);
      model.dispose();
    });
  }
});

describe('logits processors and generation settings', () => {
  before(() => tf.setBackend('cpu'));

  it('the sampling warpers equal transformers\' on fixed logits: temperature, top-k/p, min-p, typical-p, epsilon, eta, combined, and keeping 2 for beams', () => {
    const ref = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../warpers/warpers.json'), 'utf8')) as {
      logits: number[][];
      cases: Array<{ setting: Record<string, number>; min_tokens_to_keep: number; rows: Array<{ removed: number[]; values: Array<number | null> }> }>;
    };
    for (const { setting, rows, min_tokens_to_keep: minTokensToKeep } of ref.cases) {
      rows.forEach(({ removed, values }, r) => {
        const scores = Float32Array.from(ref.logits[r]);
        processScores(scores, [], {
          doSample: true, temperature: setting.temperature, topK: setting.top_k ?? 0, topP: setting.top_p, minP: setting.min_p,
          typicalP: setting.typical_p, epsilonCutoff: setting.epsilon_cutoff, etaCutoff: setting.eta_cutoff, minTokensToKeep,
        });
        const what = `${JSON.stringify(setting)}, row ${r}`;
        expect([...scores.keys()].filter((i) => scores[i] === -Infinity), what).to.deep.equal(removed);
        values.forEach((v, i) => { if (v !== null) expect(scores[i], `${what}, token ${i}`).to.be.closeTo(v, 1e-5); });
      });
    }
  });

  it('no-repeat n-grams forbid what followed the current prefix before; nothing while the row is too short', () => {
    const scores = () => new Float32Array(6);
    const banned = (s: Float32Array) => [...s.keys()].filter((i) => s[i] === -Infinity);
    let s = scores();
    applyNoRepeatNgram(s, [1, 2, 3, 1, 2, 4, 1], 2); // after 1 came 2 (twice): 2 is out
    expect(banned(s)).to.deep.equal([2]);
    s = scores();
    applyNoRepeatNgram(s, [1, 2, 3, 1, 2, 4, 1, 2], 3); // after (1, 2) came 3 and 4
    expect(banned(s)).to.deep.equal([3, 4]);
    s = scores();
    applyNoRepeatNgram(s, [5, 1, 5], 1); // unigrams: every token seen
    expect(banned(s)).to.deep.equal([1, 5]);
    s = scores();
    applyNoRepeatNgram(s, [1], 3); // shorter than n − 1
    expect(banned(s)).to.deep.equal([]);
  });

  it('bad words: one-token ones always, longer ones only after their prefix', () => {
    const s = new Float32Array(6);
    applyBadWords(s, [0, 3, 4], [[5], [3, 4, 1], [4, 2], [1, 2]]);
    expect([...s.keys()].filter((i) => s[i] === -Infinity)).to.deep.equal([1, 2, 5]);
  });

  it('stop strings: completed by the last token, across tokens or inside one (overhang), not earlier ones', () => {
    const pieces = ['he', 'st', 'opped', ' x', 'stop', 'y'];
    const decode = (ids: number[]) => ids.map((i) => pieces[i]).join('');
    expect(endsWithStopString([0, 1, 2], ['stop'], decode)).to.equal(true); // "st" + "opped"
    expect(endsWithStopString([0, 1], ['stop'], decode)).to.equal(false);
    expect(endsWithStopString([3, 4], ['top'], decode)).to.equal(true); // inside the last token
    expect(endsWithStopString([4, 3], ['top'], decode)).to.equal(false); // completed a step earlier
    expect(endsWithStopString([4, 3, 5], ['x', 'zz'], decode)).to.equal(false);
    expect(endsWithStopString([4, 3, 5], ['xy'], decode)).to.equal(true);
  });

  it('generation_config.json gives the defaults, the call wins, top-k 50 when sampling; its settings reach generate()', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    model.generationConfig = { do_sample: true, temperature: 0.6, top_p: 0.9, no_repeat_ngram_size: 3, max_new_tokens: 7, top_k: null };
    expect(resolveGenerateOptions(model, {})).to.deep.include({ doSample: true, temperature: 0.6, topP: 0.9, topK: 50, noRepeatNgramSize: 3, maxNewTokens: 7 });
    expect(resolveGenerateOptions(model, { doSample: false, maxLength: 12, temperature: 1 })).to.deep.include({
      doSample: false, temperature: 1, maxLength: 12, maxNewTokens: undefined,
    });
    // The file's no_repeat_ngram_size takes effect without the call naming it.
    const ref = reference('tiny-gqa');
    const ngram = ref.cases.find((c) => c.setting.no_repeat_ngram_size === 2 && Object.keys(c.setting).length === 1)!;
    model.generationConfig = { no_repeat_ngram_size: 2, max_new_tokens: 12, eos_token_id: null };
    const out = await generate(model, ref.prompt, { attentionMask: ref.attention_mask, padTokenId: 0, eosTokenId: null });
    expect(out.sequences).to.deep.equal(ngram.sequences);
    model.dispose();
  });

  it('a file that sets num_beams makes generate() search beams, and generateStream say why it cannot stream', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const prompt = [[2, 5, 7]];
    const searched = await generate(model, prompt, { maxNewTokens: 4, eosTokenId: null, numBeams: 2 });
    model.generationConfig = { num_beams: 2 };
    expect((await generate(model, prompt, { maxNewTokens: 4, eosTokenId: null })).sequences).to.deep.equal(searched.sequences);
    const failure = await generateStream(model, prompt, { maxNewTokens: 4 }).next().then(() => 'ran', (e: Error) => e.message);
    expect(failure).to.match(/generation_config.json sets num_beams 2; numBeams: 1 streams/);
    model.dispose();
  });

  it('numReturnSequences samples each prompt that many times (rows of a prompt together), as the repeated prompt does', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const options = { maxNewTokens: 6, eosTokenId: null, doSample: true, temperature: 2, seed: 11 };
    const prompt = [[2, 5, 7], [2, 9, 4]];
    const several = await generate(model, prompt, { ...options, numReturnSequences: 3 });
    const repeated = await generate(model, [prompt[0], prompt[0], prompt[0], prompt[1], prompt[1], prompt[1]], options);
    expect(several.sequences).to.have.length(6);
    expect(several.sequences).to.deep.equal(repeated.sequences);
    expect(several.sequences.slice(0, 3).every((r) => r.slice(0, 3).join() === '2,5,7')).to.equal(true);
    expect(new Set(several.sequences.slice(0, 3).map((r) => r.join())).size, 'three different samples').to.be.greaterThan(1);
    model.dispose();
  });

  it('refuses bad settings by name', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const failure = (p: Promise<unknown>) => p.then(() => 'ran', (e: Error) => e.message);
    expect(await failure(generate(model, [[2, 5]], { noRepeatNgramSize: 1.5 }))).to.match(/noRepeatNgramSize must be a non-negative integer, got 1.5/);
    expect(await failure(generate(model, [[2, 5]], { doSample: true, typicalP: 0 }))).to.match(/typicalP must be in \(0, 1\], got 0/);
    expect(await failure(generate(model, [[2, 5]], { doSample: true, etaCutoff: 1 }))).to.match(/etaCutoff must be in \[0, 1\), got 1/);
    expect(await failure(generate(model, [[2, 5]], { badWordsIds: [[]] }))).to.match(/badWordsIds must be a list of non-empty token-id lists/);
    expect(await failure(generate(model, [[2, 5]], { badWordsIds: [[3, 400]] }))).to.match(/badWordsIds\[0\]\[1\] = 400 is outside \[0, vocab_size 96\)/);
    expect(await failure(generate(model, [[2, 5]], { stopStrings: ['x'] }))).to.match(/stopStrings needs the tokenizer/);
    expect(await failure(generate(model, [[2, 5]], { stopStrings: [''], tokenizer: { decode: () => '' } }))).to.match(/stopStrings must be non-empty strings/);
    expect(await failure(generate(model, [[2, 5]], { numBeams: 2, stopStrings: ['x'] }))).to.match(/stopStrings needs the tokenizer/);
    expect(await failure(generate(model, [[2, 5]], { sequenceBias: [[[3], 'a' as never]] }))).to.match(/sequenceBias must be \[token ids, bias\] pairs/);
    expect(await failure(generate(model, [[2, 5]], { suppressTokens: [1, 96] }))).to.match(/suppressTokens must be token ids in \[0, vocab_size 96\), got \[1,96\]/);
    expect(await failure(generate(model, [[2, 5]], { exponentialDecayLengthPenalty: [1, 0] }))).to.match(/exponentialDecayLengthPenalty must be \[start ≥ 0, factor > 0\], got \[1,0\]/);
    expect(await failure(generate(model, [[2, 5]], { minLength: -1 }))).to.match(/minLength must be a non-negative integer, got -1/);
    model.dispose();
  });
});
