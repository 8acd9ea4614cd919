/**
 * NemotronH speed here: a Nemotron-H-shaped model of ~160M parameters (random weights): prompt passes (the chunked
 * Mamba-2 scan) and decoding steps over the kept state.
 *
 *   node dist/benchmarks/nemotron-h.js [--backend tensorflow] [--out DIR]
 */
import * as fs from 'fs';
import * as path from 'path';
import { NemotronHConfig, NemotronHForCausalLM, setBackend } from '../src/index';
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
    const start = performance.now();
    const { logits } = model.forward({ inputIds: prompt(n) });
    await logits.data();
    logits.dispose();
    const s = (performance.now() - start) / 1000;
    log(`| prompt pass | ${n} | ${s.toFixed(2)} | ${(n / s).toFixed(1)} |`);
  }
  let first = 0;
  let count = 0;
  const start = performance.now();
  model.generate(prompt(32), { maxNewTokens: 65, eosTokenId: null, onToken: () => { count++; if (count === 1) first = performance.now(); } });
  const decodeSeconds = (performance.now() - first) / 1000;
  log(`| decoding steps (after a 32-token prompt) | 64 | ${decodeSeconds.toFixed(2)} | ${(64 / decodeSeconds).toFixed(1)} |`);
  log('');
  log(`Total ${((performance.now() - start) / 1000).toFixed(2)} s for the generation.`);
  const out = arg('--out', '');
  if (out) {
    const file = path.join(out, `nemotron-h-small-${new Date().toISOString().slice(0, 10)}.md`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    console.log(`wrote ${file}`);
  }
  model.dispose();
}

void main();
