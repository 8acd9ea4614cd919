import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { type Json, type ResponseEvent, type ResponseTemplateSpec, ResponseParser, compilePythonPattern, parseResponse } from '../../src/index';

const FIXTURE = path.resolve(__dirname, '../../../test/fixtures/response-parsing/expected.json');

interface Case {
  template: string; prefix: string; text: string; tools: Record<string, unknown>[] | null;
  message?: Record<string, Json>; error?: string; events_1?: ResponseEvent[]; events_5?: ResponseEvent[];
}
interface Fixture {
  templates: Record<string, ResponseTemplateSpec>;
  cases: Case[];
  bad_templates: Array<{ template: ResponseTemplateSpec; needle: string; error: string }>;
  partial_search: Array<{ pattern: string; text: string; partial: [number, number, boolean] | null; full: [number, number] | null }>;
}

function streamed(spec: ResponseTemplateSpec, c: Case, size: number): ResponseEvent[] {
  const parser = new ResponseParser(spec, { prefix: c.prefix, tools: c.tools ?? undefined });
  const events = [...parser.initialEvents];
  for (let i = 0; i < c.text.length; i += size) events.push(...parser.feed(c.text.slice(i, i + size)));
  return [...events, ...parser.finalize().events];
}

describe('chat response parsing: response_template as transformers 5 reads it (scripts/reference/response_parsing_fixtures.py)', () => {
  const fixture = JSON.parse(fs.readFileSync(FIXTURE, 'utf8')) as Fixture;

  it('delimiter patterns: where the regex module\'s partial search answers, ours answers (450 pattern × text pairs)', () => {
    expect(fixture.partial_search).to.have.length(450);
    const wrong: string[] = [];
    for (const c of fixture.partial_search) {
      const compiled = compilePythonPattern(c.pattern);
      compiled.full.lastIndex = 0;
      const full = compiled.full.exec(c.text);
      compiled.partial.lastIndex = 0;
      const pending = compiled.partial.exec(c.text);
      const fullSpan = full ? [full.index, full.index + full[0].length] : null;
      const ours = pending && (!full || pending.index < full.index) ? [pending.index, c.text.length, true] : fullSpan ? [...fullSpan, false] : null;
      if (JSON.stringify(fullSpan) !== JSON.stringify(c.full) || JSON.stringify(ours) !== JSON.stringify(c.partial)) {
        wrong.push(`${c.pattern} on ${JSON.stringify(c.text)}: full ${JSON.stringify(fullSpan)} vs ${JSON.stringify(c.full)}, partial ${JSON.stringify(ours)} vs ${JSON.stringify(c.partial)}`);
      }
    }
    expect(wrong).to.deep.equal([]);
  });

  for (const c of fixture.cases) {
    const label = `${c.template}: ${JSON.stringify(c.text).slice(0, 60)}`;
    it(`${label} — the message${c.error ? ' (an error)' : ', and the events streamed a character and five at a time'}`, () => {
      const spec = fixture.templates[c.template];
      const parse = (): Record<string, Json> => parseResponse(c.text, spec, { prefix: c.prefix, tools: c.tools ?? undefined });
      if (c.error) {
        expect(parse).to.throw();
        return;
      }
      expect(parse()).to.deep.equal(c.message);
      expect(streamed(spec, c, 1)).to.deep.equal(c.events_1);
      expect(streamed(spec, c, 5)).to.deep.equal(c.events_5);
    });
  }

  it('examples/response-templates/nemotron-toolcall.json is the template the fixtures checked against transformers', () => {
    const example = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../examples/response-templates/nemotron-toolcall.json'), 'utf8')) as ResponseTemplateSpec;
    expect(example).to.deep.equal(fixture.templates.example_nemotron_toolcall);
    expect(fixture.cases.filter((c) => c.template === 'example_nemotron_toolcall' && c.message?.tool_calls)).to.have.length(2);
  });

  it('malformed templates are refused, naming what is wrong', () => {
    expect(fixture.bad_templates).to.have.length(12);
    for (const bad of fixture.bad_templates) {
      expect(() => parseResponse('', bad.template, { prefix: '' }), JSON.stringify(bad.template)).to.throw(bad.needle);
    }
  });

  it('a parser needs the prompt (prefix), and takes no text after it is finalized', () => {
    const spec = fixture.templates.nemotron;
    expect(() => new ResponseParser(spec, {} as { prefix: string })).to.throw(/prefix/);
    const parser = new ResponseParser(spec, { prefix: '' });
    parser.finalize();
    expect(() => parser.feed('x')).to.throw(/finalized/);
  });
});
