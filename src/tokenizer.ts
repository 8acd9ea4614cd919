/**
 * An `AutoTokenizer`-style tokenizer for Nemotron checkpoints.
 *
 * It loads a Hugging Face checkpoint folder's `tokenizer.json` (the "fast" tokenizer format) plus
 * `tokenizer_config.json` and, when present, `special_tokens_map.json` and the model's `config.json`
 * (only as a last resort for special-token ids). Tokenization itself is done by the npm package
 * `@huggingface/tokenizers` (tokenizers.js), a pure-JS implementation of the HF `tokenizers` pipeline
 * (normalizer, pre-tokenizer, BPE/Unigram/WordPiece model with byte fallback, post-processor, decoder).
 *
 * What this module adds on top, to behave like `transformers`:
 *  - special tokens (bos/eos/unk/pad) resolved from tokenizer_config.json (plain strings or
 *    AddedToken objects `{content: ...}`), special_tokens_map.json, config.json ids;
 *  - the special tokens around a text from tokenizer.json's post-processor alone: transformers 5 drops
 *    tokenizer_config.json's `add_bos_token` / `add_eos_token` when a tokenizer.json is there (they build
 *    the template only for a SentencePiece tokenizer.model, see fromSentencePieceModel);
 *  - `clean_up_tokenization_spaces` defaults to false (the transformers default) instead of
 *    tokenizers.js's true;
 *  - batch encoding with left/right padding, attention masks and truncation;
 *  - a streaming decoder for generation;
 *  - id validation and error messages that name the file or the id at fault.
 *
 * The package ships a CommonJS build (`exports["."].node.require` → `dist/tokenizers.cjs`), so the
 * plain `import` below compiles to an ordinary `require()`; no dynamic `import()` is needed.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import * as protobuf from 'protobufjs';
import { GGUFFile } from './io/gguf';
import { byteLevelTokenizerJson, specialTokenTemplate } from './io/gguf-vocab';
import { alignOffsets, offsetPipeline, wordIds } from './offsets';
import { type Json as ParsedJson, type ResponseTemplateSpec, type ToolSpec, ResponseParser, parseResponse } from './response-parsing/index';

/** Options of {@link NemotronTokenizer.encode}. */
export interface EncodeOptions {
  /** Add the special tokens of the post-processor (BOS for Nemotron). Default true. */
  addSpecialTokens?: boolean;
}

/** Options of {@link NemotronTokenizer.decode}. */
export interface DecodeOptions {
  /** Drop special tokens (`<s>`, `</s>`, `<unk>`, `<pad>`, additional special tokens). Default false. */
  skipSpecialTokens?: boolean;
}

/** Options of {@link NemotronTokenizer.encodeBatch}. */
export interface EncodeBatchOptions {
  /** Default true. */
  addSpecialTokens?: boolean;
  /** Where the padding goes: 'left' for generation. Default: tokenizer_config's `padding_side`, else 'right'. */
  paddingSide?: 'left' | 'right';
  /** Maximum length of a row (special tokens included) when truncating. Default: `model_max_length`. */
  maxLength?: number;
  /** Truncate rows longer than `maxLength`. Default: true when `maxLength` is given, else false. */
  truncation?: boolean;
}

/** Result of {@link NemotronTokenizer.encodeBatch}: rows of equal length. */
export interface BatchEncoding {
  inputIds: number[][];
  /** 1 for real tokens, 0 for padding. */
  attentionMask: number[][];
}

/** See {@link NemotronTokenizer.createStreamDecoder}. */
export interface StreamDecoder {
  /** Add one generated id; returns the text that became final (possibly ''). */
  push(id: number): string;
  /** End of stream: returns all text still held back. */
  flush(): string;
}

/** Extra sources for {@link NemotronTokenizer.fromJSON}. */
export interface TokenizerSources {
  /** Contents of special_tokens_map.json. */
  specialTokensMap?: object;
  /** Contents of the model's config.json (bos/eos/pad_token_id fallbacks). */
  modelConfig?: object;
  /** Where tokenizer.json came from, for error messages. */
  source?: string;
  /** Contents of chat_template.jinja (where transformers ≥ 4.43 saves the template instead of tokenizer_config.json). */
  chatTemplate?: string;
}

/** One turn of a conversation, as transformers' apply_chat_template takes it. */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

/** Options of {@link NemotronTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the opening of an assistant turn, so that generation writes the reply. Default false. */
  addGenerationPrompt?: boolean;
  /** A template's name (tokenizer_config.json may hold several, e.g. "default" and "tool_use") or a template itself. */
  chatTemplate?: string;
  /** Tool (function) definitions the template may render, as JSON schemas. */
  tools?: object[];
  /** Documents for retrieval-augmented templates. */
  documents?: object[];
  /** Further variables the template reads. */
  templateVariables?: Record<string, unknown>;
}

type Json = Record<string, any>;
type Role = 'bos' | 'eos' | 'unk' | 'pad';

/** Patterns of transformers' `clean_up_tokenization` (only used when the config enables it). */
const CLEANUP_PATTERNS = [" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"];
const REPLACEMENT_CHAR = '\uFFFD';

function readJson(file: string): Json {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`Cannot read ${file}: ${(e as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`Invalid JSON in ${file}: ${(e as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error(`Invalid ${file}: expected a JSON object`);
  }
  return value as Json;
}

/** The text of a special token given as a string or an AddedToken object `{content: ...}`. */
function tokenContent(value: unknown, what: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && typeof (value as Json).content === 'string') {
    return (value as Json).content as string;
  }
  throw new Error(`${what} must be a string or an object with a "content" string, got ${JSON.stringify(value)}`);
}

/** The parts of SentencePiece's sentencepiece_model.proto that a BPE vocabulary needs. */
const SENTENCEPIECE_SCHEMA = `
syntax = "proto2";
package sentencepiece;
message TrainerSpec { optional int32 model_type = 3; optional int32 unk_id = 40; optional int32 bos_id = 41; optional int32 eos_id = 42; optional int32 pad_id = 43; }
message ModelProto {
  message SentencePiece { optional string piece = 1; optional float score = 2; optional int32 type = 3 [default = 1]; }
  repeated SentencePiece pieces = 1;
  optional TrainerSpec trainer_spec = 2;
}
`;

/**
 * BPE merges recovered from a SentencePiece vocabulary, as transformers' generate_merges does: every split of a token
 * into two tokens of the vocabulary, ranked by the token's score (best first), then by the pieces' lengths (longest
 * first) — or, without scores, by the token's id and the pieces' lengths (shortest first) — ties in vocabulary order.
 */
function mergesFromVocabulary(tokens: string[], scores: number[], vocab: Record<string, number>, order: 'scores' | 'ids'): Array<[string, string]> {
  const merges: Array<[string, string, number]> = [];
  tokens.forEach((token, i) => {
    const chars = Array.from(token);
    const local: Array<[string, string, number]> = [];
    for (let k = 1; k < chars.length; k++) {
      const [left, right] = [chars.slice(0, k).join(''), chars.slice(k).join('')];
      if (left in vocab && right in vocab) local.push([left, right, scores[i]]);
    }
    local.sort((a, b) => vocab[a[0]] - vocab[b[0]] || vocab[a[1]] - vocab[b[1]]);
    merges.push(...local);
  });
  const length = (x: string) => Array.from(x).length;
  if (order === 'scores') merges.sort((a, b) => b[2] - a[2] || length(b[0]) - length(a[0]) || length(b[1]) - length(a[1]));
  // Without scores transformers ranks by the merged token's id, ascending, then the pieces' lengths, shortest first.
  else merges.sort((a, b) => vocab[a[0] + a[1]] - vocab[b[0] + b[1]] || length(a[0]) - length(b[0]) || length(a[1]) - length(b[1]));
  return merges.map(([l, r]) => [l, r]);
}

function sameIds(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export class NemotronTokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  readonly unkTokenId: number | null;
  /** Whether `encode` prepends BOS: what tokenizer.json's post-processor does (transformers 5 ignores tokenizer_config's add_bos_token there). */
  readonly addBosToken: boolean;
  /** Whether `encode` appends EOS: what tokenizer.json's post-processor does. */
  readonly addEosToken: boolean;
  /**
   * Number of token ids, added tokens included (`len(tokenizer)` in transformers); every id in
   * [0, vocabSize) that has a token decodes. The model's embedding may be larger (padded).
   */
  readonly vocabSize: number;
  /** `padding_side` of tokenizer_config.json, else 'right' (as transformers). */
  readonly paddingSide: 'left' | 'right';
  /** `truncation_side` of tokenizer_config.json, else 'right'. */
  readonly truncationSide: 'left' | 'right';
  /** `model_max_length` of tokenizer_config.json when it is a real limit, else null. */
  readonly modelMaxLength: number | null;
  /** `clean_up_tokenization_spaces` of tokenizer_config.json, else false (the transformers default). */
  readonly cleanUpTokenizationSpaces: boolean;

  /** The chat templates by name (tokenizer_config.json's chat_template, or chat_template.jinja as "default"). */
  readonly chatTemplates: ReadonlyMap<string, string>;
  /**
   * tokenizer_config.json's `response_template` (transformers 5): how to read a reply into content, reasoning and
   * tool calls (`parseResponse`). null when the checkpoint has none.
   */
  readonly responseTemplate: ResponseTemplateSpec | null;

  private readonly tok: HFTokenizer;
  private readonly specialIds: Set<number>;
  private readonly additionalSpecialTokens: string[];
  /** Ids added around one sequence when `addSpecialTokens` is true. */
  private readonly prefixIds: number[];
  private readonly suffixIds: number[];

  private constructor(tok: HFTokenizer, config: Json, sources: TokenizerSources) {
    this.tok = tok;
    const source = sources.source ?? 'tokenizer.json';
    const stm: Json = (sources.specialTokensMap as Json) ?? {};
    const modelConfig: Json = (sources.modelConfig as Json) ?? {};
    this.vocabSize = tok.model!.vocab.length;

    const resolve = (role: Role): { token: string | null; id: number | null } => {
      const key = `${role}_token`;
      let token = tokenContent(config[key], `tokenizer_config.json ${key}`);
      let where = 'tokenizer_config.json';
      if (token === null) {
        token = tokenContent(stm[key], `special_tokens_map.json ${key}`);
        where = 'special_tokens_map.json';
      }
      if (token === null && role === 'unk') {
        const unk = tok.model!.unk_token;
        if (typeof unk === 'string') {
          token = unk;
          where = source;
        }
      }
      if (token === null) {
        // Last resort: the model's config.json (eos_token_id may be a list; the first one is the EOS).
        const raw = modelConfig[`${role}_token_id`];
        const id = Array.isArray(raw) ? raw[0] : raw;
        if (typeof id === 'number') {
          const t = tok.id_to_token(id);
          if (t === undefined) {
            throw new Error(`config.json ${role}_token_id ${id} is not in the vocabulary of ${source} (size ${this.vocabSize})`);
          }
          return { token: t, id };
        }
        return { token: null, id: null };
      }
      const id = tok.token_to_id(token);
      if (id === undefined) {
        throw new Error(`${key} ${JSON.stringify(token)} (from ${where}) is not in the vocabulary of ${source}`);
      }
      return { token, id };
    };
    const bos = resolve('bos');
    const eos = resolve('eos');
    const unk = resolve('unk');
    const pad = resolve('pad');
    this.bosToken = bos.token;
    this.bosTokenId = bos.id;
    this.eosToken = eos.token;
    this.eosTokenId = eos.id;
    this.unkToken = unk.token;
    this.unkTokenId = unk.id;
    // The real pad token only; batch padding falls back to EOS when this is null (see encodeBatch).
    this.padToken = pad.token;
    this.padTokenId = pad.id;

    // Special ids (dropped by skipSpecialTokens): added tokens marked special, the four special tokens
    // above and additional_special_tokens, as transformers' all_special_ids.
    this.specialIds = new Set<number>();
    for (const [id, added] of tok.get_added_tokens_decoder()) if (added.special) this.specialIds.add(id);
    for (const id of [bos.id, eos.id, unk.id, pad.id]) if (id !== null) this.specialIds.add(id);
    const additional = config.additional_special_tokens ?? stm.additional_special_tokens ?? [];
    this.additionalSpecialTokens = (Array.isArray(additional) ? additional : [])
      .map((t: unknown) => tokenContent(t, 'additional_special_tokens entry'))
      .filter((t: string | null): t is string => t !== null);
    for (const content of this.additionalSpecialTokens) {
      const id = tok.token_to_id(content);
      if (id !== undefined) this.specialIds.add(id);
    }

    // What the post-processor adds around a single sequence: encode a probe with and without special
    // tokens and split the difference into a fixed prefix and suffix (TemplateProcessing, Bert and
    // Roberta processing all add fixed tokens around a single sequence).
    const probe = 'a';
    const withSpecial = tok.encode(probe, { add_special_tokens: true }).ids;
    const plain = tok.encode(probe, { add_special_tokens: false }).ids;
    let prefix: number[] = [];
    let suffix: number[] = [];
    let found = false;
    for (let p = 0; p + plain.length <= withSpecial.length; p++) {
      if (sameIds(withSpecial.slice(p, p + plain.length), plain)) {
        prefix = withSpecial.slice(0, p);
        suffix = withSpecial.slice(p + plain.length);
        found = true;
        break;
      }
    }
    if (!found) {
      throw new Error(`Unsupported post_processor in ${source}: it does not add fixed special tokens around a sequence`);
    }
    const postAddsBos = bos.id !== null && prefix.length > 0 && prefix[0] === bos.id;
    const postAddsEos = eos.id !== null && suffix.length > 0 && suffix[suffix.length - 1] === eos.id;
    // transformers 5 pops tokenizer_config's add_bos_token / add_eos_token when it loads a tokenizer.json: the
    // post-processor decides (none: nothing is added), whatever the flags say.
    this.addBosToken = postAddsBos;
    this.addEosToken = postAddsEos;
    this.prefixIds = prefix;
    this.suffixIds = suffix;

    this.paddingSide = config.padding_side === 'left' ? 'left' : 'right';
    this.truncationSide = config.truncation_side === 'left' ? 'left' : 'right';
    const mml = config.model_max_length;
    // transformers writes int(1e30) when there is no limit.
    this.modelMaxLength = typeof mml === 'number' && mml > 0 && mml < 1e12 ? mml : null;
    this.cleanUpTokenizationSpaces = config.clean_up_tokenization_spaces === true;

    // chat_template: one string, or a list of {name, template} (transformers' multiple templates); a separate
    // chat_template.jinja takes precedence, as in transformers.
    const templates = new Map<string, string>();
    const raw = config.chat_template;
    if (typeof raw === 'string') templates.set('default', raw);
    else if (Array.isArray(raw)) {
      for (const entry of raw) {
        if (!entry || typeof entry.name !== 'string' || typeof entry.template !== 'string') {
          throw new Error(`tokenizer_config.json chat_template: expected a string or a list of {"name", "template"}, got an entry ${JSON.stringify(entry)}`);
        }
        templates.set(entry.name, entry.template);
      }
    } else if (raw !== undefined && raw !== null) {
      throw new Error(`tokenizer_config.json chat_template: expected a string or a list of {"name", "template"}, got ${JSON.stringify(raw)}`);
    }
    if (sources.chatTemplate !== undefined) templates.set('default', sources.chatTemplate);
    this.chatTemplates = templates;
    const responseTemplate = config.response_template;
    if (responseTemplate !== undefined && responseTemplate !== null && (typeof responseTemplate !== 'object' || Array.isArray(responseTemplate))) {
      throw new Error(`tokenizer_config.json response_template: expected an object, got ${JSON.stringify(responseTemplate)}`);
    }
    this.responseTemplate = (responseTemplate ?? null) as ResponseTemplateSpec | null;
  }

  private responseTemplateOf(template: ResponseTemplateSpec | undefined): ResponseTemplateSpec {
    const chosen = template ?? this.responseTemplate;
    if (!chosen) throw new Error('This tokenizer has no response_template (tokenizer_config.json has none): pass options.template');
    return chosen;
  }

  /**
   * transformers' parse_response: a reply (text, or token ids decoded with their special tokens) read as an assistant
   * message — {role, content, reasoning_content, tool_calls, …} as the response_template says. `prefix` is the prompt
   * (text or ids) the reply continued: the template may have opened a region there (a prefilled <think>).
   */
  parseResponse(response: string | number[], options: { prefix: string | number[]; tools?: ToolSpec[]; template?: ResponseTemplateSpec }): Record<string, ParsedJson> {
    const text = typeof response === 'string' ? response : this.decode(response);
    const prefix = typeof options.prefix === 'string' ? options.prefix : this.decode(options.prefix);
    return parseResponse(text, this.responseTemplateOf(options.template), { prefix, tools: options.tools });
  }

  /** transformers' get_response_parser: a streaming ResponseParser (feed text as it is decoded, then finalize). */
  responseParser(options: { prefix: string | number[]; tools?: ToolSpec[]; template?: ResponseTemplateSpec }): ResponseParser {
    const prefix = typeof options.prefix === 'string' ? options.prefix : this.decode(options.prefix);
    return new ResponseParser(this.responseTemplateOf(options.template), { prefix, tools: options.tools });
  }

  /**
   * transformers' apply_chat_template(conversation, tokenize=False): the conversation rendered by the checkpoint's
   * chat template (Jinja, through @huggingface/jinja, with the special tokens as bos_token, eos_token, … and
   * raise_exception as transformers provides them).
   */
  renderChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (!Array.isArray(messages) || messages.some((m) => !m || typeof m.role !== 'string' || typeof m.content !== 'string')) {
      throw new Error('applyChatTemplate: expected a list of messages {role: string, content: string}');
    }
    const source = this.chatTemplateSource(options.chatTemplate);
    let template: Template;
    try {
      template = new Template(source);
    } catch (e) {
      throw new Error(`The chat template does not parse: ${(e as Error).message}`);
    }
    return template.render({
      messages, add_generation_prompt: options.addGenerationPrompt ?? false,
      ...(options.tools ? { tools: options.tools } : {}), ...(options.documents ? { documents: options.documents } : {}),
      bos_token: this.bosToken ?? undefined, eos_token: this.eosToken ?? undefined, unk_token: this.unkToken ?? undefined,
      pad_token: this.padToken ?? undefined, additional_special_tokens: this.additionalSpecialTokens,
      ...options.templateVariables,
    });
  }

  /**
   * transformers' apply_chat_template(conversation): the rendered conversation's token ids. The template writes the
   * special tokens itself (BOS included), so none is added, as transformers encodes it.
   */
  applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    return this.encode(this.renderChatTemplate(messages, options), { addSpecialTokens: false });
  }

  private chatTemplateSource(choice: string | undefined): string {
    if (choice !== undefined) {
      const named = this.chatTemplates.get(choice);
      if (named !== undefined) return named;
      // Not a name: a template itself when it has Jinja syntax.
      if (/{[{%]/.test(choice)) return choice;
      throw new Error(`No chat template named ${JSON.stringify(choice)}; this tokenizer has ${[...this.chatTemplates.keys()].join(', ') || 'none'}`);
    }
    if (this.chatTemplates.size === 0) {
      throw new Error('This tokenizer has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja): ' +
        'pass options.chatTemplate, or encode the prompt as plain text');
    }
    const fallback = this.chatTemplates.get('default') ?? (this.chatTemplates.size === 1 ? [...this.chatTemplates.values()][0] : undefined);
    if (fallback === undefined) {
      throw new Error(`This tokenizer has several chat templates (${[...this.chatTemplates.keys()].join(', ')}) and none named "default": pass options.chatTemplate`);
    }
    return fallback;
  }

  /**
   * Loads `<dir>/tokenizer.json` (required), `<dir>/tokenizer_config.json`,
   * `<dir>/special_tokens_map.json` and `<dir>/config.json` (each optional).
   */
  static async fromPretrained(dir: string): Promise<NemotronTokenizer> {
    if (dir.toLowerCase().endsWith('.gguf') && fs.existsSync(dir) && fs.statSync(dir).isFile()) return NemotronTokenizer.fromGGUF(dir);
    const tokenizerPath = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(tokenizerPath) && fs.existsSync(path.join(dir, 'tokenizer.model'))) return NemotronTokenizer.fromSentencePieceModel(dir);
    if (!fs.existsSync(tokenizerPath)) {
      throw new Error(
        `No tokenizer.json in ${dir} (only the Hugging Face "fast" tokenizer format is supported; ` +
          `save one with tokenizer.save_pretrained())`,
      );
    }
    const tokenizerJson = readJson(tokenizerPath);
    const optional = (name: string): Json | undefined => {
      const file = path.join(dir, name);
      return fs.existsSync(file) ? readJson(file) : undefined;
    };
    const tokenizerConfig = optional('tokenizer_config.json');
    const chatTemplateFile = path.join(dir, 'chat_template.jinja');
    const chatTemplate = fs.existsSync(chatTemplateFile) ? fs.readFileSync(chatTemplateFile, 'utf8') : undefined;
    const specialTokensMap = optional('special_tokens_map.json');
    const modelConfig = optional('config.json');
    return NemotronTokenizer.create(tokenizerJson, tokenizerConfig, {
      specialTokensMap,
      modelConfig,
      source: tokenizerPath,
      chatTemplate,
    });
  }

  /**
   * The tokenizer a GGUF file describes (`tokenizer.ggml.*`), built as transformers builds it from one: for a
   * SentencePiece vocabulary ("llama"), a byte-fallback BPE over the tokens with merges recovered from the vocabulary
   * and its scores (transformers' generate_merges), Metaspace, and the control tokens as special tokens.
   */
  static async fromGGUF(file: string): Promise<NemotronTokenizer> {
    const gguf = GGUFFile.open(file);
    try {
      const meta = (key: string) => gguf.get(`tokenizer.ggml.${key}`);
      const kind = meta('model');
      if (kind !== 'llama' && kind !== 'gpt2') {
        throw new Error(`${file}: tokenizer.ggml.model is ${JSON.stringify(kind)}; SentencePiece ("llama", Nemotron's) and byte-level BPE ("gpt2", Nemotron-H's) vocabularies are read`);
      }
      const tokens = meta('tokens') as string[];
      const id = (key: string) => (typeof meta(key) === 'number' ? meta(key) as number : undefined);
      const template = gguf.get('tokenizer.chat_template');
      if (kind === 'gpt2') {
        // A byte-level BPE (Nemotron-H's tekken kind): tokenizer.json as the checkpoint's own, BOS as add_bos_token says.
        const bos = id('bos_token_id');
        const eos = id('eos_token_id');
        const addBos = meta('add_bos_token') === true;
        const addEos = meta('add_eos_token') === true;
        const json = byteLevelTokenizerJson({
          tokens, types: (meta('token_type') as number[] | undefined) ?? [], merges: (meta('merges') as string[] | undefined) ?? [],
          pre: String(meta('pre') ?? 'gpt-2'), bos, eos, addBos, addEos, source: file,
        });
        const token = (i: number | undefined) => (i === undefined ? undefined : tokens[i]);
        const config = {
          add_bos_token: addBos, add_eos_token: addEos, bos_token: token(bos), eos_token: token(eos), unk_token: token(id('unknown_token_id')),
          pad_token: token(id('padding_token_id')), clean_up_tokenization_spaces: false, ...(typeof template === 'string' ? { chat_template: template } : {}),
        };
        return NemotronTokenizer.create(json, config, { source: file });
      }
      return NemotronTokenizer.fromSentencePiece({
        tokens, scores: (meta('scores') as number[] | undefined) ?? tokens.map(() => 0), types: (meta('token_type') as number[] | undefined) ?? [],
        merges: (meta('merges') as string[] | undefined)?.map((m) => m.split(' ') as [string, string]), mergeOrder: 'scores',
        bos: id('bos_token_id'), eos: id('eos_token_id'), unk: id('unknown_token_id'), pad: id('padding_token_id'),
        addBos: (meta('add_bos_token') ?? true) === true, addEos: meta('add_eos_token') === true,
        addPrefixSpace: meta('add_space_prefix') !== false, legacy: false,
        config: typeof template === 'string' ? { chat_template: template } : {}, source: file,
      });
    } finally {
      gguf.close();
    }
  }

  /**
   * A SentencePiece vocabulary (a GGUF's, or a tokenizer.model's) as transformers' LlamaTokenizer builds it: a
   * byte-fallback BPE over the pieces with merges recovered from the vocabulary (by score for a GGUF, by id for a
   * tokenizer.model, as transformers' generate_merges is called in each case), Metaspace, the control pieces special,
   * the user-defined ones added, and the BOS/EOS template.
   */
  private static fromSentencePiece(v: {
    tokens: string[]; scores: number[]; types: number[]; merges?: Array<[string, string]>; mergeOrder: 'scores' | 'ids';
    bos?: number; eos?: number; unk?: number; pad?: number; addBos: boolean; addEos: boolean; addPrefixSpace: boolean; legacy: boolean;
    config: Json; source: string;
  }): NemotronTokenizer {
    const vocab: Record<string, number> = {};
    v.tokens.forEach((t, i) => { vocab[t] = i; });
    const merges = v.merges ?? mergesFromVocabulary(v.tokens, v.scores, vocab, v.mergeOrder);
    // CONTROL (3) pieces become special added tokens, USER_DEFINED (4) plain ones, as transformers adds them.
    const added = v.tokens.flatMap((content, id) => (v.types[id] === 3 || v.types[id] === 4
      ? [{ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: v.types[id] === 3 }] : []));
    const token = (id: number | undefined) => (id === undefined || id < 0 ? undefined : v.tokens[id]);
    // transformers' _get_prepend_scheme: "first" (transformers 5's non-legacy default), "always" when legacy.
    const prependScheme = !v.addPrefixSpace ? 'never' : v.legacy ? 'always' : 'first';
    const json = {
      version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: prependScheme, split: false },
      // The template BOS/EOS, as transformers' update_post_processor writes it (and saves it in tokenizer.json).
      post_processor: specialTokenTemplate(v.tokens, v),
      decoder: { type: 'Sequence', decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
        ...(v.addPrefixSpace ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ] },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true,
        byte_fallback: true, ignore_merges: false, vocab, merges },
    };
    const config = {
      add_bos_token: v.addBos, add_eos_token: v.addEos,
      bos_token: token(v.bos), eos_token: token(v.eos), unk_token: token(v.unk), pad_token: token(v.pad),
      clean_up_tokenization_spaces: false, ...v.config,
    };
    return NemotronTokenizer.create(json, config, { source: v.source });
  }

  /**
   * A folder with SentencePiece's tokenizer.model and no tokenizer.json (older conversions of NeMo checkpoints), read
   * as transformers 5 reads it (LlamaTokenizer from the model's pieces; BPE models only) with tokenizer_config.json's
   * special tokens and flags.
   */
  private static fromSentencePieceModel(dir: string): NemotronTokenizer {
    const file = path.join(dir, 'tokenizer.model');
    const root = protobuf.parse(SENTENCEPIECE_SCHEMA).root;
    const ModelProto = root.lookupType('sentencepiece.ModelProto');
    let proto: { pieces: Array<{ piece: string; score: number; type: number }>; trainerSpec?: { modelType?: number; unkId?: number; bosId?: number; eosId?: number; padId?: number } };
    try {
      proto = ModelProto.toObject(ModelProto.decode(fs.readFileSync(file)), { defaults: true }) as typeof proto;
    } catch (e) {
      throw new Error(`${file} is not a SentencePiece model: ${(e as Error).message}`);
    }
    const spec = proto.trainerSpec ?? {};
    if (spec.modelType !== 2) throw new Error(`${file}: a SentencePiece model of type ${spec.modelType === 1 ? 'unigram' : spec.modelType}; only BPE models (Nemotron's) are read`);
    const config = fs.existsSync(path.join(dir, 'tokenizer_config.json')) ? readJson(path.join(dir, 'tokenizer_config.json')) : {};
    const tokens = proto.pieces.map((p) => p.piece);
    const idOf = (name: string, fallback?: number) => {
      const content = tokenContent(config[name], `tokenizer_config.json ${name}`);
      const id = content === null ? -1 : tokens.indexOf(content);
      return id >= 0 ? id : fallback;
    };
    const { bos_token: _b, eos_token: _e, unk_token: _u, pad_token: _p, add_bos_token: _ab, add_eos_token: _ae, ...rest } = config;
    return NemotronTokenizer.fromSentencePiece({
      tokens, scores: proto.pieces.map((p) => p.score), types: proto.pieces.map((p) => p.type), mergeOrder: 'ids',
      bos: idOf('bos_token', spec.bosId), eos: idOf('eos_token', spec.eosId), unk: idOf('unk_token', spec.unkId), pad: idOf('pad_token', spec.padId),
      addBos: config.add_bos_token !== false, addEos: config.add_eos_token === true,
      addPrefixSpace: config.add_prefix_space !== false, legacy: config.legacy === true, config: rest, source: file,
    });
  }

  /** Builds a tokenizer from already parsed tokenizer.json / tokenizer_config.json contents. */
  static async fromJSON(
    tokenizerJson: object,
    tokenizerConfig?: object,
    sources: TokenizerSources = {},
  ): Promise<NemotronTokenizer> {
    return NemotronTokenizer.create(tokenizerJson, tokenizerConfig, sources);
  }

  private static create(tokenizerJson: object, tokenizerConfig: object | undefined, sources: TokenizerSources): NemotronTokenizer {
    const source = sources.source ?? 'tokenizer.json';
    if (tokenizerJson === null || typeof tokenizerJson !== 'object' || Array.isArray(tokenizerJson)) {
      throw new Error(`Invalid ${source}: expected a JSON object`);
    }
    const tj = tokenizerJson as Json;
    if (tj.model === null || typeof tj.model !== 'object') {
      throw new Error(`Invalid ${source}: it has no "model" object`);
    }
    if (tokenizerConfig !== undefined && (tokenizerConfig === null || typeof tokenizerConfig !== 'object')) {
      throw new Error(`Invalid tokenizer_config.json: expected a JSON object`);
    }
    const config: Json = { ...((tokenizerConfig as Json) ?? {}) };
    // tokenizers.js needs every pipeline key present (null when absent, as the Rust library writes them).
    const json: Json = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...tj,
    };
    // tokenizers.js expects plain strings where transformers also accepts AddedToken objects.
    const libConfig: Json = { ...config };
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      if (key in libConfig) libConfig[key] = tokenContent(libConfig[key], `tokenizer_config.json ${key}`) ?? undefined;
    }
    if (Array.isArray(libConfig.additional_special_tokens)) {
      libConfig.additional_special_tokens = libConfig.additional_special_tokens
        .map((t: unknown) => tokenContent(t, 'tokenizer_config.json additional_special_tokens entry'))
        .filter((t: string | null) => t !== null);
    }
    libConfig.clean_up_tokenization_spaces = config.clean_up_tokenization_spaces === true;
    let tok: HFTokenizer;
    try {
      tok = new HFTokenizer(json, libConfig);
    } catch (e) {
      throw new Error(`Cannot build a tokenizer from ${source}: ${(e as Error).message}`);
    }
    // A normalized added token is matched in normalized text, and the Rust library gives it its normalized form as its
    // token string (id_to_token, and so decode: "newword" after Prepend("▁") decodes as " newword"); tokenizers.js
    // keeps the raw content. Give it the normalized form, as there.
    const internals = tok as unknown as { normalizer: ((text: string) => string) | null; model: { vocab: string[] } };
    for (const added of json.added_tokens as Json[]) {
      if ((added.normalized ?? !added.special) && internals.normalizer) internals.model.vocab[added.id] = internals.normalizer(added.content);
    }
    const tokenizer = new NemotronTokenizer(tok, config, sources);
    tokenizer.raw = { json, config, sources };
    return tokenizer;
  }

  /** What the tokenizer was built from (tokenizer.json with its added tokens, tokenizer_config.json, the rest). */
  private raw!: { json: Json; config: Json; sources: TokenizerSources };

  /** tokenizer.json as this tokenizer holds it (added tokens included): a copy. */
  tokenizerJson(): Record<string, unknown> {
    return JSON.parse(JSON.stringify(this.raw.json));
  }

  /** Rebuilds this tokenizer in place from changed sources (transformers' tokenizers change in place too). */
  private rebuild(json: Json, config: Json): void {
    Object.assign(this, NemotronTokenizer.create(json, config, this.raw.sources));
  }

  /**
   * transformers' add_tokens(): appends tokens to the vocabulary (ids from the current size on) and returns how many
   * entries the added vocabulary gained (a token already in the model's vocabulary keeps its id, yet counts, as in
   * the tokenizers library). Plain tokens are normalized (matched in normalized text); special ones are not, and are
   * dropped by skipSpecialTokens. Resize the model's embeddings to `vocabSize` after adding (resizeTokenEmbeddings).
   */
  addTokens(tokens: string | string[], special = false): number {
    const list = Array.isArray(tokens) ? tokens : [tokens];
    const json: Json = { ...this.raw.json, added_tokens: [...(this.raw.json.added_tokens as Json[])] };
    const entries = json.added_tokens as Json[];
    let next = this.vocabSize;
    let added = 0;
    for (const content of list) {
      if (typeof content !== 'string' || content.length === 0) throw new Error(`addTokens: tokens must be non-empty strings, got ${JSON.stringify(content)}`);
      const existing = entries.find((e) => e.content === content);
      if (existing) {
        // Already added: special_tokens=True makes it special (as add_special_tokens does), nothing is counted.
        if (special && !existing.special) entries[entries.indexOf(existing)] = { ...existing, special: true, normalized: false };
        continue;
      }
      const id = this.tok.token_to_id(content) ?? next++;
      entries.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special, special });
      added++;
    }
    entries.sort((a, b) => a.id - b.id);
    this.rebuild(json, this.raw.config);
    return added;
  }

  /**
   * transformers' add_special_tokens(): the named special tokens (bosToken, eosToken, unkToken, padToken) set, each
   * added as a special token where it is new, and additionalSpecialTokens added to that list. Returns how many tokens
   * the added vocabulary gained.
   */
  addSpecialTokens(tokens: { bosToken?: string; eosToken?: string; unkToken?: string; padToken?: string; additionalSpecialTokens?: string[] }): number {
    const named: Array<[string, string | undefined]> = [
      ['bos_token', tokens.bosToken], ['eos_token', tokens.eosToken], ['unk_token', tokens.unkToken], ['pad_token', tokens.padToken],
    ];
    const extra = tokens.additionalSpecialTokens ?? [];
    const added = this.addTokens([...named.flatMap(([, t]) => (t === undefined ? [] : [t])), ...extra], true);
    const config: Json = { ...this.raw.config };
    for (const [key, token] of named) if (token !== undefined) config[key] = token;
    if (extra.length) {
      const previous = (config.additional_special_tokens ?? config.extra_special_tokens ?? this.additionalSpecialTokens) as unknown[];
      const names = (Array.isArray(previous) ? previous : []).map((t) => tokenContent(t, 'additional_special_tokens entry'));
      config.additional_special_tokens = [...names, ...extra.filter((t) => !names.includes(t))];
      delete config.extra_special_tokens;
    }
    this.rebuild(this.raw.json, config);
    return added;
  }

  /**
   * Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json (and chat_template.jinja where the
   * template came from one), as transformers' save_pretrained lays them out: what fromPretrained and transformers load.
   */
  savePretrained(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    const { json, config, sources } = this.raw;
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json, null, 2) + '\n');
    const decoder: Json = {};
    for (const e of json.added_tokens as Json[]) {
      decoder[String(e.id)] = { content: e.content, single_word: e.single_word ?? false, lstrip: e.lstrip ?? false, rstrip: e.rstrip ?? false,
        normalized: e.normalized ?? !e.special, special: e.special ?? false };
    }
    const out: Json = { ...config, added_tokens_decoder: decoder };
    if (this.additionalSpecialTokens.length) out.additional_special_tokens = this.additionalSpecialTokens;
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(out, null, 2) + '\n');
    const map: Json = {};
    for (const [key, token] of [['bos_token', this.bosToken], ['eos_token', this.eosToken], ['unk_token', this.unkToken], ['pad_token', this.padToken]] as const) {
      if (token !== null) map[key] = token;
    }
    if (this.additionalSpecialTokens.length) map.additional_special_tokens = this.additionalSpecialTokens;
    fs.writeFileSync(path.join(dir, 'special_tokens_map.json'), JSON.stringify(map, null, 2) + '\n');
    if (sources.chatTemplate !== undefined) fs.writeFileSync(path.join(dir, 'chat_template.jinja'), sources.chatTemplate);
  }

  /** The id of a token string, or null if it is not in the vocabulary. */
  tokenToId(token: string): number | null {
    return this.tok.token_to_id(token) ?? null;
  }

  /** The token string of an id, or null if there is none. */
  idToToken(id: number): string | null {
    return this.tok.id_to_token(id) ?? null;
  }

  /** Whether an id is a special token (removed by `skipSpecialTokens`). */
  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * encode(text) with transformers' special_tokens_mask: 1 for the ids the template adds around the text (BOS, …), 0 for
   * the text's own, special tokens written in it included (as the tokenizers library marks them).
   */
  encodeWithSpecialTokensMask(text: string): { ids: number[]; specialTokensMask: number[] } {
    const plain = this.encode(text, { addSpecialTokens: false });
    return {
      ids: [...this.prefixIds, ...plain, ...this.suffixIds],
      specialTokensMask: [...this.prefixIds.map(() => 1), ...plain.map(() => 0), ...this.suffixIds.map(() => 1)],
    };
  }

  /** transformers' convert_tokens_to_string: token strings through tokenizer.json's decoder (joined by spaces without one). */
  tokensToString(tokens: string[]): string {
    const decoder = (this.tok as unknown as { decoder?: ((tokens: string[]) => string) | null }).decoder;
    return decoder ? decoder(tokens) : tokens.join(' ');
  }

  /** The model's continuing-subword prefix (WordPiece's "##"), or '' (SentencePiece BPE has none). */
  get continuingSubwordPrefix(): string {
    const prefix = (this.raw.json.model as Json | undefined)?.continuing_subword_prefix;
    return typeof prefix === 'string' ? prefix : '';
  }

  /** The word (the pre-tokenizer's piece) each of a text's tokens belongs to, as the Rust encoding's word ids (see offsets.ts). */
  wordIds(ids: number[]): number[] {
    return wordIds(this.raw.json, ids.map((id) => this.tok.id_to_token(id) ?? ''));
  }

  /**
   * transformers' tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True): the ids, each token's
   * [start, end) in `text` ([0, 0] for the template's tokens) and the special tokens mask. Offsets are UTF-16 indices
   * (text.slice(start, end)); they are recovered by replaying the tokenizer's normalization (see src/offsets.ts: the
   * SentencePiece-style pipelines of Nemotron checkpoints; other pipelines are refused by name).
   */
  encodeWithOffsets(text: string): { ids: number[]; offsets: Array<[number, number]>; specialTokensMask: number[] } {
    const plain = this.encode(text, { addSpecialTokens: false });
    const pipeline = offsetPipeline(this.raw.json);
    // Added tokens matched in the raw text split it into separately normalized segments; normalized ones do not.
    const added = new Map((this.raw.json.added_tokens as Json[]).filter((t) => t.normalized === false).map((t) => [t.id as number, t.content as string]));
    const pieces = plain.map((id) => {
      const unknown = id === this.unkTokenId;
      return { piece: (!unknown && added.get(id)) || (this.tok.id_to_token(id) ?? ''), added: !unknown && added.has(id), unknown };
    });
    const offsets = alignOffsets(text, pieces, pipeline);
    const none = (ids: number[]) => ids.map((): [number, number] => [0, 0]);
    return {
      ids: [...this.prefixIds, ...plain, ...this.suffixIds],
      offsets: [...none(this.prefixIds), ...offsets, ...none(this.suffixIds)],
      specialTokensMask: [...this.prefixIds.map(() => 1), ...plain.map(() => 0), ...this.suffixIds.map(() => 1)],
    };
  }

  /**
   * A pair of texts as transformers' tokenizer(text, text_pair) encodes it: the post-processor's pair template, the
   * special tokens mask, and which text each id belongs to (null: a special).
   */
  encodePair(text: string, textPair: string): { ids: number[]; specialTokensMask: number[]; sequenceIds: Array<0 | 1 | null> } {
    if (typeof text !== 'string' || typeof textPair !== 'string') throw new Error('encodePair: expected two strings');
    const a = this.encode(text, { addSpecialTokens: false });
    const b = this.encode(textPair, { addSpecialTokens: false });
    const parts = this.pairTemplateParts(text, textPair, a, b);
    const ids = parts.flatMap(([p]) => p);
    const sequenceIds = parts.flatMap(([p, seq]) => p.map(() => seq));
    return { ids, specialTokensMask: sequenceIds.map((seq) => (seq === null ? 1 : 0)), sequenceIds };
  }

  /** The post-processor's pair encoding cut into specials, A, specials, B, specials (A first, B after it). */
  pairTemplateParts(text: string, textPair: string, a: number[], b: number[]): Array<[number[], 0 | 1 | null]> {
    const full = this.tok.encode(text, { text_pair: textPair, add_special_tokens: true }).ids;
    const at = (part: number[], from: number) => {
      for (let i = from; i + part.length <= full.length; i++) if (part.every((id, j) => full[i + j] === id)) return i;
      return -1;
    };
    const startA = at(a, 0);
    const startB = startA < 0 ? -1 : at(b, startA + a.length);
    if (startB < 0) throw new Error('encodePair: the post_processor\'s pair template does not hold both texts in order');
    return [[full.slice(0, startA), null], [a, 0], [full.slice(startA + a.length, startB), null], [b, 1], [full.slice(startB + b.length), null]];
  }

  /** Token ids of `text`; with `addSpecialTokens` (default) BOS is prepended like transformers. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new Error(`encode: expected a string, got ${typeof text}`);
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
    for (let i = 0; i < ids.length; i++) {
      if (typeof ids[i] !== 'number') {
        throw new Error(`encode: piece ${i} of ${JSON.stringify(text)} has no id and the tokenizer has no unk_token`);
      }
    }
    if (opts.addSpecialTokens === false) return ids;
    return [...this.prefixIds, ...ids, ...this.suffixIds];
  }

  /** Text of token ids (like transformers' `decode`, `clean_up_tokenization_spaces` from the config). */
  decode(ids: number[], opts: DecodeOptions = {}): string {
    if (!Array.isArray(ids)) throw new Error(`decode: expected an array of token ids`);
    const kept: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.tok.id_to_token(id) === undefined) {
        throw new Error(
          `decode: token id ${id} at position ${i} is out of range (valid ids are 0..${this.vocabSize - 1})`,
        );
      }
      if (!(opts.skipSpecialTokens && this.specialIds.has(id))) kept.push(id);
    }
    if (kept.length === 0) return '';
    return this.tok.decode(kept, {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: this.cleanUpTokenizationSpaces,
    });
  }

  /**
   * Encodes a batch like `tokenizer(texts, padding=True, padding_side=...)`: every row is padded to
   * the longest row, on the left (for generation) or the right, with attention masks (0 on padding).
   * With truncation, rows are cut to `maxLength` tokens special tokens included (from the end, or
   * from the start when tokenizer_config's truncation_side is 'left').
   *
   * Padding uses `padTokenId`; when the tokenizer has no pad token (common for Llama-style
   * checkpoints) it falls back to `eosTokenId`, as the usual `tokenizer.pad_token = tokenizer.eos_token`
   * recipe does; the attention mask marks those positions as padding either way. With neither a pad
   * nor an EOS token, a batch that needs padding is an error.
   */
  encodeBatch(texts: string[], opts: EncodeBatchOptions = {}): BatchEncoding {
    if (!Array.isArray(texts)) throw new Error(`encodeBatch: expected an array of strings`);
    const addSpecial = opts.addSpecialTokens !== false;
    const side = opts.paddingSide ?? this.paddingSide;
    if (side !== 'left' && side !== 'right') throw new Error(`encodeBatch: paddingSide must be 'left' or 'right', got ${side}`);
    const truncation = opts.truncation ?? opts.maxLength !== undefined;
    let limit: number | null = null;
    if (truncation) {
      limit = opts.maxLength ?? this.modelMaxLength;
      if (limit === null) {
        throw new Error(`encodeBatch: truncation needs maxLength (tokenizer_config.json has no model_max_length)`);
      }
      if (!Number.isInteger(limit) || limit < 1) throw new Error(`encodeBatch: maxLength must be a positive integer, got ${limit}`);
    }
    const nSpecial = addSpecial ? this.prefixIds.length + this.suffixIds.length : 0;
    if (limit !== null && limit < nSpecial) {
      throw new Error(`encodeBatch: maxLength ${limit} is shorter than the ${nSpecial} special tokens added to each row`);
    }
    const rows = texts.map((text, i) => {
      if (typeof text !== 'string') throw new Error(`encodeBatch: texts[${i}] is not a string`);
      let ids = this.encode(text, { addSpecialTokens: false });
      if (limit !== null && ids.length > limit - nSpecial) {
        const keep = limit - nSpecial;
        ids = this.truncationSide === 'left' ? ids.slice(ids.length - keep) : ids.slice(0, keep);
      }
      return addSpecial ? [...this.prefixIds, ...ids, ...this.suffixIds] : ids;
    });
    const width = rows.reduce((m, r) => Math.max(m, r.length), 0);
    const needsPadding = rows.some((r) => r.length < width);
    // No pad token: pad with EOS (masked out by the attention mask), see the doc comment above.
    const padId = this.padTokenId ?? this.eosTokenId;
    if (needsPadding && padId === null) {
      throw new Error(`encodeBatch: the batch needs padding but the tokenizer has neither a pad_token nor an eos_token`);
    }
    const inputIds: number[][] = [];
    const attentionMask: number[][] = [];
    for (const row of rows) {
      const n = width - row.length;
      const pad = new Array<number>(n).fill(padId ?? 0);
      const zeros = new Array<number>(n).fill(0);
      const ones = new Array<number>(row.length).fill(1);
      if (side === 'left') {
        inputIds.push([...pad, ...row]);
        attentionMask.push([...zeros, ...ones]);
      } else {
        inputIds.push([...row, ...pad]);
        attentionMask.push([...ones, ...zeros]);
      }
    }
    return { inputIds, attentionMask };
  }

  /**
   * A streaming decoder for generation: push ids one at a time and get back only text that will not
   * change any more. The concatenation of every `push` result and `flush()` is exactly
   * `decode(allIds, opts)`.
   *
   * It keeps a small window of ids: the previous chunk (context, already emitted) and the pending ids.
   * Each push decodes the window and emits what goes beyond the text already emitted from it, so
   * decoder effects that depend on neighbours (the leading-space strip of SentencePiece decoders, byte
   * fallback sequences) come out as in a full decode. Held back: a trailing run of U+FFFD (an
   * incomplete multi-byte character / byte-fallback sequence), and, when the config enables
   * `clean_up_tokenization_spaces`, a tail that a later token could still rewrite (" " before ".").
   * Once everything in the window is emitted, the pending ids become the new context.
   */
  createStreamDecoder(opts: DecodeOptions = {}): StreamDecoder {
    const decodeOpts: DecodeOptions = { skipSpecialTokens: opts.skipSpecialTokens === true };
    const allIds: number[] = [];
    let total = ''; // everything emitted so far
    let window: number[] = [];
    let contextLen = 0; // leading ids of `window` that are context only
    let windowEmitted = ''; // the part of decode(window) already emitted (or context)

    const stableEnd = (text: string): number => {
      let end = text.length;
      while (end > 0 && text[end - 1] === REPLACEMENT_CHAR) end--;
      if (this.cleanUpTokenizationSpaces) {
        // Hold back the longest tail that is a proper prefix of a clean-up pattern.
        let hold = 0;
        for (const p of CLEANUP_PATTERNS) {
          for (let k = Math.min(p.length - 1, end); k > hold; k--) {
            if (text.slice(end - k, end) === p.slice(0, k)) {
              hold = k;
              break;
            }
          }
        }
        end -= hold;
      }
      return end;
    };

    return {
      push: (id: number): string => {
        if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.tok.id_to_token(id) === undefined) {
          throw new Error(
            `stream decode: token id ${id} at position ${allIds.length} is out of range (valid ids are 0..${this.vocabSize - 1})`,
          );
        }
        allIds.push(id);
        window.push(id);
        const text = this.decode(window, decodeOpts);
        // A decoder whose output for earlier ids changed with this one: hold everything, flush() resyncs.
        if (!text.startsWith(windowEmitted)) return '';
        const end = stableEnd(text);
        if (end <= windowEmitted.length) return '';
        const out = text.slice(windowEmitted.length, end);
        total += out;
        if (end === text.length) {
          window = window.slice(contextLen);
          contextLen = window.length;
          windowEmitted = this.decode(window, decodeOpts);
        } else {
          windowEmitted = text.slice(0, end);
        }
        return out;
      },
      flush: (): string => {
        const full = this.decode(allIds, decodeOpts);
        let out: string;
        if (full.startsWith(total)) {
          out = full.slice(total.length);
        } else {
          // Cannot happen with the supported decoders; emit what the window still holds.
          const text = this.decode(window, decodeOpts);
          out = text.startsWith(windowEmitted) ? text.slice(windowEmitted.length) : '';
        }
        // Reset, so that the decoder can be reused for a new stream.
        window = [];
        contextLen = 0;
        windowEmitted = '';
        allIds.length = 0;
        total = '';
        return out;
      },
    };
  }
}
