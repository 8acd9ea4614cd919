import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import {
  CheckpointReader, NemotronConfig, setBackend, NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification,
  NemotronModel,
} from '../../src/index';
import { expectClose, expected, fixtureDir, maxAbsDiff, tmpDir } from '../helpers';

async function rejects(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    expect((e as Error).message).to.match(pattern);
    return;
  }
  expect.fail(`expected a rejection matching ${pattern}`);
}

function copyFixture(config: 'tiny-gqa' | 'tiny-mha-bias', sub: string): string {
  const dir = tmpDir(sub);
  for (const f of fs.readdirSync(fixtureDir(config, sub))) fs.copyFileSync(fixtureDir(config, `${sub}/${f}`), path.join(dir, f));
  return dir;
}

describe('checkpoints: loading across classes, saving, bad input', () => {
  before(() => tf.setBackend('cpu'));
  const exp = expected('tiny-gqa');
  const inputs = { inputIds: exp.json.input_ids as number[][], attentionMask: exp.json.attention_mask as number[][] };

  it('savePretrained writes a checkpoint that loads back to the same logits (single file and sharded, tied and untied)', async () => {
    for (const config of ['tiny-gqa', 'tiny-mha-bias'] as const) {
      const model = await NemotronForCausalLM.fromPretrained(fixtureDir(config, 'causal-lm'));
      const own = expected(config).json;
      const inputs = { inputIds: own.input_ids as number[][], attentionMask: own.attention_mask as number[][] };
      for (const maxShardBytes of [undefined, 20_000]) {
        const dir = tmpDir('save');
        await model.savePretrained(dir, { maxShardBytes });
        const reader = CheckpointReader.open(dir);
        expect(reader.names().includes('lm_head.weight')).to.equal(!model.config.tieWordEmbeddings);
        expect(reader.indexFile !== null).to.equal(maxShardBytes !== undefined);
        reader.close();
        const json = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
        expect(json.architectures).to.deep.equal(['NemotronForCausalLM']);
        const again = await NemotronForCausalLM.fromPretrained(dir);
        const a = model.forward(inputs).logits;
        const b = again.forward(inputs).logits;
        expect(maxAbsDiff(a, b)).to.equal(0);
        tf.dispose([a, b]);
        again.dispose();
      }
      model.dispose();
    }
  });

  it('savePretrained writes back the generation_config.json it loaded (sampling defaults survive), token ids filled in', async () => {
    const src = copyFixture('tiny-gqa', 'causal-lm');
    const file = path.join(src, 'generation_config.json');
    const settings = { ...JSON.parse(fs.readFileSync(file, 'utf8')), do_sample: true, temperature: 0.6, top_p: 0.95 };
    delete settings.pad_token_id;
    fs.writeFileSync(file, JSON.stringify(settings));
    const model = await NemotronForCausalLM.fromPretrained(src);
    const out = tmpDir('saved-generation');
    await model.savePretrained(out);
    const saved = JSON.parse(fs.readFileSync(path.join(out, 'generation_config.json'), 'utf8'));
    expect(saved).to.deep.include({ do_sample: true, temperature: 0.6, top_p: 0.95, eos_token_id: 3, pad_token_id: 0 });
    const again = await NemotronForCausalLM.fromPretrained(out);
    expect(again.generationConfig).to.deep.equal(saved);
    model.dispose();
    again.dispose();
  });

  it('NemotronModel loads from a causal-LM checkpoint (lm_head ignored)', async () => {
    const model = await NemotronModel.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'));
    expect([...model.namedParameters().keys()][0]).to.equal('embed_tokens.weight');
    const out = model.forward(inputs);
    expectClose(out.lastHiddenState, exp.tensor('base.last_hidden_state'), 1e-4, 'last hidden state');
    out.lastHiddenState.dispose();
    model.dispose();
  });

  it('a classification head loads from a causal-LM checkpoint, its new head initialised with a warning', async () => {
    const warnings: string[] = [];
    const warn = console.warn;
    console.warn = (m: string) => warnings.push(m);
    try {
      const model = await NemotronForSequenceClassification.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm'), { config: { numLabels: 4 } });
      expect(warnings.join()).to.match(/newly initialised.*score\.weight/);
      const out = model.forward(inputs);
      expect(out.logits.shape).to.deep.equal([2, 4]);
      out.logits.dispose();
      // the base weights are the checkpoint's
      const hidden = model.model.forward(inputs).lastHiddenState;
      expectClose(hidden, exp.tensor('base.last_hidden_state'), 1e-4, 'base');
      hidden.dispose();
      model.dispose();
      // QA keeps its base under transformer. and loads from model.
      const qa = await NemotronForQuestionAnswering.fromPretrained(fixtureDir('tiny-gqa', 'seqcls-single'));
      expect(qa.namedParameters().has('transformer.layers.1.mlp.down_proj.weight')).to.equal(true);
      qa.dispose();
    } finally {
      console.warn = warn;
    }
  });

  it('a missing, unexpected or mis-shaped tensor is an error naming it', async () => {
    const dir = copyFixture('tiny-gqa', 'causal-lm');
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...json, intermediate_size: 64 }));
    await rejects(NemotronForCausalLM.fromPretrained(dir), /Shape mismatch for model\.layers\.0\.mlp\.down_proj\.weight.*\[64,128\].*\[64,64\]/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...json, num_hidden_layers: 3 }));
    await rejects(NemotronForCausalLM.fromPretrained(dir), /lacks .*model\.layers\.2\./);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...json, num_hidden_layers: 1 }));
    await rejects(NemotronForCausalLM.fromPretrained(dir), /Unexpected tensor model\.layers\.1\./);
    const before = tf.memory().numTensors;
    await rejects(NemotronForCausalLM.fromPretrained(dir), /Unexpected/);
    expect(tf.memory().numTensors, 'a failed load frees what it built').to.equal(before);
  });

  it('a folder without weights, and one without config.json', async () => {
    const dir = tmpDir('noweights');
    fs.copyFileSync(fixtureDir('tiny-gqa', 'causal-lm/config.json'), path.join(dir, 'config.json'));
    await rejects(NemotronForCausalLM.fromPretrained(dir), /No weights in .*model\.safetensors/);
    await rejects(NemotronForCausalLM.fromPretrained(tmpDir('empty')), /No config\.json/);
  });

  it('a truncated safetensors file is an error, not garbage', async () => {
    const dir = copyFixture('tiny-gqa', 'causal-lm');
    const file = path.join(dir, 'model.safetensors');
    const bytes = fs.readFileSync(file);
    fs.writeFileSync(file, bytes.subarray(0, bytes.length - 100));
    await rejects(NemotronForCausalLM.fromPretrained(dir), /model\.safetensors/);
  });

  it('a checkpoint that cannot fit is refused before loading, with the estimate', async () => {
    const dir = tmpDir('huge');
    NemotronConfig.preset('nemotron-4-15b').save(dir);
    fs.copyFileSync(fixtureDir('tiny-gqa', 'causal-lm/model.safetensors'), path.join(dir, 'model.safetensors'));
    const before = tf.memory().numTensors;
    await rejects(NemotronForCausalLM.fromPretrained(dir), /needs 6\d\.\d GB for its float32 weights.*more than this machine's/);
    NemotronConfig.preset('minitron-4b').save(dir);
    await setBackend('wasm');
    try {
      await rejects(NemotronForCausalLM.fromPretrained(dir), /needs 16\.\d GB .*wasm backend is capped at 4\.3 GB/);
    } finally {
      await tf.setBackend('cpu');
    }
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('onProgress reports every tensor and the bytes read', async () => {
    const seen: number[] = [];
    let total = 0;
    const model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm-bf16'), {
      onProgress: ({ loadedBytes, totalBytes }) => { seen.push(loadedBytes); total = totalBytes; },
    });
    expect(seen).to.have.length(model.namedParameters().size);
    expect(seen[seen.length - 1]).to.equal(total);
    expect(total).to.equal(model.numParameters() * 2); // BF16 on disk
    model.dispose();
  });

  describe('bad input to forward', () => {
    let model: NemotronForCausalLM;
    before(async () => { model = await NemotronForCausalLM.fromPretrained(fixtureDir('tiny-gqa', 'causal-lm')); });
    after(() => model.dispose());

    it('a token id out of range names the id and its position', () => {
      expect(() => model.forward({ inputIds: [[1, 2, 96]] })).to.throw(/inputIds\[0\]\[2\] = 96 is out of range.*vocab_size 96/);
      expect(() => model.forward({ inputIds: [[1, -1]] })).to.throw(/inputIds\[0\]\[1\] = -1/);
    });
    it('an attention mask of another shape', () => {
      expect(() => model.forward({ inputIds: [[1, 2, 3]], attentionMask: [[1, 1]] })).to.throw(/attentionMask has shape \[1, 2\], expected \[1, 3\]/);
    });
    it('a sequence longer than max_position_embeddings', () => {
      expect(() => model.forward({ inputIds: [new Array(65).fill(5)] })).to.throw(/65 tokens.*max_position_embeddings 64/);
    });
    it('labels of the wrong shape or range', () => {
      expect(() => model.forward({ inputIds: [[1, 2, 3]], labels: [[1, 2]] })).to.throw(/labels has shape \[1,2\], expected \[1,3\]/);
      expect(() => model.forward({ inputIds: [[1, 2, 3]], labels: [[1, 2, 200]] })).to.throw(/labels\[0\]\[2\] = 200/);
    });
    it('non-integer ids, ragged rows, both ids and embeddings', () => {
      expect(() => model.forward({ inputIds: [[1.5]] })).to.throw(/inputIds\[0\]\[0\] = 1.5 is not an integer/);
      expect(() => model.forward({ inputIds: [[1, 2], [3]] })).to.throw(/row 1 has length 1, expected 2/);
      expect(() => model.forward({})).to.throw(/exactly one of inputIds and inputsEmbeds/);
    });
    it('no tensor leaks when an input is rejected', () => {
      const before = tf.memory().numTensors;
      expect(() => model.forward({ inputIds: [[1, 2, 3]], labels: [[1, 2]] })).to.throw();
      expect(tf.memory().numTensors).to.equal(before);
    });
  });

  it('a config the model cannot build is rejected before loading', () => {
    expect(() => new NemotronForCausalLM(new NemotronConfig({ vocabSize: 8, hiddenSize: 8, intermediateSize: 8, numHiddenLayers: 1, numAttentionHeads: 3 })))
      .to.throw(/positive|rotary|divisible/);
  });
});
