import { blake3 } from '@napi-rs/blake-hash';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ChunkPool, LocalRepository, ZERO_CHUNK, manifestStats } from '../../dataplane';
import { KiB, capture, makeTempDir } from './helpers';

const CHUNK = 64 * KiB;
let dir: string;
let pool: ChunkPool;

beforeAll(async () => {
  dir = await makeTempDir();
  pool = new ChunkPool();
});

afterAll(async () => {
  await pool.destroy();
  await fs.rm(dir, { recursive: true, force: true });
});

test('manifestStats adds up on a hand-made pair of disks with repeats, zeros and short last chunks', async () => {
  const text = await fs.readFile('/usr/share/common-licenses/GPL-3');
  const a = Buffer.alloc(CHUNK);
  for (let at = 0; at < CHUNK; at += text.length) text.copy(a, at);
  const b = Buffer.from(a).reverse();
  const c = text.subarray(5000, 6000);
  const root = path.join(dir, 'root.raw'); // A A 0 B C(1000 bytes)
  const data = path.join(dir, 'data.raw'); // B 0(1000 bytes)
  await fs.writeFile(root, Buffer.concat([a, a, Buffer.alloc(CHUNK), b, c]));
  await fs.writeFile(data, Buffer.concat([b, Buffer.alloc(1000)]));
  const repository = new LocalRepository(path.join(dir, 'repo'));

  const { manifest, stored } = await capture({ pool, repository, snapshotId: 's', chunkSize: CHUNK }, { root, data });
  const [idA, idB, idC] = [a, b, c].map((bytes) => blake3(bytes).toString('hex'));
  expect(manifest.disks.map((d) => d.chunks)).toEqual([
    [idA, idA, ZERO_CHUNK, idB, idC],
    [idB, ZERO_CHUNK],
  ]);

  let storedBytes = 0;
  for (const id of [idA!, idB!, idC!]) storedBytes += (await repository.getChunk(id)).length;
  const distinctRawBytes = 2 * CHUNK + 1000;
  expect(stored).toEqual({ chunksWritten: 3, bytesWritten: distinctRawBytes, storedBytesWritten: storedBytes });
  expect(await manifestStats(manifest, repository)).toEqual({
    logicalBytes: 5 * CHUNK + 2000,
    zeroBytes: CHUNK + 1000,
    distinctChunks: 3,
    distinctRawBytes,
    storedBytes,
    compressionRatio: distinctRawBytes / storedBytes,
    dedupRatio: (4 * CHUNK + 1000) / distinctRawBytes,
  });
  expect(storedBytes).toBeLessThan(distinctRawBytes / 2); // text compresses
});
