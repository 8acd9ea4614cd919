import { expect } from 'chai';
import { errorOf } from '../helpers';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  SafetensorsFile,
  TensorToWrite,
  bf16BitsToFloat32,
  f16BitsToFloat32,
  float32ToBf16Bits,
  float32ToF16Bits,
  writeSafetensors,
} from '../../src/io/safetensors';

/** A raw safetensors image: prefix (with an optional fake header length), header JSON, data. */
function image(header: unknown, data: Uint8Array = new Uint8Array(0), opts: { headerText?: string; lengthOverride?: bigint } = {}): Uint8Array {
  const text = opts.headerText ?? JSON.stringify(header);
  const h = Buffer.from(text, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(opts.lengthOverride ?? BigInt(h.length));
  return new Uint8Array(Buffer.concat([prefix, h, Buffer.from(data)]));
}


describe('io/safetensors', () => {
  let tmp: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'st-test-'));
  });
  after(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** Write bytes to a temp file and return its path. */
  function tmpFile(name: string, bytes: Uint8Array): string {
    const p = path.join(tmp, name);
    fs.writeFileSync(p, bytes);
    return p;
  }

  describe('float conversions', () => {
    it('BF16 rounds to nearest even and keeps specials', () => {
      expect(bf16BitsToFloat32(float32ToBf16Bits(1))).to.equal(1);
      // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1
      expect(bf16BitsToFloat32(float32ToBf16Bits(1 + 2 ** -8))).to.equal(1);
      // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
      expect(bf16BitsToFloat32(float32ToBf16Bits(1 + 3 * 2 ** -8))).to.equal(1 + 2 ** -6);
      // just above halfway rounds up
      expect(bf16BitsToFloat32(float32ToBf16Bits(1 + 2 ** -8 + 2 ** -20))).to.equal(1 + 2 ** -7);
      expect(bf16BitsToFloat32(float32ToBf16Bits(Infinity))).to.equal(Infinity);
      expect(bf16BitsToFloat32(float32ToBf16Bits(-Infinity))).to.equal(-Infinity);
      expect(Number.isNaN(bf16BitsToFloat32(float32ToBf16Bits(NaN)))).to.equal(true);
      expect(Object.is(bf16BitsToFloat32(float32ToBf16Bits(-0)), -0)).to.equal(true);
      // float32 max rounds up to inf under RNE
      expect(bf16BitsToFloat32(float32ToBf16Bits(3.4028234663852886e38))).to.equal(Infinity);
    });

    it('F16 rounds to nearest even, with subnormals, overflow, inf and NaN', () => {
      expect(f16BitsToFloat32(float32ToF16Bits(1))).to.equal(1);
      expect(f16BitsToFloat32(float32ToF16Bits(1 + 2 ** -11))).to.equal(1);
      expect(f16BitsToFloat32(float32ToF16Bits(1 + 3 * 2 ** -11))).to.equal(1 + 2 ** -9);
      expect(f16BitsToFloat32(float32ToF16Bits(0.1))).to.equal(0.0999755859375);
      expect(float32ToF16Bits(65504)).to.equal(0x7bff);
      expect(float32ToF16Bits(65519)).to.equal(0x7bff);
      expect(float32ToF16Bits(65520)).to.equal(0x7c00); // tie -> even -> inf
      expect(float32ToF16Bits(1e6)).to.equal(0x7c00);
      expect(float32ToF16Bits(-1e6)).to.equal(0xfc00);
      expect(float32ToF16Bits(2 ** -24)).to.equal(0x0001);
      expect(float32ToF16Bits(2 ** -25)).to.equal(0x0000); // tie -> even -> 0
      expect(float32ToF16Bits(1.5 * 2 ** -25)).to.equal(0x0001);
      expect(float32ToF16Bits(3 * 2 ** -25)).to.equal(0x0002); // 1.5 ulp tie -> even 2
      expect(float32ToF16Bits(2 ** -14 - 2 ** -25)).to.equal(0x0400); // carries into the smallest normal
      expect(float32ToF16Bits(1e-10)).to.equal(0);
      expect(f16BitsToFloat32(0x03ff)).to.equal(1023 * 2 ** -24);
      expect(f16BitsToFloat32(0x8001)).to.equal(-(2 ** -24));
      expect(f16BitsToFloat32(0x7c00)).to.equal(Infinity);
      expect(Number.isNaN(f16BitsToFloat32(0x7e00))).to.equal(true);
      expect(Number.isNaN(f16BitsToFloat32(float32ToF16Bits(NaN)))).to.equal(true);
      // every finite half value converts back to itself
      const bad: number[] = [];
      for (let h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) === 0x7c00) continue;
        if (float32ToF16Bits(f16BitsToFloat32(h)) !== h) bad.push(h);
      }
      expect(bad).to.deep.equal([]);
    });
  });

  describe('write -> read round trip', () => {
    const f32 = new Float32Array([0, -0, 1.5, -2.25, 3.4028234663852886e38, 1.401298464324817e-45, Infinity, -Infinity, 0.1]);
    const i32 = new Int32Array([0, 1, -1, 2147483647, -2147483648, 123456]);
    const bf16Exact = new Float32Array([0, 1, -2, 0.5, 1.5, 3.140625, -1024, 2 ** -100, 3.3895313892515355e38, Infinity, -Infinity]);
    const f16Exact = new Float32Array([0, 1, -2, 0.5, 1.5, 3.140625, 65504, -65504, 2 ** -24, 2 ** -14, 1023 * 2 ** -24, Infinity, -Infinity]);
    const tensors: TensorToWrite[] = [
      { name: 'a.f32', dtype: 'F32', shape: [3, 3], data: f32 },
      { name: 'b.i32', dtype: 'I32', shape: [2, 3], data: i32 },
      { name: 'c.i64', dtype: 'I64', shape: [6], data: i32 },
      { name: 'd.bf16', dtype: 'BF16', shape: [11], data: bf16Exact },
      { name: 'e.f16', dtype: 'F16', shape: [13], data: f16Exact },
      { name: 'f.scalar', dtype: 'F32', shape: [], data: new Float32Array([42]) },
      { name: 'g.empty', dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
      { name: 'h.round', dtype: 'BF16', shape: [2], data: new Float32Array([1 + 3 * 2 ** -8, 0.1]) },
      { name: 'i.round', dtype: 'F16', shape: [2], data: new Float32Array([1 + 3 * 2 ** -11, 0.1]) },
    ];

    let file: string;
    let st: SafetensorsFile;
    before(() => {
      file = path.join(tmp, 'roundtrip.safetensors');
      writeSafetensors(file, tensors, { note: 'hello' });
      st = SafetensorsFile.open(file);
    });
    after(() => st.close());

    it('reads tensors of a MiB and more (arrays placed for the tensorflow backend) back exactly: F32, BF16, F16', () => {
      const n = 3 * 2 ** 18 + 5;
      // Values exact in every format: integers below 256 (8 significant bits, as BF16 keeps) times a power of two.
      const values = Float32Array.from({ length: n }, (_, i) => (i % 2 ? -1 : 1) * ((i % 250) + 1) * 2 ** -((i % 7) + 1));
      const large = path.join(tmp, 'large.safetensors');
      writeSafetensors(large, (['F32', 'BF16', 'F16'] as const).map((dtype) => ({ name: dtype, dtype, shape: [n], data: values })));
      const file = SafetensorsFile.open(large);
      try {
        for (const dtype of ['F32', 'BF16', 'F16']) {
          const { data } = file.read(dtype);
          expect(data.length, dtype).to.equal(n);
          let differing = -1;
          for (let i = 0; i < n && differing < 0; i++) if (data[i] !== values[i]) differing = i;
          expect(differing, `${dtype}: first differing value`).to.equal(-1);
        }
      } finally {
        file.close();
      }
    });

    it('writes a valid header: format pt, padded to 8 bytes, aligned offsets', () => {
      const bytes = fs.readFileSync(file);
      const n = Number(bytes.readBigUInt64LE(0));
      expect(n % 8).to.equal(0);
      const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
      expect(header.__metadata__).to.deep.equal({ format: 'pt', note: 'hello' });
      expect(st.metadata).to.deep.equal({ format: 'pt', note: 'hello' });
      for (const t of tensors) {
        const info = st.info(t.name);
        expect(info.dtype).to.equal(t.dtype);
        expect(info.shape).to.deep.equal(t.shape);
        expect(info.byteOffset % ({ F32: 4, I32: 4, I64: 8, BF16: 2, F16: 2 } as const)[t.dtype]).to.equal(0);
      }
      // data area is exactly the sum of the tensors
      const total = [...st.tensors.values()].reduce((s, t) => s + t.byteLength, 0);
      expect(bytes.length).to.equal(8 + n + total);
    });

    it('reads every dtype back exactly', () => {
      const a = st.read('a.f32');
      expect(a.dtype).to.equal('float32');
      expect(a.shape).to.deep.equal([3, 3]);
      expect(Array.from(a.data)).to.deep.equal(Array.from(f32));
      expect(Object.is(a.data[1], -0)).to.equal(true);
      for (const n of ['b.i32', 'c.i64']) {
        const t = st.read(n);
        expect(t.dtype).to.equal('int32');
        expect(t.data).to.be.instanceOf(Int32Array);
        expect(Array.from(t.data)).to.deep.equal(Array.from(i32));
      }
      expect(Array.from(st.read('d.bf16').data)).to.deep.equal(Array.from(bf16Exact));
      expect(Array.from(st.read('e.f16').data)).to.deep.equal(Array.from(f16Exact));
      const s = st.read('f.scalar');
      expect(s.shape).to.deep.equal([]);
      expect(Array.from(s.data)).to.deep.equal([42]);
      const e = st.read('g.empty');
      expect(e.shape).to.deep.equal([0, 4]);
      expect(e.data.length).to.equal(0);
    });

    it('rounds when storing BF16 and F16', () => {
      expect(Array.from(st.read('h.round').data)).to.deep.equal([1 + 2 ** -6, 0.10009765625]);
      expect(Array.from(st.read('i.round').data)).to.deep.equal([1 + 2 ** -9, 0.0999755859375]);
      expect(Array.from(st.readBytes('h.round'))).to.deep.equal([0x82, 0x3f, 0xcd, 0x3d]);
    });

    it('matches the in-memory reader', () => {
      const mem = SafetensorsFile.fromBuffer(new Uint8Array(fs.readFileSync(file)), 'mem');
      for (const n of st.tensors.keys()) expect(Array.from(mem.read(n).data)).to.deep.equal(Array.from(st.read(n).data));
    });

    it('names a missing tensor and lists some that exist', () => {
      const msg = errorOf(() => st.read('nope.f32'));
      expect(msg).to.include('"nope.f32" not found').and.include(file).and.include('a.f32');
    });

    it('rejects bad input to the writer', () => {
      const p = path.join(tmp, 'bad-write.safetensors');
      expect(errorOf(() => writeSafetensors(p, [{ name: 'x', dtype: 'F32', shape: [2, 2], data: new Float32Array(3) }]))).to.include(
        '4 elements but data has 3',
      );
      expect(errorOf(() => writeSafetensors(p, [{ name: 'x', dtype: 'I32', shape: [1], data: new Float32Array(1) }]))).to.include(
        'needs Int32Array',
      );
      expect(
        errorOf(() =>
          writeSafetensors(p, [
            { name: 'x', dtype: 'F32', shape: [1], data: new Float32Array(1) },
            { name: 'x', dtype: 'F32', shape: [1], data: new Float32Array(1) },
          ]),
        ),
      ).to.include('more than once');
      expect(fs.existsSync(p)).to.equal(false);
    });
  });

  describe('reading other dtypes', () => {
    it('converts F64, I16, I8, U8, BOOL and checks the I64 range', () => {
      const f64 = new Float64Array([1.5, -0.25]);
      const i16 = new Int16Array([-3, 300]);
      const i8 = new Int8Array([-128, 127]);
      const u8 = new Uint8Array([0, 255]);
      const bool = new Uint8Array([0, 1]);
      const big = new BigInt64Array([5n, 1n << 40n]);
      const parts = [f64, i16, i8, u8, bool, big].map((a) => new Uint8Array(a.buffer));
      let off = 0;
      const header: Record<string, unknown> = {};
      const specs: Array<[string, string, number]> = [
        ['f64', 'F64', 2],
        ['i16', 'I16', 2],
        ['i8', 'I8', 2],
        ['u8', 'U8', 2],
        ['bool', 'BOOL', 2],
        ['big', 'I64', 2],
      ];
      specs.forEach(([name, dtype, n], i) => {
        header[name] = { dtype, shape: [n], data_offsets: [off, off + parts[i].length] };
        off += parts[i].length;
      });
      const st = SafetensorsFile.fromBuffer(image(header, Buffer.concat(parts)), 'mixed.safetensors');
      expect(Array.from(st.read('f64').data)).to.deep.equal([1.5, -0.25]);
      expect(st.read('f64').dtype).to.equal('float32');
      expect(Array.from(st.read('i16').data)).to.deep.equal([-3, 300]);
      expect(Array.from(st.read('i8').data)).to.deep.equal([-128, 127]);
      expect(Array.from(st.read('u8').data)).to.deep.equal([0, 255]);
      expect(Array.from(st.read('bool').data)).to.deep.equal([0, 1]);
      expect(st.read('bool').dtype).to.equal('int32');
      const msg = errorOf(() => st.read('big'));
      expect(msg).to.include('"big"').and.include('mixed.safetensors').and.include('1099511627776').and.include('int32');
    });
  });

  describe('corrupt files', () => {
    const good = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
    const data8 = new Uint8Array(8);

    it('file shorter than 8 bytes', () => {
      const p = tmpFile('short.safetensors', new Uint8Array([1, 2, 3]));
      const msg = errorOf(() => SafetensorsFile.open(p));
      expect(msg).to.include(p).and.include('shorter than the 8-byte');
    });

    it('truncated file: header length beyond the file', () => {
      const full = image(good, data8);
      const p = tmpFile('truncated.safetensors', full.subarray(0, 20));
      const msg = errorOf(() => SafetensorsFile.open(p));
      expect(msg).to.include(p).and.include('beyond the file size');
      const p2 = tmpFile('hugelen.safetensors', image(good, data8, { lengthOverride: 1n << 60n }));
      expect(errorOf(() => SafetensorsFile.open(p2))).to.include('beyond the file size');
    });

    it('truncated data: offsets beyond the data area', () => {
      const full = image(good, data8);
      const p = tmpFile('truncated-data.safetensors', full.subarray(0, full.length - 4));
      const msg = errorOf(() => SafetensorsFile.open(p));
      expect(msg).to.include(p).and.include('"w"').and.include('beyond the data area');
    });

    it('offsets out of range', () => {
      const h = { w: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } };
      const p = tmpFile('range.safetensors', image(h, data8));
      expect(errorOf(() => SafetensorsFile.open(p))).to.include('"w"').and.include('[8, 16]').and.include('beyond the data area');
    });

    it('overlapping tensors', () => {
      const h = {
        a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
      };
      const p = tmpFile('overlap.safetensors', image(h, new Uint8Array(12)));
      const msg = errorOf(() => SafetensorsFile.open(p));
      expect(msg).to.include(p).and.include('overlapping').and.include('"a"').and.include('"b"');
    });

    it('unknown dtype', () => {
      const h = { w: { dtype: 'F8_E9M9', shape: [2], data_offsets: [0, 2] } };
      const p = tmpFile('dtype.safetensors', image(h, new Uint8Array(2)));
      const msg = errorOf(() => SafetensorsFile.open(p));
      expect(msg).to.include(p).and.include('unknown dtype "F8_E9M9"').and.include('"w"');
    });

    it('bad JSON and non-object headers', () => {
      const p = tmpFile('json.safetensors', image(null, data8, { headerText: '{"w": {"dtype": "F32",' }));
      const msg = errorOf(() => SafetensorsFile.open(p));
      expect(msg).to.include(p).and.include('not valid JSON');
      const p2 = tmpFile('array.safetensors', image([1, 2], data8));
      expect(errorOf(() => SafetensorsFile.open(p2))).to.include('must be a JSON object');
    });

    it('bad shape, data_offsets, byte length and metadata', () => {
      const cases: Array<[unknown, string]> = [
        [{ w: { dtype: 'F32', shape: [2, -1], data_offsets: [0, 8] } }, 'non-negative integers'],
        [{ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 8] } }, 'non-negative integers'],
        [{ w: { dtype: 'F32', shape: 'x', data_offsets: [0, 8] } }, 'non-negative integers'],
        [{ w: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, 'begin <= end'],
        [{ w: { dtype: 'F32', shape: [2], data_offsets: [0] } }, 'data_offsets must be [begin, end]'],
        [{ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, '12 bytes'],
        [{ w: 5 }, 'expected an object'],
        [{ __metadata__: { format: 1 }, ...good }, 'must be a string'],
      ];
      for (const [h, want] of cases) {
        const msg = errorOf(() => SafetensorsFile.fromBuffer(image(h, data8), 'case.safetensors'));
        expect(msg, JSON.stringify(h)).to.include('case.safetensors').and.include(want);
      }
    });

    it('a missing file is reported with its path', () => {
      const p = path.join(tmp, 'does-not-exist.safetensors');
      expect(errorOf(() => SafetensorsFile.open(p))).to.include(p);
    });
  });
});
