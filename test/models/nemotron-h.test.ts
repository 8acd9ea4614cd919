import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronHConfig, NemotronHForCausalLM, NemotronHLoraModel } from '../../src/index';
import { type NemotronHState, disposeState, ssdScan } from '../../models/nemotron_h/model';
import { NEMOTRON_H_STEP_KERNEL, applyNoRepeatNgram, setBackend, useFusedKernels } from '../../src/index';
import { spawnSync } from 'child_process';
import { CheckpointReader, NemotronTokenizer, Trainer, generate, writeSafetensors } from '../../src/index';
import { FIXTURES, forEachBackend, testBackends, tmpDir } from '../helpers';

// A tiny NemotronH ("M*M-": Mamba-2, attention, Mamba-2, MLP) and what transformers computes with it
// (scripts/reference/nemotron_h_fixtures.py).
const DIR = path.resolve(FIXTURES, '../nemotron-h');
interface Reference {
  prompt: number[][]; attention_mask: number[][]; logits: number[][][]; loss: number; greedy: number[]; greedy_repetition_penalty_1_3: number[];
  row1_alone_logits: number[][]; gradients: Record<string, number[]>;
  moe: Record<string, { logits: number[][][]; greedy: number[]; gradients: Record<string, number[]> }>;
  training: { batch: number[][]; mask: number[][]; labels: number[][]; loss: number; after_step: Record<string, number[]> };
}
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as Reference;

function maxDiff(a: number[], b: number[]): number {
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
}

/** Logits of the left-padded batch within 1e-4 of transformers' at every real position. */
async function expectLogits(model: NemotronHForCausalLM, expected: number[][][]): Promise<void> {
  const { logits } = model.forward({ inputIds: reference.prompt, attentionMask: reference.attention_mask });
  const ours = await logits.array() as number[][][];
  logits.dispose();
  let worst = 0;
  reference.prompt.forEach((_, b) => reference.attention_mask[b].forEach((m, t) => {
    if (m) worst = Math.max(worst, maxDiff(ours[b][t], expected[b][t]));
  }));
  expect(worst, 'logits').to.be.at.most(1e-4);
}

/** The loss's gradient (first 16 values of each named weight) within 1e-4 of transformers'. */
async function expectGradients(model: NemotronHForCausalLM, expected: Record<string, number[]>): Promise<void> {
  const names = Object.keys(expected);
  const { grads, value } = tf.variableGrads(() => {
    const out = model.forward({ inputIds: reference.prompt.slice(0, 1), labels: reference.prompt.slice(0, 1) });
    out.logits.dispose();
    return out.loss!;
  }, names.map((n) => model.weights.get(n)!));
  for (const name of names) {
    const g = Array.from(await grads[model.weights.get(name)!.name].data()).slice(0, 16);
    expect(maxDiff(g, expected[name]), `gradient of ${name}`).to.be.at.most(1e-4);
  }
  tf.dispose([value, ...Object.values(grads)]);
}

describe('NemotronH (the hybrid Mamba-2 architecture of Nemotron-H and Nemotron Nano 2)', () => {
  it('reads config.json in transformers 5\'s layout and the checkpoints\' own (hybrid_override_pattern, mamba_* names), experts included', () => {
    const config = NemotronHConfig.fromPretrained(path.join(DIR, 'model'));
    expect(config.layerTypes).to.deep.equal(['mamba', 'attention', 'mamba', 'mlp']);
    expect([config.mambaNumHeads, config.mambaHeadDim, config.nGroups, config.ssmStateSize, config.convDim]).to.deep.equal([4, 8, 2, 8, 64]);
    const legacy = NemotronHConfig.fromJSON({ model_type: 'nemotron_h', vocab_size: 96, hidden_size: 32, hybrid_override_pattern: 'M-*', mamba_num_heads: 4,
      mamba_head_dim: 8, mamba_n_groups: 2, mamba_d_state: 8, mamba_d_conv: 4, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8 });
    expect(legacy.layerTypes).to.deep.equal(['mamba', 'mlp', 'attention']);
    expect([legacy.nGroups, legacy.ssmStateSize, legacy.convKernel]).to.deep.equal([2, 8, 4]);
    const moe = NemotronHConfig.fromPretrained(path.join(DIR, 'moe-latent'));
    expect(moe.layerTypes).to.deep.equal(['mamba', 'moe', 'attention', 'moe']);
    expect([moe.nRoutedExperts, moe.numExpertsPerTok, moe.nGroup, moe.topkGroup, moe.moeLatentSize, moe.routedScalingFactor]).to.deep.equal([8, 2, 2, 1, 16, 2.5]);
    expect(() => NemotronHConfig.fromJSON({ hybrid_override_pattern: 'ME', n_routed_experts: 6, n_group: 4 })).to.throw(/n_routed_experts 6 must be a multiple of n_group 4/);
    expect(() => NemotronHConfig.fromJSON({ hybrid_override_pattern: 'MX' })).to.throw(/hybrid_override_pattern has "X" at 1/);
  });

  it('the chunked scan equals the step-by-step recurrence (lengths that do not fill the last chunk, one chunk, many; from zeros or a kept state)', async () => {
    const random = (shape: number[], scale = 1, offset = 0) => tf.add(tf.mul(tf.randomUniform(shape, -1, 1, 'float32', 7 + shape.length), scale), offset);
    for (const [time, chunk, fromState] of [[13, 5, 0], [3, 8, 1], [16, 4, 1], [9, 4, 0]]) {
      const [batch, heads, headDim, state] = [2, 3, 4, 5];
      const x = random([batch, time, heads, headDim]);
      const dt = random([batch, time, heads], 0.4, 0.5);
      const A = random([heads], 0.5, -1);
      const B = random([batch, time, heads, state]);
      const C = random([batch, time, heads, state]);
      const initial = fromState ? random([batch, heads, headDim, state], 0.7) : undefined;
      const { y, state: final } = ssdScan(x, dt, A, B, C, chunk, initial);
      const initials = initial ? await initial.array() as number[][][][] : null;
      // h_t = exp(Δt·A)·h_{t-1} + Δt·x_t·B_tᵀ, y_t = h_t·C_t, in plain numbers.
      const [xs, dts, As, Bs, Cs] = await Promise.all([x, dt, A, B, C].map((t) => t.array())) as [number[][][][], number[][][], number[], number[][][][], number[][][][]];
      const ys = await y.array() as number[][][][];
      const finals = await final.array() as number[][][][];
      let worst = 0;
      for (let b = 0; b < batch; b++) {
        for (let h = 0; h < heads; h++) {
          const hs = Array.from({ length: headDim }, (_, p) => (initials ? initials[b][h][p].slice() : new Array<number>(state).fill(0)));
          for (let t = 0; t < time; t++) {
            const decay = Math.exp(dts[b][t][h] * As[h]);
            for (let p = 0; p < headDim; p++) {
              let out = 0;
              for (let n = 0; n < state; n++) {
                hs[p][n] = hs[p][n] * decay + dts[b][t][h] * xs[b][t][h][p] * Bs[b][t][h][n];
                out += hs[p][n] * Cs[b][t][h][n];
              }
              worst = Math.max(worst, Math.abs(out - ys[b][t][h][p]));
            }
          }
          for (let p = 0; p < headDim; p++) for (let n = 0; n < state; n++) worst = Math.max(worst, Math.abs(hs[p][n] - finals[b][h][p][n]));
        }
      }
      expect(worst, `time ${time}, chunk ${chunk}`).to.be.at.most(1e-5);
      tf.dispose([x, dt, A, B, C, y, final, ...(initial ? [initial] : [])]);
    }
  });

  it('loads a checkpoint with the original names (backbone.*, conv1d.weight [channels, 1, kernel], hybrid_override_pattern)', async () => {
    const legacy = tmpDir('nemotron-h-legacy');
    const reader = CheckpointReader.open(path.join(DIR, 'model'));
    const tensors = reader.names().map((name) => ({ name: name.replace(/^model\./, 'backbone.'), dtype: 'F32' as const, shape: reader.info(name).shape, data: reader.read(name).data as Float32Array }));
    reader.close();
    writeSafetensors(path.join(legacy, 'model.safetensors'), tensors);
    const { layers_block_type: _types, ...config } = JSON.parse(fs.readFileSync(path.join(DIR, 'model', 'config.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(legacy, 'config.json'), JSON.stringify({ ...config, hybrid_override_pattern: 'M*M-' }));
    const model = await NemotronHForCausalLM.fromPretrained(legacy);
    expect(model.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null })[0]).to.deep.equal(reference.greedy);
    model.dispose();
    fs.rmSync(legacy, { recursive: true, force: true });
  });

  it('savePretrained writes what fromPretrained and transformers read back, in shards with their index too (the same greedy tokens; transformers\' logits when the reference venv is there)', async () => {
    const saved = tmpDir('nemotron-h-saved');
    const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'moe-latent'));
    // Shards of 40 kB (the model has ~150 kB of weights), as transformers splits them.
    await model.savePretrained(saved, { maxShardBytes: 40_000 });
    const shards = fs.readdirSync(saved).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
    expect(shards.length).to.be.at.least(3);
    expect(fs.existsSync(path.join(saved, 'model.safetensors.index.json'))).to.equal(true);
    expect(fs.existsSync(path.join(saved, 'model.safetensors'))).to.equal(false);
    // BF16: the weights rounded to bfloat16, read back within its rounding.
    const bf16 = tmpDir('nemotron-h-bf16');
    await model.savePretrained(bf16, { dtype: 'BF16' });
    expect(JSON.parse(fs.readFileSync(path.join(bf16, 'config.json'), 'utf8')).torch_dtype).to.equal('bfloat16');
    const rounded = await NemotronHForCausalLM.fromPretrained(bf16);
    for (const [name, value] of model.weights) {
      const worst = tf.tidy(() => tf.max(tf.div(tf.abs(tf.sub(value, rounded.weights.get(name)!)), tf.add(tf.abs(value), 1e-30))).dataSync()[0]);
      expect(worst, name).to.be.at.most(2 ** -8);
    }
    rounded.dispose();
    fs.rmSync(bf16, { recursive: true, force: true });
    const again = await NemotronHForCausalLM.fromPretrained(saved);
    expect(again.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null })[0]).to.deep.equal(reference.moe['moe-latent'].greedy);
    const ours = await again.forward({ inputIds: reference.prompt.slice(0, 1) }).logits.array() as number[][][];
    model.dispose();
    again.dispose();
    const python = process.env.NEMOTRON_REF_PYTHON ?? path.resolve(__dirname, '../../../.venv-ref/bin/python');
    if (fs.existsSync(python)) {
      const script = 'import json, sys, torch\nfrom transformers import NemotronHForCausalLM\n' +
        'm = NemotronHForCausalLM.from_pretrained(sys.argv[1]).eval()\n' +
        'print(json.dumps(m(torch.tensor(json.loads(sys.argv[2]))).logits.tolist()))';
      const r = spawnSync(python, ['-c', script, saved, JSON.stringify(reference.prompt.slice(0, 1))], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      const theirs = JSON.parse(r.stdout.trim().split('\n').pop()!) as number[][][];
      expect(Math.max(...theirs[0].map((row, t) => maxDiff(row, ours[0][t])))).to.be.at.most(1e-4);
    }
    fs.rmSync(saved, { recursive: true, force: true });
  });

  it('LoRA as PEFT: adapters trained with the Trainer, saved where PeftModel.from_pretrained reads them (the same logits), merged or unloaded', async () => {
    const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'moe-latent'));
    const before = tf.memory().numTensors;
    const prompt = reference.prompt.slice(0, 1);
    const logitsOf = async () => { const { logits } = model.forward({ inputIds: prompt }); const a = await logits.array() as number[][][]; logits.dispose(); return a; };
    const base = await logitsOf();
    const lora = NemotronHLoraModel.attach(model, { r: 4, loraAlpha: 8, targetModules: 'all-linear', seed: 1 });
    expect([...lora.namedParameters().keys()]).to.include('base_model.model.model.layers.0.mixer.in_proj.lora_A.weight');
    expect(lora.namedParameters().has('base_model.model.model.layers.1.mixer.shared_experts.up_proj.lora_B.weight')).to.equal(true);
    expect(() => NemotronHLoraModel.attach(model, { r: 2, loraAlpha: 2, targetModules: ['in_proj', 'out_proj'] })).to.throw(/"out_proj": PEFT refuses it for Mamba-based models/);
    const frozen = model.weights.get('model.layers.0.mixer.in_proj.weight')!;
    const frozenBefore = Array.from(await frozen.data());
    const trainer = new Trainer(lora, reference.prompt.map((ids) => ({ inputIds: ids.filter((t) => t > 0) })), { task: 'causal-lm', lr: 5e-2, batchSize: 2, maxSteps: 2, schedule: 'constant', shuffle: false, padTokenId: 0 });
    await trainer.step();
    await trainer.step();
    trainer.dispose();
    expect(Array.from(await frozen.data())).to.deep.equal(frozenBefore);
    const adapted = await logitsOf();
    expect(maxDiff(adapted[0][9], base[0][9])).to.be.greaterThan(1e-3);
    const dir = tmpDir('nemotron-h-adapter');
    await lora.savePretrained(dir);
    const python = process.env.NEMOTRON_REF_PYTHON ?? path.resolve(__dirname, '../../../.venv-ref/bin/python');
    if (fs.existsSync(python) && spawnSync(python, ['-c', 'import peft'], { encoding: 'utf8' }).status === 0) {
      const script = 'import json, sys, torch\nfrom transformers import NemotronHForCausalLM\nfrom peft import PeftModel\n' +
        'm = PeftModel.from_pretrained(NemotronHForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2]).eval()\n' +
        'print(json.dumps(m(torch.tensor(json.loads(sys.argv[3]))).logits.tolist()))';
      const r = spawnSync(python, ['-c', script, path.join(DIR, 'moe-latent'), dir, JSON.stringify(prompt)], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      const theirs = JSON.parse(r.stdout.trim().split('\n').pop()!) as number[][][];
      expect(Math.max(...theirs[0].map((row, t) => maxDiff(row, adapted[0][t]))), 'PEFT\'s logits').to.be.at.most(1e-4);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    lora.mergeAndUnload();
    const merged = await logitsOf();
    expect(Math.max(...merged[0].map((row, t) => maxDiff(row, adapted[0][t]))), 'merged').to.be.at.most(1e-4);
    expect(model.adapters.size).to.equal(0);
    expect(model.weights.get('model.layers.0.mixer.in_proj.weight')!.trainable).to.equal(true);
    expect(tf.memory().numTensors).to.equal(before);
    model.dispose();
  });

  it('the CLI: generate runs a NemotronH folder (greedy, streamed), finetune trains it, info describes it; what they do not run for it is refused by name', async () => {
    const dir = tmpDir('nemotron-h-cli');
    for (const from of [path.join(DIR, 'model'), path.resolve(FIXTURES, '../structured-output/tokenizer')]) {
      for (const f of fs.readdirSync(from)) fs.copyFileSync(path.join(from, f), path.join(dir, f));
    }
    const CLI = path.resolve(__dirname, '../../src/cli/main.js');
    const r = spawnSync(process.execPath, [CLI, 'generate', '--model', dir, '--prompt', 'the name', '-n', '8', '--greedy', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(r.status, r.stderr).to.equal(0);
    const tokenizer = await NemotronTokenizer.fromPretrained(dir);
    const model = await NemotronHForCausalLM.fromPretrained(dir);
    const ids = tokenizer.encode('the name');
    const expected = model.generate([ids], { maxNewTokens: 8 })[0];
    const parameters = model.numParameters();
    model.dispose();
    expect(r.stdout).to.equal(`${tokenizer.decode(expected, { skipSpecialTokens: true })}\n`);
    expect(r.stderr).to.match(/generated: \d+ tokens?, [\d.]+ tok\/s · backend cpu \(NemotronH\)/);
    // evaluate: the perplexity of a JSONL row, exp of transformers' loss on it; the same through --stride's window.
    const rows = path.join(dir, 'eval.jsonl');
    fs.writeFileSync(rows, `${JSON.stringify({ input_ids: reference.prompt[0] })}\n`);
    for (const extra of [[], ['--stride', '4', '--max-length', '64']]) {
      const scored = spawnSync(process.execPath, [CLI, 'evaluate', '--model', dir, '--data', rows, '--json', '--backend', 'cpu', ...extra], { encoding: 'utf8' });
      expect(scored.status, scored.stderr).to.equal(0);
      const result = JSON.parse(scored.stdout) as { loss: number; perplexity: number; tokens: number };
      expect(result.tokens).to.equal(reference.prompt[0].length - 1);
      expect(Math.abs(result.loss - reference.loss), `evaluate ${extra.join(' ')}`).to.be.at.most(1e-5);
    }
    const info = spawnSync(process.execPath, [CLI, 'info', '--model', path.join(DIR, 'moe-latent'), '--json'], { encoding: 'utf8' });
    const card = JSON.parse(info.stdout) as Record<string, unknown>;
    const moe = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'moe-latent'));
    expect(card).to.deep.include({ pattern: 'ME*E', mamba_layers: 1, moe_layers: 2, parameters: moe.numParameters() });
    moe.dispose();
    // finetune: the Trainer on a JSONL of ids, the result saved where fromPretrained (and transformers) read it.
    const data = path.join(dir, 'train.jsonl');
    fs.writeFileSync(data, reference.prompt.map((ids) => JSON.stringify({ input_ids: ids.filter((t) => t > 0) })).join('\n') + '\n');
    const out = path.join(dir, 'tuned');
    const tuned = spawnSync(process.execPath, [CLI, 'finetune', '--task', 'causal-lm', '--model', dir, '--train', data, '--output', out, '--max-steps', '3',
      '--batch-size', '2', '--lr', '1e-2', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(tuned.status, tuned.stderr).to.equal(0);
    expect(tuned.stdout).to.match(/^trained 3 steps: loss [\d.]+ → [\d.]+; saved to /);
    expect(fs.readFileSync(path.join(out, 'train_log.jsonl'), 'utf8').trim().split('\n')).to.have.length(3);
    const reloaded = await NemotronHForCausalLM.fromPretrained(out);
    expect(reloaded.numParameters()).to.equal(parameters);
    reloaded.dispose();
    // --lora-r: the adapter is what is saved (PEFT's files).
    const adapter = path.join(dir, 'adapter');
    const withLora = spawnSync(process.execPath, [CLI, 'finetune', '--task', 'causal-lm', '--model', dir, '--train', data, '--output', adapter, '--lora-r', '4',
      '--max-steps', '2', '--batch-size', '2', '--gradient-checkpointing', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(withLora.status, withLora.stderr).to.equal(0);
    expect(withLora.stderr).to.match(/finetune causal-lm \(NemotronH, LoRA r 4\)/);
    expect(JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8'))).to.deep.include({ peft_type: 'LORA', r: 4, lora_alpha: 16 });
    expect(fs.existsSync(path.join(adapter, 'adapter_model.safetensors'))).to.equal(true);
    const dropout = spawnSync(process.execPath, [CLI, 'finetune', '--task', 'causal-lm', '--model', dir, '--train', data, '--output', adapter, '--lora-r', '4', '--lora-dropout', '0.1', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(dropout.stderr).to.match(/--lora-dropout: not supported for NemotronH checkpoints yet/);
    // The row decoding of generate(): processors (repetition penalty as NemotronH's generate() applies it, no repeated
    // n-grams), stop strings, structured output.
    const run = (...flags: string[]) => spawnSync(process.execPath, [CLI, 'generate', '--model', dir, '--prompt', 'the name', '--backend', 'cpu', ...flags], { encoding: 'utf8' });
    const penalized = run('-n', '10', '--greedy', '--repetition-penalty', '1.3');
    const again = await NemotronHForCausalLM.fromPretrained(dir);
    const expectedPenalized = again.generate([ids], { maxNewTokens: 10, repetitionPenalty: 1.3 })[0];
    again.dispose();
    expect(penalized.stdout).to.equal(`${tokenizer.decode(expectedPenalized, { skipSpecialTokens: true })}\n`);
    const noRepeat = run('-n', '16', '--greedy', '--no-repeat-ngram-size', '1');
    expect(noRepeat.stdout, 'the rule bites here').to.not.equal(run('-n', '16', '--greedy').stdout);
    expect(noRepeat.status, noRepeat.stderr).to.equal(0);
    // What a greedy loop over the model's own pass and steps chooses under transformers' rule (applyNoRepeatNgram).
    const plain = await NemotronHForCausalLM.fromPretrained(dir);
    const sequence = ids.slice();
    const state: Partial<NemotronHState> = {};
    let logits = plain.forward({ inputIds: [sequence], logitsToKeep: 1 }, state).logits;
    for (let n = 0; n < 16; n++) {
      const scores = await logits.data() as Float32Array;
      logits.dispose();
      applyNoRepeatNgram(scores, sequence, 1);
      const token = scores.indexOf(Math.max(...scores));
      sequence.push(token);
      if (token === plain.config.eosTokenId) break;
      logits = plain.step([token], state as NemotronHState);
      if (n === 15) logits.dispose();
    }
    disposeState(state);
    plain.dispose();
    expect(noRepeat.stdout).to.equal(`${tokenizer.decode(sequence, { skipSpecialTokens: true })}\n`);
    const continuation = tokenizer.decode(expected, { skipSpecialTokens: true }).slice('the name'.length);
    const stop = continuation.slice(2, 4);
    const stopped = run('-n', '8', '--greedy', '--stop', stop);
    expect(stopped.stdout).to.equal(`the name${continuation.slice(0, continuation.indexOf(stop) + stop.length)}\n`);
    const chosen = run('-n', '8', '--greedy', '--choice', 'yes', '--choice', 'no');
    expect(['the nameyes\n', 'the nameno\n']).to.include(chosen.stdout);
    const beams = run('-n', '6', '--num-beams', '3');
    const beamModel = await NemotronHForCausalLM.fromPretrained(dir);
    const expectedBeams = await generate(beamModel, [ids], { maxNewTokens: 6, numBeams: 3 });
    beamModel.dispose();
    expect(beams.stdout).to.equal(`${tokenizer.decode(expectedBeams.sequences[0], { skipSpecialTokens: true })}\n`);
    expect(beams.stderr).to.match(/beam search \(3 beams\): \d+ tokens? in [\d.]+ s · backend cpu \(NemotronH\)/);
    // Prompt lookup: greedy's text (speculative decoding is greedy only: with --json it is refused by name).
    expect(run('-n', '8', '--greedy', '--prompt-lookup', '2').stdout).to.equal(`${tokenizer.decode(expected, { skipSpecialTokens: true })}\n`);
    const refused = spawnSync(process.execPath, [CLI, 'generate', '--model', dir, '--prompt', 'x', '--prompt-lookup', '2', '--json', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(refused.stderr).to.match(/prompt lookup decoding is greedy only; not with grammar/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  (testBackends().includes('tensorflow') ? describe : describe.skip)('the native backend\'s compiled decoding step', () => {
    before(async () => { await setBackend('tensorflow'); });
    after(() => useFusedKernels(true));

    /** Logits of three steps of a left-padded batch and the state after them, compiled or eager. */
    async function steps(model: NemotronHForCausalLM, compiled: boolean): Promise<{ logits: number[][][][]; state: number[][]; ran: string[] }> {
      useFusedKernels(compiled, [NEMOTRON_H_STEP_KERNEL]);
      const state: Partial<NemotronHState> = {};
      model.forward({ inputIds: reference.prompt, attentionMask: reference.attention_mask }, state).logits.dispose();
      const logits: number[][][][] = [];
      let ran: string[] = [];
      for (const tokens of [[5, 9], [17, 3], [40, 41]]) {
        const profile = await tf.profile(() => model.step(tokens, state as NemotronHState));
        ran = profile.kernelNames;
        const out = profile.result as tf.Tensor;
        logits.push(await out.array() as number[][][]);
        out.dispose();
      }
      const kept = await Promise.all(state.layers!.flatMap((l) => (l ? Object.values(l) : [])).map(async (t) => Array.from(await (t as tf.Tensor).data())));
      disposeState(state);
      return { logits, state: kept, ran };
    }

    /** Weights of std 0.3 (not 0.02): every one of them, biases included, then moves the logits measurably. */
    const spread = (model: NemotronHForCausalLM) => {
      let seed = 1;
      model.weights.forEach((v) => tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, 0.3, 'float32', seed++))));
      return model;
    };
    const shapes: Array<[string, () => Promise<NemotronHForCausalLM>]> = [
      ['the fixture model ("M*M-")', () => NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'))],
      ['biases everywhere, untied head, "-*MM"', async () => spread(new NemotronHForCausalLM(new NemotronHConfig({
        vocabSize: 96, hiddenSize: 24, layerTypes: ['mlp', 'attention', 'mamba', 'mamba'], mambaNumHeads: 6, mambaHeadDim: 4, nGroups: 3, ssmStateSize: 5,
        convKernel: 3, chunkSize: 4, numAttentionHeads: 4, numKeyValueHeads: 1, headDim: 6, intermediateSize: 40, useBias: true, useConvBias: true,
        mlpBias: true, tieWordEmbeddings: false, maxPositionEmbeddings: 64,
      })))],
      ['experts ("ME*E", groups of the router)', () => NemotronHForCausalLM.fromPretrained(path.join(DIR, 'moe'))],
      ['experts with latent projections', () => NemotronHForCausalLM.fromPretrained(path.join(DIR, 'moe-latent'))],
      ['experts: 4 groups keeping 2, 3 experts a token, biases, latent projections, unnormalized', async () => spread(new NemotronHForCausalLM(new NemotronHConfig({
        vocabSize: 96, hiddenSize: 24, layerTypes: ['moe', 'attention', 'mamba', 'moe'], mambaNumHeads: 6, mambaHeadDim: 4, nGroups: 3, ssmStateSize: 5,
        convKernel: 3, chunkSize: 4, numAttentionHeads: 4, numKeyValueHeads: 1, headDim: 6, intermediateSize: 40, mlpBias: true, maxPositionEmbeddings: 64,
        nRoutedExperts: 16, numExpertsPerTok: 3, nGroup: 4, topkGroup: 2, normTopkProb: false, routedScalingFactor: 1.5, moeIntermediateSize: 12,
        moeSharedExpertIntermediateSize: 20, moeLatentSize: 8,
      })))],
    ];
    for (const [what, load] of shapes) {
      it(`runs a step as one graph with the eager step's logits and state (${what}); no tensor left`, async () => {
        const model = await load();
        const before = tf.memory().numTensors;
        const eager = await steps(model, false);
        const compiled = await steps(model, true);
        expect(compiled.ran).to.include(NEMOTRON_H_STEP_KERNEL);
        expect(eager.ran).to.not.include(NEMOTRON_H_STEP_KERNEL);
        const worst = (a: number[], b: number[]) => maxDiff(a, b);
        compiled.logits.forEach((step, i) => expect(worst(step.flat(2), eager.logits[i].flat(2)), `logits of step ${i}`).to.be.at.most(1e-5));
        compiled.state.forEach((values, i) => expect(worst(values, eager.state[i]), `state tensor ${i}`).to.be.at.most(1e-5));
        expect(tf.memory().numTensors).to.equal(before);
        model.dispose();
      });
    }

    it('leaves a model with attached adapters to the eager step', async () => {
      useFusedKernels(true);
      const kernelsOfStep = async (model: NemotronHForCausalLM) => {
        const state: Partial<NemotronHState> = {};
        model.forward({ inputIds: reference.prompt.slice(0, 1) }, state).logits.dispose();
        const profile = await tf.profile(() => model.step([4], state as NemotronHState));
        (profile.result as tf.Tensor).dispose();
        disposeState(state);
        return profile.kernelNames;
      };
      const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
      expect(await kernelsOfStep(model)).to.include(NEMOTRON_H_STEP_KERNEL);
      const lora = NemotronHLoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: 'all-linear' });
      expect(await kernelsOfStep(model)).to.not.include(NEMOTRON_H_STEP_KERNEL);
      lora.unload();
      model.dispose();
    });
  });

  forEachBackend(testBackends(), () => {
    it('logits of a left-padded batch and the loss equal transformers\'; gradients too; no tensor left', async () => {
      const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
      const before = tf.memory().numTensors;
      await expectLogits(model, reference.logits);
      const { logits: l2, loss } = model.forward({ inputIds: reference.prompt.slice(0, 1), labels: reference.prompt.slice(0, 1) });
      expect(Math.abs((await loss!.data())[0] - reference.loss)).to.be.at.most(1e-5);
      tf.dispose([l2, loss!]);
      await expectGradients(model, reference.gradients);
      // logitsToKeep (transformers' logits_to_keep): the last positions' logits alone, the same values.
      const last = model.forward({ inputIds: reference.prompt, attentionMask: reference.attention_mask, logitsToKeep: 2 }).logits;
      expect(last.shape).to.deep.equal([2, 2, model.config.vocabSize]);
      const ours = await last.array() as number[][][];
      last.dispose();
      reference.prompt.forEach((row, b) => [0, 1].forEach((t) => expect(maxDiff(ours[b][t], reference.logits[b][row.length - 2 + t])).to.be.at.most(1e-4)));
      expect(() => model.forward({ inputIds: reference.prompt, logitsToKeep: 1, labels: reference.prompt })).to.throw(/give labels or logitsToKeep, not both/);
      expect(() => model.forward({ inputIds: reference.prompt, logitsToKeep: -1 })).to.throw(/logitsToKeep must be a whole number ≥ 0 \(0: every position\), got -1/);
      expect(tf.memory().numTensors).to.equal(before);
      model.dispose();
    });

    for (const variant of ['moe', 'moe-latent']) {
      it(`mixture-of-experts layers (${variant}): logits, gradients of the router, experts and shared expert, and greedy generation equal transformers' (routing on the host and on the device)`, async () => {
        const ref = reference.moe[variant];
        const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, variant));
        const before = tf.memory().numTensors;
        await expectLogits(model, ref.logits);
        await expectGradients(model, ref.gradients);
        model.gradientCheckpointingEnable();
        await expectGradients(model, ref.gradients);
        model.gradientCheckpointingDisable();
        expect(model.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null })[0]).to.deep.equal(ref.greedy);
        // The choice made on the device (as WebGPU makes it): each token's experts gathered, or every expert run.
        for (const routing of ['device-gather', 'device-dense'] as const) {
          model.moeRouting = routing;
          await expectLogits(model, ref.logits);
          await expectGradients(model, ref.gradients);
          expect(model.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null })[0], routing).to.deep.equal(ref.greedy);
        }
        model.moeRouting = 'auto';
        expect(tf.memory().numTensors).to.equal(before);
        model.dispose();
      });
    }

    it('the Trainer fine-tunes it: a step on a right-padded batch (loss, clipping, AdamW) moves the weights as torch\'s does', async () => {
      const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
      const before = tf.memory().numTensors;
      const { batch, mask, loss: torchLoss, after_step: afterStep } = reference.training;
      const examples = batch.map((ids, r) => ({ inputIds: ids.slice(0, mask[r].indexOf(0) < 0 ? ids.length : mask[r].indexOf(0)) }));
      const trainer = new Trainer(model, examples, { task: 'causal-lm', lr: 1e-2, batchSize: 2, maxSteps: 1, schedule: 'constant', maxGradNorm: 1, shuffle: false, padTokenId: 0 });
      const log = await trainer.step();
      expect(Math.abs(log.loss - torchLoss), 'loss').to.be.at.most(1e-5);
      for (const [name, values] of Object.entries(afterStep)) {
        const ours = Array.from(await model.weights.get(name)!.data()).slice(0, 8);
        expect(maxDiff(ours, values), name).to.be.at.most(1e-5);
      }
      trainer.dispose();
      expect(tf.memory().numTensors).to.equal(before);
      model.dispose();
      // With gradient checkpointing (each layer run again in the backward): the same step, less memory at the peak.
      const checkpointed = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
      const again = new Trainer(checkpointed, examples, { task: 'causal-lm', lr: 1e-2, batchSize: 2, maxSteps: 1, schedule: 'constant', maxGradNorm: 1, shuffle: false, padTokenId: 0, gradientCheckpointing: true });
      expect(checkpointed.isGradientCheckpointing).to.equal(true);
      expect(Math.abs((await again.step()).loss - torchLoss), 'loss, checkpointed').to.be.at.most(1e-5);
      for (const [name, values] of Object.entries(afterStep)) {
        const ours = Array.from(await checkpointed.weights.get(name)!.data()).slice(0, 8);
        expect(maxDiff(ours, values), `${name}, checkpointed`).to.be.at.most(1e-5);
      }
      again.dispose();
      const peak = async () => {
        const { peakBytes, result } = await tf.profile(() => {
          const { value, grads } = tf.variableGrads(() => checkpointed.computeLoss({ inputIds: batch, attentionMask: mask, labels: batch }));
          return [value, ...Object.values(grads)];
        });
        tf.dispose(result as tf.Tensor[]);
        return peakBytes;
      };
      const withCheckpoints = await peak();
      checkpointed.gradientCheckpointingDisable();
      expect(withCheckpoints).to.be.lessThan(await peak());
      // LoRA's adapters (the base frozen) get the same gradients through the recomputed layers.
      const lora = NemotronHLoraModel.attach(checkpointed, { r: 2, loraAlpha: 4, targetModules: 'all-linear', seed: 3 });
      const adapterGrads = async (on: boolean) => {
        if (on) checkpointed.gradientCheckpointingEnable();
        else checkpointed.gradientCheckpointingDisable();
        const adapters = [...checkpointed.adapters.values()].flatMap((a) => [a.A, a.B]);
        // B starts at zero (PEFT's init): move it, so that A's gradient is not zero too.
        adapters.forEach((v, i) => { if (i % 2 === 1) tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, 0.1, 'float32', i))); });
        const { value, grads } = tf.variableGrads(() => checkpointed.computeLoss({ inputIds: batch, attentionMask: mask, labels: batch }), adapters);
        const out = await Promise.all(adapters.map(async (v) => Array.from(await grads[v.name].data())));
        tf.dispose([value, ...Object.values(grads)]);
        return out;
      };
      const [plain, recomputed] = [await adapterGrads(false), await adapterGrads(true)];
      expect(plain.flat().some((g) => g !== 0)).to.equal(true);
      plain.forEach((g, i) => expect(maxDiff(recomputed[i], g), `adapter gradient ${i}`).to.be.at.most(1e-6));
      lora.unload();
      expect(tf.memory().numTensors).to.equal(before);
      checkpointed.dispose();
    });

    it('a pass continues a kept state: a prompt in pieces gives the whole prompt\'s logits and state (Mamba-2, attention, experts)', async () => {
      for (const variant of ['model', 'moe']) {
        const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, variant));
        const before = tf.memory().numTensors;
        const prompt = reference.prompt[0];
        const whole: Partial<NemotronHState> = {};
        const all = model.forward({ inputIds: [prompt] }, whole).logits;
        const expected = await all.array() as number[][][];
        all.dispose();
        for (const cut of [1, 5, prompt.length - 1]) {
          const pieces: Partial<NemotronHState> = {};
          model.forward({ inputIds: [prompt.slice(0, cut)] }, pieces).logits.dispose();
          const rest = model.forward({ inputIds: [prompt.slice(cut)] }, pieces).logits;
          const ours = await rest.array() as number[][][];
          rest.dispose();
          ours[0].forEach((row, t) => expect(maxDiff(row, expected[0][cut + t]), `${variant}, cut at ${cut}, position ${cut + t}`).to.be.at.most(1e-5));
          expect(pieces.mask).to.deep.equal([prompt.map(() => 1)]);
          const kept = (st: Partial<NemotronHState>) => Promise.all(st.layers!.flatMap((l) => (l ? Object.values(l) : [])).map(async (t) => Array.from(await (t as tf.Tensor).data())));
          const [a, b] = await Promise.all([kept(pieces), kept(whole)]);
          a.forEach((values, i) => expect(maxDiff(values, b[i]), `state ${i}`).to.be.at.most(1e-5));
          disposeState(pieces);
        }
        const state: Partial<NemotronHState> = {};
        model.forward({ inputIds: [prompt.slice(0, 3)] }, state).logits.dispose();
        expect(() => model.forward({ inputIds: [prompt.slice(3, 5)], attentionMask: [[0, 1]] }, state)).to.throw(/positions that continue a state cannot be padding/);
        expect(() => model.forward({ inputIds: [[1], [2]] }, state)).to.throw(/the state holds 1 rows, the inputs 2/);
        disposeState(state);
        disposeState(whole);
        expect(tf.memory().numTensors).to.equal(before);
        model.dispose();
      }
    });

    it('the library\'s generate(): beam search as transformers\' (hybrid state reordered to the beams; padding, EOS, length penalty, early stopping, experts); greedy and sampled as model.generate()', async () => {
      const beams = JSON.parse(fs.readFileSync(path.join(DIR, 'beams.json'), 'utf8')) as {
        cases: Array<{ variant: string; rows: number[]; settings: Record<string, unknown>; sequences: number[][]; sequences_scores: number[] }>;
      };
      for (const c of beams.cases) {
        const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, c.variant));
        const before = tf.memory().numTensors;
        const st = c.settings as { num_beams: number; max_new_tokens: number; num_return_sequences?: number; length_penalty?: number; early_stopping?: boolean; eos_token_id: number | null };
        const out = await generate(model, c.rows.map((r) => reference.prompt[r]), {
          attentionMask: c.rows.map((r) => reference.attention_mask[r]), numBeams: st.num_beams, maxNewTokens: st.max_new_tokens,
          numReturnSequences: st.num_return_sequences, lengthPenalty: st.length_penalty, earlyStopping: st.early_stopping, eosTokenId: st.eos_token_id, padTokenId: 0,
        });
        const what = JSON.stringify(c.settings);
        expect(out.sequences, what).to.deep.equal(c.sequences);
        expect(maxDiff(out.sequencesScores!, c.sequences_scores), what).to.be.at.most(1e-4);
        expect(tf.memory().numTensors).to.equal(before);
        if (c.variant === 'model' && c.rows.length === 1) {
          // Greedy and sampled: what the model's own generate() writes.
          const prompt = [reference.prompt[0]];
          expect((await generate(model, prompt, { maxNewTokens: 8, eosTokenId: null })).sequences).to.deep.equal(model.generate(prompt, { maxNewTokens: 8, eosTokenId: null }));
          const sampling = { maxNewTokens: 8, eosTokenId: null, doSample: true, temperature: 1.3, seed: 11 };
          expect((await generate(model, prompt, sampling)).sequences).to.deep.equal(model.generate(prompt, sampling));
          // Prompt lookup: greedy's tokens (test/generation/nemotron-h-speculative.test.ts checks it at length).
          expect((await generate(model, prompt.slice(0, 1), { maxNewTokens: 4, eosTokenId: null, promptLookupNumTokens: 2 })).sequences)
            .to.deep.equal(model.generate(prompt.slice(0, 1), { maxNewTokens: 4, eosTokenId: null }));
          expect(tf.memory().numTensors).to.equal(before);
        }
        model.dispose();
      }
    });

    it('greedy generation with the kept state (convolution window, SSM state, attention cache) writes transformers\' tokens', async () => {
      const model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, 'model'));
      const before = tf.memory().numTensors;
      const out = model.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null });
      expect(out[0]).to.deep.equal(reference.greedy);
      // A left-padded row generates as it does alone.
      const padded = model.generate([reference.prompt[1]], { maxNewTokens: 6, attentionMask: [reference.attention_mask[1]], eosTokenId: null });
      const alone = model.generate([reference.prompt[1].slice(3)], { maxNewTokens: 6, eosTokenId: null });
      expect(padded[0].slice(10)).to.deep.equal(alone[0].slice(7));
      // transformers' repetition penalty; seeded sampling repeats itself and differs from another seed.
      expect(model.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null, repetitionPenalty: 1.3 })[0]).to.deep.equal(reference.greedy_repetition_penalty_1_3);
      const sampled = (seed: number) => model.generate(reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null, doSample: true, temperature: 1.2, seed })[0];
      expect(sampled(3)).to.deep.equal(sampled(3));
      expect(sampled(3)).to.not.deep.equal(sampled(4));
      expect(tf.memory().numTensors).to.equal(before);
      model.dispose();
    });
  });
});
