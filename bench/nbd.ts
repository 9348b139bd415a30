/**
 * NBD read benchmark: a 1 GiB image of random bytes exported read-only by qemu-nbd, read whole by `nbdcopy … null:`
 * (libnbd's copier, the reference) and by our NbdDiskReader, both with the page cache warm. Ours runs twice: read and
 * discard, and read + BLAKE3 through the capture stage's own scanDisk on the chunk pool. Prints MB/s and ours/nbdcopy
 * for each, then a sweep of reader settings. Run: `npx tsx bench/nbd.ts`.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ChunkPool, DEFAULT_CHUNK_SIZE, scanDisk } from '../dataplane';
import { NBD_READER_DEFAULTS, NbdDiskReader } from '../platform/qemu/nbd-reader';
import type { NbdDiskReaderOptions } from '../platform/qemu/nbd-reader';
import { GiB, KiB, MB, MiB, errorText, run, timed, which } from './util';

const IMAGE_BYTES = 1 * GiB;
/** Each measurement is repeated, alternating the readers; the fastest run counts (figures vary ±30 % here). */
const RUNS = 3;
/** Reads issued the way scanDisk issues them: 4 MiB segments, 8 in flight (2 pool threads × 4). */
const SEGMENT_BYTES = 4 * MiB;
const SEGMENTS_IN_FLIGHT = 8;
/** The target of issue 16: capture through our reader at no less than this fraction of nbdcopy's rate. */
const TARGET_RATIO = 0.9;
const SWEEP: Required<Pick<NbdDiskReaderOptions, 'connections' | 'requestBytes' | 'inFlightPerConnection'>>[] = [
  { connections: 1, requestBytes: 256 * KiB, inFlightPerConnection: 16 },
  { connections: 2, requestBytes: 256 * KiB, inFlightPerConnection: 16 },
  { connections: 4, requestBytes: 256 * KiB, inFlightPerConnection: 8 },
  { connections: 4, requestBytes: 256 * KiB, inFlightPerConnection: 16 },
  { connections: 4, requestBytes: 1 * MiB, inFlightPerConnection: 4 },
  { connections: 4, requestBytes: 4 * MiB, inFlightPerConnection: 2 },
];

const log = (message: string): void => void process.stderr.write(`${message}\n`);
const rate = (seconds: number): number => IMAGE_BYTES / seconds / MB;

/** Reads the whole export into segment buffers and drops them. */
async function readDiscard(options: NbdDiskReaderOptions): Promise<number> {
  const reader = await NbdDiskReader.open(options);
  try {
    const buffers = Array.from({ length: SEGMENTS_IN_FLIGHT }, () => Buffer.allocUnsafe(SEGMENT_BYTES));
    let next = 0;
    const lane = async (buffer: Buffer) => {
      for (let at = next; at < IMAGE_BYTES; at = next) {
        next += SEGMENT_BYTES;
        await reader.read(buffer.subarray(0, Math.min(SEGMENT_BYTES, IMAGE_BYTES - at)), at);
      }
    };
    const { seconds } = await timed(() => Promise.all(buffers.map(lane)));
    return seconds;
  } finally {
    await reader.close();
  }
}

/** The capture stage's read + zero detection + BLAKE3, over the export. */
async function readHash(options: NbdDiskReaderOptions, pool: ChunkPool): Promise<number> {
  const reader = await NbdDiskReader.open(options);
  try {
    let chunks = 0;
    const { seconds } = await timed(() =>
      scanDisk({
        disk: reader,
        sizeBytes: IMAGE_BYTES,
        chunkSize: DEFAULT_CHUNK_SIZE,
        pool,
        onChunks: (_, refs) => void (chunks += refs.length),
      }),
    );
    if (chunks !== IMAGE_BYTES / DEFAULT_CHUNK_SIZE) throw new Error(`scanDisk hashed ${chunks} chunks`);
    return seconds;
  } finally {
    await reader.close();
  }
}

async function main(): Promise<void> {
  const [qemuNbd, nbdcopy] = await Promise.all([which('qemu-nbd'), which('nbdcopy')]);
  if (!qemuNbd || !nbdcopy) throw new Error('qemu-nbd and nbdcopy are needed (apt-get install qemu-utils libnbd-bin)');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-nbd-'));
  const image = path.join(dir, 'random.raw');
  const socket = path.join(dir, 'nbd.sock');
  const pidFile = path.join(dir, 'qemu-nbd.pid');
  let pid: number | undefined;
  const pool = new ChunkPool();
  try {
    log(`Writing a ${IMAGE_BYTES / GiB} GiB image of random bytes`);
    const file = await fs.open(image, 'w');
    for (let at = 0; at < IMAGE_BYTES; at += 64 * MiB) await file.write(randomBytes(64 * MiB), 0, 64 * MiB, at);
    await file.close();
    await run(qemuNbd, [
      '--fork',
      `--pid-file=${pidFile}`,
      `--socket=${socket}`,
      '--format=raw',
      '--read-only',
      '--persistent',
      '--shared=16',
      '--export-name=bench',
      image,
    ]);
    pid = Number((await fs.readFile(pidFile, 'utf8')).trim());
    const target = { socketPath: socket, exportName: 'bench' };
    const nbdcopyRun = async () =>
      (await timed(() => run(nbdcopy, [`nbd+unix:///bench?socket=${socket}`, 'null:']))).seconds;

    await nbdcopyRun(); // warms the page cache and qemu-nbd
    const best = { nbdcopy: Infinity, discard: Infinity, hash: Infinity };
    for (let i = 0; i < RUNS; i++) {
      best.nbdcopy = Math.min(best.nbdcopy, await nbdcopyRun());
      best.discard = Math.min(best.discard, await readDiscard(target));
      best.hash = Math.min(best.hash, await readHash(target, pool));
    }
    const reference = rate(best.nbdcopy);
    const line = (name: string, seconds: number, isReference = false) => {
      const ratio = rate(seconds) / reference;
      const mark = isReference ? '' : ratio >= TARGET_RATIO ? '  (target met)' : '  (below target)';
      return `  ${name.padEnd(40)} ${rate(seconds).toFixed(0).padStart(6)} MB/s  ${ratio.toFixed(2)}x${mark}`;
    };
    const d = NBD_READER_DEFAULTS;
    console.log(
      `\nNBD read of a ${IMAGE_BYTES / GiB} GiB random image from qemu-nbd (best of ${RUNS}, page cache warm)`,
    );
    console.log(
      `  reader defaults: ${d.connections} connections × ${d.inFlightPerConnection} × ${d.requestBytes / KiB} KiB`,
    );
    console.log(line('nbdcopy … null: (reference)', best.nbdcopy, true));
    console.log(line('NbdDiskReader, read + discard', best.discard));
    console.log(line('NbdDiskReader, read + BLAKE3 (scanDisk)', best.hash));

    console.log('\nReader settings, read + discard (one run each):');
    for (const setting of SWEEP) {
      const seconds = await readDiscard({ ...target, ...setting });
      const name = `${setting.connections} conn × ${setting.inFlightPerConnection} × ${setting.requestBytes / KiB} KiB`;
      console.log(line(name, seconds));
    }
  } finally {
    await pool.destroy();
    if (pid !== undefined) process.kill(pid, 'SIGTERM');
    await fs.rm(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(errorText(error));
  process.exitCode = 1;
});
