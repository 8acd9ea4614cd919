import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  NemotronForCausalLM, VocabMatrix, setMaxWeightBlockBytes, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification,
  setLossChunkBytes,
} from '../../src/index';
import { crossEntropy } from '../../src/losses';
import { CONFIGS, errorOf, expectClose, expected, expectRelClose, fixtureDir, kernelsRun } from '../helpers';

// computeLoss(): the loss alone, for training. Its gradients against transformers are in test/training/gradients.test.ts
// and the fixture parity (every backend, row blocks included); here: every head, errors, and what it holds at once.
describe('computeLoss', () => {
  afterEach(() => {
    setLossChunkBytes(null);
    setMaxWeightBlockBytes(null);
  });

  for (const config of CONFIGS) {
    it(`every head: forward()'s loss (transformers' within 1e-5), nothing else left: ${config}`, async () => {
      const exp = expected(config);
      const inputs = { inputIds: exp.json.input_ids as number[][], attentionMask: exp.json.attention_mask as number[][] };
      const cases: Array<[string, () => Promise<{ computeLoss(i: object): tf.Scalar; dispose(): void }>, object, number]> = [
        ['causal LM', () => NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm')), { labels: exp.json.causal_labels }, exp.json.causal_loss],
        ...['single', 'multi', 'regression'].map((v) => [`sequence classification (${v})`,
          () => NemotronForSequenceClassification.fromPretrained(fixtureDir(config, `seqcls-${v}`)),
          { labels: exp.json[`seqcls_${v}_labels`] }, exp.json[`seqcls_${v}_loss`]] as [string, () => Promise<NemotronForSequenceClassification>, object, number]),
        ['question answering', () => NemotronForQuestionAnswering.fromPretrained(fixtureDir(config, 'qa')),
          { startPositions: exp.json.qa_start_positions, endPositions: exp.json.qa_end_positions }, exp.json.qa_loss],
        ['token classification', () => NemotronForTokenClassification.fromPretrained(fixtureDir(config, 'tokcls')),
          { labels: exp.json.tokcls_labels }, exp.json.tokcls_loss],
      ];
      for (const [what, load, labels, reference] of cases) {
        const model = await load();
        const before = tf.memory().numTensors;
        // Also with outputs asked for: computeLoss returns the loss only, and frees what it computed.
        const loss = model.computeLoss({ ...inputs, ...labels, outputHiddenStates: true, outputAttentions: true, useCache: true });
        expect(loss.shape, what).to.deep.equal([]);
        expectRelClose(loss.dataSync()[0], reference, 1e-5, what);
        loss.dispose();
        expect(tf.memory().numTensors, `${what}: tensors left`).to.equal(before);
        model.dispose();
      }
    });
  }

  it('refuses inputs without a loss, labels that predict nothing, and logitsToKeep with labels', async () => {
    const exp = expected('tiny-gqa');
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const inputIds = exp.json.input_ids as number[][];
    const before = tf.memory().numTensors;
    expect(errorOf(() => model.computeLoss({ inputIds }))).to.match(/NemotronForCausalLM\.computeLoss: the inputs give no loss: pass labels/);
    // Only each row's first label is a token: position i predicts label i + 1, so nothing is left to predict.
    const firstOnly = inputIds.map((row) => row.map((id, i) => (i === 0 ? id : -100)));
    expect(errorOf(() => model.computeLoss({ inputIds, labels: firstOnly }))).to.match(/no position has a token to predict.*NaN/);
    expect(errorOf(() => model.computeLoss({ inputIds, labels: inputIds, logitsToKeep: 1 }))).to.match(/logitsToKeep cannot be combined with labels/);
    const outOfRange = inputIds.map((row) => row.map(() => 5000));
    expect(errorOf(() => model.computeLoss({ inputIds, labels: outOfRange }))).to.match(/labels\[0\]\[0\] = 5000 is outside \[0, vocab_size/);
    expect(tf.memory().numTensors, 'tensors left after the errors').to.equal(before);
    model.dispose();
  });

  it('the chunked cross entropy never holds the logits whole, and gives the plain loss and gradients (one matrix and row blocks)', async () => {
    // A vocabulary large beside the width, as Minitron's 256,000 tokens beside 3,072: the logits of 256 positions over
    // 8,000 classes are 8.2 MB, the matrix 512 kB. The chunked peak is a few chunks' logits (128 kB each) and a few
    // copies of the matrix's gradient, whatever the positions; the plain one several whole logits.
    const [count, vocab, width] = [256, 8000, 16];
    const targets = Array.from({ length: count }, (_, i) => (i * 7919) % vocab);
    const x = tf.variable(tf.randomNormal([count, width], 0, 1, 'float32', 1)) as tf.Variable<tf.Rank.R2>;
    const logitsBytes = count * vocab * 4;
    setLossChunkBytes(4 * 4 * vocab); // 4 positions a chunk
    for (const blockBytes of [null, 3000 * width * 4]) {
      setMaxWeightBlockBytes(blockBytes);
      const matrix = new VocabMatrix(vocab, width, 0.5);
      expect(matrix.blocks.length, 'blocks').to.equal(blockBytes === null ? 1 : 3);
      // The loss and its gradients for x and each block, and the most bytes held at once on the way.
      const run = async (lossOf: () => tf.Scalar) => {
        const before = tf.memory().numBytes;
        const info = await tf.profile(() => {
          const { value, grads } = tf.variableGrads(lossOf, [x, ...matrix.blocks]);
          return [value, grads[x.name], ...matrix.blocks.map((b) => grads[b.name])];
        });
        return { tensors: info.result as tf.Tensor[], peak: info.peakBytes - before };
      };
      const chunked = await run(() => matrix.projectedCrossEntropy(x, targets));
      const plain = await run(() => crossEntropy(matrix.project(x) as tf.Tensor2D, targets));
      expect(chunked.peak, `chunked peak ${chunked.peak} bytes`).to.be.below(logitsBytes / 2);
      expect(plain.peak, `plain peak ${plain.peak} bytes (logits, log-softmax, one-hot, …)`).to.be.above(3 * logitsBytes);
      expectRelClose(chunked.tensors[0].dataSync()[0], plain.tensors[0].dataSync()[0], 1e-5, 'loss');
      chunked.tensors.slice(1).forEach((g, i) => expectClose(g, plain.tensors[i + 1], 1e-6, i === 0 ? 'd loss / d x' : `d loss / d block ${i - 1}`));
      tf.dispose([...chunked.tensors, ...plain.tensors]);
      matrix.blocks.forEach((b) => b.dispose());
    }
    x.dispose();
  });

  it('a frozen output matrix (LoRA\'s base) gets no gradient product: one matMul fewer a chunk and block, the same dx', async () => {
    const [count, vocab, width] = [10, 40, 8];
    const targets = Array.from({ length: count }, (_, i) => (i * 7) % vocab);
    const x = tf.variable(tf.randomNormal([count, width], 0, 1, 'float32', 2)) as tf.Variable<tf.Rank.R2>;
    setLossChunkBytes(4 * 4 * vocab); // chunks of 4, 4 and 2 positions
    setMaxWeightBlockBytes(20 * width * 4); // two blocks
    const matrix = new VocabMatrix(vocab, width, 0.5);
    const dx = (variables: tf.Variable[]) => {
      let grad!: tf.Tensor;
      const kernels = kernelsRun(() => {
        const { value, grads } = tf.variableGrads(() => matrix.projectedCrossEntropy(x, targets), variables);
        grad = grads[x.name];
        tf.dispose([value, ...Object.values(grads).filter((g) => g !== grad)]);
      });
      return { grad, products: kernels.get('BatchMatMul') ?? 0 };
    };
    const trained = dx([x, ...matrix.blocks]);
    matrix.blocks.forEach((b) => { b.trainable = false; });
    const frozen = dx([x]);
    expect(trained.products - frozen.products, 'dW products skipped: 3 chunks × 2 blocks').to.equal(6);
    expectClose(frozen.grad, trained.grad, 0, 'd loss / d x');
    tf.dispose([trained.grad, frozen.grad, x, ...matrix.blocks]);
  });
});
