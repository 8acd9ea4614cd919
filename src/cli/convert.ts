import { Command, Option } from 'commander';
import { initBackend } from '../backends';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { isGGUF } from '../../models/nemotron/pretrained';
import { NemotronTokenizer } from '../tokenizer';

/**
 * `convert`: a Nemotron GGUF file to a Hugging Face checkpoint folder (config.json, safetensors, tokenizer files), which
 * transformers, finetune and every other command read. The weights are the GGUF's, dequantized.
 */
export function registerConvert(program: Command): void {
  program
    .command('convert')
    .description('Convert a Nemotron GGUF file (llama.cpp\'s format) into a Hugging Face checkpoint folder (weights dequantized)')
    .requiredOption('--gguf <file>', 'the GGUF file')
    .requiredOption('--output <dir>', 'where the checkpoint goes (config.json, generation_config.json, safetensors, tokenizer files)')
    .addOption(new Option('--dtype <dtype>', 'dtype of the saved weights').choices(['F32', 'BF16']).default('F32'))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      if (!isGGUF(opts.gguf)) throw new Error(`--gguf ${opts.gguf} is not a .gguf file`);
      await initBackend(opts.backend ?? command.optsWithGlobals().backend);
      const tokenizer = await NemotronTokenizer.fromPretrained(opts.gguf);
      const model = await NemotronForCausalLM.fromPretrained(opts.gguf);
      try {
        await model.savePretrained(opts.output, { dtype: opts.dtype });
        tokenizer.savePretrained(opts.output);
        process.stdout.write(`converted ${opts.gguf} (${(model.numParameters() / 1e6).toFixed(1)} M parameters, vocabulary ${tokenizer.vocabSize}) to ${opts.output}\n`);
      } finally {
        model.dispose();
      }
    });
}
