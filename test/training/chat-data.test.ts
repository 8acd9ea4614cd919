import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { LoraModel, NemotronConfig, NemotronForCausalLM, NemotronTokenizer, Trainer, collate, readJsonl } from '../../src/index';
import { tmpDir } from '../helpers';

const FIXTURES = path.resolve(__dirname, '../../../test/fixtures');
const TOKENIZER_JSON = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'tokenizer/tokenizer.json'), 'utf8'));
const CHAT_CONFIG = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'chat-template/tokenizer_config.json'), 'utf8'));

const CONVERSATIONS = [
  [{ role: 'system', content: 'Answer briefly.' }, { role: 'user', content: '2 + 2?' }, { role: 'assistant', content: 'Four.' },
    { role: 'user', content: 'And 3 + 3?' }, { role: 'assistant', content: 'Six.' }],
  [{ role: 'user', content: 'Say hi.' }, { role: 'assistant', content: 'Hi there.' }],
];

function writeJsonl(rows: object[]): string {
  const file = path.join(tmpDir('chat-data'), 'train.jsonl');
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

// causal-lm rows of {"messages": [...]}: the conversation through the chat template (the Nemotron-style fixture one),
// every token learned, or (assistantOnlyLoss) the assistant turns' tokens only, as TRL's SFTTrainer does.
describe('chat data for causal-lm fine-tuning', () => {
  let tokenizer: NemotronTokenizer;
  before(async () => {
    tokenizer = await NemotronTokenizer.fromJSON(TOKENIZER_JSON, CHAT_CONFIG);
  });

  it('"messages" rows are the chat template\'s ids; every token is learned by default', () => {
    const examples = readJsonl(writeJsonl(CONVERSATIONS.map((messages) => ({ messages }))), 'causal-lm', tokenizer);
    examples.forEach((e, i) => {
      expect(e.inputIds).to.deep.equal(tokenizer.applyChatTemplate(CONVERSATIONS[i]));
      expect(e.label).to.equal(undefined);
    });
    const batch = collate(examples, 'causal-lm', 0);
    expect((batch.labels as number[][])[1].slice(0, examples[1].inputIds.length)).to.deep.equal(examples[1].inputIds);
  });

  it('assistantOnlyLoss: labels on the assistant turns only, which decode to the replies; padding and truncation keep them aligned', () => {
    const file = writeJsonl(CONVERSATIONS.map((messages) => ({ messages })));
    const examples = readJsonl(file, 'causal-lm', tokenizer, 512, { assistantOnlyLoss: true });
    examples.forEach((e, i) => {
      const labels = e.label as number[];
      expect(labels).to.have.length(e.inputIds.length);
      labels.forEach((l, t) => expect(l === -100 || l === e.inputIds[t], `label ${t}`).to.equal(true));
      // The learned tokens, run by run, are the assistant replies as the template writes them.
      const runs: number[][] = [];
      labels.forEach((l, t) => {
        if (l === -100) return;
        if (t > 0 && labels[t - 1] !== -100) runs[runs.length - 1].push(l);
        else runs.push([l]);
      });
      const replies = CONVERSATIONS[i].filter((m) => m.role === 'assistant').map((m) => m.content);
      expect(runs.map((r) => tokenizer.decode(r).trim())).to.deep.equal(replies);
    });
    const batch = collate(examples, 'causal-lm', 0);
    const padded = (batch.labels as number[][])[1];
    expect(padded.slice(examples[1].inputIds.length).every((l) => l === -100), 'padding is not learned').to.equal(true);
    const short = readJsonl(file, 'causal-lm', tokenizer, 10, { assistantOnlyLoss: true });
    expect(short[0].inputIds).to.have.length(10);
    expect(short[0].label).to.deep.equal((examples[0].label as number[]).slice(0, 10));
  });

  it('refuses what it cannot do, naming the line: no chat template, a template whose prefixes are not prefixes, no assistant turn', async () => {
    const file = writeJsonl([{ messages: CONVERSATIONS[1] }]);
    const { chat_template: _dropped, ...withoutTemplate } = CHAT_CONFIG;
    const plain = await NemotronTokenizer.fromJSON(TOKENIZER_JSON, withoutTemplate);
    expect(() => readJsonl(file, 'causal-lm', plain)).to.throw(/has no chat template/);
    expect(() => readJsonl(file, 'causal-lm')).to.throw(/train\.jsonl:1: "messages" needs a tokenizer with a chat template/);
    const reversed = await NemotronTokenizer.fromJSON(TOKENIZER_JSON, {
      ...withoutTemplate, chat_template: '{% for m in messages | reverse %}{{ m.role }}: {{ m.content }} {% endfor %}',
    });
    expect(() => readJsonl(file, 'causal-lm', reversed, 512, { assistantOnlyLoss: true })).to.throw(/train\.jsonl:1: the chat template does not render the conversation up to message 1 as a prefix/);
    const noAssistant = writeJsonl([{ messages: [{ role: 'user', content: 'Hello?' }] }]);
    expect(() => readJsonl(noAssistant, 'causal-lm', tokenizer, 512, { assistantOnlyLoss: true })).to.throw(/no assistant turn to learn/);
    const bad = writeJsonl([{ messages: [{ role: 'user' }] }]);
    expect(() => readJsonl(bad, 'causal-lm', tokenizer)).to.throw(/field "messages" must be a non-empty list of \{"role", "content"\} strings/);
  });

  it('the README\'s LoRA-on-chat-data example runs as written (a tiny model over the fixture tokenizer)', async () => {
    const model = new NemotronForCausalLM(new NemotronConfig({
      vocabSize: 327, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2,
      maxPositionEmbeddings: 256, padTokenId: 0, bosTokenId: 2, eosTokenId: 3, initializerRange: 0.1,
    }));
    const data = readJsonl(writeJsonl(CONVERSATIONS.map((messages) => ({ messages }))), 'causal-lm', tokenizer, 1024, { assistantOnlyLoss: true });
    const lora = LoraModel.attach(model, { r: 16, loraAlpha: 32, targetModules: 'all-linear' });
    const trainer = new Trainer(lora, data, { task: 'causal-lm', lr: 2e-4, batchSize: 4, epochs: 1, gradientCheckpointing: true });
    await trainer.fit();
    const dir = tmpDir('readme-adapter');
    await lora.savePretrained(dir);
    lora.mergeAndUnload();
    const prompt = tokenizer.applyChatTemplate([{ role: 'user', content: 'Hi!' }], { addGenerationPrompt: true });
    const reply = await model.generate([prompt], { maxNewTokens: 4, eosTokenId: null });
    expect(reply.sequences[0]).to.have.length(prompt.length + 4);
    expect(fs.existsSync(path.join(dir, 'adapter_model.safetensors'))).to.equal(true);
    expect(trainer.history).to.have.length(1);
    trainer.dispose();
    model.dispose();
  });
});
