/** The tiny-gqa fixture as a checkpoint folder with a tokenizer: what the CLI and server tests run. */
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';

/**
 * A tokenizer.json with exactly the 96 ids of the tiny-gqa model: SentencePiece-style BPE over characters
 * (▁ for spaces), a few merges and some multi-byte characters, with <pad> <unk> <s> </s> = 0..3 as in the config.
 */
export function writeTinyTokenizer(dir: string): void {
  const specials = ['<pad>', '<unk>', '<s>', '</s>'];
  const chars = ['▁', ...'abcdefghijklmnopqrstuvwxyz', ...'ABCDEFGHIJKLMNOPQRSTUVWXYZ', ...'0123456789', ...'.,!?\'-:;()"'];
  const merges = [['▁', 't'], ['h', 'e'], ['▁t', 'he'], ['▁', 'a'], ['i', 'n'], ['e', 'r'], ['a', 'n'], ['o', 'n']];
  const multiByte = ['é', 'ü', 'ñ', 'ß', '中', '文', '日', '本', '€', '😀'];
  const tokens = [...specials, ...chars, ...merges.map((m) => m.join('')), ...multiByte];
  expect(tokens).to.have.length(96);
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content, id) => ({
      id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
    })),
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }],
    },
    pre_tokenizer: null,
    // <s> before a text (and before each of a pair), as a Nemotron tokenizer.json's TemplateProcessing writes it.
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [2], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: false, ignore_merges: false,
      vocab: Object.fromEntries(tokens.map((t, i) => [t, i])),
      merges: merges.map((m) => m.join(' ')),
    },
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizer, null, 1));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({
    add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', pad_token: '<pad>',
    clean_up_tokenization_spaces: false,
  }, null, 1));
}

export function copyCheckpoint(from: string, to: string, skip: string[] = []): void {
  fs.mkdirSync(to, { recursive: true });
  for (const f of fs.readdirSync(from)) if (!skip.includes(f)) fs.copyFileSync(path.join(from, f), path.join(to, f));
}

