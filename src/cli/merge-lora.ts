import * as fs from 'fs';
import * as path from 'path';
import { Command, Option } from 'commander';
import { initBackend } from '../backends';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { LoraModel } from '../training/lora';
import { checkModelDir } from './info';

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'];

/** `merge-lora`: PEFT's merge_and_unload() then save_pretrained(): a full checkpoint with the adapter folded in. */
export function registerMergeLora(program: Command): void {
  program
    .command('merge-lora')
    .description('Fold a PEFT LoRA adapter into its base causal LM and save the result as a full Hugging Face checkpoint')
    .requiredOption('--model <dir>', 'the base checkpoint folder the adapter was trained on')
    .requiredOption('--adapter <dir>', 'the adapter folder (adapter_config.json, adapter_model.safetensors), e.g. finetune --lora-r\'s --output')
    .requiredOption('--output <dir>', 'where the merged checkpoint goes (config.json, safetensors, and the base\'s tokenizer files)')
    .addOption(new Option('--dtype <dtype>', 'dtype of the saved weights').choices(['F32', 'BF16']).default('F32'))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      checkModelDir(opts.model, ['config.json']);
      if (path.resolve(opts.output) === path.resolve(opts.model)) throw new Error('--output is the base model folder: the merge would overwrite it');
      await initBackend(opts.backend ?? command.optsWithGlobals().backend);
      const model = await NemotronForCausalLM.fromPretrained(opts.model);
      try {
        const lora = await LoraModel.fromPretrained(model, opts.adapter);
        const { r } = lora.loraConfig;
        const adapted = lora.numParameters();
        lora.mergeAndUnload();
        await model.savePretrained(opts.output, { dtype: opts.dtype });
        for (const f of TOKENIZER_FILES) {
          if (fs.existsSync(path.join(opts.model, f))) fs.copyFileSync(path.join(opts.model, f), path.join(opts.output, f));
        }
        process.stdout.write(`merged a LoRA adapter (r ${r}, ${adapted} parameters) into ${opts.model}; saved to ${opts.output}\n`);
      } finally {
        model.dispose();
      }
    });
}
