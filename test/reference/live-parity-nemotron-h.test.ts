import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { NemotronHConfig, type NemotronHLayerType, NemotronHForCausalLM, generate, setBackend } from '../../src/index';
import { tmpDir } from '../helpers';

/**
 * The live reference harness for NemotronH: random configurations (from a logged seed) — layer patterns of Mamba-2,
 * attention, MLP and expert layers; heads, groups, state sizes, convolution widths and chunk lengths; biases, tying,
 * Δt limits; router groups, top-k, latent projections — built here, saved with savePretrained, loaded by transformers
 * (scripts/reference/live_parity_nemotron_h.py), and compared: logits of a left-padded batch, the loss, its gradients,
 * greedy decoding. Needs the reference venv (scripts/reference-venv.sh, or $NEMOTRON_REF_PYTHON); skipped without it.
 */
const ROOT = path.resolve(__dirname, '../../..');
const PYTHON = process.env.NEMOTRON_REF_PYTHON ?? path.join(ROOT, '.venv-ref/bin/python');
const SCRIPT = path.join(ROOT, 'scripts/reference/live_parity_nemotron_h.py');
const SEED = Number(process.env.NEMOTRON_PARITY_SEED ?? Date.now() % 100000);
const CONFIG_COUNT = Number(process.env.NEMOTRON_PARITY_CONFIGS ?? 4);

function randomConfig(random: () => number): NemotronHConfig {
  const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)]!;
  const layers = 2 + Math.floor(random() * 3);
  const layerTypes: NemotronHLayerType[] = Array.from({ length: layers }, () => pick(['mamba', 'attention', 'mlp', 'moe'] as NemotronHLayerType[]));
  // Mamba-2 first and an attention layer somewhere, as in every Nemotron-H pattern (transformers' generate() reads the
  // cache's length off layer 0, and its mask sizes off an attention layer).
  layerTypes[0] = 'mamba';
  if (!layerTypes.includes('attention')) layerTypes[1 + Math.floor(random() * (layers - 1))] = 'attention';
  const mambaNumHeads = pick([2, 4]);
  const heads = pick([2, 4]);
  const nRoutedExperts = pick([4, 8]);
  const nGroup = pick([1, 2]);
  const topkGroup = 1 + Math.floor(random() * nGroup);
  return new NemotronHConfig({
    vocabSize: 48 + Math.floor(random() * 48), hiddenSize: pick([16, 24, 32]), layerTypes,
    mambaNumHeads, mambaHeadDim: pick([4, 8]), nGroups: pick([1, 2].filter((g) => mambaNumHeads % g === 0)), ssmStateSize: pick([4, 8]),
    convKernel: pick([2, 3, 4]), chunkSize: pick([2, 3, 4, 8]), numAttentionHeads: heads, numKeyValueHeads: pick([1, 2, heads].filter((k) => heads % k === 0)),
    headDim: pick([4, 8]), intermediateSize: pick([16, 32]), useConvBias: random() < 0.5, useBias: random() < 0.5, mlpBias: random() < 0.5,
    // Untied: transformers' NemotronH ties nothing (savePretrained writes a tied model's output projection for it).
    tieWordEmbeddings: false, timeStepLimit: pick([[0, Infinity], [0.05, 0.8]] as Array<[number, number]>), maxPositionEmbeddings: 64,
    bosTokenId: 1, eosTokenId: 2, padTokenId: 0,
    nRoutedExperts, nGroup, topkGroup, numExpertsPerTok: 1 + Math.floor(random() * Math.min(3, (nRoutedExperts / nGroup) * topkGroup)),
    moeIntermediateSize: pick([8, 16]), moeSharedExpertIntermediateSize: pick([8, 12]), normTopkProb: random() < 0.5,
    routedScalingFactor: pick([1, 2.5]), moeLatentSize: pick([null, 8]),
  });
}

describe('live parity with transformers: NemotronH (random configurations)', function () {
  this.timeout(600000);
  before(async function () {
    if (!fs.existsSync(PYTHON)) {
      console.log(`    (skipped: no reference python at ${PYTHON}; run scripts/reference-venv.sh or set NEMOTRON_REF_PYTHON)`);
      this.skip();
    }
    await setBackend('cpu');
    console.log(`    seed ${SEED} (NEMOTRON_PARITY_SEED=${SEED} reproduces these configurations)`);
  });

  it(`${CONFIG_COUNT} configurations: logits of a left-padded batch, loss, gradients of every parameter, greedy decoding`, async () => {
    const dir = tmpDir('live-h');
    const models: NemotronHForCausalLM[] = [];
    const cases = [];
    for (let n = 0; n < CONFIG_COUNT; n++) {
      const random = seedrandom(`${SEED}:h${n}`);
      const config = randomConfig(random);
      const model = new NemotronHForCausalLM(config);
      // Off their initialization (D, dt_bias and the norms start at one), so that every weight counts.
      let k = 0;
      for (const v of model.weights.values()) {
        const moved = tf.tidy(() => tf.add(v, tf.randomNormal(v.shape, 0, v.rank === 1 ? 0.3 : 0.15, 'float32', SEED * 100 + n * 10000 + k++)));
        v.assign(moved);
        moved.dispose();
      }
      await model.savePretrained(path.join(dir, `c${n}`));
      models.push(model);
      const row = () => Array.from({ length: 9 }, () => 3 + Math.floor(random() * (config.vocabSize - 3)));
      const [a, b] = [row(), row()];
      cases.push({
        dir: path.join(dir, `c${n}`), input_ids: [a, [0, 0, 0, ...b.slice(3)]], attention_mask: [a.map(() => 1), [0, 0, 0, ...b.slice(3).map(() => 1)]],
        labels: a, prompt: a.slice(0, 5), max_new_tokens: 8,
      });
      console.log(`      ${n + 1}: ${config.layerTypes.map((t) => ({ mamba: 'M', attention: '*', mlp: '-', moe: 'E' })[t]).join('')}, mamba ${config.mambaNumHeads}×${config.mambaHeadDim} ` +
        `in ${config.nGroups} group(s), state ${config.ssmStateSize}, conv ${config.convKernel}, chunk ${config.chunkSize}, Δt limit [${config.timeStepLimit}], ` +
        (config.layerTypes.includes('moe') ? `experts ${config.nRoutedExperts}/${config.numExpertsPerTok} in ${config.nGroup}→${config.topkGroup}${config.moeLatentSize ? `, latent ${config.moeLatentSize}` : ''}` : 'no experts'));
    }
    fs.writeFileSync(path.join(dir, 'cases.json'), JSON.stringify({ cases }));
    const run = spawnSync(PYTHON, [SCRIPT, path.join(dir, 'cases.json'), path.join(dir, 'expected.json')], { encoding: 'utf8' });
    expect(run.status, run.stderr.slice(-3000)).to.equal(0);
    const { results } = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as {
      results: Array<{ logits: number[][][]; loss: number; gradients: Record<string, number[]>; greedy: number[] }>;
    };
    for (const [n, model] of models.entries()) {
      const c = cases[n];
      const theirs = results[n];
      const what = `configuration ${n + 1}`;
      const ours = tf.tidy(() => model.forward({ inputIds: c.input_ids, attentionMask: c.attention_mask }).logits.arraySync());
      let worst = 0;
      c.attention_mask.forEach((row, b) => row.forEach((on, t) => {
        if (on) theirs.logits[b][t].forEach((v, j) => { worst = Math.max(worst, Math.abs(v - ours[b][t][j])); });
      }));
      expect(worst, `${what}: logits`).to.be.at.most(1e-4);
      const params = model.namedParameters();
      expect([...params.keys()].sort(), `${what}: parameters`).to.deep.equal(Object.keys(theirs.gradients).sort());
      const { value, grads } = tf.variableGrads(() => model.computeLoss({ inputIds: [c.labels], labels: [c.labels] }), [...params.values()]);
      expect(Math.abs((await value.data())[0] - theirs.loss), `${what}: loss`).to.be.at.most(1e-5);
      for (const [name, v] of params) {
        const g = Array.from(await grads[v.name].data()).slice(0, 8);
        const diff = Math.max(...g.map((x, i) => Math.abs(x - theirs.gradients[name][i])));
        expect(diff, `${what}: gradient of ${name}`).to.be.at.most(1e-4);
      }
      tf.dispose([value, ...Object.values(grads)]);
      const greedy = (await generate(model, [c.prompt], { maxNewTokens: c.max_new_tokens, eosTokenId: null })).sequences[0];
      expect(greedy, `${what}: greedy`).to.deep.equal(theirs.greedy);
      model.dispose();
    }
  });
});
