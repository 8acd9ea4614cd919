import * as fs from 'fs';
import seedrandom from 'seedrandom';
import type { HeadInputs } from '../../models/nemotron/heads';

export type TaskName = 'causal-lm' | 'sequence-classification' | 'token-classification' | 'question-answering';
export const TASKS: readonly TaskName[] = ['causal-lm', 'sequence-classification', 'token-classification', 'question-answering'];

/** What the readers need of a tokenizer (NemotronTokenizer fits; the chat template only for "messages" rows). */
export interface TextEncoder {
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  applyChatTemplate?(messages: Array<{ role: string; content: string }>, options?: { addGenerationPrompt?: boolean }): number[];
  encodePair?(text: string, textPair: string): { ids: number[]; sequenceIds: Array<0 | 1 | null> };
}

export interface ReadOptions {
  /**
   * causal-lm "messages" rows: train on the assistant turns' tokens only (the others' labels are -100), as TRL's
   * assistant_only_loss. Default false: every token, as TRL's SFTTrainer by default.
   */
  assistantOnlyLoss?: boolean;
}

/** One training example, tokenized. `label` is per task: class id / float / multi-hot list, or per-token labels. */
export interface Example {
  inputIds: number[];
  label?: number | number[];
  start?: number;
  end?: number;
}

/**
 * JSONL formats (one object a line; ids may replace text when no tokenizer is given):
 * - causal-lm: {"text": "..."}, {"input_ids": [...]}, or {"messages": [{"role", "content"}, ...]} (rendered with the
 *   tokenizer's chat template; see ReadOptions.assistantOnlyLoss)
 * - sequence-classification: {"text" | "input_ids", "label": int | float (regression) | [0/1, ...] (multi-label)}; a pair
 *   of texts as {"text", "text_pair", "label"}
 * - token-classification: {"tokens": ["word", ...] | "input_ids": [...], "labels": [int, ...]} (one label per word / id)
 * - question-answering: {"input_ids": [...], "start_position": int, "end_position": int}, or
 *   {"question", "context", "answer": "span text"} with a tokenizer (the span is found in the tokenized context)
 */
export function readJsonl(file: string, task: TaskName, tokenizer?: TextEncoder, maxLength = 512, options: ReadOptions = {}): Example[] {
  if (!fs.existsSync(file)) throw new Error(`Dataset ${file} does not exist`);
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const examples: Example[] = [];
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    const where = `${file}:${i + 1}`;
    let row: Record<string, unknown>;
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new Error(`${where}: not valid JSON (${(e as Error).message})`);
    }
    if (typeof row !== 'object' || row === null || Array.isArray(row)) throw new Error(`${where}: expected a JSON object`);
    examples.push(truncate(parseExample(row, task, where, tokenizer, options), maxLength, task));
  });
  if (examples.length === 0) throw new Error(`Dataset ${file} is empty: no JSON lines`);
  return examples;
}

function field<T>(row: Record<string, unknown>, name: string, where: string, check: (v: unknown) => boolean, what: string): T {
  if (!(name in row)) throw new Error(`${where}: missing field "${name}"`);
  if (!check(row[name])) throw new Error(`${where}: field "${name}" must be ${what}, got ${JSON.stringify(row[name])}`);
  return row[name] as T;
}

const isIntList = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every((x) => Number.isInteger(x));
const isNumberList = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'number');

function ids(row: Record<string, unknown>, where: string, tokenizer?: TextEncoder): number[] {
  if ('input_ids' in row) return field<number[]>(row, 'input_ids', where, isIntList, 'a non-empty list of integers');
  if (!('text' in row)) throw new Error(`${where}: missing field "text" (or "input_ids")`);
  const text = field<string>(row, 'text', where, (v) => typeof v === 'string' && v.length > 0, 'a non-empty string');
  if (!tokenizer) throw new Error(`${where}: "text" needs a tokenizer (tokenizer.json in the model folder), or give "input_ids"`);
  return tokenizer.encode(text);
}

function parseExample(row: Record<string, unknown>, task: TaskName, where: string, tokenizer: TextEncoder | undefined, options: ReadOptions): Example {
  switch (task) {
    case 'causal-lm':
      return 'messages' in row ? chatExample(row, where, tokenizer, options) : { inputIds: ids(row, where, tokenizer) };
    case 'sequence-classification': {
      const label = field<number | number[]>(row, 'label', where, (v) => typeof v === 'number' || isNumberList(v), 'a number or a list of numbers');
      if ('text_pair' in row) {
        // Two texts (entailment, paraphrase, …) in the tokenizer's pair template, as tokenizer(text, text_pair).
        const text = field<string>(row, 'text', where, (v) => typeof v === 'string' && v.length > 0, 'a non-empty string');
        const pair = field<string>(row, 'text_pair', where, (v) => typeof v === 'string' && v.length > 0, 'a non-empty string');
        if (!tokenizer?.encodePair) throw new Error(`${where}: "text_pair" needs a tokenizer (tokenizer.json in the model folder)`);
        return { inputIds: tokenizer.encodePair(text, pair).ids, label };
      }
      return { inputIds: ids(row, where, tokenizer), label };
    }
    case 'token-classification': {
      const labels = field<number[]>(row, 'labels', where, isIntList, 'a list of integers');
      if ('tokens' in row) {
        const words = field<string[]>(row, 'tokens', where, (v) => Array.isArray(v) && v.every((w) => typeof w === 'string'), 'a list of strings');
        if (!tokenizer) throw new Error(`${where}: "tokens" needs a tokenizer, or give "input_ids"`);
        if (words.length !== labels.length) throw new Error(`${where}: ${words.length} tokens but ${labels.length} labels`);
        // A word's label goes to its first sub-token; the others are ignored (-100), as in HF's token-classification recipe.
        const inputIds: number[] = [];
        const tokenLabels: number[] = [];
        words.forEach((w, i) => {
          const pieces = tokenizer.encode(i === 0 ? w : ` ${w}`, { addSpecialTokens: false });
          pieces.forEach((id, j) => { inputIds.push(id); tokenLabels.push(j === 0 ? labels[i] : -100); });
        });
        return { inputIds, label: tokenLabels };
      }
      const inputIds = ids(row, where, tokenizer);
      if (inputIds.length !== labels.length) throw new Error(`${where}: ${inputIds.length} input_ids but ${labels.length} labels`);
      return { inputIds, label: labels };
    }
    case 'question-answering': {
      if ('input_ids' in row) {
        const inputIds = ids(row, where);
        const start = field<number>(row, 'start_position', where, Number.isInteger, 'an integer');
        const end = field<number>(row, 'end_position', where, Number.isInteger, 'an integer');
        return { inputIds, start, end };
      }
      if (!tokenizer) throw new Error(`${where}: question/context needs a tokenizer, or give input_ids with start_position/end_position`);
      const question = field<string>(row, 'question', where, (v) => typeof v === 'string', 'a string');
      const context = field<string>(row, 'context', where, (v) => typeof v === 'string', 'a string');
      const answer = field<string>(row, 'answer', where, (v) => typeof v === 'string' && v.length > 0, 'a non-empty string');
      if (tokenizer.encodePair) {
        // The pair template, as tokenizer(question, context) and answerQuestion encode it; the answer's tokens are
        // looked for in the context's, as a word inside it or at its start.
        const { ids: inputIds, sequenceIds } = tokenizer.encodePair(question, context);
        const [from, to] = [sequenceIds.indexOf(1), sequenceIds.lastIndexOf(1)];
        for (const variant of [` ${answer}`, answer]) {
          const a = tokenizer.encode(variant, { addSpecialTokens: false });
          for (let i = from; from >= 0 && i + a.length - 1 <= to; i++) {
            if (a.every((id, j) => inputIds[i + j] === id)) return { inputIds, start: i, end: i + a.length - 1 };
          }
        }
        throw new Error(`${where}: the answer "${answer}" is not found in the tokenized context`);
      }
      const q = tokenizer.encode(question);
      const c = tokenizer.encode(` ${context}`, { addSpecialTokens: false });
      const a = tokenizer.encode(` ${answer}`, { addSpecialTokens: false });
      const at = c.findIndex((_, i) => a.every((id, j) => c[i + j] === id));
      if (at < 0) throw new Error(`${where}: the answer "${answer}" is not found in the tokenized context`);
      return { inputIds: [...q, ...c], start: q.length + at, end: q.length + at + a.length - 1 };
    }
  }
}

/**
 * A "messages" row: the conversation through the chat template; with assistantOnlyLoss, labels only on the tokens
 * each assistant turn adds (found by rendering the conversation up to the turn's start, with the generation prompt,
 * and up to its end: both must be prefixes of the whole).
 */
function chatExample(row: Record<string, unknown>, where: string, tokenizer: TextEncoder | undefined, options: ReadOptions): Example {
  const isMessages = (v: unknown) => Array.isArray(v) && v.length > 0 &&
    v.every((m) => m && typeof m === 'object' && typeof (m as Record<string, unknown>).role === 'string' && typeof (m as Record<string, unknown>).content === 'string');
  const messages = field<Array<{ role: string; content: string }>>(row, 'messages', where, isMessages, 'a non-empty list of {"role", "content"} strings');
  if (!tokenizer?.applyChatTemplate) throw new Error(`${where}: "messages" needs a tokenizer with a chat template (tokenizer.json and tokenizer_config.json in the model folder)`);
  const render = (upTo: number, addGenerationPrompt: boolean) => tokenizer.applyChatTemplate!(messages.slice(0, upTo), { addGenerationPrompt });
  const inputIds = render(messages.length, false);
  if (!options.assistantOnlyLoss) return { inputIds };
  const label = inputIds.map(() => -100);
  const isPrefix = (part: number[]) => part.length <= inputIds.length && part.every((id, i) => id === inputIds[i]);
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const [before, through] = [i === 0 ? [] : render(i, true), render(i + 1, false)];
    if (!isPrefix(before) || !isPrefix(through) || before.length > through.length) {
      throw new Error(`${where}: the chat template does not render the conversation up to message ${i} as a prefix of the whole, ` +
        'so the assistant tokens cannot be told apart: train without assistantOnlyLoss (--assistant-only-loss)');
    }
    for (let t = before.length; t < through.length; t++) label[t] = inputIds[t];
  });
  if (label.every((l) => l === -100)) throw new Error(`${where}: assistantOnlyLoss, but the conversation has no assistant turn to learn`);
  return { inputIds, label };
}

function truncate(e: Example, maxLength: number, task: TaskName): Example {
  if (e.inputIds.length <= maxLength) return e;
  const out: Example = { ...e, inputIds: e.inputIds.slice(0, maxLength) };
  // Per-token labels follow the ids (a multi-label class vector does not).
  if ((task === 'token-classification' || task === 'causal-lm') && Array.isArray(e.label)) out.label = e.label.slice(0, maxLength);
  return out;
}

/** Right-pads a list of examples into the forward inputs of the task's head. */
export function collate(examples: Example[], task: TaskName, padTokenId: number): HeadInputs {
  const width = Math.max(...examples.map((e) => e.inputIds.length));
  const pad = <T>(row: T[], value: T) => [...row, ...new Array(width - row.length).fill(value)];
  const inputIds = examples.map((e) => pad(e.inputIds, padTokenId));
  const attentionMask = examples.map((e) => pad(e.inputIds.map(() => 1), 0));
  switch (task) {
    case 'causal-lm':
      // Labels are the ids themselves (the model shifts them), or the per-token labels of a chat row.
      return { inputIds, attentionMask, labels: examples.map((e) => pad(Array.isArray(e.label) ? e.label : e.inputIds, -100)) };
    case 'sequence-classification':
      return { inputIds, attentionMask, labels: examples.map((e) => e.label) as number[] | number[][] };
    case 'token-classification':
      return { inputIds, attentionMask, labels: examples.map((e) => pad(e.label as number[], -100)) };
    case 'question-answering':
      return { inputIds, attentionMask, startPositions: examples.map((e) => e.start!), endPositions: examples.map((e) => e.end!) };
  }
}

/** The examples of one epoch in a seeded order, cut into batches. */
export function epochBatches(examples: Example[], batchSize: number, seed: number, epoch: number, shuffle = true): Example[][] {
  if (!(Number.isInteger(batchSize) && batchSize > 0)) throw new Error(`batch size must be a positive integer, got ${batchSize}`);
  const order = examples.map((_, i) => i);
  if (shuffle) {
    const random = seedrandom(`${seed}:${epoch}`);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
  }
  const batches: Example[][] = [];
  for (let i = 0; i < order.length; i += batchSize) batches.push(order.slice(i, i + batchSize).map((k) => examples[k]));
  return batches;
}

/** Tokens a batch trains on (non-padding), for tokens/s. */
export function countTokens(batch: HeadInputs): number {
  return (batch.attentionMask as number[][]).reduce((n, row) => n + row.reduce((a, b) => a + b, 0), 0);
}
