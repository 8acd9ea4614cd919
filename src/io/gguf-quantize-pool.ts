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

interface QueuedChunk { type: QuantType; values: Float32Array; importance?: Float32Array; done: (bytes: Uint8Array) => void; fail: (e: Error) => void }

/**
 * Worker threads quantizing jobs chunk by chunk (`quantizeRows`): `quantize(job)` queues a job's chunks and resolves
 * with its bytes once they are all back, so that several jobs — the next tensors of a file — keep every thread busy.
 * With one thread, or without the worker's file (a bundle), jobs run here. The bytes equal the single-threaded ones:
 * rows are independent. `close()` ends the threads.
 */
export class QuantizePool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<Worker, QueuedChunk[]>();
  private readonly queue: QueuedChunk[] = [];
  private readonly inline: boolean;

  constructor(private readonly threads = os.availableParallelism()) {
    this.inline = threads <= 1 || !fs.existsSync(WORKER);
  }

  async quantize(job: QuantizeJob): Promise<Buffer> {
    const chunks = chunksOf(job);
    if (this.inline) return Buffer.concat(chunks.map((c) => quantizeRows(job.type, c.values, c.importance)));
    const parts = await Promise.all(chunks.map((c) => new Promise<Uint8Array>((done, fail) => {
      this.queue.push({ type: job.type, values: c.values, importance: c.importance, done, fail });
      this.dispatch();
    })));
    return Buffer.concat(parts);
  }

  /**
   * Hands queued chunks to workers, starting workers up to `threads`; each holds up to two, so that it starts the next
   * as soon as it sends one back, without waiting for this thread.
   */
  private dispatch(): void {
    while (this.queue.length) {
      if (this.workers.length < this.threads && !this.workers.some((w) => this.pending.get(w)!.length === 0)) this.start();
      const worker = this.workers.find((w) => this.pending.get(w)!.length < 2);
      if (!worker) return;
      const chunk = this.queue.shift()!;
      this.pending.get(worker)!.push(chunk);
      // Copied as it is sent (the copy's buffer moves to the worker), so that only the chunks being worked on are copies.
      const values = chunk.values.slice();
      worker.postMessage({ id: 0, type: chunk.type, values, importance: chunk.importance?.slice() }, [values.buffer]);
    }
  }

  private start(): void {
    const worker = new Worker(WORKER);
    const pending: QueuedChunk[] = [];
    this.workers.push(worker);
    this.pending.set(worker, pending);
    // A worker answers its chunks in the order they were sent.
    worker.on('message', ({ bytes }: { bytes: Uint8Array }) => {
      pending.shift()!.done(bytes);
      this.dispatch();
    });
    worker.on('error', (e) => { for (const chunk of pending.splice(0)) chunk.fail(e); });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** Each job's values quantized on `threads` worker threads (default: the machine's parallelism); small totals run here. */
export async function quantizeInParallel(jobs: QuantizeJob[], threads = os.availableParallelism()): Promise<Buffer[]> {
  const total = jobs.reduce((n, j) => n + j.values.length, 0);
  const pool = new QuantizePool(total <= 2 * CHUNK_VALUES ? 1 : threads);
  try {
    return await Promise.all(jobs.map((job) => pool.quantize(job)));
  } finally {
    await pool.close();
  }
}
