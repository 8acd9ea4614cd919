/**
 * Character offsets of tokens in the text they came from, as the Rust tokenizer's offset mapping gives them
 * (transformers' return_offsets_mapping), for the tokenizer pipelines of SentencePiece-style checkpoints (Nemotron's):
 * tokenizers.js encodes but keeps no offsets, so they are recovered by replaying the normalization with an alignment
 * (which original characters each normalized character stands for) and walking the tokens' pieces through it.
 *
 * Replayed: the normalizers Prepend, Replace (plain strings), NFC/NFKC where they change nothing; the pre-tokenizers
 * Metaspace (replacement and prepend scheme) and those that only split (Split, Digits, Punctuation, Whitespace[Split],
 * whose dropped whitespace is skipped); BPE, Unigram, WordPiece (continuing-subword prefix) and WordLevel pieces, byte
 * fallback (each byte token spans its character), unknown tokens (up to where the next piece resumes), added tokens
 * (the text is normalized in the segments between them, as the Rust pipeline does). Anything else is refused by name.
 * Offsets are UTF-16 indices into the JavaScript string (Python's count code points: they differ past U+FFFF).
 */

type Json = Record<string, any>;

/** One token of the text, as the walker needs it. */
export interface OffsetPiece {
  /** The vocabulary piece (tokenizer.idToToken). */
  piece: string;
  /** An added token (matched in the text as is, between normalized segments). */
  added: boolean;
  /** The unknown token (its extent is found from the next piece). */
  unknown: boolean;
}

interface Pipeline {
  steps: Array<{ prepend: string } | { replace: [string, string] } | { unchanged: 'NFC' | 'NFKC' | 'NFD' | 'NFKD' }>;
  metaspace: { replacement: string; prependScheme: 'always' | 'first' | 'never' } | null;
  continuingPrefix: string;
  suffix: string;
}

const SPLITTING_PRE_TOKENIZERS = new Set(['Split', 'Digits', 'Punctuation', 'Whitespace', 'WhitespaceSplit', 'UnicodeScripts', 'CharDelimiterSplit']);

/** What of tokenizer.json's pipeline the offsets replay; throws for a step that moves characters in other ways. */
export function offsetPipeline(json: Json): Pipeline {
  const list = (node: Json | null, kind: string): Json[] => (node === null || node === undefined ? [] : node.type === 'Sequence' ? node[kind] as Json[] : [node]);
  const steps: Pipeline['steps'] = [];
  for (const n of list(json.normalizer, 'normalizers')) {
    if (n.type === 'Prepend') steps.push({ prepend: n.prepend });
    else if (n.type === 'Replace' && typeof n.pattern?.String === 'string') steps.push({ replace: [n.pattern.String, n.content] });
    else if (['NFC', 'NFKC', 'NFD', 'NFKD'].includes(n.type)) steps.push({ unchanged: n.type });
    else throw new Error(`offsets: the normalizer ${n.type}${n.type === 'Replace' ? ' (a regular expression)' : ''} is not replayed; offsets are given for Prepend, Replace and NFC-style normalizers`);
  }
  let metaspace: Pipeline['metaspace'] = null;
  for (const p of list(json.pre_tokenizer, 'pretokenizers')) {
    if (p.type === 'Metaspace') {
      const scheme = p.prepend_scheme ?? (p.add_prefix_space === false ? 'never' : 'always');
      metaspace = { replacement: p.replacement ?? '\u2581', prependScheme: scheme };
    } else if (!SPLITTING_PRE_TOKENIZERS.has(p.type)) {
      throw new Error(`offsets: the pre-tokenizer ${p.type} is not replayed (byte-level vocabularies map characters to others); offsets are given for SentencePiece-style tokenizers`);
    }
  }
  const model = json.model ?? {};
  return { steps, metaspace, continuingPrefix: model.continuing_subword_prefix ?? '', suffix: model.end_of_word_suffix ?? '' };
}

/** A normalized segment: its UTF-16 units and, for each, the [start, end) of the original characters it stands for. */
interface Normalized {
  text: string;
  align: Array<[number, number]>;
}

function normalizeSegment(original: string, from: number, to: number, pipeline: Pipeline): Normalized {
  let text = original.slice(from, to);
  let align: Array<[number, number]> = [];
  for (let i = 0; i < text.length; i++) {
    const pair = i + 1 < text.length && text.charCodeAt(i) >= 0xd800 && text.charCodeAt(i) < 0xdc00;
    const span: [number, number] = [from + i, from + i + (pair ? 2 : 1)];
    align.push(span);
    if (pair) align.push([span[0], span[1]]), i++;
  }
  const prepend = (p: string) => {
    if (text.length === 0) return;
    // A prepended character stands for the first one (the Rust pipeline aligns it so).
    align = [...Array.from({ length: p.length }, () => [align[0][0], align[0][1]] as [number, number]), ...align];
    text = p + text;
  };
  const replace = (pattern: string, content: string) => {
    if (pattern.length === 0 || !text.includes(pattern)) return;
    let out = '';
    const outAlign: Array<[number, number]> = [];
    for (let i = 0; i < text.length;) {
      if (text.startsWith(pattern, i)) {
        const span: [number, number] = [align[i][0], align[i + pattern.length - 1][1]];
        out += content;
        for (let k = 0; k < content.length; k++) outAlign.push([span[0], span[1]]);
        i += pattern.length;
      } else {
        out += text[i];
        outAlign.push(align[i]);
        i++;
      }
    }
    text = out;
    align = outAlign;
  };
  for (const step of pipeline.steps) {
    if ('prepend' in step) prepend(step.prepend);
    else if ('replace' in step) replace(...step.replace);
    else if (text.normalize(step.unchanged) !== text) throw new Error(`offsets: ${step.unchanged} changes this text, which the offsets do not replay`);
  }
  if (pipeline.metaspace) {
    const { replacement, prependScheme } = pipeline.metaspace;
    replace(' ', replacement);
    const first = from === 0;
    if ((prependScheme === 'always' || (prependScheme === 'first' && first)) && !text.startsWith(replacement)) prepend(replacement);
  }
  return { text, align };
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

/** Bytes a UTF-8 sequence starting with `lead` has. */
function utf8Length(lead: number): number {
  return lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
}

/**
 * [start, end) in `text` of each of `pieces` (the ids of `text` encoded without a template, in order): see the module
 * comment. A piece the walk cannot place gets the span after the previous one, empty.
 */
export function alignOffsets(text: string, pieces: OffsetPiece[], pipeline: Pipeline): Array<[number, number]> {
  const offsets: Array<[number, number]> = [];
  let cursor = 0; // in the original text
  let i = 0;
  while (i < pieces.length) {
    if (pieces[i].added) {
      const at = text.indexOf(pieces[i].piece, cursor);
      const start = at >= 0 ? at : cursor;
      offsets.push([start, start + (at >= 0 ? pieces[i].piece.length : 0)]);
      cursor = offsets[offsets.length - 1][1];
      i++;
      continue;
    }
    // A segment: the pieces up to the next added token, over the text up to where that token stands.
    let j = i;
    while (j < pieces.length && !pieces[j].added) j++;
    const next = j < pieces.length ? text.indexOf(pieces[j].piece, cursor) : -1;
    const end = next >= 0 ? next : text.length;
    const segment = normalizeSegment(text, cursor, end, pipeline);
    walkSegment(segment, pieces.slice(i, j), pipeline, offsets, cursor);
    cursor = end;
    i = j;
  }
  return offsets;
}

function walkSegment(segment: Normalized, pieces: OffsetPiece[], pipeline: Pipeline, offsets: Array<[number, number]>, segmentStart: number): void {
  const { text, align } = segment;
  const spanOf = (from: number, to: number): [number, number] => {
    if (to > from) return [align[from][0], align[to - 1][1]];
    const at = from < align.length ? align[from][0] : align.length ? align[align.length - 1][1] : segmentStart;
    return [at, at];
  };
  const surface = (p: OffsetPiece): string | null => {
    if (p.unknown || BYTE_PIECE.test(p.piece)) return null;
    let s = p.piece;
    if (pipeline.continuingPrefix && s.startsWith(pipeline.continuingPrefix)) s = s.slice(pipeline.continuingPrefix.length);
    if (pipeline.suffix && s.endsWith(pipeline.suffix)) s = s.slice(0, -pipeline.suffix.length);
    return s;
  };
  let at = 0; // in the normalized segment
  for (let k = 0; k < pieces.length; k++) {
    const p = pieces[k];
    const bytes = BYTE_PIECE.exec(p.piece);
    if (bytes) {
      // Byte fallback: the bytes of one character, each token spanning the whole character.
      const count = utf8Length(parseInt(bytes[1], 16));
      const run = pieces.slice(k, k + count).filter((q) => BYTE_PIECE.test(q.piece)).length;
      const chars = text.codePointAt(at)! > 0xffff ? 2 : 1;
      const span = spanOf(at, Math.min(text.length, at + chars));
      for (let r = 0; r < run; r++) offsets.push([span[0], span[1]]);
      at += chars;
      k += run - 1;
      continue;
    }
    const s = surface(p);
    if (s === null) {
      // Unknown: up to where the next placeable piece resumes (at least one character).
      const following = pieces.slice(k + 1).map(surface).find((x) => x !== null && x.length > 0);
      let stop = following ? text.indexOf(following, at + 1) : text.length;
      if (stop < 0) stop = text.length;
      const width = Math.max(1, stop - at);
      offsets.push(spanOf(at, Math.min(text.length, at + width)));
      at = Math.min(text.length, at + width);
      continue;
    }
    // Whitespace a splitting pre-tokenizer dropped is skipped.
    let found = text.startsWith(s, at) ? at : text.indexOf(s, at);
    if (found < 0) found = at;
    const to = Math.min(text.length, found + s.length);
    offsets.push(spanOf(found, to));
    at = to;
  }
}

/**
 * The word of each token of a text (the Rust encoding's word ids: the pre-tokenizer's pieces), for the pipelines that
 * align spans to words: Metaspace splitting at its replacement character (a piece that begins with ▁ begins a word), or
 * no splitting at all (one word). Other pre-tokenizers are refused by name.
 */
export function wordIds(json: Json, pieces: string[]): number[] {
  const pre = json.pre_tokenizer as Json | null | undefined;
  const list: Json[] = pre === null || pre === undefined ? [] : pre.type === 'Sequence' ? pre.pretokenizers : [pre];
  if (list.length === 0 || (list.length === 1 && list[0].type === 'Metaspace' && list[0].split === false)) return pieces.map(() => 0);
  if (list.length === 1 && list[0].type === 'Metaspace') {
    const replacement = (list[0].replacement as string | undefined) ?? '\u2581';
    let word = -1;
    return pieces.map((piece, i) => (i === 0 || piece.startsWith(replacement) ? ++word : word));
  }
  throw new Error(`words: the pre-tokenizer ${list.map((p) => p.type).join(' + ')} is not replayed; align spans to tokens instead (alignToWords: false)`);
}
