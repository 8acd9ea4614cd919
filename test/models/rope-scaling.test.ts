import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronConfig, NemotronForCausalLM, generate, ropeFrequencies } from '../../src/index';
import { FIXTURES, errorOf, fixtureDir, forEachBackend, testBackends, tmpDir } from '../helpers';

// transformers' rope types on the tiny-gqa weights (scripts/reference/rope_fixtures.py): each case's config.json, then
// its calls in order on one model — forwards (logits of every position) and greedy generations with the KV cache —
// with the inverse frequencies transformers' rotary module held after each (dynamic NTK's change with the calls).
interface Call {
  kind: 'forward' | 'generate';
  input_ids: number[][];
  logits?: number[][];
  max_new_tokens?: number;
  sequences?: number[][];
  inv_freq: number[];
}
interface Case { name: string; config: Record<string, unknown>; attention_scaling: number; calls: Call[] }

const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../rope-scaling/rope-scaling.json'), 'utf8')) as { cases: Case[] };

/** The tiny-gqa causal LM's weights with a case's config.json. */
function checkpoint(c: Case): string {
  const dir = tmpDir(`rope-${c.name}-`);
  const source = fixtureDir('tiny-gqa', 'causal-lm');
  for (const file of fs.readdirSync(source)) fs.copyFileSync(path.join(source, file), path.join(dir, file));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c.config));
  return dir;
}

forEachBackend(testBackends(), () => {
  for (const c of reference.cases) {
    it(`${c.name} rope scaling: logits, greedy generation and frequencies equal transformers', call after call, leaving no tensor`, async () => {
      const model = await NemotronForCausalLM.fromPretrained(checkpoint(c));
      const rotary = model.model.rotary;
      expect(rotary.currentFrequencies.attentionScaling).to.be.closeTo(c.attention_scaling, 1e-12);
      const before = tf.memory().numTensors;
      for (const [i, call] of c.calls.entries()) {
        const what = `call ${i} (${call.kind}, ${call.input_ids[0].length} tokens)`;
        if (call.kind === 'forward') {
          const logits = tf.tidy(() => model.forward({ inputIds: call.input_ids }).logits.squeeze([0]));
          const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(logits, tf.tensor2d(call.logits!)))).dataSync()[0]);
          logits.dispose();
          expect(diff, `${what}: max |logits diff|`).to.be.lessThan(1e-4);
        } else {
          const out = await generate(model, call.input_ids, {
            maxNewTokens: call.max_new_tokens, minNewTokens: call.max_new_tokens, eosTokenId: null, padTokenId: 0, doSample: false,
          });
          expect(out.sequences, what).to.deep.equal(call.sequences);
        }
        const invFreq = Array.from(rotary.currentFrequencies.invFreq);
        invFreq.forEach((v, k) => expect(v, `${what}: inv_freq[${k}]`).to.be.closeTo(call.inv_freq[k], 1e-6 * call.inv_freq[k]));
      }
      expect(tf.memory().numTensors, 'tensors left').to.equal(before);
      model.dispose();
    });
  }
});

describe('rope scaling: config.json', () => {
  it('reads every type from rope_parameters or transformers 4\'s rope_scaling, and writes what it read', () => {
    for (const c of reference.cases) {
      const config = NemotronConfig.fromJSON(c.config);
      expect(config.ropeScaling!.ropeType).to.equal((c.config.rope_parameters as { rope_type: string }).rope_type);
      const written = config.toJSON();
      expect(NemotronConfig.fromJSON(written).ropeScaling, c.name).to.deep.equal(config.ropeScaling);
      // transformers 4 layout: rope_scaling with "type", rope_theta at the top.
      const legacy = { ...c.config, rope_theta: 10000, rope_scaling: { ...(c.config.rope_parameters as object), type: config.ropeScaling!.ropeType } };
      delete (legacy as Record<string, unknown>).rope_parameters;
      expect(NemotronConfig.fromJSON(legacy).ropeScaling, `${c.name} (rope_scaling)`).to.deep.equal(config.ropeScaling);
    }
    // The pretraining length: rope_parameters', else the top level's, else max_position_embeddings.
    const base = reference.cases.find((c) => c.name === 'yarn')!.config;
    const rope = { ...(base.rope_parameters as Record<string, unknown>) };
    delete rope.original_max_position_embeddings;
    expect(NemotronConfig.fromJSON({ ...base, rope_parameters: rope }).ropeScaling!.originalMaxPositionEmbeddings).to.equal(base.max_position_embeddings);
    expect(NemotronConfig.fromJSON({ ...base, rope_parameters: rope, original_max_position_embeddings: 512 }).ropeScaling!.originalMaxPositionEmbeddings).to.equal(512);
  });

  it('refuses unknown types and missing or bad fields by name', () => {
    const base = reference.cases.find((c) => c.name === 'llama3')!.config;
    const withRope = (rope: Record<string, unknown>) => () => NemotronConfig.fromJSON({ ...base, rope_parameters: { rope_theta: 10000, ...rope } });
    expect(errorOf(withRope({ rope_type: 'ntk-by-parts', factor: 2 }))).to.match(/rope scaling of type "ntk-by-parts" is not supported; expected one of default, linear, dynamic, yarn, llama3, longrope/);
    expect(errorOf(withRope({ rope_type: 'llama3', factor: 8, low_freq_factor: 1 }))).to.match(/llama3 rope scaling needs rope_parameters.high_freq_factor/);
    expect(errorOf(withRope({ rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1 }))).to.match(/high_freq_factor \(1\) must be larger than low_freq_factor \(4\)/);
    expect(errorOf(withRope({ rope_type: 'dynamic', factor: -2 }))).to.match(/rope_parameters.factor must be a number > 0, got -2/);
    expect(errorOf(() => NemotronConfig.fromJSON({ ...base, head_dim: 8, partial_rotary_factor: 0.25, rope_parameters: { rope_theta: 10000, rope_type: 'dynamic', factor: 2 } })))
      .to.match(/dynamic rope scaling needs more than 2 rotary channels, got 2/);
    expect(errorOf(withRope({ rope_type: 'longrope', short_factor: [1, 1], long_factor: [1, 2, 3, 4] }))).to.match(/short_factor must be 4 numbers > 0 \(one per rotary frequency\), got \[1,1\]/);
  });

  it('dynamic NTK runs beyond max_position_embeddings; the other types stop there with a clear error', async () => {
    const dynamic = reference.cases.find((c) => c.name === 'dynamic')!;
    expect(NemotronConfig.fromJSON(dynamic.config).maxSequenceLength).to.equal(Infinity);
    const yarn = await NemotronForCausalLM.fromPretrained(checkpoint(reference.cases.find((c) => c.name === 'linear')!));
    const tooLong = [Array.from({ length: 65 }, (_, i) => 4 + (i % 90))];
    expect(errorOf(() => yarn.forward({ inputIds: tooLong }))).to.match(/Sequence of 65 tokens .* longer than max_position_embeddings 64/);
    yarn.dispose();
  });

  it('the frequency rules on their own: linear divides, dynamic is the plain rope up to max_position_embeddings', () => {
    const plain = ropeFrequencies(null, 10000, 8, 32).invFreq;
    const linear = ropeFrequencies({ ropeType: 'linear', factor: 4 }, 10000, 8, 32).invFreq;
    linear.forEach((v, i) => expect(v).to.be.closeTo(plain[i] / 4, 1e-9));
    expect(Array.from(ropeFrequencies({ ropeType: 'dynamic', factor: 2 }, 10000, 8, 32, 32).invFreq)).to.deep.equal(Array.from(plain));
    const grown = ropeFrequencies({ ropeType: 'dynamic', factor: 2 }, 10000, 8, 32, 48).invFreq;
    expect(grown[0]).to.equal(1);
    grown.slice(1).forEach((v, i) => expect(v).to.be.lessThan(plain[i + 1]));
  });
});
