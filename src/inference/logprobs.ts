/**
 * Log-probabilities of tokens under a causal LM: of a given text's tokens (what lm-evaluation-harness scores
 * continuations with, and OpenAI's `echo` + `logprobs` returns), and of a generation step's logits.
 */
import * as tf from '@tensorflow/tfjs';
import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { NemotronHForCausalLM } from '../../models/nemotron_h/model';

/** A token's log-probability and the most likely tokens at its position, most likely first. */
export interface TokenLogprob {
  token: number;
  logprob: number;
  top: Array<{ token: number; logprob: number }>;
}

/** Logits of at most this many bytes exist at once (a 256,000-token vocabulary: 64 positions a chunk). */
const CHUNK_BYTES = 64 * 1024 * 1024;

/**
 * log p(ids[t] | ids[0..t-1]) for t = 1 … n-1 (the first token has no context), with the `topK` most likely tokens
 * at each position: log_softmax of the model's logits over the sequence, one forward pass, the logits projected a
 * chunk of positions at a time (`maxChunkBytes` of logits, default 64 MiB) so that [n, vocab] never exists whole.
 */
export async function sequenceLogprobs(model: NemotronForCausalLM | NemotronHForCausalLM, ids: number[], options: { topK?: number; maxChunkBytes?: number } = {}): Promise<TokenLogprob[]> {
  const topK = options.topK ?? 0;
  const vocab = model.config.vocabSize;
  if (!Array.isArray(ids) || ids.length === 0) throw new Error('sequenceLogprobs: expected a non-empty list of token ids');
  ids.forEach((id, i) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new Error(`sequenceLogprobs: ids[${i}] = ${id} is outside [0, vocab_size ${vocab})`);
  });
  if (!Number.isInteger(topK) || topK < 0 || topK > vocab) throw new Error(`sequenceLogprobs: topK must be an integer in [0, ${vocab}], got ${topK}`);
  if (ids.length > model.config.maxSequenceLength) {
    throw new Error(`sequenceLogprobs: ${ids.length} tokens is longer than max_position_embeddings ${model.config.maxPositionEmbeddings}`);
  }
  const n = ids.length - 1;
  if (n === 0) return [];
  const hidden = tf.tidy(() => {
    const last = model instanceof NemotronHForCausalLM ? model.lastHiddenState({ inputIds: [ids] }) : model.model.forward({ inputIds: [ids] }).lastHiddenState;
    return last.reshape([ids.length, model.config.hiddenSize]) as tf.Tensor2D;
  });
  const project = (h: tf.Tensor2D) => (model instanceof NemotronHForCausalLM ? model.project(h) : model.outputMatrix.project(h) as tf.Tensor2D);
  const result: TokenLogprob[] = [];
  try {
    const chunk = Math.max(1, Math.floor((options.maxChunkBytes ?? CHUNK_BYTES) / (4 * vocab)));
    for (let start = 0; start < n; start += chunk) {
      const rows = Math.min(chunk, n - start);
      const targets = ids.slice(start + 1, start + 1 + rows);
      const computed = tf.tidy(() => {
        const logp = tf.logSoftmax(project(hidden.slice([start, 0], [rows, -1])));
        const chosen = tf.gatherND(logp, tf.tensor2d(targets.map((t, r) => [r, t]), [rows, 2], 'int32'));
        if (topK === 0) return [chosen];
        const { values, indices } = tf.topk(logp, topK);
        return [chosen, values, indices];
      });
      const [p, v, k] = await Promise.all(computed.map((t) => t.data()));
      tf.dispose(computed);
      for (let r = 0; r < rows; r++) {
        const top = Array.from({ length: topK }, (_, j) => ({ token: k![r * topK + j], logprob: v![r * topK + j] }));
        result.push({ token: targets[r], logprob: p[r], top });
      }
    }
  } finally {
    hidden.dispose();
  }
  return result;
}

/** `token`'s log-probability under `logits` (one position, unprocessed), with the `topK` most likely tokens. */
export function logprobOf(logits: Float32Array, token: number, topK = 0): TokenLogprob {
  if (!Number.isInteger(token) || token < 0 || token >= logits.length) throw new Error(`logprobOf: token ${token} is outside [0, ${logits.length})`);
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const logZ = max + Math.log(sum);
  // The k largest by one pass with a small sorted list (k ≤ 20 in practice).
  const top: Array<{ token: number; logprob: number }> = [];
  for (let i = 0; i < logits.length && topK > 0; i++) {
    const v = logits[i];
    if (top.length === topK && v <= top[top.length - 1].logprob) continue;
    let at = top.length;
    while (at > 0 && top[at - 1].logprob < v) at--;
    top.splice(at, 0, { token: i, logprob: v });
    if (top.length > topK) top.pop();
  }
  return { token, logprob: logits[token] - logZ, top: top.map((t) => ({ token: t.token, logprob: t.logprob - logZ })) };
}
