/**
 * The k-quants' reference quantizers are serial search loops (~2–4 M values/s a thread here): a multi-billion-value
 * model is quantized by a pool of worker threads, chunk by chunk, as llama-quantize spreads rows over its threads.
 * A tensor of a GGUF file is not decoded here: each chunk's stored bytes are read when a worker is free for it and
 * decoded there, so that decoding runs on every thread and memory holds the chunks in flight, not the tensor.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';

/**
 * One chunk's work, the same on a worker and in this thread: `payload` (float32 values, or with `from` that type's
 * stored bytes of `count` values) checked and written in `type`; `first` is the chunk's first value in its tensor,
 * for the error that names a bad value.
 */
export interface ChunkWork {
  name: string; type: string; from?: string; payload: Uint8Array | Float32Array; first: number; count: number; importance?: Float32Array;
}
export type ConvertChunk = (work: ChunkWork) => Uint8Array;

/**
 * A tensor to write in `type`: its values in memory (rows of `rowLength`), or its stored bytes in type `stored.type`,
 * read by value range when their turn comes; and, from an importance matrix, one weight per column for each of its
 * `importance.length / rowLength` slices of rows (the experts of a 3-D tensor, each its own slice).
 */
export interface QuantizeJob {
  name: string; type: string; rowLength: number; count: number; importance?: Float32Array;
  values?: Float32Array;
  stored?: { type: string; read: (first: number, count: number) => Uint8Array };
}

/** Values per chunk handed to a worker (whole rows; at least one). */
const CHUNK_VALUES = 1 << 18;
const WORKER = path.join(__dirname, 'gguf-quantize-worker.js');

interface Chunk { job: QuantizeJob; first: number; count: number; importance?: Float32Array }

/** A job's rows in chunks of whole rows, none crossing an importance slice, each with its slice's weights. */
function chunksOf(job: QuantizeJob): Chunk[] {
  const { count, rowLength, importance } = job;
  const rows = count / rowLength;
  const slices = importance ? importance.length / rowLength : 1;
  if (!Number.isInteger(rows) || !Number.isInteger(slices) || rows % slices !== 0) {
    throw new Error(`quantize: ${job.name}: ${count} values with rows of ${rowLength} and ${importance?.length ?? 0} importance weights do not divide into whole rows and slices`);
  }
  const rowsPerSlice = rows / slices;
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_VALUES / rowLength));
  const chunks: Chunk[] = [];
  for (let slice = 0; slice < slices; slice++) {
    const weights = importance?.subarray(slice * rowLength, (slice + 1) * rowLength);
    for (let r = 0; r < rowsPerSlice; r += rowsPerChunk) {
      const first = (slice * rowsPerSlice + r) * rowLength;
      chunks.push({ job, first, count: Math.min(rowsPerSlice - r, rowsPerChunk) * rowLength, importance: weights });
    }
  }
  return chunks;
}

/** The chunk's input, made when it is sent: its values copied out of the tensor, or its stored bytes read. */
function workOf({ job, first, count, importance }: Chunk): ChunkWork {
  const payload = job.stored ? job.stored.read(first, count) : job.values!.slice(first, first + count);
  return { name: job.name, type: job.type, from: job.stored?.type, payload, first, count, importance };
}

interface QueuedChunk extends Chunk { done: (bytes: Uint8Array) => void; fail: (e: Error) => void }

/**
 * Worker threads converting jobs chunk by chunk (`convert`, gguf.ts's convertChunk): `quantize(job)` queues a job's
 * chunks and resolves with their bytes in order once they are all back, so that several jobs — the next tensors of a
 * file — keep every thread busy. With one thread, or without the worker's file (a bundle), jobs run here. The bytes
 * equal the single-threaded ones: rows are independent. `close()` ends the threads.
 */
export class QuantizePool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<Worker, QueuedChunk[]>();
  private readonly queue: QueuedChunk[] = [];
  private readonly inline: boolean;

  constructor(private readonly convert: ConvertChunk, private readonly threads = os.availableParallelism()) {
    this.inline = threads <= 1 || !fs.existsSync(WORKER);
  }

  async quantize(job: QuantizeJob): Promise<Uint8Array[]> {
    const chunks = chunksOf(job);
    if (this.inline) {
      // Still chunk by chunk, so that a stored tensor is never decoded whole.
      return chunks.map((c) => this.convert(workOf(c)));
    }
    return Promise.all(chunks.map((c) => new Promise<Uint8Array>((done, fail) => {
      this.queue.push({ ...c, done, fail });
      this.dispatch();
    })));
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
      let work: ChunkWork;
      try {
        work = workOf(chunk);
      } catch (e) {
        chunk.fail(e as Error);
        continue;
      }
      this.pending.get(worker)!.push(chunk);
      // The payload is the chunk's own (a copy, or bytes just read): its buffer moves to the worker.
      const owned = work.payload.byteOffset === 0 && work.payload.byteLength === work.payload.buffer.byteLength ? work.payload : work.payload.slice();
      worker.postMessage({ ...work, payload: owned, importance: work.importance?.slice() }, [owned.buffer as ArrayBuffer]);
    }
  }

  private start(): void {
    const worker = new Worker(WORKER);
    const pending: QueuedChunk[] = [];
    this.workers.push(worker);
    this.pending.set(worker, pending);
    // A worker answers its chunks in the order they were sent: bytes, or the message of what it refused.
    worker.on('message', ({ bytes, error }: { bytes?: Uint8Array; error?: string }) => {
      const chunk = pending.shift()!;
      if (error !== undefined) chunk.fail(new Error(error));
      else chunk.done(bytes!);
      this.dispatch();
    });
    worker.on('error', (e) => { for (const chunk of pending.splice(0)) chunk.fail(e); });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
