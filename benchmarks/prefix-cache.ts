/**
 * What automatic prefix caching saves: a chat's next turn, whose prompt is the whole first turn plus a short message,
 * through the continuous batcher with and without kept prefixes. Reports the time to the first token of the second
 * turn (its prompt pass) and of the whole turn.
 *
 *   node dist/benchmarks/prefix-cache.js [--backend tensorflow] [--config minitron-small] [--history 1024] [--out DIR]
 */
import * as fs from 'fs';
import * as path from 'path';
import { ContinuousBatcher, NemotronConfig, NemotronForCausalLM, rowDecoding, setBackend } from '../src/index';
import { benchConfig, machineInfo } from './configs';

async function turn(batcher: ContinuousBatcher, model: NemotronForCausalLM, prompt: number[], newTokens: number): Promise<{ tokens: number[]; firstMs: number; totalMs: number }> {
  const tokens: number[] = [];
  const start = performance.now();
  let first = 0;
  await batcher.generate({
    prompt, decoding: rowDecoding(model, prompt, { maxNewTokens: newTokens, doSample: false, eosTokenId: null }),
    onToken: (token) => {
      if (tokens.length === 0) first = performance.now() - start;
      tokens.push(token);
      return true;
    },
  });
  return { tokens, firstMs: first, totalMs: performance.now() - start };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const arg = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const backend = await setBackend(arg('--backend', 'tensorflow'));
  const config = benchConfig(arg('--config', 'minitron-small'));
  const history = Number(arg('--history', '1024'));
  const model = new NemotronForCausalLM(new NemotronConfig(config.fields));
  const vocab = model.config.vocabSize;
  const firstPrompt = Array.from({ length: history }, (_, i) => (i * 7919 + 13) % vocab);
  const lines: string[] = [];
  const log = (line: string) => { lines.push(line); console.log(line); };
  const results: Record<string, { firstMs: number; totalMs: number }> = {};
  let reference: number[] | null = null;
  // Warm-up: kernels and the compiled decoding step.
  await turn(new ContinuousBatcher(model, { maxRows: 1 }), model, firstPrompt.slice(0, 64), 4);
  for (const kept of [0, 16384]) {
    const batcher = new ContinuousBatcher(model, { maxRows: 4, prefixCacheTokens: kept, prefillChunkTokens: 4096 });
    const one = await turn(batcher, model, firstPrompt, 16);
    const nextPrompt = [...firstPrompt, ...one.tokens, ...Array.from({ length: 24 }, (_, i) => (i * 104729 + 7) % vocab)];
    const two = await turn(batcher, model, nextPrompt, 16);
    if (reference && JSON.stringify(reference) !== JSON.stringify(two.tokens)) throw new Error('the cached turn decoded differently');
    reference = two.tokens;
    results[kept ? 'kept' : 'off'] = two;
    batcher.prefixCache?.dispose();
  }
  const machine = machineInfo();
  log(`# Prefix caching: a chat's second turn (${config.name}, ${backend} backend)`);
  log('');
  log(`Machine: ${machine.cpu}, ${machine.cores} cores, ${(machine.ram_bytes / 2 ** 30).toFixed(0)} GB; node ${process.version}. Random weights.`);
  log(`First turn: a ${history}-token prompt, 16 new tokens; second turn: all of it and 24 more tokens (${history + 16 + 24} tokens), 16 new tokens, greedy.`);
  log('');
  log('| prefix cache | second turn: first token | whole turn (16 tokens) |');
  log('| --- | ---: | ---: |');
  for (const [name, r] of Object.entries(results)) log(`| ${name === 'kept' ? 'on (16,384 tokens)' : 'off'} | ${(r.firstMs / 1000).toFixed(3)} s | ${(r.totalMs / 1000).toFixed(3)} s |`);
  log('');
  log('The second turn decoded the same 16 tokens either way.');
  const out = arg('--out', '');
  if (out) {
    const file = path.join(out, `prefix-cache-${config.name}-${new Date().toISOString().slice(0, 10)}.md`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    console.log(`wrote ${file}`);
  }
  model.dispose();
}

void main();
