import * as v8 from 'v8';
import * as vm from 'vm';

let gc: (() => void) | null | undefined;

/**
 * V8's collector, reachable without --expose-gc through a flag set at run time: for memory V8 does not weigh (a
 * backend's, or a SharedArrayBuffer another thread still references), collected before the next large allocation.
 */
export function collectGarbage(): void {
  if (gc === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } catch {
      gc = null;
    }
  }
  gc?.();
}
