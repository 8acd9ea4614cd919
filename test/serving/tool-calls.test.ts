import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { spawn, spawnSync } from 'child_process';
import { expect } from 'chai';
import { setBackend } from '../../src/backends';
import { NemotronTokenizer } from '../../src/tokenizer';
import { generate } from '../../src/generation/generate';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { createOpenAIServer, serverAddress } from '../../src/serving/openai';
import { type ResponseTemplateSpec, ResponseParser, parseResponse } from '../../src/response-parsing/index';
import { fixtureDir, tmpDir } from '../helpers';
import { copyCheckpoint, writeTinyTokenizer } from '../tiny-tokenizer';

const ROOT = path.resolve(__dirname, '../../..');
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const PYTHON = process.env.NEMOTRON_REF_PYTHON ?? path.join(ROOT, '.venv-ref/bin/python');
// Renders tool calls and tool results too (only characters of the tiny vocabulary).
const CHAT_TEMPLATE = '{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}' +
  '{% for c in m.tool_calls or [] %}{{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}' +
  '{% if m.tool_call_id %}-{{ m.tool_call_id }}{% endif %}; {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}';
const MODEL_ID = 'tiny-nemotron';
const QUESTION = [{ role: 'user', content: 'weather?' }];

/**
 * The tiny fixture model's greedy reply to QUESTION is "0rsgf)4Hf)4Hxpg5ersgffJ4" (random weights). This template reads
 * it as a model that thinks between "0r" and "gf" and calls tools as ")<digit>…H" would: reasoning, two tool calls
 * named by the digit (a named group of the open pattern) and content, so that every part of the server's parsing runs.
 */
const TEMPLATE: ResponseTemplateSpec = {
  defaults: { role: 'assistant' },
  start_anchor: 'assistant:',
  fields: {
    reasoning_content: { open: '0r', close: 'gf' },
    tool_calls: {
      open_pattern: '\\)(?P<name>\\d)', close: 'H', repeats: true, content: 'kv-lines',
      transform: { type: 'function', function: { name: '{name}', arguments: '{content}' } },
    },
    content: { close: '</s>' },
  },
};

type Json = Record<string, any>;

describe('tool calls and reasoning in the OpenAI server: a response_template reads the reply, as transformers serve does', function () {
  this.timeout(120_000);
  let dir: string;
  let lm: NemotronForCausalLM;
  let tokenizer: NemotronTokenizer;
  let server: http.Server;
  let base: string;
  const logged: string[] = [];

  async function post(route: string, body: unknown): Promise<{ status: number; json: Json }> {
    const r = await fetch(base + route, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, json: await r.json() as Json };
  }

  async function stream(route: string, body: Json): Promise<Json[]> {
    const r = await fetch(base + route, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
    return (await r.text()).split('\n\n').filter(Boolean).map((e) => e.split('\n').find((l) => l.startsWith('data: '))!.slice(6))
      .filter((d) => d !== '[DONE]').map((d) => JSON.parse(d) as Json);
  }

  /** The greedy reply to `messages` as generate() makes it, decoded with its special tokens (what the parser reads). */
  async function rawReply(messages: Json[], maxNewTokens: number): Promise<{ prompt: number[]; text: string }> {
    const prompt = tokenizer.applyChatTemplate(messages as never, { addGenerationPrompt: true });
    const out = await generate(lm, [prompt], { maxNewTokens, doSample: false });
    return { prompt, text: tokenizer.decode(out.sequences[0].slice(prompt.length)) };
  }

  before(async () => {
    dir = tmpDir('tool-calls');
    copyCheckpoint(fixtureDir('tiny-gqa', 'causal-lm'), path.join(dir, 'tiny'));
    writeTinyTokenizer(path.join(dir, 'tiny'));
    const configFile = path.join(dir, 'tiny', 'tokenizer_config.json');
    // The template lives where transformers 5 keeps it: tokenizer_config.json's response_template.
    fs.writeFileSync(configFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), chat_template: CHAT_TEMPLATE, response_template: TEMPLATE }));
    await setBackend('cpu');
    tokenizer = await NemotronTokenizer.fromPretrained(path.join(dir, 'tiny'));
    lm = await NemotronForCausalLM.fromPretrained(path.join(dir, 'tiny'));
    server = createOpenAIServer(lm, tokenizer, { modelId: MODEL_ID, maxRows: 4, log: (line) => logged.push(line) });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = serverAddress(server);
  });

  after(async () => {
    if (server) await new Promise((resolve) => server.close(resolve));
    lm?.dispose();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the tokenizer reads response_template from tokenizer_config.json, parses replies with it, and saves it back', async () => {
    expect(tokenizer.responseTemplate).to.deep.equal(TEMPLATE);
    const { prompt, text } = await rawReply(QUESTION, 24);
    expect(text).to.equal('0rsgf)4Hf)4Hxpg5ersgffJ4');
    const message = tokenizer.parseResponse(text, { prefix: prompt });
    expect(message).to.deep.equal(parseResponse(text, TEMPLATE, { prefix: tokenizer.decode(prompt) }));
    expect(message).to.deep.equal({
      role: 'assistant', reasoning_content: 's', content: 'xpg5ersgffJ4',
      tool_calls: [{ type: 'function', function: { name: '4', arguments: {} } }, { type: 'function', function: { name: '4', arguments: {} } }],
    });
    const saved = tmpDir('tool-calls-saved');
    tokenizer.savePretrained(saved);
    expect((await NemotronTokenizer.fromPretrained(saved)).responseTemplate).to.deep.equal(TEMPLATE);
    fs.rmSync(saved, { recursive: true, force: true });
  });

  it('chat completions: content, reasoning_content and tool_calls (arguments as JSON text), finish_reason tool_calls; streamed the same', async () => {
    const { prompt, text } = await rawReply(QUESTION, 24);
    const message = parseResponse(text, TEMPLATE, { prefix: tokenizer.decode(prompt) });
    const { status, json } = await post('/v1/chat/completions', { model: MODEL_ID, messages: QUESTION, max_tokens: 24, temperature: 0 });
    expect(status, JSON.stringify(json)).to.equal(200);
    const choice = json.choices[0];
    expect(choice.finish_reason).to.equal('tool_calls');
    expect(choice.message).to.deep.equal({
      role: 'assistant', content: message.content, reasoning_content: message.reasoning_content,
      tool_calls: (message.tool_calls as Json[]).map((c, k) => ({ id: `${json.id}_tool_call_${k}`, type: 'function', function: { name: c.function.name, arguments: '{}' } })),
    });

    const chunks = await stream('/v1/chat/completions', { messages: QUESTION, max_tokens: 24, temperature: 0 });
    const deltas = chunks.map((c) => c.choices[0]?.delta ?? {});
    // The streamed pieces are the regions' text as the parser streams it (unstripped), a tool call once it closes.
    const parser = new ResponseParser(TEMPLATE, { prefix: tokenizer.decode(prompt) });
    const events = [...parser.initialEvents, ...parser.feed(text), ...parser.finalize().events];
    const chunkText = (field: string) => events.filter((e) => e.type === 'region_chunk' && e.field === field).map((e) => (e as { text: string }).text).join('');
    expect(deltas.map((d) => d.content ?? '').join('')).to.equal(chunkText('content'));
    expect(deltas.map((d) => d.reasoning_content ?? '').join('')).to.equal(chunkText('reasoning_content'));
    const calls = deltas.filter((d) => d.tool_calls).map((d) => d.tool_calls[0]);
    expect(calls.map((c) => [c.index, c.type, c.function.name, c.function.arguments])).to.deep.equal([[0, 'function', '4', '{}'], [1, 'function', '4', '{}']]);
    expect(calls[0].id).to.match(/^chatcmpl-.*_tool_call_0$/);
    expect(chunks[chunks.length - 1].choices[0].finish_reason).to.equal('tool_calls');
  });

  it('a reply cut inside a region: the text so far, finish_reason length; a reply that does not read (bad JSON in a call) goes out as content', async () => {
    // 7 tokens end inside the first tool call (")4" opened, "H" not yet written): the call is read as far as it goes.
    const { prompt, text } = await rawReply(QUESTION, 7);
    const { json } = await post('/v1/chat/completions', { messages: QUESTION, max_tokens: 7, temperature: 0 });
    expect(json.choices[0].finish_reason).to.equal('tool_calls');
    const message = parseResponse(text, TEMPLATE, { prefix: tokenizer.decode(prompt) });
    expect(json.choices[0].message.tool_calls).to.have.length((message.tool_calls as Json[]).length);
    const five = await post('/v1/chat/completions', { messages: QUESTION, max_tokens: 5, temperature: 0 });
    expect(five.json.choices[0].finish_reason).to.equal('length');
    expect(five.json.choices[0].message).to.deep.equal({ role: 'assistant', content: '', reasoning_content: 's' });

    const strict = createOpenAIServer(lm, tokenizer, {
      modelId: MODEL_ID, maxRows: 2, log: (line) => logged.push(line),
      // "0rsgf": the call's text, "s", is no JSON.
      responseTemplate: { start_anchor: 'assistant:', fields: { tool_calls: { open: '0r', close: 'gf', content: 'json' }, content: {} } },
    });
    await new Promise<void>((resolve) => strict.listen(0, '127.0.0.1', resolve));
    try {
      const r = await fetch(`${serverAddress(strict)}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: QUESTION, max_tokens: 24, temperature: 0 }) });
      const reply = await r.json() as Json;
      expect(reply.choices[0].message).to.deep.equal({ role: 'assistant', content: (await rawReply(QUESTION, 24)).text });
      expect(logged.some((l) => /response_template: json parser/.test(l))).to.equal(true);
    } finally {
      await new Promise((resolve) => strict.close(resolve));
    }
  });

  it('a conversation with tool calls and results: arguments (JSON text) reach the chat template as objects; bad arguments are a 400', async () => {
    const messages = [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'ignored', tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{"city": "P"}' } }] },
      { role: 'tool', tool_call_id: 'c', content: 's' },
    ];
    const rendered = tokenizer.renderChatTemplate([messages[0], { role: 'assistant', content: '', tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: { city: 'P' } } }] }, messages[2]] as never, { addGenerationPrompt: true });
    expect(rendered).to.equal('<s>user: hi; assistant: f(P); tool: s-c; assistant:');
    const tokens = await post('/tokenize', { messages });
    expect(tokens.json.tokens).to.deep.equal(tokenizer.encode(rendered, { addSpecialTokens: false }));
    const { status, json } = await post('/v1/chat/completions', { messages, max_tokens: 4, temperature: 0 });
    expect(status, JSON.stringify(json)).to.equal(200);
    expect(json.usage.prompt_tokens).to.equal(tokens.json.count);
    const bad = await post('/v1/chat/completions', { messages: [messages[0], { ...messages[1], tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{city: P' } }] }] });
    expect(bad.status).to.equal(400);
    expect(bad.json.error.param).to.equal('messages[1].tool_calls[0].function.arguments');
  });

  it('the Responses API: reasoning, message and function_call items; function_call / function_call_output input items; streamed as typed events', async () => {
    const { prompt, text } = await rawReply(QUESTION, 24);
    const message = parseResponse(text, TEMPLATE, { prefix: tokenizer.decode(prompt) });
    const { status, json } = await post('/v1/responses', { input: 'weather?', max_output_tokens: 24, temperature: 0, tools: [{ type: 'function', name: 'get', parameters: {} }] });
    expect(status, JSON.stringify(json)).to.equal(200);
    expect(json.output.map((item: Json) => item.type)).to.deep.equal(['reasoning', 'message', 'function_call', 'function_call']);
    expect(json.output[0].content).to.deep.equal([{ type: 'reasoning_text', text: message.reasoning_content }]);
    expect(json.output[1].content[0].text).to.equal(message.content);
    expect(json.output[2]).to.include({ type: 'function_call', name: '4', arguments: '{}', status: 'completed', call_id: `${json.id}_tool_call_0` });

    const events = await stream('/v1/responses', { input: 'weather?', max_output_tokens: 24, temperature: 0 });
    const types = events.map((e) => e.type as string);
    // Streamed, the items come in the order the reply writes them: content between the calls is a message of its own.
    expect(types.filter((t) => t === 'response.output_item.added')).to.have.length(5);
    expect(types.indexOf('response.reasoning_text.done')).to.be.lessThan(types.indexOf('response.function_call_arguments.done'));
    const done = events[events.length - 1];
    // The reply ran to max_output_tokens: the response is incomplete, as OpenAI reports it.
    expect(done.type).to.equal('response.incomplete');
    expect(done.response.output.map((item: Json) => item.type)).to.deep.equal(['reasoning', 'function_call', 'message', 'function_call', 'message']);
    expect(new Set(done.response.output.map((item: Json) => item.id)).size).to.equal(5);
    expect(events.filter((e) => e.type === 'response.reasoning_text.delta').map((e) => e.delta).join('')).to.equal('s');

    // A previous turn's items as input: the call joins the assistant message, its output is a tool message.
    const input = [
      { role: 'user', content: 'hi' },
      { type: 'function_call', call_id: 'c', name: 'f', arguments: '{"city": "P"}' },
      { type: 'function_call_output', call_id: 'c', output: 's' },
    ];
    const followUp = await post('/v1/responses', { input, max_output_tokens: 2, temperature: 0 });
    expect(followUp.status, JSON.stringify(followUp.json)).to.equal(200);
    const rendered = '<s>user: hi; assistant: f(P); tool: s-c; assistant:';
    expect(followUp.json.usage.input_tokens).to.equal(tokenizer.encode(rendered, { addSpecialTokens: false }).length);
  });

  it('serve --response-template: a JSON file, or none (the reply as plain text); a template it cannot read stops it at start', async () => {
    const serve = async (template: string): Promise<{ address?: string; code?: number | null; stderr: string; kill: () => Promise<number | null> }> => {
      const child = spawn(process.execPath, [CLI, 'serve', '--model', path.join(dir, 'tiny'), '--port', '0', '--backend', 'cpu', '--response-template', template]);
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      const kill = () => new Promise<number | null>((resolve) => {
        if (child.exitCode !== null) resolve(child.exitCode);
        child.on('exit', resolve);
        child.kill('SIGTERM');
      });
      return new Promise((resolve) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = out.match(/on (http:\/\/[\d.]+:\d+)/);
          if (m) resolve({ address: m[1], stderr, kill });
        });
        child.on('exit', (code) => resolve({ code, stderr, kill }));
      });
    };
    const ask = async (address: string) => ((await (await fetch(`${address}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: QUESTION, max_tokens: 24, temperature: 0 }) })).json()) as Json).choices[0];
    const plain = await serve('none');
    try {
      expect(plain.address, plain.stderr).to.be.a('string');
      expect(await ask(plain.address!)).to.deep.include({ message: { role: 'assistant', content: '0rsgf)4Hf)4Hxpg5ersgffJ4' }, finish_reason: 'length' });
    } finally {
      expect(await plain.kill()).to.equal(0);
    }
    const file = path.join(dir, 'template.json');
    fs.writeFileSync(file, JSON.stringify({ start_anchor: 'assistant:', fields: { reasoning_content: { open: '0r', close: 'gf' }, content: {} } }));
    const reading = await serve(file);
    try {
      expect(await ask(reading.address!)).to.deep.include({ message: { role: 'assistant', content: ')4Hf)4Hxpg5ersgffJ4', reasoning_content: 's' } });
    } finally {
      await reading.kill();
    }
    fs.writeFileSync(file, JSON.stringify({ start_anchor: 'assistant:', fields: { content: { close_pattern: '(?>x)' } } }));
    const refused = await serve(file);
    expect(refused.code).to.not.equal(0);
    expect(refused.stderr).to.match(/Field 'content': invalid close_pattern regex: .*atomic groups are not supported/);
    const missing = await serve(path.join(dir, 'nothing.json'));
    expect(missing.stderr).to.match(/--response-template .*nothing\.json: cannot read it \(ENOENT\)/);
  });

  it('the CLI chat shows a reply read with the response_template: reasoning after [thinking], each tool call on a line', () => {
    const r = spawnSync(process.execPath, [CLI, 'chat', '--model', path.join(dir, 'tiny'), '--greedy', '-n', '24', '--backend', 'cpu'], { input: 'weather?\n', encoding: 'utf8' });
    expect(r.status, r.stderr).to.equal(0);
    // The greedy reply "0rsgf)4Hf)4Hxpg5ersgffJ4": thinking "s", a call, content "f", a call, content.
    expect(r.stdout).to.equal('[thinking] s\n[tool call] 4({})\nf\n[tool call] 4({})\nxpg5ersgffJ4\n');
  });

  it('transformers parses the same reply into the same message; the openai Python client reads the tool calls (skipped without the reference venv)', async function () {
    if (!fs.existsSync(PYTHON) || spawnSync(PYTHON, ['-c', 'import openai, transformers.utils.chat_parsing'], { encoding: 'utf8' }).status !== 0) {
      console.log(`    (skipped: no openai / transformers 5 in ${PYTHON}; run scripts/reference-venv.sh)`);
      this.skip();
    }
    const { prompt, text } = await rawReply(QUESTION, 24);
    const script = `
import json, sys, openai
from transformers.utils.chat_parsing import parse_response
template, prefix, text = json.loads(sys.argv[2])
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
reply = client.chat.completions.create(model="${MODEL_ID}", messages=${JSON.stringify(QUESTION)}, max_tokens=24, temperature=0)
calls = {}
for chunk in client.chat.completions.create(model="${MODEL_ID}", messages=${JSON.stringify(QUESTION)}, max_tokens=24, temperature=0, stream=True):
    for call in chunk.choices[0].delta.tool_calls or []:
        calls[call.index] = [call.function.name, call.function.arguments]
m = reply.choices[0].message
print(json.dumps({"transformers": parse_response(text, template, prefix=prefix),
                  "client": [m.content, [[c.function.name, c.function.arguments] for c in m.tool_calls], reply.choices[0].finish_reason],
                  "streamed": [calls[k] for k in sorted(calls)]}))
`;
    const run = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const child = spawn(PYTHON, ['-c', script, base, JSON.stringify([TEMPLATE, tokenizer.decode(prompt), text])]);
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('exit', (code) => resolve({ code, out, err }));
    });
    expect(run.code, run.err).to.equal(0);
    const result = JSON.parse(run.out) as Json;
    const ours = tokenizer.parseResponse(text, { prefix: prompt });
    expect(result.transformers).to.deep.equal(ours);
    expect(result.client).to.deep.equal([ours.content, [['4', '{}'], ['4', '{}']], 'tool_calls']);
    expect(result.streamed).to.deep.equal([['4', '{}'], ['4', '{}']]);
  });
});
