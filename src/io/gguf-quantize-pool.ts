/**
 * The k-quants' reference quantizers are serial search loops (~2–4 M values/s a thread here): a multi-billion-value
 * model is quantized by a pool of worker threads, chunk by chunk, as llama-quantize spreads rows over its threads.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { quantizeRows } from './gguf-quantize-imatrix';

type QuantType = Parameters<typeof quantizeRows>[0];

/**
 * A tensor to quantize: its values (rows of `rowLength`) and, from an importance matrix, one weight per column for each
 * of its `importance.length / rowLength` slices of rows (the experts of a 3-D tensor, each its own slice).
 */
export interface QuantizeJob { type: QuantType; values: Float32Array; rowLength: number; importance?: Float32Array }

/** Values per chunk handed to a worker (whole rows; at least one). */
const CHUNK_VALUES = 1 << 18;
const WORKER = path.join(__dirname, 'gguf-quantize-worker.js');

/** A job's rows in chunks of whole rows, none crossing an importance slice, each with its slice's weights. */
function chunksOf(job: QuantizeJob): Array<{ values: Float32Array; importance?: Float32Array }> {
  const { values, rowLength, importance } = job;
  const rows = values.length / rowLength;
  const slices = importance ? importance.length / rowLength : 1;
  if (!Number.isInteger(rows) || !Number.isInteger(slices) || rows % slices !== 0) {
    throw new Error(`quantize: ${values.length} values with rows of ${rowLength} and ${importance?.length ?? 0} importance weights do not divide into whole rows and slices`);
  }
  const rowsPerSlice = rows / slices;
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_VALUES / rowLength));
  const chunks: Array<{ values: Float32Array; importance?: Float32Array }> = [];
  for (let slice = 0; slice < slices; slice++) {
    const weights = importance?.subarray(slice * rowLength, (slice + 1) * rowLength);
    for (let r = 0; r < rowsPerSlice; r += rowsPerChunk) {
      const first = slice * rowsPerSlice + r;
      const last = slice * rowsPerSlice + Math.min(rowsPerSlice, r + rowsPerChunk);
      chunks.push({ values: values.subarray(first * rowLength, last * rowLength), importance: weights });
    }
  }
  return chunks;
}

/**
 * Each job's values quantized (`quantizeRows`), on `threads` worker threads (default: the machine's parallelism);
 * small totals, or one thread, run here. The bytes equal the single-threaded ones: rows are independent.
 */
export async function quantizeInParallel(jobs: QuantizeJob[], threads = os.availableParallelism()): Promise<Buffer[]> {
  const chunks = jobs.flatMap((j, job) => chunksOf(j).map((c) => ({ job, ...c })));
  const total = jobs.reduce((n, j) => n + j.values.length, 0);
  const results = new Array<Uint8Array>(chunks.length);
  // Small totals and one thread run here, and so does a bundle without the worker's file.
  if (threads <= 1 || total <= 2 * CHUNK_VALUES || !fs.existsSync(WORKER)) {
    chunks.forEach((c, i) => { results[i] = quantizeRows(jobs[c.job].type, c.values, c.importance); });
  } else {
    const workers = Array.from({ length: Math.min(threads, chunks.length) }, () => new Worker(WORKER));
    let next = 0;
    try {
      await Promise.all(workers.map((worker) => new Promise<void>((resolve, reject) => {
        const send = () => {
          if (next >= chunks.length) { resolve(); return; }
          const id = next++;
          const values = chunks[id].values.slice();
          const importance = chunks[id].importance?.slice();
          worker.postMessage({ id, type: jobs[chunks[id].job].type, values, importance }, [values.buffer]);
        };
        worker.on('message', ({ id, bytes }: { id: number; bytes: Uint8Array }) => { results[id] = bytes; send(); });
        worker.on('error', reject);
        send();
      })));
    } finally {
      await Promise.all(workers.map((w) => w.terminate()));
    }
  }
  return jobs.map((_, job) => Buffer.concat(chunks.flatMap((c, i) => (c.job === job ? [results[i]] : []))));
}
