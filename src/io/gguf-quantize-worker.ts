/** A worker of QuantizePool: quantizes the chunks it is sent (gguf-quantize-pool.ts). */
import { parentPort } from 'worker_threads';
import { quantizeRows } from './gguf-quantize-imatrix';

parentPort!.on('message', (job: { id: number; type: Parameters<typeof quantizeRows>[0]; values: Float32Array; importance?: Float32Array }) => {
  const bytes = quantizeRows(job.type, job.values, job.importance);
  const copy = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length).slice();
  parentPort!.postMessage({ id: job.id, bytes: copy }, [copy.buffer]);
});
