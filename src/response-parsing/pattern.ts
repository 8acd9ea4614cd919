/**
 * The delimiters of a response_template are Python regexes (transformers compiles them with the `regex` module and
 * DOTALL). A Pattern reads that syntax into a small tree and emits two JavaScript regexes:
 * - `full`, the pattern itself (named groups kept);
 * - `partial`, which matches where the text could still turn into a match if more text came: it matches at the
 *   leftmost position from which the rest of the text is a prefix of some match. That is what the `regex` module's
 *   `partial=True` search answers, which the streaming parser needs to hold back text that may be a delimiter.
 *
 * Python semantics kept: `$` is the end or before a final newline, `\Z` / `\A` are the ends, `(?P<name>)` /
 * `(?P=name)` groups, `{,n}`, inline flags at the start (`(?i)`, `(?m)`, `(?s)`). Refused by name: verbose mode,
 * atomic groups and possessive quantifiers (JavaScript has none). `\w`, `\d`, `\s` match as JavaScript's do (ASCII
 * letters and digits for the first two).
 */

type Node =
  | { kind: 'alt'; options: Node[] }
  | { kind: 'seq'; items: Node[] }
  | { kind: 'group'; name?: string; capture: boolean; body: Node }
  | { kind: 'look'; op: '?=' | '?!' | '?<=' | '?<!'; body: Node }
  | { kind: 'repeat'; body: Node; min: number; max: number; lazy: boolean }
  | { kind: 'char'; src: string }
  | { kind: 'assert'; src: string; partial: string }
  | { kind: 'backref'; src: string };

const CLASS_ESCAPES = new Set(['d', 'D', 'w', 'W', 's', 'S']);
const CONTROL_ESCAPES: Record<string, string> = { n: '\\n', t: '\\t', r: '\\r', f: '\\f', v: '\\v', a: '\\x07', '0': '\\0' };
const JS_SYNTAX = new Set([...'\\^$.|?*+()[]{}/-']);

class PythonRegexReader {
  private i = 0;
  readonly names: string[] = [];
  readonly flags = new Set<string>();
  private groups = 0;

  constructor(private readonly source: string) {}

  private fail(what: string): never {
    throw new Error(`response_template pattern ${JSON.stringify(this.source)}: ${what} at position ${this.i}`);
  }

  read(): Node {
    this.readLeadingFlags();
    const node = this.alternation();
    if (this.i < this.source.length) this.fail(`unbalanced ')'`);
    return node;
  }

  private readLeadingFlags(): void {
    const m = /^\(\?([aiLmsux]+)\)/.exec(this.source);
    if (!m) return;
    for (const f of m[1]) {
      if (f === 'x') this.fail('verbose mode (?x) is not supported');
      if (f === 'i' || f === 'm') this.flags.add(f);
    }
    this.i = m[0].length;
  }

  private alternation(): Node {
    const options = [this.sequence()];
    while (this.source[this.i] === '|') {
      this.i++;
      options.push(this.sequence());
    }
    return options.length === 1 ? options[0] : { kind: 'alt', options };
  }

  private sequence(): Node {
    const items: Node[] = [];
    while (this.i < this.source.length && this.source[this.i] !== '|' && this.source[this.i] !== ')') {
      const atom = this.atom();
      if (atom) items.push(this.quantified(atom));
    }
    return { kind: 'seq', items };
  }

  private quantified(atom: Node): Node {
    const s = this.source;
    let min: number;
    let max: number;
    const c = s[this.i];
    if (c === '*') [min, max] = [0, Infinity];
    else if (c === '+') [min, max] = [1, Infinity];
    else if (c === '?') [min, max] = [0, 1];
    else if (c === '{') {
      const m = /^\{(\d*)(,?)(\d*)\}/.exec(s.slice(this.i));
      if (!m || (m[1] === '' && m[2] === '')) return atom; // a literal '{'
      min = m[1] === '' ? 0 : Number(m[1]);
      max = m[2] === '' ? min : m[3] === '' ? Infinity : Number(m[3]);
      this.i += m[0].length - 1;
    } else return atom;
    this.i++;
    let lazy = false;
    if (s[this.i] === '?') { lazy = true; this.i++; } else if (s[this.i] === '+') this.fail('possessive quantifiers are not supported');
    if (atom.kind === 'assert' || atom.kind === 'look') this.fail('a quantifier on an assertion');
    return this.quantified({ kind: 'repeat', body: atom, min, max, lazy });
  }

  private atom(): Node | null {
    const s = this.source;
    const c = s[this.i++];
    if (c === '\\') return this.escape();
    if (c === '[') return this.charClass();
    if (c === '.') return { kind: 'char', src: '.' };
    if (c === '^') return { kind: 'assert', src: '^', partial: '^' };
    if (c === '$') {
      // Python's `$` (no MULTILINE) is the end or just before a final newline.
      const src = this.flags.has('m') ? '$' : '(?=\\n?$)';
      return { kind: 'assert', src, partial: '(?:(?=\\n?$)|$)' };
    }
    if (c === '(') return this.group();
    if ('*+?'.includes(c)) this.fail(`nothing to repeat before '${c}'`);
    return { kind: 'char', src: JS_SYNTAX.has(c) ? `\\${c}` : c };
  }

  private escape(): Node {
    const s = this.source;
    const c = s[this.i++];
    if (c === undefined) this.fail('a trailing backslash');
    if (CLASS_ESCAPES.has(c)) return { kind: 'char', src: `\\${c}` };
    if (c === 'b' || c === 'B') return { kind: 'assert', src: `\\${c}`, partial: `(?:\\${c}|$)` };
    if (c === 'A') return { kind: 'assert', src: '^', partial: '^' };
    if (c === 'Z' || c === 'z') return { kind: 'assert', src: '$', partial: '$' };
    if (c in CONTROL_ESCAPES && !(c === '0' && /\d/.test(s[this.i] ?? ''))) return { kind: 'char', src: CONTROL_ESCAPES[c] };
    if (c === 'x' && /^[0-9a-fA-F]{2}/.test(s.slice(this.i))) { this.i += 2; return { kind: 'char', src: `\\x${s.slice(this.i - 2, this.i)}` }; }
    if (c === 'u' && /^[0-9a-fA-F]{4}/.test(s.slice(this.i))) { this.i += 4; return { kind: 'char', src: `\\u${s.slice(this.i - 4, this.i)}` }; }
    if (/[1-9]/.test(c)) {
      const m = /^\d?/.exec(s.slice(this.i))!;
      this.i += m[0].length;
      return { kind: 'backref', src: `\\${c}${m[0]}` };
    }
    if (/[a-zA-Z]/.test(c)) this.fail(`the escape \\${c} is not supported`);
    return { kind: 'char', src: JS_SYNTAX.has(c) ? `\\${c}` : c };
  }

  private charClass(): Node {
    const s = this.source;
    let src = '[';
    if (s[this.i] === '^') { src += '^'; this.i++; }
    if (s[this.i] === ']') { src += '\\]'; this.i++; } // Python reads a leading ']' as a literal
    while (this.i < s.length && s[this.i] !== ']') {
      const c = s[this.i++];
      if (c === '\\') {
        const e = s[this.i++];
        if (e === undefined) this.fail('a trailing backslash');
        src += e in CONTROL_ESCAPES ? CONTROL_ESCAPES[e] : `\\${e}`;
      } else src += c === '[' ? '\\[' : c;
    }
    if (s[this.i] !== ']') this.fail(`an unterminated character class`);
    this.i++;
    return { kind: 'char', src: `${src}]` };
  }

  private group(): Node {
    const s = this.source;
    let node: Node;
    if (s[this.i] !== '?') {
      this.groups++;
      node = { kind: 'group', capture: true, body: this.alternation() };
    } else {
      const rest = s.slice(this.i);
      const named = /^\?P?<([A-Za-z_]\w*)>/.exec(rest);
      const backref = /^\?P=([A-Za-z_]\w*)\)/.exec(rest);
      const look = /^\?(<=|<!|=|!)/.exec(rest);
      if (backref) { this.i += backref[0].length; return { kind: 'backref', src: `\\k<${backref[1]}>` }; }
      if (rest.startsWith('?#')) {
        const end = s.indexOf(')', this.i);
        if (end < 0) this.fail('an unterminated comment');
        this.i = end + 1;
        return null as unknown as Node;
      }
      if (named) {
        this.i += named[0].length;
        this.groups++;
        this.names.push(named[1]);
        node = { kind: 'group', capture: true, name: named[1], body: this.alternation() };
      } else if (rest.startsWith('?:')) {
        this.i += 2;
        node = { kind: 'group', capture: false, body: this.alternation() };
      } else if (look) {
        this.i += look[0].length;
        node = { kind: 'look', op: `?${look[1]}` as '?=', body: this.alternation() };
      } else if (rest.startsWith('?>')) this.fail('atomic groups are not supported');
      else this.fail(`the group syntax (${rest.slice(0, 4)} is not supported`);
    }
    if (s[this.i] !== ')') this.fail(`a missing ')'`);
    this.i++;
    return node;
  }
}

/** The JavaScript source of a node: `keepGroups` false drops captures (the partial regex repeats parts). */
function full(node: Node, keepGroups: boolean): string {
  switch (node.kind) {
    case 'alt': return node.options.map((o) => full(o, keepGroups)).join('|');
    case 'seq': return node.items.map((n) => atomic(n, keepGroups)).join('');
    case 'group':
      if (!keepGroups || !node.capture) return `(?:${full(node.body, keepGroups)})`;
      return node.name ? `(?<${node.name}>${full(node.body, true)})` : `(${full(node.body, true)})`;
    case 'look': return `(${node.op}${full(node.body, keepGroups)})`;
    case 'repeat': {
      const q = node.max === Infinity ? (node.min === 0 ? '*' : node.min === 1 ? '+' : `{${node.min},}`)
        : node.min === 0 && node.max === 1 ? '?' : node.min === node.max ? `{${node.min}}` : `{${node.min},${node.max}}`;
      return `${atomic(node.body, keepGroups)}${q}${node.lazy ? '?' : ''}`;
    }
    case 'char': case 'assert': return node.src;
    case 'backref': return keepGroups ? node.src : '[^]*?';
  }
}

function atomic(node: Node, keepGroups: boolean): string {
  const src = full(node, keepGroups);
  return node.kind === 'alt' || (node.kind === 'seq' && node.items.length !== 1) || node.kind === 'repeat' ? `(?:${src})` : src;
}

/** A regex matching, at a position, text that runs to the end and is a prefix of some match (or a whole match). */
function partial(node: Node): string {
  switch (node.kind) {
    case 'alt': return `(?:${node.options.map(partial).join('|')})`;
    case 'seq': return partialSeq(node.items, 0);
    case 'group': return partial(node.body);
    case 'look':
      // A lookahead may be met by text still to come; what lies behind, or is ruled out already, is known.
      return node.op === '?=' ? `(?:(?=${full(node.body, false)})|(?=${partial(node.body)}))` : full(node, false);
    case 'repeat': {
      if (node.max === 0) return '$';
      const body = atomic(node.body, false);
      const before = node.max === Infinity ? `${body}*` : node.max === 1 ? '' : `${body}{0,${node.max - 1}}`;
      return `(?:${before}${partial(node.body)})`;
    }
    case 'char': return `(?:${node.src})?$`;
    case 'assert': return node.partial;
    case 'backref': return '[^]*$';
  }
}

function partialSeq(items: Node[], from: number): string {
  if (from >= items.length) return '$';
  const item = items[from];
  if (from === items.length - 1) return partial(item);
  const rest = partialSeq(items, from + 1);
  // A lookahead looks at the same text as what follows it: both may be met by what is still to come.
  if (item.kind === 'look') return `${partial(item)}${rest}`;
  // The text may end here (an assertion holds or may hold once more text comes), or go on past this item.
  const endsHere = item.kind === 'assert' ? `${partial(item)}$` : partial(item);
  return `(?:${endsHere}|${atomic(item, false)}${rest})`;
}

export interface CompiledPattern {
  /** The pattern (global, so `lastIndex` sets where a search starts). */
  full: RegExp;
  /** The same pattern, sticky: matches only where `lastIndex` is. */
  anchored: RegExp;
  /** Where text from a position on could still become a match (global). */
  partial: RegExp;
  /** Named groups. */
  names: string[];
}

/** Compiles a Python regex (DOTALL, as transformers compiles response_template delimiters). */
export function compilePythonPattern(source: string): CompiledPattern {
  const reader = new PythonRegexReader(source);
  const tree = reader.read();
  const flags = `s${[...reader.flags].join('')}`;
  try {
    return {
      full: new RegExp(full(tree, true), `${flags}g`),
      anchored: new RegExp(full(tree, true), `${flags}y`),
      partial: new RegExp(partial(tree), `${flags}g`),
      names: reader.names,
    };
  } catch (e) {
    throw new Error(`response_template pattern ${JSON.stringify(source)} has no JavaScript equivalent: ${(e as Error).message}`);
  }
}

/** A literal as a Python pattern (re.escape). */
export function escapePython(literal: string): string {
  return literal.replace(/[\\^$.|?*+()[\]{}#&~\s-]/g, (c) => (c === '\n' ? '\\n' : c === '\t' ? '\\t' : c === '\r' ? '\\r' : `\\${c}`));
}

const WHITESPACE_CLASS = '\\f\\n\\r\\t\\v\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff';
const EBNF_CLASSES: Record<string, string> = {
  '\\d': '[0-9]', '\\D': '[^0-9]', '\\w': '[a-zA-Z0-9_]', '\\W': '[^a-zA-Z0-9_]', '\\s': `[${WHITESPACE_CLASS}]`, '\\S': `[^${WHITESPACE_CLASS}]`,
  '.': '[\\u0000-\\U0010FFFF]',
};
const CLASS_INNER: Record<string, string> = { '\\d': '0-9', '\\w': 'a-zA-Z0-9_', '\\s': WHITESPACE_CLASS };

/** The character a literal atom's JavaScript source stands for. */
function literalChar(src: string): string {
  if (!src.startsWith('\\')) return src;
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  return /^\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[nrtfv0])$/.test(src) ? JSON.parse(`"${src.replace('\\x', '\\u00').replace('\\v', '\\u000b').replace('\\0', '\\u0000')}"`) as string : src.slice(1);
}

function ebnf(node: Node, where: { first: boolean; last: boolean }): string {
  switch (node.kind) {
    case 'alt': return node.options.map((o) => ebnf(o, where)).join(' | ');
    case 'seq': {
      const parts = node.items.map((n, i) => ebnfAtom(n, { first: where.first && i === 0, last: where.last && i === node.items.length - 1 })).filter((p) => p !== '');
      return parts.length ? parts.join(' ') : '""';
    }
    case 'group': return `( ${ebnf(node.body, where)} )`;
    case 'repeat': {
      const q = node.max === Infinity ? (node.min === 0 ? '*' : node.min === 1 ? '+' : `{${node.min},}`)
        : node.min === 0 && node.max === 1 ? '?' : node.min === node.max ? `{${node.min}}` : `{${node.min},${node.max}}`;
      return `${ebnfAtom(node.body, { first: false, last: false })}${q}`;
    }
    case 'char': {
      if (node.src in EBNF_CLASSES) return EBNF_CLASSES[node.src];
      if (node.src.startsWith('[')) {
        return node.src.replace(/\\[dws]/g, (e) => CLASS_INNER[e]).replace(/\\[DWS]/g, (e) => { throw new Error(`regex class ${node.src}: ${e} inside a class is not supported`); });
      }
      return JSON.stringify(literalChar(node.src));
    }
    case 'assert':
      // The whole text must match (vLLM's regex is a full match): anchors at its ends say nothing more.
      if ((node.src === '^' && where.first) || ((node.src === '$' || node.src === '(?=\\n?$)') && where.last)) return '';
      throw new Error(`the assertion ${node.src === '(?=\\n?$)' ? '$' : node.src} is supported only at the ends of the pattern`);
    case 'look': throw new Error('lookaround assertions are not supported in a regex constraint');
    case 'backref': throw new Error('backreferences are not supported in a regex constraint');
  }
}

function ebnfAtom(node: Node, where: { first: boolean; last: boolean }): string {
  const text = ebnf(node, where);
  return node.kind === 'alt' || (node.kind === 'seq' && node.items.length > 1) ? `( ${text} )` : text;
}

/**
 * A Python regex as the body of an EBNF rule in xgrammar's syntax (its web build has no regex compiler): the same
 * language, matched whole — as xgrammar's own regex converter writes it (`.` any character, `\d` `\w` `\s` as classes).
 */
export function pythonRegexToEbnf(source: string): string {
  const reader = new PythonRegexReader(source);
  const tree = reader.read();
  if (reader.flags.size > 0) throw new Error(`regex ${JSON.stringify(source)}: inline flags (${[...reader.flags].join('')}) are not supported`);
  try {
    return ebnf(tree, { first: true, last: true });
  } catch (e) {
    throw new Error(`regex ${JSON.stringify(source)}: ${(e as Error).message}`);
  }
}
