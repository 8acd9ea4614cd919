/**
 * Inference for the classification heads, as transformers' text-classification and token-classification pipelines
 * compute it: one text at a time (no padding), the logits turned into scores, labels from config.id2label.
 */
import * as tf from '@tensorflow/tfjs';
import { NemotronForSequenceClassification, NemotronForTokenClassification } from '../../models/nemotron/heads';
import { NemotronConfig } from '../../models/nemotron/config';
import { NemotronTokenizer } from '../tokenizer';

export type ClassificationFunction = 'sigmoid' | 'softmax' | 'none';

export interface LabelScore {
  label: string;
  score: number;
}

export interface ClassifyTextOptions {
  /**
   * Labels returned per text, best first: a number, or null for all of them. Default: the best one (the pipeline's
   * plain call).
   */
  topK?: number | null;
  /** Default as transformers: none for regression, sigmoid for multi-label or one label, softmax otherwise. */
  functionToApply?: ClassificationFunction;
}

/** The pipeline's default: none for regression, sigmoid for multi-label or a single label, softmax otherwise. */
export function defaultClassificationFunction(config: NemotronConfig): ClassificationFunction {
  if (config.problemType === 'regression') return 'none';
  if (config.problemType === 'multi_label_classification' || config.numLabels === 1) return 'sigmoid';
  return 'softmax';
}

function label(config: NemotronConfig, id: number): string {
  return config.id2label[id] ?? `LABEL_${id}`;
}

function scoresOf(logits: Float32Array, fn: ClassificationFunction): number[] {
  const values = Array.from(logits);
  if (fn === 'sigmoid') return values.map((v) => 1 / (1 + Math.exp(-v)));
  if (fn === 'softmax') {
    const max = Math.max(...values);
    const exps = values.map((v) => Math.exp(v - max));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((e) => e / total);
  }
  return values;
}

/** A text, or a pair of texts (entailment, paraphrase, …) as the pipeline takes {text, text_pair}. */
export type ClassifierInput = string | { text: string; textPair: string };

function encodeText(tokenizer: NemotronTokenizer, text: ClassifierInput, i: number): { ids: number[]; specialTokensMask: number[] } {
  const isPair = typeof text === 'object' && text !== null && typeof text.text === 'string' && typeof text.textPair === 'string';
  if (typeof text !== 'string' && !isPair) throw new Error(`texts[${i}] is neither a string nor {text, textPair} strings (got ${JSON.stringify(text)})`);
  const encoded = typeof text === 'string' ? tokenizer.encodeWithSpecialTokensMask(text) : tokenizer.encodePair(text.text, text.textPair);
  if (encoded.ids.length === 0) throw new Error(`texts[${i}] ${JSON.stringify(text)} has no tokens to classify`);
  return encoded;
}

/** transformers' pipeline("text-classification"): the labels of each text (or pair of texts) with their scores. */
export async function classifyText(model: NemotronForSequenceClassification, tokenizer: NemotronTokenizer, texts: ClassifierInput | ClassifierInput[],
  options: ClassifyTextOptions = {}): Promise<LabelScore[][]> {
  const fn = options.functionToApply ?? defaultClassificationFunction(model.config);
  if (!['sigmoid', 'softmax', 'none'].includes(fn)) throw new Error(`functionToApply must be sigmoid, softmax or none, got ${JSON.stringify(fn)}`);
  const topK = options.topK === undefined ? 1 : options.topK;
  if (topK !== null && !(Number.isInteger(topK) && topK >= 1)) throw new Error(`topK must be a positive integer or null (all labels), got ${topK}`);
  const results: LabelScore[][] = [];
  for (const [i, text] of (Array.isArray(texts) ? texts : [texts]).entries()) {
    const { ids } = encodeText(tokenizer, text, i);
    const logits = tf.tidy(() => model.forward({ inputIds: [ids] }).logits.reshape([-1]));
    const scores = scoresOf(await logits.data() as Float32Array, fn);
    logits.dispose();
    const ranked = scores.map((score, id) => ({ label: label(model.config, id), score })).sort((a, b) => b.score - a.score);
    results.push(topK === null ? ranked : ranked.slice(0, topK));
  }
  return results;
}

/** One token's label, as the token-classification pipeline reports it (aggregation "none"). */
export interface TokenEntity {
  entity: string;
  score: number;
  /** Position in the encoded ids (the template's BOS counts). */
  index: number;
  /** The token string (tokenizer.idToToken). */
  word: string;
}

/**
 * transformers' pipeline("token-classification") with aggregation "none": every token of the text but those the
 * template added, its best label and softmax score, minus the labels in `ignoreLabels` (default ["O"]). Character
 * offsets (the pipeline's start and end) are not given: they need the Rust tokenizer's offset mapping.
 */
export async function classifyTokens(model: NemotronForTokenClassification, tokenizer: NemotronTokenizer, text: string,
  options: { ignoreLabels?: string[] } = {}): Promise<TokenEntity[]> {
  const ignore = options.ignoreLabels ?? ['O'];
  const { ids, specialTokensMask } = encodeText(tokenizer, text, 0);
  const logits = tf.tidy(() => model.forward({ inputIds: [ids] }).logits.squeeze([0]));
  const data = await logits.data() as Float32Array;
  const labels = logits.shape[1]!;
  logits.dispose();
  const entities: TokenEntity[] = [];
  ids.forEach((id, index) => {
    if (specialTokensMask[index]) return;
    const scores = scoresOf(data.subarray(index * labels, (index + 1) * labels), 'softmax');
    const best = scores.indexOf(Math.max(...scores));
    const entity = label(model.config, best);
    if (!ignore.includes(entity)) entities.push({ entity, score: scores[best], index, word: tokenizer.idToToken(id) ?? '' });
  });
  return entities;
}
