// Wire helpers shared by the QMP and guest-agent clients.
import net from 'node:net';
import { ProtocolUnavailableError, type QemuProtocol } from './errors';

/**
 * JSON-lines framing. Both peers end every message with a newline (QMP with
 * `\r\n`, qemu-ga with `\n`), and JSON text cannot contain a raw newline, so a newline always ends a message. Socket
 * chunks arrive cut anywhere: a message may span several chunks, and one chunk may hold several messages.
 */
export class LineBuffer {
  private pending: Buffer[] = [];

  /** Adds a chunk and returns the complete lines it finishes, without their `\n` or `\r\n`; keeps the rest. */
  push(chunk: Buffer): Buffer[] {
    const lines: Buffer[] = [];
    let start = 0;
    for (let end = chunk.indexOf(0x0a); end !== -1; end = chunk.indexOf(0x0a, start)) {
      this.pending.push(chunk.subarray(start, end));
      const line = Buffer.concat(this.pending);
      this.pending = [];
      lines.push(line.at(-1) === 0x0d ? line.subarray(0, -1) : line);
      start = end + 1;
    }
    if (start < chunk.length) this.pending.push(chunk.subarray(start));
    return lines;
  }
}

/** Parses one line as a JSON object, or returns undefined when it is not one. */
export function parseObject(line: Buffer): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(line.toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `promise`, or the error `onTimeout` makes if it has not settled within `timeoutMs`. Past the deadline the promise's
 * own outcome is abandoned (a later rejection is swallowed, not left unhandled).
 */
export function withDeadline<T>(promise: Promise<T>, timeoutMs: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      promise.catch(() => undefined);
      reject(onTimeout());
    }, timeoutMs);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** The start of a line, for error messages. */
export function preview(line: Buffer): string {
  const text = line.toString('utf8');
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** True if something accepts a connection on the unix socket now (the probe disconnects at once). */
export function socketAccepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** Connects to the unix socket; nothing accepting there is a ProtocolUnavailableError of `protocol`. */
export function connectUnix(socketPath: string, protocol: QemuProtocol): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const attempt = net.createConnection(socketPath);
    attempt.once('connect', () => resolve(attempt));
    attempt.once('error', (error: NodeJS.ErrnoException) =>
      reject(new ProtocolUnavailableError(protocol, socketPath, error.code ?? error.message)),
    );
  });
}
