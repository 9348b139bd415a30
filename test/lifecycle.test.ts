import fs from 'node:fs/promises';
import path from 'node:path';
import type { Vm } from '../domain/model';
import { damageChunk } from './helpers/repository';
import {
  CaptureGate,
  createSnapshotEnv,
  fileHash,
  refusal,
  scribble,
  takeSnapshot,
  waitFor,
} from './helpers/snapshot-env';
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

async function diskHashes(vm: Vm): Promise<Record<string, string>> {
  return Object.fromEntries(await Promise.all(vm.disks.map(async (d) => [d.name, await fileHash(d.path)] as const)));
}

describe('restore, images and deletion', () => {
  test('restore to a new VM gives disks byte-identical to the source at capture time, and its configuration', async () => {
    const source = vmNamed('vm-trainer-01');
    const atCapture = await diskHashes(source);
    const record = await takeSnapshot(env, source, 'restore-me');
    await scribble(env, source, 'after the snapshot');
    expect(await diskHashes(source)).not.toEqual(atCapture);

    const readings: number[] = [];
    const { vm } = await env.snapshots.restoreVm(
      { accountId: 'acme', source: { snapshotId: record.id }, vmName: 'trainer-01-restored' },
      (p) => readings.push(p.bytesDone),
    );
    expect(vm).toMatchObject({ name: 'trainer-01-restored', status: 'ACTIVE', region: source.region });
    expect(vm.id).not.toBe(source.id);
    expect(vm.config).toEqual(source.config);
    expect(vm.flavor).toBe(source.flavor);
    expect(await diskHashes(vm)).toEqual(atCapture);
    expect(readings.length).toBeGreaterThan(0);
    // The new VM is an ordinary VM: it can be snapshotted.
    expect(env.snapshots.listEligibleVms('acme', source.region).map((e) => e.vm.id)).toContain(vm.id);
  });

  test('restores are refused for unknown and foreign snapshots, a taken or malformed VM name, another region', async () => {
    const source = vmNamed('vm-trainer-01');
    const record = env.snapshots.listSnapshots('acme', { vmId: source.id })[0]!;
    const foreign = await refusal(
      env.snapshots.restoreVm({ accountId: 'fjord', source: { snapshotId: record.id }, vmName: 'stolen' }),
    );
    expect(foreign.type).toBe('SnapshotNotFound');
    const unknown = await refusal(
      env.snapshots.restoreVm({ accountId: 'acme', source: { snapshotId: 'snap-nope' }, vmName: 'x1' }),
    );
    expect(unknown.type).toBe('SnapshotNotFound');
    const taken = await refusal(
      env.snapshots.restoreVm({ accountId: 'acme', source: { snapshotId: record.id }, vmName: 'trainer-02' }),
    );
    expect(taken.type).toBe('InvalidVmName');
    const badName = await refusal(
      env.snapshots.restoreVm({ accountId: 'acme', source: { snapshotId: record.id }, vmName: 'no spaces/here' }),
    );
    expect(badName.type).toBe('InvalidRequest');
    const elsewhere = await refusal(
      env.snapshots.restoreVm({
        accountId: 'acme',
        source: { snapshotId: record.id },
        vmName: 'in-norway',
        region: 'NORWAY-1',
      }),
    );
    expect(elsewhere.type).toBe('RegionMismatch');
    expect(env.snapshots.findVm('acme', 'in-norway')).toBeUndefined();
    expect(env.platform.catalog.listVms({ accountId: 'fjord' }).map((v) => v.name)).not.toContain('stolen');
  });

  test('a restore that fails half-way leaves no VM and no disk behind', async () => {
    const source = vmNamed('vm-infer-01');
    const record = await takeSnapshot(env, source, 'corrupt-restore');
    const repository = env.platform.repositoryFor(source.region);
    const manifest = await repository.readManifest(record.id);
    const victim = [...manifest.disks.at(-1)!.chunks].reverse().find((c) => c !== 'zero')!;
    const repair = await damageChunk(repository, victim);
    try {
      const error = await refusal(
        env.snapshots.restoreVm({ accountId: 'acme', source: { snapshotId: record.id }, vmName: 'half-restored' }),
      );
      expect(error.type).toBe('ChunkCorrupt');
      expect(env.snapshots.findVm('acme', 'half-restored')).toBeUndefined();
      // No disk left behind: the disk folders are exactly those of the catalog's VMs.
      const vmDirs = await fs.readdir(path.join(env.platform.dataDir, 'disks'));
      expect(vmDirs.sort()).toEqual(
        env.platform.catalog
          .listVms({})
          .map((v) => v.id)
          .sort(),
      );
    } finally {
      await repair();
    }
  });

  test('deleting a parent snapshot leaves its incremental child restorable byte-identically', async () => {
    const source = vmNamed('vm-trainer-02');
    const parent = await takeSnapshot(env, source, 'chain-parent');
    await scribble(env, source, 'between parent and child');
    const atChild = await diskHashes(source);
    const child = await takeSnapshot(env, source, 'chain-child');
    expect(child.parentSnapshotId).toBe(parent.id);

    await env.snapshots.deleteSnapshot('acme', parent.id);
    expect(env.snapshots.listSnapshots('acme').map((s) => s.id)).not.toContain(parent.id);
    expect(env.platform.catalog.getSnapshot(parent.id)).toMatchObject({ status: 'DELETED', deletedReason: 'user' });
    expect(await env.platform.repositoryFor(source.region).listManifestIds()).not.toContain(parent.id);
    // Deleting again is a no-op; the name is free again.
    await env.snapshots.deleteSnapshot('acme', parent.id);
    expect(env.platform.catalog.findSnapshotByName('acme', 'chain-parent')).toBeUndefined();

    const { vm } = await env.snapshots.restoreVm({
      accountId: 'acme',
      source: { snapshotId: child.id },
      vmName: 'from-child',
    });
    expect(await diskHashes(vm)).toEqual(atChild);
    const gone = await refusal(
      env.snapshots.restoreVm({ accountId: 'acme', source: { snapshotId: parent.id }, vmName: 'from-parent' }),
    );
    expect(gone.type).toBe('SnapshotNotFound');
  });

  test('an image outlives its snapshot: listed as a boot source, bootable after the snapshot is deleted', async () => {
    const source = vmNamed('vm-trainer-02');
    const atCapture = await diskHashes(source);
    const record = await takeSnapshot(env, source, 'golden-image', { createAsImage: true });
    const [image] = env.snapshots.listImages('acme', source.region).filter((i) => i.snapshotId === record.id);
    expect(image).toMatchObject({ name: 'golden-image', region: source.region, flavor: source.flavor });

    await env.snapshots.deleteSnapshot('acme', record.id);
    expect(env.snapshots.listImages('acme').map((i) => i.id)).toContain(image!.id);
    // The image still holds the snapshot's manifest (and so its chunks).
    expect(await env.platform.repositoryFor(source.region).listManifestIds()).toContain(record.id);

    const { vm } = await env.snapshots.restoreVm({
      accountId: 'acme',
      source: { imageId: image!.id },
      vmName: 'booted-from-image',
    });
    expect(await diskHashes(vm)).toEqual(atCapture);
    expect(vm.config).toEqual(source.config);

    await env.snapshots.deleteImage('acme', image!.id);
    expect(env.snapshots.listImages('acme').map((i) => i.id)).not.toContain(image!.id);
    expect(await env.platform.repositoryFor(source.region).listManifestIds()).not.toContain(record.id);
  });

  test('a snapshot converted to an image later is listed once, however often it is converted', async () => {
    const source = vmNamed('vm-trainer-01');
    const record = await takeSnapshot(env, source, 'convert-me');
    const first = await env.snapshots.createImage('acme', record.id, 'ml-base');
    const second = await env.snapshots.createImage('acme', record.id, 'ml-base');
    expect(second.id).toBe(first.id);
    expect(env.snapshots.listImages('acme').filter((i) => i.snapshotId === record.id)).toHaveLength(1);
  });

  test('deleting a snapshot in flight cancels its workflow cleanly', async () => {
    await worker.stop();
    const capture = new CaptureGate();
    const held = await env.startWorker({ captureGate: capture });
    try {
      const source = vmNamed('vm-trainer-01');
      const started = await env.snapshots.createSnapshot({
        accountId: 'acme',
        vmId: source.id,
        region: source.region,
        name: 'doomed',
      });
      await capture.reached;
      const deleting = env.snapshots.deleteSnapshot('acme', started.snapshotId);
      // The capture goes on once the workflow has been asked to cancel, and notices it at its next heartbeat.
      const handle = env.client.workflow.getHandle(started.workflowId);
      await waitFor(async () =>
        (await handle.fetchHistory()).events?.some((e) => e.workflowExecutionCancelRequestedEventAttributes),
      );
      capture.release();
      await deleting;

      expect(env.platform.catalog.getSnapshot(started.snapshotId)).toMatchObject({ status: 'DELETED' });
      const ended = await handle.describe();
      expect(ended.status.name).toBe('FAILED');
      // Nothing is left held: the VM can be snapshotted again, and the deleted snapshot stored nothing.
      expect(await env.platform.repositoryFor(source.region).listStagingIds()).not.toContain(started.snapshotId);
      expect(env.platform.catalog.heldCredits('acme')).toBe(0);
    } finally {
      await held.stop();
      worker = await env.startWorker();
    }
  });
});
