import * as fs from 'fs';
import { Command, Option } from 'commander';
import { computeImatrix } from '../inference/imatrix';
import { writeImatrix } from '../io/imatrix';
import { integerArg, loadCausalLM, loadNemotronH, modelType } from './generate';

/**
 * `imatrix`: llama-imatrix's job — an importance matrix of a causal LM (Nemotron, NemotronH; folder or GGUF) on
 * calibration text, in llama.cpp's GGUF format, for `convert --type MIX --imatrix FILE` (or llama-quantize --imatrix).
 */
export function registerImatrix(program: Command): void {
  program
    .command('imatrix')
    .description('Compute an importance matrix on calibration text, as llama-imatrix does (for convert --type MIX --imatrix, or llama-quantize)')
    .requiredOption('--model <path>', 'the causal LM: a Hugging Face folder or a GGUF file (Nemotron or NemotronH)')
    .requiredOption('--text <file>', 'the calibration text (plain text, tokenized whole)')
    .requiredOption('--output <file>', 'the importance matrix to write (GGUF, as llama-imatrix writes it)')
    .option('--chunk-size <n>', 'tokens a chunk, each starting with BOS (llama-imatrix -c)', integerArg('a positive integer', (n) => n >= 1), 512)
    .option('--chunks <n>', 'at most this many chunks (default: all the text holds)', integerArg('a positive integer', (n) => n >= 1))
    .option('--adapter <path>', 'a LoRA adapter (PEFT folder or GGUF) merged into the model first')
    .addOption(new Option('--backend <name>', 'tfjs backend (one that reads tensors synchronously)').choices(['tensorflow', 'cuda', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      if (!fs.existsSync(opts.text)) throw new Error(`--text ${opts.text}: no such file`);
      const text = fs.readFileSync(opts.text, 'utf8');
      const o = { adapter: opts.adapter, backend: opts.backend ?? command.optsWithGlobals().backend };
      const { model, tokenizer, backend } = modelType(opts.model) === 'nemotron_h' ? await loadNemotronH(opts.model, o) : await loadCausalLM(opts.model, o);
      try {
        const start = performance.now();
        const matrix = computeImatrix(model, tokenizer, text, {
          chunkSize: opts.chunkSize, chunks: opts.chunks, dataset: opts.text,
          onChunk: (done, total) => process.stderr.write(`\rchunk ${done}/${total}`),
        });
        process.stderr.write('\n');
        writeImatrix(opts.output, matrix);
        const seconds = (performance.now() - start) / 1000;
        process.stdout.write(`wrote ${opts.output}: ${matrix.entries.size} matrices over ${matrix.chunkCount} chunks of ${matrix.chunkSize} tokens ` +
          `(${(matrix.chunkCount * matrix.chunkSize / seconds).toFixed(1)} tokens/s, backend ${backend})\n`);
      } finally {
        model.dispose();
      }
    });
}
