import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import cliProgress from 'cli-progress';
import type { HeadInputs } from '../../models/nemotron/heads';
import type { NemotronConfig } from '../../models/nemotron/config';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors';
import { Example, TaskName, collate, countTokens, epochBatches } from './data';
import { AdamW, clipByGlobalNorm } from './optimizer';
import { EvaluableModel, HeadOutputs, evaluateExamples } from './metrics';
import { ScheduleName, learningRate } from './schedule';

/**
 * What the Trainer trains: a head model, or a LoraModel around one (then only the adapters train and a save writes
 * the adapter). namedParameters() are the trained parameters; savePretrained(dir) writes what a run produces.
 */
export interface TrainableModel {
  /** The padding id collate uses (a Nemotron or NemotronH config). */
  readonly config: Pick<NemotronConfig, 'padTokenId'>;
  namedParameters(): Map<string, tf.Variable>;
  computeLoss(inputs: HeadInputs): tf.Scalar;
  gradientCheckpointingEnable(): void;
  readonly isGradientCheckpointing: boolean;
  savePretrained(dir: string): Promise<void>;
  /** The head's outputs, for the evaluation metrics of the classification tasks (evaluateExamples). */
  forward?(inputs: HeadInputs): HeadOutputs;
}

export interface TrainerOptions {
  task: TaskName;
  lr: number;
  batchSize: number;
  epochs?: number;
  /** Optimizer steps; overrides epochs when given. */
  maxSteps?: number;
  gradAccum?: number;
  schedule?: ScheduleName;
  warmupSteps?: number;
  weightDecay?: number;
  /** Clip the global gradient norm to this (0 = no clipping). Default 1.0, as the HF Trainer. */
  maxGradNorm?: number;
  seed?: number;
  shuffle?: boolean;
  evalExamples?: Example[];
  /** Evaluate every N optimizer steps (and at the end). */
  evalEvery?: number;
  /** Append one JSON line per step (and per evaluation) here. */
  logFile?: string;
  /** Save a resumable checkpoint here every saveEvery steps and at the end. */
  outputDir?: string;
  saveEvery?: number;
  /** A progress bar on stderr with loss, learning rate and tokens/s. */
  progress?: boolean;
  padTokenId?: number;
  /**
   * transformers' gradient_checkpointing: each decoder layer recomputed in the backward instead of keeping its
   * activations (model.gradientCheckpointingEnable()). Less memory, one more forward of the layers a step.
   */
  gradientCheckpointing?: boolean;
}

export interface StepLog {
  step: number;
  epoch: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  tokensPerSecond: number;
}

export interface TrainState {
  /** Optimizer steps taken. */
  step: number;
  epoch: number;
  /** Micro-batches of the current epoch already consumed. */
  batchInEpoch: number;
}

const OPTIMIZER_FILE = 'optimizer.safetensors';
const STATE_FILE = 'trainer_state.json';

/**
 * The fine-tuning loop (tfjs-layers' fit does not fit language models): AdamW, global-norm clipping, warmup +
 * schedule, gradient accumulation, periodic evaluation, resumable checkpoints, progress bar and JSONL log.
 */
export class Trainer {
  readonly optimizer: AdamW;
  readonly options: Required<Pick<TrainerOptions, 'gradAccum' | 'schedule' | 'warmupSteps' | 'maxGradNorm' | 'seed' | 'shuffle' | 'padTokenId'>> & TrainerOptions;
  state: TrainState = { step: 0, epoch: 0, batchInEpoch: 0 };
  readonly history: StepLog[] = [];
  /** Each evaluation: the loss, and the task's metric where it has one (see evaluateExamples). */
  readonly evalHistory: Array<{ step: number; evalLoss: number; evalAccuracy?: number; evalTokenAccuracy?: number; evalExactMatch?: number }> = [];
  private readonly params: Map<string, tf.Variable>;

  constructor(readonly model: TrainableModel, readonly train: Example[], options: TrainerOptions) {
    if (!(options.lr > 0)) throw new Error(`learning rate must be > 0, got ${options.lr}`);
    if (train.length === 0) throw new Error('The training set is empty');
    if (!(Number.isInteger(options.batchSize) && options.batchSize > 0)) throw new Error(`batch size must be a positive integer, got ${options.batchSize}`);
    const gradAccum = options.gradAccum ?? 1;
    if (!(Number.isInteger(gradAccum) && gradAccum > 0)) throw new Error(`gradient accumulation must be a positive integer, got ${gradAccum}`);
    if (options.epochs !== undefined && !(options.epochs > 0)) throw new Error(`epochs must be > 0, got ${options.epochs}`);
    if (options.maxSteps !== undefined && !(Number.isInteger(options.maxSteps) && options.maxSteps > 0)) {
      throw new Error(`maxSteps must be a positive integer, got ${options.maxSteps}`);
    }
    this.options = {
      gradAccum, schedule: 'linear', warmupSteps: 0, maxGradNorm: 1, seed: 42, shuffle: true,
      padTokenId: model.config.padTokenId ?? 0, ...options,
    };
    if (options.gradientCheckpointing) model.gradientCheckpointingEnable();
    this.params = model.namedParameters();
    this.optimizer = new AdamW(this.params, { weightDecay: options.weightDecay ?? 0 });
  }

  get batchesPerEpoch(): number {
    return Math.ceil(this.train.length / this.options.batchSize);
  }

  /** Optimizer steps of the whole run. */
  get totalSteps(): number {
    if (this.options.maxSteps) return this.options.maxSteps;
    return Math.ceil((this.options.epochs ?? 1) * this.batchesPerEpoch / this.options.gradAccum);
  }

  private nextMicroBatches(): HeadInputs[] {
    const out: HeadInputs[] = [];
    while (out.length < this.options.gradAccum) {
      const batches = epochBatches(this.train, this.options.batchSize, this.options.seed, this.state.epoch, this.options.shuffle);
      if (this.state.batchInEpoch >= batches.length) {
        this.state.epoch++;
        this.state.batchInEpoch = 0;
        continue;
      }
      out.push(collate(batches[this.state.batchInEpoch++], this.options.task, this.options.padTokenId));
    }
    return out;
  }

  /** One optimizer step over gradAccum micro-batches; returns its log line. Reads back asynchronously (WebGPU). */
  async step(): Promise<StepLog> {
    const started = Date.now();
    const micro = this.nextMicroBatches();
    const variables = [...this.params.values()];
    const names = new Map([...this.params].map(([name, v]) => [v.name, name]));
    const summed = new Map<string, tf.Tensor>();
    let lossSum = 0;
    let tokens = 0;
    for (const batch of micro) {
      tokens += countTokens(batch);
      // computeLoss: the loss alone (a causal LM's logits never exist whole; see VocabMatrix.projectedCrossEntropy).
      const { value, grads } = tf.variableGrads(() => tf.div(this.model.computeLoss(batch), micro.length) as tf.Scalar, variables);
      lossSum += (await value.data())[0];
      value.dispose();
      for (const [varName, grad] of Object.entries(grads)) {
        if (!grad) continue;
        const name = names.get(varName)!;
        const previous = summed.get(name);
        summed.set(name, previous ? tf.tidy(() => tf.add(previous, grad)) : grad);
        if (previous) {
          previous.dispose();
          grad.dispose();
        }
      }
    }
    if (!Number.isFinite(lossSum)) throw new Error(`Loss is ${lossSum} at step ${this.state.step + 1}: lower the learning rate or check the data`);
    const gradNorm = await clipByGlobalNorm(summed, this.options.maxGradNorm);
    const lr = learningRate(this.state.step, {
      name: this.options.schedule, lr: this.options.lr, totalSteps: this.totalSteps, warmupSteps: this.options.warmupSteps,
    });
    // A zero learning rate (warmup's first step) still counts the step, as torch does.
    if (lr > 0) this.optimizer.apply(summed, lr);
    else this.optimizer.step++;
    tf.dispose([...summed.values()]);
    this.state.step++;
    const seconds = Math.max(1e-3, (Date.now() - started) / 1000);
    const log: StepLog = { step: this.state.step, epoch: this.state.epoch, loss: lossSum, lr, gradNorm, tokens, tokensPerSecond: tokens / seconds };
    this.history.push(log);
    if (this.options.logFile) fs.appendFileSync(this.options.logFile, JSON.stringify(log) + '\n');
    return log;
  }

  /** Mean loss over examples (batched, no gradients). */
  async evaluate(examples: Example[] = this.options.evalExamples ?? []): Promise<number> {
    if (examples.length === 0) throw new Error('No evaluation examples');
    let total = 0;
    let count = 0;
    for (const batch of epochBatches(examples, this.options.batchSize, 0, 0, false)) {
      const loss = this.model.computeLoss(collate(batch, this.options.task, this.options.padTokenId));
      total += (await loss.data())[0] * batch.length;
      count += batch.length;
      loss.dispose();
    }
    return total / count;
  }

  /** The evaluation loss, and the task's metric (accuracy, token accuracy, exact match) where the model has a forward. */
  async evaluateWithMetrics(examples: Example[] = this.options.evalExamples ?? []): Promise<{ evalLoss: number; evalAccuracy?: number; evalTokenAccuracy?: number; evalExactMatch?: number }> {
    if (this.options.task === 'causal-lm' || !this.model.forward) return { evalLoss: await this.evaluate(examples) };
    // A classification head's forward (only Nemotron's heads have one): what evaluateExamples reads.
    const m = await evaluateExamples(this.model as unknown as EvaluableModel, examples, this.options.task, { batchSize: this.options.batchSize, padTokenId: this.options.padTokenId });
    return {
      evalLoss: m.loss,
      ...(m.accuracy !== undefined ? { evalAccuracy: m.accuracy } : {}),
      ...(m.tokenAccuracy !== undefined ? { evalTokenAccuracy: m.tokenAccuracy } : {}),
      ...(m.exactMatch !== undefined ? { evalExactMatch: m.exactMatch } : {}),
    };
  }

  /** Runs to totalSteps (from wherever a resumed state stands). */
  async fit(): Promise<StepLog[]> {
    const total = this.totalSteps;
    const bar = this.options.progress
      ? new cliProgress.SingleBar({
        format: 'train |{bar}| {value}/{total} steps · loss {loss} · lr {lr} · {tps} tok/s · eta {eta_formatted}',
        stream: process.stderr,
      }, cliProgress.Presets.shades_classic)
      : null;
    bar?.start(total, this.state.step, { loss: '-', lr: '-', tps: '-' });
    try {
      while (this.state.step < total) {
        const log = await this.step();
        bar?.update(this.state.step, { loss: log.loss.toFixed(4), lr: log.lr.toExponential(2), tps: log.tokensPerSecond.toFixed(0) });
        const last = this.state.step === total;
        if (this.options.evalExamples?.length && ((this.options.evalEvery && this.state.step % this.options.evalEvery === 0) || last)) {
          const entry = { step: this.state.step, ...await this.evaluateWithMetrics() };
          this.evalHistory.push(entry);
          if (this.options.logFile) fs.appendFileSync(this.options.logFile, JSON.stringify(entry) + '\n');
        }
        if (this.options.outputDir && ((this.options.saveEvery && this.state.step % this.options.saveEvery === 0) || last)) {
          await this.save(this.options.outputDir);
        }
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      bar?.stop();
    }
    return this.history;
  }

  /** A checkpoint fromPretrained loads, plus the optimizer moments and the loop's position, to resume exactly. */
  async save(dir: string): Promise<void> {
    await this.model.savePretrained(dir);
    writeSafetensors(path.join(dir, OPTIMIZER_FILE), (await this.optimizer.stateTensors()).map((t) => ({ ...t, dtype: 'F32' as const })));
    fs.writeFileSync(path.join(dir, STATE_FILE), JSON.stringify({ ...this.state, optimizerStep: this.optimizer.step, options: this.optionsForState() }, null, 2));
  }

  private optionsForState(): Record<string, unknown> {
    const { evalExamples: _e, ...rest } = this.options;
    return rest;
  }

  /** Restores the optimizer and loop position saved by `save` (the model must have been loaded from the same dir). */
  restore(dir: string): void {
    const stateFile = path.join(dir, STATE_FILE);
    if (!fs.existsSync(stateFile)) throw new Error(`No ${STATE_FILE} in ${dir}: not a checkpoint this trainer saved`);
    const saved = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
    this.state = { step: saved.step, epoch: saved.epoch, batchInEpoch: saved.batchInEpoch };
    const optimizerFile = path.join(dir, OPTIMIZER_FILE);
    const tensors = new Map<string, { shape: number[]; data: Float32Array | Int32Array }>();
    if (fs.existsSync(optimizerFile)) {
      const file = SafetensorsFile.open(optimizerFile);
      for (const name of file.names()) tensors.set(name, file.read(name) as { shape: number[]; data: Float32Array });
      file.close();
    }
    this.optimizer.loadState(saved.optimizerStep ?? saved.step, tensors);
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}
