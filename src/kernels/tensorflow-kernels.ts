import * as tf from '@tensorflow/tfjs';
import {
  ADAMW_KERNEL, ADAMW_RESIDENT_KERNEL, ATTENTION_KERNEL, AdamWAttrs, LAYERNORM1P_KERNEL, LINEAR_KERNEL, MLP_KERNEL, MomentSlot, ROTARY_KERNEL,
  ResidentMoments, limitFusedKernel,
} from './fused';
import {
  AttentionShape, Attrs, TFOps, attention, layerNorm1P, linear, mlp, rotary, swappedProduct, swapsTransposedProduct, transpose,
} from './tensorflow-ops';

/**
 * Fused kernels for the native backends ('tensorflow', and 'cuda', which registers under that name), for inference.
 *
 * A tfjs op on tfjs-node costs ~30 µs before TensorFlow does any work (kernel dispatch, a tfjs tensor for every
 * output, a freshly uploaded int32 tensor for every reshape's shape or reduction's axes); a TensorFlow eager op run
 * straight through the binding costs ~10 µs. Each kernel here is one tfjs op that runs its TensorFlow ops on raw
 * handles: intermediates never become tfjs tensors, and constants (axes, shapes, epsilon, the rotary permutation)
 * are uploaded once. Checked against the plain tfjs ops in test/kernels/tensorflow-kernels.test.ts.
 */

export interface TFEOpAttr {
  name: string;
  type: number;
  value: unknown;
}

export interface TensorMetadata {
  id: number;
  shape: number[];
  dtype: number;
}

export interface Binding {
  TF_FLOAT: number;
  TF_INT32: number;
  TF_ATTR_BOOL: number;
  TF_ATTR_TYPE: number;
  TF_ATTR_FLOAT: number;
  TF_ATTR_INT: number;
  TF_ATTR_STRING: number;
  TF_ATTR_SHAPE: number;
  createTensor(shape: number[], dtype: number, values: Float32Array | Int32Array): number;
  deleteTensor(id: number): void;
  executeOp(name: string, attrs: TFEOpAttr[], inputIds: number[], numOutputs: number): TensorMetadata[];
  loadSavedModel(exportDir: string, tags: string): number;
  runSavedModel(modelId: number, inputIds: number[], inputNames: string, outputNames: string): TensorMetadata[];
}

/** What this library uses of tfjs-node's NodeJSKernelBackend. */
export interface NodeBackend {
  binding: Binding;
  getInputTensorIds(tensors: tf.TensorInfo[]): number[];
  createOutputTensor(metadata: TensorMetadata): tf.Tensor;
}

/**
 * Raw handles of constants (axes, shapes, epsilon, permutation matrices), uploaded once per binding. Reshape targets
 * vary with the sequence length, so the map is emptied when it grows past MAX_CONSTANTS, between kernels.
 */
const constants = new WeakMap<Binding, Map<string, number>>();
const MAX_CONSTANTS = 512;

/** One kernel's TensorFlow ops on raw handles; `finish` wraps the results as tfjs tensors and frees the rest. */
class EagerOps implements TFOps<number> {
  private readonly temporaries: number[] = [];
  private readonly binding: Binding;
  private readonly cache: Map<string, number>;

  constructor(private readonly backend: NodeBackend) {
    this.binding = backend.binding;
    let cache = constants.get(this.binding);
    if (!cache) constants.set(this.binding, (cache = new Map()));
    if (cache.size >= MAX_CONSTANTS) {
      for (const id of cache.values()) this.binding.deleteTensor(id);
      cache.clear();
    }
    this.cache = cache;
  }

  input(t: tf.TensorInfo): number {
    return this.backend.getInputTensorIds([t])[0];
  }

  constant(dtype: 'float32' | 'int32', shape: number[], values: ArrayLike<number> | (() => ArrayLike<number>), key?: string): number {
    const fullKey = `${dtype}:${shape.join('x')}:${key ?? Array.from(values as ArrayLike<number>).join(',')}`;
    let id = this.cache.get(fullKey);
    if (id === undefined) {
      const data = typeof values === 'function' ? values() : values;
      id = dtype === 'float32'
        ? this.binding.createTensor(shape, this.binding.TF_FLOAT, Float32Array.from(data))
        : this.binding.createTensor(shape, this.binding.TF_INT32, Int32Array.from(data));
      this.cache.set(fullKey, id);
    }
    return id;
  }

  op(name: string, inputs: number[], attrs: Attrs = {}): number {
    return this.opUntyped(name, inputs, { T: { type: 'float32' }, ...attrs });
  }

  opUntyped(name: string, inputs: number[], attrs: Attrs): number {
    const [out] = this.binding.executeOp(name, Object.entries(attrs).map(([n, v]) => this.attr(n, v)), inputs, 1);
    this.temporaries.push(out.id);
    return out.id;
  }

  private attr(name: string, v: Attrs[string]): TFEOpAttr {
    const b = this.binding;
    if ('bool' in v) return { name, type: b.TF_ATTR_BOOL, value: v.bool };
    if ('int' in v) return { name, type: b.TF_ATTR_INT, value: v.int };
    if ('float' in v) return { name, type: b.TF_ATTR_FLOAT, value: v.float };
    return { name, type: b.TF_ATTR_TYPE, value: v.type === 'float32' ? b.TF_FLOAT : b.TF_INT32 };
  }

  /** Wraps `results` (this kernel's outputs: handle and shape) as tfjs tensors, and frees every other temporary. */
  finish(results: Array<[number, number[]]>): tf.Tensor[] {
    const kept = new Set(results.map(([id]) => id));
    for (const t of this.temporaries) if (!kept.has(t)) this.binding.deleteTensor(t);
    this.temporaries.length = 0;
    return results.map(([id, shape]) => this.backend.createOutputTensor({ id, shape, dtype: this.binding.TF_FLOAT }));
  }

  /** Frees every temporary (on an error path). */
  abandon(): void {
    for (const t of this.temporaries) this.binding.deleteTensor(t);
    this.temporaries.length = 0;
  }
}

type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

function runEager(backend: unknown, body: (ops: EagerOps) => Array<[number, number[]]>): tf.Tensor[] {
  const ops = new EagerOps(backend as NodeBackend);
  try {
    return ops.finish(body(ops));
  } catch (error) {
    ops.abandon();
    throw error;
  }
}

/** 10 TensorFlow ops on raw handles instead of ~30 tfjs ops (tfjs-node's Mean adds casts and an axes upload). */
function layerNorm1PKernel({ inputs, backend, attrs }: KernelArgs): tf.Tensor {
  const { x, weight, bias } = inputs as Record<string, tf.TensorInfo>;
  return runEager(backend, (ops) => [
    [layerNorm1P(ops, ops.input(x), ops.input(weight), ops.input(bias), (attrs as { eps: number }).eps), x.shape],
  ])[0];
}

/** applyRotary in four TensorFlow ops (a broadcasting batch matMul needs no reshapes). */
function rotaryKernel({ inputs, backend, attrs }: KernelArgs): tf.Tensor {
  const { x, cos, sin } = inputs as Record<string, tf.TensorInfo>;
  const headDim = x.shape[x.shape.length - 1];
  const elements = x.shape.reduce((a, c) => a * c, 1);
  return runEager(backend, (ops) => [
    [rotary(ops, ops.input(x), ops.input(cos), ops.input(sin), headDim, (attrs as { rotaryDim: number }).rotaryDim, elements), x.shape],
  ])[0];
}

function linearKernel({ inputs, backend }: KernelArgs): tf.Tensor {
  const { x, weight, bias } = inputs as Record<string, tf.TensorInfo | undefined>;
  const rows = x!.shape[0];
  const [out, inFeatures] = weight!.shape;
  return runEager(backend, (ops) => [
    [linear(ops, ops.input(x!), ops.input(weight!), { rows, inFeatures, outFeatures: out }, bias && ops.input(bias)), [rows, out]],
  ])[0];
}

function mlpKernel({ inputs, backend, attrs }: KernelArgs): tf.Tensor {
  const { x, up, down, upBias, downBias } = inputs as Record<string, tf.TensorInfo | undefined>;
  const rows = x!.shape[0];
  const sizes = { hidden: down!.shape[0], intermediate: up!.shape[0] };
  const activation = (attrs as { activation: 'relu2' | 'relu' }).activation;
  return runEager(backend, (ops) => {
    const weights = { up: ops.input(up!), down: ops.input(down!), upBias: upBias && ops.input(upBias), downBias: downBias && ops.input(downBias) };
    return [[mlp(ops, ops.input(x!), weights, rows, sizes, activation), [rows, sizes.hidden]]];
  })[0];
}

/** Outputs [context [b·s, H·d], keys, values [b, KV, L, d]]: see tensorflow-ops.ts attention(). */
function attentionKernel({ inputs, backend, attrs }: KernelArgs): tf.Tensor[] {
  const named = inputs as Record<string, tf.TensorInfo | undefined>;
  const shape = attrs as unknown as AttentionShape;
  const { batch: b, seq: s, numHeads, kvHeads, headDim: d } = shape;
  const keyLen = (named.pastKeys ? named.pastKeys.shape[2] : 0) + s;
  return runEager(backend, (ops) => {
    const handle = (name: string) => (named[name] ? ops.input(named[name]!) : undefined);
    const x = {
      q: handle('q')!, k: handle('k')!, v: handle('v')!, cos: handle('cos')!, sin: handle('sin')!,
      mask: handle('mask'), pastKeys: handle('pastKeys'), pastValues: handle('pastValues'),
    };
    const { context, keys, values } = attention(ops, x, shape, keyLen);
    return [[context, [b * s, numHeads * d]], [keys, [b, kvHeads, keyLen, d]], [values, [b, kvHeads, keyLen, d]]];
  });
}

let adamVariables = 0;

/** The raw TensorFlow calls AdamW needs: resource variables, scalars, ResourceApplyAdam. */
class AdamOps {
  readonly binding: Binding;
  private readonly float: TFEOpAttr;
  private readonly dtype: TFEOpAttr;
  /** Handles to delete when the step is done (scalars, temporary values). */
  readonly temporaries: number[] = [];

  constructor(readonly node: NodeBackend) {
    this.binding = node.binding;
    this.float = { name: 'T', type: this.binding.TF_ATTR_TYPE, value: this.binding.TF_FLOAT };
    this.dtype = { name: 'dtype', type: this.binding.TF_ATTR_TYPE, value: this.binding.TF_FLOAT };
  }

  run(name: string, attrs: TFEOpAttr[], inputIds: number[]): number {
    const [out] = this.binding.executeOp(name, attrs, inputIds, 1);
    this.temporaries.push(out.id);
    return out.id;
  }

  scalar(x: number): number {
    const id = this.binding.createTensor([], this.binding.TF_FLOAT, Float32Array.of(x));
    this.temporaries.push(id);
    return id;
  }

  /** A new resource variable of `shape` holding `value` (its buffer shared, not copied); the handle is the caller's. */
  variable(shape: number[], value: number): number {
    const b = this.binding;
    const [handle] = b.executeOp('VarHandleOp', [
      { name: 'container', type: b.TF_ATTR_STRING, value: '' },
      { name: 'shared_name', type: b.TF_ATTR_STRING, value: `nemotron_adamw_${adamVariables++}` },
      this.dtype, { name: 'shape', type: b.TF_ATTR_SHAPE, value: shape },
    ], [], 1);
    b.executeOp('AssignVariableOp', [this.dtype], [handle.id, value], 0);
    return handle.id;
  }

  read(handle: number): tf.Tensor {
    return this.node.createOutputTensor(this.binding.executeOp('ReadVariableOp', [this.dtype], [handle], 1)[0]);
  }

  destroy(handle: number): void {
    const b = this.binding;
    b.executeOp('DestroyResourceOp', [{ name: 'ignore_lookup_error', type: b.TF_ATTR_BOOL, value: true }], [handle], 0);
    b.deleteTensor(handle);
  }

  /** p·(1 − decay) as a new value (ours alone), or p itself without decay. */
  decayed(p: number, decay: number): number {
    return decay > 0 ? this.run('Mul', [this.float], [p, this.scalar(1 - decay)]) : p;
  }

  /**
   * Lets go of a temporary value that a variable now holds too: AssignVariableOp shares the value's buffer, and
   * ResourceApplyAdam copies a variable whose buffer is shared before writing it, into fresh memory.
   */
  release(id: number): void {
    const i = this.temporaries.indexOf(id);
    if (i < 0) return;
    this.temporaries.splice(i, 1);
    this.binding.deleteTensor(id);
  }

  /**
   * ResourceApplyAdam on the three variables. TensorFlow's update is p −= lr·√(1 − β2^t)/(1 − β1^t) · m / (√v + ε'),
   * which is torch's p −= lr/(1 − β1^t) · m / (√v/√(1 − β2^t) + ε) with ε' = ε·√(1 − β2^t).
   */
  applyAdam(p: number, m: number, v: number, g: number, a: AdamWAttrs): void {
    const b = this.binding;
    const unbiased = 1 - a.beta2 ** a.step;
    b.executeOp('ResourceApplyAdam', [this.float, { name: 'use_locking', type: b.TF_ATTR_BOOL, value: false },
      { name: 'use_nesterov', type: b.TF_ATTR_BOOL, value: false }], [
      p, m, v, this.scalar(a.beta1 ** a.step), this.scalar(a.beta2 ** a.step), this.scalar(a.lr), this.scalar(a.beta1),
      this.scalar(a.beta2), this.scalar(a.eps * Math.sqrt(unbiased)), g,
    ], 0);
  }

  finish(): void {
    for (const id of this.temporaries) this.binding.deleteTensor(id);
    this.temporaries.length = 0;
  }
}

/**
 * AdamW for one parameter through TensorFlow's ResourceApplyAdam, which updates m, v and the parameter in one pass
 * over memory where the plain tfjs ops take ~14 (each reads one or two arrays and writes one): the parameter (decayed
 * first, p·(1 − lr·wd)) and the moments go into temporary resource variables, the op updates them, and they are read
 * back. The moments, held by the caller, are copied on write; ADAMW_RESIDENT_KERNEL keeps them in place.
 */
function adamWKernel({ inputs, backend, attrs }: KernelArgs): tf.Tensor[] {
  const ops = new AdamOps(backend as NodeBackend);
  const { param, grad, expAvg, expAvgSq } = inputs as Record<string, tf.TensorInfo>;
  const a = attrs as unknown as AdamWAttrs;
  const [p, g, m, v] = ops.node.getInputTensorIds([param, grad, expAvg, expAvgSq]);
  const variables: number[] = [];
  try {
    const start = ops.decayed(p, a.decay);
    for (const value of [start, m, v]) variables.push(ops.variable(param.shape, value));
    ops.release(start);
    ops.applyAdam(variables[0], variables[1], variables[2], g, a);
    return variables.map((handle) => ops.read(handle));
  } finally {
    for (const handle of variables) ops.destroy(handle);
    ops.finish();
  }
}

/** One parameter's moments in two TensorFlow resource variables, kept between steps. */
class TensorFlowMoments implements ResidentMoments {
  constructor(private readonly ops: AdamOps, readonly expAvg: number, readonly expAvgSq: number) {}

  read(): [tf.Tensor, tf.Tensor] {
    return [this.ops.read(this.expAvg), this.ops.read(this.expAvgSq)];
  }

  dispose(): void {
    this.ops.destroy(this.expAvg);
    this.ops.destroy(this.expAvgSq);
  }
}

/**
 * ADAMW_RESIDENT_KERNEL: the moments live in resource variables that only this kernel holds, so ResourceApplyAdam
 * updates them in place (2.5 ms per 3 M values here, against 12–24 ms when they are tfjs tensors copied on write into
 * fresh memory each step). The parameter goes through a temporary variable as in adamWKernel.
 */
function adamWResidentKernel({ inputs, backend, attrs }: KernelArgs): tf.Tensor {
  const node = backend as NodeBackend;
  const { param, grad, expAvg, expAvgSq } = inputs as Record<string, tf.TensorInfo | undefined>;
  const a = attrs as unknown as AdamWAttrs & { slot: MomentSlot };
  let moments = a.slot.moments as TensorFlowMoments | undefined;
  const ops = new AdamOps(node);
  let variable: number | undefined;
  try {
    const [p, g] = node.getInputTensorIds([param!, grad!]);
    if (!moments) {
      const zeros = () => ops.run('ZerosLike', [{ name: 'T', type: ops.binding.TF_ATTR_TYPE, value: ops.binding.TF_FLOAT }], [p]);
      const [m, v] = expAvg && expAvgSq ? node.getInputTensorIds([expAvg, expAvgSq]) : [zeros(), zeros()];
      moments = new TensorFlowMoments(new AdamOps(node), ops.variable(param!.shape, m), ops.variable(param!.shape, v));
      a.slot.moments = moments;
      ops.release(m); // zeros made here (the caller's moments are its own)
      ops.release(v);
    }
    const start = ops.decayed(p, a.decay);
    variable = ops.variable(param!.shape, start);
    ops.release(start);
    ops.applyAdam(variable, moments.expAvg, moments.expAvgSq, g, a);
    return ops.read(variable);
  } finally {
    if (variable !== undefined) ops.destroy(variable);
    ops.finish();
  }
}

/**
 * tfjs-node runs every matMul as BatchMatMulV2. For two matrices oneDNN's MatMul is as fast or faster where the first
 * operand is transposed or neither is — the two products of a linear's backward, dyᵀ·x and dy·W (measured on the Xeon's
 * 2 cores, 256 tokens of minitron-small: dy·W of down_proj 94 → 192 GFLOP/s, the others 0–20 % faster). a·bᵀ, the
 * forward, stays on tfjs-node's kernel unless this machine reads a transposed b slowly (swapsTransposedProduct), where
 * it is computed as (b·aᵀ)ᵀ (and aᵀ·bᵀ as (b·a)ᵀ). Other shapes go to tfjs-node's kernel.
 */
function matMulKernel(original: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    if (a.shape.length !== 2 || b.shape.length !== 2 || a.dtype !== 'float32' || b.dtype !== 'float32') return original(args);
    const [m, k] = transposeA ? [a.shape[1], a.shape[0]] : a.shape;
    const n = b.shape[0];
    if (transposeB && swapsTransposedProduct(m, k, n)) {
      return runEager(args.backend, (ops) => [[transpose(ops, ops.op('MatMul', [ops.input(b), ops.input(a)], {
        transpose_a: { bool: false }, transpose_b: { bool: !transposeA },
      }), [1, 0]), [m, n]]])[0];
    }
    if (transposeB && !transposeA) return original(args);
    const node = args.backend as NodeBackend;
    const binding = node.binding;
    const [out] = binding.executeOp('MatMul', [
      { name: 'T', type: binding.TF_ATTR_TYPE, value: binding.TF_FLOAT },
      { name: 'transpose_a', type: binding.TF_ATTR_BOOL, value: transposeA },
      { name: 'transpose_b', type: binding.TF_ATTR_BOOL, value: transposeB },
    ], node.getInputTensorIds([a, b]), 1);
    return node.createOutputTensor(out);
  };
}

/**
 * Whether this machine's TensorFlow multiplies by a large transposed operand slowly: 8 × 1,024 by (2,048 × 1,024)ᵀ
 * timed both ways, best of three each (~30 ms in all). Swapping is chosen only where it is at least twice as fast —
 * 7× on this machine's AMD EPYC, slower on the Xeon measured before.
 */
export function readsTransposedSlowly(backend: NodeBackend): boolean {
  const binding = backend.binding;
  const [m, k, n] = [8, 1024, 2048];
  const x = binding.createTensor([m, k], binding.TF_FLOAT, new Float32Array(m * k).fill(0.5));
  const w = binding.createTensor([n, k], binding.TF_FLOAT, new Float32Array(n * k).fill(0.25));
  const ops = new EagerOps(backend);
  const time = (product: () => number) => {
    let best = Infinity;
    for (let i = 0; i < 4; i++) {
      const start = performance.now();
      product();
      best = Math.min(best, performance.now() - start); // eager CPU ops run synchronously
      ops.finish([]);
    }
    return best;
  };
  try {
    const direct = time(() => ops.op('MatMul', [x, w], { transpose_a: { bool: false }, transpose_b: { bool: true } }));
    const swapped = time(() => swappedProduct(ops, x, w));
    return swapped * 2 <= direct;
  } finally {
    binding.deleteTensor(x);
    binding.deleteTensor(w);
  }
}

/** Target shapes of Reshape as TensorFlow int32 handles, made once (tfjs-node makes and frees a tfjs tensor per call). */
const reshapeTargets = new WeakMap<Binding, Map<string, number>>();

function reshapeKernel(original: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const { shape } = args.attrs as { shape: number[] };
    if (x.dtype !== 'float32' && x.dtype !== 'int32') return original(args);
    const node = args.backend as NodeBackend;
    const binding = node.binding;
    let targets = reshapeTargets.get(binding);
    if (!targets) reshapeTargets.set(binding, (targets = new Map()));
    const key = shape.join(',');
    let target = targets.get(key);
    if (target === undefined) {
      if (targets.size >= MAX_CONSTANTS) {
        for (const id of targets.values()) binding.deleteTensor(id);
        targets.clear();
      }
      target = binding.createTensor([shape.length], binding.TF_INT32, Int32Array.from(shape));
      targets.set(key, target);
    }
    const [out] = binding.executeOp('Reshape', [
      { name: 'T', type: binding.TF_ATTR_TYPE, value: x.dtype === 'float32' ? binding.TF_FLOAT : binding.TF_INT32 },
      { name: 'Tshape', type: binding.TF_ATTR_TYPE, value: binding.TF_INT32 },
    ], [...node.getInputTensorIds([x]), target], 1);
    return node.createOutputTensor(out);
  };
}

/** Replaces tfjs-node's kernel for `kernelName` by `wrap(itsKernelFunc)` (once). */
function overrideKernel(kernelName: string, wrap: (original: tf.KernelFunc) => tf.KernelFunc): void {
  const original = tf.getKernel(kernelName, 'tensorflow');
  if (!original) return;
  tf.unregisterKernel(kernelName, 'tensorflow');
  tf.registerKernel({ ...original, kernelFunc: wrap(original.kernelFunc) });
}

/** Registers the fused kernels for the 'tensorflow' backend (idempotent); setBackend('tensorflow'|'cuda') calls it. */
export function registerTensorFlowKernels(): void {
  if (tf.getKernel(LAYERNORM1P_KERNEL, 'tensorflow')) return;
  overrideKernel(tf.BatchMatMul, matMulKernel);
  overrideKernel(tf.Reshape, reshapeKernel);
  const kernels: Array<[string, tf.KernelFunc]> = [
    [LAYERNORM1P_KERNEL, layerNorm1PKernel as unknown as tf.KernelFunc],
    [ROTARY_KERNEL, rotaryKernel as unknown as tf.KernelFunc],
    [LINEAR_KERNEL, linearKernel as unknown as tf.KernelFunc],
    [MLP_KERNEL, mlpKernel as unknown as tf.KernelFunc],
    [ATTENTION_KERNEL, attentionKernel as unknown as tf.KernelFunc],
  ];
  for (const [kernelName, kernelFunc] of kernels) tf.registerKernel({ kernelName, backendName: 'tensorflow', kernelFunc });
  // Checked on the CPU build only: on tfjs-node-gpu (same backend name) AdamW keeps the plain ops.
  const onCpu = () => !(tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice;
  tf.registerKernel({ kernelName: ADAMW_KERNEL, backendName: 'tensorflow', kernelFunc: adamWKernel as unknown as tf.KernelFunc });
  limitFusedKernel(ADAMW_KERNEL, 'tensorflow', onCpu);
  tf.registerKernel({ kernelName: ADAMW_RESIDENT_KERNEL, backendName: 'tensorflow', kernelFunc: adamWResidentKernel as unknown as tf.KernelFunc });
  limitFusedKernel(ADAMW_RESIDENT_KERNEL, 'tensorflow', onCpu);
}
