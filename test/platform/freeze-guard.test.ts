import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { FreezeGuardError } from '../../platform/qemu/errors';
import { FREEZE_LEASE_MS, FREEZE_RENEW_MS } from '../../activities/initiate';
import { ensureFreezeGuard, FREEZE_GUARD_FILES, FreezeGuardClient } from '../../platform/qemu/freeze-guard';
import { GuestAgentClient } from '../../platform/qemu/guest-agent';
import { writerTicks } from '../../platform/qemu/guest-image';
import type { QemuVm } from '../../platform/qemu/vm-process';
import { LineBuffer, socketAccepts } from '../../platform/qemu/wire';
import { BOOT_TIMEOUT_MS, bootTestGuest, startHostAgent, type HostAgent } from '../helpers/qemu';

/**
 * The agent runs on this host, not in a guest, so it must never freeze this machine's file systems: both freeze
 * commands are blocked (startHostAgent checks that they are), and so is everything that could shut down, suspend or change the
 * host. For leases to go live against this real agent anyway, the guard reaches it through {@link AgentProxy}, which
 * turns each `guest-fsfreeze-freeze` into a `guest-fsfreeze-thaw` (the agent answers it with a count, as a freeze of
 * no file system). The real freeze is tested against a booted guest.
 */

// The promise this guard keeps: a guest is writable again at most this long after its freezer died.
const PROMISE_MS = 10_000;
const REPO_ROOT = path.resolve(__dirname, '..', '..');
// The first run builds the guest image (about 30 s); a boot takes 30–60 s under TCG on 2 busy cores.
const GUEST_SETUP_TIMEOUT_MS = 600_000;

/** A command the proxy passed on, with the moment it did and whether the VM's lease was in the lease file then. */
interface Seen {
  command: string;
  at: number;
  leaseRecorded: boolean;
}

/** A unix socket in front of the agent that passes everything on, except that freezes become thaws (see above). */
interface AgentProxy {
  socketPath: string;
  seen: Seen[];
  /** Called as a freeze passes, before the agent gets it. */
  onFreeze?: () => void;
  close(): Promise<void>;
}

let dir: string;
let stateDir: string;
let agent: HostAgent;
let proxy: AgentProxy;
const guardPids = new Set<number>();
const children: ChildProcess[] = [];

async function startProxy(socketPath: string, agentSocket: string): Promise<AgentProxy> {
  const leaseFile = path.join(stateDir, FREEZE_GUARD_FILES.leases);
  const sockets = new Set<net.Socket>();
  const proxy: AgentProxy = {
    socketPath,
    seen: [],
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  const server = net.createServer((client) => {
    const upstream = net.createConnection(agentSocket);
    sockets.add(client).add(upstream);
    const lines = new LineBuffer();
    upstream.pipe(client);
    client.on('data', (chunk: Buffer) => {
      for (const line of lines.push(chunk)) {
        // A resync starts with 0xFF, which is not JSON.
        const start = line.lastIndexOf(0xff) + 1;
        const request = JSON.parse(line.subarray(start).toString()) as { execute: string };
        const leaseRecorded = recordedLeases(leaseFile) > 0;
        proxy.seen.push({ command: request.execute, at: performance.now(), leaseRecorded });
        let forward = line;
        if (request.execute === 'guest-fsfreeze-freeze') {
          proxy.onFreeze?.();
          forward = Buffer.from(JSON.stringify({ ...request, execute: 'guest-fsfreeze-thaw' }));
        }
        upstream.write(Buffer.concat([line.subarray(0, start), forward, Buffer.from('\n')]));
      }
    });
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return proxy;
}

/** How many leases the lease file lists now (0 when there is none yet). */
function recordedLeases(file: string): number {
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { leases: unknown[] }).leases.length;
  } catch {
    return 0;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition`; past `timeoutMs` fails with the guard's log (what it tried meanwhile) in the message. */
async function waitFor(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) {
      const log = await fs.readFile(path.join(stateDir, FREEZE_GUARD_FILES.log), 'utf8').catch(() => '(none)');
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; the guard's log:\n${log}`);
    }
    await sleep(20);
  }
}

/**
 * True until the process and all its threads are gone. A guard whose parent died may stay a zombie (whoever adopted it
 * may never reap it), and a killed process's main thread turns zombie before its other threads have exited and its
 * sockets closed: so "dead" is a zombie with no thread left but the main one.
 */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const zombie = stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z';
    return !zombie || readdirSync(`/proc/${pid}/task`).length > 1;
  } catch {
    return false;
  }
}

async function startGuard(): Promise<{ client: FreezeGuardClient; pid: number }> {
  const client = await ensureFreezeGuard(stateDir);
  const { pid } = await client.status();
  guardPids.add(pid);
  return { client, pid };
}

async function stopGuard(pid: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  await waitFor(`guard ${pid} to exit`, () => !alive(pid)).catch(() => process.kill(pid, 'SIGKILL'));
}

/**
 * Starts a process that ensures the guard, freezes the VM through it and renews the lease every `renewMs`, as
 * initiation does; resolves once the freeze is answered. The test kills it to play a worker that dies.
 */
async function startFreezer(lease: {
  vmId: string;
  agentSocket: string;
  leaseMs: number;
  renewMs: number;
}): Promise<{ process: ChildProcess; exited: Promise<unknown> }> {
  const script = path.join(dir, 'freezer.ts');
  const guardModule = path.join(REPO_ROOT, 'platform/qemu/freeze-guard');
  const { vmId, leaseMs, renewMs } = lease;
  await fs.writeFile(
    script,
    `import { ensureFreezeGuard } from ${JSON.stringify(guardModule)};\n` +
      `async function main(): Promise<void> {\n` +
      `  const guard = await ensureFreezeGuard(${JSON.stringify(stateDir)});\n` +
      `  await guard.freeze(${JSON.stringify({ vmId, agentSocket: lease.agentSocket, leaseMs })});\n` +
      `  process.stdout.write('frozen\\n');\n` +
      `  setInterval(() => void guard.renew(${JSON.stringify(vmId)}, ${leaseMs}), ${renewMs});\n` +
      `}\n` +
      `void main();\n`,
  );
  const freezer = spawn(process.execPath, ['--import', 'tsx', script], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(freezer);
  const exited = new Promise((resolve) => freezer.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    readline.createInterface({ input: freezer.stdout }).on('line', (line) => line === 'frozen' && resolve());
    void exited.then(() => reject(new Error('the freezer exited before freezing')));
  });
  return { process: freezer, exited };
}

/** Kills the test's freezers and stops its guards (SIGTERM: each thaws what it holds first). */
async function stopFreezersAndGuards(): Promise<void> {
  for (const child of children.splice(0)) child.kill('SIGKILL');
  if (await socketAccepts(path.join(stateDir, FREEZE_GUARD_FILES.socket))) {
    guardPids.add((await new FreezeGuardClient(stateDir).status()).pid);
  }
  await Promise.all([...guardPids].map(stopGuard));
  guardPids.clear();
}

async function leaseFile(): Promise<{ vmId: string; agentSocket: string }[]> {
  const text = await fs.readFile(path.join(stateDir, FREEZE_GUARD_FILES.leases), 'utf8');
  return (JSON.parse(text) as { leases: { vmId: string; agentSocket: string }[] }).leases;
}

/** Whether the guard holds no lease, in memory and in its file (rewritten just after a lease is dropped). */
async function noLeases(client: FreezeGuardClient): Promise<boolean> {
  return (await client.status()).leases.length === 0 && (await leaseFile()).length === 0;
}

function commands(): string[] {
  return proxy.seen.map((s) => s.command).filter((c) => c.startsWith('guest-fsfreeze-'));
}

async function rejection(promise: Promise<unknown>): Promise<FreezeGuardError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof FreezeGuardError)) throw new Error(`expected a FreezeGuardError, got ${String(error)}`);
  return error;
}

describe('on the host, with a qemu-ga that cannot freeze', () => {
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-guard-'));
    stateDir = path.join(dir, 'state');
    await fs.mkdir(stateDir);
    agent = await startHostAgent(dir);
    proxy = await startProxy(path.join(dir, 'proxy.sock'), agent.socketPath);
  });

  afterEach(async () => {
    agent.process.kill('SIGCONT');
    await stopFreezersAndGuards();
    await proxy.close();
    await agent.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  test('freeze records the lease before the agent gets the freeze; renew extends it; thaw ends it, idempotently', async () => {
    const { client } = await startGuard();
    await client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 2_000 });
    expect(proxy.seen.find((s) => s.command === 'guest-fsfreeze-freeze')).toMatchObject({ leaseRecorded: true });
    expect(await leaseFile()).toMatchObject([{ vmId: 'vm-1', agentSocket: proxy.socketPath }]);
    const [frozen] = (await client.status()).leases;
    expect(frozen).toMatchObject({ vmId: 'vm-1', state: 'frozen' });
    expect(frozen!.msLeft).toBeLessThanOrEqual(2_000);

    await client.renew('vm-1', 10_000);
    expect((await client.status()).leases[0]!.msLeft).toBeGreaterThan(5_000);

    await client.thaw('vm-1');
    expect(commands()).toEqual(['guest-fsfreeze-status', 'guest-fsfreeze-freeze', 'guest-fsfreeze-thaw']);
    expect((await client.status()).leases).toEqual([]);
    expect(await leaseFile()).toEqual([]);
    // Without a lease, a thaw has nothing to do and a renewal proves nothing.
    await client.thaw('vm-1');
    expect(commands()).toHaveLength(3);
    expect(await rejection(client.renew('vm-1', 2_000))).toMatchObject({
      type: 'FreezeLeaseLost',
      details: { vmId: 'vm-1' },
    });
  });

  test('an unrenewed lease expires: the guard thaws at the deadline, and renewals fail from then on', async () => {
    const { client } = await startGuard();
    await client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 1_000 });
    const frozenAt = performance.now();
    await waitFor('the thaw', () => commands().includes('guest-fsfreeze-thaw'));
    const thawedAfter = proxy.seen.at(-1)!.at - frozenAt;
    // Not early (the lease is armed before the freeze is answered) and well within the promise.
    expect(thawedAfter).toBeGreaterThan(500);
    expect(thawedAfter).toBeLessThan(PROMISE_MS);
    await waitFor('the lease to go', () => noLeases(client));
    expect(await leaseFile()).toEqual([]);
    expect(await rejection(client.renew('vm-1', 1_000))).toMatchObject({ type: 'FreezeLeaseLost' });
    // The real agent got the thaw (its verbose log shows each command it read).
    expect(await fs.readFile(agent.logPath, 'utf8')).toMatch(/read data.*guest-fsfreeze-thaw/);
  });

  test('freezing a VM frozen under a live lease restarts its lease without a second freeze', async () => {
    const { client } = await startGuard();
    await client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 1_000 });
    await client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 8_000 });
    expect(commands().filter((c) => c === 'guest-fsfreeze-freeze')).toHaveLength(1);
    const [lease] = (await client.status()).leases;
    expect(lease).toMatchObject({ state: 'frozen' });
    expect(lease!.msLeft).toBeGreaterThan(4_000);
    await client.thaw('vm-1');
  });

  test('the guest is thawed at the deadline after the process that froze it (and started the guard) is SIGKILLed', async () => {
    const freezer = await startFreezer({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 2_000, renewMs: 500 });
    // Let a few renewals through, then kill it without warning.
    await sleep(1_200);
    freezer.process.kill('SIGKILL');
    const killedAt = performance.now();
    await freezer.exited;
    await waitFor('the thaw', () => commands().includes('guest-fsfreeze-thaw'), PROMISE_MS * 2);
    const thawedAfter = proxy.seen.at(-1)!.at - killedAt;
    process.stderr.write(
      `freeze guard: thawed ${Math.round(thawedAfter)} ms after the freezer's SIGKILL (lease 2 s)\n`,
    );
    expect(thawedAfter).toBeLessThan(PROMISE_MS);
    // The guard outlived the process that started it.
    const { pid } = await (await ensureFreezeGuard(stateDir)).status();
    guardPids.add(pid);
    expect(alive(pid)).toBe(true);
  });

  test('a guard that starts thaws every VM left in the lease file by a guard that died', async () => {
    const first = await startGuard();
    await first.client.freeze({ vmId: 'vm-a', agentSocket: proxy.socketPath, leaseMs: 10_000 });
    await first.client.freeze({ vmId: 'vm-b', agentSocket: proxy.socketPath, leaseMs: 10_000 });
    process.kill(first.pid, 'SIGKILL');
    await waitFor('the first guard to die', () => !alive(first.pid));
    expect((await leaseFile()).map((l) => l.vmId).sort()).toEqual(['vm-a', 'vm-b']);
    const thawsBefore = commands().filter((c) => c === 'guest-fsfreeze-thaw').length;

    const second = await startGuard();
    expect(second.pid).not.toBe(first.pid);
    await waitFor('both leases to go', () => noLeases(second.client));
    expect(commands().filter((c) => c === 'guest-fsfreeze-thaw').length - thawsBefore).toBe(2);
    expect(await leaseFile()).toEqual([]);
  });

  test('a guard stopped (SIGTERM) thaws what it holds before exiting; stopping none starts none', async () => {
    const { client, pid } = await startGuard();
    await client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 10_000 });
    await client.stop();
    expect(alive(pid)).toBe(false);
    expect(commands().at(-1)).toBe('guest-fsfreeze-thaw');
    expect(await leaseFile()).toEqual([]);
    await client.stop();
    expect(await socketAccepts(client.socketPath)).toBe(false);
  });

  test('concurrent ensureFreezeGuard calls end with one guard; the others exit', async () => {
    const clients = await Promise.all([1, 2, 3].map(() => ensureFreezeGuard(stateDir)));
    const pids = await Promise.all(clients.map(async (c) => (await c.status()).pid));
    for (const pid of pids) guardPids.add(pid);
    expect(new Set(pids).size).toBe(1);
    const logPath = path.join(stateDir, FREEZE_GUARD_FILES.log);
    const lines = async (): Promise<string[]> => (await fs.readFile(logPath, 'utf8')).trimEnd().split('\n');
    // All three found no guard and started one; two lost the lock.
    await waitFor('the losers to exit', async () => (await lines()).filter((l) => l.includes('exiting')).length === 2);
    expect((await lines()).filter((l) => l.includes('listening on'))).toHaveLength(1);
  });

  test('a freeze the agent refuses fails GuestFreezeFailed with its answer, and the guard thaws to be sure', async () => {
    const { client } = await startGuard();
    const error = await rejection(client.freeze({ vmId: 'vm-1', agentSocket: agent.socketPath, leaseMs: 2_000 }));
    expect(error).toMatchObject({
      type: 'GuestFreezeFailed',
      details: { vmId: 'vm-1', agentError: { type: 'GuestAgentCommandFailed' } },
    });
    expect(error.message).toContain('guest-fsfreeze-freeze has been disabled');
    await waitFor('the lease to go', () => noLeases(client));
    expect(await fs.readFile(agent.logPath, 'utf8')).toMatch(/guest-fsfreeze-freeze[^]*read data.*guest-fsfreeze-thaw/);
    expect(await leaseFile()).toEqual([]);
  });

  test('a freeze whose agent is absent or silent fails typed within its timeout, leaving no lease', async () => {
    const { client } = await startGuard();
    const absent = await rejection(
      client.freeze({ vmId: 'vm-1', agentSocket: path.join(dir, 'nothing.sock'), leaseMs: 2_000, timeoutMs: 1_000 }),
    );
    expect(absent).toMatchObject({
      type: 'GuestFreezeFailed',
      details: { agentError: { type: 'GuestAgentUnavailable' } },
    });
    expect((await client.status()).leases).toEqual([]);

    agent.process.kill('SIGSTOP');
    const started = performance.now();
    const silent = await rejection(
      client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 2_000, timeoutMs: 1_000 }),
    );
    const elapsed = performance.now() - started;
    expect(silent).toMatchObject({ type: 'GuestFreezeFailed', details: { agentError: { type: 'GuestAgentTimeout' } } });
    expect(elapsed).toBeGreaterThanOrEqual(950);
    expect(elapsed).toBeLessThan(PROMISE_MS);
    // The freeze itself was never sent (the resync got no answer): nothing to thaw.
    expect((await client.status()).leases).toEqual([]);
    expect(commands()).not.toContain('guest-fsfreeze-freeze');
    expect(await leaseFile()).toEqual([]);
  });

  test('a freeze sent but unanswered in time is thawed once the agent answers again', async () => {
    const { client } = await startGuard();
    proxy.onFreeze = () => agent.process.kill('SIGSTOP');
    const error = await rejection(
      client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 2_000, timeoutMs: 1_000 }),
    );
    expect(error).toMatchObject({ type: 'GuestFreezeFailed', details: { agentError: { type: 'GuestAgentTimeout' } } });
    expect(error.message).toContain('thaws it');
    expect((await client.status()).leases).toMatchObject([{ vmId: 'vm-1', state: 'thawing' }]);
    agent.process.kill('SIGCONT');
    await waitFor('the lease to go', () => noLeases(client));
    expect(commands().at(-1)).toBe('guest-fsfreeze-thaw');
    expect(await leaseFile()).toEqual([]);
  });

  test('a thaw the agent cannot take fails GuestThawFailed and the guard retries until it succeeds', async () => {
    const { client } = await startGuard();
    await client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 10_000 });
    await proxy.close();
    const error = await rejection(client.thaw('vm-1'));
    expect(error).toMatchObject({
      type: 'GuestThawFailed',
      details: { agentError: { type: 'GuestAgentUnavailable' } },
    });
    expect(error.message).toContain('keeps trying');
    expect((await client.status()).leases).toMatchObject([{ vmId: 'vm-1', state: 'thawing' }]);
    expect(await leaseFile()).toMatchObject([{ vmId: 'vm-1' }]);
    // The agent is reachable again: the next attempt (a second later) thaws. Waited for as long as the guard goes on
    // trying (5 attempts, each up to its 5 s thaw timeout, a second apart), so a slow attempt on a loaded machine is
    // not taken for a missing one.
    proxy = await startProxy(proxy.socketPath, agent.socketPath);
    await waitFor('the lease to go', () => noLeases(client), 40_000);
    expect(commands()).toEqual(['guest-fsfreeze-thaw']);
  });

  test('a request outside the protocol is refused with a typed error', async () => {
    const { client } = await startGuard();
    const tooLong = await rejection(client.freeze({ vmId: 'vm-1', agentSocket: proxy.socketPath, leaseMs: 60_000 }));
    expect(tooLong).toMatchObject({ type: 'FreezeGuardProtocolViolation' });
    expect(tooLong.message).toContain('leaseMs');
    const relative = await rejection(client.freeze({ vmId: 'vm-1', agentSocket: 'qga.sock', leaseMs: 2_000 }));
    expect(relative.message).toContain('absolute path');
    expect(commands()).toEqual([]);
  });
});

describe('with a booted guest', () => {
  let vm: QemuVm | undefined;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-guard-vm-'));
    stateDir = path.join(dir, 'state');
    vm = (await bootTestGuest(dir, { sizeBytes: 32 * 2 ** 20 })).qemu;
    await waitFor('the writer to tick', async () => (await lastTick()) > 2, BOOT_TIMEOUT_MS);
  }, GUEST_SETUP_TIMEOUT_MS);

  afterEach(stopFreezersAndGuards);

  afterAll(async () => {
    await vm?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** The last tick the guest's writer printed: it prints one after each write to its disk, about every 100 ms. */
  async function lastTick(): Promise<number> {
    return writerTicks(await fs.readFile(vm!.consoleLog, 'utf8')).at(-1) ?? 0;
  }

  test('the worker that froze the guest is SIGKILLed: the guest writes again within 10 s', async () => {
    // Initiation's own lease and renewal period.
    const lease = { vmId: 'vm-1', agentSocket: vm!.agentSocket, leaseMs: FREEZE_LEASE_MS, renewMs: FREEZE_RENEW_MS };
    const freezer = await startFreezer(lease);
    const frozenTick = await lastTick();
    await sleep(2_000);
    // Frozen: the writer is stuck (the tick in progress at the freeze may still be printed).
    expect(await lastTick()).toBeLessThanOrEqual(frozenTick + 1);
    freezer.process.kill('SIGKILL');
    const killedAt = performance.now();
    await freezer.exited;
    await waitFor('the writer to tick again', async () => (await lastTick()) > frozenTick + 1, PROMISE_MS * 3);
    const writableAfter = performance.now() - killedAt;
    process.stderr.write(
      `freeze guard, booted guest: writes again ${Math.round(writableAfter)} ms after the freezer's SIGKILL ` +
        `(lease ${FREEZE_LEASE_MS} ms, renewed every ${FREEZE_RENEW_MS} ms)\n`,
    );
    expect(writableAfter).toBeLessThan(PROMISE_MS);
    const log = await fs.readFile(path.join(stateDir, FREEZE_GUARD_FILES.log), 'utf8');
    expect(log).toMatch(
      /froze VM vm-1 under a 5000 ms lease[^]*expired unrenewed[^]*thawed VM vm-1 \(1 file systems\)/,
    );
    await waitFor('the lease to go', () => noLeases(new FreezeGuardClient(stateDir)));
  });

  test("a guest frozen behind the guard's back is taken as frozen (qemu-ga refuses a second freeze), then thawed", async () => {
    const { client } = await startGuard();
    const ga = await GuestAgentClient.connect(vm!.agentSocket);
    try {
      expect(await ga.fsfreezeFreeze()).toBe(1);
      await expect(ga.fsfreezeFreeze()).rejects.toMatchObject({ type: 'GuestAgentCommandFailed' });
    } finally {
      await ga.close();
    }
    await client.freeze({ vmId: 'vm-2', agentSocket: vm!.agentSocket, leaseMs: 5_000 });
    // Frozen under a live lease: restarted, the agent not asked again.
    await client.freeze({ vmId: 'vm-2', agentSocket: vm!.agentSocket, leaseMs: 5_000 });
    const frozenTick = await lastTick();
    await client.thaw('vm-2');
    await waitFor('the writer to tick again', async () => (await lastTick()) > frozenTick + 1, PROMISE_MS * 3);
    const log = await fs.readFile(path.join(stateDir, FREEZE_GUARD_FILES.log), 'utf8');
    expect(log.match(/froze VM vm-2.*/g)).toEqual(['froze VM vm-2 (it was frozen already) under a 5000 ms lease']);
    expect(await noLeases(client)).toBe(true);
  });
});
