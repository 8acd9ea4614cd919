/** A worker of QuantizePool: decodes, checks and converts the chunks it is sent (gguf-quantize-pool.ts). */
import { parentPort } from 'worker_threads';
import { convertChunk } from './gguf';
import { type ChunkWork } from './gguf-quantize-pool';

parentPort!.on('message', (work: ChunkWork) => {
  let bytes: Uint8Array;
  try {
    bytes = convertChunk(work);
  } catch (e) {
    parentPort!.postMessage({ error: (e as Error).message });
    return;
  }
  const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
  parentPort!.postMessage({ bytes: own }, [own.buffer as ArrayBuffer]);
});
