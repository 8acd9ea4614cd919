import type { NemotronHConfig } from '../../models/nemotron_h/config';
import { NEMOTRON_H_STEP_KERNEL } from './fused';
import { GraphOps, type RecordedGraph, graphFailed, registerGraphKernel } from './tensorflow-graph';
import { type Attrs, concat, decodingAttention, linear, mlp, reshape, scalar, transpose } from './tensorflow-ops';

/**
 * One decoding step of NemotronHForCausalLM (a new token per row, over each layer's kept state) as a single
 * TensorFlow graph, to the logits: the eager step runs ~500 small ops a token, each with tfjs's and TensorFlow's
 * dispatch around it (~30 ms of a 79 ms step on this machine's two cores, measured with tf.profile); in a graph they
 * cost a few µs each. Same arithmetic as the eager step (models/nemotron_h/model.ts step()), op for op.
 */

/** What shapes the graph: the layer pattern, the sizes, and the batch. Plain values: it travels as the kernel's attrs. */
export interface NemotronHStepSpec {
  /** One letter a layer: M (Mamba-2), * (attention), - (MLP), E (mixture of experts). */
  pattern: string;
  batch: number;
  hiddenSize: number;
  vocabSize: number;
  eps: number;
  mambaHeads: number;
  mambaHeadDim: number;
  nGroups: number;
  ssmStateSize: number;
  convKernel: number;
  useConvBias: boolean;
  useBias: boolean;
  attentionHeads: number;
  kvHeads: number;
  headDim: number;
  intermediateSize: number;
  mlpBias: boolean;
  /** The output projection is the embedding matrix (tie_word_embeddings). */
  tied: boolean;
  /** Mixture-of-experts layers (E): the router's sizes, the experts' widths (moeLatentSize 0: no latent projections). */
  nRoutedExperts: number;
  numExpertsPerTok: number;
  nGroup: number;
  topkGroup: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
  moeIntermediateSize: number;
  moeSharedExpertIntermediateSize: number;
  moeLatentSize: number;
}

/** The fields of a NemotronHConfig the step depends on. */
export type NemotronHStepConfig = Pick<NemotronHConfig, 'layerTypes' | 'hiddenSize' | 'vocabSize' | 'layerNormEpsilon' | 'mambaNumHeads' |
  'mambaHeadDim' | 'nGroups' | 'ssmStateSize' | 'convKernel' | 'useConvBias' | 'useBias' | 'numAttentionHeads' | 'numKeyValueHeads' | 'headDim' |
  'intermediateSize' | 'mlpBias' | 'tieWordEmbeddings' | 'nRoutedExperts' | 'numExpertsPerTok' | 'nGroup' | 'topkGroup' | 'normTopkProb' | 'routedScalingFactor' |
  'moeIntermediateSize' | 'moeSharedExpertIntermediateSize' | 'moeLatentSize'>;

const LETTER = { mamba: 'M', attention: '*', mlp: '-', moe: 'E' } as const;

/** The step's spec for `batch` rows, or null where no graph runs it (one that failed to load). */
export function nemotronHStepSpec(c: NemotronHStepConfig, batch: number): NemotronHStepSpec | null {
  const spec: NemotronHStepSpec = {
    pattern: c.layerTypes.map((t) => LETTER[t]).join(''), batch, hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, eps: c.layerNormEpsilon,
    mambaHeads: c.mambaNumHeads, mambaHeadDim: c.mambaHeadDim, nGroups: c.nGroups, ssmStateSize: c.ssmStateSize, convKernel: c.convKernel,
    useConvBias: c.useConvBias, useBias: c.useBias, attentionHeads: c.numAttentionHeads, kvHeads: c.numKeyValueHeads, headDim: c.headDim,
    intermediateSize: c.intermediateSize, mlpBias: c.mlpBias, tied: c.tieWordEmbeddings,
    nRoutedExperts: c.nRoutedExperts, numExpertsPerTok: c.numExpertsPerTok, nGroup: c.nGroup, topkGroup: c.topkGroup, normTopkProb: c.normTopkProb,
    routedScalingFactor: c.routedScalingFactor, moeIntermediateSize: c.moeIntermediateSize, moeSharedExpertIntermediateSize: c.moeSharedExpertIntermediateSize,
    moeLatentSize: c.moeLatentSize ?? 0,
  };
  return graphFailed(NEMOTRON_H_STEP_KERNEL, spec) ? null : spec;
}

/** The Mamba-2 block's inner width and its convolution's channels (x, B and C). */
function mambaSizes(s: NemotronHStepSpec): { inner: number; convDim: number } {
  const inner = s.mambaHeads * s.mambaHeadDim;
  return { inner, convDim: inner + 2 * s.nGroups * s.ssmStateSize };
}

/**
 * The inputs, in order, with their shapes (-1: varies): the new tokens' embeddings 'hidden' [b, hidden], the additive
 * padding mask 'mask' [b, 1, 1, keys] where there is attention, each layer's state (conv.i [b, K-1, channels] and
 * ssm.i [b, heads, head_dim, state] for Mamba-2, keys.i and values.i [b, kv, keys, d] for attention), then the weights
 * by transformers' names (conv1d.weight as [channels, K]).
 */
export function nemotronHStepInputs(s: NemotronHStepSpec): Array<[string, number[]]> {
  const { batch: b, hiddenSize: h } = s;
  const { inner, convDim } = mambaSizes(s);
  const layers = [...s.pattern];
  const inputs: Array<[string, number[]]> = [['hidden', [b, h]]];
  if (layers.includes('*')) inputs.push(['mask', [b, 1, 1, -1]]);
  layers.forEach((type, i) => {
    if (type === 'M') inputs.push([`conv.${i}`, [b, s.convKernel - 1, convDim]], [`ssm.${i}`, [b, s.mambaHeads, s.mambaHeadDim, s.ssmStateSize]]);
    if (type === '*') inputs.push([`keys.${i}`, [b, s.kvHeads, -1, s.headDim]], [`values.${i}`, [b, s.kvHeads, -1, s.headDim]]);
  });
  const linearWeights = (name: string, out: number, inFeatures: number, bias: boolean): Array<[string, number[]]> =>
    [[`${name}.weight`, [out, inFeatures]], ...(bias ? [[`${name}.bias`, [out]] as [string, number[]]] : [])];
  layers.forEach((type, i) => {
    const p = `model.layers.${i}`;
    inputs.push([`${p}.norm.weight`, [h]]);
    if (type === 'M') {
      inputs.push(...linearWeights(`${p}.mixer.in_proj`, inner + convDim + s.mambaHeads, h, s.useBias), [`${p}.mixer.conv1d.weight`, [convDim, s.convKernel]]);
      if (s.useConvBias) inputs.push([`${p}.mixer.conv1d.bias`, [convDim]]);
      inputs.push([`${p}.mixer.dt_bias`, [s.mambaHeads]], [`${p}.mixer.A_log`, [s.mambaHeads]], [`${p}.mixer.D`, [s.mambaHeads]],
        [`${p}.mixer.norm.weight`, [inner]], ...linearWeights(`${p}.mixer.out_proj`, h, inner, s.useBias));
    } else if (type === '*') {
      inputs.push(...linearWeights(`${p}.mixer.q_proj`, s.attentionHeads * s.headDim, h, false), ...linearWeights(`${p}.mixer.k_proj`, s.kvHeads * s.headDim, h, false),
        ...linearWeights(`${p}.mixer.v_proj`, s.kvHeads * s.headDim, h, false), ...linearWeights(`${p}.mixer.o_proj`, h, s.attentionHeads * s.headDim, false));
    } else if (type === 'E') {
      const width = s.moeLatentSize || h;
      inputs.push([`${p}.mixer.gate.weight`, [s.nRoutedExperts, h]], [`${p}.mixer.gate.e_score_correction_bias`, [s.nRoutedExperts]],
        [`${p}.mixer.experts.up_proj`, [s.nRoutedExperts, s.moeIntermediateSize, width]], [`${p}.mixer.experts.down_proj`, [s.nRoutedExperts, width, s.moeIntermediateSize]],
        ...linearWeights(`${p}.mixer.shared_experts.up_proj`, s.moeSharedExpertIntermediateSize, h, s.mlpBias),
        ...linearWeights(`${p}.mixer.shared_experts.down_proj`, h, s.moeSharedExpertIntermediateSize, s.mlpBias));
      if (s.moeLatentSize) {
        inputs.push(...linearWeights(`${p}.mixer.fc1_latent_proj`, s.moeLatentSize, h, s.mlpBias), ...linearWeights(`${p}.mixer.fc2_latent_proj`, h, s.moeLatentSize, s.mlpBias));
      }
    } else {
      inputs.push(...linearWeights(`${p}.mixer.up_proj`, s.intermediateSize, h, s.mlpBias), ...linearWeights(`${p}.mixer.down_proj`, h, s.intermediateSize, s.mlpBias));
    }
  });
  inputs.push(['model.norm_f.weight', [h]], [s.tied ? 'model.embeddings.weight' : 'lm_head.weight', [s.vocabSize, h]]);
  return inputs;
}

const int32 = { type: 'int32' } as const;
const keepLast: Attrs = { keep_dims: { bool: true }, Tidx: int32 };

/** Columns [start, start + width) of x [rows, …]: a Slice along the last of `shape`'s axes. */
function columns(g: GraphOps, x: string, shape: number[], start: number, width: number): string {
  const begin = shape.map((_, i) => (i === shape.length - 1 ? start : 0));
  const size = shape.map((n, i) => (i === shape.length - 1 ? width : n));
  return g.opUntyped('Slice', [x, g.constant('int32', [begin.length], begin), g.constant('int32', [size.length], size)], { T: { type: 'float32' }, Index: int32 });
}

function rmsNorm(g: GraphOps, x: string, weight: string, eps: number): string {
  const variance = g.op('Mean', [g.op('Square', [x]), g.constant('int32', [1], [-1])], keepLast);
  return g.op('Mul', [weight, g.op('Mul', [x, g.op('Rsqrt', [g.op('AddV2', [variance, scalar(g, eps)])])])]);
}

const silu = (g: GraphOps, x: string) => g.op('Mul', [x, g.op('Sigmoid', [x])]);

/** The Mamba-2 block's step (the eager mambaStep): returns its output [b, hidden] and the new convolution window and SSM state. */
function mambaStep(g: GraphOps, s: NemotronHStepSpec, x: string, w: (name: string) => string, i: number): { out: string; conv: string; ssm: string } {
  const { batch: b, mambaHeads: heads, mambaHeadDim: headDim, nGroups: groups, ssmStateSize: n, convKernel: k } = s;
  const { inner, convDim } = mambaSizes(s);
  const p = `model.layers.${i}.mixer`;
  const width = inner + convDim + heads;
  const proj = linear(g, x, w(`${p}.in_proj.weight`), { rows: b, inFeatures: s.hiddenSize, outFeatures: width }, s.useBias ? w(`${p}.in_proj.bias`) : undefined);
  const gate = columns(g, proj, [b, width], 0, inner);
  const xBC = columns(g, proj, [b, width], inner, convDim);
  const rawDt = columns(g, proj, [b, width], inner + convDim, heads);
  // The causal convolution over the kept window and the new input: Σ_j window[j]·weight[:, j].
  const window = concat(g, w(`conv.${i}`), reshape(g, xBC, [b, 1, convDim]), 1);
  let conv = g.op('Sum', [g.op('Mul', [window, transpose(g, w(`${p}.conv1d.weight`), [1, 0])]), g.constant('int32', [1], [1])], { keep_dims: { bool: false }, Tidx: int32 });
  if (s.useConvBias) conv = g.op('AddV2', [conv, w(`${p}.conv1d.bias`)]);
  const activated = silu(g, conv);
  const nextWindow = g.opUntyped('Slice', [window, g.constant('int32', [3], [0, 1, 0]), g.constant('int32', [3], [b, k - 1, convDim])], { T: { type: 'float32' }, Index: int32 });
  const xs = columns(g, activated, [b, convDim], 0, inner);
  const B = columns(g, activated, [b, convDim], inner, groups * n);
  const C = columns(g, activated, [b, convDim], inner + groups * n, groups * n);
  // As the eager step: Δt without the prompt's clamp; the state h ← exp(Δt·A)·h + (Δt·x)·Bᵀ, y = h·C + D·x. Heads
  // are grouped [b, groups, heads/group, …] so that each reads its group's B and C by broadcasting.
  const perGroup = heads / groups;
  const dt = g.op('Softplus', [g.op('AddV2', [rawDt, w(`${p}.dt_bias`)])]);
  const A = g.op('Neg', [g.op('Exp', [w(`${p}.A_log`)])]);
  const decay = reshape(g, g.op('Exp', [g.op('Mul', [dt, A])]), [b, groups, perGroup, 1, 1]);
  const xHeads = reshape(g, xs, [b, heads, headDim]);
  const input = reshape(g, g.op('Mul', [xHeads, reshape(g, dt, [b, heads, 1])]), [b, groups, perGroup, headDim, 1]);
  const h = g.op('AddV2', [g.op('Mul', [reshape(g, w(`ssm.${i}`), [b, groups, perGroup, headDim, n]), decay]), g.op('Mul', [input, reshape(g, B, [b, groups, 1, 1, n])])]);
  const readOut = g.op('BatchMatMulV2', [h, reshape(g, C, [b, groups, 1, n, 1])], { adj_x: { bool: false }, adj_y: { bool: false } });
  const y = g.op('AddV2', [reshape(g, readOut, [b, heads, headDim]), g.op('Mul', [xHeads, reshape(g, w(`${p}.D`), [1, heads, 1])])]);
  // Gated by silu(gate), normalized by groups, projected out.
  const gated = reshape(g, g.op('Mul', [reshape(g, y, [b, inner]), silu(g, gate)]), [b, groups, inner / groups]);
  const variance = g.op('Mean', [g.op('Square', [gated]), g.constant('int32', [1], [-1])], keepLast);
  const normed = reshape(g, g.op('Mul', [gated, g.op('Rsqrt', [g.op('AddV2', [variance, scalar(g, s.eps)])])]), [b, inner]);
  const out = linear(g, g.op('Mul', [normed, w(`${p}.norm.weight`)]), w(`${p}.out_proj.weight`), { rows: b, inFeatures: inner, outFeatures: s.hiddenSize }, s.useBias ? w(`${p}.out_proj.bias`) : undefined);
  return { out, conv: nextWindow, ssm: reshape(g, h, [b, heads, headDim, n]) };
}

/** Attention of the new token over the kept keys and values (no position embedding): output [b, hidden], the full keys and values. */
function attentionStep(g: GraphOps, s: NemotronHStepSpec, x: string, w: (name: string) => string, i: number): { out: string; keys: string; values: string } {
  const { batch: b, attentionHeads: heads, kvHeads, headDim: d } = s;
  const p = `model.layers.${i}.mixer`;
  const project = (name: string, count: number) => reshape(g, linear(g, x, w(`${p}.${name}.weight`), { rows: b, inFeatures: s.hiddenSize, outFeatures: count * d }), [b, count, 1, d]);
  const keys = concat(g, w(`keys.${i}`), project('k_proj', kvHeads), 2);
  const values = concat(g, w(`values.${i}`), project('v_proj', kvHeads), 2);
  const shape = { batch: b, seq: 1, numHeads: heads, kvHeads, headDim: d, rotaryDim: 0, scale: 1 / Math.sqrt(d) };
  const context = decodingAttention(g, project('q_proj', heads), keys, values, w('mask'), shape);
  return { out: linear(g, context, w(`${p}.o_proj.weight`), { rows: b, inFeatures: heads * d, outFeatures: s.hiddenSize }), keys, values };
}

/** x [rows, …] as int32 (Reshape's T is the data's type). */
const reshapeInt = (g: GraphOps, x: string, shape: number[]) =>
  g.opUntyped('Reshape', [x, g.constant('int32', [shape.length], shape)], { T: int32, Tshape: int32 });

/** The indices (TopKV2's second output) of the k largest along the last axis, largest first (ties: lower index first). */
const topKIndices = (g: GraphOps, x: string, k: number) => `${g.opUntyped('TopKV2', [x, g.constant('int32', [], [k])], { T: { type: 'float32' }, sorted: { bool: true } })}:1`;

/** One-hot rows of int32 indices [..., n] over `depth` classes: float [..., n, depth]. */
const oneHot = (g: GraphOps, indices: string, depth: number) => g.opUntyped('OneHot',
  [indices, g.constant('int32', [], [depth]), scalar(g, 1), scalar(g, 0)], { T: { type: 'float32' }, TI: int32, axis: { int: -1 } });

/**
 * A mixture-of-experts layer's step (the eager moe(), routing on the device): sigmoid scores, plus the correction
 * bias for choosing; the topk_group best groups (a group scored by its two best experts), then num_experts_per_tok
 * experts among them; their scores normalized and scaled weigh the chosen experts' relu² MLPs (their matrices
 * gathered, one product a row and expert); the shared expert adds to every row.
 */
function moeStep(g: GraphOps, s: NemotronHStepSpec, x: string, w: (name: string) => string, i: number): string {
  const { batch: b, nRoutedExperts: experts, numExpertsPerTok: k, nGroup: groups } = s;
  const p = `model.layers.${i}.mixer`;
  const optional = (name: string) => (s.mlpBias ? w(name) : undefined);
  const scores = g.op('Sigmoid', [linear(g, x, w(`${p}.gate.weight`), { rows: b, inFeatures: s.hiddenSize, outFeatures: experts })]);
  let choice = g.op('AddV2', [scores, w(`${p}.gate.e_score_correction_bias`)]);
  if (groups > 1) {
    const perGroup = experts / groups;
    const grouped = reshape(g, choice, [b, groups, perGroup]);
    const best2 = g.opUntyped('TopKV2', [grouped, g.constant('int32', [], [2])], { T: { type: 'float32' }, sorted: { bool: true } });
    const groupScores = g.op('Sum', [best2, g.constant('int32', [1], [-1])], { keep_dims: { bool: false }, Tidx: int32 });
    const kept = g.op('Sum', [oneHot(g, topKIndices(g, groupScores, s.topkGroup), groups), g.constant('int32', [1], [1])], { keep_dims: { bool: false }, Tidx: int32 });
    // Experts outside the kept groups drop by 1e30 (the eager path's -Infinity: never chosen either way).
    const expertKept = reshape(g, g.op('Mul', [reshape(g, kept, [b, groups, 1]), g.constant('float32', [1, 1, perGroup], new Array<number>(perGroup).fill(1))]), [b, experts]);
    choice = g.op('AddV2', [choice, g.op('Mul', [g.op('Sub', [expertKept, scalar(g, 1)]), scalar(g, 1e30)])]);
  }
  const chosen = topKIndices(g, choice, k);
  const picked = oneHot(g, chosen, experts); // [b, k, E]
  let weights = g.op('Sum', [g.op('Mul', [picked, reshape(g, scores, [b, 1, experts])]), g.constant('int32', [1], [-1])], { keep_dims: { bool: false }, Tidx: int32 });
  if (s.normTopkProb) weights = g.op('RealDiv', [weights, g.op('AddV2', [g.op('Sum', [weights, g.constant('int32', [1], [-1])], keepLast), scalar(g, 1e-20)])]);
  weights = g.op('Mul', [weights, scalar(g, s.routedScalingFactor)]);
  const width = s.moeLatentSize || s.hiddenSize;
  const latent = s.moeLatentSize ? linear(g, x, w(`${p}.fc1_latent_proj.weight`), { rows: b, inFeatures: s.hiddenSize, outFeatures: width }, optional(`${p}.fc1_latent_proj.bias`)) : x;
  // Each (row, expert) pair: the expert's matrices gathered, the row through them.
  const index = reshapeInt(g, chosen, [b * k]);
  const gather = (name: string) => g.opUntyped('GatherV2', [w(name), index, g.constant('int32', [], [0])], { Tparams: { type: 'float32' }, Tindices: int32, Taxis: int32, batch_dims: { int: 0 } });
  const rows = reshape(g, g.op('Mul', [reshape(g, latent, [b, 1, width]), g.constant('float32', [1, k, 1], new Array<number>(k).fill(1))]), [b * k, 1, width]);
  const noTranspose = { adj_x: { bool: false }, adj_y: { bool: true } };
  const hidden = g.op('Square', [g.op('Relu', [g.op('BatchMatMulV2', [rows, gather(`${p}.experts.up_proj`)], noTranspose)])]);
  const expertOut = g.op('BatchMatMulV2', [hidden, gather(`${p}.experts.down_proj`)], noTranspose); // [b·k, 1, width]
  let routed = g.op('Sum', [g.op('Mul', [reshape(g, expertOut, [b, k, width]), reshape(g, weights, [b, k, 1])]), g.constant('int32', [1], [1])], { keep_dims: { bool: false }, Tidx: int32 });
  if (s.moeLatentSize) routed = linear(g, routed, w(`${p}.fc2_latent_proj.weight`), { rows: b, inFeatures: width, outFeatures: s.hiddenSize }, optional(`${p}.fc2_latent_proj.bias`));
  const shared = mlp(g, x, {
    up: w(`${p}.shared_experts.up_proj.weight`), down: w(`${p}.shared_experts.down_proj.weight`),
    upBias: optional(`${p}.shared_experts.up_proj.bias`), downBias: optional(`${p}.shared_experts.down_proj.bias`),
  }, b, { hidden: s.hiddenSize, intermediate: s.moeSharedExpertIntermediateSize }, 'relu2');
  return g.op('AddV2', [routed, shared]);
}

/** Records the step: every layer as the eager step() runs it, the final norm and the output projection. */
export function recordNemotronHStep(s: NemotronHStepSpec): RecordedGraph {
  const g = new GraphOps();
  const inputs = nemotronHStepInputs(s);
  const placeholders = new Map(inputs.map(([name, shape]) => [name, g.placeholder(name, shape)]));
  const w = (name: string) => {
    const node = placeholders.get(name);
    if (node === undefined) throw new Error(`${NEMOTRON_H_STEP_KERNEL}: no input ${name}`);
    return node;
  };
  let hidden = w('hidden');
  const outputNames: string[] = [];
  [...s.pattern].forEach((type, i) => {
    const x = rmsNorm(g, hidden, w(`model.layers.${i}.norm.weight`), s.eps);
    let out: string;
    if (type === 'M') {
      const r = mambaStep(g, s, x, w, i);
      outputNames.push(g.identity(`next.conv.${i}`, r.conv), g.identity(`next.ssm.${i}`, r.ssm));
      out = r.out;
    } else if (type === '*') {
      const r = attentionStep(g, s, x, w, i);
      outputNames.push(g.identity(`next.keys.${i}`, r.keys), g.identity(`next.values.${i}`, r.values));
      out = r.out;
    } else if (type === 'E') {
      out = moeStep(g, s, x, w, i);
    } else {
      const p = `model.layers.${i}.mixer`;
      const weights = {
        up: w(`${p}.up_proj.weight`), down: w(`${p}.down_proj.weight`),
        upBias: s.mlpBias ? w(`${p}.up_proj.bias`) : undefined, downBias: s.mlpBias ? w(`${p}.down_proj.bias`) : undefined,
      };
      out = mlp(g, x, weights, s.batch, { hidden: s.hiddenSize, intermediate: s.intermediateSize }, 'relu2');
    }
    hidden = g.op('AddV2', [hidden, out]);
  });
  const last = rmsNorm(g, hidden, w('model.norm_f.weight'), s.eps);
  const head = w(s.tied ? 'model.embeddings.weight' : 'lm_head.weight');
  outputNames.unshift(g.identity('logits', linear(g, last, head, { rows: s.batch, inFeatures: s.hiddenSize, outFeatures: s.vocabSize })));
  return { bytes: g.savedModel(), inputNames: inputs.map(([name]) => name), outputNames };
}

/**
 * Registers the step's kernel for 'tensorflow' (idempotent): inputs named as nemotronHStepInputs(spec), attrs the
 * spec; outputs the logits [b, vocab], then each Mamba-2 layer's new window and state and each attention layer's
 * keys and values (the new token's appended), in layer order.
 */
export function registerNemotronHStepKernel(): void {
  registerGraphKernel(NEMOTRON_H_STEP_KERNEL, recordNemotronHStep);
}
