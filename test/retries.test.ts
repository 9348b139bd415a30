import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { distinctChunks } from '../dataplane';
import type { LocalRepository, Repository } from '../dataplane';
import { PERMANENT_ERROR_TYPES } from '../domain/errors';
import type { Region, Vm } from '../domain/model';
import { damageChunk } from './helpers/repository';
import { activityRecords, localActivityRecords, onlyActivity } from './helpers/history';
import { createSnapshotEnv, refusal, takeSnapshot } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';

/**
 * The retry and timeout policies as the server applies them, read from the workflows' histories: which attempt of an
 * activity ran last, with which options it was scheduled, and whether its failure was marked non-retryable.
 */
let env: SnapshotEnv;

beforeAll(async () => {
  env = await createSnapshotEnv();
});

afterAll(async () => {
  await env.close();
});

const vmNamed = (id: string): Vm => env.platform.catalog.getVm(id)!;

/** The region's repository with `getChunks` (verification's and restore's reads) replaced by `read`. */
function withReads(
  read: (real: LocalRepository, ids: string[], into?: Buffer) => Promise<Buffer[]>,
): (region: Region) => Repository {
  return (region) => {
    const real = env.platform.repositoryFor(region) as LocalRepository;
    return Object.assign(Object.create(real) as LocalRepository, {
      getChunks: (ids: string[], into?: Buffer) => read(real, ids, into),
    });
  };
}

async function createAndFail(
  vm: Vm,
  name: string,
): Promise<{ snapshotId: string; workflowId: string; error: WorkflowFailedError }> {
  const started = await env.snapshots.createSnapshot({
    accountId: vm.accountId,
    vmId: vm.id,
    region: vm.region,
    name,
  });
  const error = await env.client.workflow
    .getHandle(started.workflowId)
    .result()
    .then(
      () => undefined,
      (e: unknown) => e,
    );
  expect(error).toBeInstanceOf(WorkflowFailedError);
  return { ...started, error: error as WorkflowFailedError };
}

describe('retry and timeout policies', () => {
  test('data and catalog stages are scheduled with the documented timeouts and retry policies', async () => {
    const worker = await env.startWorker();
    try {
      const record = await takeSnapshot(env, vmNamed('vm-trainer-01'), 'policies');
      const history = await env.client.workflow.getHandle(record.workflowId).fetchHistory();
      for (const stage of ['captureSnapshot', 'compressSnapshot', 'verifySnapshot']) {
        const { scheduled, started } = onlyActivity(history, stage);
        expect(Number(scheduled.heartbeatTimeout?.seconds)).toBe(10);
        expect(Number(scheduled.startToCloseTimeout?.seconds)).toBe(12 * 3600);
        expect(scheduled.retryPolicy).toMatchObject({ maximumAttempts: 10, backoffCoefficient: 2 });
        expect(Number(scheduled.retryPolicy?.initialInterval?.seconds)).toBe(1);
        expect(Number(scheduled.retryPolicy?.maximumInterval?.seconds)).toBe(60);
        expect([...(scheduled.retryPolicy?.nonRetryableErrorTypes ?? [])].sort()).toEqual(
          [...PERMANENT_ERROR_TYPES].sort(),
        );
        expect(started.attempt).toBe(1);
      }
      // Validation is a local activity (its options are not in the history): it ran once, in its first attempt.
      expect(localActivityRecords(history, 'validateSnapshot').map((v) => v.attempt)).toEqual([1]);
    } finally {
      await worker.stop();
    }
  });

  test('a transient read failure in verification is retried, and the second attempt succeeds', async () => {
    let failuresLeft = 1;
    const worker = await env.startWorker({
      repositoryFor: withReads((real, ids, into) => {
        if (failuresLeft > 0) {
          failuresLeft--;
          return Promise.reject(Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' }));
        }
        return real.getChunks(ids, into);
      }),
    });
    try {
      const record = await takeSnapshot(env, vmNamed('vm-trainer-02'), 'transient-read');
      expect(record.status).toBe('SUCCESS');
      expect(failuresLeft).toBe(0);
      const history = await env.client.workflow.getHandle(record.workflowId).fetchHistory();
      const verify = onlyActivity(history, 'verifySnapshot');
      expect(verify.started.attempt).toBe(2);
      expect(verify.started.lastFailure?.message).toBe('EIO: i/o error, read');
      expect(verify.failure).toBeUndefined();
    } finally {
      await worker.stop();
    }
  });

  test('corruption found by verification is never retried: one attempt, ChunkCorrupt, the snapshot FAILED', async () => {
    const worker = await env.startWorker({
      // Every frame verification reads back comes with one byte flipped, as a failing disk would return it.
      repositoryFor: withReads(async (real, ids, into) => {
        const frames = await real.getChunks(ids, into);
        for (const frame of frames) frame[frame.length >> 1]! ^= 0xff;
        return frames;
      }),
    });
    try {
      const vm = vmNamed('vm-infer-01');
      const { snapshotId, workflowId, error } = await createAndFail(vm, 'corrupt-read');
      expect(error.cause).toMatchObject({ type: 'ChunkCorrupt', nonRetryable: true });
      const history = await env.client.workflow.getHandle(workflowId).fetchHistory();
      const verify = onlyActivity(history, 'verifySnapshot');
      expect(verify.started.attempt).toBe(1);
      expect(verify.failure?.applicationFailureInfo).toMatchObject({ type: 'ChunkCorrupt', nonRetryable: true });
      expect(env.platform.catalog.getSnapshot(snapshotId)).toMatchObject({
        status: 'FAILED',
        failureType: 'ChunkCorrupt',
      });
    } finally {
      await worker.stop();
    }
  });

  test('a restore that reads a chunk corrupted on disk fails at once with ChunkCorrupt, never retried', async () => {
    const worker = await env.startWorker();
    try {
      const vm = vmNamed('vm-trainer-01');
      const record = await takeSnapshot(env, vm, 'to-corrupt');
      const repository = env.platform.repositoryFor(vm.region);
      const [chunk] = distinctChunks(await repository.readManifest(record.id));
      const repair = await damageChunk(repository, chunk!);
      const failure = await refusal(
        env.snapshots.restoreDisk({
          accountId: vm.accountId,
          snapshotId: record.id,
          diskName: 'root',
          targetPath: path.join(env.platform.dataDir, 'corrupt-restore.raw'),
        }),
      );
      expect(failure.type).toBe('ChunkCorrupt');
      await repair();
      const restores = [];
      const query = `WorkflowType = "restoreDiskWorkflow" AND TaskQueue = "${env.taskQueue}"`;
      for await (const run of env.client.workflow.list({ query })) restores.push(run);
      expect(restores).toHaveLength(1);
      const history = await env.client.workflow.getHandle(restores[0]!.workflowId).fetchHistory();
      const [restore] = activityRecords(history, 'restoreSnapshotDisk');
      expect(restore?.started.attempt).toBe(1);
      expect(restore?.failure?.applicationFailureInfo).toMatchObject({ type: 'ChunkCorrupt', nonRetryable: true });
    } finally {
      await worker.stop();
    }
  });
});
