import type { BatchRow, RowDecoding } from '../../src/index';

/** A row that records its tokens and raw logits; `then` runs after its n-th token. */
export function recordRow(prompt: number[], decoding: RowDecoding, then?: { after: number; run: () => void }) {
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  const row: BatchRow = {
    prompt, decoding, wantLogits: true,
    onToken: (token, l) => {
      tokens.push(token);
      logits.push(l!);
      if (then && tokens.length === then.after) then.run();
      return true;
    },
  };
  return { row, tokens, logits };
}

/** Records the tokens (rows × positions) of each forward pass of `model` until restore(). */
export function countPasses<I extends { inputIds?: unknown }>(model: { forward: (inputs: I, ...rest: never[]) => unknown }): { passes: number[]; restore: () => void } {
  const forward = model.forward;
  const passes: number[] = [];
  model.forward = function (this: unknown, inputs: I, ...rest: never[]) {
    const ids = inputs.inputIds as number[][];
    passes.push(ids.length * ids[0].length);
    return forward.call(this, inputs, ...rest);
  };
  return { passes, restore: () => { model.forward = forward; } };
}

type Recorded = ReturnType<typeof recordRow>;

/**
 * Decodes `first` on `batcher`; after its `after`-th token the `later` rows join. `record` makes a row's recorder
 * (with `then` for the first). Returns the recorders, first's first.
 */
export async function joinWhileDecoding<O>(batcher: { generate(row: BatchRow): Promise<void> }, record: (prompt: number[], options: O, then?: { after: number; run: () => void }) => Recorded,
  first: [number[], O], after: number, later: Array<[number[], O]>): Promise<Recorded[]> {
  const joined: Recorded[] = [];
  const pending: Promise<void>[] = [];
  const head = record(first[0], first[1], {
    after,
    run: () => later.forEach(([prompt, options]) => {
      const r = record(prompt, options);
      joined.push(r);
      pending.push(batcher.generate(r.row));
    }),
  });
  await batcher.generate(head.row);
  await Promise.all(pending);
  return [head, ...joined];
}
