import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { BACKEND_ENV, availableBackends, initBackend, setBackend } from '../src/index';
import { testBackends, tmpDir } from './helpers';

describe('backend selection', () => {
  after(async () => { await setBackend('cpu'); });

  it('names an unknown backend and the choices', async () => {
    let message = '';
    await setBackend('tpu').catch((e: Error) => { message = e.message; });
    expect(message).to.equal('Unknown backend "tpu"; expected one of cuda, tensorflow, webgpu, wasm, cpu');
  });

  it('takes $NEMOTRON_BACKEND when no name is given', async () => {
    const saved = process.env[BACKEND_ENV];
    process.env[BACKEND_ENV] = 'cpu';
    try {
      expect(await initBackend(undefined, { quiet: true })).to.equal('cpu');
      expect(tf.getBackend()).to.equal('cpu');
    } finally {
      if (saved === undefined) delete process.env[BACKEND_ENV];
      else process.env[BACKEND_ENV] = saved;
    }
  });

  it('leaves cuda out of the default and of the available list without an NVIDIA device', async function () {
    if (fs.existsSync('/dev/nvidiactl')) this.skip();
    const saved = process.env[BACKEND_ENV];
    delete process.env[BACKEND_ENV];
    try {
      expect(await initBackend(undefined, { quiet: true })).to.not.equal('cuda');
      expect(await availableBackends()).to.not.include('cuda');
    } finally {
      if (saved !== undefined) process.env[BACKEND_ENV] = saved;
    }
  });

  it('refuses cuda in a process that loaded tensorflow (two builds of one binding), naming both', async function () {
    if (!testBackends().includes('tensorflow')) this.skip();
    await setBackend('tensorflow');
    let message = '';
    await setBackend('cuda').catch((e: Error) => { message = e.message; });
    expect(message).to.match(/the tensorflow backend is loaded in this process; cuda is another build of the same binding/);
    expect(tf.getBackend(), 'still on tensorflow').to.equal('tensorflow');
  });

  it('loads tensorflow in a script whose own arguments include --dir (node-pre-gyp reads process.argv as its own)', function () {
    if (!testBackends().includes('tensorflow')) this.skip();
    this.timeout(60000);
    const index = path.resolve(__dirname, '../src/index.js');
    const script = path.join(tmpDir('backend-argv'), 'load.js');
    fs.writeFileSync(script, `require(${JSON.stringify(index)}).setBackend('tensorflow').then(() => console.log('loaded ' + process.argv.slice(2).join(' ')), (e) => { console.log(e.message); process.exit(1); });`);
    const run = spawnSync(process.execPath, [script, '--dir', '/nonexistent', '--debug'], { encoding: 'utf8' });
    expect(run.stdout.trim(), run.stderr.slice(-500)).to.equal('loaded --dir /nonexistent --debug');
    expect(run.status).to.equal(0);
  });
});
