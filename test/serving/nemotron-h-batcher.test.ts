import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
// From the entry point, as a user imports them.
import { type BatchRow, type GenerateOptions, NemotronForCausalLM, NemotronHBatcher, NemotronHForCausalLM, type NemotronHState, disposeState, rowDecoding } from '../../src/index';
import { countPasses as countPassesOf, joinWhileDecoding, recordRow } from './rows';
import { FIXTURES, forEachBackend, testBackends } from '../helpers';

// The tiny NemotronH checkpoints of scripts/reference/nemotron_h_fixtures.py: "M*M-" and one with experts ("ME*E").
const DIR = path.resolve(FIXTURES, '../nemotron-h');

forEachBackend(testBackends(), () => {
  for (const variant of ['model', 'moe']) {
    describe(`continuous batching of NemotronH (${variant})`, () => {
      let model: NemotronHForCausalLM;
      before(async () => { model = await NemotronHForCausalLM.fromPretrained(path.join(DIR, variant)); });
      after(() => model.dispose());

      /** A row that records its tokens and logits; `then` runs after its n-th token. */
      const recorder = (prompt: number[], options: GenerateOptions, then?: { after: number; run: () => void }) => recordRow(prompt, rowDecoding(model as unknown as NemotronForCausalLM, prompt, options), then);

      /**
       * The logits a row alone gets along `passes`: a prompt pass (the last position's logits) or decoding steps (one
       * a token), continuing one state — what generate() runs, and what the batcher runs for a row (a kept state is
       * the steps of an earlier row: its values are the step's, which takes Δt unclamped, as transformers' step does).
       */
      async function logitsAlong(passes: Array<{ forward: number[] } | { steps: number[] }>): Promise<number[][]> {
        const state: Partial<NemotronHState> = {};
        const out: number[][] = [];
        for (const pass of passes) {
          const tokens = 'forward' in pass ? [pass.forward] : pass.steps.map((t) => [t]);
          for (const ids of tokens) {
            const logits = 'forward' in pass ? model.forward({ inputIds: [ids], logitsToKeep: 1 }, state).logits : model.step(ids, state as NemotronHState);
            out.push(Array.from(await logits.data()));
            logits.dispose();
          }
        }
        disposeState(state);
        return out;
      }

      /** A row's logits within 1e-5 of `expected` (the last of them, one a step). */
      function expectLogits(got: ReturnType<typeof recorder>, expected: number[][], what: string) {
        const reference = expected.slice(-got.logits.length);
        got.logits.forEach((l, s) => {
          const worst = l.reduce((m, v, i) => Math.max(m, Math.abs(v - reference[s][i])), 0);
          expect(worst, `${what}: logits of step ${s}`).to.be.at.most(1e-5);
        });
      }

      /** A row's tokens equal generate()'s for its prompt alone, and its logits those of that prompt alone. */
      async function expectAsAlone(prompt: number[], options: GenerateOptions, got: ReturnType<typeof recorder>, what: string) {
        const { maxNewTokens, doSample, temperature, seed, repetitionPenalty } = options;
        const reference = model.generate([prompt], { maxNewTokens: maxNewTokens!, doSample, temperature, seed, repetitionPenalty, eosTokenId: null });
        expect(got.tokens, what).to.deep.equal(reference[0].slice(prompt.length));
        expectLogits(got, await logitsAlong([{ forward: prompt }, { steps: got.tokens.slice(0, -1) }]), what);
      }

      const countPasses = () => countPassesOf(model);

      it('rows that join a running batch (shorter and longer prompts) decode as each prompt alone: greedy, sampled, penalized; no tensor left', async () => {
        const before = tf.memory().numTensors;
        const batcher = new NemotronHBatcher(model, { maxRows: 8 });
        const first: [number[], GenerateOptions] = [[2, 17, 33, 41, 5, 8], { maxNewTokens: 10, doSample: false, eosTokenId: null }];
        const later: Array<[number[], GenerateOptions]> = [
          [[2, 9], { maxNewTokens: 7, doSample: false, eosTokenId: null }],
          [[2, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69], { maxNewTokens: 6, doSample: true, temperature: 0.9, seed: 5, eosTokenId: null }],
          [[2, 30, 31, 30, 31], { maxNewTokens: 8, doSample: false, repetitionPenalty: 1.3, eosTokenId: null }],
        ];
        const [head, ...joined] = await joinWhileDecoding(batcher, recorder, first, 3, later);
        expect(batcher.stats.peakRows).to.equal(4);
        expect(batcher.stats.rowSteps).to.be.greaterThan(batcher.stats.steps);
        await expectAsAlone(...first, head, 'the first row');
        for (const [i, [prompt, options]] of later.entries()) await expectAsAlone(prompt, options, joined[i], `joined row ${i}`);
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('holds at most maxRows rows; a long prompt runs in chunks between steps; a request that went away does not run', async () => {
        const before = tf.memory().numTensors;
        const batcher = new NemotronHBatcher(model, { maxRows: 2, prefillChunkTokens: 4 });
        const { passes, restore } = countPasses();
        try {
          const prompts = [[2, 5, 6], [2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [2, 40], [2, 41, 42]];
          const rows = prompts.map((p) => recorder(p, { maxNewTokens: 5, doSample: false, eosTokenId: null }));
          const gone = recorder([2, 3, 4], { maxNewTokens: 5, doSample: false, eosTokenId: null });
          gone.row.cancelled = () => true;
          await Promise.all([...rows, gone].map((r) => batcher.generate(r.row)));
          expect(batcher.stats.peakRows).to.equal(2);
          // The 11-token prompt ran as 4 + 4 + 3 positions; the cancelled one never ran.
          expect(passes).to.deep.equal([3, 4, 4, 3, 2, 3]);
          expect(gone.tokens).to.deep.equal([]);
          for (const [i, r] of rows.entries()) await expectAsAlone(prompts[i], { maxNewTokens: 5, doSample: false, eosTokenId: null }, r, `row ${i}`);
        } finally {
          restore();
        }
        const long = new Array(model.config.maxPositionEmbeddings).fill(5);
        const row = { ...recorder([2], { maxNewTokens: 4 }).row, prompt: long };
        const refused = await batcher.generate(row).then(() => '', (e: Error) => e.message);
        expect(refused).to.equal(`NemotronHBatcher: the prompt (${long.length} tokens) plus 4 new tokens is longer than the context (${model.config.maxPositionEmbeddings})`);
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('prefix caching: a prompt that continues a finished row runs only its new tokens and decodes as alone; a partial match runs whole', async () => {
        const before = tf.memory().numTensors;
        const batcher = new NemotronHBatcher(model, { maxRows: 4, prefixCacheTokens: 256, prefixCacheEntries: 2 });
        const { passes, restore } = countPasses();
        try {
          const greedy: GenerateOptions = { maxNewTokens: 6, doSample: false, eosTokenId: null };
          const firstPrompt = [2, ...Array.from({ length: 15 }, (_, i) => 10 + i)];
          const first = recorder(firstPrompt, greedy);
          await batcher.generate(first.row);
          // Kept: the prompt and the new tokens but the last (which never ran).
          expect(batcher.prefixCache!.stats.storedTokens).to.equal(16 + 6 - 1);
          const nextPrompt = [...firstPrompt, ...first.tokens, 60, 61, 62];
          passes.length = 0;
          const next = recorder(nextPrompt, greedy);
          await batcher.generate(next.row);
          expect(passes).to.deep.equal([nextPrompt.length - 21]);
          expect(batcher.prefixCache!.stats).to.deep.include({ hits: 1, reusedTokens: 21 });
          // Its logits: the first turn's prompt pass and steps, then the rest of its prompt, then its own steps.
          const expected = await logitsAlong([{ forward: firstPrompt }, { steps: first.tokens.slice(0, -1) }, { forward: nextPrompt.slice(21) }, { steps: next.tokens.slice(0, -1) }]);
          expectLogits(next, expected, 'the next turn');
          expect(next.tokens).to.deep.equal(expected.slice(-next.tokens.length).map((l) => l.indexOf(Math.max(...l))));
          // A recurrent state serves all of its tokens or nothing: a prompt that leaves the kept turn early runs whole.
          passes.length = 0;
          const branch = [...nextPrompt.slice(0, 20), 70, 71];
          const other = recorder(branch, greedy);
          await batcher.generate(other.row);
          expect(passes).to.deep.equal([branch.length]);
          await expectAsAlone(branch, greedy, other, 'a branch');
        } finally {
          restore();
        }
        batcher.prefixCache!.dispose();
        expect(tf.memory().numTensors).to.equal(before);
      });
    });
  }
});
