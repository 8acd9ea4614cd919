import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  LabelScore, NemotronForQuestionAnswering, NemotronForSequenceClassification, answerQuestion, bestSpans, NemotronForTokenClassification, NemotronTokenizer, TokenEntity, classifyText, classifyTokens, readJsonl,
} from '../../src/index';
import { FIXTURES, fixtureDir, forEachBackend, testBackends, tmpDir } from '../helpers';

// transformers' text-classification and token-classification pipelines on the tiny-gqa heads
// (scripts/reference/pipeline_fixtures.py): labels exactly, scores within the fixtures' 1e-4 (they follow the logits).
type Heads = 'seqcls-single' | 'seqcls-multi' | 'seqcls-regression';
const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../pipelines/pipelines.json'), 'utf8')) as {
  texts: string[];
  text_classification: Record<Heads, Record<'default' | 'top_k_none' | 'top_k_2_softmax' | 'none', Array<LabelScore | LabelScore[]>>>;
  token_classification: Record<'default' | 'ignore_label_0', TokenEntity[][]> & {
    bio: Array<{
      labels: Record<string, string>;
      none: TokenEntity[][];
      simple: Array<Array<{ entity_group: string; score: number; word: string }>>;
      simple_keep_o: Array<Array<{ entity_group: string; score: number; word: string }>>;
    }>;
  };
  pair_classification: { pairs: Array<[string, string]>; default: LabelScore[]; top_k_none: LabelScore[][] };
  pair_encoding: Record<string, Array<{ ids: number[]; special_tokens_mask: number[]; sequence_ids: Array<0 | 1 | null> }>>;
};
const TOKENIZER = path.resolve(FIXTURES, '../generation-processors/tiny-gqa-tokenizer');

function expectSame(actual: Array<LabelScore | TokenEntity>, expected: Array<LabelScore | TokenEntity>, what: string): void {
  // pipelines.json keeps no offsets (test/inference/offsets.test.ts checks them).
  const strip = (e: object) => { const { score: _s, start: _a, end: _b, ...rest } = e as Record<string, unknown>; return rest; };
  expect(actual.map(strip), what).to.deep.equal(expected.map(strip));
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

  it('pairs of texts: classifyText({text, textPair}) equals the pipeline on {"text", "text_pair"}', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZER);
    const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-single'));
    const ref = reference.pair_classification;
    const inputs = ref.pairs.map(([text, textPair]) => ({ text, textPair }));
    (await classifyText(model, tokenizer, inputs)).forEach((r, i) => expectSame(r, [ref.default[i]], `pair ${i}`));
    (await classifyText(model, tokenizer, inputs, { topK: null })).forEach((r, i) => expectSame(r, ref.top_k_none[i], `pair ${i}, every label`));
    model.dispose();
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

forEachBackend(testBackends(), () => {
  it('classifyTokens with BIO labels: aggregation "simple" groups entities as the pipeline does ("O" ignored or kept)', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZER);
    const groups = (g: Array<{ entity_group: string; score: number; word: string }>) => g.map(({ entity_group: entityGroup, ...rest }) => ({ entityGroup, ...rest }));
    for (const [m, ref] of reference.token_classification.bio.entries()) {
      const id2label = Object.fromEntries(Object.entries(ref.labels).map(([k, v]) => [Number(k), v]));
      const label2id = Object.fromEntries(Object.entries(ref.labels).map(([k, v]) => [v, Number(k)]));
      const model = await NemotronForTokenClassification.fromPretrained(fixtureDir('tiny-gqa', 'tokcls'), { config: { id2label, label2id } });
      for (const [i, text] of reference.texts.entries()) {
        expectSame(await classifyTokens(model, tokenizer, text), ref.none[i], `labels ${m}, text ${i}, none`);
        expectSame(await classifyTokens(model, tokenizer, text, { aggregationStrategy: 'simple' }) as never, groups(ref.simple[i]) as never, `labels ${m}, text ${i}, simple`);
        expectSame(await classifyTokens(model, tokenizer, text, { aggregationStrategy: 'simple', ignoreLabels: [] }) as never,
          groups(ref.simple_keep_o[i]) as never, `labels ${m}, text ${i}, simple, O kept`);
      }
      model.dispose();
    }
  });
});

describe('tokenizer: pairs of texts', () => {
  it('encodePair equals tokenizer(text, text_pair): ids, special tokens mask, sequence ids (the post-processor\'s template with and without tokenizer_config\'s flags, none)', async () => {
    const fixtures = path.resolve(FIXTURES, '..');
    const json = JSON.parse(fs.readFileSync(path.join(fixtures, 'tokenizer/tokenizer.json'), 'utf8'));
    const { add_bos_token: _bos, add_eos_token: _eos, ...withoutFlags } = JSON.parse(fs.readFileSync(path.join(fixtures, 'tokenizer/tokenizer_config.json'), 'utf8'));
    const tokenizers: Array<[string, string, NemotronTokenizer]> = [
      ['tokenizer', 'with add_bos_token in tokenizer_config.json (ignored, as transformers 5)', await NemotronTokenizer.fromPretrained(path.join(fixtures, 'tokenizer'))],
      ['tokenizer', 'the post-processor\'s pair template', await NemotronTokenizer.fromJSON(json, withoutFlags)],
      ['generation-processors/tiny-gqa-tokenizer', 'no template', await NemotronTokenizer.fromPretrained(TOKENIZER)],
    ];
    for (const [name, how, tokenizer] of tokenizers) {
      reference.pair_classification.pairs.forEach(([a, b], i) => {
        const e = tokenizer.encodePair(a, b);
        const ref = reference.pair_encoding[name][i];
        expect([e.ids, e.specialTokensMask, e.sequenceIds], `${how}, pair ${i}`).to.deep.equal([ref.ids, ref.special_tokens_mask, ref.sequence_ids]);
      });
    }
  });

  it('readJsonl reads {"text", "text_pair", "label"} rows through encodePair', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(path.resolve(FIXTURES, '../tokenizer'));
    const file = path.join(tmpDir('pairs-'), 'pairs.jsonl');
    fs.writeFileSync(file, JSON.stringify({ text: 'the stone', text_pair: 'it stopped', label: 1 }) + '\n');
    const [example] = readJsonl(file, 'sequence-classification', tokenizer);
    expect(example).to.deep.equal({ inputIds: reference.pair_encoding.tokenizer[0].ids, label: 1 });
    fs.writeFileSync(file, JSON.stringify({ text: 'the stone', text_pair: 'x', label: 1 }) + '\n');
    expect(() => readJsonl(file, 'sequence-classification')).to.throw(/"text_pair" needs a tokenizer/);
  });
});

describe('question answering: spans', () => {
  before(() => tf.setBackend('cpu'));

  it('bestSpans: context tokens only, end ≥ start, at most maxAnswerLength, scored P(start)·P(end), ties by position', () => {
    const start = [9, 9, 0, 2, 0, 0, 3, 0];
    const end = [9, 0, 0, 0, 4, 0, 0, 1];
    const inContext = [false, false, false, true, true, true, true, true];
    // Over the context (positions 3–7) start ∝ e^[2,0,0,3,0], end ∝ e^[0,4,0,0,1]: (3,4) scores ∝ e^6, (4,4) and (6,7) e^4.
    const zs = 2 * Math.exp(0) + Math.exp(2) + Math.exp(3) + Math.exp(0);
    const ze = 3 * Math.exp(0) + Math.exp(4) + Math.exp(1);
    const spans = bestSpans(start, end, inContext, { topK: 3 });
    expect(spans.map((x) => [x.start, x.end])).to.deep.equal([[3, 4], [4, 4], [6, 7]]);
    expect(spans[0].score).to.be.closeTo(Math.exp(6) / (zs * ze), 1e-12);
    expect(bestSpans(start, end, inContext, { topK: 2, maxAnswerLength: 1 }).map((x) => [x.start, x.end])).to.deep.equal([[4, 4], [6, 6]]);
    expect(() => bestSpans(start, end, inContext.map(() => false))).to.throw(/no token is in the context/);
  });

  it('answerQuestion equals transformers 4\'s question-answering pipeline: answers, character spans, scores (words and tokens, top-k, max length)', async () => {
    const qa = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../pipelines/qa.json'), 'utf8')) as {
      cases: Array<{ question: string; context: string } & Record<string, Array<{ answer: string; start: number; end: number; score: number }>>>;
    };
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZER);
    const model = await NemotronForQuestionAnswering.fromPretrained(fixtureDir('tiny-gqa', 'qa'));
    const settings: Record<string, { topK?: number; alignToWords?: boolean; maxAnswerLength?: number }> = {
      top1: {}, top3: { topK: 3 }, top3_tokens: { topK: 3, alignToWords: false }, top2_max2: { topK: 2, maxAnswerLength: 2 },
    };
    let compared = 0;
    for (const c of qa.cases) {
      for (const [name, options] of Object.entries(settings)) {
        const got = await answerQuestion(model, tokenizer, c.question, c.context, options);
        const what = `${JSON.stringify(c.question)} / ${JSON.stringify(c.context)}, ${name}`;
        expect(got.map((a) => [a.answer, a.start, a.end]), what).to.deep.equal(c[name].map((a) => [a.answer, a.start, a.end]));
        got.forEach((a, i) => expect(a.score, `${what}: score ${i}`).to.be.closeTo(c[name][i].score, 1e-4));
        compared += got.length;
      }
    }
    expect(compared).to.be.greaterThan(30);
    // A context over several windows (8 to 33 here): answers from all of them, merged, as the pipeline gives them.
    const windowed = (JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../pipelines/qa.json'), 'utf8')) as {
      windows: Array<{ question: string; context: string; max_seq_len: number; doc_stride: number; top_k: number; windows: number[][]; answers: Array<{ answer: string; start: number; end: number; score: number }> }>;
    }).windows;
    for (const w of windowed) {
      expect(w.windows.length).to.be.greaterThan(5);
      const got = await answerQuestion(model, tokenizer, w.question, w.context, { topK: w.top_k, maxSeqLen: w.max_seq_len, docStride: w.doc_stride });
      const what = `${w.question}, max_seq_len ${w.max_seq_len}, doc_stride ${w.doc_stride}`;
      expect(got.map((a) => [a.answer, a.start, a.end]), what).to.deep.equal(w.answers.map((a) => [a.answer, a.start, a.end]));
      got.forEach((a, i) => expect(a.score, `${what}: score ${i}`).to.be.closeTo(w.answers[i].score, 1e-4));
    }
    model.dispose();
  });

  it('answerQuestion: the question and the context as a pair, the best span of the context decoded', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(TOKENIZER);
    const model = await NemotronForQuestionAnswering.fromPretrained(fixtureDir('tiny-gqa', 'qa'));
    const before = tf.memory().numTensors;
    const [question, context] = ['what stopped', 'the stone stopped in a tin'];
    const spans = await answerQuestion(model, tokenizer, question, context, { topK: 2 });
    const { ids, sequenceIds } = tokenizer.encodePair(question, context);
    const out = model.forward({ inputIds: [ids] });
    const expected = bestSpans(await out.startLogits.data(), await out.endLogits.data(), sequenceIds.map((x) => x === 1), { topK: 2 });
    tf.dispose([out.startLogits, out.endLogits]);
    // Token-aligned spans are bestSpans' own; each answer is the context's text of its tokens.
    const tokenSpans = await answerQuestion(model, tokenizer, question, context, { topK: 2, alignToWords: false });
    expect(tokenSpans.map((x) => [x.startToken, x.endToken, x.score])).to.deep.equal(expected.map((x) => [x.start, x.end, x.score]));
    tokenSpans.forEach((x) => expect(x.answer.trim()).to.equal(tokenizer.decode(ids.slice(x.startToken, x.endToken + 1), { skipSpecialTokens: true }).trim()));
    spans.forEach((x) => expect(x.answer).to.equal(context.slice(x.start, x.end)));
    expect(sequenceIds[spans[0].startToken]).to.equal(1);
    // Training rows {question, context, answer} are encoded the same way: the gold span decodes to the answer.
    const file = path.join(tmpDir('qa-'), 'qa.jsonl');
    const rows = [{ question, context, answer: 'stopped' }, { question, context, answer: 'the stone' }, { question, context: 'a tin', answer: 'tin' }];
    fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n'));
    readJsonl(file, 'question-answering', tokenizer).forEach((e, i) => {
      expect(e.inputIds, `row ${i}`).to.deep.equal(tokenizer.encodePair(rows[i].question, rows[i].context).ids);
      expect(tokenizer.decode(e.inputIds.slice(e.start!, e.end! + 1)).trim(), `row ${i}`).to.equal(rows[i].answer);
    });
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
