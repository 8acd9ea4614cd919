import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM, slidingWindowPerplexity } from '../../src/index';
import { CONFIGS, FIXTURES, expectRelClose, fixtureDir, forEachBackend, testBackends, tmpDir } from '../helpers';

// transformers' sliding-window perplexity on the tiny models (scripts/reference/perplexity_fixtures.py): losses within
// the fixtures' 1e-5 relative, token and window counts exactly.
const reference = JSON.parse(fs.readFileSync(path.resolve(FIXTURES, '../perplexity/cases.json'), 'utf8')) as {
  models: Record<string, { ids: number[]; cases: Array<{ max_length: number; stride: number; nll: number; tokens: number; perplexity: number; windows: unknown[] }> }>;
};
const CLI = path.resolve(__dirname, '../../src/cli/main.js');

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    it(`slidingWindowPerplexity equals transformers' recipe (5 window/stride settings, 150 tokens over a 64-token context): ${config}`, async () => {
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      const { ids, cases } = reference.models[config];
      const before = tf.memory().numTensors;
      for (const c of cases) {
        const got = await slidingWindowPerplexity(model, ids, { maxLength: c.max_length, stride: c.stride });
        const what = `max_length ${c.max_length}, stride ${c.stride}`;
        expect(got.tokens, what).to.equal(c.tokens);
        expect(got.windows, what).to.equal(c.windows.length);
        expectRelClose(got.loss, c.nll / c.tokens, 1e-5, what);
      }
      expect(tf.memory().numTensors).to.equal(before);
      model.dispose();
    });
  }
});

describe('slidingWindowPerplexity: bad settings and the CLI', () => {
  it('names a stride over the window, a window over the context and a text of one token', async () => {
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    const failure = (ids: number[], maxLength: number, stride: number) => slidingWindowPerplexity(model, ids, { maxLength, stride }).then(() => '', (e: Error) => e.message);
    expect(await failure([2, 5, 6], 8, 9)).to.equal('slidingWindowPerplexity: stride must be an integer in [1, maxLength 8], got 9');
    expect(await failure([2, 5, 6], 65, 8)).to.equal('slidingWindowPerplexity: maxLength 65 is longer than the model\'s context (64)');
    expect(await failure([2], 8, 4)).to.equal('slidingWindowPerplexity: 1 token(s): at least two are needed to predict one');
    model.dispose();
  });

  it('evaluate --stride: the dataset\'s input_ids as one sequence, the same figure as the library', async () => {
    const dir = tmpDir('stride');
    const { ids, cases } = reference.models['tiny-gqa'];
    const file = path.join(dir, 'data.jsonl');
    fs.writeFileSync(file, [ids.slice(0, 70), ids.slice(70)].map((part) => JSON.stringify({ input_ids: part })).join('\n') + '\n');
    const env = { ...process.env };
    delete env.NEMOTRON_BACKEND;
    const c = cases[0];
    const r = spawnSync(process.execPath, [CLI, 'evaluate', '--model', fixtureDir('tiny-gqa', 'causal-lm'), '--data', file, '--stride', String(c.stride),
      '--max-length', String(c.max_length), '--json', '--backend', 'cpu'], { encoding: 'utf8', env });
    expect(r.status, r.stderr).to.equal(0);
    const out = JSON.parse(r.stdout) as { loss: number; tokens: number; windows: number };
    expect(out.tokens).to.equal(c.tokens);
    expectRelClose(out.loss, c.nll / c.tokens, 1e-5, 'CLI loss');
    const wrongTask = spawnSync(process.execPath, [CLI, 'evaluate', '--model', fixtureDir('tiny-gqa', 'causal-lm'), '--data', file, '--stride', '8', '--task', 'sequence-classification'], { encoding: 'utf8', env });
    expect(wrongTask.stderr).to.match(/--stride scores a causal LM's text; it does not apply to --task sequence-classification/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
