import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs';
import { registerWasmTrainingKernels } from './kernels/wasm-kernels';
import { registerNemotronHStepKernel } from './kernels/nemotron-h-graph';
import { registerDecodeStepKernel } from './kernels/tensorflow-graph';
import { NodeBackend, readsTransposedSlowly, registerTensorFlowKernels } from './kernels/tensorflow-kernels';
import { TransposedProductMode, setTransposedProductMode } from './kernels/tensorflow-ops';
import { guardBindingLimit, registerWebGPUKernels } from './kernels/webgpu-kernels';
import { registerWebGPUDecodeStep } from './kernels/webgpu-decode';
import { registerWebGPUNemotronHKernels } from './kernels/webgpu-nemotron-h';
import { registerLayerNorm1PGrad } from './kernels/webgpu-layernorm-grad';

/**
 * The one place that chooses and sets up a tfjs backend.
 * - tensorflow: @tensorflow/tfjs-node (native libtensorflow, CPU)
 * - cuda: @tensorflow/tfjs-node-gpu (native libtensorflow with CUDA); registers as tfjs's "tensorflow" backend
 * - webgpu: @tensorflow/tfjs-backend-webgpu on the `webgpu` package (Dawn) in Node, or the browser's navigator.gpu
 * - wasm: @tensorflow/tfjs-backend-wasm (XNNPACK, single-threaded in Node)
 * - cpu: plain JavaScript, always there
 */
export type BackendName = 'tensorflow' | 'cuda' | 'webgpu' | 'wasm' | 'cpu';
export const BACKEND_NAMES: readonly BackendName[] = ['cuda', 'tensorflow', 'webgpu', 'wasm', 'cpu'];
/** Fastest first, for the default choice. WebGPU needs an adapter and is only taken when asked for. */
const DEFAULT_ORDER: readonly BackendName[] = ['cuda', 'tensorflow', 'wasm', 'cpu'];
export const BACKEND_ENV = 'NEMOTRON_BACKEND';

/** The tfjs engine name each of ours registers under. */
const ENGINE_NAME: Record<BackendName, string> = { tensorflow: 'tensorflow', cuda: 'tensorflow', webgpu: 'webgpu', wasm: 'wasm', cpu: 'cpu' };

// libtensorflow logs at INFO by default (its oneDNN notice, every SavedModel load of the compiled decoding step).
// Read once, when it first logs: set here, before anything loads tfjs-node, unless the user chose a level.
process.env.TF_CPP_MIN_LOG_LEVEL ??= '1';

let current: BackendName | null = null;
const loadErrors = new Map<BackendName, string>();

function requireOptional(id: string): unknown {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(id);
}

/** Which native binding this process loaded: tfjs-node and tfjs-node-gpu both register tfjs's `tensorflow` backend. */
let nativeLoaded: 'tensorflow' | 'cuda' | null = null;

function loadNativeBinding(name: 'tensorflow' | 'cuda'): void {
  if (nativeLoaded && nativeLoaded !== name) {
    throw new Error(`the ${nativeLoaded} backend is loaded in this process; ${name} is another build of the same binding ` +
      `(both register tfjs's "tensorflow" backend), so a process can use one of them`);
  }
  // tfjs-node finds its binding through node-pre-gyp, which parses process.argv as its own command line: a script run
  // with `--dir X` (an abbreviation of node-pre-gyp's --directory) made it look for the package under X, and the
  // backend failed to load. It sees no arguments while it loads.
  const argv = process.argv;
  process.argv = argv.slice(0, 1);
  try {
    requireOptional(name === 'cuda' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node');
  } finally {
    process.argv = argv;
  }
  nativeLoaded = name;
}

/** An NVIDIA driver's device node: without one the cuda build runs on the CPU, so the default does not pick it. */
function nvidiaDevicePresent(): boolean {
  return fs.existsSync('/dev/nvidiactl');
}

async function register(name: BackendName): Promise<void> {
  // Already registered (e.g. a bundle that imported the backend itself): nothing to load.
  if (name === 'webgpu' && tf.findBackendFactory('webgpu')) return;
  switch (name) {
    case 'cpu':
      return;
    case 'wasm':
      requireOptional('@tensorflow/tfjs-backend-wasm');
      // Training needs UnsortedSegmentSum (the embedding gradient), which the wasm backend lacks.
      registerWasmTrainingKernels();
      return;
    case 'tensorflow':
    case 'cuda':
      loadNativeBinding(name);
      return;
    case 'webgpu': {
      const g = globalThis as { navigator?: { gpu?: unknown } };
      if (!g.navigator?.gpu) {
        // Node: Dawn through the `webgpu` package. navigator.gpu must exist before the backend is imported.
        const dawn = requireOptional('webgpu') as { create(flags: string[]): unknown; globals: object };
        Object.assign(globalThis, dawn.globals);
        const gpu = dawn.create([]);
        if (!g.navigator) Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
        else (g.navigator as { gpu?: unknown }).gpu = gpu;
      }
      requireOptional('@tensorflow/tfjs-backend-webgpu');
      return;
    }
  }
}

function isBackendName(name: string): name is BackendName {
  return (BACKEND_NAMES as readonly string[]).includes(name);
}

/** Sets up one backend; throws with the reason when it cannot run here. */
export async function setBackend(name: BackendName | string): Promise<BackendName> {
  if (!isBackendName(name)) throw new Error(`Unknown backend ${JSON.stringify(name)}; expected one of ${BACKEND_NAMES.join(', ')}`);
  try {
    await register(name);
    const ok = await tf.setBackend(ENGINE_NAME[name]);
    if (!ok) throw new Error(`tfjs could not initialise the ${ENGINE_NAME[name]} backend`);
    await tf.ready();
  } catch (e) {
    const reason = (e as Error).message.split('\n')[0];
    loadErrors.set(name, reason);
    throw new Error(`Backend ${name} is not available: ${reason}`);
  }
  if (name === 'webgpu') {
    guardBindingLimit(tf.backend());
    registerWebGPUKernels();
    registerLayerNorm1PGrad();
    registerWebGPUDecodeStep();
    registerWebGPUNemotronHKernels();
  }
  if (name === 'tensorflow' || name === 'cuda') {
    registerTensorFlowKernels();
    chooseTransposedProducts();
    registerDecodeStepKernel();
    registerNemotronHStepKernel();
  }
  if (name === 'cuda' && !(tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice) {
    console.warn('nemotron-tfjs: backend cuda: TensorFlow found no usable GPU (CUDA 12 driver and libraries); it runs on the CPU');
  }
  current = name;
  return name;
}

export const TRANSPOSED_PRODUCT_ENV = 'NEMOTRON_TRANSPOSED_PRODUCT';
const TRANSPOSED_PRODUCT_MODES = ['auto', 'direct', 'swapped', 'always-swapped'];
let slowTransposedReads: boolean | undefined;

/**
 * How the native backend multiplies by a transposed weight (tensorflow-ops.ts, TransposedProductMode):
 * $NEMOTRON_TRANSPOSED_PRODUCT, or 'auto' — timed once per process on the CPU build, never swapped on a GPU.
 */
function chooseTransposedProducts(): void {
  const asked = process.env[TRANSPOSED_PRODUCT_ENV] || 'auto';
  if (!TRANSPOSED_PRODUCT_MODES.includes(asked)) {
    throw new Error(`${TRANSPOSED_PRODUCT_ENV}=${JSON.stringify(asked)} is not a mode; expected one of ${TRANSPOSED_PRODUCT_MODES.join(', ')}`);
  }
  if (asked !== 'auto') return setTransposedProductMode(asked as TransposedProductMode);
  const backend = tf.backend() as unknown as NodeBackend & { isUsingGpuDevice?: boolean };
  slowTransposedReads ??= !backend.isUsingGpuDevice && readsTransposedSlowly(backend);
  setTransposedProductMode(slowTransposedReads ? 'swapped' : 'direct');
}

/**
 * Picks the backend: the argument, else $NEMOTRON_BACKEND, else the fastest that loads here
 * (cuda where an NVIDIA device is present, tensorflow, wasm, cpu). Says which it picked unless `quiet`.
 */
export async function initBackend(name?: string, options: { quiet?: boolean } = {}): Promise<BackendName> {
  const wanted = name ?? process.env[BACKEND_ENV];
  if (wanted) return setBackend(wanted);
  for (const candidate of DEFAULT_ORDER) {
    if (candidate === 'cuda' && !nvidiaDevicePresent()) continue;
    try {
      await setBackend(candidate);
      if (!options.quiet) console.error(`nemotron-tfjs: backend ${candidate}`);
      return candidate;
    } catch {
      // try the next one
    }
  }
  throw new Error('No tfjs backend could be initialised');
}

/** The backend this library set, or null before any call. */
export function currentBackend(): BackendName | null {
  return current;
}

/**
 * Backends that load on this machine (each is tried; the current one is restored afterwards). cuda counts only where
 * an NVIDIA device is present (elsewhere its build runs on the CPU, and it would take the place of tensorflow).
 */
export async function availableBackends(candidates: readonly BackendName[] = BACKEND_NAMES): Promise<BackendName[]> {
  const before = current;
  const found: BackendName[] = [];
  for (const name of candidates) {
    if (name === 'cuda' && !nvidiaDevicePresent()) continue;
    try {
      await setBackend(name);
      found.push(name);
    } catch {
      // not here
    }
  }
  if (before) await setBackend(before);
  return found;
}

/** Why a backend failed to load, when it did. */
export function backendError(name: BackendName): string | undefined {
  return loadErrors.get(name);
}
