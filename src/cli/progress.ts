import cliProgress from 'cli-progress';
import { formatBytes } from './info';

/** A progress bar on stderr for loading weights: bytes, GB/s and ETA. Draws only on a terminal. */
export function loadingBar(totalBytes: number): { onProgress: (p: { loadedBytes: number; tensor: string }) => void; stop: () => void } {
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: 'loading weights [{bar}] {percentage}% | {loaded} / {size} | {rate} GB/s | eta {eta_formatted} | {tensor}',
    barsize: 30,
    hideCursor: true,
    clearOnComplete: true,
    autopadding: true,
  }, cliProgress.Presets.shades_classic);
  const start = performance.now();
  bar.start(totalBytes, 0, { loaded: formatBytes(0), size: formatBytes(totalBytes), rate: '-', tensor: '' });
  return {
    onProgress: ({ loadedBytes, tensor }) => {
      const seconds = (performance.now() - start) / 1000;
      bar.update(loadedBytes, { loaded: formatBytes(loadedBytes), rate: (loadedBytes / 1e9 / Math.max(seconds, 1e-3)).toFixed(2), tensor });
    },
    stop: () => bar.stop(),
  };
}
