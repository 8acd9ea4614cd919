import * as fs from 'fs';
import { Command } from 'commander';
import { integerArg } from './generate';
import { parseSplitSize, splitGGUF } from '../io/gguf-split';

/**
 * `split`: llama-gguf-split --split — a GGUF file into shards PREFIX-00001-of-0000N.gguf (by tensor count or by size),
 * the same bytes; every command that takes a GGUF file takes the first shard of a split one.
 */
export function registerSplit(program: Command): void {
  program
    .command('split')
    .description('Split a GGUF file into shards as llama-gguf-split --split does (PREFIX-00001-of-0000N.gguf; other commands read them from the first)')
    .requiredOption('--input <file>', 'the GGUF file to split')
    .requiredOption('--output <prefix>', 'the shards\' path prefix')
    .option('--split-max-tensors <n>', 'tensors a shard (llama-gguf-split\'s default: 128)', integerArg('a positive integer', (n) => n >= 1))
    .option('--split-max-size <size>', 'data a shard, in M or G (10⁶ / 10⁹ bytes), e.g. 2G', parseSplitSize)
    .action((opts) => {
      if (!fs.existsSync(opts.input)) throw new Error(`--input ${opts.input}: no such file`);
      if (opts.splitMaxTensors !== undefined && opts.splitMaxSize !== undefined) throw new Error('give --split-max-tensors or --split-max-size, not both');
      const shards = splitGGUF(opts.input, opts.output, opts.splitMaxSize !== undefined ? { maxBytes: opts.splitMaxSize } : { maxTensors: opts.splitMaxTensors ?? 128 });
      process.stdout.write(`wrote ${shards.length} shard${shards.length === 1 ? '' : 's'}: ${shards.join(', ')}\n`);
    });
}
