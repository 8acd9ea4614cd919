import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { LoraModel, NemotronConfig, NemotronTokenizer, SafetensorsFile, readJsonl, NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification } from '../../src/index';
import { causalPerplexity } from '../../src/cli/evaluate';
import { tmpDir } from '../helpers';

const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const DATASETS = path.resolve(__dirname, '../../../examples/datasets');

describe('finetune CLI', function () {
  let base: string;
  before(async () => {
    await tf.setBackend('cpu');
    base = tmpDir('ft-base');
    const model = new NemotronForCausalLM(new NemotronConfig({
      vocabSize: 32, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2,
      maxPositionEmbeddings: 64, padTokenId: 0, initializerRange: 0.1,
    }));
    await model.savePretrained(base);
    model.dispose();
  });

  /** A model over the fixture tokenizer's 327 ids, with its tokenizer.json and the given tokenizer_config.json. */
  async function withTokenizer(name: string, tokenizerConfig: string): Promise<string> {
    const dir = tmpDir(name);
    const model = new NemotronForCausalLM(new NemotronConfig({
      vocabSize: 327, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2,
      maxPositionEmbeddings: 128, padTokenId: 0, bosTokenId: 2, eosTokenId: 3, initializerRange: 0.1,
    }));
    await model.savePretrained(dir);
    model.dispose();
    const fixtures = path.resolve(__dirname, '../../../test/fixtures');
    fs.copyFileSync(path.join(fixtures, 'tokenizer/tokenizer.json'), path.join(dir, 'tokenizer.json'));
    fs.copyFileSync(path.join(fixtures, tokenizerConfig), path.join(dir, 'tokenizer_config.json'));
    return dir;
  }

  const classes = {
    'causal-lm': NemotronForCausalLM, 'sequence-classification': NemotronForSequenceClassification,
    'token-classification': NemotronForTokenClassification, 'question-answering': NemotronForQuestionAnswering,
  } as const;
  for (const task of Object.keys(classes) as Array<keyof typeof classes>) {
    it(`--task ${task}: trains, logs every step, saves a checkpoint fromPretrained loads`, async () => {
      const output = tmpDir(`ft-${task}`);
      const stdout = execFileSync('node', [CLI, 'finetune', '--backend', 'cpu', '--task', task, '--model', base,
        '--train', path.join(DATASETS, `${task}.jsonl`), '--eval', path.join(DATASETS, `${task}.jsonl`), '--output', output,
        '--lr', '3e-3', '--max-steps', '6', '--batch-size', '4', '--no-progress'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      expect(stdout).to.match(/trained 6 steps: loss [\d.]+ → [\d.]+ · eval loss [\d.]+/);
      const log = fs.readFileSync(path.join(output, 'train_log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(log.filter((l) => 'loss' in l)).to.have.length(6);
      // The evaluation logs the task's metric beside the loss.
      const metric = { 'causal-lm': null, 'sequence-classification': 'evalAccuracy', 'token-classification': 'evalTokenAccuracy', 'question-answering': 'evalExactMatch' }[task];
      const evalLog = log.filter((l) => 'evalLoss' in l).pop();
      expect(Object.keys(evalLog).filter((k) => k.startsWith('eval') && k !== 'evalLoss'), task).to.deep.equal(metric ? [metric] : []);
      const loaded = await (classes[task] as typeof NemotronForCausalLM).fromPretrained(output);
      expect(loaded.numParameters()).to.be.greaterThan(0);
      loaded.dispose();
      if (metric) {
        // evaluate --task reports the same loss and metric on the same data.
        const evaluated = JSON.parse(execFileSync('node', [CLI, 'evaluate', '--backend', 'cpu', '--task', task, '--model', output,
          '--data', path.join(DATASETS, `${task}.jsonl`), '--batch-size', '4', '--json'], { encoding: 'utf8' }));
        expect(evaluated.loss).to.be.closeTo(evalLog.evalLoss, 1e-5);
        expect(evaluated[{ evalAccuracy: 'accuracy', evalTokenAccuracy: 'tokenAccuracy', evalExactMatch: 'exactMatch' }[metric]!]).to.equal(evalLog[metric]);
      }
    });
  }

  it('--gradient-checkpointing logs the same losses as without it', () => {
    const losses = [[], ['--gradient-checkpointing']].map((extra) => {
      const output = tmpDir('ft-checkpointing');
      const run = spawnSync('node', [CLI, 'finetune', '--backend', 'cpu', '--task', 'causal-lm', '--model', base, '--train', path.join(DATASETS, 'causal-lm.jsonl'),
        '--output', output, '--lr', '3e-3', '--max-steps', '3', '--batch-size', '4', '--no-progress', ...extra], { encoding: 'utf8' });
      expect(run.status, run.stderr).to.equal(0);
      expect(/backend cpu, gradient checkpointing\n/.test(run.stderr), run.stderr).to.equal(extra.length > 0);
      return fs.readFileSync(path.join(output, 'train_log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss as number);
    });
    expect(losses[1]).to.have.length(3);
    losses[1].forEach((loss, i) => expect(loss, `step ${i + 1}`).to.be.closeTo(losses[0][i], 1e-6 * losses[0][i]));
  });

  it('--lora-r trains PEFT adapters only: the output holds the adapter, it loads onto the base, --resume continues it', async () => {
    const output = tmpDir('ft-lora');
    const args = ['finetune', '--backend', 'cpu', '--task', 'causal-lm', '--model', base, '--train', path.join(DATASETS, 'causal-lm.jsonl'),
      '--output', output, '--lr', '1e-2', '--batch-size', '4', '--no-progress', '--lora-r', '4', '--lora-alpha', '8', '--lora-targets', 'q_proj,v_proj'];
    const first = spawnSync('node', [CLI, ...args, '--max-steps', '2'], { encoding: 'utf8' });
    expect(first.status, first.stderr).to.equal(0);
    expect(first.stderr).to.match(/LoRA r 4 on \d+ parameters/);
    expect(fs.existsSync(path.join(output, 'adapter_model.safetensors')) && !fs.existsSync(path.join(output, 'model.safetensors'))).to.equal(true);
    const config = JSON.parse(fs.readFileSync(path.join(output, 'adapter_config.json'), 'utf8'));
    expect([config.peft_type, config.r, config.lora_alpha, config.target_modules]).to.deep.equal(['LORA', 4, 8, ['q_proj', 'v_proj']]);
    const resumed = spawnSync('node', [CLI, ...args, '--max-steps', '4', '--resume'], { encoding: 'utf8' });
    expect(resumed.status, resumed.stderr).to.equal(0);
    expect(resumed.stderr).to.match(/4 steps from step 2/);
    const model = await NemotronForCausalLM.fromPretrained(base);
    const lora = await LoraModel.fromPretrained(model, output);
    expect(lora.namedParameters().size).to.equal(2 * 2 * model.config.numHiddenLayers);
    // merge-lora: the saved checkpoint computes what the base with the adapter computes.
    const merged = tmpDir('ft-lora-merged');
    const merge = spawnSync('node', [CLI, 'merge-lora', '--backend', 'cpu', '--model', base, '--adapter', output, '--output', merged], { encoding: 'utf8' });
    expect(merge.status, merge.stderr).to.equal(0);
    expect(merge.stdout).to.match(/merged a LoRA adapter \(r 4, \d+ parameters\)/);
    const reloaded = await NemotronForCausalLM.fromPretrained(merged);
    const ids = [[2, 11, 25, 7, 19]];
    const [adapted, folded] = [model.forward({ inputIds: ids }).logits, reloaded.forward({ inputIds: ids }).logits];
    expect(tf.tidy(() => tf.max(tf.abs(tf.sub(adapted, folded))).dataSync()[0]), 'merged vs adapted logits').to.be.at.most(1e-5);
    tf.dispose([adapted, folded]);
    reloaded.dispose();
    lora.unload();
    model.dispose();
    // A new token-classification head trains whole beside the adapters (PEFT's modules_to_save) and is saved with them.
    const tokOutput = tmpDir('ft-lora-tokcls');
    const tok = spawnSync('node', [CLI, 'finetune', '--backend', 'cpu', '--task', 'token-classification', '--model', base,
      '--train', path.join(DATASETS, 'token-classification.jsonl'), '--output', tokOutput, '--lr', '1e-2', '--batch-size', '4',
      '--no-progress', '--lora-r', '4', '--max-steps', '2'], { encoding: 'utf8' });
    expect(tok.status, tok.stderr).to.equal(0);
    const tokFile = SafetensorsFile.open(path.join(tokOutput, 'adapter_model.safetensors'));
    expect(tokFile.has('base_model.model.score.weight'), 'the head travels with the adapter').to.equal(true);
    tokFile.close();
    expect(JSON.parse(fs.readFileSync(path.join(tokOutput, 'adapter_config.json'), 'utf8')).modules_to_save).to.deep.equal(['score']);
  });

  it('instruction tuning from chat data: "messages" rows, --assistant-only-loss, LoRA; the adapter is saved', async () => {
    // With the Nemotron-style chat template of the chat fixtures.
    const chatBase = await withTokenizer('ft-chat-base', 'chat-template/tokenizer_config.json');
    const data = path.join(tmpDir('ft-chat-data'), 'chat.jsonl');
    fs.writeFileSync(data, [
      { messages: [{ role: 'user', content: 'Say hi.' }, { role: 'assistant', content: 'Hi there.' }] },
      { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: '2 + 2?' }, { role: 'assistant', content: 'Four.' }] },
    ].map((r) => JSON.stringify(r)).join('\n'));
    const output = tmpDir('ft-chat');
    const run = spawnSync('node', [CLI, 'finetune', '--backend', 'cpu', '--task', 'causal-lm', '--model', chatBase, '--train', data,
      '--output', output, '--lr', '1e-2', '--batch-size', '2', '--max-steps', '3', '--no-progress', '--assistant-only-loss', '--lora-r', '4'], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stdout).to.match(/trained 3 steps: loss ([\d.]+) → ([\d.]+)/);
    expect(fs.existsSync(path.join(output, 'adapter_model.safetensors'))).to.equal(true);
    expect(fs.existsSync(path.join(output, 'tokenizer_config.json')), 'the tokenizer (and its chat template) travels with the adapter').to.equal(true);
  });

  it('--add-special-tokens: the tokenizer gains them, the embeddings grow to its size, both are saved; not with LoRA', async () => {
    const tokBase = await withTokenizer('ft-tokens-base', 'tokenizer/tokenizer_config.json');
    const data = path.join(tmpDir('ft-tokens-data'), 'tool.jsonl');
    fs.writeFileSync(data, ['Hello <|tool|> the world<|eot|>', 'the <|tool|> Hello<|eot|>'].map((text) => JSON.stringify({ text })).join('\n'));
    const output = tmpDir('ft-tokens');
    const args = ['finetune', '--backend', 'cpu', '--task', 'causal-lm', '--model', tokBase, '--train', data, '--output', output,
      '--lr', '1e-2', '--batch-size', '2', '--max-steps', '2', '--no-progress', '--add-special-tokens', '<|tool|>, <|eot|>'];
    const run = spawnSync('node', [CLI, ...args], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stderr).to.match(/added 2 special tokens: embeddings 327 → 329 rows/);
    const tokenizer = await NemotronTokenizer.fromPretrained(output);
    expect(tokenizer.vocabSize).to.equal(329);
    expect(tokenizer.encode('<|tool|><|eot|>', { addSpecialTokens: false })).to.deep.equal([327, 328]);
    expect(tokenizer.decode([2, 327, 52, 328], { skipSpecialTokens: true })).to.equal('Hello');
    const trained = await NemotronForCausalLM.fromPretrained(output);
    expect(trained.config.vocabSize).to.equal(329);
    expect(trained.outputWeight.shape).to.deep.equal([329, 32]);
    trained.dispose();
    const withLora = spawnSync('node', [CLI, ...args, '--lora-r', '4', '--output', tmpDir('ft-tokens-lora')], { encoding: 'utf8' });
    expect(withLora.status).to.equal(1);
    expect(withLora.stderr).to.match(/--add-special-tokens cannot be combined with --lora-r/);
  });

  it('a GGUF file as --model: trains its dequantized weights on text rows, saves a checkpoint with its vocabulary; evaluate reads it', async () => {
    const gguf = path.resolve(__dirname, '../../../test/fixtures/gguf/tiny-gqa.gguf');
    const data = path.join(tmpDir('ft-gguf-data'), 'text.jsonl');
    fs.writeFileSync(data, ['the stone stopped', 'a tin of it', 'stop it and stop'].map((text) => JSON.stringify({ text })).join('\n'));
    for (const extra of [[], ['--lora-r', '4']]) {
      const output = tmpDir('ft-gguf');
      const run = spawnSync('node', [CLI, 'finetune', '--backend', 'cpu', '--task', 'causal-lm', '--model', gguf, '--train', data,
        '--output', output, '--lr', '1e-2', '--batch-size', '3', '--max-steps', '2', '--no-progress', ...extra], { encoding: 'utf8' });
      expect(run.status, run.stderr).to.equal(0);
      expect(run.stdout).to.match(/trained 2 steps: loss ([\d.]+) → ([\d.]+)/);
      const tokenizer = await NemotronTokenizer.fromPretrained(output);
      expect(tokenizer.encode('the stone')).to.deep.equal((await NemotronTokenizer.fromPretrained(gguf)).encode('the stone'));
      const trained = extra.length ? await LoraModel.fromPretrained(await NemotronForCausalLM.fromPretrained(gguf), output)
        : await NemotronForCausalLM.fromPretrained(output);
      expect(trained.numParameters()).to.be.greaterThan(0);
      if (trained instanceof LoraModel) trained.model.dispose(); else trained.dispose();
    }
    // evaluate reads the GGUF too: the perplexity causalPerplexity gives on the loaded model.
    const evaluated = JSON.parse(execFileSync('node', [CLI, 'evaluate', '--backend', 'cpu', '--model', gguf, '--data', data, '--json'], { encoding: 'utf8' }));
    const lm = await NemotronForCausalLM.fromPretrained(gguf);
    const expected = await causalPerplexity(lm, data, { tokenizer: await NemotronTokenizer.fromPretrained(gguf) });
    lm.dispose();
    expect(evaluated.loss).to.be.closeTo(expected.loss, 1e-6);
    expect(evaluated.tokens).to.equal(expected.tokens);
  });

  it('evaluate: token-weighted perplexity, the same at batch 1 and 8, and what the adapter changes', async () => {
    const data = path.join(DATASETS, 'causal-lm.jsonl');
    const run = (...extra: string[]) => {
      const r = spawnSync('node', [CLI, 'evaluate', '--backend', 'cpu', '--model', base, '--data', data, '--json', ...extra], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      return JSON.parse(r.stdout) as { loss: number; perplexity: number; tokens: number; examples: number };
    };
    const [one, eight] = [run('--batch-size', '1'), run('--batch-size', '8')];
    expect(eight.loss, 'batch 8 vs batch 1').to.be.closeTo(one.loss, 1e-5 * one.loss);
    expect(eight.perplexity).to.be.closeTo(Math.exp(eight.loss), 1e-9 * eight.perplexity);
    // Independently: Σ over examples of (mean loss × predicted tokens) / Σ predicted tokens.
    const model = await NemotronForCausalLM.fromPretrained(base);
    const examples = readJsonl(data, 'causal-lm');
    let [nll, tokens] = [0, 0];
    for (const e of examples) {
      const loss = model.computeLoss({ inputIds: [e.inputIds], labels: [e.inputIds] });
      nll += loss.dataSync()[0] * (e.inputIds.length - 1);
      tokens += e.inputIds.length - 1;
      loss.dispose();
    }
    model.dispose();
    expect(eight.tokens).to.equal(tokens);
    expect(eight.examples).to.equal(examples.length);
    expect(eight.loss).to.be.closeTo(nll / tokens, 1e-5 * eight.loss);
    // With an adapter (random B, so that it changes the model): what the merged model gives in process.
    const adapted = await NemotronForCausalLM.fromPretrained(base);
    const lora = LoraModel.attach(adapted, { r: 2, loraAlpha: 4, targetModules: 'all-linear', seed: 1 });
    for (const v of lora.namedParameters().values()) tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, 0.3, 'float32', 2)));
    const adapter = tmpDir('eval-adapter');
    await lora.savePretrained(adapter);
    lora.mergeAndUnload();
    const inProcess = await causalPerplexity(adapted, data);
    adapted.dispose();
    const withAdapter = run('--adapter', adapter);
    expect(withAdapter.loss).to.be.closeTo(inProcess.loss, 1e-5 * inProcess.loss);
    expect(Math.abs(withAdapter.loss - eight.loss), 'the adapter changes the loss').to.be.above(1e-3);
  });

  it('--resume continues from the saved step', () => {
    const output = tmpDir('ft-resume');
    const args = ['finetune', '--backend', 'cpu', '--task', 'causal-lm', '--model', base, '--train', path.join(DATASETS, 'causal-lm.jsonl'),
      '--output', output, '--lr', '1e-3', '--batch-size', '2', '--no-progress'];
    execFileSync('node', [CLI, ...args, '--max-steps', '2'], { stdio: 'ignore' });
    const out = spawnSync('node', [CLI, ...args, '--max-steps', '4', '--resume'], { encoding: 'utf8' });
    expect(out.status).to.equal(0);
    expect(out.stderr).to.match(/4 steps from step 2/);
  });

  it('bad input: a broken JSONL line, a learning rate ≤ 0, an unknown task', () => {
    const bad = path.join(tmpDir('ft-bad'), 'bad.jsonl');
    fs.writeFileSync(bad, '{"input_ids": [2, 5]}\n{"input_ids": [2, 5]\n');
    const run = (...extra: string[]) => spawnSync('node', [CLI, 'finetune', '--backend', 'cpu', '--model', base, '--output', tmpDir('ft-x'), ...extra], { encoding: 'utf8' });
    let r = run('--task', 'causal-lm', '--train', bad);
    expect(r.status).to.equal(1);
    expect(r.stderr).to.include(`${bad}:2: not valid JSON`);
    r = run('--task', 'causal-lm', '--train', bad, '--lr', '0');
    expect(r.status).to.equal(1);
    expect(r.stderr).to.match(/--lr.*must be a number > 0/);
    r = run('--task', 'translation', '--train', bad);
    expect(r.status).to.equal(1);
    expect(r.stderr).to.match(/translation/);
  });
});
