import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { IntMatrixLike, readIntRows } from '../tensors';
import { beamSearch } from './beam-search';
import { decoderFor } from './decoder';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { CandidateSource, draftModelSource, promptLookupSource, speculativeDecode } from './speculative';
import { ProcessorOptions, argmax, processScores, sample } from './processors';
import type { CompiledGrammar, TokenConstraint } from './grammar';

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
  /** Locally typical sampling: transformers' typical_p, in (0, 1]. */
  typicalP?: number;
  /** transformers' epsilon_cutoff, in [0, 1). */
  epsilonCutoff?: number;
  /** transformers' eta_cutoff, in [0, 1). */
  etaCutoff?: number;
  repetitionPenalty?: number;
  /** OpenAI's presence_penalty (vLLM's; not in transformers): minus this for each token already generated. */
  presencePenalty?: number;
  /** OpenAI's frequency_penalty (vLLM's; not in transformers): minus this times the count of each token already generated. */
  frequencyPenalty?: number;
  /** No n-gram of this size appears twice in a row, prompt included (transformers' no_repeat_ngram_size). */
  noRepeatNgramSize?: number;
  /** Token sequences never to complete; a one-token sequence is never chosen (transformers' bad_words_ids). */
  badWordsIds?: number[][];
  /** [token ids, bias] pairs: the bias is added to the last id's score where the others end the row (transformers' sequence_bias). */
  sequenceBias?: Array<[number[], number]>;
  /** Tokens never generated (transformers' suppress_tokens). */
  suppressTokens?: number[];
  /** Tokens not generated first (transformers' begin_suppress_tokens). */
  beginSuppressTokens?: number[];
  /** At the last position only this EOS id (or these) may come (transformers' forced_eos_token_id). */
  forcedEosTokenId?: number | number[];
  /** [start, factor]: after `start` new tokens, EOS scores grow by factor^n (transformers' exponential_decay_length_penalty). */
  exponentialDecayLengthPenalty?: [number, number];
  /** No EOS before the row (prompt included) is this long (transformers' min_length). */
  minLength?: number;
  /** A row stops once its generated text ends with one of these (transformers' stop_strings); needs `tokenizer`. */
  stopStrings?: string | string[];
  /** Decodes tokens for stopStrings: a NemotronTokenizer, or anything with decode(ids) (and encode, see stopStringDecoder). */
  tokenizer?: StopStringTokenizer;
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
  /** Return the raw logits of each step, before any processor or warper (transformers' output_logits). */
  outputLogits?: boolean;
  /** Reuse keys and values of earlier tokens (default). false recomputes the whole sequence each step. */
  useCache?: boolean;
  /** Called with the new token of every row as soon as the step has chosen them. */
  onToken?: (tokens: number[], step: number) => void;
  /** Beam search with this many beams (> 1; generate() only, not streamed); with doSample, beam sampling. */
  numBeams?: number;
  /** Beam search: finished hypotheses scored sum(log p) / generated length ** lengthPenalty. Default 1. */
  lengthPenalty?: number;
  /** Beam search: transformers' early_stopping (false: its heuristic; true; 'never'). Default false. */
  earlyStopping?: boolean | 'never';
  /** Sequences returned per prompt: beam search's best hypotheses (≤ numBeams), or independent samples. Default 1. */
  numReturnSequences?: number;
  /**
   * Prompt lookup decoding (transformers' prompt_lookup_num_tokens): up to this many tokens that followed an earlier
   * occurrence of the row's last n-gram are checked in one forward pass. Greedy, one row; the output is unchanged.
   */
  promptLookupNumTokens?: number;
  /** The longest n-gram prompt lookup matches (transformers' max_matching_ngram_size). Default 2. */
  maxMatchingNgramSize?: number;
  /**
   * Assisted generation (transformers' assistant_model): a smaller model of the same vocabulary (Nemotron or
   * NemotronH, either way round) drafts tokens that one forward pass of this model checks. Greedy, one row; the output
   * is unchanged.
   */
  assistantModel?: NemotronForCausalLM | NemotronHForCausalLM;
  /** Tokens the assistant drafts per round (transformers' num_assistant_tokens). Default 20. */
  numAssistantTokens?: number;
  /** 'constant' (default) or 'heuristic' (+2 after a fully accepted round, −1 otherwise), as transformers. */
  numAssistantTokensSchedule?: 'constant' | 'heuristic';
  /** The assistant stops drafting where its token's probability falls below this (transformers' default 0.4; 0: never). */
  assistantConfidenceThreshold?: number;
  /**
   * Structured output: each row's text follows this grammar (JSON, a JSON schema, EBNF, a choice; see GrammarCompiler),
   * as transformers runs xgrammar's LogitsProcessor; the mask applies after the processors, before the warpers.
   */
  grammar?: CompiledGrammar;
}

export interface GenerateOutput {
  /** Prompt and generated tokens of every row, as transformers returns them. */
  sequences: number[][];
  /** With outputScores: [step][row] → processed logits over the vocabulary. */
  scores?: Float32Array[][];
  /** With outputLogits: [step][row] → the model's logits over the vocabulary, unprocessed. */
  logits?: Float32Array[][];
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
  /** With outputLogits: each row's unprocessed logits. */
  logits?: Float32Array[];
}

interface Resolved {
  rows: number[][];
  mask: number[][];
  maxNew: number;
  minNew: number;
  eos: number[];
  pad: number;
  /** bad_words_ids without the one-token sequences that are an EOS id (transformers drops those). */
  badWordsIds?: number[][];
  stopStrings: string[];
  /** The logits processors' settings and context (the step's min-length EOS ban and the warpers are added per step). */
  processors: ProcessorOptions;
}

/** generation_config.json's keys that generate() takes as defaults, with their option names. */
const GENERATION_CONFIG_KEYS: Array<[string, keyof GenerateOptions]> = [
  ['max_new_tokens', 'maxNewTokens'], ['max_length', 'maxLength'], ['min_new_tokens', 'minNewTokens'], ['do_sample', 'doSample'],
  ['temperature', 'temperature'], ['top_k', 'topK'], ['top_p', 'topP'], ['min_p', 'minP'], ['typical_p', 'typicalP'], ['epsilon_cutoff', 'epsilonCutoff'],
  ['eta_cutoff', 'etaCutoff'], ['repetition_penalty', 'repetitionPenalty'],
  ['no_repeat_ngram_size', 'noRepeatNgramSize'], ['bad_words_ids', 'badWordsIds'], ['stop_strings', 'stopStrings'],
  ['num_beams', 'numBeams'], ['length_penalty', 'lengthPenalty'], ['early_stopping', 'earlyStopping'],
  ['num_return_sequences', 'numReturnSequences'], ['prompt_lookup_num_tokens', 'promptLookupNumTokens'],
  ['max_matching_ngram_size', 'maxMatchingNgramSize'], ['num_assistant_tokens', 'numAssistantTokens'],
  ['num_assistant_tokens_schedule', 'numAssistantTokensSchedule'], ['assistant_confidence_threshold', 'assistantConfidenceThreshold'],
  ['sequence_bias', 'sequenceBias'], ['suppress_tokens', 'suppressTokens'], ['begin_suppress_tokens', 'beginSuppressTokens'],
  ['forced_eos_token_id', 'forcedEosTokenId'], ['exponential_decay_length_penalty', 'exponentialDecayLengthPenalty'], ['min_length', 'minLength'],
];

/**
 * The options as transformers' generate() resolves them: what the call gives, then the checkpoint's
 * generation_config.json (a Llama-Nemotron instruct model's do_sample, temperature and top_p, say), then
 * GenerationConfig's defaults — top-k 50 when sampling. A key set to null in the file counts as unset.
 */
export function resolveGenerateOptions(model: NemotronForCausalLM, options: GenerateOptions = {}): GenerateOptions {
  const file = model.generationConfig ?? {};
  const resolved: GenerateOptions = { ...options };
  const target = resolved as Record<string, unknown>;
  for (const [key, name] of GENERATION_CONFIG_KEYS) {
    if (target[name] === undefined && file[key] !== undefined && file[key] !== null) target[name] = file[key];
  }
  // A call that sets maxNewTokens or maxLength decides the length alone.
  if (options.maxNewTokens !== undefined || options.maxLength !== undefined) {
    resolved.maxNewTokens = options.maxNewTokens;
    resolved.maxLength = options.maxLength;
  }
  if (resolved.doSample && resolved.topK === undefined) resolved.topK = 50;
  return resolved;
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
  check(promptLength + maxNew <= config.maxSequenceLength,
    `generate: the prompt (${promptLength} tokens) plus ${maxNew} new tokens is longer than max_position_embeddings ${config.maxPositionEmbeddings}`);
  const minNewTokens = o.minNewTokens ?? 0;
  check(Number.isInteger(minNewTokens) && minNewTokens >= 0, `generate: minNewTokens must be a non-negative integer, got ${minNewTokens}`);
  check(o.minLength === undefined || (Number.isInteger(o.minLength) && o.minLength >= 0), `generate: minLength must be a non-negative integer, got ${o.minLength}`);
  // min_length counts the prompt; both forbid EOS at the same place in transformers' list, so one bound serves.
  const minNew = Math.max(minNewTokens, (o.minLength ?? 0) - promptLength);
  if (o.doSample) {
    check(o.temperature === undefined || o.temperature > 0, `generate: temperature must be > 0 when sampling, got ${o.temperature}`);
  }
  check(o.topP === undefined || (o.topP > 0 && o.topP <= 1), `generate: topP must be in (0, 1], got ${o.topP}`);
  check(o.topK === undefined || (Number.isInteger(o.topK) && o.topK >= 0), `generate: topK must be a non-negative integer, got ${o.topK}`);
  check(o.minP === undefined || (o.minP >= 0 && o.minP <= 1), `generate: minP must be in [0, 1], got ${o.minP}`);
  check(o.typicalP === undefined || (o.typicalP > 0 && o.typicalP <= 1), `generate: typicalP must be in (0, 1], got ${o.typicalP}`);
  for (const [name, v] of [['epsilonCutoff', o.epsilonCutoff], ['etaCutoff', o.etaCutoff]] as Array<[string, number | undefined]>) {
    check(v === undefined || (v >= 0 && v < 1), `generate: ${name} must be in [0, 1), got ${v}`);
  }
  check(o.repetitionPenalty === undefined || o.repetitionPenalty > 0, `generate: repetitionPenalty must be > 0, got ${o.repetitionPenalty}`);
  for (const [name, v] of [['presencePenalty', o.presencePenalty], ['frequencyPenalty', o.frequencyPenalty]] as Array<[string, number | undefined]>) {
    check(v === undefined || (typeof v === 'number' && Number.isFinite(v)), `generate: ${name} must be a finite number, got ${v}`);
  }
  check(o.noRepeatNgramSize === undefined || (Number.isInteger(o.noRepeatNgramSize) && o.noRepeatNgramSize >= 0),
    `generate: noRepeatNgramSize must be a non-negative integer, got ${o.noRepeatNgramSize}`);
  if (o.badWordsIds !== undefined) {
    check(Array.isArray(o.badWordsIds) && o.badWordsIds.every((w) => Array.isArray(w) && w.length > 0),
      `generate: badWordsIds must be a list of non-empty token-id lists, got ${JSON.stringify(o.badWordsIds)}`);
    o.badWordsIds.forEach((w, i) => w.forEach((id, j) => check(Number.isInteger(id) && id >= 0 && id < config.vocabSize,
      `generate: badWordsIds[${i}][${j}] = ${id} is outside [0, vocab_size ${config.vocabSize})`)));
  }
  const stopStrings = o.stopStrings === undefined ? [] : Array.isArray(o.stopStrings) ? o.stopStrings : [o.stopStrings];
  check(stopStrings.every((t) => typeof t === 'string' && t.length > 0), `generate: stopStrings must be non-empty strings, got ${JSON.stringify(o.stopStrings)}`);
  check(stopStrings.length === 0 || typeof o.tokenizer?.decode === 'function',
    'generate: stopStrings needs the tokenizer that decodes the tokens (options.tokenizer), as transformers does');
  const fromFiles = (model.generationConfig?.eos_token_id as number | number[] | undefined) ?? config.eosTokenId;
  const eosSetting = o.eosTokenId !== undefined ? o.eosTokenId : fromFiles;
  const eos = eosSetting === null ? [] : Array.isArray(eosSetting) ? eosSetting : [eosSetting];
  const pad = o.padTokenId ?? (model.generationConfig?.pad_token_id as number | undefined) ?? config.padTokenId ?? eos[0] ?? 0;
  for (const [name, id] of [...eos.map((e): [string, number] => ['eosTokenId', e]), ['padTokenId', pad] as [string, number]]) {
    check(Number.isInteger(id) && id >= 0 && id < config.vocabSize, `generate: ${name} ${id} is outside [0, vocab_size ${config.vocabSize})`);
  }
  const badWordsIds = o.badWordsIds?.filter((w) => !(w.length === 1 && eos.includes(w[0])));
  const ids = (name: string, list: unknown) => check(list === undefined || (Array.isArray(list) && list.every((id) => Number.isInteger(id) && id >= 0 && id < config.vocabSize)),
    `generate: ${name} must be token ids in [0, vocab_size ${config.vocabSize}), got ${JSON.stringify(list)}`);
  ids('suppressTokens', o.suppressTokens);
  ids('beginSuppressTokens', o.beginSuppressTokens);
  if (o.forcedEosTokenId !== undefined) ids('forcedEosTokenId', Array.isArray(o.forcedEosTokenId) ? o.forcedEosTokenId : [o.forcedEosTokenId]);
  if (o.sequenceBias !== undefined) {
    check(Array.isArray(o.sequenceBias) && o.sequenceBias.every((e) => Array.isArray(e) && Array.isArray(e[0]) && e[0].length > 0 && typeof e[1] === 'number'),
      `generate: sequenceBias must be [token ids, bias] pairs, got ${JSON.stringify(o.sequenceBias)}`);
    o.sequenceBias.forEach(([seq]) => ids('sequenceBias ids', seq));
  }
  const decay = o.exponentialDecayLengthPenalty;
  check(decay === undefined || (Array.isArray(decay) && decay.length === 2 && Number.isInteger(decay[0]) && decay[0] >= 0 && decay[1] > 0),
    `generate: exponentialDecayLengthPenalty must be [start ≥ 0, factor > 0], got ${JSON.stringify(decay)}`);
  const processors: ProcessorOptions = {
    repetitionPenalty: o.repetitionPenalty, presencePenalty: o.presencePenalty, frequencyPenalty: o.frequencyPenalty,
    noRepeatNgramSize: o.noRepeatNgramSize, badWordsIds, sequenceBias: o.sequenceBias,
    suppressTokens: o.suppressTokens, beginSuppressTokens: o.beginSuppressTokens, forcedEosTokenId: o.forcedEosTokenId,
    exponentialDecayLengthPenalty: decay, promptLength, maxLength: promptLength + maxNew, eosTokenIds: eos,
  };
  return { rows, mask, maxNew, minNew, eos, pad, badWordsIds, stopStrings, processors };
}

/** The sampling warpers of the options (applied after the processors, when sampling). */
function warpers(o: GenerateOptions): ProcessorOptions {
  return {
    doSample: o.doSample, temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP, typicalP: o.typicalP,
    epsilonCutoff: o.epsilonCutoff, etaCutoff: o.etaCutoff,
  };
}

/** What stop strings need of a tokenizer. */
export interface StopStringTokenizer {
  decode(ids: number[]): string;
  encode?(text: string, options?: { addSpecialTokens?: boolean }): number[];
}

/**
 * Text of a row's tokens as transformers' StopStringCriteria reads them: decoded after a fixed prefix ("abcdef", as it
 * does), so that a SentencePiece decoder's strip of the leading space does not drop the space of the first token.
 */
export function stopStringDecoder(tokenizer: StopStringTokenizer): (ids: number[]) => string {
  let prefix: number[] = [];
  try {
    prefix = tokenizer.encode ? tokenizer.encode('abcdef', { addSpecialTokens: false }) : [];
  } catch {
    // A vocabulary that cannot write those letters: tokens decode alone.
  }
  const prefixText = tokenizer.decode(prefix);
  return (ids) => {
    const text = tokenizer.decode([...prefix, ...ids]);
    return text.startsWith(prefixText) ? text.slice(prefixText.length) : tokenizer.decode(ids);
  };
}

/**
 * Whether the text of `generated` (a row, prompt included) ends in a stop string that its last token completes: the
 * string ends inside the last token's text or runs into it (transformers' StopStringCriteria; "st" + "opped" completes
 * "stop").
 */
export function endsWithStopString(generated: number[], stopStrings: readonly string[], decode: (ids: number[]) => string): boolean {
  if (generated.length === 0 || stopStrings.length === 0) return false;
  const longest = Math.max(...stopStrings.map((t) => t.length));
  // Enough of the tail to hold the longest stop string before the last token (every token decodes to ≥ 0 characters,
  // so widen until the text before the last token is long enough or the row starts).
  let from = Math.max(0, generated.length - 1 - longest);
  let before = decode(generated.slice(from, -1));
  while (from > 0 && before.length < longest) {
    from = Math.max(0, from - longest);
    before = decode(generated.slice(from, -1));
  }
  const text = decode(generated.slice(from));
  const lastStart = Math.min(before.length, text.length);
  return stopStrings.some((t) => {
    // An occurrence that ends after the text before the last token ended.
    for (let at = text.indexOf(t, Math.max(0, lastStart - t.length + 1)); at >= 0; at = text.indexOf(t, at + 1)) {
      if (at + t.length > lastStart) return true;
    }
    return false;
  });
}


/** Whether a step's token needs the logits on the host: sampling or a logits processor (else it is the device's argmax). */
function choosesOnHost(options: GenerateOptions, minNew: number, processors: ProcessorOptions): boolean {
  return options.doSample === true || (options.repetitionPenalty ?? 1) !== 1 || minNew > 0 || Boolean(options.presencePenalty) || Boolean(options.frequencyPenalty) ||
    options.grammar !== undefined ||
    (options.noRepeatNgramSize ?? 0) > 0 || (processors.badWordsIds?.length ?? 0) > 0 || (processors.sequenceBias?.length ?? 0) > 0 ||
    (processors.suppressTokens?.length ?? 0) > 0 || (processors.beginSuppressTokens?.length ?? 0) > 0 ||
    processors.forcedEosTokenId !== undefined || processors.exponentialDecayLengthPenalty !== undefined;
}

/** One row's decoding rules, as generateStream applies them to each of its rows. */
export interface RowDecoding {
  /** New tokens at most. */
  maxNewTokens: number;
  /** The row ends after one of these. */
  eosTokenIds: number[];
  /** Whether next() needs the logits (sampling or a processor); otherwise the token is their argmax. */
  needsLogits: boolean;
  /** The token that follows `sequence` (the prompt and what the row generated, no padding): `logits` of that position are processed in place. */
  next(logits: Float32Array, sequence: number[], step: number): number;
}

/**
 * The decoding of one prompt row as generate() would run it alone (the options resolved with generation_config.json,
 * the processors, the sampler with its own seed), for a scheduler that decodes the rows of different requests in one
 * batch (the server's continuous batching). Greedy or sampled; no beams, no speculation, no stop strings. A grammar
 * comes as the row's own `constraint` (options.grammar's, made by the caller; the caller disposes it).
 */
export function rowDecoding(model: NemotronForCausalLM, prompt: number[], callOptions: GenerateOptions = {}, constraint?: TokenConstraint): RowDecoding {
  const options = resolveGenerateOptions(model, callOptions);
  check((options.numBeams ?? 1) === 1 && (options.numReturnSequences ?? 1) === 1, 'rowDecoding: one sequence a row, without beam search');
  check(!options.assistantModel && !options.promptLookupNumTokens, 'rowDecoding: no assisted or prompt lookup decoding');
  const { maxNew, minNew, eos, stopStrings, processors } = resolve(model, [prompt], options);
  check(stopStrings.length === 0, 'rowDecoding: stop strings are for the scheduler to check');
  const random = seedrandom(String(options.seed ?? Date.now()));
  const warping = warpers(options);
  return {
    maxNewTokens: maxNew,
    eosTokenIds: eos,
    needsLogits: constraint !== undefined || choosesOnHost(options, minNew, processors),
    next: (logits, sequence, step) => {
      processScores(logits, sequence, { ...warping, ...processors, minLengthEos: step < minNew ? eos : [], tokenMask: constraint });
      const token = options.doSample ? sample(logits, random()) : argmax(logits);
      constraint?.accept(token);
      return token;
    },
  };
}

/**
 * Generates token by token. Yields after each step with the chosen tokens; the KV cache lives for one
 * generation and is freed when it ends (also on an error or an early `return()` of the iterator).
 */
export async function* generateStream(served: NemotronForCausalLM | NemotronHForCausalLM, inputIds: IntMatrixLike, callOptions: GenerateOptions = {}): AsyncGenerator<GenerationStep, void> {
  // A NemotronH model has what the options read (config's vocabulary, lengths and token ids, generationConfig).
  const model = served as NemotronForCausalLM;
  const options = resolveGenerateOptions(model, callOptions);
  if ((options.numBeams ?? 1) > 1) {
    const fromFile = callOptions.numBeams === undefined ? ` (generation_config.json sets num_beams ${options.numBeams}; numBeams: 1 streams)` : '';
    throw new Error(`generateStream: beam search does not stream (a beam's tokens can change until it ends); use generate()${fromFile}`);
  }
  if ((options.numReturnSequences ?? 1) !== 1) throw new Error('generateStream: numReturnSequences is for generate(); repeat the prompt rows to stream several samples');
  const { rows, mask, maxNew, minNew, eos, pad, stopStrings, processors } = resolve(model, inputIds, options);
  const batch = rows.length;
  const random = seedrandom(String(options.seed ?? Date.now()));
  const useCache = options.useCache ?? true;
  const sequences = rows.map((r) => r.slice());
  const attention = mask.map((r) => r.slice());
  const finished = new Array(batch).fill(false);
  const needsScores = options.outputScores || options.outputLogits || choosesOnHost(options, minNew, processors);
  const decodeForStops = stopStrings.length ? stopStringDecoder(options.tokenizer!) : null;
  const constraints = options.grammar ? await Promise.all(rows.map(() => options.grammar!.constraint())) : null;
  const decoder = decoderFor(served, useCache);
  try {
    for (let step = 0; step < maxNew; step++) {
      const out = { logits: decoder.next(sequences, attention, step === 0) };
      let tokens: number[];
      let stepScores: Float32Array[] | undefined;
      let stepLogits: Float32Array[] | undefined;
      if (needsScores) {
        const logits = await out.logits.data() as Float32Array;
        out.logits.dispose();
        const vocab = model.config.vocabSize;
        stepScores = [];
        tokens = [];
        if (options.outputLogits) stepLogits = Array.from({ length: batch }, (_, b) => logits.slice(b * vocab, (b + 1) * vocab));
        for (let b = 0; b < batch; b++) {
          const scores = logits.slice(b * vocab, (b + 1) * vocab);
          processScores(scores, sequences[b], { ...warpers(options), ...processors, minLengthEos: step < minNew ? eos : [], tokenMask: constraints?.[b] });
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
      // Rows that ended are padded where there is an EOS id; without one (a stop string ended them) transformers lets
      // them run on until every row has ended.
      tokens = tokens.map((t, b) => (finished[b] && eos.length ? pad : t));
      // A row's grammar follows the tokens it takes while it runs (not the padding after its end).
      if (constraints) tokens.forEach((t, b) => { if (!finished[b]) constraints[b].accept(t); });
      tokens.forEach((t, b) => {
        sequences[b].push(t);
        attention[b].push(1);
        if (eos.includes(t)) finished[b] = true;
      });
      if (decodeForStops) {
        tokens.forEach((_, b) => {
          // The prompt counts too: a stop string may begin in it (transformers reads the whole row).
          if (!finished[b] && endsWithStopString(sequences[b], stopStrings, decodeForStops)) finished[b] = true;
        });
      }
      options.onToken?.(tokens, step);
      yield { step, tokens, finished: finished.slice(), scores: options.outputScores ? stepScores : undefined, logits: stepLogits };
      if (finished.every(Boolean)) break;
    }
  } finally {
    decoder.dispose();
    constraints?.forEach((c) => c.dispose());
  }
}

/** transformers' generate(): greedy or sampled decoding with a KV cache; sequences include the prompt. */
export async function generate(served: NemotronForCausalLM | NemotronHForCausalLM, inputIds: IntMatrixLike, callOptions: GenerateOptions = {}): Promise<GenerateOutput> {
  const model = served as NemotronForCausalLM;
  const options = resolveGenerateOptions(model, callOptions);
  if ((options.numBeams ?? 1) > 1) {
    if (options.grammar) throw new Error('generate: a grammar decodes greedily or sampled, not with beam search (numBeams > 1)');
    if (options.outputScores) throw new Error('generate: outputScores is not supported with beam search (sequencesScores holds each hypothesis\' score)');
    if (options.outputLogits) throw new Error('generate: outputLogits is not supported with beam search (sequencesScores holds each hypothesis\' score)');
    if (options.useCache === false) throw new Error('generate: beam search always uses the KV cache');
    const { rows, mask, maxNew, minNew, eos, pad, stopStrings, processors } = resolve(model, inputIds, options);
    const decodeForStops = stopStrings.length ? stopStringDecoder(options.tokenizer!) : null;
    const sampling = options.doSample ? {
      warpers: warpers(options),
      random: seedrandom(String(options.seed ?? Date.now())),
    } : undefined;
    return beamSearch(decoderFor(served), {
      rows, mask, maxNew, minNew, eos, pad, processors,
      stops: decodeForStops ? (row) => endsWithStopString(row, stopStrings, decodeForStops) : undefined, sampling,
    }, {
      numBeams: options.numBeams!, lengthPenalty: options.lengthPenalty, earlyStopping: options.earlyStopping, numReturnSequences: options.numReturnSequences,
    });
  }
  if (options.assistantModel || (options.promptLookupNumTokens !== undefined && options.promptLookupNumTokens > 0)) {
    return speculative(served, inputIds, options);
  }
  if ((options.numReturnSequences ?? 1) !== 1 && !options.doSample) {
    throw new Error(`generate: numReturnSequences ${options.numReturnSequences} needs beam search (numBeams ≥ it): greedy decoding has one answer`);
  }
  // Several samples per prompt: each row repeated, as transformers expands input_ids (row i's samples together).
  const copies = options.numReturnSequences ?? 1;
  if (!(Number.isInteger(copies) && copies >= 1)) throw new Error(`generate: numReturnSequences must be a positive integer, got ${copies}`);
  const repeat = <T>(m: T[][]): T[][] => m.flatMap((r) => Array.from({ length: copies }, () => r.slice()));
  const prompt = repeat(readPrompt(inputIds));
  const streamed: GenerateOptions = { ...options, numReturnSequences: 1 };
  if (options.attentionMask !== undefined) streamed.attentionMask = repeat(readIntRows(options.attentionMask, 'attentionMask'));
  const sequences = prompt.map((r) => r.slice());
  const scores: Float32Array[][] = [];
  const logits: Float32Array[][] = [];
  for await (const step of generateStream(served, prompt, streamed)) {
    step.tokens.forEach((t, b) => sequences[b].push(t));
    if (step.scores) scores.push(step.scores);
    if (step.logits) logits.push(step.logits);
  }
  return { sequences, ...(options.outputScores ? { scores } : {}), ...(options.outputLogits ? { logits } : {}) };
}

/** generate() with promptLookupNumTokens or an assistantModel: checks what only this path supports, then runs it. */
async function speculative(served: NemotronForCausalLM | NemotronHForCausalLM, inputIds: IntMatrixLike, options: GenerateOptions): Promise<GenerateOutput> {
  const model = served as NemotronForCausalLM;
  const how = options.assistantModel ? 'assisted generation' : 'prompt lookup decoding';
  check(!(options.assistantModel && options.promptLookupNumTokens), 'generate: give assistantModel or promptLookupNumTokens, not both');
  const unsupported: Array<[string, boolean]> = [
    ['doSample', options.doSample === true], ['numBeams > 1', (options.numBeams ?? 1) > 1], ['outputScores', options.outputScores === true], ['outputLogits', options.outputLogits === true],
    ['numReturnSequences > 1', (options.numReturnSequences ?? 1) > 1], ['useCache: false', options.useCache === false],
    ['grammar', options.grammar !== undefined],
  ];
  const refused = unsupported.filter(([, on]) => on).map(([name]) => name);
  check(refused.length === 0, `generate: ${how} is greedy only; not with ${refused.join(', ')}`);
  const { rows, mask, maxNew, minNew, eos, stopStrings, processors } = resolve(model, inputIds, options);
  check(rows.length === 1, `generate: ${how} takes one row (as transformers), got ${rows.length}`);
  check(mask[0].every((m) => m === 1), `generate: ${how} takes an unpadded row (attentionMask all 1)`);
  let source: CandidateSource;
  if (options.assistantModel) {
    const assistant = options.assistantModel;
    check(assistant.config.vocabSize === model.config.vocabSize,
      `generate: the assistant model's vocabulary (${assistant.config.vocabSize}) must be the model's (${model.config.vocabSize})`);
    const n = options.numAssistantTokens ?? 20;
    const threshold = options.assistantConfidenceThreshold ?? 0.4;
    check(Number.isInteger(n) && n > 0, `generate: numAssistantTokens must be a positive integer, got ${n}`);
    check(threshold >= 0 && threshold < 1, `generate: assistantConfidenceThreshold must be in [0, 1), got ${threshold}`);
    const schedule = options.numAssistantTokensSchedule ?? 'constant';
    check(schedule === 'constant' || schedule === 'heuristic', `generate: numAssistantTokensSchedule must be 'constant' or 'heuristic', got ${JSON.stringify(schedule)}`);
    source = draftModelSource(assistant, { numTokens: n, schedule, confidenceThreshold: threshold, processors });
  } else {
    const n = options.promptLookupNumTokens!;
    const maxNgram = options.maxMatchingNgramSize ?? 2;
    check(Number.isInteger(n) && n > 0, `generate: promptLookupNumTokens must be a positive integer, got ${n}`);
    check(Number.isInteger(maxNgram) && maxNgram > 0, `generate: maxMatchingNgramSize must be a positive integer, got ${maxNgram}`);
    source = promptLookupSource(n, maxNgram);
  }
  const decodeForStops = stopStrings.length ? stopStringDecoder(options.tokenizer!) : null;
  const sequence = await speculativeDecode(served, rows[0], source, {
    maxNew, minNew, eos, onToken: options.onToken, processors,
    stops: decodeForStops ? (row) => endsWithStopString(row, stopStrings, decodeForStops) : undefined,
  });
  return { sequences: [sequence] };
}
