/**
 * What decoding needs of a model, whatever it keeps between steps: the next position's logits of every row, the kept
 * state reordered to chosen rows (beam search), and freeing it. generateStream and beamSearch run on it; a Nemotron
 * model keeps a KV cache, a NemotronH one its layers' recurrent state and attention cache.
 */
import * as tf from '@tensorflow/tfjs';
import { KVCache } from '../../layers/kv-cache';
import type { NemotronForCausalLM } from '../../models/nemotron/heads';
import { NemotronHForCausalLM, type NemotronHState, disposeState, selectStateRows } from '../../models/nemotron_h/model';
import { positionsFromMask } from '../tensors';

export interface StepDecoder {
  vocabSize: number;
  /**
   * Logits of the next position of every row ([rows, 1, vocab]): `first` runs the whole (left-padded) rows, the later
   * calls each row's last token over what the model kept; `mask` covers every position so far.
   */
  next(sequences: number[][], mask: number[][], first: boolean): tf.Tensor;
  /** Keeps the state of `rows` (in that order): the beams that run on. */
  reorder(rows: number[]): void;
  dispose(): void;
}

/** A Nemotron model's decoder: its forward over a KV cache (without one, each step runs the whole rows), positions from the masks. */
export function nemotronDecoder(model: NemotronForCausalLM, useCache = true): StepDecoder {
  const cache = useCache ? new KVCache(model.config.numHiddenLayers) : null;
  return {
    vocabSize: model.config.vocabSize,
    next: (sequences, mask, first) => {
      const positions = positionsFromMask(mask);
      const fresh = cache !== null && !first;
      return model.forward({
        inputIds: fresh ? sequences.map((s) => [s[s.length - 1]]) : sequences,
        attentionMask: mask,
        positionIds: fresh ? positions.map((p) => [p[p.length - 1]]) : positions,
        pastKeyValues: cache ?? undefined, useCache: cache !== null, logitsToKeep: 1,
      }).logits;
    },
    reorder: (rows) => {
      if (!cache || rows.every((r, i) => r === i)) return;
      const index = tf.tensor1d(rows, 'int32');
      for (let layer = 0; layer < cache.numLayers; layer++) {
        const [keys, values] = [cache.keys[layer], cache.values[layer]];
        if (keys && values) cache.replace(layer, tf.gather(keys, index) as tf.Tensor4D, tf.gather(values, index) as tf.Tensor4D);
      }
      index.dispose();
    },
    dispose: () => cache?.dispose(),
  };
}

/** A NemotronH model's decoder: the prompt pass, then one step a token over the kept state (transformers' hybrid cache). */
export function nemotronHDecoder(model: NemotronHForCausalLM): StepDecoder {
  let state: Partial<NemotronHState> = {};
  return {
    vocabSize: model.config.vocabSize,
    next: (sequences, mask, first) => (first
      ? model.forward({ inputIds: sequences, attentionMask: mask, logitsToKeep: 1 }, state).logits
      : model.step(sequences.map((s) => s[s.length - 1]), state as NemotronHState)),
    reorder: (rows) => {
      if (rows.every((r, i) => r === i)) return;
      const reordered = selectStateRows(state as NemotronHState, rows);
      disposeState(state);
      state = reordered;
    },
    dispose: () => disposeState(state),
  };
}

/** The decoder of a model of either family. */
export function decoderFor(model: NemotronForCausalLM | NemotronHForCausalLM, useCache = true): StepDecoder {
  if (model instanceof NemotronHForCausalLM) {
    if (!useCache) throw new Error('generate: a NemotronH model decodes over its kept state; useCache: false does not apply');
    return nemotronHDecoder(model);
  }
  return nemotronDecoder(model, useCache);
}
