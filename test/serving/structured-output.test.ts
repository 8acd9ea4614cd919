import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { spawn, spawnSync } from 'child_process';
import { expect } from 'chai';
import { setBackend } from '../../src/backends';
import { NemotronTokenizer } from '../../src/tokenizer';
import { type GenerateOptions, generate } from '../../src/generation/generate';
import { GrammarCompiler, type GrammarSpec } from '../../src/generation/grammar';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { createOpenAIServer, serverAddress } from '../../src/serving/openai';
import { fixtureDir, tmpDir } from '../helpers';
import { copyCheckpoint } from '../tiny-tokenizer';

const ROOT = path.resolve(__dirname, '../../..');
const PYTHON = process.env.NEMOTRON_REF_PYTHON ?? path.join(ROOT, '.venv-ref/bin/python');
// The tiny model with a tokenizer of its 96 ids that spells JSON (test/fixtures/structured-output, from
// scripts/reference/structured_output_fixtures.py), and a chat template of those characters.
const TOKENIZER = path.resolve(__dirname, '../../../test/fixtures/structured-output/tokenizer');
const CHAT_TEMPLATE = '{% for m in messages %}{{ m.content }}{% endfor %}:';
const PERSON = { type: 'object', properties: { name: { type: 'string' }, age: { type: 'integer' } }, required: ['name', 'age'], additionalProperties: false };
const FLAGS = { type: 'array', items: { type: 'boolean' }, maxItems: 3 };

type Json = Record<string, any>;

describe('structured outputs in the OpenAI server: response_format, vLLM\'s structured_outputs and guided_*', function () {
  this.timeout(120_000);
  let dir: string;
  let lm: NemotronForCausalLM;
  let tokenizer: NemotronTokenizer;
  let compiler: GrammarCompiler;
  let server: http.Server;
  let base: string;

  async function post(route: string, body: unknown): Promise<{ status: number; json: Json }> {
    const r = await fetch(base + route, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, json: await r.json() as Json };
  }

  /** What generate() writes after `ids` under `grammar` (greedy), as text. */
  async function constrained(ids: number[], grammar: GrammarSpec, options: GenerateOptions = {}, whole = false): Promise<string> {
    const compiled = await compiler.compile(grammar);
    const out = await generate(lm, [ids], { maxNewTokens: 24, doSample: false, eosTokenId: 3, grammar: compiled, ...options });
    compiled.dispose();
    return tokenizer.decode(out.sequences[0].slice(whole ? 0 : ids.length), { skipSpecialTokens: true });
  }

  before(async () => {
    dir = tmpDir('structured');
    copyCheckpoint(fixtureDir('tiny-gqa', 'causal-lm'), path.join(dir, 'tiny'));
    for (const f of fs.readdirSync(TOKENIZER)) fs.copyFileSync(path.join(TOKENIZER, f), path.join(dir, 'tiny', f));
    const configFile = path.join(dir, 'tiny', 'tokenizer_config.json');
    fs.writeFileSync(configFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), chat_template: CHAT_TEMPLATE }));
    await setBackend('cpu');
    tokenizer = await NemotronTokenizer.fromPretrained(path.join(dir, 'tiny'));
    lm = await NemotronForCausalLM.fromPretrained(path.join(dir, 'tiny'));
    compiler = await GrammarCompiler.create(tokenizer, { vocabSize: 96, stopTokenIds: [3] });
    server = createOpenAIServer(lm, tokenizer, { modelId: 'tiny', maxRows: 4 });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = serverAddress(server);
  });

  after(async () => {
    if (server) await new Promise((resolve) => server.close(resolve));
    lm?.dispose();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('completions: response_format json_object and json_schema, structured_outputs and guided_* write what generate() writes under the grammar', async () => {
    const ids = tokenizer.encode('the name');
    const cases: Array<[Json, GrammarSpec]> = [
      [{ response_format: { type: 'json_object' } }, { type: 'json' }],
      [{ response_format: { type: 'json_schema', json_schema: { name: 'person', schema: PERSON, strict: true } } }, { type: 'json_schema', schema: PERSON }],
      [{ structured_outputs: { json: FLAGS } }, { type: 'json_schema', schema: FLAGS }],
      [{ guided_json: JSON.stringify(FLAGS) }, { type: 'json_schema', schema: FLAGS }],
      [{ structured_outputs: { choice: ['yes', 'no', 'maybe'] } }, { type: 'choice', choices: ['yes', 'no', 'maybe'] }],
      [{ guided_grammar: 'root ::= "ok" | "no"' }, { type: 'grammar', grammar: 'root ::= "ok" | "no"' }],
      [{ structured_outputs: { regex: '\\d{3}-\\d{4}' } }, { type: 'regex', regex: '\\d{3}-\\d{4}' }],
      [{ guided_regex: '(yes|no) [a-z]+' }, { type: 'regex', regex: '(yes|no) [a-z]+' }],
    ];
    const free = await post('/v1/completions', { prompt: 'the name', max_tokens: 24, temperature: 0 });
    for (const [request, grammar] of cases) {
      const expected = await constrained(ids, grammar);
      const { status, json } = await post('/v1/completions', { prompt: 'the name', max_tokens: 24, temperature: 0, ...request });
      expect(status, JSON.stringify(json)).to.equal(200);
      expect(json.choices[0].text, JSON.stringify(request)).to.equal(expected);
      expect(json.choices[0].text).to.not.equal(free.json.choices[0].text);
    }
    // Finished texts parse: the flags array, the choice.
    const flags = await post('/v1/completions', { prompt: 'the name', max_tokens: 24, temperature: 0, structured_outputs: { json: FLAGS } });
    expect(flags.json.choices[0].finish_reason).to.equal('stop');
    expect(JSON.parse(flags.json.choices[0].text)).to.satisfy((v: unknown) => Array.isArray(v) && v.every((b) => typeof b === 'boolean'));
  });

  it('chat completions and the Responses API (text.format) too, streamed the same; sampled rows each follow the grammar', async () => {
    const messages = [{ role: 'user', content: 'flags' }];
    const expected = await constrained(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { type: 'json_schema', schema: FLAGS });
    const format = { type: 'json_schema', json_schema: { name: 'flags', schema: FLAGS } };
    const chat = await post('/v1/chat/completions', { messages, max_tokens: 24, temperature: 0, response_format: format });
    expect(chat.json.choices[0].message.content).to.equal(expected);
    const r = await fetch(`${base}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages, max_tokens: 24, temperature: 0, response_format: format, stream: true }) });
    const chunks = (await r.text()).split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)) as Json);
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).to.equal(expected);
    const response = await post('/v1/responses', { input: 'flags', max_output_tokens: 24, temperature: 0, text: { format: { type: 'json_schema', name: 'flags', schema: FLAGS } } });
    expect(response.status, JSON.stringify(response.json)).to.equal(200);
    expect(response.json.output[0].content[0].text).to.equal(expected);
    expect(response.json.text.format.type).to.equal('json_schema');
    const sampled = await post('/v1/chat/completions', { messages, max_tokens: 40, temperature: 1.3, seed: 5, n: 4, response_format: { type: 'json_schema', json_schema: { name: 'f', schema: { ...FLAGS, maxItems: 2 } } } });
    for (const choice of sampled.json.choices) {
      if (choice.finish_reason !== 'stop') continue;
      const value = JSON.parse(choice.message.content) as unknown;
      expect(Array.isArray(value) && value.length <= 2 && value.every((b) => typeof b === 'boolean'), choice.message.content).to.equal(true);
    }
    expect(sampled.json.choices.some((c: Json) => c.finish_reason === 'stop')).to.equal(true);
  });

  it('tool_choice "required" or a named function: the reply is JSON under the tools\' schemas, answered as tool calls (streamed, and in the Responses API)', async () => {
    const tools = [
      { type: 'function', function: { name: 'flag', parameters: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'], additionalProperties: false } } },
      { type: 'function', function: { name: 'noop' } },
    ];
    const messages = [{ role: 'user', content: 'ok' }];
    const prompt = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
    const namedText = await constrained(prompt, { type: 'json_schema', schema: tools[0].function.parameters! }, { maxNewTokens: 40 });
    const named = await post('/v1/chat/completions', { messages, tools, tool_choice: { type: 'function', function: { name: 'flag' } }, max_tokens: 40, temperature: 0 });
    expect(named.status, JSON.stringify(named.json)).to.equal(200);
    expect(named.json.choices[0].finish_reason).to.equal('tool_calls');
    expect(named.json.choices[0].message).to.deep.equal({
      role: 'assistant', content: null,
      tool_calls: [{ id: `${named.json.id}_tool_call_0`, type: 'function', function: { name: 'flag', arguments: JSON.stringify(JSON.parse(namedText)) } }],
    });
    const requiredSchema = {
      type: 'array', minItems: 1, items: { anyOf: [
        { type: 'object', properties: { name: { type: 'string', enum: ['flag'] }, parameters: tools[0].function.parameters }, required: ['name', 'parameters'] },
        { type: 'object', properties: { name: { type: 'string', enum: ['noop'] }, parameters: { type: 'object', properties: {} } }, required: ['name', 'parameters'] },
      ] },
    };
    const requiredText = await constrained(prompt, { type: 'json_schema', schema: requiredSchema }, { maxNewTokens: 48 });
    const required = await post('/v1/chat/completions', { messages, tools, tool_choice: 'required', max_tokens: 48, temperature: 0 });
    const choice = required.json.choices[0];
    if (choice.finish_reason === 'length') {
      // The random model ran out of tokens inside the array: the text so far, as content.
      expect(choice.message.content).to.equal(requiredText);
    } else {
      const calls = JSON.parse(requiredText) as Array<{ name: string; parameters: unknown }>;
      expect(choice.message.tool_calls.map((c: Json) => [c.function.name, c.function.arguments])).to.deep.equal(calls.map((c) => [c.name, JSON.stringify(c.parameters)]));
    }
    // Sampled rows that close the array come back as tool calls, each a tool with arguments of its schema.
    const sampled = await post('/v1/chat/completions', { messages, tools, tool_choice: 'required', max_tokens: 60, temperature: 1, seed: 11, n: 4 });
    expect(sampled.status, JSON.stringify(sampled.json)).to.equal(200);
    const closed = sampled.json.choices.filter((c: Json) => c.finish_reason === 'tool_calls');
    expect(closed.length, JSON.stringify(sampled.json.choices.map((c: Json) => c.message.content))).to.be.greaterThan(0);
    for (const c of closed) {
      for (const call of c.message.tool_calls) {
        const args = JSON.parse(call.function.arguments) as Json;
        expect(call.function.name === 'noop' || (call.function.name === 'flag' && typeof args.ok === 'boolean'), JSON.stringify(call)).to.equal(true);
      }
    }
    const r = await fetch(`${base}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages, tools, tool_choice: { type: 'function', function: { name: 'flag' } }, max_tokens: 40, temperature: 0, stream: true }) });
    const chunks = (await r.text()).split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)) as Json);
    const streamed = chunks.flatMap((c) => c.choices[0]?.delta?.tool_calls ?? []);
    expect(streamed.map((c: Json) => [c.function.name, c.function.arguments])).to.deep.equal([['flag', JSON.stringify(JSON.parse(namedText))]]);
    expect(chunks[chunks.length - 1].choices[0].finish_reason).to.equal('tool_calls');
    const response = await post('/v1/responses', { input: 'ok', tools: [{ type: 'function', name: 'flag', parameters: tools[0].function.parameters }], tool_choice: { type: 'function', function: { name: 'flag' } }, max_output_tokens: 40, temperature: 0 });
    expect(response.status, JSON.stringify(response.json)).to.equal(200);
    expect(response.json.output.find((item: Json) => item.type === 'function_call')).to.include({ name: 'flag', arguments: JSON.stringify(JSON.parse(namedText)) });
    // Refused: a function that is not among the tools, required without tools, a forced call beside response_format.
    const missing = await post('/v1/chat/completions', { messages, tools, tool_choice: { type: 'function', function: { name: 'nope' } } });
    expect([missing.status, missing.json.error.message]).to.deep.equal([400, 'tool_choice names the function "nope", which is not among the tools (flag, noop)']);
    const none = await post('/v1/chat/completions', { messages, tool_choice: 'required' });
    expect(none.json.error.message).to.equal('tool_choice "required" needs tools');
    const both = await post('/v1/chat/completions', { messages, tools, tool_choice: 'required', response_format: { type: 'json_object' } });
    expect(both.json.error.param).to.equal('tool_choice');
  });

  it('generate --json-schema / --choice / --json / --grammar write what generate() writes under the grammar; two at once is an error', async () => {
    const CLI = path.resolve(__dirname, '../../src/cli/main.js');
    const schemaFile = path.join(dir, 'flags.json');
    fs.writeFileSync(schemaFile, JSON.stringify(FLAGS));
    const ids = tokenizer.encode('the name');
    const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'generate', '--model', path.join(dir, 'tiny'), '--prompt', 'the name', '-n', '24', '--greedy', '--backend', 'cpu', '--no-stream', ...args], { encoding: 'utf8' });
    for (const [args, grammar] of [
      [['--json-schema', schemaFile], { type: 'json_schema', schema: FLAGS }],
      [['--choice', 'yes', '--choice', 'no'], { type: 'choice', choices: ['yes', 'no'] }],
      [['--json'], { type: 'json' }],
      [['--regex', '\\d{3}-\\d{2}'], { type: 'regex', regex: '\\d{3}-\\d{2}' }],
    ] as Array<[string[], GrammarSpec]>) {
      const r = run(...args);
      expect(r.status, r.stderr).to.equal(0);
      // The CLI prints the prompt and the text as one decode (and a newline), as its other tests read it.
      expect(r.stdout, args.join(' ')).to.equal(`${await constrained(ids, grammar, {}, true)}\n`);
    }
    const both = run('--json', '--choice', 'a');
    expect(both.stderr).to.match(/--json and --choice: give one structured output/);
    const bad = run('--grammar', path.join(dir, 'missing.ebnf'));
    expect(bad.stderr).to.match(/--grammar .*missing\.ebnf: no such file/);
  });

  it('bad structured outputs are 400s naming the field: a schema xgrammar refuses, two at once, regex, a bad choice list', async () => {
    const cases: Array<[Json, RegExp, string]> = [
      [{ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'strin' } } } }, /Unsupported type "strin"/, 'response_format.json_schema'],
      [{ response_format: { type: 'json_schema' } }, /response_format.json_schema must be/, 'response_format.json_schema'],
      [{ response_format: { type: 'yaml' } }, /response_format type "yaml" is not supported/, 'response_format'],
      [{ response_format: { type: 'json_object' }, guided_choice: ['a'] }, /give one structured output, got response_format and guided_choice/, 'guided_choice'],
      [{ structured_outputs: { regex: 'a(?=b)' } }, /lookaround assertions are not supported/, 'structured_outputs.regex'],
      [{ guided_choice: [] }, /guided_choice must be a non-empty list/, 'guided_choice'],
      [{ guided_grammar: 'root ::= ' }, /EBNF parser error/, 'guided_grammar'],
    ];
    for (const [request, message, param] of cases) {
      const { status, json } = await post('/v1/completions', { prompt: 'x', max_tokens: 4, ...request });
      expect(status, JSON.stringify(request)).to.equal(400);
      expect(json.error.message).to.match(message);
      expect(json.error.param).to.equal(param);
    }
    // The server goes on answering.
    expect((await post('/v1/completions', { prompt: 'x', max_tokens: 2, response_format: { type: 'json_object' } })).status).to.equal(200);
  });

  it('the openai Python client\'s chat.completions.parse reads a pydantic model back (skipped without the reference venv)', async function () {
    if (!fs.existsSync(PYTHON) || spawnSync(PYTHON, ['-c', 'import openai, pydantic'], { encoding: 'utf8' }).status !== 0) {
      console.log(`    (skipped: no openai / pydantic in ${PYTHON}; run scripts/reference-venv.sh)`);
      this.skip();
    }
    const script = `
import json, sys, openai, pydantic
class Flags(pydantic.BaseModel):
    ok: bool
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
reply = client.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "ok"}], response_format=Flags, max_tokens=24, temperature=0)
print(json.dumps({"parsed": reply.choices[0].message.parsed.model_dump(), "content": reply.choices[0].message.content}))
`;
    const run = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const child = spawn(PYTHON, ['-c', script, base]);
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('exit', (code) => resolve({ code, out, err }));
    });
    expect(run.code, run.err).to.equal(0);
    const result = JSON.parse(run.out) as Json;
    expect(JSON.parse(result.content)).to.deep.equal(result.parsed);
    expect(typeof result.parsed.ok).to.equal('boolean');
  });
});
