import { blake3 } from '@napi-rs/blake-hash';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ChunkMissingError, LocalRepository, ManifestMissingError, ZERO_CHUNK } from '../../dataplane';
import { chunkFile, makeTempDir, manifestOf } from './helpers';

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

test('putChunk writes a chunk once, reports an existing one as not written, and leaves no temp file', async () => {
  const { id, frame } = chunk('a');
  expect(await repository.hasChunk(id)).toBe(false);
  expect(await repository.putChunk(id, frame)).toBe(true);
  expect(await repository.putChunk(id, Buffer.from('other bytes'))).toBe(false);
  expect(await repository.hasChunk(id)).toBe(true);
  expect(await repository.getChunk(id)).toEqual(frame);
  expect(await repository.chunkStoredSize(id)).toBe(frame.length);
  expect(await fs.readFile(chunkFile(repository.root, id))).toEqual(frame);
  expect(await tmpFiles()).toEqual([]);
});

test('concurrent puts of one chunk leave exactly that chunk and no temp files', async () => {
  const { id, frame } = chunk('b');
  await Promise.all(Array.from({ length: 8 }, () => repository.putChunk(id, frame)));
  expect(await repository.getChunk(id)).toEqual(frame);
  expect(await tmpFiles()).toEqual([]);
});

test('an absent chunk is ChunkMissing for getChunk and chunkStoredSize, and deleting it is not an error', async () => {
  const { id, frame } = chunk('c');
  await repository.putChunk(id, frame);
  await repository.deleteChunk(id);
  await repository.deleteChunk(id);
  await expect(repository.getChunk(id)).rejects.toThrow(ChunkMissingError);
  await expect(repository.chunkStoredSize(id)).rejects.toMatchObject({ type: 'ChunkMissing', chunkId: id });
});

test('listChunkIds yields every stored chunk', async () => {
  const chunks = ['d', 'e', 'f', 'g'].map(chunk);
  for (const { id, frame } of chunks) await repository.putChunk(id, frame);
  const listed: string[] = [];
  for await (const id of repository.listChunkIds()) listed.push(id);
  expect(listed.sort()).toEqual(chunks.map((c) => c.id).sort());
});

test('listChunks yields each chunk with its stored size and mtime, and no other file', async () => {
  const chunks = ['q', 'r'].map(chunk);
  for (const { id, frame } of chunks) await repository.putChunk(id, frame);
  const stray = path.join(path.dirname(chunkFile(repository.root, chunks[0]!.id)), 'stray.zst.tmp');
  await fs.writeFile(stray, 'not a chunk');
  const listed: { id: string; storedBytes: number; modifiedAt: Date }[] = [];
  for await (const stored of repository.listChunks()) listed.push(stored);
  const expected = [];
  for (const { id, frame } of chunks) {
    const { mtime } = await fs.stat(chunkFile(repository.root, id));
    expected.push({ id, storedBytes: frame.length, modifiedAt: mtime });
  }
  expect(listed.sort((a, b) => a.id.localeCompare(b.id))).toEqual(expected.sort((a, b) => a.id.localeCompare(b.id)));
});

test('touchChunk sets a chunk’s mtime to now, and reports an absent chunk without creating it', async () => {
  const { id, frame } = chunk('s');
  const file = chunkFile(repository.root, id);
  expect(await repository.touchChunk(id)).toBe(false);
  await expect(fs.access(file)).rejects.toThrow();
  await repository.putChunk(id, frame);
  await fs.utimes(file, new Date(2020, 0, 1), new Date(2020, 0, 1));
  const before = Date.now();
  expect(await repository.touchChunk(id)).toBe(true);
  expect((await fs.stat(file)).mtimeMs).toBeGreaterThanOrEqual(before - 1); // utimes may round down a hair
  expect(await repository.getChunk(id)).toEqual(frame);
});

test('deleteChunkIfOlder deletes an old chunk, keeps one touched since the cutoff, and reports an absent one', async () => {
  const old = chunk('t');
  const touched = chunk('u');
  const cutoff = new Date(Date.now() - 1000);
  for (const { id, frame } of [old, touched]) {
    await repository.putChunk(id, frame);
    await fs.utimes(chunkFile(repository.root, id), new Date(2020, 0, 1), new Date(2020, 0, 1));
  }
  await repository.touchChunk(touched.id);
  expect(await repository.deleteChunkIfOlder(old.id, cutoff)).toBe('deleted');
  expect(await repository.deleteChunkIfOlder(touched.id, cutoff)).toBe('young');
  expect(await repository.deleteChunkIfOlder(old.id, cutoff)).toBe('missing');
  expect(await repository.hasChunk(old.id)).toBe(false);
  expect(await repository.getChunk(touched.id)).toEqual(touched.frame);
  expect(await repository.touchChunk(old.id)).toBe(false); // a writer reusing it now stores it again
  expect(await tmpFiles()).toEqual([]);
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
  await expect(repository.readManifest('snap-bad')).rejects.toThrow();
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
