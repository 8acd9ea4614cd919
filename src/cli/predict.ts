import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../backends';
import { NemotronForQuestionAnswering, NemotronForSequenceClassification, NemotronForTokenClassification } from '../../models/nemotron/heads';
import { NemotronTokenizer } from '../tokenizer';
import { LoraModel } from '../training/lora';
import { ClassificationFunction, answerQuestion, classifyText, classifyTokens } from '../inference/classification';
import { checkModelDir } from './info';
import { integerArg } from './generate';

const HEADS = ['NemotronForSequenceClassification', 'NemotronForTokenClassification', 'NemotronForQuestionAnswering'];

/** A positive integer, or 'all' (commander keeps a parser's null as no value, so 'all' stays a string until used). */
function topKArg(value: string): number | 'all' {
  if (value.trim() === 'all') return 'all';
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('It must be a positive integer or "all".');
  return n;
}

/**
 * `predict`: what a classification checkpoint says of texts, as transformers' text-classification and
 * token-classification pipelines report it. The head comes from config.json's architectures.
 */
export function registerPredict(program: Command): void {
  program
    .command('predict')
    .description('Labels of texts from a sequence- or token-classification checkpoint (transformers\' text-classification and token-classification pipelines), or answer spans from a question-answering one')
    .requiredOption('--model <dir>', 'Hugging Face checkpoint folder with tokenizer.json (config.json\'s architectures picks the head)')
    .option('--text <text>', 'a text to label (repeatable)', (v: string, all: string[] = []) => [...all, v])
    .option('--question <text>', 'question answering: the question')
    .option('--context <text>', 'question answering: the text that holds the answer')
    .option('--max-answer-length <n>', 'question answering: the longest answer, in tokens', (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('It must be a positive integer.');
      return n;
    }, 15)
    .option('--max-seq-len <n>', 'question answering: tokens of a window; a longer context runs in several (default min(model_max_length, 384))', integerArg('an integer ≥ 2', (n) => n >= 2))
    .option('--doc-stride <n>', 'question answering: context tokens two consecutive windows share (default min(max-seq-len / 2, 128))', integerArg('an integer ≥ 0', (n) => n >= 0))
    .option('--text-pair <text>', 'sequence classification: the second text of each --text, in order (repeatable; entailment, paraphrase, …)', (v: string, all: string[] = []) => [...all, v])
    .option('--adapter <dir>', 'a PEFT LoRA adapter folder to apply (merged into the weights)')
    .option('--top-k <n>', 'labels per text (sequence classification) or answers (question answering), best first, or "all" labels (default: the best)', topKArg)
    .addOption(new Option('--function <name>', 'sequence classification: how logits become scores (default as transformers: sigmoid for multi-label or one label, none for regression, else softmax)').choices(['sigmoid', 'softmax', 'none']))
    .option('--ignore-labels <list>', 'token classification: labels not reported, comma-separated', 'O')
    .addOption(new Option('--aggregation <strategy>', 'token classification: "none" (every token), "simple" (adjacent tokens of one B-/I- entity grouped), or "first" / "average" / "max" (a word\'s tokens take one label first)').choices(['none', 'simple', 'first', 'average', 'max']).default('none'))
    .option('--json', 'print one JSON line per text')
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      checkModelDir(opts.model, ['config.json', 'tokenizer.json']);
      const config = JSON.parse(fs.readFileSync(path.join(opts.model, 'config.json'), 'utf8')) as { architectures?: string[] };
      const architecture = config.architectures?.[0] ?? '';
      if (!HEADS.includes(architecture)) {
        throw new Error(`predict runs ${HEADS.join(' or ')} checkpoints; ${opts.model} is ${architecture || 'of no architecture'}` +
          (architecture === 'NemotronForCausalLM' ? ' (use generate)' : ''));
      }
      if (process.env.NEMOTRON_DEBUG !== '1') tf.env().set('PROD', true);
      await initBackend(opts.backend ?? command.optsWithGlobals().backend);
      const tokenizer = await NemotronTokenizer.fromPretrained(opts.model);
      if (architecture === 'NemotronForQuestionAnswering') {
        if (typeof opts.question !== 'string' || typeof opts.context !== 'string') throw new Error('a question-answering checkpoint needs --question and --context');
        if (opts.topK === 'all') throw new Error('--top-k all is for labels; give question answering a number of answers');
        const model = await NemotronForQuestionAnswering.fromPretrained(opts.model);
        try {
          if (opts.adapter) (await LoraModel.fromPretrained(model, opts.adapter)).mergeAndUnload();
          const spans = await answerQuestion(model, tokenizer, opts.question, opts.context, { topK: opts.topK ?? 1, maxAnswerLength: opts.maxAnswerLength, maxSeqLen: opts.maxSeqLen, docStride: opts.docStride });
          process.stdout.write(opts.json ? `${JSON.stringify({ question: opts.question, result: spans })}\n`
            : spans.map((a) => `${a.score.toFixed(4)}\t${a.answer}`).join('\n') + '\n');
        } finally {
          model.dispose();
        }
        return;
      }
      if (!opts.text?.length) throw new Error(`a ${architecture} checkpoint needs --text`);
      const texts = opts.text as string[];
      const pairs = opts.textPair as string[] | undefined;
      if (pairs && (pairs.length !== texts.length || architecture !== 'NemotronForSequenceClassification')) {
        throw new Error(`--text-pair gives the second text of each --text to a sequence classifier: got ${pairs.length} for ${texts.length} texts` +
          (architecture !== 'NemotronForSequenceClassification' ? ` and a ${architecture}` : ''));
      }
      const write = (text: string, result: unknown, plain: string) =>
        process.stdout.write(opts.json ? `${JSON.stringify({ text, result })}\n` : `${plain}\n`);
      if (architecture === 'NemotronForSequenceClassification') {
        const model = await NemotronForSequenceClassification.fromPretrained(opts.model);
        try {
          if (opts.adapter) (await LoraModel.fromPretrained(model, opts.adapter)).mergeAndUnload();
          const inputs = pairs ? texts.map((text, i) => ({ text, textPair: pairs[i] })) : texts;
          const results = await classifyText(model, tokenizer, inputs, { topK: opts.topK === 'all' ? null : opts.topK, functionToApply: opts.function as ClassificationFunction | undefined });
          const shown = (i: number) => (pairs ? `${texts[i]} ‖ ${pairs[i]}` : texts[i]);
          results.forEach((labels, i) => write(shown(i), labels, `${labels.map((l) => `${l.label} ${l.score.toFixed(4)}`).join(' · ')}\t${shown(i)}`));
        } finally {
          model.dispose();
        }
        return;
      }
      const model = await NemotronForTokenClassification.fromPretrained(opts.model);
      try {
        if (opts.adapter) (await LoraModel.fromPretrained(model, opts.adapter)).mergeAndUnload();
        const ignoreLabels = String(opts.ignoreLabels).split(',').map((l) => l.trim()).filter(Boolean);
        for (const text of texts) {
          if (opts.aggregation !== 'none') {
            const groups = await classifyTokens(model, tokenizer, text, { ignoreLabels, aggregationStrategy: opts.aggregation as 'simple' });
            write(text, groups, `${text}\n${groups.map((g) => `  ${g.entityGroup}\t${g.score.toFixed(4)}\t${g.start}-${g.end}\t${JSON.stringify(text.slice(g.start, g.end))}`).join('\n')}`);
            continue;
          }
          const entities = await classifyTokens(model, tokenizer, text, { ignoreLabels });
          write(text, entities, `${text}\n${entities.map((e) => `  ${e.index}\t${JSON.stringify(e.word)}\t${e.entity}\t${e.score.toFixed(4)}\t${e.start}-${e.end}`).join('\n')}`);
        }
      } finally {
        model.dispose();
      }
    });
}
