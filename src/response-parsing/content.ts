/**
 * Content parsers of a response_template field (transformers' `content`: text, int, float, bool, json, xml-inline,
 * kv-lines, python-call-list) and its `transform` templates. Each takes a region's text and gives its value.
 */
import { compilePythonPattern } from './pattern';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type ContentArgs = Record<string, unknown>;

function text(body: string, args: ContentArgs): string {
  return args.strip === false ? body : body.trim();
}

/** Python's int(): optional sign, digits (underscores between them), surrounding whitespace. */
function int(body: string, args: ContentArgs): number {
  const s = text(body, args);
  if (!/^[+-]?\d+(?:_\d+)*$/.test(s.trim())) throw new Error(`int parser: invalid literal ${JSON.stringify(s)}`);
  return Number(s.trim().replace(/_/g, ''));
}

function pythonFloat(raw: string): number {
  const s = raw.trim().replace(/(?<=\d)_(?=\d)/g, '');
  if (/^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(s)) return Number(s);
  const special = /^([+-]?)(inf|infinity|nan)$/i.exec(s);
  if (special) return special[2].toLowerCase() === 'nan' ? NaN : special[1] === '-' ? -Infinity : Infinity;
  throw new Error(`float parser: could not convert ${JSON.stringify(raw)} to float`);
}

function float(body: string, args: ContentArgs): number {
  return pythonFloat(text(body, args));
}

function bool(body: string, args: ContentArgs): boolean {
  return ['true', '1'].includes(text(body, args).toLowerCase());
}

// Stand-ins for strings lifted out before JSON parsing (control characters no model writes).
const LAX_OPEN = '\x01';
const LAX_CLOSE = '\x02';

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

/** JSON, with the dialects models write: bare keys (`unquoted_keys`), custom string delimiters (`string_delims`). */
function json(body: string, args: ContentArgs): Json {
  const delims = (args.string_delims ?? []) as Array<[string, string]>;
  if (delims.length > 0 && (body.includes(LAX_OPEN) || body.includes(LAX_CLOSE))) {
    throw new Error('json parser: the text holds the reserved characters \\x01/\\x02; cannot parse it safely');
  }
  let working = body;
  const captured: string[] = [];
  for (const [open, close] of delims) {
    working = working.replace(new RegExp(`${escapeRegex(open)}(.*?)${escapeRegex(close)}`, 'gs'), (_m, inner: string) => {
      captured.push(inner);
      return `${LAX_OPEN}${captured.length - 1}${LAX_CLOSE}`;
    });
  }
  if (args.unquoted_keys) {
    // Whole quoted strings are matched first and kept, so key-like text inside a value is never rewritten.
    working = working.replace(/"(?:\\.|[^"\\])*"|(?<=[{,])(\s*)(\w+)(\s*):/g,
      (m, before: string | undefined, key: string | undefined, after: string | undefined) => (key === undefined ? m : `${before}"${key}"${after}:`));
  }
  captured.forEach((s, i) => { working = working.split(`${LAX_OPEN}${i}${LAX_CLOSE}`).join(JSON.stringify(s)); });
  try {
    return JSON.parse(working) as Json;
  } catch (e) {
    if (args.allow_non_json) return text(body, args);
    const detail = working === body ? `Content: ${JSON.stringify(body)}` : `Original: ${JSON.stringify(body)}, transformed: ${JSON.stringify(working)}`;
    throw new Error(`json parser could not parse the region as JSON (${(e as Error).message}). ${detail}`);
  }
}

function subParse(raw: string, valueParser: unknown): Json {
  if (valueParser === undefined || valueParser === null) return raw;
  const spec = valueParser as { name?: string; args?: ContentArgs };
  return parseContent(raw, spec.name ?? 'text', spec.args ?? {});
}

/** Shallow XML-ish tags into an object: `tag_pattern` has named groups `key` and `value`. */
function xmlInline(body: string, args: ContentArgs): Json {
  if (typeof args.tag_pattern !== 'string') throw new Error(`xml-inline parser: the content_arg 'tag_pattern' is required`);
  const pattern = compilePythonPattern(args.tag_pattern).full;
  const out: Record<string, Json> = {};
  const merged = new Set<string>();
  for (const m of body.matchAll(pattern)) {
    const key = m.groups?.key;
    if (key === undefined) throw new Error(`xml-inline parser: tag_pattern must have a named group 'key', got ${JSON.stringify(args.tag_pattern)}`);
    const value = subParse(m.groups?.value ?? '', args.value_parser);
    if (key in out && args.merge_duplicates) {
      if (!merged.has(key)) { out[key] = [out[key]]; merged.add(key); }
      (out[key] as Json[]).push(value);
    } else out[key] = value;
  }
  return out;
}

/** `key<sep>value` lines into an object. */
function kvLines(body: string, args: ContentArgs): Json {
  const lineSep = (args.line_sep as string | undefined) ?? '\n';
  const kvSep = (args.kv_sep as string | undefined) ?? ':';
  const out: Record<string, Json> = {};
  for (const raw of body.split(lineSep)) {
    const line = text(raw, args);
    const at = line.indexOf(kvSep);
    if (!line || at < 0) continue;
    out[text(line.slice(0, at), args)] = subParse(text(line.slice(at + kvSep.length), args), args.value_parser);
  }
  return out;
}

const CALL_ESCAPES: Record<string, string> = { '\\': '\\', "'": "'", '"': '"', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
const CALL_CONSTANTS: Record<string, Json> = { True: true, true: true, False: false, false: false, None: null, null: null };
const MAX_DEPTH = 100;

/**
 * A list of keyword calls, `[get_weather(city="Paris", days=3)]`, into `[{name, arguments}]` — the strict grammar of
 * transformers' chat_response_parsing guide (Python literals: strings, numbers, lists, dicts, True/False/None).
 */
function pythonCallList(body: string): Json {
  let pos = 0;
  const fail = (message: string): never => {
    throw new Error(`python-call-list parser: ${message} at position ${pos}. Content: ${JSON.stringify(body)}`);
  };
  const skip = (): void => { while (pos < body.length && ' \t\n\r'.includes(body[pos])) pos++; };
  const at = (c: string): boolean => { skip(); return body.startsWith(c, pos); };
  const expect = (c: string): void => { if (!at(c)) fail(`expected '${c}'`); pos++; };
  const sticky = (re: RegExp): RegExpExecArray | null => { re.lastIndex = pos; return re.exec(body); };
  function items<T>(close: string, item: () => T): T[] {
    const out: T[] = [];
    if (at(close)) { pos++; return out; }
    for (;;) {
      out.push(item());
      if (at(close)) { pos++; return out; }
      expect(',');
    }
  }
  const unique = (pairs: Array<[string, Json]>): Record<string, Json> => {
    const out: Record<string, Json> = {};
    for (const [k, v] of pairs) {
      if (Object.prototype.hasOwnProperty.call(out, k)) fail(`repeated name '${k}'`);
      out[k] = v;
    }
    return out;
  };
  const string = (): string => {
    const m = sticky(/'((?:[^'\\\n\r]|\\.)*)'|"((?:[^"\\\n\r]|\\.)*)"/sy);
    if (!m) return fail('invalid string');
    const raw = m[1] ?? m[2];
    if (/[\ud800-\udfff]/.test(raw.replace(/[\ud800-\udbff][\udc00-\udfff]/g, ''))) fail('lone surrogate in the string starting');
    let out = '';
    for (let i = 0; i < raw.length; i++) {
      if (raw[i] !== '\\') { out += raw[i]; continue; }
      const e = raw[i + 1];
      if (e in CALL_ESCAPES) { out += CALL_ESCAPES[e]; i++; continue; }
      const hex = /^u([0-9a-fA-F]{4})/.exec(raw.slice(i + 1));
      if (!hex) return fail(`unsupported escape '\\${e}' in the string starting`);
      let code = parseInt(hex[1], 16);
      i += 5;
      const low = /^\\u([dD][c-fC-F][0-9a-fA-F]{2})/.exec(raw.slice(i + 1));
      if (code >= 0xd800 && code <= 0xdbff && low) { code = 0x10000 + ((code - 0xd800) << 10) + (parseInt(low[1], 16) - 0xdc00); i += 6; }
      if (code >= 0xd800 && code <= 0xdfff) fail('lone surrogate escape in the string starting');
      out += String.fromCodePoint(code);
    }
    pos = m.index + m[0].length;
    return out;
  };
  const NAME = /[A-Za-z_][A-Za-z0-9_]*(?:[-.][A-Za-z0-9_]+)*/y;
  const value = (depth: number): Json => {
    if (at("'") || at('"')) return string();
    if (at('[') || at('{')) {
      if (depth >= MAX_DEPTH) fail(`lists and dicts nested more than ${MAX_DEPTH} levels deep`);
      pos++;
      if (body[pos - 1] === '[') return items(']', () => value(depth + 1));
      return unique(items('}', () => pair(depth + 1)));
    }
    const num = sticky(/-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y);
    if (num) {
      const isInteger = num[1] === undefined && num[2] === undefined;
      if (isInteger && (num[0].length > 17 || Math.abs(Number(num[0])) > Number.MAX_SAFE_INTEGER)) fail('integer outside the range of -(2^53 - 1) to 2^53 - 1');
      if (!isInteger && !Number.isFinite(Number(num[0]))) fail('number too large');
      pos = num.index + num[0].length;
      return Number(num[0]);
    }
    const name = sticky(NAME);
    if (name && name[0] in CALL_CONSTANTS) { pos += name[0].length; return CALL_CONSTANTS[name[0]]; }
    return fail('expected a string, number, list, dict, True, False or None');
  };
  const pair = (depth: number): [string, Json] => {
    if (!(at("'") || at('"'))) fail('dict keys must be strings');
    const key = string();
    expect(':');
    return [key, value(depth)];
  };
  const name = (what: string): string => {
    skip();
    const m = sticky(NAME);
    if (!m) return fail(`expected ${what}`);
    pos += m[0].length;
    return m[0];
  };
  const argument = (): [string, Json] => {
    const key = name('a keyword argument (positional arguments and trailing commas are not supported)');
    if (!at('=')) fail(`expected '=' (positional arguments are not supported)`);
    pos++;
    return [key, value(0)];
  };
  const call = (): Json => {
    const fn = name('a function name');
    expect('(');
    return { name: fn, arguments: unique(items(')', argument)) };
  };
  expect('[');
  const calls = items(']', call);
  skip();
  if (pos !== body.length) fail(`unexpected content after the closing ']'`);
  return calls;
}

const PARSERS: Record<string, (body: string, args: ContentArgs) => Json> = {
  text, int, float, bool, json, 'xml-inline': xmlInline, 'kv-lines': kvLines, 'python-call-list': pythonCallList,
};
export const CONTENT_PARSERS = Object.keys(PARSERS);
/** Parsers whose value is the region's text itself: their chunks stream as they come. */
export const STREAMABLE_PARSERS = new Set(['text', 'int', 'float', 'bool']);

export function parseContent(body: string, name: string, args: ContentArgs): Json {
  const parser = PARSERS[name];
  if (!parser) throw new Error(`unknown content parser ${JSON.stringify(name)}; expected one of ${CONTENT_PARSERS.join(', ')}`);
  return parser(body, args);
}

const PLACEHOLDER = /\{(\w+(?:\.\w+)*)\}/;
const WHOLE_PLACEHOLDER = new RegExp(`^${PLACEHOLDER.source}$`);

/** Walks a transform template: a string that is a whole `{name}` / `{name.key}` placeholder takes that value. */
export function applyTransform(transform: unknown, scope: Record<string, Json>): Json {
  if (Array.isArray(transform)) return transform.map((v) => applyTransform(v, scope));
  if (transform !== null && typeof transform === 'object') {
    return Object.fromEntries(Object.entries(transform).map(([k, v]) => [k, applyTransform(v, scope)]));
  }
  if (typeof transform !== 'string') return transform as Json;
  const whole = WHOLE_PLACEHOLDER.exec(transform);
  if (!whole) return transform;
  const [root, ...keys] = whole[1].split('.');
  if (!(root in scope)) throw new Error(`transform placeholder '{${whole[1]}}' is not defined. Available: ${Object.keys(scope).sort().join(', ')}`);
  let value = scope[root];
  for (const key of keys) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error(`transform placeholder '{${whole[1]}}' cannot index into ${describeType(value)} at '${key}'`);
    if (!(key in value)) throw new Error(`transform placeholder '{${whole[1]}}' is missing key '${key}'. Available: ${Object.keys(value).sort().join(', ')}`);
    value = value[key];
  }
  return value;
}

function describeType(v: Json): string {
  return v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v;
}

/** Refuses a transform string that mixes a placeholder with other text (there is no interpolation). */
export function validateTransform(scope: string, transform: unknown): void {
  if (Array.isArray(transform)) transform.forEach((v) => validateTransform(scope, v));
  else if (transform !== null && typeof transform === 'object') Object.values(transform).forEach((v) => validateTransform(scope, v));
  else if (typeof transform === 'string' && PLACEHOLDER.test(transform) && !WHOLE_PLACEHOLDER.test(transform)) {
    throw new Error(`${scope}: transform string ${JSON.stringify(transform)} mixes a {placeholder} with literal text; use a whole-string placeholder such as "{content}" or a plain literal`);
  }
}

/** A region's value: its parsed content, through the transform (per element with transform_each). */
export function processField(body: string, field: { name: string; content: string; contentArgs: ContentArgs; transform?: unknown; transformEach: boolean }, captures: Record<string, string>): Json {
  const value = parseContent(body, field.content, field.contentArgs);
  if (field.transform === undefined || field.transform === null) return value;
  if (!field.transformEach) return applyTransform(field.transform, { ...captures, content: value });
  if (!Array.isArray(value)) throw new Error(`Field '${field.name}': transform_each needs the parsed content to be a list, got ${describeType(value)}`);
  return value.map((item) => {
    if (item === null || typeof item !== 'object' || Array.isArray(item)) throw new Error(`Field '${field.name}': transform_each needs each element to be an object, got ${describeType(item)}`);
    return applyTransform(field.transform, { ...captures, ...item });
  });
}
