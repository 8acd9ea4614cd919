/**
 * LoRA for NemotronH as PEFT does it: low-rank adapters (A random, B zero) on the chosen linear modules of the layers
 * (Mamba-2's in_proj, attention's q/k/v/o_proj, the MLP's and the shared expert's up/down_proj, the latent
 * projections), the base frozen. Not Mamba-2's out_proj (nor conv1d): PEFT refuses them for Mamba models, whose fused
 * kernels bypass the modules. Trains with the Trainer; savePretrained writes adapter_config.json and
 * adapter_model.safetensors under PEFT's names, which PeftModel.from_pretrained loads onto transformers' model.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { writeSafetensors } from '../../src/io/safetensors';
import { loadAdapterWeights } from '../../src/training/lora';
import { ggufNameOf, hfNameOfNemotronHGGUF, permuteRows } from '../../src/io/gguf-nemotron-h';
import { readLoraGGUF, writeLoraGGUF } from '../../src/io/gguf-lora';
import type { NemotronHForCausalLM } from './model';

/** The linear modules LoRA can adapt, by their last name (PEFT's target_modules). */
export const NEMOTRON_H_LORA_MODULES = ['in_proj', 'q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj', 'fc1_latent_proj', 'fc2_latent_proj'];

export interface NemotronHLoraConfig {
  r: number;
  loraAlpha: number;
  /** Module names (NEMOTRON_H_LORA_MODULES) or 'all-linear' (all of them; not lm_head, as PEFT). */
  targetModules: string[] | 'all-linear';
  /** Seed of A's initialisation (PEFT's kaiming-uniform bound, 1/√in). */
  seed?: number;
}

export class NemotronHLoraModel {
  readonly scaling: number;
  private readonly frozen: tf.Variable[];

  private constructor(readonly model: NemotronHForCausalLM, readonly loraConfig: NemotronHLoraConfig) {
    this.scaling = loraConfig.loraAlpha / loraConfig.r;
    this.frozen = [...model.weights.values()].filter((v) => v.trainable);
  }

  get config(): NemotronHForCausalLM['config'] {
    return this.model.config;
  }

  /** Attaches new adapters (the model's outputs do not change until they train). */
  static attach(model: NemotronHForCausalLM, config: NemotronHLoraConfig): NemotronHLoraModel {
    if (!(Number.isInteger(config.r) && config.r > 0)) throw new Error(`LoRA r must be a positive integer, got ${config.r}`);
    if (!(config.loraAlpha > 0)) throw new Error(`LoRA loraAlpha must be > 0, got ${config.loraAlpha}`);
    const targets = config.targetModules === 'all-linear' ? NEMOTRON_H_LORA_MODULES : config.targetModules;
    for (const t of targets) {
      if (t === 'out_proj' || t === 'conv1d') throw new Error(`LoRA target module ${JSON.stringify(t)}: PEFT refuses it for Mamba-based models (model_type nemotron_h), whose fused kernels bypass it`);
      if (!NEMOTRON_H_LORA_MODULES.includes(t)) throw new Error(`LoRA target module ${JSON.stringify(t)} is not a linear module of a NemotronH layer; expected some of ${NEMOTRON_H_LORA_MODULES.join(', ')} or 'all-linear'`);
    }
    if (model.adapters.size) throw new Error('This model has LoRA adapters already: mergeAndUnload() or unload() them first');
    const lora = new NemotronHLoraModel(model, { ...config, targetModules: targets });
    const random = seedrandom(String(config.seed ?? 0));
    for (const [name, weight] of model.weights) {
      const m = /^(model\.layers\.\d+\.mixer\.(?:shared_experts\.)?(\w+))\.weight$/.exec(name);
      if (!m || !targets.includes(m[2]) || weight.rank !== 2) continue;
      const [out, inp] = weight.shape as [number, number];
      const bound = 1 / Math.sqrt(inp);
      const a = Float32Array.from({ length: config.r * inp }, () => (random() * 2 - 1) * bound);
      const [initA, initB] = [tf.tensor2d(a, [config.r, inp]), tf.zeros([out, config.r])];
      model.adapters.set(m[1], { A: tf.variable(initA), B: tf.variable(initB), scaling: lora.scaling });
      tf.dispose([initA, initB]);
    }
    if (model.adapters.size === 0) throw new Error(`LoRA targetModules ${JSON.stringify(config.targetModules)} match no module of this model`);
    lora.frozen.forEach((v) => { v.trainable = false; });
    return lora;
  }

  /**
   * Loads a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) onto the model, as
   * PeftModel.from_pretrained: plain LoRA on the modules `attach` takes; variants that change the computation refused.
   */
  static async fromPretrained(model: NemotronHForCausalLM, dir: string): Promise<NemotronHLoraModel> {
    const configPath = path.join(dir, 'adapter_config.json');
    if (!fs.existsSync(configPath)) throw new Error(`No adapter_config.json in ${dir}: not a PEFT adapter folder`);
    const raw = JSON.parse(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    if (raw.peft_type !== 'LORA') throw new Error(`${configPath}: peft_type ${JSON.stringify(raw.peft_type)}, only LORA is supported`);
    for (const key of ['use_dora', 'use_rslora', 'fan_in_fan_out', 'lora_bias']) {
      if (raw[key] === true) throw new Error(`${configPath}: ${key} = true is not supported by NemotronH's LoRA`);
    }
    if (raw.modules_to_save) throw new Error(`${configPath}: modules_to_save ${JSON.stringify(raw.modules_to_save)} is not supported by NemotronH's LoRA`);
    const targets = raw.target_modules === 'all-linear' ? 'all-linear' : raw.target_modules as string[];
    if (!Array.isArray(targets) && targets !== 'all-linear') throw new Error(`${configPath}: target_modules ${JSON.stringify(raw.target_modules)}: expected module names or 'all-linear'`);
    const lora = NemotronHLoraModel.attach(model, { r: raw.r as number, loraAlpha: raw.lora_alpha as number, targetModules: targets });
    try {
      loadAdapterWeights(path.join(dir, 'adapter_model.safetensors'), lora.namedParameters());
    } catch (e) {
      lora.unload();
      throw e;
    }
    return lora;
  }

  /**
   * A GGUF LoRA adapter (llama.cpp's --lora file, e.g. from saveGGUF) attached to the model: the modules it adapts
   * (q/k's B rows put back in transformers' order), with llama.cpp's scaling alpha / r.
   */
  static async fromGGUF(model: NemotronHForCausalLM, file: string): Promise<NemotronHLoraModel> {
    const { alpha, rank, pairs } = readLoraGGUF(file, ['nemotron_h', 'nemotron_h_moe']);
    const modules = pairs.map((p) => {
      const hf = hfNameOfNemotronHGGUF(p.name);
      if (!hf || !hf.endsWith('.weight')) throw new Error(`${file}: ${p.name} is not a weight of a NemotronH model`);
      return hf.slice(0, -'.weight'.length);
    });
    const leaves = [...new Set(modules.map((m) => m.slice(m.lastIndexOf('.') + 1)))];
    const lora = NemotronHLoraModel.attach(model, { r: rank, loraAlpha: alpha || rank, targetModules: leaves });
    // attach adapts every module of those names: keep exactly the file's.
    for (const [module, { A, B }] of [...model.adapters]) {
      if (!modules.includes(module)) { tf.dispose([A, B]); model.adapters.delete(module); }
    }
    const c = model.config;
    try {
      pairs.forEach((p, i) => {
        const adapter = model.adapters.get(modules[i]);
        if (!adapter) throw new Error(`${file}: ${p.name} matches no module LoRA adapts in this model`);
        let b = p.b.data;
        if (modules[i].endsWith('.mixer.q_proj')) b = permuteRows(b, p.b.shape[0], c.numAttentionHeads, true);
        else if (modules[i].endsWith('.mixer.k_proj')) b = permuteRows(b, p.b.shape[0], c.numKeyValueHeads, true);
        for (const [variable, value, data] of [[adapter.A, p.a, p.a.data], [adapter.B, p.b, b]] as const) {
          if (variable.shape.join() !== value.shape.join()) throw new Error(`${file}: ${p.name} has [${value.shape}] where this model's adapter is [${variable.shape}]`);
          tf.tidy(() => variable.assign(tf.tensor(data, value.shape, 'float32')));
        }
      });
    } catch (e) {
      lora.unload();
      throw e;
    }
    return lora;
  }

  /** The adapters under PEFT's names (`base_model.model.model.layers.0.mixer.in_proj.lora_A.weight`). */
  namedParameters(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    for (const [module, { A, B }] of this.model.adapters) {
      out.set(`base_model.model.${module}.lora_A.weight`, A);
      out.set(`base_model.model.${module}.lora_B.weight`, B);
    }
    return out;
  }

  computeLoss(inputs: Parameters<NemotronHForCausalLM['computeLoss']>[0]): tf.Scalar {
    return this.model.computeLoss(inputs);
  }

  get isGradientCheckpointing(): boolean {
    return false;
  }

  gradientCheckpointingEnable(): void {
    this.model.gradientCheckpointingEnable();
  }

  /** adapter_config.json and adapter_model.safetensors, as PEFT's save_pretrained writes them. */
  async savePretrained(dir: string): Promise<void> {
    fs.mkdirSync(dir, { recursive: true });
    const tensors = await Promise.all([...this.namedParameters()].map(async ([name, v]) => ({
      name, dtype: 'F32' as const, shape: v.shape, data: await v.data() as Float32Array,
    })));
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
    const config = {
      peft_type: 'LORA', task_type: 'CAUSAL_LM', r: this.loraConfig.r, lora_alpha: this.loraConfig.loraAlpha, lora_dropout: 0,
      target_modules: this.loraConfig.targetModules, bias: 'none', fan_in_fan_out: false, use_rslora: false, inference_mode: true,
      base_model_name_or_path: null, modules_to_save: null,
    };
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), `${JSON.stringify(config, null, 2)}\n`);
  }

  /**
   * The adapters as a GGUF LoRA file for llama.cpp (`--lora FILE` beside the base model's GGUF): llama.cpp's names,
   * q/k's B rows permuted as the converter permutes those weights' rows.
   */
  async saveGGUF(file: string, options: { type?: 'F32' | 'F16'; name?: string } = {}): Promise<void> {
    const c = this.model.config;
    const pairs = [];
    for (const module of [...this.model.adapters.keys()].sort()) {
      const { A, B } = this.model.adapters.get(module)!;
      let b = await B.data() as Float32Array;
      if (module.endsWith('.mixer.q_proj')) b = permuteRows(b, B.shape[0], c.numAttentionHeads, false);
      else if (module.endsWith('.mixer.k_proj')) b = permuteRows(b, B.shape[0], c.numKeyValueHeads, false);
      pairs.push({ name: ggufNameOf(`${module}.weight`), a: { shape: A.shape, data: await A.data() as Float32Array }, b: { shape: B.shape, data: b } });
    }
    writeLoraGGUF(file, c.layerTypes.includes('moe') ? 'nemotron_h_moe' : 'nemotron_h', this.loraConfig.loraAlpha, pairs, options);
  }

  /** Folds the adapters into the weights (W += scaling·B·A) and detaches them. */
  mergeAndUnload(): NemotronHForCausalLM {
    for (const [module, { A, B, scaling }] of this.model.adapters) {
      const weight = this.model.weights.get(`${module}.weight`)!;
      const merged = tf.tidy(() => tf.add(weight, tf.mul(tf.matMul(B, A), scaling)));
      weight.assign(merged);
      merged.dispose();
    }
    return this.unload();
  }

  /** Detaches the adapters (the base as it was); the base's weights train again. */
  unload(): NemotronHForCausalLM {
    for (const { A, B } of this.model.adapters.values()) tf.dispose([A, B]);
    this.model.adapters.clear();
    this.frozen.forEach((v) => { v.trainable = true; });
    return this.model;
  }
}
