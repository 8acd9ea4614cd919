/**
 * llama.cpp's split GGUF files (llama-gguf-split): a model's tensors spread over shards PREFIX-00001-of-0000N.gguf,
 * the metadata in the first, each shard carrying split.no / split.count / split.tensors.count. `GGUFFile.open` reads
 * them from the first shard; `splitGGUF` and `mergeGGUF` write them / join them as `llama-gguf-split --split` /
 * `--merge` do, byte for byte.
 */
import { GGUFFile, type GGUFMetaValue, refuseOverwrite, splitPath, writeGGUF } from './gguf';

/** Where a shard ends: after `maxTensors` tensors, or before the tensor that would take it past `maxBytes` of data. */
export type SplitLimit = { maxTensors: number; maxBytes?: undefined } | { maxBytes: number; maxTensors?: undefined };

/** llama-gguf-split's --split-max-size: a whole number of megabytes (M, 10⁶ bytes) or gigabytes (G, 10⁹). */
export function parseSplitSize(size: string): number {
  const m = /^(\d+)([MG])$/.exec(size);
  if (!m || Number(m[1]) <= 0) throw new Error(`split size ${size}: expected a positive whole number of M (10⁶ bytes) or G (10⁹ bytes), e.g. 2G`);
  return Number(m[1]) * (m[2] === 'M' ? 1e6 : 1e9);
}

/**
 * `llama-gguf-split --split` of `input` into shards `outputPrefix-0000i-of-0000n.gguf` (returned in order): tensors in
 * the file's order, a new shard after `maxTensors` of them or where the next would take the shard's data (each tensor
 * padded to 32 bytes) past `maxBytes`; the first shard with the input's metadata, every one with split.no,
 * split.tensors.count and split.count.
 */
export function splitGGUF(input: string, outputPrefix: string, limit: SplitLimit): string[] {
  const { maxTensors, maxBytes } = limit;
  if (maxTensors !== undefined ? !(Number.isInteger(maxTensors) && maxTensors >= 1) : !(maxBytes! > 0)) {
    throw new Error(`splitGGUF: ${maxTensors !== undefined ? `maxTensors ${maxTensors}` : `maxBytes ${maxBytes}`}: expected a positive number`);
  }
  const source = GGUFFile.open(input);
  try {
    if (Number(source.get('split.count') ?? 1) > 1) throw new Error(`splitGGUF: ${input} is split already (${source.get('split.count')} shards)`);
    const names = [...source.tensors.keys()];
    const shards: string[][] = [[]];
    let shardBytes = 0;
    names.forEach((name, i) => {
      const bytes = Math.ceil(source.tensors.get(name)!.byteLength / 32) * 32;
      const split = maxTensors !== undefined ? i > 0 && i % maxTensors === 0 : shardBytes + bytes > maxBytes!;
      if (split) {
        // llama-gguf-split refuses a shard left empty (a first tensor larger than the limit).
        if (!shards[shards.length - 1].length) throw new Error(`splitGGUF: ${name} alone (${bytes} bytes) is larger than ${maxBytes} bytes: a shard would hold no tensor`);
        shards.push([]);
        shardBytes = bytes;
      } else {
        shardBytes += bytes;
      }
      shards[shards.length - 1].push(name);
    });
    const metadata = [...source.rawMetadata].map(([key, raw]): [string, GGUFMetaValue] => [key, ['raw', raw]]);
    refuseOverwrite(source, shards.map((_, i) => splitPath(outputPrefix, i, shards.length)), 'splitGGUF');
    return shards.map((shard, i) => {
      const file = splitPath(outputPrefix, i, shards.length);
      // gguf_set_val appends (a key set again moves to the end): split.no, split.tensors.count, then split.count.
      writeGGUF(file, [...(i === 0 ? metadata : []), ['split.no', ['u16', i]], ['split.tensors.count', ['i32', names.length]],
        ['split.count', ['u16', shards.length]]], shard.map((name) => {
        const info = source.tensors.get(name)!;
        return { name, shape: info.shape, type: info.type, data: new Float32Array(0), read: () => source.readBytes(name) };
      }));
      return file;
    });
  } finally {
    source.close();
  }
}

/**
 * `llama-gguf-split --merge`: the shards of a split file (from its first) as one file — the first shard's metadata
 * with split.count set to 0 (read as unsplit), every shard's tensors in order.
 */
export function mergeGGUF(firstShard: string, output: string): void {
  const source = GGUFFile.open(firstShard);
  try {
    if (!(Number(source.get('split.count') ?? 0) >= 1)) throw new Error(`mergeGGUF: ${firstShard} is not a split file (no split.count)`);
    const metadata = [...source.rawMetadata].filter(([key]) => key !== 'split.count').map(([key, raw]): [string, GGUFMetaValue] => [key, ['raw', raw]]);
    refuseOverwrite(source, [output], 'mergeGGUF');
    // Tensor by tensor, as llama-gguf-split merges: a merged model is never in memory whole.
    writeGGUF(output, [...metadata, ['split.count', ['u16', 0]]], [...source.tensors.values()].map((info) => ({
      name: info.name, shape: info.shape, type: info.type, data: new Float32Array(0), read: () => source.readBytes(info.name),
    })));
  } finally {
    source.close();
  }
}
