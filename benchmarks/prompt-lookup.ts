/**
 * Prompt lookup decoding against plain greedy decoding, in one process, on a prompt that repeats itself around the
 * model's own continuation of it (as edited or quoted text does):
 *
 *   node dist/benchmarks/prompt-lookup.js [--config minitron-small] [--backend tensorflow] [--new 64]
 *
 * Random weights (the library's initialisation): what a pass accepts depends on how repetitive the text is, so the
 * figures say what one pass over several tokens costs against one token, not what a trained model gains.
 */
import { NemotronConfig, NemotronForCausalLM, generate, setBackend } from '../src/index';
import { benchConfig } from './configs';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const arg = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const backend = await setBackend(arg('--backend', 'tensorflow'));
  const newTokens = Number(arg('--new', '64'));
  const config = benchConfig(arg('--config', 'minitron-small'));
  const model = new NemotronForCausalLM(new NemotronConfig(config.fields));
  const start = Array.from({ length: 32 }, (_, i) => (i * 7919 + 13) % model.config.vocabSize);
  const continuation = (await generate(model, [start], { maxNewTokens: 32, eosTokenId: null })).sequences[0].slice(start.length);
  const prompt = [...start, ...continuation, ...start];
  const forward = model.forward.bind(model);
  let passes = 0;
  model.forward = ((inputs: Parameters<typeof forward>[0]) => { passes++; return forward(inputs); }) as typeof model.forward;
  console.log(`${config.name} on ${backend}, prompt ${prompt.length} tokens, ${newTokens} new tokens, greedy`);
  let plain: number[] | null = null;
  for (let round = 0; round < 2; round++) {
    for (const lookup of [0, 4, 10]) {
      passes = 0;
      const t = performance.now();
      const out = await generate(model, [prompt], { maxNewTokens: newTokens, eosTokenId: null, promptLookupNumTokens: lookup || undefined });
      const seconds = (performance.now() - t) / 1000;
      const tokens = out.sequences[0];
      plain ??= tokens;
      const same = tokens.join() === plain.join();
      console.log(`round ${round + 1}, prompt lookup ${lookup || 'off'}: ${seconds.toFixed(2)} s, ${(newTokens / seconds).toFixed(1)} tok/s, ` +
        `${passes} forward passes, tokens ${same ? 'equal to' : 'DIFFERENT from'} plain greedy`);
    }
  }
  model.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
