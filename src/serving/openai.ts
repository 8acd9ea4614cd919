/**
 * An OpenAI-compatible HTTP server for a causal LM, as `transformers serve` and vLLM offer one: `/v1/chat/completions`
 * (through the tokenizer's chat template), `/v1/completions`, `/v1/responses` (the Responses API, as the chat request
 * it amounts to), `/v1/models`, `/health`; streamed answers as server-sent events. The rows of all requests (several
 * prompts, `n` choices, concurrent clients) decode together on a ContinuousBatcher.
 *
 * OpenAI's semantics where they differ from transformers': a stop string ends the text before it (the string is not
 * returned), `temperature: 0` means greedy. Settings a request leaves out come from generation_config.json, as
 * transformers' generate() takes them.
 */
import * as http from 'http';
import { AddressInfo } from 'net';
import { randomBytes } from 'crypto';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { GenerateOptions, rowDecoding, stopStringDecoder } from '../generation/generate';
import { type CompiledGrammar, type GrammarSpec, GrammarCompiler } from '../generation/grammar';
import { type Json, type ResponseEvent, type ResponseTemplate, type ResponseTemplateSpec, type ToolSpec, ResponseParser, loadResponseTemplate, parseResponse } from '../response-parsing/index';
import { type BatchRow, ContinuousBatcher } from './batcher';
import { NemotronHBatcher } from './nemotron-h-batcher';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { TokenLogprob, logprobOf, sequenceLogprobs } from '../inference/logprobs';
import { ChatMessage, NemotronTokenizer, StreamDecoder } from '../tokenizer';

export interface OpenAIServerOptions {
  /** The name clients give as `model` (and `/v1/models` lists). A request naming another model gets a 404. */
  modelId: string;
  /** max_tokens of a chat request that gives none (OpenAI: the rest of the context); capped by the context. Default 4096. */
  defaultMaxTokens?: number;
  /** Most rows decoded together (across requests; also the most prompts × n one request may ask for). Default 16. */
  maxRows?: number;
  /** Largest request body accepted, in bytes. Default 8 MiB. */
  maxBodyBytes?: number;
  /** Most prompt tokens one prefill pass runs (longer prompts run in chunks between decoding steps). Default 512. */
  prefillChunkTokens?: number;
  /** Automatic prefix caching: finished rows' keys and values (NemotronH: states) kept, up to this many tokens (BatcherOptions). Default 0: off. */
  prefixCacheTokens?: number;
  /**
   * The scheduler that decodes the requests' rows (default: a ContinuousBatcher of maxRows rows on a Nemotron model,
   * a NemotronHBatcher on a NemotronH one).
   */
  batcher?: { generate(row: BatchRow): Promise<void> };
  /** Requests to /v1/… must carry `Authorization: Bearer <apiKey>` (as vLLM's --api-key); /health stays open. */
  apiKey?: string;
  /** Each finished request, in a line (method, path, status, tokens, seconds). */
  log?: (line: string) => void;
  /**
   * How to read a chat reply into content, reasoning and tool calls (transformers 5's response_template); default:
   * the tokenizer's (tokenizer_config.json's `response_template`); null: none, the reply is all content.
   */
  responseTemplate?: ResponseTemplateSpec | null;
  /** Responses kept for previous_response_id and GET /v1/responses/{id} (store: true, OpenAI's default); the oldest go first. Default 1000. */
  maxStoredResponses?: number;
}

/** An error the client caused or may see: OpenAI's error object with an HTTP status. */
export class OpenAIError extends Error {
  constructor(readonly status: number, message: string, readonly param: string | null = null,
    readonly type = status === 404 ? 'not_found_error' : status >= 500 ? 'server_error' : 'invalid_request_error',
    readonly code: string | null = null) {
    super(message);
  }

  toJSON(): object {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

type Body = Record<string, unknown>;
type FinishReason = 'stop' | 'length' | 'tool_calls';

/** What a request asks to generate, once read and checked. */
interface Job {
  kind: 'chat' | 'completion';
  /** The prompts' token ids (one for chat). */
  prompts: number[][];
  /** Text put before each choice's text (completions' echo), by prompt. */
  echo: string[] | null;
  n: number;
  maxTokens: number;
  stops: string[];
  options: GenerateOptions;
  stream: boolean;
  includeUsage: boolean;
  /** Log-probabilities with this many most likely tokens a position (completions' logprobs, chat's top_logprobs), or none. */
  logprobs: number | null;
  /** A chat reply read with a response_template: its prompt (as text, special tokens kept) and the request's tools. */
  parse: { template: ResponseTemplate; prefix: string; tools?: ToolSpec[] } | null;
  /** The grammar the text follows (structured outputs), compiled before the answer starts. */
  grammar: { spec: GrammarSpec; param: string; compiled?: CompiledGrammar } | null;
  /** tool_choice "required" or a named function: the reply is read as tool calls (see forcedToolCalls). */
  forcedTools: { mode: 'required' } | { mode: 'named'; name: string } | null;
}

/** A chat reply read with a response_template: its message fields, OpenAI-shaped. */
interface ParsedReply {
  content: string;
  reasoning: string | null;
  toolCalls: Array<{ name: string; arguments: string }>;
}

/** A token's log-probability and where its text starts in the choice's text. */
interface Scored extends TokenLogprob {
  offset: number;
}

/** A prompt token for echo: the first has no log-probability. */
interface PromptScored {
  token: number;
  logprob: number | null;
  top: TokenLogprob['top'] | null;
  offset: number;
}

/** One choice being generated: its decoder and how much of its text went out. */
interface Choice {
  decoder: StreamDecoder;
  text: string;
  sent: number;
  tokens: number;
  finish: FinishReason | null;
  logprobs: Scored[];
  logprobsSent: number;
}

const isObject = (v: unknown): v is Body => v !== null && typeof v === 'object' && !Array.isArray(v);
const describe = (v: unknown): string => (typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v) ?? String(v));

/** Reads an optional number field; null counts as absent (OpenAI clients send nulls). */
function numberField(body: Body, name: string, expected: string, accept: (n: number) => boolean, integer = false): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || !accept(v)) {
    throw new OpenAIError(400, `${name} must be ${expected}, got ${describe(v)}`, name);
  }
  return v;
}

function booleanField(body: Body, name: string): boolean | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new OpenAIError(400, `${name} must be true or false, got ${describe(v)}`, name);
  return v;
}

/** `stop`: a string or a list of non-empty strings. */
function stopField(body: Body): string[] {
  const v = body.stop;
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || !list.every((s) => typeof s === 'string' && s.length > 0)) {
    throw new OpenAIError(400, `stop must be a non-empty string or a list of them, got ${describe(v)}`, 'stop');
  }
  return list as string[];
}

/** The decoding settings of a request (OpenAI's names, plus top_k, min_p and repetition_penalty as vLLM takes them). */
function decodingOptions(body: Body, tokenizer: NemotronTokenizer): GenerateOptions {
  for (const name of ['suffix', 'best_of']) {
    const v = body[name];
    const harmless = v === undefined || v === null || v === false || (name === 'best_of' && v === 1);
    if (!harmless) throw new OpenAIError(400, `${name} ${describe(v)} is not supported by this server`, name);
  }
  const temperature = numberField(body, 'temperature', 'a number ≥ 0 (0 is greedy)', (n) => n >= 0);
  const topP = numberField(body, 'top_p', 'a number in (0, 1]', (n) => n > 0 && n <= 1);
  const topK = numberField(body, 'top_k', 'an integer ≥ -1 (-1 or 0: every token)', (n) => n >= -1, true);
  const minP = numberField(body, 'min_p', 'a number in [0, 1]', (n) => n >= 0 && n <= 1);
  const repetitionPenalty = numberField(body, 'repetition_penalty', 'a number > 0 (1: none)', (n) => n > 0);
  const seed = numberField(body, 'seed', 'an integer', Number.isSafeInteger, true);
  const presencePenalty = numberField(body, 'presence_penalty', 'a number in [-2, 2]', (n) => n >= -2 && n <= 2);
  const frequencyPenalty = numberField(body, 'frequency_penalty', 'a number in [-2, 2]', (n) => n >= -2 && n <= 2);
  const options: GenerateOptions = { numBeams: 1, numReturnSequences: 1, tokenizer };
  if (presencePenalty) options.presencePenalty = presencePenalty;
  if (frequencyPenalty) options.frequencyPenalty = frequencyPenalty;
  const logitBias = body.logit_bias;
  if (logitBias !== undefined && logitBias !== null) {
    // {token id: bias in [-100, 100]}, added to the token's logit before sampling: transformers' sequence_bias of one-token sequences.
    if (!isObject(logitBias)) throw new OpenAIError(400, `logit_bias must be an object of {token id: bias}, got ${describe(logitBias)}`, 'logit_bias');
    const bias = Object.entries(logitBias).map(([key, value]): [number[], number] => {
      const id = Number(key);
      if (!/^\d+$/.test(key) || id >= tokenizer.vocabSize) throw new OpenAIError(400, `logit_bias key ${JSON.stringify(key)} is not a token id in [0, ${tokenizer.vocabSize})`, 'logit_bias');
      if (typeof value !== 'number' || !(value >= -100 && value <= 100)) throw new OpenAIError(400, `logit_bias[${key}] must be a number in [-100, 100], got ${describe(value)}`, 'logit_bias');
      return [[id], value];
    }).filter(([, value]) => value !== 0);
    if (bias.length) options.sequenceBias = bias;
  }
  // OpenAI samples unless temperature is 0; a request that names no sampling setting decodes as generation_config.json says.
  const samplingGiven = topP !== undefined || topK !== undefined || minP !== undefined;
  if (temperature === 0) options.doSample = false;
  else if (temperature !== undefined || samplingGiven) options.doSample = true;
  if (temperature !== undefined && temperature > 0) options.temperature = temperature;
  if (topP !== undefined) options.topP = topP;
  if (topK !== undefined) options.topK = Math.max(0, topK);
  if (minP !== undefined) options.minP = minP;
  if (repetitionPenalty !== undefined) options.repetitionPenalty = repetitionPenalty;
  if (seed !== undefined) options.seed = seed;
  return options;
}

/**
 * The grammar a request's text must follow, if any: OpenAI's response_format (json_object: any JSON, as vLLM serves it;
 * json_schema), or vLLM's structured_outputs / guided_json, guided_choice, guided_grammar.
 */
function grammarOf(body: Body): { spec: GrammarSpec; param: string } | null {
  const found: Array<{ spec: GrammarSpec; param: string }> = [];
  const format = body.response_format;
  if (format !== undefined && format !== null) {
    if (!isObject(format) || typeof format.type !== 'string') throw new OpenAIError(400, `response_format must be {"type": "text" | "json_object" | "json_schema", ...}, got ${describe(format)}`, 'response_format');
    if (format.type === 'json_object') found.push({ spec: { type: 'json' }, param: 'response_format' });
    else if (format.type === 'json_schema') {
      const js = format.json_schema;
      if (!isObject(js) || !isObject(js.schema)) throw new OpenAIError(400, `response_format.json_schema must be {"name", "schema": {...}, "strict"}, got ${describe(js)}`, 'response_format.json_schema');
      found.push({ spec: { type: 'json_schema', schema: js.schema }, param: 'response_format.json_schema' });
    } else if (format.type !== 'text') {
      throw new OpenAIError(400, `response_format type ${describe(format.type)} is not supported; expected text, json_object or json_schema`, 'response_format');
    }
  }
  const vllm = isObject(body.structured_outputs) ? body.structured_outputs : {};
  const field = (name: string, legacy: string): [unknown, string] => (vllm[name] !== undefined && vllm[name] !== null ? [vllm[name], `structured_outputs.${name}`] : [body[legacy], legacy]);
  const [json, jsonParam] = field('json', 'guided_json');
  if (json !== undefined && json !== null) {
    let schema: unknown = json;
    if (typeof json === 'string') {
      try { schema = JSON.parse(json); } catch { throw new OpenAIError(400, `${jsonParam} must be a JSON schema (an object or its JSON text), got ${describe(json)}`, jsonParam); }
    }
    if (!isObject(schema)) throw new OpenAIError(400, `${jsonParam} must be a JSON schema object, got ${describe(json)}`, jsonParam);
    found.push({ spec: { type: 'json_schema', schema }, param: jsonParam });
  }
  const [choice, choiceParam] = field('choice', 'guided_choice');
  if (choice !== undefined && choice !== null) {
    if (!Array.isArray(choice) || choice.length === 0 || !choice.every((c) => typeof c === 'string' && c.length > 0)) {
      throw new OpenAIError(400, `${choiceParam} must be a non-empty list of non-empty strings, got ${describe(choice)}`, choiceParam);
    }
    found.push({ spec: { type: 'choice', choices: choice as string[] }, param: choiceParam });
  }
  const [grammar, grammarParam] = field('grammar', 'guided_grammar');
  if (grammar !== undefined && grammar !== null) {
    if (typeof grammar !== 'string') throw new OpenAIError(400, `${grammarParam} must be an EBNF grammar (a string), got ${describe(grammar)}`, grammarParam);
    found.push({ spec: { type: 'grammar', grammar }, param: grammarParam });
  }
  const [regex, regexParam] = field('regex', 'guided_regex');
  if (regex !== undefined && regex !== null) {
    if (typeof regex !== 'string') throw new OpenAIError(400, `${regexParam} must be a regular expression (a string), got ${describe(regex)}`, regexParam);
    found.push({ spec: { type: 'regex', regex }, param: regexParam });
  }
  if (found.length > 1) throw new OpenAIError(400, `give one structured output, got ${found.map((f) => f.param).join(' and ')}`, found[1].param);
  return found[0] ?? null;
}

/**
 * tool_choice as vLLM honours it with any model: "required" or a named function makes the reply JSON — an array of
 * {name, parameters} of the tools for "required", the named function's parameters otherwise — under a JSON-schema
 * grammar, and the answer is those tool calls. "auto" and "none" leave the reply to the model (and the response_template).
 */
function forcedToolCalls(body: Body): { forced: Job['forcedTools']; grammar: { spec: GrammarSpec; param: string } | null } {
  const choice = body.tool_choice;
  if (choice === undefined || choice === null || choice === 'auto' || choice === 'none') return { forced: null, grammar: null };
  const tools = Array.isArray(body.tools) ? body.tools : [];
  const functions = tools.map((t, i) => {
    const fn = isObject(t) && isObject(t.function) ? t.function : null;
    if (!fn || typeof fn.name !== 'string') throw new OpenAIError(400, `tools[${i}] must be {"type": "function", "function": {"name", "parameters"}}, got ${describe(t)}`, `tools[${i}]`);
    const parameters = fn.parameters === undefined || fn.parameters === null ? { type: 'object', properties: {} } : fn.parameters;
    if (!isObject(parameters)) throw new OpenAIError(400, `tools[${i}].function.parameters must be a JSON schema object, got ${describe(fn.parameters)}`, `tools[${i}].function.parameters`);
    return { name: fn.name, parameters };
  });
  if (choice === 'required') {
    if (functions.length === 0) throw new OpenAIError(400, 'tool_choice "required" needs tools', 'tool_choice');
    const schema = {
      type: 'array', minItems: 1,
      items: { anyOf: functions.map((f) => ({ type: 'object', properties: { name: { type: 'string', enum: [f.name] }, parameters: f.parameters }, required: ['name', 'parameters'] })) },
    };
    return { forced: { mode: 'required' }, grammar: { spec: { type: 'json_schema', schema }, param: 'tool_choice' } };
  }
  const named = isObject(choice) && choice.type === 'function' && isObject(choice.function) && typeof choice.function.name === 'string' ? choice.function.name : null;
  if (named === null) throw new OpenAIError(400, `tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name"}}, got ${describe(choice)}`, 'tool_choice');
  const fn = functions.find((f) => f.name === named);
  if (!fn) throw new OpenAIError(400, `tool_choice names the function ${JSON.stringify(named)}, which is not among the tools (${functions.map((f) => f.name).join(', ') || 'none'})`, 'tool_choice');
  return { forced: { mode: 'named', name: named }, grammar: { spec: { type: 'json_schema', schema: fn.parameters }, param: 'tool_choice' } };
}

/** A chat message's content as the template takes it: a string (OpenAI's text parts joined; null as ''). */
function messageContent(content: unknown, i: number): string {
  if (content === null || content === undefined) return '';
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content.map((part, j) => {
      // Chat's text parts, and the Responses API's input_text / output_text ones.
      if (isObject(part) && ['text', 'input_text', 'output_text'].includes(part.type as string) && typeof part.text === 'string') return part.text;
      const kind = isObject(part) ? describe(part.type) : describe(part);
      throw new OpenAIError(400, `messages[${i}].content[${j}] is a ${kind} part; this model reads text parts only`, `messages[${i}].content`);
    }).join('');
  }
  throw new OpenAIError(400, `messages[${i}].content must be a string, null or a list of text parts, got ${describe(content)}`, `messages[${i}].content`);
}

function chatMessages(body: Body): ChatMessage[] {
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new OpenAIError(400, `messages must be a non-empty list of {role, content}, got ${describe(messages)}`, 'messages');
  }
  return messages.map((m, i) => {
    if (!isObject(m) || typeof m.role !== 'string') throw new OpenAIError(400, `messages[${i}] must be an object with a string role, got ${describe(m)}`, `messages[${i}]`);
    if (m.tool_calls === undefined || m.tool_calls === null || (Array.isArray(m.tool_calls) && m.tool_calls.length === 0)) {
      return { ...m, role: m.role, content: messageContent(m.content, i) };
    }
    // An assistant's tool calls: their arguments (JSON text in OpenAI's API) as objects, which chat templates iterate;
    // the content beside them is left out (empty, or the calls' raw markup), as transformers serve renders them.
    if (!Array.isArray(m.tool_calls)) throw new OpenAIError(400, `messages[${i}].tool_calls must be a list, got ${describe(m.tool_calls)}`, `messages[${i}].tool_calls`);
    const toolCalls = m.tool_calls.map((call, k) => {
      const at = `messages[${i}].tool_calls[${k}]`;
      const fn = isObject(call) ? (isObject(call.function) ? call.function : call) : null;
      if (!isObject(call) || !fn || typeof fn.name !== 'string') throw new OpenAIError(400, `${at} must be {id, type: "function", function: {name, arguments}}, got ${describe(call)}`, at);
      let args = fn.arguments ?? {};
      if (typeof args === 'string') {
        try {
          args = JSON.parse(args);
        } catch (e) {
          throw new OpenAIError(400, `${at}.function.arguments must be JSON text, got ${describe(fn.arguments)} (${(e as Error).message})`, `${at}.function.arguments`);
        }
      }
      return isObject(call.function) ? { ...call, function: { ...fn, arguments: args } } : { ...call, arguments: args };
    });
    return { ...m, role: m.role, content: '', tool_calls: toolCalls };
  });
}

/**
 * A Responses API request (`input`, `instructions`, `max_output_tokens`, `text.format`) as the chat request it amounts
 * to: the instructions as a system message, then the previous response's conversation (previous_response_id), then a
 * string input as a user message or the input items as messages (responseItemsAsMessages). Also the conversation to
 * store with the reply (without the instructions, which do not carry over).
 */
function responsesAsChat(body: Body, previous: Body[] = []): { chat: Body; conversation: Body[] } {
  if (body.conversation !== undefined && body.conversation !== null) {
    throw new OpenAIError(400, 'conversation is not supported: this server keeps responses (previous_response_id), not conversations', 'conversation');
  }
  // text.format: the Responses API's structured output ({type: "json_schema", name, schema, strict} flat), as response_format.
  const format = isObject(body.text) ? body.text.format : undefined;
  let responseFormat: unknown;
  if (format !== undefined && format !== null) {
    if (!isObject(format)) throw new OpenAIError(400, `text.format must be {"type": "text" | "json_object" | "json_schema", ...}, got ${describe(format)}`, 'text.format');
    const { type, ...rest } = format;
    responseFormat = type === 'json_schema' ? { type, json_schema: rest } : format;
  }
  const input = body.input;
  let messages: unknown[];
  if (typeof input === 'string') messages = [{ role: 'user', content: input }];
  else if (Array.isArray(input) && input.length > 0) {
    messages = responseItemsAsMessages(input);
  } else {
    throw new OpenAIError(400, `input must be a string or a non-empty list of messages, got ${describe(input)}`, 'input');
  }
  // The previous response's conversation comes first; instructions are the request's own (they do not carry over).
  const conversation = [...previous, ...(messages as Body[])];
  messages = typeof body.instructions === 'string' ? [{ role: 'system', content: body.instructions }, ...conversation] : conversation.slice();
  const { input: _i, instructions: _s, max_output_tokens: maxOutput, text: _t, store: _st, metadata: _m, reasoning: _r, truncation: _tr, user: _u, n: _n,
    parallel_tool_calls: _p, previous_response_id: _prev, tools, ...rest } = body;
  // The Responses API's tools are flat ({type, name, parameters}); chat templates take them nested under `function`.
  const nested = Array.isArray(tools) ? tools.map((t) => (isObject(t) && !('function' in t) ? { type: 'function', function: Object.fromEntries(Object.entries(t).filter(([k]) => k !== 'type')) } : t)) : tools;
  const chat = {
    ...rest, messages, ...(nested !== undefined ? { tools: nested } : {}), ...(maxOutput !== undefined && maxOutput !== null ? { max_tokens: maxOutput } : {}),
    ...(responseFormat !== undefined ? { response_format: responseFormat } : {}),
  };
  return { chat, conversation };
}

/**
 * The Responses API's input items as chat messages (as transformers serve reads them): messages; a function_call
 * joins the assistant message before it as a tool call; a function_call_output becomes a tool message; a reasoning
 * item becomes the next assistant message's reasoning_content.
 */
function responseItemsAsMessages(items: unknown[]): Body[] {
  const messages: Body[] = [];
  let reasoning: string | null = null;
  items.forEach((item, i) => {
    const at = `input[${i}]`;
    if (!isObject(item)) throw new OpenAIError(400, `${at} must be an item object, got ${describe(item)}`, at);
    const field = (name: string): string => {
      if (typeof item[name] !== 'string') throw new OpenAIError(400, `${at}.${name} must be a string, got ${describe(item[name])}`, `${at}.${name}`);
      return item[name] as string;
    };
    if (item.type === 'reasoning') {
      const parts = Array.isArray(item.content) ? item.content : [];
      reasoning = parts.map((p) => (isObject(p) && typeof p.text === 'string' ? p.text : '')).join('');
    } else if ((item.type === undefined || item.type === 'message') && typeof item.role === 'string') {
      const message: Body = { role: item.role, content: item.content ?? '' };
      if (reasoning !== null && item.role === 'assistant') { message.reasoning_content = reasoning; reasoning = null; }
      messages.push(message);
    } else if (item.type === 'function_call') {
      const call = { id: field('call_id'), type: 'function', function: { name: field('name'), arguments: field('arguments') } };
      const last = messages[messages.length - 1];
      if (last && last.role === 'assistant') last.tool_calls = [...(Array.isArray(last.tool_calls) ? last.tool_calls : []), call];
      else messages.push({ role: 'assistant', content: '', tool_calls: [call] });
    } else if (item.type === 'function_call_output') {
      const output = typeof item.output === 'string' ? item.output : JSON.stringify(item.output);
      messages.push({ role: 'tool', tool_call_id: field('call_id'), content: output });
    } else {
      throw new OpenAIError(400, `${at} is a ${describe(item.type)} item; this server reads messages, reasoning, function_call and function_call_output items`, at);
    }
  });
  return messages;
}

/** Completions' prompt: a string, a list of strings, a list of token ids, or a list of those. */
function completionPrompts(body: Body, tokenizer: NemotronTokenizer, vocabSize: number): { ids: number[][]; texts: string[] } {
  const p = body.prompt;
  const isIds = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'number');
  let list: Array<string | number[]>;
  if (typeof p === 'string' || isIds(p)) list = [p];
  else if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === 'string' || isIds(x))) list = p as Array<string | number[]>;
  else throw new OpenAIError(400, `prompt must be a string, a list of strings, a list of token ids or a list of those, got ${describe(p)}`, 'prompt');
  const ids = list.map((item, i) => {
    if (typeof item === 'string') return tokenizer.encode(item);
    const bad = item.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= vocabSize);
    if (bad >= 0) throw new OpenAIError(400, `prompt${list.length > 1 ? `[${i}]` : ''}[${bad}] = ${item[bad]} is not a token id in [0, ${vocabSize})`, 'prompt');
    return item;
  });
  ids.forEach((row, i) => {
    if (row.length === 0) throw new OpenAIError(400, `prompt${list.length > 1 ? `[${i}]` : ''} encodes to no tokens`, 'prompt');
  });
  return { ids, texts: list.map((item) => (typeof item === 'string' ? item : tokenizer.decode(item, { skipSpecialTokens: true }))) };
}

/**
 * The sampler's seed of a job's row: the request's seed for a prompt's first choice (so that n = 1 samples as
 * generate() with that seed), derived ones for the other choices (so that they differ); random without a seed.
 */
function rowSeed(job: Job, row: number): string | number {
  const seed = job.options.seed;
  if (seed === undefined) return randomBytes(8).toString('hex');
  const choice = row % job.n;
  return choice === 0 ? seed : `${seed}:${choice}`;
}

/** Index of the first stop string in `text`, searching from `from`, or -1. */
function firstStop(text: string, stops: string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    const at = text.indexOf(s, Math.max(0, from));
    if (at >= 0 && (best < 0 || at < best)) best = at;
  }
  return best;
}

/** Length of the longest tail of `text` that begins some stop string (held back: the next token may complete it). */
function stopPrefixTail(text: string, stops: string[]): number {
  let hold = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > hold; k--) {
      if (text.endsWith(s.slice(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

const REASONING_FIELDS = ['reasoning_content', 'thinking', 'reasoning'];

/** A parsed tool call ({type, function: {name, arguments}}) as OpenAI sends it: arguments as a JSON string. */
function toolCallsOf(value: Json | undefined): ParsedReply['toolCalls'] {
  if (value === undefined || value === null) return [];
  return (Array.isArray(value) ? value : [value]).flatMap((call) => {
    if (Array.isArray(call)) return toolCallsOf(call);
    const fn = isObject(call) && isObject(call.function) ? call.function : call;
    if (!isObject(fn) || typeof fn.name !== 'string') throw new Error(`a parsed tool call has no function name: ${JSON.stringify(call)}`);
    const args = fn.arguments ?? {};
    return [{ name: fn.name, arguments: typeof args === 'string' ? args : JSON.stringify(args) }];
  });
}

/** The message a response_template read, as a chat reply: content, reasoning, tool calls (transformers serve's fields). */
function replyOf(message: Record<string, Json>): ParsedReply {
  const content = message.content ?? '';
  const reasoningField = REASONING_FIELDS.find((f) => message[f] !== undefined && message[f] !== null);
  const reasoning = reasoningField === undefined ? null : message[reasoningField];
  return {
    content: typeof content === 'string' ? content : JSON.stringify(content),
    reasoning: reasoning === null ? null : typeof reasoning === 'string' ? reasoning : JSON.stringify(reasoning),
    toolCalls: toolCallsOf(message.tool_calls),
  };
}

/** A forced tool call's reply (grammar-made JSON) as tool calls; null where there is none or the JSON was cut short. */
function forcedReplyOf(job: Job, c: Choice): ParsedReply['toolCalls'] | null {
  if (!job.forcedTools || c.finish === 'length') return null;
  const value = JSON.parse(c.text) as unknown;
  if (job.forcedTools.mode === 'named') return [{ name: job.forcedTools.name, arguments: JSON.stringify(value) }];
  return (value as Array<{ name: string; parameters: unknown }>).map((call) => ({ name: call.name, arguments: JSON.stringify(call.parameters) }));
}

/** What a parser's events stream to the client: content and reasoning text as it comes, a tool call once it closes. */
type ReplyPiece = { content: string } | { reasoning: string } | { toolCall: ParsedReply['toolCalls'][number] };

function replyPieces(events: ResponseEvent[]): ReplyPiece[] {
  const pieces: ReplyPiece[] = [];
  for (const e of events) {
    if (e.type === 'region_chunk' && !e.dirty && e.text) {
      if (REASONING_FIELDS.includes(e.field)) pieces.push({ reasoning: e.text });
      else if (e.field === 'content') pieces.push({ content: e.text });
    } else if (e.type === 'region_close' && e.field === 'tool_calls') {
      for (const toolCall of toolCallsOf(e.value)) pieces.push({ toolCall });
    }
  }
  return pieces;
}

/**
 * The request handler of an OpenAI-compatible server for `model` and `tokenizer` (see the module comment); mount it
 * with `http.createServer(handler)`, or use {@link createOpenAIServer}.
 */
export function openAIHandler(served: NemotronForCausalLM | NemotronHForCausalLM, tokenizer: NemotronTokenizer, options: OpenAIServerOptions): http.RequestListener {
  // A NemotronH model has what rowDecoding reads (config's vocabulary, lengths and token ids, generationConfig).
  const model = served as NemotronForCausalLM;
  const created = Math.floor(Date.now() / 1000);
  const maxRows = options.maxRows ?? 16;
  const maxBody = options.maxBodyBytes ?? 8 * 1024 * 1024;
  const context = model.config.maxSequenceLength;
  const scheduling = { maxRows, prefillChunkTokens: options.prefillChunkTokens, prefixCacheTokens: options.prefixCacheTokens };
  const batcher = options.batcher ?? (served instanceof NemotronHForCausalLM ? new NemotronHBatcher(served, scheduling) : new ContinuousBatcher(model, scheduling));
  // Checked now, so that a template this server cannot read fails at start, not at the first request.
  const chosenTemplate = options.responseTemplate === undefined ? tokenizer.responseTemplate : options.responseTemplate;
  const responseTemplate = chosenTemplate ? loadResponseTemplate(chosenTemplate) : null;
  // The Responses API's stored responses (and the conversation each ends), oldest first.
  const stored = new Map<string, { response: object; conversation: Body[] }>();
  const maxStored = options.maxStoredResponses ?? 1000;
  /** The conversation a previous response ended (its input and its output), or a 404. */
  const previousConversation = (body: Body): Body[] => {
    const id = body.previous_response_id;
    if (id === undefined || id === null) return [];
    const entry = typeof id === 'string' ? stored.get(id) : undefined;
    if (!entry) throw new OpenAIError(404, `Previous response with id ${describe(id)} not found.`, 'previous_response_id', 'invalid_request_error', 'previous_response_not_found');
    return entry.conversation;
  };
  // Structured outputs: one compiler (it reads the vocabulary once), grammars cached by their spec.
  let grammarCompiler: Promise<GrammarCompiler> | null = null;
  const grammars = new Map<string, Promise<CompiledGrammar>>();
  /** Compiles the job's grammar before anything is sent: a grammar that does not compile is the request's 400. */
  async function prepareGrammar(job: Job): Promise<void> {
    if (!job.grammar) return;
    const eos = rowDecoding(model, job.prompts[0], { ...job.options, maxNewTokens: 1 }).eosTokenIds;
    grammarCompiler ??= GrammarCompiler.create(tokenizer, { vocabSize: model.config.vocabSize, stopTokenIds: eos.length ? eos : undefined });
    const key = JSON.stringify([job.grammar.spec, eos]);
    let compiled = grammars.get(key);
    if (!compiled) {
      compiled = grammarCompiler.then((c) => c.compile(job.grammar!.spec));
      grammars.set(key, compiled);
      // A bad grammar is not kept; the cache holds the last 64 good ones.
      compiled.catch(() => grammars.delete(key));
      if (grammars.size > 64) {
        const [oldest, grammar] = grammars.entries().next().value as [string, Promise<CompiledGrammar>];
        grammars.delete(oldest);
        void grammar.then((g) => g.dispose(), () => undefined);
      }
    }
    try {
      job.grammar.compiled = await compiled;
    } catch (e) {
      throw new OpenAIError(400, (e as Error).message, job.grammar.param);
    }
  }

  const modelCard = () => ({ id: options.modelId, object: 'model', created, owned_by: 'nemotron-tfjs' });

  function checkModel(body: Body): void {
    if (body.model !== undefined && body.model !== null && body.model !== options.modelId) {
      throw new OpenAIError(404, `The model ${describe(body.model)} does not exist; this server serves ${JSON.stringify(options.modelId)}`, 'model', 'invalid_request_error', 'model_not_found');
    }
  }

  /** Reads and checks a generation request, before it waits for the model. */
  function readJob(kind: Job['kind'], body: Body): Job {
    checkModel(body);
    const decoding = decodingOptions(body, tokenizer);
    const stream = booleanField(body, 'stream') ?? false;
    const streamOptions = body.stream_options;
    if (streamOptions !== undefined && streamOptions !== null && !isObject(streamOptions)) {
      throw new OpenAIError(400, `stream_options must be an object, got ${describe(streamOptions)}`, 'stream_options');
    }
    const includeUsage = isObject(streamOptions) && streamOptions.include_usage === true;
    const n = numberField(body, 'n', `an integer in [1, ${maxRows}]`, (v) => v >= 1 && v <= maxRows, true) ?? 1;
    // generation_config.json's stop_strings join the request's, with OpenAI's semantics (the string is not returned).
    const fileStops = model.generationConfig?.stop_strings;
    const stops = [...stopField(body), ...(typeof fileStops === 'string' ? [fileStops] : Array.isArray(fileStops) ? fileStops.filter((s): s is string => typeof s === 'string' && s.length > 0) : [])];
    decoding.stopStrings = [];
    let prompts: number[][];
    let echo: string[] | null = null;
    let parse: Job['parse'] = null;
    const maxTokensName = kind === 'chat' && body.max_completion_tokens !== undefined && body.max_completion_tokens !== null ? 'max_completion_tokens' : 'max_tokens';
    const requested = kind === 'chat' ? numberField(body, maxTokensName, 'a positive integer', (v) => v >= 1, true)
      : numberField(body, maxTokensName, 'an integer ≥ 0 (0 with echo: the prompt alone)', (v) => v >= 0, true);
    let logprobs: number | null = null;
    if (kind === 'completion') {
      logprobs = numberField(body, 'logprobs', 'an integer in [0, 20] (the most likely tokens listed a position)', (v) => v >= 0 && v <= 20, true) ?? null;
    } else {
      const top = numberField(body, 'top_logprobs', 'an integer in [0, 20]', (v) => v >= 0 && v <= 20, true);
      if (booleanField(body, 'logprobs')) logprobs = top ?? 0;
      else if (top !== undefined) throw new OpenAIError(400, 'top_logprobs needs logprobs: true', 'top_logprobs');
    }
    if (kind === 'chat') {
      const messages = chatMessages(body);
      const tools = body.tools;
      if (tools !== undefined && tools !== null && !Array.isArray(tools)) throw new OpenAIError(400, `tools must be a list, got ${describe(tools)}`, 'tools');
      let ids: number[];
      try {
        ids = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true, ...(Array.isArray(tools) ? { tools: tools as object[] } : {}) });
      } catch (e) {
        throw new OpenAIError(400, (e as Error).message, 'messages');
      }
      if (ids.length === 0) throw new OpenAIError(400, 'the chat template renders these messages to no tokens', 'messages');
      prompts = [ids];
      if (responseTemplate) parse = { template: responseTemplate, prefix: tokenizer.decode(ids), tools: Array.isArray(tools) ? tools as ToolSpec[] : undefined };
    } else {
      const read = completionPrompts(body, tokenizer, model.config.vocabSize);
      prompts = read.ids;
      if (booleanField(body, 'echo')) echo = read.texts;
      if (requested === 0 && !echo) throw new OpenAIError(400, 'max_tokens 0 generates nothing; it is for echo: true (the prompt and its logprobs)', 'max_tokens');
    }
    if (prompts.length * n > maxRows) {
      throw new OpenAIError(400, `${prompts.length} prompts × n ${n} = ${prompts.length * n} rows; this server decodes at most ${maxRows} a request`, 'n');
    }
    const longest = Math.max(...prompts.map((p) => p.length));
    const room = context - longest;
    // OpenAI's default: chat runs to the end of the context, completions write 16 tokens.
    const maxTokens = requested ?? (kind === 'chat' ? Math.min(options.defaultMaxTokens ?? 4096, room) : 16);
    if (longest + maxTokens > context || (kind === 'chat' && maxTokens < 1)) {
      const where = kind === 'chat' ? 'in the messages' : 'in the prompt';
      throw new OpenAIError(400, `This model's maximum context length is ${context} tokens. However, you requested ${longest + maxTokens} tokens ` +
        `(${longest} ${where}, ${maxTokens} for the completion). Please reduce the length of the ${kind === 'chat' ? 'messages' : 'prompt'} or completion.`,
        requested !== undefined ? maxTokensName : kind === 'chat' ? 'messages' : 'prompt', 'invalid_request_error', 'context_length_exceeded');
    }
    if (maxTokens > 0) {
      // What generate() would refuse (a setting of generation_config.json the request leaves in place, say) is the request's error.
      try {
        rowDecoding(model, prompts[0], { ...decoding, maxNewTokens: maxTokens });
      } catch (e) {
        throw new OpenAIError(400, (e as Error).message);
      }
    }
    let grammar = grammarOf(body);
    let forcedTools: Job['forcedTools'] = null;
    if (kind === 'chat') {
      const forced = forcedToolCalls(body);
      if (forced.grammar && grammar) throw new OpenAIError(400, `tool_choice ${describe(body.tool_choice)} and ${grammar.param} both constrain the reply; give one`, 'tool_choice');
      if (forced.grammar) [grammar, forcedTools, parse] = [forced.grammar, forced.forced, null];
    } else if (body.tool_choice !== undefined && body.tool_choice !== null && body.tool_choice !== 'none' && body.tool_choice !== 'auto') {
      throw new OpenAIError(400, 'tool_choice is for chat completions', 'tool_choice');
    }
    return { kind, prompts, echo, n, maxTokens, stops, options: decoding, stream, includeUsage, logprobs, parse, grammar, forcedTools };
  }

  /**
   * Decodes a job's rows on the batcher (beside other requests' rows), feeding each choice's text to `onText` as it
   * becomes final (a tail that may begin a stop string is held back; the stop string and what follows are never sent).
   */
  async function run(job: Job, onText: (index: number, text: string, logprobs: Scored[]) => void, aborted: () => boolean): Promise<Choice[]> {
    const rows = job.prompts.flatMap((p) => Array.from({ length: job.n }, () => p));
    const choices: Choice[] = rows.map((row) => {
      // The prompt goes through the decoder first (its text discarded), so that the answer's first token decodes as it
      // does after the prompt (a SentencePiece decoder strips the leading space of a text's start only).
      // A reply read with a response_template keeps its special tokens (they may be its delimiters), as transformers reads it.
      const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: !job.parse });
      for (const id of row) decoder.push(id);
      return { decoder, text: '', sent: 0, tokens: 0, finish: job.maxTokens === 0 ? 'length' : null, logprobs: [], logprobsSent: 0 };
    });
    if (job.maxTokens === 0) return choices;
    const longestStop = Math.max(0, ...job.stops.map((s) => s.length));
    const send = (i: number, upTo: number) => {
      const c = choices[i];
      const scored = c.logprobs.slice(c.logprobsSent);
      if (upTo > c.sent || scored.length) onText(i, c.text.slice(c.sent, Math.max(c.sent, upTo)), scored);
      c.sent = Math.max(c.sent, upTo);
      c.logprobsSent = c.logprobs.length;
    };
    /** Row i's new token: its text, log-probability and whether it ends the choice; false once it has ended. */
    const accept = (i: number, eos: number[], token: number, logits: Float32Array | null): boolean => {
      const c = choices[i];
      c.tokens++;
      const before = c.text.length;
      if (eos.includes(token)) {
        // EOS: its text is not part of the answer (a response_template reads it, as transformers' parser sees it).
        c.text += job.parse ? c.decoder.push(token) + c.decoder.flush() : c.decoder.flush();
        c.finish = 'stop';
      } else {
        // The model's own distribution (before temperature and the other processors), as vLLM reports it.
        if (logits) c.logprobs.push({ ...logprobOf(logits, token, job.logprobs ?? 0), offset: before });
        c.text += c.decoder.push(token);
        if (c.tokens === job.maxTokens) {
          c.text += c.decoder.flush();
          c.finish = 'length';
        }
      }
      const at = job.stops.length ? firstStop(c.text, job.stops, before - longestStop + 1) : -1;
      if (at >= 0) {
        c.text = c.text.slice(0, at);
        c.finish = 'stop';
      }
      send(i, c.finish ? c.text.length : c.text.length - stopPrefixTail(c.text, job.stops));
      return c.finish === null && !aborted();
    };
    await Promise.all(rows.map(async (prompt, i) => {
      const constraint = job.grammar?.compiled ? await job.grammar.compiled.constraint() : undefined;
      try {
        const decoding = rowDecoding(model, prompt, { ...job.options, seed: rowSeed(job, i), maxNewTokens: job.maxTokens }, constraint);
        await batcher.generate({
          prompt, decoding, wantLogits: job.logprobs !== null, cancelled: aborted,
          onToken: (token, logits) => accept(i, decoding.eosTokenIds, token, logits),
        });
      } finally {
        constraint?.dispose();
      }
    }));
    return choices;
  }

  const usage = (job: Job, choices: Choice[]) => {
    const promptTokens = job.prompts.reduce((s, p) => s + p.length, 0);
    const completionTokens = choices.reduce((s, c) => s + c.tokens, 0);
    return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
  };

  // A token's text as it decodes after other text (a SentencePiece piece keeps its leading space), as logprobs name tokens.
  const afterText = stopStringDecoder(tokenizer);
  const tokenTexts = new Map<number, string>();
  const tokenText = (id: number): string => {
    let text = tokenTexts.get(id);
    if (text === undefined) tokenTexts.set(id, text = afterText([id]));
    return text;
  };

  /** The prompt's tokens for echo with logprobs: the first has none (nothing comes before it); offsets in its text. */
  async function promptScores(prompt: number[], topK: number): Promise<PromptScored[]> {
    const scored = await sequenceLogprobs(served, prompt, { topK });
    const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: true });
    let offset = 0;
    return prompt.map((token, i) => {
      const entry = { token, logprob: i === 0 ? null : scored[i - 1].logprob, top: i === 0 ? null : scored[i - 1].top, offset };
      offset += decoder.push(token).length;
      return entry;
    });
  }

  /** OpenAI's completions logprobs: tokens, their log-probabilities, the most likely tokens a position, text offsets. */
  const completionLogprobs = (entries: PromptScored[], shift: number) => ({
    tokens: entries.map((e) => tokenText(e.token)),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => {
      if (e.top === null) return null;
      // Tokens that decode to the same text keep the likelier one (the list is most likely first).
      const top: Record<string, number> = {};
      for (const t of e.top) if (!(tokenText(t.token) in top)) top[tokenText(t.token)] = t.logprob;
      return top;
    }),
    text_offset: entries.map((e) => e.offset + shift),
  });

  /** OpenAI's chat logprobs: each token with its UTF-8 bytes and the most likely tokens at its position. */
  const chatLogprobs = (entries: Scored[]) => {
    const named = (token: number, logprob: number) => ({ token: tokenText(token), logprob, bytes: [...Buffer.from(tokenText(token), 'utf8')] });
    return { content: entries.map((e) => ({ ...named(e.token, e.logprob), top_logprobs: e.top.map((t) => named(t.token, t.logprob)) })), refusal: null };
  };

  async function generation(job: Job, res: http.ServerResponse): Promise<number> {
    await prepareGrammar(job);
    const id = `${job.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const stamp = Math.floor(Date.now() / 1000);
    const object = job.kind === 'chat' ? 'chat.completion' : 'text_completion';
    let closed = false;
    res.on('close', () => {
      closed = !res.writableFinished;
    });
    const echoOf = (i: number) => (job.echo ? job.echo[Math.floor(i / job.n)] : '');
    /** With echo and logprobs, the scored prompt of each choice (computed once a prompt). */
    const scorePrompts = async (): Promise<Array<PromptScored[] | null>> => {
      const scored = job.echo && job.logprobs !== null ? await Promise.all(job.prompts.map((p) => promptScores(p, job.logprobs!))) : null;
      return Array.from({ length: job.prompts.length * job.n }, (_, i) => scored?.[Math.floor(i / job.n)] ?? null);
    };
    const logprobsOf = (index: number, entries: Scored[], prompt: PromptScored[] | null = null) => {
      if (job.logprobs === null) return null;
      if (job.kind === 'chat') return chatLogprobs(entries);
      return completionLogprobs([...(prompt ?? []), ...entries.map((e) => ({ ...e, offset: e.offset + echoOf(index).length }))], 0);
    };
    const toolCallDelta = (k: number, call: ParsedReply['toolCalls'][number]) => ({ index: k, id: `${id}_tool_call_${k}`, type: 'function', function: call });
    const forcedReply = (c: Choice) => forcedReplyOf(job, c);
    /** A chat choice's message: its text, or what the response_template reads in it. */
    const chatMessage = (c: Choice): { message: object; toolCalls: boolean } => {
      const forced = forcedReply(c);
      if (forced) return { message: { role: 'assistant', content: null, tool_calls: forced.map((call, k) => { const { index: _i, ...rest } = toolCallDelta(k, call); return rest; }) }, toolCalls: true };
      if (!job.parse) return { message: { role: 'assistant', content: c.text }, toolCalls: false };
      let reply: ParsedReply;
      try {
        reply = replyOf(parseResponse(c.text, job.parse.template, job.parse));
      } catch (e) {
        // What the model wrote does not read as the template says (a malformed tool call): the text is the content.
        options.log?.(`response_template: ${(e as Error).message}; the reply goes out as plain content`);
        reply = { content: c.text, reasoning: null, toolCalls: [] };
      }
      const message = {
        role: 'assistant', content: reply.content, ...(reply.reasoning !== null ? { reasoning_content: reply.reasoning } : {}),
        ...(reply.toolCalls.length ? { tool_calls: reply.toolCalls.map((call, k) => { const { index: _i, ...rest } = toolCallDelta(k, call); return rest; }) } : {}),
      };
      return { message, toolCalls: reply.toolCalls.length > 0 };
    };
    if (!job.stream) {
      const prompts = await scorePrompts();
      const choices = await run(job, () => undefined, () => closed);
      const body = {
        id, object, created: stamp, model: options.modelId,
        choices: choices.map((c, index) => {
          if (job.kind !== 'chat') return { index, text: echoOf(index) + c.text, logprobs: logprobsOf(index, c.logprobs, prompts[index]), finish_reason: c.finish ?? 'length' };
          const { message, toolCalls } = chatMessage(c);
          return { index, message, logprobs: logprobsOf(index, c.logprobs), finish_reason: toolCalls ? 'tool_calls' : c.finish ?? 'length' };
        }),
        usage: usage(job, choices),
      };
      sendJson(res, 200, body);
      return body.usage.completion_tokens;
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
    const chunkObject = job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const event = (choices: object[], extra: object = {}) => {
      if (!closed) res.write(`data: ${JSON.stringify({ id, object: chunkObject, created: stamp, model: options.modelId, choices, ...extra })}\n\n`);
    };
    const rowCount = job.prompts.length * job.n;
    const piece = (index: number, text: string, finish: FinishReason | null, logprobs: object | null = null) => (job.kind === 'chat'
      ? { index, delta: text ? { content: text } : {}, logprobs, finish_reason: finish }
      : { index, text, logprobs, finish_reason: finish });
    const prompts = await scorePrompts();
    // With a response_template, each choice's text goes through its parser: content and reasoning stream as they
    // come, a tool call once its region closes (transformers serve's chunks).
    const parsers = job.parse ? Array.from({ length: rowCount }, () => new ResponseParser(job.parse!.template, job.parse!)) : null;
    const toolCallsSent = new Array<number>(rowCount).fill(0);
    const sendPieces = (index: number, pieces: ReplyPiece[], logprobs: object | null) => {
      if (pieces.length === 0 && logprobs) event([{ index, delta: {}, logprobs, finish_reason: null }]);
      pieces.forEach((p, k) => {
        const delta = 'content' in p ? { content: p.content } : 'reasoning' in p ? { reasoning_content: p.reasoning }
          : { tool_calls: [toolCallDelta(toolCallsSent[index], p.toolCall)] };
        if ('toolCall' in p) toolCallsSent[index]++;
        event([{ index, delta, logprobs: k === 0 ? logprobs : null, finish_reason: null }]);
      });
    };
    for (let index = 0; index < rowCount; index++) {
      if (job.kind === 'chat') {
        event([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
        if (parsers) sendPieces(index, replyPieces(parsers[index].initialEvents), null);
      } else if (job.echo) event([piece(index, echoOf(index), null, prompts[index] && completionLogprobs(prompts[index]!, 0))]);
    }
    const onText = (index: number, text: string, scored: Scored[]) => {
      // A forced tool call streams once its JSON is whole (at the end).
      if (job.forcedTools) { if (scored.length) event([{ index, delta: {}, logprobs: logprobsOf(index, scored), finish_reason: null }]); return; }
      if (!parsers) event([piece(index, text, null, logprobsOf(index, scored))]);
      else sendPieces(index, replyPieces(parsers[index].feed(text)), scored.length ? logprobsOf(index, scored) : null);
    };
    const choices = closed ? [] : await run(job, onText, () => closed);
    choices.forEach((c, index) => {
      const forced = forcedReply(c);
      if (forced) sendPieces(index, forced.map((toolCall) => ({ toolCall })), null);
      else if (job.forcedTools && c.text) sendPieces(index, [{ content: c.text }], null);
      if (parsers) {
        let events: ResponseEvent[] = [];
        try {
          events = parsers[index].finalize().events;
        } catch (e) {
          // The reply stopped inside a region (a tool call cut by max_tokens, say): its tail is dropped, as transformers does.
          options.log?.(`response_template: ${(e as Error).message}; the reply's unfinished tail is dropped`);
        }
        sendPieces(index, replyPieces(events), null);
      }
      event([piece(index, '', toolCallsSent[index] > 0 ? 'tool_calls' : c.finish ?? 'length')]);
    });
    if (job.includeUsage && choices.length) event([], { usage: usage(job, choices) });
    if (!closed) res.end('data: [DONE]\n\n');
    return choices.reduce((s, c) => s + c.tokens, 0);
  }

  /** vLLM's /tokenize: a prompt's (or a conversation's, through the chat template) token ids and their count. */
  function tokenizeBody(body: Body): object {
    let tokens: number[];
    if (body.messages !== undefined) {
      try {
        tokens = tokenizer.applyChatTemplate(chatMessages(body), { addGenerationPrompt: booleanField(body, 'add_generation_prompt') ?? true });
      } catch (e) {
        throw e instanceof OpenAIError ? e : new OpenAIError(400, (e as Error).message, 'messages');
      }
    } else if (typeof body.prompt === 'string') {
      tokens = tokenizer.encode(body.prompt, { addSpecialTokens: booleanField(body, 'add_special_tokens') ?? true });
    } else {
      throw new OpenAIError(400, `/tokenize needs a prompt (a string) or messages, got ${describe(body.prompt ?? body.messages)}`, 'prompt');
    }
    return { tokens, count: tokens.length, max_model_len: context };
  }

  /** vLLM's /detokenize: the text of token ids. */
  function detokenizeBody(body: Body): object {
    const tokens = body.tokens;
    if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && (t as number) >= 0 && (t as number) < tokenizer.vocabSize)) {
      throw new OpenAIError(400, `tokens must be a list of token ids in [0, ${tokenizer.vocabSize}), got ${describe(tokens)}`, 'tokens');
    }
    return { prompt: tokenizer.decode(tokens as number[]) };
  }

  /**
   * The Responses API's answer to a (chat) job: a message item of output text — and, where a response_template reads
   * them, a reasoning item before it and function_call items after it (transformers serve's items); streamed as
   * typed events.
   */
  async function respond(job: Job, request: Body, res: http.ServerResponse, conversation: Body[]): Promise<number> {
    await prepareGrammar(job);
    const id = `resp_${randomBytes(12).toString('hex')}`;
    let itemId = `msg_${randomBytes(12).toString('hex')}`;
    const reasoningId = `rs_${randomBytes(12).toString('hex')}`;
    const createdAt = Math.floor(Date.now() / 1000);
    let closed = false;
    res.on('close', () => {
      closed = !res.writableFinished;
    });
    const part = (text: string) => ({ type: 'output_text', text, annotations: [], logprobs: [] });
    const message = (text: string | null, status: string) => ({ type: 'message', id: itemId, status, role: 'assistant', content: text === null ? [] : [part(text)] });
    const reasoningItem = (text: string | null, status: string) => ({
      type: 'reasoning', id: reasoningId, summary: [], content: text === null ? [] : [{ type: 'reasoning_text', text }], status,
    });
    const functionCall = (k: number, call: ParsedReply['toolCalls'][number]) => {
      const callId = `${id}_tool_call_${k}`;
      return { type: 'function_call', id: callId, call_id: callId, name: call.name, arguments: call.arguments, status: 'completed' };
    };
    const response = (status: string, output: object[], usage: object | null, incomplete = false) => ({
      id, object: 'response', created_at: createdAt, status, error: null, incomplete_details: incomplete ? { reason: 'max_output_tokens' } : null,
      instructions: typeof request.instructions === 'string' ? request.instructions : null, max_output_tokens: request.max_output_tokens ?? null,
      model: options.modelId, output, parallel_tool_calls: request.parallel_tool_calls ?? false, temperature: request.temperature ?? null,
      top_p: request.top_p ?? null, tool_choice: 'auto', tools: Array.isArray(request.tools) ? request.tools : [],
      store: request.store !== false, previous_response_id: typeof request.previous_response_id === 'string' ? request.previous_response_id : null,
      text: { format: isObject(request.text) && isObject(request.text.format) ? request.text.format : { type: 'text' } }, usage,
    });
    /** The finished response: "incomplete" where the output reached its token limit, as OpenAI reports it. */
    const finished = (c: Choice, output: object[]) => {
      const u = usage(job, [c]);
      const incomplete = c.finish === 'length';
      return response(incomplete ? 'incomplete' : 'completed', output, {
        input_tokens: u.prompt_tokens, input_tokens_details: { cached_tokens: 0 }, output_tokens: u.completion_tokens,
        output_tokens_details: { reasoning_tokens: 0 }, total_tokens: u.total_tokens,
      }, incomplete);
    };
    const status = (c: Choice) => (c.finish === 'length' ? 'incomplete' : 'completed');
    /** Keeps the finished response (unless store is false) and its conversation: the input, then the reply as one assistant message. */
    const keep = (response: { output: object[] }) => {
      if (request.store === false) return;
      const items = response.output as Body[];
      const text = items.filter((item) => item.type === 'message').map((item) => ((item.content as Body[])[0]?.text as string) ?? '').join('');
      const reasoningText = items.filter((item) => item.type === 'reasoning').map((item) => ((item.content as Body[])[0]?.text as string) ?? '').join('');
      const calls = items.filter((item) => item.type === 'function_call').map((item) => ({ id: item.call_id, type: 'function', function: { name: item.name, arguments: item.arguments } }));
      const reply: Body = { role: 'assistant', content: text, ...(reasoningText ? { reasoning_content: reasoningText } : {}), ...(calls.length ? { tool_calls: calls } : {}) };
      stored.set(id, { response, conversation: [...conversation, reply] });
      while (stored.size > maxStored) stored.delete(stored.keys().next().value as string);
    };
    if (!job.stream) {
      const [choice] = await run(job, () => undefined, () => closed);
      let reply: ParsedReply = { content: choice.text, reasoning: null, toolCalls: [] };
      const forced = forcedReplyOf(job, choice);
      if (forced) reply = { content: '', reasoning: null, toolCalls: forced };
      else if (job.parse) {
        try {
          reply = replyOf(parseResponse(choice.text, job.parse.template, job.parse));
        } catch (e) {
          options.log?.(`response_template: ${(e as Error).message}; the reply goes out as plain content`);
        }
      }
      const output = [...(reply.reasoning ? [reasoningItem(reply.reasoning, 'completed')] : []), message(reply.content, status(choice)),
        ...reply.toolCalls.map((call, k) => functionCall(k, call))];
      const response = finished(choice, output);
      keep(response);
      sendJson(res, 200, response);
      return choice.tokens;
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
    let sequence = 0;
    const emit = (type: string, payload: object) => {
      if (!closed) res.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence++, ...payload })}\n\n`);
    };
    emit('response.created', { response: response('in_progress', [], null) });
    emit('response.in_progress', { response: response('in_progress', [], null) });
    // The items in the order they open: reasoning, then the message, then each function call once it is read.
    const output: object[] = [];
    let outputIndex = -1;
    let reasoning: string | null = null;
    let text: string | null = null;
    const where = () => ({ item_id: itemId, output_index: outputIndex, content_index: 0 });
    const finishReasoning = () => {
      if (reasoning === null) return;
      const item = reasoningItem(reasoning, 'completed');
      emit('response.reasoning_text.done', { item_id: reasoningId, output_index: outputIndex, content_index: 0, text: reasoning });
      emit('response.output_item.done', { output_index: outputIndex, item });
      output.push(item);
      reasoning = null;
    };
    const startMessage = () => {
      finishReasoning();
      // Content after a tool call is a message item of its own.
      if (output.some((item) => (item as { type: string }).type === 'message')) itemId = `msg_${randomBytes(12).toString('hex')}`;
      outputIndex++;
      text = '';
      emit('response.output_item.added', { output_index: outputIndex, item: message(null, 'in_progress') });
      emit('response.content_part.added', { ...where(), part: part('') });
    };
    const finishMessage = (c: Choice | null) => {
      if (text === null) return;
      const item = message(text, c ? status(c) : 'completed');
      emit('response.output_text.done', { ...where(), text, logprobs: [] });
      emit('response.content_part.done', { ...where(), part: part(text) });
      emit('response.output_item.done', { output_index: outputIndex, item });
      output.push(item);
      text = null;
    };
    let calls = 0;
    const take = (pieces: ReplyPiece[]) => {
      for (const p of pieces) {
        if ('reasoning' in p) {
          if (reasoning === null) {
            outputIndex++;
            reasoning = '';
            emit('response.output_item.added', { output_index: outputIndex, item: reasoningItem(null, 'in_progress') });
          }
          reasoning += p.reasoning;
          emit('response.reasoning_text.delta', { item_id: reasoningId, output_index: outputIndex, content_index: 0, delta: p.reasoning });
        } else if ('content' in p) {
          if (text === null) startMessage();
          text += p.content;
          emit('response.output_text.delta', { ...where(), delta: p.content, logprobs: [] });
        } else {
          finishReasoning();
          finishMessage(null);
          outputIndex++;
          const item = functionCall(calls++, p.toolCall);
          emit('response.output_item.added', { output_index: outputIndex, item });
          emit('response.function_call_arguments.done', { item_id: item.id, output_index: outputIndex, arguments: item.arguments, name: item.name });
          emit('response.output_item.done', { output_index: outputIndex, item });
          output.push(item);
        }
      }
    };
    const parser = job.parse ? new ResponseParser(job.parse.template, job.parse) : null;
    if (parser) take(replyPieces(parser.initialEvents));
    else if (!job.forcedTools) startMessage();
    const [choice] = await run(job, (_, delta) => {
      if (job.forcedTools) return; // a forced tool call goes out whole, at the end
      if (!parser) take(delta ? [{ content: delta }] : []);
      else take(replyPieces(parser.feed(delta)));
    }, () => closed);
    if (job.forcedTools) {
      const forced = forcedReplyOf(job, choice);
      take(forced ? forced.map((toolCall) => ({ toolCall })) : choice.text ? [{ content: choice.text }] : []);
    }
    if (parser) {
      try {
        take(replyPieces(parser.finalize().events));
      } catch (e) {
        options.log?.(`response_template: ${(e as Error).message}; the reply's unfinished tail is dropped`);
      }
    }
    finishReasoning();
    // Every response has a message item (empty when the reply was all tool calls), as transformers serve answers.
    if (text === null && !output.some((item) => (item as { type: string }).type === 'message')) startMessage();
    finishMessage(choice);
    const done = finished(choice, output);
    keep(done);
    emit(done.status === 'incomplete' ? 'response.incomplete' : 'response.completed', { response: done });
    if (!closed) res.end();
    return choice.tokens;
  }

  async function route(req: http.IncomingMessage, res: http.ServerResponse): Promise<number> {
    const url = (req.url ?? '/').split('?')[0].replace(/\/+$/, '') || '/';
    const get = req.method === 'GET' || req.method === 'HEAD';
    if (url === '/health' && get) {
      sendJson(res, 200, { status: 'ok' });
      return 0;
    }
    if (options.apiKey !== undefined && req.headers.authorization !== `Bearer ${options.apiKey}`) {
      const given = req.headers.authorization === undefined ? 'no Authorization header' : 'an Authorization header that is not "Bearer <the server\'s key>"';
      throw new OpenAIError(401, `Incorrect API key: the request has ${given}`, null, 'invalid_request_error', 'invalid_api_key');
    }
    if (url === '/v1/models' && get) {
      sendJson(res, 200, { object: 'list', data: [modelCard()] });
      return 0;
    }
    if (url.startsWith('/v1/models/') && get) {
      const name = decodeURIComponent(url.slice('/v1/models/'.length));
      if (name !== options.modelId) throw new OpenAIError(404, `The model ${JSON.stringify(name)} does not exist; this server serves ${JSON.stringify(options.modelId)}`, 'model', 'invalid_request_error', 'model_not_found');
      sendJson(res, 200, modelCard());
      return 0;
    }
    if (url === '/tokenize' || url === '/detokenize') {
      if (req.method !== 'POST') throw new OpenAIError(405, `${req.method} is not allowed on ${url}; use POST`);
      const body = await readBody(req, maxBody);
      checkModel(body);
      sendJson(res, 200, url === '/tokenize' ? tokenizeBody(body) : detokenizeBody(body));
      return 0;
    }
    if (url === '/v1/responses') {
      if (req.method !== 'POST') throw new OpenAIError(405, `${req.method} is not allowed on ${url}; use POST`);
      const body = await readBody(req, maxBody);
      checkModel(body);
      const { chat, conversation } = responsesAsChat(body, previousConversation(body));
      return respond(readJob('chat', chat), body, res, conversation);
    }
    if (url.startsWith('/v1/responses/')) {
      const responseId = decodeURIComponent(url.slice('/v1/responses/'.length));
      const entry = stored.get(responseId);
      if (req.method !== 'DELETE' && !get) throw new OpenAIError(405, `${req.method} is not allowed on ${url}; use GET or DELETE`);
      if (!entry) throw new OpenAIError(404, `Response with id ${JSON.stringify(responseId)} not found.`, 'response_id');
      if (req.method === 'DELETE') {
        stored.delete(responseId);
        sendJson(res, 200, { id: responseId, object: 'response', deleted: true });
      } else sendJson(res, 200, entry.response);
      return 0;
    }
    const kind = url === '/v1/chat/completions' ? 'chat' : url === '/v1/completions' ? 'completion' : null;
    if (kind === null) {
      const known = ['/v1/chat/completions', '/v1/completions', '/v1/responses', '/v1/models', '/health', '/tokenize', '/detokenize'];
      if (known.includes(url) || url.startsWith('/v1/models/')) throw new OpenAIError(405, `${req.method} is not allowed on ${url}`);
      throw new OpenAIError(404, `No route ${req.method} ${url}; this server has POST /v1/chat/completions, POST /v1/completions, POST /v1/responses, POST /tokenize, POST /detokenize, GET /v1/models, GET /health`);
    }
    if (req.method !== 'POST') throw new OpenAIError(405, `${req.method} is not allowed on ${url}; use POST`);
    const body = await readBody(req, maxBody);
    return generation(readJob(kind, body), res);
  }

  return (req, res) => {
    const start = Date.now();
    route(req, res).then((tokens) => {
      options.log?.(`${req.method} ${req.url} ${res.statusCode} · ${tokens} tokens · ${((Date.now() - start) / 1000).toFixed(2)} s`);
    }, (e: unknown) => {
      const error = e instanceof OpenAIError ? e : new OpenAIError(500, `internal error: ${(e as Error)?.message ?? String(e)}`);
      if (res.headersSent) {
        // A streamed answer that failed midway: say so in the stream, as OpenAI's API does.
        if (!res.writableEnded) res.end(`data: ${JSON.stringify(error)}\n\n`);
      } else {
        sendJson(res, error.status, error);
      }
      options.log?.(`${req.method} ${req.url} ${error.status} · ${error.message}`);
    });
  };
}

function sendJson(res: http.ServerResponse, status: number, body: object): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** The request's JSON object, or a 400/413 that says what is wrong with it. */
function readBody(req: http.IncomingMessage, limit: number): Promise<Body> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new OpenAIError(413, `the request body is larger than ${limit} bytes`));
        req.destroy();
      } else {
        parts.push(chunk);
      }
    });
    req.on('error', reject);
    // A client that goes away before its body ends: nothing is left waiting on it.
    req.on('close', () => { if (!req.complete) reject(new OpenAIError(400, 'the request ended before its body did')); });
    req.on('end', () => {
      let value: unknown;
      try {
        value = JSON.parse(Buffer.concat(parts).toString('utf8'));
      } catch (e) {
        reject(new OpenAIError(400, `the request body is not valid JSON: ${(e as Error).message}`));
        return;
      }
      if (!isObject(value)) reject(new OpenAIError(400, `the request body must be a JSON object, got ${describe(value)}`));
      else resolve(value);
    });
  });
}

/** An http.Server with {@link openAIHandler}; `listen` it (port 0 picks a free port, see {@link serverAddress}). */
export function createOpenAIServer(model: NemotronForCausalLM | NemotronHForCausalLM, tokenizer: NemotronTokenizer, options: OpenAIServerOptions): http.Server {
  return http.createServer(openAIHandler(model, tokenizer, options));
}

/** The URL a listening server answers on. */
export function serverAddress(server: http.Server): string {
  const address = server.address() as AddressInfo | null;
  if (!address) throw new Error('the server is not listening');
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `http://${host}:${address.port}`;
}
