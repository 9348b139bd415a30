import fs from 'node:fs/promises';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createActivities } from '../activities';
import type { Activities } from '../activities';
import type { CaptureResult } from '../activities/capture';
import type { CompressResult } from '../activities/compress';
import type { StageHeartbeat } from '../activities/progress';
import type { VerifyCheckpoint } from '../activities/verify';
import {
  ChunkCorruptError,
  ChunkMissingError,
  ChunkPool,
  LocalRepository,
  ZERO_CHUNK,
  distinctChunks,
  planVerification,
} from '../dataplane';
import type { Manifest, Repository } from '../dataplane';
import { chunkLength } from '../dataplane/manifest';
import type { Region, SnapshotRecord, Vm } from '../domain/model';
import type { DiskView } from '../platform/ports';
import { makeTempDir } from './dataplane/helpers';
import { damageChunk, loseChunk } from './helpers/repository';
import { createSnapshotEnv, reserveTestSnapshot, scribble, takeSnapshot } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';
import { DEFAULT_HOST_ID } from '../domain/model';
import { DEFAULT_HOST_START_TIMEOUT_MS } from '../worker/worker';

let env: SnapshotEnv;
/** Chunk ids read back through the worker's repositories (verification's reads), in order. */
let reads: string[] = [];
/** Run once by the next verification, when it reads its manifest: after compression, before any chunk is read. */
let atVerification: ((snapshotId: string) => Promise<void>) | undefined;

/** The region's repository, with its chunk reads counted and the atVerification hook; `this` stays the real one. */
function instrumented(region: Region): Repository {
  const real = env.platform.repositoryFor(region);
  const overrides: Partial<Repository> = {
    getChunks: (ids, into) => {
      reads.push(...ids);
      return real.getChunks(ids, into);
    },
    readManifest: async (snapshotId, digest) => {
      const hook = atVerification;
      if (hook && env.platform.catalog.getSnapshot(snapshotId)?.status === 'VERIFYING') {
        atVerification = undefined;
        await hook(snapshotId);
      }
      return real.readManifest(snapshotId, digest);
    },
  };
  return new Proxy(real, {
    get(target, property) {
      const value: unknown = Reflect.get(overrides, property) ?? Reflect.get(target, property);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

beforeAll(async () => {
  env = await createSnapshotEnv();
  await env.startWorker({ repositoryFor: instrumented });
});

afterAll(async () => {
  await env.close();
});

afterEach(() => {
  reads = [];
  atVerification = undefined;
});

const vmNamed = (id: string): Vm => env.platform.catalog.getVm(id)!;
const manifestOf = (vm: Vm, snapshotId: string): Promise<Manifest> =>
  env.platform.repositoryFor(vm.region).readManifest(snapshotId);

/** Distinct chunks of `child`'s manifest that its parent's manifest does not reference. */
async function changedChunks(vm: Vm, parentId: string, childId: string): Promise<string[]> {
  const parent = new Set(distinctChunks(await manifestOf(vm, parentId)));
  return distinctChunks(await manifestOf(vm, childId)).filter((id) => !parent.has(id));
}

/** A non-zero chunk of the parent's data disk (which scribble leaves alone) that `snapshotId` reuses. */
async function reusedChunk(vm: Vm, parentId: string, snapshotId: string): Promise<string> {
  const changed = new Set(await changedChunks(vm, parentId, snapshotId));
  const data = (await manifestOf(vm, parentId)).disks.find((d) => d.name === 'data')!;
  return data.chunks.find((ref) => ref !== ZERO_CHUNK && !changed.has(ref))!;
}

/** Starts a snapshot and waits for it to fail: the typed failure, and the record it left. */
async function failedSnapshot(vm: Vm, name: string): Promise<{ type: unknown; record: SnapshotRecord }> {
  const started = await env.snapshots.createSnapshot({
    accountId: vm.accountId,
    vmId: vm.id,
    region: vm.region,
    name,
  });
  const failure = (await env.snapshots.watchProgress(started).then(
    () => ({}),
    (e: unknown) => e,
  )) as { type?: unknown };
  return { type: failure.type, record: env.platform.catalog.getSnapshot(started.snapshotId)! };
}

describe('verification of an incremental snapshot', () => {
  test('reads back only the chunks the incremental stored, each once', async () => {
    const vm = vmNamed('vm-trainer-01');
    const base = await takeSnapshot(env, vm, 'stored-base');
    expect(new Set(reads)).toEqual(new Set(distinctChunks(await manifestOf(vm, base.id)))); // a full one reads all
    reads = [];

    await scribble(env, vm, 'stored-one');
    const incremental = await takeSnapshot(env, vm, 'stored-incremental');
    expect(incremental).toMatchObject({ status: 'SUCCESS', parentSnapshotId: base.id });
    const changed = await changedChunks(vm, base.id, incremental.id);
    const all = distinctChunks(await manifestOf(vm, incremental.id));
    console.log(`incremental verification read ${reads.length} of ${all.length} distinct chunks`);
    expect(changed.length).toBeGreaterThan(0);
    expect(changed.length).toBeLessThan(all.length / 4);
    expect([...reads].sort()).toEqual([...changed].sort());
  });

  test('a reused chunk quarantined after compression fails it with ChunkCorrupt; the next one stores it again and reads it', async () => {
    const vm = vmNamed('vm-trainer-02');
    const base = await takeSnapshot(env, vm, 'quarantine-base');
    await scribble(env, vm, 'quarantine-one');
    let quarantined = '';
    atVerification = async (snapshotId) => {
      quarantined = await reusedChunk(vm, base.id, snapshotId);
      await env.platform.repositoryFor(vm.region).quarantineChunk(quarantined);
    };
    reads = [];
    const { type, record } = await failedSnapshot(vm, 'quarantine-reused');
    expect(type).toBe('ChunkCorrupt');
    expect(record).toMatchObject({ status: 'FAILED', failureType: 'ChunkCorrupt' });
    expect(record.failureReason).toContain(quarantined);
    expect(reads).toEqual([]); // found by the check of reused chunks, before anything was read

    // The parent is still SUCCESS, but its copy of the chunk is gone: the next capture stores it and reads it back.
    reads = [];
    const healed = await takeSnapshot(env, vm, 'quarantine-healed');
    expect(healed).toMatchObject({ status: 'SUCCESS', parentSnapshotId: base.id });
    expect(reads).toContain(quarantined);
  });

  test('a reused chunk lost after compression fails it with ChunkMissing', async () => {
    const vm = vmNamed('vm-infer-01');
    const base = await takeSnapshot(env, vm, 'lost-base');
    await scribble(env, vm, 'lost-one');
    let lost = '';
    atVerification = async (snapshotId) => {
      lost = await reusedChunk(vm, base.id, snapshotId);
      await loseChunk(env.platform.repositoryFor(vm.region), lost);
    };
    const { type, record } = await failedSnapshot(vm, 'lost-reused');
    expect(type).toBe('ChunkMissing');
    expect(record).toMatchObject({ status: 'FAILED', failureType: 'ChunkMissing' });
    expect(record.failureReason).toContain(lost);
  });

  test('a chunk it stored, corrupted after compression, fails it with ChunkCorrupt and is quarantined', async () => {
    const vm = vmNamed('vm-trainer-01');
    const base = await takeSnapshot(env, vm, 'corrupt-base');
    await scribble(env, vm, 'corrupt-one');
    let corrupted = '';
    atVerification = async (snapshotId) => {
      corrupted = (await changedChunks(vm, base.id, snapshotId))[0]!;
      await damageChunk(env.platform.repositoryFor(vm.region), corrupted);
    };
    const { type, record } = await failedSnapshot(vm, 'corrupt-stored');
    expect(type).toBe('ChunkCorrupt');
    expect(record).toMatchObject({ status: 'FAILED', failureType: 'ChunkCorrupt' });
    expect(record.failureReason).toContain(corrupted);
    const [status] = await env.platform.repositoryFor(vm.region).inspectChunks([corrupted]);
    expect(status).toEqual({ readable: false, quarantined: true });
  });
});

describe('the verification activity', () => {
  let pool: ChunkPool;
  let activities: Activities;

  beforeAll(() => {
    pool = new ChunkPool();
    activities = createActivities({
      catalog: env.platform.catalog,
      hypervisor: env.platform.hypervisor,
      repositoryFor: instrumented,
      pool,
      captureMaxBytesPerSecond: 0,
      hostId: DEFAULT_HOST_ID,
      hostStartTimeoutMs: DEFAULT_HOST_START_TIMEOUT_MS,
    });
  });

  afterAll(async () => {
    await pool.destroy();
  });

  /** Validation's reservation, then initiation, capture and compression, as the workflow runs them. */
  async function compressed(vm: Vm, snapshotId: string): Promise<CompressResult> {
    reserveTestSnapshot(env.platform.catalog, vm, snapshotId);
    const disks: DiskView[] = await new MockActivityEnvironment().run(activities.initiateSnapshot, snapshotId);
    const input = { snapshotId, region: vm.region, disks };
    const captured: CaptureResult = await new MockActivityEnvironment().run(activities.captureSnapshot, input);
    const result: CompressResult = await new MockActivityEnvironment().run(activities.compressSnapshot, {
      ...input,
      chunkSize: captured.chunkSize,
    });
    await env.platform.hypervisor.releaseViews(snapshotId);
    return result;
  }

  /** Runs verification, from `checkpoint` if given, collecting its heartbeats. */
  async function verify(vm: Vm, snapshotId: string, addedBytes: number, checkpoint?: VerifyCheckpoint) {
    const mock = new MockActivityEnvironment(
      checkpoint ? { heartbeatDetails: { checkpoint, progress: null } } : undefined,
    );
    const heartbeats: StageHeartbeat<VerifyCheckpoint>[] = [];
    mock.on('heartbeat', (d: StageHeartbeat<VerifyCheckpoint>) => heartbeats.push(d));
    const record: SnapshotRecord = await mock.run(activities.verifySnapshot, {
      snapshotId,
      region: vm.region,
      addedBytes,
    });
    return { record, heartbeats };
  }

  /** Raw bytes of the distinct chunks `ids` of a manifest. */
  function rawBytes(manifest: Manifest, ids: string[]): number {
    const wanted = new Set(ids);
    let bytes = 0;
    for (const disk of manifest.disks) {
      disk.chunks.forEach((ref, index) => {
        if (wanted.delete(ref)) bytes += chunkLength(disk, index);
      });
    }
    return bytes;
  }

  test('its progress total is the bytes it reads, and a retry resumes after its checkpoint', async () => {
    const vm = vmNamed('vm-newco-01');
    const base = await compressed(vm, 'snap-progress-base');
    await verify(vm, 'snap-progress-base', base.addedBytes);
    await scribble(env, vm, 'progress-one');
    const next = await compressed(vm, 'snap-progress-next');
    reads = [];

    const first = await verify(vm, 'snap-progress-next', next.addedBytes);
    expect(first.record.status).toBe('SUCCESS');
    const manifest = await manifestOf(vm, 'snap-progress-next');
    const changed = await changedChunks(vm, 'snap-progress-base', 'snap-progress-next');
    const bytesToRead = rawBytes(manifest, changed);
    expect(bytesToRead).toBeGreaterThan(0);
    expect(first.heartbeats.every((h) => h.progress.bytesTotal === bytesToRead)).toBe(true);
    expect(first.heartbeats.at(-1)!.progress.bytesDone).toBe(bytesToRead);
    expect([...reads].sort()).toEqual([...changed].sort());

    // A retry from the middle of the chunk list reads only the changed chunks from there on.
    const ids = distinctChunks(manifest);
    const middle = ids.indexOf(changed[Math.floor(changed.length / 2)]!);
    reads = [];
    const resumed = await verify(vm, 'snap-progress-next', next.addedBytes, { index: middle });
    expect(resumed.record.status).toBe('SUCCESS');
    const after = new Set(ids.slice(middle));
    expect([...reads].sort()).toEqual(changed.filter((id) => after.has(id)).sort());
    expect(resumed.heartbeats.at(-1)!.progress).toMatchObject({ bytesDone: bytesToRead, bytesTotal: bytesToRead });
  });
});

describe('planning a verification', () => {
  let root: string;
  let repository: LocalRepository;
  const id = (n: number) => String(n).repeat(64).slice(0, 64);
  const manifest = (chunks: string[]): Manifest => ({
    version: 1,
    snapshotId: 'snap-plan',
    accountId: 'acme',
    vmId: 'vm-plan',
    region: 'CANADA-1',
    parentSnapshotId: null,
    createdAt: new Date(0).toISOString(),
    vmConfig: {},
    disks: [{ name: 'root', sizeBytes: chunks.length * 1000 - 400, chunkSize: 1000, chunks }],
  });
  // Plans read no frame, so frames need not be valid zstd here.
  const frame = Buffer.from('frame');

  beforeEach(async () => {
    root = await makeTempDir();
    repository = new LocalRepository(root);
  });

  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  test('vouches for reused chunks that were never quarantined, reads one stored again since its quarantine', async () => {
    await repository.putChunks([1, 2, 3].map((n) => ({ id: id(n), frame })));
    await repository.quarantineChunk(id(2));
    expect(await repository.putChunks([{ id: id(2), frame }])).toEqual([id(2)]); // a later capture stored it again
    expect(await repository.inspectChunks([id(1), id(2)])).toEqual([
      { readable: true, quarantined: false },
      { readable: true, quarantined: true },
    ]);
    const plan = await planVerification({
      manifest: manifest([id(1), id(2), ZERO_CHUNK, id(3)]),
      repository,
      reused: new Set([id(1), id(2), id(9)]), // a reused id the manifest does not reference is left alone
    });
    expect([...plan.vouched]).toEqual([id(1)]);
    expect(plan.bytesToRead).toBe(1000 + 600); // chunk 2 and the short last chunk 3
  });

  test('a reused chunk with no readable copy fails the plan: quarantined ChunkCorrupt, absent ChunkMissing', async () => {
    await repository.putChunks([{ id: id(1), frame }]);
    await repository.quarantineChunk(id(1));
    const plan = (chunk: string) =>
      planVerification({ manifest: manifest([chunk]), repository, reused: new Set([chunk]) });
    await expect(plan(id(1))).rejects.toBeInstanceOf(ChunkCorruptError);
    await expect(plan(id(4))).rejects.toBeInstanceOf(ChunkMissingError);
  });
});
