import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { KVCache } from '../../layers/kv-cache';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { IntMatrixLike, positionsFromMask, readIntRows } from '../tensors';
import { beamSearch } from './beam-search';
import { argmax, processScores, sample } from './processors';

export interface GenerateOptions {
  /** New tokens to generate (default 20 when maxLength is not given either). */
  maxNewTokens?: number;
  /** Total length, prompt included (transformers' max_length); maxNewTokens wins when both are given. */
  maxLength?: number;
  minNewTokens?: number;
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  /** Seed of the sampler: the same seed gives the same tokens on the same backend. */
  seed?: number | string;
  /** One or several; default from generation_config.json, else config.json. null: never stop on EOS. */
  eosTokenId?: number | number[] | null;
  /** What finished rows are padded with (default pad_token_id, else the first EOS id). */
  padTokenId?: number;
  /** 1 = token, 0 = left padding; [batch, promptLength]. */
  attentionMask?: IntMatrixLike;
  /** Return the processed logits of each step. */
  outputScores?: boolean;
  /** Reuse keys and values of earlier tokens (default). false recomputes the whole sequence each step. */
  useCache?: boolean;
  /** Called with the new token of every row as soon as the step has chosen them. */
  onToken?: (tokens: number[], step: number) => void;
  /** Beam search with this many beams (> 1; generate() only, not streamed, not sampled). */
  numBeams?: number;
  /** Beam search: finished hypotheses scored sum(log p) / generated length ** lengthPenalty. Default 1. */
  lengthPenalty?: number;
  /** Beam search: transformers' early_stopping (false: its heuristic; true; 'never'). Default false. */
  earlyStopping?: boolean | 'never';
  /** Beam search: hypotheses returned per prompt, best first (≤ numBeams). Default 1. */
  numReturnSequences?: number;
}

export interface GenerateOutput {
  /** Prompt and generated tokens of every row, as transformers returns them. */
  sequences: number[][];
  /** With outputScores: [step][row] → processed logits over the vocabulary. */
  scores?: Float32Array[][];
  /** Beam search: each returned hypothesis' length-normalised log-probability. */
  sequencesScores?: number[];
}

export interface GenerationStep {
  step: number;
  /** The token chosen for each row (padTokenId for rows that already finished). */
  tokens: number[];
  /** Rows still generating after this step. */
  finished: boolean[];
  scores?: Float32Array[];
}

interface Resolved {
  rows: number[][];
  mask: number[][];
  maxNew: number;
  minNew: number;
  eos: number[];
  pad: number;
}

function check(condition: boolean, message: string): void {
  if (!condition) throw new Error(message);
}

function readPrompt(inputIds: IntMatrixLike): number[][] {
  const empty = inputIds instanceof tf.Tensor ? inputIds.size === 0
    : inputIds.length === 0 || (Array.isArray(inputIds[0]) && inputIds[0].length === 0);
  if (empty) throw new Error('generate: the prompt is empty; give at least one token (e.g. the BOS token)');
  return readIntRows(inputIds, 'inputIds');
}

/** Validates the request and fills in defaults from the model's configs. */
function resolve(model: NemotronForCausalLM, inputIds: IntMatrixLike, o: GenerateOptions): Resolved {
  const config = model.config;
  const rows = readPrompt(inputIds);
  const promptLength = rows[0].length;
  const mask = o.attentionMask !== undefined ? readIntRows(o.attentionMask, 'attentionMask') : rows.map((r) => r.map(() => 1));
  check(mask.length === rows.length && mask[0].length === promptLength,
    `generate: attentionMask has shape [${mask.length}, ${mask[0].length}], expected [${rows.length}, ${promptLength}]`);
  let maxNew = o.maxNewTokens ?? (o.maxLength !== undefined ? o.maxLength - promptLength : 20);
  check(Number.isInteger(maxNew) && maxNew > 0,
    `generate: maxNewTokens must be a positive integer, got ${o.maxNewTokens ?? `maxLength ${o.maxLength} - prompt ${promptLength}`}`);
  check(promptLength + maxNew <= config.maxPositionEmbeddings,
    `generate: the prompt (${promptLength} tokens) plus ${maxNew} new tokens is longer than max_position_embeddings ${config.maxPositionEmbeddings}`);
  const minNew = o.minNewTokens ?? 0;
  check(Number.isInteger(minNew) && minNew >= 0, `generate: minNewTokens must be a non-negative integer, got ${minNew}`);
  if (o.doSample) {
    check(o.temperature === undefined || o.temperature > 0, `generate: temperature must be > 0 when sampling, got ${o.temperature}`);
  }
  check(o.topP === undefined || (o.topP > 0 && o.topP <= 1), `generate: topP must be in (0, 1], got ${o.topP}`);
  check(o.topK === undefined || (Number.isInteger(o.topK) && o.topK >= 0), `generate: topK must be a non-negative integer, got ${o.topK}`);
  check(o.minP === undefined || (o.minP >= 0 && o.minP <= 1), `generate: minP must be in [0, 1], got ${o.minP}`);
  check(o.repetitionPenalty === undefined || o.repetitionPenalty > 0, `generate: repetitionPenalty must be > 0, got ${o.repetitionPenalty}`);
  const fromFiles = (model.generationConfig?.eos_token_id as number | number[] | undefined) ?? config.eosTokenId;
  const eosSetting = o.eosTokenId !== undefined ? o.eosTokenId : fromFiles;
  const eos = eosSetting === null ? [] : Array.isArray(eosSetting) ? eosSetting : [eosSetting];
  const pad = o.padTokenId ?? (model.generationConfig?.pad_token_id as number | undefined) ?? config.padTokenId ?? eos[0] ?? 0;
  for (const [name, id] of [...eos.map((e): [string, number] => ['eosTokenId', e]), ['padTokenId', pad] as [string, number]]) {
    check(Number.isInteger(id) && id >= 0 && id < config.vocabSize, `generate: ${name} ${id} is outside [0, vocab_size ${config.vocabSize})`);
  }
  return { rows, mask, maxNew, minNew, eos, pad };
}


/**
 * Generates token by token. Yields after each step with the chosen tokens; the KV cache lives for one
 * generation and is freed when it ends (also on an error or an early `return()` of the iterator).
 */
export async function* generateStream(model: NemotronForCausalLM, inputIds: IntMatrixLike, options: GenerateOptions = {}): AsyncGenerator<GenerationStep, void> {
  if ((options.numBeams ?? 1) > 1) throw new Error('generateStream: beam search does not stream (a beam\'s tokens can change until it ends); use generate()');
  const { rows, mask, maxNew, minNew, eos, pad } = resolve(model, inputIds, options);
  const batch = rows.length;
  const random = seedrandom(String(options.seed ?? Date.now()));
  const useCache = options.useCache ?? true;
  const sequences = rows.map((r) => r.slice());
  const attention = mask.map((r) => r.slice());
  const finished = new Array(batch).fill(false);
  const needsScores = options.outputScores || options.doSample || (options.repetitionPenalty ?? 1) !== 1 || minNew > 0;
  const cache = useCache ? new KVCache(model.config.numHiddenLayers) : null;
  try {
    for (let step = 0; step < maxNew; step++) {
      const positions = positionsFromMask(attention);
      const fresh = cache && step > 0;
      const out = model.forward({
        inputIds: fresh ? sequences.map((s) => [s[s.length - 1]]) : sequences,
        attentionMask: attention,
        positionIds: fresh ? positions.map((p) => [p[p.length - 1]]) : positions,
        pastKeyValues: cache ?? undefined,
        useCache: cache !== null,
        logitsToKeep: 1,
      });
      let tokens: number[];
      let stepScores: Float32Array[] | undefined;
      if (needsScores) {
        const logits = await out.logits.data() as Float32Array;
        out.logits.dispose();
        const vocab = model.config.vocabSize;
        stepScores = [];
        tokens = [];
        for (let b = 0; b < batch; b++) {
          const scores = logits.slice(b * vocab, (b + 1) * vocab);
          processScores(scores, sequences[b], { ...options, suppressTokens: step < minNew ? eos : [] });
          stepScores.push(scores);
          tokens.push(options.doSample ? sample(scores, random()) : argmax(scores));
        }
      } else {
        // Greedy without scores: only the winning ids leave the device.
        const ids = tf.tidy(() => tf.argMax(out.logits.reshape([batch, -1]), -1));
        out.logits.dispose();
        tokens = Array.from(await ids.data());
        ids.dispose();
      }
      tokens = tokens.map((t, b) => (finished[b] ? pad : t));
      tokens.forEach((t, b) => {
        sequences[b].push(t);
        attention[b].push(1);
        if (eos.includes(t)) finished[b] = true;
      });
      options.onToken?.(tokens, step);
      yield { step, tokens, finished: finished.slice(), scores: options.outputScores ? stepScores : undefined };
      if (finished.every(Boolean)) break;
    }
  } finally {
    cache?.dispose();
  }
}

/** transformers' generate(): greedy or sampled decoding with a KV cache; sequences include the prompt. */
export async function generate(model: NemotronForCausalLM, inputIds: IntMatrixLike, options: GenerateOptions = {}): Promise<GenerateOutput> {
  if ((options.numBeams ?? 1) > 1) {
    if (options.doSample) throw new Error('generate: beam sampling (numBeams > 1 with doSample) is not supported; use numBeams: 1 to sample');
    if (options.outputScores) throw new Error('generate: outputScores is not supported with beam search (sequencesScores holds each hypothesis\' score)');
    if (options.useCache === false) throw new Error('generate: beam search always uses the KV cache');
    const { rows, mask, maxNew, minNew, eos, pad } = resolve(model, inputIds, options);
    return beamSearch(model, { rows, mask, maxNew, minNew, eos, pad, repetitionPenalty: options.repetitionPenalty }, {
      numBeams: options.numBeams!, lengthPenalty: options.lengthPenalty, earlyStopping: options.earlyStopping, numReturnSequences: options.numReturnSequences,
    });
  }
  if ((options.numReturnSequences ?? 1) !== 1 && !options.doSample) {
    throw new Error(`generate: numReturnSequences ${options.numReturnSequences} needs beam search (numBeams ≥ it): greedy decoding has one answer`);
  }
  const sequences = readPrompt(inputIds).map((r) => r.slice());
  const scores: Float32Array[][] = [];
  for await (const step of generateStream(model, inputIds, options)) {
    step.tokens.forEach((t, b) => sequences[b].push(t));
    if (step.scores) scores.push(step.scores);
  }
  return options.outputScores ? { sequences, scores } : { sequences };
}
