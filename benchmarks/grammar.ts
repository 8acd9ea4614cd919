/**
 * What structured outputs cost: xgrammar reading a 256,000-token vocabulary (Minitron's size), compiling grammars, and
 * the per-step mask a constrained row pays (its bitmask, applied to a row of logits), while a greedy walk writes JSON.
 *
 *   node dist/benchmarks/grammar.js [--out benchmarks/results]
 */
import * as fs from 'fs';
import * as path from 'path';
import seedrandom from 'seedrandom';
import { GrammarCompiler, type GrammarSpec, NemotronTokenizer, argmax } from '../src/index';
import { machineInfo } from './configs';

const VOCAB = 256_000;

/** A SentencePiece-style vocabulary of VOCAB pieces (byte fallback, ▁ for spaces) with JSON's punctuation among them. */
function vocabulary(): object {
  const random = seedrandom('grammar-bench');
  const pieces = new Set<string>(['<unk>', '<s>', '</s>']);
  for (let b = 0; b < 256; b++) pieces.add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}[]":,.-_▁';
  for (const c of alphabet) pieces.add(c);
  while (pieces.size < VOCAB) {
    const length = 2 + Math.floor(random() * 7);
    let piece = random() < 0.5 ? '▁' : '';
    for (let i = 0; i < length; i++) piece += alphabet[Math.floor(random() * 62)];
    pieces.add(piece);
  }
  const vocab = Object.fromEntries([...pieces].map((p, i) => [p, i]));
  return {
    version: '1.0', added_tokens: ['<unk>', '<s>', '</s>'].map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null, pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    post_processor: null, decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: [] },
  };
}

async function main(): Promise<void> {
  const outDir = process.argv.includes('--out') ? process.argv[process.argv.indexOf('--out') + 1] : null;
  const lines: string[] = [];
  const log = (line: string) => { lines.push(line); console.log(line); };
  const tokenizer = await NemotronTokenizer.fromJSON(vocabulary(), { eos_token: '</s>', unk_token: '<unk>', bos_token: '<s>' });
  let t = performance.now();
  const compiler = await GrammarCompiler.create(tokenizer, { vocabSize: VOCAB });
  const readMs = performance.now() - t;
  const machine = machineInfo();
  log(`# Structured outputs: xgrammar (WebAssembly) on a ${VOCAB.toLocaleString('en')}-token vocabulary`);
  log('');
  log(`Machine: ${machine.cpu}, ${machine.cores} cores, ${(machine.ram_bytes / 2 ** 30).toFixed(0)} GB; node ${process.version}; @mlc-ai/web-xgrammar 0.1.27.`);
  log('');
  log(`Reading the vocabulary (GrammarCompiler.create, once a server): ${(readMs / 1000).toFixed(2)} s.`);
  log('');
  log('| grammar | compile | mask a step (mean, p90) | steps |');
  log('| --- | ---: | ---: | ---: |');
  const grammars: Array<[string, GrammarSpec]> = [
    ['any JSON', { type: 'json' }],
    ['JSON schema (object: string, integer, enum, array of numbers)', { type: 'json_schema', schema: {
      type: 'object', properties: { name: { type: 'string' }, age: { type: 'integer' }, kind: { enum: ['a', 'b', 'c'] }, scores: { type: 'array', items: { type: 'number' } } },
      required: ['name', 'age', 'kind', 'scores'], additionalProperties: false } }],
    ['choice of 3 strings', { type: 'choice', choices: ['positive', 'negative', 'neutral'] }],
  ];
  const random = seedrandom('walk');
  for (const [name, spec] of grammars) {
    t = performance.now();
    const grammar = await compiler.compile(spec);
    const compileMs = performance.now() - t;
    const constraint = await grammar.constraint();
    const times: number[] = [];
    const scores = new Float32Array(VOCAB);
    for (let step = 0; step < 64; step++) {
      for (let i = 0; i < VOCAB; i++) scores[i] = random();
      t = performance.now();
      constraint.mask(scores);
      times.push(performance.now() - t);
      // The walk goes on while the grammar lets it (EOS only once nothing else is allowed), to measure long texts.
      const eos = scores[2];
      scores[2] = -Infinity;
      let token = argmax(scores);
      if (scores[token] === -Infinity) {
        if (eos === -Infinity) break;
        token = 2;
      }
      constraint.accept(token);
      if (token === 2) break;
    }
    constraint.dispose();
    grammar.dispose();
    times.sort((a, b) => a - b);
    const mean = times.reduce((a, b) => a + b, 0) / times.length;
    log(`| ${name} | ${compileMs.toFixed(0)} ms | ${mean.toFixed(2)} ms, ${times[Math.floor(times.length * 0.9)].toFixed(2)} ms | ${times.length} |`);
  }
  log('');
  log('A step\'s mask runs on the host, per constrained row, beside the forward pass (the logits of a constrained row come to the host, as sampling brings them).');
  if (outDir) {
    const file = path.join(outDir, `grammar-${new Date().toISOString().slice(0, 10)}.md`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    console.log(`wrote ${file}`);
  }
}

void main();
