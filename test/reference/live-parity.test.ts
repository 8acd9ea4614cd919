import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import {
  NemotronConfig, NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification,
  NemotronForTokenClassification, NemotronModel, KVCache, RopeScaling, SafetensorsFile, generate, setBackend,
} from '../../src/index';
import { expectClose, expectRelClose, testBackends, tmpDir } from '../helpers';

/**
 * The live reference harness: random configurations (from a logged seed) built here, saved with savePretrained,
 * loaded by transformers (scripts/reference/live_parity.py), and compared output by output. Needs the reference
 * venv (scripts/reference-venv.sh, or $NEMOTRON_REF_PYTHON); skipped without it.
 */
const ROOT = path.resolve(__dirname, '../../..');
const PYTHON = process.env.NEMOTRON_REF_PYTHON ?? path.join(ROOT, '.venv-ref/bin/python');
const SCRIPT = path.join(ROOT, 'scripts/reference/live_parity.py');
const SEED = Number(process.env.NEMOTRON_PARITY_SEED ?? Date.now() % 100000);
const CONFIG_COUNT = Number(process.env.NEMOTRON_PARITY_CONFIGS ?? 3);
const ABS = 1e-4;
const REL = 1e-5;

/** A random small configuration: MHA/GQA/MQA, head_dim ≠ hidden/heads, rotary fractions, biases, tying, rope scaling. */
function randomConfig(random: () => number): NemotronConfig {
  const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)]!;
  const heads = pick([2, 3, 4, 6]);
  const kvHeads: number = pick([heads, 1, ...[2, 3].filter((k) => k < heads && heads % k === 0)]);
  const headDim = pick([8, 12, 16]);
  const partial = pick([0.25, 0.5, 1].filter((f) => Math.floor(headDim * f) % 2 === 0 && Math.floor(headDim * f) > 0));
  const half = Math.floor(headDim * partial) / 2;
  const factors = () => Array.from({ length: half }, () => Number((1 + 3 * random()).toFixed(3)));
  // Every rope type transformers' Nemotron reads; the length-dependent ones (dynamic, longrope) within the lengths
  // where a single forward and the cached steps agree (below max_position_embeddings and the original length).
  const scalings: Array<RopeScaling | null> = [
    null, null, null, { ropeType: 'linear', factor: 2 }, ...(half > 1 ? [{ ropeType: 'dynamic', factor: 2 } as const] : []),
    { ropeType: 'yarn', factor: 4, originalMaxPositionEmbeddings: 16, betaFast: 8, betaSlow: 1 },
    { ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 256 },
    { ropeType: 'longrope', shortFactor: factors(), longFactor: factors(), originalMaxPositionEmbeddings: 64, factor: 2 },
  ];
  return new NemotronConfig({
    vocabSize: 64 + Math.floor(random() * 40), hiddenSize: pick([24, 32, 48]), intermediateSize: pick([32, 64, 96]),
    numHiddenLayers: 1 + Math.floor(random() * 3), numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim,
    partialRotaryFactor: partial, ropeTheta: pick([500, 10000]), attentionBias: random() < 0.5, mlpBias: random() < 0.5,
    tieWordEmbeddings: random() < 0.5, maxPositionEmbeddings: 64, padTokenId: 0, bosTokenId: 2, eosTokenId: 3,
    ropeScaling: pick(scalings),
  });
}

/** Random values everywhere, LayerNorm1P gammas and biases included, so that every parameter moves the outputs. */
function randomize(params: Map<string, tf.Variable>, seed: number): void {
  let k = 0;
  for (const [name, v] of params) {
    const std = v.rank >= 2 ? (name.includes('embed_tokens') ? 1 : 1 / Math.sqrt(v.shape[1]!)) : 0.1;
    tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, std, 'float32', seed * 1000 + k++)));
  }
}

/**
 * Feeds `sequences` (prompt of `promptLength` with `mask`, then the generated tokens) through a KV cache one token at
 * a time, with transformers' positions (mask cumsum − 1); returns the logits [batch, vocab] of each of `steps` steps.
 */
function replayThroughCache(model: NemotronForCausalLM, sequences: number[][], mask: number[][], promptLength: number, steps: number): tf.Tensor[] {
  const cache = new KVCache(model.config.numHiddenLayers);
  const attention = mask.map((row) => row.slice());
  const positions = () => attention.map((row) => { let seen = 0; return row.map((v) => { seen += v; return v ? seen - 1 : 1; }); });
  const out: tf.Tensor[] = [];
  for (let s = 0; s < steps; s++) {
    if (s > 0) attention.forEach((row) => row.push(1));
    const inputIds = s === 0 ? sequences.map((r) => r.slice(0, promptLength)) : sequences.map((r) => [r[promptLength + s - 1]]);
    const positionIds = s === 0 ? positions() : positions().map((r) => [r[r.length - 1]]);
    const { logits } = model.forward({ inputIds, attentionMask: attention, positionIds, pastKeyValues: cache, useCache: true, logitsToKeep: 1 });
    out.push(tf.tidy(() => logits.squeeze([1])));
    logits.dispose();
  }
  cache.dispose();
  return out;
}

describe('live parity with transformers (random configurations)', function () {
  this.timeout(600000);
  before(async function () {
    if (!fs.existsSync(PYTHON)) {
      console.log(`    (skipped: no reference python at ${PYTHON}; run scripts/reference-venv.sh or set NEMOTRON_REF_PYTHON)`);
      this.skip();
    }
    await setBackend('cpu');
    console.log(`    seed ${SEED} (NEMOTRON_PARITY_SEED=${SEED} reproduces these configurations)`);
  });

  for (let n = 0; n < CONFIG_COUNT; n++) {
    it(`configuration ${n + 1} of ${CONFIG_COUNT}: base model, every head, every loss, the gradients, greedy decoding through the cache; saved checkpoints load in transformers`, async () => {
      const random = seedrandom(`${SEED}:${n}`);
      const config = randomConfig(random);
      console.log(`      heads ${config.numAttentionHeads}/${config.numKeyValueHeads} × ${config.headDim}, rotary ${config.rotaryDim}, ` +
        `rope ${config.ropeScaling?.ropeType ?? 'default'}, tied ${config.tieWordEmbeddings}`);
      const dir = tmpDir('live');
      const batch = 2;
      const seq = 6;
      const ids = Array.from({ length: batch }, () => Array.from({ length: seq }, () => 4 + Math.floor(random() * (config.vocabSize - 4))));
      const mask = ids.map(() => ids[0].map(() => 1));
      ids[1][4] = ids[1][5] = 0; // right padding
      mask[1][4] = mask[1][5] = 0;
      const causalLabels = ids.map((row, r) => row.map((t, c) => (mask[r][c] ? t : -100)));
      const label = `${JSON.stringify({ ...config.toJSON(), id2label: undefined, label2id: undefined })}`;

      const causal = new NemotronForCausalLM(config);
      randomize(causal.namedParameters(), SEED + n);
      await causal.savePretrained(path.join(dir, 'causal'));
      const heads = {
        single: { numLabels: 3, labels: [2, 0], float: false, problemType: null },
        multi: { numLabels: 3, labels: [[1, 0, 1], [0, 1, 0]], float: true, problemType: 'multi_label_classification' as const },
        regression: { numLabels: 1, labels: [0.7, -1.3], float: true, problemType: null },
      };
      for (const [name, h] of Object.entries(heads)) {
        const m = await NemotronForSequenceClassification.fromPretrained(path.join(dir, 'causal'), { config: { numLabels: h.numLabels, problemType: h.problemType }, quiet: true });
        await m.savePretrained(path.join(dir, `seqcls-${name}`));
        m.dispose();
      }
      const qa = await NemotronForQuestionAnswering.fromPretrained(path.join(dir, 'causal'), { quiet: true });
      randomize(new Map([...qa.namedParameters()].filter(([k]) => k.startsWith('qa_outputs'))), 7);
      await qa.savePretrained(path.join(dir, 'qa'));
      qa.dispose();
      const tok = await NemotronForTokenClassification.fromPretrained(path.join(dir, 'causal'), { config: { numLabels: 4 }, quiet: true });
      randomize(new Map([...tok.namedParameters()].filter(([k]) => k.startsWith('score'))), 8);
      await tok.savePretrained(path.join(dir, 'tokcls'));
      tok.dispose();
      const tokLabels = ids.map((row, r) => row.map((_, c) => (mask[r][c] ? Math.floor(random() * 4) : -100)));
      const cases = {
        input_ids: ids, attention_mask: mask, causal_dir: path.join(dir, 'causal'), causal_labels: causalLabels,
        seqcls: Object.entries(heads).map(([name, h]) => ({ name, dir: path.join(dir, `seqcls-${name}`), labels: h.labels, float_labels: h.float })),
        qa: { dir: path.join(dir, 'qa'), start_positions: [1, 99], end_positions: [3, 2] },
        tokcls: { dir: path.join(dir, 'tokcls'), labels: tokLabels },
        // Row 1 left-padded by one token.
        generate: { input_ids: [ids[0].slice(0, 4), [0, ...ids[0].slice(1, 4)]], attention_mask: [[1, 1, 1, 1], [0, 1, 1, 1]], max_new_tokens: 5 },
        beam: [
          { num_beams: 3, num_return_sequences: 2, length_penalty: 1.0, early_stopping: false, max_new_tokens: 6 },
          { num_beams: 4, num_return_sequences: 4, length_penalty: 0.5, early_stopping: true, max_new_tokens: 5 },
          { num_beams: 2, num_return_sequences: 1, length_penalty: 2.0, early_stopping: 'never', max_new_tokens: 7 },
        ],
      };
      fs.writeFileSync(path.join(dir, 'cases.json'), JSON.stringify(cases));
      const run = spawnSync(PYTHON, [SCRIPT, path.join(dir, 'cases.json'), path.join(dir, 'ref')], { encoding: 'utf8' });
      expect(run.status, `transformers failed on ${label}:\n${run.stderr.slice(-3000)}`).to.equal(0);
      const ref = SafetensorsFile.open(path.join(dir, 'ref/expected.safetensors'));
      const meta = JSON.parse(fs.readFileSync(path.join(dir, 'ref/expected.json'), 'utf8'));
      const reference = (key: string) => { const t = ref.read(key); return tf.tensor(t.data, t.shape); };
      const inputs = { inputIds: ids, attentionMask: mask };

      const base = await NemotronModel.fromPretrained(path.join(dir, 'causal'), { quiet: true });
      const b = base.forward({ ...inputs, outputHiddenStates: true, outputAttentions: true });
      b.hiddenStates!.forEach((h, i) => expectClose(h, reference(`base.hidden_states.${i}`), ABS, `${label}: hidden state ${i}`));
      b.attentions!.forEach((a, i) => expectClose(a, reference(`base.attentions.${i}`), ABS, `${label}: attention ${i}`));
      tf.dispose([b.lastHiddenState, ...b.hiddenStates!, ...b.attentions!]);
      base.dispose();

      const batchInputs = { ...inputs, labels: causalLabels };
      const out = causal.forward(batchInputs);
      expectClose(out.logits, reference('causal.logits'), ABS, `${label}: causal logits`);
      expectRelClose(out.loss!.dataSync()[0], meta.causal_loss, REL, `${label}: causal loss`);
      tf.dispose([out.logits, out.loss!]);
      const params = causal.namedParameters();
      const { value, grads } = tf.variableGrads(() => causal.forward(batchInputs).loss!, [...params.values()]);
      for (const [name, v] of params) {
        const worst = tf.tidy(() => {
          const r = reference(`causal.grad.${name}`);
          return tf.max(tf.sub(tf.abs(tf.sub(grads[v.name], r)), tf.maximum(1e-4, tf.mul(1e-3, tf.abs(r))))).dataSync()[0];
        });
        expect(worst, `${label}: gradient of ${name}`).to.be.at.most(0);
      }
      tf.dispose([value, ...Object.values(grads)]);
      causal.dispose();

      for (const [name, h] of Object.entries(heads)) {
        const m = await NemotronForSequenceClassification.fromPretrained(path.join(dir, `seqcls-${name}`));
        const o = m.forward({ ...inputs, labels: h.labels });
        expectClose(o.logits, reference(`seqcls.${name}.logits`), ABS, `${label}: seqcls ${name} logits`);
        expectRelClose(o.loss!.dataSync()[0], meta[`seqcls_${name}_loss`], REL, `${label}: seqcls ${name} loss`);
        tf.dispose([o.logits, o.loss!]);
        m.dispose();
      }
      const q = await NemotronForQuestionAnswering.fromPretrained(path.join(dir, 'qa'));
      const qo = q.forward({ ...inputs, startPositions: cases.qa.start_positions, endPositions: cases.qa.end_positions });
      expectClose(qo.startLogits, reference('qa.start_logits'), ABS, `${label}: qa start`);
      expectClose(qo.endLogits, reference('qa.end_logits'), ABS, `${label}: qa end`);
      expectRelClose(qo.loss!.dataSync()[0], meta.qa_loss, REL, `${label}: qa loss`);
      tf.dispose([qo.startLogits, qo.endLogits, qo.loss!]);
      q.dispose();
      const t = await NemotronForTokenClassification.fromPretrained(path.join(dir, 'tokcls'));
      const to = t.forward({ ...inputs, labels: tokLabels });
      expectClose(to.logits, reference('tokcls.logits'), ABS, `${label}: tokcls logits`);
      expectRelClose(to.loss!.dataSync()[0], meta.tokcls_loss, REL, `${label}: tokcls loss`);
      tf.dispose([to.logits, to.loss!]);
      t.dispose();
      // transformers' greedy tokens replayed through the KV cache, on every backend here (on tensorflow the prompt goes
      // through the fused kernels and each token through the compiled decoding step): logits of every step.
      const sequences = meta.gen_sequences as number[][];
      const scores = reference('gen.scores');
      for (const backend of testBackends()) {
        await setBackend(backend);
        const model = await NemotronForCausalLM.fromPretrained(path.join(dir, 'causal'), { quiet: true });
        const steps = replayThroughCache(model, sequences, cases.generate.attention_mask, 4, cases.generate.max_new_tokens);
        steps.forEach((logits, s) => expectClose(logits, scores.slice([0, s, 0], [-1, 1, -1]).squeeze([1]), ABS, `${label}: ${backend}, step ${s}`));
        tf.dispose(steps);
        model.dispose();
      }
      await setBackend('cpu');
      scores.dispose();
      // transformers' beam search (same prompts, an EOS id the beams meet): the same sequences, scores within 1e-4.
      const beamModel = await NemotronForCausalLM.fromPretrained(path.join(dir, 'causal'), { quiet: true });
      for (const [i, setting] of cases.beam.entries()) {
        const out = await generate(beamModel, cases.generate.input_ids, {
          attentionMask: cases.generate.attention_mask, maxNewTokens: setting.max_new_tokens, numBeams: setting.num_beams,
          numReturnSequences: setting.num_return_sequences, lengthPenalty: setting.length_penalty, earlyStopping: setting.early_stopping as boolean | 'never',
          eosTokenId: meta.beam_eos, padTokenId: 0,
        });
        expect(out.sequences, `${label}: beam search ${JSON.stringify(setting)}`).to.deep.equal(meta[`beam_${i}_sequences`]);
        out.sequencesScores!.forEach((score: number, r: number) => expect(score, `${label}: beam ${i} score ${r}`).to.be.closeTo(meta[`beam_${i}_scores`][r], 1e-4));
      }
      beamModel.dispose();
      ref.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });
  }
});
