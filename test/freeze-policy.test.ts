import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { CreateSnapshotRequestSchema } from '../domain/requests';
import { GuestFreezeError } from '../domain/errors';
import type { Quiesce, Vm } from '../domain/model';
import { parsePolicy } from '../domain/policies';
import { SqliteCatalog } from '../platform/local/sqlite-catalog';
import { QemuHypervisor } from '../platform/qemu/qemu-hypervisor';
import { QEMU_VM_FILES, qemuVmDir } from '../platform/qemu/host-layout';
import { startStorageDaemon, type StorageDaemon } from '../platform/qemu/storage-daemon';
import type { QemuVm } from '../platform/qemu/vm-process';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';
import { createSnapshotEnv, refusal, reserveTestSnapshot } from './helpers/snapshot-env';
import { blockState, bootTestGuest, qemuTestVm } from './helpers/qemu';

/**
 * The freeze policy (`quiesce`): a guest that cannot be frozen gives a crash-consistent snapshot that says why
 * (`best-effort`, the default) or a `GuestFreezeFailed` failure that leaves nothing behind (`required`); a guest whose
 * agent freezes it gives an application-consistent one. Real qemu-storage-daemon (no agent) and a booted TCG guest.
 */

const exec = promisify(execFile);
const MiB = 2 ** 20;
const DISK_BYTES = 8 * MiB;

let hostDir: string;
let env: SnapshotEnv;
// One worker at a time on the env's queue, over the QEMU driver of the test's host folder.
let worker: RunningWorker | undefined;

beforeAll(async () => {
  env = await createSnapshotEnv();
});

afterAll(async () => {
  await env.close();
});

beforeEach(async () => {
  hostDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-quiesce-'));
});

afterEach(async () => {
  await worker?.stop();
  worker = undefined;
  // The guard outlives the worker by design; the test ends it.
  await new QemuHypervisor(hostDir).stopFreezeGuard();
  await fs.rm(hostDir, { recursive: true, force: true });
});

async function snapshot(vm: Vm, name: string, quiesce?: Quiesce) {
  const started = await env.snapshots.createSnapshot({
    accountId: vm.accountId,
    vmId: vm.id,
    region: vm.region,
    name,
    ...(quiesce ? { quiesce } : {}),
  });
  return { started, done: env.snapshots.watchProgress(started) };
}

describe('a VM without a guest agent (qemu-storage-daemon)', () => {
  let daemon: StorageDaemon | undefined;
  let vm: Vm;

  beforeEach(async () => {
    const dir = qemuVmDir(hostDir, 'vm-noagent-01');
    await fs.mkdir(dir, { recursive: true });
    const disk = { name: 'root', path: path.join(dir, 'root.qcow2') };
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', disk.path, String(DISK_BYTES)]);
    await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${DISK_BYTES / 2}`, disk.path]);
    daemon = await startStorageDaemon({ dir, disks: [{ nodeName: disk.name, path: disk.path }] });
    vm = qemuTestVm('vm-noagent-01', [disk], DISK_BYTES);
    env.platform.catalog.putVm(vm);
    worker = await env.startWorker({ hypervisor: new QemuHypervisor(hostDir) });
  });

  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
  });

  test('by default it is snapshotted crash-consistent, and the snapshot records why', async () => {
    const { done } = await snapshot(vm, 'no-agent-default');
    const record = await done;
    expect(record.status).toBe('SUCCESS');
    expect(record.consistency).toEqual({
      kind: 'crash-consistent',
      reason: expect.stringContaining('the VM has no guest agent channel') as string,
    });
    expect(record.logicalBytes).toBe(DISK_BYTES);
  }, 120_000);

  test('with quiesce "required" the snapshot fails GuestFreezeFailed and leaves no view, export or bitmap', async () => {
    const before = await blockState(daemon!.qmpSocket, ['root']);
    const { started, done } = await snapshot(vm, 'no-agent-required', 'required');
    const error = await refusal(done);
    expect(error.type).toBe('GuestFreezeFailed');
    expect(error.message).toMatch(/could not be frozen.*no guest agent channel.*quiesce "best-effort"/s);
    const record = env.platform.catalog.getSnapshot(started.snapshotId)!;
    expect([record.status, record.failureType, record.consistency]).toEqual(['FAILED', 'GuestFreezeFailed', null]);
    expect(await blockState(daemon!.qmpSocket, ['root'])).toEqual(before);
    expect(before).toEqual({ nodes: ['root'], exports: [], jobs: [], bitmaps: { root: [] } });
    expect(await fs.readdir(path.join(hostDir, 'views')).catch(() => [])).toEqual([]);
  }, 120_000);
});

test('a guest agent that never answers fails the freeze within the 10 s freeze timeout, with that reason', async () => {
  const dir = qemuVmDir(hostDir, 'vm-silent-01');
  await fs.mkdir(dir, { recursive: true });
  // Accepts the agent connection and reads, but never replies: a guest whose agent hangs.
  const silent = net.createServer((socket) => socket.resume());
  await new Promise<void>((resolve) => silent.listen(path.join(dir, QEMU_VM_FILES.agent), resolve));
  try {
    const hypervisor = new QemuHypervisor(hostDir);
    const vm = qemuTestVm('vm-silent-01', [], DISK_BYTES);
    const error = await hypervisor.freeze(vm, { leaseMs: 5_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(GuestFreezeError);
    expect((error as GuestFreezeError).reason).toBe('the guest agent did not answer within 10 s');
  } finally {
    await new Promise((resolve) => silent.close(resolve));
  }
}, 60_000);

test('quiesce values other than "required" and "best-effort" are refused, in requests and policies', async () => {
  const request = { accountId: 'acme', vmId: 'vm-1', region: 'CANADA-1' as const, name: 'n' };
  expect(CreateSnapshotRequestSchema.parse(request).quiesce).toBe('best-effort');
  expect(CreateSnapshotRequestSchema.safeParse({ ...request, quiesce: 'always' }).success).toBe(false);
  const error = await refusal(
    env.snapshots.createSnapshot({ ...request, quiesce: 'always' as Quiesce }).then(() => undefined),
  );
  expect(error.type).toBe('InvalidRequest');
  expect(() =>
    parsePolicy({
      accountId: 'acme',
      name: 'nightly',
      target: { vmIds: ['vm-1'] },
      cadence: { kind: 'daily' },
      window: { start: '01:00', end: '05:00', timeZone: 'UTC' },
      retention: { keepLast: 3 },
      quiesce: 'sometimes',
    }),
  ).toThrow(/Invalid quiesce/);
});

describe('a booted guest with its agent', () => {
  let qemu: QemuVm | undefined;

  afterEach(async () => {
    await qemu?.stop();
    qemu = undefined;
  });

  test('is snapshotted application-consistent, with quiesce "required"', async () => {
    const dir = qemuVmDir(hostDir, 'vm-agent-01');
    await fs.mkdir(dir, { recursive: true });
    const booted = await bootTestGuest(dir, { sizeBytes: DISK_BYTES });
    qemu = booted.qemu;
    const vm = qemuTestVm('vm-agent-01', [{ name: 'root', path: booted.rootDisk }], DISK_BYTES);
    env.platform.catalog.putVm(vm);
    worker = await env.startWorker({ hypervisor: new QemuHypervisor(hostDir) });
    const record = await (await snapshot(vm, 'with-agent', 'required')).done;
    expect([record.status, record.consistency]).toEqual([
      'SUCCESS',
      { kind: 'application-consistent', frozenMs: expect.any(Number) as unknown },
    ]);
  }, 600_000);
});

test('a catalog made before consistency was recorded gains its columns on open; its snapshots read as not known', async () => {
  const file = path.join(hostDir, 'catalog.sqlite');
  const catalog = new SqliteCatalog(file);
  catalog.putAccount(env.platform.catalog.getAccount('acme')!);
  const oldVm = qemuTestVm('vm-old', [], DISK_BYTES);
  catalog.putVm(oldVm);
  const reserved = reserveTestSnapshot(catalog, oldVm, 'snap-old', { name: 'old' });
  catalog.close();
  // The schema as it was: without the two columns.
  const db = new Database(file);
  db.exec('ALTER TABLE snapshots DROP COLUMN consistency; ALTER TABLE snapshots DROP COLUMN consistency_reason');
  db.close();
  const reopened = new SqliteCatalog(file);
  try {
    expect(reopened.getSnapshot(reserved.id)?.consistency).toBeNull();
    const reason = 'the guest agent did not answer within 10 s';
    reopened.updateSnapshot(reserved.id, { consistency: { kind: 'crash-consistent', reason } });
    expect(reopened.getSnapshot(reserved.id)?.consistency).toEqual({ kind: 'crash-consistent', reason });
    reopened.updateSnapshot(reserved.id, { consistency: { kind: 'application-consistent' } });
    expect(reopened.getSnapshot(reserved.id)?.consistency).toEqual({ kind: 'application-consistent' });
  } finally {
    reopened.close();
  }
});
