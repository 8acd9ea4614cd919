/**
 * The device run for WebGPU (Dawn) on the lent GPU machine: the machine's facts (limits, the cost of one dispatch,
 * matrix-vector rates), parity with the HF fixtures (every head, greedy generation, gradients) and the benchmark
 * (minitron-small and a Minitron-4B shape: prefill, decode at batch 1 and 16 with the fused kernels on and off, where
 * a decoding step's time goes, a training step), results under $OUT.
 * Bundled by scripts/gpu-prepare.sh (which also copies the fixtures into .device/fixtures); run there as
 *   bash .device/run.sh [--skip-parity] [--skip-bench] [--skip-micro] [--skip-long-train] [--configs minitron-small,minitron-4b]
 *                       [--skip-nemotron-h] [--nemotron-h nemotron-h-8b]
 * (then NemotronH: parity with transformers on its fixture, and a Nemotron-H-8B shape's prefill and decoding.)
 * (--quick: small products in the micro-benchmarks; --layers N, --prefill N, --decode-batches 1,16: a smaller model, prompt
 * and decode batches; for a check on a software driver, as test/webgpu/gpu-entry.test.ts does.)
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { AdamW, DECODE_STEP_KERNEL, KVCache, LoraModel, ROTARY_KERNEL, NemotronConfig, NemotronForCausalLM, NemotronHConfig, NemotronHForCausalLM, generate, setBackend, useFusedKernels } from '../src/index';
import { nemotronHDecoder } from '../src/generation/decoder';
import {
  LAYERNORM1P_GRAD_KERNEL, LINEAR_KERNEL, MLP_KERNEL, NEMOTRON_H_MAMBA_STEP_KERNEL, RMS_NORM_KERNEL, TILED_PRODUCT_KERNEL, TRANSPOSED_PRODUCT_KERNEL,
} from '../src/kernels/fused';
import { FEW_ROWS, setVectorizedFewRows } from '../src/kernels/webgpu-kernels';
import { setDecodeNormPrologue } from '../src/kernels/webgpu-decode';
import { linear, withDeferredInit } from '../layers/weights';
import { fixtureParity, loraParity, nemotronHParity } from '../test/fixture-parity';
import { benchConfig } from './configs';

const OUT = process.env.OUT ?? '/tmp';
// run.sh starts the bundle (an ES module, no __dirname) inside .device/, beside the fixtures.
const FIXTURES = path.resolve(process.env.NEMOTRON_FIXTURES ?? 'fixtures');
const results: Record<string, unknown> = { started: new Date().toISOString() };
/** Both files after every figure: a run cut short by the device's time limit still brings back its summary. */
const save = () => {
  fs.writeFileSync(path.join(OUT, 'gpu-results.json'), JSON.stringify(results, null, 2));
  fs.writeFileSync(path.join(OUT, 'gpu-results.md'), summary());
};
const started = performance.now();
const log = (m: string) => { process.stdout.write(`[${((performance.now() - started) / 1000).toFixed(1)} s] ${m}\n`); };
const round = (x: number, digits = 2) => Number(x.toFixed(digits));

async function setUpWebGPU(): Promise<void> {
  // navigator.gpu must exist before tfjs-backend-webgpu is imported, or the backend never registers.
  // allow_unsafe_apis: timestamp queries, so that tf.profile reports GPU time per kernel.
  const dawn = await import('webgpu') as unknown as { create(flags: string[]): unknown; globals: object };
  Object.assign(globalThis, dawn.globals);
  Object.defineProperty(globalThis, 'navigator', {
    value: { gpu: dawn.create(['enable-dawn-features=allow_unsafe_apis']) }, configurable: true, writable: true,
  });
  await import('@tensorflow/tfjs-backend-webgpu');
  await setBackend('webgpu');
  const backend = tf.backend() as unknown as {
    adapterInfo?: Record<string, unknown>; device: { limits: Record<string, number>; features: Set<string> }; supportTimestampQuery?: boolean;
  };
  const limits: Record<string, number> = {};
  for (const key of ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeWorkgroupStorageSize', 'maxComputeWorkgroupsPerDimension']) {
    limits[key] = backend.device.limits[key];
  }
  bindingLimit = limits.maxStorageBufferBindingSize;
  results.adapter = { ...(backend.adapterInfo ?? {}), limits, features: [...backend.device.features], timestampQuery: backend.supportTimestampQuery };
}

/** Largest buffer one kernel may bind: a weight above it cannot be read by a shader (Dawn only reports it asynchronously). */
let bindingLimit = Infinity;

/** Seconds taken by f (which awaits its own results). */
async function time(f: () => Promise<unknown> | unknown): Promise<number> {
  const t = performance.now();
  await f();
  return (performance.now() - t) / 1000;
}

/** The cost of one small dispatch, and matrix-vector rates of tfjs's matMul against the few-rows kernel. */
async function micro(quick: boolean): Promise<Record<string, unknown>> {
  const r: Record<string, unknown> = {};
  const x = tf.fill([1, 3072], 0.5);
  const chain = async (n: number) => {
    let y: tf.Tensor = x;
    for (let i = 0; i < n; i++) {
      const next = tf.relu(y);
      if (y !== x) y.dispose();
      y = next;
    }
    await y.data();
    y.dispose();
  };
  await chain(20);
  r.dispatchMicroseconds = round(1e6 * (await time(() => chain(500))) / 500, 1);
  const scalar = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const y = tf.add(x, i + 0.5); // a JS number becomes a new tensor every call
      await y.data();
      y.dispose();
    }
  };
  await scalar(3);
  r.scalarUploadAndReadMicroseconds = round(1e6 * (await time(() => scalar(50))) / 50, 1);
  x.dispose();
  // [rows, in, out]: the decode products of the Minitron-4B shape and its output projection.
  // And two prefill products (2,048 rows), where the kernel multiplies weight first, (W·xᵀ)ᵀ.
  const shapes: Array<[number, number, number]> = quick ? [[1, 64, 96], [3, 64, 70000], [64, 64, 96], [300, 64, 600]] : [[1, 3072, 3072], [1, 3072, 1024],
    [1, 3072, 9216], [1, 9216, 3072], [16, 3072, 9216], [1, 3072, 256000], [2048, 3072, 9216], [2048, 9216, 3072]];
  const rates: Record<string, unknown> = {};
  for (const [rows, inF, outF] of shapes) {
    if (4 * inF * outF > bindingLimit) {
      rates[`${rows}x${inF}x${outF}`] = `skipped: ${4 * inF * outF} bytes of weight > maxStorageBufferBindingSize ${bindingLimit}`;
      continue;
    }
    const a = tf.fill([rows, inF], 0.01);
    const w = tf.fill([outF, inF], 0.02);
    const reps = outF > 100000 || rows > 16 ? 10 : 50;
    const entry: Record<string, number> = {};
    const variants: Array<[string, () => tf.Tensor, string[], boolean]> = [
      ['tfjsMatMul', () => tf.matMul(a, w, false, true), [], true],
      ['linearKernel', () => linear(a, w), [], true],
      // Many rows: the tiled product above; weight first here. Few rows: vec4 reads above; one float at a time here.
      rows > FEW_ROWS ? ['weightFirst', () => linear(a, w), [TILED_PRODUCT_KERNEL], true] : ['fewRowsScalar', () => linear(a, w), [], false],
    ];
    for (const [name, f, off, vectorized] of variants) {
      useFusedKernels(false, off);
      setVectorizedFewRows(vectorized);
      const run = async (n: number) => {
        const outs: tf.Tensor[] = [];
        for (let i = 0; i < n; i++) outs.push(f());
        await outs[n - 1].data();
        tf.dispose(outs);
      };
      await run(2);
      const seconds = await time(() => run(reps));
      entry[`${name}GBps`] = round((reps * outF * inF * 4) / seconds / 1e9, 1);
      entry[`${name}TFLOPs`] = round((reps * 2 * rows * outF * inF) / seconds / 1e12, 2);
      entry[`${name}Ms`] = round((1000 * seconds) / reps, 3);
      useFusedKernels(true);
      setVectorizedFewRows(true);
    }
    rates[`${rows}x${inF}x${outF}`] = entry;
    tf.dispose([a, w]);
  }
  r.matrixVector = rates;
  return r;
}

/**
 * Random weights made on the GPU: a few rows drawn on the CPU, tiled to the weight's height, each row scaled by
 * its own draw. Drawing 4 billion normals in JavaScript would take minutes; the products cost the same either way.
 */
function randomWeightsOnGPU(weights: Iterable<tf.Variable>, stddev: number): void {
  let seed = 1;
  for (const v of weights) {
    if (v.rank < 2) continue; // norms and biases keep their init
    // [rows, cols] with cols the last axis (a stack of experts is rows of its matrices).
    const cols = v.shape[v.rank - 1] as number;
    const rows = v.size / cols;
    const block = Math.min(rows, 61);
    tf.tidy(() => {
      const drawn = tf.randomNormal([block, cols], 0, stddev, 'float32', seed++);
      const tiled = tf.tile(drawn, [Math.ceil(rows / block), 1]).slice([0, 0], [rows, cols]);
      const scale = tf.randomUniform([rows, 1], 0.5, 1.5, 'float32', seed++);
      v.assign(tf.mul(tiled, scale).reshape(v.shape));
    });
  }
}

/**
 * NemotronH shapes: Nemotron-H-8B's (52 layers: 24 Mamba-2, 24 MLP, 4 attention; 8.1 B parameters, 32 GB in
 * float32) and, for a check on a software driver, a tiny one.
 */
function nemotronHShape(name: string): NemotronHConfig {
  if (name === 'nemotron-h-tiny') {
    return new NemotronHConfig({
      vocabSize: 256, hiddenSize: 64, layerTypes: ['mamba', 'mlp', 'attention', 'mamba'], mambaNumHeads: 4, mambaHeadDim: 16, nGroups: 2, ssmStateSize: 16,
      convKernel: 4, chunkSize: 16, numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 16, intermediateSize: 128, maxPositionEmbeddings: 512,
    });
  }
  if (name !== 'nemotron-h-8b') throw new Error(`--nemotron-h ${name}: expected nemotron-h-8b or nemotron-h-tiny`);
  const block = (attention: boolean) => [...(['mamba', 'mlp', 'mamba', 'mlp', 'mamba', 'mlp'] as const), ...(attention ? ['attention'] as const : [])];
  const layerTypes = [...Array.from({ length: 4 }, () => block(true)).flat(), ...Array.from({ length: 4 }, () => block(false)).flat()];
  return new NemotronHConfig({
    vocabSize: 131072, hiddenSize: 4096, layerTypes, mambaNumHeads: 128, mambaHeadDim: 64, nGroups: 8, ssmStateSize: 128, convKernel: 4, chunkSize: 128,
    numAttentionHeads: 32, numKeyValueHeads: 8, headDim: 128, intermediateSize: 21504, maxPositionEmbeddings: 8192,
  });
}

/** NemotronH on WebGPU: a prompt pass, and decoding (the library's decoder with the Mamba-2 step kernel; batch 1 without it too). */
async function benchNemotronH(name: string, r: Record<string, unknown>): Promise<void> {
  const config = nemotronHShape(name);
  const model = withDeferredInit(() => new NemotronHForCausalLM(config));
  try {
    randomWeightsOnGPU(model.weights.values(), 0.02);
    // The 1-D weights (norms, D, Δt bias, A_log): away from the zeros of the deferred init.
    for (const v of model.weights.values()) if (v.rank === 1) tf.tidy(() => v.assign(tf.randomUniform(v.shape, 0.5, 1.5)));
    r.parameters = model.numParameters();
    r.pattern = config.layerTypes.map((t) => ({ mamba: 'M', attention: '*', mlp: '-', moe: 'E' })[t]).join('');
    const prefill = flag('--prefill') ?? (name === 'nemotron-h-tiny' ? 64 : 2048);
    const prompt = [Array.from({ length: prefill }, (_, i) => (i * 7919 + 3) % config.vocabSize)];
    const pass = async () => {
      const { logits } = model.forward({ inputIds: prompt, logitsToKeep: 1 });
      await logits.data();
      logits.dispose();
    };
    r.prefillFirstSeconds = round(await time(pass), 3); // the shaders of these shapes are compiled here
    r.prefillTokensPerSecond = round(prefill / await time(pass), 1);
    log(`${name}: prefill ${prefill} tokens ${r.prefillTokensPerSecond} tok/s`);
    save();
    const batches = argv.includes('--decode-batches') ? argv[argv.indexOf('--decode-batches') + 1].split(',').map(Number) : [1, 16];
    // Batch 1 also with tfjs's plain ops (no Mamba-2 kernel, RMS norm, fused MLP or products): what the kernels save.
    for (const [batch, variant] of [...batches.map((b) => [b, ''] as const), [1, 'PlainOps'] as const]) {
      useFusedKernels(variant === '', [NEMOTRON_H_MAMBA_STEP_KERNEL, RMS_NORM_KERNEL, MLP_KERNEL, LINEAR_KERNEL]);
      const decoder = nemotronHDecoder(model);
      const rows = Array.from({ length: batch }, (_, b) => Array.from({ length: 16 }, (_, i) => (i * 31 + b * 7 + 5) % config.vocabSize));
      const mask = rows.map((row) => row.map(() => 1));
      const next = async (first: boolean) => {
        const logits = decoder.next(rows, mask, first);
        const ids = tf.tidy(() => tf.argMax(logits.reshape([batch, -1]), -1));
        logits.dispose();
        const chosen = await ids.data();
        ids.dispose();
        rows.forEach((row, b) => { row.push(chosen[b]); mask[b].push(1); });
      };
      try {
        for (const first of [true, false, false]) await next(first); // the step's shaders
        const steps = 32;
        r[`decodeBatch${batch}TokensPerSecond${variant}`] = round(steps * batch / await time(async () => { for (let s = 0; s < steps; s++) await next(false); }), 1);
      } finally {
        decoder.dispose();
        useFusedKernels(true);
      }
      log(`${name}: decode batch ${batch} ${variant} ${r[`decodeBatch${batch}TokensPerSecond${variant}`]} tok/s`);
      save();
    }
  } finally {
    model.dispose();
  }
}

/** Overrides for a quick check of the code paths (a software driver): --layers N, --vocab N, --prefill N. */
const argv = process.argv.slice(2);
const flag = (name: string) => (argv.includes(name) ? Number(argv[argv.indexOf(name) + 1]) : undefined);

/** Benchmarks one configuration into `r` (results[`bench.NAME`]: every save() keeps what is measured so far). */
async function bench(name: string, r: Record<string, unknown>): Promise<void> {
  const [layers, vocab] = [flag('--layers'), flag('--vocab')];
  const config = new NemotronConfig({
    ...benchConfig(name).fields, ...(layers ? { numHiddenLayers: layers } : {}), ...(vocab ? { vocabSize: vocab } : {}), padTokenId: 0,
  });
  const model = withDeferredInit(() => new NemotronForCausalLM(config));
  r.initSeconds = round(await time(async () => {
    randomWeightsOnGPU(model.namedParameters().values(), config.initializerRange);
    const probe = model.namedParameters().values().next().value!.slice([0, 0], [1, 1]);
    await probe.data();
    probe.dispose();
  }));
  r.parameters = model.numParameters();
  r.embeddingBlocks = model.model.embedding.blocks.length;
  log(`${name}: ${r.parameters} parameters on the GPU in ${r.initSeconds} s`);
  const ids = (b: number, n: number) => Array.from({ length: b }, (_, i) => Array.from({ length: n }, (_, j) => 4 + ((i * 131 + j * 7) % (config.vocabSize - 4))));
  const prefill = flag('--prefill') ?? Math.min(2048, config.maxPositionEmbeddings - 64);
  const forwardLast = async () => { const o = model.forward({ inputIds: ids(1, prefill), logitsToKeep: 1 }); await o.logits.data(); o.logits.dispose(); };
  await forwardLast(); // warm-up: shader compilation
  r.prefillTokens = prefill;
  r.prefillTokensPerSecond = round(prefill / await time(forwardLast));
  // Without the tiled product: x·Wᵀ weight first, (W·xᵀ)ᵀ, and Q·Kᵀ with Kᵀ made explicit (each on tfjs's vec4 matMul);
  // then tfjs's own matMul with a transposed operand for both.
  useFusedKernels(false, [TILED_PRODUCT_KERNEL]);
  await forwardLast();
  r.prefillTokensPerSecondWithoutTiledProduct = round(prefill / await time(forwardLast));
  useFusedKernels(false, [LINEAR_KERNEL, TRANSPOSED_PRODUCT_KERNEL]);
  await forwardLast();
  r.prefillTokensPerSecondWithoutProductKernels = round(prefill / await time(forwardLast));
  useFusedKernels(true);
  log(`${name}: prefill ${r.prefillTokensPerSecond} tok/s (without the tiled product: ${r.prefillTokensPerSecondWithoutTiledProduct}; ` +
    `tfjs's matMul: ${r.prefillTokensPerSecondWithoutProductKernels})`);
  save();

  const decode = async (b: number, steps = 32) => {
    await generate(model, ids(b, 8), { maxNewTokens: 4, eosTokenId: null });
    const seconds = await time(async () => { await generate(model, ids(b, 8), { maxNewTokens: steps, eosTokenId: null }); });
    return round((steps * b) / seconds);
  };
  // What the kernels buy: all; without the fused decoding step (layer by layer, each layer's kernels); without the
  // few-rows products either; none (tfjs's own ops).
  const variants: Array<[string, () => void]> = [
    ['', () => useFusedKernels(true)],
    ['WithoutVectorizedFewRows', () => setVectorizedFewRows(false)],
    ['WithoutNormPrologue', () => { setVectorizedFewRows(true); setDecodeNormPrologue(false); }],
    ['WithoutDecodeStepKernel', () => { setDecodeNormPrologue(true); useFusedKernels(false, [DECODE_STEP_KERNEL]); }],
    ['WithoutDecodeStepAndFewRowsKernels', () => useFusedKernels(false, [DECODE_STEP_KERNEL, LINEAR_KERNEL, MLP_KERNEL])],
    ['PlainOps', () => useFusedKernels(false)],
  ];
  const batches = argv.includes('--decode-batches') ? argv[argv.indexOf('--decode-batches') + 1].split(',').map(Number) : [1, 16];
  for (const [variant, set] of variants) {
    set();
    for (const b of variant === '' ? batches : [1]) {
      r[`decodeBatch${b}TokensPerSecond${variant}`] = await decode(b);
      log(`${name}: decode b${b}${variant} ${r[`decodeBatch${b}TokensPerSecond${variant}`]} tok/s`);
      save();
    }
  }
  useFusedKernels(true);
  Object.assign(r, await decodeStepProfile(model, ids(1, 8)));
  save();
  r.decodeBatch1AfterPromptTokens = prefill;
  r.decodeBatch1AfterPromptTokensPerSecond = await decodeAfterPrompt(model, ids(1, prefill), 16);
  log(`${name}: decode b1 after a ${prefill}-token prompt ${r.decodeBatch1AfterPromptTokensPerSecond} tok/s`);
  save();

  const trainIds = ids(1, 128);
  const params = [...model.namedParameters().values()];
  // The loss as the Trainer computes it (computeLoss: the logits by chunks of positions, never whole).
  let throughForward = false;
  const lossOf = () => (throughForward ? model.forward({ inputIds: trainIds, labels: trainIds }).loss! : model.computeLoss({ inputIds: trainIds, labels: trainIds }));
  const step = async () => {
    const { value, grads } = tf.variableGrads(lossOf, params);
    await value.data();
    tf.dispose([value, ...Object.values(grads)]);
  };
  await step();
  r.trainTokensPerSecond = round(128 / await time(step));
  // Without each training kernel: linears on tfjs's matMul; LayerNorm1P's and the rotary embedding's plain ops and
  // their gradients.
  for (const [variant, off] of [['WithoutTiledProduct', [TILED_PRODUCT_KERNEL]], ['WithoutLayerNormGrad', [LAYERNORM1P_GRAD_KERNEL]],
    ['WithoutRotaryKernel', [ROTARY_KERNEL]]] as const) {
    useFusedKernels(false, off);
    await step();
    r[`trainTokensPerSecond${variant}`] = round(128 / await time(step));
    useFusedKernels(true);
  }
  // forward()'s loss instead: the whole [tokens, vocab] logits, their log-softmax and one-hot.
  throughForward = true;
  await step();
  r.trainTokensPerSecondThroughForward = round(128 / await time(step));
  throughForward = false;
  log(`${name}: training step (loss and gradients) ${r.trainTokensPerSecond} tok/s (through forward()'s whole logits ` +
    `${r.trainTokensPerSecondThroughForward}, without the tiled product ` +
    `${r.trainTokensPerSecondWithoutTiledProduct}, without the LayerNorm1P backward kernel ${r.trainTokensPerSecondWithoutLayerNormGrad}, ` +
    `without the rotary kernel ${r.trainTokensPerSecondWithoutRotaryKernel})`);
  // Where a training step's GPU time goes (the plain tfjs ops and their gradients: the fused kernels are inference only).
  const trainProfile = await profileKernels(step);
  r.trainStepKernels = trainProfile.kernels;
  r.trainStepGpuMs = trainProfile.gpuMs;
  log(`${name}: training step GPU ${r.trainStepGpuMs} ms in ${Object.values(trainProfile.kernels).reduce((a, e) => a + e.count, 0)} kernels`);
  save();
  // Gradient checkpointing: its cost at 128 tokens, then a step over the prefill length, which without it would keep
  // ~1.4 GB of activations a layer for Minitron-4B (45 GB); with it, each layer's input (25 MB).
  model.gradientCheckpointingEnable();
  await step();
  r.trainTokensPerSecondCheckpointed = round(128 / await time(step));
  log(`${name}: training step with gradient checkpointing ${r.trainTokensPerSecondCheckpointed} tok/s`);
  save();
  if (!argv.includes('--skip-long-train')) {
    const longIds = ids(1, prefill);
    const longStep = async () => {
      const { value, grads } = tf.variableGrads(() => model.computeLoss({ inputIds: longIds, labels: longIds }), params);
      await value.data();
      tf.dispose([value, ...Object.values(grads)]);
    };
    try {
      await longStep();
      r.trainLongTokens = prefill;
      r.trainLongTokensPerSecondCheckpointed = round(prefill / await time(longStep));
      log(`${name}: training step over ${prefill} tokens with gradient checkpointing ${r.trainLongTokensPerSecondCheckpointed} tok/s`);
    } catch (e) {
      r.trainLongError = (e as Error).message;
      log(`${name}: training step over ${prefill} tokens failed: ${r.trainLongError}`);
    }
    save();
  }
  model.gradientCheckpointingDisable();
  // With the AdamW update too (the CPU benchmark's training step), where the moments fit beside weights and gradients
  // without doubt (under a billion parameters: the device does not report its memory).
  if ((r.parameters as number) < 1e9) {
    const named = model.namedParameters();
    const optimizer = new AdamW(named);
    const fullStep = async () => {
      const { value, grads } = tf.variableGrads(lossOf, params);
      const byName = new Map([...named].map(([n, v]) => [n, grads[v.name]] as [string, tf.Tensor]));
      optimizer.apply(byName, 1e-5);
      await value.data();
      tf.dispose([value, ...Object.values(grads)]);
    };
    await fullStep(); // allocates the moments
    r.trainWithAdamWTokensPerSecond = round(128 / await time(fullStep));
    optimizer.dispose();
    log(`${name}: training step with AdamW ${r.trainWithAdamWTokensPerSecond} tok/s`);
  }
  // LoRA (rank 16 on every projection, the base frozen) with its AdamW update: the fine-tuning most users run at this
  // size; then over the prefill length with gradient checkpointing.
  const lora = LoraModel.attach(model, { r: 16, loraAlpha: 32, targetModules: 'all-linear', seed: 0 });
  const loraParams = lora.namedParameters();
  const loraOptimizer = new AdamW(loraParams);
  const loraStep = (tokens: number[][]) => async () => {
    const { value, grads } = tf.variableGrads(() => lora.computeLoss({ inputIds: tokens, labels: tokens }), [...loraParams.values()]);
    loraOptimizer.apply(new Map([...loraParams].map(([n, v]) => [n, grads[v.name]] as [string, tf.Tensor])), 1e-4);
    await value.data();
    tf.dispose([value, ...Object.values(grads)]);
  };
  try {
    r.loraParameters = lora.numParameters();
    await loraStep(trainIds)();
    r.trainLoraTokensPerSecond = round(128 / await time(loraStep(trainIds)));
    log(`${name}: LoRA r 16 training step with AdamW ${r.trainLoraTokensPerSecond} tok/s (${r.loraParameters} parameters)`);
    save();
    if (!argv.includes('--skip-long-train')) {
      model.gradientCheckpointingEnable();
      const longIds = ids(1, prefill);
      await loraStep(longIds)();
      r.trainLoraLongTokensPerSecondCheckpointed = round(prefill / await time(loraStep(longIds)));
      log(`${name}: LoRA step over ${prefill} tokens with gradient checkpointing ${r.trainLoraLongTokensPerSecondCheckpointed} tok/s`);
    }
  } catch (e) {
    r.trainLoraError = (e as Error).message;
    log(`${name}: LoRA training failed: ${r.trainLoraError}`);
  } finally {
    model.gradientCheckpointingDisable();
    loraOptimizer.dispose();
    lora.unload();
  }
  save();
  model.dispose();
}

type Timings = Record<string, { count: number; ms: number }>;

/**
 * GPU time of `f` by kernel (timestamp queries through tf.profile, each program in its own pass) and by WebGPU
 * program: inside a kernel the backend times each program it dispatches ("Name: ms, Name: ms").
 */
async function profileKernels(f: () => Promise<void>): Promise<{ kernels: Timings; programs: Timings; gpuMs: number }> {
  const kernels: Timings = {};
  const programs: Timings = {};
  const add = (into: Timings, name: string, ms: number) => {
    const e = into[name] ??= { count: 0, ms: 0 };
    e.count++;
    e.ms += ms;
  };
  const profile = await tf.profile(f);
  for (const k of profile.kernels) {
    add(kernels, k.name, typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0);
    for (const part of String(k.extraInfo ?? '').split(', ')) {
      const match = /^(\w+): ([\d.e+-]+)$/.exec(part);
      if (match) add(programs, match[1], Number(match[2]));
    }
  }
  const rounded = (table: Timings) => Object.fromEntries(Object.entries(table)
    .sort(([, a], [, b]) => b.ms - a.ms)
    .map(([n, e]) => [n, { count: e.count, ms: round(e.ms, 3) }]));
  return { kernels: rounded(kernels), programs: rounded(programs), gpuMs: round(Object.values(kernels).reduce((a, e) => a + e.ms, 0), 3) };
}

/** Greedy batch-1 steps through a KV cache: the token, the time forward() took to return (recorded) and to the token. */
function greedyStepper(model: NemotronForCausalLM) {
  const cache = new KVCache(model.config.numHiddenLayers);
  const step = async (ids: number[][], attention: number) => {
    const t0 = performance.now();
    const out = model.forward({ inputIds: ids, attentionMask: [Array(attention).fill(1)], pastKeyValues: cache, useCache: true, logitsToKeep: 1 });
    const token = tf.tidy(() => tf.argMax(out.logits.reshape([1, -1]), -1));
    const recorded = performance.now() - t0;
    out.logits.dispose();
    const next = (await token.data())[0];
    token.dispose();
    return { next, recorded, total: performance.now() - t0 };
  };
  return { cache, step };
}

/** Batch-1 decoding speed after a long prompt (the attention reads the whole cache every step). */
async function decodeAfterPrompt(model: NemotronForCausalLM, prompt: number[][], steps: number): Promise<number> {
  const { cache, step } = greedyStepper(model);
  let length = prompt[0].length;
  let { next } = await step(prompt, length);
  next = (await step([[next]], ++length)).next; // the first step after a prompt compiles nothing new, but warms up
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) next = (await step([[next]], ++length)).next;
  cache.dispose();
  return round((1000 * steps) / (performance.now() - t0));
}

/**
 * Where a batch-1 decoding step's time goes: the JavaScript that records it (forward() returning), the whole step
 * (token read back), and the GPU time of each kernel (timestamp queries through tf.profile).
 */
async function decodeStepProfile(model: NemotronForCausalLM, prompt: number[][]): Promise<Record<string, unknown>> {
  const { cache, step } = greedyStepper(model);
  let { next } = await step(prompt, prompt[0].length);
  let length = prompt[0].length;
  const recorded: number[] = [];
  const total: number[] = [];
  for (let i = 0; i < 24; i++) {
    const s = await step([[next]], ++length);
    next = s.next;
    if (i >= 4) [recorded.push(s.recorded), total.push(s.total)];
  }
  const mean = (xs: number[]) => round(xs.reduce((a, b) => a + b, 0) / xs.length);
  const r: Record<string, unknown> = { decodeStepRecordMs: mean(recorded), decodeStepTotalMs: mean(total) };
  const profile = await profileKernels(async () => { next = (await step([[next]], ++length)).next; });
  r.decodeStepKernels = profile.kernels;
  r.decodeStepPrograms = profile.programs;
  r.decodeStepGpuMs = profile.gpuMs;
  cache.dispose();
  log(`decode step: recorded in ${r.decodeStepRecordMs} ms, total ${r.decodeStepTotalMs} ms, GPU ${r.decodeStepGpuMs} ms`);
  return r;
}

async function main(): Promise<void> {
  const configs = (argv.includes('--configs') ? argv[argv.indexOf('--configs') + 1] : 'minitron-small,minitron-4b').split(',');
  await setUpWebGPU();
  tf.env().set('PROD', true);
  log(`backend ${tf.getBackend()}, adapter ${JSON.stringify(results.adapter)}`);
  save();
  if (!argv.includes('--skip-micro')) {
    try {
      results.micro = await micro(argv.includes('--quick'));
    } catch (e) {
      results.micro = { error: (e as Error).stack ?? String(e) };
    }
    log(`micro: ${JSON.stringify(results.micro)}`);
    save();
  }
  if (!argv.includes('--skip-parity')) {
    for (const name of ['tiny-gqa', 'tiny-mha-bias']) {
      try {
        results[`parity.${name}`] = await fixtureParity(path.join(FIXTURES, name));
      } catch (e) {
        results[`parity.${name}`] = { error: (e as Error).stack ?? String(e) };
      }
      log(`parity ${name}: ${JSON.stringify(results[`parity.${name}`])}`);
      try {
        results[`lora.${name}`] = await loraParity(path.join(FIXTURES, name), path.join(FIXTURES, 'peft-lora', name));
      } catch (e) {
        results[`lora.${name}`] = { error: (e as Error).stack ?? String(e) };
      }
      log(`LoRA parity ${name}: ${JSON.stringify(results[`lora.${name}`])}`);
      save();
    }
  }
  if (!argv.includes('--skip-bench')) {
    for (const name of configs) {
      const r: Record<string, unknown> = {};
      results[`bench.${name}`] = r;
      try {
        await bench(name, r);
      } catch (e) {
        r.error = (e as Error).stack ?? String(e);
      }
      log(`bench ${name}: ${JSON.stringify(results[`bench.${name}`])}`);
      save();
    }
  }
  if (!argv.includes('--skip-nemotron-h')) {
    // NemotronH (the hybrid Mamba-2 architecture): parity with transformers, then its speed; after the Nemotron figures.
    try {
      results['parity.nemotron-h'] = await nemotronHParity(process.env.NEMOTRON_H_FIXTURES ?? path.join(FIXTURES, 'nemotron-h'));
    } catch (e) {
      results['parity.nemotron-h'] = { error: (e as Error).stack ?? String(e) };
    }
    log(`parity nemotron-h: ${JSON.stringify(results['parity.nemotron-h'])}`);
    save();
    const shape = argv.includes('--nemotron-h') ? argv[argv.indexOf('--nemotron-h') + 1] : 'nemotron-h-8b';
    const r: Record<string, unknown> = {};
    results[`nemotronH.${shape}`] = r;
    try {
      await benchNemotronH(shape, r);
    } catch (e) {
      r.error = (e as Error).stack ?? String(e);
    }
    log(`bench ${shape}: ${JSON.stringify(r)}`);
    save();
  }
  results.finished = new Date().toISOString();
  save();
}

/** A markdown summary of the figures that answer the GPU issue's targets (the JSON keeps everything). */
function summary(): string {
  const adapter = results.adapter as { vendor?: string; description?: string; limits?: Record<string, number> } | undefined;
  const micro = results.micro as { dispatchMicroseconds?: number } | undefined;
  const lines = [
    `# nemotron-tfjs on WebGPU: ${adapter?.vendor ?? '?'} ${adapter?.description ?? ''}`.trimEnd(),
    '',
    `Run ${results.started} → ${results.finished ?? '(not finished)'}; float32; one dispatch ${micro?.dispatchMicroseconds ?? '?'} µs; ` +
      `maxStorageBufferBindingSize ${adapter?.limits?.maxStorageBufferBindingSize ?? '?'} bytes.`,
    '',
    ...['tiny-gqa', 'tiny-mha-bias'].map((n) => `- parity ${n}: ${(results[`parity.${n}`] as { pass?: boolean } | undefined)?.pass ?? 'not run'}; ` +
      `PEFT LoRA: ${(results[`lora.${n}`] as { pass?: boolean } | undefined)?.pass ?? 'not run'}`),
    '',
    '| model | prefill tok/s (without the tiled product; tfjs matMul) | decode b1 (without vec4 reads; norms apart; after the prompt) | b1 without step kernel | b1 without step and few-rows | b1 tfjs ops | decode b16 | step ms (JS / total / GPU) | train tok/s (with AdamW; without tiled; without LN grad; without rotary) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const [key, value] of Object.entries(results)) {
    if (!key.startsWith('bench.')) continue;
    const r = value as Record<string, number | string>;
    if (r.error) {
      lines.push(`| ${key.slice(6)} | error: ${String(r.error).split('\n')[0]} | | | | | | | |`);
      continue;
    }
    lines.push(`| ${key.slice(6)} | ${r.prefillTokensPerSecond} (${r.prefillTokensPerSecondWithoutTiledProduct}; ` +
      `${r.prefillTokensPerSecondWithoutProductKernels}) | ${r.decodeBatch1TokensPerSecond} (${r.decodeBatch1TokensPerSecondWithoutVectorizedFewRows}; ` +
      `${r.decodeBatch1TokensPerSecondWithoutNormPrologue}; ${r.decodeBatch1AfterPromptTokensPerSecond}) | ` +
      `${r.decodeBatch1TokensPerSecondWithoutDecodeStepKernel} | ${r.decodeBatch1TokensPerSecondWithoutDecodeStepAndFewRowsKernels} | ` +
      `${r.decodeBatch1TokensPerSecondPlainOps} | ${r.decodeBatch16TokensPerSecond ?? '—'} | ` +
      `${r.decodeStepRecordMs} / ${r.decodeStepTotalMs} / ${r.decodeStepGpuMs} | ${r.trainTokensPerSecond} (${r.trainWithAdamWTokensPerSecond ?? '—'}; ` +
      `${r.trainTokensPerSecondWithoutTiledProduct}; ${r.trainTokensPerSecondWithoutLayerNormGrad}; ${r.trainTokensPerSecondWithoutRotaryKernel}) |`);
  }
  lines.push('', '| model | train tok/s, 128 tokens: computeLoss | through forward()\'s whole logits | gradient checkpointing | long step (tokens): checkpointed tok/s | LoRA r 16 + AdamW, 128 tokens | LoRA, long step, checkpointed |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const [key, value] of Object.entries(results)) {
    const r = value as Record<string, number | string>;
    if (!key.startsWith('bench.') || r.error) continue;
    lines.push(`| ${key.slice(6)} | ${r.trainTokensPerSecond} | ${r.trainTokensPerSecondThroughForward} | ${r.trainTokensPerSecondCheckpointed} | ` +
      `${r.trainLongError ? `error: ${String(r.trainLongError).split('\n')[0]}` : `(${r.trainLongTokens ?? '—'}) ${r.trainLongTokensPerSecondCheckpointed ?? '—'}`} | ` +
      `${r.trainLoraError ? `error: ${String(r.trainLoraError).split('\n')[0]}` : `${r.trainLoraTokensPerSecond ?? '—'} | ${r.trainLoraLongTokensPerSecondCheckpointed ?? '—'}`} |`);
  }
  const parityH = results['parity.nemotron-h'] as { pass?: boolean; error?: string } | undefined;
  lines.push('', `- NemotronH parity (logits, loss, gradients, greedy, beams): ${parityH?.pass ?? (parityH?.error ? `error: ${parityH.error.split('\n')[0]}` : 'not run')}`, '',
    '| NemotronH shape | parameters | prefill tok/s (first pass s) | decode b1 tok/s (tfjs ops) | decode b16 tok/s |', '| --- | ---: | ---: | ---: | ---: |');
  for (const [key, value] of Object.entries(results)) {
    if (!key.startsWith('nemotronH.')) continue;
    const r = value as Record<string, number | string>;
    lines.push(r.error ? `| ${key.slice(10)} | error: ${String(r.error).split('\n')[0]} | | | |`
      : `| ${key.slice(10)} ${r.pattern} | ${r.parameters} | ${r.prefillTokensPerSecond} (${r.prefillFirstSeconds}) | ${r.decodeBatch1TokensPerSecond ?? '—'} (${r.decodeBatch1TokensPerSecondPlainOps ?? '—'}) | ${r.decodeBatch16TokensPerSecond ?? '—'} |`);
  }
  return `${lines.join('\n')}\n`;
}

main().catch((e) => { log(`error: ${(e as Error).stack}`); results.error = String(e); save(); process.exit(1); });
