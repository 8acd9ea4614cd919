import { expect } from 'chai';
import * as tf from '@tensorflow/tfjs';
import { KVCache, PrefixCache } from '../../src/index';

/** A one-row cache of n positions whose keys hold the position index (so slices can be read back). */
function positions(n: number, layers = 2): KVCache {
  const cache = new KVCache(layers);
  for (let l = 0; l < layers; l++) {
    const t = tf.tidy(() => tf.range(0, n).reshape([1, 1, n, 1]).tile([1, 2, 1, 3]) as tf.Tensor4D);
    cache.replace(l, t, t.clone());
  }
  return cache;
}
const tokens = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

describe('PrefixCache: kept prefixes by their tokens', () => {
  it('finds the longest kept prefix (all but the prompt\'s last token), as a new cache of that many positions', async () => {
    const before = tf.memory().numTensors;
    const cache = new PrefixCache(1000, 4);
    cache.store(tokens(0, 20), positions(20));
    cache.store(tokens(100, 10), positions(10));
    const hit = cache.lookup([...tokens(0, 12), 7, 7])!;
    expect(hit.length).to.equal(12);
    expect(hit.cache.length).to.equal(12);
    const firstKeys = hit.cache.keys[1]!.slice([0, 0, 0, 0], [1, 1, -1, 1]);
    expect(Array.from(await firstKeys.data())).to.deep.equal(tokens(0, 12));
    firstKeys.dispose();
    hit.cache.dispose();
    // The whole entry is the prompt: its last token must still run, so one fewer is reused.
    const whole = cache.lookup(tokens(0, 20))!;
    expect(whole.length).to.equal(19);
    whole.cache.dispose();
    expect(cache.lookup([...tokens(100, 3), 1, 2])).to.equal(null); // 3 shared tokens, under minTokens
    expect(cache.wouldHit(tokens(100, 9))).to.equal(true);
    expect(cache.stats).to.deep.include({ hits: 2, reusedTokens: 31, storedTokens: 30 });
    cache.dispose();
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('an entry that extends a kept one replaces it; past capacity the least recently used go; too short or too long is not kept', () => {
    const before = tf.memory().numTensors;
    const cache = new PrefixCache(40, 4);
    cache.store(tokens(0, 10), positions(10));
    cache.store(tokens(0, 15), positions(15));      // extends the first: replaces it
    expect(cache.stats.storedTokens).to.equal(15);
    cache.store(tokens(200, 12), positions(12));
    cache.lookup([...tokens(0, 8), 1])!.cache.dispose(); // the first entry is now the most recently used
    cache.store(tokens(300, 12), positions(12));     // 39 tokens: fits
    cache.store(tokens(400, 6), positions(6));       // 45: the least recently used (200…) goes
    expect(cache.wouldHit([...tokens(200, 6), 1])).to.equal(false);
    expect(cache.wouldHit([...tokens(0, 6), 1])).to.equal(true);
    expect(cache.stats.storedTokens).to.equal(33);
    cache.store(tokens(500, 3), positions(3));       // under minTokens
    cache.store(tokens(600, 41), positions(41));     // over the capacity
    expect(cache.stats.storedTokens).to.equal(33);
    expect(() => cache.store(tokens(0, 5), positions(4))).to.throw(/5 tokens but a cache of 4 positions/);
    cache.dispose();
    expect(tf.memory().numTensors).to.equal(before);
  });
});
