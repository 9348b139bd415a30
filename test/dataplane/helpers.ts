import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { ChunkPool, ChunkRef, Manifest, Repository } from '../../dataplane';
import { scanDisk, storeChunks, withImageFile } from '../../dataplane';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A fresh directory under the OS temp dir; remove it in afterAll. */
export function makeTempDir(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'dataplane-'));
}

/** A real ext4 image of `sizeMiB` MiB holding a copy of `sourceDir` (the rest of the filesystem is empty). */
export async function makeExt4Image(file: string, sizeMiB: number, sourceDir: string): Promise<void> {
  await promisify(execFile)('/usr/sbin/mke2fs', ['-q', '-t', 'ext4', '-d', sourceDir, file, `${sizeMiB}M`]);
}

/** SHA-256 of a whole file, to compare a restore with its source. */
export async function fileSha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The refs of a whole scan of `file` (or of its tail from `fromChunk`). */
export async function scanRefs(pool: ChunkPool, file: string, chunkSize: number, fromChunk = 0): Promise<ChunkRef[]> {
  const { size } = await fs.stat(file);
  const refs: ChunkRef[] = [];
  await withImageFile(file, (disk) =>
    scanDisk({ disk, sizeBytes: size, chunkSize, pool, fromChunk, onChunks: (_, r) => void refs.push(...r) }),
  );
  return refs;
}

/** A manifest with placeholder ownership fields around the given disks. */
export function manifestOf(snapshotId: string, disks: Manifest['disks']): Manifest {
  return {
    version: 1,
    snapshotId,
    accountId: 'account',
    vmId: 'vm',
    region: 'TEST-1',
    parentSnapshotId: null,
    createdAt: new Date().toISOString(),
    vmConfig: { cpus: 2 },
    disks,
  };
}

/** Captures files as the snapshot stages do (scan, store, manifest) and returns the manifest and store stats. */
export async function capture(
  o: { pool: ChunkPool; repository: Repository; snapshotId: string; chunkSize: number },
  files: Record<string, string>,
) {
  const disks: Manifest['disks'] = [];
  const stored = { chunksWritten: 0, bytesWritten: 0, storedBytesWritten: 0 };
  for (const [name, file] of Object.entries(files)) {
    const { size } = await fs.stat(file);
    const refs = await scanRefs(o.pool, file, o.chunkSize);
    const s = await withImageFile(file, (disk) => storeChunks({ ...o, disk, sizeBytes: size, refs }));
    stored.chunksWritten += s.chunksWritten;
    stored.bytesWritten += s.bytesWritten;
    stored.storedBytesWritten += s.storedBytesWritten;
    disks.push({ name, sizeBytes: size, chunkSize: o.chunkSize, chunks: refs });
  }
  const manifest = manifestOf(o.snapshotId, disks);
  await o.repository.writeManifest(manifest);
  return { manifest, stored };
}
