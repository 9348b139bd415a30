/**
 * The freeze guard's process: `node --import tsx platform/qemu/freeze-guard-main.ts <stateDir>` (started detached by
 * `ensureFreezeGuard`). Exits 0 at once when another guard holds the state directory; on SIGTERM or SIGINT it makes
 * one thaw attempt for every lease it holds, then exits. Log lines go to stdout.
 */
import path from 'node:path';
import { startFreezeGuard } from './freeze-guard';

function log(line: string): void {
  process.stdout.write(`${new Date().toISOString()} [${process.pid}] ${line}\n`);
}

async function main(): Promise<void> {
  const [stateDir, ...rest] = process.argv.slice(2);
  if (!stateDir || rest.length) {
    process.stderr.write('usage: freeze-guard-main.ts <stateDir>\n');
    process.exit(2);
  }
  const guard = await startFreezeGuard(path.resolve(stateDir), log);
  if (!guard) {
    log(`another freeze guard holds ${stateDir}; exiting`);
    return;
  }
  const stop = (signal: string): void => {
    log(`${signal}: thawing every lease, then stopping`);
    void guard.stop().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

main().catch((error: unknown) => {
  log(`cannot start: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
