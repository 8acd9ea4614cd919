import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { AdamW, NemotronConfig, NemotronForCausalLM, SafetensorsFile } from '../../src/index';
import { setMaxWeightBlockBytes } from '../../layers/vocab-matrix';
import { CONFIGS, expected, expectClose, expectRelClose, fixtureDir, forEachBackend, testBackends, tmpDir } from '../helpers';

/**
 * A vocabulary matrix in row blocks (what WebGPU needs where [vocab, hidden] is over its 2 GB binding limit, as for
 * Minitron-4B), forced here with a small block limit: loading splits the checkpoint's tensor, forward, gradients and
 * generation match transformers, and saving joins the blocks back into one tensor.
 */
/** A small causal LM twice: its vocabulary matrices in three blocks of 30 rows, and whole. */
function blockedAndWhole(): { blocked: NemotronForCausalLM; whole: NemotronForCausalLM } {
  const config = new NemotronConfig({ vocabSize: 90, hiddenSize: 16, numAttentionHeads: 2, numKeyValueHeads: 1, intermediateSize: 8, numHiddenLayers: 1, tieWordEmbeddings: false });
  setMaxWeightBlockBytes(4 * 16 * 40);
  const blocked = new NemotronForCausalLM(config);
  setMaxWeightBlockBytes(null);
  return { blocked, whole: new NemotronForCausalLM(config) };
}

forEachBackend(testBackends(), () => {
  afterEach(() => setMaxWeightBlockBytes(null));

  for (const config of CONFIGS) {
    it(`embeddings and LM head in row blocks: logits, loss, gradients, generation, save: ${config}`, async () => {
      const exp = expected(config);
      const dir = fixtureDir(config, 'causal-lm');
      const settings = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      // Three blocks: the last one shorter when the vocabulary does not divide by three.
      setMaxWeightBlockBytes(4 * settings.hidden_size * Math.ceil(settings.vocab_size / 3));
      const model = await NemotronForCausalLM.fromPretrained(dir);
      const params = model.namedParameters();
      const blockNames = [...params.keys()].filter((n) => n.includes('#'));
      const tied = settings.tie_word_embeddings;
      expect(blockNames.sort()).to.deep.equal([
        ...(tied ? [] : ['lm_head.weight#0', 'lm_head.weight#1', 'lm_head.weight#2']),
        'model.embed_tokens.weight#0', 'model.embed_tokens.weight#1', 'model.embed_tokens.weight#2',
      ].sort());
      const original = SafetensorsFile.open(path.join(dir, 'model.safetensors'));
      const checkpointValues = original.names().reduce((n, name) => n + original.info(name).shape.reduce((a, b) => a * b, 1), 0);
      expect(model.numParameters(), 'every value of the checkpoint, once').to.equal(checkpointValues);
      expect(() => model.model.embedTokens).to.throw(/3 row blocks/);

      const before = tf.memory().numTensors;
      const batch = { inputIds: exp.json.input_ids, attentionMask: exp.json.attention_mask, labels: exp.json.causal_labels };
      const { value, grads } = tf.variableGrads(() => {
        const out = model.forward(batch);
        expectClose(out.logits, exp.tensor('causal.logits'), 1e-4, 'logits');
        return out.loss!;
      }, [...params.values()]);
      expectRelClose(value.dataSync()[0], exp.json.causal_loss, 1e-5, 'loss');
      for (const name of tied ? ['model.embed_tokens.weight'] : ['model.embed_tokens.weight', 'lm_head.weight']) {
        const joined = tf.concat([0, 1, 2].map((i) => grads[params.get(`${name}#${i}`)!.name]));
        const reference = exp.tensor(`causal.grad.${name}`);
        const worst = tf.tidy(() => tf.max(tf.sub(tf.abs(tf.sub(joined, reference)), tf.maximum(1e-4, tf.mul(1e-3, tf.abs(reference))))).dataSync()[0]);
        expect(worst, `gradient of ${name} (joined blocks) exceeds the tolerance by ${worst}`).to.be.at.most(0);
        tf.dispose([joined, reference]);
      }
      tf.dispose([value, ...Object.values(grads)]);
      expect(tf.memory().numTensors, 'no tensor left by forward and gradients').to.equal(before);

      const out = await model.generate(exp.json.gen_single_prompt, { maxNewTokens: 8, eosTokenId: null });
      expect(out.sequences).to.deep.equal(exp.json.gen_single_output);

      const saved = tmpDir('blocks');
      await model.savePretrained(saved);
      const written = SafetensorsFile.open(path.join(saved, 'model.safetensors'));
      expect(written.names().sort()).to.deep.equal(original.names().sort());
      for (const name of original.names()) {
        const [a, b] = [original.read(name), written.read(name)];
        expect(b.shape, name).to.deep.equal(a.shape);
        expect(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength).equals(Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength)), `${name} bit-equal`).to.equal(true);
      }
      model.dispose();
      expect(tf.memory().numTensors, 'dispose frees every block').to.be.below(before);
    });
  }

  it('AdamW moments of row blocks save under the HF name and resume with or without blocks', async () => {
    const { blocked, whole } = blockedAndWhole();
    const before = tf.memory().numTensors;
    const optimizer = new AdamW(blocked.namedParameters());
    for (let step = 0; step < 2; step++) {
      const grads = new Map([...blocked.namedParameters()].map(([n, p], i) => [n, tf.randomNormal(p.shape, 0, 1, 'float32', 10 * step + i)]));
      optimizer.apply(grads, 0.01);
      tf.dispose([...grads.values()]);
    }
    const state = await optimizer.stateTensors();
    const names = state.map((t) => t.name);
    expect(names.filter((n) => n.includes('#')), 'no block names in the saved state').to.deep.equal([]);
    const embedding = state.find((t) => t.name === 'exp_avg.model.embed_tokens.weight')!;
    expect(embedding.shape).to.deep.equal([90, 16]);
    const joined = tf.concat([0, 1, 2].map((i) => optimizer.expAvg.get(`model.embed_tokens.weight#${i}`)!));
    expect(Array.from(embedding.data)).to.deep.equal(Array.from(await joined.data()));
    joined.dispose();
    const asMap = new Map(state.map((t) => [t.name, t] as [string, typeof t]));
    // Into a model stored whole, and back into blocks: the same numbers.
    const resumedWhole = new AdamW(whole.namedParameters());
    resumedWhole.loadState(2, asMap);
    expect(Array.from(await resumedWhole.expAvg.get('model.embed_tokens.weight')!.data())).to.deep.equal(Array.from(embedding.data));
    const resumedBlocks = new AdamW(blocked.namedParameters());
    resumedBlocks.loadState(2, new Map((await resumedWhole.stateTensors()).map((t) => [t.name, t] as [string, typeof t])));
    for (let i = 0; i < 3; i++) {
      const [a, b] = [optimizer.expAvgSq.get(`lm_head.weight#${i}`)!, resumedBlocks.expAvgSq.get(`lm_head.weight#${i}`)!];
      expect(Array.from(await b.data()), `lm_head block ${i}`).to.deep.equal(Array.from(await a.data()));
    }
    expect(() => resumedWhole.loadState(2, new Map([['exp_avg.nope.weight', embedding]]))).to.throw(/exp_avg.nope.weight, which matches no parameter/);
    [optimizer, resumedWhole, resumedBlocks].forEach((o) => o.dispose());
    expect(tf.memory().numTensors, 'no moment left').to.equal(before);
    blocked.dispose();
    whole.dispose();
  });

  it('AdamW steps a row block that no token reached with a zero gradient, as torch steps the one matrix', async () => {
    const { blocked, whole } = blockedAndWhole();
    const wholeParams = whole.namedParameters();
    const blockedParams = blocked.namedParameters();
    // The same weights in both: each block takes its rows of the whole matrix.
    const firstRow = new Map<string, number>();
    for (const [name, v] of blockedParams) {
      const [base] = name.split('#');
      const start = firstRow.get(base) ?? 0;
      v.assign(base === name ? wholeParams.get(name)! : wholeParams.get(base)!.slice([start, 0], [v.shape[0], -1]));
      firstRow.set(base, start + v.shape[0]);
    }
    const before = tf.memory().numTensors;
    const optimizers = [new AdamW(wholeParams), new AdamW(blockedParams)];
    // Step 1 reaches every embedding block; steps 2 and 3 only the first (ids below 30). Both optimizers get the
    // whole model's gradients (the blocked one its rows of them, for the blocks its own backward reached), so that
    // what is compared is the optimizer alone: Adam divides by the gradient's size, which turns the last-bit
    // differences of the two backward passes into steps of up to 1e-6 on rows whose gradients are near zero.
    for (const [step, ids] of [[[5, 40, 70, 10]], [[1, 2, 3, 4]], [[7, 8, 9, 1]]].entries()) {
      const [wholeGrads, blockedGrads] = [whole, blocked].map((model) => {
        const params = model.namedParameters();
        const { value, grads } = tf.variableGrads(() => model.forward({ inputIds: ids, labels: ids }).loss!, [...params.values()]);
        value.dispose();
        return new Map([...params].flatMap(([n, v]) => (grads[v.name] ? [[n, grads[v.name]] as [string, tf.Tensor]] : [])));
      });
      const reachedEmbeddingBlocks = [0, 1, 2].filter((i) => blockedGrads.has(`model.embed_tokens.weight#${i}`));
      expect(reachedEmbeddingBlocks, `embedding blocks with a gradient at step ${step + 1}`).to.deep.equal(step === 0 ? [0, 1, 2] : [0]);
      const rowsOfWhole = new Map<string, tf.Tensor>();
      for (const [name, grad] of blockedGrads) {
        const [base, block] = name.split('#');
        const own = block === undefined ? grad : wholeGrads.get(base)!.slice([Number(block) * 30, 0], [grad.shape[0], -1]);
        const gap = tf.tidy(() => tf.max(tf.abs(tf.sub(own, grad))).dataSync()[0]);
        expect(gap, `${name}: the blocked backward against the whole one at step ${step + 1}`).to.be.at.most(1e-5);
        rowsOfWhole.set(name, block === undefined ? wholeGrads.get(name)! : own);
      }
      optimizers[0].apply(wholeGrads, 0.01);
      optimizers[1].apply(rowsOfWhole, 0.01);
      tf.dispose([...wholeGrads.values(), ...blockedGrads.values(), ...[...rowsOfWhole].filter(([n]) => n.includes('#')).map(([, t]) => t)]);
    }
    for (const name of ['model.embed_tokens.weight', 'lm_head.weight']) {
      const joined = tf.concat([0, 1, 2].map((i) => blockedParams.get(`${name}#${i}`)!));
      const worst = tf.tidy(() => tf.max(tf.abs(tf.sub(joined, wholeParams.get(name)!))).dataSync()[0]);
      expect(worst, `${name}: blocks against the whole matrix after 3 steps, the same gradients in`).to.equal(0);
      joined.dispose();
    }
    optimizers.forEach((o) => o.dispose());
    expect(tf.memory().numTensors, 'no tensor left by the steps').to.equal(before);
    blocked.dispose();
    whole.dispose();
  });

  it('a limit below one row is refused with the sizes', () => {
    setMaxWeightBlockBytes(64);
    const before = tf.memory().numTensors;
    const config = new NemotronConfig({ vocabSize: 10, hiddenSize: 32, numAttentionHeads: 2, numKeyValueHeads: 1, intermediateSize: 8, numHiddenLayers: 1 });
    expect(() => new NemotronForCausalLM(config))
      .to.throw(/A row of 32 float32 values \(128 bytes\) is larger than the backend's largest buffer \(64 bytes\)/);
    expect(tf.memory().numTensors, 'nothing built before the refusal').to.equal(before);
    expect(() => setMaxWeightBlockBytes(-1)).to.throw(/positive integer/);
  });
});
