import net from 'node:net';
import type { NbdError } from './nbd-errors';
import {
  NbdConnectionClosedError,
  NbdExportNotFoundError,
  NbdHandshakeError,
  NbdInvalidRequestError,
  NbdMetaContextUnavailableError,
  NbdProtocolError,
  NbdReadOnlyError,
  NbdServerError,
  NbdTimeoutError,
  NbdUnreachableError,
} from './nbd-errors';

// Numbers from the NBD protocol (NetworkBlockDevice/nbd doc/proto.md); names as there.
const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OLDSTYLE_MAGIC = 0x00420281861253n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1 << 0;
const FLAG_NO_ZEROES = 1 << 1;

const OPT_ABORT = 2;
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const OPT_SET_META_CONTEXT = 10;
const OPTION_NAMES: Record<number, string> = {
  [OPT_GO]: 'NBD_OPT_GO',
  [OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
};

const REP_ACK = 1;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
const REP_ERR_UNSUP = 2 ** 31 + 1;
const REP_ERR_UNKNOWN = 2 ** 31 + 6;
const REPLY_NAMES: Record<number, string> = {
  [REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [2 ** 31 + 2]: 'NBD_REP_ERR_POLICY',
  [2 ** 31 + 3]: 'NBD_REP_ERR_INVALID',
  [2 ** 31 + 4]: 'NBD_REP_ERR_PLATFORM',
  [2 ** 31 + 5]: 'NBD_REP_ERR_TLS_REQD',
  [REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [2 ** 31 + 7]: 'NBD_REP_ERR_SHUTDOWN',
  [2 ** 31 + 8]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [2 ** 31 + 9]: 'NBD_REP_ERR_TOO_BIG',
};

const INFO_EXPORT = 0;
const INFO_BLOCK_SIZE = 3;

/** Transmission flags (NBD_INFO_EXPORT), bit by bit. */
export const NbdTransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  CAN_MULTI_CONN: 1 << 8,
} as const;

const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
const CMD_BLOCK_STATUS = 7;
const COMMAND_NAMES: Record<number, string> = {
  [CMD_READ]: 'NBD_CMD_READ',
  [CMD_WRITE]: 'NBD_CMD_WRITE',
  [CMD_FLUSH]: 'NBD_CMD_FLUSH',
  [CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
};
const CMD_FLAG_FUA = 1 << 0;

const REPLY_FLAG_DONE = 1 << 0;
const REPLY_TYPE_NONE = 0;
const REPLY_TYPE_OFFSET_DATA = 1;
const REPLY_TYPE_OFFSET_HOLE = 2;
const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR_BIT = 1 << 15;
const REPLY_TYPE_ERROR_OFFSET = REPLY_TYPE_ERROR_BIT + 2;

/** `base:allocation` flags: the extent is unallocated (a hole) / reads as zeroes. */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
/** `qemu:dirty-bitmap:<name>` flag: the extent was written since the bitmap started recording. */
export const NBD_STATE_DIRTY = 1 << 0;

/** The metadata context that reports holes and zeroes. */
export const BASE_ALLOCATION = 'base:allocation';
/** The metadata context of QEMU's dirty bitmap `name` on the exported node. */
export function dirtyBitmapContext(name: string): string {
  return `qemu:dirty-bitmap:${name}`;
}

const REQUEST_HEADER_BYTES = 28;
const SIMPLE_REPLY_BYTES = 16;
const STRUCTURED_REPLY_BYTES = 20;
/** The spec lets the server send up to 2^20 extents per block-status chunk (8 MiB + 4); anything larger is broken. */
const MAX_BLOCK_STATUS_PAYLOAD = 4 + 8 * 2 ** 20;
/** Error chunks carry at most a 4096-byte message plus 14 bytes of fields; some slack for unknown error types. */
const MAX_ERROR_PAYLOAD = 64 * 1024;
/** Option replies are short (infos, context names, messages); a longer one means the stream is out of step. */
const MAX_OPTION_REPLY = 1024 * 1024;
/**
 * Longest block-status request: the length field is 32 bits, and 4 GiB − 64 KiB stays a multiple of any minimum block
 * size a server may advertise (at most 64 KiB).
 */
const MAX_STATUS_REQUEST = 2 ** 32 - 2 ** 16;
/** The default maximum payload when the server does not advertise one (the spec's interoperable value, 32 MiB). */
const DEFAULT_MAX_PAYLOAD = 2 ** 25;
/**
 * Receive buffer per connection, reused for every read from the socket (no allocation per chunk): a unix socket
 * rarely hands over more than about 200 KiB per read.
 */
const RECEIVE_BUFFER_BYTES = 256 * 1024;
/** Default deadline of the handshake and of each command: long enough for a busy host, short enough to notice a hang. */
export const DEFAULT_NBD_TIMEOUT_MS = 30_000;

/** One extent of a block-status answer: `flags` as the metadata context defines them. */
export interface NbdExtent {
  offset: number;
  length: number;
  flags: number;
}

/** The server's size constraints (NBD_INFO_BLOCK_SIZE), or the protocol's defaults when it sent none. */
export interface NbdBlockSize {
  minimum: number;
  preferred: number;
  maximumPayload: number;
}

/** How to reach an export. */
export interface NbdConnectOptions {
  /** The server's unix socket. */
  socketPath: string;
  exportName: string;
  /**
   * Metadata contexts to select, e.g. `base:allocation` and `qemu:dirty-bitmap:b0`; each one must be offered
   * (NbdMetaContextUnavailableError otherwise). Default none.
   */
  metaContexts?: readonly string[];
  /** Deadline of the handshake and of each command, in ms; the connection is closed when one passes. */
  timeoutMs?: number;
}

/** A command waiting for its reply. */
interface Pending {
  command: number;
  offset: number;
  length: number;
  /** Reads: where the bytes go. */
  into?: Buffer;
  /** Reads: bytes answered so far (data and holes; the spec forbids overlaps). */
  covered: number;
  /** Block status: the context whose extents are wanted, and those extents. */
  context?: number;
  extents?: NbdExtent[];
  error?: NbdServerError;
  timer: NodeJS.Timeout;
  resolve: () => void;
  reject: (error: Error) => void;
}

/** A byte queue for the handshake, which is short and sequential, so it reads with awaits. */
class HandshakeReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter?: { bytes: number; resolve: (data: Buffer) => void; reject: (error: Error) => void };
  private failure?: Error;

  push(data: Buffer): void {
    this.chunks.push(data);
    this.buffered += data.length;
    this.serve();
  }

  fail(error: Error): void {
    this.failure ??= error;
    this.waiter?.reject(error);
    this.waiter = undefined;
  }

  read(bytes: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
      this.serve();
    });
  }

  /** What arrived past the handshake (nothing, from a server that follows the protocol). */
  rest(): Buffer {
    return Buffer.concat(this.chunks);
  }

  private serve(): void {
    if (!this.waiter || this.buffered < this.waiter.bytes) return;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const { bytes, resolve } = this.waiter;
    this.waiter = undefined;
    this.chunks = all.length > bytes ? [all.subarray(bytes)] : [];
    this.buffered = all.length - bytes;
    resolve(all.subarray(0, bytes));
  }
}

/**
 * One NBD connection over a unix socket, in the transmission phase: fixed-newstyle handshake with structured replies,
 * the chosen metadata contexts and NBD_OPT_GO done by `connect`. Commands are pipelined: each is sent at once and
 * matched to its reply by cookie, in whatever order the server answers.
 *
 * A protocol violation, a timeout or the server going away closes the connection and fails every pending command;
 * an error reply fails only its command. Servers that lack NBD_OPT_GO (older than 2017) are refused, not served
 * through NBD_OPT_EXPORT_NAME.
 */
export class NbdClient {
  /** The export's size in bytes. */
  readonly size: number;
  /** Transmission flags (see NbdTransmissionFlag). */
  readonly flags: number;
  readonly blockSize: NbdBlockSize;
  /** The selected metadata contexts and their ids (valid for this connection only). */
  readonly contexts: ReadonlyMap<string, number>;

  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private corked = false;
  /** Why the connection is closed, once it is. */
  private closedReason?: string;
  private readonly closing: Promise<void>;
  private idleWaiters: (() => void)[] = [];
  // Receive state: either collecting a fixed number of bytes into `collectInto`, or streaming `streamLeft` bytes into
  // `streamInto` (undefined: discard); `onCollected` runs when the bytes are in. Headers and small fields are collected into
  // `fields`; a long metadata or error payload into a buffer of its own.
  private readonly fields = Buffer.alloc(STRUCTURED_REPLY_BYTES);
  private collectInto = this.fields;
  private collectNeed = 0;
  private collectHave = 0;
  private streamInto: Buffer | undefined;
  private streamAt = 0;
  private streamLeft = 0;
  private streaming = false;
  private onCollected: (data: Buffer) => void = () => undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly options: { socketPath: string; exportName: string; timeoutMs: number },
    go: { size: number; flags: number; blockSize: NbdBlockSize; contexts: Map<string, number> },
    closing: Promise<void>,
  ) {
    this.size = go.size;
    this.flags = go.flags;
    this.blockSize = go.blockSize;
    this.contexts = go.contexts;
    this.closing = closing;
    this.expectHeader();
  }

  /** Connects, negotiates and enters transmission; typed errors for every refusal (see nbd-errors.ts). */
  static async connect(options: NbdConnectOptions): Promise<NbdClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_NBD_TIMEOUT_MS;
    const handshake = new HandshakeReader();
    let client: NbdClient | undefined;
    let closeReason: { reason: string; cause?: unknown } = { reason: 'the server closed the connection' };
    const receive = Buffer.allocUnsafe(RECEIVE_BUFFER_BYTES);
    const socket = net.connect({
      path: options.socketPath,
      onread: {
        buffer: receive,
        callback: (bytes) => {
          if (client) client.receive(receive.subarray(0, bytes));
          else handshake.push(Buffer.from(receive.subarray(0, bytes)));
          return true;
        },
      },
    });
    const closing = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    let connected = false;
    socket.on('error', (error) => {
      closeReason = { reason: error.message, cause: error };
      if (!connected) handshake.fail(new NbdUnreachableError(options.socketPath, error));
    });
    socket.on('close', () => {
      if (client) client.fail(closeReason.reason, undefined, closeReason.cause);
      else handshake.fail(new NbdHandshakeError('the handshake', 'connection closed', closeReason.reason));
    });
    socket.once('connect', () => (connected = true));
    const timer = setTimeout(() => {
      handshake.fail(new NbdTimeoutError(options.socketPath, 'the handshake', timeoutMs));
      socket.destroy();
    }, timeoutMs);
    try {
      const go = await negotiate(socket, handshake, options);
      client = new NbdClient(socket, { ...options, timeoutMs }, go, closing);
      const early = handshake.rest();
      if (early.length > 0) client.receive(early);
      return client;
    } catch (error) {
      socket.destroy();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  get readOnly(): boolean {
    return (this.flags & NbdTransmissionFlag.READ_ONLY) !== 0;
  }

  /** The server allows several connections to the export with a shared cache (reads may be spread over them). */
  get canMultiConn(): boolean {
    return (this.flags & NbdTransmissionFlag.CAN_MULTI_CONN) !== 0;
  }

  /** Commands sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Reads `length` bytes at `offset` into a new buffer. */
  async read(offset: number, length: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    await this.readInto(buffer, offset);
    return buffer;
  }

  /**
   * Fills `buffer` with the export's bytes from `offset` on; holes the server reports come back as zeroes. The bytes
   * are copied once, from the socket's receive buffer into `buffer`.
   */
  readInto(buffer: Buffer, offset: number): Promise<void> {
    this.checkPayload('a read', buffer.length);
    return this.send(CMD_READ, 0, offset, buffer.length, { into: buffer });
  }

  /**
   * Writes `data` at `offset` (with `fua`, durable before the reply). `data` must not change until this resolves
   * (it is sent from the caller's buffer, not copied).
   */
  write(offset: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    if (this.readOnly) return Promise.reject(new NbdReadOnlyError(this.options.exportName, 'NBD_CMD_WRITE'));
    this.checkPayload('a write', data.length);
    const fua = options.fua === true && (this.flags & NbdTransmissionFlag.SEND_FUA) !== 0;
    return this.send(CMD_WRITE, fua ? CMD_FLAG_FUA : 0, offset, data.length, { data });
  }

  /** Makes every write answered before this call durable. */
  flush(): Promise<void> {
    if ((this.flags & NbdTransmissionFlag.SEND_FLUSH) === 0) {
      return Promise.reject(new NbdInvalidRequestError('the server does not advertise NBD_CMD_FLUSH'));
    }
    return this.send(CMD_FLUSH, 0, 0, 0, {});
  }

  /**
   * The extents of `context` covering exactly [offset, offset + length): the command is repeated from the first byte
   * an answer left out until the whole range is answered; neighbouring extents with equal flags are merged.
   */
  async blockStatus(context: string, offset: number, length: number): Promise<NbdExtent[]> {
    const id = this.contexts.get(context);
    if (id === undefined) {
      throw new NbdInvalidRequestError(`the metadata context "${context}" was not negotiated on this connection`);
    }
    const end = offset + length;
    const extents: NbdExtent[] = [];
    for (let at = offset; at < end;) {
      const asked = Math.min(end - at, MAX_STATUS_REQUEST);
      const answer: NbdExtent[] = [];
      await this.send(CMD_BLOCK_STATUS, 0, at, asked, { context: id, extents: answer });
      if (answer.length === 0) throw this.violation(`no extents of context ${context} for the range at ${at}`);
      for (const extent of answer) {
        if (at >= end) break;
        const clipped = { offset: at, length: Math.min(extent.length, end - at), flags: extent.flags };
        const last = extents.at(-1);
        if (last && last.flags === clipped.flags) last.length += clipped.length;
        else extents.push(clipped);
        at += clipped.length;
      }
    }
    return extents;
  }

  /**
   * Ends the session cleanly: waits for every pending command, sends NBD_CMD_DISC and waits for the server to close.
   * Idempotent; on a connection already closed it only waits for the socket.
   */
  async disconnect(): Promise<void> {
    if (this.pending.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    if (this.closedReason === undefined) {
      this.closedReason = 'disconnected by the client';
      this.socket.end(this.requestHeader(CMD_DISC, 0, 0, 0, 0));
    }
    await this.closing;
  }

  /** Closes the connection at once, failing pending commands. */
  destroy(): void {
    this.fail('destroyed by the client');
  }

  private checkPayload(what: string, length: number): void {
    if (length > this.blockSize.maximumPayload) {
      throw new NbdInvalidRequestError(
        `${what} of ${length} bytes exceeds the server's maximum payload of ${this.blockSize.maximumPayload} bytes`,
      );
    }
  }

  private send(
    command: number,
    commandFlags: number,
    offset: number,
    length: number,
    extra: { into?: Buffer; data?: Buffer; context?: number; extents?: NbdExtent[] },
  ): Promise<void> {
    if (this.closedReason !== undefined) {
      return Promise.reject(new NbdConnectionClosedError(this.options.socketPath, 0, this.closedReason));
    }
    const cookie = this.nextCookie++;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        const what = `${COMMAND_NAMES[command]} of ${length} bytes at ${offset}`;
        const timeout = new NbdTimeoutError(this.options.socketPath, what, this.options.timeoutMs);
        this.fail(`no answer to ${what} within ${this.options.timeoutMs} ms`, timeout);
      }, this.options.timeoutMs);
      this.pending.set(cookie, {
        command,
        offset,
        length,
        into: extra.into,
        covered: 0,
        context: extra.context,
        extents: extra.extents,
        timer,
        resolve,
        reject,
      });
      this.corkUntilNextTick();
      this.socket.write(this.requestHeader(command, commandFlags, cookie, offset, length));
      if (extra.data && extra.data.length > 0) this.socket.write(extra.data);
    });
  }

  /**
   * Commands sent in the same tick leave in one system call: a 28-byte write each cost about as much as a 256 KiB
   * read's reply here (a wake-up of the server per request).
   */
  private corkUntilNextTick(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(() => {
      this.corked = false;
      this.socket.uncork();
    });
  }

  private requestHeader(command: number, flags: number, cookie: number, offset: number, length: number): Buffer {
    const header = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
    header.writeUInt32BE(REQUEST_MAGIC, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(command, 6);
    header.writeUInt32BE(Math.floor(cookie / 2 ** 32), 8);
    header.writeUInt32BE(cookie % 2 ** 32, 12);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    return header;
  }

  /**
   * Closes the connection and fails every pending command: with `error` (a timeout, a protocol violation) when given,
   * else with a NbdConnectionClosedError that counts them.
   */
  private fail(reason: string, error?: NbdError, cause?: unknown): void {
    this.closedReason ??= reason;
    const pending = [...this.pending.values()];
    this.pending.clear();
    const failure = error ?? new NbdConnectionClosedError(this.options.socketPath, pending.length, reason, cause);
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(failure);
    }
    this.wakeIdle();
    this.socket.destroy();
  }

  private wakeIdle(): void {
    if (this.pending.size > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }

  private violation(reason: string): NbdProtocolError {
    const error = new NbdProtocolError(reason);
    this.fail(error.message, error);
    return error;
  }

  /** Feeds bytes from the socket through the receive state machine. `data` is only valid during the call. */
  private receive(data: Buffer): void {
    let at = 0;
    while (at < data.length && this.closedReason === undefined) {
      if (this.streaming) {
        const n = Math.min(this.streamLeft, data.length - at);
        if (this.streamInto) data.copy(this.streamInto, this.streamAt, at, at + n);
        this.streamAt += n;
        this.streamLeft -= n;
        at += n;
        if (this.streamLeft === 0) this.advance(this.fields);
      } else {
        const n = Math.min(this.collectNeed - this.collectHave, data.length - at);
        data.copy(this.collectInto, this.collectHave, at, at + n);
        this.collectHave += n;
        at += n;
        if (this.collectHave === this.collectNeed) this.advance(this.collectInto);
      }
    }
  }

  /** Runs the step waiting for the bytes just completed; it sets the next one, a reply header by default. */
  private advance(data: Buffer): void {
    const then = this.onCollected;
    this.expectHeader();
    try {
      then(data);
    } catch (error) {
      if (!(error instanceof NbdProtocolError)) throw error;
      this.fail(error.message, error);
    }
  }

  /** Collects `bytes` bytes, the first `keep` of them being those already in `fields`, then runs `then`. */
  private collect(bytes: number, then: (data: Buffer) => void, keep = 0): void {
    this.collectInto = bytes <= this.fields.length ? this.fields : Buffer.allocUnsafe(bytes);
    if (bytes === 0) return then(this.collectInto);
    this.streaming = false;
    this.collectHave = keep;
    this.collectNeed = bytes;
    this.onCollected = then;
  }

  private stream(into: Buffer | undefined, at: number, bytes: number, then: () => void): void {
    if (bytes === 0) return then();
    this.streaming = true;
    this.streamInto = into;
    this.streamAt = at;
    this.streamLeft = bytes;
    this.onCollected = then;
  }

  private expectHeader(): void {
    this.collect(SIMPLE_REPLY_BYTES, (header) => this.onHeader(header));
  }

  private onHeader(header: Buffer): void {
    const magic = header.readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) return this.onSimpleReply(header);
    if (magic !== STRUCTURED_REPLY_MAGIC) throw new NbdProtocolError(`reply magic 0x${magic.toString(16)}`);
    this.collect(STRUCTURED_REPLY_BYTES, (full) => this.onChunk(full), SIMPLE_REPLY_BYTES);
  }

  private pendingFor(header: Buffer, at: number): { cookie: number; p: Pending } {
    const cookie = header.readUInt32BE(at) * 2 ** 32 + header.readUInt32BE(at + 4);
    const p = this.pending.get(cookie);
    if (!p) throw new NbdProtocolError(`a reply for cookie ${cookie}, which no pending command has`);
    return { cookie, p };
  }

  private onSimpleReply(header: Buffer): void {
    const errno = header.readUInt32BE(4);
    const { cookie, p } = this.pendingFor(header, 8);
    if (errno !== 0) {
      p.error = new NbdServerError(COMMAND_NAMES[p.command] ?? String(p.command), p.offset, p.length, errno, '');
      return this.complete(cookie, p);
    }
    if (p.command === CMD_BLOCK_STATUS) throw new NbdProtocolError('a simple reply to NBD_CMD_BLOCK_STATUS');
    if (p.command !== CMD_READ) return this.complete(cookie, p);
    p.covered = p.length;
    this.stream(p.into, 0, p.length, () => this.complete(cookie, p));
  }

  private onChunk(header: Buffer): void {
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const { cookie, p } = this.pendingFor(header, 8);
    const length = header.readUInt32BE(16);
    const next = () => {
      if ((flags & REPLY_FLAG_DONE) !== 0) this.complete(cookie, p);
    };
    const inRequest = (offset: number, bytes: number) => {
      if (offset < p.offset || offset + bytes > p.offset + p.length) {
        throw new NbdProtocolError(
          `content at ${offset} (${bytes} bytes) outside the read of ${p.length} at ${p.offset}`,
        );
      }
      p.covered += bytes;
      return offset - p.offset;
    };
    if (type === REPLY_TYPE_NONE) {
      if (length !== 0) throw new NbdProtocolError(`NBD_REPLY_TYPE_NONE with ${length} payload bytes`);
      return next();
    }
    if (type === REPLY_TYPE_OFFSET_DATA && p.command === CMD_READ && length > 8) {
      return this.collect(8, (fields) => {
        const offset = Number(fields.readBigUInt64BE(0));
        const at = inRequest(offset, length - 8);
        this.stream(p.into, at, length - 8, next);
      });
    }
    if (type === REPLY_TYPE_OFFSET_HOLE && p.command === CMD_READ && length === 12) {
      return this.collect(12, (fields) => {
        const offset = Number(fields.readBigUInt64BE(0));
        const bytes = fields.readUInt32BE(8);
        const at = inRequest(offset, bytes);
        p.into?.fill(0, at, at + bytes);
        next();
      });
    }
    if (type === REPLY_TYPE_BLOCK_STATUS && p.command === CMD_BLOCK_STATUS) {
      if (length < 12 || (length - 4) % 8 !== 0 || length > MAX_BLOCK_STATUS_PAYLOAD) {
        throw new NbdProtocolError(`a block-status chunk of ${length} bytes`);
      }
      return this.collect(length, (payload) => {
        if (payload.readUInt32BE(0) === p.context) {
          let offset = p.offset;
          for (let at = 4; at < length; at += 8) {
            const bytes = payload.readUInt32BE(at);
            if (bytes === 0) throw new NbdProtocolError('a block-status extent of length 0');
            p.extents?.push({ offset, length: bytes, flags: payload.readUInt32BE(at + 4) });
            offset += bytes;
          }
        }
        next();
      });
    }
    if ((type & REPLY_TYPE_ERROR_BIT) !== 0) {
      if (length < 6 || length > MAX_ERROR_PAYLOAD) throw new NbdProtocolError(`an error chunk of ${length} bytes`);
      return this.collect(length, (payload) => {
        const errno = payload.readUInt32BE(0);
        const messageBytes = payload.readUInt16BE(4);
        if (6 + messageBytes > length) throw new NbdProtocolError('an error message longer than its chunk');
        const message = payload.toString('utf8', 6, 6 + messageBytes);
        const errorOffset =
          type === REPLY_TYPE_ERROR_OFFSET && length >= 14 + messageBytes
            ? Number(payload.readBigUInt64BE(6 + messageBytes))
            : undefined;
        const command = COMMAND_NAMES[p.command] ?? String(p.command);
        p.error ??= new NbdServerError(command, p.offset, p.length, errno, message, errorOffset);
        next();
      });
    }
    throw new NbdProtocolError(`reply chunk type ${type} to ${COMMAND_NAMES[p.command]}`);
  }

  private complete(cookie: number, p: Pending): void {
    this.pending.delete(cookie);
    clearTimeout(p.timer);
    if (p.error) {
      p.reject(p.error);
      return this.wakeIdle();
    }
    if (p.command === CMD_READ && p.covered !== p.length) {
      const error = new NbdProtocolError(`a read of ${p.length} bytes at ${p.offset} answered with ${p.covered} bytes`);
      p.reject(error);
      throw error;
    }
    p.resolve();
    this.wakeIdle();
  }
}

/** Runs the fixed-newstyle handshake up to and including NBD_OPT_GO. */
async function negotiate(
  socket: net.Socket,
  input: HandshakeReader,
  options: NbdConnectOptions,
): Promise<{ size: number; flags: number; blockSize: NbdBlockSize; contexts: Map<string, number> }> {
  const hello = await input.read(18);
  if (hello.readBigUInt64BE(0) !== NBDMAGIC) throw new NbdProtocolError('no NBDMAGIC at the start of the handshake');
  const second = hello.readBigUInt64BE(8);
  if (second === OLDSTYLE_MAGIC) {
    throw new NbdHandshakeError('the handshake', 'oldstyle server', 'only fixed-newstyle negotiation is supported');
  }
  if (second !== IHAVEOPT) throw new NbdProtocolError('neither IHAVEOPT nor the oldstyle magic after NBDMAGIC');
  const serverFlags = hello.readUInt16BE(16);
  if ((serverFlags & FLAG_FIXED_NEWSTYLE) === 0) {
    throw new NbdHandshakeError('the handshake', 'no NBD_FLAG_FIXED_NEWSTYLE', 'the server only speaks plain newstyle');
  }
  const clientFlags = Buffer.allocUnsafe(4);
  clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
  socket.write(clientFlags);

  const sendOption = (option: number, data: Buffer) => {
    const header = Buffer.allocUnsafe(16);
    header.writeBigUInt64BE(IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    socket.write(Buffer.concat([header, data]));
  };
  const readReply = async (option: number): Promise<{ type: number; data: Buffer }> => {
    const header = await input.read(20);
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new NbdProtocolError('an option reply magic');
    if (header.readUInt32BE(8) !== option) throw new NbdProtocolError(`a reply to option ${header.readUInt32BE(8)}`);
    const length = header.readUInt32BE(16);
    if (length > MAX_OPTION_REPLY) throw new NbdProtocolError(`an option reply of ${length} bytes`);
    return { type: header.readUInt32BE(12), data: length > 0 ? await input.read(length) : Buffer.alloc(0) };
  };
  const refusal = (option: number, reply: { type: number; data: Buffer }): NbdError => {
    const message = reply.data.toString('utf8');
    if (reply.type === REP_ERR_UNKNOWN) return new NbdExportNotFoundError(options.exportName, message);
    const name = REPLY_NAMES[reply.type] ?? `reply type ${reply.type}`;
    return new NbdHandshakeError(OPTION_NAMES[option] ?? String(option), name, message);
  };
  /** Ends the negotiation the polite way after a refusal (the server acknowledges NBD_OPT_ABORT, then closes). */
  const abort = async () => {
    sendOption(OPT_ABORT, Buffer.alloc(0));
    await readReply(OPT_ABORT).catch(() => undefined);
  };
  const refuse = async (option: number, reply: { type: number; data: Buffer }): Promise<never> => {
    await abort();
    throw refusal(option, reply);
  };
  const name = Buffer.from(options.exportName, 'utf8');
  const withLength = (bytes: Buffer) => {
    const length = Buffer.allocUnsafe(4);
    length.writeUInt32BE(bytes.length);
    return [length, bytes];
  };

  // Structured replies: holes come back as holes, and errors carry the server's message.
  sendOption(OPT_STRUCTURED_REPLY, Buffer.alloc(0));
  const structured = await readReply(OPT_STRUCTURED_REPLY);
  if (structured.type !== REP_ACK) await refuse(OPT_STRUCTURED_REPLY, structured);

  const contexts = new Map<string, number>();
  const wanted = options.metaContexts ?? [];
  if (wanted.length > 0) {
    const count = Buffer.allocUnsafe(4);
    count.writeUInt32BE(wanted.length);
    const queries = wanted.flatMap((context) => withLength(Buffer.from(context, 'utf8')));
    sendOption(OPT_SET_META_CONTEXT, Buffer.concat([...withLength(name), count, ...queries]));
    for (;;) {
      const reply = await readReply(OPT_SET_META_CONTEXT);
      if (reply.type === REP_ACK) break;
      if (reply.type !== REP_META_CONTEXT) await refuse(OPT_SET_META_CONTEXT, reply);
      if (reply.data.length < 4) throw new NbdProtocolError('a NBD_REP_META_CONTEXT without an id');
      contexts.set(reply.data.toString('utf8', 4), reply.data.readUInt32BE(0));
    }
    const missing = wanted.find((context) => !contexts.has(context));
    if (missing !== undefined) {
      await abort();
      throw new NbdMetaContextUnavailableError(options.exportName, missing, [...contexts.keys()]);
    }
  }

  // NBD_INFO_BLOCK_SIZE is not requested: asking would bind every request to the server's minimum block size, and
  // servers accept unaligned requests from clients that did not ask. The maximum payload is honoured when sent.
  const infoCount = Buffer.alloc(2);
  sendOption(OPT_GO, Buffer.concat([...withLength(name), infoCount]));
  let export_: { size: number; flags: number } | undefined;
  const blockSize: NbdBlockSize = { minimum: 1, preferred: 4096, maximumPayload: DEFAULT_MAX_PAYLOAD };
  for (;;) {
    const reply = await readReply(OPT_GO);
    if (reply.type === REP_ACK) break;
    if (reply.type !== REP_INFO) await refuse(OPT_GO, reply);
    if (reply.data.length < 2) throw new NbdProtocolError('an empty NBD_REP_INFO');
    const info = reply.data.readUInt16BE(0);
    if (info === INFO_EXPORT && reply.data.length === 12) {
      export_ = { size: Number(reply.data.readBigUInt64BE(2)), flags: reply.data.readUInt16BE(10) };
    } else if (info === INFO_BLOCK_SIZE && reply.data.length === 14) {
      blockSize.minimum = reply.data.readUInt32BE(2);
      blockSize.preferred = reply.data.readUInt32BE(6);
      blockSize.maximumPayload = reply.data.readUInt32BE(10);
    }
  }
  if (!export_) throw new NbdProtocolError('NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
  return { ...export_, blockSize, contexts };
}
