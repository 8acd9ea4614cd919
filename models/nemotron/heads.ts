import * as tf from '@tensorflow/tfjs';
import { Linear } from '../../layers/linear';
import { VocabMatrix } from '../../layers/vocab-matrix';
import { linear } from '../../layers/weights';
import { binaryCrossEntropyWithLogits, crossEntropy, meanSquaredError } from '../../src/losses';
import { IntMatrixLike, readIntRows, readNumbers } from '../../src/tensors';
import { NemotronConfig, ProblemType } from './config';
import { BaseModelOutput, KVCache, NemotronModel, NemotronModelInputs, PreparedInputs } from './model';
import { NemotronPreTrainedModel, prefixed } from './pretrained';

export interface HeadInputs extends NemotronModelInputs {
  /** Causal LM and token classification: [batch, seq] (-100 = ignored); sequence classification: [batch] or [batch, numLabels]. */
  labels?: tf.Tensor | number[][] | number[];
  /** Question answering: the gold span, [batch] each. */
  startPositions?: tf.Tensor | number[];
  endPositions?: tf.Tensor | number[];
  /** Causal LM: compute logits for the last N positions only (0 = all). */
  logitsToKeep?: number;
}

interface CommonOutput {
  loss?: tf.Scalar;
  hiddenStates?: tf.Tensor3D[];
  attentions?: tf.Tensor4D[];
  pastKeyValues?: KVCache;
}
export interface CausalLMOutput extends CommonOutput { logits: tf.Tensor3D }
export interface SequenceClassifierOutput extends CommonOutput { logits: tf.Tensor2D }
export interface TokenClassifierOutput extends CommonOutput { logits: tf.Tensor3D }
export interface QuestionAnsweringOutput extends CommonOutput { startLogits: tf.Tensor2D; endLogits: tf.Tensor2D }

/** A base model under a prefix plus a head; runs the base, then `head` inside one tidy. */
abstract class NemotronWithHead<Out extends CommonOutput> extends NemotronPreTrainedModel {
  readonly basePrefix: string = 'model.';
  readonly model: NemotronModel;

  constructor(config: NemotronConfig) {
    super(config);
    this.model = new NemotronModel(config);
  }

  /** The head's own parameters, HF-named. */
  protected abstract headParameters(): Array<[string, tf.Variable]>;

  protected vocabularyMatrices(): VocabMatrix[] {
    return [this.model.embedding];
  }

  /** Head outputs (and loss) from the base output; runs inside tf.tidy. */
  protected abstract head(base: BaseModelOutput, inputs: HeadInputs, prepared: PreparedInputs): Omit<Out, keyof Omit<CommonOutput, 'loss'>>;

  namedParameters(): Map<string, tf.Variable> {
    return new Map([...this.model.baseParameters(this.basePrefix), ...this.headParameters()]);
  }

  /** A projection [out, hidden] of the last hidden state the base may apply in its compiled decoding step. */
  protected decodingProjection(_inputs: HeadInputs): tf.Tensor2D | undefined {
    return undefined;
  }

  protected disposeExtras(): void {
    this.model.rotary.disposeWeights();
  }

  protected checkpointingSwitch(): { gradientCheckpointing: boolean } {
    return this.model;
  }

  forward(inputs: HeadInputs): Out {
    const prepared = this.model.prepare(inputs);
    const base = this.model.forward(inputs, prepared, this.decodingProjection(inputs));
    let out: Out;
    try {
      out = tf.tidy(() => this.head(base, inputs, prepared) as unknown as tf.TensorContainer) as unknown as Out;
    } catch (e) {
      // A rejected label or option: free what the base computed (a cache passed in stays the caller's).
      tf.dispose([base.lastHiddenState, ...(base.hiddenStates ?? []), ...(base.attentions ?? []), base.projectedLogits ?? []]);
      if (base.pastKeyValues && base.pastKeyValues !== inputs.pastKeyValues) base.pastKeyValues.dispose();
      throw e;
    }
    if (!base.hiddenStates) base.lastHiddenState.dispose();
    base.projectedLogits?.dispose();
    if (base.hiddenStates) out.hiddenStates = base.hiddenStates;
    if (base.attentions) out.attentions = base.attentions;
    if (base.pastKeyValues) out.pastKeyValues = base.pastKeyValues;
    return out;
  }

  /**
   * The loss alone, as forward() computes it with labels, for training: nothing else comes back (no logits, cache,
   * hidden states or attentions), so a head may compute it without its outputs ever existing whole (the causal LM's
   * [tokens, vocab] logits). Throws where the inputs give no loss (no labels).
   */
  computeLoss(inputs: HeadInputs): tf.Scalar {
    const lossInputs: HeadInputs = { ...inputs, useCache: false, outputHiddenStates: false, outputAttentions: false };
    const prepared = this.model.prepare(lossInputs);
    const base = this.model.forward(lossInputs, prepared);
    try {
      return tf.tidy(() => {
        const loss = this.headLoss(base, lossInputs, prepared);
        if (!loss) throw new Error(`${this.constructor.name}.computeLoss: the inputs give no loss: pass labels (question answering: startPositions and endPositions)`);
        return loss;
      });
    } finally {
      base.lastHiddenState.dispose();
    }
  }

  /** The head's loss from the base output (inside tf.tidy); by default the head's outputs, of which only the loss is kept. */
  protected headLoss(base: BaseModelOutput, inputs: HeadInputs, prepared: PreparedInputs): tf.Scalar | undefined {
    return this.head(base, inputs, prepared).loss;
  }
}

/** Integer labels of shape [batch, seq] (or [batch]), each in [0, limit) or ignoreIndex. */
function checkedLabels(value: IntMatrixLike, name: string, shape: number[], limit: number, what: string, ignoreIndex: number | null): number[][] {
  const rows = readIntRows(value, name);
  const given = shape.length === 1 ? [rows[0].length] : [rows.length, rows[0].length];
  if (given.join() !== shape.join()) throw new Error(`${name} has shape [${given}], expected [${shape}]`);
  rows.forEach((row, r) => row.forEach((v, c) => {
    if (v !== ignoreIndex && (v < 0 || v >= limit)) {
      throw new Error(`${name}[${r}]${shape.length > 1 ? `[${c}]` : ''} = ${v} is outside [0, ${what} ${limit})` +
        (ignoreIndex !== null ? ` and is not the ignore index ${ignoreIndex}` : ''));
    }
  }));
  return rows;
}

export class NemotronForCausalLM extends NemotronWithHead<CausalLMOutput> {
  static readonly architecture: string = 'NemotronForCausalLM';
  /** Null when the head is tied to the input embeddings. */
  readonly lmHead: VocabMatrix | null;

  constructor(config: NemotronConfig) {
    super(config);
    this.lmHead = config.tieWordEmbeddings ? null : new VocabMatrix(config.vocabSize, config.hiddenSize, config.initializerRange);
  }

  protected headParameters(): Array<[string, tf.Variable]> {
    return this.lmHead ? this.lmHead.named('lm_head.weight') : [];
  }

  protected vocabularyMatrices(): VocabMatrix[] {
    return this.lmHead ? [this.model.embedding, this.lmHead] : [this.model.embedding];
  }

  /** The output projection [vocab, hidden] (the embeddings when tied), as one tensor or row blocks. */
  get outputMatrix(): VocabMatrix {
    return this.lmHead ?? this.model.embedding;
  }

  /** The output projection as one tensor (see outputMatrix where the backend may store it in row blocks). */
  get outputWeight(): tf.Tensor2D {
    const single = this.outputMatrix.single;
    if (!single) throw new Error(`The output projection is stored in ${this.outputMatrix.blocks.length} row blocks on this backend: use outputMatrix`);
    return single as tf.Tensor2D;
  }

  /** Decoding without labels: the compiled step may compute the logits itself (from one tensor). */
  protected decodingProjection(inputs: HeadInputs): tf.Tensor2D | undefined {
    return inputs.labels === undefined ? (this.outputMatrix.single as tf.Tensor2D | null) ?? undefined : undefined;
  }

  protected head(base: BaseModelOutput, inputs: HeadInputs, prepared: PreparedInputs): Pick<CausalLMOutput, 'logits' | 'loss'> {
    const keep = inputs.logitsToKeep ?? 0;
    if (!Number.isInteger(keep) || keep < 0) throw new Error(`logitsToKeep must be a non-negative integer, got ${keep}`);
    if (keep > 0 && inputs.labels !== undefined) throw new Error('logitsToKeep cannot be combined with labels: the loss needs every position');
    const { batch, seq } = prepared;
    let hidden: tf.Tensor = base.lastHiddenState;
    if (keep > 0 && keep < seq) hidden = hidden.slice([0, seq - keep, 0], [-1, keep, -1]);
    const vocab = this.config.vocabSize;
    const logits = base.projectedLogits ? base.projectedLogits.reshape([batch, seq, vocab]) as tf.Tensor3D : this.outputMatrix.project(hidden) as tf.Tensor3D;
    if (inputs.labels === undefined) return { logits };
    const shifted = this.shiftedLabels(inputs, prepared);
    const loss = crossEntropy(logits.reshape([batch * seq, this.config.vocabSize]) as tf.Tensor2D, shifted);
    return { logits, loss };
  }

  /** The labels, checked and shifted so that position i predicts token i + 1 (the last position predicts nothing: -100). */
  private shiftedLabels(inputs: HeadInputs, { batch, seq }: PreparedInputs): number[] {
    const labels = checkedLabels(inputs.labels as IntMatrixLike, 'labels', [batch, seq], this.config.vocabSize, 'vocab_size', -100);
    return labels.flatMap((row) => [...row.slice(1), -100]);
  }

  /**
   * The loss over the positions that predict a token only, by the output matrix's chunked cross entropy: the logits
   * never exist whole (for a 256,000-token vocabulary, 2,048 tokens of them are 2.1 GB, over what WebGPU binds).
   */
  protected headLoss(base: BaseModelOutput, inputs: HeadInputs, prepared: PreparedInputs): tf.Scalar | undefined {
    if (inputs.labels === undefined) return undefined;
    if (inputs.logitsToKeep) throw new Error('logitsToKeep cannot be combined with labels: the loss needs every position');
    const shifted = this.shiftedLabels(inputs, prepared);
    const counted = shifted.flatMap((label, row) => (label === -100 ? [] : [row]));
    if (counted.length === 0) {
      throw new Error('labels: no position has a token to predict (every label after the first of each row is -100): the mean loss would be NaN');
    }
    const hidden = base.lastHiddenState.reshape([prepared.batch * prepared.seq, this.config.hiddenSize]);
    const rows = tf.gather(hidden, tf.tensor1d(counted, 'int32')) as tf.Tensor2D;
    return this.outputMatrix.projectedCrossEntropy(rows, counted.map((row) => shifted[row]));
  }
}

/** The problem type transformers infers: regression for one label, else by the labels' dtype. */
function inferProblemType(config: NemotronConfig, isInteger: boolean, rank: number): ProblemType {
  if (config.problemType) return config.problemType;
  if (config.numLabels === 1) return 'regression';
  return isInteger && rank === 1 ? 'single_label_classification' : 'multi_label_classification';
}

export class NemotronForSequenceClassification extends NemotronWithHead<SequenceClassifierOutput> {
  static readonly architecture: string = 'NemotronForSequenceClassification';
  readonly score: Linear;

  constructor(config: NemotronConfig) {
    super(config);
    this.score = new Linear({ inFeatures: config.hiddenSize, outFeatures: config.numLabels, bias: false, initializerRange: config.initializerRange });
  }

  protected headParameters(): Array<[string, tf.Variable]> {
    return prefixed('score.', this.score.namedWeights());
  }

  /** The last non-pad token of each row, as transformers pools: the rightmost token that is not pad_token_id. */
  private poolIndices(prepared: PreparedInputs): number[] {
    const { batch, seq, ids } = prepared;
    const pad = this.config.padTokenId;
    if (ids === null || pad === null) {
      if (batch > 1 && ids !== null) throw new Error('Sequence classification of a batch needs pad_token_id in the config to find each row\'s last token');
      return new Array(batch).fill(seq - 1);
    }
    return ids.map((row) => {
      let last = -1;
      row.forEach((id, i) => { if (id !== pad) last = i; });
      return last === -1 ? seq - 1 : last;
    });
  }

  protected head(base: BaseModelOutput, inputs: HeadInputs, prepared: PreparedInputs): Pick<SequenceClassifierOutput, 'logits' | 'loss'> {
    const { batch, seq } = prepared;
    const hidden = this.config.hiddenSize;
    const rows = this.poolIndices(prepared).map((last, b) => b * seq + last);
    const pooled = tf.gather(base.lastHiddenState.reshape([batch * seq, hidden]), tf.tensor1d(rows, 'int32'));
    const logits = this.score.apply(pooled) as tf.Tensor2D;
    if (inputs.labels === undefined) return { logits };
    const labels = readNumbers(inputs.labels as tf.Tensor | number[], 'labels');
    const numLabels = this.config.numLabels;
    const problem = inferProblemType(this.config, labels.isInteger, labels.shape.length);
    let loss: tf.Scalar;
    if (problem === 'regression') {
      const expected = numLabels === 1 ? [batch] : [batch, numLabels];
      const ok = labels.values.length === batch * numLabels && (labels.shape[0] === batch);
      if (!ok) throw new Error(`labels has shape [${labels.shape}], expected [${expected}] for regression`);
      loss = meanSquaredError(logits.reshape([-1]), tf.tensor1d(labels.values));
    } else if (problem === 'single_label_classification') {
      if (labels.shape.length !== 1 || labels.shape[0] !== batch) {
        throw new Error(`labels has shape [${labels.shape}], expected [${batch}] (one class id per row)`);
      }
      checkedLabels([labels.values], 'labels', [batch], numLabels, 'num_labels', -100);
      loss = crossEntropy(logits, labels.values);
    } else {
      if (labels.shape.length !== 2 || labels.shape[0] !== batch || labels.shape[1] !== numLabels) {
        throw new Error(`labels has shape [${labels.shape}], expected [${batch}, ${numLabels}] for multi-label classification`);
      }
      loss = binaryCrossEntropyWithLogits(logits, tf.tensor2d(labels.values, [batch, numLabels]));
    }
    return { logits, loss };
  }
}

export class NemotronForTokenClassification extends NemotronWithHead<TokenClassifierOutput> {
  static readonly architecture: string = 'NemotronForTokenClassification';
  readonly score: Linear;

  constructor(config: NemotronConfig) {
    super(config);
    this.score = new Linear({ inFeatures: config.hiddenSize, outFeatures: config.numLabels, bias: true, initializerRange: config.initializerRange });
  }

  protected headParameters(): Array<[string, tf.Variable]> {
    return prefixed('score.', this.score.namedWeights());
  }

  protected head(base: BaseModelOutput, inputs: HeadInputs, prepared: PreparedInputs): Pick<TokenClassifierOutput, 'logits' | 'loss'> {
    const { batch, seq } = prepared;
    const numLabels = this.config.numLabels;
    const logits = this.score.apply(base.lastHiddenState) as tf.Tensor3D;
    if (inputs.labels === undefined) return { logits };
    const labels = checkedLabels(inputs.labels as IntMatrixLike, 'labels', [batch, seq], numLabels, 'num_labels', -100);
    const loss = crossEntropy(logits.reshape([batch * seq, numLabels]) as tf.Tensor2D, labels.flat());
    return { logits, loss };
  }
}

export class NemotronForQuestionAnswering extends NemotronWithHead<QuestionAnsweringOutput> {
  static readonly architecture: string = 'NemotronForQuestionAnswering';
  // transformers stores this class's base model under `transformer.`.
  readonly basePrefix: string = 'transformer.';
  readonly qaOutputs: Linear;

  constructor(config: NemotronConfig) {
    super(config);
    this.qaOutputs = new Linear({ inFeatures: config.hiddenSize, outFeatures: 2, bias: true, initializerRange: config.initializerRange });
  }

  /** transformers names the base `transformer` in this class. */
  get transformer(): NemotronModel {
    return this.model;
  }

  protected headParameters(): Array<[string, tf.Variable]> {
    return prefixed('qa_outputs.', this.qaOutputs.namedWeights());
  }

  protected head(base: BaseModelOutput, inputs: HeadInputs, prepared: PreparedInputs): Pick<QuestionAnsweringOutput, 'startLogits' | 'endLogits' | 'loss'> {
    const { batch, seq } = prepared;
    const spans = this.qaOutputs.apply(base.lastHiddenState) as tf.Tensor3D;
    const [start, end] = tf.split(spans, 2, 2).map((t) => t.reshape([batch, seq]) as tf.Tensor2D);
    if (inputs.startPositions === undefined && inputs.endPositions === undefined) return { startLogits: start, endLogits: end };
    if (inputs.startPositions === undefined || inputs.endPositions === undefined) {
      throw new Error('Question answering needs both startPositions and endPositions for a loss');
    }
    // Positions outside the sequence are clamped to seq and ignored, as transformers does.
    const positions = (value: tf.Tensor | number[], name: string) => {
      const p = readNumbers(value, name);
      if (p.values.length !== batch || !p.isInteger) throw new Error(`${name} must hold ${batch} integer positions (one per row), got [${p.values}]`);
      return p.values.map((v) => Math.min(Math.max(v, 0), seq));
    };
    const startLoss = crossEntropy(start, positions(inputs.startPositions, 'startPositions'), seq);
    const endLoss = crossEntropy(end, positions(inputs.endPositions, 'endPositions'), seq);
    return { startLogits: start, endLogits: end, loss: tf.div(tf.add(startLoss, endLoss), 2) as tf.Scalar };
  }
}
