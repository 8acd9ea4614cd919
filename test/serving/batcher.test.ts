import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
// From the entry point, as a user imports them.
import { BatchRow, ContinuousBatcher, NemotronForCausalLM, GenerateOptions, generate, rowDecoding } from '../../src/index';
import { countPasses as countPassesOf, joinWhileDecoding as joinRows, recordRow } from './rows';
import { CONFIGS, fixtureDir, forEachBackend, testBackends } from '../helpers';

/** The new tokens (and raw logits) of one prompt decoded alone. */
async function alone(model: NemotronForCausalLM, prompt: number[], options: GenerateOptions): Promise<{ tokens: number[]; logits: Float32Array[] }> {
  const out = await generate(model, [prompt], { ...options, outputLogits: true });
  return { tokens: out.sequences[0].slice(prompt.length), logits: out.logits!.map((step) => step[0]) };
}

forEachBackend(testBackends(), () => {
  for (const config of CONFIGS) {
    describe(`continuous batching: ${config}`, () => {
      let model: NemotronForCausalLM;
      before(async () => { model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm')); });
      after(() => model.dispose());

      /** A row that records its tokens and logits; `then` runs after its n-th token. */
      const recorder = (prompt: number[], options: GenerateOptions, then?: { after: number; run: () => void }) => recordRow(prompt, rowDecoding(model, prompt, options), then);

      /** Decodes `first`; after its `after`-th token the `later` rows join. Returns the recorders, first's first. */
      const joinWhileDecoding = (batcher: ContinuousBatcher, first: [number[], GenerateOptions], after: number, later: Array<[number[], GenerateOptions]>) =>
        joinRows(batcher, recorder, first, after, later);

      const countPasses = () => countPassesOf(model);

      /** A row's tokens equal its prompt decoded alone, its logits within 1e-4. */
      async function expectAsAlone(prompt: number[], options: GenerateOptions, got: ReturnType<typeof recorder>, what: string) {
        const reference = await alone(model, prompt, options);
        expect(got.tokens, what).to.deep.equal(reference.tokens);
        got.logits.forEach((l, s) => {
          let worst = 0;
          l.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - reference.logits[s][i])); });
          expect(worst, `${what}: logits of step ${s}`).to.be.at.most(1e-4);
        });
      }

      it('rows that join a running batch (shorter and longer than it) decode as each prompt alone: greedy, sampled, penalized', async () => {
        const before = tf.memory().numTensors;
        const batcher = new ContinuousBatcher(model, 8);
        const first = [2, 17, 33, 41, 5];
        const later: Array<[number[], GenerateOptions]> = [
          [[2, 9], { maxNewTokens: 7, doSample: false, eosTokenId: null }],
          [[2, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70], { maxNewTokens: 6, doSample: false, eosTokenId: null }],
          [[2, 30, 31], { maxNewTokens: 8, doSample: true, temperature: 0.8, seed: 11, eosTokenId: null }],
          [[2, 30, 31, 7], { maxNewTokens: 8, doSample: false, repetitionPenalty: 1.5, noRepeatNgramSize: 2, eosTokenId: null }],
        ];
        const firstOptions: GenerateOptions = { maxNewTokens: 12, doSample: false, eosTokenId: null };
        // The later rows arrive while the first is decoding (after its 3rd token), one of them longer than its cache.
        const recorded = await joinWhileDecoding(batcher, [first, firstOptions], 3, later);
        for (const [i, [prompt, options]] of [[first, firstOptions] as [number[], GenerateOptions], ...later].entries()) {
          await expectAsAlone(prompt, options, recorded[i], JSON.stringify(prompt));
        }
        expect(batcher.stats.peakRows).to.equal(5);
        // Fewer passes than tokens: the rows shared them.
        expect(batcher.stats.steps).to.be.lessThan(batcher.stats.rowSteps);
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('at most maxRows rows decode at once (the others wait); EOS, onToken false and cancellation end rows', async () => {
        const before = tf.memory().numTensors;
        const batcher = new ContinuousBatcher(model, 2);
        const prompts = [[2, 5, 6], [2, 7], [2, 8, 9, 10], [2, 11, 12]];
        const options: GenerateOptions = { maxNewTokens: 6, doSample: false, eosTokenId: null };
        const rows = prompts.map((p) => recorder(p, options));
        await Promise.all(rows.map((r) => batcher.generate(r.row)));
        for (let i = 0; i < prompts.length; i++) expect(rows[i].tokens).to.deep.equal((await alone(model, prompts[i], options)).tokens);
        expect(batcher.stats.peakRows).to.equal(2);
        // An EOS id that the greedy answer reaches at its 3rd token ends the row there.
        const greedy = (await alone(model, prompts[0], options)).tokens;
        const eos = recorder(prompts[0], { ...options, eosTokenId: greedy[2] });
        await batcher.generate(eos.row);
        expect(eos.tokens).to.deep.equal(greedy.slice(0, greedy.indexOf(greedy[2]) + 1));
        // onToken false after 2 tokens; a cancelled row never runs.
        let seen = 0;
        const stopped = batcher.generate({ prompt: prompts[1], decoding: rowDecoding(model, prompts[1], options), onToken: () => ++seen < 2 });
        let called = false;
        const cancelled = batcher.generate({ prompt: prompts[2], decoding: rowDecoding(model, prompts[2], options), onToken: () => { called = true; return true; }, cancelled: () => true });
        await Promise.all([stopped, cancelled]);
        expect(seen).to.equal(2);
        expect(called).to.equal(false);
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('rows arriving together run their prompts in one left-padded pass; one that ends at its first token leaves it', async () => {
        const before = tf.memory().numTensors;
        const batcher = new ContinuousBatcher(model, 8);
        const forward = model.forward.bind(model);
        let passes = 0;
        model.forward = ((inputs: Parameters<typeof forward>[0]) => { passes++; return forward(inputs); }) as typeof model.forward;
        try {
          // The longest prompt ends at its first token, so the padding the others needed for it goes too.
          const rows: Array<[number[], GenerateOptions]> = [
            [[2, 40, 41, 42, 43, 44, 45, 46, 47], { maxNewTokens: 1, doSample: false, eosTokenId: null }],
            [[2, 9], { maxNewTokens: 5, doSample: false, eosTokenId: null }],
            [[2, 30, 31, 32], { maxNewTokens: 5, doSample: true, temperature: 0.7, seed: 3, eosTokenId: null }],
          ];
          const recorded = rows.map(([prompt, options]) => recorder(prompt, options));
          await Promise.all(recorded.map((r) => batcher.generate(r.row)));
          const batcherPasses = passes;
          for (const [i, [prompt, options]] of rows.entries()) {
            expect(recorded[i].tokens, `row ${i}`).to.deep.equal((await alone(model, prompt, options)).tokens);
          }
          // One pass for the three prompts, then 4 decoding steps for the two rows that go on.
          expect(batcher.stats.steps).to.equal(4);
          expect(batcherPasses).to.equal(5);
        } finally {
          model.forward = forward;
        }
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('long prompts run in chunks (prefillChunkTokens), a decoding step of the batch between two; each row still as alone', async () => {
        const before = tf.memory().numTensors;
        const batcher = new ContinuousBatcher(model, { maxRows: 8, prefillChunkTokens: 8 });
        const { passes, restore } = countPasses();
        const first: [number[], GenerateOptions] = [[2, 5, 6], { maxNewTokens: 12, doSample: false, eosTokenId: null }];
        // Two prompts of 21 and 13 tokens arrive while the first row decodes: 2 rows × 4 positions a chunk, 6 chunks.
        const rows: Array<[number[], GenerateOptions]> = [
          [[2, ...Array.from({ length: 20 }, (_, i) => 10 + i)], { maxNewTokens: 6, doSample: false, eosTokenId: null }],
          [[2, ...Array.from({ length: 12 }, (_, i) => 40 + i)], { maxNewTokens: 6, doSample: true, temperature: 0.9, seed: 5, eosTokenId: null }],
        ];
        let recorded: Array<ReturnType<typeof recorder>>;
        try {
          recorded = await joinWhileDecoding(batcher, first, 2, rows);
        } finally {
          restore();
        }
        // No pass over more than 8 prompt tokens; the joining prompts took ceil(21 / 4) = 6 of them.
        expect(Math.max(...passes)).to.be.at.most(8);
        expect(passes.filter((tokens) => tokens === 8)).to.have.length(5);
        // The decoding row took a step between every two chunks (it has 12 tokens to write, more than the chunks).
        const chunkAt = passes.flatMap((tokens, i) => (tokens === 8 ? [i] : []));
        expect(chunkAt.every((at, k) => k === 0 || passes.slice(chunkAt[k - 1] + 1, at).includes(1)), JSON.stringify(passes)).to.equal(true);
        for (const [i, [prompt, options]] of [first, ...rows].entries()) await expectAsAlone(prompt, options, recorded[i], `row ${i}`);
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('prefix caching: a prompt that continues a finished row runs only its new tokens, and decodes as alone', async () => {
        const before = tf.memory().numTensors;
        const batcher = new ContinuousBatcher(model, { maxRows: 4, prefixCacheTokens: 256 });
        const { passes, restore } = countPasses();
        try {
          // A first turn: a 20-token prompt, 8 new tokens; then the next turn: all of that and 5 more tokens.
          const firstPrompt = [2, ...Array.from({ length: 19 }, (_, i) => 10 + i)];
          const greedy: GenerateOptions = { maxNewTokens: 8, doSample: false, eosTokenId: null };
          const first = recorder(firstPrompt, greedy);
          await batcher.generate(first.row);
          expect(batcher.prefixCache!.stats.storedTokens).to.equal(20 + 8 - 1);
          const nextPrompt = [...firstPrompt, ...first.tokens, 60, 61, 62, 63, 64];
          const sampled: GenerateOptions = { maxNewTokens: 6, doSample: true, temperature: 0.8, seed: 9, eosTokenId: null };
          passes.length = 0;
          const next = recorder(nextPrompt, sampled);
          await batcher.generate(next.row);
          // Its prompt pass ran the 6 tokens after the kept 27 (the first turn's tokens but its last, never run).
          expect(passes[0]).to.equal(nextPrompt.length - 27); // one row: its positions
          expect(batcher.prefixCache!.stats).to.deep.include({ hits: 1, reusedTokens: 27 });
          await expectAsAlone(nextPrompt, sampled, next, 'the next turn');
          // A prompt that shares too little (under 16 tokens) runs whole.
          passes.length = 0;
          const other = recorder([2, 10, 11, 12, 50], greedy);
          await batcher.generate(other.row);
          expect(passes[0]).to.equal(5);
          // Kept: the second turn, which replaced the first (it extends it); not the third (12 tokens, under 16).
          expect(batcher.prefixCache!.stats.storedTokens).to.equal(nextPrompt.length + 6 - 1);
        } finally {
          restore();
        }
        batcher.prefixCache!.dispose();
        expect(tf.memory().numTensors).to.equal(before);
      });

      it('a prompt longer than the context is refused with both lengths', async () => {
        const batcher = new ContinuousBatcher(model, 2);
        const prompt = new Array(model.config.maxPositionEmbeddings).fill(5);
        const decoding = { ...rowDecoding(model, [2], { maxNewTokens: 4 }), maxNewTokens: 4 };
        const message = await batcher.generate({ prompt, decoding, onToken: () => true }).then(() => '', (e: Error) => e.message);
        expect(message).to.equal(`ContinuousBatcher: the prompt (${prompt.length} tokens) plus 4 new tokens is longer than the context (${model.config.maxPositionEmbeddings})`);
      });
    });
  }
});
