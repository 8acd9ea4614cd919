import * as fs from 'fs';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import * as path from 'path';
import {
  KVCache, LoraModel, NemotronAttention, NemotronConfig, NemotronForCausalLM, NemotronHConfig, NemotronHForCausalLM, type NemotronHState, NemotronLayerNorm1P, NemotronMLP, PartialRotaryEmbedding, Trainer, applyRotary,
  disposeState, generate, readJsonl, relu2, setBackend, useFusedKernels,
} from '../../src/index';
import { rotaryWithGradient } from '../../layers/rotary';
import {
  ATTENTION_KERNEL, DECODE_STEP_KERNEL, LAYERNORM1P_GRAD_KERNEL, LINEAR_KERNEL, MLP_KERNEL, NEMOTRON_H_MAMBA_STEP_KERNEL, RELU2_KERNEL, RMS_NORM_KERNEL, ROTARY_KERNEL,
  TILED_PRODUCT_KERNEL, TRANSPOSED_PRODUCT_KERNEL,
} from '../../src/kernels/fused';
import { setMaxWeightBlockBytes } from '../../layers/vocab-matrix';
import { FEW_ROWS, setVectorizedFewRows } from '../../src/kernels/webgpu-kernels';
import { setDecodeNormPrologue } from '../../src/kernels/webgpu-decode';
import { batchMatMul, linear } from '../../layers/weights';
import { ADAMW_TENSORS, CONFIGS, FIXTURES, adamWThreeSteps, fixtureDir, kernelsRun, kernelsRunAsync, paddedAttentionStep, tmpDir } from '../helpers';
import { fixtureParity, loraParity, nemotronHParity } from '../fixture-parity';

/**
 * The WebGPU backend (Dawn, the `webgpu` package) against the HF fixtures. Without a GPU it runs on a software Vulkan
 * driver (Mesa's lavapipe: .ci/run installs it); with neither it is skipped, and says why.
 */
const LAVAPIPE = '/usr/share/vulkan/icd.d/lvp_icd.json';

/** max |a - b| and max |b| (asynchronous reads: WebGPU in Node has no synchronous readback). */
async function differenceAndSize(a: tf.Tensor, b: tf.Tensor): Promise<{ worst: number; size: number }> {
  const both = tf.tidy(() => tf.stack([tf.max(tf.abs(tf.sub(a, b))), tf.max(tf.abs(b))]));
  const [worst, size] = await both.data();
  both.dispose();
  return { worst, size };
}

/** The WebGPU programs (class names) `f` dispatches, with counts: which path a kernel took. */
function programsRun(f: () => void): Map<string, number> {
  const gpu = tf.backend() as unknown as { runWebGPUProgram: (program: object, ...rest: unknown[]) => unknown };
  const original = gpu.runWebGPUProgram;
  const seen = new Map<string, number>();
  gpu.runWebGPUProgram = function (program: object, ...rest: unknown[]) {
    seen.set(program.constructor.name, (seen.get(program.constructor.name) ?? 0) + 1);
    return original.call(this, program, ...rest);
  };
  try {
    f();
  } finally {
    gpu.runWebGPUProgram = original;
  }
  return seen;
}

describe('webgpu backend: parity with transformers', function () {
  this.timeout(600000);
  before(async function () {
    if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES && fs.existsSync(LAVAPIPE)) process.env.VK_ICD_FILENAMES = LAVAPIPE;
    process.env.XDG_RUNTIME_DIR ??= '/tmp';
    try {
      await setBackend('webgpu');
    } catch (e) {
      console.log(`    (skipped: ${(e as Error).message.split('\n')[0]})`);
      this.skip();
    }
  });
  after(() => tf.setBackend('cpu'));

  it('the fused LayerNorm1P kernel equals the plain tfjs ops it replaces', async () => {
    for (const [rows, cols] of [[1, 48], [7, 64], [3, 1024], [2, 5000]]) {
      const norm = new NemotronLayerNorm1P({ size: cols, eps: 1e-5 });
      for (const [, v] of norm.namedWeights()) v.assign(tf.randomNormal([cols], 0, 0.3));
      const x = tf.add(tf.mul(tf.randomNormal([rows, cols]), 3), 1.5);
      const fused = norm.apply(x) as tf.Tensor;
      const [weight, bias] = norm.namedWeights().map(([, v]) => v);
      const plain = tf.tidy(() => {
        const { mean, variance } = tf.moments(x, -1, true);
        return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-5))), tf.add(weight, 1)), bias);
      });
      const diff = tf.max(tf.abs(tf.sub(fused, plain)));
      const worst = (await diff.data())[0];
      expect(worst, `[${rows}, ${cols}]: max |fused - plain| = ${worst}`).to.be.at.most(1e-5);
      tf.dispose([x, fused, plain, diff]);
      norm.namedWeights().forEach(([, v]) => v.dispose());
    }
  });

  it('training through LayerNorm1P: the fused forward and the one-kernel backward give tfjs\'s gradients of the plain ops', async () => {
    for (const shape of [[5, 48], [2, 7, 64], [33, 1030]]) {
      const cols = shape[shape.length - 1];
      const norm = new NemotronLayerNorm1P({ size: cols, eps: 1e-5 });
      const [weight, bias] = norm.namedWeights().map(([, v]) => v);
      weight.assign(tf.randomNormal([cols], 0, 0.3));
      bias.assign(tf.randomNormal([cols], 0, 0.3));
      const x = tf.add(tf.mul(tf.randomNormal(shape), 3), 1.5);
      const probe = tf.randomNormal(shape);
      const gradients = () => tf.variableGrads(() => tf.sum(tf.mul(norm.apply(x) as tf.Tensor, probe)) as tf.Scalar, [weight, bias]);
      const inputGradient = () => tf.grad((input: tf.Tensor) => tf.sum(tf.mul(norm.apply(input) as tf.Tensor, probe)))(x);
      const fused = gradients();
      let fusedDx: tf.Tensor = x;
      const programs = programsRun(() => { fusedDx = inputGradient(); });
      expect(programs.get('InputGradProgram'), `[${shape}]: the backward kernel ran`).to.equal(1);
      useFusedKernels(false, [LAYERNORM1P_GRAD_KERNEL]);
      const plain = gradients();
      const plainDx = inputGradient();
      useFusedKernels(true);
      for (const [name, a, b] of [['x', fusedDx, plainDx], ['weight', fused.grads[weight.name], plain.grads[weight.name]],
        ['bias', fused.grads[bias.name], plain.grads[bias.name]]] as Array<[string, tf.Tensor, tf.Tensor]>) {
        const { worst, size } = await differenceAndSize(a, b);
        expect(worst, `[${shape}]: gradient of ${name} ${worst} (max ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
      }
      tf.dispose([x, probe, fusedDx, plainDx, fused.value, plain.value, ...Object.values(fused.grads), ...Object.values(plain.grads)]);
      norm.namedWeights().forEach(([, v]) => v.dispose());
    }
  });

  it('the fused rotary kernel equals the plain tfjs ops it replaces (partial and full rotation, a large dispatch)', async () => {
    for (const [batch, heads, seq, headDim, rotaryDim] of [[2, 3, 5, 24, 6], [1, 4, 7, 16, 8], [1, 2, 3, 8, 8], [1, 24, 2048, 128, 64]]) {
      const rope = new PartialRotaryEmbedding({ headDim, rotaryDim, base: 500 });
      const positions = tf.tensor2d(Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, i) => i + 3 * b)), [batch, seq], 'int32');
      const [cos, sin] = rope.tables(positions, seq + 3 * batch);
      const x = tf.randomNormal([batch, heads, seq, headDim]) as tf.Tensor4D;
      const fused = tf.engine().runKernel(ROTARY_KERNEL, { x, cos, sin }, { rotaryDim }) as tf.Tensor;
      const plain = applyRotary(x, cos, sin, rope.permutation);
      const diff = tf.max(tf.abs(tf.sub(fused, plain)));
      const worst = (await diff.data())[0];
      expect(worst, `[${batch}, ${heads}, ${seq}, ${headDim}] rotary ${rotaryDim}: ${worst}`).to.be.at.most(1e-5);
      tf.dispose([positions, cos, sin, x, fused, plain, diff]);
      rope.disposeWeights();
    }
  });

  it('training through the rotary kernel: its inverse as the gradient equals tfjs\'s gradient of the plain ops (partial and full rotation)', async () => {
    for (const [batch, heads, seq, headDim, rotaryDim] of [[2, 3, 5, 24, 6], [1, 4, 7, 16, 8], [1, 2, 3, 8, 8]]) {
      const rope = new PartialRotaryEmbedding({ headDim, rotaryDim, base: 500 });
      const positions = tf.tensor2d(Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, i) => i + 3 * b)), [batch, seq], 'int32');
      const [cos, sin] = rope.tables(positions, seq + 3 * batch);
      const x = tf.randomNormal([batch, heads, seq, headDim]) as tf.Tensor4D;
      const probe = tf.randomNormal(x.shape);
      const viaKernel = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(rotaryWithGradient(input as tf.Tensor4D, cos, sin, rotaryDim), probe)))(x);
      const plain = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(applyRotary(input as tf.Tensor4D, cos, sin, rope.permutation), probe)))(x);
      const { worst, size } = await differenceAndSize(viaKernel, plain);
      expect(worst, `[${batch}, ${heads}, ${seq}, ${headDim}] rotary ${rotaryDim}: gradient ${worst} (max ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
      tf.dispose([positions, cos, sin, x, probe, viaKernel, plain]);
      rope.disposeWeights();
    }
  });

  it('training through relu²: its kernel\'s gradient dy·2·relu(x) equals tfjs\'s gradient of square(relu(x))', async () => {
    const x = tf.randomNormal([37, 130]);
    const probe = tf.randomNormal([37, 130]);
    let fused: tf.Tensor = x;
    const programs = programsRun(() => { fused = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(relu2(input), probe)))(x); });
    expect(programs.get('Relu2Program'), 'the kernel forward and backward').to.equal(2);
    const plain = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(tf.square(tf.relu(input)), probe)))(x);
    const { worst, size } = await differenceAndSize(fused, plain);
    expect(worst, `gradient ${worst} (max ${size})`).to.be.at.most(1e-6 * Math.max(1, size));
    tf.dispose([x, probe, fused, plain]);
  });

  it('the fused relu² kernel equals the plain tfjs ops, and the MLP runs it', async () => {
    for (const shape of [[7, 300], [1, 18432], [3, 5, 11]]) {
      const x = tf.randomNormal(shape, 0, 2);
      let fused: tf.Tensor = x;
      const counts = kernelsRun(() => { fused = relu2(x); });
      expect(counts.get(RELU2_KERNEL), `[${shape}] fused`).to.equal(1);
      useFusedKernels(false);
      const plain = relu2(x);
      useFusedKernels(true);
      const diff = tf.max(tf.abs(tf.sub(fused, plain)));
      const worst = (await diff.data())[0];
      expect(worst, `[${shape}] relu²: ${worst}`).to.be.at.most(1e-6);
      expect((await tf.min(fused).data())[0], 'no negative outputs').to.equal(0);
      tf.dispose([x, fused, plain, diff]);
    }
    const mlp = new NemotronMLP({ hiddenSize: 16, intermediateSize: 48, bias: false, activation: 'relu2' });
    // More rows than the few-rows MLP kernel takes: the plain path, with the relu² program.
    const x = tf.randomNormal([FEW_ROWS + 4, 16]);
    const counts = kernelsRun(() => { tf.dispose(mlp.apply(x) as tf.Tensor); });
    expect(counts.get(RELU2_KERNEL), 'one relu² program in the MLP').to.equal(1);
    tf.dispose(x);
    mlp.namedWeights().forEach(([, v]) => v.dispose());
  });

  it('the linear and MLP kernels equal the plain tfjs ops (1 to 16 rows; more rows tiled or weight first; bias; a vocabulary over 65535 workgroups)', async () => {
    const cases: Array<[number, number, number, boolean]> = [
      [1, 64, 48, false], [2, 100, 37, true], [3, 1024, 256, false], [5, 300, 129, true], [9, 64, 7, false], [16, 1000, 300, true],
      [1, 8, 140000, false],
      // more rows than FEW_ROWS: the tiled product (64×64 tiles; 128×128 for the 1700 rows), or weight first (W·xᵀ)ᵀ
      [FEW_ROWS + 1, 100, 37, true], [40, 64, 48, false], [128, 256, 96, true], [1700, 32, 1300, true], [40, 66, 48, false],
      // K not a multiple of 4: the few-rows product reads one float at a time
      [3, 66, 50, true],
    ];
    // First pass: the tiled product and few-rows products reading vec4; second: weight first, one float at a time.
    for (const tiled of [true, false]) {
      useFusedKernels(tiled, [TILED_PRODUCT_KERNEL]);
      setVectorizedFewRows(tiled);
      for (const [rows, inFeatures, outFeatures, withBias] of cases) {
        const x = tf.randomNormal([rows, inFeatures]) as tf.Tensor2D;
        const weight = tf.randomNormal([outFeatures, inFeatures], 0, 0.2) as tf.Tensor2D;
        const bias = withBias ? tf.randomNormal([outFeatures]) : null;
        const shape = `[${rows}, ${inFeatures}]·[${outFeatures}, ${inFeatures}]ᵀ`;
        let fused: tf.Tensor = x;
        let programs = new Map<string, number>();
        const counts = kernelsRun(() => { programs = programsRun(() => { fused = linear(x, weight, bias); }); });
        expect(counts.get(LINEAR_KERNEL), `${shape} fused`).to.equal(1);
        const expectTiled = tiled && rows > FEW_ROWS && inFeatures % 4 === 0;
        expect(programs.get('TiledProductProgram') ?? 0, `${shape} tiled`).to.equal(expectTiled ? 1 : 0);
        useFusedKernels(false);
        const plain = linear(x, weight, bias);
        useFusedKernels(true);
        useFusedKernels(tiled, [TILED_PRODUCT_KERNEL]);
        const { worst, size } = await differenceAndSize(fused, plain);
        // Sums in another order: float32 rounding relative to the outputs' size.
        expect(worst, `${shape} bias ${withBias} tiled ${tiled}: ${worst} (max |plain| ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
        tf.dispose([x, weight, fused, plain, ...(bias ? [bias] : [])]);
      }
    }
    useFusedKernels(true);
    setVectorizedFewRows(true);
    for (const [rows, withBias] of [[1, false], [4, true], [FEW_ROWS, false]] as Array<[number, boolean]>) {
      const mlp = new NemotronMLP({ hiddenSize: 96, intermediateSize: 200, bias: withBias, activation: 'relu2' });
      for (const [, v] of mlp.namedWeights()) v.assign(tf.randomNormal(v.shape, 0, 0.3));
      const x = tf.randomNormal([rows, 96]);
      let fused: tf.Tensor = x;
      const counts = kernelsRun(() => { fused = mlp.apply(x) as tf.Tensor; });
      expect(counts.get(MLP_KERNEL), `MLP of ${rows} rows fused`).to.equal(1);
      useFusedKernels(false);
      const plain = mlp.apply(x) as tf.Tensor;
      useFusedKernels(true);
      const { worst, size } = await differenceAndSize(fused, plain);
      expect(worst, `MLP of ${rows} rows: ${worst} (max |plain| ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
      tf.dispose([x, fused, plain]);
      mlp.namedWeights().forEach(([, v]) => v.dispose());
    }
  });

  it('training through the tiled product (forward x·Wᵀ, and dW = dyᵀ·x in its aᵀ·b form) gives tfjs\'s gradients: a linear, and a whole model', async () => {
    const cases: Array<[number, number, number, boolean]> = [[24, 64, 40, true], [40, 32, 300, false], [18, 36, 20, true], [20, 32, 30, true]];
    for (const [rows, inFeatures, outFeatures, withBias] of cases) {
      const x = tf.randomNormal([rows, inFeatures]);
      const weight = tf.randomNormal([outFeatures, inFeatures], 0, 0.2);
      const bias = tf.randomNormal([outFeatures]);
      const probe = tf.randomNormal([rows, outFeatures]);
      const inputs = withBias ? [x, weight, bias] : [x, weight];
      const gradients = () => tf.grads((...ts: tf.Tensor[]) => tf.sum(tf.mul(linear(ts[0], ts[1], ts[2] ?? null), probe)))(inputs);
      let tiled: tf.Tensor[] = [];
      const programs = programsRun(() => { tiled = gradients(); });
      // Forward and dW tiled; dW falls back to tfjs's matMul where the output features are not a multiple of 4.
      expect(programs.get('TiledProductProgram'), `${rows} rows: tiled programs`).to.equal(outFeatures % 4 === 0 ? 2 : 1);
      useFusedKernels(false, [TILED_PRODUCT_KERNEL]);
      const plain = gradients();
      useFusedKernels(true);
      for (const [i, name] of ['x', 'W', 'bias'].slice(0, inputs.length).entries()) {
        const { worst, size } = await differenceAndSize(tiled[i], plain[i]);
        expect(worst, `[${rows}, ${inFeatures}]·[${outFeatures}, ${inFeatures}]ᵀ: gradient of ${name} ${worst} (max ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
      }
      tf.dispose([x, weight, bias, probe, ...tiled, ...plain]);
    }
    const config = new NemotronConfig({ vocabSize: 200, hiddenSize: 64, numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 96, numHiddenLayers: 2 });
    const model = new NemotronForCausalLM(config);
    const ids = [Array.from({ length: 12 }, (_, i) => (i * 17) % 200), Array.from({ length: 12 }, (_, i) => (i * 31 + 5) % 200)];
    const params = model.namedParameters();
    const gradients = () => tf.variableGrads(() => model.forward({ inputIds: ids, labels: ids }).loss!, [...params.values()]);
    const before = tf.memory().numTensors;
    const tiled = gradients();
    useFusedKernels(false, [TILED_PRODUCT_KERNEL]);
    const plain = gradients();
    useFusedKernels(true);
    expect(Math.abs((await tiled.value.data())[0] - (await plain.value.data())[0]), 'loss').to.be.at.most(1e-5);
    for (const [name, v] of params) {
      const { worst, size } = await differenceAndSize(tiled.grads[v.name], plain.grads[v.name]);
      expect(worst, `gradient of ${name}: ${worst} (max ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
    }
    tf.dispose([tiled.value, plain.value, ...Object.values(tiled.grads), ...Object.values(plain.grads)]);
    expect(tf.memory().numTensors, 'no tensor left').to.equal(before);
    model.dispose();
  });

  it('training through attention\'s products (scores a·bᵀ, context a·b) with tiled backward products gives tfjs\'s gradients', async () => {
    const cases: Array<[number[], number[], boolean]> = [
      [[2, 3, 12, 16], [2, 3, 20, 16], true], [[1, 2, 7, 10], [1, 2, 9, 10], true], // k not a multiple of 4: tfjs's forward
      [[2, 3, 12, 20], [2, 3, 20, 16], false], [[1, 2, 7, 9], [1, 2, 9, 6], false],
    ];
    for (const [aShape, bShape, transposeB] of cases) {
      const a = tf.randomNormal(aShape);
      const b = tf.randomNormal(bShape);
      const outShape = [...aShape.slice(0, -1), transposeB ? bShape[bShape.length - 2] : bShape[bShape.length - 1]];
      const probe = tf.randomNormal(outShape);
      const gradients = (f: (x: tf.Tensor, y: tf.Tensor) => tf.Tensor) => tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(f(x, y), probe)))([a, b]);
      let ours: tf.Tensor[] = [];
      const programs = programsRun(() => { ours = gradients((x, y) => batchMatMul(x, y, transposeB)); });
      const plain = gradients((x, y) => tf.matMul(x, y, false, transposeB));
      const what = `[${aShape}]·[${bShape}]${transposeB ? 'ᵀ' : ''}`;
      if (aShape[3] % 4 === 0 && bShape[3] % 4 === 0) expect(programs.get('TiledProductProgram') ?? 0, `${what}: tiled programs`).to.be.at.least(2);
      for (const [i, name] of ['a', 'b'].entries()) {
        const { worst, size } = await differenceAndSize(ours[i], plain[i]);
        expect(worst, `${what}: gradient of ${name} ${worst} (max ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
      }
      tf.dispose([a, b, probe, ...ours, ...plain]);
    }
  });

  it('the transposed product (attention scores) equals tfjs\'s matMul with a transposed operand, tiled or through an explicit bᵀ', async () => {
    for (const tiled of [true, false]) {
      useFusedKernels(tiled, [TILED_PRODUCT_KERNEL]);
      for (const [aShape, bShape] of [[[2, 3, 5, 8], [2, 3, 7, 8]], [[1, 4, 64, 128], [1, 4, 96, 128]], [[6, 20], [9, 20]], [[2, 2, 130, 64], [2, 2, 200, 64]],
        [[3, 10, 6], [3, 12, 6]]]) {
        const a = tf.randomNormal(aShape);
        const b = tf.randomNormal(bShape);
        let fused: tf.Tensor = a;
        let programs = new Map<string, number>();
        const counts = kernelsRun(() => { programs = programsRun(() => { fused = batchMatMul(a, b, true); }); });
        expect(counts.get(TRANSPOSED_PRODUCT_KERNEL), `[${aShape}]·[${bShape}]ᵀ fused`).to.equal(1);
        const expectTiled = tiled && aShape[aShape.length - 1] % 4 === 0;
        expect(programs.get('TiledProductProgram') ?? 0, `[${aShape}]·[${bShape}]ᵀ tiled`).to.equal(expectTiled ? 1 : 0);
        const plain = tf.matMul(a, b, false, true);
        const { worst, size } = await differenceAndSize(fused, plain);
        expect(worst, `[${aShape}]·[${bShape}]ᵀ tiled ${tiled}: ${worst} (max |plain| ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
        tf.dispose([a, b, fused, plain]);
      }
    }
    useFusedKernels(true);
  });

  it('the tiled product a·bᵀ (+ bias) and aᵀ·b equal tfjs\'s matMul: b per batch or shared, 64- and 128-wide tiles, edges, K not a multiple of 16', async () => {
    const cases: Array<[number, number, number, number, number, boolean]> = [
      // batch, b's batch, m, n, k, bias
      [1, 1, 130, 70, 68, true], [2, 1, 17, 33, 20, true], [6, 6, 40, 50, 64, false], [200, 200, 60, 61, 8, false], [3, 1, 300, 260, 1024, true],
    ];
    for (const [batch, bBatch, m, n, k, withBias] of cases) {
      const a = tf.randomNormal([batch, m, k]);
      const b = tf.randomNormal([bBatch, n, k]);
      const bias = tf.randomNormal([n]);
      const fused = tf.engine().runKernel(TILED_PRODUCT_KERNEL, withBias ? { a, b, bias } : { a, b }) as tf.Tensor;
      const plain = tf.tidy(() => {
        const y = tf.matMul(a, bBatch === batch ? b : tf.tile(b, [batch, 1, 1]), false, true);
        return withBias ? tf.add(y, bias) : y;
      });
      const { worst, size } = await differenceAndSize(fused, plain);
      const what = `[${batch}, ${m}, ${k}]·[${bBatch}, ${n}, ${k}]ᵀ bias ${withBias}`;
      expect(fused.shape, what).to.deep.equal([batch, m, n]);
      expect(worst, `${what}: ${worst} (max |plain| ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
      tf.dispose([a, b, bias, fused, plain]);
    }
    // aᵀ·b: a [batch, depth, m], b [batch or 1, depth, n]; depth not a multiple of 16; both tile sizes.
    for (const [batch, bBatch, depth, m, n] of [[1, 1, 50, 64, 40], [3, 1, 17, 36, 132], [200, 200, 10, 60, 64], [1, 1, 300, 260, 200]]) {
      const a = tf.randomNormal([batch, depth, m]);
      const b = tf.randomNormal([bBatch, depth, n]);
      const fused = tf.engine().runKernel(TILED_PRODUCT_KERNEL, { a, b }, { transposeA: true }) as tf.Tensor;
      const plain = tf.tidy(() => tf.matMul(a, bBatch === batch ? b : tf.tile(b, [batch, 1, 1]), true, false));
      const { worst, size } = await differenceAndSize(fused, plain);
      const what = `[${batch}, ${depth}, ${m}]ᵀ·[${bBatch}, ${depth}, ${n}]`;
      expect(fused.shape, what).to.deep.equal([batch, m, n]);
      expect(worst, `${what}: ${worst} (max |plain| ${size})`).to.be.at.most(1e-5 * Math.max(1, size));
      tf.dispose([a, b, fused, plain]);
    }
    const odd = [tf.zeros([1, 4, 6]), tf.zeros([1, 5, 6])];
    expect(() => tf.engine().runKernel(TILED_PRODUCT_KERNEL, { a: odd[0], b: odd[1] })).to.throw(/6 a multiple of 4/);
    expect(() => tf.engine().runKernel(TILED_PRODUCT_KERNEL, { a: odd[1], b: odd[1] }, { transposeA: true })).to.throw(/6 and n multiples of 4/);
    tf.dispose(odd);
  });

  it('the fused decoding step equals the layer-by-layer path (GQA/MHA, partial rotary, padding, batch 16, a cache over one key tile)', async () => {
    const cases: Array<[number, number, number, number, number, boolean, number]> = [
      // heads, kv heads, head dim, rotary fraction, batch, padded, prompt length
      [4, 2, 16, 0.5, 1, false, 6], [6, 2, 32, 1, 3, true, 6], [8, 8, 16, 0.5, 2, false, 5], [4, 1, 16, 0.25, 1, false, 1100],
      [4, 2, 16, 0.5, 16, true, 6], // the largest batch it takes
    ];
    for (const [heads, kvHeads, headDim, rotary, batch, padded, length] of cases) {
      const config = new NemotronConfig({
        vocabSize: 300, hiddenSize: 64, numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim, partialRotaryFactor: rotary,
        intermediateSize: 96, numHiddenLayers: 3, maxPositionEmbeddings: 2048, padTokenId: 0,
      });
      const model = new NemotronForCausalLM(config);
      for (const v of model.namedParameters().values()) if (v.rank === 1) v.assign(tf.randomNormal(v.shape, 0, 0.2));
      const pad = (b: number, j: number) => padded && b === 1 && j < 2;
      const prompt = Array.from({ length: batch }, (_, b) => Array.from({ length }, (_, j) => (pad(b, j) ? 0 : 3 + ((b * 5 + j * 7) % 290))));
      const attentionMask = prompt.map((row, b) => row.map((_, j) => (pad(b, j) ? 0 : 1)));
      const generateWith = async (fused: boolean, normPrologue = true) => {
        useFusedKernels(fused, [DECODE_STEP_KERNEL]);
        setDecodeNormPrologue(normPrologue);
        let out: { sequences: number[][]; scores?: Float32Array[][] } = { sequences: [] };
        const counts = await kernelsRunAsync(async () => {
          out = await generate(model, prompt, { attentionMask, maxNewTokens: 4, eosTokenId: null, outputScores: true });
        });
        useFusedKernels(true);
        setDecodeNormPrologue(true);
        return { out, steps: counts.get(DECODE_STEP_KERNEL) ?? 0 };
      };
      const before = tf.memory().numTensors;
      const fused = await generateWith(true);
      expect(tf.memory().numTensors, 'no tensor left by the fused steps').to.equal(before);
      const plain = await generateWith(false);
      // The norms as dispatches of their own instead of folded into the products.
      const separateNorms = await generateWith(true, false);
      const what = `${heads}/${kvHeads} heads × ${headDim}, rotary ${rotary}, batch ${batch}${padded ? ' padded' : ''}, prompt ${length}`;
      expect(fused.steps, `${what}: every step after the prompt fused`).to.equal(3);
      expect(plain.steps, `${what}: none when turned off`).to.equal(0);
      for (const [variant, run] of [['norms folded', fused], ['norms apart', separateNorms]] as const) {
        expect(run.out.sequences, `${what}, ${variant}`).to.deep.equal(plain.out.sequences);
        let worst = 0;
        run.out.scores!.forEach((step, i) => step.forEach((row, r) => row.forEach((v, k) => { worst = Math.max(worst, Math.abs(v - plain.out.scores![i][r][k])); })));
        expect(worst, `${what}, ${variant}: max |fused - layers| over the logits of every step = ${worst}`).to.be.at.most(1e-5);
      }
      model.dispose();
    }
  });

  it('embeddings and LM head in row blocks (over the binding limit) generate what one tensor does', async () => {
    const config = new NemotronConfig({
      vocabSize: 1000, hiddenSize: 64, numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 96, numHiddenLayers: 2, tieWordEmbeddings: false,
    });
    const whole = new NemotronForCausalLM(config);
    const dir = tmpDir('webgpu-blocks');
    await whole.savePretrained(dir);
    setMaxWeightBlockBytes(4 * 64 * 400);
    try {
      const blocked = await NemotronForCausalLM.fromPretrained(dir);
      expect(blocked.outputMatrix.blocks.length, 'blocks of 400, 400 and 200 rows').to.equal(3);
      const prompt = [[5, 17, 999, 400, 399]];
      const [a, b] = [await whole.generate(prompt, { maxNewTokens: 6, eosTokenId: null, outputScores: true }),
        await blocked.generate(prompt, { maxNewTokens: 6, eosTokenId: null, outputScores: true })];
      expect(b.sequences).to.deep.equal(a.sequences);
      let worst = 0;
      a.scores!.forEach((step, i) => step[0].forEach((v, k) => { worst = Math.max(worst, Math.abs(v - b.scores![i][0][k])); }));
      expect(worst, `max |blocked - whole| logits ${worst}`).to.be.at.most(1e-5);
      blocked.dispose();
    } finally {
      setMaxWeightBlockBytes(null);
      whole.dispose();
    }
  });

  it('a tensor over the binding limit is refused with its shape (Dawn alone would skip the dispatch and leave zeros)', async () => {
    const limit = (tf.backend() as unknown as { device: { limits: { maxStorageBufferBindingSize: number } } }).device.limits.maxStorageBufferBindingSize;
    const before = tf.memory().numTensors;
    const n = limit / 4 + 1024;
    expect(() => tf.fill([n], 2)).to.throw(new RegExp(`\\[${n}\\] float32 tensor \\(its output\\) of ${4 * n} bytes; this device binds at most ${limit} bytes`));
    expect(tf.memory().numTensors, 'nothing allocated').to.equal(before);
  });

  it('a prompt whose attention scores are over the binding limit runs in chunks of positions and gives the cpu backend\'s logits', async function () {
    // 16 heads × 1,500² float32 scores: 144 MB, over lavapipe's 128 MB (the H100's 2 GB: 32 heads × 4,096² and up).
    const config = new NemotronConfig({
      vocabSize: 300, hiddenSize: 64, numAttentionHeads: 16, numKeyValueHeads: 4, headDim: 4, intermediateSize: 96, numHiddenLayers: 1,
      maxPositionEmbeddings: 2048,
    });
    const limit = (tf.backend() as unknown as { device: { limits: { maxStorageBufferBindingSize: number } } }).device.limits.maxStorageBufferBindingSize;
    const seq = 1500;
    if (4 * 16 * seq * seq <= limit) this.skip();
    const prompt = [Array.from({ length: seq }, (_, i) => (i * 37) % 300)];
    const dir = tmpDir('webgpu-long-prompt');
    const logitsOn = async (backend: 'cpu' | 'webgpu') => {
      await setBackend(backend);
      const model = backend === 'cpu' ? new NemotronForCausalLM(config) : await NemotronForCausalLM.fromPretrained(dir);
      if (backend === 'cpu') await model.savePretrained(dir);
      const out = model.forward({ inputIds: prompt, logitsToKeep: 4 });
      const values = await out.logits.data() as Float32Array;
      out.logits.dispose();
      model.dispose();
      return values;
    };
    const reference = await logitsOn('cpu');
    const ours = await logitsOn('webgpu');
    let worst = 0;
    let size = 0;
    reference.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - ours[i])); size = Math.max(size, Math.abs(v)); });
    expect(size, 'logits that are not all zero').to.be.above(0);
    expect(worst, `max |webgpu - cpu| over the last 4 positions' logits: ${worst} (max ${size})`).to.be.at.most(1e-4 * Math.max(1, size));
  });

  it('the fused decoding attention kernel equals the plain tfjs ops (GQA and MHA, padding mask, cache append)', async () => {
    for (const [heads, kvHeads, headDim, rotaryDim] of [[4, 2, 16, 8], [3, 3, 8, 8], [24, 8, 128, 64]]) {
      const hiddenSize = heads * headDim;
      const attention = new NemotronAttention({ hiddenSize, numHeads: heads, numKeyValueHeads: kvHeads, headDim, bias: true, layerIndex: 0, initializerRange: 0.1 });
      const rope = new PartialRotaryEmbedding({ headDim, rotaryDim, base: 10000 });
      const run = async (fused: boolean) => {
        // Only the attention kernel differs between the runs (the projections around it take the same path).
        useFusedKernels(fused, [ATTENTION_KERNEL]);
        const cache = new KVCache(1);
        const results: Float32Array[] = [];
        let ran = 0;
        for (const [seq, start] of [[5, 0], [1, 5], [1, 6]]) {
          const { hidden, cos, sin, mask } = paddedAttentionStep(rope, seq, start, hiddenSize, 7 * seq + start);
          let result: tf.Tensor | tf.Tensor[] = [];
          ran += kernelsRun(() => { result = attention.apply([hidden, cos, sin, rope.permutation], { mask, cache, rotaryDim }) as tf.Tensor | tf.Tensor[]; })
            .get('NemotronAttention') ?? 0;
          const out = Array.isArray(result) ? result[0] : result;
          results.push(await out.data() as Float32Array);
          tf.dispose([hidden, cos, sin, mask, out]);
        }
        results.push(await cache.keys[0]!.data() as Float32Array, await cache.values[0]!.data() as Float32Array);
        cache.dispose();
        useFusedKernels(true);
        return { results, ran };
      };
      const fused = await run(true);
      const plain = await run(false);
      expect(fused.ran, 'the kernel ran for the two one-token steps only').to.equal(2);
      ['prefill', 'token 1', 'token 2', 'cached keys', 'cached values'].forEach((what, i) => {
        // Sums in another order: float32 rounding relative to the values' size (up to ~30 for the 3072-wide case).
        let worst = 0;
        let size = 1;
        fused.results[i].forEach((v, j) => { worst = Math.max(worst, Math.abs(v - plain.results[i][j])); size = Math.max(size, Math.abs(plain.results[i][j])); });
        expect(worst, `${heads}/${kvHeads} heads, ${what}: max |fused - plain| = ${worst}, max |plain| = ${size}`).to.be.at.most(1e-5 * size);
      });
      attention.namedWeights().forEach(([, w]) => w.dispose());
      rope.disposeWeights();
    }
  });

  it('the AdamW kernel takes the plain ops\' step (parameters and both moments, with and without decay) and leaks nothing', async () => {
    const before = tf.memory().numTensors;
    const fused = adamWThreeSteps(true, 7);
    const plain = adamWThreeSteps(false, 7);
    expect(fused.kernels, 'one kernel a step for the two decaying parameters together, one for the bias').to.equal(6);
    expect(plain.kernels).to.equal(0);
    for (let i = 0; i < ADAMW_TENSORS.length; i++) {
      const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(fused.tensors[i], plain.tensors[i]))));
      const worst = (await diff.data())[0];
      diff.dispose();
      expect(worst, `${ADAMW_TENSORS[i]}: max |fused - plain| = ${worst}`).to.be.at.most(1e-6);
    }
    tf.dispose([...fused.tensors, ...plain.tensors]);
    expect(tf.memory().numTensors, 'no tensor left').to.equal(before);
  });

  it('LoRA training computes no gradient product for the frozen weights (tiled linears, chunked loss)', async () => {
    const model = new NemotronForCausalLM(new NemotronConfig({
      vocabSize: 64, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2,
      maxPositionEmbeddings: 64, padTokenId: 0,
    }));
    const ids = [Array.from({ length: 24 }, (_, i) => 1 + ((i * 5) % 63))];
    const lora = LoraModel.attach(model, { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'], seed: 1 });
    const transposedProducts = (variables: tf.Variable[]) => {
      const before = tf.memory().numTensors;
      let count = 0;
      const gpu = tf.backend() as unknown as { runWebGPUProgram: (program: { transposeA?: boolean }, ...rest: unknown[]) => unknown };
      const original = gpu.runWebGPUProgram;
      gpu.runWebGPUProgram = function (program: { transposeA?: boolean }, ...rest: unknown[]) {
        if (program.constructor.name === 'TiledProductProgram' && program.transposeA) count++;
        return original.call(this, program, ...rest);
      };
      try {
        const { value, grads } = tf.variableGrads(() => lora.computeLoss({ inputIds: ids, labels: ids }), variables);
        tf.dispose([value, ...Object.values(grads)]);
      } finally {
        gpu.runWebGPUProgram = original;
      }
      expect(tf.memory().numTensors, 'tensors left').to.equal(before);
      return count;
    };
    const adaptersOnly = transposedProducts([...lora.namedParameters().values()]);
    lora.unload();
    const everything = transposedProducts([...model.namedParameters().values()]);
    // aᵀ·b products in the backward: attention's dK and dV (2 a layer) in both; without LoRA the dW of the 6 linears a
    // layer and of the LM head (13); with it the adapters' dA and dB (2 layers × 2 projections × 2) and no frozen dW.
    expect(everything, 'attention 4 + dW of 12 linears and the LM head').to.equal(4 + 13);
    expect(adaptersOnly, 'attention 4 + the adapters\' 8, no dW of a frozen weight').to.equal(4 + 8);
    model.dispose();
  });

  it('the Trainer runs unchanged: AdamW steps lower the loss, and the checkpoint saves', async () => {
    const model = new NemotronForCausalLM(new NemotronConfig({
      vocabSize: 32, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2,
      maxPositionEmbeddings: 64, padTokenId: 0, initializerRange: 0.1,
    }));
    const examples = readJsonl(path.resolve(__dirname, '../../../examples/datasets/causal-lm.jsonl'), 'causal-lm');
    const trainer = new Trainer(model, examples, { task: 'causal-lm', lr: 3e-3, batchSize: 4, maxSteps: 15, schedule: 'constant' });
    const start = await trainer.evaluate(examples);
    await trainer.fit();
    const end = await trainer.evaluate(examples);
    expect(end, `${start} → ${end}`).to.be.below(0.7 * start);
    for (const log of trainer.history) expect(Number.isFinite(log.gradNorm) && log.gradNorm > 0, `gradient norm ${log.gradNorm}`).to.equal(true);
    const dir = tmpDir('webgpu-save');
    await trainer.save(dir);
    expect(fs.existsSync(path.join(dir, 'model.safetensors'))).to.equal(true);
    trainer.dispose();
    model.dispose();
  });

  it('NemotronH (Mamba-2, attention, MLP, experts): logits, loss and gradients, greedy generation and beam search as transformers; what reads synchronously refused by name', async () => {
    const dir = path.resolve(FIXTURES, '../nemotron-h');
    const before = tf.memory().numTensors;
    const r = await nemotronHParity(dir);
    console.log(`    ${JSON.stringify(r)}`);
    expect(r.pass, JSON.stringify(r)).to.equal(true);
    expect(tf.memory().numTensors).to.equal(before);
    const model = await NemotronHForCausalLM.fromPretrained(path.join(dir, 'model'));
    expect(() => model.generate([[5, 17]], { maxNewTokens: 2 })).to.throw(/reads tensors synchronously, which the webgpu backend cannot in Node; the library's async generate/);
    model.dispose();
    // Mixture-of-experts layers choose their experts on the device here (top-k ops, no read): nemotronHParity checked
    // them as routed by default (the chosen experts gathered); every expert run and weighed gives the same logits.
    const expected = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as {
      prompt: number[][]; attention_mask: number[][]; moe: Record<string, { logits: number[][][] }>;
    };
    for (const variant of ['moe', 'moe-latent']) {
      const moe = await NemotronHForCausalLM.fromPretrained(path.join(dir, variant));
      for (const routing of ['device-dense'] as const) {
        moe.moeRouting = routing;
        const out = moe.forward({ inputIds: expected.prompt, attentionMask: expected.attention_mask }).logits;
        const logits = await out.array() as number[][][];
        out.dispose();
        let worst = 0;
        expected.attention_mask.forEach((row, b) => row.forEach((on, t) => {
          if (on) expected.moe[variant].logits[b][t].forEach((v, j) => { worst = Math.max(worst, Math.abs(v - logits[b][t][j])); });
        }));
        expect(worst, `${variant}, ${routing}`).to.be.at.most(1e-4);
      }
      moe.dispose();
    }
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('NemotronH\'s decoding step: the Mamba-2 kernel, the RMS norm, the fused MLP and products give the plain ops\' logits and state, in far fewer programs', async () => {
    const dir = path.resolve(FIXTURES, '../nemotron-h');
    const spread = (model: NemotronHForCausalLM) => {
      let seed = 1;
      model.weights.forEach((v) => tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, 0.3, 'float32', seed++))));
      return model;
    };
    const models: Array<[string, NemotronHForCausalLM]> = [
      ['the fixture ("M*M-")', await NemotronHForCausalLM.fromPretrained(path.join(dir, 'model'))],
      ['conv bias, projection biases, 3 heads a group, kernel 3', spread(new NemotronHForCausalLM(new NemotronHConfig({
        vocabSize: 96, hiddenSize: 24, layerTypes: ['mamba', 'attention', 'mamba', 'mlp'], mambaNumHeads: 6, mambaHeadDim: 4, nGroups: 2, ssmStateSize: 5,
        convKernel: 3, chunkSize: 4, numAttentionHeads: 4, numKeyValueHeads: 1, headDim: 6, intermediateSize: 40, useBias: true, useConvBias: true,
        maxPositionEmbeddings: 64,
      })))],
    ];
    const prompt = [[5, 17, 33, 8, 41, 62, 9], [0, 0, 44, 3, 19, 55, 61]];
    const mask = [[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]];
    for (const [what, model] of models) {
      const before = tf.memory().numTensors;
      const run = async (fused: boolean) => {
        useFusedKernels(fused, [NEMOTRON_H_MAMBA_STEP_KERNEL, RMS_NORM_KERNEL, MLP_KERNEL, LINEAR_KERNEL]);
        const state: Partial<NemotronHState> = {};
        model.forward({ inputIds: prompt, attentionMask: mask }, state).logits.dispose();
        const values: number[][] = [];
        let programs = 0;
        for (const tokens of [[5, 9], [17, 3], [40, 41]]) {
          let logits: tf.Tensor | undefined;
          const seen = programsRun(() => { logits = model.step(tokens, state as NemotronHState); });
          programs = [...seen.values()].reduce((a, b) => a + b, 0);
          values.push(Array.from(await logits!.data()));
          logits!.dispose();
        }
        for (const layer of state.layers!) if (layer) for (const t of Object.values(layer)) values.push(Array.from(await (t as tf.Tensor).data()));
        disposeState(state);
        return { values, programs };
      };
      const plain = await run(false);
      const fused = await run(true);
      useFusedKernels(true);
      fused.values.forEach((v, i) => {
        const worst = v.reduce((m, x, j) => Math.max(m, Math.abs(x - plain.values[i][j])), 0);
        expect(worst, `${what}: output ${i}`).to.be.at.most(1e-5);
      });
      console.log(`    ${what}: ${plain.programs} programs a step with the plain ops, ${fused.programs} with the kernels`);
      expect(fused.programs, what).to.be.lessThan(plain.programs / 2);
      expect(tf.memory().numTensors).to.equal(before);
      model.dispose();
    }
  });

  for (const config of CONFIGS) {
    it(`${config}: hidden states, attentions, every head, gradients, greedy generation`, async () => {
      const r = await fixtureParity(fixtureDir(config));
      console.log(`    ${JSON.stringify(r)}`);
      expect(r.pass, JSON.stringify(r)).to.equal(true);
    });

    it(`${config}: beam search equals transformers' (the fused decoding step over the beams, the cache reordered)`, async () => {
      const reference = JSON.parse(fs.readFileSync(path.resolve(fixtureDir(config), '../../beam-search', `${config}.json`), 'utf8'));
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      // One setting a model: a software driver compiles a shader for every new shape (about a minute for all four).
      for (const { setting, sequences } of reference.cases.slice(0, 1)) {
        const out = await generate(model, reference.prompt, {
          attentionMask: reference.attention_mask, eosTokenId: reference.eos_token_id, padTokenId: 0, maxNewTokens: setting.max_new_tokens,
          numBeams: setting.num_beams, numReturnSequences: setting.num_return_sequences, lengthPenalty: setting.length_penalty,
          earlyStopping: setting.early_stopping, repetitionPenalty: setting.repetition_penalty, minNewTokens: setting.min_new_tokens,
        });
        expect(out.sequences, JSON.stringify(setting)).to.deep.equal(sequences);
      }
      model.dispose();
    });

    it(`${config}: PEFT's LoRA adapter: logits, loss, adapter gradients, merged logits`, async () => {
      const r = await loraParity(fixtureDir(config), path.resolve(fixtureDir(config), '../../peft-lora', config));
      console.log(`    ${JSON.stringify(r)}`);
      expect(r.pass, JSON.stringify(r)).to.equal(true);
    });
  }
});
