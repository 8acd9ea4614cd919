import * as fs from 'fs';
import { Command, Option } from 'commander';
import { initBackend } from '../backends';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { isGGUF } from '../../models/nemotron/pretrained';
import { NemotronTokenizer } from '../tokenizer';
import { checkModelDir, modelType } from './info';
import { integerArg } from './generate';
import { planQuantization, quantizeGGUF } from '../io/gguf';
import { type GGMLWriteType, QUANT_MIXES, type TensorTypeOverrides, isLlamaQuantizeMix, parseGGMLType, parseTensorType, readTensorTypeFile } from '../io/gguf-quantize';
import { filterImatrix, resolveImatrix } from '../io/imatrix';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { NemotronHLoraModel } from '../../models/nemotron_h/lora';
import { LoraModel } from '../training/lora';

/** --prune-layers L0,L1,…: layer numbers (from 0). */
function layerListArg(value: string): number[] {
  return value.split(',').map((id) => {
    if (!/^\s*\d+\s*$/.test(id)) throw new Error(`--prune-layers ${value}: ${id} is not a layer number (expected L0,L1,… from 0)`);
    return Number(id);
  });
}

/** A quantization plan as a table: each tensor's types and size, then the totals. */
function printPlan(plan: ReturnType<typeof planQuantization>): void {
  const width = Math.max(...plan.map((t) => t.name.length));
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(2);
  let [weights, before, after] = [0, 0, 0];
  for (const t of plan) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    weights += count;
    before += count * (t.from === 'F32' ? 4 : 2);
    after += t.bytes;
    process.stdout.write(`${t.name.padEnd(width)}  ${t.from.padEnd(4)} → ${t.to.padEnd(7)} ${mib(t.bytes).padStart(10)} MiB\n`);
  }
  process.stdout.write(`${plan.length} tensors: ${mib(before)} MiB → ${mib(after)} MiB, ${(8 * after / weights).toFixed(2)} bits a weight\n`);
}

/**
 * `convert`: a Nemotron or NemotronH GGUF file to a Hugging Face checkpoint folder (config.json, safetensors, tokenizer
 * files), which transformers, finetune and every other command read, the weights dequantized; or a Hugging Face
 * causal LM folder (Nemotron, NemotronH) to a GGUF file (F32, F16, Q8_0 or Q4_0), as llama.cpp's convert_hf_to_gguf.py
 * writes one, or one of llama-quantize's file types (BF16, Q4_1, Q5_0, Q5_1, the k-quant and i-quant mixes, …; --imatrix
 * weighs them by an importance matrix; --pure, --output-tensor-type, --token-embedding-type, --tensor-type(-file),
 * --leave-output-tensor, --prune-layers and --override-kv as llama-quantize's) as it makes them from that; or, with
 * --adapter, a PEFT LoRA adapter folder to a GGUF LoRA file, as its convert_lora_to_gguf.py writes one; or a GGUF file
 * to any of llama-quantize's file types (its own F32, F16, Q8_0 and Q4_0 among them) or COPY, as llama-quantize does
 * (a quantized input with --allow-requantize).
 */
export function registerConvert(program: Command): void {
  // --tensor-type and --tensor-type-file entries in the order given: the first pattern that matches wins.
  const tensorTypes: Array<[string, GGMLWriteType]> = [];
  program
    .command('convert')
    .description('Convert a Nemotron or NemotronH GGUF file (llama.cpp\'s format) into a Hugging Face checkpoint folder (weights dequantized), or a Hugging Face causal LM folder into a GGUF file, or a GGUF file into another (llama-quantize)')
    .option('--gguf <file>', 'the GGUF file to convert into a folder, or (--output FILE.gguf) to quantize as llama-quantize does')
    .option('--model <dir>', 'the Hugging Face causal LM folder (config.json, safetensors, tokenizer.json) to convert into a GGUF file')
    .requiredOption('--output <path>', 'the folder (from --gguf) or the .gguf file (from --model; from --gguf, llama-quantize\'s job)')
    .addOption(new Option('--dtype <dtype>', 'from --gguf to a folder: dtype of the saved weights').choices(['F32', 'BF16']).default('F32'))
    .addOption(new Option('--type <type>', 'the GGUF file type: from --model, F32, F16, Q8_0 and Q4_0 as the converter writes them (vectors stay F32), the others as llama-quantize makes them from that; from --gguf, llama-quantize\'s type (COPY: tensors as they are)')
      .choices([...Object.keys(QUANT_MIXES), 'COPY']).default('F32'))
    .option('--imatrix <file>', 'with a llama-quantize type: an importance matrix (the imatrix command\'s or llama-imatrix\'s file) weighing the quantization, as llama-quantize --imatrix')
    .option('--pure', 'with a llama-quantize type: every matrix in the type\'s base type, none of its per-tensor rules (llama-quantize --pure)')
    .option('--output-tensor-type <type>', 'with a llama-quantize type: output.weight\'s type, e.g. q8_0 (llama-quantize --output-tensor-type)', parseGGMLType)
    .option('--token-embedding-type <type>', 'with a llama-quantize type: token_embd.weight\'s type (llama-quantize --token-embedding-type)', parseGGMLType)
    .option('--tensor-type <pattern=type>', 'with a llama-quantize type: tensors whose name matches the regular expression get that type, the first match winning; repeatable (llama-quantize --tensor-type)',
      (v: string) => { tensorTypes.push(parseTensorType(v)); return tensorTypes; })
    .option('--tensor-type-file <file>', 'with a llama-quantize type: PATTERN=TYPE entries separated by spaces or newlines, as --tensor-type (llama-quantize --tensor-type-file)',
      (v: string) => { tensorTypes.push(...readTensorTypeFile(v)); return tensorTypes; })
    .option('--leave-output-tensor', 'with a llama-quantize type: output.weight left as it is (llama-quantize --leave-output-tensor)')
    .option('--prune-layers <L0,L1,...>', 'with a llama-quantize type or COPY: leave these decoder layers out, renumbering the rest (llama-quantize --prune-layers)', layerListArg)
    .option('--allow-requantize', 'from --gguf: quantize tensors that are quantized already (dequantized first; the rounding compounds) (llama-quantize --allow-requantize)')
    .option('--include-weights <name>', 'with --imatrix: use it only for tensors whose names contain this; repeatable (llama-quantize --include-weights)', (v: string, prev: string[]) => [...prev, v], [])
    .option('--exclude-weights <name>', 'with --imatrix: not for tensors whose names contain this; repeatable (llama-quantize --exclude-weights)', (v: string, prev: string[]) => [...prev, v], [])
    .option('--keep-split', 'from --gguf (the first shard of a split file) with a llama-quantize type: the output in the same shards, OUTPUT-0000i-of-0000n.gguf (llama-quantize --keep-split)')
    .option('--dry-run', 'with --gguf and a llama-quantize type: print each tensor\'s type and size in the output, write nothing (llama-quantize --dry-run)')
    .option('--override-kv <KEY=TYPE:VALUE>', 'with a llama-quantize type: set a metadata key in the output (TYPE int, float, bool or str); repeatable (llama-quantize --override-kv)', (v: string, prev: string[]) => [...prev, v], [])
    .option('--adapter <dir>', 'with --model (the base: a folder or a GGUF file): a PEFT LoRA adapter folder to write as a GGUF LoRA file for llama.cpp\'s --lora (--type F32 or F16)')
    .option('--threads <n>', 'worker threads quantizing (default: the machine\'s parallelism)', integerArg('a positive integer', (n) => n >= 1))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      if ((opts.gguf === undefined) === (opts.model === undefined)) throw new Error('give --gguf FILE (GGUF → folder or GGUF) or --model DIR (folder → GGUF)');
      if (opts.gguf !== undefined && !isGGUF(opts.gguf)) throw new Error(`--gguf ${opts.gguf} is not a .gguf file`);
      if (opts.imatrix !== undefined && !fs.existsSync(opts.imatrix)) throw new Error(`--imatrix ${opts.imatrix}: no such file`);
      const toGGUF = opts.gguf !== undefined && String(opts.output).toLowerCase().endsWith('.gguf');
      // llama-quantize's job: a GGUF file into any of its types, or a folder into one of the types the converter does not write.
      const llamaQuantize = toGGUF || (opts.model !== undefined && opts.adapter === undefined && isLlamaQuantizeMix(opts.type));
      if (opts.type === 'COPY' && !toGGUF) throw new Error('--type COPY copies a GGUF file (llama-quantize COPY): give --gguf FILE --output FILE.gguf');
      const overrides: TensorTypeOverrides = {
        pure: opts.pure, outputTensorType: opts.outputTensorType, tokenEmbeddingType: opts.tokenEmbeddingType,
        tensorTypes: tensorTypes.length ? tensorTypes : undefined, leaveOutputTensor: opts.leaveOutputTensor,
      };
      const flags: Array<[string, unknown]> = [['--pure', opts.pure], ['--output-tensor-type', opts.outputTensorType], ['--token-embedding-type', opts.tokenEmbeddingType],
        ['--tensor-type', tensorTypes.length || undefined], ['--leave-output-tensor', opts.leaveOutputTensor], ['--override-kv', opts.overrideKv.length || undefined],
        ['--prune-layers', opts.pruneLayers], ['--allow-requantize', opts.allowRequantize]];
      const overridden = flags.filter(([, v]) => v !== undefined).map(([flag]) => flag);
      const overrideKv: string[] | undefined = opts.overrideKv.length ? opts.overrideKv : undefined;
      const job = opts.gguf !== undefined ? 'a GGUF into a folder' : `--model's --type ${opts.type} (the converter's)`;
      if (overridden.length && !llamaQuantize) throw new Error(`${overridden.join(', ')}: llama-quantize's options go with its job (--gguf FILE --output FILE.gguf, or --model DIR with --type Q4_K_M, …), not ${job}`);
      if ((opts.includeWeights.length || opts.excludeWeights.length) && opts.imatrix === undefined) throw new Error('--include-weights / --exclude-weights choose entries of an --imatrix FILE; none was given');
      const imatrix = opts.imatrix === undefined ? undefined
        : filterImatrix(resolveImatrix(opts.imatrix)!, { include: opts.includeWeights, exclude: opts.excludeWeights });
      if (opts.imatrix !== undefined && !llamaQuantize) throw new Error(`--imatrix weighs llama-quantize's job (--gguf FILE --output FILE.gguf, or --model DIR with --type Q4_K_M, …), not ${job}`);
      if (opts.dryRun) {
        if (!toGGUF) throw new Error('--dry-run plans llama-quantize\'s job (--type Q4_K_M, …) on a GGUF file: give --gguf FILE --output FILE.gguf');
        printPlan(planQuantization(opts.gguf, opts.type, { ...overrides, keepSplit: opts.keepSplit, hasImatrix: imatrix !== undefined, pruneLayers: opts.pruneLayers }));
        return;
      }
      const quantizeOptions = { ...overrides, overrideKv, keepSplit: opts.keepSplit, threads: opts.threads, imatrix, pruneLayers: opts.pruneLayers, allowRequantize: opts.allowRequantize };
      if (toGGUF) {
        // GGUF → GGUF: llama-quantize's job, without a model in memory.
        await quantizeGGUF(opts.gguf, opts.output, opts.type, quantizeOptions);
        process.stdout.write(`quantized ${opts.gguf} to ${opts.output} (${opts.type})\n`);
        return;
      }
      if (opts.adapter !== undefined) {
        if (opts.model === undefined) throw new Error('--adapter DIR needs --model BASE: the model the adapter was trained on');
        checkModelDir(opts.adapter, ['adapter_config.json', 'adapter_model.safetensors']);
        if (opts.type !== 'F32' && opts.type !== 'F16') throw new Error(`--type ${opts.type}: a LoRA adapter's GGUF is F32 or F16`);
      }
      // The base of an adapter may be the GGUF file it was fine-tuned on (finetune takes GGUF models).
      if (opts.model !== undefined && !(opts.adapter !== undefined && isGGUF(opts.model))) {
        checkModelDir(opts.model, ['config.json', 'tokenizer.json']);
        if (!String(opts.output).toLowerCase().endsWith('.gguf')) throw new Error(`--output ${opts.output}: a GGUF file's name ends in .gguf`);
      }
      await initBackend(opts.backend ?? command.optsWithGlobals().backend);
      const source = opts.gguf ?? opts.model;
      const tokenizer = await NemotronTokenizer.fromPretrained(source);
      // NemotronH (nemotron_h / nemotron_h_moe GGUF, model_type nemotron_h folder) or Nemotron.
      const hybrid = modelType(source) === 'nemotron_h';
      const model = hybrid ? await NemotronHForCausalLM.fromPretrained(source) : await NemotronForCausalLM.fromPretrained(source);
      try {
        if (opts.gguf !== undefined) {
          await model.savePretrained(opts.output, { dtype: opts.dtype });
          tokenizer.savePretrained(opts.output);
        } else if (opts.adapter !== undefined) {
          const lora = model instanceof NemotronHForCausalLM ? await NemotronHLoraModel.fromPretrained(model, opts.adapter)
            : await LoraModel.fromPretrained(model, opts.adapter);
          await lora.saveGGUF(opts.output, { type: opts.type });
          process.stdout.write(`converted the LoRA adapter ${opts.adapter} (${lora.namedParameters().size / 2} modules) to ${opts.output}\n`);
          return;
        } else {
          await model.saveGGUF(opts.output, tokenizer, { ...quantizeOptions, type: opts.type });
        }
        process.stdout.write(`converted ${source} (${(model.numParameters() / 1e6).toFixed(1)} M parameters, vocabulary ${tokenizer.vocabSize}) to ${opts.output}\n`);
      } finally {
        model.dispose();
      }
    });
}
