/**
 * A response_template (transformers 5's declarative spec of what a chat model writes, tokenizer_config.json's key):
 * `start_anchor` where the assistant's message starts in the prompt, and `fields`, each a region between an open and a
 * close delimiter (literals or Python regexes) whose text a content parser turns into a value of the message.
 */
import { CONTENT_PARSERS, type ContentArgs, validateTransform } from './content';
import { type CompiledPattern, compilePythonPattern, escapePython } from './pattern';
import type { Json } from './content';

export interface ResponseTemplateSpec {
  version?: number;
  defaults?: Record<string, Json>;
  start_anchor?: string | string[];
  start_anchor_pattern?: string;
  fields: Record<string, Record<string, unknown>>;
}

export interface Delimiter {
  pattern: CompiledPattern;
  /** The literal strings, when the delimiter is given as literals (not a pattern). */
  literals?: string[];
  /** One literal is a strict prefix of another: a match at the end of the text may still grow. */
  canExtend: boolean;
}

export interface TemplateField {
  name: string;
  open?: Delimiter;
  close?: Delimiter;
  content: string;
  contentArgs: ContentArgs;
  repeats: boolean;
  join?: string;
  optional: boolean;
  transform?: unknown;
  transformEach: boolean;
}

export interface ResponseTemplate {
  defaults: Record<string, Json>;
  fields: Map<string, TemplateField>;
  /** The field without an open delimiter: text outside every other region goes there. */
  implicit?: string;
  startAnchor: Delimiter;
}

const TEMPLATE_KEYS = new Set(['version', 'defaults', 'fields', 'start_anchor', 'start_anchor_pattern']);
const FIELD_KEYS = new Set(['open', 'open_pattern', 'close', 'close_pattern', 'content', 'content_args', 'repeats', 'join', 'optional', 'transform', 'transform_each']);

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function delimiter(scope: string, spec: Record<string, unknown>, literalKey: string, patternKey: string): Delimiter | undefined {
  if (literalKey in spec && patternKey in spec) throw new Error(`${scope}: cannot specify both '${literalKey}' and '${patternKey}'`);
  if (literalKey in spec) {
    const raw = spec[literalKey];
    const list = typeof raw === 'string' ? [raw] : raw;
    if (!Array.isArray(list)) throw new Error(`${scope}: '${literalKey}' must be a string or a list of strings, got ${JSON.stringify(raw)}`);
    if (list.length === 0) throw new Error(`${scope}: the '${literalKey}' list must hold at least one literal`);
    if (!list.every((s) => typeof s === 'string')) throw new Error(`${scope}: the '${literalKey}' list must hold only strings, got ${JSON.stringify(raw)}`);
    const literals = [...new Set(list as string[])];
    if (literals.some((s) => s === '')) throw new Error(`${scope}: '${literalKey}' literals cannot be empty strings`);
    // Longest first, so that the alternation prefers the longer of two literals that both match.
    const ordered = [...literals].sort((a, b) => b.length - a.length);
    const canExtend = literals.some((a) => literals.some((b) => a !== b && a.startsWith(b)));
    return { pattern: compilePythonPattern(ordered.map(escapePython).join('|')), literals, canExtend };
  }
  if (patternKey in spec) {
    const raw = spec[patternKey];
    if (typeof raw !== 'string') throw new Error(`${scope}: '${patternKey}' must be a string, got ${JSON.stringify(raw)}`);
    try {
      return { pattern: compilePythonPattern(raw), canExtend: false };
    } catch (e) {
      throw new Error(`${scope}: invalid ${patternKey} regex: ${(e as Error).message}`);
    }
  }
  return undefined;
}

function buildField(name: string, spec: unknown): TemplateField {
  const scope = `Field '${name}'`;
  if (!isObject(spec)) throw new Error(`${scope} must be an object, got ${JSON.stringify(spec)}`);
  const unknown = Object.keys(spec).filter((k) => !FIELD_KEYS.has(k)).sort();
  if (unknown.length > 0) throw new Error(`${scope}: unknown keys ${unknown.join(', ')} (expected some of ${[...FIELD_KEYS].join(', ')})`);
  const content = (spec.content as string | undefined) ?? 'text';
  if (!CONTENT_PARSERS.includes(content)) throw new Error(`${scope}: unknown content parser '${content}'. Available: ${[...CONTENT_PARSERS].sort().join(', ')}`);
  const open = delimiter(scope, spec, 'open', 'open_pattern');
  const close = delimiter(scope, spec, 'close', 'close_pattern');
  const join = spec.join as string | undefined;
  if (join !== undefined && join !== null && typeof join !== 'string') throw new Error(`${scope}: 'join' must be a string, got ${JSON.stringify(join)}`);
  if (typeof join === 'string' && !spec.repeats) throw new Error(`${scope}: 'join' requires 'repeats': true`);
  const transformEach = spec.transform_each ?? false;
  if (typeof transformEach !== 'boolean') throw new Error(`${scope}: transform_each must be true or false, got ${JSON.stringify(transformEach)}`);
  const transform = spec.transform;
  if (transformEach && (transform === undefined || transform === null)) throw new Error(`${scope}: transform_each is set but no transform was given`);
  if (transform !== undefined && transform !== null) validateTransform(scope, transform);
  else {
    // Named groups reach the message only through a transform; refuse ones that would be dropped silently.
    const names = [...(open?.pattern.names ?? []), ...(close?.pattern.names ?? [])];
    if (names.length > 0) {
      throw new Error(`${scope}: open_pattern/close_pattern declares named group(s) ${[...new Set(names)].sort().join(', ')}, but the field has no 'transform'; named captures reach the message only through a transform`);
    }
  }
  return {
    name, open, close, content, contentArgs: (spec.content_args as ContentArgs | undefined) ?? {}, repeats: Boolean(spec.repeats),
    join: join ?? undefined, optional: spec.optional === undefined ? true : Boolean(spec.optional), transform: transform ?? undefined,
    transformEach,
  };
}

/** Validates a response_template and compiles its delimiters; errors name the key at fault. */
export function loadResponseTemplate(spec: ResponseTemplateSpec | ResponseTemplate): ResponseTemplate {
  if (spec instanceof Object && (spec as ResponseTemplate).fields instanceof Map) return spec as ResponseTemplate;
  if (!isObject(spec)) throw new Error(`response_template must be an object, got ${JSON.stringify(spec)}`);
  const raw = spec as unknown as Record<string, unknown>;
  const version = raw.version ?? 1;
  if (version !== 1) throw new Error(`Unsupported response_template version: ${JSON.stringify(version)} (expected 1)`);
  const unknown = Object.keys(raw).filter((k) => !TEMPLATE_KEYS.has(k)).sort();
  if (unknown.length > 0) throw new Error(`Unknown keys in response_template: ${unknown.join(', ')} (expected some of ${[...TEMPLATE_KEYS].join(', ')})`);
  if (raw.defaults !== undefined && !isObject(raw.defaults)) throw new Error(`response_template.defaults must be an object, got ${JSON.stringify(raw.defaults)}`);
  if (!isObject(raw.fields) || Object.keys(raw.fields).length === 0) throw new Error(`response_template.fields must be a non-empty object, got ${JSON.stringify(raw.fields)}`);
  const fields = new Map(Object.entries(raw.fields).map(([name, f]) => [name, buildField(name, f)]));
  const implicit = [...fields.values()].filter((f) => !f.open).map((f) => f.name);
  if (implicit.length > 1) {
    throw new Error(`At most one field may omit 'open'/'open_pattern' (that field takes the text outside the others). Found: ${implicit.join(', ')}`);
  }
  const startAnchor = delimiter('response_template', raw, 'start_anchor', 'start_anchor_pattern');
  if (!startAnchor) throw new Error(`response_template must define 'start_anchor' or 'start_anchor_pattern'.`);
  return { defaults: structuredClone((raw.defaults ?? {}) as Record<string, Json>), fields, implicit: implicit[0], startAnchor };
}

/** The prompt from the end of its last start anchor on (all of it when there is none). */
export function pastLastAnchor(template: ResponseTemplate, prompt: string): string {
  const re = template.startAnchor.pattern.full;
  re.lastIndex = 0;
  let end: number | undefined;
  for (const m of prompt.matchAll(re)) end = m.index + m[0].length;
  return end === undefined ? prompt : prompt.slice(end);
}
