import * as tf from '@tensorflow/tfjs';

/** The part of tfjs's engine state a nested gradient computation changes (tfjs-core engine.ts). */
interface TapeState {
  activeTape: unknown[] | null;
}

/**
 * `fn(x, constants)` for training without keeping its activations (transformers' gradient checkpointing): the forward
 * runs untaped and keeps only x; the backward runs fn again under a tape of its own and takes the gradients of x and
 * of `variables` (the weights fn reads) from it. A checkpointed decoder layer then holds its input, not every
 * activation inside it, for one more forward of the layer in the backward.
 *
 * `constants` (masks, rotary tables) get no gradient. fn must read them, and x, from its arguments: the backward gets
 * kept copies (the forward's tidy frees the originals).
 */
export function recomputeInBackward(
  fn: (x: tf.Tensor, constants: tf.Tensor[]) => tf.Tensor, x: tf.Tensor, constants: tf.Tensor[], variables: tf.Variable[],
): tf.Tensor {
  const block = tf.customGrad(((...args: unknown[]) => {
    const input = args[0] as tf.Tensor;
    (args[args.length - 1] as (ts: tf.Tensor[]) => void)([input, ...constants]);
    // Its own tidy: the activations inside fn are freed now, not at the end of the caller's scope.
    const value = tf.tidy(() => fn(input, constants));
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [savedInput, ...savedConstants] = saved;
      // tfjs's gradients() starts a new tape when none records and, once done, drops the engine's active tape; this
      // one runs inside the caller's backward, whose tape the engine still needs afterwards (to free what it saved).
      const state = (tf.engine() as unknown as { state: TapeState }).state;
      const outerTape = state.activeTape;
      try {
        const { value: y, grads } = tf.engine().gradients(() => fn(savedInput, savedConstants), [savedInput, ...variables], dy, true);
        y.dispose();
        // A variable fn did not read (none in a decoder layer) gets zeros.
        return grads.map((g, i) => g ?? tf.zerosLike(i === 0 ? savedInput : variables[i - 1]));
      } finally {
        state.activeTape = outerTape;
      }
    };
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return block(x, ...variables) as tf.Tensor;
}
