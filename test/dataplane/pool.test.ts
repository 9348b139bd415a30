import { blake3 } from '@napi-rs/blake-hash';
import fs from 'node:fs/promises';
import { decompress } from 'zstd-napi';
import { ChunkCorruptError, ChunkPool, DiskChangedError, ZERO_CHUNK } from '../../dataplane';
import { sharedBuffer } from '../../dataplane/memory';
import { frameBound } from '../../dataplane/pool';
import { KiB } from './helpers';

const CHUNK = 64 * KiB;
let pool: ChunkPool;
let text: Buffer;

beforeAll(async () => {
  pool = new ChunkPool();
  // Real, compressible bytes: a system text file, repeated up to three chunks.
  const source = await fs.readFile('/usr/share/common-licenses/GPL-3');
  text = Buffer.alloc(3 * CHUNK);
  for (let at = 0; at < text.length; at += source.length) source.copy(text, at);
});

afterAll(async () => {
  await pool.destroy();
});

function hex(data: Uint8Array): string {
  return blake3(data).toString('hex');
}

test('hashSegment gives the BLAKE3 of each chunk, zero for all-zero chunks, and hashes a short tail on its own', async () => {
  const segment = Buffer.concat([text.subarray(0, CHUNK), Buffer.alloc(CHUNK), text.subarray(CHUNK, CHUNK + 1000)]);
  const expected = [hex(text.subarray(0, CHUNK)), ZERO_CHUNK, hex(text.subarray(CHUNK, CHUNK + 1000))];
  expect(await pool.hashSegment(segment, CHUNK)).toEqual(expected);
  expect(await pool.hashSegment(Buffer.alloc(100), CHUNK)).toEqual([ZERO_CHUNK]);
});

/** compressChunks of one chunk, into shared memory of its own. */
async function compressOne(data: Buffer, id: string): Promise<Buffer> {
  const [frame] = await pool.compressChunks([{ data, id }], sharedBuffer(frameBound(data.length)));
  return frame!;
}

/** openChunks of one frame, into shared memory of its own. */
async function openOne(frame: Buffer, id: string): Promise<Buffer> {
  const [data] = await pool.openChunks([{ frame, id }], sharedBuffer(CHUNK));
  return data!;
}

test('compressChunks makes a checksummed zstd frame that openChunks turns back into the same bytes', async () => {
  const data = text.subarray(0, CHUNK);
  const id = hex(data);
  const frame = await compressOne(Buffer.from(data), id);
  expect(frame.length).toBeLessThan(data.length / 2);
  expect(frame[4]! & 0x04).toBe(0x04); // frame header descriptor: content checksum flag
  expect(hex(decompress(frame))).toBe(id);
  expect((await openOne(Buffer.from(frame), id)).equals(data)).toBe(true);
});

test('openChunks decompresses the frames one after the other into the shared buffer it is given', async () => {
  const chunks = [text.subarray(0, CHUNK), text.subarray(CHUNK, CHUNK + 1000)];
  const frames = await pool.compressChunks(
    chunks.map((data) => ({ data: Buffer.from(data), id: hex(data) })),
    sharedBuffer(2 * frameBound(CHUNK)),
  );
  const into = sharedBuffer(2 * CHUNK);
  const opened = await pool.openChunks(
    frames.map((frame, i) => ({ frame: Buffer.from(frame), id: hex(chunks[i]!) })),
    into,
  );
  expect(opened.map((data, i) => data.equals(chunks[i]!))).toEqual([true, true]);
  expect(opened.map((data) => [data.buffer === into.buffer, data.byteOffset])).toEqual([
    [true, 0],
    [true, CHUNK],
  ]);
  // No room for the second chunk: a plain error, not a corrupt chunk.
  await expect(
    pool.openChunks(
      frames.map((frame, i) => ({ frame: Buffer.from(frame), id: hex(chunks[i]!) })),
      sharedBuffer(CHUNK + 10),
    ),
  ).rejects.toThrow(/no room/);
});

test('compressChunks writes the frames one after the other into the shared buffer it is given', async () => {
  const chunks = [0, 1, 2].map((i) => text.subarray(i * CHUNK, (i + 1) * CHUNK));
  const into = sharedBuffer(3 * frameBound(CHUNK));
  const frames = await pool.compressChunks(
    chunks.map((data) => ({ data: Buffer.from(data), id: hex(data) })),
    into,
  );
  let offset = 0;
  frames.forEach((frame, i) => {
    expect(frame.buffer).toBe(into.buffer);
    expect(frame.byteOffset).toBe(offset);
    expect(hex(decompress(frame))).toBe(hex(chunks[i]!));
    offset += frame.length;
  });
  await expect(pool.compressChunks([{ data: chunks[0]!, id: hex(chunks[0]!) }], Buffer.alloc(CHUNK))).rejects.toThrow(
    /shared memory/,
  );
});

test('compressChunks refuses bytes that no longer hash to the id recorded at capture', async () => {
  const id = hex(text.subarray(0, CHUNK));
  const changed = Buffer.from(text.subarray(0, CHUNK));
  changed[100] = changed[100]! ^ 0xff;
  const error = await compressOne(changed, id).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(DiskChangedError);
  expect(error).toMatchObject({ type: 'DiskChanged', expectedId: id });
});

test('openChunks reports ChunkCorrupt for a frame zstd rejects and for a sound frame of other content', async () => {
  const data = text.subarray(0, CHUNK);
  const id = hex(data);
  const frame = await compressOne(Buffer.from(data), id);

  const damaged = Buffer.from(frame);
  damaged[damaged.length - 2] = damaged[damaged.length - 2]! ^ 0x01; // inside the frame's content checksum
  const rejected = await openOne(damaged, id).catch((e: unknown) => e);
  expect(rejected).toBeInstanceOf(ChunkCorruptError);
  expect(rejected).toMatchObject({ type: 'ChunkCorrupt', chunkId: id });
  expect((rejected as ChunkCorruptError).reason).toMatch(/^zstd/);

  // A header that claims 4 GiB of content (single-segment frame, 8-byte size field) is refused before anything is
  // allocated for it.
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(2n ** 32n);
  const huge = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0xe4]), size, frame.subarray(13)]);
  await expect(openOne(huge, id)).rejects.toMatchObject({
    type: 'ChunkCorrupt',
    reason: 'zstd: frame header claims 4294967296 bytes',
  });

  const otherId = hex(text.subarray(CHUNK, 2 * CHUNK));
  const mismatched = await openOne(Buffer.from(frame), otherId).catch((e: unknown) => e);
  expect(mismatched).toMatchObject({ type: 'ChunkCorrupt', chunkId: otherId, reason: `content hashes to ${id}` });
});

test('checkChunks gives the raw length of each sound frame, and ChunkCorrupt for the first bad one', async () => {
  const whole = text.subarray(0, CHUNK);
  const tail = text.subarray(CHUNK, CHUNK + 1000);
  const [wholeId, tailId] = [hex(whole), hex(tail)];
  const [wholeFrame, tailFrame] = await pool.compressChunks(
    [
      { data: Buffer.from(whole), id: wholeId },
      { data: Buffer.from(tail), id: tailId },
    ],
    sharedBuffer(frameBound(CHUNK) + frameBound(1000)),
  );
  const items = () => [
    { frame: Buffer.from(wholeFrame!), id: wholeId },
    { frame: Buffer.from(tailFrame!), id: tailId },
  ];
  expect(await pool.checkChunks(items())).toEqual([CHUNK, 1000]);
  const swapped = items().map((item, i, all) => ({ ...item, id: all[1 - i]!.id }));
  await expect(pool.checkChunks(swapped)).rejects.toMatchObject({ type: 'ChunkCorrupt', chunkId: tailId });
});
