import * as fs from 'fs';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { setBackend } from '../../src/index';
import { CONFIGS, fixtureDir } from '../helpers';
import { fixtureParity } from './fixture-parity';

/**
 * The WebGPU backend (Dawn, the `webgpu` package) against the HF fixtures. Without a GPU it runs on a software Vulkan
 * driver (Mesa's lavapipe: .ci/run installs it); with neither it is skipped, and says why.
 */
const LAVAPIPE = '/usr/share/vulkan/icd.d/lvp_icd.json';

describe('webgpu backend: parity with transformers', function () {
  this.timeout(600000);
  before(async function () {
    if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES && fs.existsSync(LAVAPIPE)) process.env.VK_ICD_FILENAMES = LAVAPIPE;
    process.env.XDG_RUNTIME_DIR ??= '/tmp';
    try {
      await setBackend('webgpu');
    } catch (e) {
      console.log(`    (skipped: ${(e as Error).message.split('\n')[0]})`);
      this.skip();
    }
  });
  after(() => tf.setBackend('cpu'));

  for (const config of CONFIGS) {
    it(`${config}: hidden states, attentions, every head, gradients, greedy generation`, async () => {
      const r = await fixtureParity(fixtureDir(config));
      console.log(`    ${JSON.stringify(r)}`);
      expect(r.pass, JSON.stringify(r)).to.equal(true);
    });
  }
});
