/**
 * Parses what a chat model writes into an assistant message ({content, reasoning_content, tool_calls, ...}) with a
 * response_template, as transformers 5's `tokenizer.parse_response` and its streaming `ResponseParser` do.
 *
 * The parser is always inside one region: an explicit one (opened by its delimiter, left at its close) or the
 * implicit one (the field without an open delimiter; text outside every region is dropped when there is none). A
 * delimiter is committed only once no more text could change it: text that may be the start of a delimiter is held
 * back until the next chunk (or the end) settles it, so the streamed chunks of a region are exactly its text.
 */
import { type Json, STREAMABLE_PARSERS, processField } from './content';
import { type Delimiter, type ResponseTemplate, type ResponseTemplateSpec, type TemplateField, loadResponseTemplate, pastLastAnchor } from './template';

export type ResponseEvent =
  | { type: 'region_open'; field: string }
  | { type: 'region_chunk'; field: string; text: string; dirty: boolean }
  | { type: 'region_close'; field: string; value: Json };

/** A tool as apply_chat_template takes it ({type: 'function', function: {name, parameters}} or the function itself). */
export type ToolSpec = Record<string, unknown>;

interface Found { kind: 'open' | 'close'; field: TemplateField; match: RegExpExecArray }

function schemaTypes(schema: unknown): string[] {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) return [];
  const s = schema as Record<string, unknown>;
  const types: string[] = [];
  if (typeof s.type === 'string') types.push(s.type);
  if (Array.isArray(s.type)) types.push(...s.type.filter((t): t is string => typeof t === 'string'));
  for (const union of ['anyOf', 'oneOf']) {
    if (Array.isArray(s[union])) for (const choice of s[union] as unknown[]) types.push(...schemaTypes(choice));
  }
  if (s.nullable && !types.includes('null')) types.push('null');
  return types;
}

/** A tool-call argument written as text, cast to the first of its schema's types it reads as (else kept as text). */
function coerce(raw: string, types: string[]): Json {
  for (const type of types) {
    const s = raw.trim();
    if (type === 'integer') {
      if (/^[+-]?\d+(?:_\d+)*$/.test(s)) return Number(s.replace(/_/g, ''));
      const n = Number(s);
      if (s !== '' && /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(s) && Number.isInteger(n)) return n;
    } else if (type === 'number') {
      if (s !== '' && /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(s.replace(/(?<=\d)_(?=\d)/g, ''))) {
        const n = Number(s.replace(/_/g, ''));
        if (Number.isFinite(n)) return n;
      }
    } else if (type === 'boolean' && ['true', '1', 'false', '0'].includes(s.toLowerCase())) {
      return ['true', '1'].includes(s.toLowerCase());
    } else if (type === 'null' && (s === 'null' || s === 'None')) {
      return null;
    } else if (type === 'object' || type === 'array') {
      try {
        const decoded = JSON.parse(raw) as Json;
        if (type === 'array' ? Array.isArray(decoded) : decoded !== null && typeof decoded === 'object' && !Array.isArray(decoded)) return decoded;
      } catch { /* not this type */ }
    }
  }
  return raw;
}

export interface ResponseParserOptions {
  /** The prompt before the generation (the chat template's output): it may open a region (a prefilled `<think>`). */
  prefix: string;
  /** Tools, as apply_chat_template takes them: tool-call arguments are cast by their schemas. */
  tools?: ToolSpec[];
}

export class ResponseParser {
  readonly template: ResponseTemplate;
  /** Events of the prompt's own part of the message (a region the template opened), before any model text. */
  readonly initialEvents: ResponseEvent[] = [];
  private readonly toolParams = new Map<string, Record<string, unknown>>();
  private buffer = '';
  private pos = 0;
  private output: Record<string, Json>;
  private current: string | undefined;
  private captures: Record<string, string> = {};
  private body = '';
  private opened = false;
  private finalized = false;

  constructor(template: ResponseTemplateSpec | ResponseTemplate, options: ResponseParserOptions) {
    this.template = loadResponseTemplate(template);
    if (typeof options?.prefix !== 'string') {
      throw new Error('ResponseParser needs `prefix`, the prompt sent before the generation (chat templates often open part of the message, a <think> say); pass "" if the text holds the whole message');
    }
    for (const tool of options.tools ?? []) {
      const fn = (tool.function ?? tool) as Record<string, unknown>;
      if (fn && typeof fn.name === 'string') {
        const params = fn.parameters as Record<string, unknown> | undefined;
        const properties = params && typeof params === 'object' ? params.properties : undefined;
        this.toolParams.set(fn.name, properties && typeof properties === 'object' ? properties as Record<string, unknown> : {});
      }
    }
    this.output = structuredClone(this.template.defaults);
    this.current = this.template.implicit;
    if (options.prefix) {
      this.buffer = pastLastAnchor(this.template, options.prefix);
      if (this.buffer) this.process(this.initialEvents, false);
    }
  }

  /** Takes the next piece of model text; returns the events it settles. */
  feed(text: string): ResponseEvent[] {
    if (this.finalized) throw new Error('ResponseParser already finalized');
    this.buffer += text;
    const events: ResponseEvent[] = [];
    this.process(events, false);
    return events;
  }

  /** Ends the text: settles what was held back, closes the open region; returns the message and the last events. */
  finalize(): { message: Record<string, Json>; events: ResponseEvent[] } {
    if (this.finalized) throw new Error('ResponseParser already finalized');
    const events: ResponseEvent[] = [];
    this.process(events, true);
    const missing = [...this.template.fields.values()].filter((f) => !f.optional && !(f.name in this.output)).map((f) => f.name);
    if (missing.length > 0) throw new Error(`Required response_template fields missing from the parsed output: ${missing.join(', ')}`);
    const isEmpty = (v: Json): boolean => v === null || (typeof v === 'string' && v === '') || (Array.isArray(v) && v.length === 0) ||
      (typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length === 0);
    this.output = Object.fromEntries(Object.entries(this.output).filter(([k, v]) => k in this.template.defaults || !isEmpty(v)));
    this.finalized = true;
    return { message: this.output, events };
  }

  private process(events: ResponseEvent[], eos: boolean): void {
    for (;;) {
      const { best, holdStart } = this.scan(eos);
      if (best) {
        const start = best.match.index;
        if (start > this.pos) this.accumulate(events, this.buffer.slice(this.pos, start));
        this.pos = start + best.match[0].length;
        if (best.kind === 'open') {
          this.closeCurrent(events);
          this.openExplicit(events, best.field, best.match);
        } else {
          const hadContent = this.opened;
          // Named groups of the close join the open's (the close's win).
          for (const [k, v] of Object.entries(best.match.groups ?? {})) if (v !== undefined) this.captures[k] = v;
          this.closeCurrent(events);
          // A zero-width close of an empty region would fire again at once.
          if (!hadContent && best.match[0].length === 0) break;
        }
        continue;
      }
      if (eos) {
        if (this.pos < this.buffer.length) {
          this.accumulate(events, this.buffer.slice(this.pos));
          this.pos = this.buffer.length;
        }
        this.closeCurrent(events);
        break;
      }
      // Everything before the first delimiter that may still be forming is settled.
      if (holdStart > this.pos) {
        this.accumulate(events, this.buffer.slice(this.pos, holdStart));
        this.pos = holdStart;
      }
      break;
    }
  }

  /** The delimiters that matter now: the open region's close, or every open and the implicit region's close. */
  private watchlist(): Array<{ kind: 'open' | 'close'; field: TemplateField; delimiter: Delimiter }> {
    const fields = this.template.fields;
    if (this.current !== undefined && this.current !== this.template.implicit) {
      const field = fields.get(this.current)!;
      return field.close ? [{ kind: 'close', field, delimiter: field.close }] : [];
    }
    const watch: Array<{ kind: 'open' | 'close'; field: TemplateField; delimiter: Delimiter }> = [];
    for (const field of fields.values()) if (field.open) watch.push({ kind: 'open', field, delimiter: field.open });
    const implicit = this.template.implicit === undefined ? undefined : fields.get(this.template.implicit)!;
    if (implicit?.close) watch.push({ kind: 'close', field: implicit, delimiter: implicit.close });
    return watch;
  }

  /**
   * The earliest delimiter that can be committed now (longest on a tie, opens before closes, then by name), and
   * where held-back text starts: the leftmost delimiter that is still partial, or complete but able to grow.
   */
  private scan(eos: boolean): { best?: Found; holdStart: number } {
    let best: Found | undefined;
    let bestKey: [number, number, number, string] | undefined;
    let holdStart = this.buffer.length;
    for (const { kind, field, delimiter } of this.watchlist()) {
      const full = delimiter.pattern.full;
      full.lastIndex = this.pos;
      const match = full.exec(this.buffer);
      if (!eos) {
        const partial = delimiter.pattern.partial;
        partial.lastIndex = this.pos;
        const pending = partial.exec(this.buffer);
        // Text from `pending` on may still become this delimiter, earlier than (or instead of) a complete match.
        if (pending && (!match || pending.index < match.index)) {
          holdStart = Math.min(holdStart, pending.index);
          continue;
        }
        if (match && this.canGrow(delimiter, match)) {
          holdStart = Math.min(holdStart, match.index);
          continue;
        }
      }
      if (!match) continue;
      const key: [number, number, number, string] = [match.index, -match[0].length, kind === 'open' ? 0 : 1, field.name];
      if (!bestKey || compareKeys(key, bestKey) < 0) { bestKey = key; best = { kind, field, match }; }
    }
    // A complete delimiter at or after one still forming waits: the forming one starts no later.
    if (best && best.match.index >= holdStart) best = undefined;
    return { best, holdStart };
  }

  /**
   * Whether a complete match could still change with more text. A literal that ends before the end of the text is
   * final; a regex match is final only if it survives the text going on (with a character that is neither a
   * newline nor the end). At the end of the text: a zero-width match waits, a literal waits only if another of its
   * list extends it, a regex match waits.
   */
  private canGrow(delimiter: Delimiter, match: RegExpExecArray): boolean {
    const end = match.index + match[0].length;
    if (end !== this.buffer.length) {
      if (delimiter.literals) return false;
      const anchored = delimiter.pattern.anchored;
      anchored.lastIndex = match.index;
      const extended = anchored.exec(`${this.buffer}\x00`);
      return !extended || extended[0].length !== match[0].length || !sameGroups(extended.groups, match.groups);
    }
    if (match[0].length === 0) return true;
    return !delimiter.literals || delimiter.canExtend;
  }

  private accumulate(events: ResponseEvent[], text: string): void {
    if (!text || this.current === undefined) return;
    const field = this.template.fields.get(this.current)!;
    if (!this.opened) {
      events.push({ type: 'region_open', field: this.current });
      this.opened = true;
    }
    this.body += text;
    events.push({ type: 'region_chunk', field: this.current, text, dirty: !STREAMABLE_PARSERS.has(field.content) });
  }

  private openExplicit(events: ResponseEvent[], field: TemplateField, match: RegExpExecArray): void {
    this.current = field.name;
    this.captures = Object.fromEntries(Object.entries(match.groups ?? {}).filter((e): e is [string, string] => e[1] !== undefined));
    this.body = '';
    this.opened = true;
    events.push({ type: 'region_open', field: field.name });
  }

  private closeCurrent(events: ResponseEvent[]): void {
    if (this.current === undefined || !this.opened) {
      this.resetToImplicit();
      return;
    }
    const field = this.template.fields.get(this.current)!;
    let value = processField(this.body, field, this.captures);
    if (this.toolParams.size > 0) value = this.coerceToolCalls(value);
    if (field.join !== undefined) {
      if (typeof value !== 'string') throw new Error(`Field '${field.name}': 'join' needs each match to parse to a string, got ${JSON.stringify(value)}`);
      const previous = this.output[field.name];
      this.output[field.name] = previous === undefined || previous === null ? value : `${previous as string}${field.join}${value}`;
    } else if (field.repeats) {
      const list = this.output[field.name];
      if (Array.isArray(list)) list.push(value);
      else this.output[field.name] = [value];
    } else this.output[field.name] = value;
    events.push({ type: 'region_close', field: field.name, value });
    this.resetToImplicit();
  }

  private coerceToolCalls(value: Json): Json {
    if (Array.isArray(value)) return value.map((v) => this.coerceToolCalls(v));
    const fn = value !== null && typeof value === 'object' ? value.function : undefined;
    if (fn === null || typeof fn !== 'object' || Array.isArray(fn) || fn === undefined) return value;
    const { name, arguments: args } = fn;
    if (typeof name !== 'string' || args === null || typeof args !== 'object' || Array.isArray(args)) return value;
    const properties = this.toolParams.get(name);
    if (!properties) return value;
    for (const [key, argument] of Object.entries(args)) {
      const types = key in properties ? schemaTypes(properties[key]) : [];
      if (types.length === 0) continue;
      if (typeof argument === 'string') args[key] = coerce(argument, types);
      // Repeated keys that merge_duplicates gathered.
      else if (Array.isArray(argument) && !types.includes('array')) args[key] = argument.map((a) => (typeof a === 'string' ? coerce(a, types) : a));
    }
    return value;
  }

  private resetToImplicit(): void {
    this.current = this.template.implicit;
    this.captures = {};
    this.body = '';
    this.opened = false;
  }
}

function compareKeys(a: [number, number, number, string], b: [number, number, number, string]): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return (a[i] as number) - (b[i] as number);
  return a[3] < b[3] ? -1 : a[3] > b[3] ? 1 : 0;
}

function sameGroups(a: Record<string, string> | undefined, b: Record<string, string> | undefined): boolean {
  const ka = Object.keys(a ?? {});
  return ka.length === Object.keys(b ?? {}).length && ka.every((k) => a![k] === b![k]);
}

/** The message a whole generation amounts to (transformers' parse_response). */
export function parseResponse(text: string, template: ResponseTemplateSpec | ResponseTemplate, options: ResponseParserOptions): Record<string, Json> {
  const parser = new ResponseParser(template, options);
  parser.feed(text);
  return parser.finalize().message;
}
