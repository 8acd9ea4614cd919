import * as fs from 'fs';
import { Command, Option } from 'commander';
import { initBackend } from '../backends';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { isGGUF } from '../../models/nemotron/pretrained';
import { NemotronTokenizer } from '../tokenizer';
import { checkModelDir, modelType } from './info';
import { integerArg } from './generate';
import { planQuantization, quantizeGGUF } from '../io/gguf';
import { GGML_WRITE_TYPES, type GGMLWriteType, type TensorTypeOverrides, isQuantMix } from '../io/gguf-quantize';
import { filterImatrix, resolveImatrix } from '../io/imatrix';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';
import { NemotronHLoraModel } from '../../models/nemotron_h/lora';
import { LoraModel } from '../training/lora';

/** A ggml type name as llama-quantize takes one (any case) among those written here. */
function ggmlTypeArg(value: string): GGMLWriteType {
  const type = Object.keys(GGML_WRITE_TYPES).find((t) => t.toLowerCase() === value.toLowerCase());
  if (!type) throw new Error(`${value}: expected a tensor type written here (${Object.keys(GGML_WRITE_TYPES).join(', ').toLowerCase()})`);
  return type as GGMLWriteType;
}

/** --tensor-type PATTERN=TYPE, collected in order. */
function tensorTypeArg(value: string, previous: Array<[string, GGMLWriteType]>): Array<[string, GGMLWriteType]> {
  const at = value.indexOf('=');
  if (at <= 0 || at === value.length - 1) throw new Error(`--tensor-type ${value}: expected PATTERN=TYPE, e.g. attn_v=q8_0`);
  return [...previous, [value.slice(0, at), ggmlTypeArg(value.slice(at + 1))]];
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
 * writes one, or one of llama-quantize's mixes (Q2_K, Q2_K_S, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, IQ4_NL, IQ4_XS,
 * IQ3_XXS/XS/S/M, IQ2_XXS/XS/S/M, IQ1_S/M, TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4_MOE; --imatrix weighs them by an importance
 * matrix; --pure, --output-tensor-type, --token-embedding-type, --tensor-type, --leave-output-tensor and
 * --override-kv as llama-quantize's) as it makes them from that; or, with --adapter, a PEFT LoRA adapter
 * folder to a GGUF LoRA file, as its convert_lora_to_gguf.py writes one; or an F32 / F16 / BF16 GGUF file to a mix,
 * as llama-quantize does.
 */
export function registerConvert(program: Command): void {
  program
    .command('convert')
    .description('Convert a Nemotron or NemotronH GGUF file (llama.cpp\'s format) into a Hugging Face checkpoint folder (weights dequantized), or a Hugging Face causal LM folder into a GGUF file')
    .option('--gguf <file>', 'the GGUF file to convert into a folder')
    .option('--model <dir>', 'the Hugging Face causal LM folder (config.json, safetensors, tokenizer.json) to convert into a GGUF file')
    .requiredOption('--output <path>', 'the folder (from --gguf) or the .gguf file (from --model; from --gguf with a k-quant --type, llama-quantize\'s job)')
    .addOption(new Option('--dtype <dtype>', 'from --gguf: dtype of the saved weights').choices(['F32', 'BF16']).default('F32'))
    .addOption(new Option('--type <type>', 'from --model: the GGUF file type: the matrices\' type (vectors stay F32), or one of llama-quantize\'s mixes')
      .choices(['F32', 'F16', 'Q8_0', 'Q4_0', 'Q2_K', 'Q2_K_S', 'Q3_K_S', 'Q3_K_M', 'Q3_K_L', 'Q4_K_S', 'Q4_K_M', 'Q5_K_S', 'Q5_K_M', 'Q6_K', 'IQ4_NL', 'IQ4_XS', 'IQ3_XXS', 'IQ3_XS', 'IQ3_S', 'IQ3_M', 'IQ2_XXS', 'IQ2_XS', 'IQ2_S', 'IQ2_M', 'IQ1_S', 'IQ1_M', 'TQ1_0', 'TQ2_0', 'Q1_0', 'Q2_0', 'MXFP4_MOE']).default('F32'))
    .option('--imatrix <file>', 'with a mix --type: an importance matrix (the imatrix command\'s or llama-imatrix\'s file) weighing the quantization, as llama-quantize --imatrix')
    .option('--pure', 'with a mix --type: every matrix in the mix\'s base type, none of its per-tensor rules (llama-quantize --pure)')
    .option('--output-tensor-type <type>', 'with a mix --type: output.weight\'s type, e.g. q8_0 (llama-quantize --output-tensor-type)', ggmlTypeArg)
    .option('--token-embedding-type <type>', 'with a mix --type: token_embd.weight\'s type (llama-quantize --token-embedding-type)', ggmlTypeArg)
    .option('--tensor-type <pattern=type>', 'with a mix --type: tensors whose name matches the regular expression get that type, the first match winning; repeatable (llama-quantize --tensor-type)', tensorTypeArg, [])
    .option('--leave-output-tensor', 'with a mix --type: output.weight left as it is (llama-quantize --leave-output-tensor)')
    .option('--include-weights <name>', 'with --imatrix: use it only for tensors whose names contain this; repeatable (llama-quantize --include-weights)', (v: string, prev: string[]) => [...prev, v], [])
    .option('--exclude-weights <name>', 'with --imatrix: not for tensors whose names contain this; repeatable (llama-quantize --exclude-weights)', (v: string, prev: string[]) => [...prev, v], [])
    .option('--keep-split', 'from --gguf (the first shard of a split file) with a mix --type: the output in the same shards, OUTPUT-0000i-of-0000n.gguf (llama-quantize --keep-split)')
    .option('--dry-run', 'with --gguf and a mix --type: print each tensor\'s type and size in the output, write nothing (llama-quantize --dry-run)')
    .option('--override-kv <KEY=TYPE:VALUE>', 'with a mix --type: set a metadata key in the output (TYPE int, float, bool or str); repeatable (llama-quantize --override-kv)', (v: string, prev: string[]) => [...prev, v], [])
    .option('--adapter <dir>', 'with --model (the base: a folder or a GGUF file): a PEFT LoRA adapter folder to write as a GGUF LoRA file for llama.cpp\'s --lora (--type F32 or F16)')
    .option('--threads <n>', 'from --model: worker threads quantizing a k-quant mix (default: the machine\'s parallelism)', integerArg('a positive integer', (n) => n >= 1))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu']))
    .action(async (opts, command: Command) => {
      if ((opts.gguf === undefined) === (opts.model === undefined)) throw new Error('give --gguf FILE (GGUF → folder) or --model DIR (folder → GGUF)');
      if (opts.gguf !== undefined && !isGGUF(opts.gguf)) throw new Error(`--gguf ${opts.gguf} is not a .gguf file`);
      if (opts.imatrix !== undefined && !fs.existsSync(opts.imatrix)) throw new Error(`--imatrix ${opts.imatrix}: no such file`);
      const overrides: TensorTypeOverrides = {
        pure: opts.pure, outputTensorType: opts.outputTensorType, tokenEmbeddingType: opts.tokenEmbeddingType,
        tensorTypes: opts.tensorType.length ? opts.tensorType : undefined, leaveOutputTensor: opts.leaveOutputTensor,
      };
      const overridden = ['--pure', '--output-tensor-type', '--token-embedding-type', '--tensor-type', '--leave-output-tensor', '--override-kv']
        .filter((flag, i) => [opts.pure, opts.outputTensorType, opts.tokenEmbeddingType, opts.tensorType.length || undefined, opts.leaveOutputTensor,
          opts.overrideKv.length || undefined][i] !== undefined);
      const overrideKv: string[] | undefined = opts.overrideKv.length ? opts.overrideKv : undefined;
      if (overridden.length && !isQuantMix(opts.type)) throw new Error(`${overridden.join(', ')}: llama-quantize's per-tensor options go with a quantization mix (--type Q4_K_M, …), not --type ${opts.type}`);
      if ((opts.includeWeights.length || opts.excludeWeights.length) && opts.imatrix === undefined) throw new Error('--include-weights / --exclude-weights choose entries of an --imatrix FILE; none was given');
      const imatrix = opts.imatrix === undefined ? undefined
        : filterImatrix(resolveImatrix(opts.imatrix)!, { include: opts.includeWeights, exclude: opts.excludeWeights });
      if (opts.imatrix !== undefined && !isQuantMix(opts.type)) throw new Error(`--imatrix weighs a quantization mix (--type Q2_K … Q6_K, IQ4_NL/XS, IQ3_XXS/XS/S/M, IQ2_XXS/XS/S/M, IQ1_S/M, TQ1_0, …), not --type ${opts.type}`);
      if (opts.dryRun) {
        if (opts.gguf === undefined || !isQuantMix(opts.type)) throw new Error('--dry-run plans a quantization mix (--type Q4_K_M, …) of a GGUF file (--gguf FILE)');
        printPlan(planQuantization(opts.gguf, opts.type, { ...overrides, keepSplit: opts.keepSplit, hasImatrix: imatrix !== undefined }));
        return;
      }
      if (opts.gguf !== undefined && String(opts.output).toLowerCase().endsWith('.gguf')) {
        // GGUF → GGUF: llama-quantize's job, without a model in memory.
        if (!isQuantMix(opts.type)) throw new Error(`--gguf FILE --output FILE.gguf quantizes into one of llama-quantize's mixes: give --type Q2_K, Q2_K_S, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, IQ4_NL, IQ4_XS, IQ3_XXS/XS/S/M or IQ2_XXS/XS/S/M, not ${opts.type}`);
        await quantizeGGUF(opts.gguf, opts.output, opts.type, { ...overrides, overrideKv, keepSplit: opts.keepSplit, threads: opts.threads, imatrix });
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
          await model.saveGGUF(opts.output, tokenizer, { ...overrides, overrideKv, type: opts.type, threads: opts.threads, imatrix });
        }
        process.stdout.write(`converted ${source} (${(model.numParameters() / 1e6).toFixed(1)} M parameters, vocabulary ${tokenizer.vocabSize}) to ${opts.output}\n`);
      } finally {
        model.dispose();
      }
    });
}
