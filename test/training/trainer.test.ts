import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  AdamW, NemotronConfig, NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification,
  NemotronForTokenClassification, TaskName, Trainer, clipByGlobalNorm, learningRate, readJsonl, setBackend, ADAMW_KERNEL,
} from '../../src/index';
import { kernelsRun, testBackends, tmpDir } from '../helpers';

const DATASETS = path.resolve(__dirname, '../../../examples/datasets');
const tiny = (extra: Partial<ConstructorParameters<typeof NemotronConfig>[0]> = {}) => new NemotronConfig({
  vocabSize: 32, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2,
  maxPositionEmbeddings: 64, padTokenId: 0, initializerRange: 0.1, ...extra,
});

const MODELS = {
  'causal-lm': () => new NemotronForCausalLM(tiny()),
  'sequence-classification': () => new NemotronForSequenceClassification(tiny({ numLabels: 2 })),
  'token-classification': () => new NemotronForTokenClassification(tiny({ numLabels: 2 })),
  'question-answering': () => new NemotronForQuestionAnswering(tiny()),
};

describe('training', () => {
  before(() => tf.setBackend('cpu'));

  describe('AdamW, clipping, schedules', () => {
    it('AdamW takes torch.optim.AdamW steps (decoupled decay, bias correction)', () => {
      const p = tf.variable(tf.tensor1d([1, -2]));
      const opt = new AdamW(new Map([['w', p]]), { weightDecay: 0.1, decays: () => true });
      let [m, v, x] = [[0, 0], [0, 0], [1, -2]];
      const g = [0.5, -1.5];
      for (let t = 1; t <= 2; t++) {
        opt.apply(new Map([['w', tf.tensor1d(g)]]), 0.01);
        x = x.map((xi, i) => {
          m[i] = 0.9 * m[i] + 0.1 * g[i];
          v[i] = 0.999 * v[i] + 0.001 * g[i] ** 2;
          const decayed = xi * (1 - 0.01 * 0.1);
          return decayed - (0.01 / (1 - 0.9 ** t)) * m[i] / (Math.sqrt(v[i]) / Math.sqrt(1 - 0.999 ** t) + 1e-8);
        });
      }
      Array.from(p.dataSync()).forEach((val, i) => expect(val).to.be.closeTo(x[i], 1e-6));
      opt.dispose();
      p.dispose();
    });

    it('foreach: small parameters step as one flat tensor per decay, exactly as one by one; large ones alone (every backend)', async () => {
      const shapes: Array<[string, number[]]> = [
        ['model.layers.0.self_attn.q_proj.lora_A.weight', [4, 32]], ['model.layers.0.self_attn.q_proj.lora_B.weight', [48, 4]],
        ['model.layers.0.mlp.up_proj.lora_A.weight', [4, 32]], ['model.layers.0.input_layernorm.weight', [32]],
        ['model.layers.0.mlp.up_proj.bias', [48]], ['model.embed_tokens.weight', [600, 500]],
      ];
      for (const backend of testBackends()) {
        await setBackend(backend);
        const run = (foreach: boolean) => {
          const params = new Map(shapes.map(([name, shape], i) => [name, tf.tidy(() => tf.variable(tf.randomNormal(shape, 0, 1, 'float32', i + 1)))]));
          const opt = new AdamW(params, { weightDecay: 0.1, foreach });
          let kernels = 0;
          for (let step = 0; step < 3; step++) {
            const grads = new Map(shapes.map(([name, shape], i) => [name, tf.randomNormal(shape, 0, 1, 'float32', 100 * step + i + 1)]));
            kernels += kernelsRun(() => opt.apply(grads, 0.01 / (step + 1))).get(ADAMW_KERNEL) ?? 0;
            tf.dispose([...grads.values()]);
          }
          const out = shapes.flatMap(([name]) => [params.get(name)!, opt.expAvg.get(name)!, opt.expAvgSq.get(name)!]).map((t) => t.clone());
          opt.dispose();
          tf.dispose([...params.values()]);
          return { out, kernels };
        };
        const before = tf.memory().numTensors;
        const [together, alone] = [run(true), run(false)];
        together.out.forEach((t, i) => {
          expect(tf.tidy(() => tf.max(tf.abs(tf.sub(t, alone.out[i]))).dataSync()[0]), `${backend}: tensor ${i}`).to.equal(0);
        });
        // With the fused kernel: 3 a step (decayed small ones, undecayed small ones, the large one) instead of 6.
        if (alone.kernels > 0) expect([together.kernels, alone.kernels], backend).to.deep.equal([9, 18]);
        tf.dispose([...together.out, ...alone.out]);
        expect(tf.memory().numTensors, `${backend}: tensors left`).to.equal(before);
      }
      await setBackend('cpu');
    });

    it('no weight decay on biases and LayerNorm weights by default', () => {
      const names = ['model.layers.0.input_layernorm.weight', 'model.norm.bias', 'model.layers.0.mlp.up_proj.bias', 'model.layers.0.mlp.up_proj.weight'];
      const vars = new Map(names.map((n) => [n, tf.variable(tf.ones([2]))]));
      const opt = new AdamW(vars, { weightDecay: 0.5 });
      opt.apply(new Map(names.map((n) => [n, tf.zeros([2])])), 0.1);
      expect(names.map((n) => vars.get(n)!.dataSync()[0])).to.deep.equal([1, 1, 1, Math.fround(1 - 0.05)]);
      opt.dispose();
      tf.dispose([...vars.values()]);
    });

    it('clips by the global norm', async () => {
      const grads = new Map([['a', tf.tensor1d([3, 0])], ['b', tf.tensor1d([0, 4])]]);
      expect(await clipByGlobalNorm(grads, 1)).to.be.closeTo(5, 1e-6);
      expect(Array.from(grads.get('b')!.dataSync())[1]).to.be.closeTo(0.8, 1e-5);
      tf.dispose([...grads.values()]);
    });

    it('schedules: warmup, then constant, linear or cosine', () => {
      const o = { lr: 1, totalSteps: 10, warmupSteps: 2 };
      expect([0, 1, 2].map((s) => learningRate(s, { ...o, name: 'constant' }))).to.deep.equal([0, 0.5, 1]);
      expect(learningRate(6, { ...o, name: 'linear' })).to.be.closeTo(0.5, 1e-12);
      expect(learningRate(6, { ...o, name: 'cosine' })).to.be.closeTo(0.5, 1e-12);
      expect(learningRate(10, { ...o, name: 'cosine' })).to.be.closeTo(0, 1e-12);
      expect(() => learningRate(0, { ...o, lr: 0, name: 'linear' })).to.throw(/learning rate must be > 0, got 0/);
    });
  });

  describe('it learns: each task on its example dataset', () => {
    const cases: Array<[TaskName, number, number]> = [
      // task, steps, the loss must end below this fraction of where it started
      ['causal-lm', 40, 0.3],
      ['sequence-classification', 40, 0.5],
      ['token-classification', 40, 0.5],
      ['question-answering', 40, 0.5],
    ];
    for (const [task, steps, fraction] of cases) {
      it(`${task}: loss falls below ${fraction} of its start in ${steps} steps`, async () => {
        const model = MODELS[task]();
        const examples = readJsonl(path.join(DATASETS, `${task}.jsonl`), task);
        const trainer = new Trainer(model, examples, { task, lr: 3e-3, batchSize: 4, maxSteps: steps, schedule: 'constant', seed: 1 });
        const start = await trainer.evaluate(examples);
        await trainer.fit();
        const end = await trainer.evaluate(examples);
        expect(end, `${task}: ${start} → ${end}`).to.be.below(fraction * start);
        trainer.dispose();
        model.dispose();
      });
    }
  });

  it('gradient accumulation of 2 × 2 equals one batch of 4', async () => {
    const examples = readJsonl(path.join(DATASETS, 'causal-lm.jsonl'), 'causal-lm');
    const losses: number[] = [];
    for (const accum of [1, 2]) {
      const model = new NemotronForCausalLM(tiny());
      tf.tidy(() => { for (const v of model.namedParameters().values()) v.assign(tf.mul(tf.ones(v.shape), 0.05).add(tf.randomNormal(v.shape, 0, 0.1, 'float32', 5))); });
      const trainer = new Trainer(model, examples, { task: 'causal-lm', lr: 1e-2, batchSize: 4 / accum, gradAccum: accum, maxSteps: 3, shuffle: false });
      await trainer.step();
      await trainer.step();
      losses.push(await trainer.evaluate(examples));
      trainer.dispose();
      model.dispose();
    }
    // Not bit-equal: per-batch means weigh tokens differently; the same data must give close losses.
    expect(Math.abs(losses[0] - losses[1])).to.be.below(0.05 * losses[0]);
  });

  it('gradientCheckpointing: the same loss curve and gradient norms as without', async () => {
    const examples = readJsonl(path.join(DATASETS, 'causal-lm.jsonl'), 'causal-lm');
    const runs: Array<Array<[number, number]>> = [];
    for (const gradientCheckpointing of [false, true]) {
      const model = new NemotronForCausalLM(tiny());
      tf.tidy(() => { for (const v of model.namedParameters().values()) v.assign(tf.randomNormal(v.shape, 0, 0.1, 'float32', 7)); });
      const trainer = new Trainer(model, examples, { task: 'causal-lm', lr: 1e-2, batchSize: 4, maxSteps: 4, shuffle: false, gradientCheckpointing });
      expect(model.isGradientCheckpointing).to.equal(gradientCheckpointing);
      await trainer.fit();
      runs.push(trainer.history.map((h) => [h.loss, h.gradNorm]));
      trainer.dispose();
      model.dispose();
    }
    runs[1].forEach(([loss, norm], i) => {
      expect(loss, `loss at step ${i + 1}`).to.be.closeTo(runs[0][i][0], 1e-6 * runs[0][i][0]);
      expect(norm, `gradient norm at step ${i + 1}`).to.be.closeTo(runs[0][i][1], 1e-6 * runs[0][i][1]);
    });
  });

  it('a resumed run continues the same loss curve as an uninterrupted one', async () => {
    const examples = readJsonl(path.join(DATASETS, 'sequence-classification.jsonl'), 'sequence-classification');
    const dir = tmpDir('resume');
    const options = { task: 'sequence-classification' as const, lr: 3e-3, batchSize: 3, maxSteps: 8, schedule: 'cosine' as const, warmupSteps: 2, seed: 5, weightDecay: 0.01 };
    const first = new NemotronForSequenceClassification(tiny({ numLabels: 2 }));
    await first.savePretrained(dir);
    const straight = new Trainer(first, examples, options);
    await straight.fit();
    const reference = straight.history.map((h) => h.loss);
    straight.dispose();
    first.dispose();

    const a = await NemotronForSequenceClassification.fromPretrained(dir);
    const half = new Trainer(a, examples, { ...options, outputDir: path.join(dir, 'ckpt'), saveEvery: 4 });
    for (let i = 0; i < 4; i++) await half.step();
    await half.save(path.join(dir, 'ckpt'));
    half.dispose();
    a.dispose();

    const b = await NemotronForSequenceClassification.fromPretrained(path.join(dir, 'ckpt'));
    const resumed = new Trainer(b, examples, options);
    resumed.restore(path.join(dir, 'ckpt'));
    expect(resumed.state.step).to.equal(4);
    await resumed.fit();
    const losses = [...half.history, ...resumed.history].map((h) => h.loss);
    losses.forEach((l, i) => expect(l, `step ${i + 1}`).to.be.closeTo(reference[i], 1e-6));
    resumed.dispose();
    b.dispose();
  });

  it('the tensor count after step 1 equals the count after step 100; a JSONL log line per step', async () => {
    const examples = readJsonl(path.join(DATASETS, 'token-classification.jsonl'), 'token-classification');
    const model = new NemotronForTokenClassification(tiny({ numLabels: 2, numHiddenLayers: 1 }));
    const logFile = path.join(tmpDir('log'), 'log.jsonl');
    const trainer = new Trainer(model, examples, { task: 'token-classification', lr: 1e-3, batchSize: 4, maxSteps: 100, logFile });
    await trainer.step();
    const afterFirst = tf.memory().numTensors;
    for (let i = 1; i < 100; i++) await trainer.step();
    expect(tf.memory().numTensors).to.equal(afterFirst);
    const lines = fs.readFileSync(logFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).to.have.length(100);
    expect(lines[99]).to.include.keys('step', 'loss', 'lr', 'tokensPerSecond');
    trainer.dispose();
    model.dispose();
  });

  describe('bad input', () => {
    const write = (text: string) => {
      const file = path.join(tmpDir('jsonl'), 'data.jsonl');
      fs.writeFileSync(file, text);
      return file;
    };
    it('a line that does not parse, or lacks a field, names file and line', () => {
      const bad = write('{"input_ids": [1, 2]}\n{oops\n');
      expect(() => readJsonl(bad, 'causal-lm')).to.throw(new RegExp(`${bad}:2: not valid JSON`));
      const missing = write('{"input_ids": [1, 2]}\n\n{"input_ids": [3]}\n');
      expect(() => readJsonl(missing, 'sequence-classification')).to.throw(new RegExp(`${missing}:1: missing field "label"`));
    });
    it('an empty dataset', () => {
      expect(() => readJsonl(write('\n\n'), 'causal-lm')).to.throw(/is empty/);
    });
    it('a learning rate ≤ 0', () => {
      const model = MODELS['causal-lm']();
      expect(() => new Trainer(model, [{ inputIds: [1, 2] }], { task: 'causal-lm', lr: 0, batchSize: 1 })).to.throw(/learning rate must be > 0, got 0/);
      model.dispose();
    });
    it('class labels outside [0, num_labels)', async () => {
      const model = MODELS['sequence-classification']();
      const trainer = new Trainer(model, [{ inputIds: [2, 5], label: 2 }], { task: 'sequence-classification', lr: 1e-3, batchSize: 1 });
      let error: Error | null = null;
      try { await trainer.step(); } catch (e) { error = e as Error; }
      expect(error?.message).to.match(/labels\[0\] = 2 is outside \[0, num_labels 2\)/);
      model.dispose();
    });
  });
});
