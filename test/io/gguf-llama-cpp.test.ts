import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM, NemotronHForCausalLM, NemotronTokenizer } from '../../src/index';
import { quantizeModel } from './gguf-quantize-models';
import { forEachBackend, testBackends, tmpDir } from '../helpers';

/**
 * llama.cpp itself as the judge of our GGUF files (scripts/reference/llama_cpp_fixtures.py, llama.cpp built from
 * llama-cpp-python's source distribution, its CPU backend in float32): the logits it computes from the F32 files we
 * write (Nemotron; NemotronH with Mamba, attention and 8 experts) and from the converter-layout NemotronH fixtures
 * (one with latent expert projections) equal ours from the same files; its tokenizer encodes text with our byte-level
 * vocabularies as ours does.
 */
const FIXTURES = path.resolve(__dirname, '../../../test/fixtures');
const reference = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'gguf-llama-cpp', 'expected.json'), 'utf8')) as {
  ids: number[]; texts: string[]; logits: Record<string, number[][]>; encodings: Record<string, number[][]>;
};

/** The GGUF file behind each of llama.cpp's logits: ours written again from the seeded weights, or a committed fixture. */
async function ggufFile(name: string, dir: string): Promise<string> {
  if (name === 'hybrid' || name === 'moe') return path.join(FIXTURES, 'nemotron-h-gguf', `${name}-f32.gguf`);
  const file = path.join(dir, `${name}-f32.gguf`);
  if (!fs.existsSync(file)) {
    const { model, tokenizer } = await quantizeModel(name as 'nemotron' | 'nemotron-h');
    await model.saveGGUF(file, tokenizer, { type: 'F32', name });
    model.dispose();
  }
  return file;
}

forEachBackend(testBackends(), () => {
  const dir = tmpDir('gguf-llama-cpp');
  for (const name of Object.keys(reference.logits)) {
    it(`${name}: logits from the F32 GGUF within 1e-4 of llama.cpp's, every position`, async () => {
      const file = await ggufFile(name, dir);
      const model = name === 'nemotron' ? await NemotronForCausalLM.fromPretrained(file) : await NemotronHForCausalLM.fromPretrained(file);
      const before = tf.memory().numTensors;
      const logits = model.forward({ inputIds: [reference.ids] }).logits!;
      const theirs = tf.tensor([reference.logits[name]]);
      const worst = tf.tidy(() => tf.max(tf.abs(tf.sub(logits, theirs))).dataSync()[0]);
      tf.dispose([logits, theirs]);
      expect(tf.memory().numTensors, 'no tensor left by the forward pass').to.equal(before);
      model.dispose();
      expect(worst, `${name}: largest difference from llama.cpp's logits`).to.be.at.most(1e-4);
    });
  }
});

describe('GGUF vocabularies as llama.cpp\'s tokenizer reads them', () => {
  const files: Record<string, string> = {
    tekken: path.join(FIXTURES, 'nemotron-h-gguf', 'hybrid-f32.gguf'),
    'gpt-2': path.join(FIXTURES, 'nemotron-h-gguf', 'vocab-gpt-2.gguf'),
    'llama-bpe': path.join(FIXTURES, 'nemotron-h-gguf', 'vocab-llama-bpe.gguf'),
    qwen2: path.join(FIXTURES, 'nemotron-h-gguf', 'vocab-qwen2.gguf'),
  };
  for (const [pre, file] of Object.entries(files)) {
    it(`${pre}: the same ids as llama_tokenize (special tokens added and parsed) on ${reference.texts.length} texts`, async () => {
      const tokenizer = await NemotronTokenizer.fromPretrained(file);
      const ours = reference.texts.map((text) => tokenizer.encode(text));
      expect(ours).to.deep.equal(reference.encodings[pre]);
    });
  }
});
