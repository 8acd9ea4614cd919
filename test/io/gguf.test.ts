import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { GGUFFile } from '../../src/index';
import { FIXTURES } from '../helpers';

// GGUF reading against gguf-py (scripts/reference/gguf_fixtures.py): every ggml type's dequantization, on random blocks.
const DIR = path.resolve(FIXTURES, '../gguf');

describe('GGUF', () => {
  it('dequantizes every type it reads as gguf-py does (random blocks: F32, F16, Q4_0/1, Q5_0/1, Q8_0, Q2_K … Q6_K)', () => {
    const expected = JSON.parse(fs.readFileSync(path.join(DIR, 'dequant.json'), 'utf8')) as { values: Record<string, number[]> };
    const file = GGUFFile.open(path.join(DIR, 'dequant.gguf'));
    try {
      expect(file.get('general.architecture')).to.equal('nemotron');
      for (const [name, values] of Object.entries(expected.values)) {
        const { data } = file.read(name);
        expect(data.length, name).to.equal(values.length);
        let worst = 0;
        data.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - values[i]) / Math.max(1e-6, Math.abs(values[i]))); });
        expect(worst, `${name}: largest relative difference`).to.be.lessThan(1e-5);
      }
    } finally {
      file.close();
    }
  });
});
