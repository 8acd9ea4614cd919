/**
 * llama-imatrix's importance matrix, computed by our own forward passes: calibration text in chunks of `chunkSize`
 * tokens (each starting with BOS where the tokenizer adds one), and for every weight matrix of the decoder layers the
 * sum over tokens of each input column's squared activation, with the token count (per expert for the routed
 * experts, counting the tokens routed to each). saveGGUF / quantizeGGUF weigh their quantization by it.
 */
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { setProductObserver } from '../../layers/weights';
import { nemotronGGUFName } from '../io/gguf';
import { ggufNameOf } from '../io/gguf-nemotron-h';
import type { ImatrixEntry, ImportanceMatrix } from '../io/gguf-quantize-imatrix';
import type { NemotronTokenizer } from '../tokenizer';

export interface ComputeImatrixOptions {
  /** Tokens a chunk (llama-imatrix's -c; default 512). */
  chunkSize?: number;
  /** At most this many chunks (default: all the text holds). */
  chunks?: number;
  /** The dataset's name, recorded in `imatrix.datasets` (llama-imatrix records the text file's path). */
  dataset?: string;
  /** Called after each chunk. */
  onChunk?: (done: number, total: number) => void;
}

/** Products with fewer rows than this are not collected (llama-imatrix ignores small batches). */
const SMALL_BATCH = 16;
const ASYNC_ONLY_BACKENDS = ['webgpu', 'webgl'];

/**
 * The importance matrix of `model` on `text` (tokenized by `tokenizer`, BOS and all) or on token ids as given: chunk
 * i holds tokens [i·chunkSize, (i + 1)·chunkSize), its first replaced by BOS when the tokenizer adds one; at least two
 * chunks' worth of tokens, as llama-imatrix requires. The output matrix (lm_head) is not collected (llama-imatrix's
 * default). Runs where tensors read synchronously (cpu, wasm, tensorflow).
 */
export function computeImatrix(model: NemotronForCausalLM | NemotronHForCausalLM, tokenizer: NemotronTokenizer | null, input: string | number[],
  options: ComputeImatrixOptions = {}): ImportanceMatrix {
  const chunkSize = options.chunkSize ?? 512;
  if (!Number.isInteger(chunkSize) || chunkSize < 1) throw new Error(`computeImatrix: chunkSize ${chunkSize}: expected a positive integer`);
  if (options.chunks !== undefined && !(Number.isInteger(options.chunks) && options.chunks >= 1)) throw new Error(`computeImatrix: chunks ${options.chunks}: expected a positive integer`);
  if (ASYNC_ONLY_BACKENDS.includes(tf.getBackend())) throw new Error(`computeImatrix reads activations synchronously, which the ${tf.getBackend()} backend cannot in Node: use cpu, wasm or tensorflow`);
  if (typeof input === 'string' && !tokenizer) throw new Error('computeImatrix: text needs a tokenizer (or pass token ids)');
  const tokens = typeof input === 'string' ? tokenizer!.encode(input) : input;
  if (tokens.length < 2 * chunkSize) {
    throw new Error(`computeImatrix: ${tokens.length} tokens; at least ${2 * chunkSize} (two chunks of ${chunkSize}) are needed, as llama-imatrix requires: give more text or a smaller chunkSize`);
  }
  const bos = tokenizer && tokenizer.addBosToken ? tokenizer.bosTokenId : null;
  const chunks = Math.min(Math.floor(tokens.length / chunkSize), options.chunks ?? Infinity);
  const names = new Map<number, string>();
  const nemotronH = model instanceof NemotronHForCausalLM;
  for (const [name, variable] of model.namedParameters()) {
    const gguf = nemotronH ? ggufNameOf(name) : nemotronGGUFName(name);
    if (gguf.startsWith('blk.') && gguf.endsWith('.weight') && variable.rank >= 2) names.set(variable.id, gguf);
  }
  const entries = new Map<string, ImatrixEntry>();
  setProductObserver((weight, x, expert = 0) => {
    const name = names.get(weight.id);
    if (!name) return;
    const columns = x.shape[x.rank - 1];
    const rows = x.size / columns;
    if (expert === 0 && weight.rank === 2 && rows < SMALL_BATCH) return;
    const squares = tf.tidy(() => tf.sum(tf.square(x.reshape([rows, columns])), 0));
    const sums = squares.dataSync() as Float32Array;
    squares.dispose();
    const experts = weight.rank === 3 ? weight.shape[0] : 1;
    let entry = entries.get(name);
    if (!entry) entries.set(name, entry = { sums: new Float32Array(experts * columns), counts: new Float32Array(experts) });
    for (let j = 0; j < columns; j++) entry.sums[expert * columns + j] += sums[j];
    entry.counts[expert] += rows;
  });
  const routing = nemotronH ? model.moeRouting : undefined;
  try {
    if (nemotronH) model.moeRouting = 'host';
    for (let c = 0; c < chunks; c++) {
      const ids = tokens.slice(c * chunkSize, (c + 1) * chunkSize);
      if (bos !== null) ids[0] = bos;
      if (nemotronH) {
        model.lastHiddenState({ inputIds: [ids] }).dispose();
      } else {
        const out = model.model.forward({ inputIds: [ids], useCache: false });
        out.lastHiddenState.dispose();
      }
      options.onChunk?.(c + 1, chunks);
    }
  } finally {
    setProductObserver(null);
    if (nemotronH) model.moeRouting = routing!;
  }
  return { entries, datasets: options.dataset !== undefined ? [options.dataset] : [], chunkCount: chunks, chunkSize };
}
