/**
 * The k-quants' reference quantizers are serial search loops (~2–4 M values/s a thread here): a multi-billion-value
 * model is quantized by a pool of worker threads, chunk by chunk, as llama-quantize spreads rows over its threads.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { quantizeValues } from './gguf-quantize';

type QuantType = Parameters<typeof quantizeValues>[0];

/** Values per chunk handed to a worker: a multiple of every block length (256). */
const CHUNK_VALUES = 1 << 18;
const WORKER = path.join(__dirname, 'gguf-quantize-worker.js');

/**
 * Each job's values quantized (`quantizeValues`), on `threads` worker threads (default: the machine's parallelism);
 * small totals, or one thread, run here. The bytes equal the single-threaded ones: blocks are independent.
 */
export async function quantizeInParallel(jobs: Array<{ type: QuantType; values: Float32Array }>, threads = os.availableParallelism()): Promise<Buffer[]> {
  const total = jobs.reduce((n, j) => n + j.values.length, 0);
  // Small totals and one thread run here, and so does a bundle without the worker's file.
  if (threads <= 1 || total <= 2 * CHUNK_VALUES || !fs.existsSync(WORKER)) return jobs.map((j) => quantizeValues(j.type, j.values));
  const chunks: Array<{ job: number; values: Float32Array }> = [];
  jobs.forEach((j, job) => {
    for (let start = 0; start < j.values.length; start += CHUNK_VALUES) chunks.push({ job, values: j.values.subarray(start, start + CHUNK_VALUES) });
  });
  const results = new Array<Uint8Array>(chunks.length);
  const workers = Array.from({ length: Math.min(threads, chunks.length) }, () => new Worker(WORKER));
  let next = 0;
  try {
    await Promise.all(workers.map((worker) => new Promise<void>((resolve, reject) => {
      const send = () => {
        if (next >= chunks.length) { resolve(); return; }
        const id = next++;
        const values = chunks[id].values.slice();
        worker.postMessage({ id, type: jobs[chunks[id].job].type, values }, [values.buffer]);
      };
      worker.on('message', ({ id, bytes }: { id: number; bytes: Uint8Array }) => { results[id] = bytes; send(); });
      worker.on('error', reject);
      send();
    })));
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return jobs.map((_, job) => Buffer.concat(chunks.flatMap((c, i) => (c.job === job ? [results[i]] : []))));
}
