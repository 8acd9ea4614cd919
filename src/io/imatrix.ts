/**
 * Importance matrices as llama.cpp keeps them (llama-imatrix's output, llama-quantize's `--imatrix`): for each weight
 * matrix, the sum over calibration tokens of each input column's squared activation, and the token count (per expert
 * for a 3-D expert tensor). The GGUF format (`*.in_sum2` / `*.counts` tensors, `imatrix.*` keys) is read and written;
 * the legacy `.dat` format is read.
 */
import * as fs from 'fs';
import { GGUFFile, type GGUFMetaValue, writeGGUF } from './gguf';
import type { ImatrixEntry, ImportanceMatrix } from './gguf-quantize-imatrix';

export { type ImatrixEntry, type ImportanceMatrix, importanceOf } from './gguf-quantize-imatrix';

/** Reads an importance matrix: llama-imatrix's GGUF file, or its legacy `.dat` file. */
export function readImatrix(file: string): ImportanceMatrix {
  const head = Buffer.alloc(4);
  const fd = fs.openSync(file, 'r');
  try { fs.readSync(fd, head, 0, 4, 0); } finally { fs.closeSync(fd); }
  if (head.toString('latin1') !== 'GGUF') return readLegacyImatrix(file);
  const gguf = GGUFFile.open(file);
  try {
    const type = gguf.get('general.type');
    if (type !== undefined && type !== 'imatrix') throw new Error(`readImatrix: ${file} is a GGUF of general.type "${String(type)}", not an importance matrix`);
    const sums = new Map<string, Float32Array>();
    const counts = new Map<string, Float32Array>();
    for (const name of gguf.tensors.keys()) {
      const m = /^(.*)\.(in_sum2|counts)$/.exec(name);
      if (!m) continue;
      (m[2] === 'in_sum2' ? sums : counts).set(m[1], gguf.read(name).data);
    }
    if (!sums.size) throw new Error(`readImatrix: ${file} has no *.in_sum2 tensors; it is not an importance matrix`);
    const entries = new Map<string, ImatrixEntry>();
    for (const [name, s] of sums) {
      const c = counts.get(name);
      if (!c) throw new Error(`readImatrix: ${file} has ${name}.in_sum2 but no ${name}.counts`);
      if (s.length % c.length !== 0) throw new Error(`readImatrix: ${file}: ${name} has ${s.length} sums for ${c.length} counts`);
      entries.set(name, { sums: s, counts: Float32Array.from(c, (v) => Math.round(v)) });
    }
    if (gguf.get('imatrix.datasets') === undefined || gguf.get('imatrix.chunk_count') === undefined || gguf.get('imatrix.chunk_size') === undefined) {
      throw new Error(`readImatrix: ${file} lacks imatrix.datasets / imatrix.chunk_count / imatrix.chunk_size (llama-quantize refuses such files too)`);
    }
    const datasets = gguf.get('imatrix.datasets');
    return {
      entries, datasets: Array.isArray(datasets) ? datasets.map(String) : [String(datasets)],
      chunkCount: Number(gguf.get('imatrix.chunk_count')), chunkSize: Number(gguf.get('imatrix.chunk_size')),
    };
  } finally {
    gguf.close();
  }
}

/** The legacy format: entry count, then per entry its name, call count, value count and values; optionally chunks and dataset. */
function readLegacyImatrix(file: string): ImportanceMatrix {
  const b = fs.readFileSync(file);
  let at = 0;
  const need = (n: number, what: string) => { if (at + n > b.length) throw new Error(`readImatrix: ${file} ends inside ${what}; it is neither a GGUF nor a legacy .dat importance matrix`); };
  const i32 = (what: string) => { need(4, what); const v = b.readInt32LE(at); at += 4; return v; };
  const count = i32('the entry count');
  if (count < 1) throw new Error(`readImatrix: ${file} holds ${count} entries; expected at least one`);
  const entries = new Map<string, ImatrixEntry>();
  for (let i = 0; i < count; i++) {
    const length = i32('a name length');
    need(length, 'a name');
    const name = b.toString('utf8', at, at + length);
    at += length;
    const calls = i32(`${name}'s call count`);
    const values = i32(`${name}'s value count`);
    if (values < 1) throw new Error(`readImatrix: ${file}: ${name} has ${values} values`);
    need(4 * values, `${name}'s values`);
    const sums = new Float32Array(values);
    for (let j = 0; j < values; j++) sums[j] = b.readFloatLE(at + 4 * j);
    at += 4 * values;
    entries.set(name, { sums, counts: Float32Array.of(calls) });
  }
  let chunkCount = 0;
  const datasets: string[] = [];
  if (at + 4 <= b.length) {
    chunkCount = i32('the chunk count');
    if (at + 4 <= b.length) {
      const length = i32('the dataset name length');
      if (length > 0 && at + length <= b.length) datasets.push(b.toString('utf8', at, at + length));
    }
  }
  return { entries, datasets, chunkCount, chunkSize: 0, legacy: true };
}

/** Writes an importance matrix in llama-imatrix's GGUF format (entries in name order). */
export function writeImatrix(file: string, matrix: ImportanceMatrix): void {
  const names = [...matrix.entries.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const kv: Array<[string, GGUFMetaValue]> = [
    ['general.type', ['str', 'imatrix']], ['imatrix.datasets', ['strs', matrix.datasets]],
    ['imatrix.chunk_count', ['u32', matrix.chunkCount]], ['imatrix.chunk_size', ['u32', matrix.chunkSize]],
  ];
  writeGGUF(file, kv, names.flatMap((name) => {
    const { sums, counts } = matrix.entries.get(name)!;
    return [
      // ggml drops trailing dimensions of 1 (its n_dims): one matrix's entry is 1-D.
      { name: `${name}.in_sum2`, shape: counts.length > 1 ? [counts.length, sums.length / counts.length] : [sums.length], data: sums, type: 'F32' as const },
      { name: `${name}.counts`, shape: counts.length > 1 ? [counts.length, 1] : [1], data: counts, type: 'F32' as const },
    ];
  }));
}

/** saveGGUF's `imatrix` option: a file's path (read here, its path recorded in the output) or a matrix in memory. */
export function resolveImatrix(imatrix: ImatrixSource | undefined): { matrix: ImportanceMatrix; file?: string } | undefined {
  if (imatrix === undefined) return undefined;
  if (typeof imatrix === 'string') return { matrix: readImatrix(imatrix), file: imatrix };
  return 'matrix' in imatrix ? imatrix : { matrix: imatrix };
}

/** An importance matrix as saveGGUF takes one: a file's path, a matrix, or a matrix with the path it came from. */
export type ImatrixSource = string | ImportanceMatrix | { matrix: ImportanceMatrix; file?: string };

/**
 * llama-quantize's --exclude-weights / --include-weights: the entries whose names contain none of `exclude`, or, with
 * `include`, some of `include` (not both); a matrix left with no entry is no matrix (llama-quantize then quantizes
 * without one and writes no quantize.imatrix keys).
 */
export function filterImatrix(imatrix: { matrix: ImportanceMatrix; file?: string }, { include, exclude }: { include?: string[]; exclude?: string[] }):
  { matrix: ImportanceMatrix; file?: string } | undefined {
  if (include?.length && exclude?.length) throw new Error('filterImatrix: give include or exclude weights, not both (llama-quantize takes one)');
  const keep = (name: string) => (include?.length ? include.some((part) => name.includes(part)) : !(exclude ?? []).some((part) => name.includes(part)));
  const entries = new Map([...imatrix.matrix.entries].filter(([name]) => keep(name)));
  return entries.size ? { ...imatrix, matrix: { ...imatrix.matrix, entries } } : undefined;
}
