import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { GGUFFile, mergeGGUF, NemotronForCausalLM, NemotronHForCausalLM, parseSplitSize, quantizeGGUF, setBackend, splitGGUF } from '../../src/index';
import { type QuantizeModelName, quantizeModel, sha256 } from './gguf-quantize-models';
import { tmpDir } from '../helpers';

/**
 * Split GGUF files as llama.cpp makes and reads them: `splitGGUF` against llama-gguf-split's shards byte for byte,
 * models loaded from the first shard equal to the unsplit ones, llama-quantize's file from a split input.
 * Fixtures: scripts/reference/gguf_split_fixtures.py.
 */
const reference = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../test/fixtures/gguf-split/expected.json'), 'utf8')) as {
  splits: Record<string, { model: QuantizeModelName; options: string[]; shards: Array<[string, string]> }>;
  'quantized from split': { source: string; mix: 'Q4_K_M'; sha256: string };
  merged: { source: string; sha256: string };
  'keep split': { source: string; mix: 'Q4_K_M'; shards: Array<[string, string]> };
};
const CLI = path.resolve(__dirname, '../../src/cli/main.js');

/** Each model's F32 GGUF (as the fixture script's input), once. */
const f32Files = new Map<string, string>();
async function f32File(name: QuantizeModelName): Promise<string> {
  if (!f32Files.has(name)) {
    const { model, tokenizer } = await quantizeModel(name);
    const file = path.join(tmpDir('gguf-split-source'), `${name}-f32.gguf`);
    await model.saveGGUF(file, tokenizer, { type: 'F32', name });
    model.dispose();
    f32Files.set(name, file);
  }
  return f32Files.get(name)!;
}

/** llama-gguf-split's flags as splitGGUF's limit. */
const limitOf = (options: string[]) => (options[0] === '--split-max-tensors' ? { maxTensors: Number(options[1]) } : { maxBytes: parseSplitSize(options[1]) });

describe('Split GGUF files (llama-gguf-split)', function () {
  this.timeout(600000);
  before(async () => { await setBackend('cpu'); });

  for (const [key, expected] of Object.entries(reference.splits)) {
    it(`${key}: splitGGUF writes llama-gguf-split ${expected.options.join(' ')}'s ${expected.shards.length} shards byte for byte`, async () => {
      const prefix = path.join(tmpDir('gguf-split'), 'model');
      const shards = splitGGUF(await f32File(expected.model), prefix, limitOf(expected.options));
      expect(shards.map((s) => s.slice(prefix.length))).to.deep.equal(expected.shards.map(([suffix]) => suffix));
      shards.forEach((s, i) => expect(sha256(fs.readFileSync(s)), path.basename(s)).to.equal(expected.shards[i][1]));
    });
  }

  it('a model loads from its first shard as from the whole file (Nemotron, NemotronH); quantizeGGUF writes llama-quantize\'s file from a split input (and its shards with keepSplit), mergeGGUF llama-gguf-split --merge\'s', async () => {
    for (const [name, key] of [['nemotron', 'nemotron size 2M'], ['nemotron-h', 'nemotron-h tensors 10']] as const) {
      const whole = await f32File(name);
      const prefix = path.join(tmpDir('gguf-split-load'), name);
      const shards = splitGGUF(whole, prefix, limitOf(reference.splits[key].options));
      const [split, file] = [GGUFFile.open(shards[0]), GGUFFile.open(whole)];
      const tensorCount = file.tensors.size;
      try {
        expect([...split.tensors.keys()].sort()).to.deep.equal([...file.tensors.keys()].sort());
        for (const t of file.tensors.keys()) expect(split.readBytes(t).equals(file.readBytes(t)), t).to.equal(true);
      } finally {
        split.close();
        file.close();
      }
      const load = (f: string) => (name === 'nemotron-h' ? NemotronHForCausalLM.fromPretrained(f) : NemotronForCausalLM.fromPretrained(f));
      const [a, b] = [await load(shards[0]), await load(whole)];
      const before = tf.memory().numTensors;
      const ids = [[5, 17, 42, 8, 63, 21, 2, 30]];
      const difference = tf.tidy(() => tf.max(tf.abs(tf.sub(a.forward({ inputIds: ids }).logits!, b.forward({ inputIds: ids }).logits!))).dataSync()[0]);
      expect(difference, `${name}: logits from the shards and from the file`).to.equal(0);
      expect(tf.memory().numTensors, 'no tensor left').to.equal(before);
      a.dispose();
      b.dispose();
      if (name === 'nemotron-h') {
        const out = path.join(path.dirname(prefix), 'q.gguf');
        await quantizeGGUF(shards[0], out, 'Q4_K_M');
        expect(sha256(fs.readFileSync(out))).to.equal(reference['quantized from split'].sha256);
        // --keep-split: the output in the input's shards, the mix's rules counted in their order.
        const kept = path.join(path.dirname(prefix), 'kept.gguf');
        await quantizeGGUF(shards[0], kept, 'Q4_K_M', { keepSplit: true });
        reference['keep split'].shards.forEach(([suffix, hash]) => expect(sha256(fs.readFileSync(path.join(path.dirname(prefix), `kept${suffix}`))), `kept${suffix}`).to.equal(hash));
        const keptOnWhole = await quantizeGGUF(whole, kept, 'Q4_K_M', { keepSplit: true }).then(() => 'written', (e: Error) => e.message);
        expect(keptOnWhole).to.match(/keepSplit writes the shards of a split input; .*nemotron-h-f32\.gguf is one file/);
        // Joined again, as llama-gguf-split --merge joins them (split.count 0: read as one file).
        const merged = path.join(path.dirname(prefix), 'merged.gguf');
        mergeGGUF(shards[0], merged);
        expect(sha256(fs.readFileSync(merged))).to.equal(reference.merged.sha256);
        const m = GGUFFile.open(merged);
        expect([m.get('split.count'), m.tensors.size]).to.deep.equal([0, tensorCount]);
        m.close();
      }
    }
  });

  it('refuses a shard other than the first, a missing shard, and limits that cannot be met, by name; the CLI splits and merges as llama-gguf-split does, and quantizes with --keep-split', async () => {
    const dir = tmpDir('gguf-split-errors');
    const expected = reference.splits['nemotron-h tensors 10'];
    const source = await f32File('nemotron-h');
    const run = spawnSync(process.execPath, [CLI, 'split', '--input', source, '--output', path.join(dir, 'm'), '--split-max-tensors', '10'], { encoding: 'utf8' });
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stdout).to.match(/wrote 5 shards: .*m-00001-of-00005\.gguf/);
    expected.shards.forEach(([suffix, hash]) => expect(sha256(fs.readFileSync(path.join(dir, `m${suffix}`))), suffix).to.equal(hash));
    const merge = spawnSync(process.execPath, [CLI, 'split', '--merge', '--input', path.join(dir, 'm-00001-of-00005.gguf'), '--output', path.join(dir, 'merged.gguf')], { encoding: 'utf8' });
    expect(merge.status, merge.stderr).to.equal(0);
    expect(sha256(fs.readFileSync(path.join(dir, 'merged.gguf')))).to.equal(reference.merged.sha256);
    const kept = spawnSync(process.execPath, [CLI, 'convert', '--gguf', path.join(dir, 'm-00001-of-00005.gguf'), '--output', path.join(dir, 'k.gguf'),
      '--type', 'Q4_K_M', '--keep-split', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(kept.status, kept.stderr).to.equal(0);
    reference['keep split'].shards.forEach(([suffix, hash]) => expect(sha256(fs.readFileSync(path.join(dir, `k${suffix}`))), `k${suffix}`).to.equal(hash));
    const failure = (f: () => unknown) => { try { f(); return 'opened'; } catch (e) { return (e as Error).message; } };
    // Inputs are read tensor by tensor while the output is written: writing over one is refused, and the input stays whole.
    const before = sha256(fs.readFileSync(path.join(dir, 'm-00003-of-00005.gguf')));
    expect(failure(() => mergeGGUF(path.join(dir, 'm-00001-of-00005.gguf'), path.join(dir, 'm-00003-of-00005.gguf')))).to.match(/mergeGGUF: the output .*m-00003-of-00005\.gguf is an input file/);
    expect(sha256(fs.readFileSync(path.join(dir, 'm-00003-of-00005.gguf')))).to.equal(before);
    expect(failure(() => splitGGUF(path.join(dir, 'merged.gguf'), path.join(dir, 'merged'), { maxTensors: 1000 }))).to.equal('opened');
    expect(failure(() => splitGGUF(path.join(dir, 'merged-00001-of-00001.gguf'), path.join(dir, 'merged'), { maxTensors: 1000 }))).to.match(/splitGGUF: the output .*merged-00001-of-00001\.gguf is an input file/);
    const said = await quantizeGGUF(path.join(dir, 'm-00001-of-00005.gguf'), path.join(dir, 'm.gguf'), 'Q8_0', { keepSplit: true }).then(() => 'written', (e: Error) => e.message);
    expect(said).to.match(/quantizeGGUF: the output .*m-00001-of-00005\.gguf is an input file/);
    expect(failure(() => GGUFFile.open(path.join(dir, 'm-00002-of-00005.gguf')))).to.match(/m-00002-of-00005\.gguf is shard 2 of 5 of a split model: open .*m-00001-of-00005\.gguf/);
    fs.renameSync(path.join(dir, 'm-00004-of-00005.gguf'), path.join(dir, 'elsewhere.gguf'));
    expect(failure(() => GGUFFile.open(path.join(dir, 'm-00001-of-00005.gguf')))).to.match(/is split into 5 shards; .*m-00004-of-00005\.gguf is missing/);
    expect(failure(() => splitGGUF(source, path.join(dir, 'x'), { maxBytes: 100 }))).to.match(/alone \(\d+ bytes\) is larger than 100 bytes: a shard would hold no tensor/);
    expect(() => parseSplitSize('2GB')).to.throw(/split size 2GB: expected a positive whole number of M \(10⁶ bytes\) or G \(10⁹ bytes\)/);
    expect(() => splitGGUF(path.join(dir, 'elsewhere.gguf'), path.join(dir, 'y'), { maxTensors: 0 })).to.throw(/maxTensors 0: expected a positive number/);
  });
});
