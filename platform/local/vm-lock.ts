import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Who holds a VM's lock: a freeze (a lease, until thawed or expired, whichever process thaws), or a guest write. */
export type VmLockHolder = 'freeze' | 'guest';

const POLL_MS = 10;

/**
 * The lock file's text: `freeze <deadline>` (epoch ms; the freeze is over once it passes, whoever did or did not
 * thaw) or `guest <pid>`.
 */
function freezeText(leaseMs: number): string {
  return `freeze ${Date.now() + leaseMs}`;
}

/** The deadline of a freeze holder text; undefined for any other holder. */
function freezeDeadline(holder: string | undefined): number | undefined {
  const deadline = holder === undefined ? undefined : /^freeze (\d+)$/.exec(holder)?.[1];
  return deadline === undefined ? undefined : Number(deadline);
}

function isLiveFreeze(holder: string | undefined): boolean {
  const deadline = freezeDeadline(holder);
  return deadline !== undefined && deadline > Date.now();
}

/**
 * Takes a VM's lock file, waiting while another holder has it. The embedded stand-in for fsfreeze: guest writes and
 * freezes take the same lock, so a freeze waits for the write in progress to finish and a write waits while the VM is
 * frozen. A freeze is a lease of `leaseMs` (renewed with `renewFreezeLease`): once its deadline passes it counts as
 * thawed and the next taker breaks it, so a freezer that died never blocks the guest for longer than its lease. A
 * freeze already held counts as taken (a retried initiation freezes again; the lease restarts); a guest lock whose
 * process is gone is broken. Fails after `timeoutMs`.
 */
export async function acquireVmLock(file: string, holder: VmLockHolder, timeoutMs: number, leaseMs = 0): Promise<void> {
  const text = () => (holder === 'freeze' ? freezeText(leaseMs) : `guest ${process.pid}`);
  const deadline = Date.now() + timeoutMs;
  await fs.mkdir(path.dirname(file), { recursive: true });
  for (;;) {
    try {
      await fs.writeFile(file, text(), { flag: 'wx' });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const current = await readHolder(file);
    if (holder === 'freeze' && freezeDeadline(current) !== undefined) {
      await replace(file, text());
      return;
    }
    if (current !== undefined && (isDeadGuest(current) || isExpiredFreeze(current))) {
      await fs.rm(file, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(
        freezeDeadline(current) !== undefined
          ? `the VM stayed frozen for over ${timeoutMs} ms`
          : `a guest write to the VM did not finish within ${timeoutMs} ms`,
      );
    }
    await sleep(POLL_MS);
  }
}

/**
 * Extends a freeze's lease to `leaseMs` from now. Fails when the VM is not frozen any more (thawed, or the lease
 * expired: guest writes may have passed since), so a caller whose renewal succeeds knows the guest stayed frozen
 * from its freeze until now.
 */
export async function renewFreezeLease(file: string, leaseMs: number): Promise<void> {
  const current = await readHolder(file);
  if (!isLiveFreeze(current)) {
    const why = freezeDeadline(current) !== undefined ? 'its freeze lease expired' : 'it was thawed';
    throw new Error(`the VM is no longer frozen (${why}): freeze it again`);
  }
  await replace(file, freezeText(leaseMs));
}

/** Gives a VM's lock back if `holder` (this process, for a guest) has it; otherwise does nothing. */
export async function releaseVmLock(file: string, holder: VmLockHolder): Promise<void> {
  const current = await readHolder(file);
  const held = holder === 'freeze' ? freezeDeadline(current) !== undefined : current === `guest ${process.pid}`;
  if (held) await fs.rm(file, { force: true });
}

/** Whether the VM is frozen now (a freeze whose lease has not expired). */
export async function isFrozen(file: string): Promise<boolean> {
  return isLiveFreeze(await readHolder(file));
}

/** Atomically replaces the lock's text (readers never see half of it). */
async function replace(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, text);
  await fs.rename(tmp, file);
}

/** The lock's holder text; undefined when free ('' while a taker is still writing it). */
async function readHolder(file: string): Promise<string | undefined> {
  return fs.readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
}

function isExpiredFreeze(holder: string): boolean {
  return freezeDeadline(holder) !== undefined && !isLiveFreeze(holder);
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
