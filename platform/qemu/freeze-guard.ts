/**
 * The per-host freeze guard: the one process on a hypervisor host that sends fsfreeze to the VMs' guest agents, and
 * the keeper of the promise that a frozen guest is writable again seconds after whoever froze it dies. qemu-ga has no
 * auto-thaw, so every freeze is a lease held here: the worker renews it while it works; when a deadline passes
 * unrenewed, the guard thaws the guest itself. Leases are recorded in a file before the freeze is sent, and a guard
 * that starts thaws every VM it finds there, so a dead guard leaves no frozen guest either (thaw is idempotent).
 *
 * Protocol: JSON lines on the unix socket `<stateDir>/freeze-guard.sock`, one reply line per request line:
 * `freeze {vmId, agentSocket, leaseMs, timeoutMs}`, `renew {vmId, leaseMs}`, `thaw {vmId}`, `status`. Replies are
 * `{ok: true}` (with `status` for status) or `{ok: false, error: {type, message, vmId?, agentError?}}`.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import {
  FreezeGuardError,
  FreezeGuardErrorType,
  FreezeLeaseLostError,
  GuestFreezeFailedError,
  GuestThawFailedError,
  type AgentFailure,
} from './errors';
import { GuestAgentClient } from './guest-agent';
import { LineBuffer, parseObject, preview, socketAccepts, withDeadline } from './wire';

/** The guard's files inside its state directory. */
export const FREEZE_GUARD_FILES = {
  socket: 'freeze-guard.sock',
  /** The VMs that may be frozen: written (atomically, fsynced) before each freeze, rewritten after each thaw. */
  leases: 'freeze-leases.json',
  /** The guard's own output when {@link ensureFreezeGuard} starts it. */
  log: 'freeze-guard.log',
} as const;

// The promise is "writable again within 10 s of the freezer's death": a longer lease could not keep it.
const MAX_LEASE_MS = 10_000;
// A freeze syncs the guest's page cache (about 0.7 s here); a minute covers a guest flushing a lot.
const MAX_FREEZE_TIMEOUT_MS = 60_000;
// A thaw takes about 35 ms; an agent silent for 5 s is absent or its VM paused.
const THAW_TIMEOUT_MS = 5_000;
// After a failed thaw, the guard tries again this much later, up to THAW_ATTEMPTS attempts in all, then drops the
// lease (the VM is gone, or needs a person): about 30 s of trying when the agent never answers.
const THAW_RETRY_MS = 1_000;
const THAW_ATTEMPTS = 5;
// A guard starts (Node + tsx) in about a second here; 20 s leaves room for a loaded 2-core machine.
const START_TIMEOUT_MS = 20_000;
const PROBE_INTERVAL_MS = 50;
/** How long a stopped guard may take to thaw what it holds (each thaw has THAW_TIMEOUT_MS) and exit. */
const STOP_TIMEOUT_MS = 30_000;
// Client deadlines: renewals come every second and are answered from memory; a thaw may wait behind one thaw attempt;
// a freeze gets its own agent deadline plus this margin.
const RENEW_TIMEOUT_MS = 5_000;
const STATUS_TIMEOUT_MS = 5_000;
const THAW_REQUEST_TIMEOUT_MS = 3 * THAW_TIMEOUT_MS;
const REPLY_MARGIN_MS = 5_000;
// Lines of the guard's log quoted in a start failure.
const LOG_TAIL_LINES = 20;

const MAIN_SCRIPT = path.join(__dirname, 'freeze-guard-main.ts');
// `--import tsx` resolves from the working directory: the repository's root, where node_modules is.
const REPO_ROOT = path.resolve(__dirname, '..', '..');

const vmIdSchema = z.string().min(1).max(200);
const leaseMsSchema = z.number().int().min(100).max(MAX_LEASE_MS);

const requestSchema = z.discriminatedUnion('op', [
  z
    .object({
      op: z.literal('freeze'),
      vmId: vmIdSchema,
      // The guard's working directory is not the caller's.
      agentSocket: z.string().refine((value) => path.isAbsolute(value), 'must be an absolute path'),
      leaseMs: leaseMsSchema,
      timeoutMs: z.number().int().min(1).max(MAX_FREEZE_TIMEOUT_MS),
    })
    .strict(),
  z.object({ op: z.literal('renew'), vmId: vmIdSchema, leaseMs: leaseMsSchema }).strict(),
  z.object({ op: z.literal('thaw'), vmId: vmIdSchema }).strict(),
  z.object({ op: z.literal('status') }).strict(),
]);

/** A request to the guard. */
export type FreezeGuardRequest = z.infer<typeof requestSchema>;

const leaseStatusSchema = z.object({
  vmId: z.string(),
  agentSocket: z.string(),
  /** `freezing`: the freeze is being sent; `frozen`: under a live lease; `thawing`: to be thawed (retrying). */
  state: z.enum(['freezing', 'frozen', 'thawing']),
  /** Until the lease expires or the next thaw attempt; null while freezing. */
  msLeft: z.number().nullable(),
});

const statusSchema = z.object({ pid: z.number().int(), leases: z.array(leaseStatusSchema) });

/** What `status` reports: the guard's pid and every lease it holds. */
export type FreezeGuardStatus = z.infer<typeof statusSchema>;

const agentFailureSchema = z.object({ type: z.string(), message: z.string() });

const replySchema = z.union([
  z.object({ ok: z.literal(true), status: statusSchema.optional() }),
  z.object({
    ok: z.literal(false),
    error: z.object({
      type: z.enum(FreezeGuardErrorType),
      message: z.string(),
      vmId: z.string().optional(),
      agentError: agentFailureSchema.optional(),
    }),
  }),
]);

type Reply = z.infer<typeof replySchema>;

const leaseFileSchema = z
  .object({
    version: z.literal(1),
    leases: z.array(z.object({ vmId: z.string(), agentSocket: z.string(), recordedAt: z.string() }).strict()),
  })
  .strict();

type LeaseRecord = z.infer<typeof leaseFileSchema>['leases'][number];

interface Lease extends LeaseRecord {
  state: FreezeGuardStatus['leases'][number]['state'];
  /** `performance.now()` time of expiry (frozen) or of the next thaw attempt (thawing); unused while freezing. */
  deadline: number;
  thawAttempts: number;
  timer?: NodeJS.Timeout;
}

/** A running guard (in this process). */
export interface FreezeGuardServer {
  socketPath: string;
  /** Stops accepting requests, makes one thaw attempt for every lease, and closes. */
  stop(): Promise<void>;
}

/**
 * Starts a guard for `stateDir` in this process, or resolves undefined when another guard already holds it. The lock
 * is a Linux abstract unix socket named after the directory: binding it is atomic and the kernel releases it when its
 * process dies, so of two guards started together exactly one wins, and a dead guard's socket file is never mistaken
 * for a live one. The winner thaws every VM of the lease file (in the background, each VM's requests queued behind its
 * thaw), then listens on `<stateDir>/freeze-guard.sock`.
 */
export async function startFreezeGuard(
  stateDir: string,
  log: (line: string) => void,
): Promise<FreezeGuardServer | undefined> {
  await fs.mkdir(stateDir, { recursive: true });
  const lock = net.createServer();
  try {
    await listen(lock, lockName(await fs.realpath(stateDir)));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') return undefined;
    throw error;
  }
  try {
    const guard = new FreezeGuard(stateDir, log, lock);
    await guard.start(await readLeaseFile(path.join(stateDir, FREEZE_GUARD_FILES.leases)));
    return guard;
  } catch (error) {
    lock.close();
    throw error;
  }
}

class FreezeGuard implements FreezeGuardServer {
  readonly socketPath: string;
  private readonly leaseFile: string;
  private readonly server = net.createServer((socket) => this.serve(socket));
  private readonly connections = new Set<net.Socket>();
  private readonly leases = new Map<string, Lease>();
  /** Each VM's operations run one after another: its agent serves one client at a time, and state changes in order. */
  private readonly queues = new Map<string, Promise<unknown>>();
  private writes: Promise<void> = Promise.resolve();
  private stopping = false;

  constructor(
    stateDir: string,
    private readonly log: (line: string) => void,
    private readonly lock: net.Server,
  ) {
    this.socketPath = path.join(stateDir, FREEZE_GUARD_FILES.socket);
    this.leaseFile = path.join(stateDir, FREEZE_GUARD_FILES.leases);
  }

  async start(previous: LeaseRecord[]): Promise<void> {
    for (const record of previous) {
      const lease: Lease = { ...record, state: 'thawing', deadline: 0, thawAttempts: 0 };
      this.leases.set(lease.vmId, lease);
      this.scheduleThaw(lease, 0);
    }
    // Only the lock holder gets here, so a socket file left by a dead guard is stale.
    await fs.rm(this.socketPath, { force: true });
    await listen(this.server, this.socketPath);
    const pending = previous.length ? `; thawing ${previous.map((l) => l.vmId).join(', ')} from the lease file` : '';
    this.log(`listening on ${this.socketPath}${pending}`);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const closed = new Promise((resolve) => this.server.close(resolve));
    // A client that keeps its connection open must not hold the stop up.
    for (const socket of this.connections) socket.destroy();
    await Promise.all(
      [...this.leases.values()].map((lease) =>
        this.serial(lease.vmId, async () => {
          if (this.leases.get(lease.vmId) === lease) await this.thawOnce(lease).catch(() => undefined);
        }),
      ),
    );
    await this.writes;
    this.lock.close();
    await closed;
    this.log('stopped');
  }

  private serve(socket: net.Socket): void {
    const lines = new LineBuffer();
    let replies: Promise<void> = Promise.resolve();
    this.connections.add(socket);
    socket.once('close', () => this.connections.delete(socket));
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      for (const line of lines.push(chunk)) {
        replies = replies.then(async () => {
          const reply = await this.handle(line);
          if (socket.writable) socket.write(JSON.stringify(reply) + '\n');
        });
      }
    });
  }

  private async handle(line: Buffer): Promise<Reply> {
    const parsed = requestSchema.safeParse(parseObject(line));
    if (!parsed.success) {
      const message = `The freeze guard got an invalid request ${preview(line)}: ${z.prettifyError(parsed.error)}`;
      return { ok: false, error: { type: FreezeGuardErrorType.FreezeGuardProtocolViolation, message } };
    }
    const request = parsed.data;
    try {
      switch (request.op) {
        case 'freeze':
          await this.serial(request.vmId, () => this.freeze(request));
          return { ok: true };
        case 'renew':
          await this.serial(request.vmId, async () => this.renew(request.vmId, request.leaseMs));
          return { ok: true };
        case 'thaw':
          await this.serial(request.vmId, () => this.thaw(request.vmId));
          return { ok: true };
        case 'status':
          return { ok: true, status: this.status() };
      }
    } catch (error) {
      const failure =
        error instanceof FreezeGuardError
          ? error
          : new FreezeGuardError(FreezeGuardErrorType.FreezeGuardFailed, `The freeze guard failed: ${String(error)}`);
      return { ok: false, error: { type: failure.type, message: failure.message, ...failure.details } };
    }
  }

  /**
   * Records the lease, then freezes within `timeoutMs` (connect, status, freeze). A live lease is just restarted, and
   * a guest the agent reports frozen already is taken as frozen: qemu-ga refuses a second freeze. On failure the guest
   * is thawed unless the freeze was never sent and no earlier freeze is pending a thaw.
   */
  private async freeze(request: Extract<FreezeGuardRequest, { op: 'freeze' }>): Promise<void> {
    const { vmId, agentSocket, leaseMs, timeoutMs } = request;
    const existing = this.leases.get(vmId);
    if (existing?.state === 'frozen' && existing.deadline > performance.now()) {
      this.armLease(existing, leaseMs);
      return;
    }
    const lease: Lease = existing ?? {
      vmId,
      agentSocket,
      recordedAt: new Date().toISOString(),
      state: 'freezing',
      deadline: 0,
      thawAttempts: 0,
    };
    clearTimeout(lease.timer);
    Object.assign(lease, { agentSocket, state: 'freezing', thawAttempts: 0 });
    this.leases.set(vmId, lease);
    try {
      await this.persist();
    } catch (error) {
      if (!existing) this.leases.delete(vmId);
      throw new FreezeGuardError(
        FreezeGuardErrorType.FreezeGuardFailed,
        `The freeze guard could not record the lease of VM ${vmId} in ${this.leaseFile} (${String(error)}), so it ` +
          'did not freeze the guest; check the state directory (space, permissions).',
        { vmId },
      );
    }
    let sent = false;
    let already = false;
    try {
      await withAgent(agentSocket, timeoutMs, async (agent, remaining) => {
        already = (await agent.fsfreezeStatus({ timeoutMs: remaining() })) === 'frozen';
        if (already) return;
        sent = true;
        await agent.fsfreezeFreeze({ timeoutMs: remaining() });
      });
    } catch (error) {
      const thawing = sent || existing !== undefined;
      const failure = new GuestFreezeFailedError(vmId, agentFailure(error), thawing);
      this.log(failure.message);
      if (thawing) this.scheduleThaw(lease, 0);
      else await this.drop(lease);
      throw failure;
    }
    this.log(`froze VM ${vmId}${already ? ' (it was frozen already)' : ''} under a ${leaseMs} ms lease`);
    this.armLease(lease, leaseMs);
  }

  private renew(vmId: string, leaseMs: number): void {
    const lease = this.leases.get(vmId);
    if (!lease) throw new FreezeLeaseLostError(vmId, 'no lease: it was not frozen through this guard, or was thawed');
    if (lease.state !== 'frozen') throw new FreezeLeaseLostError(vmId, 'its lease expired or its freeze failed');
    const overdue = performance.now() - lease.deadline;
    if (overdue >= 0) throw new FreezeLeaseLostError(vmId, `its lease expired ${Math.round(overdue)} ms ago`);
    this.armLease(lease, leaseMs);
  }

  /** Idempotent: a VM without a lease is not frozen by this guard. */
  private async thaw(vmId: string): Promise<void> {
    const lease = this.leases.get(vmId);
    if (!lease) return;
    clearTimeout(lease.timer);
    lease.state = 'thawing';
    await this.thawOnce(lease);
  }

  private status(): FreezeGuardStatus {
    const now = performance.now();
    const leases = [...this.leases.values()].map(({ vmId, agentSocket, state, deadline }) => ({
      vmId,
      agentSocket,
      state,
      msLeft: state === 'freezing' ? null : Math.round(deadline - now),
    }));
    return { pid: process.pid, leases };
  }

  /** Sends guest-fsfreeze-thaw once; on success drops the lease, on failure schedules another attempt or gives up. */
  private async thawOnce(lease: Lease): Promise<void> {
    try {
      const count = await withAgent(lease.agentSocket, THAW_TIMEOUT_MS, (agent, remaining) =>
        agent.fsfreezeThaw({ timeoutMs: remaining() }),
      );
      this.log(`thawed VM ${lease.vmId} (${count} file systems)`);
    } catch (error) {
      lease.thawAttempts += 1;
      // A guard that stops keeps the lease in its file: the next guard to start tries again.
      const retrying = this.stopping || lease.thawAttempts < THAW_ATTEMPTS;
      const failure = new GuestThawFailedError(lease.vmId, agentFailure(error), retrying);
      this.log(failure.message);
      if (retrying) this.scheduleThaw(lease, THAW_RETRY_MS);
      else await this.drop(lease);
      throw failure;
    }
    await this.drop(lease);
  }

  /** Frozen until `leaseMs` from now; then the guard thaws. */
  private armLease(lease: Lease, leaseMs: number): void {
    lease.state = 'frozen';
    this.schedule(lease, leaseMs);
  }

  private scheduleThaw(lease: Lease, delayMs: number): void {
    lease.state = 'thawing';
    this.schedule(lease, delayMs);
  }

  /** At the deadline, unless renewed, thawed or replaced meanwhile, thaw the guest (in the VM's queue). */
  private schedule(lease: Lease, delayMs: number): void {
    clearTimeout(lease.timer);
    lease.deadline = performance.now() + delayMs;
    if (this.stopping) return;
    lease.timer = setTimeout(() => {
      void this.serial(lease.vmId, async () => {
        if (this.leases.get(lease.vmId) !== lease || lease.state === 'freezing') return;
        if (lease.deadline > performance.now()) return;
        if (lease.state === 'frozen') this.log(`the lease of VM ${lease.vmId} expired unrenewed; thawing it`);
        await this.thawOnce(lease).catch(() => undefined);
      });
    }, delayMs);
  }

  /** Forgets the lease. A lease file left stale (write failed) only costs an extra, harmless thaw at the next start. */
  private async drop(lease: Lease): Promise<void> {
    clearTimeout(lease.timer);
    if (this.leases.get(lease.vmId) !== lease) return;
    this.leases.delete(lease.vmId);
    await this.persist().catch((error: unknown) =>
      this.log(`could not rewrite ${this.leaseFile} after thawing VM ${lease.vmId}: ${String(error)}`),
    );
  }

  /** Writes every lease to the lease file, after the writes already queued (each writes the state at its turn). */
  private persist(): Promise<void> {
    const write = this.writes.then(() =>
      writeLeaseFile(
        this.leaseFile,
        [...this.leases.values()].map(({ vmId, agentSocket, recordedAt }) => ({ vmId, agentSocket, recordedAt })),
      ),
    );
    this.writes = write.catch(() => undefined);
    return write;
  }

  private serial<T>(vmId: string, work: () => Promise<T>): Promise<T> {
    const result = (this.queues.get(vmId) ?? Promise.resolve()).then(work);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(vmId, tail);
    void tail.then(() => {
      if (this.queues.get(vmId) === tail) this.queues.delete(vmId);
    });
    return result;
  }
}

/**
 * A client of the guard on `<stateDir>/freeze-guard.sock`: one connection per request, so a guard restarted between
 * two requests is simply reached again. When nothing listens, it starts a guard ({@link ensureFreezeGuard}) and sends
 * the request once more; a guard that starts thaws what the old one held, so a renewal then fails `FreezeLeaseLost`.
 * Every failure is a {@link FreezeGuardError}; branch on its `type`.
 */
export class FreezeGuardClient {
  readonly socketPath: string;

  constructor(readonly stateDir: string) {
    this.socketPath = path.join(stateDir, FREEZE_GUARD_FILES.socket);
  }

  /**
   * Freezes the VM's guest through its agent's unix socket under a `leaseMs` lease (at most 10 s), restarting the lease
   * if the guard holds it frozen already. `timeoutMs` bounds the guard's work with the agent (default 10 s): past it
   * the freeze fails `GuestFreezeFailed` and the guard thaws the guest.
   */
  async freeze(request: { vmId: string; agentSocket: string; leaseMs: number; timeoutMs?: number }): Promise<void> {
    const timeoutMs = request.timeoutMs ?? 10_000;
    await this.request({ op: 'freeze', ...request, timeoutMs }, timeoutMs + REPLY_MARGIN_MS);
  }

  /** Extends the lease to `leaseMs` from now; fails `FreezeLeaseLost` unless the VM is frozen under a live lease. */
  async renew(vmId: string, leaseMs: number, options: { timeoutMs?: number } = {}): Promise<void> {
    await this.request({ op: 'renew', vmId, leaseMs }, options.timeoutMs ?? RENEW_TIMEOUT_MS);
  }

  /**
   * Thaws the VM and ends its lease; idempotent (a VM without a lease is left alone). Fails `GuestThawFailed` when the
   * agent does not answer; the guard then keeps trying by itself.
   */
  async thaw(vmId: string, options: { timeoutMs?: number } = {}): Promise<void> {
    await this.request({ op: 'thaw', vmId }, options.timeoutMs ?? THAW_REQUEST_TIMEOUT_MS);
  }

  /** The guard's pid and its leases. */
  async status(options: { timeoutMs?: number } = {}): Promise<FreezeGuardStatus> {
    const reply = await this.request({ op: 'status' }, options.timeoutMs ?? STATUS_TIMEOUT_MS);
    if (!reply.status) throw protocolViolation(`status replied without a status`);
    return reply.status;
  }

  /**
   * Stops the guard if one runs (SIGTERM: it thaws what it holds first) and waits until it has exited; a guard is
   * never started for this. For a host taken out of service, the demo's end and tests; the next freeze starts one.
   */
  async stop(): Promise<void> {
    if (!(await socketAccepts(this.socketPath))) return;
    const { pid } = await this.status();
    process.kill(pid, 'SIGTERM');
    const deadline = performance.now() + STOP_TIMEOUT_MS;
    while (processRuns(pid)) {
      if (performance.now() > deadline) {
        throw new FreezeGuardError(
          FreezeGuardErrorType.FreezeGuardUnavailable,
          `The freeze guard (pid ${pid}) did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM.`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, PROBE_INTERVAL_MS));
    }
  }

  private async request(request: FreezeGuardRequest, timeoutMs: number): Promise<Extract<Reply, { ok: true }>> {
    let reply: Reply;
    try {
      reply = await exchange(this.socketPath, request, timeoutMs);
    } catch (error) {
      if (!(error instanceof NotListening)) throw error;
      await ensureFreezeGuard(this.stateDir);
      reply = await exchange(this.socketPath, request, timeoutMs);
    }
    if (reply.ok) return reply;
    const { type, message, ...details } = reply.error;
    throw new FreezeGuardError(type, message, details);
  }
}

/**
 * Connects to the guard of `stateDir`, starting one if none listens: a detached process (`node --import tsx
 * freeze-guard-main.ts <stateDir>`, its own session, output appended to `<stateDir>/freeze-guard.log`) that outlives
 * the caller. Resolves once the guard accepts connections; callers racing here end up with one guard (the lock decides,
 * the others exit). Rejects `FreezeGuardUnavailable` with the log's tail if no guard listens within 20 s.
 */
export async function ensureFreezeGuard(stateDir: string): Promise<FreezeGuardClient> {
  const dir = path.resolve(stateDir);
  await fs.mkdir(dir, { recursive: true });
  const client = new FreezeGuardClient(dir);
  if (await socketAccepts(client.socketPath)) return client;
  const logPath = path.join(dir, FREEZE_GUARD_FILES.log);
  const logFile = await fs.open(logPath, 'a');
  let exitStatus: string | undefined;
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN_SCRIPT, dir], {
      cwd: REPO_ROOT,
      detached: true,
      stdio: ['ignore', logFile.fd, logFile.fd],
    });
    child.once('exit', (code, signal) => (exitStatus ??= signal ? `signal ${signal}` : `code ${code}`));
    child.once('error', (error) => (exitStatus ??= `error: ${error.message}`));
    child.unref();
  } finally {
    await logFile.close();
  }
  const deadline = performance.now() + START_TIMEOUT_MS;
  for (;;) {
    if (await socketAccepts(client.socketPath)) return client;
    // Exit code 0 before listening: it lost the lock to a guard that is still starting; keep waiting for that one.
    const failed = exitStatus !== undefined && exitStatus !== 'code 0';
    if (failed || performance.now() > deadline) {
      const why = failed ? `exited with ${exitStatus}` : `did not listen within ${START_TIMEOUT_MS} ms`;
      throw new FreezeGuardError(
        FreezeGuardErrorType.FreezeGuardUnavailable,
        `The freeze guard for ${dir} ${why}; no guest can be frozen safely until it runs. See ${logPath}:\n` +
          (await logTail(logPath)),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, PROBE_INTERVAL_MS));
  }
}

/** Whether process `pid` still runs (signal 0 checks without sending anything). */
function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The guard's socket could not be connected to: the request was not delivered. */
class NotListening extends FreezeGuardError {}

/** Sends one request on a new connection and reads its reply line. */
async function exchange(socketPath: string, request: FreezeGuardRequest, timeoutMs: number): Promise<Reply> {
  const socket = net.createConnection(socketPath);
  const lines = new LineBuffer();
  let connected = false;
  const reply = new Promise<Buffer>((resolve, reject) => {
    socket.once('connect', () => {
      connected = true;
      socket.write(JSON.stringify(request) + '\n');
    });
    socket.on('data', (chunk: Buffer) => {
      const [line] = lines.push(chunk);
      if (line) resolve(line);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      const reason = error.code ?? error.message;
      if (!connected) {
        reject(
          new NotListening(
            FreezeGuardErrorType.FreezeGuardUnavailable,
            `Cannot connect to the freeze guard at ${socketPath} (${reason}); start it with ensureFreezeGuard.`,
          ),
        );
      } else reject(closedBeforeReply(socketPath, request, reason));
    });
    socket.once('close', () => reject(closedBeforeReply(socketPath, request, 'closed by the guard')));
  });
  try {
    const line = await withDeadline(
      reply,
      timeoutMs,
      () =>
        new FreezeGuardError(
          FreezeGuardErrorType.FreezeGuardTimeout,
          `The freeze guard did not answer ${request.op} within ${timeoutMs} ms; it may be overloaded or hung: see ` +
            `${path.join(path.dirname(socketPath), FREEZE_GUARD_FILES.log)}.`,
        ),
    );
    const parsed = replySchema.safeParse(parseObject(line));
    if (!parsed.success) throw protocolViolation(`it answered ${request.op} with ${preview(line)}`);
    return parsed.data;
  } finally {
    socket.destroy();
  }
}

function closedBeforeReply(socketPath: string, request: FreezeGuardRequest, reason: string): FreezeGuardError {
  return new FreezeGuardError(
    FreezeGuardErrorType.FreezeGuardUnavailable,
    `The freeze guard at ${socketPath} closed the connection before answering ${request.op} (${reason}); it may ` +
      'have died: the next request starts a new one, which thaws what the old one held.',
  );
}

function protocolViolation(detail: string): FreezeGuardError {
  return new FreezeGuardError(
    FreezeGuardErrorType.FreezeGuardProtocolViolation,
    `The freeze guard broke its protocol: ${detail}; check that the guard and its client are the same version.`,
  );
}

/** Connects to the agent, runs `work` within `timeoutMs` in all (`remaining()` gives what is left), and closes. */
async function withAgent<T>(
  agentSocket: string,
  timeoutMs: number,
  work: (agent: GuestAgentClient, remaining: () => number) => Promise<T>,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  const remaining = (): number => Math.max(0, deadline - performance.now());
  const agent = await GuestAgentClient.connect(agentSocket, { timeoutMs });
  try {
    return await work(agent, remaining);
  } finally {
    await agent.close();
  }
}

/** The agent's error as the guard reports it: its stable `type` (`GuestAgentTimeout`, ...) and message. */
function agentFailure(error: unknown): AgentFailure {
  if (error instanceof Error && 'type' in error && typeof error.type === 'string') {
    return { type: error.type, message: error.message };
  }
  return { type: 'Unknown', message: String(error) };
}

async function readLeaseFile(file: string): Promise<LeaseRecord[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const parsed = leaseFileSchema.safeParse(json);
  if (!parsed.success) {
    // Written atomically, so this is not a torn write: refuse to guess which guests may still be frozen.
    throw new Error(
      `The freeze lease file ${file} is not valid (${preview(Buffer.from(text))}); thaw its VMs by hand ` +
        '(guest-fsfreeze-thaw), then remove it.',
    );
  }
  return parsed.data.leases;
}

/** Temp file, fsync, rename, fsync of the folder: after a crash the file holds either the old or the new leases. */
async function writeLeaseFile(file: string, leases: LeaseRecord[]): Promise<void> {
  const temp = `${file}.tmp`;
  const handle = await fs.open(temp, 'w');
  try {
    await handle.writeFile(JSON.stringify({ version: 1, leases }, null, 2) + '\n');
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(temp, file);
  const dir = await fs.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** The lock's abstract socket name (a leading NUL): per state directory, within the 107-byte limit. */
function lockName(realStateDir: string): string {
  return `\0vm-snapshots-freeze-guard-${createHash('sha256').update(realStateDir).digest('hex').slice(0, 32)}`;
}

function listen(server: net.Server, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}

async function logTail(logPath: string): Promise<string> {
  const text = await fs.readFile(logPath, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-LOG_TAIL_LINES).join('\n');
}
