/**
 * Reader and writer for the safetensors format.
 *
 * Layout: an 8-byte little-endian unsigned header length N, then N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`,
 * then the data area. Offsets are relative to the start of the data area (8 + N).
 *
 * `SafetensorsFile.open` reads only the header; tensors are read one at a time at their
 * offsets, so multi-gigabyte files are never loaded whole.
 */
import * as fs from 'fs';
import * as os from 'os';

export type SafetensorsDtype =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL';

/** Bytes per element of each supported dtype. */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
});

export const FLOAT_DTYPES: ReadonlySet<SafetensorsDtype> = new Set<SafetensorsDtype>(['F64', 'F32', 'F16', 'BF16']);

export function isSafetensorsDtype(x: unknown): x is SafetensorsDtype {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, x);
}

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute position of the first byte in the file. */
  byteOffset: number;
  byteLength: number;
}

/** A tensor in host memory: floats as float32, integers and booleans as int32. */
export interface HostTensor {
  dtype: 'float32' | 'int32';
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Dtypes `writeSafetensors` can produce. */
export type WritableDtype = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64';

export interface TensorToWrite {
  name: string;
  dtype: WritableDtype;
  shape: number[];
  data: Float32Array | Int32Array;
}

/** The safetensors reference implementation refuses headers above 100 MB. */
export const MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = '__metadata__';
/** Max bytes per readSync/writeSync call (Node caps a single call at about 2 GiB). */
const IO_CHUNK = 1 << 30;
/** Elements converted per chunk when writing F16/BF16/I64. */
const CONVERT_CHUNK = 1 << 22;

function assertLittleEndianHost(): void {
  if (os.endianness() !== 'LE') {
    throw new Error('safetensors IO requires a little-endian host (typed arrays are used as little-endian views)');
  }
}

// ---------------------------------------------------------------------------------------
// Float conversions
// ---------------------------------------------------------------------------------------

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** float32 bits -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN. */
function bf16FromF32Bits(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) {
    return ((x >>> 16) | 0x0040) & 0xffff;
  }
  const rounded = (x + 0x7fff + ((x >>> 16) & 1)) >>> 0;
  return (rounded >>> 16) & 0xffff;
}

/** float32 bits -> IEEE binary16 bits, round to nearest even, with subnormals, inf and NaN. */
function f16FromF32Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) {
    // inf or NaN (keep the top payload bits and make sure a NaN stays a NaN)
    return sign | 0x7c00 | (mant !== 0 ? 0x0200 | (mant >>> 13) : 0);
  }
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow -> inf
  if (e <= 0) {
    // result is subnormal (or zero) in half precision
    if (e < -10) return sign; // below half of the smallest subnormal -> signed zero
    mant |= 0x800000;
    const shift = 14 - e; // 14..24
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half++;
    return sign | half; // a carry into the exponent field gives the smallest normal, as it should
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // carry may reach 0x7c00 = inf, correct
  return sign | h;
}

/** Round a number to bfloat16 (RNE) and return the 16-bit pattern. */
export function float32ToBf16Bits(value: number): number {
  scratchF32[0] = value;
  return bf16FromF32Bits(scratchU32[0]);
}

/** Expand a bfloat16 bit pattern to a float32 value. */
export function bf16BitsToFloat32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/** Round a number to IEEE half precision (RNE) and return the 16-bit pattern. */
export function float32ToF16Bits(value: number): number {
  scratchF32[0] = value;
  return f16FromF32Bits(scratchU32[0]);
}

let f16Table: Uint32Array | null = null;

/** float32 bit patterns of all 65536 half-precision values. */
function getF16Table(): Uint32Array {
  if (f16Table) return f16Table;
  const table = new Uint32Array(65536);
  const tf = new Float32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) {
      // zero or subnormal: m * 2^-24, exact in float32
      tf[h] = (sign ? -1 : 1) * m * 5.960464477539063e-8;
    } else if (e === 31) {
      table[h] = (sign | 0x7f800000 | (m << 13)) >>> 0;
    } else {
      table[h] = (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
    }
  }
  f16Table = table;
  return table;
}

/** Expand an IEEE half-precision bit pattern to a float32 value. */
export function f16BitsToFloat32(bits: number): number {
  scratchU32[0] = getF16Table()[bits & 0xffff];
  return scratchF32[0];
}

/** `data` as bfloat16 bit patterns (RNE; NaN stays NaN), in one pass over its float32 bits. */
export function float32ArrayToBf16(data: Float32Array): Uint16Array {
  const src = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < src.length; i++) out[i] = bf16FromF32Bits(src[i]);
  return out;
}

/** `data` as IEEE half-precision bit patterns (RNE), in one pass over its float32 bits. */
export function float32ArrayToF16(data: Float32Array): Uint16Array {
  const src = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < src.length; i++) out[i] = f16FromF32Bits(src[i]);
  return out;
}

/** Arrays from this size on are placed for the tensorflow backend (below: not worth 64 bytes a tensor). */
const ALIGNED_FROM_BYTES = 1 << 20;

/**
 * A Float32Array of `count` zeros (in a SharedArrayBuffer with `shared`) placed to start on a 64-byte boundary where
 * Node runs on glibc: a large buffer is mmap'd, so its first byte sits 16 bytes (malloc's chunk header) past a page
 * boundary, and 48 more make 64. TensorFlow (the tensorflow backend) then keeps the array's memory as the tensor's;
 * given unaligned data it copies it into a new allocation first (TF_NewTensor's rule) — 800 MB took ~1 s that way
 * here, page faults included, against 0.03 s taken as it is. Where the guess is wrong the backend copies, as before.
 */
export function backendFloat32Array(count: number, shared = false): Float32Array {
  if (4 * count < ALIGNED_FROM_BYTES) return shared ? new Float32Array(new SharedArrayBuffer(4 * count)) : new Float32Array(count);
  return new Float32Array(shared ? new SharedArrayBuffer(4 * count + 64) : new ArrayBuffer(4 * count + 64), 48, count);
}

/** Half-precision (`bf16`: bfloat16) bit patterns, little-endian at any byte offset, as float32 values. */
export function halfBytesToFloat32(bytes: Uint8Array, count: number, bf16: boolean, out: Float32Array = backendFloat32Array(count)): Float32Array {
  // Viewed in place where aligned; else copied first (a GGUF tensor's bytes may start at an odd offset of a pooled Buffer).
  let halves: Uint16Array;
  if (bytes.byteOffset % 2 === 0) halves = new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  else {
    halves = new Uint16Array(count);
    new Uint8Array(halves.buffer).set(bytes.subarray(0, 2 * count));
  }
  const bits = new Uint32Array(out.buffer, out.byteOffset, count);
  if (bf16) {
    for (let i = 0; i < count; i++) bits[i] = halves[i] << 16;
  } else {
    const table = getF16Table();
    for (let i = 0; i < count; i++) bits[i] = table[halves[i]];
  }
  return out;
}

/** Copy of `data` with every value rounded to bfloat16 (RNE), as float32. */
export function roundToBf16(data: Float32Array): Float32Array {
  const out = new Float32Array(data.length);
  const src = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const dst = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) dst[i] = bf16FromF32Bits(src[i]) << 16;
  return out;
}

/** Copy of `data` with every value rounded to IEEE half precision (RNE), as float32. */
export function roundToF16(data: Float32Array): Float32Array {
  const table = getF16Table();
  const out = new Float32Array(data.length);
  const src = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const dst = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) dst[i] = table[f16FromF32Bits(src[i])];
  return out;
}

// ---------------------------------------------------------------------------------------
// Byte sources
// ---------------------------------------------------------------------------------------

interface ByteSource {
  readonly size: number;
  /** Fill `target` with the bytes starting at absolute `position`. */
  readInto(target: Uint8Array, position: number): void;
  close(): void;
}

class FileSource implements ByteSource {
  private fd: number | null;
  constructor(
    private readonly path: string,
    fd: number,
    readonly size: number,
  ) {
    this.fd = fd;
  }
  readInto(target: Uint8Array, position: number): void {
    if (this.fd === null) throw new Error(`${this.path}: file is closed`);
    readAll(this.fd, target, position, this.path);
  }
  close(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }
}

class BufferSource implements ByteSource {
  constructor(private readonly bytes: Uint8Array) {}
  get size(): number {
    return this.bytes.length;
  }
  readInto(target: Uint8Array, position: number): void {
    if (position + target.length > this.bytes.length) {
      throw new Error(`read of ${target.length} bytes at ${position} is beyond the buffer (${this.bytes.length} bytes)`);
    }
    target.set(this.bytes.subarray(position, position + target.length));
  }
  close(): void {}
}

// ---------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------

function describe(x: unknown): string {
  if (x === null) return 'null';
  if (Array.isArray(x)) return `array ${truncate(JSON.stringify(x), 60)}`;
  if (typeof x === 'object') return 'object';
  if (typeof x === 'string') return `string ${truncate(JSON.stringify(x), 60)}`;
  return `${typeof x} ${String(x)}`;
}

function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n)}...` : s;
}

function product(shape: readonly number[]): number {
  let p = 1;
  for (const d of shape) p *= d;
  return p;
}

function parseHeader(source: string, src: ByteSource): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  const fail = (msg: string): never => {
    throw new Error(`Invalid safetensors file ${source}: ${msg}`);
  };
  if (src.size < 8) {
    fail(`file is ${src.size} bytes, shorter than the 8-byte header length prefix (truncated or not a safetensors file)`);
  }
  const prefix = new Uint8Array(8);
  src.readInto(prefix, 0);
  const headerLen64 = new DataView(prefix.buffer).getBigUint64(0, true);
  const available = src.size - 8;
  if (headerLen64 > BigInt(available)) {
    fail(
      `header length ${headerLen64} is beyond the file size (${src.size} bytes leave ${available} bytes after the ` +
        `8-byte prefix; truncated or not a safetensors file)`,
    );
  }
  const headerLen = Number(headerLen64);
  if (headerLen > MAX_HEADER_BYTES) fail(`header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (headerLen < 2) fail(`header length ${headerLen} is too small to hold a JSON object`);
  const headerBytes = new Uint8Array(headerLen);
  src.readInto(headerBytes, 8);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    return fail(`header (${headerLen} bytes) is not valid UTF-8`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(
      `header is not valid JSON (${(e as Error).message}); header starts with ${JSON.stringify(truncate(text, 80))}`,
    );
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    return fail(`header must be a JSON object, got ${describe(json)}`);
  }
  const dataStart = 8 + headerLen;
  const dataSize = src.size - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const ranges: Array<{ name: string; begin: number; end: number }> = [];

  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
        fail(`"${METADATA_KEY}" must be an object of strings, got ${describe(entry)}`);
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(`"${METADATA_KEY}" value for "${k}" must be a string, got ${describe(v)}`);
        metadata[k] = v as string;
      }
      continue;
    }
    const where = `tensor "${name}"`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      fail(`${where}: expected an object {dtype, shape, data_offsets}, got ${describe(entry)}`);
    }
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isSafetensorsDtype(dtype)) {
      fail(
        `${where}: unknown dtype ${typeof dtype === 'string' ? `"${dtype}"` : describe(dtype)} ` +
          `(supported: ${Object.keys(DTYPE_BYTES).join(', ')})`,
      );
    }
    const dt = dtype as SafetensorsDtype;
    if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
      fail(`${where}: shape must be an array of non-negative integers, got ${describe(shape)}`);
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      fail(`${where}: data_offsets must be [begin, end] with integers 0 <= begin <= end, got ${describe(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    const shp = (shape as number[]).slice();
    const count = product(shp);
    const expected = count * DTYPE_BYTES[dt];
    if (end - begin !== expected) {
      fail(
        `${where}: byte length ${end - begin} (data_offsets [${begin}, ${end}]) does not match shape ` +
          `[${shp.join(', ')}] x ${dt} (${count} elements x ${DTYPE_BYTES[dt]} bytes = ${expected} bytes)`,
      );
    }
    if (end > dataSize) {
      fail(
        `${where}: data_offsets [${begin}, ${end}] are beyond the data area (${dataSize} bytes after the ` +
          `${headerLen}-byte header; truncated file?)`,
      );
    }
    tensors.set(name, { name, dtype: dt, shape: shp, byteOffset: dataStart + begin, byteLength: end - begin });
    if (end > begin) ranges.push({ name, begin, end });
  }

  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prev: { name: string; begin: number; end: number } | null = null;
  for (const r of ranges) {
    if (prev && r.begin < prev.end) {
      fail(
        `tensors "${prev.name}" [${prev.begin}, ${prev.end}] and "${r.name}" [${r.begin}, ${r.end}] ` +
          `have overlapping data_offsets`,
      );
    }
    if (!prev || r.end > prev.end) prev = r;
  }
  return { tensors, metadata };
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

export class SafetensorsFile {
  readonly path: string;
  readonly tensors: Map<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  private readonly src: ByteSource;
  private closed = false;

  private constructor(path: string, src: ByteSource) {
    this.path = path;
    this.src = src;
    const { tensors, metadata } = parseHeader(path, src);
    this.tensors = tensors;
    this.metadata = metadata;
  }

  /** Open a file and parse its header only. */
  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new Error(`Cannot open safetensors file ${path}: ${(e as Error).message}`);
    }
    const src = new FileSource(path, fd, fs.fstatSync(fd).size);
    try {
      return new SafetensorsFile(path, src);
    } catch (e) {
      src.close();
      throw e;
    }
  }

  /** Parse an in-memory safetensors image; `source` names it in error messages. */
  static fromBuffer(bytes: Uint8Array, source: string): SafetensorsFile {
    return new SafetensorsFile(source, new BufferSource(bytes));
  }

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new Error(missingTensorMessage(name, this.path, [...this.tensors.keys()]));
    return info;
  }

  /** The raw little-endian bytes of a tensor, as stored. */
  readBytes(name: string): Uint8Array {
    const info = this.info(name);
    this.checkOpen();
    const bytes = new Uint8Array(info.byteLength);
    this.src.readInto(bytes, info.byteOffset);
    return bytes;
  }

  /** Read one tensor and convert it: floats to float32, integers and BOOL to int32. */
  /** Reads one tensor: floats as float32, integers and booleans as int32. */
  read(name: string): HostTensor {
    assertLittleEndianHost();
    const info = this.info(name);
    this.checkOpen();
    const n = info.byteLength / DTYPE_BYTES[info.dtype];
    const shape = info.shape.slice();
    const fill = (view: ArrayBufferView): void => {
      this.src.readInto(new Uint8Array(view.buffer, view.byteOffset, view.byteLength), info.byteOffset);
    };
    switch (info.dtype) {
      case 'F32': {
        const out = backendFloat32Array(n);
        fill(out);
        return { dtype: 'float32', shape, data: out };
      }
      case 'F64': {
        const tmp = new Float64Array(n);
        fill(tmp);
        return { dtype: 'float32', shape, data: Float32Array.from(tmp) };
      }
      case 'BF16': {
        // Read the 16-bit values into the upper half of the output and widen them in place, front to back: the
        // write of element i (16-bit slots 2i, 2i+1) never passes the slot n + i it reads. No second buffer.
        const out = backendFloat32Array(n);
        const halves = new Uint16Array(out.buffer, out.byteOffset, 2 * n);
        fill(halves.subarray(n));
        const bits = new Uint32Array(out.buffer, out.byteOffset, n);
        for (let i = 0; i < n; i++) bits[i] = halves[n + i] << 16;
        return { dtype: 'float32', shape, data: out };
      }
      case 'F16': {
        const tmp = new Uint16Array(n);
        fill(tmp);
        const table = getF16Table();
        const out = backendFloat32Array(n);
        const bits = new Uint32Array(out.buffer, out.byteOffset, n);
        for (let i = 0; i < n; i++) bits[i] = table[tmp[i]];
        return { dtype: 'float32', shape, data: out };
      }
      case 'I32': {
        const out = new Int32Array(n);
        fill(out);
        return { dtype: 'int32', shape, data: out };
      }
      case 'I64':
      case 'U64': {
        const tmp = new Int32Array(2 * n);
        fill(tmp);
        const out = new Int32Array(n);
        const unsigned = info.dtype === 'U64';
        for (let i = 0; i < n; i++) {
          const lo = tmp[2 * i];
          const hi = tmp[2 * i + 1];
          const ok = unsigned ? hi === 0 && lo >= 0 : hi === lo >> 31;
          if (!ok) {
            const v = unsigned
              ? (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)
              : (BigInt(hi) << 32n) | BigInt(lo >>> 0);
            throw new Error(
              `Tensor "${name}" in ${this.path}: ${info.dtype} value ${v} at flat index ${i} is outside the int32 ` +
                `range [-2147483648, 2147483647]; it cannot be converted to int32`,
            );
          }
          out[i] = lo;
        }
        return { dtype: 'int32', shape, data: out };
      }
      case 'U32': {
        const tmp = new Uint32Array(n);
        fill(tmp);
        for (let i = 0; i < n; i++) {
          if (tmp[i] > 0x7fffffff) {
            throw new Error(
              `Tensor "${name}" in ${this.path}: U32 value ${tmp[i]} at flat index ${i} is outside the int32 range; ` +
                `it cannot be converted to int32`,
            );
          }
        }
        return { dtype: 'int32', shape, data: new Int32Array(tmp.buffer) };
      }
      case 'I16':
      case 'U16':
      case 'I8':
      case 'U8': {
        const tmp =
          info.dtype === 'I16'
            ? new Int16Array(n)
            : info.dtype === 'U16'
              ? new Uint16Array(n)
              : info.dtype === 'I8'
                ? new Int8Array(n)
                : new Uint8Array(n);
        fill(tmp);
        const out = new Int32Array(n);
        for (let i = 0; i < n; i++) out[i] = tmp[i];
        return { dtype: 'int32', shape, data: out };
      }
      case 'BOOL': {
        const tmp = new Uint8Array(n);
        fill(tmp);
        const out = new Int32Array(n);
        for (let i = 0; i < n; i++) out[i] = tmp[i] !== 0 ? 1 : 0;
        return { dtype: 'int32', shape, data: out };
      }
    }
  }

  close(): void {
    if (!this.closed) {
      this.closed = true;
      this.src.close();
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new Error(`${this.path}: safetensors file is closed`);
  }
}

/** "Tensor X not found in F (N tensors; e.g. a, b, c)", preferring names that look alike. */
export function missingTensorMessage(name: string, where: string, available: string[]): string {
  const last = name.split('.').pop() ?? name;
  const similar = available.filter((n) => n !== name && n.endsWith(`.${last}`));
  const pick = (similar.length > 0 ? similar : available).slice(0, 5);
  const more = available.length > pick.length ? ', ...' : '';
  return (
    `Tensor "${name}" not found in ${where} (${available.length} tensors` +
    (available.length ? `; ${similar.length ? 'similar' : 'available'}: ${pick.join(', ')}${more}` : '') +
    ')'
  );
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/** `target.length` bytes of file `fd` from `position`, in calls of at most 1 GiB (Node refuses 2 GiB and more in one). */
export function readAll(fd: number, target: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < target.length) {
    const len = Math.min(IO_CHUNK, target.length - done);
    const n = fs.readSync(fd, target, done, len, position + done);
    if (n <= 0) {
      throw new Error(
        `${path}: unexpected end of file at byte ${position + done} ` +
          `(needed ${target.length} bytes from ${position}; was the file truncated after opening?)`,
      );
    }
    done += n;
  }
}

/** All of `bytes` to file `fd`, in calls of at most 1 GiB. */
export function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    const len = Math.min(IO_CHUNK, bytes.length - done);
    done += fs.writeSync(fd, bytes, done, len);
  }
}

const WRITE_DTYPES: Record<WritableDtype, 'float' | 'int'> = { F32: 'float', F16: 'float', BF16: 'float', I32: 'int', I64: 'int' };

function validateToWrite(t: TensorToWrite, seen: Set<string>): number {
  const where = `writeSafetensors: tensor "${t.name}"`;
  if (typeof t.name !== 'string' || t.name.length === 0) throw new Error('writeSafetensors: tensor names must be non-empty strings');
  if (t.name === METADATA_KEY) throw new Error(`writeSafetensors: "${METADATA_KEY}" cannot be used as a tensor name`);
  if (seen.has(t.name)) throw new Error(`${where} appears more than once`);
  seen.add(t.name);
  if (!(t.dtype in WRITE_DTYPES)) {
    throw new Error(`${where}: cannot write dtype ${String(t.dtype)} (supported: ${Object.keys(WRITE_DTYPES).join(', ')})`);
  }
  if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`${where}: shape must be an array of non-negative integers, got ${describe(t.shape)}`);
  }
  const want = WRITE_DTYPES[t.dtype];
  const ok = want === 'float' ? t.data instanceof Float32Array : t.data instanceof Int32Array;
  if (!ok) {
    throw new Error(
      `${where}: dtype ${t.dtype} needs ${want === 'float' ? 'Float32Array' : 'Int32Array'} data, got ` +
        `${(t.data as object)?.constructor?.name ?? typeof t.data}`,
    );
  }
  const count = product(t.shape);
  if (t.data.length !== count) {
    throw new Error(`${where}: shape [${t.shape.join(', ')}] has ${count} elements but data has ${t.data.length}`);
  }
  return count * DTYPE_BYTES[t.dtype];
}

function writeTensorData(fd: number, t: TensorToWrite): void {
  const data = t.data;
  if (t.dtype === 'F32' || t.dtype === 'I32') {
    writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    return;
  }
  const src32 = new Uint32Array(data.buffer, data.byteOffset, data.length);
  for (let start = 0; start < data.length; start += CONVERT_CHUNK) {
    const end = Math.min(data.length, start + CONVERT_CHUNK);
    const m = end - start;
    let out: Uint16Array | Int32Array;
    if (t.dtype === 'BF16') {
      out = new Uint16Array(m);
      for (let i = 0; i < m; i++) out[i] = bf16FromF32Bits(src32[start + i]);
    } else if (t.dtype === 'F16') {
      out = new Uint16Array(m);
      for (let i = 0; i < m; i++) out[i] = f16FromF32Bits(src32[start + i]);
    } else {
      // I64: sign-extend each int32 into a little-endian (lo, hi) pair
      out = new Int32Array(2 * m);
      const src = data as Int32Array;
      for (let i = 0; i < m; i++) {
        const v = src[start + i];
        out[2 * i] = v;
        out[2 * i + 1] = v >> 31;
      }
    }
    writeAll(fd, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
  }
}

/**
 * Write a safetensors file that `safetensors`/transformers can load. `__metadata__` always has
 * `format: "pt"`. F32 data can be stored as BF16 or F16 (round to nearest even), int32 as I64.
 * Tensors are laid out by element size (largest first, otherwise in the given order) so every tensor
 * is aligned to its element size; the header is space-padded to a multiple of 8 bytes.
 * Data is written tensor by tensor, never assembled into one buffer.
 */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  assertLittleEndianHost();
  const seen = new Set<string>();
  const sizes = tensors.map((t) => validateToWrite(t, seen));
  if (metadata && metadata.format !== undefined && metadata.format !== 'pt') {
    // transformers refuses to load safetensors whose format is not pt
    throw new Error(`writeSafetensors: metadata.format must be "pt" (got "${metadata.format}")`);
  }
  const meta: Record<string, string> = { format: 'pt' };
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== 'string') throw new Error(`writeSafetensors: metadata value for "${k}" must be a string, got ${describe(v)}`);
    meta[k] = v;
  }

  const order = tensors
    .map((t, i) => ({ t, size: sizes[i], i }))
    .sort((a, b) => DTYPE_BYTES[b.t.dtype] - DTYPE_BYTES[a.t.dtype] || a.i - b.i);
  const header: Record<string, unknown> = { [METADATA_KEY]: meta };
  let offset = 0;
  for (const { t, size } of order) {
    header[t.name] = { dtype: t.dtype, shape: t.shape.slice(), data_offsets: [offset, offset + size] };
    offset += size;
  }
  let headerText = JSON.stringify(header);
  const rawLen = Buffer.byteLength(headerText, 'utf8');
  headerText += ' '.repeat((8 - (rawLen % 8)) % 8);
  const headerBytes = Buffer.from(headerText, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length), 0);

  const fd = fs.openSync(path, 'w');
  let ok = false;
  try {
    writeAll(fd, prefix);
    writeAll(fd, headerBytes);
    for (const { t } of order) writeTensorData(fd, t);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) {
      try {
        fs.unlinkSync(path);
      } catch {
        /* ignore */
      }
    }
  }
}
