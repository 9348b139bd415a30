import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { CancelledFailure } from '@temporalio/common';
import { createActivities } from '../activities';
import type { Activities } from '../activities';
import { ChunkPool, manifestStats } from '../dataplane';
import type { StageProgress } from '../domain/model';
import type { EmbeddedPlatform } from '../platform/local';
import { openEmbeddedPlatform } from '../platform/local';
import type { DiskView } from '../platform/ports';
import { seedTestFleet } from './helpers/snapshot-env';
import type { CaptureCheckpoint, CaptureResult } from '../activities/capture';
import type { CompressResult } from '../activities/compress';

let dataDir: string;
let platform: EmbeddedPlatform;
let pool: ChunkPool;
let activities: Activities;
const reports: StageProgress[] = [];

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
    progress: { report: async (_workflowId, p) => void reports.push(p) },
    captureMaxBytesPerSecond: 0,
  });
});

afterAll(async () => {
  await pool.destroy();
  platform.catalog.close();
  await fs.rm(dataDir, { recursive: true, force: true });
});

/** Reserves a snapshot and opens its views, as validation and initiation would. */
async function prepare(snapshotId: string, vmId: string): Promise<DiskView[]> {
  const vm = platform.catalog.getVm(vmId)!;
  platform.catalog.reserveSnapshot({
    id: snapshotId,
    accountId: vm.accountId,
    vmId: vm.id,
    vmName: vm.name,
    region: vm.region,
    name: snapshotId,
    description: '',
    createAsImage: false,
    workflowId: snapshotId,
    idempotencyKey: null,
    policyId: null,
  });
  return new MockActivityEnvironment().run(activities.initiateSnapshot, snapshotId);
}

describe('capture activity', () => {
  test('heartbeats its checkpoint and reports progress to the workflow', async () => {
    const disks = await prepare('snap-heartbeat', 'vm-trainer-01');
    const env = new MockActivityEnvironment();
    const heartbeats: CaptureCheckpoint[] = [];
    env.on('heartbeat', (d: CaptureCheckpoint) => heartbeats.push(d));
    const result: CaptureResult = await env.run(activities.captureSnapshot, {
      snapshotId: 'snap-heartbeat',
      region: 'CANADA-1' as const,
      disks,
    });
    expect(result.bytesRead).toBe(result.bytesTotal);
    expect(result.resumedFromBytes).toBe(0);
    expect(heartbeats.length).toBeGreaterThan(2);
    expect(heartbeats.at(-1)).toEqual({ disk: disks.length, chunk: 0 });
    expect(heartbeats.some((h) => h.disk === 0 && h.chunk > 0)).toBe(true);
    expect(reports.at(-1)).toMatchObject({ stage: 'CAPTURING', bytesDone: result.bytesTotal });
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
    const resumed: CaptureResult = await new MockActivityEnvironment({ heartbeatDetails: { disk: 1, chunk: 10 } }).run(
      activities.captureSnapshot,
      { snapshotId: 'snap-resume', region: 'CANADA-1' as const, disks },
    );
    expect(resumed.resumedFromBytes).toBe(disks[0]!.sizeBytes + 10 * full.chunkSize);
    expect(resumed.bytesRead).toBe(disks[1]!.sizeBytes - 10 * full.chunkSize);
    expect(await repository.readJournal('snap-resume', 'data')).toEqual(journal);
  });

  test('stops promptly when cancelled', async () => {
    const disks = await prepare('snap-cancel', 'vm-infer-01');
    const env = new MockActivityEnvironment();
    env.on('heartbeat', (d: CaptureCheckpoint) => {
      if (d.chunk > 0) env.cancel();
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
    reports.length = 0;
    const compressed: CompressResult = await new MockActivityEnvironment().run(activities.compressSnapshot, {
      ...input,
      disks,
      chunkSize: captured.chunkSize,
    });
    await new MockActivityEnvironment().run(activities.verifySnapshot, { ...input, addedBytes: compressed.addedBytes });
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
