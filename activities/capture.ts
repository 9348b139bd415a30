import { DEFAULT_CHUNK_SIZE, WriteBehind, knownChunks, scanDisk, withDiskReader } from '../dataplane';
import type { ChunkRef, Range } from '../dataplane';
import type { FullRead, Region } from '../domain/model';
import type { DiskView, ViewRanges } from '../platform/ports';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { readSnapshotManifest } from './manifests';
import { StageReporter, throttle } from './progress';

/** The journal is appended (and fsynced) once this much disk has been read, or this long after the last append. */
const JOURNAL_BATCH_BYTES = 256 * 1024 * 1024;
const JOURNAL_BATCH_MS = 1000;

export interface CaptureInput {
  snapshotId: string;
  region: Region;
  disks: DiskView[];
}

/** Where a capture got to: the next chunk of the disk at index `disk`. */
export interface CaptureCheckpoint {
  disk: number;
  chunk: number;
}

export interface CaptureResult {
  chunkSize: number;
  bytesTotal: number;
  /**
   * Bytes this attempt read from the views: less than bytesTotal when it resumed from a checkpoint, when a view
   * reported ranges that read as zeros, or, in an incremental, ranges unchanged since the parent.
   */
  bytesRead: number;
  resumedFromBytes: number;
}

/**
 * Stage 3, data capture: reads each point-in-time view in fixed-size chunks, hashes them on every core, and journals
 * each disk's ordered chunk list in the repository's staging area. Only what must be read is read (see
 * Hypervisor.viewRanges): a chunk outside the view's data is a zero chunk, and in an incremental a chunk outside the
 * ranges changed since the parent takes the parent manifest's ref; a disk whose changes cannot be told is read whole,
 * and the snapshot records which and why (`fullReads`). A retry resumes from the last heartbeated
 * checkpoint: the journal is cut back to it and reading continues there.
 */
export function createCaptureActivity(deps: ActivityDeps) {
  return async function captureSnapshot(input: CaptureInput): Promise<CaptureResult> {
    return withFailureTypes(async () => {
      const { parentSnapshotId, fullReads: recorded } = deps.catalog.updateSnapshot(input.snapshotId, {
        status: 'CAPTURING',
      });
      const repository = deps.repositoryFor(input.region);
      const chunkSize = DEFAULT_CHUNK_SIZE;
      const bytesTotal = input.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0);
      const from = StageReporter.checkpoint<CaptureCheckpoint>() ?? { disk: 0, chunk: 0 };
      const resumedFromBytes = bytesBefore(input.disks, from.disk) + from.chunk * chunkSize;
      const reporter = new StageReporter<CaptureCheckpoint>('CAPTURING', bytesTotal, resumedFromBytes);
      const startedAt = Date.now();
      let bytesRead = 0;
      reporter.update(resumedFromBytes, from);
      // The disks an incremental reads whole, recorded as capture comes to them (a resumed attempt keeps the earlier
      // disks' records).
      const done = new Set(input.disks.slice(0, from.disk).map((disk) => disk.name));
      const fullReads: FullRead[] = (recorded ?? []).filter((read) => done.has(read.disk));
      deps.catalog.updateSnapshot(input.snapshotId, { fullReads });

      for (let d = from.disk; d < input.disks.length; d++) {
        const disk = input.disks[d]!;
        const fromChunk = d === from.disk ? from.chunk : 0;
        await repository.truncateJournal(input.snapshotId, disk.name, fromChunk);
        const ranges = await deps.hypervisor.viewRanges(disk);
        const incremental = await incrementalOf(deps, input.region, disk, chunkSize, ranges);
        if (parentSnapshotId !== null && 'readWhole' in incremental) {
          fullReads.push({ disk: disk.name, reason: incremental.readWhole });
          deps.catalog.updateSnapshot(input.snapshotId, { fullReads });
        }
        const known = knownChunks({
          sizeBytes: disk.sizeBytes,
          chunkSize,
          data: ranges.data,
          incremental: 'readWhole' in incremental ? null : incremental,
        });
        // Refs are journaled (one fsync) in batches, behind the scan (one append in flight while reading goes on), and
        // the checkpoint heartbeated only once they are durable.
        let pending: ChunkRef[] = [];
        let journaled = fromChunk;
        let flushedAt = Date.now();
        const appends = new WriteBehind();
        const flush = () => {
          const refs = pending;
          pending = [];
          flushedAt = Date.now();
          return appends.push(async () => {
            await repository.appendJournal(input.snapshotId, disk.name, refs);
            journaled += refs.length;
            reporter.update(bytesBefore(input.disks, d) + Math.min(journaled * chunkSize, disk.sizeBytes), {
              disk: d,
              chunk: journaled,
            });
          });
        };
        try {
          await withDiskReader(deps.hypervisor.readView(disk), (reader) =>
            scanDisk({
              disk: reader,
              sizeBytes: disk.sizeBytes,
              chunkSize,
              pool: deps.pool,
              fromChunk,
              known,
              signal: reporter.signal,
              onChunks: async (_, refs, read) => {
                pending.push(...refs);
                bytesRead += read;
                if (pending.length * chunkSize >= JOURNAL_BATCH_BYTES || Date.now() - flushedAt >= JOURNAL_BATCH_MS) {
                  await flush();
                }
                await throttle(bytesRead, startedAt, deps.captureMaxBytesPerSecond);
              },
            }),
          );
          if (pending.length > 0) await flush();
        } finally {
          await appends.drain();
        }
        await appends.settle();
      }
      reporter.update(bytesTotal, { disk: input.disks.length, chunk: 0 });
      return { chunkSize, bytesTotal, bytesRead, resumedFromBytes };
    });
  };
}

/**
 * What an incremental capture of `disk` reuses: the changed ranges and the parent manifest's chunks of the same disk;
 * or why it reads every data range instead (see FullRead): the driver cannot tell what changed, the parent is no
 * longer a SUCCESS snapshot (deleted meanwhile), or its disk differs in size or chunk size.
 */
async function incrementalOf(
  deps: ActivityDeps,
  region: Region,
  disk: DiskView,
  chunkSize: number,
  ranges: ViewRanges,
): Promise<{ changed: Range[]; parentChunks: ChunkRef[] } | { readWhole: string }> {
  if (ranges.changed === null) return { readWhole: ranges.readWholeReason ?? 'the driver cannot tell what changed' };
  const parentId = ranges.changed.sinceSnapshotId;
  const status = deps.catalog.getSnapshot(parentId)?.status;
  if (status !== 'SUCCESS') return { readWhole: `the parent snapshot ${parentId} is ${status ?? 'gone'}` };
  const manifest = await readSnapshotManifest(deps, region, parentId);
  const parent = manifest.disks.find((d) => d.name === disk.name);
  if (!parent) return { readWhole: `the parent snapshot has no disk ${disk.name}` };
  if (parent.sizeBytes !== disk.sizeBytes) {
    return {
      readWhole: `the disk was resized since the parent snapshot (${parent.sizeBytes} to ${disk.sizeBytes} bytes)`,
    };
  }
  if (parent.chunkSize !== chunkSize) {
    return { readWhole: `the parent snapshot has ${parent.chunkSize}-byte chunks, this one ${chunkSize}-byte chunks` };
  }
  return { changed: ranges.changed.ranges, parentChunks: parent.chunks };
}

export function bytesBefore(disks: DiskView[], index: number): number {
  return disks.slice(0, index).reduce((sum, disk) => sum + disk.sizeBytes, 0);
}
