/**
 * Hugging Face checkpoint folders: `model.safetensors`, or shards listed in
 * `model.safetensors.index.json`, read as named host tensors; and the writer for the same layout.
 */
import * as fs from 'fs';
import * as path from 'path';
import {
  DTYPE_BYTES,
  HostTensor,
  SafetensorsDtype,
  SafetensorsFile,
  TensorInfo,
  TensorToWrite,
  WritableDtype,
  missingTensorMessage,
  writeSafetensors,
} from './safetensors';

export const SAFE_WEIGHTS_NAME = 'model.safetensors';
export const SAFE_WEIGHTS_INDEX_NAME = 'model.safetensors.index.json';
/** transformers' default `max_shard_size` ("5GB" = 5e9 bytes). */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

const SHARD_RE = /^model-\d{5}-of-\d{5}\.safetensors$/;
const BIN_RE = /^pytorch_model(-\d{5}-of-\d{5})?\.bin(\.index\.json)?$/;

export type CheckpointTensorInfo = TensorInfo & { file: string };

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
}

function fileList(entries: string[], max = 20): string {
  if (entries.length === 0) return 'nothing';
  const shown = entries.slice(0, max).join(', ');
  return entries.length > max ? `${shown}, ... (${entries.length} entries)` : shown;
}

export class CheckpointReader {
  readonly dir: string;
  /** Full path of the index file, or null for a single-file checkpoint. */
  readonly indexFile: string | null;
  /** Full paths of the safetensors files, in shard order. */
  readonly files: string[];
  private readonly shards: SafetensorsFile[];
  private readonly byName: Map<string, SafetensorsFile>;
  private readonly sortedNames: string[];

  private constructor(dir: string, indexFile: string | null, shards: SafetensorsFile[], byName: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.indexFile = indexFile;
    this.shards = shards;
    this.files = shards.map((s) => s.path);
    this.byName = byName;
    this.sortedNames = [...byName.keys()].sort();
  }

  /** Open a checkpoint folder, reading only the safetensors headers (and the index, if any). */
  static open(dir: string): CheckpointReader {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(dir);
    } catch {
      throw new Error(`Checkpoint folder ${dir} does not exist`);
    }
    if (!stat.isDirectory()) throw new Error(`Checkpoint path ${dir} is not a folder`);

    const indexPath = path.join(dir, SAFE_WEIGHTS_INDEX_NAME);
    if (fs.existsSync(indexPath)) return CheckpointReader.openIndexed(dir, indexPath);

    const single = path.join(dir, SAFE_WEIGHTS_NAME);
    if (fs.existsSync(single)) {
      const file = SafetensorsFile.open(single);
      return new CheckpointReader(dir, null, [file], new Map(file.names().map((n) => [n, file])));
    }

    const entries = listDir(dir);
    const bins = entries.filter((e) => BIN_RE.test(e));
    if (bins.length > 0) {
      throw new Error(
        `No weights in ${dir}: found a PyTorch .bin checkpoint (${fileList(bins, 5)}), but .bin checkpoints are not ` +
          `supported (they are Python pickles); safetensors is needed. Convert it in Python with ` +
          `model.save_pretrained(dir, safe_serialization=True). (found: ${fileList(entries)})`,
      );
    }
    throw new Error(
      `No weights in ${dir}: expected ${SAFE_WEIGHTS_NAME} or ${SAFE_WEIGHTS_INDEX_NAME} (found: ${fileList(entries)})`,
    );
  }

  private static openIndexed(dir: string, indexPath: string): CheckpointReader {
    let index: unknown;
    try {
      index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
    } catch (e) {
      throw new Error(`Invalid checkpoint index ${indexPath}: ${(e as Error).message}`);
    }
    const weightMap =
      index !== null && typeof index === 'object' && !Array.isArray(index)
        ? (index as Record<string, unknown>).weight_map
        : undefined;
    if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap)) {
      throw new Error(`Invalid checkpoint index ${indexPath}: expected an object with a "weight_map" object {tensor: shard file}`);
    }
    const map = weightMap as Record<string, unknown>;
    const shardNames: string[] = [];
    for (const [tensor, shard] of Object.entries(map)) {
      if (typeof shard !== 'string' || shard.length === 0) {
        throw new Error(`Invalid checkpoint index ${indexPath}: weight_map["${tensor}"] must be a file name, got ${JSON.stringify(shard)}`);
      }
      if (path.isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
        throw new Error(`Invalid checkpoint index ${indexPath}: shard "${shard}" must be a file inside ${dir}`);
      }
      if (!shardNames.includes(shard)) shardNames.push(shard);
    }
    if (shardNames.length === 0) throw new Error(`Invalid checkpoint index ${indexPath}: weight_map is empty`);
    shardNames.sort();

    for (const shard of shardNames) {
      if (!fs.existsSync(path.join(dir, shard))) {
        throw new Error(
          `Shard ${shard} listed in ${indexPath} is missing from ${dir} (found: ${fileList(listDir(dir))})`,
        );
      }
    }

    const opened: SafetensorsFile[] = [];
    try {
      const byShard = new Map<string, SafetensorsFile>();
      for (const shard of shardNames) {
        const f = SafetensorsFile.open(path.join(dir, shard));
        opened.push(f);
        byShard.set(shard, f);
      }
      const byName = new Map<string, SafetensorsFile>();
      for (const [tensor, shard] of Object.entries(map) as Array<[string, string]>) {
        const f = byShard.get(shard)!;
        if (!f.has(tensor)) {
          throw new Error(
            `Tensor "${tensor}" is listed in ${indexPath} under shard ${shard}, but ${f.path} does not contain it`,
          );
        }
        byName.set(tensor, f);
      }
      for (const [shard, f] of byShard) {
        for (const tensor of f.names()) {
          if (map[tensor] !== shard) {
            const listed = typeof map[tensor] === 'string' ? `lists it under shard ${map[tensor] as string}` : 'does not list it';
            throw new Error(`Tensor "${tensor}" is present in shard ${f.path} but ${indexPath} ${listed}`);
          }
        }
      }
      return new CheckpointReader(dir, indexPath, opened, byName);
    } catch (e) {
      for (const f of opened) f.close();
      throw e;
    }
  }

  /** All tensor names, sorted. */
  names(): string[] {
    return this.sortedNames.slice();
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  info(name: string): CheckpointTensorInfo {
    const f = this.fileOf(name);
    return { ...f.info(name), file: f.path };
  }

  read(name: string): HostTensor {
    return this.fileOf(name).read(name);
  }

  /** Raw stored bytes of a tensor. */
  readBytes(name: string): Uint8Array {
    return this.fileOf(name).readBytes(name);
  }

  /** Bytes of tensor data on disk (headers excluded). */
  totalBytes(): number {
    let total = 0;
    for (const [name, f] of this.byName) total += f.info(name).byteLength;
    return total;
  }

  dtypes(): Set<SafetensorsDtype> {
    const out = new Set<SafetensorsDtype>();
    for (const [name, f] of this.byName) out.add(f.info(name).dtype);
    return out;
  }

  /** `__metadata__` of the first file. */
  metadata(): Record<string, string> {
    return { ...this.shards[0].metadata };
  }

  close(): void {
    for (const f of this.shards) f.close();
  }

  private fileOf(name: string): SafetensorsFile {
    const f = this.byName.get(name);
    if (!f) throw new Error(missingTensorMessage(name, `checkpoint ${this.dir}`, this.sortedNames));
    return f;
  }
}

export interface CheckpointTensor {
  name: string;
  shape: number[];
  data: Float32Array | Int32Array;
  /**
   * Either the host dtype ('float32' / 'int32', as in `HostTensor`, or omitted: taken from the data)
   * which is stored as `opts.dtype` for floats and I32 for integers, or an explicit safetensors dtype.
   */
  dtype?: 'float32' | 'int32' | WritableDtype;
}

export interface SaveCheckpointOptions {
  /** Start a new shard when the next tensor would take a shard over this many bytes (default 5e9). */
  maxShardBytes?: number;
  /** Storage dtype of float tensors (default F32); BF16 rounds to nearest even. */
  dtype?: 'F32' | 'BF16';
}

export interface SaveCheckpointResult {
  /** Full paths of the safetensors files written. */
  files: string[];
  /** Full path of the index file, or null when a single model.safetensors was written. */
  indexFile: string | null;
  /** Bytes of tensor data (the index's metadata.total_size). */
  totalBytes: number;
}

function storageDtype(t: CheckpointTensor, floatDtype: 'F32' | 'BF16'): WritableDtype {
  if (t.dtype !== undefined && t.dtype !== 'float32' && t.dtype !== 'int32') return t.dtype;
  if (t.dtype === 'float32' || (t.dtype === undefined && t.data instanceof Float32Array)) return floatDtype;
  return 'I32';
}

function shardFileName(i: number, n: number): string {
  return `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
}

/**
 * Save tensors as a Hugging Face checkpoint: `model.safetensors`, or, when the data exceeds
 * `maxShardBytes`, shards `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`,
 * split the way transformers splits them. Old weight files from an earlier save in the same folder
 * (model.safetensors, shards, index) that are not part of this save are removed, so that readers
 * cannot pick up stale weights.
 */
export function saveCheckpoint(dir: string, tensors: CheckpointTensor[], opts: SaveCheckpointOptions = {}): SaveCheckpointResult {
  const maxShard = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(typeof maxShard === 'number' && maxShard > 0)) {
    throw new Error(`saveCheckpoint: maxShardBytes must be a positive number, got ${String(maxShard)}`);
  }
  const floatDtype = opts.dtype ?? 'F32';
  if (floatDtype !== 'F32' && floatDtype !== 'BF16') {
    throw new Error(`saveCheckpoint: dtype must be 'F32' or 'BF16', got ${String(floatDtype)}`);
  }
  if (tensors.length === 0) throw new Error('saveCheckpoint: no tensors to save');

  const seen = new Set<string>();
  const items: Array<{ t: TensorToWrite; bytes: number; count: number }> = [];
  for (const t of tensors) {
    if (seen.has(t.name)) throw new Error(`saveCheckpoint: tensor "${t.name}" appears more than once`);
    seen.add(t.name);
    const dtype = storageDtype(t, floatDtype);
    let count = 1;
    for (const d of t.shape) count *= d;
    items.push({ t: { name: t.name, dtype, shape: t.shape, data: t.data }, bytes: count * DTYPE_BYTES[dtype], count });
  }

  // transformers / huggingface_hub split: a tensor larger than the limit gets a shard of its own;
  // otherwise a new shard starts when the next tensor would take the current one over the limit.
  const shards: Array<typeof items> = [];
  let current: typeof items = [];
  let currentBytes = 0;
  let totalBytes = 0;
  let totalParams = 0;
  for (const it of items) {
    totalBytes += it.bytes;
    totalParams += it.count;
    if (it.bytes > maxShard) {
      shards.push([it]);
      continue;
    }
    if (current.length > 0 && currentBytes + it.bytes > maxShard) {
      shards.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(it);
    currentBytes += it.bytes;
  }
  if (current.length > 0) shards.push(current);

  fs.mkdirSync(dir, { recursive: true });
  const written: string[] = [];
  let indexFile: string | null = null;
  if (shards.length === 1) {
    const file = path.join(dir, SAFE_WEIGHTS_NAME);
    writeSafetensors(file, shards[0].map((it) => it.t));
    written.push(file);
  } else {
    const weightMap: Record<string, string> = {};
    shards.forEach((shard, i) => {
      const name = shardFileName(i, shards.length);
      const file = path.join(dir, name);
      writeSafetensors(file, shard.map((it) => it.t));
      written.push(file);
      for (const it of shard) weightMap[it.t.name] = name;
    });
    const sortedMap: Record<string, string> = {};
    for (const k of Object.keys(weightMap).sort()) sortedMap[k] = weightMap[k];
    const index = { metadata: { total_parameters: totalParams, total_size: totalBytes }, weight_map: sortedMap };
    indexFile = path.join(dir, SAFE_WEIGHTS_INDEX_NAME);
    fs.writeFileSync(indexFile, JSON.stringify(index, null, 2) + '\n');
  }

  // Remove stale weight files from an earlier save.
  const keep = new Set(written.map((f) => path.basename(f)));
  if (indexFile) keep.add(SAFE_WEIGHTS_INDEX_NAME);
  for (const entry of listDir(dir)) {
    const isWeights = entry === SAFE_WEIGHTS_NAME || entry === SAFE_WEIGHTS_INDEX_NAME || SHARD_RE.test(entry);
    if (isWeights && !keep.has(entry)) fs.unlinkSync(path.join(dir, entry));
  }
  return { files: written, indexFile, totalBytes };
}
