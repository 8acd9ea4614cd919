import * as fs from 'fs';
import { Command } from 'commander';
import { integerArg } from './generate';
import { mergeGGUF, parseSplitSize, splitGGUF } from '../io/gguf-split';

/**
 * `split`: llama-gguf-split — a GGUF file into shards PREFIX-00001-of-0000N.gguf (by tensor count or by size), or with
 * --merge the shards (from the first) into one file, the same bytes; every command that takes a GGUF file takes the
 * first shard of a split one.
 */
export function registerSplit(program: Command): void {
  program
    .command('split')
    .description('Split a GGUF file into shards as llama-gguf-split --split does (PREFIX-00001-of-0000N.gguf; other commands read them from the first), or join them again with --merge')
    .requiredOption('--input <file>', 'the GGUF file to split (with --merge: the first shard)')
    .requiredOption('--output <path>', 'the shards\' path prefix (with --merge: the merged file)')
    .option('--merge', 'join the shards of a split file into one (llama-gguf-split --merge)')
    .option('--split-max-tensors <n>', 'tensors a shard (llama-gguf-split\'s default: 128)', integerArg('a positive integer', (n) => n >= 1))
    .option('--split-max-size <size>', 'data a shard, in M or G (10⁶ / 10⁹ bytes), e.g. 2G', parseSplitSize)
    .action((opts) => {
      if (!fs.existsSync(opts.input)) throw new Error(`--input ${opts.input}: no such file`);
      if (opts.splitMaxTensors !== undefined && opts.splitMaxSize !== undefined) throw new Error('give --split-max-tensors or --split-max-size, not both');
      if (opts.merge) {
        if (opts.splitMaxTensors !== undefined || opts.splitMaxSize !== undefined) throw new Error('--merge takes no --split-max-tensors / --split-max-size');
        mergeGGUF(opts.input, opts.output);
        process.stdout.write(`wrote ${opts.output}\n`);
        return;
      }
      const shards = splitGGUF(opts.input, opts.output, opts.splitMaxSize !== undefined ? { maxBytes: opts.splitMaxSize } : { maxTensors: opts.splitMaxTensors ?? 128 });
      process.stdout.write(`wrote ${shards.length} shard${shards.length === 1 ? '' : 's'}: ${shards.join(', ')}\n`);
    });
}
