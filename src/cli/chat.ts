/**
 * `nemotron-tfjs chat --model DIR`: a conversation in the terminal, as `transformers chat` holds one: each line read is
 * a user message, the whole conversation goes through the chat template and the reply streams back and joins the
 * history. `/clear` forgets the conversation, `/exit` (or the end of the input) ends it. Lines may come from a pipe.
 */
import * as readline from 'readline';
import { Command } from 'commander';
import { isGGUF } from '../../models/nemotron/pretrained';
import { generateStream } from '../generation/generate';
import { ChatMessage } from '../tokenizer';
import { checkModelDir } from './info';
import { GenerateCliOptions, addSamplingOptions, backendOption, integerArg, loadCausalLM, readGenerationConfig, resolveDecoding } from './generate';

export type ChatCliOptions = Pick<GenerateCliOptions, 'model' | 'maxNewTokens' | 'temperature' | 'topK' | 'topP' | 'minP' | 'repetitionPenalty' | 'presencePenalty' | 'frequencyPenalty' |
  'seed' | 'greedy' | 'sample' | 'backend' | 'adapter' | 'system'>;

export async function runChat(o: ChatCliOptions, input: NodeJS.ReadableStream & { isTTY?: boolean } = process.stdin,
  output: NodeJS.WritableStream = process.stdout): Promise<void> {
  const generationConfig = isGGUF(o.model) ? null : readGenerationConfig(checkModelDir(o.model, ['config.json', 'tokenizer.json']));
  // Replies stream, so no beams (generation_config.json's num_beams does not apply here).
  const options = { ...resolveDecoding({ ...o, prompt: '', stream: true, addSpecialTokens: false, skipSpecialTokens: true, numBeams: 1 }, generationConfig), numBeams: 1 };
  const { model, tokenizer } = await loadCausalLM(o.model, o, (tok) => {
    if (tok.chatTemplates.size === 0) {
      throw new Error(`the tokenizer in ${o.model} has no chat template (tokenizer_config.json's chat_template, chat_template.jinja): ` +
        'chat needs an instruct model; use generate for a base model');
    }
  });
  options.tokenizer = tokenizer;
  const opening: ChatMessage[] = o.system !== undefined ? [{ role: 'system', content: o.system }] : [];
  let history = opening.slice();
  const interactive = input.isTTY === true;
  const lines = readline.createInterface({ input, output: interactive ? output : undefined, terminal: interactive });
  if (interactive) output.write('Type a message; /clear forgets the conversation, /exit ends it.\n');
  const ask = () => { if (interactive) lines.setPrompt('> '), lines.prompt(); };
  try {
    ask();
    for await (const line of lines) {
      const text = line.trim();
      if (text === '/exit' || text === '/quit') break;
      if (text === '/clear') {
        history = opening.slice();
        output.write('(conversation cleared)\n');
      } else if (text !== '') {
        const messages = [...history, { role: 'user', content: line }];
        const ids = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
        const room = model.config.maxPositionEmbeddings - ids.length;
        if (room < 1) {
          output.write(`(the conversation is ${ids.length} tokens, the context ${model.config.maxPositionEmbeddings}: /clear to start again)\n`);
        } else {
          // The prompt primes the decoder, so that the reply's first token decodes as it does after it.
          const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: true });
          for (const id of ids) decoder.push(id);
          let reply = '';
          for await (const step of generateStream(model, [ids], { ...options, maxNewTokens: Math.min(o.maxNewTokens, room) })) {
            const piece = decoder.push(step.tokens[0]);
            reply += piece;
            output.write(piece);
          }
          const tail = decoder.flush();
          output.write(`${tail}\n`);
          history = [...messages, { role: 'assistant', content: reply + tail }];
        }
      }
      ask();
    }
  } finally {
    lines.close();
    model.dispose();
  }
}

export function registerChat(program: Command): void {
  addSamplingOptions(program
    .command('chat')
    .description('talk with an instruct model in the terminal: each line is a message, the reply streams back (the conversation through the chat template)')
    .requiredOption('-m, --model <dir>', 'Hugging Face checkpoint folder (config.json, tokenizer.json with a chat template, safetensors), or a GGUF file')
    .option('-n, --max-new-tokens <n>', 'most tokens a reply has (fewer where the context ends)', integerArg('a positive integer', (n) => n > 0), 512))
    .option('--system <text>', 'a system message that opens the conversation')
    .option('--adapter <dir>', 'a PEFT LoRA adapter folder to merge into the model')
    .addOption(backendOption())
    .addHelpText('after', `
Decoding as generate's (greedy unless sampling is asked for or generation_config.json samples). Lines can be piped:
  printf 'Hi!\\nWhat is relu squared?\\n' | nemotron-tfjs chat --model ./Nemotron-Mini-4B-Instruct --greedy`)
    .action(async (_opts: unknown, cmd: Command) => {
      await runChat(cmd.optsWithGlobals() as ChatCliOptions);
    });
}
