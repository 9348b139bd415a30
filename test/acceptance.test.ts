import { randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { SnapshotError } from '../domain/errors';
import type { CreateSnapshotRequest } from '../domain/requests';
import { CreateSnapshotRequestSchema } from '../domain/requests';
import type { snapshotWorkflow } from '../workflows';
import { snapshotStartOptions } from '../workflows/start-options';
import { createSnapshotWorker } from '../worker/worker';
import { createSnapshotEnv, refusal } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';
import { connectTestClient, testWorkflowBundle, uniqueId } from './support/temporal';

let env: SnapshotEnv;

beforeAll(async () => {
  env = await createSnapshotEnv();
  // Capture throttled (~32 MB/s, about 3 s per VM) so a snapshot stays in flight while other requests arrive.
  await env.startWorker({ captureMaxBytesPerSecond: 32e6 });
});

afterAll(async () => {
  await env.close();
});

const trainer = { accountId: 'acme', vmId: 'vm-trainer-01', region: 'CANADA-1' } as const;

describe('idempotency keys', () => {
  test('20 concurrent creates with one key and the same fields are all the same snapshot, and so is a later retry', async () => {
    const request: CreateSnapshotRequest = { ...trainer, name: 'idem-20', idempotencyKey: 'key-20' };
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => env.snapshots.createSnapshot(request)));
    const ids = results.map((r) => (r.status === 'fulfilled' ? r.value.snapshotId : (r.reason as SnapshotError).type));
    expect(new Set(ids).size).toBe(1);
    const [snapshotId] = ids;
    expect(snapshotId).toMatch(/^snap-/);
    const record = await env.snapshots.watchProgress({ snapshotId: snapshotId!, workflowId: 'snapshot/acme/idem-20' });
    expect(record.status).toBe('SUCCESS');
    // After it finished, the catalog knows the key: the retry is answered with the same snapshot, nothing new made.
    const later = await env.snapshots.createSnapshot(request);
    expect(later.snapshotId).toBe(snapshotId);
    expect(env.platform.catalog.listSnapshots({ accountId: 'acme' }).filter((s) => s.name === 'idem-20')).toHaveLength(
      1,
    );
    expect(env.platform.catalog.heldCredits('acme')).toBe(0);
  });

  test('the same key with other fields is IdempotencyKeyReused, while in flight and after, whatever the name', async () => {
    const request: CreateSnapshotRequest = {
      ...trainer,
      vmId: 'vm-trainer-02',
      name: 'idem-other',
      idempotencyKey: 'key-o',
    };
    const started = await env.snapshots.createSnapshot(request);
    // In flight: a request for the same name joins the run, whose update handler compares the fields.
    const joined = await refusal(env.snapshots.createSnapshot({ ...request, description: 'changed' }));
    expect(joined.type).toBe('IdempotencyKeyReused');
    expect(joined.message).toContain(`"key-o" was already used for snapshot ${started.snapshotId}`);
    // Another name is another workflow: the catalog's record of the key refuses it.
    const renamed = await refusal(env.snapshots.createSnapshot({ ...request, name: 'idem-renamed' }));
    expect(renamed.type).toBe('IdempotencyKeyReused');
    await env.snapshots.watchProgress(started);
    const after = await refusal(env.snapshots.createSnapshot({ ...request, createAsImage: true }));
    expect(after.type).toBe('IdempotencyKeyReused');
    // The same name without the key is another request: the name is taken.
    expect((await refusal(env.snapshots.createSnapshot({ ...request, idempotencyKey: undefined }))).type).toBe(
      'SnapshotNameTaken',
    );
    const live = env.platform.catalog.listSnapshots({ accountId: 'acme' }).filter((s) => s.name.startsWith('idem-'));
    expect(live.filter((s) => s.idempotencyKey === 'key-o').map((s) => s.id)).toEqual([started.snapshotId]);
  });
});

describe('acceptance', () => {
  test('a refused create is answered with its typed refusal, and the name stays free for a corrected request', async () => {
    const refused = await refusal(env.snapshots.createSnapshot({ ...trainer, vmId: 'vm-builder-01', name: 'fixed' }));
    expect(refused.type).toBe('VmNotActive');
    const accepted = await env.snapshots.createSnapshot({
      ...trainer,
      vmId: 'vm-infer-01',
      region: 'NORWAY-1',
      name: 'fixed',
    });
    expect((await env.snapshots.watchProgress(accepted)).status).toBe('SUCCESS');
  });

  test('a request made while the VM had a snapshot in flight is SnapshotInProgress even if validated after it ended', async () => {
    const first = await env.snapshots.createSnapshot({ ...trainer, name: 'in-flight-first' });
    // The second request arrives now, but its validation runs only once the first has ended: its workflow is on a
    // task queue no worker polls until then.
    const lateQueue = uniqueId('late');
    const request = CreateSnapshotRequestSchema.parse({ ...trainer, name: 'in-flight-second' });
    const snapshotId = `snap-${randomUUID()}`;
    const vm = env.platform.catalog.getVm(trainer.vmId)!;
    const handle = await env.client.workflow.start<typeof snapshotWorkflow>('snapshotWorkflow', {
      ...snapshotStartOptions({ snapshotId, request }, vm),
      taskQueue: lateQueue,
    });
    expect((await env.snapshots.watchProgress(first)).status).toBe('SUCCESS');
    const temporal = await connectTestClient();
    const { worker, pool } = await createSnapshotWorker({
      connection: temporal.nativeConnection,
      namespace: temporal.client.options.namespace,
      taskQueue: lateQueue,
      platform: env.platform,
      workflowBundle: testWorkflowBundle(),
    });
    const failure = await worker.runUntil(handle.result().catch((e: unknown) => e));
    await pool.destroy();
    await temporal.close();
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    const cause = (failure as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect(cause.type).toBe('SnapshotInProgress');
    expect(cause.message).toContain(`("in-flight-first", ${first.snapshotId})`);
    expect(env.platform.catalog.getSnapshot(snapshotId)).toBeUndefined();
  });
});
