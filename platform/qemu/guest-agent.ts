import { randomInt } from 'node:crypto';
import type net from 'node:net';
import { z } from 'zod';
import { ProtocolClosedError, ProtocolCommandError, ProtocolTimeoutError, ProtocolViolationError } from './errors';
import { connectUnix, LineBuffer, parseObject, preview } from './wire';

// The freeze policy's budget (issue 16): an agent that has not answered within 10 s is treated as absent. A freeze
// itself takes about 0.7 s here (it syncs the guest's page cache), a thaw about 35 ms.
const DEFAULT_TIMEOUT_MS = 10_000;
// The agent answers a resync with this byte before its reply; it cannot occur in UTF-8 JSON, so it marks where the
// stale input ends.
const SENTINEL = 0xff;
// guest-sync-delimited takes an int; ids below 2^31 fit every agent build.
const MAX_SYNC_ID = 2 ** 31;

const errorReplySchema = z.object({ error: z.object({ class: z.string(), desc: z.string() }), id: z.number().int() });
const returnReplySchema = z.object({ return: z.unknown(), id: z.number().int() });
const infoSchema = z.object({
  version: z.string(),
  supported_commands: z.array(z.object({ name: z.string(), enabled: z.boolean() })),
});
const freezeStatusSchema = z.enum(['thawed', 'frozen']);
const countSchema = z.number().int();
const fileReadSchema = z.object({ count: z.number().int(), 'buf-b64': z.string(), eof: z.boolean() });
// guest-file-read's largest count is 48 MiB; files read here are small, so one modest request per round trip.
const FILE_READ_BYTES = 64 * 1024;

/** What `guest-info` reports: the agent's version and which commands this agent lets through. */
export interface GuestAgentInfo {
  version: string;
  commands: { name: string; enabled: boolean }[];
}

/** A deadline for one call, counted from the call (waiting behind earlier commands and a resync included). */
export interface GuestAgentCallOptions {
  /** Default 10 s. */
  timeoutMs?: number;
}

/** What the reader waits for: the resync reply, or the reply to one command. */
interface Waiter {
  kind: 'sync' | 'reply';
  id: number;
  command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/**
 * A client of the qemu guest agent over its chardev unix socket. The agent has no greeting and answers one command at
 * a time, in order, so commands are serialised here. Whatever a previous client (or a timed-out command) left in the
 * channel is flushed by a resync (0xFF, then `guest-sync-delimited` with a random id; input up to the agent's 0xFF and
 * the reply with that id is discarded): on connect, and before the next command after any deadline passed or the
 * agent said something out of turn. Failures are typed (see `./errors`).
 */
export class GuestAgentClient {
  private readonly lines = new LineBuffer();
  private waiter: Waiter | undefined;
  private inSync = false;
  private nextId = 1;
  private queue: Promise<unknown> = Promise.resolve();
  private closeReason: string | undefined;
  /** Resolves once the socket has closed, whoever closed it. */
  readonly closed: Promise<void>;

  private constructor(
    private readonly socket: net.Socket,
    private readonly socketPath: string,
  ) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => {
      for (const line of this.lines.push(chunk)) this.receive(line);
    });
    socket.on('error', (error) => (this.closeReason ??= error.message));
    socket.once('close', () => {
      this.closeReason ??= 'closed by the peer';
      this.settle((waiter) => waiter.reject(new ProtocolClosedError('guest agent', waiter.command, this.closeReason!)));
    });
  }

  /**
   * Connects to the agent's socket and resynchronises. Rejects with `GuestAgentUnavailable` when nothing listens,
   * `GuestAgentTimeout` when the agent does not answer the resync in time (absent, or not running in the guest).
   */
  static async connect(socketPath: string, options: GuestAgentCallOptions = {}): Promise<GuestAgentClient> {
    const socket = await connectUnix(socketPath, 'guest agent');
    const client = new GuestAgentClient(socket, socketPath);
    try {
      await client.enqueue('guest-sync-delimited', options, async () => undefined);
      return client;
    } catch (error) {
      await client.close();
      throw error;
    }
  }

  /** `guest-ping`: resolves once the agent answers. */
  async ping(options?: GuestAgentCallOptions): Promise<void> {
    await this.execute('guest-ping', undefined, options);
  }

  /** `guest-info`: the agent's version and its commands (those blocked by `--block-rpcs` are `enabled: false`). */
  async info(options?: GuestAgentCallOptions): Promise<GuestAgentInfo> {
    const info = this.check('guest-info', infoSchema, await this.execute('guest-info', undefined, options));
    return { version: info.version, commands: info.supported_commands };
  }

  /** `guest-fsfreeze-status`. */
  async fsfreezeStatus(options?: GuestAgentCallOptions): Promise<'thawed' | 'frozen'> {
    const status = await this.execute('guest-fsfreeze-status', undefined, options);
    return this.check('guest-fsfreeze-status', freezeStatusSchema, status);
  }

  /**
   * `guest-fsfreeze-freeze`: freezes the guest's file systems and resolves with how many. The agent never thaws by
   * itself: the caller must thaw, whatever happens. Freezing a frozen guest is a `GuestAgentCommandFailed`.
   */
  async fsfreezeFreeze(options?: GuestAgentCallOptions): Promise<number> {
    const count = await this.execute('guest-fsfreeze-freeze', undefined, options);
    return this.check('guest-fsfreeze-freeze', countSchema, count);
  }

  /** `guest-fsfreeze-thaw`: resolves with how many file systems it thawed (0 when none was frozen). */
  async fsfreezeThaw(options?: GuestAgentCallOptions): Promise<number> {
    const count = await this.execute('guest-fsfreeze-thaw', undefined, options);
    return this.check('guest-fsfreeze-thaw', countSchema, count);
  }

  /**
   * Reads a whole file in the guest (`guest-file-open` read-only, `guest-file-read` until end of file,
   * `guest-file-close`). A file that cannot be opened is a `GuestAgentCommandFailed` carrying the guest's error.
   */
  async readFile(guestPath: string, options?: GuestAgentCallOptions): Promise<Buffer> {
    const handle = this.check(
      'guest-file-open',
      countSchema,
      await this.execute('guest-file-open', { path: guestPath, mode: 'r' }, options),
    );
    try {
      const parts: Buffer[] = [];
      for (;;) {
        const reply = await this.execute('guest-file-read', { handle, count: FILE_READ_BYTES }, options);
        const read = this.check('guest-file-read', fileReadSchema, reply);
        parts.push(Buffer.from(read['buf-b64'], 'base64'));
        if (read.eof || read.count === 0) return Buffer.concat(parts);
      }
    } finally {
      await this.execute('guest-file-close', { handle }, options);
    }
  }

  /**
   * Runs any agent command that replies (not `guest-shutdown` or the `guest-suspend-*` family, which answer nothing on
   * success) and resolves with its `return` value, unchecked. Rejects with `GuestAgentCommandFailed` on an error
   * reply, `GuestAgentTimeout` past the deadline, `GuestAgentConnectionClosed` if the socket closes first or is closed.
   */
  execute(command: string, args?: Record<string, unknown>, options: GuestAgentCallOptions = {}): Promise<unknown> {
    return this.enqueue(command, options, (remainingMs, timeout) => {
      const id = this.nextId++;
      const reply = this.expect('reply', id, command, remainingMs, timeout);
      this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
      return reply;
    });
  }

  /** Closes the connection; a pending command rejects with `GuestAgentConnectionClosed`. Safe to call more than once. */
  async close(): Promise<void> {
    this.closeReason ??= 'closed by the client';
    this.socket.destroy();
    await this.closed;
  }

  /**
   * Runs `send` after every earlier call has settled, resynchronising first when the channel is out of sync. The
   * deadline counts from now; `send` gets what is left of it and the timeout error to raise past it.
   */
  private enqueue<T>(
    command: string,
    options: GuestAgentCallOptions,
    send: (remainingMs: number, timeout: () => Error) => Promise<T>,
  ): Promise<T> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = performance.now() + timeoutMs;
    const run = async (): Promise<T> => {
      if (this.closeReason !== undefined) throw new ProtocolClosedError('guest agent', command, this.closeReason);
      const timeout = (): ProtocolTimeoutError => new ProtocolTimeoutError('guest agent', command, timeoutMs);
      if (!this.inSync) {
        if (deadline <= performance.now()) throw timeout();
        const id = randomInt(1, MAX_SYNC_ID);
        const synced = this.expect('sync', id, command, deadline - performance.now(), timeout);
        // The 0xFF first makes the agent drop any half-read command a previous client left in its parser.
        this.socket.write(
          Buffer.concat([
            Buffer.of(SENTINEL),
            Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n'),
          ]),
        );
        await synced;
        this.inSync = true;
      }
      if (deadline <= performance.now()) throw timeout();
      return send(deadline - performance.now(), timeout);
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * Waits for the reply `id`. Past `remainingMs` the wait rejects with a timeout and the channel is out of sync: the
   * reply may still come, and the next call resyncs past it.
   */
  private expect(
    kind: Waiter['kind'],
    id: number,
    command: string,
    remainingMs: number,
    timeout: () => Error,
  ): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.inSync = false;
        this.settle((waiter) => waiter.reject(timeout()));
      }, remainingMs);
      this.waiter = {
        kind,
        id,
        command,
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
    });
  }

  private receive(line: Buffer): void {
    const waiter = this.waiter;
    if (waiter?.kind === 'sync') {
      // Everything before the agent's sentinel is stale; the reply to an older resync is stale too.
      const sentinel = line.lastIndexOf(SENTINEL);
      if (sentinel === -1) return;
      const reply = returnReplySchema.omit({ id: true }).safeParse(parseObject(line.subarray(sentinel + 1)));
      if (reply.success && reply.data.return === waiter.id) this.settle((w) => w.resolve(undefined));
      return;
    }
    if (line.length === 0) return;
    const object = parseObject(line);
    const reply =
      object && 'error' in object
        ? errorReplySchema.safeParse(object)
        : object && 'return' in object
          ? returnReplySchema.safeParse(object)
          : undefined;
    if (!waiter || !reply?.success || reply.data.id !== waiter.id) {
      // Out of turn (a reply to nothing, to another id, or not a reply): the channel can no longer be trusted.
      this.inSync = false;
      const detail = `${waiter ? `instead of the reply to ${waiter.command}` : 'with no command pending'}, it sent`;
      const error = new ProtocolViolationError('guest agent', `${detail} ${preview(line)} (socket ${this.socketPath})`);
      this.settle((w) => w.reject(error));
      return;
    }
    if ('error' in reply.data) {
      const { error } = reply.data;
      this.settle((w) => w.reject(new ProtocolCommandError('guest agent', w.command, error.class, error.desc)));
    } else {
      const value = reply.data.return;
      this.settle((w) => w.resolve(value));
    }
  }

  /** Ends the current wait, if any, with `outcome`. */
  private settle(outcome: (waiter: Waiter) => void): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    if (waiter) outcome(waiter);
  }

  /** A reply of the wrong shape is a protocol violation, not a value to pass on. */
  private check<T>(command: string, schema: z.ZodType<T>, value: unknown): T {
    const parsed = schema.safeParse(value);
    if (parsed.success) return parsed.data;
    throw new ProtocolViolationError('guest agent', `${command} returned ${JSON.stringify(value)}`);
  }
}
