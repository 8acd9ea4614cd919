import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { setBackend } from '../../src/backends';
import { NemotronTokenizer } from '../../src/tokenizer';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { createOpenAIServer } from '../../src/serving/openai';
import { close, listen, spawnServe } from './listen';
import { FIXTURES, tmpDir } from '../helpers';

// The tiny NemotronH ("M*M-") with a tokenizer of its 96 ids (test/fixtures/structured-output) and a chat template.
const CHAT_TEMPLATE = '{% for m in messages %}{{ m.content }}{% endfor %}:';
type Json = Record<string, any>;

describe('serving a NemotronH model over OpenAI\'s API (continuous batching: NemotronHBatcher)', function () {
  this.timeout(120_000);
  // What before() sets up: the checkpoint folder, the model and its tokenizer, the server and its URL.
  const s = {} as { dir: string; server: http.Server };
  let [model, tokenizer, base] = [null as unknown as NemotronHForCausalLM, null as unknown as NemotronTokenizer, ''];

  const post = async (route: string, body: unknown) => {
    const r = await fetch(base + route, { method: 'POST', body: JSON.stringify(body) });
    return { status: r.status, json: await r.json() as Json };
  };
  /** The greedy text after `ids`, as NemotronH's generate() writes it. */
  const greedy = (ids: number[], n: number) => {
    const out = model.generate([ids], { maxNewTokens: n, eosTokenId: null })[0];
    return tokenizer.decode(out, { skipSpecialTokens: true }).slice(tokenizer.decode(ids, { skipSpecialTokens: true }).length);
  };

  before(async () => {
    const dir = s.dir = tmpDir('nemotron-h-serve');
    for (const from of [path.resolve(FIXTURES, '../nemotron-h/model'), path.resolve(FIXTURES, '../structured-output/tokenizer')]) {
      for (const f of fs.readdirSync(from)) fs.copyFileSync(path.join(from, f), path.join(dir, f));
    }
    // No EOS in these tests: every answer runs to max_tokens.
    fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: null }));
    const configFile = path.join(dir, 'tokenizer_config.json');
    fs.writeFileSync(configFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), chat_template: CHAT_TEMPLATE }));
    await setBackend('cpu');
    tokenizer = await NemotronTokenizer.fromPretrained(dir);
    model = await NemotronHForCausalLM.fromPretrained(dir);
    s.server = createOpenAIServer(model, tokenizer, { modelId: 'tiny-h', maxRows: 4 });
    base = await listen(s.server);
  });

  after(async () => {
    await close(s.server);
    model?.dispose();
    if (s.dir) fs.rmSync(s.dir, { recursive: true, force: true });
  });

  it('completions and chat (streamed and not) answer what generate() writes; requests at once each as alone; no tensor left', async () => {
    const before = tf.memory().numTensors;
    const ids = tokenizer.encode('the name');
    const { status, json } = await post('/v1/completions', { prompt: 'the name', max_tokens: 8, temperature: 0 });
    expect(status, JSON.stringify(json)).to.equal(200);
    expect(json.choices[0]).to.include({ text: greedy(ids, 8), finish_reason: 'length' });
    const messages = [{ role: 'user', content: 'flags' }];
    const chatIds = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
    const chat = await post('/v1/chat/completions', { messages, max_tokens: 6, temperature: 0 });
    expect(chat.json.choices[0].message.content).to.equal(greedy(chatIds, 6));
    const r = await fetch(`${base}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages, max_tokens: 6, temperature: 0, stream: true }) });
    const chunks = (await r.text()).split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)) as Json);
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).to.equal(greedy(chatIds, 6));
    const prompts = ['the name', 'is ok', 'yes no'];
    const answers = await Promise.all(prompts.map((prompt) => post('/v1/completions', { prompt, max_tokens: 5, temperature: 0 })));
    answers.forEach((a, i) => expect(a.json.choices[0].text, prompts[i]).to.equal(greedy(tokenizer.encode(prompts[i]), 5)));
    const scored = await post('/v1/completions', { prompt: 'the name', max_tokens: 3, temperature: 0, logprobs: 2 });
    expect(scored.json.choices[0].logprobs.token_logprobs.every((l: number) => l <= 0)).to.equal(true);
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('structured output decodes under the grammar; echo with logprobs scores the prompt as one pass of the model does', async () => {
    const flags = { type: 'array', items: { type: 'boolean' }, maxItems: 3 };
    const { json } = await post('/v1/completions', { prompt: 'the name', max_tokens: 24, temperature: 0, response_format: { type: 'json_schema', json_schema: { name: 'f', schema: flags } } });
    expect(json.choices[0].text).to.match(/^\s*\[/);
    const echo = await post('/v1/completions', { prompt: 'the name', max_tokens: 0, echo: true, logprobs: 1 });
    expect(echo.status, JSON.stringify(echo.json)).to.equal(200);
    const ids = tokenizer.encode('the name');
    const { logits } = model.forward({ inputIds: [ids] });
    const scores = tf.tidy(() => tf.logSoftmax(logits.reshape([ids.length, -1])));
    const logp = await scores.array() as number[][];
    tf.dispose([logits, scores]);
    const expected = [null, ...ids.slice(1).map((t, i) => logp[i][t])];
    const got = echo.json.choices[0].logprobs.token_logprobs as Array<number | null>;
    expect(got[0]).to.equal(null);
    got.slice(1).forEach((l, i) => expect(Math.abs(l! - expected[i + 1]!), `position ${i + 1}`).to.be.at.most(1e-4));
    expect(echo.json.choices[0].text).to.equal('the name');
  });

  it('the CLI chat holds a conversation with a NemotronH folder (each turn what generate() writes after the conversation so far)', async () => {
    const env = { ...process.env };
    delete env.NEMOTRON_DEBUG;
    const lines = ['flags', 'is ok', '/clear', 'yes'];
    const r = spawnSync(process.execPath, [path.resolve(__dirname, '../../src/cli/main.js'), 'chat', '--model', s.dir, '--greedy', '-n', '4', '--backend', 'cpu'],
      { input: lines.join('\n') + '\n', encoding: 'utf8', env, timeout: 60_000 });
    expect(r.status, r.stderr).to.equal(0);
    let history: Array<{ role: string; content: string }> = [];
    const expected: string[] = [];
    for (const line of lines) {
      if (line === '/clear') {
        history = [];
        expected.push('(conversation cleared)');
        continue;
      }
      const messages = [...history, { role: 'user', content: line }];
      const reply = greedy(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), 4);
      expected.push(reply);
      history = [...messages, { role: 'assistant', content: reply }];
    }
    expect(r.stdout).to.equal(expected.map((l) => `${l}\n`).join(''));
    const refused = spawnSync(process.execPath, [path.resolve(__dirname, '../../src/cli/main.js'), 'chat', '--model', s.dir, '--adapter', s.dir, '--backend', 'cpu'], { input: '', encoding: 'utf8', env });
    expect(refused.stderr).to.match(/--adapter .*: adapter_config\.json is missing \(expected a PEFT LoRA adapter folder or a GGUF LoRA file\)/);
  });

  it('the CLI serves a NemotronH folder', async () => {
    const { address, child } = await spawnServe(path.resolve(__dirname, '../../src/cli/main.js'), ['--model', s.dir, '--backend', 'cpu'], 'h');
    try {
      const reply = await (await fetch(`${address}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: 'the name', max_tokens: 4, temperature: 0 }) })).json() as Json;
      expect(reply.choices[0].text).to.equal(greedy(tokenizer.encode('the name'), 4));
    } finally {
      child.kill('SIGTERM');
    }
  });
});
