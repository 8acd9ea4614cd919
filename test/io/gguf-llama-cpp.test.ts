import * as fs from 'fs';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { GGUFFile, LoraModel, NemotronConfig, NemotronForCausalLM, NemotronForSequenceClassification, NemotronHForCausalLM, NemotronHLoraModel, NemotronTokenizer, setBackend } from '../../src/index';
import { adaptModel, quantizeModel } from './gguf-quantize-models';
import { forEachBackend, testBackends, tmpDir } from '../helpers';

/**
 * llama.cpp itself as the judge of our GGUF files (scripts/reference/llama_cpp_fixtures.py, llama.cpp built from
 * llama-cpp-python's source distribution, its CPU backend in float32): the logits it computes from the F32 files we
 * write (Nemotron; NemotronH with Mamba, attention and 8 experts) and from the converter-layout NemotronH fixtures
 * (one with latent expert projections) equal ours from the same files; its tokenizer encodes text with our byte-level
 * vocabularies as ours does.
 */
const FIXTURES = path.resolve(__dirname, '../../../test/fixtures');
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const reference = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'gguf-llama-cpp', 'expected.json'), 'utf8')) as {
  ids: number[]; texts: string[]; logits: Record<string, number[][]>; encodings: Record<string, number[][]>;
};

/** The GGUF file behind each of llama.cpp's logits: ours written again from the seeded weights, or a committed fixture. */
async function ggufFile(name: string, dir: string): Promise<string> {
  if (name === 'hybrid' || name === 'moe') return path.join(FIXTURES, 'nemotron-h-gguf', `${name}-f32.gguf`);
  const file = path.join(dir, `${name}-f32.gguf`);
  if (!fs.existsSync(file)) {
    const { model, tokenizer } = await quantizeModel(name as 'nemotron' | 'nemotron-h');
    await model.saveGGUF(file, tokenizer, { type: 'F32', name });
    model.dispose();
  }
  return file;
}

forEachBackend(testBackends(), () => {
  const dir = tmpDir('gguf-llama-cpp');
  for (const name of Object.keys(reference.logits)) {
    const adapted = name.endsWith('+lora');
    it(adapted ? `${name}: llama.cpp with our adapter's GGUF on the F32 base gives our adapted model's logits within 1e-4`
      : `${name}: logits from the F32 GGUF within 1e-4 of llama.cpp's, every position`, async () => {
      const base = name.replace('+lora', '');
      const file = await ggufFile(base, dir);
      const model = base === 'nemotron' ? await NemotronForCausalLM.fromPretrained(file) : await NemotronHForCausalLM.fromPretrained(file);
      // The adapters as llama.cpp had them: the same seeded draws, unmerged.
      if (adapted) await adaptModel(base as 'nemotron' | 'nemotron-h', model);
      const before = tf.memory().numTensors;
      const logits = model.forward({ inputIds: [reference.ids] }).logits!;
      const theirs = tf.tensor([reference.logits[name]]);
      const worst = tf.tidy(() => tf.max(tf.abs(tf.sub(logits, theirs))).dataSync()[0]);
      tf.dispose([logits, theirs]);
      expect(tf.memory().numTensors, 'no tensor left by the forward pass').to.equal(before);
      model.dispose();
      expect(worst, `${name}: largest difference from llama.cpp's logits`).to.be.at.most(1e-4);
    });
  }
});

describe('GGUF vocabularies as llama.cpp\'s tokenizer reads them', () => {
  const files: Record<string, string> = {
    tekken: path.join(FIXTURES, 'nemotron-h-gguf', 'hybrid-f32.gguf'),
    'gpt-2': path.join(FIXTURES, 'nemotron-h-gguf', 'vocab-gpt-2.gguf'),
    'llama-bpe': path.join(FIXTURES, 'nemotron-h-gguf', 'vocab-llama-bpe.gguf'),
    qwen2: path.join(FIXTURES, 'nemotron-h-gguf', 'vocab-qwen2.gguf'),
  };
  for (const [pre, file] of Object.entries(files)) {
    it(`${pre}: the same ids as llama_tokenize (special tokens added and parsed) on ${reference.texts.length} texts`, async () => {
      const tokenizer = await NemotronTokenizer.fromPretrained(file);
      const ours = reference.texts.map((text) => tokenizer.encode(text));
      expect(ours).to.deep.equal(reference.encodings[pre]);
    });
  }
});

describe('LoRA adapters as GGUF files (llama.cpp\'s --lora)', () => {
  before(async () => { await setBackend('cpu'); });
  const peft = (config: string) => [path.join(FIXTURES, 'hf-reference', config, 'causal-lm'), path.join(FIXTURES, 'peft-lora', config, 'adapter')];

  for (const type of ['F32', 'F16'] as const) {
    it(`a PEFT adapter written as convert_lora_to_gguf.py writes it, byte for byte (${type})`, async () => {
      const [baseDir, adapterDir] = peft('tiny-gqa');
      const lora = await LoraModel.fromPretrained(await NemotronForCausalLM.fromPretrained(baseDir), adapterDir);
      const file = path.join(tmpDir('gguf-lora'), 'adapter.gguf');
      await lora.saveGGUF(file, { type });
      expect(fs.readFileSync(file).equals(fs.readFileSync(path.join(FIXTURES, 'gguf-llama-cpp', `lora-tiny-gqa-${type.toLowerCase()}.gguf`)))).to.equal(true);
      lora.model.dispose();
    });
  }

  it('an rsLoRA adapter: the converter\'s tensors, its alpha written as alpha·√r (llama.cpp scales by alpha / r)', async () => {
    const [baseDir, adapterDir] = peft('tiny-mha-bias');
    const lora = await LoraModel.fromPretrained(await NemotronForCausalLM.fromPretrained(baseDir), adapterDir);
    expect(lora.loraConfig.useRslora, 'the fixture is rsLoRA').to.equal(true);
    const file = path.join(tmpDir('gguf-lora'), 'adapter.gguf');
    await lora.saveGGUF(file);
    const [ours, theirs] = [GGUFFile.open(file), GGUFFile.open(path.join(FIXTURES, 'gguf-llama-cpp', 'lora-tiny-mha-bias-f32.gguf'))];
    try {
      expect([...ours.metadata.keys()]).to.deep.equal([...theirs.metadata.keys()]);
      for (const key of ours.metadata.keys()) if (key !== 'adapter.lora.alpha') expect(ours.get(key), key).to.deep.equal(theirs.get(key));
      expect(theirs.get('adapter.lora.alpha'), 'the converter: PEFT\'s lora_alpha').to.equal(lora.loraConfig.loraAlpha);
      expect(ours.get('adapter.lora.alpha') as number).to.be.closeTo(lora.loraConfig.loraAlpha * Math.sqrt(lora.loraConfig.r), 1e-5);
      expect([...ours.tensors.keys()]).to.deep.equal([...theirs.tensors.keys()]);
      for (const name of theirs.tensors.keys()) expect(ours.readBytes(name).equals(theirs.readBytes(name)), name).to.equal(true);
    } finally {
      ours.close();
      theirs.close();
      lora.model.dispose();
    }
  });

  it('the CLI writes a NemotronH adapter folder (PEFT\'s files) as the GGUF llama.cpp ran: convert --model BASE --adapter DIR', async () => {
    const dir = tmpDir('gguf-lora-cli');
    const { model, tokenizer } = await quantizeModel('nemotron-h');
    const lora = await adaptModel('nemotron-h', model);
    await lora.saveGGUF(path.join(dir, 'direct.gguf'));
    await lora.savePretrained(path.join(dir, 'adapter'));
    lora.unload();
    await model.savePretrained(path.join(dir, 'base'));
    tokenizer.savePretrained(path.join(dir, 'base'));
    model.dispose();
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, 'convert', ...args, '--backend', 'cpu'], { encoding: 'utf8' });
    const run = cli('--model', path.join(dir, 'base'), '--adapter', path.join(dir, 'adapter'), '--output', path.join(dir, 'cli.gguf'));
    expect(run.status, run.stderr).to.equal(0);
    expect(fs.readFileSync(path.join(dir, 'cli.gguf')).equals(fs.readFileSync(path.join(dir, 'direct.gguf'))), 'the same file').to.equal(true);
    // The base as the GGUF file it may have been fine-tuned on.
    const fromGGUF = cli('--model', await ggufFile('nemotron-h', dir), '--adapter', path.join(dir, 'adapter'), '--output', path.join(dir, 'cli-gguf-base.gguf'));
    expect(fromGGUF.status, fromGGUF.stderr).to.equal(0);
    expect(fs.readFileSync(path.join(dir, 'cli-gguf-base.gguf')).equals(fs.readFileSync(path.join(dir, 'direct.gguf'))), 'the same file from a GGUF base').to.equal(true);
    const refused = cli('--model', path.join(dir, 'base'), '--adapter', path.join(dir, 'adapter'), '--output', path.join(dir, 'q.gguf'), '--type', 'Q4_K_M');
    expect(refused.stderr).to.match(/--type Q4_K_M: a LoRA adapter's GGUF is F32 or F16/);
  });

  it('reads a GGUF LoRA adapter back: the converter\'s file gives PEFT\'s adapter exactly; ours of NemotronH round-trips', async () => {
    const [baseDir, adapterDir] = peft('tiny-gqa');
    const fromPeft = await LoraModel.fromPretrained(await NemotronForCausalLM.fromPretrained(baseDir), adapterDir);
    const fromGGUF = await LoraModel.fromGGUF(await NemotronForCausalLM.fromPretrained(baseDir), path.join(FIXTURES, 'gguf-llama-cpp', 'lora-tiny-gqa-f32.gguf'));
    expect(fromGGUF.scaling).to.equal(fromPeft.scaling);
    const [theirs, ours] = [fromPeft.namedParameters(), fromGGUF.namedParameters()];
    expect([...ours.keys()].sort()).to.deep.equal([...theirs.keys()].sort());
    for (const [name, v] of theirs) expect(Buffer.from(ours.get(name)!.dataSync().buffer).equals(Buffer.from(v.dataSync().buffer)), name).to.equal(true);
    fromPeft.model.dispose();
    fromGGUF.model.dispose();

    const dir = tmpDir('gguf-lora-read');
    const { model } = await quantizeModel('nemotron-h');
    const lora = await adaptModel('nemotron-h', model) as NemotronHLoraModel;
    await lora.saveGGUF(path.join(dir, 'adapter.gguf'));
    const fresh = (await quantizeModel('nemotron-h')).model as NemotronHForCausalLM;
    const read = await NemotronHLoraModel.fromGGUF(fresh, path.join(dir, 'adapter.gguf'));
    expect(read.scaling).to.equal(lora.scaling);
    expect([...read.namedParameters().keys()].sort()).to.deep.equal([...lora.namedParameters().keys()].sort());
    for (const [name, v] of lora.namedParameters()) {
      expect(Buffer.from(read.namedParameters().get(name)!.dataSync().buffer).equals(Buffer.from(v.dataSync().buffer)), name).to.equal(true);
    }
    const wrongFamily = await LoraModel.fromGGUF(await NemotronForCausalLM.fromPretrained(baseDir), path.join(dir, 'adapter.gguf')).then(() => 'read', (e: Error) => e.message);
    expect(wrongFamily).to.match(/adapts a nemotron_h_moe model, not nemotron/);
    const notAdapter = await NemotronHLoraModel.fromGGUF(fresh, path.join(FIXTURES, 'nemotron-h-gguf', 'moe-f32.gguf')).then(() => 'read', (e: Error) => e.message);
    expect(notAdapter).to.match(/is not a GGUF LoRA adapter \(general\.type null, adapter\.type null\)/);
    model.dispose();
    fresh.dispose();
  });

  it('generate --adapter takes a GGUF LoRA file as it takes the PEFT folder it came from (the same tokens)', () => {
    const run = (adapter: string) => spawnSync(process.execPath, [path.resolve(__dirname, '../../src/cli/main.js'), 'generate', '--model',
      path.join(FIXTURES, 'gguf', 'tiny-gqa.gguf'), '--adapter', adapter, '--prompt', 'hello world', '--max-new-tokens', '8', '--greedy', '--backend', 'cpu'], { encoding: 'utf8' });
    const [folder, file] = [run(peft('tiny-gqa')[1]), run(path.join(FIXTURES, 'gguf-llama-cpp', 'lora-tiny-gqa-f32.gguf'))];
    expect(folder.status, folder.stderr).to.equal(0);
    expect(file.status, file.stderr).to.equal(0);
    expect(file.stdout).to.equal(folder.stdout);
    const plain = spawnSync(process.execPath, [path.resolve(__dirname, '../../src/cli/main.js'), 'generate', '--model', path.join(FIXTURES, 'gguf', 'tiny-gqa.gguf'),
      '--prompt', 'hello world', '--max-new-tokens', '8', '--greedy', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(plain.stdout, 'the adapter changes the text').to.not.equal(file.stdout);
  });

  it('NemotronH: generate --adapter merges a PEFT folder or its GGUF alike (the same tokens; not the base\'s)', async () => {
    const dir = tmpDir('gguf-lora-h-cli');
    const { model, tokenizer } = await quantizeModel('nemotron-h');
    await model.savePretrained(path.join(dir, 'base'));
    tokenizer.savePretrained(path.join(dir, 'base'));
    const lora = await adaptModel('nemotron-h', model);
    // Larger B than the seeded draws, so that greedy tokens change.
    for (const [name, v] of lora.namedParameters()) if (name.includes('lora_B')) v.assign(tf.tidy(() => tf.mul(v, 20)));
    await lora.savePretrained(path.join(dir, 'adapter'));
    await lora.saveGGUF(path.join(dir, 'adapter.gguf'));
    model.dispose();
    const run = (...adapter: string[]) => spawnSync(process.execPath, [CLI, 'generate', '--model', path.join(dir, 'base'), ...adapter,
      '--prompt', 'the quick brown fox', '--max-new-tokens', '8', '--greedy', '--backend', 'cpu'], { encoding: 'utf8' });
    const [folder, file, plain] = [run('--adapter', path.join(dir, 'adapter')), run('--adapter', path.join(dir, 'adapter.gguf')), run()];
    for (const r of [folder, file, plain]) expect(r.status, r.stderr).to.equal(0);
    expect(folder.stderr).to.match(/merged the LoRA adapter in .* \(r 4\)/);
    expect(file.stdout).to.equal(folder.stdout);
    expect(plain.stdout, 'the adapter changes the text').to.not.equal(folder.stdout);
  });

  it('refuses what llama.cpp\'s LoRA files cannot carry: a classification head\'s adapter', async () => {
    const model = new NemotronForSequenceClassification(new NemotronConfig({ vocabSize: 32, hiddenSize: 16, numAttentionHeads: 2, numKeyValueHeads: 1, intermediateSize: 8, numHiddenLayers: 1, numLabels: 2 }));
    const lora = LoraModel.attach(model, { r: 2, loraAlpha: 4, targetModules: ['q_proj'] });
    const message = await lora.saveGGUF(path.join(tmpDir('gguf-lora'), 'x.gguf')).then(() => 'written', (e: Error) => e.message);
    expect(message).to.match(/llama\.cpp's LoRA adapters are for causal LMs; this one adapts a NemotronForSequenceClassification/);
    model.dispose();
  });
});
