/**
 * Serving a NemotronH model: its rows run one after another (FIFO) — a prompt pass, then one step a token over the
 * kept state — with each row's decoding rules (rowDecoding: processors, sampler, grammar) as generate() applies them.
 * What the OpenAI server needs of a scheduler (`generate(row)`); continuous batching is the Nemotron classes' for now.
 */
import * as tf from '@tensorflow/tfjs';
import { NemotronHForCausalLM, type NemotronHState, disposeState } from '../../models/nemotron_h/model';
import { argmax } from '../generation/processors';
import type { BatchRow } from './batcher';

export class NemotronHRowRunner {
  private queue: Promise<void> = Promise.resolve();
  readonly prefixCache = null;

  constructor(private readonly model: NemotronHForCausalLM) {}

  /** Continues `row.prompt` once the rows before it are done; resolves when the row ends. */
  generate(row: BatchRow): Promise<void> {
    const limit = this.model.config.maxPositionEmbeddings;
    if (row.prompt.length === 0) return Promise.reject(new Error('NemotronHRowRunner: the prompt is empty'));
    if (row.prompt.length + row.decoding.maxNewTokens > limit) {
      return Promise.reject(new Error(`NemotronHRowRunner: the prompt (${row.prompt.length} tokens) plus ${row.decoding.maxNewTokens} new tokens is longer than the context (${limit})`));
    }
    const run = this.queue.then(() => this.run(row));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async run(row: BatchRow): Promise<void> {
    if (row.cancelled?.()) return;
    const state: Partial<NemotronHState> = {};
    let logits = this.model.forward({ inputIds: [row.prompt], logitsToKeep: 1 }, state).logits;
    const sequence = row.prompt.slice();
    try {
      for (let step = 0; ; step++) {
        const last = tf.tidy(() => logits.slice([0, logits.shape[1] - 1, 0], [1, 1, -1]).reshape([-1]));
        const host = await last.data() as Float32Array;
        last.dispose();
        const raw = row.wantLogits ? host.slice() : null;
        const token = row.decoding.needsLogits ? row.decoding.next(host.slice(), sequence, step) : argmax(host);
        sequence.push(token);
        const going = row.onToken(token, raw);
        if (!going || row.decoding.eosTokenIds.includes(token) || step + 1 >= row.decoding.maxNewTokens) break;
        logits.dispose();
        logits = this.model.step([token], state as NemotronHState);
        // Between two tokens the server takes new requests and answers streams.
        await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      logits.dispose();
      disposeState(state);
    }
  }
}
