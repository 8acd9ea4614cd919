/** A worker of quantizeInParallel: quantizes the chunks it is sent (gguf-quantize-pool.ts). */
import { parentPort } from 'worker_threads';
import { quantizeValues } from './gguf-quantize';

parentPort!.on('message', (job: { id: number; type: Parameters<typeof quantizeValues>[0]; values: Float32Array }) => {
  const bytes = quantizeValues(job.type, job.values);
  const copy = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length).slice();
  parentPort!.postMessage({ id: job.id, bytes: copy }, [copy.buffer]);
});
