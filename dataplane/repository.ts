import { blake3 } from '@napi-rs/blake-hash';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  ChunkCorruptError,
  ChunkMissingError,
  ManifestCorruptError,
  ManifestMissingError,
  StorageFullError,
} from './errors';
import {
  DIRECT_IO_BLOCK,
  alignDown,
  alignUp,
  isNotFound,
  listDir,
  neighbourRuns,
  openDirect,
  syncDir,
  withHandle,
  writeExactly,
  writevExactly,
} from './files';
import type { ChunkRef, Manifest } from './manifest';
import { ManifestSchema, ZERO_CHUNK } from './manifest';
import { sharedBuffer, startsAligned, workingMemory } from './memory';
import type { PackEntry } from './pack';
import { PackDamagedError, layOutPack, readAt, readPackIndex } from './pack';

/**
 * A region's content-addressed store of compressed chunks, snapshot manifests and capture journals. The embedded
 * adapter is a local directory; an object-storage adapter implements the same port.
 */
export interface Repository {
  hasChunk(id: string): Promise<boolean>;
  /**
   * Stores chunk frames under their ids, together (one pack in the local adapter): durable when this resolves.
   * Ids already stored, or repeated in `chunks`, are skipped; returns the ids written (idempotent).
   */
  putChunks(chunks: { id: string; frame: Buffer }[]): Promise<string[]>;
  /** The stored frame; ChunkMissingError if absent, ChunkCorruptError if only quarantined copies are stored. */
  getChunk(id: string): Promise<Buffer>;
  /**
   * The stored frames of `ids`, in order (read together: one open per pack); as getChunk for an absent one. With
   * `into` (page-aligned memory, such as workingMemory hands out), the frames are read into it and returned as views
   * of it, as far as they fit (the rest, and a frame found again after garbage collection moved it, come in buffers
   * of their own). Frames that neighbour in storage are read together, in whole direct I/O blocks, so `into` needs
   * up to 2 DIRECT_IO_BLOCKs more per such run than the frames' bytes.
   */
  getChunks(ids: string[], into?: Buffer): Promise<Buffer[]>;
  /** Compressed size of a stored chunk; as getChunk if absent. */
  chunkStoredSize(id: string): Promise<number>;
  /**
   * What is recorded of each chunk of `ids`, without reading any frame: see ChunkStatus. Up to date with what other
   * processes stored, removed and quarantined before the call.
   */
  inspectChunks(ids: string[]): Promise<ChunkStatus[]>;
  /** Every stored copy of every chunk with its size and last write or touch; never a partial write. */
  listChunks(): AsyncIterable<StoredChunk>;
  /**
   * Marks stored chunks as just used (their modifiedAt becomes now), so garbage collection's grace period protects
   * them; for each id, false, and nothing done, if the chunk is absent (the caller must then store it).
   */
  touchChunks(ids: string[]): Promise<boolean[]>;
  /**
   * Garbage collection's delete: removes every stored copy of the chunks `ids` unless it was written or touched at or
   * after `cutoff` (then it is counted in keptByGrace). Atomic against touchChunks: a touch either lands first (the
   * chunk is kept) or finds the chunk gone (false). Other chunks stay readable throughout.
   */
  removeChunks(ids: Iterable<string>, cutoff: Date): Promise<RemoveResult>;
  /** Stores a snapshot's manifest (durable when this resolves); returns the manifestDigest of the bytes stored. */
  writeManifest(manifest: Manifest): Promise<string>;
  /**
   * The snapshot's manifest, validated with ManifestSchema; ManifestMissingError if absent. ManifestCorruptError if
   * it is not a valid manifest of that snapshot, or if `digest` (what writeManifest returned) is given and the stored
   * bytes do not hash to it.
   */
  readManifest(snapshotId: string, digest?: string | null): Promise<Manifest>;
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
  /**
   * Marks the stored copy of a chunk that was found corrupt as bad, durably: from then on lookups (hasChunk,
   * touchChunks, putChunks' dedup check) and reads use another copy, or treat the chunk as absent, so the next
   * capture that produces the content stores it again. No error if the chunk is not stored.
   */
  quarantineChunk(id: string): Promise<void>;
}

/** What removeChunks did: chunk copies removed, their compressed bytes, and copies kept as recently used. */
export interface RemoveResult {
  removed: number;
  bytesFreed: number;
  keptByGrace: number;
}

/** What the repository records of a chunk (see Repository.inspectChunks). */
export interface ChunkStatus {
  /** A copy not found corrupt is stored: getChunks would read it. */
  readable: boolean;
  /**
   * Some copy of the chunk was quarantined (found corrupt), at any time: a readable copy is then one stored since,
   * by a capture whose own verification may not have passed.
   */
  quarantined: boolean;
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
const PACK_FILE = /^[0-9a-f-]{36}\.pack$/;

/** Where a chunk's frame is: a pack file name and the frame's place in it. */
interface Location extends PackEntry {
  pack: string;
}

/**
 * The repository in a local directory. Layout: `packs/<uuid>.pack` (compressed chunks, see pack.ts),
 * `manifests/<snapshot>.json`, `staging/<snapshot>/<journal>.refs`, `tmp/`. Packs and manifests are written to a
 * unique file in `tmp/`, fsynced and renamed into place (then the directory is fsynced), so a reader never sees a
 * partial file. A write that finds the file system full (or the quota used up) fails with StorageFullError.
 *
 * Chunks are found through an in-memory index of every pack's entries, loaded on first use. Other processes (the
 * worker, garbage collection, the CLI) add and remove packs, so a lookup that misses reloads the index when the packs
 * directory changed since (one stat; only new packs are read), and a read whose pack vanished (garbage collection
 * rewrote it) reloads and retries. A chunk's modifiedAt is its pack's mtime: touching a chunk touches its pack.
 * Copies found corrupt are listed in `quarantine` (appended, fsynced; part of the reload's stamp) and left out of the
 * index; listChunks still lists them, so garbage collection may remove them as it would any copy.
 */
export class LocalRepository implements Repository {
  /** Directories known to exist, so a write costs no mkdir calls after the first in its directory. */
  private readonly madeDirs = new Set<string>();
  /** Entries of every known pack, by pack file name. */
  private readonly packs = new Map<string, PackEntry[]>();
  /** Where each stored chunk is (one copy, when a chunk is stored twice). */
  private readonly index = new Map<string, Location>();
  /** Packs whose index cannot be read, so they are not read again. */
  private readonly damagedPacks = new Set<string>();
  /** The packs directory's mtime and size when the index was last loaded. */
  private loadedStamp: string | undefined;
  /** Quarantined chunk copies, as `<pack> <id>` (the lines of the `quarantine` file). */
  private quarantined = new Set<string>();
  /** The last index load; loads run one after the other. */
  private loading: Promise<void> | undefined;

  constructor(readonly root: string) {}

  async hasChunk(id: string): Promise<boolean> {
    return (await this.locate(id)) !== undefined;
  }

  async putChunks(chunks: { id: string; frame: Buffer }[]): Promise<string[]> {
    for (const { id } of chunks) if (!CHUNK_ID.test(id)) throw new Error(`not a chunk id: ${id}`);
    const stored = await this.locateAll(chunks.map((c) => c.id));
    const fresh = new Map<string, Buffer>();
    chunks.forEach(({ id, frame }, i) => {
      if (!fresh.has(id) && !stored[i]) fresh.set(id, frame);
    });
    if (fresh.size === 0) return [];
    await this.writePack([...fresh].map(([id, frame]) => ({ id, frame })));
    return [...fresh.keys()];
  }

  async getChunk(id: string): Promise<Buffer> {
    const frame = await this.withChunk(id, (location) =>
      this.readFrames(this.packPath(location.pack), [location]).then(([read]) => read!),
    );
    if (frame === undefined) throw this.absent(id);
    return frame;
  }

  async getChunks(ids: string[], into?: Buffer): Promise<Buffer[]> {
    const locations = (await this.locateAll(ids)).map((location, i) => {
      if (!location) throw this.absent(ids[i]!);
      return location;
    });
    const room = roomIn(into);
    const byPack = new Map<string, number[]>();
    locations.forEach((l, i) => byPack.set(l.pack, [...(byPack.get(l.pack) ?? []), i]));
    const frames: Buffer[] = [];
    await Promise.all(
      [...byPack].map(async ([pack, indexes]) => {
        try {
          const read = await this.readFrames(
            this.packPath(pack),
            indexes.map((i) => locations[i]!),
            room,
          );
          read.forEach((frame, k) => (frames[indexes[k]!] = frame));
        } catch (error) {
          if (!isNotFound(error)) throw error;
          // The pack was rewritten since the index was loaded: each chunk is looked up again.
          for (const i of indexes) frames[i] = await this.getChunk(ids[i]!);
        }
      }),
    );
    return frames;
  }

  async chunkStoredSize(id: string): Promise<number> {
    const location = await this.locate(id);
    if (!location) throw this.absent(id);
    return location.length;
  }

  /** The index is brought up to date first if the packs directory or the quarantine list changed (two stats). */
  async inspectChunks(ids: string[]): Promise<ChunkStatus[]> {
    await this.load(false);
    const quarantined = this.quarantinedIds();
    return ids.map((id) => ({ readable: this.index.has(id), quarantined: quarantined.has(id) }));
  }

  async *listChunks(): AsyncIterable<StoredChunk> {
    await this.load(true);
    for (const [pack, entries] of [...this.packs]) {
      const stat = await fs.stat(this.packPath(pack)).catch((error: unknown) => {
        if (isNotFound(error)) return null; // removed since the index was loaded
        throw error;
      });
      if (stat) for (const e of entries) yield { id: e.id, storedBytes: e.length, modifiedAt: stat.mtime };
    }
  }

  /** Touching a chunk touches its pack: each pack holding any of `ids` is touched once. */
  async touchChunks(ids: string[]): Promise<boolean[]> {
    const now = new Date();
    const packs = new Map<string, Promise<true>>();
    const touch = (pack: string): Promise<true> => {
      let touched = packs.get(pack);
      if (!touched) {
        touched = fs.utimes(this.packPath(pack), now, now).then(() => true);
        packs.set(pack, touched);
      }
      return touched;
    };
    const known = await this.locateAll(ids);
    return Promise.all(
      ids.map(async (id, i) => (known[i] && (await this.withChunk(id, (location) => touch(location.pack)))) ?? false),
    );
  }

  /**
   * Per pack holding any of `ids`: a pack written or touched at or after the cutoff is left alone; otherwise the
   * chunks to keep are first written to a new pack (so they never disappear), then the old pack is moved out of
   * `packs/`, its mtime checked again (a touch that landed meanwhile moves it back) and deleted.
   */
  async removeChunks(ids: Iterable<string>, cutoff: Date): Promise<RemoveResult> {
    const doomed = new Set(ids);
    const result: RemoveResult = { removed: 0, bytesFreed: 0, keptByGrace: 0 };
    await this.load(true);
    for (const [pack, entries] of [...this.packs]) {
      const drop = entries.filter((e) => doomed.has(e.id));
      if (drop.length === 0) continue;
      const file = this.packPath(pack);
      const stat = await fs.stat(file).catch((error: unknown) => {
        if (isNotFound(error)) return null;
        throw error;
      });
      if (!stat) continue; // removed by someone else
      if (stat.mtime >= cutoff) {
        result.keptByGrace += drop.length;
        continue;
      }
      const keep = entries.filter((e) => !doomed.has(e.id));
      if (keep.length > 0) {
        const frames = await this.readFrames(file, keep);
        await this.writePack(keep.map((e, i) => ({ id: e.id, frame: frames[i]! })));
      }
      const moved = path.join(this.root, 'tmp', randomUUID());
      await this.makeDir(path.dirname(moved));
      try {
        await fs.rename(file, moved);
      } catch (error) {
        if (isNotFound(error)) continue;
        throw error;
      }
      if ((await fs.stat(moved)).mtime >= cutoff) {
        await fs.rename(moved, file); // touched since the check: the pack stays whole
        result.keptByGrace += drop.length;
        continue;
      }
      await fs.rm(moved);
      this.forgetPack(pack);
      result.removed += drop.length;
      result.bytesFreed += drop.reduce((sum, e) => sum + e.length, 0);
    }
    if (result.removed > 0) await syncDir(this.packsDir());
    return result;
  }

  async quarantineChunk(id: string): Promise<void> {
    const location = await this.locate(id);
    if (!location) return;
    const line = `${location.pack} ${id}`;
    const file = path.join(this.root, 'quarantine');
    await this.spaceFor(line.length + 1, async () => {
      await withHandle(fs.open(file, 'a'), async (handle) => {
        await handle.write(`${line}\n`);
        await handle.sync();
      });
    });
    await syncDir(this.root);
    this.quarantined.add(line);
    this.rebuildIndex();
  }

  /** Where a chunk's frame is stored (pack file, offset, length), for tools that inspect or damage it on purpose. */
  async chunkLocation(id: string): Promise<{ file: string; offset: number; length: number } | undefined> {
    const location = await this.locate(id);
    return location && { file: this.packPath(location.pack), offset: location.offset, length: location.length };
  }

  async writeManifest(manifest: Manifest): Promise<string> {
    const valid = ManifestSchema.parse(manifest);
    const target = this.manifestPath(valid.snapshotId);
    const bytes = Buffer.from(JSON.stringify(valid));
    await this.writeAtomically(target, bytes.length, (tmp) =>
      withHandle(fs.open(tmp, 'wx'), async (handle) => {
        await writeExactly(handle, bytes, 0);
        await handle.sync();
      }),
    );
    await syncDir(path.dirname(target));
    return manifestDigest(bytes);
  }

  async readManifest(snapshotId: string, digest?: string | null): Promise<Manifest> {
    const bytes = await fs.readFile(this.manifestPath(snapshotId)).catch((error: unknown) => {
      throw isNotFound(error) ? new ManifestMissingError(snapshotId) : error;
    });
    return parseManifest(snapshotId, bytes, digest);
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
    await this.spaceFor(refs.length * JOURNAL_LINE, async () => {
      await fs.mkdir(path.dirname(file), { recursive: true });
      const handle = await fs.open(file, 'a');
      let created: boolean;
      let size: number | undefined;
      try {
        size = (await handle.stat()).size;
        created = size === 0;
        await handle.write(refs.map((ref) => `${ref.padEnd(JOURNAL_LINE - 1)}\n`).join(''));
        await handle.sync();
      } catch (error) {
        // No partial line is left by a failed append (the file's size is known once the append started).
        if (size !== undefined) await handle.truncate(size).catch(() => undefined);
        throw error;
      } finally {
        await handle.close();
      }
      if (created) await syncDir(path.dirname(file));
    });
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

  /** The chunk's location, reloading the index once if it is not known (another process may have stored it). */
  private async locate(id: string): Promise<Location | undefined> {
    const known = this.index.get(id);
    if (known) return known;
    await this.load(false);
    return this.index.get(id);
  }

  /** The locations of `ids` (undefined for absent ones), reloading the index at most once for all of them. */
  private async locateAll(ids: string[]): Promise<(Location | undefined)[]> {
    if (ids.some((id) => !this.index.has(id))) await this.load(false);
    return ids.map((id) => this.index.get(id));
  }

  /**
   * Runs `use` on the chunk's location; undefined if the chunk is absent. A pack that vanished since the index was
   * loaded (rewritten by garbage collection) makes it reload and try the chunk's new location once.
   */
  private async withChunk<T>(id: string, use: (location: Location) => Promise<T>): Promise<T | undefined> {
    for (let attempt = 0; ; attempt++) {
      const location = await this.locate(id);
      if (!location) return undefined;
      try {
        return await use(location);
      } catch (error) {
        if (!isNotFound(error) || attempt > 0) throw error;
        this.forgetPack(location.pack);
        await this.load(true);
      }
    }
  }

  /**
   * Brings the index up to date with `packs/`: reads the index of every pack not known yet and forgets removed ones.
   * Without `always`, does nothing when the directory has not changed since the last load. One load at a time.
   */
  /**
   * Loads run one after the other. A lookup (not `always`) joins a load in flight instead of queueing another: at
   * worst it misses a pack written in the last moments, and the chunk is stored again (a harmless duplicate).
   */
  private load(always: boolean): Promise<void> {
    if (!always && this.loading) return this.loading;
    const run = (this.loading ?? Promise.resolve()).then(() => this.reload(always));
    const tracked: Promise<void> = run
      .catch(() => undefined)
      .finally(() => {
        if (this.loading === tracked) this.loading = undefined;
      });
    this.loading = tracked;
    return run;
  }

  private async reload(always: boolean): Promise<void> {
    const stat = await fs.stat(this.packsDir()).catch((error: unknown) => {
      if (isNotFound(error)) return null;
      throw error;
    });
    const quarantine = await fs.readFile(path.join(this.root, 'quarantine'), 'utf8').catch((error: unknown) => {
      if (isNotFound(error)) return '';
      throw error;
    });
    const stamp = `${stat ? `${stat.mtimeMs}/${stat.size}` : 'none'}/${quarantine.length}`;
    if (!always && stamp === this.loadedStamp) return;
    const quarantined = new Set(quarantine.split('\n').filter((line) => line !== ''));
    if (quarantined.size !== this.quarantined.size) {
      this.quarantined = quarantined;
      this.rebuildIndex();
    }
    const present = new Set((await listDir(this.packsDir())).filter((f) => PACK_FILE.test(f)));
    for (const pack of [...this.packs.keys()]) if (!present.has(pack)) this.forgetPack(pack);
    for (const pack of present) {
      if (this.packs.has(pack)) continue;
      const entries = await this.readIndex(pack);
      if (entries) this.addPack(pack, entries);
    }
    this.loadedStamp = stamp;
  }

  /**
   * A pack's entries; undefined if it was removed meanwhile, or if its index is damaged: its chunks then count as
   * missing (verification reports them) rather than making the whole repository unreadable.
   */
  private async readIndex(pack: string): Promise<PackEntry[] | undefined> {
    if (this.damagedPacks.has(pack)) return undefined;
    let handle;
    try {
      handle = await fs.open(this.packPath(pack), 'r');
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
    try {
      return await readPackIndex(handle, (await handle.stat()).size, pack);
    } catch (error) {
      if (!(error instanceof PackDamagedError)) throw error;
      this.damagedPacks.add(pack);
      return undefined;
    } finally {
      await handle.close();
    }
  }

  private addPack(pack: string, entries: PackEntry[]): void {
    this.packs.set(pack, entries);
    for (const e of entries) {
      if (!this.index.has(e.id) && !this.quarantined.has(`${pack} ${e.id}`)) this.index.set(e.id, { ...e, pack });
    }
  }

  /** Why a chunk cannot be read: its only copies are quarantined (ChunkCorrupt), or it is not stored (ChunkMissing). */
  private absent(id: string): Error {
    return unreadableChunkError(id, this.quarantinedIds().has(id));
  }

  /** Ids of the chunks that have a quarantined copy. */
  private quarantinedIds(): Set<string> {
    return new Set([...this.quarantined].map((line) => line.slice(line.indexOf(' ') + 1)));
  }

  /** The index again from every known pack, leaving quarantined copies out. */
  private rebuildIndex(): void {
    this.index.clear();
    for (const [pack, entries] of [...this.packs]) this.addPack(pack, entries);
  }

  /** Drops a pack from the index; its chunks that another known pack also holds point there instead. */
  private forgetPack(pack: string): void {
    const entries = this.packs.get(pack);
    if (!entries) return;
    this.packs.delete(pack);
    const orphans = new Set(entries.filter((e) => this.index.get(e.id)?.pack === pack).map((e) => e.id));
    for (const id of orphans) this.index.delete(id);
    if (orphans.size === 0) return;
    for (const [other, otherEntries] of this.packs) {
      for (const e of otherEntries)
        if (orphans.has(e.id) && !this.index.has(e.id) && !this.quarantined.has(`${other} ${e.id}`))
          this.index.set(e.id, { ...e, pack: other });
    }
  }

  /**
   * Writes a new pack atomically (temp file, fsync, rename, fsync of `packs/`) and adds it to the index. The pack is
   * written with direct I/O: storing a fleet's snapshots does not fill the page cache (evicting what the machine's
   * guests use), and verification then reads back what the device holds. Runs of frames in working memory are written
   * from where they are, in whole blocks; only the last, partial block of each run (zero-padded) and runs elsewhere in
   * memory are copied.
   */
  private async writePack(chunks: { id: string; frame: Buffer }[]): Promise<void> {
    const layout = layOutPack(chunks);
    const pieces = [...layout.runs.map((run) => run.bytes), layout.tail].map((bytes) => {
      const inPlace = startsAligned(bytes, DIRECT_IO_BLOCK) ? alignDown(bytes.length) : 0;
      return { inPlace: bytes.subarray(0, inPlace), copied: bytes.subarray(inPlace) };
    });
    const pack = `${randomUUID()}.pack`;
    await this.makeDir(this.packsDir());
    const copyBytes = pieces.reduce((sum, piece) => sum + alignUp(piece.copied.length), 0);
    await workingMemory.use(copyBytes, async (room) => {
      room.fill(0);
      const blocks: Buffer[] = [];
      let used = 0;
      for (const { inPlace, copied } of pieces) {
        if (inPlace.length > 0) blocks.push(inPlace);
        if (copied.length === 0) continue;
        copied.copy(room, used);
        blocks.push(room.subarray(used, (used += alignUp(copied.length))));
      }
      await this.writeAtomically(this.packPath(pack), layout.tailOffset + layout.tail.length, async (tmp) => {
        const { O_WRONLY, O_CREAT, O_EXCL } = fs.constants;
        await withHandle(openDirect(tmp, O_WRONLY | O_CREAT | O_EXCL), async (handle) => {
          await writevExactly(handle, blocks, 0);
          await handle.truncate(layout.tailOffset + layout.tail.length);
          await handle.sync();
        });
      });
    });
    await syncDir(this.packsDir());
    this.addPack(pack, layout.entries);
  }

  /**
   * The frames of `entries`, read from one pack file. Each run of frames that follow each other in the pack (across
   * the padding before an aligned run too) is read with one read (all runs at once), by direct I/O, of the whole
   * blocks around it, into memory from `room` (handed out before the first read, in the order of `entries`); the
   * frames are views of those blocks.
   */
  private async readFrames(
    file: string,
    entries: PackEntry[],
    room: (bytes: number) => Buffer = roomIn(),
  ): Promise<Buffer[]> {
    const runs = [
      ...neighbourRuns(entries.length, (k) => {
        const gap = entries[k + 1]!.offset - (entries[k]!.offset + entries[k]!.length);
        return gap >= 0 && gap < DIRECT_IO_BLOCK;
      }),
    ].map(([first, last]) => {
      const start = alignDown(entries[first]!.offset);
      const end = alignUp(entries[last]!.offset + entries[last]!.length);
      return { first, last, start, into: room(end - start) };
    });
    return withHandle(openDirect(file, fs.constants.O_RDONLY), async (handle) => {
      const frames: Buffer[] = [];
      await Promise.all(
        runs.map(async ({ first, last, start, into }) => {
          const read = await readAt(handle, start, into.length, into);
          for (let k = first; k <= last; k++) {
            const at = entries[k]!.offset - start;
            frames[k] = read.subarray(at, Math.min(at + entries[k]!.length, read.length));
          }
        }),
      );
      return frames;
    });
  }

  private packsDir(): string {
    return path.join(this.root, 'packs');
  }

  private packPath(pack: string): string {
    return path.join(this.packsDir(), pack);
  }

  private async makeDir(dir: string): Promise<void> {
    if (this.madeDirs.has(dir)) return;
    await fs.mkdir(dir, { recursive: true });
    this.madeDirs.add(dir);
  }

  private manifestPath(snapshotId: string): string {
    return path.join(this.root, 'manifests', `${safeName(snapshotId)}.json`);
  }

  private journalPath(snapshotId: string, name: string): string {
    return path.join(this.root, 'staging', safeName(snapshotId), `${safeName(name)}.refs`);
  }

  /**
   * Has `write` create and fill a temp file (durably) of `bytes` bytes, then renames it to `target`; the temp file
   * goes on failure.
   */
  private async writeAtomically(target: string, bytes: number, write: (tmp: string) => Promise<void>): Promise<void> {
    const tmpDir = path.join(this.root, 'tmp');
    const tmp = path.join(tmpDir, randomUUID());
    await this.spaceFor(bytes, async () => {
      await this.makeDir(tmpDir);
      await this.makeDir(path.dirname(target));
      try {
        await write(tmp);
        await fs.rename(tmp, target);
      } catch (error) {
        await fs.rm(tmp, { force: true });
        throw error;
      }
    });
  }

  /** Runs a write of `bytes` bytes: a full file system or quota (ENOSPC, EDQUOT) is a StorageFullError. */
  private async spaceFor<T>(bytes: number, write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') throw new StorageFullError(this.root, bytes);
      throw error;
    }
  }
}

/** Why a chunk with no readable copy cannot be read: its copies were quarantined (ChunkCorrupt), or none is stored. */
export function unreadableChunkError(id: string, quarantined: boolean): ChunkCorruptError | ChunkMissingError {
  return quarantined
    ? new ChunkCorruptError(id, 'quarantined: its stored copy was found corrupt')
    : new ChunkMissingError(id);
}

/**
 * Room for direct I/O reads of `bytes` (whole blocks): views of `into`, one after the other, while they fit (each
 * starts on a block boundary when `into` does); then buffers of their own.
 */
function roomIn(into?: Buffer): (bytes: number) => Buffer {
  let used = 0;
  return (bytes) => {
    if (!into || used + bytes > into.length) return sharedBuffer(bytes);
    used += bytes;
    return into.subarray(used - bytes, used);
  };
}

/** The digest of a manifest's stored bytes that the catalog records: 64-hex BLAKE3, as chunk ids are. */
export function manifestDigest(bytes: Buffer): string {
  return blake3(bytes).toString('hex');
}

/**
 * A stored manifest's bytes as the snapshot's manifest: checked against `digest` when the caller has one, then
 * parsed and validated; any failure is a ManifestCorruptError (the same bytes never become valid by retrying).
 */
export function parseManifest(snapshotId: string, bytes: Buffer, digest?: string | null): Manifest {
  if (digest && manifestDigest(bytes) !== digest) {
    throw new ManifestCorruptError(
      snapshotId,
      `its bytes do not match the digest ${digest} recorded when it was written`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new ManifestCorruptError(snapshotId, `not valid JSON: ${(error as Error).message}`);
  }
  const parsed = ManifestSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ManifestCorruptError(
      snapshotId,
      `not a valid manifest: ${issue.path.join('.') || 'root'}: ${issue.message}`,
    );
  }
  if (parsed.data.snapshotId !== snapshotId) {
    throw new ManifestCorruptError(snapshotId, `it names snapshot ${parsed.data.snapshotId}`);
  }
  return parsed.data;
}

function safeName(name: string): string {
  if (!/^[A-Za-z0-9._-]+$/.test(name) || name.startsWith('.')) throw new Error(`unsafe repository name: ${name}`);
  return name;
}
