import * as tf from '@tensorflow/tfjs';
import type { StepDecoder } from './decoder';
import { ProcessorOptions, processScores } from './processors';

/** Beam search settings (transformers' generate with num_beams > 1). */
export interface BeamSearchSettings {
  numBeams: number;
  /** Finished hypotheses are scored sum(log p) / generatedLength ** lengthPenalty. Default 1. */
  lengthPenalty?: number;
  /** transformers' early_stopping: false (default, its heuristic), true (stop at numBeams finished), or 'never'. */
  earlyStopping?: boolean | 'never';
  /** Hypotheses returned per prompt (≤ numBeams). Default 1. */
  numReturnSequences?: number;
}

export interface BeamSearchInputs {
  rows: number[][];
  mask: number[][];
  maxNew: number;
  minNew: number;
  eos: number[];
  pad: number;
  /** The logits processors' settings and context (resolve's); the step's min-length EOS ban is added here. */
  processors: ProcessorOptions;
  /** Whether a row (prompt and tokens) ends in a stop string: such a candidate ends as on EOS (transformers' stop_strings). */
  stops?: (sequence: number[]) => boolean;
  /** Beam sampling (transformers' do_sample with num_beams): the warpers, and uniform numbers in [0, 1). */
  sampling?: { warpers: ProcessorOptions; random: () => number };
}

export interface BeamSearchOutput {
  /** numReturnSequences rows per prompt, best first: prompt and generated tokens, filled to the longest. */
  sequences: number[][];
  /** Each returned hypothesis' score: sum of its token log-probabilities / generated length ** lengthPenalty. */
  sequencesScores: number[];
}

/** A masked-out score: transformers adds -1e9 where it rules a candidate out. */
const RULED_OUT = -1e9;

interface Hypothesis {
  tokens: number[];
  score: number;
  /** Finished (in the finished list): it ended on EOS, a stop string or at the maximum length. */
  done: boolean;
}

/** Indices of the k largest values, largest first (ties: the lower index first). */
function topK(values: ArrayLike<number>, k: number): number[] {
  const order = Array.from({ length: values.length }, (_, i) => i);
  order.sort((a, b) => values[b] - values[a] || a - b);
  return order.slice(0, k);
}

/**
 * k indices drawn without replacement from softmax(values), in the order drawn (torch.multinomial). Where fewer than
 * k have any probability left, the best of the rest complete the draw (torch would refuse the distribution).
 */
function sampleWithoutReplacement(values: Float64Array, k: number, random: () => number): number[] {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  const weights = Float64Array.from(values, (v) => Math.exp(v - max));
  const drawn: number[] = [];
  while (drawn.length < k) {
    let total = 0;
    for (const w of weights) total += w;
    if (!(total > 0)) break;
    let u = random() * total;
    let pick = -1;
    for (let i = 0; i < weights.length; i++) {
      if (weights[i] <= 0) continue;
      pick = i;
      if ((u -= weights[i]) < 0) break;
    }
    drawn.push(pick);
    weights[pick] = 0;
  }
  if (drawn.length < k) {
    const taken = new Set(drawn);
    drawn.push(...topK(values, k + drawn.length).filter((i) => !taken.has(i)).slice(0, k - drawn.length));
  }
  return drawn;
}


/**
 * transformers' beam search (GenerationMixin._beam_search, the vectorised one of transformers ≥ 4.50): each step keeps
 * the best (1 + number of EOS ids, at least 2) × numBeams continuations of the running beams by accumulated log-prob;
 * the top numBeams of them that end (EOS, a stop string, or the length limit) join the finished list, scored by length-normalised
 * log-prob; the best numBeams that do not end run on (the KV cache reordered to them). It stops when no running beam
 * can beat the worst finished one (the early-stopping heuristic), at the length limit, or as earlyStopping says.
 */
export async function beamSearch(decoder: StepDecoder, inputs: BeamSearchInputs, settings: BeamSearchSettings): Promise<BeamSearchOutput> {
  const { rows, mask, maxNew, minNew, eos, pad } = inputs;
  const numBeams = settings.numBeams;
  const lengthPenalty = settings.lengthPenalty ?? 1;
  const earlyStopping = settings.earlyStopping ?? false;
  const numReturn = settings.numReturnSequences ?? 1;
  if (!(Number.isInteger(numBeams) && numBeams >= 1)) throw new Error(`generate: numBeams must be a positive integer, got ${numBeams}`);
  if (!(Number.isInteger(numReturn) && numReturn >= 1 && numReturn <= numBeams)) {
    throw new Error(`generate: numReturnSequences must be an integer in [1, numBeams ${numBeams}], got ${numReturn}`);
  }
  if (!Number.isFinite(lengthPenalty)) throw new Error(`generate: lengthPenalty must be a finite number, got ${lengthPenalty}`);
  const batch = rows.length;
  const promptLength = rows[0].length;
  const maxLength = promptLength + maxNew;
  const vocab = decoder.vocabSize;
  const keep = Math.max(2, 1 + eos.length) * numBeams;

  // Per prompt: the running beams (the first one live, the others ruled out until the first step spreads them) and
  // the finished list, numBeams entries that start as placeholders scored -1e9.
  let running: Hypothesis[][] = rows.map(() => Array.from({ length: numBeams }, (_, k) => ({ tokens: [], score: k === 0 ? 0 : RULED_OUT, done: false })));
  const finished: Hypothesis[][] = rows.map(() => Array.from({ length: numBeams }, () => ({ tokens: [], score: RULED_OUT, done: false })));
  const improvable = rows.map(() => true);
  const beamMask = mask.flatMap((m) => Array.from({ length: numBeams }, () => m.slice()));
  try {
    for (let step = 0; step < maxNew; step++) {
      const curLength = promptLength + step;
      const flat = running.flatMap((beams, b) => beams.map((h) => [...rows[b], ...h.tokens]));
      const logits = decoder.next(flat, beamMask, step === 0);
      const logProbs = tf.tidy(() => tf.logSoftmax(logits.reshape([batch * numBeams, vocab])));
      logits.dispose();
      const data = await logProbs.data() as Float32Array;
      logProbs.dispose();

      const nextRunning: Hypothesis[][] = [];
      const sources: number[] = [];
      let anyContinues = false;
      for (let b = 0; b < batch; b++) {
        // Accumulated log-probs of every continuation of every running beam, [numBeams × vocab].
        const accumulated = new Float64Array(numBeams * vocab);
        running[b].forEach((h, k) => {
          const row = data.slice((b * numBeams + k) * vocab, (b * numBeams + k + 1) * vocab);
          processScores(row, flat[b * numBeams + k], {
            ...inputs.processors, minLengthEos: step < minNew ? eos : [],
            // Beam sampling: the warpers too, keeping at least as many tokens a beam as the search keeps per beam.
            ...(inputs.sampling ? { ...inputs.sampling.warpers, doSample: true, minTokensToKeep: Math.max(2, 1 + eos.length) } : {}),
          });
          for (let v = 0; v < vocab; v++) accumulated[k * vocab + v] = row[v] + h.score;
        });
        const picked = inputs.sampling ? sampleWithoutReplacement(accumulated, keep, inputs.sampling.random) : topK(accumulated, keep);
        const candidates = picked.map((i) => {
          const token = i % vocab;
          const beam = Math.floor(i / vocab);
          const tokens = [...running[b][beam].tokens, token];
          // transformers runs every stopping criterion on each candidate: EOS, the length limit, stop strings.
          const ends = eos.includes(token) || curLength + 1 >= maxLength || (inputs.stops?.([...rows[b], ...tokens]) ?? false);
          return { beam, tokens, score: accumulated[i], ends };
        });
        anyContinues ||= candidates.some((c) => !c.ends);
        // The best numBeams that do not end run on.
        const runOn = topK(candidates.map((c) => c.score + (c.ends ? RULED_OUT : 0)), numBeams);
        nextRunning.push(runOn.map((j) => ({ tokens: candidates[j].tokens, score: candidates[j].score + (candidates[j].ends ? RULED_OUT : 0), done: false })));
        runOn.forEach((j) => sources.push(b * numBeams + candidates[j].beam));
        // Those of the top numBeams that end join the finished list if they beat its worst.
        const full = earlyStopping === true && finished[b].every((h) => h.done);
        const merged = [...finished[b], ...candidates.map((c, j) => {
          const ended = c.ends && j < numBeams;
          let score = c.score / (curLength + 1 - promptLength) ** lengthPenalty;
          if (full) score += RULED_OUT;
          if (!improvable[b]) score += RULED_OUT;
          if (!ended) score += RULED_OUT;
          return { tokens: c.tokens, score, done: ended };
        })];
        finished[b] = topK(merged.map((h) => h.score), numBeams).map((i) => merged[i]);
      }
      running = nextRunning;
      // The cache follows the beams that run on; their masks are their prompt's, all ones since.
      decoder.reorder(sources);
      beamMask.forEach((m) => m.push(1));

      // The early-stopping heuristic: can the best running beam still beat the worst finished one?
      const nextLength = curLength + 1;
      for (let b = 0; b < batch; b++) {
        const length = earlyStopping === 'never' && lengthPenalty > 0 ? maxLength - promptLength : nextLength - promptLength;
        const bestPossible = running[b][0].score / length ** lengthPenalty;
        const worstFinished = Math.min(...finished[b].map((h) => h.score));
        improvable[b] &&= finished[b].some((h) => bestPossible > (h.done ? worstFinished : RULED_OUT));
      }
      const openBeams = !(finished.every((f) => f.every((h) => h.done)) && earlyStopping === true);
      if (!(improvable.some(Boolean) && openBeams && anyContinues)) break;
    }
  } finally {
    decoder.dispose();
  }
  // The best numReturn finished hypotheses per prompt, filled to the longest (transformers fills with pad_token_id,
  // or the first EOS id where pad_token_id is 0 or unset, or -1 without EOS).
  const chosen = finished.flatMap((f) => f.slice(0, numReturn));
  const longest = Math.max(...chosen.map((h) => h.tokens.length));
  const fill = eos.length === 0 ? -1 : pad || eos[0];
  return {
    sequences: chosen.map((h, i) => [...rows[Math.floor(i / numReturn)], ...h.tokens, ...new Array(longest - h.tokens.length).fill(fill)]),
    sequencesScores: chosen.map((h) => h.score),
  };
}
