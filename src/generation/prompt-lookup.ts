import * as tf from '@tensorflow/tfjs';
import { KVCache } from '../../layers/kv-cache';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { argmax, processScores, ProcessorOptions } from './processors';

/**
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

export interface PromptLookupSettings {
  numTokens: number;
  maxNgram: number;
  maxNew: number;
  minNew: number;
  eos: number[];
  processors: ProcessorOptions;
  /** True when the row ends in a stop string (after each accepted token). */
  stops?: (sequence: number[]) => boolean;
  onToken?: (tokens: number[], step: number) => void;
}

/** Greedy decoding of one row with prompt lookup; returns the row, prompt included. Frees its cache. */
export async function promptLookupDecode(model: NemotronForCausalLM, prompt: number[], s: PromptLookupSettings): Promise<number[]> {
  const sequence = prompt.slice();
  const cache = new KVCache(model.config.numHiddenLayers);
  const vocab = model.config.vocabSize;
  let generated = 0;
  try {
    while (generated < s.maxNew) {
      // The cache holds every token but the last; the pass feeds the last one and the candidates.
      const candidates = lookupCandidates(sequence, s.numTokens, s.maxNgram, s.maxNew - generated - 1);
      const cached = cache.length;
      const fed = [...sequence.slice(cached), ...candidates];
      const out = model.forward({
        inputIds: [fed], positionIds: [fed.map((_, i) => cached + i)], attentionMask: [new Array<number>(cached + fed.length).fill(1)],
        pastKeyValues: cache, useCache: true, logitsToKeep: candidates.length + 1,
      });
      const logits = await out.logits.data() as Float32Array;
      out.logits.dispose();
      let finished = false;
      for (let j = 0; j <= candidates.length && !finished; j++) {
        const scores = logits.slice(j * vocab, (j + 1) * vocab);
        processScores(scores, sequence, { ...s.processors, suppressTokens: generated < s.minNew ? s.eos : [] });
        const token = argmax(scores);
        sequence.push(token);
        s.onToken?.([token], generated);
        generated++;
        finished = s.eos.includes(token) || generated >= s.maxNew || (s.stops?.(sequence) ?? false);
        if (j < candidates.length && token !== candidates[j]) break;
      }
      if (finished) break;
      cropCache(cache, sequence.length - 1);
    }
  } finally {
    cache.dispose();
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
