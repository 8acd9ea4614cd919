/**
 * Logits processors on one row of scores (a Float32Array over the vocabulary), in the order transformers
 * applies them: repetition penalty, no-repeat n-grams, bad words, minimum length, then the sampling warpers
 * temperature, top-k, top-p, min-p, typical-p, epsilon and eta cutoffs. Filtered entries become -Infinity.
 */

export interface ProcessorOptions {
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  /** Locally typical sampling (transformers' typical_p): the tokens closest to the expected surprise, up to this mass. */
  typicalP?: number;
  /** Truncation sampling (transformers' epsilon_cutoff): drop tokens below this probability. */
  epsilonCutoff?: number;
  /** transformers' eta_cutoff: drop tokens below min(eta, √eta·exp(−entropy)). */
  etaCutoff?: number;
  repetitionPenalty?: number;
  /** OpenAI's (and vLLM's) presence_penalty: subtracted once from the score of each token the generated text holds. */
  presencePenalty?: number;
  /** OpenAI's (and vLLM's) frequency_penalty: subtracted from a token's score as many times as the generated text holds it. */
  frequencyPenalty?: number;
  /** transformers' no_repeat_ngram_size: no n-gram of this size occurs twice in a row (prompt and pads included). */
  noRepeatNgramSize?: number;
  /** transformers' bad_words_ids: token sequences that are never completed (single tokens are never chosen). */
  badWordsIds?: number[][];
  /** EOS ids forbidden this step (min_new_tokens, min_length not yet reached). */
  minLengthEos?: number[];
  /** transformers' sequence_bias: [token ids, bias]; the bias goes to the last id where the others end the row. */
  sequenceBias?: Array<[number[], number]>;
  /** transformers' forced_eos_token_id: at the last position (row length maxLength − 1) only these ids remain. */
  forcedEosTokenId?: number | number[];
  /** transformers' exponential_decay_length_penalty [start, factor]: after start new tokens, EOS scores grow by factor^n. */
  exponentialDecayLengthPenalty?: [number, number];
  /** transformers' suppress_tokens: never chosen. */
  suppressTokens?: number[];
  /** transformers' begin_suppress_tokens: not chosen as the first new token. */
  beginSuppressTokens?: number[];
  /** The step's context, which the length-dependent processors read: the prompt's length, the longest row, the EOS ids. */
  promptLength?: number;
  maxLength?: number;
  eosTokenIds?: number[];
  doSample?: boolean;
  /** What the warpers always keep (transformers' min_tokens_to_keep: 1; beam sampling 1 + the number of EOS ids, ≥ 2). */
  minTokensToKeep?: number;
  /** A row's grammar: masks the tokens it does not allow, after the processors, before the warpers. */
  tokenMask?: { mask(scores: Float32Array): void };
}

/** CTRL's penalty: scores of tokens already present are divided by p (multiplied when negative). */
export function applyRepetitionPenalty(scores: Float32Array, seen: Iterable<number>, penalty: number): void {
  for (const id of new Set(seen)) {
    const s = scores[id];
    scores[id] = s < 0 ? s * penalty : s / penalty;
  }
}

export function applyTopK(scores: Float32Array, topK: number, minTokensToKeep = 1): void {
  if (topK <= 0) return;
  const k = Math.max(topK, minTokensToKeep);
  if (k >= scores.length) return;
  const kth = Float32Array.from(scores).sort().reverse()[k - 1];
  for (let i = 0; i < scores.length; i++) if (scores[i] < kth) scores[i] = -Infinity;
}

function softmax(scores: Float32Array): Float64Array {
  let max = -Infinity;
  for (const s of scores) if (s > max) max = s;
  const p = new Float64Array(scores.length);
  let sum = 0;
  for (let i = 0; i < scores.length; i++) sum += p[i] = Math.exp(scores[i] - max);
  for (let i = 0; i < p.length; i++) p[i] /= sum;
  return p;
}

/** Nucleus: keeps the smallest set of most likely tokens whose probability reaches topP (at least minTokensToKeep). */
export function applyTopP(scores: Float32Array, topP: number, minTokensToKeep = 1): void {
  if (topP >= 1) return;
  const p = softmax(scores);
  const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a]);
  let cumulative = 0;
  let keep = 0;
  for (const i of order) {
    keep++;
    cumulative += p[i];
    if (cumulative >= topP) break;
  }
  for (const i of order.slice(Math.max(keep, minTokensToKeep))) scores[i] = -Infinity;
}

/** The indices of the `n` highest scores (these always stay). */
function topIndices(scores: Float32Array, n: number): Set<number> {
  return new Set(Array.from(scores.keys()).sort((a, b) => scores[b] - scores[a]).slice(0, n));
}

/** Drops tokens whose probability is below minP × the top probability (the best minTokensToKeep stay). */
export function applyMinP(scores: Float32Array, minP: number, minTokensToKeep = 1): void {
  if (minP <= 0) return;
  const p = softmax(scores);
  let top = 0;
  for (const v of p) if (v > top) top = v;
  const kept = topIndices(scores, minTokensToKeep);
  for (let i = 0; i < p.length; i++) if (p[i] < minP * top && !kept.has(i)) scores[i] = -Infinity;
}

/** Drops tokens below `threshold`; the best minTokensToKeep (and any tied with the last of them) stay, as in transformers. */
function removeBelow(scores: Float32Array, p: Float64Array, threshold: number, minTokensToKeep: number): void {
  const kth = Float32Array.from(scores).sort().reverse()[Math.min(minTokensToKeep, scores.length) - 1];
  for (let i = 0; i < p.length; i++) if (p[i] < threshold && scores[i] < kth) scores[i] = -Infinity;
}

/** transformers' EpsilonLogitsWarper: tokens with probability below epsilon go. */
export function applyEpsilonCutoff(scores: Float32Array, epsilon: number, minTokensToKeep = 1): void {
  removeBelow(scores, softmax(scores), epsilon, minTokensToKeep);
}

/** transformers' EtaLogitsWarper: tokens below min(eta, √eta · exp(−entropy)) go. */
export function applyEtaCutoff(scores: Float32Array, eta: number, minTokensToKeep = 1): void {
  const p = softmax(scores);
  let entropy = 0;
  for (const v of p) if (v > 0) entropy -= v * Math.log(v);
  removeBelow(scores, p, Math.min(eta, Math.sqrt(eta) * Math.exp(-entropy)), minTokensToKeep);
}

/**
 * transformers' TypicalLogitsWarper (Meister et al. 2022): tokens ordered by how far their surprise −log p lies from the
 * entropy; the closest are kept until their probability reaches `mass` (the one that crosses it included).
 */
export function applyTypicalP(scores: Float32Array, mass: number, minTokensToKeep = 1): void {
  if (mass >= 1) return;
  const p = softmax(scores);
  let entropy = 0;
  for (const v of p) if (v > 0) entropy -= v * Math.log(v);
  const distance = Float64Array.from(p, (v) => Math.abs(-Math.log(v) - entropy));
  const order = Array.from(p.keys()).sort((a, b) => distance[a] - distance[b]);
  // Tokens before the one at which the cumulative probability reaches `mass`, then every token as close as it.
  let cumulative = 0;
  let last = 0;
  while (last < order.length - 1 && (cumulative += p[order[last]]) < mass) last++;
  const limit = distance[order[last]];
  const kept = new Set(order.slice(0, minTokensToKeep));
  for (let i = 0; i < p.length; i++) if (distance[i] > limit && !kept.has(i)) scores[i] = -Infinity;
}

/**
 * Forbids every token that would complete an n-gram already in `sequence`: those that followed an earlier occurrence
 * of its last n − 1 tokens (transformers' NoRepeatNGramLogitsProcessor).
 */
export function applyNoRepeatNgram(scores: Float32Array, sequence: readonly number[], n: number): void {
  const length = sequence.length;
  if (length + 1 < n) return;
  const start = length - (n - 1); // where the current (n − 1)-token prefix begins
  for (let i = 0; i + n <= length; i++) {
    let same = true;
    for (let j = 0; j < n - 1 && same; j++) same = sequence[i + j] === sequence[start + j];
    if (same) scores[sequence[i + n - 1]] = -Infinity;
  }
}

/**
 * Forbids the last token of every bad sequence whose other tokens end `sequence` (all of them for one-token ones):
 * transformers' NoBadWordsLogitsProcessor.
 */
export function applyBadWords(scores: Float32Array, sequence: readonly number[], badWordsIds: readonly number[][]): void {
  for (const bad of badWordsIds) {
    const prefix = bad.length - 1;
    if (prefix > sequence.length) continue;
    let matches = true;
    for (let j = 0; j < prefix && matches; j++) matches = sequence[sequence.length - prefix + j] === bad[j];
    if (matches) scores[bad[prefix]] = -Infinity;
  }
}

/**
 * OpenAI's presence and frequency penalties (vLLM's, which transformers lacks): score[j] −= frequency · count[j] +
 * presence · (count[j] > 0), counting the tokens generated so far (the prompt not counted), before the warpers.
 */
export function applyPresenceFrequencyPenalty(scores: Float32Array, generated: readonly number[], presence: number, frequency: number): void {
  const counts = new Map<number, number>();
  for (const id of generated) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [id, count] of counts) scores[id] -= frequency * count + presence;
}

/** Applies every configured processor in transformers' order, in place. */
export function processScores(scores: Float32Array, sequence: number[], options: ProcessorOptions): void {
  if (options.sequenceBias?.length) applySequenceBias(scores, sequence, options.sequenceBias);
  if (options.repetitionPenalty !== undefined && options.repetitionPenalty !== 1) {
    applyRepetitionPenalty(scores, sequence, options.repetitionPenalty);
  }
  if (options.noRepeatNgramSize) applyNoRepeatNgram(scores, sequence, options.noRepeatNgramSize);
  if (options.badWordsIds?.length) applyBadWords(scores, sequence, options.badWordsIds);
  for (const id of options.minLengthEos ?? []) scores[id] = -Infinity;
  if (options.forcedEosTokenId !== undefined && options.maxLength !== undefined && sequence.length === options.maxLength - 1) {
    const forced = Array.isArray(options.forcedEosTokenId) ? options.forcedEosTokenId : [options.forcedEosTokenId];
    scores.fill(-Infinity);
    for (const id of forced) scores[id] = 0;
  }
  if (options.exponentialDecayLengthPenalty && options.promptLength !== undefined) {
    const [start, factor] = options.exponentialDecayLengthPenalty;
    const n = sequence.length - (start + options.promptLength);
    // EOS gains |score|·(factor^n − 1) once past the start (infinite scores stay), as ExponentialDecayLengthPenalty.
    if (n > 0) for (const id of options.eosTokenIds ?? []) if (Number.isFinite(scores[id])) scores[id] += Math.fround(Math.abs(scores[id]) * (factor ** n - 1));
  }
  for (const id of options.suppressTokens ?? []) scores[id] = -Infinity;
  if (options.beginSuppressTokens && sequence.length === options.promptLength) for (const id of options.beginSuppressTokens) scores[id] = -Infinity;
  // After transformers' processors (as a custom processor runs there), before the warpers (as vLLM applies them).
  if (options.presencePenalty || options.frequencyPenalty) {
    applyPresenceFrequencyPenalty(scores, sequence.slice(options.promptLength ?? 0), options.presencePenalty ?? 0, options.frequencyPenalty ?? 0);
  }
  options.tokenMask?.mask(scores);
  if (!options.doSample) return;
  if (options.temperature !== undefined && options.temperature !== 1) {
    for (let i = 0; i < scores.length; i++) scores[i] /= options.temperature;
  }
  const keep = options.minTokensToKeep ?? 1;
  if (options.topK !== undefined) applyTopK(scores, options.topK, keep);
  if (options.topP !== undefined) applyTopP(scores, options.topP, keep);
  if (options.minP !== undefined) applyMinP(scores, options.minP, keep);
  if (options.typicalP !== undefined) applyTypicalP(scores, options.typicalP, keep);
  if (options.epsilonCutoff !== undefined && options.epsilonCutoff > 0) applyEpsilonCutoff(scores, options.epsilonCutoff, keep);
  if (options.etaCutoff !== undefined && options.etaCutoff > 0) applyEtaCutoff(scores, options.etaCutoff, keep);
}

/**
 * transformers' SequenceBiasLogitsProcessor: a one-token sequence's bias always goes to its token; a longer one's goes to
 * its last token where the row ends with the others (biases of matching sequences that share a last token add up; a
 * sequence listed twice keeps its last bias).
 */
export function applySequenceBias(scores: Float32Array, sequence: readonly number[], biases: Array<[number[], number]>): void {
  const bias = new Float32Array(scores.length);
  // transformers keys the biases by their ids: a sequence given twice takes the last bias.
  const byIds = new Map(biases.map(([ids, value]) => [ids.join(','), [ids, value] as [number[], number]]));
  for (const [ids, value] of byIds.values()) {
    const prefix = ids.length - 1;
    if (prefix > sequence.length) continue;
    let matches = true;
    for (let j = 0; j < prefix && matches; j++) matches = sequence[sequence.length - prefix + j] === ids[j];
    if (matches) bias[ids[prefix]] += value;
  }
  for (let i = 0; i < scores.length; i++) if (bias[i] !== 0) scores[i] += bias[i];
}

/** Index of the largest score (the first on ties, as torch.argmax). */
export function argmax(scores: Float32Array): number {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return best;
}

/** Draws from softmax(scores) with a uniform random number in [0, 1). */
export function sample(scores: Float32Array, uniform: number): number {
  const p = softmax(scores);
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) continue;
    cumulative += p[i];
    last = i;
    if (uniform < cumulative) return i;
  }
  return last;
}
