import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { KVCache, NemotronAttention, NemotronLayerNorm1P, NemotronMLP, PartialRotaryEmbedding, Relu2, applyRotary } from '../../src/index';

function values(t: tf.Tensor): number[] {
  return Array.from(t.dataSync());
}

function expectAllClose(actual: number[], wanted: number[], tol = 1e-6): void {
  expect(actual.length).to.equal(wanted.length);
  actual.forEach((v, i) => expect(Math.abs(v - wanted[i]), `element ${i}: ${v} vs ${wanted[i]}`).to.be.at.most(tol));
}

/** Sets a layer's HF-named weights from plain arrays. */
function setWeights(layer: { namedWeights(): Array<[string, tf.Variable]> }, weights: Record<string, number[]>): void {
  for (const [name, v] of layer.namedWeights()) {
    if (weights[name]) v.assign(tf.tensor(weights[name], v.shape));
  }
}

describe('layers', () => {
  before(() => tf.setBackend('cpu'));

  it('Relu2 is relu(x)², and registers for serialization', () => {
    const layer = new Relu2();
    const y = layer.apply(tf.tensor1d([-2, -0.5, 0, 0.5, 3])) as tf.Tensor;
    expectAllClose(values(y), [0, 0, 0, 0.25, 9]);
    expect(tf.serialization.SerializationMap.getMap().classNameMap.Relu2).to.exist;
    expect(layer.getConfig().name).to.be.a('string');
  });

  it('NemotronLayerNorm1P scales by (1 + weight) and adds the bias', () => {
    const norm = new NemotronLayerNorm1P({ size: 4, eps: 1e-5 });
    setWeights(norm, { weight: [0, 1, -0.5, 0], bias: [0, 0, 0, 2] });
    const x = [1, 2, 3, 4];
    const mean = 2.5;
    const std = Math.sqrt(1.25 + 1e-5); // biased variance of 1..4 is 1.25
    const wanted = x.map((v, i) => ((v - mean) / std) * [1, 2, 0.5, 1][i] + [0, 0, 0, 2][i]);
    expectAllClose(values(norm.apply(tf.tensor2d([x])) as tf.Tensor), wanted, 1e-5);
    expect(norm.getConfig()).to.include({ size: 4, eps: 1e-5 });
    expect(norm.namedWeights().map(([n]) => n)).to.deep.equal(['weight', 'bias']);
  });

  it('Relu2 trains through its written-out derivative 2·relu(x)·dy, equal to autodiff of square(relu(x))', () => {
    const x = tf.tensor2d([[-2, -0.5, 0, 0.5], [3, -1e-3, 1e-3, 7]]);
    const dy = tf.tensor2d([[1, -2, 3, 0.5], [-1, 2, -0.25, 0.1]]);
    const before = tf.memory().numTensors;
    const written = tf.grad((t: tf.Tensor) => tf.mul(new Relu2().apply(t) as tf.Tensor, dy).sum())(x);
    const autodiff = tf.grad((t: tf.Tensor) => tf.mul(tf.square(tf.relu(t)), dy).sum())(x);
    expectAllClose(values(written), values(autodiff), 1e-7);
    expectAllClose(values(written), [0, 0, 0, 0.5, -6, 0, -0.0005, 1.4], 1e-6);
    tf.dispose([written, autodiff]);
    expect(tf.memory().numTensors).to.equal(before);
    tf.dispose([x, dy]);
  });

  it('NemotronLayerNorm1P trains through its written-out backward, equal to autodiff of the plain ops', () => {
    const norm = new NemotronLayerNorm1P({ size: 24, eps: 1e-5 });
    const [weight, bias] = norm.namedWeights().map(([, w]) => w);
    weight.assign(tf.randomNormal([24], 0, 0.5, 'float32', 1));
    bias.assign(tf.randomNormal([24], 0, 0.5, 'float32', 2));
    const x = tf.randomNormal([2, 3, 24], 0.3, 2, 'float32', 3);
    const dy = tf.randomNormal([2, 3, 24], 0, 1, 'float32', 4);
    const before = tf.memory().numTensors;
    const loss = (y: tf.Tensor) => tf.mul(y, dy).sum() as tf.Scalar;
    const written = [tf.grad((t: tf.Tensor) => loss(norm.apply(t) as tf.Tensor))(x)];
    const { value, grads } = tf.variableGrads(() => loss(norm.apply(x) as tf.Tensor), [weight, bias]);
    const plain = ([t, w, b]: tf.Tensor[]) => {
      const { mean, variance } = tf.moments(t, -1, true);
      return loss(tf.add(tf.mul(tf.mul(tf.sub(t, mean), tf.rsqrt(tf.add(variance, 1e-5))), tf.add(w, 1)), b));
    };
    const wanted = tf.grads((t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => plain([t, w, b]))([x, weight, bias]);
    expectAllClose(values(written[0]), values(wanted[0]), 1e-5);
    expectAllClose(values(grads[weight.name]), values(wanted[1]), 1e-5);
    expectAllClose(values(grads[bias.name]), values(wanted[2]), 1e-5);
    tf.dispose([value, ...written, ...wanted, ...Object.values(grads)]);
    expect(tf.memory().numTensors).to.equal(before);
    tf.dispose([x, dy]);
    norm.namedWeights().forEach(([, w]) => w.dispose());
  });

  it('PartialRotaryEmbedding rotates the first rotaryDim channels and passes the rest through', () => {
    // headDim 6, rotaryDim 4 (two frequencies), base 100: inv_freq = [1, 100^(-1/2) = 0.1].
    const rope = new PartialRotaryEmbedding({ headDim: 6, rotaryDim: 4, base: 100 });
    const x = tf.tensor4d([[[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]]]); // [1, 1, 2, 6]
    const y = values(rope.apply([x, tf.tensor2d([[0, 3]], [1, 2], 'int32')]) as tf.Tensor);
    // position 0: unchanged
    expectAllClose(y.slice(0, 6), [1, 2, 3, 4, 5, 6]);
    // position 3: pairs (x0, x2) at angle 3, (x1, x3) at angle 0.3; channels 4, 5 untouched.
    const [a, b] = [3, 0.3];
    const wanted = [
      1 * Math.cos(a) - 3 * Math.sin(a), 2 * Math.cos(b) - 4 * Math.sin(b),
      3 * Math.cos(a) + 1 * Math.sin(a), 4 * Math.cos(b) + 2 * Math.sin(b), 5, 6,
    ];
    expectAllClose(y.slice(6), wanted, 1e-5);
    expect(rope.getConfig()).to.include({ headDim: 6, rotaryDim: 4, base: 100 });
    rope.disposeWeights();
  });

  it('linear rope scaling divides positions by the factor', () => {
    const plain = new PartialRotaryEmbedding({ headDim: 4, rotaryDim: 4, base: 10000 });
    const scaled = new PartialRotaryEmbedding({ headDim: 4, rotaryDim: 4, base: 10000, scalingFactor: 2 });
    const x = tf.randomNormal([1, 1, 1, 4]) as tf.Tensor4D;
    const at = (r: PartialRotaryEmbedding, p: number) => values(r.apply([x, tf.tensor2d([[p]], [1, 1], 'int32')]) as tf.Tensor);
    expectAllClose(at(scaled, 6), at(plain, 3), 1e-6);
    plain.disposeWeights();
    scaled.disposeWeights();
  });

  it('rotary tables grow on demand and are not rebuilt per call', () => {
    const rope = new PartialRotaryEmbedding({ headDim: 4, rotaryDim: 2, base: 10000, initialPositions: 8 });
    const x = tf.ones([1, 1, 1, 4]) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    const y = tf.tidy(() => rope.apply([x, tf.tensor2d([[1000]], [1, 1], 'int32')]) as tf.Tensor);
    expect(tf.memory().numTensors - before, 'one output, tables replaced not added').to.equal(1);
    const expectedCos = Math.cos(1000);
    expectAllClose(values(y).slice(0, 1), [expectedCos - Math.sin(1000)], 1e-4);
    y.dispose();
    rope.disposeWeights();
  });

  it('applyRotary with rotaryDim = headDim rotates every channel (tables with the sign of rotate_half folded in)', () => {
    const x = tf.tensor4d([[[[1, 0]]]]);
    const cos = tf.tensor4d([[[[Math.cos(0.5), Math.cos(0.5)]]]]);
    const sin = tf.tensor4d([[[[-Math.sin(0.5), Math.sin(0.5)]]]]);
    const permutation = tf.tensor2d([[0, 1], [1, 0]]);
    expectAllClose(values(applyRotary(x as tf.Tensor4D, cos, sin, permutation)), [Math.cos(0.5), Math.sin(0.5)], 1e-6);
  });

  it('the rotary tables and permutation of the layer give what applyRotary expects', () => {
    const rope = new PartialRotaryEmbedding({ headDim: 6, rotaryDim: 4, base: 100 });
    // column j holds a single 1, in the row of j's partner
    expect(Array.from(tf.argMax(rope.permutation, 0).dataSync())).to.deep.equal([2, 3, 0, 1, 4, 5]);
    expect(tf.sum(rope.permutation).dataSync()[0]).to.equal(6);
    const [cos, sin] = rope.tables(tf.tensor2d([[3]], [1, 1], 'int32'), 3);
    expectAllClose(values(cos), [Math.cos(3), Math.cos(0.3), Math.cos(3), Math.cos(0.3), 1, 1], 1e-6);
    expectAllClose(values(sin), [-Math.sin(3), -Math.sin(0.3), Math.sin(3), Math.sin(0.3), 0, 0], 1e-6);
    rope.disposeWeights();
  });

  it('NemotronMLP is down(relu²(up(x))) with optional biases', () => {
    const mlp = new NemotronMLP({ hiddenSize: 2, intermediateSize: 3, bias: true, activation: 'relu2' });
    setWeights(mlp, {
      'up_proj.weight': [1, 0, 0, 1, 1, -1], 'up_proj.bias': [0, 0, 1],
      'down_proj.weight': [1, 1, 1, 0, 0, 2], 'down_proj.bias': [0.5, 0],
    });
    // x = [2, 3]: up = [2, 3, 2-3+1=0] → relu² = [4, 9, 0] → down = [4+9+0+0.5, 0+0+0]
    expectAllClose(values(mlp.apply(tf.tensor2d([[2, 3]])) as tf.Tensor), [13.5, 0]);
  });

  describe('NemotronAttention', () => {
    const dims = { hiddenSize: 8, numHeads: 4, headDim: 2, bias: false, layerIndex: 0 };

    /** Reference attention with K/V repeated per group (what transformers' repeat_kv does). */
    function reference(attn: NemotronAttention, x: tf.Tensor3D, kvHeads: number): tf.Tensor {
      return tf.tidy(() => {
        const w = new Map(attn.namedWeights());
        const [b, s] = x.shape;
        const proj = (n: string) => tf.matMul(x.reshape([b * s, 8]), w.get(`${n}.weight`)!, false, true);
        const q = proj('q_proj').reshape([b, s, 4, 2]).transpose([0, 2, 1, 3]);
        const rep = (t: tf.Tensor) => {
          const h = t.reshape([b, s, kvHeads, 2]).transpose([0, 2, 1, 3]);
          return tf.concat(Array.from({ length: kvHeads }, (_, i) =>
            tf.tile(h.slice([0, i, 0, 0], [-1, 1, -1, -1]), [1, 4 / kvHeads, 1, 1])), 1);
        };
        const k = rep(proj('k_proj'));
        const v = rep(proj('v_proj'));
        const causal = tf.linalg.bandPart(tf.ones([s, s]), -1, 0);
        const scores = tf.add(tf.div(tf.matMul(q, k, false, true), Math.sqrt(2)), tf.mul(tf.sub(1, causal), -1e9));
        const ctx = tf.matMul(tf.softmax(scores), v).transpose([0, 2, 1, 3]).reshape([b * s, 8]);
        return tf.matMul(ctx, w.get('o_proj.weight')!, false, true).reshape([b, s, 8]);
      });
    }

    for (const kvHeads of [4, 2, 1]) {
      it(`groups ${4 / kvHeads} query heads per KV head without copying (kv heads ${kvHeads}) and matches repeat_kv`, () => {
        const attn = new NemotronAttention({ ...dims, numKeyValueHeads: kvHeads });
        const x = tf.randomNormal([2, 3, 8], 0, 1, 'float32', 7) as tf.Tensor3D;
        // identity rotary: cos 1, sin 0
        const cos = tf.ones([1, 1, 3, 2]) as tf.Tensor4D;
        const sin = tf.zeros([1, 1, 3, 2]) as tf.Tensor4D;
        const mask = tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([3, 3]), -1, 0)), -3.4e38).reshape([1, 1, 3, 3]);
        const [out, probs] = attn.apply([x, cos, sin, tf.tensor2d([[0, 1], [1, 0]])], { mask, outputAttentions: true }) as tf.Tensor[];
        expectAllClose(values(out), values(reference(attn, x, kvHeads)), 1e-5);
        expect(probs.shape).to.deep.equal([2, 4, 3, 3]);
        expectAllClose(values(tf.sum(probs, -1)), new Array(24).fill(1), 1e-6);
        expect(attn.namedWeights().map(([n]) => n)).to.deep.equal(['q_proj.weight', 'k_proj.weight', 'v_proj.weight', 'o_proj.weight']);
      });
    }

    it('with a KV cache, token-by-token equals the whole sequence at once', () => {
      const attn = new NemotronAttention({ ...dims, numKeyValueHeads: 2 });
      const x = tf.randomNormal([1, 4, 8], 0, 1, 'float32', 3) as tf.Tensor3D;
      const ones = (s: number) => tf.ones([1, 1, s, 2]) as tf.Tensor4D;
      const zeros = (s: number) => tf.zeros([1, 1, s, 2]) as tf.Tensor4D;
      const mask = tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([4, 4]), -1, 0)), -3.4e38).reshape([1, 1, 4, 4]);
      const perm = tf.tensor2d([[0, 1], [1, 0]]);
      const whole = values(attn.apply([x, ones(4), zeros(4), perm], { mask }) as tf.Tensor);
      const cache = new KVCache(1);
      const steps: number[] = [];
      for (let t = 0; t < 4; t++) {
        const xt = x.slice([0, t, 0], [-1, 1, -1]);
        steps.push(...values(attn.apply([xt, ones(1), zeros(1), perm], { cache }) as tf.Tensor));
      }
      expect(cache.length).to.equal(4);
      expectAllClose(steps, whole, 1e-5);
      const before = tf.memory().numTensors;
      cache.dispose();
      expect(before - tf.memory().numTensors).to.equal(2);
    });

    it('rejects heads not divisible by KV heads', () => {
      expect(() => new NemotronAttention({ ...dims, numKeyValueHeads: 3 })).to.throw(/not divisible/);
    });
  });
});
