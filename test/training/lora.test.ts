import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { LoraModel, NemotronForCausalLM, NemotronForSequenceClassification, SafetensorsFile, Trainer, generate, readJsonl, setMaxWeightBlockBytes } from '../../src/index';
import { CONFIGS, FIXTURES, FixtureName, errorOf, expectClose, expected, expectRelClose, fixtureDir, forEachBackend, testBackends, tmpDir } from '../helpers';

// PEFT's LoRA on transformers' model (scripts/reference/peft_lora_fixtures.py): its saved adapter, the logits and loss
// with it, the gradient of every adapter parameter, the logits after merge_and_unload(). Tolerances: the fixtures'.
const LORA_FIXTURES = path.resolve(FIXTURES, '../peft-lora');
const loraDir = (config: FixtureName, sub = '') => path.join(LORA_FIXTURES, config, sub);

function reference(config: FixtureName): { file: SafetensorsFile; loss: number; tensor(key: string): tf.Tensor } {
  const file = SafetensorsFile.open(loraDir(config, 'expected.safetensors'));
  const loss = JSON.parse(fs.readFileSync(loraDir(config, 'expected.json'), 'utf8')).loss as number;
  return { file, loss, tensor: (key) => { const t = file.read(key); return tf.tensor(t.data, t.shape, 'float32'); } };
}

function causalBatch(config: FixtureName) {
  const exp = expected(config);
  return { inputIds: exp.json.input_ids as number[][], attentionMask: exp.json.attention_mask as number[][], labels: exp.json.causal_labels as number[][] };
}

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    describe(`LoRA against PEFT: ${config}`, () => {
      it('a PEFT adapter loads: logits, loss and the gradient of every adapter parameter match PEFT\'s', async () => {
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const lora = await LoraModel.fromPretrained(model, loraDir(config, 'adapter'));
        const ref = reference(config);
        const batch = causalBatch(config);
        const gradKeys = [...ref.file.tensors.keys()].filter((k) => k.startsWith('grad.')).map((k) => k.slice(5));
        expect([...lora.namedParameters().keys()].sort(), 'adapter parameters, PEFT-named').to.deep.equal(gradKeys.sort());
        const out = model.forward(batch);
        expectClose(out.logits, ref.tensor('logits'), 1e-4, 'logits with the adapter');
        expectRelClose(out.loss!.dataSync()[0], ref.loss, 1e-5, 'loss');
        tf.dispose([out.logits, out.loss!]);
        const before = tf.memory().numTensors;
        const params = lora.namedParameters();
        const { value, grads } = tf.variableGrads(() => lora.computeLoss(batch), [...params.values()]);
        expectRelClose(value.dataSync()[0], ref.loss, 1e-5, 'computeLoss');
        for (const [name, v] of params) {
          const [worst] = tf.tidy(() => {
            const r = ref.tensor(`grad.${name}`);
            return [tf.max(tf.sub(tf.abs(tf.sub(grads[v.name], r)), tf.maximum(1e-4, tf.mul(1e-3, tf.abs(r))))).dataSync()[0]];
          });
          expect(worst, `gradient of ${name} exceeds the tolerance by ${worst}`).to.be.at.most(0);
        }
        tf.dispose([value, ...Object.values(grads)]);
        expect(tf.memory().numTensors, 'tensors left by a LoRA step').to.equal(before);
        ref.file.close();
        lora.unload();
        model.dispose();
      });

      it('mergeAndUnload folds the adapters into the weights: PEFT\'s merged logits, and the adapters are gone', async () => {
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const lora = await LoraModel.fromPretrained(model, loraDir(config, 'adapter'));
        const adapterTensors = lora.namedParameters().size;
        const before = tf.memory().numTensors;
        expect(lora.mergeAndUnload()).to.equal(model);
        expect(before - tf.memory().numTensors, 'the adapters are freed').to.equal(adapterTensors);
        expect(model.model.layers.every((l) => l.adapterVariables().length === 0)).to.equal(true);
        expect([...model.namedParameters().values()].every((v) => v.trainable), 'the base trains again').to.equal(true);
        const ref = reference(config);
        const out = model.forward(causalBatch(config));
        expectClose(out.logits, ref.tensor('merged.logits'), 1e-4, 'merged logits');
        tf.dispose([out.logits, out.loss!]);
        ref.file.close();
        model.dispose();
      });

      it('savePretrained writes what PEFT wrote (config fields, tensor names and shapes); it loads back to the same logits', async () => {
        const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
        const lora = await LoraModel.fromPretrained(model, loraDir(config, 'adapter'));
        const dir = tmpDir('lora-save');
        await lora.savePretrained(dir);
        const ours = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
        const peft = JSON.parse(fs.readFileSync(loraDir(config, 'adapter/adapter_config.json'), 'utf8'));
        for (const key of ['peft_type', 'task_type', 'r', 'lora_alpha', 'lora_dropout', 'use_rslora', 'bias', 'fan_in_fan_out', 'layers_to_transform', 'use_dora']) {
          expect(ours[key], key).to.deep.equal(peft[key]);
        }
        expect([...ours.target_modules].sort(), 'target_modules').to.deep.equal([...peft.target_modules].sort());
        const [oursFile, peftFile] = [SafetensorsFile.open(path.join(dir, 'adapter_model.safetensors')), SafetensorsFile.open(loraDir(config, 'adapter/adapter_model.safetensors'))];
        expect([...oursFile.tensors].map(([k, t]) => `${k} ${t.shape}`).sort()).to.deep.equal([...peftFile.tensors].map(([k, t]) => `${k} ${t.shape}`).sort());
        for (const key of peftFile.tensors.keys()) expect(Array.from(oursFile.read(key).data), key).to.deep.equal(Array.from(peftFile.read(key).data));
        oursFile.close();
        peftFile.close();
        const first = model.forward(causalBatch(config));
        lora.unload();
        const again = await LoraModel.fromPretrained(model, dir);
        const second = model.forward(causalBatch(config));
        expectClose(second.logits, first.logits, 0, 'logits after the round trip');
        tf.dispose([first.logits, first.loss!, second.logits, second.loss!]);
        again.unload();
        model.dispose();
      });
    });
  }

  it('generation with an unmerged adapter (layer by layer, through the cache) equals generation after mergeAndUnload', async () => {
    const exp = expected('tiny-mha-bias');
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-mha-bias', 'causal-lm'));
    const lora = await LoraModel.fromPretrained(model, loraDir('tiny-mha-bias', 'adapter'));
    const options = { attentionMask: exp.json.gen_batch_mask, maxNewTokens: 6, eosTokenId: null, padTokenId: 0, outputScores: true };
    const unmerged = await generate(model, exp.json.gen_batch_prompt, options);
    lora.mergeAndUnload();
    const merged = await generate(model, exp.json.gen_batch_prompt, options);
    expect(unmerged.sequences).to.deep.equal(merged.sequences);
    let worst = 0;
    unmerged.scores!.forEach((step, i) => step.forEach((row, b) => row.forEach((v, j) => { worst = Math.max(worst, Math.abs(v - merged.scores![i][b][j])); })));
    expect(worst, 'max |score difference| over the steps').to.be.at.most(1e-4);
    model.dispose();
  });

  it('sequence classification: PEFT\'s adapter with the score head as a module to save (logits, loss, gradients); unload restores the head', async () => {
    const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-single'));
    const original = model.score.namedWeights()[0][1].clone();
    const dir = path.join(LORA_FIXTURES, 'tiny-gqa-seqcls');
    const lora = await LoraModel.fromPretrained(model, path.join(dir, 'adapter'));
    expect(lora.loraConfig.modulesToSave).to.deep.equal(['classifier', 'score']);
    const ref = SafetensorsFile.open(path.join(dir, 'expected.safetensors'));
    const tensor = (key: string) => { const t = ref.read(key); return tf.tensor(t.data, t.shape, 'float32'); };
    const { loss, labels } = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
    const exp = expected('tiny-gqa');
    const batch = { inputIds: exp.json.input_ids as number[][], attentionMask: exp.json.attention_mask as number[][], labels };
    const out = model.forward(batch);
    expectClose(out.logits, tensor('logits'), 1e-4, 'logits');
    expectRelClose(out.loss!.dataSync()[0], loss, 1e-5, 'loss');
    tf.dispose([out.logits, out.loss!]);
    const params = lora.namedParameters();
    expect([...params.keys()]).to.include('base_model.model.score.weight');
    const { value, grads } = tf.variableGrads(() => lora.computeLoss(batch), [...params.values()]);
    for (const [name, v] of params) {
      const [worst] = tf.tidy(() => {
        const r = tensor(`grad.${name}`);
        return [tf.max(tf.sub(tf.abs(tf.sub(grads[v.name], r)), tf.maximum(1e-4, tf.mul(1e-3, tf.abs(r))))).dataSync()[0]];
      });
      expect(worst, `gradient of ${name} exceeds the tolerance by ${worst}`).to.be.at.most(0);
    }
    tf.dispose([value, ...Object.values(grads)]);
    ref.close();
    lora.unload();
    expectClose(model.score.namedWeights()[0][1], original, 0, 'the score head after unload');
    original.dispose();
    model.dispose();
  });

  it('a new adapter changes nothing (B = 0); training moves the adapters only, with and without gradient checkpointing', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const batch = causalBatch('tiny-gqa');
    const plain = model.forward(batch);
    const baseWeights = new Map([...model.namedParameters()].map(([n, v]) => [n, v.clone()]));
    const lora = LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: 'all-linear', seed: 3 });
    expect(lora.namedParameters().size, '6 projections × 2 layers × (A, B)').to.equal(24);
    const adapted = model.forward(batch);
    expectClose(adapted.logits, plain.logits, 0, 'logits with a new adapter');
    tf.dispose([plain.logits, plain.loss!, adapted.logits, adapted.loss!]);
    // Checkpointing recomputes the layers with their adapters: the same gradients.
    const gradsOf = () => {
      const { value, grads } = tf.variableGrads(() => lora.computeLoss(batch), [...lora.namedParameters().values()]);
      value.dispose();
      return grads;
    };
    const [without, withCheckpointing] = [gradsOf(), (model.gradientCheckpointingEnable(), gradsOf())];
    model.gradientCheckpointingDisable();
    for (const name of Object.keys(without)) expectClose(withCheckpointing[name], without[name], 1e-6, `checkpointed gradient ${name}`);
    tf.dispose([...Object.values(without), ...Object.values(withCheckpointing)]);
    const examples = readJsonl(path.resolve(__dirname, '../../../examples/datasets/causal-lm.jsonl'), 'causal-lm');
    const trainer = new Trainer(lora, examples, { task: 'causal-lm', lr: 2e-2, batchSize: 4, maxSteps: 12, schedule: 'constant' });
    const start = await trainer.evaluate(examples);
    await trainer.fit();
    const end = await trainer.evaluate(examples);
    expect(end, `${start} → ${end}`).to.be.below(0.9 * start);
    for (const [name, v] of model.namedParameters()) expectClose(v, baseWeights.get(name)!, 0, `frozen base weight ${name}`);
    const dir = tmpDir('lora-trainer');
    await trainer.save(dir);
    expect(fs.existsSync(path.join(dir, 'adapter_model.safetensors')) && !fs.existsSync(path.join(dir, 'model.safetensors')), 'the adapter alone is saved').to.equal(true);
    trainer.dispose();
    lora.unload();
    tf.dispose([...baseWeights.values()]);
    model.dispose();
  });
});

describe('LoRA target modules as a regular expression', () => {
  it('matches whole module names as PEFT does, and saves and loads the expression', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const lora = LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: 'model\\.layers\\.1\\.self_attn\\.(q|v)_proj' });
    expect([...lora.namedParameters().keys()]).to.deep.equal([
      'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight', 'base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight',
      'base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight', 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight',
    ]);
    const dir = tmpDir('lora-regex');
    await lora.savePretrained(dir);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).target_modules).to.equal('model\\.layers\\.1\\.self_attn\\.(q|v)_proj');
    lora.unload();
    const again = await LoraModel.fromPretrained(model, dir);
    expect(again.namedParameters().size).to.equal(4);
    again.unload();
    // Not a whole-name match: "q_proj" alone as an expression would need the full name.
    expect(errorOf(() => LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: 'self_attn\\.q_proj' }))).to.match(/match no projection of this model/);
    model.dispose();
  });
});

describe('LoRA bad input', () => {
  it('names what it refuses: an unknown projection, unsupported PEFT options, a missing or wrong tensor, a second attach', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    expect(errorOf(() => LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: ['gate_proj'] }))).to.match(/"gate_proj" is not a projection of a Nemotron layer/);
    expect(errorOf(() => LoraModel.attach(model, { r: 0, loraAlpha: 4, targetModules: ['q_proj'] }))).to.match(/rank r must be a positive integer, got 0/);
    expect(errorOf(() => LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: ['q_proj'], layersToTransform: [5] }))).to.match(/layersToTransform: 5 is not a layer index in \[0, 2\)/);
    const copy = (edit: (config: Record<string, unknown>) => void, weights = loraDir('tiny-gqa', 'adapter/adapter_model.safetensors')) => {
      const dir = tmpDir('lora-bad');
      const config = JSON.parse(fs.readFileSync(loraDir('tiny-gqa', 'adapter/adapter_config.json'), 'utf8'));
      edit(config);
      fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify(config));
      fs.copyFileSync(weights, path.join(dir, 'adapter_model.safetensors'));
      return dir;
    };
    const failure = async (dir: string) => LoraModel.fromPretrained(model, dir).then(() => 'loaded', (e: Error) => e.message);
    expect(await failure(copy((c) => { c.use_dora = true; }))).to.match(/use_dora = true is not supported/);
    expect(await failure(copy((c) => { c.modules_to_save = ['lm_head']; }))).to.match(/adapter_model\.safetensors lacks base_model\.model\.lm_head\.weight/);
    expect(await failure(copy((c) => { c.peft_type = 'IA3'; }))).to.match(/peft_type "IA3", only LORA is supported/);
    expect(await failure(copy((c) => { c.r = 2; }))).to.match(/lora_A\.weight has shape \[4,(\d+)\], expected \[2,\1\]/);
    expect(await failure(copy((c) => { c.target_modules = ['q_proj']; }))).to.match(/has tensors no adapter of this config takes/);
    expect(model.model.layers.every((l) => l.adapterVariables().length === 0), 'a failed load leaves no adapter').to.equal(true);
    const lora = LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: ['q_proj'] });
    expect(errorOf(() => LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: ['q_proj'] }))).to.match(/has LoRA adapters already/);
    lora.unload();
    model.dispose();
    // An output matrix stored in row blocks (WebGPU, over its binding limit) cannot be a module to save.
    setMaxWeightBlockBytes(20 * 64 * 4);
    try {
      const blocked = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
      expect(errorOf(() => LoraModel.attach(blocked, { r: 2, loraAlpha: 4, targetModules: ['q_proj'], modulesToSave: ['lm_head'] })))
        .to.match(/modulesToSave: lm_head is stored in row blocks/);
      expect(blocked.model.layers.every((l) => l.adapterVariables().length === 0), 'a refused attach leaves no adapter').to.equal(true);
      blocked.dispose();
    } finally {
      setMaxWeightBlockBytes(null);
    }
  });
});
