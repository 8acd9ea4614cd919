import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { SafetensorsFile } from '../src/io/safetensors';
import { BackendName, setBackend } from '../src/backends';
import { ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL, useFusedKernels } from '../src/kernels/fused';
import { AdamW } from '../src/training/optimizer';

/** Tests run from dist/test/…; fixtures stay in the source tree. */
export const FIXTURES = path.resolve(__dirname, '../../test/fixtures/hf-reference');
export const CONFIGS = ['tiny-gqa', 'tiny-mha-bias'] as const;
export type FixtureName = (typeof CONFIGS)[number];

export function fixtureDir(config: FixtureName, sub = ''): string {
  return path.join(FIXTURES, config, sub);
}

export interface Expected {
  json: Record<string, any>;
  tensor(key: string): tf.Tensor;
  has(key: string): boolean;
  keys(): string[];
}

const cache = new Map<string, { json: Record<string, any>; file: SafetensorsFile }>();

/** expected.json and expected.safetensors of a fixture configuration. */
export function expected(config: FixtureName): Expected {
  if (!cache.has(config)) {
    cache.set(config, {
      json: JSON.parse(fs.readFileSync(fixtureDir(config, 'expected.json'), 'utf8')),
      file: SafetensorsFile.open(fixtureDir(config, 'expected.safetensors')),
    });
  }
  const { json, file } = cache.get(config)!;
  return {
    json,
    has: (key) => file.has(key),
    keys: () => file.names(),
    tensor: (key) => {
      const t = file.read(key);
      return tf.tensor(t.data, t.shape, t.dtype);
    },
  };
}

/** Largest |a - b|; shapes must agree. */
export function maxAbsDiff(actual: tf.Tensor, reference: tf.Tensor): number {
  expect(actual.shape, 'shape').to.deep.equal(reference.shape);
  return tf.tidy(() => tf.max(tf.abs(tf.sub(actual, reference))).dataSync()[0]);
}

/** Asserts |actual - reference| ≤ tol everywhere (absolute), disposing the reference. */
export function expectClose(actual: tf.Tensor, reference: tf.Tensor, tol: number, what: string): void {
  const diff = maxAbsDiff(actual, reference);
  reference.dispose();
  expect(diff, `${what}: max |diff| ${diff}`).to.be.at.most(tol);
}

/** Relative closeness for losses. */
export function expectRelClose(actual: number, reference: number, rel: number, what: string): void {
  expect(Number.isFinite(actual), `${what} is ${actual}`).to.equal(true);
  expect(Math.abs(actual - reference), `${what}: ${actual} vs ${reference}`).to.be.at.most(rel * Math.abs(reference));
}

/**
 * Backends the parity suites run on: $NEMOTRON_TEST_BACKENDS (comma-separated), else cpu and wasm plus the
 * native backend when @tensorflow/tfjs-node loads here.
 */
export function testBackends(): BackendName[] {
  if (process.env.NEMOTRON_TEST_BACKENDS) return process.env.NEMOTRON_TEST_BACKENDS.split(',') as BackendName[];
  const list: BackendName[] = ['cpu', 'wasm'];
  try {
    require('@tensorflow/tfjs-node');
    list.push('tensorflow');
  } catch {
    // the native backend is optional
  }
  return list;
}

/** Runs `body` as a describe block per backend, switching backend before its tests. */
export function forEachBackend(backends: readonly BackendName[], body: (backend: BackendName) => void): void {
  for (const backend of backends) {
    describe(`on ${backend}`, function () {
      before(async () => { await setBackend(backend); });
      body(backend);
    });
  }
}

export function tmpDir(prefix: string): string {
  return fs.mkdtempSync(path.join(require('os').tmpdir(), `nemotron-${prefix}-`));
}

/** The message of the error `fn` throws; fails when it throws none. */
export function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected an error');
}

/** Counts engine.runKernel calls by kernel name until `restore` is called. */
function countKernels(): { counts: Map<string, number>; restore: () => void } {
  const engine = tf.engine();
  const original = engine.runKernel.bind(engine);
  const counts = new Map<string, number>();
  engine.runKernel = ((name: string, inputs: tf.NamedTensorMap, attrs?: tf.NamedAttrMap) => {
    counts.set(name, (counts.get(name) ?? 0) + 1);
    return original(name, inputs, attrs);
  }) as typeof engine.runKernel;
  return { counts, restore: () => { engine.runKernel = original; } };
}

/** kernelsRun for an async function (generation): counts the kernels run until its promise settles. */
export async function kernelsRunAsync(fn: () => Promise<void>): Promise<Map<string, number>> {
  const { counts, restore } = countKernels();
  try {
    await fn();
  } finally {
    restore();
  }
  return counts;
}

/** Counts the kernels `fn` runs, by name. */
export function kernelsRun(fn: () => void): Map<string, number> {
  const { counts, restore } = countKernels();
  try {
    fn();
  } finally {
    restore();
  }
  return counts;
}

/**
 * Inputs of an attention layer for `seq` new tokens from position `start`, batch 2 with row 1 left-padded by one
 * token: hidden [2·seq, hiddenSize], the rotary tables and the additive mask [2, 1, seq, start + seq].
 */
export function paddedAttentionStep(rope: { tables(p: tf.Tensor2D, max: number): [tf.Tensor4D, tf.Tensor4D] }, seq: number, start: number,
  hiddenSize: number, seed: number): { hidden: tf.Tensor; cos: tf.Tensor4D; sin: tf.Tensor4D; mask: tf.Tensor4D } {
  const positions = tf.tensor2d([0, 1].map((r) => [...Array(seq).keys()].map((i) => Math.max(0, start + i - r))), [2, seq], 'int32');
  const [cos, sin] = rope.tables(positions, start + seq);
  positions.dispose();
  const keys = start + seq;
  const mask = tf.tensor4d(Array.from({ length: 2 * seq * keys }, (_, i) => {
    const [row, q, k] = [Math.floor(i / (seq * keys)), Math.floor(i / keys) % seq, i % keys];
    return k > start + q || (row === 1 && k === 0) ? -1e9 : 0;
  }), [2, 1, seq, keys]);
  return { hidden: tf.randomNormal([2 * seq, hiddenSize], 0, 1, 'float32', seed), cos, sin, mask };
}

/**
 * Three AdamW steps over two parameters that decay (stepping together, as one flat tensor) and one that does not
 * (alone), gradients drawn from `seed`, with the AdamW kernels on or off: copies of the parameters and both moments,
 * and how often each kernel ran (ADAMW_KERNEL for a group; on tensorflow, ADAMW_RESIDENT_KERNEL for one alone).
 */
export function adamWThreeSteps(fused: boolean, seed: number): { tensors: tf.Tensor[]; kernels: number; byKernel: Map<string, number> } {
  useFusedKernels(fused, [ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL]);
  const params = new Map(tf.tidy(() => [
    ['layers.0.mlp.up_proj.weight', tf.variable(tf.randomNormal([64, 48], 0, 0.5, 'float32', seed))],
    ['layers.0.mlp.up_proj.bias', tf.variable(tf.randomNormal([64], 0, 0.5, 'float32', seed + 1))],
    ['layers.0.mlp.down_proj.weight', tf.variable(tf.randomNormal([48, 64], 0, 0.5, 'float32', seed + 2))],
  ] as Array<[string, tf.Variable]>));
  const optimizer = new AdamW(params, { weightDecay: 0.1 });
  const byKernel = new Map<string, number>();
  for (let step = 0; step < 3; step++) {
    const grads = new Map([...params].map(([name, p], i) => [name, tf.randomNormal(p.shape, 0, 1, 'float32', seed + 10 * step + i)]));
    const counts = kernelsRun(() => optimizer.apply(grads, 0.05 / (step + 1)));
    for (const name of [ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL]) byKernel.set(name, (byKernel.get(name) ?? 0) + (counts.get(name) ?? 0));
    tf.dispose([...grads.values()]);
  }
  const names = [...params.keys()];
  const tensors = [...params.values(), ...names.map((n) => optimizer.expAvg.get(n)!), ...names.map((n) => optimizer.expAvgSq.get(n)!)].map((t) => t.clone());
  optimizer.dispose();
  tf.dispose([...params.values()]);
  useFusedKernels(true);
  return { tensors, kernels: [...byKernel.values()].reduce((a, b) => a + b, 0), byKernel };
}

/** The names of adamWThreeSteps' tensors, in order. */
export const ADAMW_TENSORS = ['weight', 'bias', 'weight 2', 'exp_avg weight', 'exp_avg bias', 'exp_avg weight 2', 'exp_avg_sq weight', 'exp_avg_sq bias', 'exp_avg_sq weight 2'];
