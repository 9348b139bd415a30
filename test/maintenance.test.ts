import { distinctChunks } from '../dataplane';
import type { Repository } from '../dataplane';
import { SnapshotError } from '../domain/errors';
import type { Vm } from '../domain/model';
import { damageChunk } from './helpers/repository';
import { createSnapshotEnv, fileHash, scribble, takeSnapshot } from './helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';

let env: SnapshotEnv;
let worker: RunningWorker;

beforeAll(async () => {
  env = await createSnapshotEnv();
  worker = await env.startWorker();
});

afterAll(async () => {
  await worker.stop();
  await env.close();
});

const vmNamed = (id: string): Vm => env.platform.catalog.getVm(id)!;

/** Every chunk id some manifest of the repository references. */
async function referencedChunks(repository: Repository): Promise<Set<string>> {
  const referenced = new Set<string>();
  for (const id of await repository.listManifestIds()) {
    for (const ref of distinctChunks(await repository.readManifest(id))) referenced.add(ref);
  }
  return referenced;
}

async function storedChunks(repository: Repository): Promise<Map<string, number>> {
  const stored = new Map<string, number>();
  for await (const chunk of repository.listChunks()) stored.set(chunk.id, chunk.storedBytes);
  return stored;
}

describe('garbage collection and re-verification', () => {
  test('GC after deletions frees exactly the chunks no longer referenced, and none that are', async () => {
    const trainer1 = vmNamed('vm-trainer-01');
    const trainer2 = vmNamed('vm-trainer-02');
    const repository = env.platform.repositoryFor('CANADA-1');
    const first = await takeSnapshot(env, trainer1, 'gc-first');
    await scribble(env, trainer1, 'gc round one');
    await takeSnapshot(env, trainer1, 'gc-second');
    const other = await takeSnapshot(env, trainer2, 'gc-other');
    const otherHashes = await Promise.all(trainer2.disks.map((d) => fileHash(d.path)));

    await env.snapshots.deleteSnapshot('acme', first.id);
    const referenced = await referencedChunks(repository);
    const before = await storedChunks(repository);
    const garbage = [...before.keys()].filter((id) => !referenced.has(id));
    expect(garbage.length).toBeGreaterThan(0); // the chunks only gc-first had (its blocks gc-second overwrote)

    const result = await env.maintenance.collectGarbage('CANADA-1', 0);
    expect(result.chunksRemoved).toBe(garbage.length);
    expect(result.bytesFreed).toBe(garbage.reduce((sum, id) => sum + before.get(id)!, 0));
    expect(new Set((await storedChunks(repository)).keys())).toEqual(referenced);

    // Everything still referenced is intact: re-verification finds no damage, and a restore is byte-identical.
    const report = await env.maintenance.reverify('CANADA-1', 0);
    expect(report.damaged).toEqual([]);
    expect(report.checked).toBe(env.snapshots.listSnapshots('acme', { region: 'CANADA-1' }).length);
    const { vm } = await env.snapshots.restoreVm({
      accountId: 'acme',
      source: { snapshotId: other.id },
      vmName: 'after-gc',
    });
    expect(await Promise.all(vm.disks.map((d) => fileHash(d.path)))).toEqual(otherHashes);

    const again = await env.maintenance.collectGarbage('CANADA-1', 0);
    expect(again.chunksRemoved).toBe(0);
  });

  test('GC racing an in-flight snapshot never removes its chunks', async () => {
    await worker.stop();
    const slow = await env.startWorker({ captureMaxBytesPerSecond: 16e6 });
    try {
      const vm = vmNamed('vm-infer-01');
      await scribble(env, vm, 'racing the collector');
      const atCapture = await Promise.all(vm.disks.map((d) => fileHash(d.path)));
      const started = await env.snapshots.createSnapshot({
        accountId: 'acme',
        vmId: vm.id,
        region: vm.region,
        name: 'raced',
      });
      const done = env.snapshots.watchProgress(started);
      let collections = 0;
      let settled = false;
      void done.finally(() => (settled = true)).catch(() => undefined);
      // Collect with no grace period at all, over and over, while the snapshot captures, compresses and verifies.
      while (!settled) {
        await env.maintenance.collectGarbage(vm.region, 0);
        collections++;
      }
      const record = await done; // its own verification re-read every chunk it references
      expect(record.status).toBe('SUCCESS');
      expect(collections).toBeGreaterThan(2);

      await slow.stop();
      worker = await env.startWorker();
      const restored = await env.snapshots.restoreVm({
        accountId: 'acme',
        source: { snapshotId: record.id },
        vmName: 'raced-restore',
      });
      expect(await Promise.all(restored.vm.disks.map((d) => fileHash(d.path)))).toEqual(atCapture);
    } finally {
      await slow.stop();
      if (worker.worker.getState() !== 'RUNNING') worker = await env.startWorker();
    }
  });

  test('re-verification finds a corrupted chunk and marks the snapshot DAMAGED, visibly', async () => {
    const vm = vmNamed('vm-trainer-02');
    const record = await takeSnapshot(env, vm, 'to-be-damaged');
    const manifest = await env.platform.repositoryFor(vm.region).readManifest(record.id);
    const victim = manifest.disks[1]!.chunks.find((c) => c !== 'zero')!;
    await damageChunk(env.platform.repositoryFor(vm.region), victim);

    const report = await env.maintenance.reverify(vm.region, 0);
    expect(report.damaged.map((d) => d.snapshotId)).toContain(record.id);
    const damaged = env.snapshots.listSnapshots('acme').find((s) => s.id === record.id)!;
    expect(damaged).toMatchObject({ status: 'DAMAGED', failureType: 'ChunkCorrupt' });
    expect(damaged.failureReason).toContain(victim);

    const refused = await env.snapshots
      .restoreVm({ accountId: 'acme', source: { snapshotId: record.id }, vmName: 'from-damaged' })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SnapshotError);
    expect((refused as SnapshotError).type).toBe('SnapshotNotRestorable');

    // Recently verified snapshots are skipped: with a 7-day horizon only the DAMAGED ones (every snapshot that shares
    // the chunk, now quarantined) are re-read right after a run, and stay DAMAGED.
    const stillDamaged = env.platform.catalog.listSnapshots({ region: vm.region, status: 'DAMAGED' }).map((s) => s.id);
    expect(stillDamaged).toContain(record.id);
    const rerun = await env.maintenance.reverify(vm.region, 7);
    expect(rerun.checked).toBe(stillDamaged.length);
    expect(rerun.damaged.map((d) => [d.snapshotId, d.failureType]).sort()).toEqual(
      stillDamaged.sort().map((id) => [id, 'ChunkCorrupt']),
    );
  });

  test('a corrupt chunk heals: quarantined, stored again by the next snapshot, and the DAMAGED one is SUCCESS again', async () => {
    const vm = vmNamed('vm-trainer-02');
    const repository = env.platform.repositoryFor(vm.region);
    const hashes = await Promise.all(vm.disks.map((d) => fileHash(d.path)));
    const record = await takeSnapshot(env, vm, 'to-be-healed');
    const victim = (await repository.readManifest(record.id)).disks[1]!.chunks.find((c) => c !== 'zero')!;
    await damageChunk(repository, victim);
    const report = await env.maintenance.reverify(vm.region, 0);
    expect(report.damaged.map((d) => d.snapshotId)).toContain(record.id);
    expect(await repository.hasChunk(victim)).toBe(false); // the bad copy is quarantined: lookups miss it

    // The same content again: stored anew instead of deduplicated against the bad copy, and verified good.
    const healer = await takeSnapshot(env, vm, 'healer');
    expect(healer.status).toBe('SUCCESS');
    expect(await repository.hasChunk(victim)).toBe(true);

    const healed = await env.maintenance.reverify(vm.region, 7);
    expect(healed.damaged.map((d) => d.snapshotId)).not.toContain(record.id);
    expect(env.platform.catalog.getSnapshot(record.id)).toMatchObject({
      status: 'SUCCESS',
      failureType: null,
      failureReason: null,
    });
    for (const [source, name] of [
      [record.id, 'healed-restore'],
      [healer.id, 'healer-restore'],
    ] as const) {
      const { vm: restored } = await env.snapshots.restoreVm({
        accountId: 'acme',
        source: { snapshotId: source },
        vmName: name,
      });
      expect(await Promise.all(restored.disks.map((d) => fileHash(d.path)))).toEqual(hashes);
    }
  });

  test('every region has daily GC and re-verification Schedules', async () => {
    await env.maintenance.ensureSchedules();
    await env.maintenance.ensureSchedules(); // idempotent
    const gc = await env.client.schedule.getHandle('maintenance/gc/NORWAY-1').describe();
    expect(gc.action).toMatchObject({ workflowType: 'garbageCollectionWorkflow', args: [{ region: 'NORWAY-1' }] });
    expect(gc.policies.overlap).toBe('SKIP');
    const reverify = await env.client.schedule.getHandle('maintenance/reverify/US-1').describe();
    expect(reverify.action).toMatchObject({
      workflowType: 'reverifyWorkflow',
      args: [{ region: 'US-1', olderThanDays: 7 }],
    });
    expect(reverify.info.nextActionTimes.length).toBeGreaterThan(0);
  });
});
