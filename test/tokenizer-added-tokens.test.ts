import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { NemotronTokenizer } from '../src/index';
import { errorOf, tmpDir } from './helpers';

// transformers' add_tokens / add_special_tokens on the tiny SentencePiece-style tokenizer
// (scripts/reference/added_tokens_fixtures.py): counts, ids, and the encoding and decoding of texts around the new tokens.
const FIXTURES = path.resolve(__dirname, '../../test/fixtures');
const reference = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'added-tokens/added-tokens.json'), 'utf8')) as {
  length_before: number; added: number; added_special: number; length: number; pad_token_id: number;
  ids: Record<string, number>;
  texts: Array<{ text: string; ids: number[]; decoded: string; decoded_skip_special: string }>;
};

async function withAddedTokens(): Promise<{ tokenizer: NemotronTokenizer; added: number; special: number }> {
  const tokenizer = await NemotronTokenizer.fromPretrained(path.join(FIXTURES, 'tokenizer'));
  expect(tokenizer.vocabSize).to.equal(reference.length_before);
  const added = tokenizer.addTokens(['hello', '<tool>', 'newword', '▁the']);
  const special = tokenizer.addSpecialTokens({ padToken: '<|pad|>', additionalSpecialTokens: ['<|im_start|>', '<|im_end|>'] });
  return { tokenizer, added, special };
}

function expectAsTransformers(tokenizer: NemotronTokenizer, what: string): void {
  expect(tokenizer.vocabSize, `${what}: len(tokenizer)`).to.equal(reference.length);
  expect(tokenizer.padTokenId, `${what}: pad_token_id`).to.equal(reference.pad_token_id);
  for (const [token, id] of Object.entries(reference.ids)) expect(tokenizer.tokenToId(token), `${what}: id of ${token}`).to.equal(id);
  for (const t of reference.texts) {
    expect(tokenizer.encode(t.text), `${what}: encode ${JSON.stringify(t.text)}`).to.deep.equal(t.ids);
    expect(tokenizer.decode(t.ids), `${what}: decode ${JSON.stringify(t.text)}`).to.equal(t.decoded);
    expect(tokenizer.decode(t.ids, { skipSpecialTokens: true }), `${what}: decode skipping special ${JSON.stringify(t.text)}`).to.equal(t.decoded_skip_special);
  }
}

describe('tokenizer: added tokens', () => {
  it('addTokens and addSpecialTokens count, number, encode and decode as transformers', async () => {
    const { tokenizer, added, special } = await withAddedTokens();
    expect(added).to.equal(reference.added);
    expect(special).to.equal(reference.added_special);
    expectAsTransformers(tokenizer, 'after adding');
    for (const token of ['<|pad|>', '<|im_start|>', '<|im_end|>']) expect(tokenizer.isSpecialId(tokenizer.tokenToId(token)!), token).to.equal(true);
    expect(tokenizer.isSpecialId(tokenizer.tokenToId('newword')!)).to.equal(false);
    // Adding again adds nothing.
    expect(tokenizer.addTokens(['hello', 'newword'])).to.equal(0);
    expect(tokenizer.vocabSize).to.equal(reference.length);
  });

  it('savePretrained writes what fromPretrained reads back the same', async () => {
    const { tokenizer } = await withAddedTokens();
    const dir = tmpDir('added-tokens-');
    tokenizer.savePretrained(dir);
    for (const file of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) expect(fs.existsSync(path.join(dir, file)), file).to.equal(true);
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    expect(config.pad_token).to.equal('<|pad|>');
    expect(config.additional_special_tokens).to.deep.equal(['<|im_start|>', '<|im_end|>']);
    expect(config.added_tokens_decoder['330']).to.deep.include({ content: '<|pad|>', special: true, normalized: false });
    expect(config.added_tokens_decoder['329']).to.deep.include({ content: 'newword', special: false, normalized: true });
    expectAsTransformers(await NemotronTokenizer.fromPretrained(dir), 'saved and loaded');
  });

  it('refuses empty tokens by name', async () => {
    const tokenizer = await NemotronTokenizer.fromPretrained(path.join(FIXTURES, 'tokenizer'));
    expect(errorOf(() => tokenizer.addTokens(['ok', '']))).to.match(/addTokens: tokens must be non-empty strings, got ""/);
    expect(tokenizer.vocabSize).to.equal(reference.length_before);
  });
});
