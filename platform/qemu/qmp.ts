import type net from 'node:net';
import { z } from 'zod';
import { ProtocolClosedError, ProtocolCommandError, ProtocolTimeoutError, ProtocolViolationError } from './errors';
import { connectUnix, LineBuffer, parseObject, preview, withDeadline } from './wire';

// Greeting and capabilities negotiation are local socket round trips (milliseconds); 5 s bounds a wedged process.
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
// QMP commands run in QEMU's main loop and answer within milliseconds here (a fleecing transaction takes 3–5 ms);
// 30 s only bounds a hung QEMU. Callers pass a tighter deadline where one matters.
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

const versionSchema = z.object({
  qemu: z.object({ major: z.number().int(), minor: z.number().int(), micro: z.number().int() }),
  package: z.string(),
});
const greetingSchema = z.object({ QMP: z.object({ version: versionSchema, capabilities: z.array(z.string()) }) });
const errorBodySchema = z.object({ class: z.string(), desc: z.string() });
const eventSchema = z.object({ event: z.string(), data: z.record(z.string(), z.unknown()).optional() });
// Every command this client sends carries a numeric id, so every reply must echo one.
const errorReplySchema = z.object({ id: z.number().int(), error: errorBodySchema });
const returnReplySchema = z.object({ id: z.number().int(), return: z.unknown() });

/** QEMU's version, from the QMP greeting. */
export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
  /** The distribution's build string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`. */
  package: string;
}

/** An asynchronous QMP event (e.g. `BLOCK_JOB_COMPLETED`, `SHUTDOWN`). */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
}

/** Options of {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** Deadline for the greeting, and again for `qmp_capabilities` (a unix socket connects at once). Default 5 s. */
  timeoutMs?: number;
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/**
 * A QMP client over a unix socket: one monitor connection, several commands in flight (replies matched by id), events
 * delivered to listeners. Every failure is typed (see `./errors`): an `error` reply, a deadline, the socket closing
 * with commands pending, and a peer that breaks the protocol (the connection is then closed).
 */
export class QmpClient {
  private readonly lines = new LineBuffer();
  private readonly pending = new Map<number, Pending>();
  /** Ids whose command timed out: their late replies are expected and dropped. */
  private readonly abandoned = new Set<number>();
  private readonly listeners = new Set<(event: QmpEvent) => void>();
  private nextId = 1;
  private closeReason: string | undefined;
  private greetingWaiter: Pending | undefined;
  private greetingVersion: QemuVersion | undefined;
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
    socket.once('close', () => this.failAll((this.closeReason ??= 'closed by QEMU')));
  }

  /**
   * Connects to the monitor socket, reads the greeting and leaves capabilities negotiation mode. Rejects with
   * `QmpUnavailable` when nothing listens there, `QmpTimeout` past the deadline, `QmpProtocolViolation` when the peer
   * does not greet like QMP.
   */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const socket = await connectUnix(socketPath, 'QMP');
    const client = new QmpClient(socket, socketPath);
    try {
      const greeting = new Promise<unknown>((resolve, reject) => {
        client.greetingWaiter = { command: 'the greeting', resolve, reject };
      });
      await withDeadline(greeting, timeoutMs, () => new ProtocolTimeoutError('QMP', 'the greeting', timeoutMs));
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (error) {
      await client.close();
      throw error;
    }
  }

  /** QEMU's version, as the greeting announced it. */
  get version(): QemuVersion {
    if (!this.greetingVersion) throw new Error('QmpClient.version read before the greeting arrived');
    return this.greetingVersion;
  }

  /**
   * Runs a command and resolves with its `return` value (unchecked: parse it at the call site). Rejects with
   * `QmpCommandFailed` on an `error` reply, `QmpTimeout` past `timeoutMs` (default 30 s; a late reply is then
   * dropped), `QmpConnectionClosed` if the socket closes first or is already closed.
   */
  execute(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<unknown> {
    if (this.closeReason !== undefined) {
      return Promise.reject(new ProtocolClosedError('QMP', command, this.closeReason));
    }
    const timeoutMs = options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    const id = this.nextId++;
    const reply = new Promise<unknown>((resolve, reject) => this.pending.set(id, { command, resolve, reject }));
    this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\r\n');
    return withDeadline(reply, timeoutMs, () => {
      this.pending.delete(id);
      this.abandoned.add(id);
      return new ProtocolTimeoutError('QMP', command, timeoutMs);
    });
  }

  /** Calls `listener` with every event from now on; returns the function that stops it. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves with the next event called `name` that `predicate` accepts. Only events that arrive after the call count:
   * call it before the command that causes the event. Rejects with `QmpTimeout` past `timeoutMs` and with
   * `QmpConnectionClosed` if the socket closes first.
   */
  waitForEvent(name: string, predicate: (event: QmpEvent) => boolean, timeoutMs: number): Promise<QmpEvent> {
    const what = `the event ${name}`;
    if (this.closeReason !== undefined) return Promise.reject(new ProtocolClosedError('QMP', what, this.closeReason));
    let stop = (): void => undefined;
    const seen = new Promise<QmpEvent>((resolve, reject) => {
      const unsubscribe = this.onEvent((event) => {
        if (event.event === name && predicate(event)) resolve(event);
      });
      const onClose = (): void => reject(new ProtocolClosedError('QMP', what, this.closeReason ?? 'closed'));
      this.socket.once('close', onClose);
      stop = () => {
        unsubscribe();
        this.socket.removeListener('close', onClose);
      };
    });
    return withDeadline(seen, timeoutMs, () => new ProtocolTimeoutError('QMP', what, timeoutMs)).finally(stop);
  }

  /** Closes the connection; pending commands reject with `QmpConnectionClosed`. Safe to call more than once. */
  async close(): Promise<void> {
    this.closeReason ??= 'closed by the client';
    this.socket.destroy();
    await this.closed;
  }

  private receive(line: Buffer): void {
    if (line.length === 0) return;
    const object = parseObject(line);
    if (this.greetingWaiter) {
      const greeting = greetingSchema.safeParse(object);
      const waiter = this.greetingWaiter;
      this.greetingWaiter = undefined;
      if (!greeting.success) return this.violate(`the first message is not a QMP greeting: ${preview(line)}`, waiter);
      this.greetingVersion = { ...greeting.data.QMP.version.qemu, package: greeting.data.QMP.version.package };
      return waiter.resolve(undefined);
    }
    if (object && 'event' in object) {
      const event = eventSchema.safeParse(object);
      if (!event.success) return this.violate(`a malformed event: ${preview(line)}`);
      for (const listener of [...this.listeners]) listener({ event: event.data.event, data: event.data.data ?? {} });
      return;
    }
    const reply =
      object && 'error' in object
        ? errorReplySchema.safeParse(object)
        : object && 'return' in object
          ? returnReplySchema.safeParse(object)
          : undefined;
    if (!reply?.success) return this.violate(`not a QMP reply or event: ${preview(line)}`);
    const waiter = this.pending.get(reply.data.id);
    if (!waiter) {
      if (!this.abandoned.delete(reply.data.id)) this.violate(`a reply to no command sent (id ${reply.data.id})`);
      return;
    }
    this.pending.delete(reply.data.id);
    if ('error' in reply.data) {
      const { error } = reply.data;
      waiter.reject(new ProtocolCommandError('QMP', waiter.command, error.class, error.desc));
    } else {
      waiter.resolve(reply.data.return);
    }
  }

  /** The peer broke the protocol: everything pending fails with that reason and the connection closes. */
  private violate(detail: string, waiter?: Pending): void {
    const error = new ProtocolViolationError('QMP', `${detail} (socket ${this.socketPath})`);
    this.closeReason ??= error.message;
    waiter?.reject(error);
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
    this.socket.destroy();
  }

  private failAll(reason: string): void {
    this.greetingWaiter?.reject(new ProtocolClosedError('QMP', this.greetingWaiter.command, reason));
    this.greetingWaiter = undefined;
    for (const pending of this.pending.values())
      pending.reject(new ProtocolClosedError('QMP', pending.command, reason));
    this.pending.clear();
  }
}
