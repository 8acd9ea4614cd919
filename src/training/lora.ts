import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import type { HeadOutputs } from './metrics';
import { LoraAdapter } from '../../layers/lora';
import { blockOf } from '../../layers/vocab-matrix';
import { HeadInputs } from '../../models/nemotron/heads';
import { NemotronModel } from '../../models/nemotron/model';
import { NemotronPreTrainedModel } from '../../models/nemotron/pretrained';
import { NemotronConfig } from '../../models/nemotron/config';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors';
import { hfNameOfGGUF, nemotronGGUFName } from '../io/gguf';
import { readLoraGGUF, writeLoraGGUF } from '../io/gguf-lora';

export const ADAPTER_CONFIG_NAME = 'adapter_config.json';
export const ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors';

/** The projections LoRA can adapt, by the names PEFT's target_modules use. */
const ATTENTION_PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
const MLP_PROJECTIONS = ['up_proj', 'down_proj'];
const PROJECTIONS = [...ATTENTION_PROJECTIONS, ...MLP_PROJECTIONS];

/** PEFT's LoraConfig fields this implementation takes (camelCase; adapter_config.json holds them snake_case). */
export interface LoraConfig {
  r: number;
  loraAlpha: number;
  /**
   * Projection names (q_proj, k_proj, v_proj, o_proj, up_proj, down_proj); 'all-linear' for all six; or, as PEFT, any
   * other string is a regular expression that must match a module's whole name (`model.layers.0.self_attn.q_proj`).
   */
  targetModules: string[] | string;
  loraDropout?: number;
  /** scaling = loraAlpha / √r instead of loraAlpha / r. */
  useRslora?: boolean;
  /** Only these decoder layers (PEFT's layers_to_transform); default all. */
  layersToTransform?: number[];
  /** Seed of A's initialisation. */
  seed?: number;
  /**
   * Head modules trained whole and saved with the adapter (PEFT's modules_to_save): `score`, `qa_outputs`,
   * `lm_head`. Names the model lacks are ignored, as PEFT does. Default: the head of a classification or QA model
   * (what PEFT's task types SEQ_CLS, TOKEN_CLS and QUESTION_ANS add), none for a causal LM.
   */
  modulesToSave?: string[];
}

/** A head or base model with computeLoss: what LoraModel wraps (every Nemotron class but the base has one). */
type AdaptableModel = NemotronPreTrainedModel & { computeLoss?(inputs: HeadInputs): tf.Scalar };

/** The NemotronModel inside a head (its `model`), or the model itself. */
function baseOf(model: AdaptableModel): NemotronModel {
  return model instanceof NemotronModel ? model : (model as unknown as { model: NemotronModel }).model;
}

/** The head modules PEFT's task types train whole (modules_to_save) by default. */
const DEFAULT_MODULES_TO_SAVE: Record<string, string[]> = {
  NemotronForSequenceClassification: ['score'], NemotronForTokenClassification: ['score'], NemotronForQuestionAnswering: ['qa_outputs'],
};

/** PEFT's task_type for a Nemotron class. */
const TASK_TYPES: Record<string, string> = {
  NemotronForCausalLM: 'CAUSAL_LM', NemotronForSequenceClassification: 'SEQ_CLS', NemotronForTokenClassification: 'TOKEN_CLS',
  NemotronForQuestionAnswering: 'QUESTION_ANS', NemotronModel: 'FEATURE_EXTRACTION',
};

/**
 * LoRA fine-tuning as PEFT does it (get_peft_model / PeftModel.from_pretrained): low-rank adapters on the chosen linear
 * projections of the decoder layers, the base weights frozen. Trains with the Trainer like a model (its
 * namedParameters are the adapters', under PEFT's names); savePretrained writes adapter_config.json and
 * adapter_model.safetensors, which PEFT loads onto the transformers model, and fromPretrained reads them back.
 * mergeAndUnload() folds the adapters into the weights (the model then runs at full speed, compiled decoding step
 * included) and detaches them.
 */
export class LoraModel {
  readonly config: NemotronConfig;
  readonly scaling: number;
  /** Adapters by PEFT module path (`base_model.model.model.layers.0.self_attn.q_proj`). */
  private readonly adapters = new Map<string, LoraAdapter>();
  /** The base's variables that were trainable before (frozen while adapters are attached). */
  private readonly frozen: tf.Variable[];
  /** modules_to_save: the head parameters that train, by PEFT name, with their values before (unload restores them). */
  private readonly saved = new Map<string, { variable: tf.Variable; original: tf.Tensor }>();

  private constructor(readonly model: AdaptableModel, readonly loraConfig: Required<Omit<LoraConfig, 'seed' | 'layersToTransform'>> & LoraConfig) {
    this.config = model.config;
    const { r, loraAlpha, useRslora } = loraConfig;
    this.scaling = useRslora ? loraAlpha / Math.sqrt(r) : loraAlpha / r;
    this.frozen = [...model.namedParameters().values()].filter((v) => v.trainable);
  }

  /** Attaches new adapters (A random, B zero: the model's outputs are unchanged until trained). */
  static attach(model: AdaptableModel, config: LoraConfig): LoraModel {
    const targets = config.targetModules === 'all-linear' ? PROJECTIONS : config.targetModules;
    if (Array.isArray(targets)) {
      if (targets.length === 0) throw new Error('LoRA targetModules: an empty list adapts nothing');
      for (const t of targets) {
        if (!PROJECTIONS.includes(t)) throw new Error(`LoRA target module ${JSON.stringify(t)} is not a projection of a Nemotron layer; expected one of ${PROJECTIONS.join(', ')} or 'all-linear'`);
      }
    } else if (typeof targets !== 'string') {
      throw new Error('LoRA targetModules: expected projection names, \'all-linear\' or a regular expression');
    }
    if (!(typeof config.loraAlpha === 'number' && config.loraAlpha > 0)) throw new Error(`LoRA loraAlpha must be > 0, got ${config.loraAlpha}`);
    const base = baseOf(model);
    const layerCount = base.layers.length;
    const layers = config.layersToTransform ?? Array.from({ length: layerCount }, (_, i) => i);
    for (const i of layers) if (!(Number.isInteger(i) && i >= 0 && i < layerCount)) throw new Error(`LoRA layersToTransform: ${i} is not a layer index in [0, ${layerCount})`);
    if (base.layers.some((layer) => layer.adapterVariables().length > 0)) throw new Error('This model has LoRA adapters already: mergeAndUnload() or unload() them first');
    // A regular expression matches whole module names, as PEFT's re.fullmatch.
    const pattern = Array.isArray(targets) ? null : new RegExp(`^(?:${targets})$`);
    const modules = (i: number) => PROJECTIONS.filter((name) => (pattern
      ? pattern.test(`${model.basePrefix}layers.${i}.${ATTENTION_PROJECTIONS.includes(name) ? 'self_attn' : 'mlp'}.${name}`)
      : (targets as string[]).includes(name)));
    if (layers.every((i) => modules(i).length === 0)) throw new Error(`LoRA targetModules ${JSON.stringify(targets)} match no projection of this model`);
    // modules_to_save: the head's own parameters (HF names `score.weight`, …) stay trainable and travel with the adapter.
    const toSave = config.modulesToSave ?? DEFAULT_MODULES_TO_SAVE[model.constructor.name] ?? [];
    const toTrainWhole = [...model.namedParameters()].filter(([name]) => toSave.includes(name.slice(0, name.lastIndexOf('.'))));
    for (const [name] of toTrainWhole) {
      if (blockOf(name)) throw new Error(`LoRA modulesToSave: ${name.slice(0, name.lastIndexOf('.'))} is stored in row blocks on this backend (over its binding limit); saving it whole beside an adapter is not supported`);
    }
    const lora = new LoraModel(model, {
      loraDropout: 0, useRslora: false, ...config, targetModules: targets, modulesToSave: toSave,
    });
    let seed = config.seed;
    for (const i of layers) {
      const layer = base.layers[i];
      for (const name of modules(i)) {
        const weight = layer.namedWeights().find(([n]) => n.endsWith(`${name}.weight`))![1];
        const [outFeatures, inFeatures] = weight.shape;
        const adapter = new LoraAdapter(inFeatures, outFeatures, config.r, lora.scaling, lora.loraConfig.loraDropout, seed);
        if (seed !== undefined) seed++;
        (ATTENTION_PROJECTIONS.includes(name) ? layer.selfAttn.adapters : layer.mlp.adapters).set(name, adapter);
        lora.adapters.set(lora.modulePath(i, name), adapter);
      }
    }
    for (const [name, variable] of toTrainWhole) lora.saved.set(`base_model.model.${name}`, { variable, original: tf.keep(variable.clone()) });
    for (const v of lora.frozen) v.trainable = [...lora.saved.values()].some((s) => s.variable === v);
    return lora;
  }

  /** PEFT's PeftModel.from_pretrained(model, dir): adapter_config.json and adapter_model.safetensors onto `model`. */
  static async fromPretrained(model: AdaptableModel, dir: string): Promise<LoraModel> {
    const configPath = path.join(dir, ADAPTER_CONFIG_NAME);
    if (!fs.existsSync(configPath)) throw new Error(`No ${ADAPTER_CONFIG_NAME} in ${dir}: not a PEFT adapter folder`);
    const raw = JSON.parse(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    if (raw.peft_type !== 'LORA') throw new Error(`${configPath}: peft_type ${JSON.stringify(raw.peft_type)}, only LORA is supported`);
    // Variants that change the computation and are not implemented: refused rather than silently ignored.
    const unsupported: Array<[string, (v: unknown) => boolean]> = [
      ['use_dora', (v) => v === true], ['fan_in_fan_out', (v) => v === true], ['bias', (v) => v !== undefined && v !== 'none'],
      ['lora_bias', (v) => v === true], ['modules_to_save', (v) => v !== undefined && v !== null && !(Array.isArray(v) && v.every((m) => typeof m === 'string'))],
      ['rank_pattern', (v) => !!v && Object.keys(v as object).length > 0], ['alpha_pattern', (v) => !!v && Object.keys(v as object).length > 0],
      ['layer_replication', (v) => v !== undefined && v !== null], ['exclude_modules', (v) => v !== undefined && v !== null],
    ];
    for (const [key, bad] of unsupported) {
      if (bad(raw[key])) throw new Error(`${configPath}: ${key} = ${JSON.stringify(raw[key])} is not supported by this LoRA implementation`);
    }
    const targets = raw.target_modules as string[] | string;
    const layersToTransform = typeof raw.layers_to_transform === 'number' ? [raw.layers_to_transform] : raw.layers_to_transform as number[] | null;
    const lora = LoraModel.attach(model, {
      r: raw.r as number, loraAlpha: raw.lora_alpha as number, targetModules: targets, loraDropout: (raw.lora_dropout as number) ?? 0,
      useRslora: raw.use_rslora === true, layersToTransform: layersToTransform ?? undefined, modulesToSave: (raw.modules_to_save as string[] | null) ?? [],
    });
    try {
      loadAdapterWeights(path.join(dir, ADAPTER_WEIGHTS_NAME), lora.namedParameters());
    } catch (e) {
      lora.unload();
      throw e;
    }
    return lora;
  }

  /** `base_model.model.` + the module's path in the transformers model. */
  private modulePath(layer: number, projection: string): string {
    const part = ATTENTION_PROJECTIONS.includes(projection) ? 'self_attn' : 'mlp';
    return `base_model.model.${this.model.basePrefix}layers.${layer}.${part}.${projection}`;
  }

  /**
   * The trained parameters under PEFT's checkpoint names: the adapters' (`….q_proj.lora_A.weight`, `….lora_B.weight`)
   * and the modules to save (`base_model.model.score.weight`).
   */
  namedParameters(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    for (const [module, adapter] of this.adapters) {
      out.set(`${module}.lora_A.weight`, adapter.a);
      out.set(`${module}.lora_B.weight`, adapter.b);
    }
    for (const [name, { variable }] of this.saved) out.set(name, variable);
    return out;
  }

  numParameters(): number {
    return [...this.namedParameters().values()].reduce((n, v) => n + v.size, 0);
  }

  /** The wrapped model's forward (adapters included). */
  forward(inputs: HeadInputs): HeadOutputs {
    return (this.model as unknown as { forward(inputs: HeadInputs): HeadOutputs }).forward(inputs);
  }

  /** The wrapped model's loss (adapters included): what the Trainer minimises. */
  computeLoss(inputs: HeadInputs): tf.Scalar {
    if (!this.model.computeLoss) throw new Error(`${this.model.constructor.name} has no loss: LoRA training needs a head`);
    return this.model.computeLoss(inputs);
  }

  gradientCheckpointingEnable(): void {
    this.model.gradientCheckpointingEnable();
  }

  get isGradientCheckpointing(): boolean {
    return this.model.isGradientCheckpointing;
  }

  /** adapter_config.json (PEFT's LoraConfig fields) and adapter_model.safetensors, as PEFT's save_pretrained writes. */
  async savePretrained(dir: string): Promise<void> {
    fs.mkdirSync(dir, { recursive: true });
    const c = this.loraConfig;
    const adapterConfig = {
      peft_type: 'LORA', task_type: TASK_TYPES[this.model.constructor.name] ?? null, r: c.r, lora_alpha: c.loraAlpha,
      target_modules: c.targetModules, lora_dropout: c.loraDropout, use_rslora: c.useRslora, bias: 'none', fan_in_fan_out: false,
      layers_to_transform: c.layersToTransform ?? null, modules_to_save: c.modulesToSave?.length ? c.modulesToSave : null, init_lora_weights: true, inference_mode: true,
      use_dora: false, rank_pattern: {}, alpha_pattern: {}, base_model_name_or_path: null,
    };
    fs.writeFileSync(path.join(dir, ADAPTER_CONFIG_NAME), JSON.stringify(adapterConfig, null, 2) + '\n');
    const tensors = [];
    for (const [name, v] of this.namedParameters()) tensors.push({ name, dtype: 'F32' as const, shape: v.shape, data: await v.data() as Float32Array });
    writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_NAME), tensors, { format: 'pt' });
  }

  /**
   * A GGUF LoRA adapter (llama.cpp's --lora file, e.g. from convert_lora_to_gguf.py) attached to a causal LM: the
   * modules it adapts, with llama.cpp's scaling alpha / r (an rsLoRA adapter written by saveGGUF carries alpha·√r).
   */
  static async fromGGUF(model: AdaptableModel, file: string): Promise<LoraModel> {
    const { alpha, rank, pairs } = readLoraGGUF(file, ['nemotron']);
    const modules = pairs.map((p) => {
      const hf = hfNameOfGGUF(p.name);
      if (!hf || !hf.endsWith('.weight') || !/\.(self_attn|mlp)\.\w+_proj\.weight$/.test(hf)) throw new Error(`${file}: ${p.name} is not a projection LoRA adapts`);
      return hf.slice(0, -'.weight'.length);
    });
    // Exactly these modules: a pattern of their whole names (PEFT's regex targets).
    const pattern = modules.map((m) => m.replace(/\./g, '\\.')).join('|');
    const lora = LoraModel.attach(model, { r: rank, loraAlpha: alpha || rank, targetModules: pattern });
    try {
      const params = lora.namedParameters();
      pairs.forEach((p, i) => {
        const prefix = `base_model.model.${modules[i]}`;
        for (const [suffix, value] of [['lora_A', p.a], ['lora_B', p.b]] as const) {
          const variable = params.get(`${prefix}.${suffix}.weight`);
          if (!variable) throw new Error(`${file}: ${p.name} matches no module of this model`);
          if (variable.shape.join() !== value.shape.join()) throw new Error(`${file}: ${p.name}'s ${suffix} has shape [${value.shape}], this model's [${variable.shape}]`);
          tf.tidy(() => variable.assign(tf.tensor(value.data, value.shape, 'float32')));
        }
      });
    } catch (e) {
      lora.unload();
      throw e;
    }
    return lora;
  }

  /**
   * The adapters as a GGUF LoRA file for llama.cpp (`--lora FILE` beside the base model's GGUF), as its
   * convert_lora_to_gguf.py writes this adapter: a causal LM's adapters only (llama.cpp carries no modules to save);
   * an rsLoRA adapter's alpha written as alpha·√r, since llama.cpp scales by alpha / r.
   */
  async saveGGUF(file: string, options: { type?: 'F32' | 'F16'; name?: string } = {}): Promise<void> {
    if (TASK_TYPES[this.model.constructor.name] !== 'CAUSAL_LM') {
      throw new Error(`saveGGUF: llama.cpp's LoRA adapters are for causal LMs; this one adapts a ${this.model.constructor.name}`);
    }
    const c = this.loraConfig;
    if (this.saved.size) throw new Error(`saveGGUF: llama.cpp's LoRA files carry no modules_to_save (${[...this.saved.keys()].join(', ')})`);
    // convert_lora_to_gguf's order: the adapter checkpoint's names sorted, A and B of a module together.
    const modules = [...this.adapters.keys()].sort();
    const pairs = [];
    for (const module of modules) {
      const adapter = this.adapters.get(module)!;
      pairs.push({
        name: nemotronGGUFName(`${module.slice('base_model.model.'.length)}.weight`),
        a: { shape: adapter.a.shape, data: await adapter.a.data() as Float32Array },
        b: { shape: adapter.b.shape, data: await adapter.b.data() as Float32Array },
      });
    }
    writeLoraGGUF(file, 'nemotron', c.useRslora ? c.loraAlpha * Math.sqrt(c.r) : c.loraAlpha, pairs, options);
  }

  /**
   * W += scaling·B·A for every adapter, then detaches them (PEFT's merge_and_unload: the modules to save keep their
   * trained values); returns the model.
   */
  mergeAndUnload(): AdaptableModel {
    const base = baseOf(this.model);
    for (const [module, adapter] of this.adapters) {
      const [, layer, , projection] = /layers\.(\d+)\.(self_attn|mlp)\.(\w+)$/.exec(module)!;
      const weight = base.layers[Number(layer)].namedWeights().find(([n]) => n.endsWith(`${projection}.weight`))![1];
      tf.tidy(() => weight.assign(tf.add(weight, adapter.weightDelta())));
    }
    for (const entry of this.saved.values()) entry.original.dispose();
    this.saved.clear();
    return this.unload();
  }

  /** Detaches and frees the adapters without merging (the model as it was before, modules to save restored); returns the model. */
  unload(): AdaptableModel {
    for (const { variable, original } of this.saved.values()) {
      variable.assign(original);
      original.dispose();
    }
    this.saved.clear();
    for (const layer of baseOf(this.model).layers) {
      layer.selfAttn.adapters.clear();
      layer.mlp.adapters.clear();
    }
    for (const adapter of this.adapters.values()) adapter.dispose();
    this.adapters.clear();
    for (const v of this.frozen) v.trainable = true;
    return this.model;
  }
}

/**
 * An adapter checkpoint's tensors (adapter_model.safetensors) into the attached adapters' variables, by PEFT name:
 * every variable must be there with its shape, and nothing else may be.
 */
export function loadAdapterWeights(file: string, params: Map<string, tf.Variable>): void {
  const weights = SafetensorsFile.open(file);
  const fileName = path.basename(file);
  try {
    const extra = weights.names().filter((k) => !params.has(k));
    if (extra.length) throw new Error(`${fileName} has tensors no adapter of this config takes: ${extra.slice(0, 4).join(', ')}${extra.length > 4 ? ', …' : ''}`);
    for (const [name, variable] of params) {
      if (!weights.has(name)) throw new Error(`${fileName} lacks ${name}`);
      const t = weights.read(name);
      if (t.shape.join() !== variable.shape.join()) throw new Error(`${fileName}: ${name} has shape [${t.shape}], expected [${variable.shape}]`);
      tf.tidy(() => variable.assign(tf.tensor(t.data, t.shape, 'float32')));
    }
  } finally {
    weights.close();
  }
}
