/**
 * Dequantization of llama.cpp's newer block types, one block at a time, as ggml's dequantize_row_* computes them:
 * the i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: values from lookup grids, signs, per-group
 * scales; IQ4_NL, IQ4_XS: a non-linear 4-bit table), the ternary TQ1_0 / TQ2_0, the 4-bit floats MXFP4 (e8m0
 * scale a block of 32) and NVFP4 (ue4m3 scale each 16 of 64), and Q1_0 (signs of 128, ±d) / Q2_0 ((q − 1)·d, 64 a block).
 */
import { f16BitsToFloat32 } from './safetensors';
import { GRIDS, KSIGNS_HEX } from './gguf-grids';

/** ggml types this file reads: [name, id, values per block, bytes per block]. */
export const I_QUANT_TYPES: Array<[string, number, number, number]> = [
  ['IQ2_XXS', 16, 256, 66], ['IQ2_XS', 17, 256, 74], ['IQ3_XXS', 18, 256, 98], ['IQ1_S', 19, 256, 50], ['IQ4_NL', 20, 32, 18],
  ['IQ3_S', 21, 256, 110], ['IQ2_S', 22, 256, 82], ['IQ4_XS', 23, 256, 136], ['IQ1_M', 29, 256, 56], ['TQ1_0', 34, 256, 54],
  ['TQ2_0', 35, 256, 66], ['MXFP4', 39, 32, 17], ['NVFP4', 40, 64, 36], ['Q1_0', 41, 128, 18], ['Q2_0', 42, 64, 18],
];

const hexBytes = (hex: string) => Uint8Array.from({ length: hex.length / 2 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
const KSIGNS = hexBytes(KSIGNS_HEX);
const KVALUES_IQ4NL = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
// E2M1's values, doubled (the block scales carry the half).
export const KVALUES_FP4 = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
const IQ1_DELTA = 0.125;

/**
 * A grid's codes: entry e's values at [e * width, (e + 1) * width), each an index into the grid's `map` (for the 3-bit
 * grids, the level l of llama.cpp's kgrid tables, whose points are 2l + 1).
 */
export function gridCodes(name: string): Uint8Array {
  const { shape, map, hex } = GRIDS[name];
  // 2-bit values four a byte; 3-bit ones two a byte, in its nibbles.
  const bits = Math.ceil(Math.log2(map.length));
  const perByte = Math.floor(8 / bits);
  const stride = 8 / perByte;
  const codes = new Uint8Array(shape[0] * shape[1]);
  hexBytes(hex).forEach((byte, i) => {
    for (let k = 0; k < perByte; k++) codes[i * perByte + k] = (byte >> (k * stride)) & ((1 << bits) - 1);
  });
  return codes;
}

/** A grid unpacked: entry e's values at [e * width, (e + 1) * width). Built on first use. */
const unpacked = new Map<string, Float32Array>();
function grid(name: string): Float32Array {
  let values = unpacked.get(name);
  if (!values) {
    const { map } = GRIDS[name];
    values = Float32Array.from(gridCodes(name), (c) => map[c]);
    unpacked.set(name, values);
  }
  return values;
}

/** e8m0 (a power of two) as float32, halved (ggml_e8m0_to_fp32_half). */
export function e8m0Half(e: number): number {
  const bits = e < 2 ? 0x00200000 << e : (e - 1) << 23;
  return new Float32Array(new Uint32Array([bits >>> 0]).buffer)[0];
}

/** Unsigned e4m3 (bias 7) as float32, halved; 0 and 0x7F read as zero (ggml_ue4m3_to_fp32). */
export function ue4m3Half(x: number): number {
  if (x === 0 || x === 0x7f) return 0;
  const exp = (x >> 3) & 0xf;
  const man = x & 7;
  return (exp === 0 ? man * 2 ** -9 : (1 + man / 8) * 2 ** (exp - 7)) * 0.5;
}

/** Dequantizes one block of `type` at byte `p` of `bytes` into `y` (its values). */
export function dequantizeIQuantBlock(type: string, bytes: Uint8Array, view: DataView, p: number, y: Float32Array): void {
  const half = (at: number) => f16BitsToFloat32(view.getUint16(at, true));
  const u16 = (at: number) => view.getUint16(at, true);
  const u32 = (at: number) => view.getUint32(at, true);
  // Eight values of grid entry `e` times `scale`, signed by the bits of `signs` (bit j set: negative).
  const signed8 = (g: Float32Array, e: number, scale: number, signs: number, out: number) => {
    for (let j = 0; j < 8; j++) y[out + j] = scale * g[e * 8 + j] * ((signs >> j) & 1 ? -1 : 1);
  };
  switch (type) {
    case 'IQ2_XXS': {
      const d = half(p);
      const g = grid(type);
      for (let ib = 0; ib < 8; ib++) {
        const aux0 = p + 2 + 8 * ib;
        const aux1 = u32(aux0 + 4);
        const db = d * (0.5 + (aux1 >>> 28)) * 0.25;
        for (let l = 0; l < 4; l++) signed8(g, bytes[aux0 + l], db, KSIGNS[(aux1 >>> (7 * l)) & 127], 32 * ib + 8 * l);
      }
      return;
    }
    case 'IQ2_XS': {
      const d = half(p);
      const g = grid(type);
      for (let i = 0; i < 32; i++) {
        const q = u16(p + 2 + 2 * i);
        const scale = (bytes[p + 66 + (i >> 2)] >> (4 * ((i >> 1) & 1))) & 0xf;
        signed8(g, q & 511, d * (0.5 + scale) * 0.25, KSIGNS[q >> 9], 8 * i);
      }
      return;
    }
    case 'IQ2_S': {
      // d, qs[32], signs[32], qh[8], scales[8]
      const d = half(p);
      const g = grid(type);
      for (let i = 0; i < 32; i++) {
        const e = bytes[p + 2 + i] | (((bytes[p + 66 + (i >> 2)] >> (2 * (i & 3))) & 3) << 8);
        const scale = (bytes[p + 74 + (i >> 2)] >> (4 * ((i >> 1) & 1))) & 0xf;
        signed8(g, e, d * (0.5 + scale) * 0.25, bytes[p + 34 + i], 8 * i);
      }
      return;
    }
    case 'IQ3_XXS': case 'IQ3_S': {
      // IQ3_XXS: d, qs[64], scales-and-signs u32[8]. IQ3_S: d, qs[64], qh[8], signs[32], scales[4].
      const d = half(p);
      const g = grid(type);
      for (let ib = 0; ib < 8; ib++) {
        let db: number;
        const signsOf: number[] = [];
        if (type === 'IQ3_XXS') {
          const aux = u32(p + 66 + 4 * ib);
          db = d * (0.5 + (aux >>> 28)) * 0.5;
          for (let l = 0; l < 4; l++) signsOf.push(KSIGNS[(aux >>> (7 * l)) & 127]);
        } else {
          db = d * (1 + 2 * ((bytes[p + 106 + (ib >> 1)] >> (4 * (ib & 1))) & 0xf));
          for (let l = 0; l < 4; l++) signsOf.push(bytes[p + 74 + 4 * ib + l]);
        }
        for (let l = 0; l < 4; l++) {
          for (let j = 0; j < 8; j++) {
            const k = 8 * ib + 2 * l + (j >> 2);
            const e = type === 'IQ3_XXS' ? bytes[p + 2 + k] : bytes[p + 2 + k] | (((bytes[p + 66 + (k >> 3)] >> (k & 7)) & 1) << 8);
            y[32 * ib + 8 * l + j] = db * g[e * 4 + (j & 3)] * ((signsOf[l] >> j) & 1 ? -1 : 1);
          }
        }
      }
      return;
    }
    case 'IQ1_S': {
      // d, qs[32], qh u16[8]
      const d = half(p);
      const g = grid('IQ1_S');
      for (let ib = 0; ib < 8; ib++) {
        const qh = u16(p + 34 + 2 * ib);
        const dl = d * (2 * ((qh >> 12) & 7) + 1);
        const delta = qh & 0x8000 ? -IQ1_DELTA : IQ1_DELTA;
        for (let l = 0; l < 4; l++) {
          const e = bytes[p + 2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8);
          for (let j = 0; j < 8; j++) y[32 * ib + 8 * l + j] = dl * (g[e * 8 + j] + delta);
        }
      }
      return;
    }
    case 'IQ1_M': {
      // qs[32], qh[16], scales u16[4] (the f16 scale in their top nibbles)
      const g = grid('IQ1_S');
      const sc = [0, 1, 2, 3].map((i) => u16(p + 48 + 2 * i));
      const d = f16BitsToFloat32(((sc[0] & 0xf000) >> 12) | ((sc[1] & 0xf000) >> 8) | ((sc[2] & 0xf000) >> 4) | (sc[3] & 0xf000));
      for (let i = 0; i < 32; i++) {
        const h = (bytes[p + 32 + (i >> 1)] >> (4 * (i & 1))) & 0xf;
        const e = bytes[p + i] | ((h & 7) << 8);
        const delta = h & 0x08 ? -IQ1_DELTA : IQ1_DELTA;
        const s = i >> 1;
        const dl = d * (2 * ((sc[s >> 2] >> (3 * (s & 3))) & 7) + 1);
        for (let j = 0; j < 8; j++) y[8 * i + j] = dl * (g[e * 8 + j] + delta);
      }
      return;
    }
    case 'IQ4_NL': {
      const d = half(p);
      for (let j = 0; j < 16; j++) {
        y[j] = d * KVALUES_IQ4NL[bytes[p + 2 + j] & 0xf];
        y[j + 16] = d * KVALUES_IQ4NL[bytes[p + 2 + j] >> 4];
      }
      return;
    }
    case 'IQ4_XS': {
      // d, scales_h u16, scales_l[4], qs[128]
      const d = half(p);
      const scalesH = u16(p + 2);
      for (let ib = 0; ib < 8; ib++) {
        const ls = ((bytes[p + 4 + (ib >> 1)] >> (4 * (ib & 1))) & 0xf) | (((scalesH >> (2 * ib)) & 3) << 4);
        const dl = d * (ls - 32);
        for (let j = 0; j < 16; j++) {
          const q = bytes[p + 8 + 16 * ib + j];
          y[32 * ib + j] = dl * KVALUES_IQ4NL[q & 0xf];
          y[32 * ib + 16 + j] = dl * KVALUES_IQ4NL[q >> 4];
        }
      }
      return;
    }
    case 'TQ1_0': {
      // qs[48] (five base-3 digits a byte), qh[4] (four), d at the end; digit n of byte q: (q·3ⁿ mod 256)·3 >> 8.
      const d = half(p + 52);
      const digit = (q: number, n: number) => ((((q * 3 ** n) & 0xff) * 3) >> 8) - 1;
      for (let n = 0; n < 5; n++) for (let m = 0; m < 32; m++) y[32 * n + m] = d * digit(bytes[p + m], n);
      for (let n = 0; n < 5; n++) for (let m = 0; m < 16; m++) y[160 + 16 * n + m] = d * digit(bytes[p + 32 + m], n);
      for (let n = 0; n < 4; n++) for (let m = 0; m < 4; m++) y[240 + 4 * n + m] = d * digit(bytes[p + 48 + m], n);
      return;
    }
    case 'TQ2_0': {
      // qs[64] (four 2-bit values a byte), d at the end.
      const d = half(p + 64);
      for (let c = 0; c < 2; c++) {
        for (let s = 0; s < 4; s++) for (let m = 0; m < 32; m++) y[128 * c + 32 * s + m] = d * (((bytes[p + 32 * c + m] >> (2 * s)) & 3) - 1);
      }
      return;
    }
    case 'MXFP4': {
      const d = e8m0Half(bytes[p]);
      for (let j = 0; j < 16; j++) {
        y[j] = d * KVALUES_FP4[bytes[p + 1 + j] & 0xf];
        y[j + 16] = d * KVALUES_FP4[bytes[p + 1 + j] >> 4];
      }
      return;
    }
    case 'NVFP4': {
      // four ue4m3 scales, then four groups of 8 bytes: low nibbles the group's first 8 values, high ones the next 8.
      for (let s = 0; s < 4; s++) {
        const d = ue4m3Half(bytes[p + s]);
        for (let j = 0; j < 8; j++) {
          const q = bytes[p + 4 + 8 * s + j];
          y[16 * s + j] = d * KVALUES_FP4[q & 0xf];
          y[16 * s + 8 + j] = d * KVALUES_FP4[q >> 4];
        }
      }
      return;
    }
    case 'Q1_0': {
      // f16 d, then one bit a value: set +d, clear −d.
      const d = half(p);
      for (let j = 0; j < 128; j++) y[j] = (bytes[p + 2 + (j >> 3)] >> (j & 7)) & 1 ? d : -d;
      return;
    }
    case 'Q2_0': {
      // f16 d, then four 2-bit values a byte, q − 1 in {−1, 0, 1, 2}.
      const d = half(p);
      for (let j = 0; j < 64; j++) y[j] = d * (((bytes[p + 2 + (j >> 2)] >> (2 * (j & 3))) & 3) - 1);
      return;
    }
    default:
      throw new Error(`dequantize: ggml type ${type} is not supported`);
  }
}
