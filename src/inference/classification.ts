/**
 * Inference for the classification heads, as transformers' text-classification and token-classification pipelines
 * compute it: one text at a time (no padding), the logits turned into scores, labels from config.id2label.
 */
import * as tf from '@tensorflow/tfjs';
import { NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification } from '../../models/nemotron/heads';
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
  /** The token's [start, end) in the text (UTF-16 indices: text.slice(start, end)). */
  start: number;
  end: number;
}

/** Adjacent tokens (or words) of one entity, as the token-classification pipeline groups them. */
export interface EntityGroup {
  /** The label without its B-/I- prefix. */
  entityGroup: string;
  /** The mean of the tokens' (or words') scores. */
  score: number;
  /** The tokens decoded together (transformers' convert_tokens_to_string of their strings). */
  word: string;
  start: number;
  end: number;
}

export type AggregationStrategy = 'none' | 'simple' | 'first' | 'average' | 'max';

export interface ClassifyTokensOptions {
  /** Labels not reported (default ["O"]); with aggregation, entity groups of these labels. */
  ignoreLabels?: string[];
  /**
   * "none" (default): every token's label. "simple": adjacent tokens grouped where their labels name the same entity
   * and the later one does not begin one (B-X, I-X, I-X → X; B-X, B-X → X, X), as transformers' group_entities.
   * "first", "average", "max": the tokens of a word first take one label (the first token's, the mean scores' best, the
   * most confident token's), then words are grouped as "simple" groups tokens. A token continues a word where the
   * character before it is not a space (transformers' heuristic for vocabularies without a continuing-subword prefix),
   * or where its piece has the vocabulary's continuing-subword prefix.
   */
  aggregationStrategy?: AggregationStrategy;
}

/** The label's B/I part and entity (a label without B-/I- counts as a continuation, as transformers' get_tag). */
function tagOf(label: string): [string, string] {
  if (label.startsWith('B-')) return ['B', label.slice(2)];
  if (label.startsWith('I-')) return ['I', label.slice(2)];
  return ['I', label];
}

/** A token (or word) before grouping: its label scores and where it stands. */
interface Scored {
  word: string;
  scores: number[];
  start: number;
  end: number;
  index: number;
  isSubword: boolean;
}

/** transformers' group_entities: runs of one entity, a B- label starting a new run. */
function groupEntities(entities: Array<{ entity: string; score: number; word: string; start: number; end: number }>, tokenizer: NemotronTokenizer): EntityGroup[] {
  const runs: Array<typeof entities> = [];
  for (const e of entities) {
    const [bi, tag] = tagOf(e.entity);
    const last = runs[runs.length - 1];
    if (last && tagOf(last[last.length - 1].entity)[1] === tag && bi !== 'B') last.push(e);
    else runs.push([e]);
  }
  return runs.map((run) => ({
    entityGroup: tagOf(run[0].entity)[1],
    score: Math.fround(run.reduce((sum, e) => sum + e.score, 0) / run.length),
    word: tokenizer.tokensToString(run.map((e) => e.word)),
    start: run[0].start,
    end: run[run.length - 1].end,
  }));
}

/** transformers' aggregate_word: the word's tokens joined, one label for them all. */
function aggregateWord(tokens: Scored[], strategy: 'first' | 'average' | 'max', config: NemotronConfig, tokenizer: NemotronTokenizer) {
  let scores: number[];
  if (strategy === 'first') scores = tokens[0].scores;
  else if (strategy === 'max') scores = tokens.reduce((best, t) => (Math.max(...t.scores) > Math.max(...best.scores) ? t : best)).scores;
  else scores = tokens[0].scores.map((_, k) => Math.fround(tokens.reduce((sum, t) => sum + t.scores[k], 0) / tokens.length));
  const best = scores.indexOf(Math.max(...scores));
  return {
    entity: label(config, best), score: scores[best], word: tokenizer.tokensToString(tokens.map((t) => t.word)),
    start: tokens[0].start, end: tokens[tokens.length - 1].end,
  };
}

/**
 * transformers' pipeline("token-classification"): every token of the text but those the template added, its best
 * label and softmax score and its characters in the text (tokenizer.encodeWithOffsets), minus the labels in
 * `ignoreLabels` (default ["O"]); with an aggregation strategy, entity groups instead (see ClassifyTokensOptions).
 */
export async function classifyTokens(model: NemotronForTokenClassification, tokenizer: NemotronTokenizer, text: string,
  options?: ClassifyTokensOptions & { aggregationStrategy?: 'none' }): Promise<TokenEntity[]>;
export async function classifyTokens(model: NemotronForTokenClassification, tokenizer: NemotronTokenizer, text: string,
  options: ClassifyTokensOptions & { aggregationStrategy: Exclude<AggregationStrategy, 'none'> }): Promise<EntityGroup[]>;
export async function classifyTokens(model: NemotronForTokenClassification, tokenizer: NemotronTokenizer, text: string,
  options: ClassifyTokensOptions = {}): Promise<TokenEntity[] | EntityGroup[]> {
  const strategy = options.aggregationStrategy ?? 'none';
  if (!['none', 'simple', 'first', 'average', 'max'].includes(strategy)) {
    throw new Error(`aggregationStrategy must be "none", "simple", "first", "average" or "max", got ${JSON.stringify(strategy)}`);
  }
  const ignore = options.ignoreLabels ?? ['O'];
  if (typeof text !== 'string') throw new Error(`classifyTokens: expected a string, got ${JSON.stringify(text)}`);
  const { ids, offsets, specialTokensMask } = tokenizer.encodeWithOffsets(text);
  if (ids.length === 0) throw new Error(`classifyTokens: ${JSON.stringify(text)} has no tokens to classify`);
  const logits = tf.tidy(() => model.forward({ inputIds: [ids] }).logits.squeeze([0]));
  const data = await logits.data() as Float32Array;
  const labels = logits.shape[1]!;
  logits.dispose();
  const prefix = tokenizer.continuingSubwordPrefix;
  const tokens: Scored[] = [];
  ids.forEach((id, index) => {
    if (specialTokensMask[index]) return;
    const [start, end] = offsets[index];
    let word = tokenizer.idToToken(id) ?? '';
    const wordRef = text.slice(start, end);
    // A BPE with a continuing-subword prefix marks word pieces; otherwise transformers looks at the character before.
    let isSubword = prefix ? word.length !== wordRef.length : start > 0 && !text.slice(start - 1, start + 1).includes(' ');
    if (id === tokenizer.unkTokenId) {
      word = wordRef;
      isSubword = false;
    }
    tokens.push({ word, scores: scoresOf(data.subarray(index * labels, (index + 1) * labels), 'softmax'), start, end, index, isSubword });
  });
  if (strategy === 'none' || strategy === 'simple') {
    const entities = tokens.map((t) => {
      const best = t.scores.indexOf(Math.max(...t.scores));
      return { entity: label(model.config, best), score: Math.fround(t.scores[best]), index: t.index, word: t.word, start: t.start, end: t.end };
    });
    if (strategy === 'none') return entities.filter((e) => !ignore.includes(e.entity));
    return groupEntities(entities, tokenizer).filter((g) => !ignore.includes(g.entityGroup));
  }
  const words: Scored[][] = [];
  for (const t of tokens) {
    if (words.length && t.isSubword) words[words.length - 1].push(t);
    else words.push([t]);
  }
  const wordEntities = words.map((w) => aggregateWord(w, strategy, model.config, tokenizer));
  return groupEntities(wordEntities, tokenizer).filter((g) => !ignore.includes(g.entityGroup));
}

/** A span of the context as answerQuestion reports it. */
export interface AnswerSpan {
  /** The context's text of the span: context.slice(start, end). */
  answer: string;
  /** P(start) · P(end), each a softmax over the context's tokens (summed over spans that give the same answer). */
  score: number;
  /** The span's characters in the context (UTF-16 indices). */
  start: number;
  end: number;
  /** Token positions of the span in its window's encoded pair (inclusive; the best of the spans that give this answer). */
  startToken: number;
  endToken: number;
}

/**
 * The best answer spans (at most `maxAnswerLength` tokens, end ≥ start, both in the context) of `startLogits` and
 * `endLogits`, as transformers' question-answering pipeline (4.x) decodes them: the tokens outside the context masked,
 * each softmax over the rest, a span scored by the product of its start's and end's probabilities, best first.
 */
export function bestSpans(startLogits: ArrayLike<number>, endLogits: ArrayLike<number>, inContext: boolean[],
  options: { topK?: number; maxAnswerLength?: number } = {}): Array<{ start: number; end: number; score: number }> {
  const topK = options.topK ?? 1;
  const maxLength = options.maxAnswerLength ?? 15;
  if (!(Number.isInteger(topK) && topK >= 1)) throw new Error(`topK must be a positive integer, got ${topK}`);
  if (!(Number.isInteger(maxLength) && maxLength >= 1)) throw new Error(`maxAnswerLength must be a positive integer, got ${maxLength}`);
  if (!inContext.some(Boolean)) throw new Error('bestSpans: no token is in the context');
  const probabilities = (logits: ArrayLike<number>) => {
    const kept = Array.from(logits, (v, i) => (inContext[i] ? v : -Infinity));
    const max = Math.max(...kept);
    const exps = kept.map((v) => Math.exp(v - max));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((e) => e / total);
  };
  const [start, end] = [probabilities(startLogits), probabilities(endLogits)];
  const spans: Array<{ start: number; end: number; score: number }> = [];
  for (let s = 0; s < start.length; s++) {
    if (!inContext[s]) continue;
    for (let e = s; e < Math.min(end.length, s + maxLength); e++) if (inContext[e]) spans.push({ start: s, end: e, score: start[s] * end[e] });
  }
  return spans.sort((a, b) => b.score - a.score || a.start - b.start || a.end - b.end).slice(0, topK);
}

export interface AnswerQuestionOptions {
  /** Answers returned. Default 1. */
  topK?: number;
  /** The longest answer, in tokens. Default 15. */
  maxAnswerLength?: number;
  /** Widen each span to whole words (the Rust encoding's words). Default true. */
  alignToWords?: boolean;
  /** Tokens of a window (question, context and specials); longer contexts run in several. Default min(model_max_length, 384). */
  maxSeqLen?: number;
  /** Context tokens two consecutive windows share. Default min(maxSeqLen / 2, 128). */
  docStride?: number;
}

/**
 * transformers 4's pipeline("question-answering") (transformers 5 dropped it): the question and the context as a pair
 * (as tokenizer(question, context)), a context too long for maxSeqLen cut into overlapping windows (docStride tokens
 * shared, as the tokenizer's overflow cuts them), the best spans of each window (bestSpans, over topK × 2 + 10
 * candidates when aligning to words), each widened to whole words of the window (alignToWords) or kept to its tokens,
 * as characters of the context; spans that give the same answer (case aside) have their scores summed.
 */
export async function answerQuestion(model: NemotronForQuestionAnswering, tokenizer: NemotronTokenizer, question: string, context: string,
  options: AnswerQuestionOptions = {}): Promise<AnswerSpan[]> {
  const topK = options.topK ?? 1;
  const alignToWords = options.alignToWords ?? true;
  const maxSeqLen = options.maxSeqLen ?? Math.min(tokenizer.modelMaxLength ?? 384, 384);
  const docStride = options.docStride ?? Math.min(Math.floor(maxSeqLen / 2), 128);
  if (!Number.isInteger(maxSeqLen) || maxSeqLen < 2) throw new Error(`answerQuestion: maxSeqLen must be an integer ≥ 2, got ${maxSeqLen}`);
  if (!Number.isInteger(docStride) || docStride < 0 || docStride > maxSeqLen) throw new Error(`answerQuestion: docStride must be an integer in [0, maxSeqLen ${maxSeqLen}], got ${docStride}`);
  const questionIds = tokenizer.encode(question, { addSpecialTokens: false });
  const alone = tokenizer.encodeWithOffsets(context);
  const plain = alone.ids.flatMap((_, i) => (alone.specialTokensMask[i] ? [] : [i]));
  if (plain.length === 0) throw new Error('answerQuestion: the context has no tokens');
  const contextIds = plain.map((i) => alone.ids[i]);
  // The template around the pair: specials before the question, between the two, after the context.
  const [before, , between, , after] = tokenizer.pairTemplateParts(question, context, questionIds, contextIds).map(([ids]) => ids);
  const room = maxSeqLen - questionIds.length - before.length - between.length - after.length;
  if (room < 1) throw new Error(`answerQuestion: the question (${questionIds.length} tokens) leaves no room for the context in a window of maxSeqLen ${maxSeqLen} tokens`);
  if (contextIds.length > room && docStride >= room) {
    throw new Error(`answerQuestion: docStride ${docStride} must be smaller than the ${room} context tokens a window of maxSeqLen ${maxSeqLen} holds`);
  }
  const words = alignToWords ? tokenizer.wordIds(contextIds) : [];
  const answers: AnswerSpan[] = [];
  // Windows of the context as the tokenizer's overflow cuts them: `room` tokens every room - docStride.
  for (let first = 0; ; first += room - docStride) {
    const last = Math.min(contextIds.length, first + room);
    const window = contextIds.slice(first, last);
    const ids = [...before, ...questionIds, ...between, ...window, ...after];
    const inContext = ids.map((_, i) => i >= before.length + questionIds.length + between.length && i < ids.length - after.length);
    const offset = before.length + questionIds.length + between.length - first; // pair position → context token index
    const [startTensor, endTensor] = tf.tidy(() => {
      const out = model.forward({ inputIds: [ids] });
      return [out.startLogits.reshape([-1]), out.endLogits.reshape([-1])];
    });
    const [startLogits, endLogits] = [await startTensor.data(), await endTensor.data()];
    tf.dispose([startTensor, endTensor]);
    const charSpan = (s: number, e: number): [number, number] => {
      let [from, to] = [s - offset, e - offset];
      if (alignToWords) {
        // The words' characters within this window (a word the window cuts keeps only its tokens here).
        while (from > first && words[from - 1] === words[from]) from--;
        while (to < last - 1 && words[to + 1] === words[to]) to++;
      }
      return [alone.offsets[plain[from]][0], alone.offsets[plain[to]][1]];
    };
    for (const { start, end, score } of bestSpans(startLogits, endLogits, inContext, { topK: alignToWords ? topK * 2 + 10 : topK, maxAnswerLength: options.maxAnswerLength })) {
      const [from, to] = charSpan(start, end);
      const answer = context.slice(from, to);
      const same = answers.find((a) => a.answer.toLowerCase() === answer.toLowerCase());
      if (same) same.score += score;
      else answers.push({ answer, score, start: from, end: to, startToken: start, endToken: end });
    }
    if (last === contextIds.length) break;
  }
  return answers.sort((a, b) => b.score - a.score).slice(0, topK);
}
