/**
 * A large GGUF tensor dequantized on every core (loading a k-quant model is mostly dequantizing: ~70–85 M values/s a
 * thread). `read` stays synchronous: this thread decodes chunks too, the workers write theirs straight into shared
 * memory and read the file through the same descriptor, and this thread waits (Atomics.wait) for the last of them.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { collectGarbage } from '../gc';
import { backendFloat32Array, readAll } from './safetensors';

/** Tensors of at least this many values are decoded in parallel; smaller ones are not worth the hand-off. */
export const PARALLEL_DECODE_VALUES = 1 << 22;
const CHUNK_VALUES = 1 << 20;
const WORKER = path.join(__dirname, 'gguf-decode-worker.js');

/** A tensor's stored bytes: `count` values of `type` (blocks of `blockValues` values in `blockBytes`) at `byteOffset` of `fd`. */
export interface DecodeSource { fd: number; path: string; byteOffset: number; type: string; count: number; blockValues: number; blockBytes: number }
export type Dequantize = (bytes: Uint8Array, type: string, count: number, out: Float32Array) => Float32Array;

/** What every thread shares for one tensor: control = [next chunk, chunks done, failed, error length]. */
export interface SharedDecode extends DecodeSource { control: Int32Array; out: Float32Array; error: Uint8Array }

/** Takes chunks (whole blocks) until none are left, decoding each into `out`; the first failure's message is kept. */
export function decodeChunks(job: SharedDecode, dequantize: Dequantize): void {
  const { control, out, count, blockValues, blockBytes } = job;
  const chunkValues = Math.max(1, Math.floor(CHUNK_VALUES / blockValues)) * blockValues;
  const chunks = Math.ceil(count / chunkValues);
  for (;;) {
    const chunk = Atomics.add(control, 0, 1);
    if (chunk >= chunks) return;
    try {
      if (Atomics.load(control, 2) === 0) {
        const first = chunk * chunkValues;
        const n = Math.min(chunkValues, count - first);
        const bytes = Buffer.alloc((n / blockValues) * blockBytes);
        readAll(job.fd, bytes, job.byteOffset + (first / blockValues) * blockBytes, job.path);
        dequantize(bytes, job.type, n, out.subarray(first, first + n));
      }
    } catch (e) {
      if (Atomics.compareExchange(control, 2, 0, 1) === 0) {
        const text = Buffer.from(String((e as Error)?.message ?? e)).subarray(0, job.error.length);
        job.error.set(text);
        Atomics.store(control, 3, text.length);
      }
    } finally {
      Atomics.add(control, 1, 1);
      Atomics.notify(control, 1);
    }
  }
}

const workers: Worker[] = [];

/** Up to `count` idle-waiting worker threads, started once per process; they do not keep it alive. */
function decodeWorkers(count: number): Worker[] {
  while (workers.length < count) {
    const worker = new Worker(WORKER);
    worker.unref();
    // A worker that fails leaves its chunks to the others (a chunk it took is waited for; see decodeInParallel).
    worker.on('error', () => workers.splice(workers.indexOf(worker), 1));
    workers.push(worker);
  }
  return workers.slice(0, count);
}

/** Bytes of shared buffers handed out since the collector last ran here. */
let sharedSinceCollection = 0;
const COLLECT_EVERY_BYTES = 2 ** 29;

/** The tensor's values, decoded by this thread and `threads − 1` workers, in a shared buffer. */
export function decodeInParallel(source: DecodeSource, threads: number, dequantize: Dequantize): Float32Array {
  // V8 does not weigh shared buffers when it decides to collect, so the ones a reader has dropped would pile up
  // (reading Minitron-4B's tensors one after another peaked at 14.8 GiB instead of 4.6): collected every 512 MiB.
  sharedSinceCollection += 4 * source.count;
  if (sharedSinceCollection > COLLECT_EVERY_BYTES) {
    collectGarbage();
    sharedSinceCollection = 4 * source.count;
  }
  const job: SharedDecode = {
    ...source, control: new Int32Array(new SharedArrayBuffer(16)), out: backendFloat32Array(source.count, true),
    error: new Uint8Array(new SharedArrayBuffer(1024)),
  };
  if (fs.existsSync(WORKER)) for (const worker of decodeWorkers(threads - 1)) worker.postMessage(job);
  decodeChunks(job, dequantize);
  const chunks = Math.ceil(source.count / (Math.max(1, Math.floor(CHUNK_VALUES / source.blockValues)) * source.blockValues));
  // Chunks a worker took are still being decoded; a worker that stops answering for two minutes is an error, not a hang.
  let seen = Atomics.load(job.control, 1);
  for (let idle = 0; seen < chunks;) {
    const result = Atomics.wait(job.control, 1, seen, 1000);
    const now = Atomics.load(job.control, 1);
    idle = result === 'timed-out' && now === seen ? idle + 1 : 0;
    if (idle > 120) throw new Error(`${source.path}: decoding a tensor on worker threads stalled at chunk ${now} of ${chunks}`);
    seen = now;
  }
  if (Atomics.load(job.control, 2) !== 0) throw new Error(Buffer.from(job.error.slice(0, Atomics.load(job.control, 3))).toString());
  return job.out;
}
