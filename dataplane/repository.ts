import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ChunkMissingError, ManifestMissingError } from './errors';
import type { ChunkRef, Manifest } from './manifest';
import { ManifestSchema, ZERO_CHUNK } from './manifest';

/**
 * A region's content-addressed store of compressed chunks, snapshot manifests and capture journals. The embedded
 * adapter is a local directory; an object-storage adapter implements the same port.
 */
export interface Repository {
  hasChunk(id: string): Promise<boolean>;
  /** Stores a chunk frame under its id; true if written, false if it was already there (idempotent). */
  putChunk(id: string, frame: Buffer): Promise<boolean>;
  /** The stored frame; ChunkMissingError if absent. */
  getChunk(id: string): Promise<Buffer>;
  /** Compressed size of a stored chunk; ChunkMissingError if absent. */
  chunkStoredSize(id: string): Promise<number>;
  /** Removes a chunk; no error if absent. */
  deleteChunk(id: string): Promise<void>;
  listChunkIds(): AsyncIterable<string>;
  /** Every stored chunk with its size and last write or touch; never a partial write. */
  listChunks(): AsyncIterable<StoredChunk>;
  /**
   * Marks a stored chunk as just used (its modifiedAt becomes now), so garbage collection's grace period protects it;
   * false, and nothing done, if the chunk is absent (the caller must then store it).
   */
  touchChunk(id: string): Promise<boolean>;
  /**
   * Garbage collection's delete: removes a chunk unless it was written or touched at or after `cutoff`. Atomic
   * against touchChunk: a touch either lands first (the chunk is kept: 'young') or finds the chunk gone (false).
   */
  deleteChunkIfOlder(id: string, cutoff: Date): Promise<'deleted' | 'young' | 'missing'>;
  writeManifest(manifest: Manifest): Promise<void>;
  /** The snapshot's manifest, validated with ManifestSchema; ManifestMissingError if absent. */
  readManifest(snapshotId: string): Promise<Manifest>;
  deleteManifest(snapshotId: string): Promise<void>;
  listManifestIds(): Promise<string[]>;
  /** Appends refs to a snapshot's named chunk-list journal, used to resume a capture; durable when this resolves. */
  appendJournal(snapshotId: string, name: string, refs: ChunkRef[]): Promise<void>;
  /** The refs of a journal, in order; [] if absent. A torn last line (crash during an append) is left out. */
  readJournal(snapshotId: string, name: string): Promise<ChunkRef[]>;
  /** Keeps the first `entries` refs of a journal. */
  truncateJournal(snapshotId: string, name: string, entries: number): Promise<void>;
  /** Names of a snapshot's journals. */
  listJournals(snapshotId: string): Promise<string[]>;
  /** Snapshots that have a staging area (journals). */
  listStagingIds(): Promise<string[]>;
  /** Removes a snapshot's staging area; no error if absent. */
  dropStaging(snapshotId: string): Promise<void>;
}

/** A chunk as listed: its compressed size and when it was last written or touched. */
export interface StoredChunk {
  id: string;
  storedBytes: number;
  modifiedAt: Date;
}

/** Each journal line is a 64-hex id or the zero marker, padded to a fixed width so truncation is arithmetic. */
const JOURNAL_LINE = 65;
const CHUNK_ID = /^[0-9a-f]{64}$/;
const CHUNK_FILE = /^[0-9a-f]{64}\.zst$/;

/**
 * The repository in a local directory. Layout: `chunks/<2 hex>/<id>.zst`, `manifests/<snapshot>.json`,
 * `staging/<snapshot>/<journal>.refs`, `tmp/`. Chunks and manifests are written to a unique file in `tmp/`, fsynced
 * and renamed into place, so a reader never sees a partial file; the manifests directory is fsynced after a rename
 * too (one per snapshot), chunk directories are not (that would double the fsyncs per chunk).
 */
export class LocalRepository implements Repository {
  /** Directories known to exist, so a chunk write costs no mkdir calls after the first in its directory. */
  private readonly madeDirs = new Set<string>();

  constructor(readonly root: string) {}

  async hasChunk(id: string): Promise<boolean> {
    return exists(this.chunkPath(id));
  }

  async putChunk(id: string, frame: Buffer): Promise<boolean> {
    const target = this.chunkPath(id);
    if (await exists(target)) return false;
    await this.writeAtomically(target, frame);
    return true;
  }

  async getChunk(id: string): Promise<Buffer> {
    return fs.readFile(this.chunkPath(id)).catch((error: unknown) => {
      throw isNotFound(error) ? new ChunkMissingError(id) : error;
    });
  }

  async chunkStoredSize(id: string): Promise<number> {
    const stat = await fs.stat(this.chunkPath(id)).catch((error: unknown) => {
      throw isNotFound(error) ? new ChunkMissingError(id) : error;
    });
    return stat.size;
  }

  async deleteChunk(id: string): Promise<void> {
    await fs.rm(this.chunkPath(id), { force: true });
  }

  /** Chunk files only: writes in progress are temp files in `tmp/`, never in `chunks/`. */
  async *listChunkIds(): AsyncIterable<string> {
    for (const prefix of await listDir(path.join(this.root, 'chunks'))) {
      for (const file of await listDir(path.join(this.root, 'chunks', prefix))) {
        if (CHUNK_FILE.test(file)) yield file.slice(0, -'.zst'.length);
      }
    }
  }

  async *listChunks(): AsyncIterable<StoredChunk> {
    for await (const id of this.listChunkIds()) {
      const stat = await fs.stat(this.chunkPath(id)).catch((error: unknown) => {
        if (isNotFound(error)) return null; // deleted since the directory was read
        throw error;
      });
      if (stat) yield { id, storedBytes: stat.size, modifiedAt: stat.mtime };
    }
  }

  async touchChunk(id: string): Promise<boolean> {
    const now = new Date();
    return fs.utimes(this.chunkPath(id), now, now).then(
      () => true,
      (error: unknown) => {
        if (isNotFound(error)) return false;
        throw error;
      },
    );
  }

  /**
   * Moves the chunk out of `chunks/` first, so a concurrent touch either happened before (seen in the moved file's
   * mtime: the chunk is moved back) or finds no chunk. A read during the move misses the chunk; only a just-touched
   * chunk is moved back, and the snapshot that touched it reads it much later (verification).
   */
  async deleteChunkIfOlder(id: string, cutoff: Date): Promise<'deleted' | 'young' | 'missing'> {
    const target = this.chunkPath(id);
    const tmpDir = path.join(this.root, 'tmp');
    await this.makeDir(tmpDir);
    const moved = path.join(tmpDir, randomUUID());
    try {
      await fs.rename(target, moved);
    } catch (error) {
      if (isNotFound(error)) return 'missing';
      throw error;
    }
    if ((await fs.stat(moved)).mtime >= cutoff) {
      await fs.rename(moved, target); // same content if a writer stored the chunk again meanwhile
      return 'young';
    }
    await fs.rm(moved);
    return 'deleted';
  }

  async writeManifest(manifest: Manifest): Promise<void> {
    const valid = ManifestSchema.parse(manifest);
    const target = this.manifestPath(valid.snapshotId);
    await this.writeAtomically(target, Buffer.from(JSON.stringify(valid)));
    await syncDir(path.dirname(target));
  }

  async readManifest(snapshotId: string): Promise<Manifest> {
    const text = await fs.readFile(this.manifestPath(snapshotId), 'utf8').catch((error: unknown) => {
      throw isNotFound(error) ? new ManifestMissingError(snapshotId) : error;
    });
    return ManifestSchema.parse(JSON.parse(text));
  }

  async deleteManifest(snapshotId: string): Promise<void> {
    await fs.rm(this.manifestPath(snapshotId), { force: true });
  }

  async listManifestIds(): Promise<string[]> {
    const files = await listDir(path.join(this.root, 'manifests'));
    return files.filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -'.json'.length));
  }

  async appendJournal(snapshotId: string, name: string, refs: ChunkRef[]): Promise<void> {
    const file = this.journalPath(snapshotId, name);
    await fs.mkdir(path.dirname(file), { recursive: true });
    const handle = await fs.open(file, 'a');
    let created: boolean;
    try {
      created = (await handle.stat()).size === 0;
      await handle.write(refs.map((ref) => `${ref.padEnd(JOURNAL_LINE - 1)}\n`).join(''));
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (created) await syncDir(path.dirname(file));
  }

  async readJournal(snapshotId: string, name: string): Promise<ChunkRef[]> {
    const text = await fs.readFile(this.journalPath(snapshotId, name), 'utf8').catch((error: unknown) => {
      if (isNotFound(error)) return '';
      throw error;
    });
    const lines = text.split('\n');
    lines.pop(); // text ends with a newline; a torn last line (no newline) is dropped with it
    return lines.map((line, i) => {
      const ref = line.trimEnd();
      if (line.length !== JOURNAL_LINE - 1 || !(ref === ZERO_CHUNK || CHUNK_ID.test(ref))) {
        throw new Error(`journal ${name} of snapshot ${snapshotId} is damaged at line ${i + 1}`);
      }
      return ref;
    });
  }

  async truncateJournal(snapshotId: string, name: string, entries: number): Promise<void> {
    const file = this.journalPath(snapshotId, name);
    const size = await fs.stat(file).then(
      (stat) => stat.size,
      (error: unknown) => {
        if (isNotFound(error)) return 0;
        throw error;
      },
    );
    // Only ever shorten: truncating past the end would extend the file with NUL bytes.
    if (entries * JOURNAL_LINE < size) await fs.truncate(file, entries * JOURNAL_LINE);
  }

  async listJournals(snapshotId: string): Promise<string[]> {
    const files = await listDir(path.join(this.root, 'staging', snapshotId));
    return files.filter((f) => f.endsWith('.refs')).map((f) => f.slice(0, -'.refs'.length));
  }

  async listStagingIds(): Promise<string[]> {
    return listDir(path.join(this.root, 'staging'));
  }

  async dropStaging(snapshotId: string): Promise<void> {
    await fs.rm(path.join(this.root, 'staging', snapshotId), { recursive: true, force: true });
  }

  private async makeDir(dir: string): Promise<void> {
    if (this.madeDirs.has(dir)) return;
    await fs.mkdir(dir, { recursive: true });
    this.madeDirs.add(dir);
  }

  private chunkPath(id: string): string {
    if (!CHUNK_ID.test(id)) throw new Error(`not a chunk id: ${id}`);
    return path.join(this.root, 'chunks', id.slice(0, 2), `${id}.zst`);
  }

  private manifestPath(snapshotId: string): string {
    return path.join(this.root, 'manifests', `${safeName(snapshotId)}.json`);
  }

  private journalPath(snapshotId: string, name: string): string {
    return path.join(this.root, 'staging', safeName(snapshotId), `${safeName(name)}.refs`);
  }

  private async writeAtomically(target: string, data: Buffer): Promise<void> {
    const tmpDir = path.join(this.root, 'tmp');
    await this.makeDir(tmpDir);
    await this.makeDir(path.dirname(target));
    const tmp = path.join(tmpDir, randomUUID());
    try {
      const handle = await fs.open(tmp, 'wx');
      try {
        await handle.writeFile(data);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fs.rename(tmp, target);
    } catch (error) {
      await fs.rm(tmp, { force: true });
      throw error;
    }
  }
}

function safeName(name: string): string {
  if (!/^[A-Za-z0-9._-]+$/.test(name) || name.startsWith('.')) throw new Error(`unsafe repository name: ${name}`);
  return name;
}

function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/** Makes renames and new files in `dir` durable. */
async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}

async function listDir(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch((error: unknown) => {
    if (isNotFound(error)) return [];
    throw error;
  });
}
