/**
 * Continuous batching (as vLLM and transformers' serve do it): rows of different requests decode together, one token
 * each per forward pass; new rows join between two steps (the prompts that arrived meanwhile run in one left-padded
 * pass, their keys and values then joined to the batch's cache, left-padded) and a row that ends leaves at once. On a
 * CPU a step over 8 rows costs little more than a step over one (the weights are read once), so concurrent requests
 * share the model's time instead of queueing.
 *
 * Each row decodes as generate() would decode its prompt alone (rowDecoding: its processors, its own sampler).
 */
import * as tf from '@tensorflow/tfjs';
import { KVCache } from '../../layers/kv-cache';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { RowDecoding, argmax } from '../generation/index';
import { positionsFromMask } from '../tensors';
import { PrefixCache } from './prefix-cache';

/** One prompt to continue. */
export interface BatchRow {
  prompt: number[];
  decoding: RowDecoding;
  /** Called with each new token (and the position's raw logits with wantLogits); false ends the row. */
  onToken(token: number, logits: Float32Array | null): boolean;
  /** Pass the raw logits of every step to onToken (log-probabilities). */
  wantLogits?: boolean;
  /** Checked before the row's prompt runs: a request that went away is not started. */
  cancelled?(): boolean;
}

/** A row decoding now. */
export interface Active {
  row: BatchRow;
  /** Prompt and generated tokens. */
  sequence: number[];
  generated: number;
  done: () => void;
  fail: (e: unknown) => void;
  /** The row ended in an error (its keys and values are not kept). */
  failed?: boolean;
}

export interface BatcherStats {
  /** Forward passes over the batch (decode steps), and the rows they carried. */
  steps: number;
  rowSteps: number;
  /** Most rows decoded together. */
  peakRows: number;
}

type Waiting = { row: BatchRow; done: () => void; fail: (e: unknown) => void };

/** Prompts being run into their own cache, a chunk of positions a loop turn, before they join the batch. */
interface Prefill {
  joining: Waiting[];
  /** Left-padded prompts and their masks. */
  inputIds: number[][];
  masks: number[][];
  cache: KVCache;
  /** Positions already run. */
  done: number;
}

export interface BatcherOptions {
  /** Most rows decoded together. Default 16. */
  maxRows?: number;
  /**
   * Most prompt tokens (rows × positions) one prefill pass runs; longer prompts run in chunks, a decoding step of the
   * batch between two, so that a long prompt does not hold the other rows' tokens for its whole pass. Default 512.
   */
  prefillChunkTokens?: number;
  /**
   * Automatic prefix caching: keep the keys and values of finished rows, up to this many tokens, so that a prompt
   * beginning with the same tokens (a chat's next turn) runs only the rest. Default 0 (off).
   */
  prefixCacheTokens?: number;
}

export type { Waiting };

/**
 * What continuous batching is the same for whatever the model keeps between steps: rows wait, their prompts run (in
 * chunks) and join the batch, one step a loop turn gives every active row a token, and each row leaves when it ends.
 * A subclass says how prompts run and join (admit), how a step runs (step), and what a failure frees.
 */
export abstract class BatchScheduler {
  protected pending: Waiting[] = [];
  protected active: Active[] = [];
  private running = false;
  readonly stats: BatcherStats = { steps: 0, rowSteps: 0, peakRows: 0 };

  readonly maxRows: number;
  readonly prefillChunkTokens: number;

  constructor(private readonly schedulerName: string, o: BatcherOptions) {
    this.maxRows = o.maxRows ?? 16;
    this.prefillChunkTokens = o.prefillChunkTokens ?? 512;
    if (!Number.isInteger(this.maxRows) || this.maxRows < 1) throw new Error(`${schedulerName}: maxRows must be a positive integer, got ${this.maxRows}`);
    if (!Number.isInteger(this.prefillChunkTokens) || this.prefillChunkTokens < 1) {
      throw new Error(`${schedulerName}: prefillChunkTokens must be a positive integer, got ${this.prefillChunkTokens}`);
    }
  }

  /** The model's context: prompt plus new tokens. */
  protected abstract get contextLength(): number;
  /** The rows whose prompts are running now (not yet in the batch). */
  protected abstract get prefillRows(): Waiting[];
  /** Runs (a chunk of) waiting prompts; joins them to the batch once done. */
  protected abstract admit(): Promise<void>;
  /** One token for every active row. */
  protected abstract step(): Promise<void>;
  /** A prompt pass failed (its rows are failed already): free what it held. */
  protected abstract abandonPrefill(): void;
  /** A step failed (its rows are failed already): free the batch's state. */
  protected abstract resetBatch(): void;

  /** Rows decoding now and rows waiting for room. */
  get load(): { active: number; waiting: number } {
    return { active: this.active.length, waiting: this.pending.length + this.prefillRows.length };
  }

  /** Continues `row.prompt`; resolves when the row ends (an EOS, its maximum, or onToken returning false). */
  generate(row: BatchRow): Promise<void> {
    const limit = this.contextLength;
    if (row.prompt.length === 0) return Promise.reject(new Error(`${this.schedulerName}: the prompt is empty`));
    if (row.prompt.length + row.decoding.maxNewTokens > limit) {
      return Promise.reject(new Error(`${this.schedulerName}: the prompt (${row.prompt.length} tokens) plus ${row.decoding.maxNewTokens} new tokens is longer than the context (${limit})`));
    }
    return new Promise<void>((done, fail) => {
      this.pending.push({ row, done, fail });
      if (!this.running) {
        this.running = true;
        // The loop runs beside the caller (every await in it lets the server take new requests); it starts after the
        // current task, so that rows submitted together run their prompts in one pass.
        setImmediate(() => void this.loop());
      }
    });
  }

  private async loop(): Promise<void> {
    try {
      while (this.pending.length || this.active.length || this.prefillRows.length) {
        try {
          await this.admit();
        } catch (e) {
          // A failed prompt pass fails the rows it carried.
          for (const j of this.prefillRows) j.fail(e);
          this.abandonPrefill();
        }
        try {
          if (this.active.length) await this.step();
        } catch (e) {
          // A failed step fails the rows it carried; the batch starts over.
          for (const a of this.active) a.fail(e);
          this.active = [];
          this.resetBatch();
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      this.running = false;
    }
  }

  /** The next waiting row that still wants an answer (a request that went away is done without running). */
  protected nextWaiting(): Waiting | null {
    while (this.pending.length) {
      const next = this.pending.shift()!;
      if (!next.row.cancelled?.()) return next;
      next.done();
    }
    return null;
  }
}

export class ContinuousBatcher extends BatchScheduler {
  private prefill: Prefill | null = null;
  private cache: KVCache | null = null;
  /** Attention mask of each active row over the cache's positions (0: left padding). */
  private masks: number[][] = [];
  /** The kept prefixes (null when prefix caching is off). */
  readonly prefixCache: PrefixCache | null;

  /** `options`: BatcherOptions, or the most rows decoded together. */
  constructor(private readonly model: NemotronForCausalLM, options: BatcherOptions | number = {}) {
    const o = typeof options === 'number' ? { maxRows: options } : options;
    super('ContinuousBatcher', o);
    this.prefixCache = o.prefixCacheTokens ? new PrefixCache(o.prefixCacheTokens) : null;
  }

  protected get contextLength(): number {
    return this.model.config.maxSequenceLength;
  }

  protected get prefillRows(): Waiting[] {
    return this.prefill?.joining ?? [];
  }

  protected abandonPrefill(): void {
    this.prefill?.cache.dispose();
    this.prefill = null;
  }

  protected resetBatch(): void {
    this.masks = [];
    this.cache?.dispose();
    this.cache = null;
  }

  /**
   * Runs the prompts of waiting rows (as many as there is room for) as one left-padded batch, a chunk of positions a
   * call (at most prefillChunkTokens tokens), and joins them to the batch after their first token.
   */
  protected async admit(): Promise<void> {
    if (!this.prefill) {
      const joining: Waiting[] = [];
      while (this.pending.length && this.active.length + joining.length < this.maxRows) {
        const next = this.nextWaiting();
        if (!next) break;
        // A prompt that begins with kept tokens runs alone, from where they end.
        const kept = joining.length === 0 ? this.prefixCache?.lookup(next.row.prompt) : null;
        if (kept) {
          const prompt = next.row.prompt;
          this.prefill = { joining: [next], inputIds: [prompt], masks: [prompt.map(() => 1)], cache: kept.cache, done: kept.length };
          break;
        }
        joining.push(next);
        // The next row is looked up on its own turn (it may begin with kept tokens).
        if (this.prefixCache && this.pending.length && this.prefixCache.wouldHit(this.pending[0].row.prompt)) break;
      }
      if (!this.prefill) {
        if (joining.length === 0) return;
        const width = Math.max(...joining.map((j) => j.row.prompt.length));
        const masks = joining.map((j) => [...new Array<number>(width - j.row.prompt.length).fill(0), ...j.row.prompt.map(() => 1)]);
        const inputIds = joining.map((j, r) => masks[r].map((m, i) => (m ? j.row.prompt[i - (width - j.row.prompt.length)] : 0)));
        this.prefill = { joining, inputIds, masks, cache: new KVCache(this.model.config.numHiddenLayers), done: 0 };
      }
    }
    const p = this.prefill;
    const width = p.masks[0].length;
    const end = Math.min(width, p.done + Math.max(1, Math.floor(this.prefillChunkTokens / p.joining.length)));
    const out = this.model.forward({
      inputIds: p.inputIds.map((ids) => ids.slice(p.done, end)),
      attentionMask: p.masks.map((m) => m.slice(0, end)),
      positionIds: positionsFromMask(p.masks).map((positions) => positions.slice(p.done, end)),
      pastKeyValues: p.cache, useCache: true, logitsToKeep: 1,
    });
    if (end < width) {
      out.logits.dispose();
      p.done = end;
      return;
    }
    this.prefill = null;
    try {
      const logits = await out.logits.data() as Float32Array;
      out.logits.dispose();
      const vocab = this.model.config.vocabSize;
      const keep: number[] = [];
      const joined: Active[] = [];
      p.joining.forEach(({ row, done, fail }, r) => {
        const active: Active = { row, sequence: row.prompt.slice(), generated: 0, done, fail };
        if (acceptToken(active, logits.subarray(r * vocab, (r + 1) * vocab))) {
          keep.push(r);
          joined.push(active);
        }
      });
      if (keep.length) {
        // Only the rows that go on join; padding none of them needs goes.
        const kept = keep.map((r) => p.masks[r]);
        const unused = Math.min(...kept.map((m) => m.indexOf(1)));
        if (keep.length < p.joining.length || unused > 0) p.cache.selectRows(keep, unused);
        if (!this.cache) this.cache = new KVCache(this.model.config.numHiddenLayers);
        const length = Math.max(this.cache.length, width - unused);
        this.cache.appendRows(p.cache);
        this.masks = [...this.masks, ...kept.map((m) => m.slice(unused))].map((m) => [...new Array<number>(length - m.length).fill(0), ...m]);
        this.active.push(...joined);
        this.stats.peakRows = Math.max(this.stats.peakRows, this.active.length);
      }
    } catch (e) {
      for (const j of p.joining) j.fail(e);
    } finally {
      p.cache.dispose();
    }
  }

  /** One token for every active row, in one forward pass over the batch. */
  protected async step(): Promise<void> {
    const batch = this.active.length;
    this.masks.forEach((m) => m.push(1));
    const out = this.model.forward({
      inputIds: this.active.map((a) => [a.sequence[a.sequence.length - 1]]),
      attentionMask: this.masks,
      positionIds: this.active.map((a) => [a.sequence.length - 1]),
      pastKeyValues: this.cache!,
      useCache: true,
      logitsToKeep: 1,
    });
    const keep = acceptStep(this.active, await readStep(this.active, out.logits));
    this.stats.steps++;
    this.stats.rowSteps += batch;
    if (keep.length < batch) {
      if (this.prefixCache) {
        // A finished row's keys and values are kept by its tokens (all but the last, which never ran).
        this.active.forEach((a, b) => {
          if (keep.includes(b) || a.failed) return;
          const start = this.masks[b].indexOf(1);
          const tokens = a.sequence.slice(0, -1);
          if (start >= 0 && this.cache!.length - start === tokens.length) this.prefixCache!.store(tokens, this.cache!.slice(b, start));
        });
      }
      this.active = keep.map((b) => this.active[b]);
      this.masks = keep.map((b) => this.masks[b]);
      if (keep.length === 0) {
        this.cache!.dispose();
        this.cache = null;
        this.masks = [];
      } else {
        // Positions that every remaining row has as padding go too.
        const unused = Math.min(...this.masks.map((m) => m.indexOf(1)));
        this.cache!.selectRows(keep, unused);
        this.masks = this.masks.map((m) => m.slice(unused));
      }
    }
  }

}

/** A step's logits read back: each row's argmax, and the logits of the rows that need them. */
export interface StepTokens {
  best: ArrayLike<number>;
  onHost: number[];
  hostLogits: Float32Array | undefined;
  vocab: number;
}

/**
 * A step's logits ([rows, 1, vocab], which this disposes) read back: the argmax on the device, the logits on the host
 * only for the rows that need them (sampling, processors, log-probabilities).
 */
export async function readStep(active: Active[], stepLogits: tf.Tensor): Promise<StepTokens> {
  const vocab = stepLogits.shape[stepLogits.rank - 1] as number;
  const onHost = active.flatMap((a, b) => (a.row.wantLogits || a.row.decoding.needsLogits ? [b] : []));
  const [ids, rows] = tf.tidy(() => {
    const logits = stepLogits.reshape([active.length, vocab]);
    return [tf.argMax(logits, -1), onHost.length ? tf.gather(logits, tf.tensor1d(onHost, 'int32')) : null] as const;
  });
  stepLogits.dispose();
  const [best, hostLogits] = await Promise.all([ids.data(), rows?.data() as Promise<Float32Array> | undefined]);
  tf.dispose([ids, ...(rows ? [rows] : [])]);
  return { best, onHost, hostLogits, vocab };
}

/**
 * Each row's next token (acceptToken) from what readStep read; returns the indices of the rows that go on. Synchronous,
 * so that what a caller does with the rows that ended happens before their requests' callers resume.
 */
export function acceptStep(active: Active[], { best, onHost, hostLogits, vocab }: StepTokens): number[] {
  const keep: number[] = [];
  active.forEach((a, b) => {
    const at = onHost.indexOf(b);
    const going = at >= 0 ? acceptToken(a, hostLogits!.subarray(at * vocab, (at + 1) * vocab)) : acceptToken(a, null, best[b]);
    if (going) keep.push(b);
  });
  return keep;
}

/** The row's next token from its logits (or the device's argmax); false once the row has ended. */
export function acceptToken(a: Active, logits: Float32Array | null, argmaxToken?: number): boolean {
  const { decoding } = a.row;
  let token: number;
  try {
    const raw = logits && a.row.wantLogits ? logits.slice() : null;
    token = decoding.needsLogits ? decoding.next(logits!.slice(), a.sequence, a.generated) : argmaxToken ?? argmax(logits!);
    a.sequence.push(token);
    a.generated++;
    const going = a.row.onToken(token, raw);
    if (going && !decoding.eosTokenIds.includes(token) && a.generated < decoding.maxNewTokens) return true;
  } catch (e) {
    a.failed = true;
    a.fail(e);
    return false;
  }
  a.done();
  return false;
}
