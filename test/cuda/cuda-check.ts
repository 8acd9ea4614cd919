/**
 * Run as its own process by cuda.test.ts: a process can load one of the two native bindings (tfjs-node, tfjs-node-gpu),
 * and the test suite has loaded tfjs-node. Loads the `cuda` backend (tfjs-node-gpu's binding built against the CUDA 12
 * libtensorflow of the `tensorflow` wheel: `TFJS_NODE_PACKAGE=@tensorflow/tfjs-node-gpu TF_PIP_PACKAGE=tensorflow
 * npm run build:native`), runs every fixture check on it and 15 Trainer steps, and prints one JSON line.
 * Exit code 3: the backend is not there (not built on this machine).
 */
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { NemotronConfig, NemotronForCausalLM, Trainer, readJsonl, setBackend } from '../../src/index';
import { fixtureParity } from '../fixture-parity';
import { CONFIGS, FIXTURES } from '../helpers';

async function main(): Promise<void> {
  try {
    await setBackend('cuda');
  } catch (e) {
    process.stdout.write(`${JSON.stringify({ unavailable: (e as Error).message })}\n`);
    process.exit(3);
  }
  const result: Record<string, unknown> = {
    engine: tf.getBackend(),
    gpu: (tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice ?? false,
  };
  for (const config of CONFIGS) result[config] = await fixtureParity(path.join(FIXTURES, config));
  // Training unchanged: the Trainer's AdamW steps (the fused AdamW kernel, ResourceApplyAdam) lower the loss.
  const model = new NemotronForCausalLM(new NemotronConfig({
    vocabSize: 32, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2,
    maxPositionEmbeddings: 64, padTokenId: 0, initializerRange: 0.1,
  }));
  const examples = readJsonl(path.resolve(__dirname, '../../../examples/datasets/causal-lm.jsonl'), 'causal-lm');
  const trainer = new Trainer(model, examples, { task: 'causal-lm', lr: 3e-3, batchSize: 4, maxSteps: 15, schedule: 'constant' });
  result.lossBefore = await trainer.evaluate(examples);
  await trainer.fit();
  result.lossAfter = await trainer.evaluate(examples);
  trainer.dispose();
  model.dispose();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
