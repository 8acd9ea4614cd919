import * as tf from '@tensorflow/tfjs';
import { KVCache } from '../../layers/attention';
import { NemotronDecoderLayer } from '../../layers/decoder-layer';
import { NemotronLayerNorm1P } from '../../layers/layernorm1p';
import { PartialRotaryEmbedding } from '../../layers/rotary';
import { outputs } from '../../layers/weights';
import { VocabMatrix } from '../../layers/vocab-matrix';
import { DECODE_STEP_KERNEL, fusedKernelApplies, recordingGradients } from '../../src/kernels/fused';
import { DecodeGraphError, decodeStepFits, decodeStepInputs, decodeStepSpec } from '../../src/kernels/tensorflow-graph';
import { IntMatrixLike, MASK_MIN, readIntRows } from '../../src/tensors';
import { recomputeInBackward } from '../../src/training/checkpointing';
import { NemotronConfig } from './config';
import { NemotronPreTrainedModel, prefixed } from './pretrained';

export { KVCache };

export interface NemotronModelInputs {
  /** Token ids [batch, seq]: an int32 tensor or plain rows. Exactly one of inputIds / inputsEmbeds. */
  inputIds?: IntMatrixLike;
  /** 1 = attend, 0 = padding; [batch, pastLength + seq]. */
  attentionMask?: IntMatrixLike;
  /** Positions [batch, seq]; default pastLength … pastLength + seq - 1. */
  positionIds?: IntMatrixLike;
  /** Embeddings [batch, seq, hidden] instead of ids. */
  inputsEmbeds?: tf.Tensor3D;
  /** A cache to read and extend (the caller owns and disposes it). */
  pastKeyValues?: KVCache;
  /** Return a cache: the one passed in, or a new one. Default: true only when pastKeyValues is given. */
  useCache?: boolean;
  outputHiddenStates?: boolean;
  outputAttentions?: boolean;
}

export interface BaseModelOutput {
  lastHiddenState: tf.Tensor3D;
  /** Embeddings first, then each layer's output, the last one after the final norm. */
  hiddenStates?: tf.Tensor3D[];
  /** Softmax attention probabilities per layer, [batch, heads, seq, keyLength]. */
  attentions?: tf.Tensor4D[];
  pastKeyValues?: KVCache;
  /**
   * [batch, vocab]: the last hidden state times the output weight passed to forward(), where the compiled decoding
   * step applied it on the way (NemotronForCausalLM's logits; absent otherwise).
   */
  projectedLogits?: tf.Tensor2D;
}

/** What a forward call resolved from its inputs: validated shapes and the values that steer it. */
export interface PreparedInputs {
  batch: number;
  seq: number;
  pastLength: number;
  /** Token ids as plain rows (null when embeddings were given). */
  ids: number[][] | null;
  /** The attention mask's rows, or null without one. */
  mask: number[][] | null;
  /** Position ids: given, or pastLength … pastLength + seq - 1. */
  positions: number[][];
}

/** The bare decoder: embeddings, N pre-norm blocks, final LayerNorm1P. */
export class NemotronModel extends NemotronPreTrainedModel {
  static readonly architecture: string = 'NemotronModel';
  readonly basePrefix: string = '';
  /** embed_tokens.weight [vocab, hidden] (row blocks where the backend binds less: see VocabMatrix). */
  readonly embedding: VocabMatrix;
  readonly layers: NemotronDecoderLayer[];
  readonly norm: NemotronLayerNorm1P;
  readonly rotary: PartialRotaryEmbedding;
  /**
   * Recompute each decoder layer in the backward instead of keeping its activations (see gradientCheckpointingEnable):
   * applies under a gradient tape, without a cache or attention maps asked for.
   */
  gradientCheckpointing = false;

  protected checkpointingSwitch(): { gradientCheckpointing: boolean } {
    return this;
  }

  constructor(config: NemotronConfig) {
    super(config);
    const c = config;
    this.embedding = new VocabMatrix(c.vocabSize, c.hiddenSize, c.initializerRange);
    this.layers = Array.from({ length: c.numHiddenLayers }, (_, i) => new NemotronDecoderLayer({
      hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, numHeads: c.numAttentionHeads,
      numKeyValueHeads: c.numKeyValueHeads, headDim: c.headDim, attentionBias: c.attentionBias, mlpBias: c.mlpBias,
      activation: c.hiddenAct, normEps: c.normEps, layerIndex: i, initializerRange: c.initializerRange,
    }));
    this.norm = new NemotronLayerNorm1P({ size: c.hiddenSize, eps: c.normEps });
    this.rotary = new PartialRotaryEmbedding({
      headDim: c.headDim, rotaryDim: c.rotaryDim, base: c.ropeTheta,
      scaling: c.ropeScaling, maxPositionEmbeddings: c.maxPositionEmbeddings, initialPositions: Math.min(c.maxPositionEmbeddings, 256),
    });
  }

  /** embed_tokens.weight as one tensor (it is one unless the backend made row blocks of it: see VocabMatrix). */
  get embedTokens(): tf.Variable {
    const single = this.embedding.single;
    if (!single) throw new Error(`embed_tokens.weight is stored in ${this.embedding.blocks.length} row blocks on this backend: use model.embedding`);
    return single;
  }

  namedParameters(): Map<string, tf.Variable> {
    return new Map(this.baseParameters(this.basePrefix));
  }

  protected vocabularyMatrices(): VocabMatrix[] {
    return [this.embedding];
  }

  /** The base weights under a prefix ('model.' inside the heads). */
  baseParameters(prefix: string): Array<[string, tf.Variable]> {
    return [
      ...this.embedding.named(`${prefix}embed_tokens.weight`),
      ...this.layers.flatMap((layer, i) => prefixed(`${prefix}layers.${i}.`, layer.namedWeights())),
      ...prefixed(`${prefix}norm.`, this.norm.namedWeights()),
    ];
  }

  protected disposeExtras(): void {
    this.rotary.disposeWeights();
  }

  /** Validates the inputs of a forward call against the config; every error names the value and what was expected. */
  prepare(inputs: NemotronModelInputs): PreparedInputs {
    const c = this.config;
    if ((inputs.inputIds === undefined) === (inputs.inputsEmbeds === undefined)) {
      throw new Error('forward: pass exactly one of inputIds and inputsEmbeds');
    }
    let ids: number[][] | null = null;
    let batch: number;
    let seq: number;
    if (inputs.inputIds !== undefined) {
      ids = readIntRows(inputs.inputIds, 'inputIds');
      [batch, seq] = [ids.length, ids[0].length];
      ids.forEach((row, r) => row.forEach((id, p) => {
        if (id < 0 || id >= c.vocabSize) {
          throw new Error(`inputIds[${r}][${p}] = ${id} is out of range: token ids must be in [0, vocab_size ${c.vocabSize})`);
        }
      }));
    } else {
      const e = inputs.inputsEmbeds!;
      if (e.rank !== 3 || e.shape[2] !== c.hiddenSize) {
        throw new Error(`inputsEmbeds must be [batch, seq, hidden_size ${c.hiddenSize}], got [${e.shape}]`);
      }
      [batch, seq] = [e.shape[0], e.shape[1]];
    }
    const cache = inputs.pastKeyValues;
    const pastLength = cache?.length ?? 0;
    if (cache && cache.numLayers !== c.numHiddenLayers) {
      throw new Error(`pastKeyValues has ${cache.numLayers} layers, the model ${c.numHiddenLayers}`);
    }
    if (cache && cache.batchSize !== null && cache.batchSize !== batch) {
      throw new Error(`pastKeyValues holds a batch of ${cache.batchSize}, the inputs a batch of ${batch}`);
    }
    if (pastLength + seq > c.maxSequenceLength) {
      throw new Error(`Sequence of ${pastLength + seq} tokens (${pastLength} cached + ${seq} new) is longer than ` +
        `max_position_embeddings ${c.maxPositionEmbeddings}`);
    }
    let mask: number[][] | null = null;
    if (inputs.attentionMask !== undefined) {
      mask = readIntRows(inputs.attentionMask, 'attentionMask');
      const width = mask[0].length;
      if (mask.length !== batch || width !== pastLength + seq) {
        throw new Error(`attentionMask has shape [${mask.length}, ${width}], expected [${batch}, ${pastLength + seq}] ` +
          `(batch, cached + new tokens) to match inputIds [${batch}, ${seq}]`);
      }
      mask.forEach((row, r) => row.forEach((v, p) => {
        if (v !== 0 && v !== 1) throw new Error(`attentionMask[${r}][${p}] = ${v}, expected 0 or 1`);
      }));
    }
    let positions = Array.from({ length: batch }, () => Array.from({ length: seq }, (_, i) => pastLength + i));
    if (inputs.positionIds !== undefined) {
      const pos = positions = readIntRows(inputs.positionIds, 'positionIds');
      if (pos.length !== batch || pos[0].length !== seq) {
        throw new Error(`positionIds has shape [${pos.length}, ${pos[0].length}], expected [${batch}, ${seq}]`);
      }
      pos.forEach((row, r) => row.forEach((v, p) => {
        if (!Number.isInteger(v) || v < 0 || v >= c.maxSequenceLength) {
          throw new Error(`positionIds[${r}][${p}] = ${v} is outside [0, max_position_embeddings ${c.maxPositionEmbeddings})`);
        }
      }));
    }
    return { batch, seq, pastLength, ids, mask, positions };
  }

  /**
   * The additive float32 mask [batch, 1, seq, pastLength + seq] shared by every layer: causal, plus padding
   * where an attention mask is given. Null for a single new token without padding (nothing to mask).
   */
  buildMask(attentionMask: number[][] | null, batch: number, seq: number, pastLength: number): tf.Tensor4D | null {
    const keys = pastLength + seq;
    if (seq === 1 && !attentionMask?.some((row) => row.includes(0))) return null;
    const data = new Float32Array(batch * seq * keys);
    for (let b = 0; b < batch; b++) {
      for (let q = 0; q < seq; q++) {
        const base = (b * seq + q) * keys;
        for (let k = 0; k < keys; k++) {
          const allowed = k <= pastLength + q && (!attentionMask || attentionMask[b][k] === 1);
          if (!allowed) data[base + k] = MASK_MIN;
        }
      }
    }
    return tf.tensor4d(data, [batch, 1, seq, keys]);
  }

  /** float32 bytes of the base weights, and the vocabulary size they were counted at (resizeTokenEmbeddings). */
  private weightBytes?: { bytes: number; vocab: number };

  /** The compiled step's spec where this forward is a decoding step the backend compiles (see DECODE_STEP_KERNEL). */
  private compiledDecodeStep(prepared: PreparedInputs, inputs: NemotronModelInputs, cache: KVCache | undefined, hasMask: boolean,
    outputWeight: tf.Tensor2D | undefined) {
    if (prepared.seq !== 1 || !cache || cache.length === 0 || inputs.outputHiddenStates || inputs.outputAttentions) return null;
    if (!fusedKernelApplies(DECODE_STEP_KERNEL)) return null;
    // The compiled step reads the weights alone: unmerged LoRA adapters go layer by layer (mergeAndUnload() folds them in).
    if (this.layers.some((layer) => layer.adapterVariables().length > 0)) return null;
    if (this.weightBytes?.vocab !== this.embedding.rows) {
      this.weightBytes = { bytes: 4 * this.baseParameters('').reduce((n, [, v]) => n + v.size, 0), vocab: this.embedding.rows };
    }
    const weightBytes = this.weightBytes.bytes;
    // The native backend's graph copies its inputs each run (decodeStepFits); WebGPU reads the weights where they are.
    const fits = (bytes: number) => tf.getBackend() !== 'tensorflow' || decodeStepFits(bytes);
    if (!fits(weightBytes)) return null;
    // With the output projection where it fits too, else without it (the head then applies it).
    const vocab = outputWeight?.shape[0] ?? 0;
    const withProjection = vocab > 0 && fits(weightBytes + 4 * vocab * this.config.hiddenSize);
    const spec = decodeStepSpec(this.config, prepared.batch, hasMask, withProjection ? vocab : 0);
    // A backend may take only some steps (WebGPU: no biases, at most FEW_ROWS rows).
    return spec && fusedKernelApplies(DECODE_STEP_KERNEL, spec as unknown as Record<string, unknown>) ? spec : null;
  }

  /**
   * `prepared`: what prepare(inputs) returned, when the caller (a head) has validated the inputs already.
   * `outputWeight` [vocab, hidden]: a projection the compiled decoding step may apply too (see projectedLogits).
   */
  forward(inputs: NemotronModelInputs, prepared: PreparedInputs = this.prepare(inputs), outputWeight?: tf.Tensor2D): BaseModelOutput {
    const { batch, seq, pastLength, ids, mask, positions } = prepared;
    const useCache = inputs.useCache ?? inputs.pastKeyValues !== undefined;
    const cache = useCache ? inputs.pastKeyValues ?? new KVCache(this.config.numHiddenLayers) : undefined;
    const maxPosition = Math.max(...positions.map((row) => Math.max(...row)));

    const out = tf.tidy(() => {
      const hiddenStates: tf.Tensor3D[] = [];
      const attentions: tf.Tensor4D[] = [];
      // Hidden states travel as [batch·seq, hidden]: every projection is then one matMul with no reshapes around it.
      let hidden = ids
        ? this.embedding.embed(ids.flat())
        : (inputs.inputsEmbeds!.reshape([batch * seq, this.config.hiddenSize]) as tf.Tensor2D);
      const as3d = (t: tf.Tensor) => t.reshape([batch, seq, this.config.hiddenSize]) as tf.Tensor3D;
      const additiveMask = this.buildMask(mask, batch, seq, pastLength);
      const [cos, sin] = this.rotary.tables(tf.tensor2d(positions, [batch, seq], 'int32'), maxPosition);
      const step = this.compiledDecodeStep(prepared, inputs, cache, additiveMask !== null, outputWeight);
      if (step) {
        // One token per row after a cache: the whole step as one kernel (the native backend runs it as one graph).
        const named: tf.NamedTensorMap = { hidden, cos, sin, ...(additiveMask ? { mask: additiveMask } : {}) };
        cache!.keys.forEach((k, i) => Object.assign(named, { [`past.keys.${i}`]: k!, [`past.values.${i}`]: cache!.values[i]! }));
        const weights = new Map<string, tf.Tensor>(this.baseParameters(''));
        if (outputWeight && step.vocabSize > 0) weights.set('output.weight', outputWeight);
        for (const [name] of decodeStepInputs(step)) if (!(name in named)) named[name] = weights.get(name)!;
        try {
          const [last, ...rest] = tf.engine().runKernel(DECODE_STEP_KERNEL, named, step as unknown as tf.NamedAttrMap) as tf.Tensor[];
          const projectedLogits = step.vocabSize > 0 ? rest.shift() as tf.Tensor2D : undefined;
          for (let i = 0; i < this.layers.length; i++) cache!.replace(i, rest[2 * i] as tf.Tensor4D, rest[2 * i + 1] as tf.Tensor4D);
          return { lastHiddenState: as3d(last), hiddenStates, attentions, projectedLogits };
        } catch (e) {
          if (!(e instanceof DecodeGraphError)) throw e;
          // Nothing changed yet (the cache is replaced only on success): the layers below compute the same step.
          console.warn(`nemotron-tfjs: ${e.message}; decoding layer by layer`);
        }
      }
      const kwargs = { mask: additiveMask, cache, outputAttentions: inputs.outputAttentions ?? false, rotaryDim: this.config.rotaryDim };
      // Gradient checkpointing: a layer's constants (rotary tables, permutation, mask) travel as arguments, so that
      // the recomputation in the backward reads the kept copies; frozen weights (LoRA's base) get no gradient.
      const checkpointed = this.gradientCheckpointing && recordingGradients() && !cache && !kwargs.outputAttentions;
      const constants = [cos, sin, this.rotary.permutation, ...(additiveMask ? [additiveMask] : [])];
      for (const layer of this.layers) {
        if (inputs.outputHiddenStates) hiddenStates.push(as3d(hidden));
        if (checkpointed) {
          hidden = recomputeInBackward((h, [c, s, p, m]) => outputs(layer.apply([h, c, s, p], { ...kwargs, mask: m ?? null }))[0],
            hidden, constants, [...layer.namedWeights().map(([, v]) => v), ...layer.adapterVariables()].filter((v) => v.trainable)) as tf.Tensor2D;
          continue;
        }
        const [next, probs] = outputs(layer.apply([hidden, cos, sin, this.rotary.permutation], kwargs));
        hidden = next as tf.Tensor2D;
        if (probs) attentions.push(probs as tf.Tensor4D);
      }
      const lastHiddenState = as3d(this.norm.apply(hidden) as tf.Tensor);
      if (inputs.outputHiddenStates) hiddenStates.push(lastHiddenState);
      return { lastHiddenState, hiddenStates, attentions, projectedLogits: undefined as tf.Tensor2D | undefined };
    });
    const result: BaseModelOutput = { lastHiddenState: out.lastHiddenState };
    if (inputs.outputHiddenStates) result.hiddenStates = out.hiddenStates;
    if (inputs.outputAttentions) result.attentions = out.attentions;
    if (cache) result.pastKeyValues = cache;
    if (out.projectedLogits) result.projectedLogits = out.projectedLogits;
    return result;
  }
}
