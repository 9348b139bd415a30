import type { DiskReader } from '../../dataplane';
import { NbdClient } from './nbd';
import type { NbdConnectOptions, NbdExtent } from './nbd';
import { NbdInvalidRequestError } from './nbd-errors';

/**
 * Defaults measured on the 1 GiB benchmark image (bench/nbd.ts): 4 connections as nbdcopy opens, 256 KiB requests and
 * 16 of them in flight per connection (the best single-connection setting found; larger requests did not help).
 */
export const NBD_READER_DEFAULTS = { connections: 4, requestBytes: 256 * 1024, inFlightPerConnection: 16 } as const;

/** How to reach the export and how hard to read it. */
export interface NbdDiskReaderOptions extends NbdConnectOptions {
  /** Connections to open when the server advertises NBD_FLAG_CAN_MULTI_CONN; one otherwise. */
  connections?: number;
  /** Bytes per NBD_CMD_READ (capped by the server's maximum payload). */
  requestBytes?: number;
  /** Reads in flight on each connection. */
  inFlightPerConnection?: number;
}

/**
 * An NBD export as a DiskReader: each read is split into requests spread over several connections (when the server
 * allows it), with a bounded number in flight on each, so capture reads a view the way it reads an image file.
 * Also answers block status, for the contexts given at open, on the least busy connection.
 */
export class NbdDiskReader implements DiskReader {
  /** The export's size in bytes. */
  readonly size: number;
  private readonly requestBytes: number;
  private readonly waiting: (() => void)[] = [];

  private constructor(
    private readonly clients: NbdClient[],
    private readonly inFlightPerConnection: number,
    requestBytes: number,
  ) {
    this.size = clients[0]!.size;
    this.requestBytes = Math.min(requestBytes, clients[0]!.blockSize.maximumPayload);
  }

  /** Connects once, then opens the other connections if the server advertises NBD_FLAG_CAN_MULTI_CONN. */
  static async open(options: NbdDiskReaderOptions): Promise<NbdDiskReader> {
    const wanted = options.connections ?? NBD_READER_DEFAULTS.connections;
    const inFlight = options.inFlightPerConnection ?? NBD_READER_DEFAULTS.inFlightPerConnection;
    const requestBytes = options.requestBytes ?? NBD_READER_DEFAULTS.requestBytes;
    if (!(wanted >= 1 && inFlight >= 1 && requestBytes >= 1)) {
      throw new NbdInvalidRequestError('connections, in-flight reads and request bytes must each be at least 1');
    }
    const first = await NbdClient.connect(options);
    const clients = [first];
    if (first.canMultiConn && wanted > 1) {
      const others = await Promise.allSettled(Array.from({ length: wanted - 1 }, () => NbdClient.connect(options)));
      for (const other of others) if (other.status === 'fulfilled') clients.push(other.value);
      const failed = others.find((other) => other.status === 'rejected');
      if (failed) {
        await Promise.all(clients.map((client) => client.disconnect()));
        throw failed.reason;
      }
    }
    return new NbdDiskReader(clients, inFlight, requestBytes);
  }

  /** Connections in use (1 when the server does not allow several). */
  get connections(): number {
    return this.clients.length;
  }

  /**
   * Fills `buffer` from `position` on. Resolves or rejects only once every request of this read has settled, so no
   * late reply writes into a buffer the caller has taken back.
   */
  async read(buffer: Buffer, position: number): Promise<void> {
    if (position < 0 || position + buffer.length > this.size) {
      throw new NbdInvalidRequestError(
        `a read of ${buffer.length} bytes at ${position} goes past the end of the export (${this.size} bytes)`,
      );
    }
    const requests: Promise<void>[] = [];
    for (let at = 0; at < buffer.length; at += this.requestBytes) {
      const piece = buffer.subarray(at, Math.min(at + this.requestBytes, buffer.length));
      requests.push(this.withConnection((client) => client.readInto(piece, position + at)));
    }
    const results = await Promise.allSettled(requests);
    const failed = results.find((result) => result.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** The extents of `context` over [offset, offset + length) (see NbdClient.blockStatus). */
  blockStatus(context: string, offset: number, length: number): Promise<NbdExtent[]> {
    return this.withConnection((client) => client.blockStatus(context, offset, length));
  }

  /** Disconnects every connection cleanly (after their pending requests). */
  async close(): Promise<void> {
    await Promise.all(this.clients.map((client) => client.disconnect()));
  }

  /** Runs `use` on the least busy connection once it has a free slot (first come, first served). */
  private async withConnection<T>(use: (client: NbdClient) => Promise<T>): Promise<T> {
    let client = this.leastBusy();
    while (client.inFlight >= this.inFlightPerConnection) {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
      client = this.leastBusy();
    }
    try {
      return await use(client);
    } finally {
      this.waiting.shift()?.();
    }
  }

  private leastBusy(): NbdClient {
    let best = this.clients[0]!;
    for (const client of this.clients) if (client.inFlight < best.inFlight) best = client;
    return best;
  }
}
