import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { expect } from 'chai';
import { setBackend } from '../../src/backends';
import { CheckpointReader } from '../../src/io/checkpoint';
import { NemotronTokenizer } from '../../src/tokenizer';
import { GenerateOptions, generate } from '../../src/generation/generate';
import { NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification } from '../../models/nemotron/heads';
import { answerQuestion, classifyText, classifyTokens } from '../../src/inference/classification';
import { LoraModel } from '../../src/training/lora';
import { fixtureDir } from '../helpers';
import { copyCheckpoint, writeTinyTokenizer } from '../tiny-tokenizer';

const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const PACKAGE = path.resolve(__dirname, '../../../package.json');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Run {
  const env = { ...process.env };
  delete env.NEMOTRON_BACKEND;
  delete env.NEMOTRON_DEBUG;
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const STATS = /prompt: (\d+) tokens?, [\d.]+ tok\/s · generated: (\d+) tokens?, ([\d.]+|–) tok\/s · backend cpu/;

describe('CLI (nemotron-tfjs)', function () {
  this.timeout(120_000);
  const PROMPT = 'Hello the world';
  let tmp: string;
  let model: string;
  let tokenizer: NemotronTokenizer;
  let lm: NemotronForCausalLM;

  /** What the CLI should print: decode(prompt + generated) with special tokens skipped, then a newline. */
  async function expectedText(prompt: string, options: GenerateOptions): Promise<string> {
    const ids = tokenizer.encode(prompt);
    const out = await generate(lm, [ids], options);
    return tokenizer.decode(out.sequences[0], { skipSpecialTokens: true }) + '\n';
  }

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nemotron-cli-'));
    model = path.join(tmp, 'tiny');
    copyCheckpoint(fixtureDir('tiny-gqa', 'causal-lm'), model);
    writeTinyTokenizer(model);
    copyCheckpoint(model, path.join(tmp, 'no-tokenizer'), ['tokenizer.json']);
    copyCheckpoint(model, path.join(tmp, 'no-config'), ['config.json']);
    await setBackend('cpu');
    tokenizer = await NemotronTokenizer.fromPretrained(model);
    lm = await NemotronForCausalLM.fromPretrained(model);
  });

  after(() => {
    lm?.dispose();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('generate', () => {
    it('--greedy --max-new-tokens 5: the prompt and the greedy continuation on stdout, the tokens/s line on stderr', async () => {
      const r = cli('generate', '--model', model, '--prompt', PROMPT, '--greedy', '--max-new-tokens', '5', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout.startsWith(PROMPT)).to.equal(true);
      expect(r.stdout).to.equal(await expectedText(PROMPT, { maxNewTokens: 5 }));
      const stats = r.stderr.match(STATS);
      expect(stats, r.stderr).to.not.equal(null);
      expect(Number(stats![1])).to.equal(tokenizer.encode(PROMPT).length);
      expect(Number(stats![2])).to.be.within(1, 5);
      expect(r.stderr).to.not.match(/Hi, looks like you are running TensorFlow\.js/);
    });

    it('--adapter merges a PEFT LoRA adapter: the text of the merged model; a folder without one is refused', async () => {
      const adapter = path.resolve(fixtureDir('tiny-gqa'), '../../peft-lora/tiny-gqa/adapter');
      const r = cli('generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '6', '--backend', 'cpu', '--adapter', adapter);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stderr).to.match(/merged the LoRA adapter in .* \(r 4\)/);
      const adapted = await NemotronForCausalLM.fromPretrained(model);
      (await LoraModel.fromPretrained(adapted, adapter)).mergeAndUnload();
      const ids = tokenizer.encode(PROMPT);
      const expected = tokenizer.decode((await generate(adapted, [ids], { maxNewTokens: 6 })).sequences[0], { skipSpecialTokens: true }) + '\n';
      const plain = tokenizer.decode((await generate(lm, [ids], { maxNewTokens: 6 })).sequences[0], { skipSpecialTokens: true }) + '\n';
      adapted.dispose();
      expect(r.stdout).to.equal(expected);
      expect(expected, 'the adapter changes the text').to.not.equal(plain);
      const bad = cli('generate', '--model', model, '--prompt', PROMPT, '--backend', 'cpu', '--adapter', model);
      expect(bad.code).to.equal(1);
      expect(bad.stderr).to.match(/--adapter .*: adapter_config\.json is missing \(expected a PEFT LoRA adapter folder or a GGUF LoRA file\)/);
    });

    it('--chat renders the prompt (and --system) with the chat template and prints the reply only', async () => {
      const chatModel = path.join(tmp, 'chat');
      copyCheckpoint(model, chatModel);
      const config = JSON.parse(fs.readFileSync(path.join(model, 'tokenizer_config.json'), 'utf8'));
      // Characters of the tiny vocabulary only (it has no newline).
      config.chat_template = '{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}; {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}';
      fs.writeFileSync(path.join(chatModel, 'tokenizer_config.json'), JSON.stringify(config));
      const r = cli('generate', '--model', chatModel, '--prompt', PROMPT, '--system', 'Be brief.', '--chat', '--greedy', '-n', '5', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      const chatTokenizer = await NemotronTokenizer.fromPretrained(chatModel);
      const ids = chatTokenizer.applyChatTemplate([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: PROMPT }], { addGenerationPrompt: true });
      expect(chatTokenizer.decode(ids, { skipSpecialTokens: true })).to.equal(`system: Be brief.; user: ${PROMPT}; assistant:`);
      const out = await generate(lm, [ids], { maxNewTokens: 5 });
      expect(r.stdout).to.equal(chatTokenizer.decode(out.sequences[0].slice(ids.length), { skipSpecialTokens: true }) + '\n');
      expect(Number(r.stderr.match(STATS)![1]), 'prompt tokens: the rendered conversation').to.equal(ids.length);
      const noTemplate = cli('generate', '--model', model, '--prompt', PROMPT, '--chat', '--backend', 'cpu');
      expect(noTemplate.code).to.equal(1);
      expect(noTemplate.stderr).to.match(/has no chat template/);
      const systemAlone = cli('generate', '--model', model, '--prompt', PROMPT, '--system', 'x', '--backend', 'cpu');
      expect(systemAlone.stderr).to.match(/--system needs --chat/);
    });

    it('--num-beams: the text of beam search (generate() with numBeams), printed at the end; with a sampling flag, beam sampling', async () => {
      const r = cli('generate', '--model', model, '--prompt', PROMPT, '--num-beams', '3', '-n', '6', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.equal(await expectedText(PROMPT, { maxNewTokens: 6, numBeams: 3 }));
      expect(r.stderr).to.match(/beam search \(3 beams\): \d+ tokens? in [\d.]+ s · backend cpu/);
      const sampled = cli('generate', '--model', model, '--prompt', PROMPT, '--num-beams', '3', '--temperature', '0.7', '--seed', '5', '-n', '6', '--backend', 'cpu');
      expect(sampled.code, sampled.stderr).to.equal(0);
      expect(sampled.stdout).to.equal(await expectedText(PROMPT, {
        maxNewTokens: 6, numBeams: 3, doSample: true, temperature: 0.7, topK: 50, topP: 1, seed: 5,
      }));
    });

    it('--no-repeat-ngram-size and --stop: the text of generate() with noRepeatNgramSize and stopStrings, cut at the stop string', async () => {
      const base = { maxNewTokens: 12, doSample: false, noRepeatNgramSize: 1 };
      const free = await expectedText(PROMPT, base);
      const promptText = tokenizer.decode(tokenizer.encode(PROMPT), { skipSpecialTokens: true });
      const continuation = free.slice(promptText.length).trimEnd();
      // A stop string from the middle of what the model writes, so that it bites.
      const stop = continuation.slice(Math.floor(continuation.length / 2), Math.floor(continuation.length / 2) + 2);
      expect(stop.trim().length, `continuation ${JSON.stringify(continuation)}`).to.be.greaterThan(0);
      const r = cli('generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '12', '--no-repeat-ngram-size', '1', '--stop', stop,
        '--stop', 'never-written', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.equal(await expectedText(PROMPT, { ...base, stopStrings: [stop, 'never-written'], tokenizer }));
      expect(r.stdout.length).to.be.lessThan(free.length);
      expect(r.stdout.slice(promptText.length)).to.include(stop);
      // The rule bites here (commander once read the flag as "--no-" + repeat-ngram-size and dropped it).
      const unruled = cli('generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '12', '--backend', 'cpu');
      expect(unruled.stdout).to.equal(await expectedText(PROMPT, { maxNewTokens: 12, doSample: false }));
      expect(unruled.stdout).to.not.equal(free);
      // The same stop string from generation_config.json.
      const stopDir = path.join(tmp, 'stop-strings');
      copyCheckpoint(model, stopDir);
      const file = path.join(stopDir, 'generation_config.json');
      fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), stop_strings: [stop, 'never-written'] }));
      const fromFile = cli('generate', '--model', stopDir, '--prompt', PROMPT, '--greedy', '-n', '12', '--no-repeat-ngram-size', '1', '--backend', 'cpu');
      expect(fromFile.code, fromFile.stderr).to.equal(0);
      expect(fromFile.stdout).to.equal(r.stdout);
      // With beams: a hypothesis that ends in a stop string finishes, as on EOS (the library's beam search, checked
      // against transformers in test/generation/processors.test.ts).
      const beams = cli('generate', '--model', model, '--prompt', PROMPT, '--num-beams', '2', '-n', '12', '--stop', stop, '--backend', 'cpu');
      expect(beams.code, beams.stderr).to.equal(0);
      expect(beams.stdout).to.equal(await expectedText(PROMPT, { maxNewTokens: 12, numBeams: 2, stopStrings: [stop], tokenizer }));
    });

    it('a GGUF file as --model: its config, weights and vocabulary; the text of generate() on the loaded model', async () => {
      const file = path.resolve(__dirname, '../../../test/fixtures/gguf/tiny-gqa.gguf');
      const r = cli('generate', '--model', file, '--prompt', 'the stone', '--greedy', '-n', '6', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      const ggufTokenizer = await NemotronTokenizer.fromPretrained(file);
      const lmFromGGUF = await NemotronForCausalLM.fromPretrained(file);
      const out = await generate(lmFromGGUF, [ggufTokenizer.encode('the stone')], { maxNewTokens: 6, doSample: false });
      lmFromGGUF.dispose();
      expect(r.stdout).to.equal(ggufTokenizer.decode(out.sequences[0], { skipSpecialTokens: true }) + '\n');
    });

    it('info reads a GGUF file: its config, parameter count and stored types', () => {
      const r = cli('info', '--model', path.resolve(__dirname, '../../../test/fixtures/gguf/tiny-gqa.gguf'), '--json');
      expect(r.code, r.stderr).to.equal(0);
      const card = JSON.parse(r.stdout);
      expect(card.config).to.deep.include({ hiddenSize: 64, numHiddenLayers: 2, numKeyValueHeads: 2, vocabSize: 96, rotaryDim: 8, normEps: 1e-5 });
      expect(card.parameters.checkpoint).to.equal(card.parameters.config);
      expect(card.checkpoint.dtypes).to.deep.equal(['F16', 'F32', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0']);
      expect(card.tokenizer).to.equal(true);
    });

    it('--assistant-model and --prompt-lookup print greedy decoding\'s text', async () => {
      const expected = await expectedText(PROMPT, { maxNewTokens: 10, doSample: false });
      const draft = path.join(tmp, 'draft');
      copyCheckpoint(fixtureDir('tiny-gqa', 'causal-lm'), draft);
      const assisted = cli('generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '10', '--assistant-model', draft, '--assistant-tokens', '3', '--backend', 'cpu');
      expect(assisted.code, assisted.stderr).to.equal(0);
      expect(assisted.stdout).to.equal(expected);
      expect(assisted.stderr).to.match(/assistant model .*draft: [\d.]+ M parameters/);
      const lookup = cli('generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '10', '--prompt-lookup', '3', '--backend', 'cpu');
      expect(lookup.code, lookup.stderr).to.equal(0);
      expect(lookup.stdout).to.equal(expected);
      expect(lookup.stderr).to.match(/generated: 10 tokens/);
      const other = path.join(tmp, 'other-vocab');
      copyCheckpoint(fixtureDir('tiny-mha-bias', 'causal-lm'), other);
      const refused = cli('generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '4', '--assistant-model', other, '--backend', 'cpu');
      expect(refused.code).to.equal(1);
      expect(refused.stderr).to.match(/the assistant model's vocabulary \(80\) must be the model's \(96\)/);
    });

    it('generation_config.json\'s num_beams makes it beam search; --greedy streams; with do_sample, beam sampling', async () => {
      const beamDir = path.join(tmp, 'beams');
      copyCheckpoint(model, beamDir);
      const file = path.join(beamDir, 'generation_config.json');
      const settings = JSON.parse(fs.readFileSync(file, 'utf8'));
      fs.writeFileSync(file, JSON.stringify({ ...settings, num_beams: 3 }));
      const r = cli('generate', '--model', beamDir, '--prompt', PROMPT, '-n', '6', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stderr).to.match(/beam search \(3 beams\)/);
      expect(r.stdout).to.equal(await expectedText(PROMPT, { maxNewTokens: 6, numBeams: 3 }));
      const greedy = cli('generate', '--model', beamDir, '--prompt', PROMPT, '-n', '6', '--greedy', '--backend', 'cpu');
      expect(greedy.code, greedy.stderr).to.equal(0);
      expect(greedy.stdout).to.equal(await expectedText(PROMPT, { maxNewTokens: 6, doSample: false, numBeams: 1 }));
      fs.writeFileSync(file, JSON.stringify({ ...settings, num_beams: 3, do_sample: true }));
      const sampled = cli('generate', '--model', beamDir, '--prompt', PROMPT, '-n', '6', '--seed', '4', '--backend', 'cpu');
      expect(sampled.code, sampled.stderr).to.equal(0);
      expect(sampled.stdout).to.equal(await expectedText(PROMPT, { maxNewTokens: 6, numBeams: 3, doSample: true, temperature: 1, topK: 50, topP: 1, seed: 4 }));
    });

    it('the same command twice gives the same output; --no-stream prints the same text', () => {
      const args = ['generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '8', '--backend', 'cpu'];
      const a = cli(...args);
      const b = cli(...args);
      const c = cli(...args, '--no-stream');
      expect(a.code).to.equal(0);
      expect(b.stdout).to.equal(a.stdout);
      expect(c.code).to.equal(0);
      expect(c.stdout).to.equal(a.stdout);
    });

    it('the global --backend before the subcommand works too', () => {
      const r = cli('--backend', 'cpu', 'generate', '--model', model, '--prompt', PROMPT, '--greedy', '-n', '3');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stderr).to.match(STATS);
    });

    it('sampling with --seed is reproducible and matches generate() with transformers\' defaults (top-k 50)', async () => {
      const args = ['generate', '--model', model, '--prompt', 'The cat', '--temperature', '0.9', '-n', '12', '--backend', 'cpu'];
      const a = cli(...args, '--seed', '7');
      const b = cli(...args, '--seed', '7');
      const c = cli(...args, '--seed', '8');
      expect(a.code, a.stderr).to.equal(0);
      expect(b.stdout).to.equal(a.stdout);
      expect(c.stdout).to.not.equal(a.stdout);
      expect(a.stdout).to.equal(await expectedText('The cat', {
        maxNewTokens: 12, doSample: true, temperature: 0.9, topK: 50, topP: 1, seed: 7,
      }));
    });

    it('--presence-penalty and --frequency-penalty decode as generate() with presencePenalty / frequencyPenalty', async () => {
      const r = cli('generate', '--model', model, '--prompt', 'The cat', '--greedy', '-n', '12', '--backend', 'cpu', '--presence-penalty', '1.5', '--frequency-penalty', '0.5');
      expect(r.code, r.stderr).to.equal(0);
      const penalized = await expectedText('The cat', { maxNewTokens: 12, doSample: false, presencePenalty: 1.5, frequencyPenalty: 0.5 });
      expect(penalized).to.not.equal(await expectedText('The cat', { maxNewTokens: 12, doSample: false }));
      expect(r.stdout).to.equal(penalized);
      const bad = cli('generate', '--model', model, '--prompt', 'x', '--presence-penalty', '3');
      expect(bad.stderr).to.match(/--presence-penalty.*a number in \[-2, 2\]/);
    });

    it('--help documents every option with its default', () => {
      const r = cli('generate', '--help');
      expect(r.code).to.equal(0);
      for (const option of ['--model', '--prompt', '--max-new-tokens', '--temperature', '--top-k', '--top-p', '--min-p',
        '--repetition-penalty', '--presence-penalty', '--frequency-penalty', '--seed', '--greedy', '--sample', '--no-stream', '--backend', '--help']) {
        expect(r.stdout, option).to.include(option);
      }
      expect(r.stdout).to.include('(default: 50)');
      const top = cli('--help');
      expect(top.code).to.equal(0);
      for (const command of ['generate', 'info', '--backend', '--version']) expect(top.stdout).to.include(command);
    });

    it('a folder without tokenizer.json: exit 1, the message names tokenizer.json and the folder', () => {
      const dir = path.join(tmp, 'no-tokenizer');
      const r = cli('generate', '--model', dir, '--prompt', PROMPT, '--backend', 'cpu');
      expect(r.code).to.equal(1);
      expect(r.stderr).to.match(/^error: /);
      expect(r.stderr).to.include('tokenizer.json').and.include(dir);
      expect(r.stderr).to.not.include('    at ');
      expect(r.stdout).to.equal('');
    });

    it('a folder without config.json: exit 1, the message names config.json', () => {
      const dir = path.join(tmp, 'no-config');
      const r = cli('generate', '--model', dir, '--prompt', PROMPT, '--backend', 'cpu');
      expect(r.code).to.equal(1);
      expect(r.stderr).to.include('config.json').and.include(dir);
      const missing = cli('generate', '--model', path.join(tmp, 'nowhere'), '--prompt', PROMPT);
      expect(missing.code).to.equal(1);
      expect(missing.stderr).to.include('does not exist');
    });

    it('bad numbers: exit 1 with a message naming the option', () => {
      const cases: Array<[string[], RegExp]> = [
        [['--max-new-tokens', '0'], /--max-new-tokens.*'0' is invalid.*positive integer/],
        [['--top-p', '2'], /--top-p.*'2' is invalid.*\(0, 1\]/],
        [['--temperature', 'abc'], /--temperature.*'abc' is invalid/],
        [['--top-k', '1.5'], /--top-k.*'1\.5' is invalid/],
        [['--seed', '0x10'], /--seed.*'0x10' is invalid/],
        [['--greedy', '--temperature', '0.7'], /--greedy cannot be combined with --temperature/],
      ];
      for (const [extra, message] of cases) {
        const r = cli('generate', '--model', model, '--prompt', PROMPT, '--backend', 'cpu', ...extra);
        expect(r.code, extra.join(' ')).to.equal(1);
        expect(r.stderr, extra.join(' ')).to.match(message);
        expect(r.stdout, extra.join(' ')).to.equal('');
      }
    });

    it('a prompt that does not fit the context: exit 1 naming max_position_embeddings', () => {
      const r = cli('generate', '--model', model, '--prompt', PROMPT, '-n', '60', '--backend', 'cpu');
      expect(r.code).to.equal(1);
      expect(r.stderr).to.include('max_position_embeddings 64');
    });
  });

  describe('predict', () => {
    const TOKENIZER = path.resolve(__dirname, '../../../test/fixtures/generation-processors/tiny-gqa-tokenizer');
    const withTokenizer = (head: string) => {
      const dir = path.join(tmp, `predict-${head}`);
      copyCheckpoint(fixtureDir('tiny-gqa', head), dir);
      for (const f of fs.readdirSync(TOKENIZER)) fs.copyFileSync(path.join(TOKENIZER, f), path.join(dir, f));
      return dir;
    };
    const texts = ['the stopped stone', 'a tin of it'];

    it('sequence classification: the labels classifyText gives, best first; --json; the head from config.json', async () => {
      const dir = withTokenizer('seqcls-multi');
      const r = cli('predict', '--model', dir, '--text', texts[0], '--text', texts[1], '--top-k', 'all', '--json', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      const classifier = await NemotronForSequenceClassification.fromPretrained(dir);
      const expected = await classifyText(classifier, await NemotronTokenizer.fromPretrained(dir), texts, { topK: null });
      classifier.dispose();
      expect(r.stdout.trim().split('\n').map((l) => JSON.parse(l))).to.deep.equal(texts.map((text, i) => ({ text, result: expected[i] })));
      const plain = cli('predict', '--model', dir, '--text', texts[0], '--backend', 'cpu');
      expect(plain.stdout).to.equal(`${expected[0][0].label} ${expected[0][0].score.toFixed(4)}\t${texts[0]}\n`);
      // Pairs of texts: --text-pair gives each --text its second text.
      const paired = cli('predict', '--model', dir, '--text', texts[0], '--text-pair', texts[1], '--json', '--backend', 'cpu');
      const pairClassifier = await NemotronForSequenceClassification.fromPretrained(dir);
      const pairExpected = await classifyText(pairClassifier, await NemotronTokenizer.fromPretrained(dir), { text: texts[0], textPair: texts[1] });
      pairClassifier.dispose();
      expect(JSON.parse(paired.stdout)).to.deep.equal({ text: `${texts[0]} ‖ ${texts[1]}`, result: pairExpected[0] });
      const unpaired = cli('predict', '--model', dir, '--text', texts[0], '--text', texts[1], '--text-pair', 'x', '--backend', 'cpu');
      expect(unpaired.stderr).to.match(/--text-pair gives the second text of each --text to a sequence classifier: got 1 for 2 texts/);
    });

    it('token classification: every token\'s label as classifyTokens gives it, --ignore-labels; question answering; a causal LM is sent to generate', async () => {
      const dir = withTokenizer('tokcls');
      const r = cli('predict', '--model', dir, '--text', texts[1], '--ignore-labels', 'LABEL_0,LABEL_2', '--json', '--backend', 'cpu');
      expect(r.code, r.stderr).to.equal(0);
      const tagger = await NemotronForTokenClassification.fromPretrained(dir);
      const expected = await classifyTokens(tagger, await NemotronTokenizer.fromPretrained(dir), texts[1], { ignoreLabels: ['LABEL_0', 'LABEL_2'] });
      tagger.dispose();
      expect(expected.length).to.be.greaterThan(0);
      expect(JSON.parse(r.stdout)).to.deep.equal({ text: texts[1], result: expected });
      const grouped = cli('predict', '--model', dir, '--text', texts[1], '--aggregation', 'simple', '--ignore-labels', '', '--json', '--backend', 'cpu');
      const tagger2 = await NemotronForTokenClassification.fromPretrained(dir);
      const groups = await classifyTokens(tagger2, await NemotronTokenizer.fromPretrained(dir), texts[1], { ignoreLabels: [], aggregationStrategy: 'simple' });
      tagger2.dispose();
      expect(JSON.parse(grouped.stdout)).to.deep.equal({ text: texts[1], result: groups });
      // Word aggregation, with each group's characters in the text.
      const words = cli('predict', '--model', dir, '--text', texts[1], '--aggregation', 'average', '--ignore-labels', '', '--backend', 'cpu');
      const tagger3 = await NemotronForTokenClassification.fromPretrained(dir);
      const averaged = await classifyTokens(tagger3, await NemotronTokenizer.fromPretrained(dir), texts[1], { ignoreLabels: [], aggregationStrategy: 'average' });
      tagger3.dispose();
      expect(words.stdout).to.equal(`${texts[1]}\n${averaged.map((g) => `  ${g.entityGroup}\t${g.score.toFixed(4)}\t${g.start}-${g.end}\t${JSON.stringify(texts[1].slice(g.start, g.end))}`).join('\n')}\n`);
      const causal = cli('predict', '--model', model, '--text', 'x', '--backend', 'cpu');
      expect(causal.code).to.equal(1);
      expect(causal.stderr).to.match(/predict runs NemotronForSequenceClassification or NemotronForTokenClassification or NemotronForQuestionAnswering checkpoints; .* is NemotronForCausalLM \(use generate\)/);
      // Question answering: --question and --context, the spans answerQuestion gives.
      const qaDir = withTokenizer('qa');
      const qa = cli('predict', '--model', qaDir, '--question', 'what stopped', '--context', texts[0], '--top-k', '2', '--json', '--backend', 'cpu');
      expect(qa.code, qa.stderr).to.equal(0);
      const reader = await NemotronForQuestionAnswering.fromPretrained(qaDir);
      const spans = await answerQuestion(reader, await NemotronTokenizer.fromPretrained(qaDir), 'what stopped', texts[0], { topK: 2 });
      reader.dispose();
      expect(JSON.parse(qa.stdout)).to.deep.equal({ question: 'what stopped', result: spans });
      expect(cli('predict', '--model', qaDir, '--question', 'q', '--backend', 'cpu').stderr).to.match(/needs --question and --context/);
      const badK = cli('predict', '--model', dir, '--text', 'x', '--top-k', '0');
      expect(badK.code).to.equal(1);
      expect(badK.stderr).to.match(/--top-k.*It must be a positive integer or "all"/);
    });
  });

  describe('info', () => {
    function checkpointSum(dir: string): number {
      const reader = CheckpointReader.open(dir);
      try {
        return reader.names().reduce((n, name) => n + reader.info(name).shape.reduce((a, b) => a * b, 1), 0);
      } finally {
        reader.close();
      }
    }

    it('reports the parameter count of the checkpoint\'s tensors and the lm_head', () => {
      const sum = checkpointSum(model);
      const r = cli('info', '--model', model);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.include(sum.toLocaleString('en-US'));
      expect(r.stdout).to.include('NemotronForCausalLM');
      expect(r.stdout).to.match(/lm_head\s+\[96, 64\]/);
      expect(r.stdout).to.match(/context length\s+64/);
      expect(r.stdout).to.include('matches');
    });

    it('--json parses and holds the counts, dtypes, memory and heads', () => {
      const sum = checkpointSum(model);
      const r = cli('info', '--model', model, '--json');
      expect(r.code, r.stderr).to.equal(0);
      const card = JSON.parse(r.stdout);
      expect(card.parameters.checkpoint).to.equal(sum);
      expect(card.parameters.config).to.equal(sum);
      expect(card.config).to.include({ hiddenSize: 64, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 16,
        intermediateSize: 128, vocabSize: 96, contextLength: 64, partialRotaryFactor: 0.5, tieWordEmbeddings: false });
      expect(card.checkpoint.dtypes).to.deep.equal(['F32']);
      expect(card.checkpoint.tensorBytes).to.equal(sum * 4);
      expect(card.memory.float32WeightBytes).to.equal(sum * 4);
      expect(card.memory.kvCacheBytesPerToken).to.equal(2 * 2 * 2 * 16 * 4);
      expect(card.heads).to.deep.equal([{ name: 'lm_head', shape: [96, 64], bias: false, tied: false }]);
      expect(card.baseOnly).to.equal(false);
      expect(card.tokenizer).to.equal(true);
    });

    it('tied heads, BF16 on disk, other heads: the config count agrees with the checkpoint', () => {
      const tied = JSON.parse(cli('info', '--model', fixtureDir('tiny-mha-bias', 'causal-lm-bf16'), '--json').stdout);
      expect(tied.heads).to.deep.equal([{ name: 'lm_head', shape: [tied.config.vocabSize, tied.config.hiddenSize], bias: false, tied: true }]);
      expect(tied.checkpoint.dtypes).to.deep.equal(['BF16']);
      expect(tied.memory.float32WeightBytes).to.equal(tied.checkpoint.tensorBytes * 2);
      for (const [config, sub, head] of [['tiny-mha-bias', 'causal-lm-bf16', 'lm_head'], ['tiny-gqa', 'qa', 'qa_outputs'],
        ['tiny-mha-bias', 'tokcls', 'score'], ['tiny-gqa', 'seqcls-single', 'score'], ['tiny-gqa', 'causal-lm-sharded', 'lm_head']] as const) {
        const dir = fixtureDir(config, sub);
        const card = JSON.parse(cli('info', '--model', dir, '--json').stdout);
        expect(card.parameters.checkpoint, `${config}/${sub}`).to.equal(checkpointSum(dir));
        expect(card.parameters.config, `${config}/${sub}`).to.equal(card.parameters.checkpoint);
        expect(card.heads.map((h: { name: string }) => h.name), `${config}/${sub}`).to.deep.equal([head]);
      }
    });

    it('a folder without config.json: exit 1', () => {
      const r = cli('info', '--model', path.join(tmp, 'no-config'));
      expect(r.code).to.equal(1);
      expect(r.stderr).to.include('config.json');
    });
  });

  it('--version prints the package version', () => {
    const r = cli('--version');
    expect(r.code).to.equal(0);
    expect(r.stdout.trim()).to.equal(JSON.parse(fs.readFileSync(PACKAGE, 'utf8')).version);
  });
});
