/** A worker of decodeInParallel: takes chunks of the tensors it is sent (gguf-decode-pool.ts). */
import { parentPort } from 'worker_threads';
import { collectGarbage } from '../gc';
import { dequantize } from './gguf';
import { type SharedDecode, decodeChunks } from './gguf-decode-pool';

parentPort!.on('message', (job: SharedDecode) => {
  decodeChunks(job, dequantize);
  // This thread's heap barely grows, so its collector would not run for a long time, and until it does its copy of
  // the job keeps the tensor's shared buffer (hundreds of MB) alive after the reader has dropped it. Collected once
  // this handler has returned, so that nothing here still holds the job.
  setImmediate(collectGarbage);
});
