import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  BASE_ALLOCATION,
  NBD_STATE_DIRTY,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NbdClient,
  dirtyBitmapContext,
} from '../../platform/qemu/nbd';
import type { NbdExtent } from '../../platform/qemu/nbd';
import { NbdDiskReader } from '../../platform/qemu/nbd-reader';
import { NbdError, NbdErrorType } from '../../platform/qemu/nbd-errors';
import { waitFor } from '../helpers/snapshot-env';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
/** qcow2's default cluster: the granularity of its allocation and of a dirty bitmap made by `qemu-img bitmap`. */
const CLUSTER = 64 * KiB;
/** Not a multiple of the cluster, so the last cluster is a short one. */
const IMAGE_BYTES = 24 * MiB + 12 * KiB;
/** Random bytes at these ranges, zeroes elsewhere; some start or end inside a cluster. */
const DATA_RANGES = [
  { offset: 0, length: 64 * KiB },
  { offset: 1 * MiB, length: 300 * KiB },
  { offset: 8 * MiB + 4096, length: 5000 },
  { offset: 20 * MiB, length: 2 * MiB },
  { offset: IMAGE_BYTES - 12 * KiB, length: 12 * KiB },
];
/** The sparse image for block status over more than one request (the length field is 32 bits). */
const BIG_BYTES = 6 * GiB;
const BIG_DATA_AT = 5 * GiB + 3 * MiB;
const BITMAP = 'b0';

let dir: string;
let expected: Buffer;
/** Daemonized servers started here (pids from their pid files); all killed in afterAll. */
const pids: number[] = [];
/** qemu-nbd, read-only: the image with known bytes. */
let readOnlySocket: string;
/** qemu-storage-daemon: `disk` (writable, dirty bitmap b0) and `big` (6 GiB, sparse). */
let daemonSocket: string;

function uri(socket: string, exportName: string): string {
  return `nbd+unix:///${exportName}?socket=${socket}`;
}

async function pidFrom(file: string): Promise<number> {
  const pid = Number((await fs.readFile(file, 'utf8')).trim());
  pids.push(pid);
  return pid;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function kill(pid: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  try {
    process.kill(pid, signal);
    // A stopped process handles SIGTERM only once continued (SIGKILL needs no continuing).
    process.kill(pid, 'SIGCONT');
  } catch {
    return; // already gone
  }
  await waitFor(() => !alive(pid));
}

/** Starts qemu-nbd in the background on `image`; resolves once it listens (qemu-nbd --fork returns then). */
async function startQemuNbd(image: string, socket: string, exportName: string, extra: string[]): Promise<number> {
  const pidFile = `${socket}.pid`;
  await run('qemu-nbd', [
    '--fork',
    `--pid-file=${pidFile}`,
    `--socket=${socket}`,
    '--format=qcow2',
    '--persistent',
    '--shared=8',
    `--export-name=${exportName}`,
    ...extra,
    image,
  ]);
  return pidFrom(pidFile);
}

/** The extents of `context` as nbdinfo (libnbd) sees them, merged like ours. */
async function nbdinfoMap(socket: string, exportName: string, context: string): Promise<NbdExtent[]> {
  const { stdout } = await run('nbdinfo', ['--map=' + context, '--json', uri(socket, exportName)]);
  const rows = JSON.parse(stdout) as { offset: number; length: number; type: number }[];
  return merge(rows.map((row) => ({ offset: row.offset, length: row.length, flags: row.type })));
}

function merge(extents: NbdExtent[]): NbdExtent[] {
  const merged: NbdExtent[] = [];
  for (const extent of extents) {
    const last = merged.at(-1);
    if (last && last.flags === extent.flags && last.offset + last.length === extent.offset)
      last.length += extent.length;
    else merged.push({ ...extent });
  }
  return merged;
}

/** The clusters of `image` holding a non-zero byte, as merged extents over the whole image (flags: 0 data, 3 hole). */
function clusterMap(image: Buffer): NbdExtent[] {
  const extents: NbdExtent[] = [];
  for (let offset = 0; offset < image.length; offset += CLUSTER) {
    const length = Math.min(CLUSTER, image.length - offset);
    const data = image.subarray(offset, offset + length).some((byte) => byte !== 0);
    extents.push({ offset, length, flags: data ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO });
  }
  return merge(extents);
}

async function expectNbdError(promise: Promise<unknown>, type: NbdErrorType): Promise<NbdError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(NbdError);
  expect((error as NbdError).type).toBe(type);
  return error as NbdError;
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-nbd-'));
  expected = Buffer.alloc(IMAGE_BYTES);
  for (const range of DATA_RANGES) randomBytes(range.length).copy(expected, range.offset);
  const raw = path.join(dir, 'known.raw');
  await fs.writeFile(raw, expected);
  // qemu-img convert leaves all-zero clusters unallocated: the holes are exactly the zero clusters.
  const image = path.join(dir, 'known.qcow2');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, image]);
  readOnlySocket = path.join(dir, 'ro.sock');
  await startQemuNbd(image, readOnlySocket, 'known', ['--read-only']);

  const disk = path.join(dir, 'disk.qcow2');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, disk]);
  await run('qemu-img', ['bitmap', '--add', disk, BITMAP]);
  const big = path.join(dir, 'big.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', big, String(BIG_BYTES)]);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${BIG_DATA_AT} 1M`, big]);
  daemonSocket = path.join(dir, 'qsd.sock');
  await run('qemu-storage-daemon', [
    '--daemonize',
    `--pidfile=${daemonSocket}.pid`,
    '--blockdev',
    `driver=file,node-name=disk-file,filename=${disk}`,
    '--blockdev',
    'driver=qcow2,node-name=disk,file=disk-file',
    '--blockdev',
    `driver=file,node-name=big-file,filename=${big}`,
    '--blockdev',
    'driver=qcow2,node-name=big,file=big-file',
    '--nbd-server',
    `addr.type=unix,addr.path=${daemonSocket}`,
    '--export',
    `type=nbd,id=disk-export,node-name=disk,name=disk,writable=on,bitmaps.0=${BITMAP}`,
    '--export',
    'type=nbd,id=big-export,node-name=big,name=big',
  ]);
  await pidFrom(`${daemonSocket}.pid`);
});

afterAll(async () => {
  await Promise.all(pids.map((pid) => kill(pid, 'SIGTERM')));
  await fs.rm(dir, { recursive: true, force: true });
});

describe('NbdClient', () => {
  let client: NbdClient | undefined;
  afterEach(async () => {
    await client?.disconnect();
    client = undefined;
  });

  test('negotiates the export: size, flags, structured replies and base:allocation', async () => {
    client = await NbdClient.connect({
      socketPath: readOnlySocket,
      exportName: 'known',
      metaContexts: [BASE_ALLOCATION],
    });
    expect(client.size).toBe(IMAGE_BYTES);
    expect(client.readOnly).toBe(true);
    expect(client.canMultiConn).toBe(true);
    expect([...client.contexts.keys()]).toEqual([BASE_ALLOCATION]);
    expect(client.blockSize.maximumPayload).toBeGreaterThanOrEqual(MiB);
  });

  test('reads are byte-equal to the image, pipelined, in pieces that cross clusters and holes', async () => {
    client = await NbdClient.connect({ socketPath: readOnlySocket, exportName: 'known' });
    const piece = 1 * MiB + 4097;
    const reads: Promise<Buffer>[] = [];
    for (let offset = 0; offset < IMAGE_BYTES; offset += piece) {
      reads.push(client.read(offset, Math.min(piece, IMAGE_BYTES - offset)));
    }
    expect(Buffer.concat(await Promise.all(reads)).equals(expected)).toBe(true);
    // The largest payload the server takes, in one command (its reply spans many socket reads).
    const whole = await client.read(0, Math.min(client.blockSize.maximumPayload, IMAGE_BYTES));
    expect(whole.equals(expected.subarray(0, whole.length))).toBe(true);
  });

  test('base:allocation reports exactly the zero clusters as holes, as nbdinfo does', async () => {
    client = await NbdClient.connect({
      socketPath: readOnlySocket,
      exportName: 'known',
      metaContexts: [BASE_ALLOCATION],
    });
    const extents = await client.blockStatus(BASE_ALLOCATION, 0, IMAGE_BYTES);
    expect(extents).toEqual(clusterMap(expected));
    expect(extents).toEqual(await nbdinfoMap(readOnlySocket, 'known', BASE_ALLOCATION));
    // A range that starts and ends inside extents is answered exactly, clipped at both ends.
    const inner = await client.blockStatus(BASE_ALLOCATION, 1 * MiB + 100, 2 * MiB);
    expect(inner[0]).toEqual({ offset: 1 * MiB + 100, length: 320 * KiB - 100, flags: 0 });
    expect(inner.at(-1)!.offset + inner.at(-1)!.length).toBe(3 * MiB + 100);
  });

  test('block status over 6 GiB is looped over several requests until the whole range is answered', async () => {
    client = await NbdClient.connect({ socketPath: daemonSocket, exportName: 'big', metaContexts: [BASE_ALLOCATION] });
    const extents = await client.blockStatus(BASE_ALLOCATION, 0, BIG_BYTES);
    const hole = NBD_STATE_HOLE | NBD_STATE_ZERO;
    expect(extents).toEqual([
      { offset: 0, length: BIG_DATA_AT, flags: hole },
      { offset: BIG_DATA_AT, length: MiB, flags: 0 },
      { offset: BIG_DATA_AT + MiB, length: BIG_BYTES - BIG_DATA_AT - MiB, flags: hole },
    ]);
    expect(extents).toEqual(await nbdinfoMap(daemonSocket, 'big', BASE_ALLOCATION));
  });

  test('writes through the client mark their clusters in qemu:dirty-bitmap:b0, as nbdinfo sees them', async () => {
    const context = dirtyBitmapContext(BITMAP);
    client = await NbdClient.connect({
      socketPath: daemonSocket,
      exportName: 'disk',
      metaContexts: [BASE_ALLOCATION, context],
    });
    expect(client.readOnly).toBe(false);
    expect(await client.blockStatus(context, 0, IMAGE_BYTES)).toEqual([{ offset: 0, length: IMAGE_BYTES, flags: 0 }]);

    const small = randomBytes(10);
    const large = randomBytes(200 * KiB);
    await Promise.all([client.write(3 * MiB + 100, small), client.write(5 * MiB, large, { fua: true })]);
    await client.flush();
    expect((await client.read(3 * MiB + 100, 10)).equals(small)).toBe(true);
    expect((await client.read(5 * MiB, large.length)).equals(large)).toBe(true);

    const dirty = await client.blockStatus(context, 0, IMAGE_BYTES);
    expect(dirty.filter((extent) => extent.flags & NBD_STATE_DIRTY)).toEqual([
      { offset: 3 * MiB, length: CLUSTER, flags: NBD_STATE_DIRTY },
      { offset: 5 * MiB, length: 4 * CLUSTER, flags: NBD_STATE_DIRTY },
    ]);
    expect(dirty).toEqual(await nbdinfoMap(daemonSocket, 'disk', context));
  });

  test('an export that does not exist is a typed error naming it', async () => {
    const error = await expectNbdError(
      NbdClient.connect({ socketPath: readOnlySocket, exportName: 'no-such-export' }),
      NbdErrorType.ExportNotFound,
    );
    expect(error.message).toContain('no-such-export');
  });

  test('a dirty bitmap the export does not carry is a typed error at connect', async () => {
    const error = await expectNbdError(
      NbdClient.connect({ socketPath: daemonSocket, exportName: 'disk', metaContexts: [dirtyBitmapContext('nope')] }),
      NbdErrorType.MetaContextUnavailable,
    );
    expect(error.message).toContain('qemu:dirty-bitmap:nope');
  });

  test('a socket nobody listens on is NbdUnreachable', async () => {
    await expectNbdError(
      NbdClient.connect({ socketPath: path.join(dir, 'absent.sock'), exportName: 'known' }),
      NbdErrorType.Unreachable,
    );
  });

  test('a read past the end is the server EINVAL, and the connection stays usable', async () => {
    client = await NbdClient.connect({ socketPath: readOnlySocket, exportName: 'known' });
    const error = await expectNbdError(client.read(IMAGE_BYTES - 10, 20), NbdErrorType.ServerError);
    expect(error).toMatchObject({ code: 'EINVAL', errno: 22, offset: IMAGE_BYTES - 10, length: 20 });
    expect((await client.read(0, 100)).equals(expected.subarray(0, 100))).toBe(true);
  });

  test('a write on a read-only export is refused with NbdReadOnly', async () => {
    client = await NbdClient.connect({ socketPath: readOnlySocket, exportName: 'known' });
    await expectNbdError(client.write(0, Buffer.alloc(512)), NbdErrorType.ReadOnly);
    await expectNbdError(client.blockStatus(BASE_ALLOCATION, 0, 512), NbdErrorType.InvalidRequest);
    await expectNbdError(client.read(0, client.blockSize.maximumPayload + 1), NbdErrorType.InvalidRequest);
  });
});

describe('NbdClient when the server stops answering or dies', () => {
  let image: string;
  beforeAll(async () => {
    image = path.join(dir, 'victim.qcow2');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', path.join(dir, 'known.raw'), image]);
  });

  test('a command unanswered within the deadline is NbdTimeout, and the connection is closed', async () => {
    const socket = path.join(dir, 'stalled.sock');
    const pid = await startQemuNbd(image, socket, 'v', ['--read-only']);
    const client = await NbdClient.connect({ socketPath: socket, exportName: 'v', timeoutMs: 500 });
    try {
      process.kill(pid, 'SIGSTOP');
      const error = await expectNbdError(client.read(0, 4096), NbdErrorType.Timeout);
      expect(error.message).toContain('NBD_CMD_READ of 4096 bytes at 0');
      await expectNbdError(client.read(0, 4096), NbdErrorType.ConnectionClosed);
    } finally {
      client.destroy();
      await kill(pid);
    }
  });

  test('the server dying with reads pending fails each of them with NbdConnectionClosed', async () => {
    const socket = path.join(dir, 'dying.sock');
    const pid = await startQemuNbd(image, socket, 'v', ['--read-only']);
    const client = await NbdClient.connect({ socketPath: socket, exportName: 'v' });
    try {
      process.kill(pid, 'SIGSTOP');
      const reads = Array.from({ length: 8 }, (_, i) => client.read(i * MiB, MiB));
      const settled = Promise.allSettled(reads);
      expect(client.inFlight).toBe(8);
      await kill(pid);
      const results = await settled;
      for (const result of results) {
        expect(result.status).toBe('rejected');
        const reason = (result as PromiseRejectedResult).reason as NbdError;
        expect(reason.type).toBe(NbdErrorType.ConnectionClosed);
        expect(reason.message).toContain('8 command(s) unanswered');
      }
    } finally {
      client.destroy();
      await kill(pid);
    }
  });

  test('a server that never speaks fails the handshake with NbdTimeout', async () => {
    const socket = path.join(dir, 'silent.sock');
    const silent = net.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(socket, resolve));
    try {
      await expectNbdError(
        NbdClient.connect({ socketPath: socket, exportName: 'x', timeoutMs: 300 }),
        NbdErrorType.Timeout,
      );
    } finally {
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});

describe('NbdDiskReader', () => {
  test('several connections read the same bytes as one, and as the image', async () => {
    const options = { socketPath: readOnlySocket, exportName: 'known' };
    const multi = await NbdDiskReader.open({
      ...options,
      connections: 4,
      requestBytes: 64 * KiB,
      inFlightPerConnection: 4,
    });
    const single = await NbdDiskReader.open({ ...options, connections: 1 });
    try {
      expect(multi.connections).toBe(4);
      expect(single.connections).toBe(1);
      const fromMulti = Buffer.alloc(IMAGE_BYTES);
      const fromSingle = Buffer.alloc(IMAGE_BYTES);
      // Concurrent reads of 4 MiB and a bit (not aligned to the request size), as capture issues them.
      const piece = 4 * MiB + 512;
      const reads: Promise<void>[] = [];
      for (let at = 0; at < IMAGE_BYTES; at += piece) {
        const end = Math.min(at + piece, IMAGE_BYTES);
        reads.push(multi.read(fromMulti.subarray(at, end), at), single.read(fromSingle.subarray(at, end), at));
      }
      await Promise.all(reads);
      expect(fromMulti.equals(fromSingle)).toBe(true);
      expect(fromMulti.equals(expected)).toBe(true);
      const extents = await multi.blockStatus(BASE_ALLOCATION, 0, IMAGE_BYTES).catch((error: unknown) => error);
      expect((extents as NbdError).type).toBe(NbdErrorType.InvalidRequest);
    } finally {
      await Promise.all([multi.close(), single.close()]);
    }
  });

  test('a read past the end is refused before sending; block status goes through a connection', async () => {
    const reader = await NbdDiskReader.open({
      socketPath: readOnlySocket,
      exportName: 'known',
      metaContexts: [BASE_ALLOCATION],
    });
    try {
      await expectNbdError(reader.read(Buffer.alloc(100), IMAGE_BYTES - 50), NbdErrorType.InvalidRequest);
      expect(await reader.blockStatus(BASE_ALLOCATION, 0, IMAGE_BYTES)).toEqual(clusterMap(expected));
    } finally {
      await reader.close();
    }
  });
});
