/**
 * NemotronH speed here: a Nemotron-H-shaped model of ~160M parameters (random weights): prompt passes (the chunked
 * Mamba-2 scan) and decoding steps over the kept state.
 *
 *   node dist/benchmarks/nemotron-h.js [--backend tensorflow] [--out DIR]
 */
import * as fs from 'fs';
import * as path from 'path';
import { NEMOTRON_H_STEP_KERNEL, type NemotronForCausalLM, NemotronHBatcher, NemotronHConfig, NemotronHForCausalLM, rowDecoding, setBackend, useFusedKernels } from '../src/index';
import { machineInfo } from './configs';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const arg = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const backend = await setBackend(arg('--backend', 'tensorflow'));
  // Nemotron-H 8B's layout in small: mostly Mamba-2 and MLP layers, one attention layer.
  const config = new NemotronHConfig({
    vocabSize: 32000, hiddenSize: 1024, layerTypes: ['mamba', 'mlp', 'mamba', 'mlp', 'mamba', 'attention', 'mlp', 'mamba', 'mlp', 'mamba', 'mlp', 'mamba'],
    mambaNumHeads: 32, mambaHeadDim: 64, nGroups: 8, ssmStateSize: 128, convKernel: 4, chunkSize: 128, numAttentionHeads: 16, numKeyValueHeads: 4,
    headDim: 64, intermediateSize: 4096, maxPositionEmbeddings: 4096,
  });
  const model = new NemotronHForCausalLM(config);
  const lines: string[] = [];
  const log = (line: string) => { lines.push(line); console.log(line); };
  const machine = machineInfo();
  log(`# NemotronH (${(model.numParameters() / 1e6).toFixed(1)} M parameters, "M-M-M*-M-M-M", random weights), ${backend} backend`);
  log('');
  log(`Machine: ${machine.cpu}, ${machine.cores} cores, ${(machine.ram_bytes / 2 ** 30).toFixed(0)} GB; node ${process.version}. Float32, batch 1.`);
  log('');
  log('| what | tokens | seconds | tokens/s |');
  log('| --- | ---: | ---: | ---: |');
  const prompt = (n: number) => [Array.from({ length: n }, (_, i) => (i * 7919 + 3) % config.vocabSize)];
  model.forward({ inputIds: prompt(16) }).logits.dispose(); // warm-up
  for (const n of [128, 512]) {
    // The first pass at a length sets up its kernels (oneDNN's primitives); the second is what a server sees.
    for (const run of ['first', 'second']) {
      const start = performance.now();
      const { logits } = model.forward({ inputIds: prompt(n) });
      await logits.data();
      logits.dispose();
      const s = (performance.now() - start) / 1000;
      log(`| prompt pass (${run} at this length) | ${n} | ${s.toFixed(2)} | ${(n / s).toFixed(1)} |`);
    }
  }
  // Decoding with the native backend's compiled step (one graph a token) and without it (eager ops), the same tokens.
  const decoded: string[] = [];
  for (const compiled of backend === 'tensorflow' ? [false, true] : [false]) {
    useFusedKernels(compiled, [NEMOTRON_H_STEP_KERNEL]);
    model.generate(prompt(32), { maxNewTokens: 3, eosTokenId: null }); // the graph is built at the first step
    let first = 0;
    let count = 0;
    const tokens = model.generate(prompt(32), { maxNewTokens: 65, eosTokenId: null, onToken: () => { count++; if (count === 1) first = performance.now(); } });
    decoded.push(tokens[0].join());
    const decodeSeconds = (performance.now() - first) / 1000;
    const what = backend !== 'tensorflow' ? '' : compiled ? ', compiled step' : ', eager ops';
    log(`| decoding steps (after a 32-token prompt${what}) | 64 | ${decodeSeconds.toFixed(2)} | ${(64 / decodeSeconds).toFixed(1)} |`);
  }
  useFusedKernels(true);
  log('');
  if (decoded.length === 2) log(`Greedy tokens of the two decodings ${decoded[0] === decoded[1] ? 'equal' : 'DIFFER'}.`);
  // A mixture-of-experts shape (Nemotron 3 Nano's layout in small): decoding eager (routing on the host) and compiled.
  const moeConfig = new NemotronHConfig({
    vocabSize: 32000, hiddenSize: 1024, layerTypes: ['mamba', 'moe', 'mamba', 'moe', 'mamba', 'attention', 'moe', 'mamba', 'moe', 'mamba', 'moe', 'mamba'],
    mambaNumHeads: 32, mambaHeadDim: 64, nGroups: 8, ssmStateSize: 128, convKernel: 4, chunkSize: 128, numAttentionHeads: 16, numKeyValueHeads: 4,
    headDim: 64, maxPositionEmbeddings: 4096, nRoutedExperts: 32, numExpertsPerTok: 4, nGroup: 1, topkGroup: 1, moeIntermediateSize: 704,
    moeSharedExpertIntermediateSize: 1408, routedScalingFactor: 2.5,
  });
  const moe = new NemotronHForCausalLM(moeConfig);
  log('');
  log(`Mixture of experts (${(moe.numParameters() / 1e6).toFixed(1)} M parameters, "MEMEM*EMEMEM", 32 experts, 4 a token, a shared one):`);
  log('');
  log('| what | tokens | seconds | tokens/s |');
  log('| --- | ---: | ---: | ---: |');
  const moeDecoded: string[] = [];
  for (const compiled of backend === 'tensorflow' ? [false, true] : [false]) {
    useFusedKernels(compiled, [NEMOTRON_H_STEP_KERNEL]);
    moe.generate(prompt(32), { maxNewTokens: 3, eosTokenId: null });
    let first = 0;
    let count = 0;
    const tokens = moe.generate(prompt(32), { maxNewTokens: 65, eosTokenId: null, onToken: () => { count++; if (count === 1) first = performance.now(); } });
    moeDecoded.push(tokens[0].join());
    const seconds = (performance.now() - first) / 1000;
    log(`| decoding steps (after a 32-token prompt${backend !== 'tensorflow' ? '' : compiled ? ', compiled step' : ', eager ops'}) | 64 | ${seconds.toFixed(2)} | ${(64 / seconds).toFixed(1)} |`);
  }
  useFusedKernels(true);
  moe.dispose();
  if (moeDecoded.length === 2) log(`\nGreedy tokens of the two decodings ${moeDecoded[0] === moeDecoded[1] ? 'equal' : 'DIFFER'}.`);
  // Serving: N requests at once (32-token prompts, 64 new tokens, greedy) on NemotronHBatcher, together or one row at a time.
  log('');
  log('| requests at once | rows decoded together | seconds | new tokens/s (all requests) | peak rows |');
  log('| ---: | --- | ---: | ---: | ---: |');
  const serveRound = async (clients: number, maxRows: number) => {
    const batcher = new NemotronHBatcher(model, { maxRows });
    const prompts = Array.from({ length: clients }, (_, c) => prompt(32)[0].map((t) => (t + 101 * c) % config.vocabSize));
    let tokens = 0;
    const start = performance.now();
    await Promise.all(prompts.map((p) => batcher.generate({
      prompt: p, decoding: rowDecoding(model as unknown as NemotronForCausalLM, p, { maxNewTokens: 64, doSample: false, eosTokenId: null }),
      onToken: () => { tokens++; return true; },
    })));
    return { seconds: (performance.now() - start) / 1000, tokens, peak: batcher.stats.peakRows };
  };
  await serveRound(2, 2); // builds the batched steps' graphs
  for (const clients of [1, 4, 8]) {
    for (const maxRows of clients === 1 ? [1] : [1, clients]) {
      const r = await serveRound(clients, maxRows);
      log(`| ${clients} | ${maxRows === 1 ? 'one at a time' : `up to ${maxRows}`} | ${r.seconds.toFixed(2)} | ${(r.tokens / r.seconds).toFixed(1)} | ${r.peak} |`);
    }
  }
  const out = arg('--out', '');
  if (out) {
    const file = path.join(out, `nemotron-h-small-${new Date().toISOString().slice(0, 10)}.md`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    console.log(`wrote ${file}`);
  }
  model.dispose();
}

void main();
