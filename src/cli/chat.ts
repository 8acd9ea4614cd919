/**
 * `nemotron-tfjs chat --model DIR`: a conversation in the terminal, as `transformers chat` holds one: each line read is
 * a user message, the whole conversation goes through the chat template and the reply streams back and joins the
 * history. `/clear` forgets the conversation, `/exit` (or the end of the input) ends it. Lines may come from a pipe.
 * Turns run on a one-row ContinuousBatcher (NemotronHBatcher for a NemotronH folder) with prefix caching, so that a
 * turn reuses what the last one ran.
 * Where the tokenizer has a response_template, the reply is read with it: reasoning and tool calls are shown apart.
 */
import * as readline from 'readline';
import { Command } from 'commander';
import { isGGUF } from '../../models/nemotron/pretrained';
import { endsWithStopString, rowDecoding, stopStringDecoder } from '../generation/generate';
import { ChatMessage } from '../tokenizer';
import { ContinuousBatcher } from '../serving/batcher';
import { NemotronHBatcher } from '../serving/nemotron-h-batcher';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import type { NemotronForCausalLM } from '../../models/nemotron/heads';
import type { NemotronTokenizer } from '../tokenizer';
import type { Json, ResponseEvent } from '../response-parsing/index';
import { checkModelDir } from './info';
import { GenerateCliOptions, addSamplingOptions, backendOption, integerArg, loadCausalLM, loadNemotronH, modelType, readGenerationConfig, resolveDecoding } from './generate';

export type ChatCliOptions = Pick<GenerateCliOptions, 'model' | 'maxNewTokens' | 'temperature' | 'topK' | 'topP' | 'minP' | 'repetitionPenalty' | 'presencePenalty' | 'frequencyPenalty' |
  'seed' | 'greedy' | 'sample' | 'backend' | 'adapter' | 'system'>;

export async function runChat(o: ChatCliOptions, input: NodeJS.ReadableStream & { isTTY?: boolean } = process.stdin,
  output: NodeJS.WritableStream = process.stdout): Promise<void> {
  const generationConfig = isGGUF(o.model) ? null : readGenerationConfig(checkModelDir(o.model, ['config.json', 'tokenizer.json']));
  // Replies stream, so no beams (generation_config.json's num_beams does not apply here).
  const options = { ...resolveDecoding({ ...o, prompt: '', stream: true, addSpecialTokens: false, skipSpecialTokens: true, numBeams: 1 }, generationConfig), numBeams: 1 };
  const needsTemplate = (tok: NemotronTokenizer) => {
    if (tok.chatTemplates.size === 0) {
      throw new Error(`the tokenizer in ${o.model} has no chat template (tokenizer_config.json's chat_template, chat_template.jinja): ` +
        'chat needs an instruct model; use generate for a base model');
    }
  };
  const hybrid = modelType(o.model) === 'nemotron_h';
  const { model: loaded, tokenizer } = hybrid ? await loadNemotronH(o.model, o) : await loadCausalLM(o.model, o, needsTemplate);
  if (hybrid) needsTemplate(tokenizer);
  // A NemotronH model has what rowDecoding reads (config's vocabulary, lengths and token ids, generationConfig).
  const model = loaded as NemotronForCausalLM;
  options.tokenizer = tokenizer;
  // Stop strings (generation_config.json's) are checked here, as the batcher leaves them to its caller.
  const stops = [options.stopStrings ?? [], model.generationConfig?.stop_strings ?? []].flat().filter((t): t is string => typeof t === 'string' && t.length > 0);
  options.stopStrings = [];
  const decodeForStops = stopStringDecoder(tokenizer);
  const scheduling = { maxRows: 1, prefixCacheTokens: model.config.maxPositionEmbeddings };
  const batcher = loaded instanceof NemotronHForCausalLM ? new NemotronHBatcher(loaded, scheduling) : new ContinuousBatcher(model, scheduling);
  const template = tokenizer.responseTemplate;
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
          // The prompt primes the decoder, so that the reply's first token decodes as it does after it. A reply read
          // with a response_template keeps its special tokens (they may be its delimiters).
          const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: !template });
          for (const id of ids) decoder.push(id);
          const parser = template ? tokenizer.responseParser({ prefix: ids }) : null;
          const show = replyPrinter(output);
          if (parser) show(parser.initialEvents);
          let reply = '';
          const sequence = ids.slice();
          const decoding = rowDecoding(model, ids, { ...options, maxNewTokens: Math.min(o.maxNewTokens, room) });
          await batcher.generate({
            prompt: ids, decoding,
            onToken: (token) => {
              sequence.push(token);
              const piece = decoder.push(token);
              reply += piece;
              if (parser) show(parser.feed(piece));
              else output.write(piece);
              return !(stops.length && endsWithStopString(sequence, stops, decodeForStops));
            },
          });
          const tail = decoder.flush();
          reply += tail;
          let message: ChatMessage = { role: 'assistant', content: reply };
          if (parser) {
            show(parser.feed(tail));
            try {
              const { message: parsed, events } = parser.finalize();
              show(events);
              message = assistantMessage(parsed);
            } catch (e) {
              output.write(`\n(the reply does not read as the response_template says: ${(e as Error).message})`);
            }
            output.write('\n');
          } else output.write(`${tail}\n`);
          history = [...messages, message];
        }
      }
      ask();
    }
  } finally {
    lines.close();
    batcher.prefixCache?.dispose();
    model.dispose();
  }
}

/** Prints a parsed reply as it comes: content as is, reasoning after "[thinking] ", each tool call on a line of its own. */
function replyPrinter(output: NodeJS.WritableStream): (events: ResponseEvent[]) => void {
  let region: string | null = null;
  return (events) => {
    for (const e of events) {
      if (e.type === 'region_chunk' && !e.dirty) {
        const thinking = ['reasoning_content', 'thinking', 'reasoning'].includes(e.field);
        if (thinking && region !== 'thinking') output.write('[thinking] ');
        if (!thinking && region === 'thinking') output.write('\n');
        region = thinking ? 'thinking' : 'content';
        output.write(e.text);
      } else if (e.type === 'region_close' && e.field === 'tool_calls') {
        for (const call of Array.isArray(e.value) ? e.value : [e.value]) {
          const fn = (call as { function?: { name?: unknown; arguments?: unknown } } | null)?.function;
          output.write(`${region ? '\n' : ''}[tool call] ${String(fn?.name)}(${JSON.stringify(fn?.arguments ?? {})})\n`);
          region = null;
        }
      }
    }
  };
}

/** The parsed reply as the history's assistant message (content, reasoning_content, tool_calls, as chat templates read them). */
function assistantMessage(parsed: Record<string, Json>): ChatMessage {
  const content = typeof parsed.content === 'string' ? parsed.content : parsed.content === undefined ? '' : JSON.stringify(parsed.content);
  return { ...parsed, role: 'assistant', content } as ChatMessage;
}

export function registerChat(program: Command): void {
  addSamplingOptions(program
    .command('chat')
    .description('talk with an instruct model in the terminal: each line is a message, the reply streams back (the conversation through the chat template)')
    .requiredOption('-m, --model <dir>', 'Hugging Face checkpoint folder (config.json, tokenizer.json with a chat template, safetensors), or a GGUF file')
    .option('-n, --max-new-tokens <n>', 'most tokens a reply has (fewer where the context ends)', integerArg('a positive integer', (n) => n > 0), 512))
    .option('--system <text>', 'a system message that opens the conversation')
    .option('--adapter <path>', 'a PEFT LoRA adapter folder or a GGUF LoRA file (llama.cpp\'s --lora) to merge into the model')
    .addOption(backendOption())
    .addHelpText('after', `
Decoding as generate's (greedy unless sampling is asked for or generation_config.json samples). Lines can be piped:
  printf 'Hi!\\nWhat is relu squared?\\n' | nemotron-tfjs chat --model ./Nemotron-Mini-4B-Instruct --greedy`)
    .action(async (_opts: unknown, cmd: Command) => {
      await runChat(cmd.optsWithGlobals() as ChatCliOptions);
    });
}
