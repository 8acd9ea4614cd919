/**
 * Structured outputs: grammar-constrained decoding. At each step a row may take only the tokens that keep its text a
 * prefix of the grammar's language — any JSON, JSON of a JSON schema, an EBNF grammar, one of fixed strings — and,
 * once the text is complete, only an EOS. The token masks come from xgrammar (its WebAssembly build), the engine vLLM
 * runs for response_format and guided decoding; transformers runs it through xgrammar's LogitsProcessor, which is
 * what the tests compare with.
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as XGrammar from '@mlc-ai/web-xgrammar';
import type { NemotronTokenizer } from '../tokenizer';
import { pythonRegexToEbnf } from '../response-parsing/pattern';

export type GrammarSpec =
  /** Any JSON value (xgrammar's builtin JSON grammar; OpenAI's response_format json_object as vLLM serves it). */
  | { type: 'json' }
  /** JSON that a JSON schema accepts (OpenAI's response_format json_schema). Whitespace between items is free unless anyWhitespace is false. */
  | { type: 'json_schema'; schema: object | string; anyWhitespace?: boolean; strict?: boolean }
  /** An EBNF grammar in xgrammar's (GBNF-like) syntax, rule `root` unless rootRule says otherwise. */
  | { type: 'grammar'; grammar: string; rootRule?: string }
  /** Exactly one of these strings (vLLM's guided_choice). */
  | { type: 'choice'; choices: string[] }
  /** Text the (Python-syntax) regex matches whole (vLLM's guided_regex), through its EBNF (pythonRegexToEbnf). */
  | { type: 'regex'; regex: string };

/** A row's restriction: masks the scores of the tokens it does not allow next, and follows the tokens chosen. */
export interface TokenConstraint {
  /** Sets the score of every token not allowed next to -Infinity (nothing once the row's text is complete and ended). */
  mask(scores: Float32Array): void;
  /** Records the token the row took; throws if the constraint does not allow it. */
  accept(token: number): void;
  /** Frees what the constraint holds (xgrammar's matcher lives in WebAssembly memory). */
  dispose(): void;
}

let xgrammar: typeof XGrammar | null = null;

/**
 * The xgrammar module. Its package says "type": "module" over a UMD bundle that reads `require`, which neither Node's
 * ESM loader nor require() runs; the bundle's CommonJS branch is evaluated here directly.
 */
function loadXGrammar(): typeof XGrammar {
  if (xgrammar) return xgrammar;
  const file = require.resolve('@mlc-ai/web-xgrammar/lib/index.js');
  const module = { exports: {} as typeof XGrammar };
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  new Function('exports', 'module', 'require', '__filename', '__dirname', fs.readFileSync(file, 'utf8'))(module.exports, module, require, file, path.dirname(file));
  xgrammar = module.exports;
  return xgrammar;
}

type Json = Record<string, unknown>;

function components(value: unknown): Json[] {
  if (value === null || typeof value !== 'object') return [];
  const node = value as Json;
  return node.type === 'Sequence' ? [...((node.normalizers ?? node.pretokenizers ?? node.pre_tokenizers ?? node.decoders) as unknown[] ?? [])].flatMap(components) : [node];
}

/**
 * How xgrammar must read the vocabulary's token strings, as xgrammar's TokenizerInfo.from_huggingface detects it:
 * "byte_fallback" (SentencePiece-style: ▁ for spaces, <0xNN> bytes), "byte_level" (GPT-2's byte alphabet) or "raw";
 * and whether encoding prepends a space to the text (a Prepend normalizer, a Metaspace that prepends).
 */
export function grammarVocabularyInfo(tokenizer: NemotronTokenizer): { vocabType: 'byte_fallback' | 'byte_level' | 'raw'; addPrefixSpace: boolean } {
  const json = tokenizer.tokenizerJson();
  const decoders = components(json.decoder);
  const vocab = ((json.model as Json | undefined)?.vocab ?? {}) as Record<string, number> | Array<[string, number]>;
  const pieces = Array.isArray(vocab) ? vocab.map(([t]) => t) : Object.keys(vocab);
  const bytePieces = pieces.filter((t) => /^<0x[0-9A-F]{2}>$/.test(t)).length;
  let vocabType: 'byte_fallback' | 'byte_level' | 'raw' = decoders.some((d) => d.type === 'ByteFallback') ? 'byte_fallback'
    : decoders.some((d) => d.type === 'ByteLevel') ? 'byte_level' : 'raw';
  // The vocabulary is its own evidence: 128 or more <0xNN> pieces make it byte-fallback, whatever the decoder says.
  if (bytePieces >= 128) vocabType = 'byte_fallback';
  const normalizers = components(json.normalizer);
  const preTokenizers = components(json.pre_tokenizer);
  const addPrefixSpace = normalizers.some((n) => n.type === 'Prepend' && n.prepend === '▁') ||
    preTokenizers.some((p) => (p.type === 'Metaspace' && (p.prepend_scheme === 'first' || p.prepend_scheme === 'always' || p.add_prefix_space === true)) ||
      (p.type === 'ByteLevel' && p.add_prefix_space === true));
  return { vocabType, addPrefixSpace };
}

/** Compiles grammars for one tokenizer and model vocabulary (the vocabulary is read once; grammars are cached). */
export class GrammarCompiler {
  private constructor(private readonly compiler: XGrammar.GrammarCompiler, readonly vocabSize: number) {}

  /**
   * For `tokenizer` and a model whose logits have `vocabSize` entries (the embedding may be padded past the
   * tokenizer's ids); the grammar ends with one of `stopTokenIds` (default: the tokenizer's EOS).
   */
  static async create(tokenizer: NemotronTokenizer, options: { vocabSize: number; stopTokenIds?: number[] }): Promise<GrammarCompiler> {
    const xg = loadXGrammar();
    const stops = options.stopTokenIds ?? (tokenizer.eosTokenId === null ? [] : [tokenizer.eosTokenId]);
    if (stops.length === 0) throw new Error('GrammarCompiler: a grammar ends with an EOS token; this tokenizer has none, pass stopTokenIds');
    if (!Number.isInteger(options.vocabSize) || options.vocabSize < tokenizer.vocabSize) {
      throw new Error(`GrammarCompiler: vocabSize ${options.vocabSize} is smaller than the tokenizer's ${tokenizer.vocabSize} ids`);
    }
    const vocabulary = Array.from({ length: options.vocabSize }, (_, id) => (id < tokenizer.vocabSize ? tokenizer.idToToken(id) ?? '' : ''));
    const { vocabType, addPrefixSpace } = grammarVocabularyInfo(tokenizer);
    const info = await xg.TokenizerInfo.createTokenizerInfo(vocabulary, vocabType, addPrefixSpace, options.vocabSize, stops);
    return new GrammarCompiler(await xg.GrammarCompiler.createGrammarCompiler(info, true), options.vocabSize);
  }

  /** Compiles a grammar; errors name what is wrong with it (a schema or EBNF that does not parse, say). */
  async compile(spec: GrammarSpec): Promise<CompiledGrammar> {
    // xgrammar reports why a grammar fails on stderr, then aborts with "Aborted()": the reason is caught here for the error.
    const reasons: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      const text = String(chunk);
      if (/^\[FATAL\]|^Aborted\(\)/.test(text)) {
        reasons.push(text.replace(/^\[FATAL\] \S+:\d+: /, '').trim());
        return true;
      }
      return (write as (...a: unknown[]) => boolean).call(process.stderr, chunk, ...rest);
    }) as typeof process.stderr.write;
    try {
      return await this.compileNow(spec);
    } catch (e) {
      const reason = reasons.find((r) => r !== 'Aborted()') ?? (e instanceof Error ? e.message : String(e));
      throw new Error(`grammar ${JSON.stringify(spec).slice(0, 200)}: ${reason}`);
    } finally {
      process.stderr.write = write;
    }
  }

  private async compileNow(spec: GrammarSpec): Promise<CompiledGrammar> {
    {
      switch (spec.type) {
        case 'json':
          return new CompiledGrammar(await this.compiler.compileBuiltinJSONGrammar(), this.vocabSize);
        case 'json_schema': {
          const schema = typeof spec.schema === 'string' ? spec.schema : JSON.stringify(spec.schema);
          return new CompiledGrammar(await this.compiler.compileJSONSchema(schema, spec.anyWhitespace ?? true, undefined, undefined, spec.strict ?? true), this.vocabSize);
        }
        case 'grammar':
          return new CompiledGrammar(await this.compiler.compileGrammar(spec.grammar, spec.rootRule ?? 'root'), this.vocabSize);
        case 'choice': {
          if (!Array.isArray(spec.choices) || spec.choices.length === 0 || !spec.choices.every((c) => typeof c === 'string' && c.length > 0)) {
            throw new Error(`choices must be a non-empty list of non-empty strings, got ${JSON.stringify(spec.choices)}`);
          }
          return new CompiledGrammar(await this.compiler.compileGrammar(`root ::= ${spec.choices.map((c) => JSON.stringify(c)).join(' | ')}`), this.vocabSize);
        }
        case 'regex':
          if (typeof spec.regex !== 'string') throw new Error(`regex must be a string, got ${JSON.stringify(spec.regex)}`);
          return new CompiledGrammar(await this.compiler.compileGrammar(`root ::= ${pythonRegexToEbnf(spec.regex)}`), this.vocabSize);
        default:
          throw new Error(`unknown grammar type ${JSON.stringify((spec as { type?: unknown }).type)}; expected json, json_schema, grammar, choice or regex`);
      }
    }
  }
}

/** A compiled grammar: `constraint()` makes a fresh TokenConstraint (one a row; dispose it when the row ends). */
export class CompiledGrammar {
  constructor(private readonly compiled: XGrammar.CompiledGrammar, readonly vocabSize: number) {}

  async constraint(): Promise<TokenConstraint> {
    const matcher = await loadXGrammar().GrammarMatcher.createGrammarMatcher(this.compiled);
    // The binding's own calls, which are synchronous (the wrapper's getNextTokenBitmask is async only to await the module).
    const handle = (matcher as unknown as { handle: MatcherHandle }).handle;
    const words = Math.ceil(this.vocabSize / 32);
    const vocabSize = this.vocabSize;
    let terminated = false;
    let disposed = false;
    return {
      mask(scores: Float32Array): void {
        if (terminated) return;
        const vector = handle.GetNextTokenBitmask(vocabSize);
        try {
          for (let w = 0; w < words; w++) {
            const bits = vector.get(w);
            if (bits === -1) continue;
            const end = Math.min(scores.length, (w + 1) * 32);
            for (let id = w * 32; id < end; id++) if (((bits >>> (id - w * 32)) & 1) === 0) scores[id] = -Infinity;
          }
        } finally {
          vector.delete();
        }
      },
      accept(token: number): void {
        if (terminated) return;
        if (!handle.AcceptToken(token, false)) throw new Error(`the grammar does not allow token ${token} here`);
        terminated = handle.IsTerminated();
      },
      dispose(): void {
        if (!disposed) matcher.dispose();
        disposed = true;
      },
    };
  }

  /** Frees the grammar's WebAssembly memory. */
  dispose(): void {
    this.compiled.dispose();
  }
}

interface MatcherHandle {
  GetNextTokenBitmask(vocabSize: number): { get(i: number): number; delete(): void };
  AcceptToken(token: number, verbose: boolean): boolean;
  IsTerminated(): boolean;
}
