import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { GGUFFile, planQuantization, quantizeGGUF, setBackend } from '../../src/index';
import { type GGMLWriteType, type GGUFQuantMix } from '../../src/io/gguf-quantize';
import { type QuantizedFileDigest, expectLlamaQuantizeFile, llamaQuantizeOptions, quantizeModel, type QuantizeModelName, sha256, withQuantizeModel } from './gguf-quantize-models';
import { tmpDir } from '../helpers';

/**
 * llama-quantize's per-tensor options — --pure, --output-tensor-type, --token-embedding-type, --tensor-type and
 * --leave-output-tensor —, --override-kv and --include-weights / --exclude-weights, through saveGGUF and the CLI, against llama-quantize's files with the same options.
 * Fixtures: scripts/reference/gguf_quantize_options_fixtures.py.
 */
const reference = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../test/fixtures/gguf-quantize-options/expected.json'), 'utf8')) as {
  files: Record<string, QuantizedFileDigest & { model: QuantizeModelName; mix: GGUFQuantMix; options: string[] }>;
};
const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const IMATRIX = path.resolve(__dirname, '../../../test/fixtures/gguf-imatrix');

describe('llama-quantize\'s per-tensor options (--pure, --output-tensor-type, --token-embedding-type, --tensor-type, --leave-output-tensor) and --override-kv', function () {
  this.timeout(600000);
  before(async () => { await setBackend('cpu'); });

  for (const [key, expected] of Object.entries(reference.files)) {
    it(`${key}: saveGGUF writes llama-quantize ${expected.options.join(' ')}'s ${expected.mix} file byte for byte`, async () => {
      await withQuantizeModel(expected.model, async (model, tokenizer) => {
        const file = path.join(tmpDir('gguf-options'), 'out.gguf');
        await model.saveGGUF(file, tokenizer, { type: expected.mix, name: expected.model, ...llamaQuantizeOptions(expected.options, expected.model) });
        expectLlamaQuantizeFile(file, expected, key);
      });
    });
  }

  it('planQuantization (convert --dry-run) gives the types and sizes of llama-quantize\'s files without writing one', async () => {
    const dir = tmpDir('gguf-options-plan');
    for (const key of ['nemotron-h Q4_K_M tensor types', 'nemotron Q3_K_M blk.0 attn_v q8_0', 'nemotron-tied Q4_K_M output q8_0']) {
      const expected = reference.files[key];
      const { model, tokenizer } = await quantizeModel(expected.model);
      const source = path.join(dir, `${expected.model}-F32.gguf`);
      await model.saveGGUF(source, tokenizer, { type: 'F32', name: expected.model });
      model.dispose();
      const options = llamaQuantizeOptions(expected.options, expected.model);
      const plan = planQuantization(source, expected.mix, options);
      expect(plan.map((t) => [t.name, t.to]), key).to.deep.equal(expected.tensors.map(([name, type]) => [name, type]));
      const out = path.join(dir, 'out.gguf');
      await quantizeGGUF(source, out, expected.mix, options as Parameters<typeof quantizeGGUF>[3]);
      const written = GGUFFile.open(out);
      try {
        expect(plan.map((t) => t.bytes), `${key}: sizes`).to.deep.equal(plan.map((t) => written.tensors.get(t.name)!.byteLength));
      } finally {
        written.close();
      }
    }
  });

  it('the CLI takes the same flags (convert --gguf F32 --type MIX ... and --model DIR); bad ones are refused by name, on the CLI and the API', async () => {
    const dir = tmpDir('gguf-options-cli');
    for (const name of ['nemotron', 'nemotron-h'] as const) {
      const { model, tokenizer } = await quantizeModel(name);
      await model.saveGGUF(path.join(dir, `${name}-F32.gguf`), tokenizer, { type: 'F32', name });
      if (name === 'nemotron') {
        await model.savePretrained(path.join(dir, 'folder'));
        tokenizer.savePretrained(path.join(dir, 'folder'));
      }
      model.dispose();
    }
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args, '--backend', 'cpu'], { encoding: 'utf8', cwd: dir });
    const viaGGUF = reference.files['nemotron-h Q4_K_M tensor types'];
    let run = cli('convert', '--gguf', 'nemotron-h-F32.gguf', '--output', 'a.gguf', '--type', 'Q4_K_M', ...viaGGUF.options);
    expect(run.status, run.stderr).to.equal(0);
    expect(sha256(fs.readFileSync(path.join(dir, 'a.gguf')))).to.equal(viaGGUF.sha256);
    const viaFolder = reference.files['nemotron Q4_K_M output q8_0 embedding q8_0'];
    run = cli('convert', '--model', 'folder', '--output', 'b.gguf', '--type', 'Q4_K_M', '--threads', '2', ...viaFolder.options);
    expect(run.status, run.stderr).to.equal(0);
    expect(sha256(fs.readFileSync(path.join(dir, 'b.gguf')))).to.equal(viaFolder.sha256);
    fs.copyFileSync(path.join(IMATRIX, 'nemotron.imatrix.gguf'), path.join(dir, 'imatrix.gguf'));
    const excluded = reference.files['nemotron Q4_K_M imatrix exclude'];
    run = cli('convert', '--gguf', 'nemotron-F32.gguf', '--output', 'c.gguf', '--type', 'Q4_K_M', ...excluded.options);
    expect(run.status, run.stderr).to.equal(0);
    expect(sha256(fs.readFileSync(path.join(dir, 'c.gguf')))).to.equal(excluded.sha256);
    const refused = (...args: string[]) => { const r = cli('convert', '--gguf', 'nemotron-F32.gguf', '--output', 'x.gguf', ...args); expect(r.status).to.not.equal(0); return r.stderr; };
    expect(refused('--type', 'Q4_K_M', '--output-tensor-type', 'q9_0')).to.match(/q9_0: expected a tensor type written here \(f32, f16, .*q8_0.*\)/);
    expect(refused('--type', 'Q4_K_M', '--tensor-type', 'attn_v')).to.match(/--tensor-type attn_v: expected PATTERN=TYPE, e\.g\. attn_v=q8_0/);
    expect(refused('--type', 'Q4_K_M', '--imatrix', 'imatrix.gguf', '--include-weights', 'a', '--exclude-weights', 'b')).to.match(/give include or exclude weights, not both/);
    expect(refused('--type', 'Q4_K_M', '--include-weights', 'attn_q')).to.match(/--include-weights \/ --exclude-weights choose entries of an --imatrix FILE; none was given/);
    const plan = cli('convert', '--gguf', 'nemotron-h-F32.gguf', '--output', 'p.gguf', '--type', 'Q4_K_M', '--dry-run', ...viaGGUF.options);
    expect(plan.status, plan.stderr).to.equal(0);
    expect(plan.stdout).to.match(/blk\.2\.attn_v\.weight\s+F32\s+→ Q8_0/).and.to.match(/\d+ tensors: [\d.]+ MiB → [\d.]+ MiB, [\d.]+ bits a weight/);
    expect(fs.existsSync(path.join(dir, 'p.gguf')), '--dry-run writes nothing').to.equal(false);
    const fromFolder = cli('convert', '--model', 'folder', '--output', 'x.gguf', '--type', 'Q8_0', '--pure');
    expect(fromFolder.status).to.not.equal(0);
    expect(fromFolder.stderr).to.match(/--pure: llama-quantize's options go with its job \(--gguf FILE --output FILE\.gguf, or --model DIR with --type Q4_K_M, …\), not --model's --type Q8_0 \(the converter's\)/);
    // From the API: a type that is not written here, by option.
    const { model, tokenizer } = await quantizeModel('nemotron');
    const said = await model.saveGGUF(path.join(dir, 'y.gguf'), tokenizer, { type: 'Q4_K_M', tensorTypes: [['attn_q', 'Q8_1' as GGMLWriteType]] })
      .then(() => 'written', (e: Error) => e.message);
    model.dispose();
    expect(said).to.match(/saveGGUF: tensorTypes attn_q: Q8_1 is not a tensor type written here/);
    const refusedByApi = async (options: Parameters<typeof model.saveGGUF>[2]) => {
      const m = (await quantizeModel('nemotron-tied')).model;
      try { return await m.saveGGUF(path.join(dir, 'z.gguf'), tokenizer, options).then(() => 'written', (e: Error) => e.message); } finally { m.dispose(); }
    };
    expect(await refusedByApi({ type: 'Q4_K_M', overrideKv: ['general.name=string:x'] })).to.match(/--override-kv general\.name=string:x: the type string is not int, float, bool or str/);
    expect(await refusedByApi({ type: 'Q4_K_M', overrideKv: ['x=bool:yes'] })).to.match(/a bool is true or false, not yes/);
    expect(await refusedByApi({ type: 'Q4_K_M', overrideKv: ['x=int:1.5'] })).to.match(/1\.5 is not an integer/);
    expect(await refusedByApi({ type: 'Q8_0', pure: true, overrideKv: ['x=int:1'] })).to.match(/saveGGUF: pure, overrideKv: llama-quantize's options go with a quantization mix \(Q4_K_M, …\), not Q8_0/);
  });
});
