import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { type GenerateOptions, NemotronForCausalLM, NemotronHConfig, NemotronHForCausalLM, generate } from '../../src/index';
import { FIXTURES, fixtureDir, forEachBackend, testBackends } from '../helpers';

// Prompt lookup and assisted decoding for NemotronH: its recurrent state cannot be cropped as a KV cache is, so a
// round that rejects candidates goes back to the state before it and feeds the accepted tokens again. The output must
// be plain greedy decoding's — transformers' greedy tokens on the fixture (scripts/reference/nemotron_h_fixtures.py).
const DIR = path.resolve(FIXTURES, '../nemotron-h');
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as { prompt: number[][]; greedy: number[] };

/** Counts the model's passes (a prompt pass or a decoding step each) while `run` runs. */
async function countingPasses<T>(model: NemotronHForCausalLM | NemotronForCausalLM, run: () => Promise<T>): Promise<{ result: T; passes: number }> {
  let passes = 0;
  const forward = model.forward.bind(model) as (...a: unknown[]) => unknown;
  (model as { forward: unknown }).forward = (...a: unknown[]) => { passes++; return forward(...a); };
  const step = model instanceof NemotronHForCausalLM ? model.step.bind(model) : null;
  if (model instanceof NemotronHForCausalLM) model.step = ((...a: Parameters<NemotronHForCausalLM['step']>) => { passes++; return step!(...a); });
  try {
    return { result: await run(), passes };
  } finally {
    (model as { forward: unknown }).forward = forward;
    if (model instanceof NemotronHForCausalLM) model.step = step!;
  }
}

forEachBackend(testBackends(), () => {
  it('NemotronH prompt lookup gives transformers\' greedy tokens (EOS, min length, penalties, stop strings); no tensor left', async () => {
    const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
    const before = tf.memory().numTensors;
    // transformers' greedy continuation of the fixture's prompt.
    const prompt = reference.prompt[0];
    const lookedUp = await generate(model, [prompt], { maxNewTokens: 12, eosTokenId: null, promptLookupNumTokens: 3 });
    expect(lookedUp.sequences[0]).to.deep.equal(reference.greedy);
    // A prompt that repeats itself around the model's own continuation, as quoted or edited text does.
    // (This random model does not repeat itself, so lookup saves no passes here: candidates are mostly rejected, and
    // each rejecting round feeds the accepted tokens again. The assisted test below counts passes saved.)
    const continuation = reference.greedy.slice(prompt.length);
    const repeating = [...prompt, ...continuation, ...prompt];
    const plain = await generate(model, [repeating], { maxNewTokens: 20, eosTokenId: null });
    const lookup = await generate(model, [repeating], { maxNewTokens: 20, eosTokenId: null, promptLookupNumTokens: 4 });
    expect(lookup.sequences).to.deep.equal(plain.sequences);
    const plainPasses = (await countingPasses(model, () => generate(model, [repeating], { maxNewTokens: 20, eosTokenId: null }))).passes;
    expect(plainPasses).to.equal(20);
    const eos = plain.sequences[0][repeating.length + 3];
    const cases: GenerateOptions[] = [
      { maxNewTokens: 20, eosTokenId: eos },
      { maxNewTokens: 20, eosTokenId: eos, minNewTokens: 6 },
      { maxNewTokens: 14, eosTokenId: null, repetitionPenalty: 1.3, noRepeatNgramSize: 3 },
      { maxNewTokens: 14, eosTokenId: null, stopStrings: [`<${plain.sequences[0][repeating.length + 5]}>`], tokenizer: { decode: (ids: number[]) => ids.map((i) => `<${i}>`).join('') } },
    ];
    for (const options of cases) {
      const expected = (await generate(model, [repeating], options)).sequences;
      expect((await generate(model, [repeating], { ...options, promptLookupNumTokens: 3 })).sequences, JSON.stringify({ ...options, tokenizer: undefined })).to.deep.equal(expected);
    }
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    model.dispose();
  });

  it('a Δt limit (which the prompt pass applies and a decoding step does not) leaves speculative decoding\'s tokens greedy\'s', async () => {
    const base = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
    const limited = new NemotronHForCausalLM(new NemotronHConfig({ ...base.config, layerTypes: [...base.config.layerTypes], timeStepLimit: [1, 2] }),
      new Map([...base.weights].map(([name, v]) => [name, v as tf.Tensor])));
    base.dispose();
    const before = tf.memory().numTensors;
    const prompt = [reference.prompt[0]];
    const plain = (await generate(limited, prompt, { maxNewTokens: 12, eosTokenId: null })).sequences;
    expect((await generate(limited, prompt, { maxNewTokens: 12, eosTokenId: null, promptLookupNumTokens: 3 })).sequences, 'prompt lookup').to.deep.equal(plain);
    const own = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
    const ownLimited = new NemotronHForCausalLM(limited.config, new Map([...own.weights].map(([name, v]) => [name, v as tf.Tensor])));
    own.dispose();
    expect((await generate(limited, prompt, { maxNewTokens: 12, eosTokenId: null, assistantModel: ownLimited, assistantConfidenceThreshold: 0 })).sequences, 'assisted').to.deep.equal(plain);
    ownLimited.dispose();
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    limited.dispose();
  });

  it('assisted generation across the families: a NemotronH model drafting for itself, for a Nemotron model and the other way round, gives greedy tokens; no tensor left', async () => {
    const hybrid = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
    const sameHybrid = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
    const experts = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'moe'));
    const nemotron = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    expect([hybrid.config.vocabSize, experts.config.vocabSize, nemotron.config.vocabSize]).to.deep.equal([96, 96, 96]);
    const before = tf.memory().numTensors;
    const prompt = [reference.prompt[0]];
    // Its own weights drafting, every token accepted: the prompt's pass, then one that checks the 15 drafted tokens.
    const own = await countingPasses(hybrid, () => generate(hybrid, prompt, { maxNewTokens: 16, eosTokenId: null, assistantModel: sameHybrid, assistantConfidenceThreshold: 0 }));
    expect(own.result.sequences[0].slice(0, reference.greedy.length)).to.deep.equal(reference.greedy);
    expect(own.passes, 'passes of the main model').to.equal(2);
    // A draft that mostly agrees (its output layer nudged): rounds accept part of a draft and go back to the mark —
    // the state rebuilt from the pass's kept steps, no pass again: the prompt's pass and one a round.
    const head = sameHybrid.weights.get('lm_head.weight')!;
    const nudgedHead = tf.tidy(() => tf.add(head, tf.randomNormal(head.shape, 0, 0.04, 'float32', 7)));
    head.assign(nudgedHead);
    nudgedHead.dispose();
    const plain = (await generate(hybrid, prompt, { maxNewTokens: 16, eosTokenId: null })).sequences;
    const forward = hybrid.forward.bind(hybrid);
    const passes: boolean[] = [];
    hybrid.forward = ((inputs: Parameters<typeof forward>[0], state?: Parameters<typeof forward>[1]) => { passes.push(inputs.keepSteps === true); return forward(inputs, state); }) as typeof forward;
    const nudged = await generate(hybrid, prompt, { maxNewTokens: 16, eosTokenId: null, assistantModel: sameHybrid, numAssistantTokens: 4, assistantConfidenceThreshold: 0 });
    hybrid.forward = forward;
    expect(nudged.sequences).to.deep.equal(plain);
    console.log(`      nudged draft: ${passes.length} passes of the main model for 16 tokens`);
    // The prompt's pass, then only checking passes (steps kept): no pass feeds accepted tokens again.
    expect(passes.slice(1).every(Boolean), 'every pass after the prompt\'s checks a draft').to.equal(true);
    expect(passes.length, 'passes of the main model with a nudged draft').to.be.within(3, 9);
    for (const [target, draft, what] of [[hybrid, experts, 'NemotronH ← NemotronH with experts'], [hybrid, nemotron, 'NemotronH ← Nemotron'],
      [nemotron, hybrid, 'Nemotron ← NemotronH'], [nemotron, experts, 'Nemotron ← NemotronH with experts']] as const) {
      for (const options of [
        { maxNewTokens: 16, eosTokenId: null },
        { maxNewTokens: 16, eosTokenId: null, numAssistantTokens: 3, numAssistantTokensSchedule: 'heuristic' as const, assistantConfidenceThreshold: 0 },
        { maxNewTokens: 12, eosTokenId: null, repetitionPenalty: 1.3 },
      ]) {
        const expected = (await generate(target, prompt, options)).sequences;
        expect((await generate(target, prompt, { ...options, assistantModel: draft })).sequences, `${what} ${JSON.stringify(options)}`).to.deep.equal(expected);
      }
    }
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    [hybrid, sameHybrid, experts, nemotron].forEach((m) => m.dispose());
  });
});

describe('NemotronH speculative decoding from the CLI', () => {
  it('generate --prompt-lookup / --assistant-model (a folder or a GGUF of either family) prints greedy decoding\'s text', () => {
    const gguf = path.resolve(FIXTURES, '../nemotron-h-gguf');
    const CLI = path.resolve(__dirname, '../../src/cli/main.js');
    const run = (...extra: string[]) => {
      const r = spawnSync(process.execPath, [CLI, 'generate', '--model', path.join(gguf, 'hybrid-f32.gguf'), '--prompt', 'The quick brown fox jumps over the lazy dog. The quick',
        '-n', '12', '--greedy', '--backend', 'cpu', ...extra], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      return r.stdout;
    };
    const plain = run();
    expect(plain.length).to.be.greaterThan('The quick brown fox jumps over the lazy dog. The quick'.length);
    expect(run('--prompt-lookup', '3')).to.equal(plain);
    expect(run('--assistant-model', path.join(gguf, 'moe-q8_0.gguf'), '--assistant-tokens', '3')).to.equal(plain);
    expect(run('--assistant-model', path.join(gguf, 'hybrid'))).to.equal(plain);
  });
});
