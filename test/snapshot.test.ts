import fs from 'node:fs/promises';
import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import type { LocalRepository, Repository } from '../dataplane';
import { SnapshotError } from '../domain/errors';
import type { Vm } from '../domain/model';
import { writeGuestBlocks } from '../platform/local';
import { activityRecords, localActivityRecords } from './helpers/history';
import { damageChunk, loseChunk } from './helpers/repository';
import { CaptureGate, createSnapshotEnv, fileHash, scribble, waitFor } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';
import { testWorkflowBundle } from './support/temporal';
import type { snapshotWorkflow } from '../workflows';

let env: SnapshotEnv;
let vm: Vm;

beforeAll(async () => {
  env = await createSnapshotEnv();
  vm = env.platform.catalog.getVm('vm-trainer-01')!;
});

afterAll(async () => {
  await env.close();
});

async function restoreAll(snapshotId: string, into: string): Promise<Record<string, string>> {
  const hashes: Record<string, string> = {};
  for (const disk of vm.disks) {
    const target = path.join(into, `${snapshotId}-${disk.name}.raw`);
    await env.snapshots.restoreDisk({ accountId: vm.accountId, snapshotId, diskName: disk.name, targetPath: target });
    hashes[disk.name] = await fileHash(target);
  }
  return hashes;
}

async function sourceHashes(): Promise<Record<string, string>> {
  return Object.fromEntries(await Promise.all(vm.disks.map(async (d) => [d.name, await fileHash(d.path)] as const)));
}

async function snapshot(name: string, target: Vm = vm) {
  const started = await env.snapshots.createSnapshot({
    accountId: target.accountId,
    vmId: target.id,
    region: target.region,
    name,
  });
  return { started, record: await env.snapshots.watchProgress(started) };
}

describe('snapshot workflow on a real Temporal server', () => {
  let worker: Awaited<ReturnType<SnapshotEnv['startWorker']>>;
  beforeAll(async () => {
    worker = await env.startWorker();
  });
  afterAll(async () => {
    await worker.stop();
  });

  test('a snapshot of a demo VM reaches SUCCESS and restores byte-identically', async () => {
    const before = await sourceHashes();
    const progress: string[] = [];
    const started = await env.snapshots.createSnapshot({
      accountId: vm.accountId,
      vmId: vm.id,
      region: vm.region,
      name: 'full-1',
    });
    const record = await env.snapshots.watchProgress(started, (p) => progress.push(p.status));
    expect(record.status).toBe('SUCCESS');
    expect(record.parentSnapshotId).toBeNull();
    expect(record.logicalBytes).toBe(96 * 1024 * 1024);
    expect(record.storedBytes).toBeGreaterThan(0);
    expect(record.storedBytes!).toBeLessThan(record.logicalBytes!);
    expect(record.vmConfig).toEqual(vm.config);
    expect(progress).toContain('SUCCESS');
    expect(await restoreAll(record.id, env.platform.dataDir)).toEqual(before);
    // A disk the snapshot does not hold is refused by name, listing the ones it does; nothing is written.
    const target = path.join(env.platform.dataDir, 'no-such-disk.raw');
    await expect(
      env.snapshots.restoreDisk({
        accountId: vm.accountId,
        snapshotId: record.id,
        diskName: 'swap',
        targetPath: target,
      }),
    ).rejects.toMatchObject({
      type: 'DiskNotFound',
      message: `Snapshot ${record.id} has no disk "swap" (it has: ${vm.disks.map((d) => d.name).join(', ')}).`,
    });
    await expect(fs.stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
    // Operators find it in the Web UI by search attributes, and it carries a summary.
    const query = `SnapshotAccount = "acme" AND SnapshotVm = "${vm.id}" AND SnapshotRegion = "${vm.region}" AND SnapshotName = "full-1" AND SnapshotStatus = "SUCCESS"`;
    const found = await waitFor(async () => {
      const ids: string[] = [];
      for await (const w of env.client.workflow.list({ query })) ids.push(w.workflowId);
      return ids.length > 0 ? ids : undefined;
    });
    expect(found).toEqual([started.workflowId]);
    const description = await env.client.workflow.getHandle(started.workflowId).describe();
    expect(await description.staticSummary()).toContain('Snapshot "full-1" of trainer-01 - H100-SXM5-80GB (CANADA-1)');
    // The workflow code replays its own history deterministically.
    const history = await env.client.workflow.getHandle(started.workflowId).fetchHistory();
    await Worker.runReplayHistory({ workflowBundle: testWorkflowBundle() }, history);
    // The point-in-time views and capture journals are gone once the snapshot succeeded.
    await expect(fs.readdir(path.join(env.platform.dataDir, 'views'))).resolves.toEqual([]);
  });

  test('an incremental snapshot stores only the changed chunks and restores byte-identically', async () => {
    const first = await snapshot('incr-base');
    const writes = [3, 700, 1500, 9000, 15000].map((block) => ({
      offset: block * 4096,
      data: Buffer.alloc(4096, `changed block ${block}`),
    }));
    await writeGuestBlocks(env.platform.hypervisor, vm, 'root', writes);
    const expected = await sourceHashes();
    const second = await snapshot('incr-next');
    expect(second.record.parentSnapshotId).toBe(first.record.id);
    // The embedded driver cannot tell what changed: every disk was read whole, and the snapshot says so.
    expect(second.record.fullReads).toEqual(
      vm.disks.map((disk) => ({ disk: disk.name, reason: 'the embedded driver does not track guest writes' })),
    );
    // Five 4 KiB writes touch at most five chunks; only those were compressed and added.
    const repository = env.platform.repositoryFor(vm.region);
    const firstManifest = await repository.readManifest(first.record.id);
    const secondManifest = await repository.readManifest(second.record.id);
    const old = new Set(firstManifest.disks.flatMap((d) => d.chunks));
    const changed = new Set(secondManifest.disks.flatMap((d) => d.chunks).filter((c) => !old.has(c)));
    expect(changed.size).toBeGreaterThan(0);
    expect(changed.size).toBeLessThanOrEqual(writes.length);
    let changedBytes = 0;
    for (const id of changed) changedBytes += await repository.chunkStoredSize(id);
    expect(second.record.addedBytes).toBe(changedBytes);
    expect(await restoreAll(second.record.id, env.platform.dataDir)).toEqual(expected);
  });

  test('a corrupted stored chunk fails verification and the snapshot is FAILED, never SUCCESS', async () => {
    const other = env.platform.catalog.getVm('vm-trainer-02')!;
    const base = await snapshot('corrupt-base', other);
    const repository = env.platform.repositoryFor(other.region);
    const manifest = await repository.readManifest(base.record.id);
    const disk = manifest.disks[0]!;
    const index = disk.chunks.findIndex((c) => c !== 'zero');
    const victim = disk.chunks[index]!;
    await damageChunk(repository, victim);
    // An incremental does not read back what it reuses from its verified parent: the victim's content leaves the
    // disk for one snapshot and comes back, so the next snapshot dedupes against the corrupted copy its parent lacks.
    const at = index * disk.chunkSize;
    const source = other.disks.find((d) => d.name === disk.name)!.path;
    const original = (await fs.readFile(source)).subarray(at, at + 4096);
    await writeGuestBlocks(env.platform.hypervisor, other, disk.name, [{ offset: at, data: Buffer.alloc(4096, 1) }]);
    await snapshot('corrupt-away', other);
    await writeGuestBlocks(env.platform.hypervisor, other, disk.name, [{ offset: at, data: original }]);
    await scribble(env, other, 'new chunks of a snapshot that fails');
    const storedBefore = await storedIds(repository);

    // The next snapshot dedupes against the corrupted chunk; verification reads it back and must refuse it.
    const started = await env.snapshots.createSnapshot({
      accountId: other.accountId,
      vmId: other.id,
      region: other.region,
      name: 'corrupt-next',
    });
    const failure = await env.snapshots.watchProgress(started).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(SnapshotError);
    expect((failure as SnapshotError).type).toBe('ChunkCorrupt');
    const record = env.platform.catalog.getSnapshot(started.snapshotId)!;
    expect(record.status).toBe('FAILED');
    expect(record.failureType).toBe('ChunkCorrupt');
    // Its manifest is gone and the name is free again.
    await expect(repository.readManifest(started.snapshotId)).rejects.toMatchObject({ type: 'ManifestMissing' });
    expect(env.platform.catalog.findSnapshotByName(other.accountId, 'corrupt-next')).toBeUndefined();
    // Exactly what was stored before is stored after: the chunks it added are gone, the ones it shared are kept.
    expect(await storedIds(repository)).toEqual(storedBefore);

    // The corrupt copy was quarantined: the same content snapshotted again is stored anew and verifies (healing).
    // Its chunks that the base lacks are exactly the ones the failed snapshot had added (and removed again).
    const healed = await snapshot('corrupt-healed', other);
    expect(healed.record.status).toBe('SUCCESS');
    const inBase = new Set(manifest.disks.flatMap((d) => d.chunks));
    const added = (await repository.readManifest(healed.record.id)).disks
      .flatMap((d) => d.chunks)
      .filter((c) => !inBase.has(c));
    expect(added.length).toBeGreaterThan(0);
    expect(added.filter((id) => storedBefore.has(id))).toEqual([]);
    for (const id of inBase) if (id !== 'zero') expect(storedBefore.has(id)).toBe(true);
    await loseChunk(repository, victim);
  });

  test('a rule violation fails the workflow with a typed, non-retried error and leaves nothing behind', async () => {
    const shutoff = env.platform.catalog.getVm('vm-builder-01')!;
    const handle = await env.client.workflow.start<typeof snapshotWorkflow>('snapshotWorkflow', {
      taskQueue: env.taskQueue,
      workflowId: `direct-${Date.now()}`,
      args: [
        {
          snapshotId: `snap-direct-${Date.now()}`,
          request: {
            accountId: shutoff.accountId,
            vmId: shutoff.id,
            region: shutoff.region,
            name: 'not-active',
            description: '',
            createAsImage: false,
            quiesce: 'best-effort',
            requestedBy: 'test',
          },
        },
      ],
    });
    const error = await handle.result().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WorkflowFailedError);
    expect((error as WorkflowFailedError).cause).toMatchObject({ type: 'VmNotActive', nonRetryable: true });
    // Validation (a local activity) ran once and recorded its failure as non-retryable; no later stage was scheduled.
    const history = await handle.fetchHistory();
    const validations = localActivityRecords(history, 'validateSnapshot');
    expect(validations.map((v) => v.attempt)).toEqual([1]);
    expect(validations[0]!.failure?.applicationFailureInfo).toMatchObject({ type: 'VmNotActive', nonRetryable: true });
    expect(activityRecords(history, 'initiateSnapshot')).toEqual([]);
    expect(env.platform.catalog.findSnapshotByName(shutoff.accountId, 'not-active')).toBeUndefined();
  });
});

describe('retries and resumption', () => {
  test('a transient failure in compression is retried and the snapshot still succeeds', async () => {
    const infer = env.platform.catalog.getVm('vm-infer-01')!;
    let failuresLeft = 1;
    const flaky = (region: Parameters<typeof env.platform.repositoryFor>[0]): Repository => {
      const real = env.platform.repositoryFor(region) as LocalRepository;
      return Object.assign(Object.create(real) as LocalRepository, {
        putChunks: async (chunks: { id: string; frame: Buffer }[]) => {
          if (failuresLeft > 0) {
            failuresLeft--;
            throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
          }
          return real.putChunks(chunks);
        },
      });
    };
    const worker = await env.startWorker({ repositoryFor: flaky });
    try {
      const { started, record } = await snapshot('transient', infer);
      expect(record.status).toBe('SUCCESS');
      expect(failuresLeft).toBe(0);
      const history = await env.client.workflow.getHandle(started.workflowId).fetchHistory();
      const attempts = history.events!.filter(
        (e) => e.activityTaskStartedEventAttributes && (e.activityTaskStartedEventAttributes.attempt ?? 1) > 1,
      );
      expect(attempts.length).toBe(1);
    } finally {
      await worker.stop();
    }
  });

  test('guest writes while the snapshot runs do not reach it: it restores the disks as they were at initiation', async () => {
    const expected = await sourceHashes();
    // Capture held 16 MiB into the root disk, so the guest writes land while it runs: behind the capture and ahead.
    const capture = new CaptureGate(16 * 1024 * 1024);
    const held = await env.startWorker({ captureGate: capture });
    try {
      const started = await env.snapshots.createSnapshot({
        accountId: vm.accountId,
        vmId: vm.id,
        region: vm.region,
        name: 'point-in-time',
      });
      await capture.reached;
      const root = vm.disks[0]!;
      const writes = Array.from({ length: 32 }, (_, i) => ({
        offset: Math.floor((i * root.sizeBytes) / 32 / 4096) * 4096,
        data: Buffer.alloc(4096, `written during the snapshot ${i}\n`),
      }));
      await writeGuestBlocks(env.platform.hypervisor, vm, 'root', writes);
      capture.release();
      const record = await env.snapshots.watchProgress(started);
      expect(record.status).toBe('SUCCESS');
      expect(await restoreAll(record.id, env.platform.dataDir)).toEqual(expected);
      expect(await fileHash(root.path)).not.toBe(expected.root);
    } finally {
      await held.stop();
    }
  });
});

/** The ids of every stored chunk (every copy) of a repository. */
async function storedIds(repository: Repository): Promise<Set<string>> {
  const ids = new Set<string>();
  for await (const chunk of repository.listChunks()) ids.add(chunk.id);
  return ids;
}
