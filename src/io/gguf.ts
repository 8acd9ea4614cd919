/**
 * GGUF (llama.cpp's checkpoint format): the header, the metadata, and the tensors dequantized to float32, as
 * transformers reads a GGUF file (from_pretrained(..., gguf_file=...)) — for Nemotron, as llama.cpp's
 * convert_hf_to_gguf.py writes it: llama.cpp tensor names, LayerNorm1P weights stored with their +1, the
 * configuration in `nemotron.*` keys and a SentencePiece vocabulary in `tokenizer.ggml.*`.
 *
 * Types read: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the k-quants Q2_K … Q6_K, and (gguf-iquants.ts) the
 * i-quants IQ1_S … IQ4_XS, TQ1_0 / TQ2_0, MXFP4 and NVFP4 (ggml's dequantize_row_*).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backendFloat32Array, f16BitsToFloat32, float32ArrayToBf16, float32ArrayToF16, halfBytesToFloat32, readAll, writeAll } from './safetensors';
import { GGML_WRITE_TYPES, type GGMLWriteType, type GGUFQuantMix, QUANT_MIXES, type TensorTypeOverrides, compareTensorNames, isLlamaQuantizeMix, quantizationMix, quantizationMixMetadata } from './gguf-quantize';
import { type ImportanceMatrix, importanceOf, quantizeRows } from './gguf-quantize-imatrix';
import { type ChunkWork, QuantizePool } from './gguf-quantize-pool';
import { PARALLEL_DECODE_VALUES, decodeInParallel } from './gguf-decode-pool';
export { quantizeQ4_0, quantizeQ8_0 } from './gguf-quantize';
import { I_QUANT_TYPES, dequantizeIQuantBlock } from './gguf-iquants';

const GGUF_MAGIC = 0x46554747; // "GGUF", little-endian

/** ggml types: [name, values per block, bytes per block]. */
const TYPES: Record<number, [string, number, number]> = {
  0: ['F32', 1, 4], 1: ['F16', 1, 2], 2: ['Q4_0', 32, 18], 3: ['Q4_1', 32, 20], 6: ['Q5_0', 32, 22], 7: ['Q5_1', 32, 24],
  8: ['Q8_0', 32, 34], 10: ['Q2_K', 256, 84], 11: ['Q3_K', 256, 110], 12: ['Q4_K', 256, 144], 13: ['Q5_K', 256, 176],
  14: ['Q6_K', 256, 210], 30: ['BF16', 1, 2],
  ...Object.fromEntries(I_QUANT_TYPES.map(([name, id, values, bytes]) => [id, [name, values, bytes]])),
};

export type GGUFValue = number | bigint | boolean | string | GGUFValue[];

export interface GGUFOpenOptions {
  /** Threads that dequantize a large tensor (this one and decodeThreads − 1 workers; default: the machine's parallelism). */
  decodeThreads?: number;
}

export interface GGUFTensorInfo {
  name: string;
  /** numpy/torch order (GGUF stores the fastest dimension first; this is reversed). */
  shape: number[];
  /** ggml type name (Q4_K, F16, …). */
  type: string;
  /** Absolute offset of the data in the file, and its length. */
  byteOffset: number;
  byteLength: number;
  /** The shard holding it, in a split file (0: the first). */
  shard?: number;
}

/** The shortest decimal that reads back as the same float32 (a stored 1e-5 is 1e-5, not 9.99999974e-6). */
function shortestFloat32(v: number): number {
  for (let digits = 6; digits < 10; digits++) {
    const shorter = parseFloat(v.toPrecision(digits));
    if (Math.fround(shorter) === v) return shorter;
  }
  return v;
}

/** Whether a path is a GGUF file (fromPretrained then reads it as llama.cpp wrote it). */
export function isGGUF(file: string): boolean {
  return file.toLowerCase().endsWith('.gguf') && fs.existsSync(file) && fs.statSync(file).isFile();
}

/** llama.cpp's name of shard `index` (from 0) of `count` (llama_split_path): PREFIX-00001-of-00003.gguf. */
export function splitPath(prefix: string, index: number, count: number): string {
  return `${prefix}-${String(index + 1).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.gguf`;
}

/**
 * A GGUF file opened for reading: metadata at once, tensors on demand. A split model (llama-gguf-split's shards,
 * `split.count` > 1) opens from its first shard: the metadata is the first shard's, the tensors every shard's.
 */
export class GGUFFile {
  readonly version: number;
  readonly metadata = new Map<string, GGUFValue>();
  /** Each metadata entry's stored bytes (its type and value), to copy it as written (llama-quantize's gguf_set_kv). */
  readonly rawMetadata = new Map<string, Buffer>();
  readonly tensors = new Map<string, GGUFTensorInfo>();
  private readonly fd: number;
  /** The other shards of a split file, in order. */
  private readonly shards: GGUFFile[] = [];

  /** The files of the other shards of a split file, in order (none for one file). */
  get shardPaths(): string[] {
    return this.shards.map((shard) => shard.path);
  }

  /** Threads that decode a large tensor in `read` (default: the machine's parallelism). */
  readonly decodeThreads: number;

  private constructor(readonly path: string, shardOf?: { index: number; count: number }, { decodeThreads = os.availableParallelism() }: GGUFOpenOptions = {}) {
    if (!(Number.isInteger(decodeThreads) && decodeThreads >= 1)) throw new Error(`GGUFFile.open: decodeThreads ${decodeThreads}: expected a positive integer`);
    this.decodeThreads = decodeThreads;
    this.fd = fs.openSync(path, 'r');
    try {
      const size = fs.fstatSync(this.fd).size;
      // The header, metadata and tensor table come first; read a growing prefix until they parse.
      let prefix = Math.min(size, 1 << 20);
      for (;;) {
        const buffer = Buffer.alloc(prefix);
        fs.readSync(this.fd, buffer, 0, prefix, 0);
        try {
          this.version = this.parse(buffer, size);
          break;
        } catch (e) {
          if (!(e instanceof RangeError) || prefix >= size) throw e instanceof RangeError ? new Error(`${path}: the GGUF header runs past the end of the file`) : e;
          prefix = Math.min(size, prefix * 4);
        }
      }
      const count = Number(this.metadata.get('split.count') ?? 0);
      const index = Number(this.metadata.get('split.no') ?? 0);
      if (shardOf) {
        if (index !== shardOf.index || count !== shardOf.count) throw new Error(`${path}: split.no ${index} of ${count}, but its name says shard ${shardOf.index + 1} of ${shardOf.count}`);
      } else if (count > 1) {
        this.openShards(index, count);
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  static open(path: string, options: GGUFOpenOptions = {}): GGUFFile {
    return new GGUFFile(path, undefined, options);
  }

  /** The shards after this first one, named as llama.cpp names them, their tensors merged in. */
  private openShards(index: number, count: number): void {
    const suffix = /-(\d{5})-of-(\d{5})\.gguf$/.exec(this.path);
    if (index !== 0) {
      const first = suffix ? splitPath(this.path.slice(0, suffix.index), 0, count) : 'its first shard';
      throw new Error(`${this.path} is shard ${index + 1} of ${count} of a split model: open ${first}`);
    }
    if (!suffix || Number(suffix[1]) !== 1 || Number(suffix[2]) !== count) {
      throw new Error(`${this.path} is the first of ${count} shards but not named PREFIX-00001-of-${String(count).padStart(5, '0')}.gguf, so its other shards cannot be found`);
    }
    const prefix = this.path.slice(0, suffix.index);
    for (let i = 1; i < count; i++) {
      const file = splitPath(prefix, i, count);
      if (!fs.existsSync(file)) throw new Error(`${this.path} is split into ${count} shards; ${file} is missing`);
      const shard = new GGUFFile(file, { index: i, count });
      this.shards.push(shard);
      for (const [name, info] of shard.tensors) {
        if (this.tensors.has(name)) throw new Error(`${file}: tensor ${name} is in an earlier shard too`);
        this.tensors.set(name, { ...info, shard: i });
      }
    }
    const expected = Number(this.metadata.get('split.tensors.count') ?? this.tensors.size);
    if (expected !== this.tensors.size) throw new Error(`${this.path}: the ${count} shards hold ${this.tensors.size} tensors; split.tensors.count says ${expected}`);
  }

  private parse(buffer: Buffer, fileSize: number): number {
    let at = 0;
    const u32 = () => { const v = buffer.readUInt32LE(at); at += 4; return v; };
    const u64 = () => { const v = buffer.readBigUInt64LE(at); at += 8; return Number(v); };
    const str = () => { const n = u64(); if (at + n > buffer.length) throw new RangeError('string'); const s = buffer.toString('utf8', at, at + n); at += n; return s; };
    const value = (type: number): GGUFValue => {
      switch (type) {
        case 0: return buffer.readUInt8(at++);
        case 1: return buffer.readInt8(at++);
        case 2: { const v = buffer.readUInt16LE(at); at += 2; return v; }
        case 3: { const v = buffer.readInt16LE(at); at += 2; return v; }
        case 4: return u32();
        case 5: { const v = buffer.readInt32LE(at); at += 4; return v; }
        case 6: { const v = buffer.readFloatLE(at); at += 4; return shortestFloat32(v); }
        case 7: return buffer.readUInt8(at++) !== 0;
        case 8: return str();
        case 9: {
          const itemType = u32();
          const count = u64();
          return Array.from({ length: count }, () => value(itemType));
        }
        case 10: { const v = buffer.readBigUInt64LE(at); at += 8; return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v; }
        case 11: { const v = buffer.readBigInt64LE(at); at += 8; return Number(v); }
        case 12: { const v = buffer.readDoubleLE(at); at += 8; return v; }
        default: throw new Error(`${this.path}: unknown GGUF metadata value type ${type}`);
      }
    };
    if (buffer.length < 24 || buffer.readUInt32LE(0) !== GGUF_MAGIC) throw new Error(`${this.path} is not a GGUF file (no "GGUF" magic)`);
    at = 4;
    const version = u32();
    if (version < 2 || version > 3) throw new Error(`${this.path}: GGUF version ${version} is not supported (2 and 3 are)`);
    const tensorCount = u64();
    const kvCount = u64();
    for (let i = 0; i < kvCount; i++) {
      const key = str();
      const start = at;
      this.metadata.set(key, value(u32()));
      this.rawMetadata.set(key, Buffer.from(buffer.subarray(start, at)));
    }
    const infos: Array<{ name: string; dims: number[]; type: number; offset: number }> = [];
    for (let i = 0; i < tensorCount; i++) {
      const name = str();
      const dims = Array.from({ length: u32() }, () => u64());
      infos.push({ name, dims, type: u32(), offset: u64() });
    }
    const alignment = Number(this.metadata.get('general.alignment') ?? 32);
    const dataStart = Math.ceil(at / alignment) * alignment;
    for (const { name, dims, type, offset } of infos) {
      const known = TYPES[type];
      if (!known) throw new Error(`${this.path}: tensor ${name} has ggml type ${type}, which is not supported (${Object.values(TYPES).map(([n]) => n).join(', ')})`);
      const [typeName, blockValues, blockBytes] = known;
      const count = dims.reduce((a, b) => a * b, 1);
      if (count % blockValues !== 0) throw new Error(`${this.path}: tensor ${name} (${typeName}) has ${count} values, not whole blocks of ${blockValues}`);
      const byteLength = (count / blockValues) * blockBytes;
      const byteOffset = dataStart + offset;
      if (byteOffset + byteLength > fileSize) throw new Error(`${this.path}: tensor ${name} runs past the end of the file`);
      this.tensors.set(name, { name, shape: dims.slice().reverse(), type: typeName, byteOffset, byteLength });
    }
    return version;
  }

  /** A metadata value, or undefined. */
  get(key: string): GGUFValue | undefined {
    return this.metadata.get(key);
  }

  /** A tensor's stored bytes. */
  readBytes(name: string): Buffer {
    const info = this.tensors.get(name);
    if (!info) throw new Error(`${this.path} has no tensor ${name}`);
    return this.readRange(name, 0, info.byteLength);
  }

  /** `length` of a tensor's stored bytes from `offset` (in a buffer of their own). */
  readRange(name: string, offset: number, length: number): Buffer {
    const info = this.tensors.get(name);
    if (!info) throw new Error(`${this.path} has no tensor ${name}`);
    if (!(Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 && offset + length <= info.byteLength)) {
      throw new Error(`${this.path}: bytes ${offset}..${offset + length} of tensor ${name}: it has ${info.byteLength}`);
    }
    const bytes = Buffer.alloc(length);
    readAll(info.shard ? this.shards[info.shard - 1].fd : this.fd, bytes, info.byteOffset + offset, this.path);
    return bytes;
  }

  /**
   * A tensor's values as float32, in its (numpy-order) shape. A large one is decoded on `decodeThreads` threads (in a
   * SharedArrayBuffer), a small one here.
   */
  read(name: string): { shape: number[]; data: Float32Array } {
    const info = this.tensors.get(name);
    if (!info) throw new Error(`${this.path} has no tensor ${name}`);
    const count = info.shape.reduce((a, b) => a * b, 1);
    if (count >= PARALLEL_DECODE_VALUES && this.decodeThreads > 1) {
      const [, blockValues, blockBytes] = Object.values(TYPES).find(([n]) => n === info.type)!;
      const file = info.shard ? this.shards[info.shard - 1] : this;
      const source = { fd: file.fd, path: file.path, byteOffset: info.byteOffset, type: info.type, count, blockValues, blockBytes };
      return { shape: info.shape, data: decodeInParallel(source, this.decodeThreads, dequantize) };
    }
    return { shape: info.shape, data: dequantize(this.readBytes(name), info.type, count) };
  }

  close(): void {
    for (const shard of this.shards) shard.close();
    fs.closeSync(this.fd);
  }
}

/** The stored size of `count` values of ggml type `type` (whole blocks). */
export function storedBytes(type: string, count: number): number {
  const [, blockValues, blockBytes] = Object.values(TYPES).find(([n]) => n === type) ?? [];
  if (!blockValues || !blockBytes || count % blockValues !== 0) throw new Error(`${count} values of ggml type ${type} are not whole blocks of a known type`);
  return (count / blockValues) * blockBytes;
}

/** `count` values of ggml type `type` from their stored bytes (ggml's dequantize_row_*). */
export function dequantize(bytes: Uint8Array, type: string, count: number, out: Float32Array = backendFloat32Array(count)): Float32Array {
  if (out.length !== count) throw new Error(`dequantize: ${count} values into an array of ${out.length}`);
  if (type === 'F16' || type === 'BF16') return halfBytesToFloat32(bytes, count, type === 'BF16', out);
  if (type === 'F32') {
    // A byte copy (little-endian hosts, as Node's are): the bytes may start at any offset.
    new Uint8Array(out.buffer, out.byteOffset, 4 * count).set(bytes.subarray(0, 4 * count));
    return out;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const half = (at: number) => f16BitsToFloat32(view.getUint16(at, true));
  const signed = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const [, blockValues, blockBytes] = Object.values(TYPES).find(([n]) => n === type) ?? [];
  if (!blockValues || !blockBytes) throw new Error(`dequantize: unknown ggml type ${type}`);
  const blocks = count / blockValues;
  // One loop a type, writing `out` at the block's offset `o` (p: the block's first byte): a type switch, a subarray and
  // a closure a block cost as much as decoding a Q8_0 block.
  switch (type) {
    case 'Q8_0':
      for (let b = 0, p = 0, o = 0; b < blocks; b++, p += blockBytes, o += 32) {
        const d = half(p);
        for (let j = 0; j < 32; j++) out[o + j] = signed[p + 2 + j] * d;
      }
      break;
    case 'Q4_0': case 'Q4_1': {
      const qs = type === 'Q4_1' ? 4 : 2;
      const offset = type === 'Q4_1' ? 0 : 8;
      for (let b = 0, p = 0, o = 0; b < blocks; b++, p += blockBytes, o += 32) {
        const d = half(p);
        const m = type === 'Q4_1' ? half(p + 2) : 0;
        for (let j = 0; j < 16; j++) {
          out[o + j] = ((bytes[p + qs + j] & 0xf) - offset) * d + m;
          out[o + j + 16] = ((bytes[p + qs + j] >> 4) - offset) * d + m;
        }
      }
      break;
    }
    case 'Q5_0': case 'Q5_1': {
      const hAt = type === 'Q5_1' ? 4 : 2;
      const offset = type === 'Q5_1' ? 0 : 16;
      for (let b = 0, p = 0, o = 0; b < blocks; b++, p += blockBytes, o += 32) {
        const d = half(p);
        const m = type === 'Q5_1' ? half(p + 2) : 0;
        const qh = view.getUint32(p + hAt, true);
        for (let j = 0; j < 16; j++) {
          const low = ((qh >>> j) << 4) & 0x10;
          const high = (qh >>> (j + 12)) & 0x10;
          out[o + j] = (((bytes[p + hAt + 4 + j] & 0xf) | low) - offset) * d + m;
          out[o + j + 16] = (((bytes[p + hAt + 4 + j] >> 4) | high) - offset) * d + m;
        }
      }
      break;
    }
    case 'Q2_K':
      // scales[16], qs[64], d, dmin
      for (let b = 0, p = 0, o = 0; b < blocks; b++, p += blockBytes, o += 256) {
        const d = half(p + 80);
        const dmin = half(p + 82);
        let is = 0;
        let at = o;
        for (let n = 0; n < 256; n += 128) {
          const qs = p + 16 + n / 4;
          for (let shift = 0; shift < 8; shift += 2) {
            for (let half16 = 0; half16 <= 16; half16 += 16) {
              const sc = bytes[p + is++];
              const dl = d * (sc & 0xf);
              const ml = dmin * (sc >> 4);
              for (let l = 0; l < 16; l++) out[at++] = dl * ((bytes[qs + half16 + l] >> shift) & 3) - ml;
            }
          }
        }
      }
      break;
    case 'Q3_K': {
      // hmask[32], qs[64], scales[12], d; the 16 6-bit scales unpacked as ggml does (four uint32s of int8s).
      const [k1, k2] = [0x03030303, 0x0f0f0f0f];
      const aux = new Int32Array(4);
      for (let b = 0, p = 0, o = 0; b < blocks; b++, p += blockBytes, o += 256) {
        const d = half(p + 108);
        const [r0, r1, r2] = [view.getUint32(p + 96, true), view.getUint32(p + 100, true), view.getUint32(p + 104, true)];
        aux[0] = (r0 & k2) | (((r2 >>> 0) & k1) << 4);
        aux[1] = (r1 & k2) | (((r2 >>> 2) & k1) << 4);
        aux[2] = ((r0 >>> 4) & k2) | (((r2 >>> 4) & k1) << 4);
        aux[3] = ((r1 >>> 4) & k2) | (((r2 >>> 6) & k1) << 4);
        let is = 0;
        let at = o;
        let bit = 0;
        for (let n = 0; n < 256; n += 128) {
          const qs = p + 32 + n / 4;
          for (let shift = 0; shift < 8; shift += 2) {
            for (let half16 = 0; half16 <= 16; half16 += 16) {
              const scale = ((aux[is >> 2] >>> (8 * (is & 3))) & 0xff) << 24 >> 24; // int8
              is++;
              const dl = d * (scale - 32);
              for (let l = 0; l < 16; l++) {
                const low = (bytes[qs + half16 + l] >> shift) & 3;
                // 4 where the high-mask bit is clear, without a branch on it.
                out[at++] = dl * (low - (4 - (((bytes[p + half16 + l] >> bit) & 1) << 2)));
              }
            }
            bit++;
          }
        }
      }
      break;
    }
    case 'Q4_K': case 'Q5_K': {
      // d, dmin, scales[12], (qh[32] for Q5_K), qs[128].
      const five = type === 'Q5_K';
      for (let b = 0, p = 0, o = 0; b < blocks; b++, p += blockBytes, o += 256) {
        const d = half(p);
        const dmin = half(p + 2);
        const sc = p + 4;
        const qh = p + 16;
        let ql = p + (five ? 48 : 16);
        let at = o;
        for (let is = 0; is < 8; is += 2) {
          let s1: number, m1: number, s2: number, m2: number;
          if (is < 4) {
            s1 = bytes[sc + is] & 63; m1 = bytes[sc + is + 4] & 63;
            s2 = bytes[sc + is + 1] & 63; m2 = bytes[sc + is + 5] & 63;
          } else {
            s1 = (bytes[sc + is + 4] & 0xf) | ((bytes[sc + is - 4] >> 6) << 4); m1 = (bytes[sc + is + 4] >> 4) | ((bytes[sc + is] >> 6) << 4);
            s2 = (bytes[sc + is + 5] & 0xf) | ((bytes[sc + is - 3] >> 6) << 4); m2 = (bytes[sc + is + 5] >> 4) | ((bytes[sc + is + 1] >> 6) << 4);
          }
          const d1 = d * s1;
          const o1 = dmin * m1;
          const d2 = d * s2;
          const o2 = dmin * m2;
          if (five) {
            // The fifth bit shifted into place rather than tested: a branch on random bits mispredicts half the time.
            for (let l = 0; l < 32; l++) out[at + l] = d1 * ((bytes[ql + l] & 0xf) + (((bytes[qh + l] >> is) & 1) << 4)) - o1;
            for (let l = 0; l < 32; l++) out[at + 32 + l] = d2 * ((bytes[ql + l] >> 4) + (((bytes[qh + l] >> (is + 1)) & 1) << 4)) - o2;
          } else {
            for (let l = 0; l < 32; l++) out[at + l] = d1 * (bytes[ql + l] & 0xf) - o1;
            for (let l = 0; l < 32; l++) out[at + 32 + l] = d2 * (bytes[ql + l] >> 4) - o2;
          }
          at += 64;
          ql += 32;
        }
      }
      break;
    }
    case 'Q6_K':
      // ql[128], qh[64], scales int8[16], d
      for (let b = 0, p = 0, o0 = 0; b < blocks; b++, p += blockBytes, o0 += 256) {
        const d = half(p + 208);
        for (let n = 0; n < 2; n++) {
          const ql = p + 64 * n;
          const qh = p + 128 + 32 * n;
          const sc = p + 192 + 8 * n;
          const o = o0 + 128 * n;
          for (let l = 0; l < 32; l++) {
            const is = l >> 4;
            const h = bytes[qh + l];
            const a = bytes[ql + l];
            const c = bytes[ql + l + 32];
            out[o + l] = d * signed[sc + is] * (((a & 0xf) | ((h & 3) << 4)) - 32);
            out[o + l + 32] = d * signed[sc + is + 2] * (((c & 0xf) | (((h >> 2) & 3) << 4)) - 32);
            out[o + l + 64] = d * signed[sc + is + 4] * (((a >> 4) | (((h >> 4) & 3) << 4)) - 32);
            out[o + l + 96] = d * signed[sc + is + 6] * (((c >> 4) | (((h >> 6) & 3) << 4)) - 32);
          }
        }
      }
      break;
    default:
      for (let b = 0, p = 0, o = 0; b < blocks; b++, p += blockBytes, o += blockValues) dequantizeIQuantBlock(type, bytes, view, p, out.subarray(o, o + blockValues));
  }
  return out;
}

/** llama.cpp's tensor names for a Nemotron layer, by the HF module they hold. */
const LAYER_NAMES: Array<[string, string]> = [
  ['attn_norm', 'input_layernorm'], ['ffn_norm', 'post_attention_layernorm'], ['attn_q', 'self_attn.q_proj'], ['attn_k', 'self_attn.k_proj'],
  ['attn_v', 'self_attn.v_proj'], ['attn_output', 'self_attn.o_proj'], ['ffn_up', 'mlp.up_proj'], ['ffn_down', 'mlp.down_proj'],
];

const TOP_NAMES = new Map<string, string>([['model.embed_tokens.weight', 'token_embd.weight'], ['model.norm.weight', 'output_norm.weight'],
  ['model.norm.bias', 'output_norm.bias'], ['lm_head.weight', 'output.weight']]);

/** llama.cpp's name of a Nemotron causal LM's tensor (HF name `model.layers.0.self_attn.q_proj.weight` → `blk.0.attn_q.weight`). */
export function nemotronGGUFName(hf: string): string {
  if (TOP_NAMES.has(hf)) return TOP_NAMES.get(hf)!;
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(hf);
  const module = m && LAYER_NAMES.find(([, h]) => h === m[2]);
  if (!m || !module) throw new Error(`writeNemotronGGUF: ${hf} is not a weight of a Nemotron causal LM`);
  return `blk.${m[1]}.${module[0]}.${m[3]}`;
}

/** The HF name of a llama.cpp Nemotron tensor name, or null for one that is not a weight of the model. */
export function hfNameOfGGUF(name: string): string | null {
  const top: Record<string, string> = {
    'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight': 'model.norm.weight', 'output_norm.bias': 'model.norm.bias',
    'output.weight': 'lm_head.weight',
  };
  if (top[name]) return top[name];
  const m = /^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$/.exec(name);
  const module = m && LAYER_NAMES.find(([g]) => g === m[2]);
  return m && module ? `model.layers.${m[1]}.${module[1]}.${m[3]}` : null;
}

/**
 * A Nemotron GGUF (as llama.cpp's convert_hf_to_gguf.py writes one) read as a checkpoint: config.json's fields from
 * the `nemotron.*` and `tokenizer.ggml.*` metadata, and the weights under their HF names, dequantized, with the +1
 * that llama.cpp adds to LayerNorm1P's weights taken off again (as transformers' NemotronTensorProcessor does).
 */
export class NemotronGGUF {
  readonly dir: string;
  readonly files: string[];
  readonly file: GGUFFile;
  private readonly byHfName = new Map<string, GGUFTensorInfo>();

  private constructor(path: string) {
    this.file = GGUFFile.open(path);
    this.dir = path;
    this.files = [path];
    const architecture = this.file.get('general.architecture');
    if (architecture !== 'nemotron') {
      this.file.close();
      const hint = typeof architecture === 'string' && architecture.startsWith('nemotron_h') ? ': a NemotronH GGUF, which NemotronHForCausalLM reads' : '';
      throw new Error(`${path}: general.architecture is ${JSON.stringify(architecture)}, expected "nemotron" (a Nemotron or Minitron GGUF)${hint}`);
    }
    for (const info of this.file.tensors.values()) {
      const hf = hfNameOfGGUF(info.name);
      if (hf === null) {
        this.file.close();
        throw new Error(`${path}: tensor ${info.name} is not one of a Nemotron model's (llama.cpp names: token_embd, blk.N.attn_q, …)`);
      }
      this.byHfName.set(hf, info);
    }
  }

  static open(path: string): NemotronGGUF {
    return new NemotronGGUF(path);
  }

  /** config.json as transformers would write it for this model. */
  configJson(): Record<string, unknown> {
    const meta = (key: string) => this.file.get(`nemotron.${key}`);
    const num = (key: string, fallback?: number): number => {
      const v = meta(key);
      const value = Array.isArray(v) ? v[0] : v;
      if (typeof value === 'number') return value;
      if (fallback !== undefined) return fallback;
      throw new Error(`${this.dir}: the GGUF metadata has no nemotron.${key}`);
    };
    const tokens = this.file.get('tokenizer.ggml.tokens');
    const hidden = num('embedding_length');
    const heads = num('attention.head_count');
    const headDim = num('attention.key_length', hidden / heads);
    const rotary = meta('rope.dimension_count');
    const scaling = meta('rope.scaling.type');
    const id = (key: string) => (typeof this.file.get(`tokenizer.ggml.${key}`) === 'number' ? this.file.get(`tokenizer.ggml.${key}`) : undefined);
    return {
      model_type: 'nemotron', architectures: ['NemotronForCausalLM'],
      vocab_size: num('vocab_size', Array.isArray(tokens) ? tokens.length : undefined),
      hidden_size: hidden, intermediate_size: num('feed_forward_length'), num_hidden_layers: num('block_count'),
      num_attention_heads: heads, num_key_value_heads: num('attention.head_count_kv', heads), head_dim: headDim,
      max_position_embeddings: num('context_length'), hidden_act: 'relu2',
      norm_eps: num('attention.layer_norm_epsilon', num('attention.layer_norm_rms_epsilon', 1e-5)),
      rope_theta: num('rope.freq_base', 10000),
      partial_rotary_factor: typeof rotary === 'number' ? rotary / headDim : 0.5,
      ...(scaling === 'linear' ? { rope_scaling: { rope_type: 'linear', factor: num('rope.scaling.factor') } } : {}),
      tie_word_embeddings: !this.byHfName.has('lm_head.weight'),
      attention_bias: this.byHfName.has('model.layers.0.self_attn.q_proj.bias'),
      mlp_bias: this.byHfName.has('model.layers.0.mlp.up_proj.bias'),
      bos_token_id: id('bos_token_id'), eos_token_id: id('eos_token_id'), pad_token_id: id('padding_token_id'),
    };
  }

  names(): string[] {
    return [...this.byHfName.keys()].sort();
  }

  has(name: string): boolean {
    return this.byHfName.has(name);
  }

  info(name: string): { name: string; shape: number[]; file: string; byteOffset: number; byteLength: number; dtype: 'F32' } {
    const info = this.tensor(name);
    return { name, shape: info.shape, file: this.dir, byteOffset: info.byteOffset, byteLength: info.byteLength, dtype: 'F32' };
  }

  read(name: string): { dtype: 'float32'; shape: number[]; data: Float32Array } {
    const { shape, data } = this.file.read(this.tensor(name).name);
    // LayerNorm1P's weight: llama.cpp stores w + 1.
    if (/norm\.weight$/.test(name)) for (let i = 0; i < data.length; i++) data[i] = Math.fround(data[i] - 1);
    return { dtype: 'float32', shape, data };
  }

  totalBytes(): number {
    return [...this.byHfName.values()].reduce((n, t) => n + t.byteLength, 0);
  }

  /** A GGUF is one file: no index. */
  readonly indexFile = null;

  /** The ggml types of the tensors as stored (Q4_K, F32, …). */
  dtypes(): Set<string> {
    return new Set([...this.byHfName.values()].map((t) => t.type));
  }

  close(): void {
    this.file.close();
  }

  private tensor(name: string): GGUFTensorInfo {
    const info = this.byHfName.get(name);
    if (!info) throw new Error(`${this.dir} has no tensor for ${name}`);
    return info;
  }
}

/** What writeNemotronGGUF needs of a tokenizer: its tokenizer.json and the special tokens. */
export interface GGUFVocabularySource {
  tokenizerJson(): Record<string, unknown>;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly unkTokenId: number | null;
  readonly padTokenId: number | null;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  readonly chatTemplates: ReadonlyMap<string, string>;
}

/**
 * A file type to write: F32, F16, Q8_0 and Q4_0 as llama.cpp's converter writes them; the others (BF16, Q4_1, Q5_0,
 * Q5_1, the k-quant and i-quant mixes, …) as its llama-quantize makes them from the F32 file (gguf-quantize.ts).
 */
export type GGUFWriteType = GGUFQuantMix;

/**
 * A SentencePiece vocabulary for GGUF from a BPE tokenizer.json: the tokens in id order, scores that rank each merged
 * token by its merge (so that merges recovered from the scores, as transformers and llama.cpp do, keep their order),
 * and llama.cpp's token types (control, unknown, byte, user-defined, normal).
 */
export function sentencePieceVocabulary(source: GGUFVocabularySource): { tokens: string[]; scores: number[]; types: number[] } {
  const json = source.tokenizerJson() as { model: { type: string; vocab: Record<string, number>; merges?: Array<string | string[]> }; added_tokens?: Array<{ id: number; content: string; special: boolean }> };
  if (json.model.type !== 'BPE') throw new Error(`writeNemotronGGUF: the tokenizer's model is ${json.model.type}; only BPE vocabularies (Nemotron's) are written`);
  const added = new Map((json.added_tokens ?? []).map((t) => [t.id, t]));
  const size = Math.max(...Object.values(json.model.vocab), ...added.keys()) + 1;
  const tokens = new Array<string>(size).fill('');
  for (const [t, id] of Object.entries(json.model.vocab)) tokens[id] = t;
  for (const [id, t] of added) tokens[id] = t.content;
  const merges = (json.model.merges ?? []).map((m) => (Array.isArray(m) ? m.join('') : m.replace(' ', '')));
  const rank = new Map<string, number>();
  merges.forEach((merged, r) => { if (!rank.has(merged)) rank.set(merged, r); });
  const scores = tokens.map((t, id) => (rank.has(t) ? -rank.get(t)! : added.has(id) ? 0 : -(merges.length + id)));
  const types = tokens.map((t, id) => {
    if (id === source.unkTokenId) return 2;
    if (added.get(id)?.special) return 3;
    if (added.has(id)) return 4;
    return /^<0x[0-9A-F]{2}>$/.test(t) ? 6 : 1;
  });
  return { tokens, scores, types };
}

/**
 * Writes a Nemotron model as llama.cpp's convert_hf_to_gguf.py would: llama.cpp tensor names, LayerNorm1P weights
 * stored with their +1, the `nemotron.*` configuration keys and the vocabulary as `tokenizer.ggml.*`. Matrices in
 * `type` (F32, F16, Q8_0 or Q4_0, llama.cpp's rounding; rows that are not whole Q8_0/Q4_0 blocks in F16, as the
 * converter falls back), vectors in F32; or a k-quant mix (`writeModelGGUF`). `weights`: the HF-named tensors (host values).
 */
export async function writeNemotronGGUF(file: string, config: {
  vocabSize: number; hiddenSize: number; intermediateSize: number; numHiddenLayers: number; numAttentionHeads: number;
  numKeyValueHeads: number; headDim: number; maxPositionEmbeddings: number; normEps: number; ropeTheta: number; rotaryDim: number;
  ropeScaling: { ropeType: string; factor?: number } | null;
}, weights: Array<{ name: string; shape: number[]; data: Float32Array }>, vocabulary: GGUFVocabularySource, type: GGUFWriteType = 'F32', name = 'nemotron',
  options: QuantizeOptions = {}): Promise<void> {
  if (config.ropeScaling && config.ropeScaling.ropeType !== 'linear') {
    throw new Error(`writeNemotronGGUF: llama.cpp's Nemotron reads linear rope scaling only, not ${config.ropeScaling.ropeType}`);
  }
  const { tokens, scores, types } = sentencePieceVocabulary(vocabulary);
  const kv: Array<[string, GGUFMetaValue]> = [
    ['general.architecture', ['str', 'nemotron']], ['general.name', ['str', name]], ['general.file_type', ['u32', GGUF_FILE_TYPE[type]]],
    ['nemotron.context_length', ['u32', config.maxPositionEmbeddings]], ['nemotron.embedding_length', ['u32', config.hiddenSize]],
    ['nemotron.block_count', ['u32', config.numHiddenLayers]], ['nemotron.feed_forward_length', ['u32', config.intermediateSize]],
    ['nemotron.attention.head_count', ['u32', config.numAttentionHeads]], ['nemotron.attention.head_count_kv', ['u32', config.numKeyValueHeads]],
    ['nemotron.rope.freq_base', ['f32', config.ropeTheta]], ['nemotron.vocab_size', ['u32', config.vocabSize]],
    ['nemotron.attention.layer_norm_epsilon', ['f32', config.normEps]], ['nemotron.rope.dimension_count', ['u32', config.rotaryDim]],
    ...(config.headDim !== config.hiddenSize / config.numAttentionHeads
      ? [['nemotron.attention.key_length', ['u32', config.headDim]], ['nemotron.attention.value_length', ['u32', config.headDim]]] as Array<[string, GGUFMetaValue]> : []),
    ['nemotron.rope.scaling.type', ['str', config.ropeScaling ? 'linear' : 'none']],
    ...(config.ropeScaling ? [['nemotron.rope.scaling.factor', ['f32', config.ropeScaling.factor!]]] as Array<[string, GGUFMetaValue]> : []),
    ['tokenizer.ggml.model', ['str', 'llama']], ['tokenizer.ggml.tokens', ['strs', tokens]], ['tokenizer.ggml.scores', ['f32s', scores]],
    ['tokenizer.ggml.token_type', ['i32s', types]],
    ...specialTokenKeys(vocabulary),
  ];
  // Tensors: llama.cpp names; matrices in `type`, vectors in F32.
  const tensorName = nemotronGGUFName;
  return writeModelGGUF(file, kv, weights.map((w) => {
    // Rows that are not whole 32-value blocks: F16, as the converter falls back when gguf-py refuses to quantize.
    const kind: GGMLWriteType = w.shape.length !== 2 || isLlamaQuantizeMix(type) ? 'F32'
      : (type === 'Q8_0' || type === 'Q4_0') && w.shape[1] % 32 !== 0 ? 'F16' : type as GGMLWriteType;
    // LayerNorm1P's weight: llama.cpp stores w + 1.
    const data = /norm\.weight$/.test(w.name) ? Float32Array.from(w.data, (v) => v + 1) : w.data;
    return { name: tensorName(w.name), shape: w.shape, data, type: kind };
  }), type, { layerCount: config.numHiddenLayers, expertCount: 0, gqa: Math.trunc(config.numAttentionHeads / config.numKeyValueHeads) }, options);
}

/** A GGUF metadata value to write: its GGUF type and the value. */
export type GGUFMetaValue = ['u32', number] | ['u16', number] | ['i32', number] | ['f32', number] | ['bool', boolean] | ['str', string] | ['strs', string[]]
  | ['f32s', number[]] | ['i32s', number[]] | ['raw', Buffer];

/** llama.cpp's general.file_type of a file whose matrices are mostly `type` (LLAMA_FTYPE_*). */
export const GGUF_FILE_TYPE = Object.fromEntries(Object.entries(QUANT_MIXES).map(([mix, { fileType }]) => [mix, fileType])) as Record<GGUFWriteType, number>;

/**
 * A NaN or an infinity in a weight (a diverged training run) is refused by name rather than written (a quantized
 * block's scale from it is garbage; llama-quantize's row validation refuses such data too).
 */
function checkFinite(t: { name: string; data: Float32Array; type: string }, first = 0): void {
  const data = t.data;
  // v − v is 0 for a finite v and NaN for NaN and ±∞: one subtraction a value (a callback a value took seconds a model).
  for (let i = 0; i < data.length; i++) {
    if (data[i] - data[i] !== 0) throw new Error(`writeGGUF: ${t.name} has ${data[i]} at index ${first + i}; a GGUF tensor (${t.type}) needs finite values`);
  }
}

/**
 * QuantizePool's work on one chunk of a tensor (on a worker thread): its values, decoded from `from`'s stored bytes
 * where it has them, checked and written in `type` (F32, F16, BF16 or a quantized type).
 */
export function convertChunk({ name, type, from, payload, first, count, importance }: ChunkWork): Uint8Array {
  const values = from !== undefined ? dequantize(payload as Uint8Array, from, count) : payload as Float32Array;
  checkFinite({ name, data: values, type }, first);
  return FLOAT_TENSOR_TYPES.includes(type) ? encodeTensor({ name, data: values, type }) : quantizeRows(type as Parameters<typeof quantizeRows>[0], values, importance);
}

/**
 * Writes a model's GGUF file of file type `type`: the tensors as given, or, for a k-quant mix, as llama-quantize turns
 * the F32 file (`tensors` all F32) into one of that type: its tensor order, types and metadata.
 */
export async function writeModelGGUF(file: string, kv: Array<[string, GGUFMetaValue]>,
  tensors: Array<{ name: string; shape: number[]; data: Float32Array; type: GGMLWriteType }>, type: GGUFWriteType,
  model: { layerCount: number; expertCount: number; gqa: number }, options: QuantizeOptions = {}): Promise<void> {
  if (!isLlamaQuantizeMix(type)) {
    if (options.imatrix) throw new Error(`saveGGUF: an importance matrix is used by the quantization mixes (Q2_K … Q6_K, IQ4_NL/XS, IQ3_XXS/XS/S/M, IQ2_XXS/XS/S/M, IQ1_S/M, …), not by ${type}`);
    const { threads: _threads, imatrix: _imatrix, ...rest } = options;
    const given = Object.entries(rest).filter(([, v]) => v !== undefined).map(([k]) => k);
    if (given.length) throw new Error(`saveGGUF: ${given.join(', ')}: llama-quantize's options go with a quantization mix (Q4_K_M, …), not ${type}`);
    writeGGUF(file, kv, tensors);
    return;
  }
  await writeQuantMix(file, kv, tensors, type, model, options);
}

/**
 * How a quantization mix is made: `threads` (worker threads; default the machine's parallelism), `imatrix`, an
 * importance matrix (llama-imatrix's or `computeImatrix`'s) with the path of its file, which the output records in
 * `quantize.imatrix.file` as llama-quantize does (no such key for a matrix that was never a file), and
 * llama-quantize's per-tensor options (`TensorTypeOverrides`: pure, output / embedding / pattern types, the output
 * left alone) and metadata overrides (`overrideKv`).
 */
export interface QuantizeOptions extends TensorTypeOverrides {
  threads?: number; imatrix?: { matrix: ImportanceMatrix; file?: string };
  /** llama-quantize's --override-kv, as it spells them: `KEY=TYPE:VALUE` (TYPE int, float, bool or str). */
  overrideKv?: string[];
  /**
   * llama-quantize's --keep-split (quantizeGGUF of a split input only): the output in the input's shards,
   * OUTPUT-0000i-of-0000n.gguf (OUTPUT without its .gguf), each tensor where it was, the mix's rules counted in that order.
   */
  keepSplit?: boolean;
  /**
   * llama-quantize's --prune-layers: these decoder layers (numbered from 0) left out, the others renumbered in order and
   * `block_count` set to what is left; the mix's layer rules still count the input's layers, and the kept layers take
   * their importance weights under their old names. Not for models with per-layer metadata arrays (NemotronH), which
   * llama.cpp could not load afterwards.
   */
  pruneLayers?: number[];
  /**
   * llama-quantize's --allow-requantize (quantizeGGUF): a tensor already quantized may be dequantized and quantized into
   * another type (which compounds the rounding); without it that is refused. A tensor already in its target type is
   * copied either way.
   */
  allowRequantize?: boolean;
}

/** What a mix's rules need of the model: its layer count (before pruning), experts, GQA ratio and the input's file type. */
interface QuantizeModelInfo { layerCount: number; expertCount: number; gqa: number; fileType?: number }

/** llama-quantize's file types, and COPY: every tensor as it is, the metadata rewritten (overrides, pruning). */
export type LlamaQuantizeType = GGUFQuantMix | 'COPY';

/** The keys llama-quantize adds for an importance matrix (strings cut to 127 bytes, as its kv overrides are). */
function imatrixMetadata(imatrix: { matrix: ImportanceMatrix; file?: string }): Array<[string, GGUFMetaValue]> {
  const cut = (text: string) => { let s = text; while (Buffer.byteLength(s, 'utf8') > 127) s = s.slice(0, -1); return s; };
  const { matrix, file } = imatrix;
  return [
    ...(file !== undefined ? [['quantize.imatrix.file', ['str', cut(file)]]] as Array<[string, GGUFMetaValue]> : []),
    ...(matrix.datasets.length ? [['quantize.imatrix.dataset', ['str', cut(matrix.datasets[0])]]] as Array<[string, GGUFMetaValue]> : []),
    ['quantize.imatrix.entries_count', ['u32', matrix.entries.size]],
    ...(matrix.chunkCount > 0 ? [['quantize.imatrix.chunks_count', ['u32', matrix.chunkCount]]] as Array<[string, GGUFMetaValue]> : []),
  ];
}

/**
 * Each tensor's importance weights, as llama-quantize looks them up: by name, one weight per column for each matrix
 * (expert) of the tensor; a size that does not match is an error (but for the token embedding, quantized without),
 * and so is a missing entry for an IQ3_XXS tensor or the Q2_K tensors of a Q2_K_S file.
 */
function importanceFor(t: { name: string; shape: number[]; type: string; sourceName?: string }, mix: GGUFQuantMix, matrix: ImportanceMatrix | undefined): Float32Array | undefined {
  const embedding = t.name === 'token_embd.weight';
  // A pruned model's layers are found under the names they had (llama-quantize's remap_imatrix).
  const weights = matrix ? importanceOf(matrix, t.sourceName ?? t.name) : undefined;
  const expected = t.shape[t.shape.length - 1] * (t.shape.length === 3 ? t.shape[0] : 1);
  if (weights && weights.length !== expected) {
    if (embedding) return undefined;
    throw new Error(`quantize: the importance matrix has ${weights.length} values for ${t.name}, whose ${t.shape.join('×')} tensor needs ${expected}`);
  }
  // llama-quantize's tensor_requires_imatrix: IQ3_XXS, IQ2 and IQ1 tensors, and the Q2_K ones of a Q2_K_S file.
  const requires = ['IQ3_XXS', 'IQ2_XXS', 'IQ2_XS', 'IQ2_S', 'IQ1_S', 'IQ1_M'].includes(t.type) || (mix === 'Q2_K_S' && t.type === 'Q2_K');
  if (!weights && requires && !embedding && t.name !== 'output.weight') {
    throw new Error(`quantize: ${mix} needs an importance matrix for ${t.name} (${t.type})${matrix ? ' and the one given has no entry for it' : ''} (llama-quantize --imatrix FILE; computeImatrix or the imatrix command make one)`);
  }
  return weights;
}

/** The per-tensor options' types are ones written here (a JavaScript caller may pass any string). */
function checkOverrides(overrides: TensorTypeOverrides): void {
  const given: Array<[string, unknown]> = [['outputTensorType', overrides.outputTensorType], ['tokenEmbeddingType', overrides.tokenEmbeddingType],
    ...(overrides.tensorTypes ?? []).map(([pattern, type]): [string, unknown] => [`tensorTypes ${pattern}`, type])];
  for (const [option, type] of given) {
    if (type !== undefined && !Object.prototype.hasOwnProperty.call(GGML_WRITE_TYPES, type as string)) {
      throw new Error(`saveGGUF: ${option}: ${type} is not a tensor type written here (${Object.keys(GGML_WRITE_TYPES).join(', ')})`);
    }
  }
}

/** The kinds of float tensor llama-quantize reads without --allow-requantize. */
const FLOAT_TENSOR_TYPES = ['F32', 'F16', 'BF16'];

/**
 * llama-quantize's plan for `mix` (or COPY): the tensors it writes — pruned layers left out and the rest renamed
 * (`sourceName`: the name in the input), in its order — each with its type, and the file's general.file_type.
 */
function planMix<T extends { name: string; shape: number[]; type: string }>(kv: Array<[string, GGUFMetaValue]>, tensors: T[], mix: LlamaQuantizeType,
  model: QuantizeModelInfo, hasImportance: boolean, { pruneLayers, keepSplit, ...overrides }: TensorTypeOverrides & { pruneLayers?: number[]; keepSplit?: boolean }):
  { tensors: Array<T & { sourceName: string }>; fileType: number; keptLayers?: number } {
  checkOverrides(overrides);
  const pruned = pruneLayers?.length ? pruneTensors(kv, tensors, pruneLayers, model.layerCount) : undefined;
  const renamed = pruned?.tensors ?? tensors.map((t) => ({ ...t, sourceName: t.name }));
  if (mix === 'COPY') {
    // llama-quantize copies every tensor; the file type is the input's (general.file_type, else its guess).
    const sorted = keepSplit ? renamed : renamed.slice().sort((a, b) => compareTensorNames(a.name, b.name));
    return { tensors: sorted, fileType: model.fileType ?? guessFileType(tensors), keptLayers: pruned?.keptLayers };
  }
  return { tensors: quantizationMix(mix, renamed, model, hasImportance, overrides, keepSplit), fileType: QUANT_MIXES[mix].fileType, keptLayers: pruned?.keptLayers };
}

/** llama_model_loader's guess of a file type without general.file_type: that of its most common tensor type, marked guessed (1024). */
function guessFileType(tensors: Array<{ type: string }>): number {
  const counts = new Map<string, number>();
  let [most, mostCount] = ['F32', 0];
  for (const t of tensors) {
    const n = (counts.get(t.type) ?? 0) + 1;
    counts.set(t.type, n);
    if (n > mostCount) [most, mostCount] = [t.type, n];
  }
  const byType: Record<string, number> = { Q2_K: 10, Q3_K: 12, Q4_K: 15, Q5_K: 17, Q6_K: 18, IQ2_S: 28, IQ3_S: 26 };
  const mixOf = Object.entries(QUANT_MIXES).find(([, { base }]) => base === most)?.[1].fileType;
  return (byType[most] ?? mixOf ?? 0) | 1024;
}

/**
 * llama-quantize's --prune-layers (remap_layer): the listed layers' tensors left out, the layers after the first pruned
 * one renumbered in order. Refused where the result could not be loaded: a layer that is not there, every layer, or
 * metadata arrays with an entry a layer (llama.cpp checks their length against block_count).
 */
function pruneTensors<T extends { name: string }>(kv: Array<[string, GGUFMetaValue]>, tensors: T[], layers: number[], layerCount: number):
  { tensors: Array<T & { sourceName: string }>; keptLayers: number } {
  for (const layer of layers) {
    if (!Number.isInteger(layer) || layer < 0 || layer >= layerCount) throw new Error(`pruneLayers: ${layer} is not a layer of this model (0 to ${layerCount - 1})`);
  }
  const prune = [...new Set(layers)].sort((a, b) => a - b);
  if (prune.length >= layerCount) throw new Error(`pruneLayers: ${prune.join(',')} would leave none of the ${layerCount} layers`);
  const perLayer = kv.filter(([key, value]) => !key.startsWith('general.') && !key.startsWith('tokenizer.') && metaArrayLength(value) === layerCount).map(([key]) => key);
  if (perLayer.length) {
    throw new Error(`pruneLayers: this model has an entry a layer in ${perLayer.join(', ')}; llama-quantize keeps those whole, and llama.cpp then refuses the file (wrong array length)`);
  }
  const mapped = new Map<number, number | null>();
  let next = 0;
  const out: Array<T & { sourceName: string }> = [];
  for (const t of tensors.slice().sort((a, b) => compareTensorNames(a.name, b.name))) {
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (!m) { out.push({ ...t, sourceName: t.name }); continue; }
    const layer = Number(m[1]);
    if (!mapped.has(layer)) {
      if (prune.includes(layer)) mapped.set(layer, null);
      else if (layer < prune[0]) { mapped.set(layer, layer); next = layer + 1; } else mapped.set(layer, next++);
    }
    const to = mapped.get(layer);
    if (to !== null && to !== undefined) out.push({ ...t, name: t.name.replace(/^blk\.\d+\./, `blk.${to}.`), sourceName: t.name });
  }
  // In the caller's order (the shards' order with keepSplit).
  const order = new Map(tensors.map((t, i) => [t.name, i]));
  return { tensors: out.sort((a, b) => order.get(a.sourceName)! - order.get(b.sourceName)!), keptLayers: next };
}

/** The length of a metadata array (typed, or a raw GGUF value: its type 9), else -1. */
function metaArrayLength([kind, value]: GGUFMetaValue): number {
  if (kind === 'strs' || kind === 'f32s' || kind === 'i32s') return value.length;
  if (kind === 'raw' && value.readUInt32LE(0) === 9) return Number(value.readBigUInt64LE(8));
  return -1;
}

/**
 * llama-quantize's output for `mix` (or COPY) from a file's tensors (float32 values, or a GGUF's stored bytes): its
 * order and types; tensors it leaves alone written as they are, the rest (dequantized first where they were quantized,
 * with allowRequantize) quantized on worker threads.
 */
async function writeQuantMix(file: string, kv: Array<[string, GGUFMetaValue]>,
  tensors: Array<{ name: string; shape: number[]; data: Float32Array; type: string; read?: () => Buffer; readRange?: (offset: number, length: number) => Buffer; shard?: number }>, mix: LlamaQuantizeType,
  model: QuantizeModelInfo, { threads, imatrix, overrideKv, keepSplit, allowRequantize, pruneLayers, ...overrides }: QuantizeOptions,
  shardCount = 1): Promise<void> {
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) throw new Error(`saveGGUF: threads ${threads}: expected a positive integer`);
  if (keepSplit && shardCount < 2) throw new Error('keepSplit writes the shards of a split GGUF input (quantizeGGUF from its first shard)');
  overrideKv?.forEach(parseKvOverride);
  const originalType = new Map(tensors.map((t) => [t.name, t.type]));
  const plan = planMix(kv, tensors, mix, model, imatrix !== undefined, { ...overrides, pruneLayers, keepSplit });
  const mixed = plan.tensors;
  // Everything that can be refused is, before a byte is written: requantizing, and missing or mismatched importance.
  const importance = new Map<string, Float32Array | undefined>();
  for (const t of mixed) {
    const from = originalType.get(t.sourceName)!;
    if (t.type === from) continue;
    if (!FLOAT_TENSOR_TYPES.includes(from) && !allowRequantize) {
      throw new Error(`quantize: ${t.sourceName} is ${from} already; requantizing it to ${t.type} compounds the rounding and is refused without allowRequantize (llama-quantize --allow-requantize)`);
    }
    if (!FLOAT_TENSOR_TYPES.includes(t.type)) importance.set(t.name, importanceFor(t, mix as GGUFQuantMix, imatrix?.matrix));
  }
  let metadata = quantizationMixMetadata(kv.filter(([key]) => !key.startsWith('quantize.imatrix.')), plan.fileType, (v): GGUFMetaValue => ['u32', v]);
  // gguf_set_val moves a key set again to the end: --override-kv in order, the importance matrix's keys, then a pruned
  // model's block_count.
  const setLast = (key: string, value: GGUFMetaValue) => { metadata = [...metadata.filter(([k]) => k !== key), [key, value]]; };
  for (const [key, value] of (overrideKv ?? []).map(parseKvOverride)) setLast(key, value);
  if (imatrix) metadata = [...metadata, ...imatrixMetadata(imatrix)];
  if (plan.keptLayers !== undefined) {
    const blockCount = kv.find(([key]) => key.endsWith('.block_count') && !key.startsWith('general.'));
    if (!blockCount) throw new Error('pruneLayers: the metadata has no ARCH.block_count to set');
    setLast(blockCount[0], ['u32', plan.keptLayers]);
  }
  // Tensor by tensor, as llama-quantize goes: a tensor's source is read (and decoded) only when its turn nears, and its
  // bytes written as soon as they are made, so that memory holds a few tensors, not the model.
  const pool = new QuantizePool(convertChunk, threads);
  const bytesOf = async (t: (typeof mixed)[number]): Promise<Uint8Array | Uint8Array[]> => {
    const from = originalType.get(t.sourceName)!;
    if (t.type === from) {
      if (t.read) return t.read();
      checkFinite(t);
      return encodeTensor(t);
    }
    const job = { name: t.name, type: t.type, rowLength: t.shape[t.shape.length - 1], count: t.shape.reduce((a, b) => a * b, 1), importance: importance.get(t.name) };
    const { readRange } = t;
    // A stored tensor is read and decoded chunk by chunk on the workers; values in memory are copied out chunk by chunk.
    if (readRange) return pool.quantize({ ...job, stored: { type: from, read: (first, count) => readRange(storedBytes(from, first), storedBytes(from, count)) } });
    return pool.quantize({ ...job, values: t.read ? dequantize(t.read(), from, job.count) : t.data });
  };
  try {
    if (!keepSplit) {
      await writeGGUFStreaming(file, metadata, mixed, bytesOf);
      return;
    }
    // --keep-split: each tensor in its input shard's place, the metadata in the first, the split keys in every one.
    const prefix = file.endsWith('.gguf') ? file.slice(0, -'.gguf'.length) : file;
    for (let i = 0; i < shardCount; i++) {
      const split: Array<[string, GGUFMetaValue]> = [['split.no', ['u16', i]], ['split.count', ['u16', shardCount]], ['split.tensors.count', ['i32', mixed.length]]];
      await writeGGUFStreaming(splitPath(prefix, i, shardCount), [...(i === 0 ? metadata : []), ...split], mixed.filter((t) => (t.shard ?? 0) === i), bytesOf);
    }
  } finally {
    await pool.close();
  }
}

/**
 * llama-quantize's --override-kv KEY=TYPE:VALUE (string_parse_kv_override): int (stored as u32 of its magnitude, as
 * llama-quantize stores it), float (f32), bool (true / false) or str (at most 127 bytes).
 */
export function parseKvOverride(text: string): [string, GGUFMetaValue] {
  const at = text.indexOf('=');
  if (at <= 0 || at >= 128) throw new Error(`--override-kv ${text}: expected KEY=TYPE:VALUE with a key of 1 to 127 characters (TYPE int, float, bool or str)`);
  const [key, rest] = [text.slice(0, at), text.slice(at + 1)];
  const colon = rest.indexOf(':');
  const [type, value] = colon < 0 ? [rest, ''] : [rest.slice(0, colon), rest.slice(colon + 1)];
  switch (type) {
    case 'int': {
      if (!/^[+-]?\d+$/.test(value.trim())) throw new Error(`--override-kv ${text}: ${value} is not an integer`);
      return [key, ['u32', Math.abs(Number(value))]];
    }
    case 'float': {
      if (value.trim() === '' || !Number.isFinite(Number(value))) throw new Error(`--override-kv ${text}: ${value} is not a number`);
      return [key, ['f32', Number(value)]];
    }
    case 'bool': {
      if (value !== 'true' && value !== 'false') throw new Error(`--override-kv ${text}: a bool is true or false, not ${value}`);
      return [key, ['bool', value === 'true']];
    }
    case 'str': {
      if (Buffer.byteLength(value, 'utf8') > 127) throw new Error(`--override-kv ${text}: a string value cannot exceed 127 bytes`);
      return [key, ['str', value]];
    }
    default: throw new Error(`--override-kv ${text}: the type ${type} is not int, float, bool or str`);
  }
}

const LLAMA_QUANTIZE_ARCHITECTURES = ['nemotron', 'nemotron_h', 'nemotron_h_moe'];

/**
 * `llama-quantize INPUT OUTPUT TYPE` for a Nemotron or NemotronH GGUF (what the converter writes, or a split one from its
 * first shard): the input's metadata copied as stored, its tensors mixed and quantized as llama-quantize does, or
 * with COPY only copied (for pruneLayers, overrideKv or to merge a split file). Quantized inputs need allowRequantize
 * where a tensor changes type.
 */
export async function quantizeGGUF(input: string, output: string, mix: LlamaQuantizeType, options: QuantizeOptions = {}): Promise<void> {
  const { source, model, shardCount } = openForQuantization(input);
  try {
    if (options.keepSplit && !(shardCount > 1)) throw new Error(`quantizeGGUF: keepSplit writes the shards of a split input; ${input} is one file`);
    const prefix = output.endsWith('.gguf') ? output.slice(0, -'.gguf'.length) : output;
    refuseOverwrite(source, options.keepSplit ? Array.from({ length: shardCount }, (_, i) => splitPath(prefix, i, shardCount)) : [output], 'quantizeGGUF');
    const tensors = [...source.tensors.values()].map((t) => ({
      name: t.name, shape: t.shape, type: t.type, data: new Float32Array(0), shard: t.shard,
      read: () => source.readBytes(t.name), readRange: (offset: number, length: number) => source.readRange(t.name, offset, length),
    }));
    await writeQuantMix(output, rawMetadata(source), tensors, mix, model, options, shardCount);
  } finally {
    source.close();
  }
}

/** A GGUF's metadata as stored; a split input (opened from its first shard) without its split.* keys, as llama-quantize drops them. */
function rawMetadata(source: GGUFFile): Array<[string, GGUFMetaValue]> {
  return [...source.rawMetadata].filter(([k]) => !k.startsWith('split.')).map(([k, raw]): [string, GGUFMetaValue] => [k, ['raw', raw]]);
}

/**
 * `llama-quantize --dry-run`: what quantizeGGUF would write, without quantizing — each tensor's name (after pruning),
 * type before and after and bytes after, in llama-quantize's order (the per-tensor options, pruneLayers and keepSplit's
 * order apply).
 */
export function planQuantization(input: string, mix: LlamaQuantizeType,
  options: TensorTypeOverrides & { keepSplit?: boolean; hasImatrix?: boolean; pruneLayers?: number[] } = {}):
  Array<{ name: string; shape: number[]; from: string; to: string; bytes: number }> {
  const { source, model } = openForQuantization(input);
  try {
    const { hasImatrix, ...rest } = options;
    const tensors = [...source.tensors.values()].map((t) => ({ name: t.name, shape: t.shape, type: t.type }));
    return planMix(rawMetadata(source), tensors, mix, model, hasImatrix ?? false, rest).tensors.map((t) => {
      return { name: t.name, shape: t.shape, from: source.tensors.get(t.sourceName)!.type, to: t.type, bytes: storedBytes(t.type, t.shape.reduce((a, b) => a * b, 1)) };
    });
  } finally {
    source.close();
  }
}

/** A GGUF that llama-quantize would take (ours: Nemotron / NemotronH), opened, with what its rules need. */
function openForQuantization(input: string): { source: GGUFFile; model: QuantizeModelInfo; shardCount: number } {
  const source = GGUFFile.open(input);
  try {
    const arch = String(source.get('general.architecture'));
    if (!LLAMA_QUANTIZE_ARCHITECTURES.includes(arch)) {
      throw new Error(`quantizeGGUF: ${input} is a ${arch} model; only ${LLAMA_QUANTIZE_ARCHITECTURES.join(', ')} files are quantized here`);
    }
    if (Number(source.get('general.alignment') ?? 32) !== 32) throw new Error(`quantizeGGUF: ${input} aligns its data to ${source.get('general.alignment')} bytes; only 32 is written`);
    const key = (k: string) => source.get(`${arch}.${k}`);
    const first = (v: GGUFValue | undefined) => Number(Array.isArray(v) ? v[0] : v ?? 0);
    const kvHeads = first(key('attention.head_count_kv'));
    const fileType = source.get('general.file_type');
    const model = {
      layerCount: Number(key('block_count')), expertCount: Number(key('expert_count') ?? 0),
      gqa: kvHeads ? Math.trunc(first(key('attention.head_count')) / kvHeads) : 0,
      fileType: fileType === undefined ? undefined : Number(fileType),
    };
    return { source, model, shardCount: Number(source.get('split.count') ?? 1) };
  } catch (e) {
    source.close();
    throw e;
  }
}

/** The special tokens' ids, add_bos/add_eos and the chat template, as `tokenizer.*` keys. */
export function specialTokenKeys(vocabulary: GGUFVocabularySource): Array<[string, GGUFMetaValue]> {
  const template = vocabulary.chatTemplates.get('default');
  return [
    ...([['bos_token_id', vocabulary.bosTokenId], ['eos_token_id', vocabulary.eosTokenId], ['unknown_token_id', vocabulary.unkTokenId],
      ['padding_token_id', vocabulary.padTokenId]] as Array<[string, number | null]>)
      .filter(([, id]) => id !== null).map(([key, id]): [string, GGUFMetaValue] => [`tokenizer.ggml.${key}`, ['u32', id!]]),
    ['tokenizer.ggml.add_bos_token', ['bool', vocabulary.addBosToken]], ['tokenizer.ggml.add_eos_token', ['bool', vocabulary.addEosToken]],
    ...(template !== undefined ? [['tokenizer.chat_template', ['str', template]]] as Array<[string, GGUFMetaValue]> : []),
  ];
}

/**
 * Writes a GGUF file (version 3): the metadata in order, then the tensor table and the data, each tensor's data aligned
 * to 32 bytes. `shape` in numpy order; `type` one written here (from `data`, llama.cpp's rounding) or, with its stored
 * `bytes`, any type the reader knows.
 */
export function writeGGUF(file: string, kv: Array<[string, GGUFMetaValue]>,
  tensors: Array<{ name: string; shape: number[]; data: Float32Array; type: GGMLWriteType | string; bytes?: Buffer; read?: () => Buffer }>): void {
  writeGGUFFile(file, kv, tensors, (write) => {
    // Stored bytes are written as they are (copied from a GGUF — `read` when its turn comes, so that one tensor at a
    // time is in memory —, or quantized after their own check).
    for (const t of tensors) write(t.bytes ?? t.read?.() ?? (checkFinite(t), encodeTensor(t)));
  });
}

/** Refuses to write `outputs` over the files of `source` (read tensor by tensor while the outputs are written). */
export function refuseOverwrite(source: GGUFFile, outputs: string[], what: string): void {
  const inputs = [source.path, ...source.shardPaths].map((p) => path.resolve(p));
  const clash = outputs.find((o) => inputs.includes(path.resolve(o)));
  if (clash !== undefined) throw new Error(`${what}: the output ${clash} is an input file; write to another file`);
}

/**
 * writeGGUF with each tensor's bytes made by `bytesOf` when its turn nears: the next tensors' are started while one is
 * written (up to ~64 M values ahead), so that worker threads stay busy and memory holds a few tensors.
 */
export async function writeGGUFStreaming<T extends { name: string; shape: number[]; type: string }>(file: string, kv: Array<[string, GGUFMetaValue]>,
  tensors: T[], bytesOf: (t: T) => Promise<Uint8Array | Uint8Array[]>): Promise<void> {
  const AHEAD_VALUES = 1 << 26;
  const count = (t: T) => t.shape.reduce((a, b) => a * b, 1);
  const started: Array<Promise<Uint8Array | Uint8Array[]>> = [];
  let ahead = 0;
  // Starts the next tensors while fewer than AHEAD_VALUES are started and not yet made (always tensor `i` itself).
  const topUp = (i: number) => {
    while (started.length < tensors.length && (started.length === i || ahead + count(tensors[started.length]) <= AHEAD_VALUES)) {
      const next = bytesOf(tensors[started.length]);
      next.catch(() => undefined); // awaited in its turn; no unhandled rejection meanwhile
      ahead += count(tensors[started.length]);
      started.push(next);
    }
  };
  await writeGGUFFile(file, kv, tensors, async (_, writeYielding) => {
    for (let i = 0; i < tensors.length; i++) {
      topUp(i);
      const bytes = await started[i];
      delete started[i];
      ahead -= count(tensors[i]);
      // The next tensors are under way while this one is written (a large one takes seconds).
      topUp(i + 1);
      await writeYielding(bytes);
    }
  });
}

/**
 * A GGUF file (version 3): the metadata in order, the tensor table, then each tensor's data — handed to `write` in
 * order by `body` — aligned to 32 bytes. Each tensor's size is known from its type and shape, so the table is written
 * first; bytes of another size are refused. A file that fails is removed.
 */
function writeGGUFFile<R extends void | Promise<void>>(file: string, kv: Array<[string, GGUFMetaValue]>, tensors: Array<{ name: string; shape: number[]; type: string }>,
  body: (write: (data: Uint8Array | Uint8Array[]) => void, writeYielding: (data: Uint8Array | Uint8Array[]) => Promise<void>) => R): R {
  const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
  const u64 = (v: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
  const f32 = (v: number) => { const b = Buffer.alloc(4); b.writeFloatLE(v); return b; };
  const i32 = (v: number) => { const b = Buffer.alloc(4); b.writeInt32LE(v); return b; };
  const str = (s: string) => { const bytes = Buffer.from(s, 'utf8'); return Buffer.concat([u64(bytes.length), bytes]); };
  const encode = ([kind, v]: GGUFMetaValue): Buffer => {
    switch (kind) {
      case 'u32': return Buffer.concat([u32(4), u32(v)]);
      case 'u16': { const b = Buffer.alloc(2); b.writeUInt16LE(v); return Buffer.concat([u32(2), b]); }
      case 'i32': return Buffer.concat([u32(5), i32(v)]);
      case 'f32': return Buffer.concat([u32(6), f32(v)]);
      case 'bool': return Buffer.concat([u32(7), Buffer.from([v ? 1 : 0])]);
      case 'str': return Buffer.concat([u32(8), str(v)]);
      case 'strs': return Buffer.concat([u32(9), u32(8), u64(v.length), ...v.map(str)]);
      case 'f32s': return Buffer.concat([u32(9), u32(6), u64(v.length), ...v.map(f32)]);
      case 'i32s': return Buffer.concat([u32(9), u32(5), u64(v.length), ...v.map(i32)]);
      case 'raw': return v;
    }
  };
  const ALIGN = 32;
  const padding = (n: number) => Buffer.alloc(Math.ceil(n / ALIGN) * ALIGN - n);
  const chunks: Buffer[] = [u32(GGUF_MAGIC), u32(3), u64(tensors.length), u64(kv.length)];
  for (const [key, value] of kv) chunks.push(str(key), encode(value));
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    // Any type the reader knows, as stored bytes (a split copies them); the types written here from values too.
    const known = Object.entries(TYPES).find(([, [name]]) => name === t.type);
    if (!known) throw new Error(`writeGGUF: ${t.name}: unknown ggml type ${t.type}`);
    const [id, [, blockValues, blockBytes]] = known;
    const columns = t.shape[t.shape.length - 1];
    if (columns % blockValues !== 0) throw new Error(`writeGGUF: ${t.name} has rows of ${columns} values, not whole ${t.type} blocks of ${blockValues}`);
    sizes.push((t.shape.reduce((a, b) => a * b, 1) / blockValues) * blockBytes);
    chunks.push(str(t.name), u32(t.shape.length), ...t.shape.slice().reverse().map(u64), u32(Number(id)), u64(offset));
    offset += Math.ceil(sizes[sizes.length - 1] / ALIGN) * ALIGN;
  }
  const header = Buffer.concat(chunks);
  // Written piece by piece: a multi-GB model is not copied into one buffer first.
  const fd = fs.openSync(file, 'w');
  let written = 0;
  // A tensor's bytes in one piece or several (a quantized tensor's chunks, in order, not joined first).
  const piecesOf = (data: Uint8Array | Uint8Array[]) => {
    const t = tensors[written];
    const pieces = Array.isArray(data) ? data : [data];
    const length = pieces.reduce((n, piece) => n + piece.length, 0);
    if (length !== sizes[written]) throw new Error(`writeGGUF: ${t.name}: ${length} bytes for a ${t.shape.join('×')} ${t.type} tensor of ${sizes[written]}`);
    return { pieces, length };
  };
  const write = (data: Uint8Array | Uint8Array[]) => {
    const { pieces, length } = piecesOf(data);
    for (const piece of pieces) writeAll(fd, piece);
    writeAll(fd, padding(length));
    written++;
  };
  // The same, letting other work run every ~16 MB: worker threads that answer meanwhile get their next chunks at once
  // instead of idling while a large tensor is written.
  const writeYielding = async (data: Uint8Array | Uint8Array[]) => {
    const { pieces, length } = piecesOf(data);
    let sinceYield = 0;
    for (const piece of pieces) {
      for (let at = 0; at < piece.length; at += 1 << 24) {
        const part = piece.subarray(at, at + (1 << 24));
        writeAll(fd, part);
        if ((sinceYield += part.length) >= 1 << 24) {
          sinceYield = 0;
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    }
    writeAll(fd, padding(length));
    written++;
  };
  const finish = (failed: unknown) => {
    fs.closeSync(fd);
    if (failed !== undefined) { fs.rmSync(file, { force: true }); throw failed; }
    if (written !== tensors.length) { fs.rmSync(file, { force: true }); throw new Error(`writeGGUF: ${written} of ${tensors.length} tensors written`); }
  };
  try {
    writeAll(fd, header);
    writeAll(fd, padding(header.length));
    const result = body(write, writeYielding);
    if (result instanceof Promise) return result.then(() => finish(undefined), (e: unknown) => finish(e ?? new Error('writeGGUF failed'))) as R;
  } catch (e) {
    finish(e ?? new Error('writeGGUF failed'));
  }
  finish(undefined);
  return undefined as R;
}

/** A tensor's bytes in its type, from its float32 values. */
function encodeTensor(t: { name: string; data: Float32Array; type: string }): Buffer {
  if (!Object.prototype.hasOwnProperty.call(GGML_WRITE_TYPES, t.type)) throw new Error(`writeGGUF: ${t.name}: ${t.type} is read here, not written (give its stored bytes)`);
  switch (t.type) {
    case 'BF16': return Buffer.from(float32ArrayToBf16(t.data).buffer);
    case 'F32': return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    case 'F16': return Buffer.from(float32ArrayToF16(t.data).buffer);
    default: return quantizeRows(t.type as Parameters<typeof quantizeRows>[0], t.data);
  }
}
