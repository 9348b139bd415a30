import { blake3 } from '@napi-rs/blake-hash';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  ChunkCorruptError,
  ChunkMissingError,
  LocalRepository,
  ManifestCorruptError,
  ManifestMissingError,
  ZERO_CHUNK,
} from '../../dataplane';
import { DIRECT_IO_BLOCK } from '../../dataplane/files';
import { sharedBuffer } from '../../dataplane/memory';
import { makeTempDir, manifestOf } from './helpers';

let dir: string;
let repository: LocalRepository;
let repositories = 0;

beforeAll(async () => {
  dir = await makeTempDir();
});

beforeEach(() => {
  repository = new LocalRepository(path.join(dir, `repo-${++repositories}`));
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** A chunk id and some bytes standing in for its frame (the repository stores frames opaquely). */
function chunk(text: string): { id: string; frame: Buffer } {
  return { id: blake3(text).toString('hex'), frame: Buffer.from(`frame of ${text}`) };
}

async function tmpFiles(): Promise<string[]> {
  return fs.readdir(path.join(repository.root, 'tmp')).catch(() => []);
}

async function packFiles(root = repository.root): Promise<string[]> {
  return (await fs.readdir(path.join(root, 'packs')).catch(() => [])).filter((f) => f.endsWith('.pack'));
}

const longAgo = new Date(2020, 0, 1);

test('putChunks writes new chunks together in one pack, skips stored and repeated ids, and leaves no temp file', async () => {
  const [a, b, c] = ['a', 'b', 'c'].map(chunk) as [
    ReturnType<typeof chunk>,
    ReturnType<typeof chunk>,
    ReturnType<typeof chunk>,
  ];
  expect(await repository.hasChunk(a.id)).toBe(false);
  expect(await repository.putChunks([a, b, a])).toEqual([a.id, b.id]);
  expect(await packFiles()).toHaveLength(1);
  expect(await repository.putChunks([{ id: a.id, frame: Buffer.from('other bytes') }, c])).toEqual([c.id]);
  expect(await repository.putChunks([a, b, c])).toEqual([]);
  expect(await packFiles()).toHaveLength(2);
  for (const { id, frame } of [a, b, c]) {
    expect(await repository.hasChunk(id)).toBe(true);
    expect(await repository.getChunk(id)).toEqual(frame);
    expect(await repository.chunkStoredSize(id)).toBe(frame.length);
  }
  expect(await tmpFiles()).toEqual([]);
});

test('getChunks reads frames from several packs in the order asked, repeats included', async () => {
  const [i, j, k] = [chunk('i'), chunk('j'), chunk('k')];
  await repository.putChunks([i, j]);
  await repository.putChunks([k]);
  expect(await repository.getChunks([k.id, i.id, k.id, j.id])).toEqual([k.frame, i.frame, k.frame, j.frame]);
  await expect(repository.getChunks([i.id, chunk('absent').id])).rejects.toThrow(ChunkMissingError);
});

test('getChunks reads frames into a given buffer as far as it has room, and the rest into their own', async () => {
  const [i, j, k] = [chunk('i'), chunk('j'), chunk('k')];
  await repository.putChunks([i, j]);
  await repository.putChunks([k]);
  // Frames are read as whole blocks: k's block fits, then i and j (neighbours, one read of two blocks) do not.
  const into = sharedBuffer(DIRECT_IO_BLOCK + 100);
  const frames = await repository.getChunks([k.id, i.id, j.id], into);
  expect(frames).toEqual([k.frame, i.frame, j.frame]);
  expect(frames.map((f) => f.buffer === into.buffer)).toEqual([true, false, false]);
  // With room for every block (k's, i and j's, i's again), every frame is a view of the buffer, repeats included.
  const roomy = sharedBuffer(4 * DIRECT_IO_BLOCK);
  const again = await repository.getChunks([k.id, i.id, j.id, i.id], roomy);
  expect(again).toEqual([k.frame, i.frame, j.frame, i.frame]);
  expect(again.every((f) => f.buffer === roomy.buffer)).toBe(true);
});

test('frames that lie one after the other in working memory form one run of a pack; each run starts on a block', async () => {
  const memory = sharedBuffer(2 * DIRECT_IO_BLOCK);
  memory.fill(0xee); // stale bytes beyond the frames must not reach the pack
  const [x, y] = [randomBytes(5000), randomBytes(300)];
  x.copy(memory, 0);
  y.copy(memory, x.length);
  const inMemory = [
    { id: blake3('x').toString('hex'), frame: memory.subarray(0, x.length) },
    { id: blake3('y').toString('hex'), frame: memory.subarray(x.length, x.length + y.length) },
  ];
  const elsewhere = chunk('z');
  await repository.putChunks([...inMemory, elsewhere]);
  const [atX, atY, atZ] = await Promise.all(
    [...inMemory, elsewhere].map(async ({ id }) => (await repository.chunkLocation(id))!),
  );
  expect([atX!.offset, atY!.offset, atZ!.offset]).toEqual([0, x.length, 2 * DIRECT_IO_BLOCK]);
  const pack = await fs.readFile(atX!.file);
  expect(pack.subarray(x.length + y.length, 2 * DIRECT_IO_BLOCK).every((byte) => byte === 0)).toBe(true);
  expect(await repository.getChunks([elsewhere.id, inMemory[1]!.id, inMemory[0]!.id])).toEqual([elsewhere.frame, y, x]);
});

// tmpfs has no device to bypass the page cache for: its files are page cache.
const onBlockDevice = execFileSync('stat', ['-f', '-c', '%T', os.tmpdir()]).toString().trim() !== 'tmpfs';

(onBlockDevice ? test : test.skip)(
  'packs are written and read back by direct I/O, not through the page cache',
  async () => {
    const frames = [1, 2, 3].map((n) => ({
      id: blake3(`big ${n}`).toString('hex'),
      frame: randomBytes(3_000_000 + n),
    }));
    await repository.putChunks(frames);
    const read = await repository.getChunks(
      frames.map((f) => f.id),
      sharedBuffer(10_000_000),
    );
    expect(read.map((frame, i) => frame.equals(frames[i]!.frame))).toEqual([true, true, true]);
    const [pack] = await fs.readdir(path.join(repository.root, 'packs'));
    const cachedBytes = (file: string) =>
      Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]).toString());
    // Nothing of the 9 MB pack is cached (the last block at most: the index is read through the cache on a reload).
    expect(cachedBytes(path.join(repository.root, 'packs', pack!))).toBeLessThanOrEqual(DIRECT_IO_BLOCK);
  },
);

test('an absent chunk is ChunkMissing for getChunk and chunkStoredSize', async () => {
  const { id } = chunk('d');
  await expect(repository.getChunk(id)).rejects.toThrow(ChunkMissingError);
  await expect(repository.chunkStoredSize(id)).rejects.toMatchObject({ type: 'ChunkMissing', chunkId: id });
});

test('another instance on the same directory (another process) sees chunks stored and removed after it loaded', async () => {
  const other = new LocalRepository(repository.root);
  const [e, f] = ['e', 'f'].map(chunk) as [ReturnType<typeof chunk>, ReturnType<typeof chunk>];
  await repository.putChunks([e]);
  expect(await other.getChunk(e.id)).toEqual(e.frame);
  await repository.putChunks([f]);
  expect(await other.hasChunk(f.id)).toBe(true);
  await fs.utimes(path.join(repository.root, 'packs', (await packFiles())[0]!), longAgo, longAgo);
  await repository.removeChunks([e.id], new Date());
  await expect(other.getChunk(e.id)).rejects.toThrow(ChunkMissingError);
  expect((await other.touchChunks([e.id]))[0]).toBe(false);
  expect(await other.getChunk(f.id)).toEqual(f.frame);
});

test('listChunks yields each chunk with its stored size and its pack’s mtime, and ignores other files', async () => {
  const chunks = ['q', 'r'].map(chunk);
  await repository.putChunks(chunks);
  await fs.writeFile(path.join(repository.root, 'packs', 'stray.pack.tmp'), 'not a pack');
  const { mtime } = await fs.stat(path.join(repository.root, 'packs', (await packFiles())[0]!));
  const listed: { id: string; storedBytes: number; modifiedAt: Date }[] = [];
  for await (const stored of repository.listChunks()) listed.push(stored);
  expect(listed.sort((x, y) => x.id.localeCompare(y.id))).toEqual(
    chunks
      .map(({ id, frame }) => ({ id, storedBytes: frame.length, modifiedAt: mtime }))
      .sort((x, y) => x.id.localeCompare(y.id)),
  );
});

test('a pack whose index is damaged leaves its chunks missing and every other chunk readable', async () => {
  const [g, h] = ['g', 'h'].map(chunk) as [ReturnType<typeof chunk>, ReturnType<typeof chunk>];
  await repository.putChunks([g]);
  const [packOfG] = await packFiles();
  await repository.putChunks([h]);
  const packOfH = (await packFiles()).find((f) => f !== packOfG)!;
  const file = path.join(repository.root, 'packs', packOfH);
  const bytes = await fs.readFile(file);
  bytes[bytes.length - 1]! ^= 0xff; // the trailer's magic
  await fs.writeFile(file, bytes);
  const reader = new LocalRepository(repository.root);
  expect(await reader.getChunk(g.id)).toEqual(g.frame);
  await expect(reader.getChunk(h.id)).rejects.toThrow(ChunkMissingError);
});

test('touchChunks sets the chunks’ pack mtime to now, and reports absent chunks without creating them', async () => {
  const [s1, s2, absent] = [chunk('s1'), chunk('s2'), chunk('absent')];
  expect(await repository.touchChunks([s1.id])).toEqual([false]);
  expect(await packFiles()).toEqual([]);
  await repository.putChunks([s1, s2]);
  const file = path.join(repository.root, 'packs', (await packFiles())[0]!);
  await fs.utimes(file, longAgo, longAgo);
  const before = Date.now();
  expect(await repository.touchChunks([s1.id, absent.id, s2.id])).toEqual([true, false, true]);
  expect((await fs.stat(file)).mtimeMs).toBeGreaterThanOrEqual(before - 1); // utimes may round down a hair
  expect(await repository.getChunks([s1.id, s2.id])).toEqual([s1.frame, s2.frame]);
  expect(await repository.hasChunk(absent.id)).toBe(false);
});

test('removeChunks deletes old chunks, rewrites their pack with the others, and keeps a pack touched since the cutoff', async () => {
  const [old, kept, touched, sibling] = [chunk('t'), chunk('u'), chunk('v'), chunk('w')];
  await repository.putChunks([old, kept]);
  await repository.putChunks([touched, sibling]);
  for (const pack of await packFiles()) await fs.utimes(path.join(repository.root, 'packs', pack), longAgo, longAgo);
  const cutoff = new Date(Date.now() - 1000);
  await repository.touchChunks([touched.id]);
  const reader = new LocalRepository(repository.root);
  expect(await reader.hasChunk(kept.id)).toBe(true); // loaded before the rewrite

  expect(await repository.removeChunks([old.id, touched.id, chunk('absent').id], cutoff)).toEqual({
    removed: 1,
    bytesFreed: old.frame.length,
    keptByGrace: 1,
  });
  expect(await repository.hasChunk(old.id)).toBe(false);
  expect((await repository.touchChunks([old.id]))[0]).toBe(false); // a writer reusing it now stores it again
  for (const c of [kept, touched, sibling]) expect(await repository.getChunk(c.id)).toEqual(c.frame);
  // The reader's index still places `kept` in the pack that was rewritten: it finds the chunk's new pack.
  expect(await reader.getChunks([sibling.id, kept.id, touched.id])).toEqual([sibling.frame, kept.frame, touched.frame]);
  expect(await packFiles()).toHaveLength(2);
  expect(await tmpFiles()).toEqual([]);
});

test('removeChunks on a repository that holds no pack yet removes nothing and fails nothing', async () => {
  await expect(repository.removeChunks([chunk('x').id], new Date())).resolves.toEqual({
    removed: 0,
    bytesFreed: 0,
    keptByGrace: 0,
  });
});

test('a manifest round-trips through JSON, is listed, and is ManifestMissing once deleted', async () => {
  const manifest = manifestOf('snap-1', [
    { name: 'root', sizeBytes: 10, chunkSize: 8, chunks: [chunk('h').id, ZERO_CHUNK] },
  ]);
  await repository.writeManifest(manifest);
  expect(await repository.readManifest('snap-1')).toEqual(manifest);
  expect(await repository.listManifestIds()).toEqual(['snap-1']);
  await repository.deleteManifest('snap-1');
  await repository.deleteManifest('snap-1');
  const missing = await repository.readManifest('snap-1').catch((e: unknown) => e);
  expect(missing).toBeInstanceOf(ManifestMissingError);
  expect(missing).toMatchObject({ type: 'ManifestMissing', snapshotId: 'snap-1' });
  expect(await repository.listManifestIds()).toEqual([]);
});

test('a manifest that does not match the schema is refused on write and on read', async () => {
  const bad = { ...manifestOf('snap-bad', []), version: 2 } as unknown as Parameters<
    typeof repository.writeManifest
  >[0];
  await expect(repository.writeManifest(bad)).rejects.toThrow();
  await repository.writeManifest(manifestOf('snap-bad', []));
  await fs.writeFile(path.join(repository.root, 'manifests', 'snap-bad.json'), JSON.stringify(bad));
  const refused = await repository.readManifest('snap-bad').catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(ManifestCorruptError);
  expect(refused).toMatchObject({ type: 'ManifestCorrupt', snapshotId: 'snap-bad' });
  expect((refused as Error).message).toContain('not a valid manifest: version');
});

test('a manifest is checked against the digest writeManifest returned; truncated or altered it is ManifestCorrupt', async () => {
  const manifest = manifestOf('snap-d', [{ name: 'root', sizeBytes: 10, chunkSize: 8, chunks: [chunk('d').id] }]);
  const digest = await repository.writeManifest(manifest);
  const file = path.join(repository.root, 'manifests', 'snap-d.json');
  expect(digest).toBe(blake3(await fs.readFile(file)).toString('hex'));
  expect(await repository.readManifest('snap-d', digest)).toEqual(manifest);

  const original = await fs.readFile(file, 'utf8');
  await fs.writeFile(file, original.replace('"sizeBytes":10', '"sizeBytes":11')); // still a valid manifest
  expect(await repository.readManifest('snap-d')).toMatchObject({ disks: [{ sizeBytes: 11 }] }); // no digest: unchecked
  await expect(repository.readManifest('snap-d', digest)).rejects.toThrow(
    new ManifestCorruptError('snap-d', `its bytes do not match the digest ${digest} recorded when it was written`),
  );

  await fs.writeFile(file, original.slice(0, original.length - 7));
  const truncated = await repository.readManifest('snap-d').catch((e: unknown) => e);
  expect(truncated).toBeInstanceOf(ManifestCorruptError);
  expect((truncated as Error).message).toMatch(/^The stored manifest of snapshot snap-d is corrupt \(not valid JSON: /);

  await repository.writeManifest(manifestOf('snap-e', []));
  await fs.copyFile(path.join(repository.root, 'manifests', 'snap-e.json'), file);
  await expect(repository.readManifest('snap-d')).rejects.toThrow(
    new ManifestCorruptError('snap-d', 'it names snapshot snap-e'),
  );
});

test('a manifest write that cannot be renamed into place fails and leaves no temp file', async () => {
  await fs.mkdir(path.join(repository.root, 'manifests', 'snap-2.json', 'blocker'), { recursive: true });
  await expect(repository.writeManifest(manifestOf('snap-2', []))).rejects.toThrow();
  expect(await tmpFiles()).toEqual([]);
});

test('a journal appends in order, truncates to its first entries, and reads as empty when absent', async () => {
  const refs = ['i', 'j', 'k', 'l', 'm'].map((t) => chunk(t).id);
  refs.splice(2, 0, ZERO_CHUNK);
  expect(await repository.readJournal('snap-3', 'root')).toEqual([]);
  await repository.appendJournal('snap-3', 'root', refs.slice(0, 4));
  await repository.appendJournal('snap-3', 'root', refs.slice(4));
  await repository.appendJournal('snap-3', 'data', [ZERO_CHUNK]);
  expect(await repository.readJournal('snap-3', 'root')).toEqual(refs);
  await repository.truncateJournal('snap-3', 'root', 3);
  expect(await repository.readJournal('snap-3', 'root')).toEqual(refs.slice(0, 3));
  await repository.truncateJournal('snap-3', 'root', 10); // never lengthens
  expect(await repository.readJournal('snap-3', 'root')).toEqual(refs.slice(0, 3));
  await repository.appendJournal('snap-3', 'root', refs.slice(3));
  expect(await repository.readJournal('snap-3', 'root')).toEqual(refs);
  expect((await repository.listJournals('snap-3')).sort()).toEqual(['data', 'root']);
  await repository.truncateJournal('snap-3', 'absent', 0);
});

test('a torn last journal line, as a crash during an append leaves it, is not read back', async () => {
  const refs = ['n', 'o'].map((t) => chunk(t).id);
  await repository.appendJournal('snap-4', 'root', refs);
  await fs.appendFile(path.join(repository.root, 'staging', 'snap-4', 'root.refs'), chunk('p').id.slice(0, 20));
  expect(await repository.readJournal('snap-4', 'root')).toEqual(refs);
});

test('staging areas are listed per snapshot and dropped with their journals', async () => {
  await repository.appendJournal('snap-5', 'root', [ZERO_CHUNK]);
  await repository.appendJournal('snap-6', 'root', [ZERO_CHUNK]);
  expect((await repository.listStagingIds()).sort()).toEqual(['snap-5', 'snap-6']);
  await repository.dropStaging('snap-5');
  await repository.dropStaging('snap-5');
  expect(await repository.listStagingIds()).toEqual(['snap-6']);
  expect(await repository.readJournal('snap-5', 'root')).toEqual([]);
});

test('a quarantined copy is absent to lookups (ChunkCorrupt to reads), is stored again, and stays quarantined on reopen', async () => {
  const [a, b] = ['qa', 'qb'].map(chunk) as [ReturnType<typeof chunk>, ReturnType<typeof chunk>];
  await repository.putChunks([a, b]);
  await repository.quarantineChunk(a.id);
  expect(await repository.hasChunk(a.id)).toBe(false);
  expect(await repository.touchChunks([a.id, b.id])).toEqual([false, true]);
  await expect(repository.getChunk(a.id)).rejects.toThrow(
    new ChunkCorruptError(a.id, 'quarantined: its stored copy was found corrupt'),
  );
  const other = new LocalRepository(repository.root); // another process
  expect(await other.hasChunk(a.id)).toBe(false);
  expect(await other.hasChunk(b.id)).toBe(true);

  const good = { id: a.id, frame: Buffer.from('good frame of qa') };
  expect(await repository.putChunks([good, b])).toEqual([a.id]);
  expect(await packFiles()).toHaveLength(2);
  expect(await repository.getChunk(a.id)).toEqual(good.frame);
  expect(await new LocalRepository(repository.root).getChunk(a.id)).toEqual(good.frame);
});
