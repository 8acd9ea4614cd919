import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM, NemotronForSequenceClassification, generate, setMaxWeightBlockBytes } from '../../src/index';
import { CONFIGS, FIXTURES, errorOf, fixtureDir, forEachBackend, testBackends, tmpDir } from '../helpers';

// transformers' resize_token_embeddings on the tiny fixture models (scripts/reference/resize_fixtures.py): grown with
// mean resizing, grown to a multiple, shrunk. Added rows are random in both (the old rows' mean plus noise of 1e-9 times
// their covariance: per value a standard deviation of √1e-9 · ~1 ≈ 3.2e-5 here), so they are compared within 3e-4,
// ten standard deviations of the difference of two draws; everything else exactly or within the fixtures' 1e-4.
interface ResizeCase {
  setting: { new_num_tokens: number; pad_to_multiple_of?: number };
  vocab_size: number;
  input_ids: number[][];
  logits: number[][];
  embedding_shape: number[];
  lm_head_shape: number[];
  tied: boolean;
  added_embedding_rows?: number[][];
  added_lm_head_rows?: number[][];
}
const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../resize-embeddings/resize-embeddings.json'), 'utf8')) as
  Record<string, { vocab_size: number; cases: ResizeCase[] }>;
const NOISE = 3e-4;

function maxDiff(a: tf.Tensor, b: number[][]): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, tf.tensor2d(b)))).dataSync()[0]);
}

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    it(`resizeTokenEmbeddings as transformers: grown around the mean, to a multiple, shrunk; logits of the kept vocabulary: ${config}`, async () => {
      const { vocab_size: vocab, cases } = reference[config];
      for (const c of cases) {
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const before = tf.memory().numTensors;
        const kept = Math.min(vocab, c.vocab_size);
        const oldEmbedding = tf.slice(model.model.embedding.single!, [0, 0], [kept, -1]);
        const oldHead = tf.slice(model.outputWeight, [0, 0], [kept, -1]);
        const what = JSON.stringify(c.setting);
        const size = model.resizeTokenEmbeddings(c.setting.new_num_tokens, { padToMultipleOf: c.setting.pad_to_multiple_of, seed: 7 });
        expect(size, what).to.equal(c.vocab_size);
        expect(model.config.vocabSize, what).to.equal(c.vocab_size);
        expect(model.model.embedding.single!.shape, what).to.deep.equal(c.embedding_shape);
        expect(model.outputWeight.shape, what).to.deep.equal(c.lm_head_shape);
        expect(model.lmHead === null, `${what}: tied`).to.equal(c.tied);
        const keptRows = (w: tf.Tensor, old: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(tf.slice(w, [0, 0], [kept, -1]), old))).dataSync()[0]);
        expect(keptRows(model.model.embedding.single!, oldEmbedding), `${what}: kept embedding rows`).to.equal(0);
        expect(keptRows(model.outputWeight, oldHead), `${what}: kept output rows`).to.equal(0);
        if (c.added_embedding_rows) {
          const added = tf.slice(model.model.embedding.single!, [vocab, 0], [-1, -1]);
          expect(maxDiff(added, c.added_embedding_rows), `${what}: added embedding rows`).to.be.lessThan(NOISE);
          const head = tf.slice(model.outputWeight, [vocab, 0], [-1, -1]);
          expect(maxDiff(head, c.added_lm_head_rows!), `${what}: added output rows`).to.be.lessThan(NOISE);
          tf.dispose([added, head]);
        }
        const logits = tf.tidy(() => model.forward({ inputIds: c.input_ids }).logits.squeeze([0]));
        const keptLogits = tf.slice(logits, [0, 0], [-1, kept]);
        expect(maxDiff(keptLogits, c.logits.map((row) => row.slice(0, kept))), `${what}: logits of the kept vocabulary`).to.be.lessThan(1e-4);
        tf.dispose([logits, keptLogits, oldEmbedding, oldHead]);
        expect(tf.memory().numTensors, `${what}: tensors left`).to.equal(before);
        model.dispose();
      }
    });
  }
});

describe('resizeTokenEmbeddings', () => {
  before(() => tf.setBackend('cpu'));

  it('mean resizing draws from the old rows\' mean and 1e-9 times their covariance (4,000 draws)', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const matrix = model.model.embedding;
    const [meanError, covarianceError] = tf.tidy(() => {
      const w = matrix.single!;
      const mean = tf.mean(w, 0);
      const centered = tf.sub(w, mean);
      const covariance = tf.div(tf.matMul(centered, centered, true, false), w.shape[0]);
      const draws = matrix.meanRows(4000, 3);
      const deviations = tf.div(tf.sub(draws, mean), Math.sqrt(1e-9));
      const sample = tf.div(tf.matMul(deviations, deviations, true, false), 4000);
      // The mean of the draws within a few standard errors of √1e-9 · (≈1) / √4000; the covariance within 10 %.
      return [
        tf.max(tf.abs(tf.sub(tf.mean(draws, 0), mean))).dataSync()[0],
        tf.div(tf.norm(tf.sub(sample, covariance)), tf.norm(covariance)).dataSync()[0],
      ];
    });
    expect(meanError).to.be.lessThan(5 * Math.sqrt(1e-9) * 2 / Math.sqrt(4000));
    expect(covarianceError).to.be.lessThan(0.1);
    model.dispose();
  });

  it('without mean resizing, added rows are normal(0, initializer_range); seeds repeat', async () => {
    const a = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const b = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    a.resizeTokenEmbeddings(2096, { meanResizing: false, seed: 11 });
    b.resizeTokenEmbeddings(2096, { meanResizing: false, seed: 11 });
    const [std, mean, same] = tf.tidy(() => {
      const added = tf.slice(a.model.embedding.single!, [96, 0], [-1, -1]);
      const moments = tf.moments(added);
      return [Math.sqrt(moments.variance.dataSync()[0]), moments.mean.dataSync()[0],
        tf.max(tf.abs(tf.sub(a.outputWeight, b.outputWeight))).dataSync()[0]];
    });
    expect(std).to.be.closeTo(0.02, 0.001);
    expect(Math.abs(mean)).to.be.lessThan(0.001);
    expect(same).to.equal(0);
    a.dispose();
    b.dispose();
  });

  it('a resized model saves as transformers lays it out, loads back, and generates with the new tokens', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    model.resizeTokenEmbeddings(100, { seed: 1 });
    const dir = tmpDir('resized-');
    await model.savePretrained(dir);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).vocab_size).to.equal(100);
    const loaded = await NemotronForCausalLM.fromPretrained(dir);
    const prompt = [[5, 98, 17, 99]];
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(model.forward({ inputIds: prompt }).logits, loaded.forward({ inputIds: prompt }).logits))).dataSync()[0]);
    expect(diff).to.equal(0);
    const out = await generate(loaded, prompt, { maxNewTokens: 4, doSample: false });
    expect(out.sequences[0].slice(0, 4)).to.deep.equal(prompt[0]);
    expect(errorOf(() => loaded.forward({ inputIds: [[100]] }))).to.match(/100/);
    model.dispose();
    loaded.dispose();
  });

  it('resizes row blocks as one matrix; heads without an LM head resize the embeddings alone; bad sizes are refused', async () => {
    setMaxWeightBlockBytes(20 * 64 * 4);
    try {
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
      expect(model.model.embedding.blocks.length).to.equal(5);
      const rows = tf.tidy(() => tf.concat(model.model.embedding.blocks.map((b) => tf.clone(b))));
      model.resizeTokenEmbeddings(130, { seed: 2 });
      expect(model.model.embedding.blocks.length).to.equal(7);
      expect(model.model.embedding.blocks.map((b) => b.shape[0])).to.deep.equal([19, 19, 19, 19, 19, 19, 16]);
      const [keptDiff, addedDiff] = tf.tidy(() => {
        const all = tf.concat(model.model.embedding.blocks);
        const mean = tf.mean(rows, 0);
        return [tf.max(tf.abs(tf.sub(tf.slice(all, [0, 0], [96, -1]), rows))).dataSync()[0],
          tf.max(tf.abs(tf.sub(tf.slice(all, [96, 0], [-1, -1]), mean))).dataSync()[0]];
      });
      expect(keptDiff).to.equal(0);
      expect(addedDiff).to.be.lessThan(NOISE / 2);
      expect([...model.namedParameters().keys()].filter((n) => n.startsWith('model.embed_tokens'))).to.have.length(7);
      rows.dispose();
      model.dispose();
    } finally {
      setMaxWeightBlockBytes(null);
    }
    const classifier = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-single'));
    expect(classifier.resizeTokenEmbeddings(90)).to.equal(90);
    expect(classifier.model.embedding.single!.shape).to.deep.equal([90, 64]);
    expect(errorOf(() => classifier.resizeTokenEmbeddings(0))).to.match(/newNumTokens must be a positive integer, got 0/);
    expect(errorOf(() => classifier.resizeTokenEmbeddings(90, { padToMultipleOf: 2.5 }))).to.match(/padToMultipleOf must be a positive integer, got 2.5/);
    expect(classifier.resizeTokenEmbeddings(null, { padToMultipleOf: 64 })).to.equal(128);
    classifier.dispose();
  });
});
