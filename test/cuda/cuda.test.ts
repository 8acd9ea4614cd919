import { execFile } from 'child_process';
import * as path from 'path';
import { promisify } from 'util';
import { expect } from 'chai';

/**
 * The `cuda` backend: tfjs-node-gpu's binding built against the CUDA 12 libtensorflow of the `tensorflow` wheel. There is
 * no GPU here, so TensorFlow runs it on the CPU: what this proves is the route — that build loads as the cuda backend and
 * the models, every head, generation, gradients and the Trainer run on it unchanged — not GPU speed. In a child process
 * (cuda-check.ts), because this process has loaded tfjs-node. Skipped where the GPU build is absent.
 */
describe('cuda backend (tfjs-node-gpu on the CUDA build of libtensorflow)', function () {
  this.timeout(600000);

  it('loads, passes every fixture check and trains', async function () {
    const script = path.join(__dirname, 'cuda-check.js');
    let stdout = '';
    try {
      ({ stdout } = await promisify(execFile)(process.execPath, [script], { maxBuffer: 1 << 24 }));
    } catch (e) {
      const failure = e as { code?: number; stdout?: string; stderr?: string };
      if (failure.code === 3) {
        console.log(`    (skipped: ${JSON.parse(failure.stdout!.trim()).unavailable.split('\n')[0]})`);
        this.skip();
      }
      throw new Error(`cuda-check failed (exit ${failure.code}): ${failure.stderr ?? ''}`);
    }
    const result = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(result.engine, 'registers as tfjs\'s tensorflow backend').to.equal('tensorflow');
    for (const config of ['tiny-gqa', 'tiny-mha-bias']) {
      expect(result[config].pass, `${config}: ${JSON.stringify(result[config])}`).to.equal(true);
    }
    expect(result.lossAfter, `Trainer: ${result.lossBefore} → ${result.lossAfter}`).to.be.below(0.7 * result.lossBefore);
  });
});
