/**
 * Speed benchmark: nemotron-tfjs on each tfjs backend against transformers + PyTorch, same weights and inputs.
 *
 *   node dist/benchmarks/run.js [--config minitron-small] [--backends wasm,tensorflow] [--prefill 512]
 *        [--decode 128] [--batches 1,8] [--train-tokens 128] [--no-torch] [--no-train] [--no-limits]
 *        [--venv .venv-ref] [--seed 0] [--out benchmarks/results]
 *
 * Random weights are made once from a seed with the library and saved with savePretrained, so that PyTorch
 * (NemotronForCausalLM.from_pretrained, float32, eager attention) loads the same ones. Each backend runs in
 * its own Node process (this file with --worker), so that its peak RSS is its own. The machine's limits
 * (numpy GEMM GFLOP/s, memory read GB/s) are measured in the same run to express the results as fractions.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import seedrandom from 'seedrandom';
import {
  AdamW, LoraModel, availableBackends, BackendName, DECODE_STEP_KERNEL, generate, NemotronConfig, NemotronForCausalLM, setBackend, tf, useFusedKernels,
} from '../src/index';
import { BENCH_CONFIGS, Machine, benchConfig, machineInfo } from './configs';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const PY_DIR = path.join(REPO_ROOT, 'benchmarks');
const DECODE_PROMPT_TOKENS = 8;
/** Training steps run on both sides; the median of the last TIMED_STEPS counts (torch_bench.py does the same). */
const TRAIN_STEPS = 5;
const TIMED_STEPS = 3;

interface Args {
  config: string;
  backends: string[] | null;
  prefill: number;
  decode: number;
  batches: number[];
  trainTokens: number;
  torch: boolean;
  train: boolean;
  limits: boolean;
  venv: string;
  seed: number;
  out: string;
  worker: string | null;
  weights: string;
  inputs: string;
  result: string;
}

function usage(): string {
  return `usage: node dist/benchmarks/run.js [--config ${Object.keys(BENCH_CONFIGS).join('|')}] [--backends cpu,wasm,tensorflow,tensorflow:eager,tensorflow:plain,...]
  [--prefill 512] [--decode 128] [--batches 1,8] [--train-tokens 128] [--no-torch] [--no-train] [--no-limits]
  [--venv .venv-ref] [--seed 0] [--out benchmarks/results]`;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    config: 'minitron-small', backends: null, prefill: 0, decode: 0, batches: [1, 8], trainTokens: 128,
    torch: true, train: true, limits: true, venv: '.venv-ref', seed: 0, out: path.join('benchmarks', 'results'),
    worker: null, weights: '', inputs: '', result: '',
  };
  const positiveInt = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${flag} needs a positive integer, got ${JSON.stringify(v)}\n${usage()}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${usage()}`);
      return v;
    };
    switch (flag) {
      case '--config': a.config = next(); break;
      case '--backends': a.backends = next().split(',').map((s) => s.trim()).filter(Boolean); break;
      case '--prefill': a.prefill = positiveInt(flag, next()); break;
      case '--decode': a.decode = positiveInt(flag, next()); break;
      case '--batches': a.batches = next().split(',').map((s) => positiveInt(flag, s)); break;
      case '--train-tokens': a.trainTokens = positiveInt(flag, next()); break;
      case '--no-torch': a.torch = false; break;
      case '--no-train': a.train = false; break;
      case '--no-limits': a.limits = false; break;
      case '--venv': a.venv = next(); break;
      case '--seed': a.seed = Number(next()); break;
      case '--out': a.out = next(); break;
      case '--worker': a.worker = next(); break;
      case '--weights': a.weights = next(); break;
      case '--inputs': a.inputs = next(); break;
      case '--result': a.result = next(); break;
      case '--list-backends': a.worker = 'list'; break;
      case '-h': case '--help': console.log(usage()); process.exit(0); break;
      default: throw new Error(`Unknown argument ${flag}\n${usage()}`);
    }
  }
  const defaults = benchConfig(a.config).defaults ?? {};
  if (!a.prefill) a.prefill = defaults.prefill ?? 512;
  if (!a.decode) a.decode = defaults.decode ?? 128;
  return a;
}

// ---------------------------------------------------------------- memory

/** Peak RSS of this process since the last reset (Linux VmHWM), or null where /proc is missing. */
function vmHwm(): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

function resetHwm(): void {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
  } catch {
    // not Linux: the sampled RSS still counts
  }
}

/** process.memoryUsage().rss sampled on a timer and at every call of sample() (long kernels block the timer). */
class RssSampler {
  peak = process.memoryUsage().rss;
  private timer: NodeJS.Timeout;
  constructor(intervalMs = 25) {
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }
  sample(): void {
    this.peak = Math.max(this.peak, process.memoryUsage().rss);
  }
  stop(): number {
    clearInterval(this.timer);
    this.sample();
    return this.peak;
  }
}

// ---------------------------------------------------------------- inputs

interface Inputs {
  prefill: number[][];
  decode: Record<string, number[][]>;
  maxNewTokens: number;
  train: number[][];
}

function makeInputs(config: NemotronConfig, a: Args): Inputs {
  const rand = seedrandom(`nemotron-bench-inputs-${a.seed}`);
  const ids = (rows: number, cols: number): number[][] =>
    Array.from({ length: rows }, () => Array.from({ length: cols }, () => Math.floor(rand() * config.vocabSize)));
  const maxPos = config.maxPositionEmbeddings;
  if (a.prefill > maxPos) throw new Error(`--prefill ${a.prefill} is longer than max_position_embeddings ${maxPos}`);
  if (DECODE_PROMPT_TOKENS + a.decode > maxPos) throw new Error(`--decode ${a.decode} plus the prompt is longer than ${maxPos}`);
  return {
    prefill: ids(1, a.prefill),
    decode: Object.fromEntries(a.batches.map((b) => [String(b), ids(b, DECODE_PROMPT_TOKENS)])),
    maxNewTokens: a.decode,
    train: ids(1, Math.min(a.trainTokens, maxPos)),
  };
}

/** The library's random model, then every matrix redrawn from the seed (the constructor's init is unseeded). */
function seededModel(config: NemotronConfig, seed: number): NemotronForCausalLM {
  const model = new NemotronForCausalLM(config);
  let i = 0;
  for (const v of model.namedParameters().values()) {
    i++;
    if (v.rank < 2) continue; // LayerNorm1P weights and biases keep their deterministic init
    tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, config.initializerRange, 'float32', seed * 100003 + i)));
  }
  return model;
}

// ---------------------------------------------------------------- worker: one backend

interface DecodeResult {
  batch: number;
  new_tokens: number;
  first_token_seconds: number;
  decode_seconds: number;
  total_seconds: number;
  tokens_per_s: number | null;
  tokens: number[];
}

interface BackendResult {
  backend: string;
  versions?: Record<string, string>;
  load_seconds?: number;
  prefill?: { tokens: number; seconds: number; tokens_per_s: number };
  decode?: Record<string, DecodeResult>;
  train?: { tokens: number; seconds: number; warmup_seconds: number; tokens_per_s: number; loss: number };
  lora_train?: { tokens: number; seconds: number; warmup_seconds: number; tokens_per_s: number; loss: number };
  peak_rss_bytes?: number | null;
  peak_rss_sampled_bytes?: number;
  leaked_tensors?: number;
  errors: Record<string, string>;
}

const now = (): number => performance.now() / 1000;
const message = (e: unknown): string => (e instanceof Error ? e.message : String(e)).split('\n')[0];

async function runWorker(a: Args): Promise<void> {
  resetHwm();
  const sampler = new RssSampler();
  // Variants measure what the fused kernels buy: "tensorflow:plain" runs without any, "tensorflow:eager" with the fused
  // kernels but without the compiled decoding step.
  const backend = a.worker!;
  const [engine, variant] = backend.split(':');
  const result: BackendResult = { backend, errors: {}, versions: { tfjs: tf.version_core, node: process.version } };
  await setBackend(engine);
  if (variant === 'plain') useFusedKernels(false);
  else if (variant === 'eager') useFusedKernels(false, [DECODE_STEP_KERNEL]);
  else if (variant) throw new Error(`Unknown backend variant ${JSON.stringify(variant)} in ${backend}; expected "plain" or "eager"`);
  const inputs = JSON.parse(fs.readFileSync(a.inputs, 'utf8')) as Inputs;
  const tensorsBefore = tf.memory().numTensors;
  // Written after every phase: a backend that aborts later (e.g. wasm out of memory) keeps what it measured.
  const save = (): void => {
    result.peak_rss_sampled_bytes = Math.max(sampler.peak, process.memoryUsage().rss);
    result.peak_rss_bytes = vmHwm() ?? result.peak_rss_sampled_bytes;
    fs.writeFileSync(a.result, JSON.stringify(result));
  };

  let t = now();
  const model = await NemotronForCausalLM.fromPretrained(a.weights);
  result.load_seconds = now() - t;
  sampler.sample();

  // Prefill: one forward over the prompt, logits of the last position only, after one warm-up.
  const prefill = async (): Promise<number> => {
    const start = now();
    const out = model.forward({ inputIds: inputs.prefill, logitsToKeep: 1, useCache: false });
    await out.logits.data();
    sampler.sample();
    tf.dispose([out.logits, out.loss ?? []]);
    return now() - start;
  };
  try {
    await prefill();
    const seconds = await prefill();
    const tokens = inputs.prefill.length * inputs.prefill[0].length;
    result.prefill = { tokens, seconds, tokens_per_s: tokens / seconds };
  } catch (e) {
    result.errors.prefill = message(e);
  }
  save();

  // Decode: greedy generation; the first token ends the prefill, the steps after it are the decode.
  result.decode = {};
  for (const [batch, prompt] of Object.entries(inputs.decode)) {
    try {
      await generate(model, prompt, { maxNewTokens: 2, eosTokenId: null }); // warm-up
      let first = 0;
      let last = 0;
      const start = now();
      const out = await generate(model, prompt, {
        maxNewTokens: inputs.maxNewTokens, eosTokenId: null,
        onToken: (_tokens, step) => {
          const n = now();
          if (step === 0) first = n;
          last = n;
          sampler.sample();
        },
      });
      const total = now() - start;
      const decodeSeconds = last - first;
      const b = Number(batch);
      result.decode[batch] = {
        batch: b, new_tokens: inputs.maxNewTokens, first_token_seconds: first - start, decode_seconds: decodeSeconds,
        total_seconds: total, tokens_per_s: decodeSeconds > 0 ? ((inputs.maxNewTokens - 1) * b) / decodeSeconds : null,
        tokens: out.sequences[0].slice(prompt[0].length),
      };
    } catch (e) {
      result.errors[`decode_${batch}`] = message(e);
    }
    save();
  }

  // Training: causal-LM loss and its gradients (variableGrads), then an AdamW step; one warm-up step, one timed. Then
  // the same for LoRA adapters (PEFT's r 16, alpha 32 on every projection; the base frozen).
  const timeTraining = async (key: 'train' | 'lora_train', params: Map<string, tf.Variable>, lossOf: () => tf.Scalar) => {
    result.errors[key] = 'did not finish (the process died during the training step)';
    save();
    delete result.errors[key];
    const byVarName = new Map([...params].map(([name, v]) => [v.name, name]));
    const optimizer = new AdamW(params, { weightDecay: 0.01 });
    const smallest = [...params.values()].reduce((a, b) => (b.size < a.size ? b : a));
    try {
      const times: number[] = [];
      let loss = NaN;
      for (let step = 0; step < TRAIN_STEPS; step++) {
        const start = now();
        const { value, grads } = tf.variableGrads(lossOf, [...params.values()]);
        loss = (await value.data())[0];
        value.dispose();
        const named = new Map<string, tf.Tensor>();
        for (const [varName, g] of Object.entries(grads)) named.set(byVarName.get(varName) ?? varName, g);
        optimizer.apply(named, 1e-5);
        tf.dispose(Object.values(grads));
        await smallest.data(); // the update has run (async backends: the queue runs in order); small, to cost no copy
        sampler.sample();
        times.push(now() - start);
      }
      const tokens = inputs.train.length * inputs.train[0].length;
      const counted = times.slice(-TIMED_STEPS).sort((x, y) => x - y)[Math.floor(TIMED_STEPS / 2)];
      result[key] = { tokens, seconds: counted, warmup_seconds: times[0], tokens_per_s: tokens / counted, loss };
    } catch (e) {
      result.errors[key] = message(e);
    } finally {
      optimizer.dispose();
    }
  };
  if (a.train) {
    // The Trainer's loss: computeLoss (the logits by chunks of positions, never whole).
    const lossOf = () => model.computeLoss({ inputIds: inputs.train, labels: inputs.train });
    await timeTraining('train', model.namedParameters(), lossOf);
    const lora = LoraModel.attach(model, { r: 16, loraAlpha: 32, targetModules: 'all-linear', seed: a.seed });
    await timeTraining('lora_train', lora.namedParameters(), lossOf);
    lora.unload();
  }

  model.dispose();
  result.leaked_tensors = tf.memory().numTensors - tensorsBefore;
  result.peak_rss_sampled_bytes = sampler.stop();
  result.peak_rss_bytes = vmHwm() ?? result.peak_rss_sampled_bytes;
  fs.writeFileSync(a.result, JSON.stringify(result));
}

// ---------------------------------------------------------------- parent

interface Limits {
  numpy: string;
  blas: unknown;
  gemm_n: number;
  gemm_gflops: number;
  bandwidth_bytes: number;
  bandwidth_gbs: number;
}


function venvPython(a: Args): string | null {
  const py = path.resolve(a.venv, 'bin', 'python');
  return fs.existsSync(py) ? py : null;
}

function measureLimits(python: string, bytes: number): Limits | string {
  // OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on some machines for old OpenBLAS builds) slow a current numpy.
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync(python, [path.join(PY_DIR, 'machine_limits.py'), '--bytes', String(bytes)], { encoding: 'utf8', env, timeout: 300_000 });
  if (r.status !== 0) return `machine_limits.py failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Limits;
}

function runJsBackend(a: Args, backend: string, dir: string, inputsFile: string): BackendResult {
  const resultFile = path.join(dir, `result-${backend}.json`);
  const argv = [__filename, '--worker', backend, '--config', a.config, '--weights', dir, '--inputs', inputsFile, '--result', resultFile];
  if (!a.train) argv.push('--no-train');
  const started = now();
  const r = spawnSync(process.execPath, argv, { stdio: ['ignore', 'inherit', 'inherit'] });
  const partial: BackendResult = fs.existsSync(resultFile)
    ? JSON.parse(fs.readFileSync(resultFile, 'utf8')) as BackendResult
    : { backend, errors: {} };
  if (r.status !== 0) partial.errors.run = `worker exited with ${r.status ?? r.signal} after ${(now() - started).toFixed(1)} s`;
  return partial;
}

function runTorch(a: Args, python: string, dir: string, inputsFile: string): BackendResult {
  const resultFile = path.join(dir, 'result-torch.json');
  const argv = [path.join(PY_DIR, 'torch_bench.py'), '--weights', dir, '--inputs', inputsFile, '--out', resultFile, '--threads', '2'];
  if (!a.train) argv.push('--skip-train');
  const r = spawnSync(python, argv, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0 || !fs.existsSync(resultFile)) return { backend: 'torch', errors: { run: `torch_bench.py exited with ${r.status ?? r.signal}` } };
  return JSON.parse(fs.readFileSync(resultFile, 'utf8')) as BackendResult;
}

interface ModelCounts {
  total_params: number;
  /** Everything but the embedding table and the output projection. */
  body_params: number;
  /** The output projection, vocab × hidden (the embeddings when tied). */
  head_params: number;
  /** float32 bytes one decode step reads: body + output projection (the embedding table only by rows). */
  decode_bytes_per_step: number;
}

function countParams(model: NemotronForCausalLM): ModelCounts {
  const c = model.config;
  let total = 0;
  for (const v of model.namedParameters().values()) total += v.size;
  const head = c.vocabSize * c.hiddenSize;
  const body = total - head - (c.tieWordEmbeddings ? 0 : head);
  return { total_params: total, body_params: body, head_params: head, decode_bytes_per_step: 4 * (body + head) };
}

interface Derived {
  prefill_gflops?: number;
  prefill_fraction_of_gemm?: number;
  decode_fraction_of_bandwidth?: Record<string, number>;
  train_gflops?: number;
  train_fraction_of_gemm?: number;
}

function derive(r: BackendResult, counts: ModelCounts, limits: Limits | null): Derived {
  const d: Derived = {};
  if (r.prefill) {
    // Matmul flops: 2 × body params per token, plus the output projection for the one kept position.
    // Attention scores (4 × layers × seq² × heads × head_dim) are left out.
    const flops = 2 * counts.body_params * r.prefill.tokens + 2 * counts.head_params;
    d.prefill_gflops = flops / r.prefill.seconds / 1e9;
    if (limits) d.prefill_fraction_of_gemm = d.prefill_gflops / limits.gemm_gflops;
  }
  if (r.decode && limits) {
    d.decode_fraction_of_bandwidth = {};
    for (const [b, x] of Object.entries(r.decode)) {
      if (x.tokens_per_s === null) continue;
      const stepsPerSecond = x.tokens_per_s / x.batch; // each step reads the weights once for the whole batch
      d.decode_fraction_of_bandwidth[b] = (stepsPerSecond * counts.decode_bytes_per_step) / (limits.bandwidth_gbs * 1e9);
    }
  }
  if (r.train) {
    const flops = 6 * (counts.body_params + counts.head_params) * r.train.tokens;
    d.train_gflops = flops / r.train.seconds / 1e9;
    if (limits) d.train_fraction_of_gemm = d.train_gflops / limits.gemm_gflops;
  }
  return d;
}

const fmt = (x: number | undefined | null, digits = 1): string => (x === undefined || x === null || !Number.isFinite(x) ? '—' : x.toFixed(digits));
const pct = (x: number | undefined | null): string => (x === undefined || x === null ? '—' : `${(100 * x).toFixed(1)} %`);
const gb = (x: number | undefined | null): string => (x === undefined || x === null ? '—' : `${(x / 2 ** 30).toFixed(2)} GiB`);

function markdown(report: Report): string {
  const { machine, limits, counts } = report;
  const lines: string[] = [];
  lines.push(`# nemotron-tfjs benchmark: ${report.config} (${report.date})`, '');
  lines.push(`Machine: \`${machine.arch}\`, ${machine.cpu}, ${machine.cores} cores, ${gb(machine.ram_bytes)} RAM (${machine.os}), no GPU used.`);
  lines.push(`Model: ${report.config} — ${(counts.total_params / 1e6).toFixed(2)} M parameters ` +
    `(${(counts.body_params / 1e6).toFixed(2)} M outside the embeddings and output projection), float32, random weights from seed ${report.seed}.`);
  lines.push(`Workload: prefill ${report.args.prefill} tokens (logits of the last one); decode ${report.args.decode} new tokens greedily after a ` +
    `${DECODE_PROMPT_TOKENS}-token prompt at batch ${report.args.batches.join(', ')}; training 1 × ${report.args.trainTokens} tokens, loss + gradients + AdamW.`);
  if (limits) {
    lines.push(`Machine limits (numpy ${limits.numpy}): float32 GEMM ${limits.gemm_n}² ${fmt(limits.gemm_gflops)} GFLOP/s (2 threads); ` +
      `memory read ${fmt(limits.bandwidth_gbs, 2)} GB/s (sum over ${(limits.bandwidth_bytes / 1e9).toFixed(1)} GB, 1 thread).`);
  } else {
    lines.push(`Machine limits: not measured (${report.limits_error ?? 'skipped'}).`);
  }
  lines.push('');
  const batches = report.args.batches;
  const head = ['backend', 'load s', 'prefill tok/s', 'prefill GFLOP/s', 'of GEMM',
    ...batches.flatMap((b) => [`decode b=${b} tok/s`, `b=${b} of BW`]), 'train tok/s', 'train s/step', 'LoRA train tok/s', 'peak RSS'];
  lines.push(`| ${head.join(' | ')} |`, `| ${head.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`);
  for (const r of report.results) {
    const d = r.derived;
    const row = [r.backend, fmt(r.load_seconds, 2), fmt(r.prefill?.tokens_per_s), fmt(d.prefill_gflops), pct(d.prefill_fraction_of_gemm),
      ...batches.flatMap((b) => [fmt(r.decode?.[String(b)]?.tokens_per_s, 2), pct(d.decode_fraction_of_bandwidth?.[String(b)])]),
      fmt(r.train?.tokens_per_s), fmt(r.train?.seconds, 2), fmt(r.lora_train?.tokens_per_s), gb(r.peak_rss_bytes)];
    lines.push(`| ${row.join(' | ')} |`);
  }
  lines.push('');
  lines.push('- prefill GFLOP/s = (2 × body params × tokens + 2 × vocab × hidden) / time; attention scores not counted. "of GEMM": that over the numpy GEMM rate.');
  lines.push('- decode tok/s = (new tokens − 1) × batch / time from the first new token to the last (the prefill excluded). ' +
    '"of BW" = decode steps/s × float32 bytes of body + output projection / memory read bandwidth (above 100 % means caches helped).');
  lines.push(`- train tok/s: the median of the last ${TIMED_STEPS} of ${TRAIN_STEPS} steps (the first allocates the AdamW moments; on the tensorflow backend the second still runs ~1.5× slower while oneDNN warms up; single steps swing by ±30 % on a busy machine). LoRA: the same step over PEFT-style adapters ` +
    '(r 16, alpha 32, every projection; the base frozen; torch: peft). Peak RSS: Linux VmHWM of the process that ran the backend (each in its own process).');
  for (const r of report.results) {
    const errs = Object.entries(r.errors ?? {});
    if (errs.length) lines.push(`- ${r.backend} errors: ${errs.map(([k, v]) => `${k}: ${v}`).join('; ')}`);
    if (r.versions) lines.push(`- ${r.backend}: ${Object.entries(r.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  }
  if (report.greedy_agreement) lines.push(`- greedy tokens (batch 1) agreeing with torch, position by position: ${report.greedy_agreement}`);
  for (const n of report.notes) lines.push(`- ${n}`);
  lines.push(`- run time ${fmt(report.run_seconds)} s; command: \`node dist/benchmarks/run.js ${report.argv.join(' ')}\``);
  return lines.join('\n') + '\n';
}

interface Report {
  config: string;
  date: string;
  seed: number;
  argv: string[];
  args: { prefill: number; decode: number; batches: number[]; trainTokens: number };
  machine: Machine;
  limits: Limits | null;
  limits_error?: string;
  counts: ModelCounts;
  results: Array<BackendResult & { derived: Derived }>;
  greedy_agreement?: string;
  notes: string[];
  run_seconds: number;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const a = parseArgs(argv);
  if (a.worker === 'list') {
    console.log(JSON.stringify(await availableBackends()));
    return;
  }
  if (a.worker) return runWorker(a);

  const started = now();
  const bench = benchConfig(a.config);
  const notes: string[] = [];
  const config = new NemotronConfig(bench.fields);
  if (bench.gpuOnly) notes.push(`${bench.name} is sized for GPU sessions`);

  let backends: string[];
  if (a.backends) {
    backends = a.backends;
  } else {
    // Probed in a child process: native backends (tfjs-node) stay out of this one, which only makes the weights.
    const probe = spawnSync(process.execPath, [__filename, '--list-backends'], { encoding: 'utf8' });
    backends = probe.status === 0 ? JSON.parse(probe.stdout.trim().split('\n').pop()!) as string[] : ['cpu'];
    if (a.config !== 'tiny') {
      backends = backends.filter((b) => b !== 'cpu');
      notes.push('the cpu backend (plain JS, ~1 GFLOP/s) is left out unless asked for with --backends');
    }
  }
  await setBackend('cpu');

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `nemotron-bench-${a.config}-`));
  try {
    let t = now();
    const model = seededModel(config, a.seed);
    const counts = countParams(model);
    await model.savePretrained(dir);
    model.dispose();
    console.error(`bench: ${a.config}, ${(counts.total_params / 1e6).toFixed(1)} M params, weights saved to ${dir} in ${(now() - t).toFixed(1)} s`);
    const inputs = makeInputs(config, a);
    const inputsFile = path.join(dir, 'inputs.json');
    fs.writeFileSync(inputsFile, JSON.stringify(inputs));

    const python = venvPython(a);
    let limits: Limits | null = null;
    let limitsError: string | undefined;
    if (a.limits) {
      const py = python ?? 'python3';
      t = now();
      const l = measureLimits(py, bench.defaults?.limitsBytes ?? 1e9);
      if (typeof l === 'string') limitsError = l;
      else limits = l;
      console.error(`bench: machine limits ${limits ? `GEMM ${fmt(limits.gemm_gflops)} GFLOP/s, read ${fmt(limits.bandwidth_gbs, 2)} GB/s` : limitsError} (${(now() - t).toFixed(1)} s)`);
    } else {
      limitsError = 'skipped with --no-limits';
    }

    const results: BackendResult[] = [];
    for (const backend of backends) {
      t = now();
      console.error(`bench: ${backend} ...`);
      results.push(runJsBackend(a, backend, dir, inputsFile));
      console.error(`bench: ${backend} done in ${(now() - t).toFixed(1)} s`);
    }
    if (a.torch) {
      if (python) {
        t = now();
        console.error('bench: torch ...');
        results.push(runTorch(a, python, dir, inputsFile));
        console.error(`bench: torch done in ${(now() - t).toFixed(1)} s`);
      } else {
        notes.push(`torch skipped: no venv at ${path.resolve(a.venv)} (make it with scripts/reference-venv.sh)`);
        console.error(`bench: ${notes[notes.length - 1]}`);
      }
    }

    const torch = results.find((r) => r.backend === 'torch');
    let agreement: string | undefined;
    if (torch?.decode?.['1']) {
      const ref = torch.decode['1'].tokens;
      agreement = results.filter((r) => r !== torch && r.decode?.['1']).map((r) => {
        const toks = r.decode!['1'].tokens;
        let same = 0;
        while (same < ref.length && toks[same] === ref[same]) same++;
        return `${r.backend} ${same}/${ref.length}`;
      }).join(', ') || undefined;
    }

    const date = new Date().toISOString().slice(0, 10);
    const report: Report = {
      config: a.config, date, seed: a.seed, argv,
      args: { prefill: a.prefill, decode: a.decode, batches: a.batches, trainTokens: a.trainTokens },
      machine: machineInfo(), limits, limits_error: limitsError, counts,
      results: results.map((r) => ({ ...r, derived: derive(r, counts, limits) })),
      greedy_agreement: agreement, notes, run_seconds: now() - started,
    };
    fs.mkdirSync(a.out, { recursive: true });
    const base = path.join(a.out, `${a.config}-${date}`);
    const md = markdown(report);
    fs.writeFileSync(`${base}.json`, JSON.stringify(report, null, 2) + '\n');
    fs.writeFileSync(`${base}.md`, md);
    fs.writeFileSync(path.join(a.out, `latest-${a.config}.md`), md);
    console.log(md);
    console.error(`bench: wrote ${base}.json, ${base}.md and latest-${a.config}.md`);
    const failed = results.filter((r) => r.errors.run);
    if (failed.length) process.exitCode = 1;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.stack ?? e.message : e);
  process.exit(1);
});
