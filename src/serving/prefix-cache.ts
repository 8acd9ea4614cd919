/**
 * Automatic prefix caching (as vLLM's): the keys and values of finished rows are kept, by their tokens, so that a new
 * prompt that begins with the same tokens — the next turn of a chat, the same system prompt or few-shot examples —
 * runs only what follows them. Least recently used entries go first once `capacityTokens` (or `maxEntries`) is reached.
 *
 * What is kept is a KVCache by default; a PrefixStore says how to measure, cut and free something else (NemotronH's
 * recurrent state, which serves only the whole of its tokens: `partial` false).
 */
import { KVCache } from '../../layers/kv-cache';

/** How the cache handles what it keeps: one row of a sequence's computed state. */
export interface PrefixStore<T> {
  /** Positions `value` holds, and its rows (must be one). */
  length(value: T): number;
  rows(value: T): number;
  /** A new value of its first `length` positions (the cache keeps the original). */
  prefix(value: T, length: number): T;
  dispose(value: T): void;
  /** Whether a value serves a prefix shorter than its tokens (keys and values do; a recurrent state does not). */
  partial: boolean;
}

const KV_STORE: PrefixStore<KVCache> = {
  length: (c) => c.length, rows: (c) => c.batchSize ?? 0, prefix: (c, length) => c.slice(0, 0, length), dispose: (c) => c.dispose(), partial: true,
};

interface Entry<T> {
  tokens: number[];
  cache: T;
}

export interface PrefixCacheStats {
  /** Prompts that began with a kept prefix, and the prompt tokens they did not run. */
  hits: number;
  reusedTokens: number;
  /** Tokens kept now. */
  storedTokens: number;
}

export class PrefixCache<T = KVCache> {
  private entries: Array<Entry<T>> = [];
  readonly stats: PrefixCacheStats = { hits: 0, reusedTokens: 0, storedTokens: 0 };
  private readonly kept: PrefixStore<T>;

  /**
   * `minTokens`: shorter common prefixes are not worth a pass of their own. `maxEntries`: a bound on the entries
   * besides their tokens (for states whose size does not grow with their length). `store`: how to handle what is
   * kept (default: KVCache).
   */
  constructor(readonly capacityTokens: number, readonly minTokens = 16, options: { maxEntries?: number; store?: PrefixStore<T> } = {}) {
    if (!Number.isInteger(capacityTokens) || capacityTokens < 0) throw new Error(`PrefixCache: capacityTokens must be an integer ≥ 0, got ${capacityTokens}`);
    this.maxEntries = options.maxEntries ?? Infinity;
    if (!(this.maxEntries >= 1)) throw new Error(`PrefixCache: maxEntries must be ≥ 1, got ${options.maxEntries}`);
    this.kept = options.store ?? (KV_STORE as unknown as PrefixStore<T>);
  }

  readonly maxEntries: number;

  /** Keeps `cache` (one row: the computed state of `tokens`, in order); the prefix cache owns it from now on. */
  store(tokens: number[], cache: T): void {
    const [length, rows] = [this.kept.length(cache), this.kept.rows(cache)];
    if (length !== tokens.length || rows !== 1) {
      this.kept.dispose(cache);
      throw new Error(`PrefixCache: ${tokens.length} tokens but a cache of ${length} positions × ${rows} rows`);
    }
    if (tokens.length < this.minTokens || tokens.length > this.capacityTokens) {
      this.kept.dispose(cache);
      return;
    }
    // An entry this one extends (the previous turn of the same chat) is not needed any more.
    this.entries = this.entries.filter((e) => {
      const covered = e.tokens.length <= tokens.length && e.tokens.every((t, i) => t === tokens[i]);
      if (covered) {
        this.kept.dispose(e.cache);
        this.stats.storedTokens -= e.tokens.length;
      }
      return !covered;
    });
    this.entries.push({ tokens, cache });
    this.stats.storedTokens += tokens.length;
    while (this.stats.storedTokens > this.capacityTokens || this.entries.length > this.maxEntries) {
      const oldest = this.entries.shift()!;
      this.kept.dispose(oldest.cache);
      this.stats.storedTokens -= oldest.tokens.length;
    }
  }

  /**
   * The longest kept prefix of `prompt` (at most all but its last token: the pass that follows needs one), as a new
   * one-row cache of that many positions; null below minTokens. A store that is not `partial` serves whole entries.
   */
  lookup(prompt: number[]): { length: number; cache: T } | null {
    const { best, length } = this.longest(prompt);
    if (!best) return null;
    // Most recently used last.
    this.entries = [...this.entries.filter((e) => e !== best), best];
    this.stats.hits++;
    this.stats.reusedTokens += length;
    return { length, cache: this.kept.prefix(best.cache, length) };
  }

  /** Whether `prompt` begins with a kept prefix (as lookup would find it, without using it). */
  wouldHit(prompt: number[]): boolean {
    return this.longest(prompt).best !== null;
  }

  private longest(prompt: number[]): { best: Entry<T> | null; length: number } {
    let best: Entry<T> | null = null;
    let length = 0;
    for (const e of this.entries) {
      const limit = Math.min(e.tokens.length, prompt.length - 1);
      let n = 0;
      while (n < limit && e.tokens[n] === prompt[n]) n++;
      if (!this.kept.partial && n < e.tokens.length) continue;
      if (n > length) [best, length] = [e, n];
    }
    return length >= this.minTokens ? { best, length } : { best: null, length: 0 };
  }

  dispose(): void {
    for (const e of this.entries) this.kept.dispose(e.cache);
    this.entries = [];
    this.stats.storedTokens = 0;
  }
}
