/**
 * The device run for WebGPU (Dawn) on the lent GPU machine: parity with the HF fixtures (every head, greedy
 * generation, gradients) and the benchmark (minitron-small and a Minitron-4B shape), results under $OUT.
 * Bundled by scripts/gpu-prepare.sh (which also copies the fixtures into .device/fixtures); run there as
 *   bash .device/run.sh [--skip-parity] [--skip-bench] [--configs minitron-small,minitron-4b]
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import {
  NemotronConfig, NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification,
  NemotronForTokenClassification, NemotronModel, SafetensorsFile, generate, setBackend,
} from '../src/index';
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

function maxDiff(actual: tf.Tensor, file: SafetensorsFile, key: string): number {
  const r = file.read(key);
  return tf.tidy(() => tf.max(tf.abs(tf.sub(actual, tf.tensor(r.data, r.shape)))).dataSync()[0]);
}

async function parity(name: string): Promise<Record<string, number | boolean>> {
  const dir = path.join(FIXTURES, name);
  const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
  const ref = SafetensorsFile.open(path.join(dir, 'expected.safetensors'));
  const inputs = { inputIds: exp.input_ids, attentionMask: exp.attention_mask };
  const r: Record<string, number | boolean> = {};
  const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

  const base = await NemotronModel.fromPretrained(path.join(dir, 'causal-lm'), { quiet: true });
  const b = base.forward({ ...inputs, outputHiddenStates: true, outputAttentions: true });
  r.hiddenStates = Math.max(...b.hiddenStates!.map((h, i) => maxDiff(h, ref, `base.hidden_states.${i}`)));
  r.attentions = Math.max(...b.attentions!.map((a, i) => maxDiff(a, ref, `base.attentions.${i}`)));
  tf.dispose([b.lastHiddenState, ...b.hiddenStates!, ...b.attentions!]);
  base.dispose();

  const causal = await NemotronForCausalLM.fromPretrained(path.join(dir, 'causal-lm'));
  const batch = { ...inputs, labels: exp.causal_labels };
  const c = causal.forward(batch);
  r.causalLogits = maxDiff(c.logits, ref, 'causal.logits');
  r.causalLossRel = rel(c.loss!.dataSync()[0], exp.causal_loss);
  tf.dispose([c.logits, c.loss!]);
  const params = causal.namedParameters();
  const { value, grads } = tf.variableGrads(() => causal.forward(batch).loss!, [...params.values()]);
  let worst = -Infinity;
  for (const [pname, v] of params) {
    const g = ref.read(`causal.grad.${pname}`);
    worst = Math.max(worst, tf.tidy(() => {
      const t = tf.tensor(g.data, g.shape);
      return tf.max(tf.sub(tf.abs(tf.sub(grads[v.name], t)), tf.maximum(1e-4, tf.mul(1e-3, tf.abs(t))))).dataSync()[0];
    }));
  }
  r.gradientsWithinTolerance = worst <= 0;
  r.gradientExcess = worst;
  tf.dispose([value, ...Object.values(grads)]);
  const single = await generate(causal, exp.gen_single_prompt, { maxNewTokens: 8, eosTokenId: null, outputScores: true });
  r.genSingleExact = JSON.stringify(single.sequences) === JSON.stringify(exp.gen_single_output);
  const batched = await generate(causal, exp.gen_batch_prompt, { attentionMask: exp.gen_batch_mask, maxNewTokens: 6, eosTokenId: null, padTokenId: 0 });
  r.genBatchExact = JSON.stringify(batched.sequences) === JSON.stringify(exp.gen_batch_output);
  causal.dispose();

  for (const v of ['single', 'multi', 'regression']) {
    const m = await NemotronForSequenceClassification.fromPretrained(path.join(dir, `seqcls-${v}`));
    const o = m.forward({ ...inputs, labels: exp[`seqcls_${v}_labels`] });
    r[`seqcls_${v}_logits`] = maxDiff(o.logits, ref, `seqcls.${v}.logits`);
    r[`seqcls_${v}_lossRel`] = rel(o.loss!.dataSync()[0], exp[`seqcls_${v}_loss`]);
    tf.dispose([o.logits, o.loss!]);
    m.dispose();
  }
  const qa = await NemotronForQuestionAnswering.fromPretrained(path.join(dir, 'qa'));
  const q = qa.forward({ ...inputs, startPositions: exp.qa_start_positions, endPositions: exp.qa_end_positions });
  r.qaLogits = Math.max(maxDiff(q.startLogits, ref, 'qa.start_logits'), maxDiff(q.endLogits, ref, 'qa.end_logits'));
  r.qaLossRel = rel(q.loss!.dataSync()[0], exp.qa_loss);
  tf.dispose([q.startLogits, q.endLogits, q.loss!]);
  qa.dispose();
  const tok = await NemotronForTokenClassification.fromPretrained(path.join(dir, 'tokcls'));
  const t = tok.forward({ ...inputs, labels: exp.tokcls_labels });
  r.tokclsLogits = maxDiff(t.logits, ref, 'tokcls.logits');
  r.tokclsLossRel = rel(t.loss!.dataSync()[0], exp.tokcls_loss);
  tf.dispose([t.logits, t.loss!]);
  tok.dispose();
  ref.close();
  const logitKeys = Object.keys(r).filter((k) => /Logits|logits|hiddenStates|attentions/.test(k));
  const lossKeys = Object.keys(r).filter((k) => k.endsWith('LossRel') || k.endsWith('lossRel'));
  r.pass = logitKeys.every((k) => (r[k] as number) <= 1e-4) && lossKeys.every((k) => (r[k] as number) <= 1e-5)
    && r.gradientsWithinTolerance === true && r.genSingleExact === true && r.genBatchExact === true;
  return r;
}

async function bench(name: string): Promise<Record<string, number>> {
  const config = new NemotronConfig({ ...benchConfig(name).fields, padTokenId: 0 });
  const model = new NemotronForCausalLM(config); // random weights, created on the GPU
  const r: Record<string, number> = { parameters: model.numParameters() };
  const ids = (b: number, n: number) => Array.from({ length: b }, (_, i) => Array.from({ length: n }, (_, j) => 4 + ((i * 131 + j * 7) % (config.vocabSize - 4))));
  const time = async (f: () => Promise<void> | void) => { const t = performance.now(); await f(); return (performance.now() - t) / 1000; };
  const prefill = Math.min(2048, config.maxPositionEmbeddings - 64);
  const forwardLast = () => { const o = model.forward({ inputIds: ids(1, prefill), logitsToKeep: 1 }); o.logits.dataSync(); o.logits.dispose(); };
  forwardLast(); // warm-up: shader compilation
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
  const step = () => {
    const { value, grads } = tf.variableGrads(() => model.forward({ inputIds: trainIds, labels: trainIds }).loss!, params);
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
  };
  step();
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
        results[`parity.${name}`] = await parity(name);
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
