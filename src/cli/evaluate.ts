import * as fs from 'fs';
import * as path from 'path';
import { Command, Option } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../backends';
import { NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification } from '../../models/nemotron/heads';
import { NemotronTokenizer } from '../tokenizer';
import { TaskName, collate, epochBatches, readJsonl } from '../training/data';
import { type CausalLossModel, EvaluableModel, evaluateExamples, slidingWindowPerplexity } from '../training/metrics';
import { LoraModel } from '../training/lora';
import { checkAdapter, integerArg, mergeAdapter, modelType } from './generate';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { checkModelDir } from './info';
import { isGGUF } from '../../models/nemotron/pretrained';

export interface Perplexity {
  /** Mean negative log-likelihood per predicted token (natural log). */
  loss: number;
  perplexity: number;
  /** Predicted tokens: every position with a label after the shift (the first token of a row predicts nothing). */
  tokens: number;
  examples: number;
}

/**
 * Token-weighted causal-LM loss over a dataset, as perplexity is defined: Σ NLL / Σ predicted tokens (a batch's mean
 * loss weighted by its predicted tokens), and its exponential.
 */
export async function causalPerplexity(model: NemotronForCausalLM | NemotronHForCausalLM, file: string, options: { tokenizer?: NemotronTokenizer; batchSize?: number; maxLength?: number } = {}): Promise<Perplexity> {
  const examples = readJsonl(file, 'causal-lm', options.tokenizer, options.maxLength ?? 512);
  let nll = 0;
  let tokens = 0;
  for (const batch of epochBatches(examples, options.batchSize ?? 8, 0, 0, false)) {
    const inputs = collate(batch, 'causal-lm', model.config.padTokenId ?? 0);
    const predicted = (inputs.labels as number[][]).reduce((n, row) => n + row.slice(1).filter((l) => l !== -100).length, 0);
    if (predicted === 0) continue;
    const loss = model.computeLoss(inputs);
    nll += (await loss.data())[0] * predicted;
    loss.dispose();
    tokens += predicted;
  }
  if (tokens === 0) throw new Error(`${file}: no example has a token to predict (each needs at least two tokens)`);
  return { loss: nll / tokens, perplexity: Math.exp(nll / tokens), tokens, examples: examples.length };
}

/**
 * The token ids of a causal-LM JSONL file as one text, for the sliding window: {"text"} rows joined by blank lines
 * (as the perplexity guide joins wikitext) and encoded once, or {"input_ids"} rows concatenated.
 */
export function datasetIds(file: string, tokenizer: NemotronTokenizer | undefined): number[] {
  const rows = fs.readFileSync(file, 'utf8').split('\n').map((line, i) => [line, i + 1] as const).filter(([line]) => line.trim() !== '');
  const parsed = rows.map(([line, n]) => {
    try {
      return [JSON.parse(line) as Record<string, unknown>, n] as const;
    } catch (e) {
      throw new Error(`${file}:${n}: not valid JSON: ${(e as Error).message}`);
    }
  });
  if (parsed.length === 0) throw new Error(`${file} has no rows`);
  if (parsed.every(([row]) => typeof row.text === 'string')) {
    if (!tokenizer) throw new Error(`${file}: "text" rows need tokenizer.json in the model folder`);
    return tokenizer.encode(parsed.map(([row]) => row.text as string).join('\n\n'));
  }
  return parsed.flatMap(([row, n]) => {
    if (!Array.isArray(row.input_ids) || !row.input_ids.every((id) => Number.isInteger(id))) {
      throw new Error(`${file}:${n}: --stride reads one text: every row {"text": ...}, or every row {"input_ids": [...]} (got ${Object.keys(row).join(', ') || 'nothing'})`);
    }
    return row.input_ids as number[];
  });
}

const HEAD_LOADERS: Record<Exclude<TaskName, 'causal-lm'>, (dir: string) => Promise<NemotronForSequenceClassification | NemotronForTokenClassification | NemotronForQuestionAnswering>> = {
  'sequence-classification': (dir) => NemotronForSequenceClassification.fromPretrained(dir),
  'token-classification': (dir) => NemotronForTokenClassification.fromPretrained(dir),
  'question-answering': (dir) => NemotronForQuestionAnswering.fromPretrained(dir),
};

export function registerEvaluate(program: Command): void {
  program
    .command('evaluate')
    .description('Perplexity of a causal LM checkpoint on a JSONL dataset; with --task, the loss and accuracy (token accuracy, exact match) of a classification or QA checkpoint (optionally with a PEFT LoRA adapter)')
    .requiredOption('--model <dir>', 'Hugging Face checkpoint folder (tokenizer.json for text rows), or a GGUF file (a quantized model\'s perplexity)')
    .requiredOption('--data <file>', 'JSONL in the format finetune reads for the task (causal-lm: {"text"}, {"input_ids"} or {"messages"} rows)')
    .addOption(new Option('--task <name>', 'what the checkpoint is').choices(['causal-lm', 'sequence-classification', 'token-classification', 'question-answering']).default('causal-lm'))
    .option('--adapter <path>', 'a PEFT LoRA adapter folder, or for a causal LM a GGUF LoRA file (llama.cpp\'s --lora), to apply (merged into the weights)')
    .option('--batch-size <n>', 'examples per forward', integerArg('an integer ≥ 1', (n) => n >= 1), 8)
    .option('--max-length <n>', 'truncate examples to this many tokens', integerArg('an integer ≥ 2', (n) => n >= 2), 512)
    .option('--stride <n>', 'causal-lm: the dataset as one text, scored in windows of --max-length tokens every n tokens (transformers\' sliding-window perplexity)',
      integerArg('an integer ≥ 1', (n) => n >= 1))
    .option('--json', 'print the result as JSON')
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      const gguf = isGGUF(opts.model);
      if (!gguf) checkModelDir(opts.model, ['config.json']);
      if (process.env.NEMOTRON_DEBUG !== '1') tf.env().set('PROD', true);
      const backend = await initBackend(opts.backend ?? command.optsWithGlobals().backend);
      const tokenizer = gguf || fs.existsSync(path.join(opts.model, 'tokenizer.json')) ? await NemotronTokenizer.fromPretrained(opts.model) : undefined;
      const task = opts.task as TaskName;
      if (opts.stride !== undefined && task !== 'causal-lm') throw new Error(`--stride scores a causal LM's text; it does not apply to --task ${task}`);
      if (task !== 'causal-lm') {
        // The classification heads and QA: the loss and the task's metric (accuracy, token accuracy, exact match).
        const head = await HEAD_LOADERS[task](opts.model);
        try {
          if (opts.adapter) (await LoraModel.fromPretrained(head, opts.adapter)).mergeAndUnload();
          const examples = readJsonl(opts.data, task, tokenizer, opts.maxLength);
          const m = await evaluateExamples(head as unknown as EvaluableModel, examples, task, { batchSize: opts.batchSize, padTokenId: head.config.padTokenId ?? tokenizer?.padTokenId ?? 0 });
          const metric = m.accuracy !== undefined ? ` · accuracy ${m.accuracy.toFixed(4)}` : m.tokenAccuracy !== undefined ? ` · token accuracy ${m.tokenAccuracy.toFixed(4)}`
            : m.exactMatch !== undefined ? ` · exact match ${m.exactMatch.toFixed(4)}` : '';
          process.stdout.write(opts.json ? `${JSON.stringify({ task, ...m, backend })}\n` : `loss ${m.loss.toFixed(4)}${metric} over ${m.examples} examples (${task}, backend ${backend})\n`);
        } finally {
          head.dispose();
        }
        return;
      }
      // A NemotronH folder (the hybrid Mamba-2 models) scores the same way: its computeLoss.
      const hybrid = modelType(opts.model) === 'nemotron_h';
      checkAdapter(opts.adapter);
      const model = hybrid ? await NemotronHForCausalLM.fromPretrained(opts.model) : await NemotronForCausalLM.fromPretrained(opts.model);
      await mergeAdapter(model, opts.adapter);
      try {
        if (opts.stride !== undefined) {
          const windowed = await slidingWindowPerplexity(model as CausalLossModel, datasetIds(opts.data, tokenizer), { maxLength: opts.maxLength, stride: opts.stride });
          process.stdout.write(opts.json ? `${JSON.stringify({ ...windowed, maxLength: opts.maxLength, stride: opts.stride, backend })}\n`
            : `loss ${windowed.loss.toFixed(4)} · perplexity ${windowed.perplexity.toFixed(3)} over ${windowed.tokens} predicted tokens ` +
              `(${windowed.windows} windows of ${opts.maxLength} tokens, stride ${opts.stride}, backend ${backend})\n`);
          return;
        }
        const result = await causalPerplexity(model, opts.data, { tokenizer, batchSize: opts.batchSize, maxLength: opts.maxLength });
        process.stdout.write(opts.json ? `${JSON.stringify({ ...result, backend })}\n`
          : `loss ${result.loss.toFixed(4)} · perplexity ${result.perplexity.toFixed(3)} over ${result.tokens} predicted tokens ` +
            `(${result.examples} examples, backend ${backend})\n`);
      } finally {
        model.dispose();
      }
    });
}
