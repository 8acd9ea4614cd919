import * as tf from '@tensorflow/tfjs';
import { KVCache } from '../../layers/kv-cache';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { NemotronHForCausalLM, type NemotronHState, type NemotronHSteps, cloneState, disposeState, disposeSteps, stateLength } from '../../models/nemotron_h/model';
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
 * One row run through a model a piece at a time, what speculative decoding needs of it: feed tokens after those it
 * holds and read the last positions' logits, and go back to fewer tokens. A Nemotron model's KV cache is cropped; a
 * NemotronH model's recurrent state cannot be, so it is marked (its tensors kept, which copies nothing) and a rewind
 * restores the mark and feeds the tokens from there to the kept length again.
 */
export interface SequenceRunner {
  readonly vocabSize: number;
  /** Tokens the runner holds. */
  readonly length: number;
  /** Feeds `tokens` after those it holds; the logits of the last `keep` positions, flat ([keep × vocab]). */
  feed(tokens: number[], keep: number): Promise<Float32Array>;
  /** Remembers this point: a rewind may go back to it, or anywhere after it. */
  mark(): void;
  /** Keeps the first `length` tokens only (of `sequence`, the row it was fed: a rewind may feed some again). */
  rewind(length: number, sequence: readonly number[]): Promise<void>;
  dispose(): void;
}

/** A runner over a Nemotron model's KV cache (positions count from the first token it holds). */
function nemotronRunner(model: NemotronForCausalLM): SequenceRunner {
  const cache = new KVCache(model.config.numHiddenLayers);
  return {
    vocabSize: model.config.vocabSize,
    get length() { return cache.length; },
    async feed(tokens, keep) {
      const held = cache.length;
      const out = model.forward({
        inputIds: [tokens], positionIds: [tokens.map((_, i) => held + i)], attentionMask: [new Array<number>(held + tokens.length).fill(1)],
        pastKeyValues: cache, useCache: true, logitsToKeep: keep,
      });
      const logits = await out.logits.data() as Float32Array;
      out.logits.dispose();
      return logits;
    },
    mark() {},
    async rewind(length) { cropCache(cache, length); },
    dispose: () => cache.dispose(),
  };
}

/**
 * A runner over a NemotronH model's state (one token: its decoding step; more: a pass continuing the state). The first
 * `promptLength` tokens are the prompt, the rest decoding steps (which transformers' step takes without the prompt
 * pass's Δt clamp).
 */
function nemotronHRunner(model: NemotronHForCausalLM, promptLength: number): SequenceRunner {
  let state: Partial<NemotronHState> = {};
  let marked: NemotronHState | null = null;
  // The steps of the pass fed right after the mark: a rewind within them rebuilds the state from the mark.
  let steps: NemotronHSteps | null = null;
  const held = () => (state.layers?.length ? stateLength(state as NemotronHState) : 0);
  const dropSteps = () => {
    if (steps) disposeSteps(steps);
    steps = null;
  };
  const runner: SequenceRunner = {
    vocabSize: model.config.vocabSize,
    get length() { return held(); },
    async feed(tokens, keep) {
      // The tokens after the prompt stand for decoding steps: taken as the step takes them (Δt unclamped).
      const decodingFrom = Math.max(0, promptLength - held());
      // The first pass after the mark keeps its steps (later ones, onwards from it, leave them usable).
      const afterMark = marked !== null && held() === stateLength(marked) && steps === null;
      let logits: tf.Tensor;
      if (held() > 0 && decodingFrom === 0 && tokens.length === 1 && keep === 1 && !afterMark) {
        logits = model.step(tokens, state as NemotronHState);
      } else {
        const out = model.forward({ inputIds: [tokens], logitsToKeep: keep, decodingFrom, keepSteps: afterMark }, state);
        logits = out.logits;
        if (afterMark) steps = out.steps ?? null;
      }
      const values = await logits.data() as Float32Array;
      logits.dispose();
      return values;
    },
    mark() {
      if (marked) disposeState(marked);
      dropSteps();
      marked = held() > 0 ? cloneState(state as NemotronHState) : null;
    },
    async rewind(length, sequence) {
      if (length === held()) return;
      const from = marked ? stateLength(marked) : 0;
      if (length < from || length > held()) throw new Error(`SequenceRunner: cannot go back to ${length} tokens (it holds ${held()}, marked at ${from})`);
      if (marked && steps && length - from <= steps.length) {
        // The recurrence over the kept steps: no pass of the model again.
        const rebuilt = model.rewindState(marked, state as NemotronHState, steps, length - from);
        disposeState(state);
        state = rebuilt;
        dropSteps();
        return;
      }
      disposeState(state);
      dropSteps();
      state = marked ? cloneState(marked) : {};
      if (length > from) await runner.feed(sequence.slice(from, length), 1);
    },
    dispose() {
      disposeState(state);
      dropSteps();
      if (marked) disposeState(marked);
    },
  };
  return runner;
}

/** The runner of a model of either family, for a row whose first `promptLength` tokens are the prompt. */
export function sequenceRunner(model: NemotronForCausalLM | NemotronHForCausalLM, promptLength: number): SequenceRunner {
  return model instanceof NemotronHForCausalLM ? nemotronHRunner(model, promptLength) : nemotronRunner(model);
}

/**
 * Assisted generation (transformers' assistant_model, AssistedCandidateGenerator): a smaller model of the same
 * vocabulary (either family) drafts tokens greedily over what it keeps, gone back each round to what the main model
 * accepted.
 */
export function draftModelSource(draft: NemotronForCausalLM | NemotronHForCausalLM, options: DraftModelOptions = {}): CandidateSource {
  let numTokens = options.numTokens ?? 20;
  const threshold = options.confidenceThreshold ?? 0.4;
  // Made at the first proposal: the row it is given then is the prompt.
  let runner: SequenceRunner | null = null;
  // The tokens the draft was fed (its proposals included).
  let fedTokens: number[] = [];
  return {
    async propose(sequence, limit) {
      runner ??= sequenceRunner(draft, sequence.length);
      // Keep what the draft holds of the longest prefix it saw and the main model kept (one token at least to feed).
      let common = 0;
      while (common < fedTokens.length && common < sequence.length - 1 && fedTokens[common] === sequence[common]) common++;
      await runner.rewind(Math.min(common, runner.length), fedTokens);
      fedTokens = fedTokens.slice(0, runner.length);
      runner.mark();
      const row = sequence.slice();
      const proposal: number[] = [];
      while (proposal.length < Math.min(numTokens, limit)) {
        const scores = (await runner.feed(row.slice(runner.length), 1)).slice(0, draft.config.vocabSize);
        fedTokens = row.slice();
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
    dispose: () => runner?.dispose(),
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
 * the output is plain greedy decoding's. Returns the row, prompt included. Frees what it kept (and the source's).
 */
export async function speculativeDecode(model: NemotronForCausalLM | NemotronHForCausalLM, prompt: number[], source: CandidateSource, s: SpeculativeSettings): Promise<number[]> {
  const sequence = prompt.slice();
  const runner = sequenceRunner(model, prompt.length);
  const vocab = runner.vocabSize;
  let generated = 0;
  try {
    // A recurrent state: the prompt but its last token first, so that each round's pass starts from a mark a rewind
    // comes back to (a KV cache is cropped instead: the prompt goes in the first round's pass).
    if (model instanceof NemotronHForCausalLM && prompt.length > 1) await runner.feed(prompt.slice(0, -1), 1);
    while (generated < s.maxNew) {
      // The runner holds every token but the last; the pass feeds the last one and the candidates.
      const candidates = await source.propose(sequence, s.maxNew - generated - 1);
      runner.mark();
      const logits = await runner.feed([...sequence.slice(runner.length), ...candidates], candidates.length + 1);
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
      // Back to every token but the last (the candidates the model did not choose dropped).
      await runner.rewind(sequence.length - 1, sequence);
    }
  } finally {
    runner.dispose();
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
