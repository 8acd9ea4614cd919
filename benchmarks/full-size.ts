/**
 * The proof at full size (not CI: it writes ~8.4 GB). Writes a Minitron-4B-shaped checkpoint with random BF16
 * weights in Hugging Face's sharded layout, loads it with fromPretrained, runs a short prompt and a few greedy
 * tokens, and records load time, GB/s and peak RSS against the float32 weights.
 *
 *   node dist/benchmarks/full-size.js [--dir /tmp/minitron-4b-random] [--backend tensorflow] [--preset minitron-4b] [--keep]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { NemotronConfig, NemotronForCausalLM, estimateMemory, generate, initBackend, parameterCount, tf } from '../src/index';
import { writeSafetensors } from '../src/io/safetensors';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** Peak resident memory of this process so far (VmHWM), in bytes. */
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}

/** Uniform values with the given standard deviation from a xorshift generator (fast; the values do not matter). */
function randomData(size: number, std: number, seed: number): Float32Array {
  const out = new Float32Array(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  const scale = (std * Math.sqrt(3)) / 2 ** 31;
  for (let i = 0; i < size; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = ((x >>> 0) - 2 ** 31) * scale;
  }
  return out;
}

/** Every parameter of a causal LM in HF names and shapes, without building the model. */
function parameterShapes(c: NemotronConfig): Array<[string, number[]]> {
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const h = c.hiddenSize;
  const out: Array<[string, number[]]> = [['model.embed_tokens.weight', [c.vocabSize, h]]];
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const p = `model.layers.${i}.`;
    out.push([`${p}input_layernorm.weight`, [h]], [`${p}input_layernorm.bias`, [h]],
      [`${p}self_attn.q_proj.weight`, [q, h]], [`${p}self_attn.k_proj.weight`, [kv, h]], [`${p}self_attn.v_proj.weight`, [kv, h]],
      [`${p}self_attn.o_proj.weight`, [h, q]], [`${p}post_attention_layernorm.weight`, [h]], [`${p}post_attention_layernorm.bias`, [h]],
      [`${p}mlp.up_proj.weight`, [c.intermediateSize, h]], [`${p}mlp.down_proj.weight`, [h, c.intermediateSize]]);
  }
  out.push(['model.norm.weight', [h]], ['model.norm.bias', [h]]);
  if (!c.tieWordEmbeddings) out.push(['lm_head.weight', [c.vocabSize, h]]);
  return out;
}

/** Writes the checkpoint shard by shard (~2 GB each), as transformers lays it out. */
function writeCheckpoint(dir: string, config: NemotronConfig, shardBytes = 2e9): number {
  fs.mkdirSync(dir, { recursive: true });
  config.save(dir);
  const shapes = parameterShapes(config);
  const shards: Array<Array<[string, number[]]>> = [[]];
  let bytes = 0;
  for (const entry of shapes) {
    const size = entry[1].reduce((a, b) => a * b, 1) * 2;
    if (bytes + size > shardBytes && shards[shards.length - 1].length) { shards.push([]); bytes = 0; }
    shards[shards.length - 1].push(entry);
    bytes += size;
  }
  const weightMap: Record<string, string> = {};
  let total = 0;
  shards.forEach((shard, i) => {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    const tensors = shard.map(([name, shape], k) => {
      const size = shape.reduce((a, b) => a * b, 1);
      total += size * 2;
      weightMap[name] = file;
      const std = shape.length === 2 ? 1 / Math.sqrt(shape[1]) : 0.05;
      return { name, dtype: 'BF16' as const, shape, data: randomData(size, std, i * 1000 + k + 1) };
    });
    writeSafetensors(path.join(dir, file), tensors);
    process.stderr.write(`wrote ${file} (${shard.length} tensors)\n`);
  });
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  return total;
}

async function main(): Promise<void> {
  const presetName = arg('preset', 'minitron-4b');
  const dir = arg('dir', path.join(os.tmpdir(), `${presetName}-random`));
  const outDir = arg('out', path.resolve(__dirname, '../../benchmarks/results'));
  const config = NemotronConfig.preset(presetName, { padTokenId: 0 });
  const backend = await initBackend(arg('backend', process.env.NEMOTRON_BACKEND ?? ''), { quiet: true }).catch(() => initBackend());
  tf.env().set('PROD', true);

  let t = performance.now();
  const diskBytes = fs.existsSync(path.join(dir, 'model.safetensors.index.json'))
    ? JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')).metadata.total_size
    : writeCheckpoint(dir, config);
  const writeSeconds = (performance.now() - t) / 1000;
  const rssBeforeLoad = process.memoryUsage().rss;

  t = performance.now();
  let lastReport = 0;
  const model = await NemotronForCausalLM.fromPretrained(dir, {
    onProgress: ({ loadedBytes, totalBytes }) => {
      if (loadedBytes - lastReport > 1e9 || loadedBytes === totalBytes) {
        lastReport = loadedBytes;
        process.stderr.write(`loaded ${(loadedBytes / 1e9).toFixed(1)} / ${(totalBytes / 1e9).toFixed(1)} GB, rss ${(process.memoryUsage().rss / 1e9).toFixed(1)} GB\n`);
      }
    },
  });
  const loadSeconds = (performance.now() - t) / 1000;
  const peakAfterLoad = peakRss();
  const weightsBytes = estimateMemory(config, { batch: 1, sequenceLength: 1 }).weightsBytes;

  const prompt = [[2, 1014, 338, 263, 1243, 29889, 450, 4996]];
  t = performance.now();
  const out = model.forward({ inputIds: prompt, logitsToKeep: 1 });
  const firstToken = tf.argMax(out.logits, -1).dataSync()[0];
  out.logits.dispose();
  const forwardSeconds = (performance.now() - t) / 1000;
  t = performance.now();
  const generated = await generate(model, prompt, { maxNewTokens: 4, eosTokenId: null });
  const generateSeconds = (performance.now() - t) / 1000;
  const result = {
    preset: presetName, backend, parameters: parameterCount(config), diskBytes, writeSeconds,
    loadSeconds, loadGBps: diskBytes / 1e9 / loadSeconds, float32WeightsBytes: weightsBytes,
    rssBeforeLoad, peakRss: peakRss(), peakRssAfterLoad: peakAfterLoad,
    peakOverWeights: peakAfterLoad / weightsBytes, marginBytes: peakAfterLoad - 1.15 * weightsBytes,
    promptTokens: prompt[0].length, forwardSeconds, firstToken, generated: generated.sequences[0].slice(prompt[0].length), generateSeconds,
    machine: `${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, ${(os.totalmem() / 1e9).toFixed(0)} GB`, date: new Date().toISOString(),
  };
  model.dispose();
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, `full-size-${presetName}.json`), JSON.stringify(result, null, 2) + '\n');
  const gb = (n: number) => `${(n / 1e9).toFixed(2)} GB`;
  const md = `# Full-size load: ${presetName} (random BF16 weights, ${parameterCount(config).toLocaleString('en')} parameters)\n\n` +
    `Machine: ${result.machine}; backend ${backend}; ${result.date}.\n\n| measure | value |\n| --- | --- |\n` +
    `| checkpoint on disk (BF16, sharded) | ${gb(diskBytes)} |\n| float32 weights in memory | ${gb(weightsBytes)} |\n` +
    `| load time | ${loadSeconds.toFixed(1)} s (${result.loadGBps.toFixed(2)} GB/s of checkpoint) |\n` +
    `| peak RSS after load | ${gb(peakAfterLoad)} (${result.peakOverWeights.toFixed(3)} × the float32 weights) |\n` +
    `| peak RSS − 1.15 × weights | ${gb(result.marginBytes)} |\n` +
    `| forward of ${prompt[0].length} prompt tokens | ${forwardSeconds.toFixed(2)} s |\n| 4 greedy tokens (prefill + 3 decode steps) | ${generateSeconds.toFixed(2)} s |\n`;
  fs.writeFileSync(path.join(outDir, `full-size-${presetName}.md`), md);
  process.stdout.write(md);
  if (!process.argv.includes('--keep')) fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  process.stderr.write(`error: ${(e as Error).stack}\n`);
  process.exit(1);
});
