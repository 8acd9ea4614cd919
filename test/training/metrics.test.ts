import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  Example, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification, evaluateExamples, readJsonl,
} from '../../src/index';
import { fixtureDir } from '../helpers';

// evaluateExamples batches with padding; the expectations here come from one example at a time (no padding), each
// prediction read off its own forward.
const DATASETS = path.resolve(__dirname, '../../../examples/datasets');
const argmax = (row: number[]) => row.indexOf(Math.max(...row));

describe('evaluation metrics', () => {
  before(() => tf.setBackend('cpu'));

  it('sequence classification: accuracy (multi-label: every label right), loss as the mean over examples', async () => {
    const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-single'));
    const examples = readJsonl(path.join(DATASETS, 'sequence-classification.jsonl'), 'sequence-classification');
    const before = tf.memory().numTensors;
    const m = await evaluateExamples(model, examples, 'sequence-classification', { batchSize: 5 });
    const single = examples.map((e) => tf.tidy(() => argmax(model.forward({ inputIds: [e.inputIds] }).logits.arraySync()[0] as number[])) === e.label);
    expect(m.accuracy).to.equal(single.filter(Boolean).length / examples.length);
    expect(m.accuracy).to.be.within(0.01, 0.99); // an untrained head: some right, some wrong (so the count matters)
    const losses = examples.map((e) => tf.tidy(() => model.computeLoss({ inputIds: [e.inputIds], labels: [e.label as number] }).dataSync()[0]));
    expect(m.loss).to.be.closeTo(losses.reduce((a, b) => a + b) / losses.length, 1e-5);
    expect(tf.memory().numTensors, 'tensors left').to.equal(before);
    model.dispose();

    const multi = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-multi'));
    const rows: Example[] = examples.slice(0, 8).map((e, i) => ({ inputIds: e.inputIds, label: [i % 2, (i >> 1) % 2, 1] }));
    const right = rows.filter((e) => tf.tidy(() => {
      const logits = multi.forward({ inputIds: [e.inputIds] }).logits.arraySync()[0] as number[];
      return logits.every((v, c) => (v > 0) === ((e.label as number[])[c] === 1));
    })).length;
    expect((await evaluateExamples(multi, rows, 'sequence-classification', { batchSize: 3 })).accuracy).to.equal(right / rows.length);
    multi.dispose();
  });

  it('token classification: accuracy over the labelled tokens; question answering: exact span matches', async () => {
    const tagger = await NemotronForTokenClassification.fromPretrained(fixtureDir('tiny-gqa', 'tokcls'));
    const tokens = readJsonl(path.join(DATASETS, 'token-classification.jsonl'), 'token-classification');
    let right = 0;
    let labelled = 0;
    for (const e of tokens) {
      const predicted = tf.tidy(() => (tagger.forward({ inputIds: [e.inputIds] }).logits.arraySync() as number[][][])[0].map(argmax));
      (e.label as number[]).forEach((l, t) => { if (l !== -100) { labelled++; if (predicted[t] === l) right++; } });
    }
    const m = await evaluateExamples(tagger, tokens, 'token-classification', { batchSize: 4 });
    expect(m.tokenAccuracy).to.equal(right / labelled);
    expect(m.tokenAccuracy).to.be.within(0.01, 0.99);
    tagger.dispose();

    const reader = await NemotronForQuestionAnswering.fromPretrained(fixtureDir('tiny-gqa', 'qa'));
    const spans = readJsonl(path.join(DATASETS, 'question-answering.jsonl'), 'question-answering');
    // Gold spans at the model's own best start and end for half of the examples, so that exact matches happen.
    const best = spans.map((e) => tf.tidy(() => {
      const out = reader.forward({ inputIds: [e.inputIds] });
      return [argmax(out.startLogits.arraySync()[0] as number[]), argmax(out.endLogits.arraySync()[0] as number[])];
    }));
    const gold = spans.map((e, i) => (i % 2 ? { ...e, start: best[i][0], end: best[i][1] } : e));
    const expected = gold.filter((e, i) => e.start === best[i][0] && e.end === best[i][1]).length / gold.length;
    expect((await evaluateExamples(reader, gold, 'question-answering', { batchSize: 5 })).exactMatch).to.equal(expected);
    expect(expected).to.be.at.least(0.5);
    reader.dispose();
  });
});
