import { expect } from 'chai';
import { errorOf } from '../helpers';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CheckpointReader, saveCheckpoint } from '../../src/io/checkpoint';
import { SafetensorsFile, roundToBf16, writeSafetensors } from '../../src/io/safetensors';

const FIXTURES = path.resolve(__dirname, '../../../test/fixtures/hf-reference/tiny-gqa');
const FP32 = path.join(FIXTURES, 'causal-lm');
const BF16 = path.join(FIXTURES, 'causal-lm-bf16');
const SHARDED = path.join(FIXTURES, 'causal-lm-sharded');


function bitsEqual(a: Float32Array | Int32Array, b: Float32Array | Int32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

describe('io/checkpoint', () => {
  let tmp: string;
  let fp32: CheckpointReader;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ckpt-test-'));
    fp32 = CheckpointReader.open(FP32);
  });
  after(() => {
    fp32.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('HF fixtures', () => {
    it('reads the fp32 checkpoint', () => {
      expect(fp32.indexFile).to.equal(null);
      expect(fp32.names()).to.include('model.embed_tokens.weight').and.include('lm_head.weight');
      expect(fp32.dtypes()).to.deep.equal(new Set(['F32']));
      const info = fp32.info('model.embed_tokens.weight');
      expect(info.shape).to.deep.equal([96, 64]);
      expect(info.file).to.equal(path.join(FP32, 'model.safetensors'));
      const t = fp32.read('model.layers.0.self_attn.k_proj.weight');
      expect(t.dtype).to.equal('float32');
      expect(t.shape).to.deep.equal([32, 64]);
      expect(t.data.length).to.equal(32 * 64);
      expect(t.data.every((v) => Number.isFinite(v))).to.equal(true);
      expect(fp32.totalBytes()).to.equal(70272 * 4);
      expect(fp32.metadata()).to.deep.equal({ format: 'pt' });
    });

    it('the bf16 checkpoint equals the fp32 one rounded to bf16', () => {
      const bf = CheckpointReader.open(BF16);
      try {
        expect(bf.names()).to.deep.equal(fp32.names());
        expect(bf.dtypes()).to.deep.equal(new Set(['BF16']));
        expect(bf.totalBytes()).to.equal(fp32.totalBytes() / 2);
        for (const name of fp32.names()) {
          const a = fp32.read(name);
          const b = bf.read(name);
          expect(b.shape, name).to.deep.equal(a.shape);
          expect(b.dtype).to.equal('float32');
          for (let i = 0; i < a.data.length; i++) {
            const tol = Math.abs(a.data[i]) * 2 ** -8 + 1e-30;
            if (!(Math.abs(a.data[i] - b.data[i]) <= tol)) {
              expect.fail(`${name}[${i}]: bf16 ${b.data[i]} vs fp32 ${a.data[i]}`);
            }
          }
          // torch casts with round-to-nearest-even, the same as ours
          expect(bitsEqual(roundToBf16(a.data as Float32Array), b.data), name).to.equal(true);
        }
      } finally {
        bf.close();
      }
    });

    it('the sharded checkpoint is bit-identical to the single file', () => {
      const sh = CheckpointReader.open(SHARDED);
      try {
        expect(sh.indexFile).to.equal(path.join(SHARDED, 'model.safetensors.index.json'));
        expect(sh.files.length).to.equal(10);
        expect(sh.names()).to.deep.equal(fp32.names());
        expect(sh.totalBytes()).to.equal(fp32.totalBytes());
        expect(sh.info('lm_head.weight').file).to.equal(path.join(SHARDED, 'model-00001-of-00010.safetensors'));
        for (const name of fp32.names()) {
          const a = fp32.read(name);
          const b = sh.read(name);
          expect(b.shape, name).to.deep.equal(a.shape);
          expect(bitsEqual(a.data, b.data), name).to.equal(true);
        }
      } finally {
        sh.close();
      }
    });

    it('a missing tensor name lists similar names', () => {
      const msg = errorOf(() => fp32.read('model.layers.7.self_attn.k_proj.weight'));
      expect(msg).to.include('not found').and.include(FP32).and.include('k_proj.weight');
    });
  });

  describe('saveCheckpoint', () => {
    const all = () => fp32.names().map((name) => ({ name, ...fp32.read(name) }));

    it('writes a single model.safetensors', () => {
      const dir = path.join(tmp, 'single', 'nested');
      const res = saveCheckpoint(dir, all());
      expect(res.indexFile).to.equal(null);
      expect(res.files).to.deep.equal([path.join(dir, 'model.safetensors')]);
      const r = CheckpointReader.open(dir);
      try {
        expect(r.names()).to.deep.equal(fp32.names());
        for (const n of fp32.names()) expect(bitsEqual(r.read(n).data, fp32.read(n).data), n).to.equal(true);
        expect(r.metadata().format).to.equal('pt');
      } finally {
        r.close();
      }
    });

    it('shards like transformers and reopens', () => {
      const dir = path.join(tmp, 'sharded');
      // a stale single file from an earlier save must disappear
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'model.safetensors'), 'stale');
      const tensors = all();
      const res = saveCheckpoint(dir, tensors, { maxShardBytes: 40_000 });
      expect(res.totalBytes).to.equal(fp32.totalBytes());
      expect(res.files.length).to.be.greaterThan(2);
      const n = res.files.length;
      const pad = (i: number) => String(i).padStart(5, '0');
      expect(res.files.map((f) => path.basename(f))).to.deep.equal(
        Array.from({ length: n }, (_, i) => `model-${pad(i + 1)}-of-${pad(n)}.safetensors`),
      );
      expect(fs.existsSync(path.join(dir, 'model.safetensors'))).to.equal(false);
      const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
      expect(index.metadata.total_size).to.equal(fp32.totalBytes());
      expect(Object.keys(index.weight_map)).to.deep.equal(fp32.names());
      for (const f of res.files) {
        const st = SafetensorsFile.open(f);
        const bytes = [...st.tensors.values()].reduce((s, t) => s + t.byteLength, 0);
        // 96x64 fp32 = 24576 bytes: no shard holds more than the limit unless it is a single tensor
        expect(bytes <= 40_000 || st.tensors.size === 1).to.equal(true);
        st.close();
      }
      const r = CheckpointReader.open(dir);
      try {
        expect(r.names()).to.deep.equal(fp32.names());
        for (const t of tensors) expect(bitsEqual(r.read(t.name).data, t.data), t.name).to.equal(true);
      } finally {
        r.close();
      }
      // saving again unsharded removes the shards and the index
      saveCheckpoint(dir, tensors.slice(0, 2));
      expect(fs.readdirSync(dir).sort()).to.deep.equal(['model.safetensors']);
    });

    it('an oversized tensor gets a shard of its own', () => {
      const dir = path.join(tmp, 'oversized');
      const res = saveCheckpoint(
        dir,
        [
          { name: 'a', shape: [2], data: new Float32Array(2) },
          { name: 'big', shape: [100], data: new Float32Array(100) },
          { name: 'b', shape: [2], data: new Float32Array(2) },
        ],
        { maxShardBytes: 64 },
      );
      const index = JSON.parse(fs.readFileSync(res.indexFile!, 'utf8'));
      expect(index.weight_map).to.deep.equal({
        a: 'model-00002-of-00002.safetensors',
        b: 'model-00002-of-00002.safetensors',
        big: 'model-00001-of-00002.safetensors',
      });
    });

    it('stores BF16 when asked, leaving int tensors as integers', () => {
      const dir = path.join(tmp, 'bf16');
      const w = fp32.read('model.norm.weight');
      saveCheckpoint(
        dir,
        [
          { name: 'w', ...w },
          { name: 'ids', shape: [3], data: new Int32Array([1, -2, 3]), dtype: 'int32' },
        ],
        { dtype: 'BF16' },
      );
      const r = CheckpointReader.open(dir);
      try {
        expect(r.info('w').dtype).to.equal('BF16');
        expect(r.info('ids').dtype).to.equal('I32');
        expect(bitsEqual(r.read('w').data, roundToBf16(w.data as Float32Array))).to.equal(true);
        expect(Array.from(r.read('ids').data)).to.deep.equal([1, -2, 3]);
        // same bits as the HF bf16 fixture
        const ref = SafetensorsFile.open(path.join(BF16, 'model.safetensors'));
        expect(Buffer.from(r.readBytes('w')).equals(Buffer.from(ref.readBytes('model.norm.weight')))).to.equal(true);
        ref.close();
      } finally {
        r.close();
      }
    });
  });

  describe('errors', () => {
    /** A copy of the sharded fixture that a test may damage. */
    function shardedCopy(name: string): string {
      const dir = path.join(tmp, name);
      fs.cpSync(SHARDED, dir, { recursive: true });
      return dir;
    }

    it('a folder without weights', () => {
      const dir = path.join(tmp, 'empty');
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'config.json'), '{}');
      const msg = errorOf(() => CheckpointReader.open(dir));
      expect(msg).to.include(`No weights in ${dir}`).and.include('model.safetensors.index.json').and.include('config.json');
    });

    it('a .bin-only folder', () => {
      const dir = path.join(tmp, 'bin');
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), 'x');
      expect(errorOf(() => CheckpointReader.open(dir))).to.include('.bin checkpoints are not supported').and.include('safetensors');
    });

    it('a missing folder', () => {
      expect(errorOf(() => CheckpointReader.open(path.join(tmp, 'nope')))).to.include('does not exist');
    });

    it('an index listing a missing shard', () => {
      const dir = shardedCopy('missing-shard');
      fs.unlinkSync(path.join(dir, 'model-00003-of-00010.safetensors'));
      const msg = errorOf(() => CheckpointReader.open(dir));
      expect(msg).to.include('model-00003-of-00010.safetensors').and.include('model.safetensors.index.json').and.include('missing');
    });

    it('a tensor in the index but not in its shard, and one in a shard but not in the index', () => {
      const dir = shardedCopy('mismatch');
      const indexPath = path.join(dir, 'model.safetensors.index.json');
      const index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
      index.weight_map['model.extra.weight'] = 'model-00001-of-00010.safetensors';
      fs.writeFileSync(indexPath, JSON.stringify(index));
      let msg = errorOf(() => CheckpointReader.open(dir));
      expect(msg).to.include('"model.extra.weight"').and.include('model-00001-of-00010.safetensors').and.include(indexPath);

      delete index.weight_map['model.extra.weight'];
      delete index.weight_map['model.norm.bias'];
      fs.writeFileSync(indexPath, JSON.stringify(index));
      msg = errorOf(() => CheckpointReader.open(dir));
      expect(msg).to.include('"model.norm.bias"').and.include('model-00010-of-00010.safetensors').and.include(indexPath);
    });

    it('an invalid index', () => {
      const dir = shardedCopy('bad-index');
      fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"metadata": {}}');
      expect(errorOf(() => CheckpointReader.open(dir))).to.include('weight_map');
      fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{not json');
      expect(errorOf(() => CheckpointReader.open(dir))).to.include('Invalid checkpoint index');
    });

    it('a corrupt shard names the shard file', () => {
      const dir = path.join(tmp, 'corrupt');
      fs.mkdirSync(dir);
      writeSafetensors(path.join(dir, 'model.safetensors'), [{ name: 'w', dtype: 'F32', shape: [4], data: new Float32Array(4) }]);
      const p = path.join(dir, 'model.safetensors');
      fs.truncateSync(p, fs.statSync(p).size - 4);
      expect(errorOf(() => CheckpointReader.open(dir))).to.include(p).and.include('beyond the data area');
    });
  });
});
