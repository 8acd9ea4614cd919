import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { NemotronTokenizer } from '../src/index';
import { tmpDir } from './helpers';

// A folder with SentencePiece's tokenizer.model and no tokenizer.json, read as transformers 5 reads it
// (scripts/reference/sentencepiece_fixtures.py): encodings and decodings of texts with control tokens, byte fallback,
// leading spaces and newlines.
const DIR = path.resolve(__dirname, '../../test/fixtures/sentencepiece');
const reference = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as {
  vocab_size: number; cases: Array<{ text: string; ids: number[]; decoded: string }>;
};

describe('tokenizer: SentencePiece tokenizer.model', () => {
  it('encodes and decodes as transformers\' LlamaTokenizer from the same tokenizer.model', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(DIR);
    expect(tokenizer.vocabSize).to.equal(reference.vocab_size);
    expect([tokenizer.bosTokenId, tokenizer.eosTokenId, tokenizer.unkTokenId]).to.deep.equal([1, 2, 0]);
    for (const c of reference.cases) {
      expect(tokenizer.encode(c.text), c.text).to.deep.equal(c.ids);
      expect(tokenizer.decode(c.ids, { skipSpecialTokens: true }), c.text).to.equal(c.decoded);
    }
  });

  it('saves a tokenizer.json that reads back the same; refuses a file that is not a SentencePiece model', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(DIR);
    const out = tmpDir('spm-');
    tokenizer.savePretrained(out);
    const back = await NemotronTokenizer.fromPretrained(out);
    for (const c of reference.cases) expect(back.encode(c.text), c.text).to.deep.equal(c.ids);
    const broken = tmpDir('spm-broken-');
    fs.writeFileSync(path.join(broken, 'tokenizer.model'), 'not a protobuf at all, just text');
    const message = await NemotronTokenizer.fromPretrained(broken).then(() => 'loaded', (e: Error) => e.message);
    expect(message).to.match(/tokenizer\.model (is not a SentencePiece model|: a SentencePiece model of type)/);
  });
});
