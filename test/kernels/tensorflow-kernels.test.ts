import * as os from 'os';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  AdamW, KVCache, NemotronAttention, NemotronConfig, NemotronForCausalLM, NemotronLayerNorm1P, NemotronMLP, PartialRotaryEmbedding,
  applyRotary, setBackend, useFusedKernels,
} from '../../src/index';
import { ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL, ATTENTION_KERNEL, DECODE_STEP_KERNEL, LINEAR_KERNEL, ROTARY_KERNEL } from '../../src/kernels/fused';
import { DECODE_STEP_MEMORY_SHARE, decodeStepFits, decodeStepSpec } from '../../src/kernels/tensorflow-graph';
import {
  TransposedProductMode, setTransposedProductMode, swapsTransposedProduct, transposedProductMode,
} from '../../src/kernels/tensorflow-ops';
import { TRANSPOSED_PRODUCT_ENV } from '../../src/backends';
import { ADAMW_TENSORS, adamWThreeSteps, expectClose, kernelsRun, paddedAttentionStep } from '../helpers';

/**
 * The native backend's fused kernels (src/kernels/tensorflow-kernels.ts) and compiled decoding step
 * (src/kernels/tensorflow-graph.ts) against the plain tfjs ops they replace, on the same backend. Float32 sums in
 * another order differ by a few ulps; 1e-5 absolute on values of order 1 is far below the fixtures' 1e-4.
 */
const TOL = 1e-5;

function nativeAvailable(): boolean {
  try {
    require('@tensorflow/tfjs-node');
    return true;
  } catch {
    return false;
  }
}

/** `fn` with the fused kernels on, then off; both results as tensors (the caller disposes them). */
function fusedAndPlain<T extends tf.Tensor | tf.Tensor[]>(fn: () => T): [T, T] {
  useFusedKernels(true);
  const fused = fn();
  useFusedKernels(false);
  try {
    return [fused, fn()];
  } finally {
    useFusedKernels(true);
  }
}

/** TensorFlow handles alive in the binding (raw handles included, which tf.memory() does not see). */
function nativeHandles(): number {
  return (tf.backend() as unknown as { binding: { getNumOfTensors(): number } }).binding.getNumOfTensors();
}

function freeWeights(layer: { namedWeights(): Array<[string, tf.Variable]> }): void {
  layer.namedWeights().forEach(([, w]) => w.dispose());
}

const describeNative = nativeAvailable() ? describe : describe.skip;

/** a [m, k] · b [k, n] in doubles, from plain arrays: the reference for the products below. */
function referenceProduct(a: number[][], b: number[][]): number[][] {
  return a.map((row) => b[0].map((_, j) => row.reduce((sum, v, k) => sum + v * b[k][j], 0)));
}

function expectNear(actual: number[], wanted: number[], tol: number, what: string): void {
  expect(actual.length, what).to.equal(wanted.length);
  const diff = Math.max(...actual.map((v, i) => Math.abs(v - wanted[i])));
  expect(diff, `${what}: max |diff| ${diff}`).to.be.at.most(tol);
}

function transposed(m: number[][]): number[][] {
  return m[0].map((_, j) => m.map((row) => row[j]));
}

describeNative('tensorflow backend: tfjs-node kernels replaced for speed', function () {
  before(async () => { await setBackend('tensorflow'); });

  it('matMul of two matrices, every transposition (MatMul where the first is transposed or neither is), batched ones too', () => {
    const m = 7, k = 33, n = 5;
    const a = (tf.randomNormal([m, k], 0, 1, 'float32', 11).arraySync() as number[][]);
    const b = (tf.randomNormal([k, n], 0, 1, 'float32', 12).arraySync() as number[][]);
    const wanted = referenceProduct(a, b).flat();
    const before = tf.memory().numTensors;
    for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]]) {
      const product = tf.tidy(() => tf.matMul(tf.tensor2d(ta ? transposed(a) : a), tf.tensor2d(tb ? transposed(b) : b), ta, tb));
      expect(product.shape).to.deep.equal([m, n]);
      expectNear(Array.from(product.dataSync()), wanted, 1e-4, `transposeA ${ta}, transposeB ${tb}`);
      product.dispose();
    }
    // Rank 3 keeps tfjs-node's BatchMatMulV2 (broadcast batch).
    const batched = tf.tidy(() => tf.matMul(tf.stack([tf.tensor2d(a), tf.tensor2d(a)]), tf.tensor2d(b).expandDims(0)));
    expectNear(Array.from(batched.dataSync()), [...wanted, ...wanted], 1e-4, 'batched');
    batched.dispose();
    // Gradients run through the same kernel (dy·W and dyᵀ·x of a linear).
    const [x, w] = [tf.tensor2d(a), tf.tensor2d(transposed(b))];
    const [dx, dw] = tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.matMul(p, q, false, true).sum())([x, w]);
    const ones = Array.from({ length: m }, () => new Array<number>(n).fill(1));
    expectNear(Array.from(dx.dataSync()), referenceProduct(ones, transposed(b)).flat(), 1e-4, 'dx');
    expectNear(Array.from(dw.dataSync()), referenceProduct(transposed(ones), a).flat(), 1e-4, 'dw');
    tf.dispose([x, w, dx, dw]);
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('reshape (target shapes made once): float32 and int32, an inferred axis; no tensor or handle left', () => {
    const x = tf.range(0, 24, 1, 'float32');
    const ids = tf.range(0, 24, 1, 'int32');
    tf.dispose([x.reshape([2, 3, 4]), ids.reshape([4, -1])]); // the target shapes are made on first use
    const before = tf.memory().numTensors;
    const handles = nativeHandles();
    for (let i = 0; i < 3; i++) {
      const r = x.reshape([2, 3, 4]);
      expect(r.shape).to.deep.equal([2, 3, 4]);
      expect((r.arraySync() as number[][][])[1][2][3]).to.equal(23);
      const q = ids.reshape([4, -1]);
      expect(q.shape).to.deep.equal([4, 6]);
      expect(q.dtype).to.equal('int32');
      expect((q.arraySync() as number[][])[3][5]).to.equal(23);
      tf.dispose([r, q]);
    }
    expect(tf.memory().numTensors).to.equal(before);
    expect(nativeHandles()).to.equal(handles);
    expect(() => x.reshape([5, 5])).to.throw(/24|25|shape/);
    tf.dispose([x, ids]);
  });
});

describeNative('tensorflow backend: x·Wᵀ as (W·xᵀ)ᵀ on machines that read a transposed weight slowly', function () {
  this.timeout(120_000);
  let chosen: TransposedProductMode;
  before(async () => {
    await setBackend('tensorflow');
    chosen = transposedProductMode();
  });
  afterEach(() => setTransposedProductMode(chosen));

  it('swaps large weights with more rows than x (twice as many under 2^20 values) in swapped mode, every product of two rows or more in always-swapped, none in direct', () => {
    const shapes: Array<[number, number, number, boolean]> = [
      // m, k, n, swapped in 'swapped' mode
      [8, 3072, 9216, true], [512, 3072, 3072, true], [2047, 1024, 2048, true], [128, 1024, 256, true],
      [2048, 1024, 1024, false], [129, 1024, 256, false], // x about as large as W
      [4, 256, 4096, false], [4, 1024, 128, false], // short rows (k < 512), W under 2^18 values
    ];
    for (const [m, k, n, swapped] of shapes) {
      setTransposedProductMode('swapped');
      expect(swapsTransposedProduct(m, k, n), `swapped mode, ${m} × ${k} by ${n} × ${k}`).to.equal(swapped);
      setTransposedProductMode('always-swapped');
      expect(swapsTransposedProduct(m, k, n), `always-swapped, ${m} × ${k} by ${n} × ${k}`).to.equal(true);
      setTransposedProductMode('direct');
      expect(swapsTransposedProduct(m, k, n), `direct, ${m} × ${k} by ${n} × ${k}`).to.equal(false);
    }
    setTransposedProductMode('always-swapped');
    expect(swapsTransposedProduct(1, 64, 64), 'one row (W·xᵀ already)').to.equal(false);
  });

  it('matMul a·bᵀ and aᵀ·bᵀ, their gradients, and the linear and MLP kernels give the same values in every mode', () => {
    // 8 × 1,024 by 2,048 × 1,024: large enough for 'swapped' mode's rule; values of order 1.
    const [m, k, n] = [8, 1024, 2048];
    const a = tf.randomNormal([m, k], 0, 1, 'float32', 21);
    const w = tf.randomNormal([n, k], 0, 1 / 32, 'float32', 22);
    const bias = tf.randomNormal([n], 0, 1, 'float32', 23);
    const mlp = new NemotronMLP({ hiddenSize: k, intermediateSize: n, bias: false, activation: 'relu2', initializerRange: 1 / 32 });
    const x3 = tf.randomNormal([1, m, k], 0, 1, 'float32', 24);
    const run = (mode: TransposedProductMode) => {
      setTransposedProductMode(mode);
      const [dx, dw] = tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.matMul(p, q, false, true).square().sum())([a, w]);
      return [
        tf.matMul(a, w, false, true), tf.tidy(() => tf.matMul(a.transpose(), w, true, true)), dx, dw,
        tf.engine().runKernel(LINEAR_KERNEL, { x: a, weight: w, bias }) as tf.Tensor, mlp.apply(x3) as tf.Tensor,
      ];
    };
    run('direct').forEach((t) => t.dispose()); // tfjs's gradient helpers, the layer's weights: made once
    const before = tf.memory().numTensors;
    const handles = nativeHandles();
    const direct = run('direct');
    const names = ['a·bᵀ', 'aᵀ·bᵀ', 'd/da', 'd/db', 'linear kernel', 'MLP kernel'];
    // TOL on values of order 1, scaled by the largest (d/db's are ~6: twice an output times 8 rows of x).
    const scale = direct.map((t) => Math.max(1, tf.tidy(() => t.abs().max().dataSync()[0])));
    for (const mode of ['swapped', 'always-swapped'] as const) {
      const results = run(mode);
      results.forEach((t, i) => expectClose(t, direct[i].clone(), TOL * scale[i], `${mode}: ${names[i]}`));
      tf.dispose(results);
    }
    tf.dispose(direct);
    expect(tf.memory().numTensors).to.equal(before);
    expect(nativeHandles()).to.equal(handles);
    tf.dispose([a, w, bias, x3]);
    freeWeights(mlp);
  });

  it(`$${TRANSPOSED_PRODUCT_ENV}: a mode by name is taken; anything else is refused by name`, async () => {
    const saved = process.env[TRANSPOSED_PRODUCT_ENV];
    try {
      process.env[TRANSPOSED_PRODUCT_ENV] = 'always-swapped';
      await setBackend('tensorflow');
      expect(transposedProductMode()).to.equal('always-swapped');
      process.env[TRANSPOSED_PRODUCT_ENV] = 'transposed';
      let message = '';
      await setBackend('tensorflow').catch((e: Error) => { message = e.message; });
      expect(message).to.match(/NEMOTRON_TRANSPOSED_PRODUCT="transposed" is not a mode; expected one of auto, direct, swapped, always-swapped/);
    } finally {
      if (saved === undefined) delete process.env[TRANSPOSED_PRODUCT_ENV];
      else process.env[TRANSPOSED_PRODUCT_ENV] = saved;
      await setBackend('tensorflow');
    }
  });
});

describeNative('tensorflow backend: fused kernels equal the plain ops', function () {
  this.timeout(60_000);
  before(async () => { await setBackend('tensorflow'); });
  after(() => useFusedKernels(true));

  it('LayerNorm1P', () => {
    const norm = new NemotronLayerNorm1P({ size: 96, eps: 1e-5 });
    norm.namedWeights().forEach(([, w], i) => w.assign(tf.randomNormal([96], 0, 0.3, 'float32', 1 + i)));
    const x = tf.randomNormal([5, 96], 0.5, 2, 'float32', 3);
    const [fused, plain] = fusedAndPlain(() => norm.apply(x) as tf.Tensor);
    expectClose(fused, plain, TOL, 'LayerNorm1P');
    tf.dispose([fused, plain, x]);
    freeWeights(norm);
  });

  it('rotary, partial and full', () => {
    for (const rotaryDim of [8, 16]) {
      const rope = new PartialRotaryEmbedding({ headDim: 16, rotaryDim, base: 10000 });
      const x = tf.randomNormal([2, 3, 5, 16], 0, 1, 'float32', rotaryDim) as tf.Tensor4D;
      const positions = tf.tensor2d([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]], [2, 5], 'int32');
      const [cos, sin] = rope.tables(positions, 11);
      const fused = tf.engine().runKernel(ROTARY_KERNEL, { x, cos, sin }, { rotaryDim }) as tf.Tensor;
      const plain = applyRotary(x, cos, sin, rope.permutation);
      expectClose(fused, plain, TOL, `rotary ${rotaryDim}/16`);
      tf.dispose([x, positions, cos, sin, fused, plain]);
      rope.disposeWeights();
    }
  });

  it('linear: one, two and five rows (each takes its own TensorFlow op), with and without bias', () => {
    const weight = tf.randomNormal([48, 32], 0, 0.2, 'float32', 4);
    const bias = tf.randomNormal([48], 0, 0.2, 'float32', 5);
    for (const rows of [1, 2, 5]) {
      const x = tf.randomNormal([rows, 32], 0, 1, 'float32', rows);
      for (const b of [undefined, bias]) {
        const fused = tf.engine().runKernel(LINEAR_KERNEL, b ? { x, weight, bias: b } : { x, weight }) as tf.Tensor;
        const plain = tf.tidy(() => {
          const y = tf.matMul(x, weight, false, true);
          return b ? tf.add(y, b) : y;
        });
        expect(fused.shape).to.deep.equal([rows, 48]);
        expectClose(fused, plain, TOL, `linear rows ${rows}${b ? ' + bias' : ''}`);
        tf.dispose([fused, plain]);
      }
      x.dispose();
    }
    tf.dispose([weight, bias]);
  });

  it('MLP: relu² and relu, with biases', () => {
    for (const activation of ['relu2', 'relu'] as const) {
      const mlp = new NemotronMLP({ hiddenSize: 32, intermediateSize: 64, bias: true, activation, initializerRange: 0.2 });
      mlp.namedWeights().forEach(([, w], i) => { if (w.shape.length === 1) w.assign(tf.randomNormal(w.shape, 0, 0.1, 'float32', 10 + i)); });
      for (const rows of [1, 3]) {
        const x = tf.randomNormal([rows, 32], 0, 1, 'float32', 20 + rows);
        const [fused, plain] = fusedAndPlain(() => mlp.apply(x) as tf.Tensor);
        expectClose(fused, plain, TOL, `MLP ${activation} rows ${rows}`);
        tf.dispose([x, fused, plain]);
      }
      freeWeights(mlp);
    }
  });

  it('attention: prefill into a cache, then a token, with a padding mask; the caches agree too', () => {
    const args = { hiddenSize: 32, numHeads: 4, numKeyValueHeads: 2, headDim: 16, bias: true, layerIndex: 0, initializerRange: 0.2 };
    const attention = new NemotronAttention(args);
    const rope = new PartialRotaryEmbedding({ headDim: 16, rotaryDim: 8, base: 10000 });
    const run = (fused: boolean) => {
      useFusedKernels(fused);
      const cache = new KVCache(1);
      const outputs: tf.Tensor[] = [];
      for (const [seq, start] of [[4, 0], [1, 4]]) {
        const { hidden, cos, sin, mask } = paddedAttentionStep(rope, seq, start, 32, seq);
        const result = attention.apply([hidden, cos, sin, rope.permutation], { mask, cache, rotaryDim: 8 }) as tf.Tensor | tf.Tensor[];
        outputs.push(Array.isArray(result) ? result[0] : result);
        tf.dispose([hidden, cos, sin, mask]);
      }
      outputs.push(cache.keys[0]!.clone(), cache.values[0]!.clone());
      cache.dispose();
      useFusedKernels(true);
      return outputs;
    };
    let counts = new Map<string, number>();
    let fused: tf.Tensor[] = [];
    counts = kernelsRun(() => { fused = run(true); });
    expect(counts.get('NemotronAttention'), 'the fused attention kernel ran').to.equal(2);
    const plain = run(false);
    ['prefill output', 'token output', 'cached keys', 'cached values'].forEach((what, i) => expectClose(fused[i], plain[i], TOL, what));
    tf.dispose([...fused, ...plain]);
    freeWeights(attention);
    rope.disposeWeights();
  });
});

describeNative('tensorflow backend: AdamW through ResourceApplyAdam', function () {
  before(async () => { await setBackend('tensorflow'); });
  after(() => useFusedKernels(true));

  it('equals the plain ops\' update (parameters and both moments, with and without decay), and leaks nothing', () => {
    adamWThreeSteps(true, 5).tensors.forEach((t) => t.dispose()); // warm-up: constants, first allocations
    const tensors = tf.memory().numTensors;
    const handles = nativeHandles();
    const fused = adamWThreeSteps(true, 7);
    const plain = adamWThreeSteps(false, 7);
    expect(fused.byKernel.get(ADAMW_KERNEL), 'the two decaying parameters as one tensor, once a step').to.equal(3);
    expect(fused.byKernel.get(ADAMW_RESIDENT_KERNEL), 'the bias alone, its moments kept, once a step').to.equal(3);
    expect(plain.kernels).to.equal(0);
    fused.tensors.forEach((t, i) => expectClose(t, plain.tensors[i], 1e-6, ADAMW_TENSORS[i]));
    tf.dispose(fused.tensors);
    expect(tf.memory().numTensors, 'tfjs tensors').to.equal(tensors);
    expect(nativeHandles(), 'TensorFlow handles').to.equal(handles);
  });
});

describeNative('tensorflow backend: AdamW with the moments kept in TensorFlow variables (parameters over 2^18 values)', function () {
  this.timeout(60_000);
  before(async () => { await setBackend('tensorflow'); });
  after(() => useFusedKernels(true));

  /**
   * Four steps of a 600 × 512 weight (decays) and a 300,000-value bias (does not); after step 2 the moments are read
   * (kept as copies) and the state saved, and a second optimizer resumes from that state for steps 3–4 — or, without
   * `resume`, the same optimizer takes steps 3–4 with the AdamW kernels off (nothing read in between).
   */
  async function fourSteps(fused: boolean, resume = true): Promise<{ tensors: tf.Tensor[]; afterTwo: tf.Tensor[]; kernels: Map<string, number> }> {
    useFusedKernels(fused, [ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL]);
    const params = new Map(tf.tidy(() => [
      ['layers.0.mlp.up_proj.weight', tf.variable(tf.randomNormal([600, 512], 0, 0.5, 'float32', 31))],
      ['layers.0.mlp.up_proj.bias', tf.variable(tf.randomNormal([300_000], 0, 0.5, 'float32', 32))],
    ] as Array<[string, tf.Variable]>));
    const names = [...params.keys()];
    let optimizer = new AdamW(params, { weightDecay: 0.1 });
    const kernels = new Map<string, number>();
    let afterTwo: tf.Tensor[] = [];
    for (let step = 0; step < 4; step++) {
      const grads = new Map([...params].map(([name, p], i) => [name, tf.randomNormal(p.shape, 0, 1, 'float32', 40 + 10 * step + i)]));
      kernelsRun(() => optimizer.apply(grads, 0.05 / (step + 1))).forEach((n, k) => kernels.set(k, (kernels.get(k) ?? 0) + n));
      tf.dispose([...grads.values()]);
      if (step === 1) {
        if (resume) {
          afterTwo = [...names.map((n) => optimizer.expAvg.get(n)!), ...names.map((n) => optimizer.expAvgSq.get(n)!)].map((t) => t.clone());
          const state = new Map((await optimizer.stateTensors()).map((t) => [t.name, t]));
          const resumed = new AdamW(params, { weightDecay: 0.1 });
          resumed.loadState(optimizer.step, state);
          optimizer.dispose();
          optimizer = resumed;
        } else {
          useFusedKernels(false, [ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL]); // steps 3–4 on the plain ops, same optimizer
        }
      }
    }
    const tensors = [...params.values(), ...names.map((n) => optimizer.expAvg.get(n)!), ...names.map((n) => optimizer.expAvgSq.get(n)!)].map((t) => t.clone());
    optimizer.dispose();
    tf.dispose([...params.values()]);
    useFusedKernels(true);
    return { tensors, afterTwo, kernels };
  }

  it('equals the plain update, moments read between steps and state saved and resumed included; leaks nothing', async () => {
    (await fourSteps(true)).tensors.forEach((t) => t.dispose()); // warm-up: constants, first allocations
    const tensors = tf.memory().numTensors;
    const handles = nativeHandles();
    const fused = await fourSteps(true);
    const plain = await fourSteps(false);
    expect(fused.kernels.get(ADAMW_RESIDENT_KERNEL), 'one kernel a parameter a step').to.equal(8);
    expect(fused.kernels.get(ADAMW_KERNEL) ?? 0).to.equal(0);
    expect(plain.kernels.get(ADAMW_RESIDENT_KERNEL) ?? 0).to.equal(0);
    const names = ['weight', 'bias', 'exp_avg weight', 'exp_avg bias', 'exp_avg_sq weight', 'exp_avg_sq bias'];
    fused.tensors.forEach((t, i) => expectClose(t, plain.tensors[i], 1e-6, names[i]));
    // Read after step 2, the moments kept their values through steps 3 and 4 (updated in place only when unshared).
    fused.afterTwo.forEach((t, i) => expectClose(t, plain.afterTwo[i], 1e-6, `after step 2: ${names[i + 2]}`));
    tf.dispose([...fused.tensors, ...fused.afterTwo]);
    expect(tf.memory().numTensors, 'tfjs tensors').to.equal(tensors);
    expect(nativeHandles(), 'TensorFlow handles (the variables destroyed)').to.equal(handles);
  });

  it('hands its kept moments back as tensors when the kernel stops applying (here: turned off after two steps)', async () => {
    const tensors = tf.memory().numTensors;
    const handles = nativeHandles();
    const switched = await fourSteps(true, false);
    const plain = await fourSteps(false);
    expect(switched.kernels.get(ADAMW_RESIDENT_KERNEL), 'two steps of two parameters').to.equal(4);
    const names = ['weight', 'bias', 'exp_avg weight', 'exp_avg bias', 'exp_avg_sq weight', 'exp_avg_sq bias'];
    switched.tensors.forEach((t, i) => expectClose(t, plain.tensors[i], 1e-6, names[i]));
    tf.dispose([...switched.tensors, ...plain.afterTwo]);
    expect(tf.memory().numTensors, 'tfjs tensors').to.equal(tensors);
    expect(nativeHandles(), 'TensorFlow handles').to.equal(handles);
  });
});

describeNative('tensorflow backend: the decoding step as one graph', function () {
  this.timeout(120_000);
  before(async () => { await setBackend('tensorflow'); });
  after(() => useFusedKernels(true));

  const base = {
    vocabSize: 64, hiddenSize: 32, numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 8, intermediateSize: 48,
    numHiddenLayers: 2, maxPositionEmbeddings: 64, initializerRange: 0.2,
  };

  /** Prefill, then `steps` decoding steps fed fixed tokens; the logits of every step and the final caches. */
  function decode(model: NemotronForCausalLM, prompts: number[][], mask: number[][], steps: number): tf.Tensor[] {
    const cache = new KVCache(model.config.numHiddenLayers);
    const out: tf.Tensor[] = [];
    const attention = mask.map((r) => r.slice());
    const positions = attention.map((row) => row.map((_, i) => Math.max(0, row.slice(0, i + 1).reduce((a, b) => a + b, 0) - 1)));
    const first = model.forward({ inputIds: prompts, attentionMask: attention, positionIds: positions, pastKeyValues: cache, useCache: true, logitsToKeep: 1 });
    out.push(first.logits);
    for (let s = 0; s < steps; s++) {
      attention.forEach((row) => row.push(1));
      const pos = attention.map((row) => [row.reduce((a, b) => a + b, 0) - 1]);
      const step = model.forward({
        inputIds: prompts.map((_, b) => [(7 * s + 3 * b + 1) % 64]), attentionMask: attention, positionIds: pos,
        pastKeyValues: cache, useCache: true, logitsToKeep: 1,
      });
      out.push(step.logits);
    }
    out.push(...cache.keys.map((k) => k!.clone()), ...cache.values.map((v) => v!.clone()));
    cache.dispose();
    return out;
  }

  const cases: Array<[string, Partial<typeof base> & Record<string, unknown>, number[][], number[][]]> = [
    ['batch 1, GQA, relu²', {}, [[5, 9, 2, 7]], [[1, 1, 1, 1]]],
    ['batch 2, left padding (mask), biases', { attentionBias: true, mlpBias: true }, [[0, 9, 2, 7], [4, 4, 8, 1]], [[0, 1, 1, 1], [1, 1, 1, 1]]],
    ['batch 3, MHA, full rotary, relu', { numKeyValueHeads: 4, partialRotaryFactor: 1, hiddenAct: 'relu' }, [[1, 2], [3, 4], [5, 6]], [[1, 1], [1, 1], [1, 1]]],
    ['batch 2, output projection tied to the embeddings', { tieWordEmbeddings: true }, [[3, 1, 4], [1, 5, 9]], [[1, 1, 1], [1, 1, 1]]],
  ];
  for (const [name, fields, prompts, mask] of cases) {
    it(`${name}: logits and caches equal the layer-by-layer path (compiled step, and fused kernels alone)`, () => {
      const model = new NemotronForCausalLM(new NemotronConfig({ ...base, ...fields } as never));
      let fused: tf.Tensor[] = [];
      useFusedKernels(true);
      const counts = kernelsRun(() => { fused = decode(model, prompts, mask, 5); });
      expect(counts.get(DECODE_STEP_KERNEL), 'decoding steps run as one graph').to.equal(5);
      // The fused kernels without the compiled step: what a GPU build of the binding runs.
      let eager: tf.Tensor[] = [];
      useFusedKernels(false, [DECODE_STEP_KERNEL]);
      const eagerCounts = kernelsRun(() => { eager = decode(model, prompts, mask, 5); });
      expect(eagerCounts.get(DECODE_STEP_KERNEL) ?? 0, 'no compiled step').to.equal(0);
      expect(eagerCounts.get(ATTENTION_KERNEL), 'fused attention, prefill and every step').to.equal(6 * model.config.numHiddenLayers);
      useFusedKernels(false);
      const plain = decode(model, prompts, mask, 5);
      useFusedKernels(true);
      // expectClose disposes its reference: the first comparison gets a copy.
      fused.forEach((t, i) => expectClose(t, plain[i].clone(), TOL, i <= 5 ? `logits of step ${i}` : `cache tensor ${i - 6}`));
      eager.forEach((t, i) => expectClose(t, plain[i], TOL, i <= 5 ? `eager kernels: logits of step ${i}` : `eager kernels: cache tensor ${i - 6}`));
      tf.dispose([...fused, ...eager, ...plain]);
      model.dispose();
    });
  }

  it('records its products swapped in always-swapped mode (every linear of two rows or more): same logits and caches', () => {
    const chosen = transposedProductMode();
    for (const [name, fields, prompts, mask] of cases.slice(1, 3)) {
      const model = new NemotronForCausalLM(new NemotronConfig({ ...base, ...fields } as never));
      useFusedKernels(false);
      const plain = decode(model, prompts, mask, 3);
      useFusedKernels(true);
      setTransposedProductMode('always-swapped');
      let swapped: tf.Tensor[] = [];
      try {
        const counts = kernelsRun(() => { swapped = decode(model, prompts, mask, 3); });
        expect(counts.get(DECODE_STEP_KERNEL), `${name}: decoding steps run as one graph`).to.equal(3);
      } finally {
        setTransposedProductMode(chosen);
      }
      swapped.forEach((t, i) => expectClose(t, plain[i], TOL, `${name}: ${i <= 3 ? `logits of step ${i}` : `cache tensor ${i - 4}`}`));
      tf.dispose(swapped);
      model.dispose();
    }
  });

  it('applies the output projection in the compiled step: projectedLogits = lastHiddenState · Wᵀ', () => {
    const model = new NemotronForCausalLM(new NemotronConfig(base as never));
    const cache = new KVCache(model.config.numHiddenLayers);
    tf.dispose(model.forward({ inputIds: [[5, 9, 2]], pastKeyValues: cache, useCache: true, logitsToKeep: 1 }).logits);
    const weight = model.outputWeight;
    const counts = kernelsRun(() => {
      const out = model.model.forward({ inputIds: [[7]], pastKeyValues: cache, useCache: true }, undefined, weight);
      expect(out.projectedLogits, 'computed by the step').to.not.equal(undefined);
      const expected = tf.matMul(out.lastHiddenState.reshape([1, -1]), weight, false, true);
      expectClose(out.projectedLogits!, expected, TOL, 'projected logits');
      tf.dispose([out.lastHiddenState, out.projectedLogits!]);
    });
    expect(counts.get(DECODE_STEP_KERNEL)).to.equal(1);
    cache.dispose();
    model.dispose();
  });

  it('sees weights changed after compiling (training, then generating)', () => {
    const model = new NemotronForCausalLM(new NemotronConfig(base as never));
    const before = decode(model, [[1, 2, 3]], [[1, 1, 1]], 2);
    const q = model.namedParameters().get('model.layers.1.self_attn.q_proj.weight')!;
    q.assign(tf.mul(q, 3));
    const fused = decode(model, [[1, 2, 3]], [[1, 1, 1]], 2);
    useFusedKernels(false);
    const plain = decode(model, [[1, 2, 3]], [[1, 1, 1]], 2);
    useFusedKernels(true);
    expect(tf.max(tf.abs(tf.sub(before[2], fused[2]))).dataSync()[0], 'the change shows').to.be.greaterThan(1e-3);
    fused.forEach((t, i) => expectClose(t, plain[i], TOL, `after the change, output ${i}`));
    tf.dispose([...before, ...fused, ...plain]);
    model.dispose();
  });

  it('falls back to the layers, with a warning, where the graph cannot be loaded (here: no writable temporary folder)', () => {
    const model = new NemotronForCausalLM(new NemotronConfig({ ...base, numHiddenLayers: 3 } as never));
    const tmp = process.env.TMPDIR;
    const warn = console.warn;
    const warnings: string[] = [];
    process.env.TMPDIR = '/nonexistent/nemotron-tfjs-test';
    console.warn = (message: string) => { warnings.push(message); };
    let fused: tf.Tensor[] = [];
    try {
      fused = decode(model, [[1, 2, 3]], [[1, 1, 1]], 3);
    } finally {
      console.warn = warn;
      if (tmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = tmp;
    }
    expect(warnings, 'one warning, then no further attempt').to.have.length(1);
    expect(warnings[0]).to.match(/compiled decoding step could not be loaded .*decoding layer by layer/);
    useFusedKernels(false);
    const plain = decode(model, [[1, 2, 3]], [[1, 1, 1]], 3);
    useFusedKernels(true);
    fused.forEach((t, i) => expectClose(t, plain[i], TOL, `fallback output ${i}`));
    tf.dispose([...fused, ...plain]);
    model.dispose();
  });

  it('leaves models whose weights are too large to copy each run to the eager kernels', () => {
    expect(decodeStepFits(1e6), 'small').to.equal(true);
    expect(decodeStepFits(DECODE_STEP_MEMORY_SHARE * os.totalmem() + 1), 'too large').to.equal(false);
    // The model asks decodeStepFits before compiling (models/nemotron/model.ts); the spec is about shapes only.
    const config = new NemotronConfig(base as never);
    expect(decodeStepSpec(config, 1, false), 'the spec itself does not depend on sizes').to.not.equal(null);
  });

  it('leaves no tensor behind, tfjs or raw TensorFlow handle, step after step', () => {
    const model = new NemotronForCausalLM(new NemotronConfig({ ...base, attentionBias: true } as never));
    tf.dispose(decode(model, [[1, 2, 3], [0, 4, 5]], [[1, 1, 1], [0, 1, 1]], 3)); // compiles the graphs, caches constants
    const tensors = tf.memory().numTensors;
    const handles = nativeHandles();
    for (let i = 0; i < 3; i++) tf.dispose(decode(model, [[1, 2, 3], [0, 4, 5]], [[1, 1, 1], [0, 1, 1]], 3));
    expect(tf.memory().numTensors, 'tfjs tensors').to.equal(tensors);
    expect(nativeHandles(), 'TensorFlow handles').to.equal(handles);
    model.dispose();
  });
});
