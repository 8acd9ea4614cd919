/**
 * `nemotron-tfjs generate --model DIR --prompt TEXT`: loads a causal LM and its tokenizer, echoes the prompt
 * and streams the generated text to stdout token by token; progress and timings go to stderr.
 */
import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import * as tf from '@tensorflow/tfjs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { BACKEND_ENV, BACKEND_NAMES, currentBackend, initBackend } from '../backends';
import { isGGUF, openCheckpoint } from '../../models/nemotron/pretrained';
import { NemotronTokenizer } from '../tokenizer';
import { GenerateOptions, endsWithStopString, generate, generateStream, rowDecoding, stopStringDecoder } from '../generation/generate';
import { type GrammarSpec, GrammarCompiler } from '../generation/grammar';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { NemotronHLoraModel } from '../../models/nemotron_h/lora';
import { NemotronHBatcher } from '../serving/nemotron-h-batcher';
import { NemotronConfig } from '../../models/nemotron/config';
import { ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoraModel } from '../training/lora';
import { checkModelDir, formatBytes, modelType } from './info';
import { loadingBar } from './progress';

/** The `--backend` option, shared by the program (global) and the subcommands that run a model. */
export function backendOption(): Option {
  return new Option('--backend <name>',
    `tfjs backend to run on (default: $${BACKEND_ENV}, else the fastest that loads here: cuda where an NVIDIA device exists, tensorflow, wasm, cpu)`)
    .choices(BACKEND_NAMES as string[]);
}

const INTEGER = /^[+-]?\d+$/;
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/**
 * A commander argument parser for an integer that `accept`s; otherwise commander reports
 * "option '--x <n>' argument 'v' is invalid. It must be <expected>."
 */
export function integerArg(expected: string, accept: (n: number) => boolean = () => true): (value: string) => number {
  return (value: string) => {
    const v = value.trim();
    const n = Number(v);
    if (!INTEGER.test(v) || !Number.isSafeInteger(n) || !accept(n)) throw new InvalidArgumentError(`It must be ${expected}.`);
    return n;
  };
}

/** Like {@link integerArg} for a decimal number (no hex, no Infinity, no empty string). */
export function numberArg(expected: string, accept: (n: number) => boolean = () => true): (value: string) => number {
  return (value: string) => {
    const v = value.trim();
    const n = Number(v);
    if (!DECIMAL.test(v) || !Number.isFinite(n) || !accept(n)) throw new InvalidArgumentError(`It must be ${expected}.`);
    return n;
  };
}

export interface GenerateCliOptions {
  model: string;
  prompt: string;
  maxNewTokens: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  seed?: number;
  greedy?: boolean;
  sample?: boolean;
  stream: boolean;
  addSpecialTokens: boolean;
  skipSpecialTokens: boolean;
  backend?: string;
  /** A PEFT LoRA adapter folder, merged into the weights after loading. */
  adapter?: string;
  /** The prompt is a user message, rendered with the tokenizer's chat template and the assistant turn opened. */
  chat?: boolean;
  /** With chat: a system message before it. */
  system?: string;
  /** Beam search with this many beams (the text is printed when the search ends). */
  numBeams?: number;
  /** transformers' no_repeat_ngram_size. */
  noRepeatNgramSize?: number;
  /** Stop strings (transformers' stop_strings): generation ends once the text ends with one. */
  stop?: string[];
  /** Prompt lookup decoding: up to this many tokens proposed from the text so far, checked in one pass. */
  promptLookup?: number;
  /** Structured output: any JSON, a JSON schema file (or its text), an EBNF grammar file, or one of several strings. */
  json?: boolean;
  jsonSchema?: string;
  grammar?: string;
  regex?: string;
  choice?: string[];
  /** Assisted generation: a smaller checkpoint of the same vocabulary drafts tokens that one pass checks. */
  assistantModel?: string;
  /** Tokens the assistant drafts per round. */
  assistantTokens?: number;
}

type GenerationConfigJson = Record<string, unknown>;

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

/**
 * Decoding settings, as transformers resolves them: command-line options, then generation_config.json, then
 * transformers' GenerationConfig defaults (greedy; when sampling temperature 1, top-k 50, top-p 1).
 */
export function resolveDecoding(o: GenerateCliOptions, gc: GenerationConfigJson | null): GenerateOptions {
  const samplingFlags: Array<[string, unknown]> = [
    ['--temperature', o.temperature], ['--top-k', o.topK], ['--top-p', o.topP], ['--min-p', o.minP],
  ];
  const given = samplingFlags.filter(([, v]) => v !== undefined).map(([flag]) => flag);
  if (o.greedy && o.sample) throw new Error('--greedy and --sample cannot be combined');
  if (o.greedy && given.length) {
    throw new Error(`--greedy cannot be combined with ${given.join(', ')} (those only apply when sampling)`);
  }
  const fromFile = gc ?? {};
  // The file's num_beams applies unless --greedy or --num-beams says otherwise (transformers' num_beams).
  const beams = o.numBeams ?? (o.greedy ? 1 : num(fromFile.num_beams) ?? 1);
  // With several beams, sampling makes it beam sampling (transformers' do_sample with num_beams).
  const doSample = o.greedy ? false : o.sample || given.length > 0 ? true : fromFile.do_sample === true;
  const options: GenerateOptions = {
    maxNewTokens: o.maxNewTokens,
    doSample,
    numBeams: beams,
    repetitionPenalty: o.repetitionPenalty ?? num(fromFile.repetition_penalty),
  };
  if (o.noRepeatNgramSize !== undefined) options.noRepeatNgramSize = o.noRepeatNgramSize;
  if (o.presencePenalty) options.presencePenalty = o.presencePenalty;
  if (o.frequencyPenalty) options.frequencyPenalty = o.frequencyPenalty;
  if (o.stop?.length) options.stopStrings = o.stop;
  if (beams > 1) {
    options.lengthPenalty = num(fromFile.length_penalty);
    const early = fromFile.early_stopping;
    if (early === true || early === false || early === 'never') options.earlyStopping = early;
  }
  if (doSample) {
    options.temperature = o.temperature ?? num(fromFile.temperature) ?? 1;
    options.topK = o.topK ?? num(fromFile.top_k) ?? 50;
    options.topP = o.topP ?? num(fromFile.top_p) ?? 1;
    options.minP = o.minP ?? num(fromFile.min_p);
    // A seed only matters when sampling; without one every run differs.
    if (o.seed !== undefined) options.seed = o.seed;
  }
  return options;
}

/** generation_config.json of a checkpoint folder, or null when there is none. */
export function readGenerationConfig(dir: string): GenerationConfigJson | null {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return null;
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new Error(`${file}: expected a JSON object`);
  return json as GenerationConfigJson;
}

const rate = (tokens: number, ms: number): string => (ms > 0 ? (tokens / (ms / 1000)).toFixed(1) : '–');
const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

/** A causal LM, its tokenizer and the backend they run on, as the generate and serve commands load them. */
export interface LoadedCausalLM {
  model: NemotronForCausalLM;
  tokenizer: NemotronTokenizer;
  backend: string;
}

/**
 * Loads a causal LM checkpoint (folder or GGUF file) and its tokenizer for generation; cheap checks first (files, the
 * head, the adapter folder, then `check` with the tokenizer and config), only then the backend and the weights. A PEFT
 * adapter is merged, so that decoding runs the fused step.
 */
export async function loadCausalLM(modelPath: string, o: { adapter?: string; backend?: string },
  check: (tokenizer: NemotronTokenizer, config: NemotronConfig) => void = () => undefined): Promise<LoadedCausalLM> {
  const dir = isGGUF(modelPath) ? modelPath : checkModelDir(modelPath, ['config.json', 'tokenizer.json']);
  checkAdapter(o.adapter);
  const { reader, config } = openCheckpoint(dir);
  let totalBytes: number;
  try {
    totalBytes = reader.totalBytes();
    if (!config.tieWordEmbeddings && !reader.has('lm_head.weight')) {
      throw new Error(`the checkpoint in ${modelPath} has no language-model head (lm_head.weight) and tie_word_embeddings ` +
        `is false: generation needs a NemotronForCausalLM checkpoint (architectures: ${(config.architectures ?? []).join(', ') || 'none'})`);
    }
  } finally {
    reader.close();
  }
  const tokenizer = await NemotronTokenizer.fromPretrained(dir);
  check(tokenizer, config);

  // tfjs's development hints (such as "install tfjs-node" on the cpu backend) are noise here; NEMOTRON_DEBUG=1 keeps them.
  if (process.env.NEMOTRON_DEBUG !== '1') tf.env().set('PROD', true);
  const backend = await initBackend(o.backend);
  const loadStart = performance.now();
  const bar = loadingBar(totalBytes);
  let model: NemotronForCausalLM;
  try {
    model = await NemotronForCausalLM.fromPretrained(dir, { onProgress: bar.onProgress });
  } finally {
    bar.stop();
  }
  process.stderr.write(`loaded ${formatBytes(totalBytes)} of weights in ${((performance.now() - loadStart) / 1000).toFixed(2)} s ` +
    `(backend ${backend})\n`);
  await mergeAdapter(model, o.adapter);
  return { model, tokenizer, backend };
}

/** --adapter: a PEFT folder (its two files there) or a GGUF LoRA file (llama.cpp's --lora); checked before any loading. */
export function checkAdapter(adapter: string | undefined): void {
  if (adapter === undefined || isGGUF(adapter)) return;
  for (const file of [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]) {
    if (!fs.existsSync(path.join(adapter, file))) throw new Error(`--adapter ${adapter}: ${file} is missing (expected a PEFT LoRA adapter folder or a GGUF LoRA file)`);
  }
}

/** Merges an --adapter (PEFT folder or GGUF LoRA file) into either family's causal LM; the model is freed if that fails. */
export async function mergeAdapter(model: NemotronForCausalLM | NemotronHForCausalLM, adapter: string | undefined): Promise<void> {
  if (adapter === undefined) return;
  try {
    const gguf = isGGUF(adapter);
    const lora = model instanceof NemotronHForCausalLM
      ? (gguf ? await NemotronHLoraModel.fromGGUF(model, adapter) : await NemotronHLoraModel.fromPretrained(model, adapter))
      : (gguf ? await LoraModel.fromGGUF(model, adapter) : await LoraModel.fromPretrained(model, adapter));
    const r = lora.loraConfig.r;
    lora.mergeAndUnload();
    process.stderr.write(`merged the LoRA adapter in ${adapter} (r ${r})\n`);
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** The grammar of --json / --json-schema / --grammar / --choice (at most one), or null. */
function structuredOutput(o: GenerateCliOptions): GrammarSpec | null {
  const given = [o.json ? '--json' : null, o.jsonSchema !== undefined ? '--json-schema' : null, o.grammar !== undefined ? '--grammar' : null,
    o.regex !== undefined ? '--regex' : null, o.choice?.length ? '--choice' : null].filter((f): f is string => f !== null);
  if (given.length > 1) throw new Error(`${given.join(' and ')}: give one structured output`);
  const fileOrText = (flag: string, value: string): string => {
    if (fs.existsSync(value)) return fs.readFileSync(value, 'utf8');
    if (flag === '--json-schema' && value.trim().startsWith('{')) return value;
    throw new Error(`${flag} ${value}: no such file${flag === '--json-schema' ? ' (nor a JSON object)' : ''}`);
  };
  if (o.json) return { type: 'json' };
  if (o.jsonSchema !== undefined) {
    const text = fileOrText('--json-schema', o.jsonSchema);
    try {
      return { type: 'json_schema', schema: JSON.parse(text) as object };
    } catch (e) {
      throw new Error(`--json-schema ${o.jsonSchema}: not JSON (${(e as Error).message})`);
    }
  }
  if (o.grammar !== undefined) return { type: 'grammar', grammar: fileOrText('--grammar', o.grammar) };
  if (o.regex !== undefined) return { type: 'regex', regex: o.regex };
  if (o.choice?.length) return { type: 'choice', choices: o.choice };
  return null;
}

export { modelType };

/** A NemotronH folder or GGUF with its tokenizer, on the chosen backend, an --adapter merged (serve, chat, generate). */
export async function loadNemotronH(modelPath: string, o: { adapter?: string; backend?: string }): Promise<{ model: NemotronHForCausalLM; tokenizer: NemotronTokenizer; backend: string }> {
  checkAdapter(o.adapter);
  const tokenizer = await NemotronTokenizer.fromPretrained(isGGUF(modelPath) ? modelPath : checkModelDir(modelPath, ['config.json', 'tokenizer.json']));
  if (process.env.NEMOTRON_DEBUG !== '1') tf.env().set('PROD', true);
  const backend = await initBackend(o.backend);
  const model = await NemotronHForCausalLM.fromPretrained(modelPath);
  await mergeAdapter(model, o.adapter);
  return { model, tokenizer, backend };
}

/** The grammar of --json/--json-schema/--grammar/--regex/--choice, compiled for the model's vocabulary and EOS ids (null without one). */
async function compileStructuredOutput(o: GenerateCliOptions, tokenizer: NemotronTokenizer, model: { generationConfig: Record<string, unknown> | null; config: { vocabSize: number; eosTokenId: number | number[] | null } }) {
  const grammarSpec = structuredOutput(o);
  if (!grammarSpec) return undefined;
  // The grammar ends with the EOS ids generation stops at (generation_config.json's, else config.json's).
  const eos = (model.generationConfig?.eos_token_id as number | number[] | null | undefined) ?? model.config.eosTokenId;
  const stopTokenIds = eos === null || eos === undefined ? undefined : Array.isArray(eos) ? eos : [eos];
  const compiler = await GrammarCompiler.create(tokenizer, { vocabSize: model.config.vocabSize, stopTokenIds });
  return compiler.compile(grammarSpec);
}

/**
 * generate for a NemotronH checkpoint (Nemotron-H, Nemotron Nano 2), streamed: one row on a NemotronHBatcher with the
 * row decoding generate() applies (greedy or sampled, every logits processor, structured output), stop strings checked
 * here as chat checks them; beam search and speculative decoding (prompt lookup, an assistant model of either family)
 * with the library's generate().
 */
async function runGenerateNemotronH(o: GenerateCliOptions): Promise<void> {
  if (o.system !== undefined && !o.chat) throw new Error('--system needs --chat (a system message goes through the chat template)');
  const options = resolveDecoding(o, isGGUF(o.model) ? null : readGenerationConfig(checkModelDir(o.model, ['config.json', 'tokenizer.json'])));
  const { model, tokenizer, backend } = await loadNemotronH(o.model, o);
  try {
    const messages = [...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []), { role: 'user', content: o.prompt }];
    const promptIds = o.chat ? tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }) : tokenizer.encode(o.prompt, { addSpecialTokens: o.addSpecialTokens });
    if (promptIds.length === 0) throw new Error('--prompt encodes to no tokens; give some text');
    const stops = [options.stopStrings ?? [], model.generationConfig?.stop_strings ?? []].flat().filter((t): t is string => typeof t === 'string' && t.length > 0);
    options.stopStrings = [];
    const decodeForStops = stopStringDecoder(tokenizer);
    if ((options.numBeams ?? 1) > 1) {
      // Beam search (the library's generate(), the hybrid state reordered to the beams): the text comes at the end.
      const start = performance.now();
      const out = await generate(model, [promptIds], { ...options, tokenizer });
      const tokens = out.sequences[0].slice(promptIds.length);
      const text = tokenizer.decode(o.chat ? tokens : out.sequences[0], { skipSpecialTokens: o.skipSpecialTokens });
      process.stdout.write(`${text}\n`);
      process.stderr.write(`prompt: ${plural(promptIds.length, 'token')} · beam search (${options.numBeams} beams): ${plural(tokens.length, 'token')} in ` +
        `${((performance.now() - start) / 1000).toFixed(2)} s · backend ${currentBackend() ?? backend} (NemotronH)\n`);
      return;
    }
    const grammar = await compileStructuredOutput(o, tokenizer, model);
    const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: o.skipSpecialTokens });
    let text = '';
    const emit = (piece: string) => { if (o.stream) process.stdout.write(piece); else text += piece; };
    if (!o.chat) for (const id of promptIds) emit(decoder.push(id));
    const start = performance.now();
    let [first, last, generated] = [start, start, 0];
    const sequence = promptIds.slice();
    // Each new token printed as it comes; false once the row ends in a stop string.
    const onToken = (token: number) => {
      last = performance.now();
      if (generated++ === 0) first = last;
      sequence.push(token);
      emit(decoder.push(token));
      return !(stops.length && endsWithStopString(sequence, stops, decodeForStops));
    };
    if (o.promptLookup !== undefined || o.assistantModel !== undefined) {
      // Speculative decoding (the library's generate(): greedy; structured output refused there by name).
      const assistant = o.assistantModel !== undefined ? await loadAssistant(o.assistantModel) : undefined;
      try {
        await generate(model, [promptIds], {
          ...options, stopStrings: stops, tokenizer, grammar: grammar ?? undefined, assistantModel: assistant, numAssistantTokens: o.assistantTokens,
          promptLookupNumTokens: o.promptLookup, onToken: (tokens) => tokens.forEach(onToken),
        });
      } finally {
        assistant?.dispose();
        grammar?.dispose();
      }
    } else {
      const constraint = grammar ? await grammar.constraint() : undefined;
      // A NemotronH model has what rowDecoding reads (config's vocabulary, lengths and token ids, generationConfig).
      const decoding = rowDecoding(model as unknown as NemotronForCausalLM, promptIds, options, constraint);
      try {
        await new NemotronHBatcher(model, { maxRows: 1 }).generate({ prompt: promptIds, decoding, onToken });
      } finally {
        constraint?.dispose();
        grammar?.dispose();
      }
    }
    emit(decoder.flush());
    process.stdout.write(o.stream ? '\n' : `${text}\n`);
    const decodeRate = generated > 1 ? rate(generated - 1, last - first) : '–';
    process.stderr.write(`prompt: ${plural(promptIds.length, 'token')}, ${rate(promptIds.length, first - start)} tok/s · ` +
      `generated: ${plural(generated, 'token')}, ${decodeRate} tok/s · backend ${currentBackend() ?? backend} (NemotronH)\n`);
  } finally {
    model.dispose();
  }
}

/** --assistant-model: a checkpoint folder or GGUF file of either family, loaded on the backend already chosen. */
async function loadAssistant(location: string): Promise<NemotronForCausalLM | NemotronHForCausalLM> {
  if (!isGGUF(location)) checkModelDir(location, ['config.json']);
  const assistant = modelType(location) === 'nemotron_h' ? await NemotronHForCausalLM.fromPretrained(location) : await NemotronForCausalLM.fromPretrained(location);
  process.stderr.write(`assistant model ${location}: ${(assistant.numParameters() / 1e6).toFixed(1)} M parameters\n`);
  return assistant;
}

export async function runGenerate(o: GenerateCliOptions): Promise<void> {
  if (modelType(o.model) === 'nemotron_h') return runGenerateNemotronH(o);
  // A GGUF file (llama.cpp's format) holds config, weights and vocabulary in one.
  const options = resolveDecoding(o, isGGUF(o.model) ? null : readGenerationConfig(checkModelDir(o.model, ['config.json', 'tokenizer.json'])));
  if (o.prompt.length === 0 && !o.addSpecialTokens) throw new Error('--prompt is empty (and --no-special-tokens adds no BOS)');
  if (o.system !== undefined && !o.chat) throw new Error('--system needs --chat (a system message goes through the chat template)');
  const messages = [...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []), { role: 'user', content: o.prompt }];
  let promptIds: number[] = [];
  const { model, tokenizer, backend } = await loadCausalLM(o.model, o, (tokenizer, config) => {
    promptIds = o.chat
      ? tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true })
      : tokenizer.encode(o.prompt, { addSpecialTokens: o.addSpecialTokens });
    if (promptIds.length === 0) throw new Error('--prompt encodes to no tokens; give some text');
    const outside = promptIds.find((id) => id >= config.vocabSize);
    if (outside !== undefined) {
      throw new Error(`the prompt has token id ${outside}, outside the model's vocabulary (vocab_size ${config.vocabSize}): ` +
        `tokenizer.json does not belong to this model`);
    }
    if (promptIds.length + o.maxNewTokens > config.maxPositionEmbeddings) {
      throw new Error(`the prompt (${promptIds.length} tokens) plus --max-new-tokens ${o.maxNewTokens} exceeds the context length ` +
        `(max_position_embeddings ${config.maxPositionEmbeddings})`);
    }
    const unknown = tokenizer.unkTokenId === null ? 0 : promptIds.filter((id) => id === tokenizer.unkTokenId).length;
    if (unknown > 0) {
      process.stderr.write(`warning: ${plural(unknown, 'piece')} of the prompt ${unknown === 1 ? 'is' : 'are'} not in the vocabulary ` +
        `(encoded as ${tokenizer.unkToken})\n`);
    }
  });
  // Also for stop strings that come from generation_config.json.
  options.tokenizer = tokenizer;
  let assistant: NemotronForCausalLM | NemotronHForCausalLM | undefined;
  if (o.assistantModel !== undefined) {
    try {
      assistant = await loadAssistant(o.assistantModel);
      options.assistantModel = assistant;
    } catch (e) {
      model.dispose();
      throw e;
    }
  }
  if (o.assistantTokens !== undefined) options.numAssistantTokens = o.assistantTokens;
  if (o.promptLookup !== undefined) options.promptLookupNumTokens = o.promptLookup;
  try {
    options.grammar = await compileStructuredOutput(o, tokenizer, model);
  } catch (e) {
    model.dispose();
    throw e;
  }

  try {
    const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: o.skipSpecialTokens });
    let text = '';
    const emit = (piece: string) => {
      if (!piece) return;
      if (o.stream) process.stdout.write(piece);
      else text += piece;
    };
    // The prompt goes through the same decoder, so the continuation joins it exactly as decode(prompt + new) would
    // (leading-space handling, multi-byte characters split across tokens).
    // In chat mode only the reply is printed (the template's markup is not the user's text).
    if (!o.chat) for (const id of promptIds) emit(decoder.push(id));

    const start = performance.now();
    let first = start;
    let last = start;
    let generated = 0;
    if ((options.numBeams ?? 1) > 1) {
      // Beam search: a beam's tokens can change until it ends, so the text comes at the end.
      const out = await generate(model, [promptIds], options);
      last = first = performance.now();
      const tokens = out.sequences[0].slice(promptIds.length);
      generated = tokens.length;
      for (const id of tokens) emit(decoder.push(id));
    } else if (options.assistantModel || options.promptLookupNumTokens) {
      // Speculative decoding: tokens come in runs, each printed as it is accepted.
      await generate(model, [promptIds], {
        ...options,
        onToken: (tokens) => {
          last = performance.now();
          if (generated === 0) first = last;
          generated += tokens.length;
          for (const id of tokens) emit(decoder.push(id));
        },
      });
    } else {
      for await (const step of generateStream(model, [promptIds], options)) {
        last = performance.now();
        if (generated === 0) first = last;
        generated++;
        emit(decoder.push(step.tokens[0]));
      }
    }
    emit(decoder.flush());
    if (o.stream) process.stdout.write('\n');
    else process.stdout.write(text + '\n');

    // The first new token comes out of the prompt pass; the generation rate counts the others over their time.
    if ((options.numBeams ?? 1) > 1) {
      process.stderr.write(`prompt: ${plural(promptIds.length, 'token')} · beam search (${options.numBeams} beams): ` +
        `${plural(generated, 'token')} in ${((last - start) / 1000).toFixed(2)} s · backend ${currentBackend() ?? backend}\n`);
    } else {
      const decodeRate = generated > 1 ? rate(generated - 1, last - first) : '–';
      process.stderr.write(`prompt: ${plural(promptIds.length, 'token')}, ${rate(promptIds.length, first - start)} tok/s · ` +
        `generated: ${plural(generated, 'token')}, ${decodeRate} tok/s · backend ${currentBackend() ?? backend}\n`);
    }
  } finally {
    model.dispose();
    assistant?.dispose();
  }
}

/** The sampling options generate and chat share (see resolveDecoding). */
export function addSamplingOptions(command: Command): Command {
  return command
    .option('--greedy', 'greedy decoding (argmax), even when generation_config.json sets do_sample')
    .option('--sample', 'sample from the distribution (temperature 1, top-k 50, top-p 1 unless set here or in generation_config.json)')
    .option('-t, --temperature <t>', 'sampling temperature > 0 (implies sampling; default: generation_config.json, else 1)',
      numberArg('a number > 0 (use --greedy for deterministic decoding)', (n) => n > 0))
    .option('-k, --top-k <k>', 'keep the k most likely tokens, 0 = all (implies sampling; default: generation_config.json, else 50)',
      integerArg('an integer >= 0', (n) => n >= 0))
    .option('--top-p <p>', 'nucleus sampling: keep the most likely tokens up to probability p, in (0, 1] (implies sampling; default: generation_config.json, else 1)',
      numberArg('a number in (0, 1]', (n) => n > 0 && n <= 1))
    .option('--min-p <p>', 'drop tokens less likely than p × the top probability, in [0, 1] (implies sampling; default: off)',
      numberArg('a number in [0, 1]', (n) => n >= 0 && n <= 1))
    .option('--repetition-penalty <r>', 'CTRL repetition penalty > 0, 1 = none (also with --greedy; default: generation_config.json, else 1)',
      numberArg('a number > 0', (n) => n > 0))
    .option('--presence-penalty <p>', 'OpenAI\'s presence penalty: minus p for each token already generated (also with --greedy; default 0)',
      numberArg('a number in [-2, 2]', (n) => n >= -2 && n <= 2))
    .option('--frequency-penalty <f>', 'OpenAI\'s frequency penalty: minus f × how often a token was generated (also with --greedy; default 0)',
      numberArg('a number in [-2, 2]', (n) => n >= -2 && n <= 2))
    .option('-s, --seed <s>', 'seed of the sampler: the same seed gives the same text on the same backend (default: random)',
      integerArg('an integer'));
}

export function registerGenerate(program: Command): void {
  addSamplingOptions(program
    .command('generate')
    .description('generate text from a prompt with a causal LM checkpoint, streaming tokens to stdout')
    .requiredOption('-m, --model <dir>', 'Hugging Face checkpoint folder (config.json, tokenizer.json, safetensors), or a GGUF file (llama.cpp\'s format, dequantized on load)')
    .requiredOption('-p, --prompt <text>', 'the prompt (BOS is added as the tokenizer config says)')
    .option('-n, --max-new-tokens <n>', 'number of new tokens to generate at most (stops earlier at EOS)',
      integerArg('a positive integer', (n) => n > 0), 50))
    .option('--num-beams <n>', 'beam search with n beams (sampled beams with --sample or a sampling option; the text is printed when the search ends; default: generation_config.json, else 1)',
      integerArg('an integer ≥ 1', (n) => n >= 1))
    .option('--no-repeat-ngram-size <n>', 'no n-gram of this size appears twice (default: generation_config.json, else off)',
      integerArg('an integer ≥ 1', (n) => n >= 1))
    .option('--stop <text>', 'stop once the text ends with this (repeatable; transformers\' stop_strings)',
      (value: string, previous: string[] | undefined) => [...(previous ?? []), value])
    .option('--no-stream', 'print the text once generation ends instead of token by token')
    .option('--no-special-tokens', 'do not add BOS (or other special tokens) to the prompt')
    .option('--show-special-tokens', 'print special tokens such as <s> and </s> instead of skipping them')
    .option('--chat', 'the prompt is a user message: render it with the tokenizer\'s chat template (assistant turn opened) and print only the reply')
    .option('--system <text>', 'with --chat: a system message before the prompt')
    .option('--adapter <path>', 'a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) or a GGUF LoRA file (llama.cpp\'s --lora) to merge into the model')
    .option('--prompt-lookup <n>', 'prompt lookup decoding: up to n tokens proposed from the text so far, checked in one pass (greedy; the same text, faster where it repeats)',
      integerArg('an integer ≥ 1', (n) => n >= 1))
    .option('--assistant-model <dir>', 'assisted generation: a smaller checkpoint of the same vocabulary drafts tokens, one pass of the model checks them (greedy; the same text)')
    .option('--assistant-tokens <n>', 'with --assistant-model: tokens drafted per round (default 20)', integerArg('an integer ≥ 1', (n) => n >= 1))
    .option('--json', 'structured output: the text is JSON (xgrammar\'s JSON grammar)')
    .option('--json-schema <file>', 'structured output: the text is JSON of this JSON schema (a file, or the schema itself)')
    .option('--grammar <file>', 'structured output: the text follows this EBNF grammar (xgrammar\'s syntax, rule root)')
    .option('--regex <re>', 'structured output: the text matches this regex whole (Python syntax; no lookarounds or backreferences)')
    .option('--choice <text>', 'structured output: the text is one of these strings (repeatable)',
      (value: string, previous: string[] | undefined) => [...(previous ?? []), value])
    .addOption(backendOption())
    .addHelpText('after', `
Decoding follows transformers: greedy unless sampling is asked for (--sample, or any of --temperature,
--top-k, --top-p, --min-p) or generation_config.json sets do_sample; --greedy always wins over the file.
Generation stops at the EOS id(s) of generation_config.json (else config.json), at a --stop string (printed), or after
--max-new-tokens. generation_config.json's other settings (no_repeat_ngram_size, bad_words_ids, stop_strings, …) apply
as in transformers.

stdout gets the prompt and the generated text (with --chat, the reply only); stderr gets the progress bar and a closing line
  prompt: N tokens, X tok/s · generated: M tokens, Y tok/s · backend B
where X counts the prompt pass (which also yields the first new token) and Y the other M - 1 tokens.

Example:
  nemotron-tfjs generate --model ./Minitron-4B-Base --prompt "The capital of France is" -n 20 --greedy`)
    .action(async (_opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals() as GenerateCliOptions & { specialTokens: boolean; showSpecialTokens?: boolean; repeatNgramSize?: number | boolean };
      await runGenerate({
        ...opts,
        addSpecialTokens: opts.specialTokens,
        skipSpecialTokens: !opts.showSpecialTokens,
        // commander reads a "--no-" option as the negation of the rest: the value lands under repeatNgramSize (true when absent).
        noRepeatNgramSize: typeof opts.repeatNgramSize === 'number' ? opts.repeatNgramSize : undefined,
      });
    });
}
