import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { promisify } from 'util';
import { expect } from 'chai';
import { FIXTURES } from '../helpers';

const LAVAPIPE = '/usr/share/vulkan/icd.d/lvp_icd.json';

/**
 * The device run's entry (benchmarks/gpu-entry.ts) end to end on the software Vulkan driver, small: a GPU session has
 * minutes of device time, and a bug found there costs a run. Speed is not judged; every figure must be there.
 */
describe('the GPU device entry, on lavapipe', function () {
  this.timeout(900000);
  before(function () {
    if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES && !fs.existsSync(LAVAPIPE)) {
      console.log('    (skipped: no Vulkan driver; .ci/run installs lavapipe)');
      this.skip();
    }
  });

  it('measures the device, passes the fixture parity and benchmarks a tiny model with every variant', async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'nemotron-gpu-entry-'));
    const entry = path.resolve(__dirname, '../../benchmarks/gpu-entry.js');
    const env: NodeJS.ProcessEnv = {
      ...process.env, OUT: out, NEMOTRON_FIXTURES: FIXTURES, NEMOTRON_H_FIXTURES: path.resolve(FIXTURES, '../nemotron-h'), XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp',
    };
    if (!env.VK_ICD_FILENAMES && !env.VK_DRIVER_FILES) env.VK_ICD_FILENAMES = LAVAPIPE;
    await promisify(execFile)(process.execPath, [entry, '--quick', '--configs', 'tiny', '--decode-batches', '1', '--nemotron-h', 'nemotron-h-tiny'], { env, maxBuffer: 1 << 26 });
    const results = JSON.parse(fs.readFileSync(path.join(out, 'gpu-results.json'), 'utf8'));
    expect(results.finished, 'the run finished').to.be.a('string');
    expect(results.adapter.limits.maxStorageBufferBindingSize).to.be.above(0);
    expect(results.micro.dispatchMicroseconds).to.be.above(0);
    for (const name of ['tiny-gqa', 'tiny-mha-bias']) expect(results[`parity.${name}`].pass, `parity ${name}`).to.equal(true);
    // NemotronH: parity with transformers, then its figures.
    expect(results['parity.nemotron-h'].pass, JSON.stringify(results['parity.nemotron-h'])).to.equal(true);
    const hybrid = results['nemotronH.nemotron-h-tiny'];
    expect(hybrid.error, 'no error in the NemotronH benchmark').to.equal(undefined);
    for (const key of ['prefillTokensPerSecond', 'decodeBatch1TokensPerSecond', 'decodeBatch1TokensPerSecondPlainOps']) expect(hybrid[key], key).to.be.a('number').and.above(0);
    const bench = results['bench.tiny'];
    expect(bench.error, 'no error in the benchmark').to.equal(undefined);
    for (const key of ['prefillTokensPerSecond', 'prefillTokensPerSecondWithoutTiledProduct', 'prefillTokensPerSecondWithoutProductKernels', 'decodeBatch1TokensPerSecond', 'decodeBatch1TokensPerSecondWithoutVectorizedFewRows', 'decodeBatch1TokensPerSecondWithoutNormPrologue',
      'decodeBatch1AfterPromptTokensPerSecond',
      'decodeBatch1TokensPerSecondWithoutDecodeStepKernel', 'decodeBatch1TokensPerSecondWithoutDecodeStepAndFewRowsKernels',
      'decodeBatch1TokensPerSecondPlainOps', 'decodeStepTotalMs', 'trainTokensPerSecond', 'trainWithAdamWTokensPerSecond',
      'trainTokensPerSecondWithoutTiledProduct', 'trainTokensPerSecondWithoutLayerNormGrad', 'trainTokensPerSecondWithoutRotaryKernel']) {
      expect(bench[key], key).to.be.a('number').and.above(0);
    }
    expect(bench.decodeStepKernels.NemotronDecodeStep.count, 'the profiled step ran as one kernel').to.equal(1);
    // Its programs, each timed (7 a layer, then the final norm; the tiny model has 2 layers).
    expect(bench.decodeStepPrograms.FewRowsLinearProgram.count, 'products in the step').to.be.at.least(8);
    expect(bench.decodeStepPrograms.DecodeAttentionProgram.count, 'attention programs').to.equal(2);
    expect(bench.trainStepKernels.BatchMatMul.count, 'the training step profiled by kernel').to.be.above(0);
    const summary = fs.readFileSync(path.join(out, 'gpu-results.md'), 'utf8');
    expect(results.micro.matrixVector['300x64x600'].weightFirstMs, 'the many-row product weight first too').to.be.above(0);
    expect(results.micro.matrixVector['1x64x96'].fewRowsScalarMs, 'the few-rows product one float at a time too').to.be.above(0);
    expect(summary).to.include(`| tiny | ${bench.prefillTokensPerSecond} (${bench.prefillTokensPerSecondWithoutTiledProduct}; ` +
      `${bench.prefillTokensPerSecondWithoutProductKernels}) | ${bench.decodeBatch1TokensPerSecond} (${bench.decodeBatch1TokensPerSecondWithoutVectorizedFewRows}; ` +
      `${bench.decodeBatch1TokensPerSecondWithoutNormPrologue}; ${bench.decodeBatch1AfterPromptTokensPerSecond}) |`);
    fs.rmSync(out, { recursive: true, force: true });
  });
});
