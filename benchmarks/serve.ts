/**
 * The OpenAI-compatible server under concurrent clients, in one process: each client sends one completion request
 * (a prompt of random token ids, greedy) at the same moment; the figures are the tokens all of them got per second of
 * wall time and each request's latency, with continuous batching and with the rows decoded one at a time (a batcher
 * of one row: what a server without batching does).
 *
 *   node dist/benchmarks/serve.js [--config minitron-small] [--backend tensorflow] [--prompt 32] [--new 64]
 *                                 [--clients 1,4,8,16] [--torch] [--out benchmarks/results]
 *
 * --torch runs the same clients against `transformers serve` (PyTorch, float32, CPU) on the same weights and vocabulary
 * (saved with savePretrained), without and with its continuous batching, from the reference venv
 * (scripts/reference-venv.sh; `pip install transformers[serving]` there), and compares the texts with ours.
 *
 * Random weights (the library's initialisation) and a word-level vocabulary of the model's size: the decoding work is
 * a real model's of that shape, the text is not.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ChildProcess, spawn, spawnSync } from 'child_process';
import { NemotronConfig, NemotronForCausalLM, NemotronTokenizer, setBackend } from '../src/index';
import { ContinuousBatcher } from '../src/serving/batcher';
import { createOpenAIServer, serverAddress } from '../src/serving/openai';
import { benchConfig, machineInfo } from './configs';

interface Row {
  clients: number;
  /** Who decoded: ours with continuous batching or one row at a time, or transformers serve. */
  server: string;
  seconds: number;
  tokens: number;
  tokensPerSecond: number;
  meanLatency: number;
  maxLatency: number;
  peakRows: number;
}

/** tokenizer.json of "w0" … "w{n-1}", split on spaces: every id of the model decodes to a word. */
function wordVocabulary(size: number): object {
  const vocab = Object.fromEntries(Array.from({ length: size }, (_, i) => [`w${i}`, i]));
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, post_processor: null, decoder: null,
    pre_tokenizer: { type: 'WhitespaceSplit' }, model: { type: 'WordLevel', vocab, unk_token: 'w0' },
  };
}

/** Sends every prompt at once as a greedy /v1/completions request; each one's text, token count and latency. */
async function round(url: string, model: string, prompts: string[], newTokens: number) {
  return Promise.all(prompts.map(async (prompt) => {
    const start = performance.now();
    const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ model, prompt, max_tokens: newTokens, temperature: 0 }) });
    const json = await r.json() as { usage?: { completion_tokens: number }; choices?: Array<{ text: string }>; error?: { message: string }; detail?: unknown };
    if (!json.usage || !json.choices) throw new Error(`request failed (${r.status}): ${JSON.stringify(json.error ?? json.detail ?? json)}`);
    return { text: json.choices[0].text.trim(), tokens: json.usage.completion_tokens, latency: (performance.now() - start) / 1000 };
  }));
}

/** `transformers serve` on a saved checkpoint, once it answers /health. */
async function startTransformersServe(dir: string, port: number, continuous: boolean): Promise<ChildProcess> {
  const venv = process.env.NEMOTRON_REF_VENV ?? path.resolve(__dirname, '../../.venv-ref');
  const child = spawn(path.join(venv, 'bin/transformers'), ['serve', dir, '--port', String(port), '--device', 'cpu', '--dtype', 'float32',
    continuous ? '--continuous-batching' : '--no-continuous-batching'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.on('data', (d: Buffer) => { log = (log + d.toString()).slice(-4000); });
  for (let i = 0; i < 240; i++) {
    if (child.exitCode !== null) throw new Error(`transformers serve exited (${child.exitCode}): ${log}`);
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) return child;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  child.kill();
  throw new Error(`transformers serve did not answer /health in 120 s: ${log}`);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const arg = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const backend = await setBackend(arg('--backend', 'tensorflow'));
  const config = benchConfig(arg('--config', 'minitron-small'));
  const promptLength = Number(arg('--prompt', '32'));
  const newTokens = Number(arg('--new', '64'));
  const clientCounts = arg('--clients', '1,4,8,16').split(',').map(Number);
  const model = new NemotronForCausalLM(new NemotronConfig(config.fields));
  const vocabulary = wordVocabulary(model.config.vocabSize);
  const tokenizer = await NemotronTokenizer.fromJSON(vocabulary, { unk_token: 'w0' });
  const prompts = Array.from({ length: Math.max(...clientCounts) }, (_, c) =>
    Array.from({ length: promptLength }, (_, i) => `w${(c * 7919 + i * 104729 + 13) % model.config.vocabSize}`).join(' '));

  const rows: Row[] = [];
  const texts = new Map<string, string[]>();
  const failures: string[] = [];
  const measure = async (server: string, url: string, modelId: string, peakRows: () => number, resetPeak: () => void) => {
    // Warm-up: kernels, and the compiled decoding step, which the native backend builds once per batch size.
    await round(url, modelId, prompts, newTokens);
    for (const clients of clientCounts) {
      resetPeak();
      const start = performance.now();
      const results = await round(url, modelId, prompts.slice(0, clients), newTokens);
      const seconds = (performance.now() - start) / 1000;
      const tokens = results.reduce((s, r) => s + r.tokens, 0);
      if (clients === Math.max(...clientCounts)) texts.set(server, results.map((r) => r.text));
      const row: Row = {
        clients, server, seconds, tokens, tokensPerSecond: tokens / seconds,
        meanLatency: results.reduce((s, r) => s + r.latency, 0) / clients, maxLatency: Math.max(...results.map((r) => r.latency)),
        peakRows: peakRows(),
      };
      rows.push(row);
      console.log(`${server} · ${clients} clients: ${tokens} tokens in ${seconds.toFixed(2)} s = ${row.tokensPerSecond.toFixed(1)} tok/s · ` +
        `latency mean ${row.meanLatency.toFixed(2)} s, max ${row.maxLatency.toFixed(2)} s${row.peakRows ? ` · peak rows ${row.peakRows}` : ''}`);
    }
  };
  for (const batching of [true, false]) {
    const batcher = new ContinuousBatcher(model, batching ? 16 : 1);
    const server = createOpenAIServer(model, tokenizer, { modelId: config.name, batcher, maxRows: 16 });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    await measure(batching ? `nemotron-tfjs (${backend}), continuous batching` : `nemotron-tfjs (${backend}), one row at a time`,
      `${serverAddress(server)}/v1/completions`, config.name, () => batcher.stats.peakRows, () => { batcher.stats.peakRows = 0; });
    await new Promise((resolve) => server.close(resolve));
  }
  let torchVersions = '';
  if (argv.includes('--torch')) {
    const venv = process.env.NEMOTRON_REF_VENV ?? path.resolve(__dirname, '../../.venv-ref');
    torchVersions = spawnSync(path.join(venv, 'bin/python'), ['-c', 'import torch, transformers; print(f"transformers {transformers.__version__}, torch {torch.__version__}")'],
      { encoding: 'utf8' }).stdout?.trim() ?? '';
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nemotron-serve-bench-'));
    try {
      await model.savePretrained(dir);
      fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(vocabulary));
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ tokenizer_class: 'PreTrainedTokenizerFast', unk_token: 'w0' }));
      for (const continuous of [false, true]) {
        const port = 18000 + Math.floor(Math.random() * 1000);
        const child = await startTransformersServe(dir, port, continuous);
        const name = `transformers serve (torch), ${continuous ? 'continuous batching' : 'no batching'}`;
        try {
          await measure(name, `http://127.0.0.1:${port}/v1/completions`, dir, () => 0, () => undefined);
        } catch (e) {
          // Its continuous batching needs paged-attention kernels that torch's CPU build may lack: say so, keep the rest.
          failures.push(`${name}: ${(e as Error).message.slice(0, 300)}`);
          console.log(`${name}: failed: ${(e as Error).message}`);
        } finally {
          child.kill('SIGINT');
          await new Promise((resolve) => child.once('exit', resolve));
        }
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const eosId = model.config.eosTokenId;
  model.dispose();
  // Greedy on the same weights: the texts should agree (a near-tie may flip a token between float32 implementations).
  const ours = texts.get(`nemotron-tfjs (${backend}), continuous batching`)!;
  // transformers serve writes the EOS id's word where it ends (this vocabulary does not mark it special); ours stops before it.
  const eosWord = new RegExp(`\\s*\\bw${eosId}$`);
  const agreement = [...texts.entries()].map(([server, list]) =>
    `${server}: ${list.filter((t, i) => t.replace(eosWord, '') === ours[i]).length} of ${list.length} texts equal to ours`);
  agreement.forEach((line) => console.log(line));
  if (process.env.SERVE_BENCH_DEBUG) for (const [server, list] of texts) console.log(server, JSON.stringify(list));

  const machine = machineInfo();
  const date = new Date().toISOString().slice(0, 10);
  const out = arg('--out', '');
  if (out) {
    // A later run of the same day gets the next -runN name rather than replacing an earlier one.
    const stem = path.join(out, `serve-${config.name}-${date}`);
    let base = stem;
    for (let run = 1; fs.existsSync(`${base}.md`) || fs.existsSync(`${stem}-run${run}.md`); run++) base = `${stem}-run${run + 1}`;
    const table = rows.map((r) => `| ${r.clients} | ${r.server} | ${r.tokens} | ${r.seconds.toFixed(2)} | ` +
      `${r.tokensPerSecond.toFixed(1)} | ${r.meanLatency.toFixed(2)} | ${r.maxLatency.toFixed(2)} | ${r.peakRows || '–'} |`);
    fs.writeFileSync(`${base}.json`, JSON.stringify({ config: config.name, backend, promptLength, newTokens, machine, date, rows, agreement, failures }, null, 1));
    fs.writeFileSync(`${base}.md`, [
      `# serve: ${config.name} on ${backend}, ${date}`, '',
      `Machine: ${machine.cpu}, ${machine.cores} cores, ${(machine.ram_bytes / 2 ** 30).toFixed(0)} GiB (${machine.arch}, ${machine.os}).`,
      `Each client: one /v1/completions request, a ${promptLength}-token prompt, max_tokens ${newTokens}, temperature 0, all sent at once, after a`,
      `warm-up round of ${prompts.length} clients (the native backend compiles its decoding step once per batch size).`,
      'Prompts are text of the word-level vocabulary (transformers serve takes no token ids).',
      '`node dist/benchmarks/serve.js` (random weights; tokens stop early where the model writes its EOS id).', '',
      '| clients | server | tokens | wall s | tok/s (all clients) | mean latency s | max latency s | peak rows |',
      '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |', ...table, '',
      `Greedy texts of the ${prompts.length}-client round: ${agreement.join('; ')}.`, '',
      ...failures.map((f) => `Failed: ${f}`), ...(failures.length ? [''] : []),
      ...(torchVersions ? [`Reference: ${torchVersions} (CPU, float32).`, ''] : []),
    ].join('\n'));
    console.log(`wrote ${base}.md and .json`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
