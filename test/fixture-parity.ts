import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import {
  NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification,
  LoraModel, NemotronHForCausalLM, NemotronModel, SafetensorsFile, generate, setLossChunkBytes,
} from '../src/index';

/** Reads a scalar back. WebGPU in Node has no synchronous readback (tfjs uses OffscreenCanvas for it): always await. */
async function scalar(t: tf.Tensor): Promise<number> {
  const v = (await t.data())[0];
  t.dispose();
  return v;
}

async function maxDiff(actual: tf.Tensor, file: SafetensorsFile, key: string): Promise<number> {
  const r = file.read(key);
  return scalar(tf.tidy(() => tf.max(tf.abs(tf.sub(actual, tf.tensor(r.data, r.shape))))));
}

async function maxOf(values: Array<Promise<number>>): Promise<number> {
  return Math.max(...await Promise.all(values));
}

/**
 * The worst excess of d loss / d parameter over the fixtures' gradient tolerance (1e-4 absolute or 1e-3 relative):
 * ≤ 0 passes. A matrix stored in row blocks (`name#0`, `name#1`, … where the backend binds less) is compared joined.
 */
async function gradientExcess(params: Map<string, tf.Variable>, ref: SafetensorsFile, loss: () => tf.Scalar): Promise<number> {
  const { value, grads } = tf.variableGrads(loss, [...params.values()]);
  let worst = -Infinity;
  const byName = new Map<string, tf.Variable[]>();
  for (const [pname, v] of params) {
    const name = pname.split('#')[0];
    byName.set(name, [...(byName.get(name) ?? []), v]);
  }
  for (const [pname, vs] of byName) {
    const g = ref.read(`causal.grad.${pname}`);
    worst = Math.max(worst, await scalar(tf.tidy(() => {
      const t = tf.tensor(g.data, g.shape);
      // A block no token reached has no gradient: zero in those rows, as one matrix's gradient would be.
      const ours = vs.length === 1 ? grads[vs[0].name] : tf.concat(vs.map((v) => grads[v.name] ?? tf.zerosLike(v)));
      return tf.max(tf.sub(tf.abs(tf.sub(ours, t)), tf.maximum(1e-4, tf.mul(1e-3, tf.abs(t)))));
    })));
  }
  tf.dispose([value, ...Object.values(grads)]);
  return worst;
}

/**
 * Every check of the HF fixtures in one pass, with asynchronous reads only (WebGPU in Node has no synchronous readback):
 * hidden states, attentions, every head's logits and loss, gradients of every parameter, greedy generation.
 * Returns the measured differences and `pass` under the fixtures README's tolerances.
 */
export async function fixtureParity(dir: string): Promise<Record<string, number | boolean>> {
  const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
  const ref = SafetensorsFile.open(path.join(dir, 'expected.safetensors'));
  const inputs = { inputIds: exp.input_ids, attentionMask: exp.attention_mask };
  const r: Record<string, number | boolean> = {};
  const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

  const base = await NemotronModel.fromPretrained(path.join(dir, 'causal-lm'), { quiet: true });
  const b = base.forward({ ...inputs, outputHiddenStates: true, outputAttentions: true });
  r.hiddenStates = await maxOf(b.hiddenStates!.map((h, i) => maxDiff(h, ref, `base.hidden_states.${i}`)));
  r.attentions = await maxOf(b.attentions!.map((a, i) => maxDiff(a, ref, `base.attentions.${i}`)));
  tf.dispose([b.lastHiddenState, ...b.hiddenStates!, ...b.attentions!]);
  base.dispose();

  const causal = await NemotronForCausalLM.fromPretrained(path.join(dir, 'causal-lm'));
  const batch = { ...inputs, labels: exp.causal_labels };
  const c = causal.forward(batch);
  r.causalLogits = await maxDiff(c.logits, ref, 'causal.logits');
  r.causalLossRel = rel((await c.loss!.data())[0], exp.causal_loss);
  tf.dispose([c.logits, c.loss!]);
  const params = causal.namedParameters();
  // Gradients of every parameter from forward()'s loss and from computeLoss(), the training path (its logits in
  // chunks of 3 positions here, the last one short, so that chunk edges are crossed on every backend).
  const forwardExcess = await gradientExcess(params, ref, () => causal.forward(batch).loss!);
  let computeLossExcess: number;
  setLossChunkBytes(3 * 4 * causal.config.vocabSize);
  try {
    r.computeLossRel = rel(await scalar(causal.computeLoss(batch)), exp.causal_loss);
    computeLossExcess = await gradientExcess(params, ref, () => causal.computeLoss(batch));
  } finally {
    setLossChunkBytes(null);
  }
  // And with gradient checkpointing (each layer recomputed in the backward, under a tape of its own).
  causal.gradientCheckpointingEnable();
  const checkpointedExcess = await gradientExcess(params, ref, () => causal.computeLoss(batch));
  causal.gradientCheckpointingDisable();
  Object.assign(r, { gradientExcess: forwardExcess, computeLossGradientExcess: computeLossExcess, checkpointedGradientExcess: checkpointedExcess });
  r.gradientsWithinTolerance = forwardExcess <= 0 && computeLossExcess <= 0 && checkpointedExcess <= 0;
  const single = await generate(causal, exp.gen_single_prompt, { maxNewTokens: 8, eosTokenId: null, outputScores: true });
  r.genSingleExact = JSON.stringify(single.sequences) === JSON.stringify(exp.gen_single_output);
  const batched = await generate(causal, exp.gen_batch_prompt, { attentionMask: exp.gen_batch_mask, maxNewTokens: 6, eosTokenId: null, padTokenId: 0 });
  r.genBatchExact = JSON.stringify(batched.sequences) === JSON.stringify(exp.gen_batch_output);
  causal.dispose();

  for (const v of ['single', 'multi', 'regression']) {
    const m = await NemotronForSequenceClassification.fromPretrained(path.join(dir, `seqcls-${v}`));
    const o = m.forward({ ...inputs, labels: exp[`seqcls_${v}_labels`] });
    r[`seqcls_${v}_logits`] = await maxDiff(o.logits, ref, `seqcls.${v}.logits`);
    r[`seqcls_${v}_lossRel`] = rel((await o.loss!.data())[0], exp[`seqcls_${v}_loss`]);
    tf.dispose([o.logits, o.loss!]);
    m.dispose();
  }
  const qa = await NemotronForQuestionAnswering.fromPretrained(path.join(dir, 'qa'));
  const q = qa.forward({ ...inputs, startPositions: exp.qa_start_positions, endPositions: exp.qa_end_positions });
  r.qaLogits = await maxOf([maxDiff(q.startLogits, ref, 'qa.start_logits'), maxDiff(q.endLogits, ref, 'qa.end_logits')]);
  r.qaLossRel = rel((await q.loss!.data())[0], exp.qa_loss);
  tf.dispose([q.startLogits, q.endLogits, q.loss!]);
  qa.dispose();
  const tok = await NemotronForTokenClassification.fromPretrained(path.join(dir, 'tokcls'));
  const t = tok.forward({ ...inputs, labels: exp.tokcls_labels });
  r.tokclsLogits = await maxDiff(t.logits, ref, 'tokcls.logits');
  r.tokclsLossRel = rel((await t.loss!.data())[0], exp.tokcls_loss);
  tf.dispose([t.logits, t.loss!]);
  tok.dispose();
  ref.close();
  const logitKeys = Object.keys(r).filter((k) => /Logits|logits|hiddenStates|attentions/.test(k));
  const lossKeys = Object.keys(r).filter((k) => k.endsWith('LossRel') || k.endsWith('lossRel'));
  r.pass = logitKeys.every((k) => (r[k] as number) <= 1e-4) && lossKeys.every((k) => (r[k] as number) <= 1e-5)
    && r.gradientsWithinTolerance === true && r.genSingleExact === true && r.genBatchExact === true;
  return r;
}

/**
 * PEFT's LoRA fixture (test/fixtures/peft-lora/<config>, from scripts/reference/peft_lora_fixtures.py) on the active
 * backend, asynchronous reads only: logits and loss with the adapter, the gradient of every adapter parameter (through
 * computeLoss), the logits after mergeAndUnload(). `pass` under the fixtures' tolerances.
 */
export async function loraParity(hfDir: string, loraDir: string): Promise<Record<string, number | boolean>> {
  const exp = JSON.parse(fs.readFileSync(path.join(hfDir, 'expected.json'), 'utf8'));
  const ref = SafetensorsFile.open(path.join(loraDir, 'expected.safetensors'));
  const loss = JSON.parse(fs.readFileSync(path.join(loraDir, 'expected.json'), 'utf8')).loss as number;
  const batch = { inputIds: exp.input_ids, attentionMask: exp.attention_mask, labels: exp.causal_labels };
  const model = await NemotronForCausalLM.fromPretrained(path.join(hfDir, 'causal-lm'));
  const lora = await LoraModel.fromPretrained(model, path.join(loraDir, 'adapter'));
  const r: Record<string, number | boolean> = {};
  const out = model.forward(batch);
  r.loraLogits = await maxDiff(out.logits, ref, 'logits');
  r.loraLossRel = Math.abs((await scalar(out.loss!)) - loss) / loss;
  out.logits.dispose();
  const params = lora.namedParameters();
  const { value, grads } = tf.variableGrads(() => lora.computeLoss(batch), [...params.values()]);
  value.dispose();
  let worst = -Infinity;
  for (const [name, v] of params) {
    const g = ref.read(`grad.${name}`);
    worst = Math.max(worst, await scalar(tf.tidy(() => {
      const t = tf.tensor(g.data, g.shape);
      return tf.max(tf.sub(tf.abs(tf.sub(grads[v.name], t)), tf.maximum(1e-4, tf.mul(1e-3, tf.abs(t)))));
    })));
  }
  tf.dispose(Object.values(grads));
  r.loraGradientExcess = worst;
  lora.mergeAndUnload();
  const merged = model.forward({ inputIds: exp.input_ids, attentionMask: exp.attention_mask });
  r.loraMergedLogits = await maxDiff(merged.logits, ref, 'merged.logits');
  merged.logits.dispose();
  model.dispose();
  ref.close();
  r.pass = (r.loraLogits as number) <= 1e-4 && (r.loraMergedLogits as number) <= 1e-4 && (r.loraLossRel as number) <= 1e-5 && worst <= 0;
  return r;
}

/**
 * NemotronH against transformers (test/fixtures/nemotron-h: expected.json, beams.json, the "M*M-" checkpoint in
 * model/): logits of the left-padded batch (1e-4), the loss (1e-5), gradients (1e-4), greedy generation and a beam
 * search (the library's async generate(): no synchronous reads, so it runs on WebGPU too).
 */
export async function nemotronHParity(dir: string): Promise<{
  pass: boolean; logits: number; loss: number; gradients: number; greedy: boolean; beams: boolean; experts: { logits: number; gradients: number; greedy: boolean };
}> {
  const reference = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as {
    prompt: number[][]; attention_mask: number[][]; logits: number[][][]; loss: number; greedy: number[]; gradients: Record<string, number[]>;
    moe: Record<string, { logits: number[][][]; greedy: number[]; gradients: Record<string, number[]> }>;
  };
  const experts = await nemotronHExpertsParity(dir, reference);
  const model = await NemotronHForCausalLM.fromPretrained(path.join(dir, 'model'));
  try {
    const { logits } = model.forward({ inputIds: reference.prompt, attentionMask: reference.attention_mask });
    const ours = await logits.array() as number[][][];
    logits.dispose();
    let worstLogit = 0;
    reference.attention_mask.forEach((row, b) => row.forEach((m, t) => {
      if (m) ours[b][t].forEach((v, i) => { worstLogit = Math.max(worstLogit, Math.abs(v - reference.logits[b][t][i])); });
    }));
    const names = Object.keys(reference.gradients);
    const { value, grads } = tf.variableGrads(() => {
      const out = model.forward({ inputIds: reference.prompt.slice(0, 1), labels: reference.prompt.slice(0, 1) });
      out.logits.dispose();
      return out.loss!;
    }, names.map((n) => model.weights.get(n)!));
    const loss = Math.abs(await scalar(value) - reference.loss);
    let worstGradient = 0;
    for (const name of names) {
      const g = Array.from(await grads[model.weights.get(name)!.name].data()).slice(0, 16);
      g.forEach((v, i) => { worstGradient = Math.max(worstGradient, Math.abs(v - reference.gradients[name][i])); });
    }
    tf.dispose(Object.values(grads));
    const greedy = JSON.stringify((await generate(model, reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null })).sequences[0]) === JSON.stringify(reference.greedy);
    const beam = (JSON.parse(fs.readFileSync(path.join(dir, 'beams.json'), 'utf8')) as { cases: Array<{ sequences: number[][] }> }).cases[0];
    const searched = await generate(model, reference.prompt.slice(0, 1), { numBeams: 3, maxNewTokens: 8, numReturnSequences: 2, eosTokenId: null, padTokenId: 0 });
    const beams = JSON.stringify(searched.sequences) === JSON.stringify(beam.sequences);
    const expertsPass = experts.logits <= 1e-4 && experts.gradients <= 1e-4 && experts.greedy;
    return { pass: worstLogit <= 1e-4 && loss <= 1e-5 && worstGradient <= 1e-4 && greedy && beams && expertsPass, logits: worstLogit, loss, gradients: worstGradient, greedy, beams, experts };
  } finally {
    model.dispose();
  }
}

/** The mixture-of-experts fixtures (moe, moe-latent; the router's choice as the backend makes it): the worst of each check. */
async function nemotronHExpertsParity(dir: string, reference: { prompt: number[][]; attention_mask: number[][];
  moe: Record<string, { logits: number[][][]; greedy: number[]; gradients: Record<string, number[]> }> }): Promise<{ logits: number; gradients: number; greedy: boolean }> {
  const result = { logits: 0, gradients: 0, greedy: true };
  for (const [variant, expected] of Object.entries(reference.moe)) {
    const model = await NemotronHForCausalLM.fromPretrained(path.join(dir, variant));
    try {
      const { logits } = model.forward({ inputIds: reference.prompt, attentionMask: reference.attention_mask });
      const ours = await logits.array() as number[][][];
      logits.dispose();
      reference.attention_mask.forEach((row, b) => row.forEach((m, t) => {
        if (m) ours[b][t].forEach((v, i) => { result.logits = Math.max(result.logits, Math.abs(v - expected.logits[b][t][i])); });
      }));
      const names = Object.keys(expected.gradients);
      const { value, grads } = tf.variableGrads(() => {
        const out = model.forward({ inputIds: reference.prompt.slice(0, 1), labels: reference.prompt.slice(0, 1) });
        out.logits.dispose();
        return out.loss!;
      }, names.map((n) => model.weights.get(n)!));
      value.dispose();
      for (const name of names) {
        const g = Array.from(await grads[model.weights.get(name)!.name].data()).slice(0, 16);
        g.forEach((v, i) => { result.gradients = Math.max(result.gradients, Math.abs(v - expected.gradients[name][i])); });
      }
      tf.dispose(Object.values(grads));
      const greedy = (await generate(model, reference.prompt.slice(0, 1), { maxNewTokens: 12, eosTokenId: null })).sequences[0];
      result.greedy &&= JSON.stringify(greedy) === JSON.stringify(expected.greedy);
    } finally {
      model.dispose();
    }
  }
  return result;
}
