import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { AggregationStrategy, NemotronForTokenClassification, NemotronTokenizer, classifyTokens } from '../../src/index';
import { FIXTURES, fixtureDir, forEachBackend, testBackends } from '../helpers';

// The Rust tokenizer's offset mapping and the token-classification pipeline with offsets and word aggregation
// (scripts/reference/offsets_fixtures.py): offsets exactly (converted from Python's code points to UTF-16), labels
// and words exactly, scores within the fixtures' 1e-4.
type Encoded = { text: string; ids: number[]; offsets: Array<[number, number]>; special_tokens_mask: number[] };
type Entity = { entity?: string; entity_group?: string; score: number; word: string; start: number; end: number; index?: number };
const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../pipelines/offsets.json'), 'utf8')) as {
  transformers: string;
  tokenizer: Encoded[];
  'tiny-gqa-tokenizer': Encoded[];
  token_classification: Array<{ labels: Record<string, string> } & Record<string, Entity[][]>>;
};
const TOKENIZERS: Record<'tokenizer' | 'tiny-gqa-tokenizer', string> = {
  tokenizer: path.resolve(FIXTURES, '../tokenizer'),
  'tiny-gqa-tokenizer': path.resolve(FIXTURES, '../generation-processors/tiny-gqa-tokenizer'),
};

/** A Python (code point) offset as a JavaScript (UTF-16) one. */
function utf16(text: string, offset: number): number {
  return [...text].slice(0, offset).join('').length;
}

describe('character offsets of tokens (transformers\' return_offsets_mapping)', () => {
  for (const name of ['tokenizer', 'tiny-gqa-tokenizer'] as const) {
    it(`${name}: ids, offsets and special tokens mask as the Rust tokenizer gives them (spaces, byte fallback, emoji, specials in the text)`, async () => {
      const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZERS[name]);
      expect(reference[name].length).to.be.at.least(5);
      for (const c of reference[name]) {
        const got = tokenizer.encodeWithOffsets(c.text);
        expect(got.ids, c.text).to.deep.equal(c.ids);
        expect(got.offsets, c.text).to.deep.equal(c.offsets.map(([s, e]) => [utf16(c.text, s), utf16(c.text, e)]));
        expect(got.specialTokensMask, c.text).to.deep.equal(c.special_tokens_mask);
      }
    });
  }

  it('a byte-level vocabulary is refused by name (its pieces are not the text\'s characters)', async () => {
    const tokenizer = await NemotronTokenizer.fromJSON({
      version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, post_processor: null, decoder: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', vocab: { a: 0, b: 1 }, merges: [], unk_token: null },
    }, {});
    expect(() => tokenizer.encodeWithOffsets('ab')).to.throw(/the pre-tokenizer ByteLevel is not replayed/);
  });
});

forEachBackend(testBackends(), () => {
  it('classifyTokens with offsets: aggregation none, simple, first, average and max equal the pipeline (starts, ends, words, scores)', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZERS['tiny-gqa-tokenizer']);
    const texts = reference['tiny-gqa-tokenizer'].map((c) => c.text);
    let compared = 0;
    for (const [m, ref] of reference.token_classification.entries()) {
      const id2label = Object.fromEntries(Object.entries(ref.labels).map(([k, v]) => [Number(k), v]));
      const label2id = Object.fromEntries(Object.entries(ref.labels).map(([k, v]) => [v, Number(k)]));
      const model = await NemotronForTokenClassification.fromPretrained(fixtureDir('tiny-gqa', 'tokcls'), { config: { id2label, label2id } });
      const before = tf.memory().numTensors;
      for (const strategy of ['none', 'simple', 'first', 'average', 'max'] as AggregationStrategy[]) {
        for (const keepO of [false, true]) {
          for (const [i, text] of texts.entries()) {
            const expected = ref[keepO ? `${strategy}_keep_o` : strategy][i].map((e) => ({
              ...(e.entity_group !== undefined ? { entityGroup: e.entity_group } : { entity: e.entity, index: e.index }),
              word: e.word, start: utf16(text, e.start), end: utf16(text, e.end), score: e.score,
            }));
            const got = await classifyTokens(model, tokenizer, text, { aggregationStrategy: strategy as never, ...(keepO ? { ignoreLabels: [] } : {}) }) as unknown as Entity[];
            const what = `labels ${m}, ${strategy}${keepO ? ', O kept' : ''}, ${JSON.stringify(text)}`;
            expect(got.map(({ score, ...rest }) => rest), what).to.deep.equal(expected.map(({ score, ...rest }) => rest));
            got.forEach((g, k) => expect(g.score, `${what}: score ${k}`).to.be.closeTo(expected[k].score, 1e-4));
            compared += got.length;
          }
        }
      }
      expect(tf.memory().numTensors, 'tensors left').to.equal(before);
      model.dispose();
    }
    expect(compared).to.be.greaterThan(100);
  });
});
