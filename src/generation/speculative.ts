import * as tf from '@tensorflow/tfjs';
import { KVCache } from '../../layers/kv-cache';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { argmax, processScores, ProcessorOptions } from './processors';

/**
 * Speculative decoding, greedy: candidates from prompt lookup or from a draft model, checked by one forward pass.
 *
 * transformers' prompt lookup decoding (generate(prompt_lookup_num_tokens=…), PromptLookupCandidateGenerator): the
 * tokens that followed the last occurrence-in-order of the row's final n-gram (n = maxNgram down to 1) are proposed
 * as a continuation, and one forward pass over them checks them all: the longest run the model itself would have
 * chosen is accepted, plus the model's own next token. Greedy output is unchanged; where text repeats what came
 * before (editing, summarising, code) several tokens come from one pass over the weights.
 */
export function lookupCandidates(sequence: readonly number[], numTokens: number, maxNgram: number, limit: number): number[] {
  const length = sequence.length;
  const take = Math.min(numTokens, limit);
  if (take <= 0) return [];
  for (let n = Math.min(maxNgram, length - 1); n >= 1; n--) {
    const tail = sequence.slice(length - n);
    for (let start = 0; start + n < length; start++) {
      let same = true;
      for (let j = 0; j < n && same; j++) same = sequence[start + j] === tail[j];
      if (!same) continue;
      const from = start + n;
      const to = Math.min(from + take, length);
      if (from < to) return sequence.slice(from, to);
    }
  }
  return [];
}

/** Where the candidates of speculative decoding come from. */
export interface CandidateSource {
  /** Up to `limit` tokens proposed to follow `sequence` (the row so far, prompt included). */
  propose(sequence: readonly number[], limit: number): Promise<number[]>;
  /** How many of the last proposal the model accepted (for schedules that adapt). */
  accepted?(matches: number, proposed: number): void;
  /** Frees what the source holds (a draft model's cache). */
  dispose?(): void;
}

/** Prompt lookup: candidates from an earlier occurrence of the row's final n-gram (lookupCandidates). */
export function promptLookupSource(numTokens: number, maxNgram: number): CandidateSource {
  return { propose: async (sequence, limit) => lookupCandidates(sequence, numTokens, maxNgram, limit) };
}

export interface DraftModelOptions {
  /** Tokens drafted per round (transformers' num_assistant_tokens). Default 20. */
  numTokens?: number;
  /** 'constant', or 'heuristic': 2 more after a round fully accepted, 1 fewer otherwise (at least 1). Default constant. */
  schedule?: 'constant' | 'heuristic';
  /** Drafting stops early where the draft's probability of its token falls below this (transformers' 0.4; 0: never). */
  confidenceThreshold?: number;
  /** Logits processors applied to the draft's scores too, as transformers passes the main model's to the assistant. */
  processors?: ProcessorOptions;
}

/**
 * Assisted generation (transformers' assistant_model, AssistedCandidateGenerator): a smaller model of the same
 * vocabulary drafts tokens greedily, with its own KV cache, cropped to what the main model accepted each round.
 */
export function draftModelSource(draft: NemotronForCausalLM, options: DraftModelOptions = {}): CandidateSource {
  let numTokens = options.numTokens ?? 20;
  const threshold = options.confidenceThreshold ?? 0.4;
  const cache = new KVCache(draft.config.numHiddenLayers);
  // The tokens whose keys and values the draft's cache holds.
  let cachedTokens: number[] = [];
  const vocab = draft.config.vocabSize;
  return {
    async propose(sequence, limit) {
      // Keep the cache for the longest prefix the draft saw and the main model kept; feed the rest.
      let common = 0;
      while (common < cachedTokens.length && common < sequence.length - 1 && cachedTokens[common] === sequence[common]) common++;
      cropCache(cache, common);
      cachedTokens = cachedTokens.slice(0, common);
      const row = sequence.slice();
      const proposal: number[] = [];
      while (proposal.length < Math.min(numTokens, limit)) {
        const fed = row.slice(cachedTokens.length);
        const out = draft.forward({
          inputIds: [fed], positionIds: [fed.map((_, i) => cachedTokens.length + i)], attentionMask: [new Array<number>(row.length).fill(1)],
          pastKeyValues: cache, useCache: true, logitsToKeep: 1,
        });
        const scores = (await out.logits.data() as Float32Array).slice(0, vocab);
        out.logits.dispose();
        cachedTokens = row.slice();
        processScores(scores, row, options.processors ?? {});
        const token = argmax(scores);
        proposal.push(token);
        row.push(token);
        if (threshold > 0 && probability(scores, token) < threshold) break;
      }
      return proposal;
    },
    accepted(matches, proposed) {
      if (options.schedule === 'heuristic') numTokens = matches === proposed ? numTokens + 2 : Math.max(1, numTokens - 1);
    },
    dispose: () => cache.dispose(),
  };
}

/** softmax(scores)[token]. */
function probability(scores: Float32Array, token: number): number {
  let max = -Infinity;
  for (const v of scores) if (v > max) max = v;
  let total = 0;
  for (const v of scores) total += Math.exp(v - max);
  return Math.exp(scores[token] - max) / total;
}

export interface SpeculativeSettings {
  maxNew: number;
  minNew: number;
  eos: number[];
  processors: ProcessorOptions;
  /** True when the row ends in a stop string (after each accepted token). */
  stops?: (sequence: number[]) => boolean;
  onToken?: (tokens: number[], step: number) => void;
}

/**
 * Greedy decoding of one row where each forward pass of the model checks a run of candidate tokens (prompt lookup,
 * or a draft model's): the longest run the model itself would have chosen is accepted, plus its own next token, so
 * the output is plain greedy decoding's. Returns the row, prompt included. Frees its cache (and the source's).
 */
export async function speculativeDecode(model: NemotronForCausalLM, prompt: number[], source: CandidateSource, s: SpeculativeSettings): Promise<number[]> {
  const sequence = prompt.slice();
  const cache = new KVCache(model.config.numHiddenLayers);
  const vocab = model.config.vocabSize;
  let generated = 0;
  try {
    while (generated < s.maxNew) {
      // The cache holds every token but the last; the pass feeds the last one and the candidates.
      const candidates = await source.propose(sequence, s.maxNew - generated - 1);
      const cached = cache.length;
      const fed = [...sequence.slice(cached), ...candidates];
      const out = model.forward({
        inputIds: [fed], positionIds: [fed.map((_, i) => cached + i)], attentionMask: [new Array<number>(cached + fed.length).fill(1)],
        pastKeyValues: cache, useCache: true, logitsToKeep: candidates.length + 1,
      });
      const logits = await out.logits.data() as Float32Array;
      out.logits.dispose();
      let finished = false;
      let matches = 0;
      for (let j = 0; j <= candidates.length && !finished; j++) {
        const scores = logits.slice(j * vocab, (j + 1) * vocab);
        processScores(scores, sequence, { ...s.processors, minLengthEos: generated < s.minNew ? s.eos : [] });
        const token = argmax(scores);
        sequence.push(token);
        s.onToken?.([token], generated);
        generated++;
        finished = s.eos.includes(token) || generated >= s.maxNew || (s.stops?.(sequence) ?? false);
        if (j < candidates.length && token !== candidates[j]) break;
        if (j < candidates.length) matches++;
      }
      source.accepted?.(matches, candidates.length);
      if (finished) break;
      cropCache(cache, sequence.length - 1);
    }
  } finally {
    cache.dispose();
    source.dispose?.();
  }
  return sequence;
}

/** Keeps the first `length` positions of every layer (transformers' DynamicCache.crop). */
function cropCache(cache: KVCache, length: number): void {
  if (cache.length <= length) return;
  for (let layer = 0; layer < cache.numLayers; layer++) {
    const [keys, values] = [cache.keys[layer]!, cache.values[layer]!];
    const [b, h, , d] = keys.shape;
    cache.replace(layer, tf.slice(keys, [0, 0, 0, 0], [b, h, length, d]), tf.slice(values, [0, 0, 0, 0], [b, h, length, d]));
  }
}
