/**
 * Automatic prefix caching (as vLLM's): the keys and values of finished rows are kept, by their tokens, so that a new
 * prompt that begins with the same tokens — the next turn of a chat, the same system prompt or few-shot examples —
 * runs only what follows them. Least recently used entries go first once `capacityTokens` is reached.
 */
import { KVCache } from '../../layers/kv-cache';

interface Entry {
  tokens: number[];
  cache: KVCache;
}

export interface PrefixCacheStats {
  /** Prompts that began with a kept prefix, and the prompt tokens they did not run. */
  hits: number;
  reusedTokens: number;
  /** Tokens kept now. */
  storedTokens: number;
}

export class PrefixCache {
  private entries: Entry[] = [];
  readonly stats: PrefixCacheStats = { hits: 0, reusedTokens: 0, storedTokens: 0 };

  /** `minTokens`: shorter common prefixes are not worth a pass of their own. */
  constructor(readonly capacityTokens: number, readonly minTokens = 16) {
    if (!Number.isInteger(capacityTokens) || capacityTokens < 0) throw new Error(`PrefixCache: capacityTokens must be an integer ≥ 0, got ${capacityTokens}`);
  }

  /** Keeps `cache` (one row: the keys and values of `tokens`, in order); the prefix cache owns it from now on. */
  store(tokens: number[], cache: KVCache): void {
    if (cache.length !== tokens.length || cache.batchSize !== 1) {
      const shape = `${cache.length} positions × ${cache.batchSize} rows`;
      cache.dispose();
      throw new Error(`PrefixCache: ${tokens.length} tokens but a cache of ${shape}`);
    }
    if (tokens.length < this.minTokens || tokens.length > this.capacityTokens) {
      cache.dispose();
      return;
    }
    // An entry this one extends (the previous turn of the same chat) is not needed any more.
    this.entries = this.entries.filter((e) => {
      const covered = e.tokens.length <= tokens.length && e.tokens.every((t, i) => t === tokens[i]);
      if (covered) {
        e.cache.dispose();
        this.stats.storedTokens -= e.tokens.length;
      }
      return !covered;
    });
    this.entries.push({ tokens, cache });
    this.stats.storedTokens += tokens.length;
    while (this.stats.storedTokens > this.capacityTokens) {
      const oldest = this.entries.shift()!;
      oldest.cache.dispose();
      this.stats.storedTokens -= oldest.tokens.length;
    }
  }

  /**
   * The longest kept prefix of `prompt` (at most all but its last token: the pass that follows needs one), as a new
   * one-row cache of that many positions; null below minTokens.
   */
  lookup(prompt: number[]): { length: number; cache: KVCache } | null {
    const { best, length } = this.longest(prompt);
    if (!best) return null;
    // Most recently used last.
    this.entries = [...this.entries.filter((e) => e !== best), best];
    this.stats.hits++;
    this.stats.reusedTokens += length;
    return { length, cache: best.cache.slice(0, 0, length) };
  }

  /** Whether `prompt` begins with a kept prefix (as lookup would find it, without using it). */
  wouldHit(prompt: number[]): boolean {
    return this.longest(prompt).best !== null;
  }

  private longest(prompt: number[]): { best: Entry | null; length: number } {
    let best: Entry | null = null;
    let length = 0;
    for (const e of this.entries) {
      const limit = Math.min(e.tokens.length, prompt.length - 1);
      let n = 0;
      while (n < limit && e.tokens[n] === prompt[n]) n++;
      if (n > length) [best, length] = [e, n];
    }
    return length >= this.minTokens ? { best, length } : { best: null, length: 0 };
  }

  dispose(): void {
    for (const e of this.entries) e.cache.dispose();
    this.entries = [];
    this.stats.storedTokens = 0;
  }
}
