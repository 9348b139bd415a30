import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Who holds a VM's lock: a freeze (until thawed, whichever process thaws), or a guest write of one process. */
export type VmLockHolder = 'freeze' | 'guest';

const POLL_MS = 10;

/**
 * Takes a VM's lock file, waiting while another holder has it. The embedded stand-in for fsfreeze: guest writes and
 * freezes take the same lock, so a freeze waits for the write in progress to finish and a write waits while the VM is
 * frozen. A freeze already held counts as taken (a retried initiation freezes again); a guest lock whose process is
 * gone is broken. Fails after `timeoutMs`.
 */
export async function acquireVmLock(file: string, holder: VmLockHolder, timeoutMs: number): Promise<void> {
  const text = holder === 'freeze' ? 'freeze' : `guest ${process.pid}`;
  const deadline = Date.now() + timeoutMs;
  await fs.mkdir(path.dirname(file), { recursive: true });
  for (;;) {
    try {
      await fs.writeFile(file, text, { flag: 'wx' });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const current = await readHolder(file);
    if (holder === 'freeze' && current === 'freeze') return;
    if (current !== undefined && isDeadGuest(current)) {
      await fs.rm(file, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(
        current === 'freeze'
          ? `the VM stayed frozen for over ${timeoutMs} ms`
          : `a guest write to the VM did not finish within ${timeoutMs} ms`,
      );
    }
    await sleep(POLL_MS);
  }
}

/** Gives a VM's lock back if `holder` (this process, for a guest) has it; otherwise does nothing. */
export async function releaseVmLock(file: string, holder: VmLockHolder): Promise<void> {
  const text = holder === 'freeze' ? 'freeze' : `guest ${process.pid}`;
  if ((await readHolder(file)) === text) await fs.rm(file, { force: true });
}

/** Whether the VM is frozen now. */
export async function isFrozen(file: string): Promise<boolean> {
  return (await readHolder(file)) === 'freeze';
}

/** The lock's holder text; undefined when free ('' while a taker is still writing it). */
async function readHolder(file: string): Promise<string | undefined> {
  return fs.readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
}

function isDeadGuest(holder: string): boolean {
  const pid = /^guest (\d+)$/.exec(holder)?.[1];
  if (!pid) return false;
  try {
    process.kill(Number(pid), 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
