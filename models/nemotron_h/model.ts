/**
 * NemotronH (Nemotron-H, Nemotron Nano 2): a stack of pre-norm residual blocks whose mixer is a Mamba-2 block, an
 * attention block (no position embedding) or a relu² MLP, as transformers' modeling_nemotron_h computes it.
 *
 * A prompt pass runs the Mamba-2 scan in chunks (ssdScan: the recurrence h_t = exp(Δt·A)·h_{t-1} + Δt·x_t·B_tᵀ,
 * y_t = h_t·C_t + D·x_t in blocks, as transformers' torch path computes it), from nothing or from a kept state, and
 * leaves each layer's state; a decoding step updates it (the convolution's window, the SSM state, the attention keys
 * and values) as transformers' cache does — on the native backend as one compiled graph (nemotron-h-graph.ts).
 */
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { type CheckpointTensor, CheckpointReader, type SaveCheckpointOptions, saveCheckpoint } from '../../src/io/checkpoint';
import { type GGUFVocabularySource, type GGUFWriteType, isGGUF } from '../../src/io/gguf';
import { NemotronHGGUF, writeNemotronHGGUF } from '../../src/io/gguf-nemotron-h';
import { type TensorTypeOverrides } from '../../src/io/gguf-quantize';
import { type ImatrixSource, resolveImatrix } from '../../src/io/imatrix';
import seedrandom from 'seedrandom';
import { crossEntropy } from '../../src/losses';
import { type ProcessorOptions, argmax, processScores, sample } from '../../src/generation/processors';
import { MLP_KERNEL, NEMOTRON_H_MAMBA_STEP_KERNEL, NEMOTRON_H_STEP_KERNEL, RMS_NORM_KERNEL, fusedKernelApplies, recordingGradients } from '../../src/kernels/fused';
import { recomputeInBackward } from '../../src/training/checkpointing';
import { initDeferred, linear, observeProduct, observingProducts } from '../../layers/weights';
import { type NemotronHStepSpec, nemotronHStepInputs, nemotronHStepSpec } from '../../src/kernels/nemotron-h-graph';
import { DecodeGraphError, decodeStepFits } from '../../src/kernels/tensorflow-graph';
import { NemotronHConfig } from './config';

/** What a pass leaves for the next: per layer, the Mamba convolution window and SSM state, or attention's keys and values. */
export interface NemotronHState {
  layers: Array<{ conv: tf.Tensor3D; ssm: tf.Tensor4D } | { keys: tf.Tensor4D; values: tf.Tensor4D } | null>;
  /** Each row's attention mask over every position so far. */
  mask: number[][];
}

const softplus = (x: tf.Tensor) => tf.softplus(x);

/** Where savePretrained's config.json text gets time_step_limit, written by hand. */
const TIME_STEP_LIMIT = '<time_step_limit>';

function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  // One program where the backend has one (WebGPU), at inference.
  if (fusedKernelApplies(RMS_NORM_KERNEL)) return tf.engine().runKernel(RMS_NORM_KERNEL, { x, weight }, { eps }) as tf.Tensor;
  const variance = tf.mean(tf.square(x), -1, true);
  return tf.mul(weight, tf.mul(x, tf.rsqrt(tf.add(variance, eps))));
}

/** What a pass's Mamba-2 layers' recurrences took at each of its positions (forward's keepSteps), by layer. */
export interface NemotronHSteps {
  layers: Array<{ inputs: tf.Tensor3D; x: tf.Tensor4D; dt: tf.Tensor3D; B: tf.Tensor4D } | null>;
  /** Positions of the pass. */
  length: number;
}

/** Frees a pass's kept steps. */
export function disposeSteps(steps: NemotronHSteps): void {
  for (const layer of steps.layers) if (layer) tf.dispose(Object.values(layer));
}

export class NemotronHForCausalLM {
  readonly weights = new Map<string, tf.Variable>();
  /** generation_config.json of the checkpoint (what generate() and the server take defaults from), or null. */
  generationConfig: Record<string, unknown> | null = null;
  /**
   * Where a mixture-of-experts layer chooses its experts: 'auto' (on the device where the backend cannot read tensors
   * synchronously — WebGPU —, else on the host), 'host', or on the device by 'device-gather' / 'device-dense'
   * (see moeOnDevice; 'device' picks by moeGatherLimitBytes).
   */
  moeRouting: 'auto' | 'host' | 'device' | 'device-gather' | 'device-dense' = 'auto';
  /** On the device, the gathered experts' matrices above which every expert runs on every token instead. */
  moeGatherLimitBytes = 256 * 2 ** 20;
  /** Where a pass with keepSteps puts its Mamba-2 layers' step inputs (by layer prefix), while it runs. */
  private stepSink: Map<string, NemotronHSteps['layers'][number]> | null = null;
  /** LoRA adapters by module name (`model.layers.0.mixer.in_proj`), while a NemotronHLoraModel is attached. */
  readonly adapters = new Map<string, { A: tf.Variable; B: tf.Variable; scaling: number }>();

  constructor(readonly config: NemotronHConfig, weights?: Map<string, tf.Tensor>) {
    for (const [name, shape] of this.expectedShapes()) {
      const given = weights?.get(name);
      if (given && given.shape.join() !== shape.join()) throw new Error(`NemotronH: ${name} has shape [${given.shape}], expected [${shape}]`);
      // Under withDeferredInit (weights filled afterwards: a checkpoint, or a benchmark's own draws) zeros, not draws.
      // The router's correction bias is a buffer (set in training by the load balancing, not by the loss), zeros at
      // first as transformers registers it.
      const buffer = name.endsWith('e_score_correction_bias');
      const value = given ?? (initDeferred() || buffer ? tf.zeros(shape) : tf.randomNormal(shape, 0, 0.02));
      this.weights.set(name, tf.variable(value, !buffer));
      if (!given) value.dispose();
    }
  }

  /** transformers' parameter names and shapes (conv1d.weight as [channels, kernel], the checkpoint's [channels, 1, kernel] squeezed). */
  private expectedShapes(): Array<[string, number[]]> {
    const c = this.config;
    const out: Array<[string, number[]]> = [['model.embeddings.weight', [c.vocabSize, c.hiddenSize]]];
    c.layerTypes.forEach((type, i) => {
      const p = `model.layers.${i}`;
      out.push([`${p}.norm.weight`, [c.hiddenSize]]);
      if (type === 'mamba') {
        const inner = c.mambaIntermediateSize;
        out.push([`${p}.mixer.in_proj.weight`, [inner + c.convDim + c.mambaNumHeads, c.hiddenSize]],
          [`${p}.mixer.conv1d.weight`, [c.convDim, c.convKernel]], [`${p}.mixer.dt_bias`, [c.mambaNumHeads]], [`${p}.mixer.A_log`, [c.mambaNumHeads]],
          [`${p}.mixer.D`, [c.mambaNumHeads]], [`${p}.mixer.norm.weight`, [inner]], [`${p}.mixer.out_proj.weight`, [c.hiddenSize, inner]]);
        if (c.useConvBias) out.push([`${p}.mixer.conv1d.bias`, [c.convDim]]);
        if (c.useBias) out.push([`${p}.mixer.in_proj.bias`, [inner + c.convDim + c.mambaNumHeads]], [`${p}.mixer.out_proj.bias`, [c.hiddenSize]]);
      } else if (type === 'attention') {
        out.push([`${p}.mixer.q_proj.weight`, [c.numAttentionHeads * c.headDim, c.hiddenSize]], [`${p}.mixer.k_proj.weight`, [c.numKeyValueHeads * c.headDim, c.hiddenSize]],
          [`${p}.mixer.v_proj.weight`, [c.numKeyValueHeads * c.headDim, c.hiddenSize]], [`${p}.mixer.o_proj.weight`, [c.hiddenSize, c.numAttentionHeads * c.headDim]]);
      } else if (type === 'moe') {
        const width = c.moeLatentSize ?? c.hiddenSize;
        out.push([`${p}.mixer.gate.weight`, [c.nRoutedExperts, c.hiddenSize]], [`${p}.mixer.gate.e_score_correction_bias`, [c.nRoutedExperts]],
          [`${p}.mixer.experts.up_proj`, [c.nRoutedExperts, c.moeIntermediateSize, width]], [`${p}.mixer.experts.down_proj`, [c.nRoutedExperts, width, c.moeIntermediateSize]],
          [`${p}.mixer.shared_experts.up_proj.weight`, [c.moeSharedExpertIntermediateSize, c.hiddenSize]],
          [`${p}.mixer.shared_experts.down_proj.weight`, [c.hiddenSize, c.moeSharedExpertIntermediateSize]]);
        if (c.mlpBias) out.push([`${p}.mixer.shared_experts.up_proj.bias`, [c.moeSharedExpertIntermediateSize]], [`${p}.mixer.shared_experts.down_proj.bias`, [c.hiddenSize]]);
        if (c.moeLatentSize !== null) {
          out.push([`${p}.mixer.fc1_latent_proj.weight`, [c.moeLatentSize, c.hiddenSize]], [`${p}.mixer.fc2_latent_proj.weight`, [c.hiddenSize, c.moeLatentSize]]);
          if (c.mlpBias) out.push([`${p}.mixer.fc1_latent_proj.bias`, [c.moeLatentSize]], [`${p}.mixer.fc2_latent_proj.bias`, [c.hiddenSize]]);
        }
      } else {
        out.push([`${p}.mixer.up_proj.weight`, [c.intermediateSize, c.hiddenSize]], [`${p}.mixer.down_proj.weight`, [c.hiddenSize, c.intermediateSize]]);
        if (c.mlpBias) out.push([`${p}.mixer.up_proj.bias`, [c.intermediateSize]], [`${p}.mixer.down_proj.bias`, [c.hiddenSize]]);
      }
    });
    out.push(['model.norm_f.weight', [c.hiddenSize]]);
    if (!c.tieWordEmbeddings) out.push(['lm_head.weight', [c.vocabSize, c.hiddenSize]]);
    return out;
  }

  /**
   * A checkpoint folder (config.json, safetensors; transformers 5's "model." names or the checkpoints' "backbone."), or
   * a GGUF file as llama.cpp's converter writes NemotronH (nemotron_h / nemotron_h_moe; weights dequantized).
   */
  static async fromPretrained(location: string): Promise<NemotronHForCausalLM> {
    const gguf = isGGUF(location);
    const { config, weights } = gguf ? NemotronHForCausalLM.readGGUF(location) : NemotronHForCausalLM.readCheckpoint(location);
    try {
      const model = new NemotronHForCausalLM(config, weights);
      const generationFile = path.join(location, 'generation_config.json');
      if (!gguf && fs.existsSync(generationFile)) model.generationConfig = JSON.parse(fs.readFileSync(generationFile, 'utf8')) as Record<string, unknown>;
      const missing = [...model.weights.keys()].filter((n) => !weights.has(n));
      const unused = [...weights.keys()].filter((n) => !model.weights.has(n));
      if (missing.length || (gguf && unused.length)) {
        model.dispose();
        const list = (names: string[]) => `${names.slice(0, 5).join(', ')}${names.length > 5 ? ` and ${names.length - 5} more` : ''}`;
        throw new Error(missing.length ? `NemotronH checkpoint in ${location} lacks ${list(missing)}` : `${location} holds tensors this configuration has no place for: ${list(unused)}`);
      }
      return model;
    } finally {
      weights.forEach((t) => t.dispose());
    }
  }

  private static readCheckpoint(dir: string): { config: NemotronHConfig; weights: Map<string, tf.Tensor> } {
    const config = NemotronHConfig.fromPretrained(dir);
    const reader = CheckpointReader.open(dir);
    const weights = new Map<string, tf.Tensor>();
    // Checkpoints keep one tensor per expert (mixer.experts.{e}.up_proj.weight); transformers stacks them.
    const experts = new Map<string, tf.Tensor[]>();
    try {
      for (const stored of reader.names()) {
        const name = stored.replace(/^backbone\./, 'model.');
        const { data } = reader.read(stored);
        let shape = reader.info(stored).shape;
        if (name.endsWith('.conv1d.weight')) shape = [shape[0], shape[shape.length - 1]];
        const expert = /^(.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$/.exec(name);
        if (expert) {
          const key = `${expert[1]}.${expert[3]}`;
          const list = experts.get(key) ?? [];
          list[Number(expert[2])] = tf.tensor(data as Float32Array, shape, 'float32');
          experts.set(key, list);
        } else weights.set(name, tf.tensor(data as Float32Array, shape, 'float32'));
      }
      for (const [key, list] of experts) {
        weights.set(key, tf.stack(list));
        tf.dispose(list);
      }
    } finally {
      reader.close();
    }
    return { config, weights };
  }

  private static readGGUF(file: string): { config: NemotronHConfig; weights: Map<string, tf.Tensor> } {
    const gguf = NemotronHGGUF.open(file);
    const weights = new Map<string, tf.Tensor>();
    try {
      const config = NemotronHConfig.fromJSON(gguf.configJson());
      for (const name of gguf.names()) {
        const { shape, data } = gguf.read(name);
        weights.set(name, tf.tensor(data, shape, 'float32'));
      }
      return { config, weights };
    } catch (e) {
      weights.forEach((t) => t.dispose());
      throw e;
    } finally {
      gguf.close();
    }
  }

  private w(name: string): tf.Variable {
    const v = this.weights.get(name);
    if (!v) throw new Error(`NemotronH: no weight ${name}`);
    return v;
  }

  /** x·Wᵀ (+ b) by the shared linear (a backend's fused product where it has one), LoRA's update added. */
  private linear(x: tf.Tensor, name: string): tf.Tensor {
    const flat = x.reshape([-1, x.shape[x.rank - 1]]);
    let y = linear(flat, this.w(`${name}.weight`), this.weights.get(`${name}.bias`));
    // LoRA: W·x + scaling·B·A·x, as PEFT's Linear adds it.
    const adapter = this.adapters.get(name);
    if (adapter) y = tf.add(y, tf.mul(tf.matMul(tf.matMul(flat, adapter.A, false, true), adapter.B, false, true), adapter.scaling));
    return y.reshape([...x.shape.slice(0, -1), -1]);
  }

  /**
   * Logits of every position, or of the last `logitsToKeep` (and, with labels, the causal LM loss: labels shifted
   * inside, -100 ignored). From nothing, or, when `state` holds an earlier pass's layers, continuing it: the positions
   * after those (no padding). `state` (an empty object, or that earlier one) receives what the next pass or decoding
   * step needs. `decodingFrom`: the positions from this one on stand for decoding steps (speculative decoding checks
   * drafted tokens in one pass), so their Δt is taken as transformers' one-token step takes it, without the prompt
   * pass's time_step_limit clamp. `keepSteps`: also return what each Mamba-2 layer's recurrence took at each position
   * (`steps`), from which rewindState() rebuilds the state after any of them without running the layers again.
   */
  forward(inputs: { inputIds: number[][]; attentionMask?: number[][]; labels?: number[][]; logitsToKeep?: number; decodingFrom?: number; keepSteps?: boolean }, state?: Partial<NemotronHState>): { logits: tf.Tensor3D; loss?: tf.Scalar; steps?: NemotronHSteps } {
    return this.pass(inputs, state, true);
  }

  /**
   * The final hidden states (after the last norm) of a pass from nothing, [batch, time, hidden]: what the output
   * projection reads (project() applies it), for scoring long sequences in chunks of positions.
   */
  lastHiddenState(inputs: { inputIds: number[][]; attentionMask?: number[][] }): tf.Tensor3D {
    return this.pass(inputs, undefined, false).logits;
  }

  /** The output projection: hidden states [rows, hidden] to logits [rows, vocab]. */
  project(hidden: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => this.lmHead(hidden.reshape([1, -1, this.config.hiddenSize])).reshape([-1, this.config.vocabSize]) as tf.Tensor2D);
  }

  /** forward(), or (`project` false) the hidden states the output projection would read, in `logits`' place. */
  private pass(inputs: { inputIds: number[][]; attentionMask?: number[][]; labels?: number[][]; logitsToKeep?: number; decodingFrom?: number; keepSteps?: boolean }, state: Partial<NemotronHState> | undefined,
    project: boolean): { logits: tf.Tensor3D; loss?: tf.Scalar; steps?: NemotronHSteps } {
    const { inputIds } = inputs;
    const keepLogits = inputs.logitsToKeep ?? 0;
    if (!Number.isInteger(keepLogits) || keepLogits < 0) throw new Error(`NemotronH.forward: logitsToKeep must be a whole number ≥ 0 (0: every position), got ${keepLogits}`);
    if (keepLogits > 0 && inputs.labels) throw new Error('NemotronH.forward: the loss needs every position\'s logits; give labels or logitsToKeep, not both');
    const batch = inputIds.length;
    const length = inputIds[0]?.length ?? 0;
    if (batch === 0 || length === 0 || inputIds.some((r) => r.length !== length)) throw new Error('NemotronH.forward: inputIds must be a non-empty rectangle of token ids');
    const bad = inputIds.flat().find((id) => !Number.isInteger(id) || id < 0 || id >= this.config.vocabSize);
    if (bad !== undefined) throw new Error(`NemotronH.forward: token id ${bad} is outside [0, vocab_size ${this.config.vocabSize})`);
    const mask = inputs.attentionMask ?? inputIds.map((r) => r.map(() => 1));
    // A state from an earlier pass: these positions continue it (a prompt in chunks, a kept prefix's rest).
    const past = state?.layers?.length ? state as NemotronHState : null;
    if (past) {
      if (past.mask.length !== batch) throw new Error(`NemotronH.forward: the state holds ${past.mask.length} rows, the inputs ${batch}`);
      // Padding would decay the Mamba-2 state (transformers zeroes its inputs, not its Δt): only left padding, from nothing.
      if (mask.some((row) => row.includes(0))) throw new Error('NemotronH.forward: positions that continue a state cannot be padding (attentionMask 0)');
      const limit = this.config.maxPositionEmbeddings;
      if (past.mask[0].length + length > limit) throw new Error(`NemotronH.forward: ${past.mask[0].length} kept positions plus ${length} new ones pass max_position_embeddings ${limit}`);
    }
    const fullMask = past ? past.mask.map((row, b) => [...row, ...mask[b]]) : mask;
    const layers: NemotronHState['layers'] = [];
    // What the Mamba-2 layers' recurrences take (kept past the tidy), where asked for.
    this.stepSink = inputs.keepSteps ? new Map() : null;
    const logits = tf.tidy(() => {
      let hidden: tf.Tensor = tf.gather(this.w('model.embeddings.weight'), tf.tensor2d(inputIds, undefined, 'int32'));
      // Padding's mask as a factor (null without padding: no multiplies).
      const keep = mask.some((row) => row.includes(0)) ? tf.tensor2d(mask, undefined, 'float32').expandDims(-1) : null;
      // Gradient checkpointing: a layer keeps its input alone and runs again in the backward (no state is kept then).
      const checkpointed = this.gradientCheckpointing && recordingGradients() && !state;
      this.config.layerTypes.forEach((type, i) => {
        const p = `model.layers.${i}`;
        if (checkpointed) {
          hidden = recomputeInBackward((h, [k]) => tf.add(h, this.mixer(type, rmsNorm(h, this.w(`${p}.norm.weight`), this.config.layerNormEpsilon), k ?? null, fullMask, p).out),
            hidden, keep ? [keep] : [], this.layerVariables(i));
          layers.push(null);
          return;
        }
        const { out, kept } = this.mixer(type, rmsNorm(hidden, this.w(`${p}.norm.weight`), this.config.layerNormEpsilon), keep, fullMask, p, past?.layers[i],
          inputs.decodingFrom);
        layers.push(state && kept ? (Object.fromEntries(Object.entries(kept).map(([k, t]) => [k, tf.keep(t)])) as typeof kept) : null);
        hidden = tf.add(hidden, out);
      });
      // transformers' logits_to_keep: the output projection of the last positions alone (generation needs the last).
      const kept = keepLogits > 0 && keepLogits < length ? hidden.slice([0, length - keepLogits, 0], [-1, -1, -1]) : hidden;
      const normed = rmsNorm(kept, this.w('model.norm_f.weight'), this.config.layerNormEpsilon);
      return (project ? this.lmHead(normed) : normed) as tf.Tensor3D;
    });
    if (state) {
      disposeState(state);
      state.layers = layers;
      state.mask = fullMask.map((r) => r.slice());
    }
    const sink = this.stepSink;
    this.stepSink = null;
    const steps = sink ? { layers: this.config.layerTypes.map((_, i) => sink.get(`model.layers.${i}`) ?? null), length } : undefined;
    if (!inputs.labels) return { logits, ...(steps ? { steps } : {}) };
    const labels = inputs.labels;
    const loss = tf.tidy(() => {
      // Position t predicts label t + 1, as transformers shifts them.
      const shifted = logits.slice([0, 0, 0], [batch, length - 1, -1]).reshape([-1, this.config.vocabSize]) as tf.Tensor2D;
      return crossEntropy(shifted, labels.flatMap((r) => r.slice(1)));
    });
    return { logits, loss };
  }

  /**
   * A layer's mixer over the prompt's positions (x normalized): its output, and what it leaves for the next pass (the
   * Mamba-2 window and state, attention's keys and values), continuing `past` where given.
   */
  private mixer(type: NemotronHConfig['layerTypes'][number], x: tf.Tensor, keep: tf.Tensor | null, fullMask: number[][], p: string,
    past?: NemotronHState['layers'][number], decodingFrom?: number): { out: tf.Tensor; kept: NemotronHState['layers'][number] } {
    if (type === 'mamba') {
      const { out, conv, ssm } = this.mambaPrompt(x, keep, p, (past ?? undefined) as { conv: tf.Tensor3D; ssm: tf.Tensor4D } | undefined, decodingFrom);
      return { out, kept: { conv, ssm } };
    }
    if (type === 'attention') {
      const { out, keys, values } = this.attention(x, fullMask, p, (past ?? null) as { keys: tf.Tensor4D; values: tf.Tensor4D } | null);
      return { out, kept: { keys, values } };
    }
    return { out: type === 'moe' ? this.moe(x, p) : this.mlp(x, p), kept: null };
  }

  /** The trainable variables a layer reads (its weights, its LoRA adapters): what checkpointing's backward differentiates. */
  private layerVariables(i: number): tf.Variable[] {
    const prefix = `model.layers.${i}.`;
    const own = [...this.weights].filter(([name, v]) => name.startsWith(prefix) && v.trainable).map(([, v]) => v);
    const adapters = [...this.adapters].filter(([name]) => name.startsWith(prefix)).flatMap(([, a]) => [a.A, a.B].filter((v) => v.trainable));
    return [...own, ...adapters];
  }

  /** One token a row after a pass that filled `state` (which it updates): the next logits, [batch, 1, vocab]. */
  step(tokens: number[], state: NemotronHState): tf.Tensor3D {
    state.mask.forEach((m) => m.push(1));
    const spec = this.compiledStep(tokens.length);
    if (spec) {
      try {
        return this.compiledStepRun(spec, tokens, state);
      } catch (e) {
        if (!(e instanceof DecodeGraphError)) throw e;
        // Nothing changed yet (the state is replaced only on success): the eager step below computes the same.
        console.warn(`nemotron-tfjs: ${e.message}; decoding layer by layer`);
      }
    }
    const next: NemotronHState['layers'] = [];
    const logits = tf.tidy(() => {
      let hidden = tf.gather(this.w('model.embeddings.weight'), tf.tensor2d(tokens.map((t) => [t]), undefined, 'int32'));
      this.config.layerTypes.forEach((type, i) => {
        const p = `model.layers.${i}`;
        const x = rmsNorm(hidden, this.w(`${p}.norm.weight`), this.config.layerNormEpsilon);
        const layer = state.layers[i];
        let out: tf.Tensor;
        if (type === 'mamba') {
          const r = this.mambaStep(x, p, layer as { conv: tf.Tensor3D; ssm: tf.Tensor4D });
          out = r.out;
          next.push({ conv: tf.keep(r.conv), ssm: tf.keep(r.ssm) });
        } else if (type === 'attention') {
          const r = this.attention(x, state.mask, p, layer as { keys: tf.Tensor4D; values: tf.Tensor4D });
          out = r.out;
          next.push({ keys: tf.keep(r.keys), values: tf.keep(r.values) });
        } else {
          out = type === 'moe' ? this.moe(x, p) : this.mlp(x, p);
          next.push(null);
        }
        hidden = tf.add(hidden, out);
      });
      return this.lmHead(rmsNorm(hidden, this.w('model.norm_f.weight'), this.config.layerNormEpsilon)) as tf.Tensor3D;
    });
    disposeState(state);
    state.layers = next;
    return logits;
  }

  /**
   * The spec of the compiled decoding step where the backend has it (the native one: NEMOTRON_H_STEP_KERNEL) and it
   * applies: no LoRA adapters (merged ones are plain weights), no mixture-of-experts layers, weights that fit the
   * copy a graph run makes (decodeStepFits).
   */
  private compiledStep(batch: number): NemotronHStepSpec | null {
    if (this.adapters.size > 0 || !fusedKernelApplies(NEMOTRON_H_STEP_KERNEL) || !decodeStepFits(4 * this.numParameters())) return null;
    return nemotronHStepSpec(this.config, batch);
  }

  /** One step through the compiled graph: the same logits and state as the eager step. */
  private compiledStepRun(spec: NemotronHStepSpec, tokens: number[], state: NemotronHState): tf.Tensor3D {
    const [logits, ...next] = tf.tidy(() => {
      const named: tf.NamedTensorMap = { hidden: tf.gather(this.w('model.embeddings.weight'), tf.tensor1d(tokens, 'int32')) };
      if (this.config.layerTypes.includes('attention')) {
        named.mask = tf.tensor2d(state.mask.map((row) => row.map((m) => (m === 1 ? 0 : -1e9)))).reshape([tokens.length, 1, 1, -1]);
      }
      state.layers.forEach((layer, i) => {
        if (layer && 'conv' in layer) Object.assign(named, { [`conv.${i}`]: layer.conv, [`ssm.${i}`]: layer.ssm });
        else if (layer) Object.assign(named, { [`keys.${i}`]: layer.keys, [`values.${i}`]: layer.values });
      });
      for (const [name] of nemotronHStepInputs(spec)) if (!(name in named)) named[name] = this.w(name);
      return tf.engine().runKernel(NEMOTRON_H_STEP_KERNEL, named, spec as unknown as tf.NamedAttrMap) as tf.Tensor[];
    });
    disposeState(state);
    let k = 0;
    state.layers = this.config.layerTypes.map((type) => {
      if (type === 'mamba') return { conv: next[k++] as tf.Tensor3D, ssm: next[k++] as tf.Tensor4D };
      if (type === 'attention') return { keys: next[k++] as tf.Tensor4D, values: next[k++] as tf.Tensor4D };
      return null;
    });
    const shaped = logits.reshape([tokens.length, 1, this.config.vocabSize]) as tf.Tensor3D;
    logits.dispose();
    return shaped;
  }

  private lmHead(x: tf.Tensor): tf.Tensor {
    const head = this.config.tieWordEmbeddings ? this.w('model.embeddings.weight') : this.w('lm_head.weight');
    const [batch, time] = x.shape as [number, number, number];
    return tf.matMul(x.reshape([-1, this.config.hiddenSize]), head, false, true).reshape([batch, time, this.config.vocabSize]);
  }

  private mlp(x: tf.Tensor, p: string, prefix = 'mixer'): tf.Tensor {
    const flat = x.reshape([-1, x.shape[x.rank - 1]]);
    const adapted = this.adapters.has(`${p}.${prefix}.up_proj`) || this.adapters.has(`${p}.${prefix}.down_proj`);
    if (!adapted && !observingProducts() && fusedKernelApplies(MLP_KERNEL, { rows: flat.shape[0] })) {
      // The backend's fused relu² MLP (the Nemotron classes' kernel: WebGPU, the native backend's eager kernels).
      const inputs: tf.NamedTensorMap = { x: flat, up: this.w(`${p}.${prefix}.up_proj.weight`), down: this.w(`${p}.${prefix}.down_proj.weight`) };
      const [upBias, downBias] = [this.weights.get(`${p}.${prefix}.up_proj.bias`), this.weights.get(`${p}.${prefix}.down_proj.bias`)];
      if (upBias && downBias) [inputs.upBias, inputs.downBias] = [upBias, downBias];
      return (tf.engine().runKernel(MLP_KERNEL, inputs, { activation: 'relu2' }) as tf.Tensor).reshape(x.shape);
    }
    const up = this.linear(x, `${p}.${prefix}.up_proj`);
    return this.linear(tf.square(tf.relu(up)), `${p}.${prefix}.down_proj`);
  }

  /**
   * A mixture-of-experts layer: the router's sigmoid scores (plus the correction bias, for choosing only) pick the
   * topk_group best groups (a group scored by its two best experts), then num_experts_per_tok experts among them;
   * their scores, normalized and scaled, weigh the experts' relu² MLPs; a shared expert adds to every token.
   */
  private moe(x: tf.Tensor, p: string): tf.Tensor {
    const c = this.config;
    const [batch, time] = x.shape as [number, number, number];
    const flat = x.reshape([batch * time, c.hiddenSize]);
    const tokens = batch * time;
    observeProduct(this.w(`${p}.mixer.gate.weight`), flat);
    const scores = tf.sigmoid(tf.matMul(flat, this.w(`${p}.mixer.gate.weight`), false, true));
    const routing = this.moeRouting === 'auto' ? (ASYNC_ONLY_BACKENDS.includes(tf.getBackend()) ? 'device' : 'host') : this.moeRouting;
    if (routing !== 'host') return tf.add(this.moeOnDevice(flat, scores, p, routing).reshape([batch, time, c.hiddenSize]), this.mlp(x, p, 'mixer.shared_experts'));
    // The choice is made on the host (it is not differentiable); the weights stay tensors (their gradient reaches the router).
    requireSyncReads('a mixture-of-experts layer (its router\'s choice)');
    const choice = tf.add(scores, this.w(`${p}.mixer.gate.e_score_correction_bias`)).arraySync() as number[][];
    const perGroup = c.nRoutedExperts / c.nGroup;
    const mask = choice.map((row) => {
      const groupScore = Array.from({ length: c.nGroup }, (_, g) => row.slice(g * perGroup, (g + 1) * perGroup).sort((a, b) => b - a).slice(0, 2).reduce((s, v) => s + v, 0));
      const groups = new Set(groupScore.map((v, g) => [v, g]).sort((a, b) => b[0] - a[0]).slice(0, c.topkGroup).map(([, g]) => g));
      const chosen = row.map((v, e) => [groups.has(Math.floor(e / perGroup)) ? v : -Infinity, e]).sort((a, b) => b[0] - a[0]).slice(0, c.numExpertsPerTok).map(([, e]) => e);
      return row.map((_, e) => (chosen.includes(e) ? 1 : 0));
    });
    let weights = tf.mul(scores, tf.tensor2d(mask));
    if (c.normTopkProb) weights = tf.div(weights, tf.add(tf.sum(weights, -1, true), 1e-20));
    weights = tf.mul(weights, c.routedScalingFactor);
    const latent = c.moeLatentSize === null ? flat : this.linear(flat, `${p}.mixer.fc1_latent_proj`);
    const width = c.moeLatentSize ?? c.hiddenSize;
    const parts: tf.Tensor[] = [];
    const rows: number[] = [];
    for (let e = 0; e < c.nRoutedExperts; e++) {
      const routed = mask.flatMap((m, t) => (m[e] ? [t] : []));
      if (routed.length === 0) continue;
      const index = tf.tensor1d(routed, 'int32');
      const up = tf.gather(this.w(`${p}.mixer.experts.up_proj`), e).reshape([c.moeIntermediateSize, width]);
      const down = tf.gather(this.w(`${p}.mixer.experts.down_proj`), e).reshape([width, c.moeIntermediateSize]);
      const inputs = tf.gather(latent, index);
      observeProduct(this.w(`${p}.mixer.experts.up_proj`), inputs, e);
      const activated = tf.square(tf.relu(tf.matMul(inputs, up, false, true)));
      observeProduct(this.w(`${p}.mixer.experts.down_proj`), activated, e);
      const h = tf.matMul(activated, down, false, true);
      parts.push(tf.mul(h, tf.gather(weights, index).slice([0, e], [-1, 1])));
      rows.push(...routed);
    }
    let routedOut: tf.Tensor = tf.unsortedSegmentSum(tf.concat(parts, 0), tf.tensor1d(rows, 'int32'), tokens);
    if (c.moeLatentSize !== null) routedOut = this.linear(routedOut, `${p}.mixer.fc2_latent_proj`);
    return tf.add(routedOut.reshape([batch, time, c.hiddenSize]), this.mlp(x, p, 'mixer.shared_experts'));
  }

  /**
   * The routed experts with the choice made on the device (where the host cannot read tensors synchronously: WebGPU):
   * the same groups and experts by top-k ops. 'gather' takes each token's chosen experts' matrices ([tokens ×
   * experts a token] of them: decoding, short prompts); 'dense' runs every expert on every token and weighs the
   * unchosen ones by zero (long prompts, where gathering would not fit). 'device' picks by the gathered size.
   */
  private moeOnDevice(flat: tf.Tensor, scores: tf.Tensor, p: string, routing: 'device' | 'device-gather' | 'device-dense'): tf.Tensor {
    const c = this.config;
    const tokens = flat.shape[0];
    const experts = c.nRoutedExperts;
    const k = c.numExpertsPerTok;
    // [tokens, k + experts]: each token's experts (their indices as floats), then the 0/1 mask over the experts.
    const route = routeOnDevice(c, scores, this.w(`${p}.mixer.gate.e_score_correction_bias`));
    const chosen = tf.cast(route.slice([0, 0], [tokens, k]), 'int32');
    const mask = route.slice([0, k], [tokens, experts]);
    let weights = tf.mul(scores, mask);
    if (c.normTopkProb) weights = tf.div(weights, tf.add(tf.sum(weights, -1, true), 1e-20));
    weights = tf.mul(weights, c.routedScalingFactor);
    const latent = c.moeLatentSize === null ? flat : this.linear(flat, `${p}.mixer.fc1_latent_proj`);
    const width = c.moeLatentSize ?? c.hiddenSize;
    const up = this.w(`${p}.mixer.experts.up_proj`);
    const down = this.w(`${p}.mixer.experts.down_proj`);
    const gatheredBytes = tokens * k * 2 * c.moeIntermediateSize * width * 4;
    let routed: tf.Tensor;
    if (routing === 'device-gather' || (routing === 'device' && gatheredBytes <= this.moeGatherLimitBytes)) {
      // Row t·k + j: token t through its j-th expert, with that expert's matrices.
      const index = route.slice([0, 0], [tokens, k]).reshape([tokens * k]);
      const rows = tf.tile(latent, [1, k]).reshape([tokens * k, 1, width]);
      const h = tf.square(tf.relu(tf.matMul(rows, gatherExperts(up, index), false, true)));
      const out = tf.matMul(h, gatherExperts(down, index), false, true).reshape([tokens, k, width]);
      const slotWeights = tf.sum(tf.mul(tf.cast(tf.oneHot(chosen, experts), 'float32'), weights.reshape([tokens, 1, experts])), -1, true);
      routed = tf.sum(tf.mul(out, slotWeights), 1);
    } else {
      routed = tf.zeros([tokens, width]);
      for (let e = 0; e < experts; e++) {
        const h = tf.square(tf.relu(tf.matMul(latent, tf.gather(up, e).reshape([c.moeIntermediateSize, width]), false, true)));
        const out = tf.matMul(h, tf.gather(down, e).reshape([width, c.moeIntermediateSize]), false, true);
        routed = tf.add(routed, tf.mul(out, weights.slice([0, e], [tokens, 1])));
      }
    }
    return c.moeLatentSize !== null ? this.linear(routed, `${p}.mixer.fc2_latent_proj`) : routed;
  }

  /** Splits in_proj's output into the gate, the convolution's input and Δt. */
  private inProjection(x: tf.Tensor, p: string): { gate: tf.Tensor; xBC: tf.Tensor; dt: tf.Tensor } {
    const c = this.config;
    const proj = this.linear(x, `${p}.mixer.in_proj`);
    const [gate, xBC, dt] = tf.split(proj, [c.mambaIntermediateSize, c.convDim, c.mambaNumHeads], -1);
    return { gate, xBC, dt };
  }

  /** The scan's output, gated by silu(gate), normalized by groups, projected out. */
  private mambaOut(y: tf.Tensor, gate: tf.Tensor, p: string): tf.Tensor {
    const c = this.config;
    const gated = tf.mul(y, tf.sigmoid(gate).mul(gate));
    const groups = gated.reshape([...gated.shape.slice(0, -1), c.nGroups, c.mambaIntermediateSize / c.nGroups]);
    const normed = tf.mul(groups, tf.rsqrt(tf.add(tf.mean(tf.square(groups), -1, true), c.layerNormEpsilon))).reshape(gated.shape);
    return this.linear(tf.mul(normed, this.w(`${p}.mixer.norm.weight`)), `${p}.mixer.out_proj`);
  }

  /** x, B and C of the convolution's output: [batch, time, heads, head_dim] and [batch, time, heads, state] (groups repeated). */
  private splitXBC(xBC: tf.Tensor): { xs: tf.Tensor; B: tf.Tensor; C: tf.Tensor } {
    const c = this.config;
    const [batch, time] = xBC.shape;
    const [xs, B, C] = tf.split(xBC, [c.mambaIntermediateSize, c.nGroups * c.ssmStateSize, c.nGroups * c.ssmStateSize], -1);
    // Each head reads its group's B and C (a gather: its gradient sums the heads of a group back).
    const group = tf.tensor1d(Array.from({ length: c.mambaNumHeads }, (_, h) => Math.floor(h / (c.mambaNumHeads / c.nGroups))), 'int32');
    const heads = (t: tf.Tensor) => tf.gather(t.reshape([batch, time, c.nGroups, c.ssmStateSize]), group, 2);
    return { xs: xs.reshape([batch, time, c.mambaNumHeads, c.mambaHeadDim]), B: heads(B), C: heads(C) };
  }

  /** The Mamba-2 block over the prompt's positions, from nothing or from a kept window and state. */
  private mambaPrompt(x: tf.Tensor, keep: tf.Tensor | null, p: string, initial?: { conv: tf.Tensor3D; ssm: tf.Tensor4D }, decodingFrom?: number): { out: tf.Tensor; conv: tf.Tensor3D; ssm: tf.Tensor4D } {
    const c = this.config;
    const [batch, time] = x.shape;
    const { gate, xBC: rawXBC, dt: rawDt } = this.inProjection(keep ? tf.mul(x, keep) : x, p);
    // Causal depthwise convolution: output t sees inputs t-K+1 … t (before the start, the kept window, or zeros).
    const k = c.convKernel;
    const padded = initial ? tf.concat([initial.conv, rawXBC], 1) : tf.pad(rawXBC, [[0, 0], [k - 1, 0], [0, 0]]);
    const weight = this.w(`${p}.mixer.conv1d.weight`);
    let conv: tf.Tensor;
    if (depthwiseAvailable()) {
      // One depthwise convolution (a row of height 1): a kernel where K shifted products take 3·K.
      const filter = tf.transpose(weight).reshape([1, k, c.convDim, 1]) as tf.Tensor4D;
      conv = tf.depthwiseConv2d(padded.reshape([batch, 1, time + k - 1, c.convDim]) as tf.Tensor4D, filter, 1, 'valid').reshape([batch, time, c.convDim]);
    } else {
      conv = tf.zeros(rawXBC.shape);
      for (let j = 0; j < k; j++) conv = tf.add(conv, tf.mul(padded.slice([0, j, 0], [batch, time, c.convDim]), weight.slice([0, j], [c.convDim, 1]).reshape([c.convDim])));
    }
    const bias = this.weights.get(`${p}.mixer.conv1d.bias`);
    if (bias) conv = tf.add(conv, bias);
    const activated = tf.mul(conv, tf.sigmoid(conv));
    const xBC = keep ? tf.mul(activated, keep) : activated;
    const { xs, B, C } = this.splitXBC(xBC);
    // transformers' chunked scan clamps Δt to time_step_limit (softplus is never below 0: the default clamps nothing);
    // positions that stand for decoding steps (drafted tokens checked) take it unclamped, as its one-token step does.
    let dt = softplus(tf.add(rawDt, this.w(`${p}.mixer.dt_bias`)));
    const clamped = Math.min(time, decodingFrom ?? time);
    if (clamped > 0 && (c.timeStepLimit[0] > 0 || c.timeStepLimit[1] < Infinity)) {
      const limited = tf.clipByValue(dt.slice([0, 0, 0], [batch, clamped, -1]), c.timeStepLimit[0], c.timeStepLimit[1]);
      dt = clamped === time ? limited : tf.concat([limited, dt.slice([0, clamped, 0], [-1, -1, -1])], 1);
    }
    const A = tf.neg(tf.exp(this.w(`${p}.mixer.A_log`)));
    const D = this.w(`${p}.mixer.D`);
    const { y: scanned, state: h } = ssdScan(xs, dt, A, B, C, c.chunkSize, initial?.ssm);
    const y = tf.add(scanned, tf.mul(xs, D.reshape([1, 1, -1, 1]))).reshape([batch, time, c.mambaIntermediateSize]);
    // The window a decoding step continues: the last K-1 inputs of the convolution (zeros before the prompt).
    const window = padded.slice([0, time, 0], [batch, k - 1, c.convDim]) as tf.Tensor3D;
    if (this.stepSink) this.stepSink.set(p, { inputs: tf.keep(rawXBC) as tf.Tensor3D, x: tf.keep(xs) as tf.Tensor4D, dt: tf.keep(dt) as tf.Tensor3D, B: tf.keep(B) as tf.Tensor4D });
    return { out: this.mambaOut(y, gate, p), conv: window, ssm: h as tf.Tensor4D };
  }

  /**
   * The state after the first `count` positions of a pass that continued `marked` and kept its steps (`steps`, from
   * forward's keepSteps), as a new state (the given ones stay as they are): each Mamba-2 layer's recurrence run over
   * those positions from the marked state (elementwise, as the decoding step runs it: no projection again), its window
   * the last inputs, attention's keys and values those of `current` (which holds the whole pass) cut to the length.
   */
  rewindState(marked: NemotronHState, current: NemotronHState, steps: NemotronHSteps, count: number): NemotronHState {
    const c = this.config;
    if (!(Number.isInteger(count) && count >= 0 && count <= steps.length)) throw new Error(`NemotronH.rewindState: ${count} positions of a pass of ${steps.length}`);
    const length = stateLength(marked) + count;
    const layers = current.layers.map((layer, i) => {
      if (!layer) return null;
      return tf.tidy(() => {
        if ('keys' in layer) {
          const cut = (t: tf.Tensor4D) => t.slice([0, 0, 0, 0], [-1, -1, length, -1]) as tf.Tensor4D;
          return { keys: cut(layer.keys), values: cut(layer.values) } as unknown as tf.TensorContainer;
        }
        const step = steps.layers[i]!;
        const from = marked.layers[i] as { conv: tf.Tensor3D; ssm: tf.Tensor4D };
        const [batch] = step.x.shape;
        const A = tf.neg(tf.exp(this.w(`model.layers.${i}.mixer.A_log`)));
        let h: tf.Tensor = from.ssm;
        for (let t = 0; t < count; t++) {
          const dt = step.dt.slice([0, t, 0], [batch, 1, c.mambaNumHeads]).reshape([batch, c.mambaNumHeads]);
          const decay = tf.exp(tf.mul(dt, A)).reshape([batch, c.mambaNumHeads, 1, 1]);
          const x = step.x.slice([0, t, 0, 0], [batch, 1, -1, -1]).reshape([batch, c.mambaNumHeads, c.mambaHeadDim]);
          const B = step.B.slice([0, t, 0, 0], [batch, 1, -1, -1]).reshape([batch, c.mambaNumHeads, 1, c.ssmStateSize]);
          h = tf.add(tf.mul(h, decay), tf.mul(tf.mul(x, dt.expandDims(-1)).expandDims(-1), B));
        }
        const window = tf.concat([from.conv, step.inputs.slice([0, 0, 0], [batch, count, -1])], 1);
        return { conv: window.slice([0, count, 0], [batch, c.convKernel - 1, c.convDim]), ssm: count === 0 ? tf.clone(h) : h } as unknown as tf.TensorContainer;
      }) as unknown as NemotronHState['layers'][number];
    });
    return { layers, mask: marked.mask.map((row) => [...row, ...new Array<number>(count).fill(1)]) };
  }

  private mambaStep(x: tf.Tensor, p: string, state: { conv: tf.Tensor3D; ssm: tf.Tensor4D }): { out: tf.Tensor; conv: tf.Tensor3D; ssm: tf.Tensor4D } {
    const c = this.config;
    const batch = x.shape[0];
    if (fusedKernelApplies(NEMOTRON_H_MAMBA_STEP_KERNEL)) {
      // Between the projections, one kernel (WebGPU: four programs where the ops below take some forty).
      const proj = this.linear(x.reshape([batch, c.hiddenSize]), `${p}.mixer.in_proj`);
      const bias = this.weights.get(`${p}.mixer.conv1d.bias`);
      const inputs: tf.NamedTensorMap = {
        proj, conv: state.conv, convWeight: this.w(`${p}.mixer.conv1d.weight`), dtBias: this.w(`${p}.mixer.dt_bias`), aLog: this.w(`${p}.mixer.A_log`),
        d: this.w(`${p}.mixer.D`), ssm: state.ssm, normWeight: this.w(`${p}.mixer.norm.weight`), ...(bias ? { convBias: bias } : {}),
      };
      const attrs = { heads: c.mambaNumHeads, headDim: c.mambaHeadDim, groups: c.nGroups, state: c.ssmStateSize, kernel: c.convKernel, eps: c.layerNormEpsilon };
      const [y, conv, ssm] = tf.engine().runKernel(NEMOTRON_H_MAMBA_STEP_KERNEL, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor[];
      return { out: this.linear(y, `${p}.mixer.out_proj`).reshape([batch, 1, c.hiddenSize]), conv: conv as tf.Tensor3D, ssm: ssm as tf.Tensor4D };
    }
    const { gate, xBC: rawXBC, dt: rawDt } = this.inProjection(x, p);
    const window = tf.concat([state.conv, rawXBC], 1);
    const weight = this.w(`${p}.mixer.conv1d.weight`);
    let conv = tf.sum(tf.mul(window, tf.transpose(weight).expandDims(0)), 1, true);
    const bias = this.weights.get(`${p}.mixer.conv1d.bias`);
    if (bias) conv = tf.add(conv, bias);
    const xBC = tf.mul(conv, tf.sigmoid(conv));
    const { xs, B, C } = this.splitXBC(xBC);
    // The one-token step takes Δt without transformers' clamp, as its selective_state_update does.
    const dt = softplus(tf.add(rawDt, this.w(`${p}.mixer.dt_bias`))).reshape([batch, c.mambaNumHeads]);
    const A = tf.neg(tf.exp(this.w(`${p}.mixer.A_log`)));
    const xT = xs.reshape([batch, c.mambaNumHeads, c.mambaHeadDim]);
    const decay = tf.exp(tf.mul(dt, A)).reshape([batch, c.mambaNumHeads, 1, 1]);
    const h = tf.add(tf.mul(state.ssm, decay), tf.mul(tf.mul(xT, dt.expandDims(-1)).expandDims(-1), B.reshape([batch, c.mambaNumHeads, 1, c.ssmStateSize])));
    const y = tf.add(tf.matMul(h, C.reshape([batch, c.mambaNumHeads, c.ssmStateSize, 1])).reshape([batch, c.mambaNumHeads, c.mambaHeadDim]),
      tf.mul(xT, this.w(`${p}.mixer.D`).reshape([1, -1, 1])));
    return { out: this.mambaOut(y.reshape([batch, 1, c.mambaIntermediateSize]), gate, p), conv: window.slice([0, 1, 0], [-1, -1, -1]) as tf.Tensor3D, ssm: h as tf.Tensor4D };
  }

  /** Attention without position embedding over the cache and the new positions (causal, padding masked). */
  private attention(x: tf.Tensor, mask: number[][], p: string, past: { keys: tf.Tensor4D; values: tf.Tensor4D } | null): { out: tf.Tensor; keys: tf.Tensor4D; values: tf.Tensor4D } {
    const c = this.config;
    const [batch, time] = x.shape;
    const heads = (t: tf.Tensor, n: number) => t.reshape([batch, time, n, c.headDim]).transpose([0, 2, 1, 3]);
    const q = heads(this.linear(x, `${p}.mixer.q_proj`), c.numAttentionHeads);
    let keys = heads(this.linear(x, `${p}.mixer.k_proj`), c.numKeyValueHeads) as tf.Tensor4D;
    let values = heads(this.linear(x, `${p}.mixer.v_proj`), c.numKeyValueHeads) as tf.Tensor4D;
    if (past) {
      keys = tf.concat([past.keys, keys], 2);
      values = tf.concat([past.values, values], 2);
    }
    const total = keys.shape[2];
    const repeat = c.numAttentionHeads / c.numKeyValueHeads;
    const kvHead = tf.tensor1d(Array.from({ length: c.numAttentionHeads }, (_, h) => Math.floor(h / repeat)), 'int32');
    const expand = (t: tf.Tensor4D) => (repeat === 1 ? t : tf.gather(t, kvHead, 1));
    const scores = tf.mul(tf.matMul(q, expand(keys), false, true), 1 / Math.sqrt(c.headDim));
    // Query i (at position total - time + i) sees keys up to it that are not padding; a finite floor keeps padded rows finite.
    const additive = mask.map((row) => Array.from({ length: time }, (_, i) => row.map((m, j) => (m === 1 && j <= total - time + i ? 0 : -1e9))));
    const weights = tf.softmax(tf.add(scores, tf.tensor3d(additive).expandDims(1)), -1);
    const out = tf.matMul(weights, expand(values)).transpose([0, 2, 1, 3]).reshape([batch, time, c.numAttentionHeads * c.headDim]);
    return { out: this.linear(out, `${p}.mixer.o_proj`), keys, values };
  }

  /**
   * Decoding (the prompt pass, then one step a token over the kept state), as transformers' generate() with its
   * cache: greedy, or sampled with transformers' warpers (temperature, top-k, top-p, min-p) and a seed; repetition
   * penalty either way; stops at an EOS id. Returns the prompt and the new tokens of each row.
   */
  generate(inputIds: number[][], options: NemotronHGenerateOptions): number[][] {
    requireSyncReads('NemotronHForCausalLM.generate', 'the library\'s async generate(model, ids, options) decodes there');
    const eos = options.eosTokenId === undefined ? this.config.eosTokenId : options.eosTokenId;
    const stops = eos === null ? [] : Array.isArray(eos) ? eos : [eos];
    if (inputIds[0].length + options.maxNewTokens > this.config.maxPositionEmbeddings) {
      throw new Error(`NemotronH.generate: the prompt (${inputIds[0].length} tokens) plus ${options.maxNewTokens} new tokens is longer than max_position_embeddings ${this.config.maxPositionEmbeddings}`);
    }
    const state: Partial<NemotronHState> = {};
    const sequences = inputIds.map((r) => r.slice());
    const random = seedrandom(String(options.seed ?? Date.now()));
    const processors: ProcessorOptions = {
      doSample: options.doSample ?? false, temperature: options.temperature, topK: options.topK ?? (options.doSample ? 50 : undefined), topP: options.topP,
      minP: options.minP, repetitionPenalty: options.repetitionPenalty, promptLength: inputIds[0].length,
    };
    const onHost = processors.doSample || (options.repetitionPenalty ?? 1) !== 1;
    const done = inputIds.map(() => false);
    let logits = this.forward({ inputIds, attentionMask: options.attentionMask, logitsToKeep: 1 }, state).logits;
    try {
      for (let step = 0; step < options.maxNewTokens; step++) {
        const last = tf.tidy(() => {
          const scores = logits.slice([0, logits.shape[1] - 1, 0], [-1, 1, -1]).reshape([inputIds.length, -1]);
          return onHost ? scores : tf.argMax(scores, -1);
        });
        const host = last.dataSync();
        last.dispose();
        const vocab = this.config.vocabSize;
        const chosen = onHost ? sequences.map((row, b) => {
          const scores = Float32Array.from(host.subarray(b * vocab, (b + 1) * vocab));
          processScores(scores, row, processors);
          return processors.doSample ? sample(scores, random()) : argmax(scores);
        }) : Array.from(host);
        const tokens = chosen.map((t, b) => (done[b] ? (this.config.padTokenId ?? 0) : t));
        tokens.forEach((t, b) => { sequences[b].push(t); if (stops.includes(t)) done[b] = true; });
        options.onToken?.(tokens);
        if (done.every(Boolean) || step === options.maxNewTokens - 1) break;
        logits.dispose();
        logits = this.step(tokens, state as NemotronHState);
      }
    } finally {
      logits.dispose();
      disposeState(state);
    }
    return sequences;
  }

  /**
   * Writes config.json and the safetensors as NVIDIA's checkpoints lay them out (backbone.* names, one tensor per
   * expert, conv1d.weight as [channels, 1, kernel]; layers_block_type and hybrid_override_pattern both; shards of
   * `maxShardBytes`, 5 GB by default, with their index; `dtype` F32 or BF16), which transformers and fromPretrained
   * read back.
   */
  async savePretrained(dir: string, options: SaveCheckpointOptions = {}): Promise<void> {
    fs.mkdirSync(dir, { recursive: true });
    const tensors: CheckpointTensor[] = [];
    for (const [name, variable] of this.weights) {
      const stored = name.replace(/^model\./, 'backbone.');
      const data = await variable.data() as Float32Array;
      if (name.endsWith('.mixer.experts.up_proj') || name.endsWith('.mixer.experts.down_proj')) {
        const [experts, rows, cols] = variable.shape as [number, number, number];
        const kind = name.endsWith('up_proj') ? 'up_proj' : 'down_proj';
        for (let e = 0; e < experts; e++) {
          tensors.push({ name: stored.replace(/experts\.(up|down)_proj$/, `experts.${e}.${kind}.weight`), dtype: 'float32', shape: [rows, cols], data: data.slice(e * rows * cols, (e + 1) * rows * cols) });
        }
      } else {
        const shape = name.endsWith('.conv1d.weight') ? [variable.shape[0] as number, 1, variable.shape[1] as number] : variable.shape;
        tensors.push({ name: stored, dtype: 'float32', shape, data });
      }
    }
    // transformers' NemotronH ties nothing (its _tied_weights_keys is empty): a tied model writes its output projection
    // too, so that transformers computes with the same weights.
    if (this.config.tieWordEmbeddings) {
      tensors.push({ name: 'lm_head.weight', dtype: 'float32', shape: [this.config.vocabSize, this.config.hiddenSize], data: await this.w('model.embeddings.weight').data() as Float32Array });
    }
    // Shards of at most 5 GB (transformers' split, with its index) in F32 or BF16, as the checkpoints come.
    saveCheckpoint(dir, tensors, options);
    const c = this.config;
    const typeNames = { mamba: 'linear_attention', attention: 'full_attention', mlp: 'mlp', moe: 'moe' } as const;
    const pattern = { mamba: 'M', attention: '*', mlp: '-', moe: 'E' } as const;
    const json = {
      architectures: ['NemotronHForCausalLM'], model_type: 'nemotron_h', vocab_size: c.vocabSize, hidden_size: c.hiddenSize,
      layers_block_type: c.layerTypes.map((t) => typeNames[t]), hybrid_override_pattern: c.layerTypes.map((t) => pattern[t]).join(''),
      num_hidden_layers: c.numHiddenLayers, mamba_num_heads: c.mambaNumHeads, mamba_head_dim: c.mambaHeadDim, n_groups: c.nGroups,
      ssm_state_size: c.ssmStateSize, conv_kernel: c.convKernel, chunk_size: c.chunkSize, num_attention_heads: c.numAttentionHeads,
      num_key_value_heads: c.numKeyValueHeads, head_dim: c.headDim, intermediate_size: c.intermediateSize, layer_norm_epsilon: c.layerNormEpsilon,
      use_conv_bias: c.useConvBias, use_bias: c.useBias, mlp_bias: c.mlpBias, time_step_min: c.timeStepMin,
      time_step_limit: TIME_STEP_LIMIT, mlp_hidden_act: 'relu2',
      mamba_hidden_act: 'silu', max_position_embeddings: c.maxPositionEmbeddings, tie_word_embeddings: c.tieWordEmbeddings,
      bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenId, pad_token_id: c.padTokenId, n_routed_experts: c.nRoutedExperts,
      num_experts_per_tok: c.numExpertsPerTok, moe_intermediate_size: c.moeIntermediateSize, moe_shared_expert_intermediate_size: c.moeSharedExpertIntermediateSize,
      n_group: c.nGroup, topk_group: c.topkGroup, norm_topk_prob: c.normTopkProb, routed_scaling_factor: c.routedScalingFactor, moe_latent_size: c.moeLatentSize,
      torch_dtype: options.dtype === 'BF16' ? 'bfloat16' : 'float32',
    };
    // transformers checks time_step_limit as floats (0 would not do) and writes infinity as {"__float__": "Infinity"}.
    const float = (v: number) => (Number.isFinite(v) ? (Number.isInteger(v) ? v.toFixed(1) : String(v)) : `{ "__float__": "${v}" }`);
    const text = JSON.stringify(json, null, 2).replace(`"${TIME_STEP_LIMIT}"`, `[${c.timeStepLimit.map(float).join(', ')}]`);
    fs.writeFileSync(path.join(dir, 'config.json'), `${text}\n`);
  }

  /**
   * Writes the model as a GGUF file, as llama.cpp's convert_hf_to_gguf.py writes NemotronH (llama.cpp reads it;
   * fromPretrained reads it back): matrices in `type` (F32, F16, Q8_0 or Q4_0), or as llama-quantize makes one of its
   * file types (BF16, Q4_1, Q5_0, Q5_1, Q2_K … Q6_K, the i-quants, MXFP4_MOE, …) from the F32 one, quantized on
   * `threads` worker threads (default: the machine's parallelism), weighted by an importance matrix `imatrix` when given
   * (a file's path or computeImatrix's result), with llama-quantize's per-tensor options and `overrideKv`; the
   * tokenizer's vocabulary.
   */
  async saveGGUF(file: string, tokenizer: GGUFVocabularySource,
    options: { type?: GGUFWriteType; name?: string; threads?: number; imatrix?: ImatrixSource; overrideKv?: string[] } & TensorTypeOverrides = {}): Promise<void> {
    const weights = [];
    for (const [name, variable] of this.weights) weights.push({ name, shape: variable.shape.slice(), data: await variable.data() as Float32Array });
    const { type = 'F32', name, imatrix, ...quantizeOptions } = options;
    await writeNemotronHGGUF(file, this.config, weights, tokenizer, type, name, { ...quantizeOptions, imatrix: resolveImatrix(imatrix) });
  }

  /** The trained parameters by transformers' names (the router's correction bias is a buffer: not among them). */
  namedParameters(): Map<string, tf.Variable> {
    return new Map([...this.weights].filter(([, v]) => v.trainable));
  }

  /**
   * The causal LM loss of a batch as the Trainer collates it (right-padded ids, their mask, labels with -100 where
   * nothing is predicted), for Trainer and evaluation.
   */
  computeLoss(inputs: { inputIds?: unknown; attentionMask?: unknown; labels?: unknown }): tf.Scalar {
    const rows = (v: unknown, what: string): number[][] => {
      if (Array.isArray(v) && v.every((r) => Array.isArray(r))) return v as number[][];
      throw new Error(`NemotronH.computeLoss: ${what} must be rows of numbers (number[][]), got ${v instanceof tf.Tensor ? 'a tensor' : typeof v}`);
    };
    const { logits, loss } = this.forward({
      inputIds: rows(inputs.inputIds, 'inputIds'), attentionMask: inputs.attentionMask === undefined ? undefined : rows(inputs.attentionMask, 'attentionMask'),
      labels: rows(inputs.labels, 'labels'),
    });
    logits.dispose();
    return loss!;
  }

  private gradientCheckpointing = false;

  get isGradientCheckpointing(): boolean {
    return this.gradientCheckpointing;
  }

  /**
   * transformers' gradient_checkpointing_enable(): while a gradient tape records, each layer keeps only its input and
   * runs again in the backward, instead of keeping every activation inside it (the chunked scan's decay matrices and
   * states, the MLPs' wide activations). One more forward of the layers a training step; gradients unchanged.
   */
  gradientCheckpointingEnable(): void {
    this.gradientCheckpointing = true;
  }

  gradientCheckpointingDisable(): void {
    this.gradientCheckpointing = false;
  }

  numParameters(): number {
    let n = 0;
    this.weights.forEach((v) => { n += v.size; });
    return n;
  }

  dispose(): void {
    this.weights.forEach((v) => v.dispose());
    this.weights.clear();
  }
}

export interface NemotronHGenerateOptions {
  maxNewTokens: number;
  attentionMask?: number[][];
  /** Default: config.json's eos_token_id; null: none. */
  eosTokenId?: number | number[] | null;
  doSample?: boolean;
  temperature?: number;
  /** Default 50 when sampling, as transformers. */
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number | string;
  /** Each step's tokens (one a row), as they are chosen. */
  onToken?: (tokens: number[]) => void;
}

/**
 * The Mamba-2 scan of a whole prompt in chunks (the state-space duality form transformers' torch path computes): within
 * a chunk, y = (C·Bᵀ ∘ L)·(Δt·x) with L[l, s] = exp(Σ_{s<j≤l} Δt_j·A) the decay from s to l; across chunks, each
 * chunk's final state carries into the next. x [batch, time, heads, head_dim], Δt [batch, time, heads], A [heads],
 * B and C [batch, time, heads, state]; `initialState` [batch, heads, head_dim, state] the state before the first
 * position (default zeros). Returns y (without the D·x skip) and the state after the last token, [batch, heads,
 * head_dim, state].
 */
export function ssdScan(x: tf.Tensor, dt: tf.Tensor, A: tf.Tensor, B: tf.Tensor, C: tf.Tensor, chunkSize: number, initialState?: tf.Tensor): { y: tf.Tensor; state: tf.Tensor } {
  const [batch, time, heads, headDim] = x.shape as [number, number, number, number];
  const stateSize = B.shape[3] as number;
  const q = Math.min(chunkSize, time);
  const chunks = Math.ceil(time / q);
  const pad = chunks * q - time;
  // Padding at the end (Δt 0: no decay, no input) leaves every real position's result as it is.
  const padTime = (t: tf.Tensor) => (pad ? tf.pad(t, [[0, 0], [0, pad], ...t.shape.slice(2).map((): [number, number] => [0, 0])]) : t);
  // [batch, chunks, q, heads, …] → [batch·chunks·heads, q, …]
  const byChunk = (t: tf.Tensor, width: number) => padTime(t).reshape([batch, chunks, q, heads, width]).transpose([0, 1, 3, 2, 4]).reshape([batch * chunks * heads, q, width]);
  const xs = byChunk(tf.mul(x, dt.expandDims(-1)), headDim);
  const Bs = byChunk(B, stateSize);
  const Cs = byChunk(C, stateSize);
  const a = padTime(tf.mul(dt, A)).reshape([batch, chunks, q, heads]).transpose([0, 1, 3, 2]).reshape([batch * chunks * heads, q]);
  const cumsum = tf.cumsum(a, 1);
  // L[l, s] = exp(cumsum_l - cumsum_s) for s ≤ l, 0 above the diagonal: -1e30 added there before exp (one broadcast
  // add; exp gives 0 and a zero gradient — no inf, no NaN).
  const above = tf.tensor2d(Array.from({ length: q }, (_, l) => Array.from({ length: q }, (_, s) => (s <= l ? 0 : -1e30))));
  const L = tf.exp(tf.add(tf.sub(cumsum.expandDims(2), cumsum.expandDims(1)), above));
  const yDiag = tf.matMul(tf.mul(tf.matMul(Cs, Bs, false, true), L), xs);
  // Each chunk's own final state (from zero), then the states carried across chunks.
  const last = cumsum.slice([0, q - 1], [-1, 1]);
  const decayToEnd = tf.exp(tf.sub(last, cumsum)).expandDims(-1);
  // States as [batch, chunks, heads, state·head_dim]: 4-D slices (a 5-D slice's gradient, a 5-D pad, has no WebGPU kernel).
  const width = stateSize * headDim;
  const chunkStates = tf.matMul(tf.mul(Bs, decayToEnd), xs, true, false).reshape([batch, chunks, heads, width]);
  const chunkDecay = tf.exp(last).reshape([batch, chunks, heads, 1]);
  // The state entering the first chunk: a kept one ([batch, heads, head_dim, state]), or zeros.
  let running: tf.Tensor = initialState ? initialState.transpose([0, 1, 3, 2]).reshape([batch, 1, heads, width]) : tf.zeros([batch, 1, heads, width]);
  const entering: tf.Tensor[] = [];
  for (let k = 0; k < chunks; k++) {
    entering.push(running);
    running = tf.add(tf.mul(running, chunkDecay.slice([0, k], [-1, 1])), chunkStates.slice([0, k], [-1, 1]));
  }
  const previous = tf.concat(entering, 1).reshape([batch * chunks * heads, stateSize, headDim]);
  const yOff = tf.mul(tf.matMul(Cs, previous), tf.exp(cumsum).expandDims(-1));
  const y = tf.add(yDiag, yOff).reshape([batch, chunks, heads, q, headDim]).transpose([0, 1, 3, 2, 4]).reshape([batch, chunks * q, heads, headDim]);
  return {
    y: pad ? y.slice([0, 0, 0, 0], [batch, time, heads, headDim]) : y,
    state: running.reshape([batch, heads, stateSize, headDim]).transpose([0, 1, 3, 2]),
  };
}

/** Whether the backend runs the depthwise convolution, and its gradient where a tape records (wasm has no backward). */
function depthwiseAvailable(): boolean {
  const backend = tf.getBackend();
  if (!tf.getKernel('DepthwiseConv2dNative', backend)) return false;
  return !recordingGradients() || ['DepthwiseConv2dNativeBackpropInput', 'DepthwiseConv2dNativeBackpropFilter'].every((name) => tf.getKernel(name, backend));
}

/** Backends whose tensors cannot be read synchronously in Node (WebGPU: no OffscreenCanvas there). */
const ASYNC_ONLY_BACKENDS = ['webgpu', 'webgl'];

/** Refuses, by name, what reads tensors synchronously on a backend that cannot. */
function requireSyncReads(what: string, instead?: string): void {
  const backend = tf.getBackend();
  if (!ASYNC_ONLY_BACKENDS.includes(backend)) return;
  throw new Error(`NemotronH: ${what} reads tensors synchronously, which the ${backend} backend cannot in Node${instead ? `; ${instead}` : ' (not supported there yet)'}`);
}

/**
 * The router's choice on the device: sigmoid scores plus the correction bias, the topk_group best groups (a group
 * scored by its two best experts), then the best num_experts_per_tok experts among them — as [tokens, k + experts]:
 * the chosen indices (as floats), then the 0/1 mask. One op to the gradient, whose gradient is zero: the choice is not
 * differentiable (top-k has no gradient; the scores' reaches the router through the weights instead).
 */
function routeOnDevice(c: NemotronHConfig, scores: tf.Tensor, bias: tf.Tensor): tf.Tensor {
  // customGrad hands its function the inputs, then a save callback (unused: the gradient reads nothing).
  const route = tf.customGrad(((...args: unknown[]) => {
    const [s, b] = args as [tf.Tensor, tf.Tensor];
    const tokens = s.shape[0];
    const experts = c.nRoutedExperts;
    let choice = tf.add(s, b);
    if (c.topkGroup < c.nGroup) {
      const perGroup = experts / c.nGroup;
      const groupScores = tf.sum(tf.topk(choice.reshape([tokens, c.nGroup, perGroup]), Math.min(2, perGroup)).values, -1);
      const kept = chosenMask(tf.topk(groupScores, c.topkGroup).indices, c.nGroup);
      const keptExperts = tf.tile(kept.reshape([tokens, c.nGroup, 1]), [1, 1, perGroup]).reshape([tokens, experts]);
      // The other groups' experts pushed far below any score (finite: every backend's top-k orders it).
      choice = tf.sub(choice, tf.mul(tf.sub(1, keptExperts), 1e9));
    }
    const chosen = tf.topk(choice, c.numExpertsPerTok).indices;
    const mask = chosenMask(chosen, experts);
    return { value: tf.concat([tf.cast(chosen, 'float32'), mask], 1), gradFunc: () => [tf.zerosLike(s), tf.zerosLike(b)] };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return route(scores, bias);
}

/**
 * A 0/1 float mask [rows, depth] of the indices [rows, n]: one one-hot row an index, added up (cast to float: wasm's
 * OneHot writes int32 whatever dtype is asked; summed a slot at a time: WebGPU's transpose for a reduction over a
 * middle axis miscompiles on a cast integer tensor).
 */
function chosenMask(indices: tf.Tensor, depth: number): tf.Tensor {
  const [rows, n] = indices.shape;
  let mask: tf.Tensor = tf.zeros([rows, depth]);
  for (let j = 0; j < n; j++) mask = tf.add(mask, tf.cast(tf.oneHot(indices.slice([0, j], [rows, 1]).reshape([rows]) as tf.Tensor1D, depth), 'float32'));
  return mask;
}

/** Rows `index` (indices as floats) of the stacked experts' matrices, their gradient summed back per expert. */
function gatherExperts(table: tf.Tensor, index: tf.Tensor): tf.Tensor {
  const gather = tf.customGrad(((...args: unknown[]) => {
    const [t, i] = args as [tf.Tensor, tf.Tensor1D];
    (args[args.length - 1] as (ts: tf.Tensor[]) => void)([i]);
    const gradFunc = (dy: tf.Tensor, [saved]: tf.Tensor[]) => [tf.unsortedSegmentSum(dy, tf.cast(saved, 'int32') as tf.Tensor1D, t.shape[0]), tf.zerosLike(saved)];
    return { value: tf.gather(t, tf.cast(i, 'int32')), gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return gather(table, index);
}

/** Frees the tensors a pass left (the state object stays usable for the next one). */
export function disposeState(state: Partial<NemotronHState>): void {
  for (const layer of state.layers ?? []) {
    if (!layer) continue;
    tf.dispose(Object.values(layer));
  }
  state.layers = [];
}


/** Positions a state holds (its rows' masks' length). */
export function stateLength(state: NemotronHState): number {
  return state.mask[0]?.length ?? 0;
}

type KeptLayer = NonNullable<NemotronHState['layers'][number]>;
type MambaKept = { conv: tf.Tensor3D; ssm: tf.Tensor4D };
type AttentionKept = { keys: tf.Tensor4D; values: tf.Tensor4D };

/** `build` for every layer that keeps something, in its own tidy (its result kept). */
function mapLayers(state: NemotronHState, build: (layer: KeptLayer, i: number) => KeptLayer): NemotronHState['layers'] {
  return state.layers.map((layer, i) => (layer ? tf.tidy(() => build(layer, i) as unknown as tf.TensorContainer) as unknown as KeptLayer : null));
}

/**
 * Rows `rows` of a state, as a new one (the given one stays as it is), without its first `dropLeft` positions (left
 * padding that none of the rows needs any more: attention's keys and values and the masks lose them; the Mamba-2
 * window and state hold no positions).
 */
export function selectStateRows(state: NemotronHState, rows: number[], dropLeft = 0): NemotronHState {
  const layers = mapLayers(state, (layer) => {
    const index = tf.tensor1d(rows, 'int32');
    if ('conv' in layer) return { conv: tf.gather(layer.conv, index), ssm: tf.gather(layer.ssm, index) } as MambaKept;
    const cut = (t: tf.Tensor4D) => tf.gather(t, index).slice([0, 0, dropLeft, 0], [-1, -1, -1, -1]) as tf.Tensor4D;
    return { keys: cut(layer.keys), values: cut(layer.values) };
  });
  return { layers, mask: rows.map((r) => state.mask[r].slice(dropLeft)) };
}

/** A state's copy that outlives it (its tensors kept, no data copied): what a rewind goes back to. */
export function cloneState(state: NemotronHState): NemotronHState {
  const layers = mapLayers(state, (layer) => ('conv' in layer
    ? { conv: tf.clone(layer.conv), ssm: tf.clone(layer.ssm) } : { keys: tf.clone(layer.keys), values: tf.clone(layer.values) }));
  return { layers, mask: state.mask.map((r) => r.slice()) };
}

/**
 * The rows of `a` then those of `b`, as a new state (the given ones stay as they are): the shorter one's attention
 * keys and values left-padded with zeros, masked (0) in its masks, so that every row keeps its own positions.
 */
export function joinStates(a: NemotronHState, b: NemotronHState): NemotronHState {
  const length = Math.max(stateLength(a), stateLength(b));
  const [byA, byB] = [length - stateLength(a), length - stateLength(b)];
  const padLeft = (t: tf.Tensor4D, by: number) => (by ? tf.pad(t, [[0, 0], [0, 0], [by, 0], [0, 0]]) : t);
  const layers = mapLayers(a, (layer, i) => {
    const other = b.layers[i]!;
    if ('conv' in layer) return { conv: tf.concat([layer.conv, (other as MambaKept).conv]), ssm: tf.concat([layer.ssm, (other as MambaKept).ssm]) } as MambaKept;
    const y = other as AttentionKept;
    return { keys: tf.concat([padLeft(layer.keys, byA), padLeft(y.keys, byB)]), values: tf.concat([padLeft(layer.values, byA), padLeft(y.values, byB)]) } as AttentionKept;
  });
  const pad = (m: number[]) => [...new Array<number>(length - m.length).fill(0), ...m];
  return { layers, mask: [...a.mask, ...b.mask].map(pad) };
}
