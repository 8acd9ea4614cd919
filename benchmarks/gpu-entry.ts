/**
 * The device run for WebGPU (Dawn) on the lent GPU machine: parity with the HF fixtures (every head, greedy
 * generation, gradients) and the benchmark (minitron-small and a Minitron-4B shape), results under $OUT.
 * Bundled by scripts/gpu-prepare.sh (which also copies the fixtures into .device/fixtures); run there as
 *   bash .device/run.sh [--skip-parity] [--skip-bench] [--configs minitron-small,minitron-4b]
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { NemotronConfig, NemotronForCausalLM, generate, setBackend } from '../src/index';
import { fixtureParity } from '../test/webgpu/fixture-parity';
import { benchConfig } from './configs';

const OUT = process.env.OUT ?? '/tmp';
// run.sh starts the bundle (an ES module, no __dirname) inside .device/, beside the fixtures.
const FIXTURES = path.resolve(process.env.NEMOTRON_FIXTURES ?? 'fixtures');
const results: Record<string, unknown> = { started: new Date().toISOString() };
const save = () => fs.writeFileSync(path.join(OUT, 'gpu-results.json'), JSON.stringify(results, null, 2));
const log = (m: string) => { process.stdout.write(`${m}\n`); };

async function setUpWebGPU(): Promise<void> {
  // navigator.gpu must exist before tfjs-backend-webgpu is imported, or the backend never registers.
  const dawn = await import('webgpu') as unknown as { create(flags: string[]): unknown; globals: object };
  Object.assign(globalThis, dawn.globals);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu: dawn.create([]) }, configurable: true, writable: true });
  await import('@tensorflow/tfjs-backend-webgpu');
  await setBackend('webgpu');
  results.adapter = String((tf.backend() as unknown as { adapterInfo?: { vendor?: string; architecture?: string } }).adapterInfo?.architecture ?? 'webgpu');
}

async function bench(name: string): Promise<Record<string, number>> {
  const config = new NemotronConfig({ ...benchConfig(name).fields, padTokenId: 0 });
  const model = new NemotronForCausalLM(config); // random weights, created on the GPU
  const r: Record<string, number> = { parameters: model.numParameters() };
  const ids = (b: number, n: number) => Array.from({ length: b }, (_, i) => Array.from({ length: n }, (_, j) => 4 + ((i * 131 + j * 7) % (config.vocabSize - 4))));
  const time = async (f: () => Promise<void> | void) => { const t = performance.now(); await f(); return (performance.now() - t) / 1000; };
  const prefill = Math.min(2048, config.maxPositionEmbeddings - 64);
  const forwardLast = async () => { const o = model.forward({ inputIds: ids(1, prefill), logitsToKeep: 1 }); await o.logits.data(); o.logits.dispose(); };
  await forwardLast(); // warm-up: shader compilation
  r.prefillTokens = prefill;
  r.prefillTokensPerSecond = prefill / await time(forwardLast);
  for (const b of [1, 16]) {
    const steps = 32;
    await generate(model, ids(b, 8), { maxNewTokens: 4, eosTokenId: null });
    const seconds = await time(async () => { await generate(model, ids(b, 8), { maxNewTokens: steps, eosTokenId: null }); });
    r[`decodeBatch${b}TokensPerSecond`] = (steps * b) / seconds;
  }
  const trainIds = ids(1, 128);
  const params = [...model.namedParameters().values()];
  const step = async () => {
    const { value, grads } = tf.variableGrads(() => model.forward({ inputIds: trainIds, labels: trainIds }).loss!, params);
    await value.data();
    tf.dispose([value, ...Object.values(grads)]);
  };
  await step();
  r.trainTokensPerSecond = 128 / await time(step);
  model.dispose();
  return r;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const configs = (argv.includes('--configs') ? argv[argv.indexOf('--configs') + 1] : 'minitron-small,minitron-4b').split(',');
  await setUpWebGPU();
  tf.env().set('PROD', true);
  log(`backend ${tf.getBackend()}, adapter ${results.adapter}`);
  if (!argv.includes('--skip-parity')) {
    for (const name of ['tiny-gqa', 'tiny-mha-bias']) {
      try {
        results[`parity.${name}`] = await fixtureParity(path.join(FIXTURES, name));
      } catch (e) {
        results[`parity.${name}`] = { error: (e as Error).stack ?? String(e) };
      }
      log(`parity ${name}: ${JSON.stringify(results[`parity.${name}`])}`);
      save();
    }
  }
  if (!argv.includes('--skip-bench')) {
    for (const name of configs) {
      try {
        results[`bench.${name}`] = await bench(name);
      } catch (e) {
        results[`bench.${name}`] = { error: (e as Error).stack ?? String(e) };
      }
      log(`bench ${name}: ${JSON.stringify(results[`bench.${name}`])}`);
      save();
    }
  }
  results.finished = new Date().toISOString();
  save();
}

main().catch((e) => { log(`error: ${(e as Error).stack}`); results.error = String(e); save(); process.exit(1); });
