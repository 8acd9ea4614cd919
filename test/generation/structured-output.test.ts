import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { GrammarCompiler, type GrammarSpec, NemotronForCausalLM, NemotronTokenizer, generate, grammarVocabularyInfo } from '../../src/index';
import { CONFIGS, FIXTURES, fixtureDir, forEachBackend, testBackends } from '../helpers';

// Greedy decoding under xgrammar's grammars as transformers runs them (xgrammar.contrib.hf.LogitsProcessor) on the tiny
// fixture models, with a 96-id SentencePiece-style tokenizer that spells JSON (scripts/reference/structured_output_fixtures.py).
const DIR = path.resolve(FIXTURES, '../structured-output');
interface Reference {
  tokenizer_info: { vocab_type: string; add_prefix_space: boolean };
  grammars: Record<string, { kind: string; schema?: object; grammar?: string; regex?: string }>;
  models: Record<string, { prompt: number[][]; attention_mask: number[][]; cases: Record<string, { sequences: number[][]; texts: string[] }> }>;
}
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as Reference;

function spec(key: string): GrammarSpec {
  const g = reference.grammars[key];
  if (g.kind === 'builtin_json') return { type: 'json' };
  if (g.kind === 'json_schema') return { type: 'json_schema', schema: g.schema! };
  if (g.kind === 'regex') return { type: 'regex', regex: g.regex! };
  return { type: 'grammar', grammar: g.grammar! };
}

describe('structured outputs: grammar-constrained decoding (xgrammar)', function () {
  this.timeout(120_000);
  let tokenizer: NemotronTokenizer;
  let compiler: GrammarCompiler;

  before(async () => {
    tokenizer = await NemotronTokenizer.fromPretrained(path.join(DIR, 'tokenizer'));
    compiler = await GrammarCompiler.create(tokenizer, { vocabSize: 96, stopTokenIds: [3] });
  });

  it('reads the vocabulary as xgrammar\'s TokenizerInfo.from_huggingface does (byte fallback, a prepended space)', () => {
    const info = grammarVocabularyInfo(tokenizer);
    expect({ vocab_type: info.vocabType, add_prefix_space: info.addPrefixSpace }).to.deep.equal(reference.tokenizer_info);
  });

  forEachBackend(testBackends(), () => {
    for (const config of CONFIGS) {
      it(`greedy decoding under the JSON grammar, two JSON schemas, an EBNF grammar and four regexes equals transformers + xgrammar, leaving no tensor: ${config}`, async () => {
        const ref = reference.models[config];
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const before = tf.memory().numTensors;
        for (const [key, expected] of Object.entries(ref.cases)) {
          const grammar = await compiler.compile(spec(key));
          const out = await generate(model, ref.prompt, { attentionMask: ref.attention_mask, padTokenId: 0, eosTokenId: 3, maxNewTokens: 24, grammar });
          expect(out.sequences, key).to.deep.equal(expected.sequences);
          grammar.dispose();
        }
        const free = await generate(model, ref.prompt, { attentionMask: ref.attention_mask, padTokenId: 0, eosTokenId: 3, maxNewTokens: 24 });
        // Unconstrained, the random model writes no JSON: the grammar is what made these.
        expect(free.sequences).to.not.deep.equal(ref.cases.json_object.sequences);
        expect(tf.memory().numTensors).to.equal(before);
        model.dispose();
      });
    }
  });

  it('what a grammar lets through parses: JSON of the schema, one of the choices', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    try {
      const choice = await compiler.compile({ type: 'choice', choices: ['yes', 'no', 'maybe'] });
      const out = await generate(model, [[2, 40, 41]], { eosTokenId: 3, maxNewTokens: 8, grammar: choice });
      const text = tokenizer.decode(out.sequences[0].slice(3), { skipSpecialTokens: true });
      expect(['yes', 'no', 'maybe']).to.include(text);
      expect(out.sequences[0][out.sequences[0].length - 1]).to.equal(3);
      const flags = await compiler.compile({ type: 'json_schema', schema: { type: 'array', items: { type: 'boolean' }, maxItems: 2 }, anyWhitespace: false });
      const sampled = await generate(model, [[2, 40, 41]], { eosTokenId: 3, maxNewTokens: 16, grammar: flags, doSample: true, seed: 3, temperature: 1.5 });
      const json = JSON.parse(tokenizer.decode(sampled.sequences[0].slice(3), { skipSpecialTokens: true })) as unknown;
      expect(Array.isArray(json) && json.length <= 2 && json.every((v) => typeof v === 'boolean'), JSON.stringify(json)).to.equal(true);
    } finally {
      model.dispose();
    }
  });

  it('errors name the grammar and what is wrong: a bad schema, bad EBNF, beams, speculation', async () => {
    let error = '';
    await compiler.compile({ type: 'json_schema', schema: { type: 'strin' } }).catch((e: Error) => { error = e.message; });
    expect(error).to.equal('grammar {"type":"json_schema","schema":{"type":"strin"}}: Unsupported type "strin"');
    error = '';
    await compiler.compile({ type: 'grammar', grammar: 'root ::= "a" |' }).catch((e: Error) => { error = e.message; });
    expect(error).to.match(/^grammar \{"type":"grammar".*: EBNF parser error at line 1, column 15/);
    error = '';
    await compiler.compile({ type: 'regex', regex: 'a(?=b)' }).catch((e: Error) => { error = e.message; });
    expect(error).to.match(/regex "a\(\?=b\)": lookaround assertions are not supported/);
    error = '';
    await compiler.compile({ type: 'choice', choices: [] }).catch((e: Error) => { error = e.message; });
    expect(error).to.match(/choices must be a non-empty list/);
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const grammar = await compiler.compile({ type: 'json' });
    try {
      error = '';
      await generate(model, [[2, 40]], { maxNewTokens: 4, numBeams: 2, grammar }).catch((e: Error) => { error = e.message; });
      expect(error).to.equal('generate: a grammar decodes greedily or sampled, not with beam search (numBeams > 1)');
      error = '';
      await generate(model, [[2, 40]], { maxNewTokens: 4, promptLookupNumTokens: 2, grammar }).catch((e: Error) => { error = e.message; });
      expect(error).to.match(/prompt lookup decoding is greedy only; not with grammar/);
    } finally {
      model.dispose();
    }
  });
});
