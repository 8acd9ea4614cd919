/** Named model shapes for the benchmarks (run.ts --config NAME). */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import { NemotronConfigFields } from '../src/index';

export interface BenchConfig {
  name: string;
  description: string;
  /** Shapes handed to `new NemotronConfig(fields)`; the rest are transformers' defaults. */
  fields: Partial<NemotronConfigFields>;
  /** Too large for the 2-core CPU machines: listed for GPU sessions only. */
  gpuOnly?: boolean;
  /** Workload defaults for this config (flags override them). */
  defaults?: { prefill?: number; decode?: number; limitsBytes?: number };
}

export const BENCH_CONFIGS: Record<string, BenchConfig> = {
  tiny: {
    name: 'tiny',
    description: 'smoke test: 2 layers, hidden 64 (CI runs it)',
    fields: {
      vocabSize: 128, hiddenSize: 64, numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 128,
      numHiddenLayers: 2, maxPositionEmbeddings: 512,
    },
    // Small enough for CI's smoke test to finish in seconds.
    defaults: { prefill: 128, decode: 32, limitsBytes: 2.5e8 },
  },
  'minitron-small': {
    name: 'minitron-small',
    description: 'Minitron-like, ~170M parameters: 12 layers, hidden 1024, GQA 16/4 heads, vocab 32000',
    fields: {
      vocabSize: 32000, hiddenSize: 1024, numAttentionHeads: 16, numKeyValueHeads: 4, headDim: 64,
      intermediateSize: 3072, numHiddenLayers: 12, maxPositionEmbeddings: 4096,
    },
  },
  'minitron-4b': {
    name: 'minitron-4b',
    description: 'Minitron-4B shapes: 32 layers, hidden 3072, GQA 24/8 heads, head_dim 128, vocab 256000 (GPU sessions)',
    fields: {
      vocabSize: 256000, hiddenSize: 3072, numAttentionHeads: 24, numKeyValueHeads: 8, headDim: 128,
      intermediateSize: 9216, numHiddenLayers: 32, maxPositionEmbeddings: 4096,
    },
    gpuOnly: true,
  },
};

export function benchConfig(name: string): BenchConfig {
  const c = BENCH_CONFIGS[name];
  if (!c) throw new Error(`Unknown benchmark config ${JSON.stringify(name)}; expected one of ${Object.keys(BENCH_CONFIGS).join(', ')}`);
  return c;
}

export interface Machine {
  arch: string;
  cpu: string;
  cores: number;
  ram_bytes: number;
  os: string;
}

/** The machine a benchmark ran on, for its report. */
export function machineInfo(): Machine {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1].trim();
  } catch {
    // keep os.cpus()
  }
  let arch: string = os.arch();
  const uname = spawnSync('uname', ['-m'], { encoding: 'utf8' });
  if (uname.status === 0) arch = uname.stdout.trim();
  return { arch, cpu, cores: os.cpus().length, ram_bytes: os.totalmem(), os: `${os.type()} ${os.release()}` };
}
