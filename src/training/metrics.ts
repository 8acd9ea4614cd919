/**
 * Evaluation metrics of the classification tasks, beside the loss: what a transformers user writes as
 * compute_metrics — accuracy for sequence classification (every label right, for multi-label), accuracy over the
 * labelled tokens for token classification, exact span matches for question answering.
 */
import * as tf from '@tensorflow/tfjs';
import { HeadInputs } from '../../models/nemotron/heads';
import { Example, TaskName, collate, epochBatches } from './data';

/** The outputs of a head that metrics read (the rest, tensors too, are disposed). */
export interface HeadOutputs {
  logits?: tf.Tensor;
  startLogits?: tf.Tensor;
  endLogits?: tf.Tensor;
}

/** What metrics need of a model: its loss and a forward with the head's outputs. */
export interface EvaluableModel {
  computeLoss(inputs: HeadInputs): tf.Scalar;
  forward(inputs: HeadInputs): HeadOutputs;
  readonly config: { numLabels: number };
}

export interface EvalMetrics {
  /** Mean loss per example (batches weighted by their examples, as the Trainer's evaluation). */
  loss: number;
  examples: number;
  /** Sequence classification (not regression): right predictions / examples (multi-label: all labels right). */
  accuracy?: number;
  /** Token classification: right labels / labelled tokens (label ≠ -100). */
  tokenAccuracy?: number;
  /** Question answering: examples whose most likely start and end are both the gold ones. */
  exactMatch?: number;
}

function argmaxRows(data: Float32Array, width: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < data.length / width; r++) {
    let best = 0;
    for (let c = 1; c < width; c++) if (data[r * width + c] > data[r * width + best]) best = c;
    out.push(best);
  }
  return out;
}

/** Loss and the task's metric over `examples` (batched, no gradients). */
export async function evaluateExamples(model: EvaluableModel, examples: Example[], task: TaskName,
  options: { batchSize?: number; padTokenId?: number } = {}): Promise<EvalMetrics> {
  if (examples.length === 0) throw new Error('No evaluation examples');
  let loss = 0;
  let right = 0;
  let counted = 0;
  for (const batch of epochBatches(examples, options.batchSize ?? 8, 0, 0, false)) {
    const inputs = collate(batch, task, options.padTokenId ?? 0);
    const lossTensor = model.computeLoss(inputs);
    loss += (await lossTensor.data())[0] * batch.length;
    lossTensor.dispose();
    if (task === 'causal-lm' || (task === 'sequence-classification' && model.config.numLabels === 1)) continue;
    const { labels, startPositions, endPositions, ...plain } = inputs;
    const out = model.forward({ ...plain, useCache: false });
    const tensors = Object.values(out as Record<string, unknown>).filter((v): v is tf.Tensor => v instanceof tf.Tensor);
    try {
      if (task === 'sequence-classification') {
        const logits = await out.logits!.data() as Float32Array;
        const width = model.config.numLabels;
        batch.forEach((e, i) => {
          const row = logits.subarray(i * width, (i + 1) * width);
          // Multi-label: a label is predicted where its logit is positive (sigmoid > 0.5).
          const ok = Array.isArray(e.label) ? e.label.every((l, c) => (row[c] > 0) === (l > 0.5)) : argmaxRows(row, width)[0] === e.label;
          if (ok) right++;
          counted++;
        });
      } else if (task === 'token-classification') {
        const logits = await out.logits!.data() as Float32Array;
        const width = model.config.numLabels;
        const predicted = argmaxRows(logits, width);
        const seq = (labels as number[][])[0].length;
        (labels as number[][]).forEach((row, b) => row.forEach((l, t) => {
          if (l === -100) return;
          if (predicted[b * seq + t] === l) right++;
          counted++;
        }));
      } else {
        const seq = (inputs.inputIds as number[][])[0].length;
        const starts = argmaxRows(await out.startLogits!.data() as Float32Array, seq);
        const ends = argmaxRows(await out.endLogits!.data() as Float32Array, seq);
        batch.forEach((e, i) => {
          if (starts[i] === e.start && ends[i] === e.end) right++;
          counted++;
        });
      }
    } finally {
      tf.dispose(tensors);
    }
  }
  const metrics: EvalMetrics = { loss: loss / examples.length, examples: examples.length };
  if (counted > 0) {
    const share = right / counted;
    if (task === 'sequence-classification') metrics.accuracy = share;
    else if (task === 'token-classification') metrics.tokenAccuracy = share;
    else if (task === 'question-answering') metrics.exactMatch = share;
  }
  return metrics;
}

/** What the sliding-window perplexity needs of a causal LM. */
export interface CausalLossModel {
  computeLoss(inputs: HeadInputs): tf.Scalar;
  readonly config: { maxSequenceLength: number };
}

export interface SlidingWindowPerplexity {
  /** Σ NLL / predicted tokens (natural log). */
  loss: number;
  perplexity: number;
  /** Tokens predicted: all but the first, less each window's first token where stride = maxLength. */
  tokens: number;
  windows: number;
}

/**
 * Perplexity of a text longer than the model's context, as transformers' "Perplexity of fixed-length models" guide
 * computes it: windows of `maxLength` tokens every `stride` tokens, each predicting only the tokens no earlier window
 * did (its other labels -100), so that every prediction has up to maxLength - stride tokens of context. The total is
 * each window's mean loss times the labels it counts after the shift (the guide's own count is one short for every
 * window after the first), over the tokens predicted.
 */
export async function slidingWindowPerplexity(model: CausalLossModel, ids: number[], options: { maxLength: number; stride: number }): Promise<SlidingWindowPerplexity> {
  const { maxLength, stride } = options;
  if (!Number.isInteger(maxLength) || maxLength < 2) throw new Error(`slidingWindowPerplexity: maxLength must be an integer ≥ 2, got ${maxLength}`);
  if (maxLength > model.config.maxSequenceLength) throw new Error(`slidingWindowPerplexity: maxLength ${maxLength} is longer than the model's context (${model.config.maxSequenceLength})`);
  if (!Number.isInteger(stride) || stride < 1 || stride > maxLength) throw new Error(`slidingWindowPerplexity: stride must be an integer in [1, maxLength ${maxLength}], got ${stride}`);
  if (ids.length < 2) throw new Error(`slidingWindowPerplexity: ${ids.length} token(s): at least two are needed to predict one`);
  let nll = 0;
  let tokens = 0;
  let windows = 0;
  let previousEnd = 0;
  for (let begin = 0; begin < ids.length; begin += stride) {
    const end = Math.min(begin + maxLength, ids.length);
    const window = ids.slice(begin, end);
    // Labels only on the tokens past the previous window's end.
    const fresh = end - previousEnd;
    const labels = window.map((id, i) => (i < window.length - fresh ? -100 : id));
    const counted = labels.slice(1).filter((l) => l !== -100).length;
    if (counted > 0) {
      const loss = model.computeLoss({ inputIds: [window], labels: [labels] });
      nll += (await loss.data())[0] * counted;
      loss.dispose();
      tokens += counted;
    }
    windows++;
    previousEnd = end;
    if (end === ids.length) break;
  }
  return { loss: nll / tokens, perplexity: Math.exp(nll / tokens), tokens, windows };
}
