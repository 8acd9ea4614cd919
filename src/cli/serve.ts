/**
 * `nemotron-tfjs serve --model DIR`: an OpenAI-compatible HTTP server (chat completions through the chat template,
 * completions, models), as `transformers serve` offers; any OpenAI client or UI can talk to it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { backendOption, integerArg, loadCausalLM, loadNemotronH, modelType } from './generate';
import { createOpenAIServer, serverAddress } from '../serving/openai';
import type { ResponseTemplateSpec } from '../response-parsing/index';

export interface ServeCliOptions {
  model: string;
  adapter?: string;
  backend?: string;
  host: string;
  port: number;
  servedModelName?: string;
  maxTokens: number;
  maxRows: number;
  prefillChunk: number;
  prefixCacheTokens: number;
  quiet?: boolean;
  apiKey?: string;
  responseTemplate?: string;
}

/** --response-template: a JSON file, or "none" (the reply is all content even if the tokenizer has a template). */
function readResponseTemplate(value: string | undefined): ResponseTemplateSpec | null | undefined {
  if (value === undefined) return undefined;
  if (value === 'none') return null;
  let text: string;
  try {
    text = fs.readFileSync(value, 'utf8');
  } catch (e) {
    throw new Error(`--response-template ${value}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); expected a JSON file or "none"`);
  }
  try {
    return JSON.parse(text) as ResponseTemplateSpec;
  } catch (e) {
    throw new Error(`--response-template ${value}: not JSON (${(e as Error).message})`);
  }
}

/** Loads the model, listens, and resolves once the server has closed (SIGINT or SIGTERM close it). */
export async function runServe(o: ServeCliOptions): Promise<void> {
  const responseTemplate = readResponseTemplate(o.responseTemplate);
  const { model, tokenizer, backend } = modelType(o.model) === 'nemotron_h' ? await loadNemotronH(o.model, o) : await loadCausalLM(o.model, o);
  const modelId = o.servedModelName ?? path.basename(path.resolve(o.model));
  const server = createOpenAIServer(model, tokenizer, {
    modelId, defaultMaxTokens: o.maxTokens, maxRows: o.maxRows, prefillChunkTokens: o.prefillChunk, prefixCacheTokens: o.prefixCacheTokens, apiKey: o.apiKey ?? process.env.NEMOTRON_API_KEY,
    log: o.quiet ? undefined : (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`), responseTemplate,
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => reject(new Error(e.code === 'EADDRINUSE'
        ? `--port ${o.port}: the address ${o.host}:${o.port} is in use (pick another port, or 0 for a free one)` : `cannot listen on ${o.host}:${o.port}: ${e.message}`)));
      server.listen(o.port, o.host, () => resolve());
    });
    // The first line on stdout is the address (scripts and tests read it; with --port 0 it names the port picked).
    process.stdout.write(`serving ${modelId} on ${serverAddress(server)} (backend ${backend}; POST /v1/chat/completions, /v1/completions, /v1/responses; GET /v1/models)\n`);
    await new Promise<void>((resolve) => {
      const stop = () => {
        server.close(() => resolve());
        server.closeAllConnections();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
  } finally {
    model.dispose();
  }
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve a causal LM over HTTP with OpenAI\'s API (chat completions, completions, responses, models), streaming or not')
    .requiredOption('-m, --model <dir>', 'Hugging Face checkpoint folder (config.json, tokenizer.json, safetensors), or a GGUF file')
    .option('--host <host>', 'address to listen on (0.0.0.0 for every interface)', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: a free one, printed)', integerArg('an integer in [0, 65535]', (n) => n >= 0 && n <= 65535), 8000)
    .option('--served-model-name <name>', 'the model name clients give (default: the folder\'s name)')
    .option('--max-tokens <n>', 'max_tokens of a chat request that gives none (capped by the context length)', integerArg('a positive integer', (n) => n > 0), 4096)
    .option('--max-rows <n>', 'most rows (prompts × n) one request decodes together', integerArg('a positive integer', (n) => n > 0), 16)
    .option('--prefill-chunk <tokens>', 'most prompt tokens one pass runs; longer prompts run in chunks, the other rows decoding between them', integerArg('a positive integer', (n) => n > 0), 512)
    .option('--prefix-cache-tokens <n>', 'automatic prefix caching: keep the keys and values of finished requests, up to n tokens, so that a prompt beginning with them (a chat\'s next turn) runs only the rest; 0: off',
      integerArg('an integer ≥ 0', (n) => n >= 0), 8192)
    .option('--adapter <path>', 'a PEFT LoRA adapter folder or a GGUF LoRA file (llama.cpp\'s --lora) to merge into the model')
    .option('--response-template <file>', 'a response_template (JSON) that reads replies into content, reasoning_content and tool_calls; "none": no parsing (default: tokenizer_config.json\'s response_template)')
    .option('--api-key <key>', 'require "Authorization: Bearer <key>" on /v1/ requests (default: $NEMOTRON_API_KEY, else none)')
    .option('-q, --quiet', 'no line per request on stderr')
    .addOption(backendOption())
    .addHelpText('after', `
The rows of all requests (concurrent clients, a list of prompts, n > 1) decode together (continuous batching, at most
--max-rows at once; the others wait).
Settings a request leaves out come from generation_config.json (greedy unless it samples); temperature 0 is greedy, any
other temperature, top_p, top_k or min_p samples. logit_bias, presence_penalty and frequency_penalty as OpenAI's API
applies them; besides OpenAI's fields: top_k, min_p, repetition_penalty (vLLM's names).
A stop string ends the text before it, as OpenAI's API does. Structured outputs: response_format json_object /
json_schema, vLLM's structured_outputs (json, regex, choice, grammar) and guided_*; tool_choice "required" or a named
function (the reply decodes under the tools' JSON schemas). Not supported (refused by name): suffix.
Tool calls and reasoning: where tokenizer_config.json has a response_template (transformers 5's), or --response-template
gives one, replies are read into content, reasoning_content and tool_calls (finish_reason "tool_calls"), streamed and not;
examples/response-templates/nemotron-toolcall.json reads <toolcall>{"name", "arguments"}</toolcall> replies.

Example:
  nemotron-tfjs serve --model ./Nemotron-Mini-4B-Instruct --port 8000
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 64}'`)
    .action(async (_opts: unknown, cmd: Command) => {
      await runServe(cmd.optsWithGlobals() as ServeCliOptions);
    });
}
