#!/usr/bin/env node
/**
 * The `nemotron-tfjs` command line: `generate`, `info`, `finetune`, `merge-lora`, `evaluate`, `predict`, `convert`, `imatrix`, `split`, `serve` and `chat`
 * subcommands.
 *
 * Errors are printed as `error: <message>` on stderr with exit code 1; set NEMOTRON_DEBUG=1 for the stack trace.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { BACKEND_ENV } from '../backends';
import { backendOption, registerGenerate } from './generate';
import { registerInfo } from './info';
import { registerFinetune } from './finetune';
import { registerMergeLora } from './merge-lora';
import { registerEvaluate } from './evaluate';
import { registerPredict } from './predict';
import { registerConvert } from './convert';
import { registerImatrix } from './imatrix';
import { registerSplit } from './split';
import { registerServe } from './serve';
import { registerChat } from './chat';

/** The version in the package.json above this file (dist/src/cli/main.js or src/cli/main.ts). */
function packageVersion(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      try {
        const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version?: string };
        if (pkg.name === 'nemotron-tfjs' && pkg.version) return pkg.version;
      } catch {
        // not ours; keep looking
      }
    }
    dir = path.dirname(dir);
  }
  return '0.0.0';
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('nemotron-tfjs')
    .description('Nemotron models (Nemotron-3/4, Minitron) on TensorFlow.js: run, inspect and fine-tune Hugging Face checkpoints.')
    .version(packageVersion(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .addOption(backendOption())
    .showHelpAfterError('(add --help for the options)')
    .showSuggestionAfterError(true);
  program.addHelpText('after', `
Environment:
  ${BACKEND_ENV}   default backend (cpu, wasm, tensorflow, cuda, webgpu)
  NEMOTRON_DEBUG=1    print stack traces on errors

Run "nemotron-tfjs <command> --help" for the options of a command.`);
  registerGenerate(program);
  registerInfo(program);
  registerFinetune(program);
  registerMergeLora(program);
  registerEvaluate(program);
  registerPredict(program);
  registerConvert(program);
  registerImatrix(program);
  registerSplit(program);
  registerServe(program);
  registerChat(program);
  return program;
}

export async function main(argv: string[] = process.argv): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    if (process.env.NEMOTRON_DEBUG === '1') process.stderr.write(`${err.stack ?? err.message}\n`);
    else process.stderr.write(`error: ${err.message}\n`);
    return 1;
  }
}

if (require.main === module) {
  // `nemotron-tfjs generate … | head` closes stdout early: stop quietly instead of failing with EPIPE.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
  });
  main().then((code) => {
    process.exitCode = code;
  });
}
