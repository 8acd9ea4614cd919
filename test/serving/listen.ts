import * as http from 'http';
import { type ChildProcess, spawn } from 'child_process';
import { serverAddress } from '../../src/serving/openai';

/** Listens on a free port of 127.0.0.1; resolves with the server's URL. */
export async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return serverAddress(server);
}

/** Closes a server that may not have started. */
export async function close(server: http.Server | undefined): Promise<void> {
  if (server) await new Promise((resolve) => server.close(resolve));
}

/** Runs `nemotron-tfjs serve …args --port 0` and resolves with its address once it prints it (kill the child after). */
export function spawnServe(cli: string, args: string[], name: string): Promise<{ address: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [cli, 'serve', ...args, '--port', '0', '--served-model-name', name]);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = out.match(new RegExp(`serving ${name} on (http://[\\d.]+:\\d+)`));
      if (m) resolve({ address: m[1], child });
    });
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
  });
}
