/**
 * Byte-level BPE vocabularies in GGUF (`tokenizer.ggml.model` "gpt2", as llama.cpp's converter writes the tokenizers
 * of Nemotron-H, Nemotron Nano 2 and Nemotron 3): the tokens in id order, llama.cpp's token types, the merges, and the
 * pre-tokenizer by the name llama.cpp gives it (`tokenizer.ggml.pre`). Read back as the tokenizer.json the
 * checkpoint's own tokenizer has (ByteLevel over a Split with that pre-tokenizer's regex), and written from one.
 */

type Json = Record<string, unknown>;

/** llama.cpp's token types (llama_token_type). */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

const GPT2 = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;
const LLAMA3 = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN2 = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const TEKKEN = String.raw`[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

const byteLevel = (useRegex: boolean, trimOffsets = true) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: trimOffsets, use_regex: useRegex });
const splitThenBytes = (regex: string, trimOffsets = true) => ({
  type: 'Sequence',
  pretokenizers: [{ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false }, byteLevel(false, trimOffsets)],
});

/**
 * The pre-tokenizers llama.cpp names, as the original tokenizers' tokenizer.json define them: GPT-2's, Llama 3's
 * ("llama-bpe", whose BPE also skips merges for whole words in the vocabulary), Qwen 2's, and Mistral NeMo's "tekken"
 * (Nemotron-H's and Nemotron Nano 2's).
 */
const PRE_TOKENIZERS: Record<string, { preTokenizer: Json; ignoreMerges: boolean }> = {
  'gpt-2': { preTokenizer: byteLevel(true), ignoreMerges: false },
  'llama-bpe': { preTokenizer: splitThenBytes(LLAMA3), ignoreMerges: true },
  qwen2: { preTokenizer: splitThenBytes(QWEN2, false), ignoreMerges: false },
  tekken: { preTokenizer: splitThenBytes(TEKKEN), ignoreMerges: false },
};

/** The BOS/EOS template (TemplateProcessing) transformers writes into tokenizer.json for add_bos / add_eos. */
export function specialTokenTemplate(tokens: string[], v: { bos?: number; eos?: number; addBos: boolean; addEos: boolean }): Json {
  const token = (id: number | undefined) => (id === undefined || id < 0 ? undefined : tokens[id]);
  const special = (id: number | undefined, typeId: number) => (token(id) === undefined ? [] : [{ SpecialToken: { id: token(id), type_id: typeId } }]);
  const sequence = (name: 'A' | 'B', typeId: number) => [
    ...(v.addBos ? special(v.bos, typeId) : []), { Sequence: { id: name, type_id: typeId } }, ...(v.addEos ? special(v.eos, typeId) : []),
  ];
  const templateIds = [...(v.addBos ? [v.bos] : []), ...(v.addEos ? [v.eos] : [])].filter((id) => token(id) !== undefined) as number[];
  return {
    type: 'TemplateProcessing', single: sequence('A', 0), pair: [...sequence('A', 0), ...sequence('B', 1)],
    special_tokens: Object.fromEntries(templateIds.map((id) => [token(id), { id: token(id), ids: [id], tokens: [token(id)] }])),
  };
}

/**
 * tokenizer.json for a "gpt2" GGUF vocabulary: a byte-level BPE over the tokens with the stored merges, the named
 * pre-tokenizer, control tokens as special added tokens and user-defined ones as plain added tokens (unused padding
 * entries left out of both), and the BOS/EOS template.
 */
export function byteLevelTokenizerJson(v: {
  tokens: string[]; types: number[]; merges: string[]; pre: string; bos?: number; eos?: number; addBos: boolean; addEos: boolean; source: string;
}): Json {
  const known = PRE_TOKENIZERS[v.pre];
  if (!known) {
    throw new Error(`${v.source}: tokenizer.ggml.pre is ${JSON.stringify(v.pre)}; the byte-level pre-tokenizers read are ${Object.keys(PRE_TOKENIZERS).join(', ')}`);
  }
  if (v.merges.length === 0) throw new Error(`${v.source}: a "gpt2" vocabulary without tokenizer.ggml.merges`);
  const vocab: Record<string, number> = {};
  v.tokens.forEach((t, id) => { if (v.types[id] !== TOKEN_TYPE.UNUSED) vocab[t] = id; });
  const added = v.tokens.flatMap((content, id) => (v.types[id] === TOKEN_TYPE.CONTROL || v.types[id] === TOKEN_TYPE.USER_DEFINED
    ? [{ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: v.types[id] === TOKEN_TYPE.CONTROL }] : []));
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
    pre_tokenizer: known.preTokenizer,
    post_processor: specialTokenTemplate(v.tokens, v),
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false,
      byte_fallback: false, ignore_merges: known.ignoreMerges, vocab, merges: v.merges.map((m) => m.split(' ')) },
  };
}

/** Whether a tokenizer.json is a byte-level BPE (GPT-2's kind) rather than SentencePiece's byte-fallback kind. */
export function isByteLevel(json: Json): boolean {
  const parts = (p: unknown): Json[] => {
    const node = p as Json | null;
    if (!node) return [];
    return node.type === 'Sequence' ? (node.pretokenizers as Json[]).flatMap(parts) : [node];
  };
  return parts(json.pre_tokenizer).some((p) => p.type === 'ByteLevel');
}

/** llama.cpp's name of a tokenizer.json's byte-level pre-tokenizer (by its split regex), or an error naming it. */
export function preTokenizerName(json: Json): string {
  const given = JSON.stringify(json.pre_tokenizer);
  const regexOf = (p: Json): string | null => {
    const pieces = p.type === 'Sequence' ? p.pretokenizers as Json[] : [p];
    const split = pieces.find((q) => q.type === 'Split');
    if (split) return ((split.pattern as Json).Regex as string | undefined) ?? null;
    return pieces.some((q) => q.type === 'ByteLevel' && q.use_regex !== false) ? GPT2 : null;
  };
  const wanted = regexOf((json.pre_tokenizer ?? {}) as Json);
  const name = Object.entries(PRE_TOKENIZERS).find(([, known]) => regexOf(known.preTokenizer) === wanted)?.[0];
  if (!name) throw new Error(`this tokenizer's pre-tokenizer (${given.slice(0, 200)}) is none that llama.cpp names and this writer knows (${Object.keys(PRE_TOKENIZERS).join(', ')})`);
  return name;
}

/**
 * A "gpt2" GGUF vocabulary from a byte-level BPE tokenizer.json, as llama.cpp's converter writes it: the tokens by id
 * (gaps as unused `[PAD{id}]`), control / user-defined types for the special / plain added tokens, the merges as
 * "a b" strings and the pre-tokenizer's name.
 */
export function byteLevelVocabulary(json: Json): { tokens: string[]; types: number[]; merges: string[]; pre: string } {
  const model = json.model as { type: string; vocab: Record<string, number>; merges?: Array<string | string[]> };
  if (model.type !== 'BPE') throw new Error(`a byte-level GGUF vocabulary needs a BPE tokenizer, not ${model.type}`);
  const added = new Map(((json.added_tokens ?? []) as Array<{ id: number; content: string; special: boolean }>).map((t) => [t.id, t]));
  const size = Math.max(...Object.values(model.vocab), ...added.keys()) + 1;
  const tokens = Array.from({ length: size }, (_, id) => `[PAD${id}]`);
  const types = new Array<number>(size).fill(TOKEN_TYPE.UNUSED);
  for (const [t, id] of Object.entries(model.vocab)) { tokens[id] = t; types[id] = TOKEN_TYPE.NORMAL; }
  for (const [id, t] of added) { tokens[id] = t.content; types[id] = t.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED; }
  const merges = (model.merges ?? []).map((m) => (Array.isArray(m) ? m.join(' ') : m));
  return { tokens, types, merges, pre: preTokenizerName(json) };
}
