import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as protobuf from 'protobufjs';
import * as tf from '@tensorflow/tfjs';
import { DECODE_STEP_KERNEL, limitFusedKernel } from './fused';
import type { NodeBackend } from './tensorflow-kernels';
import { Attrs, TFOps, attention, layerNorm1P, linear, mlp, transposedProductMode } from './tensorflow-ops';

/**
 * One decoding step of NemotronModel (a new token per row, with a KV cache) as a single TensorFlow graph.
 *
 * Eagerly, even on raw handles, each TensorFlow op costs ~13 µs of dispatch, and a step of minitron-small runs ~700 of
 * them: ~9 ms on top of the ~26 ms its weights take to stream. In a graph they cost a few µs each. tfjs-node's
 * binding runs graphs only as SavedModels, so the step — written with the same functions as the eager kernels
 * (tensorflow-ops.ts) — is recorded as a GraphDef, wrapped in a SavedModel, loaded once per shape and run with the
 * weights, the cache and the new hidden states as inputs; weights changed by training are simply the next call's
 * inputs. A run holds a copy of its inputs (see DECODE_STEP_MEMORY_SHARE).
 */

// The parts of TensorFlow's protos this file writes (field numbers as in tensorflow/core/framework/*.proto and
// tensorflow/core/protobuf/{meta_graph,saved_model}.proto). DataType is an enum there: DT_FLOAT 1, DT_INT32 3.
const SCHEMA = `
syntax = "proto3";
package tensorflow;
message TensorShapeProto { message Dim { int64 size = 1; } repeated Dim dim = 2; bool unknown_rank = 3; }
message TensorProto { int32 dtype = 1; TensorShapeProto tensor_shape = 2; bytes tensor_content = 4; }
message AttrValue {
  oneof value { bytes s = 2; int64 i = 3; float f = 4; bool b = 5; int32 type = 6; TensorShapeProto shape = 7; TensorProto tensor = 8; }
}
message NodeDef { string name = 1; string op = 2; repeated string input = 3; map<string, AttrValue> attr = 5; }
message VersionDef { int32 producer = 1; }
message GraphDef { repeated NodeDef node = 1; VersionDef versions = 4; }
message MetaInfoDef { repeated string tags = 4; }
message MetaGraphDef { MetaInfoDef meta_info_def = 1; GraphDef graph_def = 2; }
message SavedModel { int64 saved_model_schema_version = 1; repeated MetaGraphDef meta_graphs = 2; }
`;
const DT_FLOAT = 1;
const DT_INT32 = 3;
/** The GraphDef version: TensorFlow 2.x reads graphs from producers this old (it refuses none above its own). */
const GRAPH_PRODUCER = 1000;
const TAG = 'serve';

let savedModelType: protobuf.Type | null = null;

interface NodeDef {
  name: string;
  op: string;
  input: string[];
  attr: Record<string, object>;
}

/** Records TFOps as GraphDef nodes; a handle is a node name (its first output). */
export class GraphOps implements TFOps<string> {
  readonly nodes: NodeDef[] = [];
  private readonly constants = new Map<string, string>();

  /** A float32 input; -1 marks a dimension that varies between runs. */
  placeholder(name: string, shape: number[]): string {
    const attr = { dtype: { type: DT_FLOAT }, shape: { shape: { dim: shape.map((size) => ({ size })) } } };
    this.nodes.push({ name, op: 'Placeholder', input: [], attr });
    return name;
  }

  identity(name: string, x: string): string {
    this.nodes.push({ name, op: 'Identity', input: [x], attr: { T: { type: DT_FLOAT } } });
    return name;
  }

  constant(dtype: 'float32' | 'int32', shape: number[], values: ArrayLike<number> | (() => ArrayLike<number>), key?: string): string {
    const fullKey = `${dtype}:${shape.join('x')}:${key ?? Array.from(values as ArrayLike<number>).join(',')}`;
    let name = this.constants.get(fullKey);
    if (name === undefined) {
      const data = typeof values === 'function' ? values() : values;
      const content = dtype === 'float32' ? new Float32Array(Array.from(data)) : new Int32Array(Array.from(data));
      const type = dtype === 'float32' ? DT_FLOAT : DT_INT32;
      name = `const_${this.constants.size}`;
      this.nodes.push({
        name, op: 'Const', input: [], attr: {
          dtype: { type },
          value: { tensor: { dtype: type, tensorShape: { dim: shape.map((size) => ({ size })) }, tensorContent: new Uint8Array(content.buffer) } },
        },
      });
      this.constants.set(fullKey, name);
    }
    return name;
  }

  op(name: string, inputs: string[], attrs: Attrs = {}): string {
    return this.opUntyped(name, inputs, { T: { type: 'float32' }, ...attrs });
  }

  opUntyped(op: string, inputs: string[], attrs: Attrs): string {
    const attr: Record<string, object> = {};
    for (const [key, v] of Object.entries(attrs)) {
      if ('bool' in v) attr[key] = { b: v.bool };
      else if ('int' in v) attr[key] = { i: v.int };
      else if ('float' in v) attr[key] = { f: v.float };
      else attr[key] = { type: v.type === 'float32' ? DT_FLOAT : DT_INT32 };
    }
    const name = `${op}_${this.nodes.length}`;
    this.nodes.push({ name, op, input: inputs, attr });
    return name;
  }

  savedModel(): Uint8Array {
    savedModelType ??= protobuf.parse(SCHEMA).root.lookupType('tensorflow.SavedModel');
    const message = {
      savedModelSchemaVersion: 1,
      metaGraphs: [{ metaInfoDef: { tags: [TAG] }, graphDef: { node: this.nodes, versions: { producer: GRAPH_PRODUCER } } }],
    };
    return savedModelType.encode(savedModelType.fromObject(message)).finish();
  }
}

/** What shapes a decoding graph: the config's sizes, the batch, and whether a padding mask comes in. */
export interface DecodeStepSpec {
  numLayers: number;
  hiddenSize: number;
  numHeads: number;
  kvHeads: number;
  headDim: number;
  rotaryDim: number;
  intermediateSize: number;
  eps: number;
  attentionBias: boolean;
  mlpBias: boolean;
  activation: 'relu2' | 'relu';
  batch: number;
  hasMask: boolean;
  /** Rows of the output projection the step also applies (input 'output.weight'), or 0 for none. */
  vocabSize: number;
}

/** The fields of a NemotronConfig the decoding step depends on. */
export interface DecodeStepConfig {
  numHiddenLayers: number;
  hiddenSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rotaryDim: number;
  intermediateSize: number;
  normEps: number;
  attentionBias: boolean;
  mlpBias: boolean;
  hiddenAct: string;
}

/**
 * The share of the machine's memory the step's weights may take. The binding's runSavedModel copies every input of a
 * run (measured: a graph that only takes the Shape of 500 MB of fed weights fails under a 700 MB TensorFlow allocator
 * limit, TF_MKL_ALLOC_MAX_BYTES), so a run holds the weights twice; larger models decode with the eager kernels.
 */
export const DECODE_STEP_MEMORY_SHARE = 0.25;

/** Whether a step whose float32 inputs take `weightBytes` fits DECODE_STEP_MEMORY_SHARE of this machine's memory. */
export function decodeStepFits(weightBytes: number): boolean {
  return weightBytes <= DECODE_STEP_MEMORY_SHARE * os.totalmem();
}

/**
 * The step's spec for a forward of `batch` new tokens (one per row), or null where the graph cannot run it (an
 * activation it does not have, a graph that failed to load). The native backend also needs decodeStepFits.
 */
export function decodeStepSpec(c: DecodeStepConfig, batch: number, hasMask: boolean, vocabSize = 0): DecodeStepSpec | null {
  if (c.hiddenAct !== 'relu2' && c.hiddenAct !== 'relu') return null;
  const spec: DecodeStepSpec = {
    numLayers: c.numHiddenLayers, hiddenSize: c.hiddenSize, numHeads: c.numAttentionHeads, kvHeads: c.numKeyValueHeads,
    headDim: c.headDim, rotaryDim: c.rotaryDim, intermediateSize: c.intermediateSize, eps: c.normEps,
    attentionBias: c.attentionBias, mlpBias: c.mlpBias, activation: c.hiddenAct, batch, hasMask, vocabSize,
  };
  return graphFailed(DECODE_STEP_KERNEL, spec) ? null : spec;
}

interface DecodeGraph {
  modelId: number;
  inputNames: string[];
  /** The inputs' and outputs' tensor names as runSavedModel takes them ("a:0,b:0,…"). */
  feeds: string;
  fetches: string;
}

/**
 * The inputs a decoding step takes, in order, with their shapes (-1: varies): hidden, cos, sin, [mask], past
 * keys/values, then the weights by their HF names (as NemotronModel.namedParameters()).
 */
export function decodeStepInputs(spec: DecodeStepSpec): Array<[string, number[]]> {
  const { batch: b, hiddenSize: h, numHeads, kvHeads, headDim: d, intermediateSize } = spec;
  const inputs: Array<[string, number[]]> = [['hidden', [b, h]], ['cos', [b, 1, 1, d]], ['sin', [b, 1, 1, d]]];
  if (spec.hasMask) inputs.push(['mask', [b, 1, 1, -1]]);
  for (let i = 0; i < spec.numLayers; i++) inputs.push([`past.keys.${i}`, [b, kvHeads, -1, d]], [`past.values.${i}`, [b, kvHeads, -1, d]]);
  const linear = (name: string, out: number, inFeatures: number, bias: boolean): Array<[string, number[]]> =>
    [[`${name}.weight`, [out, inFeatures]], ...(bias ? [[`${name}.bias`, [out]] as [string, number[]]] : [])];
  const norm = (name: string): Array<[string, number[]]> => [[`${name}.weight`, [h]], [`${name}.bias`, [h]]];
  for (let i = 0; i < spec.numLayers; i++) {
    const p = `layers.${i}.`;
    inputs.push(
      ...norm(`${p}input_layernorm`),
      ...linear(`${p}self_attn.q_proj`, numHeads * d, h, spec.attentionBias),
      ...linear(`${p}self_attn.k_proj`, kvHeads * d, h, spec.attentionBias),
      ...linear(`${p}self_attn.v_proj`, kvHeads * d, h, spec.attentionBias),
      ...linear(`${p}self_attn.o_proj`, h, numHeads * d, spec.attentionBias),
      ...norm(`${p}post_attention_layernorm`),
      ...linear(`${p}mlp.up_proj`, intermediateSize, h, spec.mlpBias),
      ...linear(`${p}mlp.down_proj`, h, intermediateSize, spec.mlpBias),
    );
  }
  inputs.push(...norm('norm'));
  if (spec.vocabSize > 0) inputs.push(['output.weight', [spec.vocabSize, h]]);
  return inputs;
}

/** Records the step: NemotronDecoderLayer.call for every layer, then the final norm (as NemotronModel.forward). */
function recordDecodeStep(spec: DecodeStepSpec): { bytes: Uint8Array; inputNames: string[]; outputNames: string[] } {
  const g = new GraphOps();
  const inputs = decodeStepInputs(spec);
  const inputNames = inputs.map(([name]) => name);
  const input = new Map(inputs.map(([name, shape]) => [name, g.placeholder(name, shape)]));
  const w = (name: string) => input.get(name)!;
  const optional = (name: string, present: boolean) => (present ? w(name) : undefined);
  const { batch: b, hiddenSize, numHeads, kvHeads, headDim, eps } = spec;
  const shape = { batch: b, seq: 1, numHeads, kvHeads, headDim, rotaryDim: spec.rotaryDim, scale: 1 / Math.sqrt(headDim) };
  let hidden = w('hidden');
  const outputNames: string[] = [];
  for (let i = 0; i < spec.numLayers; i++) {
    const p = `layers.${i}.`;
    const project = (name: string, x: string, inFeatures: number, outFeatures: number) =>
      linear(g, x, w(`${p}self_attn.${name}.weight`), { rows: b, inFeatures, outFeatures }, optional(`${p}self_attn.${name}.bias`, spec.attentionBias));
    const normed = layerNorm1P(g, hidden, w(`${p}input_layernorm.weight`), w(`${p}input_layernorm.bias`), eps);
    const { context, keys, values } = attention(g, {
      q: project('q_proj', normed, hiddenSize, numHeads * headDim),
      k: project('k_proj', normed, hiddenSize, kvHeads * headDim),
      v: project('v_proj', normed, hiddenSize, kvHeads * headDim),
      cos: w('cos'), sin: w('sin'), mask: optional('mask', spec.hasMask),
      pastKeys: w(`past.keys.${i}`), pastValues: w(`past.values.${i}`),
    }, shape, 0); // one new token: the key length does not shape the graph
    outputNames.push(g.identity(`keys.${i}`, keys), g.identity(`values.${i}`, values));
    hidden = g.op('AddV2', [hidden, project('o_proj', context, numHeads * headDim, hiddenSize)]);
    const mlpWeights = {
      up: w(`${p}mlp.up_proj.weight`), down: w(`${p}mlp.down_proj.weight`),
      upBias: optional(`${p}mlp.up_proj.bias`, spec.mlpBias), downBias: optional(`${p}mlp.down_proj.bias`, spec.mlpBias),
    };
    const normedMlp = layerNorm1P(g, hidden, w(`${p}post_attention_layernorm.weight`), w(`${p}post_attention_layernorm.bias`), eps);
    hidden = g.op('AddV2', [hidden, mlp(g, normedMlp, mlpWeights, b, { hidden: hiddenSize, intermediate: spec.intermediateSize }, spec.activation)]);
  }
  const last = layerNorm1P(g, hidden, w('norm.weight'), w('norm.bias'), eps);
  // The output projection in the graph saves its own dispatch and the tfjs ops around it (~1.5 ms a step).
  if (spec.vocabSize > 0) outputNames.unshift(g.identity('logits', linear(g, last, w('output.weight'), { rows: b, inFeatures: hiddenSize, outFeatures: spec.vocabSize })));
  outputNames.unshift(g.identity('last_hidden_state', last));
  return { bytes: g.savedModel(), inputNames, outputNames };
}

/** A recorded graph: the SavedModel's bytes, its inputs' names in feeding order and its outputs' names. */
export interface RecordedGraph {
  bytes: Uint8Array;
  inputNames: string[];
  outputNames: string[];
}

const graphs = new Map<string, DecodeGraph>();
/** Specs whose graph could not be built or loaded: not tried again (decodeStepSpec answers null for them). */
const failed = new Set<string>();

/** Whether the graph of `kernelName` for `spec` failed before (it is not tried again). */
export function graphFailed(kernelName: string, spec: object): boolean {
  return failed.has(graphKey(kernelName, spec));
}

/** A graph is recorded for its spec and for the form of its products (the mode may change between calls). */
function graphKey(kernelName: string, spec: object): string {
  return `${kernelName}:${transposedProductMode()}:${JSON.stringify(spec)}`;
}

/** A decoding graph that could not be written or loaded; the model falls back to its layers. */
export class DecodeGraphError extends Error {}

/** The loaded graph for `spec`: recorded, written to a temporary SavedModel, loaded, and the files removed. */
function loadGraph(backend: NodeBackend, kernelName: string, spec: object, record: (spec: never) => RecordedGraph): DecodeGraph {
  const key = graphKey(kernelName, spec);
  let graph = graphs.get(key);
  if (!graph) {
    let dir: string | null = null;
    try {
      const { bytes, inputNames, outputNames } = record(spec as never);
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nemotron-tfjs-graph-'));
      fs.writeFileSync(path.join(dir, 'saved_model.pb'), bytes);
      const tensorNames = (names: string[]) => names.map((n) => `${n}:0`).join(',');
      graph = { modelId: backend.binding.loadSavedModel(dir, TAG), inputNames, feeds: tensorNames(inputNames), fetches: tensorNames(outputNames) };
    } catch (e) {
      failed.add(key);
      throw new DecodeGraphError(`the compiled decoding step could not be loaded (${(e as Error).message.split('\n')[0]})`);
    } finally {
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    }
    graphs.set(key, graph);
  }
  return graph;
}

/**
 * Registers for 'tensorflow' a kernel that runs the graph `record` writes for its attrs (the spec), fed the kernel's
 * inputs by the graph's input names; its outputs are the graph's, in order. Idempotent. Not on a GPU build
 * (tfjs-node-gpu registers under the same name): runSavedModel resolves every input handle to host memory, which on
 * a GPU would copy all the weights back each step.
 */
export function registerGraphKernel<S extends object>(kernelName: string, record: (spec: S) => RecordedGraph): void {
  if (tf.getKernel(kernelName, 'tensorflow')) return;
  const kernelFunc = ({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.Tensor[] => {
    const node = backend as NodeBackend;
    const graph = loadGraph(node, kernelName, attrs ?? {}, record);
    const ids = node.getInputTensorIds(graph.inputNames.map((name) => {
      const t = inputs[name];
      if (!t) throw new Error(`${kernelName}: missing input ${JSON.stringify(name)}`);
      return t;
    }));
    const outputs = node.binding.runSavedModel(graph.modelId, ids, graph.feeds, graph.fetches);
    return outputs.map((metadata) => node.createOutputTensor(metadata));
  };
  tf.registerKernel({ kernelName, backendName: 'tensorflow', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  limitFusedKernel(kernelName, 'tensorflow', () => !(tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice);
}

/**
 * Registers the decoding-step kernel for 'tensorflow' (idempotent): inputs named as decodeStepInputs(spec), attrs the
 * spec. Outputs [lastHiddenState [b, hidden] (after the final norm), logits [b, vocab] where spec.vocabSize > 0,
 * keys.0, values.0, keys.1, …] with the new token's keys and values appended.
 */
export function registerDecodeStepKernel(): void {
  registerGraphKernel(DECODE_STEP_KERNEL, recordDecodeStep);
}
