import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { CancelledFailure } from '@temporalio/common';
import { createActivities } from '../activities';
import type { Activities } from '../activities';
import { ChunkPool, manifestStats } from '../dataplane';
import type { EmbeddedPlatform } from '../platform/local';
import { openEmbeddedPlatform } from '../platform/local';
import type { DiskView } from '../platform/ports';
import { reserveTestSnapshot, seedTestFleet } from './helpers/snapshot-env';
import type { CaptureCheckpoint, CaptureResult } from '../activities/capture';
import type { StageHeartbeat } from '../activities/progress';
import { DEFAULT_HOST_ID } from '../domain/model';
import { DEFAULT_HOST_START_TIMEOUT_MS } from '../worker/worker';

let dataDir: string;
let platform: EmbeddedPlatform;
let pool: ChunkPool;
let activities: Activities;

beforeAll(async () => {
  dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-activities-'));
  platform = openEmbeddedPlatform(dataDir);
  await seedTestFleet(platform);
  pool = new ChunkPool();
  activities = createActivities({
    catalog: platform.catalog,
    hypervisor: platform.hypervisor,
    repositoryFor: platform.repositoryFor,
    pool,
    captureMaxBytesPerSecond: 0,
    hostId: DEFAULT_HOST_ID,
    hostStartTimeoutMs: DEFAULT_HOST_START_TIMEOUT_MS,
  });
});

afterAll(async () => {
  await pool.destroy();
  platform.catalog.close();
  await fs.rm(dataDir, { recursive: true, force: true });
});

/** Runs an activity in a mock environment, collecting the details of every heartbeat it sends. */
async function runCollecting<A extends unknown[], R>(
  fn: (...args: A) => Promise<R>,
  ...args: A
): Promise<{ result: R; heartbeats: StageHeartbeat<unknown>[] }> {
  const env = new MockActivityEnvironment();
  const heartbeats: StageHeartbeat<unknown>[] = [];
  env.on('heartbeat', (d: StageHeartbeat<unknown>) => heartbeats.push(d));
  return { result: await env.run(fn, ...args), heartbeats };
}

/** Reserves a snapshot and opens its views, as validation and initiation would. */
async function prepare(snapshotId: string, vmId: string): Promise<DiskView[]> {
  const vm = platform.catalog.getVm(vmId)!;
  reserveTestSnapshot(platform.catalog, vm, snapshotId);
  return new MockActivityEnvironment().run(activities.initiateSnapshot, snapshotId);
}

describe('capture activity', () => {
  test('heartbeats its checkpoint with its progress', async () => {
    const disks = await prepare('snap-heartbeat', 'vm-trainer-01');
    const { result, heartbeats } = await runCollecting(activities.captureSnapshot, {
      snapshotId: 'snap-heartbeat',
      region: 'CANADA-1' as const,
      disks,
    });
    const details = heartbeats as StageHeartbeat<CaptureCheckpoint>[];
    // Only the chunks the views' data ranges touch are read: the seeded images are sparse.
    expect(result.bytesRead).toBeGreaterThan(0);
    expect(result.bytesRead).toBeLessThan(result.bytesTotal);
    expect(result.resumedFromBytes).toBe(0);
    expect(details.length).toBeGreaterThan(2);
    expect(details.at(-1)).toMatchObject({
      checkpoint: { disk: disks.length, chunk: 0 },
      progress: { stage: 'CAPTURING', bytesDone: result.bytesTotal, bytesTotal: result.bytesTotal },
    });
    expect(details.some((h) => h.checkpoint.disk === 0 && h.checkpoint.chunk > 0)).toBe(true);
    const done = details.map((h) => h.progress.bytesDone);
    expect(done).toEqual([...done].sort((a, b) => a - b));
  });

  test('resumes from the heartbeat details of a previous attempt', async () => {
    const disks = await prepare('snap-resume', 'vm-trainer-02');
    const full: CaptureResult = await new MockActivityEnvironment().run(activities.captureSnapshot, {
      snapshotId: 'snap-resume',
      region: 'CANADA-1' as const,
      disks,
    });
    const repository = platform.repositoryFor('CANADA-1');
    const journal = await repository.readJournal('snap-resume', 'data');
    const resumed: CaptureResult = await new MockActivityEnvironment({
      heartbeatDetails: { checkpoint: { disk: 1, chunk: 10 }, progress: null },
    }).run(activities.captureSnapshot, { snapshotId: 'snap-resume', region: 'CANADA-1' as const, disks });
    expect(resumed.resumedFromBytes).toBe(disks[0]!.sizeBytes + 10 * full.chunkSize);
    expect(resumed.bytesRead).toBeGreaterThan(0);
    expect(resumed.bytesRead).toBeLessThanOrEqual(disks[1]!.sizeBytes - 10 * full.chunkSize);
    expect(await repository.readJournal('snap-resume', 'data')).toEqual(journal);
  });

  test('stops promptly when cancelled', async () => {
    const disks = await prepare('snap-cancel', 'vm-infer-01');
    const env = new MockActivityEnvironment();
    env.on('heartbeat', (d: StageHeartbeat<CaptureCheckpoint>) => {
      if (d.checkpoint.chunk > 0) env.cancel();
    });
    const outcome = await env
      .run(activities.captureSnapshot, { snapshotId: 'snap-cancel', region: 'NORWAY-1' as const, disks })
      .catch((e: unknown) => e);
    expect(outcome).toBeInstanceOf(CancelledFailure);
  });
});

describe('stage progress', () => {
  test('compression reports logical bytes and verification raw bytes, up to their totals and ending on them', async () => {
    const disks = await prepare('snap-progress', 'vm-notebook-01');
    const input = { snapshotId: 'snap-progress', region: platform.catalog.getVm('vm-notebook-01')!.region };
    const captured: CaptureResult = await new MockActivityEnvironment().run(activities.captureSnapshot, {
      ...input,
      disks,
    });
    const compressed = await runCollecting(activities.compressSnapshot, {
      ...input,
      disks,
      chunkSize: captured.chunkSize,
    });
    const verified = await runCollecting(activities.verifySnapshot, {
      ...input,
      addedBytes: compressed.result.addedBytes,
    });
    const reports = [...compressed.heartbeats, ...verified.heartbeats].map((h) => h.progress);
    const repository = platform.repositoryFor(input.region);
    const stats = await manifestStats(await repository.readManifest(input.snapshotId), repository);
    const totals = { COMPRESSING: stats.logicalBytes, VERIFYING: stats.distinctRawBytes };
    for (const [stage, total] of Object.entries(totals)) {
      const seen = reports.filter((r) => r.stage === stage);
      expect(seen.every((r) => r.bytesTotal === total && r.bytesDone <= total)).toBe(true);
      expect(seen.at(-1)).toMatchObject({ bytesDone: total, bytesTotal: total });
    }
  });
});
