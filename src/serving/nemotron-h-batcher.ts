/**
 * Continuous batching for NemotronH: the rows of different requests decode together, one token each per step over
 * the batch's kept state (each Mamba-2 layer's window and SSM state a row, attention's keys and values left-padded to
 * the longest row and masked); a prompt runs alone, in chunks of prefillChunkTokens positions with a step of the
 * batch between two, continuing its own state, then joins; a row that ends leaves at once.
 *
 * Prefix caching keeps finished rows' states by their tokens: a recurrent state holds a sequence's whole past, so it
 * serves a prompt that begins with all of its tokens (a chat's next turn), not a shorter prefix.
 */
import { type NemotronHForCausalLM, type NemotronHState, disposeState, joinStates, selectStateRows, stateLength } from '../../models/nemotron_h/model';
import { type Active, BatchScheduler, type BatcherOptions, type Waiting, acceptStep, acceptToken, readStep } from './batcher';
import { PrefixCache, type PrefixStore } from './prefix-cache';

export interface NemotronHBatcherOptions extends BatcherOptions {
  /** Most states the prefix cache keeps (each holds every Mamba-2 layer's state, whatever its length). Default 8. */
  prefixCacheEntries?: number;
}

const STATE_STORE: PrefixStore<NemotronHState> = {
  length: stateLength,
  rows: (s) => s.mask.length,
  prefix: (s) => selectStateRows(s, [0]),
  dispose: disposeState,
  partial: false,
};

/** A prompt running into its own state, a chunk a loop turn. */
interface Prefill {
  waiting: Waiting;
  state: Partial<NemotronHState>;
  /** Positions already run. */
  done: number;
}

export class NemotronHBatcher extends BatchScheduler {
  private prefill: Prefill | null = null;
  private state: NemotronHState | null = null;
  /** The kept states (null when prefix caching is off). */
  readonly prefixCache: PrefixCache<NemotronHState> | null;

  constructor(private readonly model: NemotronHForCausalLM, options: NemotronHBatcherOptions = {}) {
    super('NemotronHBatcher', options);
    this.prefixCache = options.prefixCacheTokens
      ? new PrefixCache(options.prefixCacheTokens, 16, { maxEntries: options.prefixCacheEntries ?? 8, store: STATE_STORE })
      : null;
  }

  protected get contextLength(): number {
    return this.model.config.maxPositionEmbeddings;
  }

  protected get prefillRows(): Waiting[] {
    return this.prefill ? [this.prefill.waiting] : [];
  }

  protected abandonPrefill(): void {
    if (this.prefill) disposeState(this.prefill.state);
    this.prefill = null;
  }

  protected resetBatch(): void {
    if (this.state) disposeState(this.state);
    this.state = null;
  }

  /** Runs a chunk of the next waiting prompt (from a kept state where one fits); joins its row to the batch once done. */
  protected async admit(): Promise<void> {
    if (!this.prefill) {
      if (this.active.length >= this.maxRows) return;
      const waiting = this.nextWaiting();
      if (!waiting) return;
      const kept = this.prefixCache?.lookup(waiting.row.prompt);
      this.prefill = { waiting, state: kept?.cache ?? {}, done: kept?.length ?? 0 };
    }
    const p = this.prefill;
    const { prompt } = p.waiting.row;
    const end = Math.min(prompt.length, p.done + this.prefillChunkTokens);
    const logits = this.model.forward({ inputIds: [prompt.slice(p.done, end)], logitsToKeep: 1 }, p.state).logits;
    if (end < prompt.length) {
      logits.dispose();
      p.done = end;
      return;
    }
    this.prefill = null;
    const state = p.state as NemotronHState;
    try {
      const last = await logits.data() as Float32Array;
      const { row, done, fail } = p.waiting;
      const active: Active = { row, sequence: prompt.slice(), generated: 0, done, fail };
      if (!acceptToken(active, last)) {
        if (!active.failed) this.keep(prompt, state);
        return;
      }
      const joined = this.state ? joinStates(this.state, state) : selectStateRows(state, [0]);
      if (this.state) disposeState(this.state);
      this.state = joined;
      this.active.push(active);
      this.stats.peakRows = Math.max(this.stats.peakRows, this.active.length);
    } catch (e) {
      p.waiting.fail(e);
    } finally {
      logits.dispose();
      disposeState(state);
    }
  }

  /** One token for every active row, in one step over the batch's state. */
  protected async step(): Promise<void> {
    const batch = this.active.length;
    const state = this.state!;
    const logits = this.model.step(this.active.map((a) => a.sequence[a.sequence.length - 1]), state);
    const keep = acceptStep(this.active, await readStep(this.active, logits));
    this.stats.steps++;
    this.stats.rowSteps += batch;
    if (keep.length === batch) return;
    // A finished row's state is kept by its tokens (all but the last, which never ran).
    this.active.forEach((a, b) => {
      if (keep.includes(b) || a.failed || !this.prefixCache) return;
      const start = state.mask[b].indexOf(1);
      const row = selectStateRows(state, [b], start);
      this.keep(a.sequence.slice(0, -1), row);
      disposeState(row);
    });
    this.active = keep.map((b) => this.active[b]);
    // Positions that every remaining row has as padding go too.
    const unused = keep.length ? Math.min(...keep.map((b) => state.mask[b].indexOf(1))) : 0;
    this.state = keep.length ? selectStateRows(state, keep, unused) : null;
    disposeState(state);
  }

  /** Gives the prefix cache a copy of a one-row state whose positions are `tokens`. */
  private keep(tokens: number[], state: NemotronHState): void {
    if (this.prefixCache && stateLength(state) === tokens.length) this.prefixCache.store(tokens, selectStateRows(state, [0]));
  }
}
