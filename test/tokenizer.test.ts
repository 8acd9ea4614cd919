import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { expect } from 'chai';
import { NemotronTokenizer } from '../src/tokenizer';

/** Static copy of the tokenizer built below (reused by CLI tests with a tiny model). */
const FIXTURE_DIR = path.resolve(__dirname, '../../test/fixtures/tokenizer');

const SPECIAL = ['<pad>', '<unk>', '<s>', '</s>']; // ids 0..3, as pad/bos/eos of the tiny hf-reference models
const BASE_CHARS = [
  '▁', 'e', 't', 'a', 'o', 'i', 'n', 's', 'h', 'r', 'd', 'l', 'u', 'w', 'c', 'm',
  'f', 'g', 'y', 'p', 'b', 'k', 'v', 'H', 'T', 'W', '.', ',', '!', '?', "'",
];
const MERGES: [string, string][] = [
  ['▁', 't'], ['h', 'e'], ['▁t', 'he'], ['i', 'n'], ['▁', 'a'], ['e', 'r'], ['o', 'n'], ['r', 'e'],
  ['▁', 'w'], ['o', 'r'], ['l', 'd'], ['▁w', 'or'], ['▁wor', 'ld'], ['l', 'l'], ['e', 'll'], ['▁', 'H'],
  ['▁H', 'ell'], ['▁Hell', 'o'], ['in', 'g'], ['▁', 's'], ['e', 'd'], ['s', 't'], ['a', 'n'], ['▁a', 'n'],
  ['▁an', 'd'], ['▁', 'i'], ['▁i', 's'], ['▁', 'o'], ['▁o', 'f'], ['▁', 'c'], ['a', 't'], ['▁c', 'at'],
  ['▁t', 'o'], ['▁', 'T'], ['▁T', 'he'], ['o', 'u'],
];

/**
 * A Llama-2 / Nemotron style SentencePiece BPE tokenizer.json (as the Rust `tokenizers` library writes
 * it for LlamaTokenizerFast, legacy mode): Prepend("▁") + Replace(" " → "▁") normalizer, BPE with byte
 * fallback over `<0x00>`…`<0xFF>`, `<s>` template post-processor, Replace/ByteFallback/Fuse/Strip decoder.
 * Ids: 0..3 special tokens, then the base characters and merge results, then the 256 byte tokens.
 */
function buildTokenizerJson(): Record<string, any> {
  const vocab: Record<string, number> = {};
  const add = (t: string) => {
    if (!(t in vocab)) vocab[t] = Object.keys(vocab).length;
  };
  SPECIAL.forEach(add);
  BASE_CHARS.forEach(add);
  for (const [a, b] of MERGES) {
    if (!(a in vocab) || !(b in vocab)) throw new Error(`merge ${a} ${b} uses a token that is not in the vocab`);
    add(a + b);
  }
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const special = (content: string) => ({
    id: vocab[content], content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL.map(special),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [vocab['<s>']], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: MERGES,
    },
  };
}

/** tokenizer_config.json as transformers writes it for a Llama-style tokenizer (eos as an AddedToken object). */
function buildTokenizerConfig(): Record<string, any> {
  const json = buildTokenizerJson();
  const decoder: Record<string, any> = {};
  for (const t of json.added_tokens) {
    const { id, ...rest } = t;
    decoder[String(id)] = rest;
  }
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: decoder,
    bos_token: '<s>',
    clean_up_tokenization_spaces: false,
    eos_token: { __type: 'AddedToken', content: '</s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
    legacy: true,
    model_max_length: 64,
    pad_token: '<pad>',
    padding_side: 'left',
    tokenizer_class: 'LlamaTokenizer',
    unk_token: '<unk>',
  };
}

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n');
}

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'nemotron-tokenizer-'));
}

/** Deterministic PRNG for the property tests. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const MULTIBYTE = 'Hello wörld, the café is in 日本語 🙂! Thé cat…';

function streamAll(tok: NemotronTokenizer, ids: number[], skipSpecialTokens = false): string[] {
  const stream = tok.createStreamDecoder({ skipSpecialTokens });
  const chunks = ids.map((id) => stream.push(id));
  chunks.push(stream.flush());
  return chunks;
}

describe('NemotronTokenizer', () => {
  let dir: string;
  let tok: NemotronTokenizer;
  const id = (t: string): number => {
    const i = tok.tokenToId(t);
    if (i === null) throw new Error(`no token ${t}`);
    return i;
  };
  const byteId = (b: number) => id(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);

  before(async () => {
    if (process.env.UPDATE_TOKENIZER_FIXTURE) {
      fs.mkdirSync(FIXTURE_DIR, { recursive: true });
      writeJson(path.join(FIXTURE_DIR, 'tokenizer.json'), buildTokenizerJson());
      writeJson(path.join(FIXTURE_DIR, 'tokenizer_config.json'), buildTokenizerConfig());
    }
    dir = tempDir();
    writeJson(path.join(dir, 'tokenizer.json'), buildTokenizerJson());
    writeJson(path.join(dir, 'tokenizer_config.json'), buildTokenizerConfig());
    tok = await NemotronTokenizer.fromPretrained(dir);
  });

  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('loading', () => {
    it('resolves special tokens (strings and AddedToken objects) and the vocabulary size', () => {
      expect(tok.bosToken).to.equal('<s>');
      expect(tok.eosToken).to.equal('</s>');
      expect(tok.unkToken).to.equal('<unk>');
      expect(tok.padToken).to.equal('<pad>');
      expect([tok.padTokenId, tok.unkTokenId, tok.bosTokenId, tok.eosTokenId]).to.deep.equal([0, 1, 2, 3]);
      expect(tok.addBosToken).to.equal(true);
      expect(tok.addEosToken).to.equal(false);
      expect(tok.vocabSize).to.equal(SPECIAL.length + BASE_CHARS.length + MERGES.length + 256);
      expect(tok.paddingSide).to.equal('left');
      expect(tok.modelMaxLength).to.equal(64);
    });

    it('reads special tokens given as AddedToken objects for every role', async () => {
      const obj = (content: string) => ({ __type: 'AddedToken', content, lstrip: false, rstrip: false, normalized: false, single_word: false });
      const t = await NemotronTokenizer.fromJSON(buildTokenizerJson(), {
        bos_token: obj('<s>'), eos_token: obj('</s>'), unk_token: obj('<unk>'), pad_token: obj('<pad>'),
      });
      expect([t.bosTokenId, t.eosTokenId, t.unkTokenId, t.padTokenId]).to.deep.equal([2, 3, 1, 0]);
    });

    it('takes add_bos_token from the post-processor when tokenizer_config.json has none', async () => {
      const t = await NemotronTokenizer.fromJSON(buildTokenizerJson(), { bos_token: '<s>', eos_token: '</s>' });
      expect(t.addBosToken).to.equal(true);
      expect(t.encode('Hello')[0]).to.equal(2);
      const noPost = { ...buildTokenizerJson(), post_processor: null };
      const t2 = await NemotronTokenizer.fromJSON(noPost, { bos_token: '<s>' });
      expect(t2.addBosToken).to.equal(false);
      expect(t2.encode('Hello')).to.deep.equal(t2.encode('Hello', { addSpecialTokens: false }));
    });

    it('reads add_bos_token: false and add_eos_token: true in tokenizer_config.json as transformers 5 does: not at all (the post-processor decides)', async () => {
      const cfg = { ...buildTokenizerConfig(), add_bos_token: false, add_eos_token: true };
      const t = await NemotronTokenizer.fromJSON(buildTokenizerJson(), cfg);
      expect(t.addBosToken).to.equal(true);
      expect(t.addEosToken).to.equal(false);
      expect(t.encode('Hello world')).to.deep.equal([2, id('▁Hello'), id('▁world')]);
    });

    it('falls back to special_tokens_map.json and config.json', async () => {
      const d = tempDir();
      try {
        writeJson(path.join(d, 'tokenizer.json'), buildTokenizerJson());
        writeJson(path.join(d, 'special_tokens_map.json'), { bos_token: { content: '<s>' }, eos_token: '</s>' });
        writeJson(path.join(d, 'config.json'), { pad_token_id: 0, eos_token_id: [3, 2] });
        const t = await NemotronTokenizer.fromPretrained(d);
        expect([t.bosTokenId, t.eosTokenId, t.padTokenId, t.unkTokenId]).to.deep.equal([2, 3, 0, 1]);
        expect(t.padToken).to.equal('<pad>');
      } finally {
        fs.rmSync(d, { recursive: true, force: true });
      }
    });

    it('fromPretrained on the static fixture folder', async () => {
      const t = await NemotronTokenizer.fromPretrained(FIXTURE_DIR);
      expect(t.vocabSize).to.equal(tok.vocabSize);
      expect([t.padTokenId, t.bosTokenId, t.eosTokenId]).to.deep.equal([0, 2, 3]);
      const ids = t.encode(MULTIBYTE);
      expect(ids).to.deep.equal(tok.encode(MULTIBYTE));
      expect(t.decode(ids, { skipSpecialTokens: true })).to.equal(MULTIBYTE);
    });

    it('the static fixture is what this test builds (regenerate with UPDATE_TOKENIZER_FIXTURE=1)', () => {
      const read = (f: string) => JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, f), 'utf8'));
      expect(read('tokenizer.json')).to.deep.equal(buildTokenizerJson());
      expect(read('tokenizer_config.json')).to.deep.equal(buildTokenizerConfig());
      const nonByte = Object.keys(read('tokenizer.json').model.vocab).filter((t) => !/^<0x[0-9A-F]{2}>$/.test(t));
      expect(nonByte.length).to.be.lessThan(100);
    });
  });

  describe('errors', () => {
    it('names the missing tokenizer.json', async () => {
      const d = tempDir();
      try {
        let err: Error | null = null;
        await NemotronTokenizer.fromPretrained(d).catch((e: Error) => (err = e));
        expect(err).to.be.an('error');
        expect(err!.message).to.contain(`No tokenizer.json in ${d}`);
      } finally {
        fs.rmSync(d, { recursive: true, force: true });
      }
    });

    it('names the file with invalid JSON', async () => {
      const d = tempDir();
      try {
        fs.writeFileSync(path.join(d, 'tokenizer.json'), '{"model": ');
        let err: Error | null = null;
        await NemotronTokenizer.fromPretrained(d).catch((e: Error) => (err = e));
        expect(err!.message).to.contain(`Invalid JSON in ${path.join(d, 'tokenizer.json')}`);
        writeJson(path.join(d, 'tokenizer.json'), buildTokenizerJson());
        fs.writeFileSync(path.join(d, 'tokenizer_config.json'), 'not json');
        err = null;
        await NemotronTokenizer.fromPretrained(d).catch((e: Error) => (err = e));
        expect(err!.message).to.contain(`Invalid JSON in ${path.join(d, 'tokenizer_config.json')}`);
      } finally {
        fs.rmSync(d, { recursive: true, force: true });
      }
    });

    it('rejects a tokenizer.json without a model and special tokens missing from the vocabulary', async () => {
      let err: Error | null = null;
      await NemotronTokenizer.fromJSON({ version: '1.0' }).catch((e: Error) => (err = e));
      expect(err!.message).to.match(/tokenizer\.json.*"model"/);
      err = null;
      await NemotronTokenizer.fromJSON(buildTokenizerJson(), { pad_token: '[PAD]' }).catch((e: Error) => (err = e));
      expect(err!.message).to.contain('pad_token "[PAD]"');
      expect(err!.message).to.contain('tokenizer_config.json');
    });

    it('names the id and position of an out-of-range id in decode', () => {
      expect(() => tok.decode([2, 5, 100000])).to.throw(/token id 100000 at position 2/);
      expect(() => tok.decode([-1])).to.throw(/token id -1 at position 0/);
      expect(() => tok.decode([1.5])).to.throw(/token id 1.5 at position 0/);
      expect(() => tok.decode([tok.vocabSize])).to.throw(new RegExp(`token id ${tok.vocabSize} at position 0`));
      expect(() => tok.createStreamDecoder().push(100000)).to.throw(/token id 100000 at position 0/);
    });
  });

  describe('encode / decode', () => {
    it('encodes ASCII with merges and adds BOS by default', () => {
      expect(tok.encode('Hello world')).to.deep.equal([2, id('▁Hello'), id('▁world')]);
      expect(tok.encode('Hello world', { addSpecialTokens: false })).to.deep.equal([id('▁Hello'), id('▁world')]);
      expect(tok.encode('The cat is in the world!', { addSpecialTokens: false })).to.deep.equal(
        ['▁The', '▁cat', '▁is', '▁', 'in', '▁the', '▁world', '!'].map(id),
      );
      expect(tok.encode('')).to.deep.equal([2]);
    });

    it('falls back to UTF-8 byte tokens for characters outside the vocabulary', () => {
      expect(tok.encode('é', { addSpecialTokens: false })).to.deep.equal([id('▁'), byteId(0xc3), byteId(0xa9)]);
      expect(tok.encode('日本', { addSpecialTokens: false })).to.deep.equal([
        id('▁'), ...[0xe6, 0x97, 0xa5, 0xe6, 0x9c, 0xac].map(byteId),
      ]);
      expect(tok.encode('🙂', { addSpecialTokens: false })).to.deep.equal([id('▁'), ...[0xf0, 0x9f, 0x99, 0x82].map(byteId)]);
    });

    it('round-trips ASCII and multi-byte text', () => {
      for (const text of ['Hello world', 'The quick brown fox jumps over the lazy dog.', MULTIBYTE, 'é', '日本', '🙂🙂', '  two  spaces ', 'a\nb\tc']) {
        expect(tok.decode(tok.encode(text, { addSpecialTokens: false }))).to.equal(text);
        expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).to.equal(text);
      }
    });

    it('keeps or skips special tokens in decode', () => {
      const ids = [2, ...tok.encode('Hello world', { addSpecialTokens: false }), 3, 0, 1];
      expect(tok.decode(ids)).to.equal('<s> Hello world</s><pad><unk>');
      expect(tok.decode(ids, { skipSpecialTokens: true })).to.equal('Hello world');
      expect(tok.decode([])).to.equal('');
      expect(tok.decode([2, 3], { skipSpecialTokens: true })).to.equal('');
    });

    it('recognises special tokens written in the text', () => {
      expect(tok.encode('Hello</s>', { addSpecialTokens: false })).to.deep.equal([id('▁Hello'), 3]);
    });
  });

  describe('encodeBatch', () => {
    const texts = ['Hello world', 'the', 'The cat is'];

    it('pads on the left with attention masks (for generation)', () => {
      const { inputIds, attentionMask } = tok.encodeBatch(texts, { paddingSide: 'left' });
      const rows = texts.map((t) => tok.encode(t));
      const width = Math.max(...rows.map((r) => r.length));
      expect(inputIds).to.deep.equal(rows.map((r) => [...new Array(width - r.length).fill(0), ...r]));
      expect(attentionMask).to.deep.equal(rows.map((r) => [...new Array(width - r.length).fill(0), ...new Array(r.length).fill(1)]));
      expect(inputIds[1]).to.deep.equal([0, 0, 2, id('▁the')]);
      expect(attentionMask[1]).to.deep.equal([0, 0, 1, 1]);
    });

    it('pads on the right with attention masks', () => {
      const { inputIds, attentionMask } = tok.encodeBatch(texts, { paddingSide: 'right' });
      expect(inputIds[1]).to.deep.equal([2, id('▁the'), 0, 0]);
      expect(attentionMask[1]).to.deep.equal([1, 1, 0, 0]);
      expect(inputIds[0]).to.deep.equal([2, id('▁Hello'), id('▁world'), 0]);
      expect(attentionMask[0]).to.deep.equal([1, 1, 1, 0]);
      expect(inputIds[2]).to.deep.equal(tok.encode('The cat is'));
      expect(attentionMask[2]).to.deep.equal([1, 1, 1, 1]);
    });

    it('uses the configured padding side by default and can skip special tokens', () => {
      expect(tok.encodeBatch(['Hello world', 'the'], { addSpecialTokens: false })).to.deep.equal({
        inputIds: [[id('▁Hello'), id('▁world')], [0, id('▁the')]],
        attentionMask: [[1, 1], [0, 1]],
      });
      expect(tok.encodeBatch([])).to.deep.equal({ inputIds: [], attentionMask: [] });
    });

    it('truncates to maxLength, special tokens included', () => {
      const { inputIds, attentionMask } = tok.encodeBatch(['The cat is in the world', 'the'], { maxLength: 3, paddingSide: 'right' });
      expect(inputIds).to.deep.equal([[2, id('▁The'), id('▁cat')], [2, id('▁the'), 0]]);
      expect(attentionMask).to.deep.equal([[1, 1, 1], [1, 1, 0]]);
      const untruncated = tok.encodeBatch(['The cat is in the world'], { maxLength: 3, truncation: false });
      expect(untruncated.inputIds[0].length).to.be.greaterThan(3);
    });

    it('pads with EOS when there is no pad token, and fails without pad and EOS', async () => {
      const { pad_token: _pad, ...noPad } = buildTokenizerConfig();
      const t = await NemotronTokenizer.fromJSON(buildTokenizerJson(), noPad);
      expect(t.padTokenId).to.equal(null);
      const out = t.encodeBatch(['Hello world', 'the'], { paddingSide: 'left' });
      expect(out.inputIds[1]).to.deep.equal([3, 2, id('▁the')]);
      expect(out.attentionMask[1]).to.deep.equal([0, 1, 1]);
      const { eos_token: _eos, ...neither } = noPad;
      const t2 = await NemotronTokenizer.fromJSON(buildTokenizerJson(), neither);
      expect(() => t2.encodeBatch(['Hello world', 'the'])).to.throw(/neither a pad_token nor an eos_token/);
      expect(t2.encodeBatch(['the', 'the']).inputIds).to.deep.equal([[2, id('▁the')], [2, id('▁the')]]);
    });
  });

  describe('createStreamDecoder', () => {
    for (const skip of [false, true]) {
      it(`concatenated chunks equal decode(allIds) for multi-byte text (skipSpecialTokens=${skip})`, () => {
        const ids = [...tok.encode(MULTIBYTE), 3];
        const chunks = streamAll(tok, ids, skip);
        expect(chunks.join('')).to.equal(tok.decode(ids, { skipSpecialTokens: skip }));
        for (const c of chunks) {
          expect(c).to.not.contain('\uFFFD');
          expect(LONE_SURROGATE.test(c)).to.equal(false);
        }
        // It streams: text comes out before the end, and multi-byte characters come out whole.
        expect(chunks.filter((c) => c.length > 0).length).to.be.greaterThan(10);
        expect(chunks).to.include('日');
        expect(chunks).to.include('🙂');
      });
    }

    it('emits the first word without its SentencePiece prefix space, later words with it', () => {
      const s = tok.createStreamDecoder({ skipSpecialTokens: true });
      expect(s.push(2)).to.equal('');
      expect(s.push(id('▁Hello'))).to.equal('Hello');
      expect(s.push(id('▁world'))).to.equal(' world');
      expect(s.push(byteId(0xe6))).to.equal('');
      expect(s.push(byteId(0x97))).to.equal('');
      expect(s.push(byteId(0xa5))).to.equal('日');
      expect(s.flush()).to.equal('');
    });

    it('holds back an incomplete byte sequence until flush', () => {
      const s = tok.createStreamDecoder();
      const ids = [id('▁Hello'), byteId(0xf0), byteId(0x9f)];
      const chunks = ids.map((i) => s.push(i));
      expect(chunks).to.deep.equal(['Hello', '', '']);
      const rest = s.flush();
      expect(chunks.join('') + rest).to.equal(tok.decode(ids));
    });

    it('matches decode(allIds) for random id sequences, invalid byte runs included', () => {
      const rand = mulberry32(1234);
      const nonByte = Array.from({ length: SPECIAL.length + BASE_CHARS.length + MERGES.length }, (_, i) => i);
      const texts = [MULTIBYTE, 'é日本🙂 ok', 'Ünïcödé — “quotes” ✓'];
      for (let trial = 0; trial < 200; trial++) {
        let ids: number[];
        if (trial < 100) {
          // Valid text: random slices of encoded strings.
          const all = tok.encode(texts[trial % texts.length] + ' ' + texts[(trial + 1) % texts.length]);
          const a = Math.floor(rand() * all.length);
          ids = all.slice(a, a + 1 + Math.floor(rand() * (all.length - a)));
        } else {
          // Arbitrary ids, with many byte tokens (often invalid UTF-8).
          ids = Array.from({ length: 1 + Math.floor(rand() * 30) }, () =>
            rand() < 0.5 ? byteId(0x80 + Math.floor(rand() * 0x80)) : nonByte[Math.floor(rand() * nonByte.length)],
          );
        }
        for (const skip of [false, true]) {
          const chunks = streamAll(tok, ids, skip);
          expect(chunks.join(''), JSON.stringify(ids)).to.equal(tok.decode(ids, { skipSpecialTokens: skip }));
          // Only an incomplete (or invalid) trailing byte sequence is left for flush().
          expect(chunks[chunks.length - 1], JSON.stringify(ids)).to.match(/^\uFFFD*$/);
        }
      }
    });

    it('holds back spaces that clean_up_tokenization_spaces may remove', async () => {
      const t = await NemotronTokenizer.fromJSON(buildTokenizerJson(), { ...buildTokenizerConfig(), clean_up_tokenization_spaces: true });
      const ids = [id('▁the'), id('▁'), id('.'), id('▁'), id('!'), id('▁world'), id('▁'), byteId(0xc3), byteId(0xa9), id('▁'), id(',')];
      expect(t.decode(ids)).to.equal('the.! world é,');
      const chunks = streamAll(t, ids);
      expect(chunks.join('')).to.equal(t.decode(ids));
    });

    it('can be reused after flush', () => {
      const s = tok.createStreamDecoder();
      const a = tok.encode('Hello world', { addSpecialTokens: false });
      let out = a.map((i) => s.push(i)).join('') + s.flush();
      expect(out).to.equal('Hello world');
      out = a.map((i) => s.push(i)).join('') + s.flush();
      expect(out).to.equal('Hello world');
    });
  });
});
