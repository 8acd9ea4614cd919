import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { ChatMessage, NemotronTokenizer } from '../src/index';
import { tmpDir } from './helpers';

// transformers' apply_chat_template on a Nemotron-style template and a named tool-use one
// (scripts/reference/chat_template_fixtures.py): the rendered text must be the same, whitespace control included.
const FIXTURES = path.resolve(__dirname, '../../test/fixtures');
const TOKENIZER_JSON = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'tokenizer/tokenizer.json'), 'utf8'));
const CHAT_CONFIG = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'chat-template/tokenizer_config.json'), 'utf8'));
const EXPECTED = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'chat-template/expected.json'), 'utf8')) as {
  cases: Array<{ name: string; messages: ChatMessage[]; add_generation_prompt: boolean; template?: string; tools?: object[]; rendered: string }>;
  bad_role_error: string;
};

describe('chat templates (apply_chat_template)', () => {
  let tokenizer: NemotronTokenizer;
  before(async () => {
    tokenizer = await NemotronTokenizer.fromJSON(TOKENIZER_JSON, CHAT_CONFIG);
  });

  for (const c of EXPECTED.cases) {
    it(`${c.name}${c.add_generation_prompt ? ', with the generation prompt' : ''}${c.template ? ` (template "${c.template}")` : ''}: transformers' text`, () => {
      const options = { addGenerationPrompt: c.add_generation_prompt, chatTemplate: c.template, tools: c.tools };
      expect(tokenizer.renderChatTemplate(c.messages, options)).to.equal(c.rendered);
      // Tokenized without adding BOS again: the template wrote it, and it encodes as the special token.
      const ids = tokenizer.applyChatTemplate(c.messages, options);
      expect(ids).to.deep.equal(tokenizer.encode(c.rendered, { addSpecialTokens: false }));
      expect(ids[0]).to.equal(tokenizer.bosTokenId);
      expect(ids.filter((id) => id === tokenizer.bosTokenId)).to.have.length(1);
    });
  }

  it('the template\'s raise_exception reaches the caller with its message', () => {
    expect(() => tokenizer.renderChatTemplate([{ role: 'tool', content: 'x' }])).to.throw(EXPECTED.bad_role_error);
  });

  it('chat_template.jinja overrides tokenizer_config.json; no template, an unknown name and bad messages are refused by name', async () => {
    const dir = tmpDir('chat-template');
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(TOKENIZER_JSON));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(CHAT_CONFIG));
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), '{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}');
    const fromDir = await NemotronTokenizer.fromPretrained(dir);
    expect(fromDir.renderChatTemplate([{ role: 'user', content: 'hi' }])).to.equal('[user] hi');
    expect([...fromDir.chatTemplates.keys()].sort()).to.deep.equal(['default', 'tool_use']);
    const { chat_template: _dropped, ...withoutTemplate } = CHAT_CONFIG;
    const plain = await NemotronTokenizer.fromJSON(TOKENIZER_JSON, withoutTemplate);
    expect(() => plain.renderChatTemplate([{ role: 'user', content: 'hi' }])).to.throw(/has no chat template .*chat_template\.jinja/);
    expect(plain.renderChatTemplate([{ role: 'user', content: 'hi' }], { chatTemplate: '{{ messages[0].content | upper }}' })).to.equal('HI');
    expect(() => tokenizer.renderChatTemplate([{ role: 'user', content: 'hi' }], { chatTemplate: 'rag' })).to.throw(/No chat template named "rag"; this tokenizer has default, tool_use/);
    expect(() => tokenizer.renderChatTemplate([{ role: 'user' } as ChatMessage])).to.throw(/expected a list of messages \{role: string, content: string\}/);
  });
});
