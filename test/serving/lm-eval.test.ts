/**
 * lm-evaluation-harness against the server (its local-completions client: loglikelihoods from echo + logprobs,
 * generations with stop strings) and against transformers (its hf backend, torch) on the same checkpoint and tasks:
 * every sample must agree. Needs lm_eval and torch in the reference venv (scripts/reference-venv.sh); skipped without.
 */
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { spawn, spawnSync } from 'child_process';
import { expect } from 'chai';
import { setBackend } from '../../src/backends';
import { NemotronTokenizer } from '../../src/tokenizer';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { createOpenAIServer, serverAddress } from '../../src/serving/openai';
import { fixtureDir, tmpDir } from '../helpers';
import { copyCheckpoint, writeTinyTokenizer } from '../tiny-tokenizer';

const ROOT = path.resolve(__dirname, '../../..');
const PYTHON = process.env.NEMOTRON_REF_PYTHON ?? path.join(ROOT, '.venv-ref/bin/python');
// Logits agree within 1e-4 (fixtures README), so a log-probability within 2e-4; a continuation has at most 5 tokens here.
const LOGLIKELIHOOD_TOLERANCE = 5 * 2e-4;

type Sample = { doc_id: number; resps: Array<Array<[string, boolean] | string>> };

/** Multiple-choice and generation tasks over words of the tiny vocabulary (lm-eval's JSON dataset, from a file). */
function writeTasks(dir: string): void {
  const words = 'the cat sat on a mat dog ran far sun is hot sky blue red green tree bird sings fish swim'.split(' ');
  let state = 7;
  const pick = () => words[(state = (state * 1103515245 + 12345) % 2147483648) % words.length];
  const phrase = (n: number) => Array.from({ length: n }, pick).join(' ');
  const rows = Array.from({ length: 16 }, (_, i) => ({
    question: `${phrase(4)}:`, choices: [1, 2, 3].map((n) => ` ${phrase(n)}`), answer: i % 3, target: ` ${pick()}`,
  }));
  const data = path.join(dir, 'data.jsonl');
  fs.writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const dataset = `dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: ${data}\ntest_split: test\ndoc_to_text: "{{question}}"\n`;
  fs.writeFileSync(path.join(dir, 'tiny_mc.yaml'), `task: tiny_mc\n${dataset}output_type: multiple_choice\ndoc_to_choice: "{{choices}}"\n` +
    'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n');
  fs.writeFileSync(path.join(dir, 'tiny_gen.yaml'), `task: tiny_gen\n${dataset}output_type: generate_until\ndoc_to_target: "{{target}}"\n` +
    'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 12\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n');
}

function runPython(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(PYTHON, args, { env });
    let output = '';
    child.stdout.on('data', (d: Buffer) => { output += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { output += d.toString(); });
    child.on('exit', (code) => resolve({ code, output }));
  });
}

/** The samples lm_eval logged for a task under `out`, by document. */
function samples(out: string, task: string): Map<number, Sample> {
  const found: string[] = [];
  const walk = (dir: string) => fs.readdirSync(dir, { withFileTypes: true }).forEach((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p);
    else if (e.name.startsWith(`samples_${task}_`)) found.push(p);
  });
  walk(out);
  expect(found, `samples of ${task} under ${out}`).to.have.length(1);
  const rows = fs.readFileSync(found[0], 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Sample);
  return new Map(rows.map((r) => [r.doc_id, r]));
}

describe('lm-evaluation-harness through the server equals it on transformers', function () {
  this.timeout(600_000);
  let dir: string;
  let lm: NemotronForCausalLM;
  let server: http.Server;

  before(async function () {
    const probe = fs.existsSync(PYTHON) ? spawnSync(PYTHON, ['-c', 'import lm_eval, tenacity, accelerate, torch, transformers'], { encoding: 'utf8' }) : null;
    if (!probe || probe.status !== 0) {
      console.log(`    (skipped: no lm_eval[api] with accelerate and torch in ${PYTHON}; run scripts/reference-venv.sh)`);
      this.skip();
    }
    dir = tmpDir('lm-eval');
    copyCheckpoint(fixtureDir('tiny-gqa', 'causal-lm'), path.join(dir, 'tiny'));
    writeTinyTokenizer(path.join(dir, 'tiny'));
    fs.mkdirSync(path.join(dir, 'tasks'));
    writeTasks(path.join(dir, 'tasks'));
    await setBackend('cpu');
    lm = await NemotronForCausalLM.fromPretrained(path.join(dir, 'tiny'));
    server = createOpenAIServer(lm, await NemotronTokenizer.fromPretrained(path.join(dir, 'tiny')), { modelId: 'tiny' });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });

  after(async () => {
    if (server) await new Promise((resolve) => server.close(resolve));
    lm?.dispose();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('loglikelihoods of every choice within 1e-3, the same greedy flags and the same generations', async () => {
    const env = { ...process.env, HF_DATASETS_OFFLINE: '1', HF_HUB_OFFLINE: '1', TOKENIZERS_PARALLELISM: 'false' };
    const common = ['-m', 'lm_eval', '--tasks', 'tiny_mc,tiny_gen', '--include_path', path.join(dir, 'tasks'), '--log_samples'];
    const model = path.join(dir, 'tiny');
    // add_bos_token: local-completions sends a text's tokens alone by default; its hf model, as the tokenizer writes
    // them (BOS first, by the template), which a Nemotron model expects.
    const ours = await runPython([...common, '--model', 'local-completions', '--output_path', path.join(dir, 'out-serve'), '--model_args',
      `model=tiny,base_url=${serverAddress(server)}/v1/completions,tokenizer_backend=huggingface,tokenizer=${model},num_concurrent=4,max_length=64,add_bos_token=True`], env);
    expect(ours.code, ours.output.slice(-3000)).to.equal(0);
    const theirs = await runPython([...common, '--model', 'hf', '--device', 'cpu', '--output_path', path.join(dir, 'out-hf'),
      '--model_args', `pretrained=${model},dtype=float32,max_length=64`], env);
    expect(theirs.code, theirs.output.slice(-3000)).to.equal(0);

    const [mcOurs, mcTheirs] = [samples(path.join(dir, 'out-serve'), 'tiny_mc'), samples(path.join(dir, 'out-hf'), 'tiny_mc')];
    expect(mcOurs.size).to.equal(16);
    let compared = 0;
    let worst = 0;
    for (const [doc, sample] of mcOurs) {
      const reference = mcTheirs.get(doc)!;
      sample.resps.forEach((resp, choice) => {
        const [logLikelihood, greedy] = resp[0] as [string, boolean];
        const [refLogLikelihood, refGreedy] = reference.resps[choice][0] as [string, boolean];
        const difference = Math.abs(Number(logLikelihood) - Number(refLogLikelihood));
        expect(difference, `doc ${doc} choice ${choice}`).to.be.at.most(LOGLIKELIHOOD_TOLERANCE);
        worst = Math.max(worst, difference);
        expect(greedy, `doc ${doc} choice ${choice}`).to.equal(refGreedy);
        compared++;
      });
    }
    expect(compared).to.equal(48);
    console.log(`      (48 loglikelihoods, largest difference from transformers' ${worst.toExponential(2)})`);
    const [genOurs, genTheirs] = [samples(path.join(dir, 'out-serve'), 'tiny_gen'), samples(path.join(dir, 'out-hf'), 'tiny_gen')];
    expect(genOurs.size).to.equal(16);
    for (const [doc, sample] of genOurs) expect(sample.resps[0][0], `doc ${doc}`).to.equal(genTheirs.get(doc)!.resps[0][0]);
  });
});
