import * as fs from 'fs';
import * as path from 'path';
import { Command, Option } from 'commander';
import { initBackend } from '../backends';
import { integerArg, modelType, numberArg } from './generate';
import { loadingBar } from './progress';
import { CheckpointReader } from '../io/checkpoint';
import {
  NemotronForCausalLM, NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification,
} from '../../models/nemotron/heads';
import { NemotronConfigFields } from '../../models/nemotron/config';
import { FromPretrainedOptions, NemotronPreTrainedModel } from '../../models/nemotron/pretrained';
import { NemotronTokenizer } from '../tokenizer';
import { isGGUF } from '../../models/nemotron/pretrained';
import { Example, TASKS, TaskName, readJsonl } from '../training/data';
import { LoraModel } from '../training/lora';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { NemotronHLoraModel } from '../../models/nemotron_h/lora';
import { Trainer, TrainableModel } from '../training/trainer';

type HeadModel = NemotronPreTrainedModel & TrainableModel;
type Loader = (dir: string, options: FromPretrainedOptions) => Promise<HeadModel>;
const LOADERS: Record<TaskName, Loader> = {
  'causal-lm': (dir, o) => NemotronForCausalLM.fromPretrained(dir, o),
  'sequence-classification': (dir, o) => NemotronForSequenceClassification.fromPretrained(dir, o),
  'token-classification': (dir, o) => NemotronForTokenClassification.fromPretrained(dir, o),
  'question-answering': (dir, o) => NemotronForQuestionAnswering.fromPretrained(dir, o),
};

const positive = numberArg('a number > 0', (n) => n > 0);
const atLeast = (min: number) => integerArg(`an integer ≥ ${min}`, (n) => n >= min);
const nonNegative = numberArg('a number ≥ 0', (n) => n >= 0);

function checkpointBytes(dir: string): number {
  const reader = CheckpointReader.open(dir);
  try {
    return reader.totalBytes();
  } finally {
    reader.close();
  }
}

/** Head settings a classification dataset implies when the checkpoint has no such head yet. */
/** finetune for a NemotronH checkpoint: the causal LM trained whole (the other options refused by name). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function finetuneNemotronH(opts: any, task: TaskName, train: Example[], evalExamples: Example[] | undefined, backend: string): Promise<void> {
  const refused = [['--task ' + task, task !== 'causal-lm'], ['--add-special-tokens', opts.addSpecialTokens !== undefined], ['--lora-dropout', (opts.loraDropout ?? 0) > 0],
    ['--resume', Boolean(opts.resume)]].filter(([, on]) => on).map(([flag]) => flag);
  if (refused.length) throw new Error(`${refused.join(', ')}: not supported for NemotronH checkpoints yet (causal-lm: all weights, or LoRA)`);
  const base = await NemotronHForCausalLM.fromPretrained(opts.model);
  // --lora-r: PEFT's adapters on the linear modules (the base frozen; the adapter is what is saved).
  const targets = opts.loraTargets === undefined || opts.loraTargets === 'all-linear' ? 'all-linear' : String(opts.loraTargets).split(',').map((t: string) => t.trim());
  const model = opts.loraR === undefined ? base : NemotronHLoraModel.attach(base, { r: opts.loraR, loraAlpha: opts.loraAlpha ?? 2 * opts.loraR, targetModules: targets, seed: opts.seed });
  const trainer = new Trainer(model, train, {
    task, lr: opts.lr, epochs: opts.epochs, maxSteps: opts.maxSteps, batchSize: opts.batchSize, gradAccum: opts.gradAccum,
    schedule: opts.schedule, warmupSteps: opts.warmupSteps, weightDecay: opts.weightDecay, maxGradNorm: opts.maxGradNorm,
    seed: opts.seed, evalExamples, evalEvery: opts.evalEvery, outputDir: opts.output, saveEvery: opts.saveEvery,
    logFile: path.join(opts.output, 'train_log.jsonl'), progress: opts.progress && process.stderr.isTTY, padTokenId: model.config.padTokenId ?? 0,
    gradientCheckpointing: opts.gradientCheckpointing ?? false,
  });
  try {
    fs.mkdirSync(opts.output, { recursive: true });
    fs.rmSync(path.join(opts.output, 'train_log.jsonl'), { force: true });
    process.stderr.write(`finetune causal-lm (NemotronH${model instanceof NemotronHLoraModel ? `, LoRA r ${opts.loraR}` : ''}): ${train.length} examples, ${trainer.totalSteps} steps, backend ${backend}\n`);
    const history = await trainer.fit();
    await model.savePretrained(opts.output);
    const lastEval = trainer.evalHistory[trainer.evalHistory.length - 1];
    process.stdout.write(`trained ${trainer.state.step} steps: loss ${history[0]?.loss.toFixed(4) ?? '-'} → ${history[history.length - 1]?.loss.toFixed(4) ?? '-'}` +
      `${lastEval ? ` · eval loss ${lastEval.evalLoss.toFixed(4)}` : ''}; saved to ${opts.output}\n`);
  } finally {
    trainer.dispose();
    base.dispose();
  }
}

function headConfig(task: TaskName, examples: Example[], numLabels?: number): Partial<NemotronConfigFields> {
  if (task === 'sequence-classification') {
    const label = examples[0].label;
    if (Array.isArray(label)) return { numLabels: numLabels ?? label.length, problemType: 'multi_label_classification' };
    const labels = examples.map((e) => e.label as number);
    if (labels.some((l) => !Number.isInteger(l))) return { numLabels: 1, problemType: 'regression' };
    return { numLabels: numLabels ?? Math.max(...labels) + 1, problemType: 'single_label_classification' };
  }
  if (task === 'token-classification') {
    return { numLabels: numLabels ?? Math.max(...examples.flatMap((e) => e.label as number[])) + 1 };
  }
  return {};
}

export function registerFinetune(program: Command): void {
  program
    .command('finetune')
    .description('Fine-tune a checkpoint on a JSONL dataset (formats in the README) and save a checkpoint fromPretrained loads')
    .addOption(new Option('--task <task>', 'what to train').choices(TASKS as string[]).makeOptionMandatory())
    .requiredOption('--model <dir>', 'Hugging Face checkpoint folder to start from (config.json + safetensors; tokenizer.json for text), or a GGUF file (dequantized)')
    .requiredOption('--train <file>', 'training data, JSONL')
    .option('--eval <file>', 'held-out data, JSONL: its loss is logged every --eval-every steps and at the end')
    .requiredOption('--output <dir>', 'where the fine-tuned checkpoint, optimizer state and log go')
    .option('--lr <rate>', 'peak learning rate', positive, 5e-5)
    .option('--epochs <n>', 'passes over the training data', positive, 1)
    .option('--max-steps <n>', 'optimizer steps (overrides --epochs)', atLeast(1))
    .option('--batch-size <n>', 'examples per micro-batch', atLeast(1), 8)
    .option('--grad-accum <n>', 'micro-batches per optimizer step', atLeast(1), 1)
    .option('--max-length <n>', 'truncate examples to this many tokens', atLeast(1), 512)
    .addOption(new Option('--schedule <name>', 'learning-rate schedule after warmup').choices(['constant', 'linear', 'cosine']).default('linear'))
    .option('--warmup-steps <n>', 'linear warmup steps', atLeast(0), 0)
    .option('--weight-decay <w>', 'AdamW decoupled weight decay (not on biases and norms)', nonNegative, 0)
    .option('--max-grad-norm <n>', 'clip the global gradient norm (0: no clipping)', nonNegative, 1)
    .option('--eval-every <n>', 'evaluate every N steps', atLeast(1))
    .option('--save-every <n>', 'save a resumable checkpoint every N steps', atLeast(1))
    .option('--num-labels <n>', 'classes of a new classification head (default: from the data)', atLeast(1))
    .option('--seed <n>', 'seed of the data order', integerArg('an integer'), 42)
    .option('--assistant-only-loss', 'causal-lm "messages" rows: learn the assistant turns only (the other tokens get label -100)')
    .option('--gradient-checkpointing', 'recompute each layer in the backward instead of keeping its activations (less memory, ~1/3 more compute)')
    .option('--lora-r <n>', 'LoRA: train rank-n adapters (PEFT format, saved as adapter_model.safetensors) instead of every weight; a classification or QA head trains whole with them (PEFT\'s modules_to_save)', atLeast(1))
    .option('--lora-alpha <a>', 'LoRA: scaling numerator (scaling = alpha / r)', positive, 16)
    .option('--lora-targets <list>', 'LoRA: projections to adapt, comma-separated (q_proj,k_proj,v_proj,o_proj,up_proj,down_proj) or all-linear', 'all-linear')
    .option('--lora-dropout <p>', 'LoRA: dropout on the adapters\' input while training', nonNegative, 0)
    .option('--add-special-tokens <list>', 'comma-separated special tokens to add to the tokenizer (e.g. chat markers); the embeddings grow to the tokenizer\'s size, as resize_token_embeddings does, and both are saved (not with --lora-r)')
    .option('--resume', 'continue the run saved in --output (weights, optimizer state, position in the data)')
    .option('--no-progress', 'no progress bar')
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      const task = opts.task as TaskName;
      const lora = opts.loraR !== undefined;
      const backend = await initBackend(opts.backend ?? command.optsWithGlobals().backend);
      // A GGUF file trains as its dequantized weights; its vocabulary is the tokenizer.
      const gguf = isGGUF(opts.model);
      if (!gguf && !fs.existsSync(path.join(opts.model, 'config.json'))) throw new Error(`No config.json in the model folder ${opts.model}`);
      const tokenizer = gguf || fs.existsSync(path.join(opts.model, 'tokenizer.json')) ? await NemotronTokenizer.fromPretrained(opts.model) : undefined;
      const newTokens = opts.addSpecialTokens === undefined ? [] : String(opts.addSpecialTokens).split(',').map((t: string) => t.trim()).filter(Boolean);
      if (opts.addSpecialTokens !== undefined) {
        if (!tokenizer) throw new Error(`--add-special-tokens needs the tokenizer: no tokenizer.json in ${opts.model}`);
        if (newTokens.length === 0) throw new Error(`--add-special-tokens: expected comma-separated tokens, got ${JSON.stringify(opts.addSpecialTokens)}`);
        // The adapter would stand for a base whose vocabulary it does not have (and the new rows would not train).
        if (lora) throw new Error('--add-special-tokens cannot be combined with --lora-r: new tokens need the embeddings trained and saved whole');
        tokenizer.addSpecialTokens({ additionalSpecialTokens: newTokens });
      }
      const readOptions = { assistantOnlyLoss: opts.assistantOnlyLoss ?? false };
      const train = readJsonl(opts.train, task, tokenizer, opts.maxLength, readOptions);
      const evalExamples = opts.eval ? readJsonl(opts.eval, task, tokenizer, opts.maxLength, readOptions) : undefined;
      if (modelType(opts.model) === 'nemotron_h') {
        await finetuneNemotronH(opts, task, train, evalExamples, backend);
        // The tokenizer beside the weights: copied from the folder, or (from a GGUF) written as tokenizer.json.
        if (gguf && tokenizer) tokenizer.savePretrained(opts.output);
        else if (tokenizer) for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) {
          if (fs.existsSync(path.join(opts.model, f))) fs.copyFileSync(path.join(opts.model, f), path.join(opts.output, f));
        }
        return;
      }
      const resuming = opts.resume && fs.existsSync(path.join(opts.output, 'trainer_state.json'));
      // A LoRA run saves only the adapter: its base weights always come from --model.
      const from = resuming && !lora ? opts.output : opts.model;
      const bar = opts.progress && process.stderr.isTTY ? loadingBar(checkpointBytes(from)) : null;
      let base: HeadModel;
      try {
        base = await LOADERS[task](from, { config: resuming ? undefined : headConfig(task, train, opts.numLabels), onProgress: bar?.onProgress });
      } finally {
        bar?.stop();
      }
      // New tokens: the embeddings (and an untied LM head) grow to the tokenizer's size, as transformers'
      // resize_token_embeddings(len(tokenizer)) (a resumed run's checkpoint has grown already).
      if (newTokens.length && tokenizer!.vocabSize > base.config.vocabSize) {
        const from = base.config.vocabSize;
        base.resizeTokenEmbeddings(tokenizer!.vocabSize, { seed: opts.seed });
        process.stderr.write(`added ${newTokens.length} special tokens: embeddings ${from} → ${base.config.vocabSize} rows\n`);
      }
      const model: TrainableModel = !lora ? base : resuming ? await LoraModel.fromPretrained(base, opts.output) : LoraModel.attach(base, {
        r: opts.loraR, loraAlpha: opts.loraAlpha, loraDropout: opts.loraDropout, seed: opts.seed,
        targetModules: opts.loraTargets === 'all-linear' ? 'all-linear' : String(opts.loraTargets).split(',').map((t: string) => t.trim()),
      });
      const trainer = new Trainer(model, train, {
        task, lr: opts.lr, epochs: opts.epochs, maxSteps: opts.maxSteps, batchSize: opts.batchSize, gradAccum: opts.gradAccum,
        schedule: opts.schedule, warmupSteps: opts.warmupSteps, weightDecay: opts.weightDecay, maxGradNorm: opts.maxGradNorm,
        seed: opts.seed, evalExamples, evalEvery: opts.evalEvery, outputDir: opts.output, saveEvery: opts.saveEvery,
        logFile: path.join(opts.output, 'train_log.jsonl'), progress: opts.progress && process.stderr.isTTY,
        padTokenId: model.config.padTokenId ?? tokenizer?.padTokenId ?? 0, gradientCheckpointing: opts.gradientCheckpointing ?? false,
      });
      fs.mkdirSync(opts.output, { recursive: true });
      if (resuming) trainer.restore(opts.output);
      else fs.rmSync(path.join(opts.output, 'train_log.jsonl'), { force: true });
      process.stderr.write(`finetune ${task}: ${train.length} examples, ${trainer.totalSteps} steps from step ${trainer.state.step}, backend ${backend}${model.isGradientCheckpointing ? ', gradient checkpointing' : ''}` +
        `${model instanceof LoraModel ? `, LoRA r ${model.loraConfig.r} on ${model.numParameters()} parameters` : ''}\n`);
      const history = await trainer.fit();
      const first = history[0];
      const last = history[history.length - 1];
      if (tokenizer && (newTokens.length || gguf)) tokenizer.savePretrained(opts.output);
      else if (tokenizer) for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) {
        if (fs.existsSync(path.join(opts.model, f))) fs.copyFileSync(path.join(opts.model, f), path.join(opts.output, f));
      }
      const lastEval = trainer.evalHistory[trainer.evalHistory.length - 1];
      const evalMetric = lastEval?.evalAccuracy ?? lastEval?.evalTokenAccuracy ?? lastEval?.evalExactMatch;
      const metricName = lastEval?.evalAccuracy !== undefined ? 'accuracy' : lastEval?.evalTokenAccuracy !== undefined ? 'token accuracy' : 'exact match';
      const evalNote = lastEval ? ` · eval loss ${lastEval.evalLoss.toFixed(4)}${evalMetric !== undefined ? ` · eval ${metricName} ${evalMetric.toFixed(4)}` : ''}` : '';
      process.stdout.write(`trained ${trainer.state.step} steps: loss ${first?.loss.toFixed(4) ?? '-'} → ${last?.loss.toFixed(4) ?? '-'}${evalNote}; saved to ${opts.output}\n`);
      trainer.dispose();
      if (model instanceof LoraModel) model.unload();
      base.dispose();
    });
}
