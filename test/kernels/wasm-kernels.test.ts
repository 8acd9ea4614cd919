import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmTrainingKernels } from '../../src/kernels/wasm-kernels';

type Nested = number | Nested[];

/** Deterministic values in [-1, 1), the same on every backend. */
function seeded(n: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(s / 2 ** 31 - 1);
  }
  return out;
}

/** Runs `fn` with `backend` active and returns what it computed as plain arrays. */
async function on<T>(backend: 'cpu' | 'wasm', fn: () => T): Promise<T> {
  expect(await tf.setBackend(backend), `setBackend(${backend})`).to.equal(true);
  await tf.ready();
  expect(tf.getBackend()).to.equal(backend);
  return fn();
}

function flat(x: Nested): number[] {
  return Array.isArray(x) ? x.flatMap(flat) : [x];
}

function expectAllClose(actual: Nested, expected: Nested, tol: number, what: string): void {
  const a = flat(actual);
  const e = flat(expected);
  expect(a.length, `${what}: size`).to.equal(e.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    expect(Number.isFinite(a[i]), `${what}[${i}] finite`).to.equal(true);
    worst = Math.max(worst, Math.abs(a[i] - e[i]));
  }
  expect(worst, `${what}: max |diff| ${worst}`).to.be.at.most(tol);
}

interface SegCase {
  name: string;
  x: number[];
  xShape: number[];
  ids: number[];
  numSegments: number;
}

const SEG_CASES: SegCase[] = [
  { name: '1-D, repeated ids', x: [1, 2, 3, 4, 5, 6], xShape: [6], ids: [1, 2, 0, 1, 1, 2], numSegments: 3 },
  { name: '1-D, ids out of range', x: [1, 2, 3, 4, 5, 6], xShape: [6], ids: [0, -1, 3, 7, 2, 0], numSegments: 4 },
  { name: '2-D, repeated ids', x: seeded(5 * 3, 7), xShape: [5, 3], ids: [2, 0, 2, 2, 1], numSegments: 3 },
  {
    name: '2-D, numSegments larger than max id, some out of range',
    x: seeded(6 * 4, 11),
    xShape: [6, 4],
    ids: [0, 1, 9, -3, 1, 0],
    numSegments: 6,
  },
  { name: '3-D data, 1-D ids', x: seeded(4 * 2 * 3, 13), xShape: [4, 2, 3], ids: [3, 3, 0, 1], numSegments: 5 },
];

function segmentSum(c: SegCase): { shape: number[]; values: Nested } {
  return tf.tidy(() => {
    const r = tf.unsortedSegmentSum(tf.tensor(c.x, c.xShape), tf.tensor1d(c.ids, 'int32'), c.numSegments);
    return { shape: r.shape, values: r.arraySync() as Nested };
  });
}

/** d/dx sum(gather(x, idx) * w) */
function gatherGrad(axis: number): Nested {
  return tf.tidy(() => {
    const x = tf.tensor(seeded(6 * 5, 3), [6, 5]);
    const idx = axis === 0 ? tf.tensor2d([[0, 5, 2], [2, 2, 4]], [2, 3], 'int32') : tf.tensor1d([4, 0, 4, 1], 'int32');
    const wShape = axis === 0 ? [2, 3, 5] : [6, 4];
    const w = tf.tensor(seeded(wShape.reduce((a, b) => a * b, 1), 5), wShape);
    const g = tf.grad((a: tf.Tensor) => tf.sum(tf.mul(tf.gather(a, idx, axis), w)))(x);
    return g.arraySync() as Nested;
  });
}

const V = 7; // vocab
const D = 6; // hidden
const H = 8; // inner
const IDS = [
  [2, 3, 3, 0],
  [6, 2, 1, 2],
];
const TARGETS = [3, 1, 0, 6, 2, 2, 5, 4];

interface TinyModel {
  vars: tf.Variable[];
  loss: () => tf.Scalar;
}

/** Embedding → layer norm (moments, rsqrt) → matMul → slice/concat with relu / square → matMul → softmax losses. */
function tinyModel(): TinyModel {
  // Made inside tidy so the initial-value tensors are disposed; variables outlive tidy.
  const variable = (values: number[], shape: number[]): tf.Variable => tf.tidy(() => tf.variable(tf.tensor(values, shape)));
  const emb = variable(seeded(V * D, 21), [V, D]);
  const gamma = variable(
    seeded(D, 22).map((v) => 1 + 0.1 * v),
    [D],
  );
  const w1 = variable(seeded(D * H, 23), [D, H]);
  const w2 = variable(seeded(H * V, 24), [H, V]);
  const loss = (): tf.Scalar =>
    tf.tidy(() => {
      const ids = tf.tensor2d(IDS, [2, 4], 'int32');
      const n = IDS.length * IDS[0].length;
      const h = tf.reshape(tf.gather(emb, ids), [n, D]);
      const { mean, variance } = tf.moments(h, -1, true);
      const hn = tf.mul(tf.mul(tf.sub(h, mean), tf.rsqrt(tf.add(variance, 1e-5))), gamma);
      const z = tf.matMul(hn, w1);
      const a = tf.slice(z, [0, 0], [n, H / 2]);
      const b = tf.slice(z, [0, H / 2], [n, H / 2]);
      const u = tf.concat([tf.relu(a), tf.mul(tf.square(b), 0.5)], 1);
      const logits = tf.matMul(u, w2);
      const onehot = tf.oneHot(tf.tensor1d(TARGETS, 'int32'), V);
      const nll = tf.neg(tf.mean(tf.sum(tf.mul(onehot, tf.logSoftmax(logits)), -1)));
      const probs = tf.softmax(logits);
      const aux = tf.mean(tf.mul(probs, tf.sigmoid(logits)));
      return tf.add(nll, aux) as tf.Scalar;
    });
  return { vars: [emb, gamma, w1, w2], loss };
}

function tinyGrads(): { loss: number; grads: Nested[] } {
  const m = tinyModel();
  try {
    const { value, grads } = tf.variableGrads(m.loss, m.vars);
    const out = { loss: value.dataSync()[0], grads: m.vars.map((v) => grads[v.name].arraySync() as Nested) };
    value.dispose();
    tf.dispose(grads);
    return out;
  } finally {
    m.vars.forEach((v) => v.dispose());
  }
}

describe('wasm training kernels', function () {
  this.timeout(120000);

  before(async () => {
    registerWasmTrainingKernels();
    await on('wasm', () => undefined);
  });

  after(async () => {
    await tf.setBackend('cpu');
    await tf.ready();
  });

  it('registers UnsortedSegmentSum for wasm, idempotently', () => {
    const k = tf.getKernel('UnsortedSegmentSum', 'wasm');
    expect(k, 'kernel registered').to.not.equal(undefined);
    expect(() => registerWasmTrainingKernels()).to.not.throw();
    expect(tf.getKernel('UnsortedSegmentSum', 'wasm')).to.equal(k);
  });

  for (const c of SEG_CASES) {
    it(`unsortedSegmentSum matches cpu: ${c.name}`, async () => {
      const ref = await on('cpu', () => segmentSum(c));
      const got = await on('wasm', () => segmentSum(c));
      expect(got.shape).to.deep.equal([c.numSegments, ...c.xShape.slice(1)]);
      expect(got.shape).to.deep.equal(ref.shape);
      expectAllClose(got.values, ref.values, 1e-6, c.name);
    });
  }

  it('unsortedSegmentSum on wasm keeps int32 and handles N-D segment ids', async () => {
    await on('wasm', () => {
      tf.tidy(() => {
        const r = tf.unsortedSegmentSum(tf.tensor1d([1, 2, 3, 4, 5], 'int32'), tf.tensor1d([0, 0, 2, 5, 2], 'int32'), 3);
        expect(r.dtype).to.equal('int32');
        expect(r.arraySync()).to.deep.equal([3, 0, 8]);
        // segmentIds [2,2] over x [2,2,3]: out [numSegments, 3]
        const x = tf.tensor3d(
          [
            [
              [1, 2, 3],
              [10, 20, 30],
            ],
            [
              [100, 200, 300],
              [4, 5, 6],
            ],
          ],
          [2, 2, 3],
        );
        const r2 = tf.unsortedSegmentSum(x, tf.tensor2d([[1, 0], [1, 3]], [2, 2], 'int32') as unknown as tf.Tensor1D, 2);
        expect(r2.shape).to.deep.equal([2, 3]);
        expect(r2.arraySync()).to.deep.equal([
          [10, 20, 30],
          [101, 202, 303],
        ]);
      });
    });
  });

  for (const axis of [0, 1]) {
    it(`gradient of sum(gather(x, idx, ${axis}) * w) w.r.t. x matches cpu`, async () => {
      const ref = await on('cpu', () => gatherGrad(axis));
      const got = await on('wasm', () => gatherGrad(axis));
      expectAllClose(got, ref, 1e-6, `gather grad axis ${axis}`);
    });
  }

  it('variableGrads of gather + moments + matMul + slice/concat + relu/square + softmax matches cpu within 1e-5', async () => {
    const ref = await on('cpu', tinyGrads);
    const got = await on('wasm', tinyGrads);
    expect(Math.abs(got.loss - ref.loss), `loss ${got.loss} vs ${ref.loss}`).to.be.at.most(1e-5);
    expect(got.grads.length).to.equal(ref.grads.length);
    got.grads.forEach((g, i) => expectAllClose(g, ref.grads[i], 1e-5, `grad ${i}`));
    // The embedding gradient is non-zero only on the rows that were looked up.
    const used = new Set(IDS.flat());
    const embGrad = got.grads[0] as number[][];
    embGrad.forEach((row, r) => {
      const nonZero = row.some((v) => v !== 0);
      expect(nonZero, `embedding row ${r}`).to.equal(used.has(r));
    });
  });

  it('does not leak tensors or wasm buffers across repeated calls', async () => {
    await on('wasm', () => {
      const c = SEG_CASES[3];
      const once = (): void => {
        tf.tidy(() => {
          tf.unsortedSegmentSum(tf.tensor(c.x, c.xShape), tf.tensor1d(c.ids, 'int32'), c.numSegments).dataSync();
        });
        gatherGrad(0);
        tinyGrads();
      };
      once();
      const before = tf.memory();
      for (let i = 0; i < 5; i++) once();
      const after = tf.memory();
      expect(after.numTensors, 'numTensors').to.equal(before.numTensors);
      expect(after.numDataBuffers, 'numDataBuffers').to.equal(before.numDataBuffers);
    });
  });
});
