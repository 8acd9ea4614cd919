import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { GGUFFile, NemotronForCausalLM, planQuantization, quantizeGGUF, setBackend } from '../../src/index';
import { type LlamaQuantizeType } from '../../src/io/gguf';
import { type GGUFQuantMix } from '../../src/io/gguf-quantize';
import { type QuantizedFileDigest, expectLlamaQuantizeFile, inDirectory, llamaQuantizeOptions, quantizeModel, type QuantizeModelName, sha256, withQuantizeModel } from './gguf-quantize-models';
import { tmpDir } from '../helpers';

/**
 * The rest of llama-quantize: its legacy and float file types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16, F32), COPY,
 * --prune-layers, --tensor-type-file and requantizing (--allow-requantize; F16 / BF16 inputs without it), each file
 * against llama-quantize's with the same flags, a requantized one from an input that is itself llama-quantize's file
 * (made here, and checked, first). Fixtures: scripts/reference/gguf_requantize_fixtures.py.
 */
const reference = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../test/fixtures/gguf-requantize/expected.json'), 'utf8')) as {
  tensor_type_file: string;
  files: Record<string, QuantizedFileDigest & { model: QuantizeModelName; mix: LlamaQuantizeType; options: string[];
    source?: QuantizedFileDigest & { mix: GGUFQuantMix; options: string[] } }>;
};
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const IMATRIX = path.resolve(__dirname, '../../../test/fixtures/gguf-imatrix');

/** A directory holding each model's F32 GGUF (NAME-F32.gguf), as the fixture script's inputs, and types.txt. */
async function inputs(): Promise<string> {
  const dir = tmpDir('gguf-requantize');
  for (const name of ['nemotron', 'nemotron-tied', 'nemotron-h'] as const) {
    const { model, tokenizer } = await quantizeModel(name);
    await model.saveGGUF(path.join(dir, `${name}-F32.gguf`), tokenizer, { type: 'F32', name });
    model.dispose();
  }
  fs.writeFileSync(path.join(dir, 'types.txt'), reference.tensor_type_file);
  return dir;
}

describe('llama-quantize\'s legacy and float types, COPY, --prune-layers, --tensor-type-file and --allow-requantize', function () {
  this.timeout(600000);
  let dir = '';
  before(async () => {
    await setBackend('cpu');
    dir = await inputs();
  });

  for (const [key, expected] of Object.entries(reference.files)) {
    it(`${key}: quantizeGGUF writes llama-quantize ${expected.options.join(' ')} ${expected.mix}'s file byte for byte`, async () => {
      await inDirectory(dir, async () => {
        if (expected.options.includes('--imatrix')) fs.copyFileSync(path.join(IMATRIX, `${expected.model}.imatrix.gguf`), 'imatrix.gguf');
        let input = `${expected.model}-F32.gguf`;
        if (expected.source) {
          input = `${key.replace(/ /g, '-')}-input.gguf`;
          await quantizeGGUF(`${expected.model}-F32.gguf`, input, expected.source.mix, llamaQuantizeOptions(expected.source.options, expected.model));
          expectLlamaQuantizeFile(input, expected.source, `${key} (its input, ${expected.source.mix})`);
        }
        const output = `out-${key.replace(/ /g, '-')}.gguf`;
        await quantizeGGUF(input, output, expected.mix, llamaQuantizeOptions(expected.options, expected.model));
        expectLlamaQuantizeFile(output, expected, key);
      });
    });
  }

  it('saveGGUF makes BF16, Q4_1, Q5_0 and Q5_1 as llama-quantize does from the F32 file (F32, F16, Q8_0 and Q4_0 stay the converter\'s)', async () => {
    await withQuantizeModel('nemotron', async (model, tokenizer) => {
      for (const mix of ['BF16', 'Q4_1', 'Q5_0', 'Q5_1'] as const) {
        const file = path.join(dir, `saved-${mix}.gguf`);
        await model.saveGGUF(file, tokenizer, { type: mix, name: 'nemotron' });
        expectLlamaQuantizeFile(file, reference.files[`nemotron ${mix}`], `saveGGUF ${mix}`);
      }
      // The converter's Q8_0 keeps the output matrix Q8_0 too, but its metadata is the converter's (no quantization_version).
      const converter = path.join(dir, 'saved-Q8_0.gguf');
      await model.saveGGUF(converter, tokenizer, { type: 'Q8_0', name: 'nemotron' });
      expect(sha256(fs.readFileSync(converter))).to.not.equal(reference.files['nemotron Q8_0'].sha256);
      const file = GGUFFile.open(converter);
      try { expect(file.get('general.quantization_version')).to.equal(undefined); } finally { file.close(); }
      // Pruning from the model, as from its F32 file.
      const pruned = path.join(dir, 'saved-pruned.gguf');
      await model.saveGGUF(pruned, tokenizer, { type: 'Q4_K_M', name: 'nemotron', pruneLayers: [7, 0, 3] });
      expectLlamaQuantizeFile(pruned, reference.files['nemotron Q4_K_M prune 0,3,7'], 'saveGGUF pruneLayers');
    });
  });

  it('a pruned file loads as the model without those layers: the other layers\' weights, renumbered', async () => {
    const source = path.join(dir, 'nemotron-F32.gguf');
    const prunedFile = path.join(dir, 'pruned-copy.gguf');
    await quantizeGGUF(source, prunedFile, 'COPY', { pruneLayers: [1, 6] });
    const [whole, pruned] = [await NemotronForCausalLM.fromPretrained(source), await NemotronForCausalLM.fromPretrained(prunedFile)];
    try {
      expect(pruned.config.numHiddenLayers).to.equal(6);
      const kept = [0, 2, 3, 4, 5, 7];
      const wholeParams = whole.namedParameters();
      for (const [name, v] of pruned.namedParameters()) {
        const m = /layers\.(\d+)\./.exec(name);
        const from = m ? name.replace(/layers\.\d+\./, `layers.${kept[Number(m[1])]}.`) : name;
        expect(Buffer.from((await v.data() as Float32Array).buffer).equals(Buffer.from((await wholeParams.get(from)!.data() as Float32Array).buffer)), `${name} = ${from}`).to.equal(true);
      }
    } finally {
      whole.dispose();
      pruned.dispose();
    }
  });

  it('planQuantization (--dry-run) follows pruning and requantizing: names, types and sizes as written', async () => {
    await inDirectory(dir, async () => {
      for (const key of ['nemotron Q4_K_M prune 0,3,7', 'nemotron Q4_K_M to Q3_K_S', 'nemotron COPY prune 1,6', 'nemotron-h BF16 output q8_0 embedding q4_0']) {
        const expected = reference.files[key];
        const input = expected.source ? `${key.replace(/ /g, '-')}-input.gguf` : `${expected.model}-F32.gguf`;
        if (expected.source) await quantizeGGUF(`${expected.model}-F32.gguf`, input, expected.source.mix, llamaQuantizeOptions(expected.source.options, expected.model));
        const plan = planQuantization(input, expected.mix, llamaQuantizeOptions(expected.options, expected.model));
        expect(plan.map((t) => [t.name, t.to]), key).to.deep.equal(expected.tensors.map(([name, type]) => [name, type]));
        const out = 'planned.gguf';
        await quantizeGGUF(input, out, expected.mix, llamaQuantizeOptions(expected.options, expected.model));
        const written = GGUFFile.open(out);
        try {
          expect(plan.map((t) => t.bytes), `${key}: sizes`).to.deep.equal(plan.map((t) => written.tensors.get(t.name)!.byteLength));
        } finally {
          written.close();
        }
      }
    });
  });

  it('refuses by name: requantizing without allowRequantize, writing over the input, pruning a layer that is not there, every layer, or a NemotronH (per-layer metadata)', async () => {
    await inDirectory(dir, async () => {
      await quantizeGGUF('nemotron-F32.gguf', 'q8.gguf', 'Q8_0');
      const said = (promise: Promise<void>) => promise.then(() => 'written', (e: Error) => e.message);
      expect(await said(quantizeGGUF('q8.gguf', 'x.gguf', 'Q4_K_M')))
        .to.match(/quantize: output\.weight is Q8_0 already; requantizing it to Q6_K compounds the rounding and is refused without allowRequantize \(llama-quantize --allow-requantize\)/);
      expect(await said(quantizeGGUF('q8.gguf', './q8.gguf', 'Q4_K_M', { allowRequantize: true }))).to.match(/quantizeGGUF: the output \.\/q8\.gguf is an input file; write to another file/);
      // Every tensor in its target type already: copied, no flag needed.
      expect(await said(quantizeGGUF('q8.gguf', 'y.gguf', 'Q8_0'))).to.equal('written');
      expect(sha256(fs.readFileSync('y.gguf'))).to.equal(sha256(fs.readFileSync('q8.gguf')));
      expect(await said(quantizeGGUF('nemotron-F32.gguf', 'x.gguf', 'Q4_K_M', { pruneLayers: [8] }))).to.match(/pruneLayers: 8 is not a layer of this model \(0 to 7\)/);
      expect(await said(quantizeGGUF('nemotron-F32.gguf', 'x.gguf', 'COPY', { pruneLayers: [0, 1, 2, 3, 4, 5, 6, 7] }))).to.match(/would leave none of the 8 layers/);
      expect(await said(quantizeGGUF('nemotron-h-F32.gguf', 'x.gguf', 'COPY', { pruneLayers: [1] })))
        .to.match(/pruneLayers: this model has an entry a layer in nemotron_h_moe\.attention\.head_count_kv.*llama\.cpp then refuses the file \(wrong array length\)/);
    });
  });

  it('the CLI: convert --gguf with --type COPY / Q4_0 …, --prune-layers, --tensor-type-file, --allow-requantize; bad values refused by name', async () => {
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, 'convert', ...args, '--backend', 'cpu'], { encoding: 'utf8', cwd: dir });
    const ok = (key: string, input: string, output: string) => {
      const expected = reference.files[key];
      const run = cli('--gguf', input, '--output', output, '--type', expected.mix, ...expected.options);
      expect(run.status, run.stderr).to.equal(0);
      expectLlamaQuantizeFile(path.join(dir, output), expected, `CLI ${key}`);
    };
    ok('nemotron COPY prune 1,6', 'nemotron-F32.gguf', 'cli-copy.gguf');
    ok('nemotron Q4_K_M tensor type file', 'nemotron-F32.gguf', 'cli-types.gguf');
    ok('nemotron Q4_1', 'nemotron-F32.gguf', 'cli-q4_1.gguf');
    ok('nemotron Q4_1 to Q5_1 leave output', 'cli-q4_1.gguf', 'cli-q5_1.gguf');
    const refused = (...args: string[]) => { const r = cli(...args); expect(r.status).to.not.equal(0); return r.stderr; };
    expect(refused('--gguf', 'cli-q4_1.gguf', '--output', 'x.gguf', '--type', 'Q5_1')).to.match(/is Q4_1 already; requantizing it to Q5_1 .* refused without allowRequantize \(llama-quantize --allow-requantize\)/);
    expect(refused('--gguf', 'nemotron-F32.gguf', '--output', 'x.gguf', '--type', 'COPY', '--prune-layers', '1,x')).to.match(/--prune-layers 1,x: x is not a layer number/);
    expect(refused('--gguf', 'nemotron-F32.gguf', '--output', 'x.gguf', '--type', 'Q4_K_M', '--tensor-type-file', 'none.txt')).to.match(/--tensor-type-file none\.txt: no such file/);
    expect(refused('--gguf', 'nemotron-F32.gguf', '--output', 'folder', '--type', 'COPY')).to.match(/--type COPY copies a GGUF file/);
    const plan = cli('--gguf', 'nemotron-F32.gguf', '--output', 'p.gguf', '--type', 'Q4_0', '--prune-layers', '0', '--dry-run');
    expect(plan.status, plan.stderr).to.equal(0);
    expect(plan.stdout).to.match(/^blk\.6\.ffn_up\.weight\s+F32\s+→ Q4_0/m).and.not.to.match(/^blk\.7\./m);
  });
});
