import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { spawn, spawnSync } from 'child_process';
import * as tf from '@tensorflow/tfjs';
import { expect } from 'chai';
import { setBackend } from '../../src/backends';
import { NemotronTokenizer } from '../../src/tokenizer';
import { GenerateOptions, generate } from '../../src/generation/generate';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { createOpenAIServer, serverAddress } from '../../src/serving/openai';
import { ContinuousBatcher } from '../../src/serving/batcher';
import { logprobOf, sequenceLogprobs } from '../../src/inference/logprobs';
import { stopStringDecoder } from '../../src/generation/generate';
import { fixtureDir, tmpDir } from '../helpers';
import { copyCheckpoint, writeTinyTokenizer } from '../tiny-tokenizer';

const ROOT = path.resolve(__dirname, '../../..');
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const PYTHON = process.env.NEMOTRON_REF_PYTHON ?? path.join(ROOT, '.venv-ref/bin/python');
// Only characters of the tiny vocabulary (no newline).
const CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}; {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
const MODEL_ID = 'tiny-nemotron';

type Json = Record<string, any>;

interface Reply {
  status: number;
  json: Json;
}

/** Server-sent events of a streamed answer: the JSON of each `data:` line, and whether it ended with [DONE]. */
interface Events {
  status: number;
  chunks: Json[];
  done: boolean;
}

describe('OpenAI-compatible server (serve)', function () {
  this.timeout(120_000);
  let dir: string;
  let lm: NemotronForCausalLM;
  let tokenizer: NemotronTokenizer;
  let server: http.Server;
  let base: string;
  let batcher: ContinuousBatcher;
  const model = () => lm;

  async function post(route: string, body: unknown): Promise<Reply> {
    const r = await fetch(base + route, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
    return { status: r.status, json: await r.json() as Json };
  }

  async function stream(route: string, body: Json): Promise<Events> {
    const r = await fetch(base + route, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
    expect(r.headers.get('content-type')).to.match(/^text\/event-stream/);
    const text = await r.text();
    const events = text.split('\n\n').filter((e) => e.length > 0);
    for (const e of events) expect(e.startsWith('data: '), e).to.equal(true);
    const data = events.map((e) => e.slice('data: '.length));
    const done = data[data.length - 1] === '[DONE]';
    return { status: r.status, chunks: (done ? data.slice(0, -1) : data).map((d) => JSON.parse(d) as Json), done };
  }

  /** The greedy (or given) continuation of `ids` as our generate() makes it: its tokens and their text after the prompt. */
  async function continuation(ids: number[], options: GenerateOptions): Promise<{ tokens: number[]; text: string }> {
    const out = await generate(lm, [ids], options);
    const tokens = out.sequences[0].slice(ids.length);
    const prompt = tokenizer.decode(ids, { skipSpecialTokens: true });
    return { tokens, text: tokenizer.decode([...ids, ...tokens], { skipSpecialTokens: true }).slice(prompt.length) };
  }

  before(async () => {
    dir = tmpDir('serve');
    copyCheckpoint(fixtureDir('tiny-gqa', 'causal-lm'), path.join(dir, 'tiny'));
    writeTinyTokenizer(path.join(dir, 'tiny'));
    const configFile = path.join(dir, 'tiny', 'tokenizer_config.json');
    fs.writeFileSync(configFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), chat_template: CHAT_TEMPLATE }));
    await setBackend('cpu');
    tokenizer = await NemotronTokenizer.fromPretrained(path.join(dir, 'tiny'));
    lm = await NemotronForCausalLM.fromPretrained(path.join(dir, 'tiny'));
    batcher = new ContinuousBatcher(lm, 8);
    server = createOpenAIServer(lm, tokenizer, { modelId: MODEL_ID, maxRows: 8, batcher });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = serverAddress(server);
  });

  after(async () => {
    if (server) await new Promise((resolve) => server.close(resolve));
    lm?.dispose();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('GET /v1/models lists the model, /v1/models/{id} names it, /health answers', async () => {
    const models = await (await fetch(`${base}/v1/models`)).json() as Json;
    expect(models.object).to.equal('list');
    expect(models.data.map((m: Json) => m.id)).to.deep.equal([MODEL_ID]);
    expect(models.data[0].object).to.equal('model');
    const card = await fetch(`${base}/v1/models/${MODEL_ID}`);
    expect(card.status).to.equal(200);
    expect((await card.json() as Json).id).to.equal(MODEL_ID);
    const missing = await fetch(`${base}/v1/models/gpt-4`);
    expect(missing.status).to.equal(404);
    expect((await missing.json() as Json).error.message).to.contain('"gpt-4" does not exist');
    expect(await (await fetch(`${base}/health`)).json()).to.deep.equal({ status: 'ok' });
  });

  it('completions, temperature 0: the greedy continuation of generate(), with usage and finish_reason length', async () => {
    const prompt = 'Hello the world';
    const ids = tokenizer.encode(prompt);
    const expected = await continuation(ids, { maxNewTokens: 8, doSample: false });
    const { status, json } = await post('/v1/completions', { model: MODEL_ID, prompt, max_tokens: 8, temperature: 0 });
    expect(status, JSON.stringify(json)).to.equal(200);
    expect(json.object).to.equal('text_completion');
    expect(json.id).to.match(/^cmpl-/);
    expect(json.model).to.equal(MODEL_ID);
    expect(json.choices).to.have.length(1);
    expect(json.choices[0].text).to.equal(expected.text);
    expect(json.choices[0].finish_reason).to.equal('length');
    expect(json.usage).to.deep.equal({ prompt_tokens: ids.length, completion_tokens: 8, total_tokens: ids.length + 8 });
    // echo: the prompt's text before the answer; a prompt of token ids is the same prompt.
    const echoed = await post('/v1/completions', { prompt: ids, max_tokens: 8, temperature: 0, echo: true });
    expect(echoed.json.choices[0].text).to.equal(prompt + expected.text);
    // An answer whose first token begins a word keeps its space (decoded after the prompt, not alone).
    const spaced = await continuation(tokenizer.encode('What is it'), { maxNewTokens: 3, doSample: false });
    expect(spaced.text.startsWith(' ')).to.equal(true);
    const reply = await post('/v1/completions', { prompt: 'What is it', max_tokens: 3, temperature: 0 });
    expect(reply.json.choices[0].text).to.equal(spaced.text);
  });

  it('completions streamed: the same text in chunks, then [DONE]; include_usage adds a usage chunk', async () => {
    const prompt = 'Once upon a time';
    const { json } = await post('/v1/completions', { prompt, max_tokens: 12, temperature: 0 });
    const events = await stream('/v1/completions', { prompt, max_tokens: 12, temperature: 0, stream_options: { include_usage: true } });
    expect(events.status).to.equal(200);
    expect(events.done).to.equal(true);
    const usage = events.chunks.filter((c) => c.usage);
    expect(usage).to.have.length(1);
    expect(usage[0].choices).to.deep.equal([]);
    expect(usage[0].usage).to.deep.equal(json.usage);
    const pieces = events.chunks.filter((c) => !c.usage);
    expect(pieces.length).to.be.greaterThan(2);
    expect(pieces.every((c) => c.object === 'text_completion' && c.id === pieces[0].id)).to.equal(true);
    expect(pieces.map((c) => c.choices[0].text).join('')).to.equal(json.choices[0].text);
    expect(pieces.slice(0, -1).every((c) => c.choices[0].finish_reason === null)).to.equal(true);
    expect(pieces[pieces.length - 1].choices[0].finish_reason).to.equal('length');
  });

  it('chat completions: the chat template rendered with the assistant turn opened, then greedy decoding; streamed the same', async () => {
    const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is the answer?' }];
    const ids = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
    const expected = await continuation(ids, { maxNewTokens: 10, doSample: false });
    const { status, json } = await post('/v1/chat/completions', { model: MODEL_ID, messages, max_tokens: 10, temperature: 0 });
    expect(status, JSON.stringify(json)).to.equal(200);
    expect(json.object).to.equal('chat.completion');
    expect(json.id).to.match(/^chatcmpl-/);
    expect(json.choices[0].message).to.deep.equal({ role: 'assistant', content: expected.text });
    expect(json.choices[0].finish_reason).to.equal('length');
    expect(json.usage.prompt_tokens).to.equal(ids.length);
    // OpenAI's content parts, and max_completion_tokens, read the same.
    const parts = messages.map((m) => ({ role: m.role, content: [{ type: 'text', text: m.content }] }));
    const again = await post('/v1/chat/completions', { messages: parts, max_completion_tokens: 10, temperature: 0 });
    expect(again.json.choices[0].message.content).to.equal(expected.text);

    const events = await stream('/v1/chat/completions', { messages, max_tokens: 10, temperature: 0 });
    expect(events.done).to.equal(true);
    expect(events.chunks.every((c) => c.object === 'chat.completion.chunk')).to.equal(true);
    expect(events.chunks[0].choices[0].delta).to.deep.equal({ role: 'assistant', content: '' });
    expect(events.chunks.map((c) => c.choices[0].delta.content ?? '').join('')).to.equal(expected.text);
    expect(events.chunks[events.chunks.length - 1].choices[0]).to.include({ finish_reason: 'length' });
  });

  it('stop: the text ends before the first stop string (not returned), finish_reason stop, streamed without any of it', async () => {
    const prompt = 'The cat sat';
    const full = (await continuation(tokenizer.encode(prompt), { maxNewTokens: 24, doSample: false })).text;
    expect(full.length).to.be.greaterThan(8);
    const stop = full.slice(5, 7);
    const expected = full.slice(0, full.indexOf(stop));
    const { json } = await post('/v1/completions', { prompt, max_tokens: 24, temperature: 0, stop: [stop, 'never-in-the-text'] });
    expect(json.choices[0].text).to.equal(expected);
    expect(json.choices[0].finish_reason).to.equal('stop');
    expect(json.usage.completion_tokens).to.be.lessThan(24);
    const events = await stream('/v1/completions', { prompt, max_tokens: 24, temperature: 0, stop });
    const texts = events.chunks.map((c) => c.choices[0].text as string);
    expect(texts.join('')).to.equal(expected);
    expect(events.chunks[events.chunks.length - 1].choices[0].finish_reason).to.equal('stop');
    // Nothing of the stop string went out, not even its first character where it began a chunk.
    expect(texts.join('').length).to.equal(expected.length);
  });

  it('EOS ends a choice with finish_reason stop, its text not returned', async () => {
    const prompt = 'Hello';
    const ids = tokenizer.encode(prompt);
    const greedy = await continuation(ids, { maxNewTokens: 6, doSample: false });
    // A generation_config.json that makes the fourth greedy token the EOS.
    const eos = greedy.tokens[3];
    const eosDir = path.join(dir, 'eos');
    copyCheckpoint(path.join(dir, 'tiny'), eosDir);
    fs.writeFileSync(path.join(eosDir, 'generation_config.json'), JSON.stringify({ eos_token_id: eos }));
    const model = await NemotronForCausalLM.fromPretrained(eosDir);
    const eosServer = createOpenAIServer(model, tokenizer, { modelId: 'eos' });
    await new Promise<void>((resolve) => eosServer.listen(0, '127.0.0.1', resolve));
    try {
      const first = greedy.tokens.indexOf(eos);
      const r = await fetch(`${serverAddress(eosServer)}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt, max_tokens: 6, temperature: 0 }) });
      const json = await r.json() as Json;
      const kept = greedy.tokens.slice(0, first);
      expect(json.choices[0].text).to.equal(tokenizer.decode([...ids, ...kept], { skipSpecialTokens: true }).slice(prompt.length));
      expect(json.choices[0].finish_reason).to.equal('stop');
      expect(json.usage.completion_tokens).to.equal(first + 1);
    } finally {
      await new Promise((resolve) => eosServer.close(resolve));
      model.dispose();
    }
  });

  it('several prompts and n choices decode as one left-padded batch: each choice equals its prompt alone', async () => {
    const prompts = ['Hello the world', 'Hi'];
    const alone = await Promise.all(prompts.map((p) => continuation(tokenizer.encode(p), { maxNewTokens: 6, doSample: false })));
    const { json } = await post('/v1/completions', { prompt: prompts, n: 2, max_tokens: 6, temperature: 0 });
    expect(json.choices.map((c: Json) => c.index)).to.deep.equal([0, 1, 2, 3]);
    expect(json.choices.map((c: Json) => c.text)).to.deep.equal([alone[0].text, alone[0].text, alone[1].text, alone[1].text]);
    const promptTokens = prompts.reduce((s, p) => s + tokenizer.encode(p).length, 0);
    expect(json.usage).to.deep.equal({ prompt_tokens: promptTokens, completion_tokens: 24, total_tokens: promptTokens + 24 });
  });

  it('logit_bias, presence_penalty and frequency_penalty: each choice as generate() makes it with sequenceBias and the penalties', async () => {
    const ids = tokenizer.encode('Hello');
    const plain = await continuation(ids, { maxNewTokens: 12, doSample: false });
    for (const request of [
      { logit_bias: { [plain.tokens[0]]: -100, 7: 5 } },
      { presence_penalty: 1.2 },
      { frequency_penalty: 0.8, presence_penalty: -0.5, logit_bias: { 9: 2.5 } },
    ]) {
      const bias = Object.entries(request.logit_bias ?? {}).map(([id, b]): [number[], number] => [[Number(id)], b]);
      const expected = await continuation(ids, {
        maxNewTokens: 12, doSample: false, presencePenalty: request.presence_penalty, frequencyPenalty: request.frequency_penalty,
        ...(bias.length ? { sequenceBias: bias } : {}),
      });
      expect(expected.tokens, JSON.stringify(request)).to.not.deep.equal(plain.tokens);
      const { json } = await post('/v1/completions', { prompt: 'Hello', max_tokens: 12, temperature: 0, ...request });
      expect(json.choices[0].text, JSON.stringify(request)).to.equal(expected.text);
    }
  });

  it('sampling: the seed decides the text, as generate() samples it; n samples differ', async () => {
    const prompt = 'Once';
    const settings = { temperature: 1.3, top_p: 0.95, seed: 7 };
    const expected = await continuation(tokenizer.encode(prompt), { maxNewTokens: 10, doSample: true, temperature: 1.3, topP: 0.95, seed: 7 });
    const a = await post('/v1/completions', { prompt, max_tokens: 10, ...settings });
    const b = await post('/v1/completions', { prompt, max_tokens: 10, ...settings });
    expect(a.json.choices[0].text).to.equal(expected.text);
    expect(b.json.choices[0].text).to.equal(expected.text);
    const several = await post('/v1/completions', { prompt, max_tokens: 10, n: 4, ...settings });
    expect(new Set(several.json.choices.map((c: Json) => c.text)).size).to.be.greaterThan(1);
  });

  it('completions logprobs with echo, as lm-evaluation-harness scores a continuation: the prompt\'s and the answer\'s tokens', async () => {
    const context = 'The cat';
    const target = ' sat on';
    const ids = tokenizer.encode(context + target);
    const contextLength = tokenizer.encode(context).length;
    const tokenText = stopStringDecoder(tokenizer);
    const { json } = await post('/v1/completions', { prompt: ids, max_tokens: 1, temperature: 0, logprobs: 3, echo: true });
    const lp = json.choices[0].logprobs;
    expect(lp.tokens).to.have.length(ids.length + 1);
    expect(lp.tokens.slice(0, ids.length)).to.deep.equal(ids.map((id) => tokenText([id])));
    expect(lp.token_logprobs[0]).to.equal(null);
    expect(lp.top_logprobs[0]).to.equal(null);
    // The prompt's log-probabilities are the model's (sequenceLogprobs is checked against transformers' logits).
    const scored = await sequenceLogprobs(model(), ids, { topK: 3 });
    scored.forEach((s, t) => {
      expect(lp.token_logprobs[t + 1]).to.be.closeTo(s.logprob, 1e-6);
      expect(Object.values(lp.top_logprobs[t + 1]).length).to.be.within(1, 3);
      expect(Math.max(...Object.values(lp.top_logprobs[t + 1]) as number[])).to.be.closeTo(s.top[0].logprob, 1e-6);
    });
    // The generated token's: the first step's raw logits.
    const first = await generate(model(), [ids], { maxNewTokens: 1, doSample: false, outputLogits: true });
    const next = first.sequences[0][ids.length];
    expect(lp.token_logprobs[ids.length]).to.be.closeTo(logprobOf(first.logits![0][0], next).logprob, 1e-6);
    // Offsets into the text: increasing, the answer's after the echoed prompt.
    const text = json.choices[0].text as string;
    expect(lp.text_offset[0]).to.equal(0);
    for (let i = 1; i < lp.text_offset.length; i++) expect(lp.text_offset[i]).to.be.at.least(lp.text_offset[i - 1]);
    const promptText = tokenizer.decode(ids, { skipSpecialTokens: true });
    expect(text.startsWith(promptText)).to.equal(true);
    expect(lp.text_offset[ids.length]).to.equal(promptText.length);
    // What lm-evaluation-harness computes from it: the continuation's log-likelihood, and whether it is greedy.
    const continuation = lp.token_logprobs.slice(contextLength, -1) as number[];
    const expectedSum = scored.slice(contextLength - 1).reduce((sum, s) => sum + s.logprob, 0);
    expect(continuation.reduce((a, b) => a + b, 0)).to.be.closeTo(expectedSum, 1e-5);
    const greedy = scored.slice(contextLength - 1).every((s) => s.top[0].token === s.token);
    const harnessGreedy = continuation.every((v, i) => v === Math.max(...Object.values(lp.top_logprobs[contextLength + i]) as number[]));
    expect(harnessGreedy).to.equal(greedy);
    // max_tokens 0: the prompt alone, scored.
    const only = await post('/v1/completions', { prompt: ids, max_tokens: 0, logprobs: 0, echo: true });
    expect(only.json.choices[0].logprobs.token_logprobs.slice(1)).to.deep.equal(lp.token_logprobs.slice(1, ids.length));
    expect(only.json.choices[0].logprobs.top_logprobs.slice(1).every((t: Json) => Object.keys(t).length === 0)).to.equal(true);
    expect(only.json.usage.completion_tokens).to.equal(0);
    // Streamed: the same log-probabilities, spread over the chunks.
    const events = await stream('/v1/completions', { prompt: ids, max_tokens: 4, temperature: 0, logprobs: 3, echo: true });
    const whole = await post('/v1/completions', { prompt: ids, max_tokens: 4, temperature: 0, logprobs: 3, echo: true });
    const joined = events.chunks.flatMap((c) => c.choices[0].logprobs?.token_logprobs ?? []);
    expect(joined).to.deep.equal(whole.json.choices[0].logprobs.token_logprobs);
    expect(events.chunks.flatMap((c) => c.choices[0].logprobs?.text_offset ?? [])).to.deep.equal(whole.json.choices[0].logprobs.text_offset);
  });

  it('chat logprobs: each answer token with its log-probability, bytes and top_logprobs', async () => {
    const messages = [{ role: 'user', content: 'What is the answer?' }];
    const ids = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
    const out = await generate(model(), [ids], { maxNewTokens: 5, doSample: false, outputLogits: true });
    const tokenText = stopStringDecoder(tokenizer);
    const { json } = await post('/v1/chat/completions', { messages, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 2 });
    const content = json.choices[0].logprobs.content as Json[];
    expect(content).to.have.length(5);
    content.forEach((entry, s) => {
      const token = out.sequences[0][ids.length + s];
      const expectedEntry = logprobOf(out.logits![s][0], token, 2);
      expect(entry.token).to.equal(tokenText([token]));
      expect(entry.bytes).to.deep.equal([...Buffer.from(tokenText([token]), 'utf8')]);
      expect(entry.logprob).to.be.closeTo(expectedEntry.logprob, 1e-6);
      expect(entry.top_logprobs.map((t: Json) => t.token)).to.deep.equal(expectedEntry.top.map((t) => tokenText([t.token])));
    });
    const plain = await post('/v1/chat/completions', { messages, max_tokens: 5, temperature: 0 });
    expect(plain.json.choices[0].logprobs).to.equal(null);
    expect(plain.json.choices[0].message.content).to.equal(json.choices[0].message.content);
  });

  it('bad requests get OpenAI error objects that name the field and what was expected', async () => {
    const cases: Array<[unknown, number, RegExp, string | null]> = [
      ['{not json', 400, /not valid JSON/, null],
      [[1, 2], 400, /must be a JSON object/, null],
      [{ prompt: 'Hi', temperature: -1 }, 400, /temperature must be a number ≥ 0 .*got -1/, 'temperature'],
      [{ prompt: 'Hi', top_p: 1.5 }, 400, /top_p must be a number in \(0, 1\], got 1.5/, 'top_p'],
      [{ prompt: 'Hi', max_tokens: -1 }, 400, /max_tokens must be an integer ≥ 0 .*got -1/, 'max_tokens'],
      [{ prompt: 'Hi', max_tokens: 70 }, 400, /maximum context length is 64 tokens\. However, you requested 74 tokens \(4 in the prompt, 70 for the completion\)/, 'max_tokens'],
      [{ prompt: 'Hi', n: 9 }, 400, /n must be an integer in \[1, 8\], got 9/, 'n'],
      [{ prompt: ['a', 'b', 'c'], n: 3 }, 400, /3 prompts × n 3 = 9 rows/, 'n'],
      [{ prompt: [5, 500] }, 400, /prompt\[1\] = 500 is not a token id in \[0, 96\)/, 'prompt'],
      [{ prompt: 3 }, 400, /prompt must be a string/, 'prompt'],
      [{ prompt: 'Hi', stop: [''] }, 400, /stop must be a non-empty string/, 'stop'],
      [{ prompt: 'Hi', logit_bias: { 96: 10 } }, 400, /logit_bias key "96" is not a token id in \[0, 96\)/, 'logit_bias'],
      [{ prompt: 'Hi', logit_bias: { 5: 101 } }, 400, /logit_bias\[5\] must be a number in \[-100, 100\], got 101/, 'logit_bias'],
      [{ prompt: 'Hi', logit_bias: [5] }, 400, /logit_bias must be an object of \{token id: bias\}/, 'logit_bias'],
      [{ prompt: 'Hi', logprobs: 21 }, 400, /logprobs must be an integer in \[0, 20\].*got 21/, 'logprobs'],
      [{ prompt: 'Hi', max_tokens: 0 }, 400, /max_tokens 0 generates nothing; it is for echo: true/, 'max_tokens'],
      [{ prompt: 'Hi', presence_penalty: 2.5 }, 400, /presence_penalty must be a number in \[-2, 2\], got 2.5/, 'presence_penalty'],
      [{ prompt: 'Hi', frequency_penalty: 'high' }, 400, /frequency_penalty must be a number in \[-2, 2\], got "high"/, 'frequency_penalty'],
      [{ prompt: 'Hi', model: 'gpt-4o' }, 404, /"gpt-4o" does not exist; this server serves "tiny-nemotron"/, 'model'],
    ];
    for (const [body, status, message, param] of cases) {
      const r = await post('/v1/completions', body);
      expect(r.status, JSON.stringify(body)).to.equal(status);
      expect(r.json.error.message, JSON.stringify(body) + ' → ' + r.json.error.message).to.match(message);
      expect(r.json.error.param, JSON.stringify(body)).to.equal(param);
    }
    const image = await post('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] });
    expect(image.status).to.equal(400);
    expect(image.json.error.message).to.equal('messages[0].content[0] is a "image_url" part; this model reads text parts only');
    const topWithout = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], top_logprobs: 2 });
    expect(topWithout.json.error.message).to.equal('top_logprobs needs logprobs: true');
    const noMessages = await post('/v1/chat/completions', { messages: [] });
    expect(noMessages.json.error.message).to.match(/messages must be a non-empty list/);
    const unknown = await fetch(`${base}/v1/embeddings`, { method: 'POST', body: '{}' });
    expect(unknown.status).to.equal(404);
    const wrongMethod = await fetch(`${base}/v1/completions`);
    expect(wrongMethod.status).to.equal(405);
  });

  it('a chat request without a chat template is refused with the tokenizer\'s reason', async () => {
    const plain = await NemotronTokenizer.fromPretrained(path.join(dir, 'tiny'));
    const bare = await NemotronTokenizer.fromJSON(plain.tokenizerJson(), { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', add_bos_token: true });
    const other = createOpenAIServer(lm, bare, { modelId: 'bare' });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      const r = await fetch(`${serverAddress(other)}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }] }) });
      expect(r.status).to.equal(400);
      expect(((await r.json()) as Json).error.message).to.match(/no chat template/);
    } finally {
      await new Promise((resolve) => other.close(resolve));
    }
  });

  it('requests at once decode together (continuous batching), each as alone; a client that leaves mid-stream frees its row', async () => {
    const before = tf.memory().numTensors;
    const prompts = ['Hello', 'The cat', 'Once upon'];
    const expected = await Promise.all(prompts.map((p) => continuation(tokenizer.encode(p), { maxNewTokens: 30, doSample: false })));
    const peak = batcher.stats.peakRows;
    batcher.stats.peakRows = 0;
    const replies = await Promise.all(prompts.map((prompt) => post('/v1/completions', { prompt, max_tokens: 30, temperature: 0 })));
    expect(replies.map((r) => r.json.choices[0].text)).to.deep.equal(expected.map((e) => e.text));
    expect(batcher.stats.peakRows).to.be.within(2, 3);
    batcher.stats.peakRows = Math.max(peak, batcher.stats.peakRows);
    // A streamed request abandoned after its first chunk: the server stops generating and frees the KV cache.
    const controller = new AbortController();
    const r = await fetch(`${base}/v1/completions`, {
      method: 'POST', signal: controller.signal, body: JSON.stringify({ prompt: 'Hello', max_tokens: 60, temperature: 0, stream: true }),
    });
    const reader = r.body!.getReader();
    await reader.read();
    controller.abort();
    await reader.read().catch(() => undefined);
    const after = await post('/v1/completions', { prompt: 'Hello', max_tokens: 30, temperature: 0 });
    expect(after.json.choices[0].text).to.equal(expected[0].text);
    expect(batcher.load).to.deep.equal({ active: 0, waiting: 0 });
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('prefix caching (prefixCacheTokens): a chat\'s next turn reuses the kept keys and values of the first, and answers as generate() does', async () => {
    const withCache = new ContinuousBatcher(lm, { maxRows: 2, prefixCacheTokens: 1024 });
    const cached = createOpenAIServer(lm, tokenizer, { modelId: MODEL_ID, maxRows: 2, batcher: withCache });
    await new Promise<void>((resolve) => cached.listen(0, '127.0.0.1', resolve));
    try {
      const url = `${serverAddress(cached)}/v1/chat/completions`;
      const ask = async (messages: Json[]) => ((await (await fetch(url, { method: 'POST', body: JSON.stringify({ messages, max_tokens: 3, temperature: 0 }) })).json()) as Json).choices[0].message.content as string;
      const first = [{ role: 'user', content: 'Hi there' }];
      const reply = await ask(first);
      const second = [...first, { role: 'assistant', content: reply }, { role: 'user', content: 'k' }];
      const expected = await continuation(tokenizer.applyChatTemplate(second, { addGenerationPrompt: true }), { maxNewTokens: 3, doSample: false });
      expect(await ask(second)).to.equal(expected.text);
      // The second prompt began with the first turn's tokens (the prompt, and the reply as far as it re-encodes the same).
      const firstLength = tokenizer.applyChatTemplate(first, { addGenerationPrompt: true }).length;
      expect(withCache.prefixCache!.stats.hits).to.equal(1);
      expect(withCache.prefixCache!.stats.reusedTokens).to.be.at.least(firstLength);
    } finally {
      await new Promise((resolve) => cached.close(resolve));
      withCache.prefixCache!.dispose();
    }
  });

  it('the CLI serves a checkpoint folder (--port 0 prints the address) and stops on SIGTERM', async () => {
    const env = { ...process.env };
    delete env.NEMOTRON_DEBUG;
    const child = spawn(process.execPath, [CLI, 'serve', '--model', path.join(dir, 'tiny'), '--port', '0', '--backend', 'cpu', '--served-model-name', 'tiny-cli'], { env });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    try {
      const address = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = out.match(/serving tiny-cli on (http:\/\/[\d.]+:\d+)/);
          if (m) resolve(m[1]);
        });
        child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
      });
      const models = await (await fetch(`${address}/v1/models`)).json() as Json;
      expect(models.data[0].id).to.equal('tiny-cli');
      const ids = tokenizer.encode('Hello');
      const expected = await continuation(ids, { maxNewTokens: 5, doSample: false });
      const r = await fetch(`${address}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'Hello', max_tokens: 5, temperature: 0 }) });
      expect(((await r.json()) as Json).choices[0].text).to.equal(expected.text);
      const code = await new Promise<number | null>((resolve) => {
        child.on('exit', resolve);
        child.kill('SIGTERM');
      });
      expect(code, stderr).to.equal(0);
      expect(stderr).to.match(/POST \/v1\/completions 200 · 5 tokens/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('the Responses API: input and instructions as the chat request they amount to; the answer as a message item, streamed as typed events', async () => {
    const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is the answer?' }];
    const chat = await post('/v1/chat/completions', { messages, max_tokens: 6, temperature: 0 });
    const text = chat.json.choices[0].message.content as string;
    const { status, json } = await post('/v1/responses', {
      model: MODEL_ID, instructions: 'Be brief.', input: [{ role: 'user', content: [{ type: 'input_text', text: 'What is the answer?' }] }], max_output_tokens: 6, temperature: 0,
    });
    expect(status, JSON.stringify(json)).to.equal(200);
    expect(json.object).to.equal('response');
    expect(json.id).to.match(/^resp_/);
    expect(json.output).to.have.length(1);
    expect(json.output[0]).to.include({ type: 'message', role: 'assistant', status: 'incomplete' });
    expect(json.output[0].content[0]).to.include({ type: 'output_text', text });
    // Six tokens were all it could write: incomplete, as OpenAI reports an output cut at max_output_tokens.
    expect(json.status).to.equal('incomplete');
    expect(json.incomplete_details).to.deep.equal({ reason: 'max_output_tokens' });
    expect(json.usage).to.include({ input_tokens: chat.json.usage.prompt_tokens, output_tokens: 6, total_tokens: chat.json.usage.prompt_tokens + 6 });
    // A string input is one user message.
    const single = await post('/v1/responses', { input: 'Hi', max_output_tokens: 4, temperature: 0 });
    const singleChat = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0 });
    expect(single.json.output[0].content[0].text).to.equal(singleChat.json.choices[0].message.content);
    // Streamed: the event sequence, the deltas making up the text, numbered in order.
    const r = await fetch(`${base}/v1/responses`, { method: 'POST', body: JSON.stringify({ instructions: 'Be brief.', input: 'What is the answer?', max_output_tokens: 6, temperature: 0, stream: true }) });
    const events = (await r.text()).split('\n\n').filter(Boolean).map((e) => {
      const [eventLine, dataLine] = e.split('\n');
      const data = JSON.parse(dataLine.slice('data: '.length)) as Json;
      expect(eventLine).to.equal(`event: ${data.type}`);
      return data;
    });
    const types = events.map((e) => e.type);
    expect(types.filter((t) => t !== 'response.output_text.delta')).to.deep.equal([
      'response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added',
      'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.incomplete',
    ]);
    expect(events.map((e) => e.sequence_number)).to.deep.equal(events.map((_, i) => i));
    expect(events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('')).to.equal(text);
    expect(events[events.length - 1].response.output[0].content[0].text).to.equal(text);
    // Refused: server-side state, items this server does not read (tool calls and their outputs it does: test/serving/tool-calls.test.ts).
    const stateful = await post('/v1/responses', { input: 'Hi', previous_response_id: 'resp_1' });
    expect([stateful.status, stateful.json.error.param, stateful.json.error.message]).to.deep.equal([404, 'previous_response_id', 'Previous response with id "resp_1" not found.']);
    const search = await post('/v1/responses', { input: [{ type: 'web_search_call', id: 'ws' }] });
    expect(search.json.error.message).to.equal('input[0] is a "web_search_call" item; this server reads messages, reasoning, function_call and function_call_output items');
    const call = await post('/v1/responses', { input: [{ type: 'function_call', name: 'f', arguments: '{}' }] });
    expect([call.status, call.json.error.param]).to.deep.equal([400, 'input[0].call_id']);
  });

  it('stored responses: previous_response_id continues a conversation as the chat of its messages; GET and DELETE /v1/responses/{id}; store: false keeps nothing', async () => {
    // The first turn's instructions do not carry over to the next (OpenAI's rule): its chat has no system message.
    const first = await post('/v1/responses', { instructions: 'B', input: 'Hi', max_output_tokens: 3, temperature: 0 });
    expect(first.json.store).to.equal(true);
    const firstText = first.json.output[0].content[0].text as string;
    const next = await post('/v1/responses', { previous_response_id: first.json.id, input: 'k', max_output_tokens: 3, temperature: 0 });
    expect(next.status, JSON.stringify(next.json)).to.equal(200);
    expect(next.json.previous_response_id).to.equal(first.json.id);
    const messages = [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: firstText }, { role: 'user', content: 'k' }];
    const chat = await post('/v1/chat/completions', { messages, max_tokens: 3, temperature: 0 });
    expect(next.json.output[0].content[0].text).to.equal(chat.json.choices[0].message.content);
    expect(next.json.usage.input_tokens).to.equal(chat.json.usage.prompt_tokens);
    const got = await fetch(`${base}/v1/responses/${first.json.id}`);
    expect(await got.json()).to.deep.equal(first.json);
    const deleted = await fetch(`${base}/v1/responses/${first.json.id}`, { method: 'DELETE' });
    expect(await deleted.json()).to.deep.equal({ id: first.json.id, object: 'response', deleted: true });
    expect((await fetch(`${base}/v1/responses/${first.json.id}`)).status).to.equal(404);
    const unstored = await post('/v1/responses', { input: 'Hi', max_output_tokens: 1, store: false });
    expect(unstored.json.store).to.equal(false);
    expect((await fetch(`${base}/v1/responses/${unstored.json.id}`)).status).to.equal(404);
  });

  it('/tokenize and /detokenize (vLLM\'s): a prompt\'s or a conversation\'s ids and count, the text of ids', async () => {
    const tokenized = await post('/tokenize', { model: MODEL_ID, prompt: 'Hello the world' });
    expect(tokenized.json).to.deep.equal({ tokens: tokenizer.encode('Hello the world'), count: tokenizer.encode('Hello the world').length, max_model_len: 64 });
    const bare = await post('/tokenize', { prompt: 'Hello', add_special_tokens: false });
    expect(bare.json.tokens).to.deep.equal(tokenizer.encode('Hello', { addSpecialTokens: false }));
    const messages = [{ role: 'user', content: 'Hi' }];
    const chat = await post('/tokenize', { messages });
    expect(chat.json.tokens).to.deep.equal(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }));
    const back = await post('/detokenize', { tokens: tokenized.json.tokens });
    expect(back.json).to.deep.equal({ prompt: tokenizer.decode(tokenized.json.tokens) });
    const bad = await post('/detokenize', { tokens: [1, 500] });
    expect([bad.status, bad.json.error.message]).to.deep.equal([400, 'tokens must be a list of token ids in [0, 96), got [1,500]']);
    expect((await post('/tokenize', {})).json.error.param).to.equal('prompt');
  });

  it('--api-key: /v1/ requests need "Authorization: Bearer <key>" (401 otherwise), /health does not', async () => {
    const guarded = createOpenAIServer(lm, tokenizer, { modelId: MODEL_ID, apiKey: 'sk-local' });
    await new Promise<void>((resolve) => guarded.listen(0, '127.0.0.1', resolve));
    const url = serverAddress(guarded);
    try {
      const none = await fetch(`${url}/v1/models`);
      expect(none.status).to.equal(401);
      expect(((await none.json()) as Json).error).to.deep.equal({
        message: 'Incorrect API key: the request has no Authorization header', type: 'invalid_request_error', param: null, code: 'invalid_api_key',
      });
      const wrong = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { Authorization: 'Bearer sk-other' }, body: '{"prompt": "Hi"}' });
      expect(wrong.status).to.equal(401);
      const right = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { Authorization: 'Bearer sk-local' }, body: '{"prompt": "Hi", "max_tokens": 2}' });
      expect(right.status).to.equal(200);
      expect((await fetch(`${url}/health`)).status).to.equal(200);
    } finally {
      await new Promise((resolve) => guarded.close(resolve));
    }
  });

  it('the CLI chat: each line a user message, the conversation through the chat template, /clear forgets it', async () => {
    const env = { ...process.env };
    delete env.NEMOTRON_DEBUG;
    delete env.NEMOTRON_BACKEND;
    // The tiny model's context is 64 tokens of single characters: short turns.
    const lines = ['Hi', 'Ok', '/clear', 'Yo'];
    const r = spawnSync(process.execPath, [CLI, 'chat', '--model', path.join(dir, 'tiny'), '--greedy', '-n', '4', '--system', 'Be', '--backend', 'cpu'],
      { input: lines.join('\n') + '\n', encoding: 'utf8', env, timeout: 60_000 });
    expect(r.status, r.stderr).to.equal(0);
    // What each turn should print: the greedy reply to the conversation so far, decoded after it.
    let history = [{ role: 'system', content: 'Be' }];
    const expected: string[] = [];
    for (const line of lines) {
      if (line === '/clear') {
        history = [{ role: 'system', content: 'Be' }];
        expected.push('(conversation cleared)');
        continue;
      }
      const messages = [...history, { role: 'user', content: line }];
      const ids = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
      const reply = (await continuation(ids, { maxNewTokens: 4, doSample: false })).text;
      expected.push(reply);
      history = [...messages, { role: 'assistant', content: reply }];
    }
    expect(r.stdout).to.equal(expected.map((l) => `${l}\n`).join(''));
    const bare = spawnSync(process.execPath, [CLI, 'chat', '--model', path.join(ROOT, 'test/fixtures/hf-reference/tiny-gqa/causal-lm'), '--backend', 'cpu'], { input: '', encoding: 'utf8', env });
    expect(bare.status).to.equal(1);
    expect(bare.stderr).to.match(/tokenizer\.json is missing/);
  });

  it('the openai Python client reads the answers, streamed and not (skipped without it in the reference venv)', async function () {
    if (!fs.existsSync(PYTHON) || spawnSync(PYTHON, ['-c', 'import openai'], { encoding: 'utf8' }).status !== 0) {
      console.log(`    (skipped: no openai package in ${PYTHON}; run scripts/reference-venv.sh)`);
      this.skip();
    }
    const messages = [{ role: 'user', content: 'What is the answer?' }];
    const expected = await continuation(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { maxNewTokens: 8, doSample: false });
    const script = `
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
model = client.models.list().data[0].id
messages = json.loads(sys.argv[2])
reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
streamed, usage = "", None
for chunk in chunks:
    if chunk.usage: usage = chunk.usage.completion_tokens
    for choice in chunk.choices: streamed += choice.delta.content or ""
completion = client.completions.create(model=model, prompt="Hello", max_tokens=4, temperature=0)
response = client.responses.create(model=model, input=messages, max_output_tokens=8, temperature=0)
response_streamed = "".join(e.delta for e in client.responses.create(model=model, input=messages, max_output_tokens=8, temperature=0, stream=True)
                            if e.type == "response.output_text.delta")
scored = client.completions.create(model=model, prompt="Hello", max_tokens=1, temperature=0, logprobs=2, echo=True).choices[0].logprobs
chat_scored = client.chat.completions.create(model=model, messages=messages, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2).choices[0].logprobs.content
try:
    client.completions.create(model="gpt-4o", prompt="Hello")
    error = None
except openai.NotFoundError as e:
    error = e.status_code
print(json.dumps({"model": model, "content": reply.choices[0].message.content, "finish": reply.choices[0].finish_reason,
                  "streamed": streamed, "usage": usage, "completion": completion.choices[0].text, "error": error,
                  "scored": [scored.token_logprobs[0], len(scored.tokens), len(scored.top_logprobs[1])],
                  "response": [response.output_text, response.status, response.usage.output_tokens, response_streamed],
                  "chat_scored": [len(chat_scored), len(chat_scored[0].top_logprobs), chat_scored[0].logprob <= 0]}))
`;
    const run = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const child = spawn(PYTHON, ['-c', script, base, JSON.stringify(messages)]);
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('exit', (code) => resolve({ code, out, err }));
    });
    expect(run.code, run.err).to.equal(0);
    const result = JSON.parse(run.out) as Json;
    const hello = await continuation(tokenizer.encode('Hello'), { maxNewTokens: 4, doSample: false });
    expect(result).to.deep.equal({
      model: MODEL_ID, content: expected.text, finish: 'length', streamed: expected.text, usage: 8, completion: hello.text, error: 404,
      scored: [null, tokenizer.encode('Hello').length + 1, 2], chat_scored: [3, 2, true],
      response: [expected.text, 'incomplete', 8, expected.text],
    });
  });
});
