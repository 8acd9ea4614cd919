import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  LabelScore, NemotronForSequenceClassification, NemotronForTokenClassification, NemotronTokenizer, TokenEntity, classifyText, classifyTokens,
} from '../../src/index';
import { FIXTURES, fixtureDir, forEachBackend, testBackends } from '../helpers';

// transformers' text-classification and token-classification pipelines on the tiny-gqa heads
// (scripts/reference/pipeline_fixtures.py): labels exactly, scores within the fixtures' 1e-4 (they follow the logits).
type Heads = 'seqcls-single' | 'seqcls-multi' | 'seqcls-regression';
const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../pipelines/pipelines.json'), 'utf8')) as {
  texts: string[];
  text_classification: Record<Heads, Record<'default' | 'top_k_none' | 'top_k_2_softmax' | 'none', Array<LabelScore | LabelScore[]>>>;
  token_classification: Record<'default' | 'ignore_label_0', TokenEntity[][]>;
};
const TOKENIZER = path.resolve(FIXTURES, '../generation-processors/tiny-gqa-tokenizer');

function expectSame(actual: Array<LabelScore | TokenEntity>, expected: Array<LabelScore | TokenEntity>, what: string): void {
  expect(actual.map(({ score, ...rest }) => rest), what).to.deep.equal(expected.map(({ score, ...rest }) => rest));
  actual.forEach((a, i) => expect(a.score, `${what}: score ${i}`).to.be.closeTo(expected[i].score, 1e-4));
}

forEachBackend(testBackends(), () => {
  it('classifyText equals the text-classification pipeline: the best label, every label, a forced function (single, multi-label, regression heads)', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZER);
    for (const head of ['seqcls-single', 'seqcls-multi', 'seqcls-regression'] as Heads[]) {
      const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', head));
      const before = tf.memory().numTensors;
      const ref = reference.text_classification[head];
      const best = await classifyText(model, tokenizer, reference.texts);
      best.forEach((r, i) => expectSame(r, [ref.default[i] as LabelScore], `${head} default, text ${i}`));
      (await classifyText(model, tokenizer, reference.texts, { topK: null })).forEach((r, i) => expectSame(r, ref.top_k_none[i] as LabelScore[], `${head} top_k None, text ${i}`));
      (await classifyText(model, tokenizer, reference.texts, { topK: 2, functionToApply: 'softmax' })).forEach((r, i) => expectSame(r, ref.top_k_2_softmax[i] as LabelScore[], `${head} top_k 2 softmax, text ${i}`));
      (await classifyText(model, tokenizer, reference.texts, { topK: null, functionToApply: 'none' })).forEach((r, i) => expectSame(r, ref.none[i] as LabelScore[], `${head} none, text ${i}`));
      expect(tf.memory().numTensors, `${head}: tensors left`).to.equal(before);
      model.dispose();
    }
  });

  it('classifyTokens equals the token-classification pipeline (aggregation none): entities, scores, indices, words', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZER);
    const model = await NemotronForTokenClassification.fromPretrained(fixtureDir('tiny-gqa', 'tokcls'));
    const before = tf.memory().numTensors;
    for (const [i, text] of reference.texts.entries()) {
      expectSame(await classifyTokens(model, tokenizer, text), reference.token_classification.default[i], `text ${i}`);
      expectSame(await classifyTokens(model, tokenizer, text, { ignoreLabels: ['LABEL_0'] }), reference.token_classification.ignore_label_0[i], `text ${i}, LABEL_0 ignored`);
    }
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    model.dispose();
  });
});

describe('classification inference: bad input', () => {
  before(() => tf.setBackend('cpu'));
  it('refuses bad options and empty texts by name', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZER);
    const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-single'));
    const failure = async (p: Promise<unknown>) => p.then(() => '', (e: Error) => e.message);
    expect(await failure(classifyText(model, tokenizer, 'a', { topK: 0 }))).to.match(/topK must be a positive integer or null \(all labels\), got 0/);
    expect(await failure(classifyText(model, tokenizer, 'a', { functionToApply: 'relu' as never }))).to.match(/functionToApply must be sigmoid, softmax or none, got "relu"/);
    expect(await failure(classifyText(model, tokenizer, ['a', ''], {}))).to.match(/texts\[1\] "" has no tokens to classify/);
    model.dispose();
  });
});
