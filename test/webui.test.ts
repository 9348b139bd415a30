import { randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure, defaultPayloadConverter } from '@temporalio/common';
import type { StartedSnapshot } from '../client/snapshot-client';
import { CreateSnapshotRequestSchema } from '../domain/requests';
import type { snapshotWorkflow } from '../workflows';
import { snapshotStartOptions } from '../workflows/start-options';
import type { StageHeartbeat } from '../activities/progress';
import { CaptureGate, createSnapshotEnv, waitFor } from './helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';
import { uniqueId } from './support/temporal';

/**
 * What an operator sees in the Temporal Web UI, read through the same APIs the UI uses: visibility queries on the
 * search attributes, the workflow's user metadata (static summary and details, current details), the activities'
 * summaries in the history, and the failure of a failed run. (test/snapshot.test.ts checks the five attributes
 * together and the static summary.)
 */

const MiB = 1024 * 1024;
const REQUESTER = 'ops@acme.example';

let env: SnapshotEnv;
let worker: RunningWorker;
/** Holds the capture, so the run is in data capture while the test reads its current details. */
const capture = new CaptureGate();

beforeAll(async () => {
  env = await createSnapshotEnv();
  worker = await env.startWorker({ captureGate: capture });
});

afterAll(async () => {
  await worker?.stop();
  await env?.close();
});

/** The Web UI's list for a query: workflow ids, once visibility has caught up with `expected`. */
async function findWorkflows(query: string, expected: string): Promise<string[]> {
  return waitFor(async () => {
    const ids: string[] = [];
    for await (const execution of env.client.workflow.list({ query })) ids.push(execution.workflowId);
    return ids.includes(expected) ? ids : undefined;
  });
}

/** What the Web UI shows as "Current Details": the workflow's built-in metadata query. */
async function currentDetails(workflowId: string): Promise<string> {
  const metadata = await env.client.workflow
    .getHandle(workflowId)
    .query<{ currentDetails: string }>('__temporal_workflow_metadata');
  return metadata.currentDetails;
}

describe('Web UI inspection of snapshot workflows', () => {
  const name = uniqueId('webui');
  let started: StartedSnapshot;

  beforeAll(async () => {
    started = await env.snapshots.createSnapshot({
      accountId: 'acme',
      vmId: 'vm-trainer-01',
      region: 'CANADA-1',
      name,
      description: 'Before the CUDA upgrade',
      requestedBy: REQUESTER,
    });
  });

  test('the current stage is the current details and its progress the pending activity heartbeat details, then the final state', async () => {
    const handle = env.client.workflow.getHandle(started.workflowId);
    // What the Web UI shows of the pending activity: its type and its last heartbeat details.
    const pending = await waitFor(async () => {
      // Initiation is pending first, and heartbeats without details: wait for the capture's first heartbeat.
      const activity = (await handle.describe()).raw.pendingActivities?.[0];
      const payloads = activity?.heartbeatDetails?.payloads;
      if (activity?.activityType?.name !== 'captureSnapshot' || !payloads?.length) return undefined;
      return defaultPayloadConverter.fromPayload<StageHeartbeat<unknown> | undefined>(payloads[0]!);
    });
    // Held at its first read: nothing read yet, the checkpoint at the first chunk of the first disk.
    expect(pending).toEqual({
      checkpoint: { disk: 0, chunk: 0 },
      progress: { stage: 'CAPTURING', bytesDone: 0, bytesTotal: 96 * MiB, throughput: 0 },
    });
    const during = await currentDetails(started.workflowId);
    expect(during).toMatch(/^\*\*CAPTURING\*\* — /);
    expect(during).toContain(name);
    expect(during).toContain('vm-trainer-01');
    capture.release();
    const record = await env.snapshots.watchProgress(started);
    expect(record.status).toBe('SUCCESS');
    expect(await currentDetails(started.workflowId)).toMatch(
      /^\*\*SUCCESS\*\*.*, application-consistent \(guest frozen \d+ ms\), full$/,
    );
  });

  test('the workflow is found by each of its five search attributes on its own', async () => {
    const attributes: [string, string][] = [
      ['SnapshotAccount', 'acme'],
      ['SnapshotVm', 'vm-trainer-01'],
      ['SnapshotRegion', 'CANADA-1'],
      ['SnapshotName', name],
      ['SnapshotStatus', 'SUCCESS'],
    ];
    for (const [attribute, value] of attributes) {
      expect(await findWorkflows(`${attribute} = "${value}"`, started.workflowId)).toContain(started.workflowId);
    }
    // Combined as the README shows them.
    const finished = `SnapshotAccount = "acme" AND SnapshotStatus IN ("SUCCESS", "FAILED")`;
    expect(await findWorkflows(finished, started.workflowId)).toContain(started.workflowId);
    // The name is unique in the account: that query finds this snapshot's workflow and nothing else.
    expect(await findWorkflows(`SnapshotName = "${name}"`, started.workflowId)).toEqual([started.workflowId]);
  });

  test('the static summary and details name the VM, the snapshot and who requested it', async () => {
    const description = await env.client.workflow.getHandle(started.workflowId).describe();
    expect(await description.staticSummary()).toBe(`Snapshot "${name}" of trainer-01 - H100-SXM5-80GB (CANADA-1)`);
    const details = await description.staticDetails();
    expect(details).toContain('**VM**: trainer-01 (`vm-trainer-01`), H100-SXM5-80GB, CANADA-1');
    expect(details).toContain(`**Snapshot**: ${name} (\`${started.snapshotId}\`)`);
    expect(details).toContain(`**Account**: acme, requested by ${REQUESTER}`);
    expect(details).toContain('**Description**: Before the CUDA upgrade');
    expect(details).toContain('**Quiesce**: best-effort (crash-consistent if the guest cannot be frozen)');
  });

  test('every stage activity carries a summary in the history (validation on its local-activity marker)', async () => {
    const history = await env.client.workflow.getHandle(started.workflowId).fetchHistory();
    const scheduled = (history.events ?? [])
      .filter((event) => event.activityTaskScheduledEventAttributes)
      .map((event) => ({
        activity: event.activityTaskScheduledEventAttributes!.activityType!.name,
        summary: event.userMetadata?.summary
          ? defaultPayloadConverter.fromPayload<string>(event.userMetadata.summary)
          : undefined,
      }));
    const stages = scheduled.filter((s) => s.activity?.endsWith('Snapshot') && s.activity !== 'markSnapshotFailed');
    // Validation is a local activity: the history records it as a marker, which carries the summary too.
    const markers = (history.events ?? []).filter((event) => event.markerRecordedEventAttributes);
    expect(
      markers.map((event) => defaultPayloadConverter.fromPayload<string>(event.userMetadata!.summary!).split(':')[0]),
    ).toEqual(['Validation']);
    expect(stages.map((s) => [s.activity, s.summary?.split(':')[0]])).toEqual([
      ['initiateSnapshot', 'Initiation'],
      ['captureSnapshot', 'Data capture'],
      ['compressSnapshot', 'Compression'],
      ['verifySnapshot', 'Verification'],
    ]);
  });

  test('a failed snapshot is found by SnapshotStatus = "FAILED" and carries its typed reason', async () => {
    // A run started directly (as a scheduled run starts its child): the workflow's validation refuses it.
    const vm = env.platform.catalog.getVm('vm-builder-01')!;
    const request = CreateSnapshotRequestSchema.parse({
      accountId: 'acme',
      vmId: vm.id,
      region: vm.region,
      name: uniqueId('webui-failed'),
      requestedBy: REQUESTER,
    });
    const snapshotId = `snap-${randomUUID()}`;
    const handle = await env.client.workflow.start<typeof snapshotWorkflow>('snapshotWorkflow', {
      ...snapshotStartOptions({ snapshotId, request }, vm),
      taskQueue: env.taskQueue,
    });
    const failure = await handle.result().then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    const cause = (failure as WorkflowFailedError).cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect((cause as ApplicationFailure).type).toBe('VmNotActive');
    expect(cause!.message).toContain('builder-01 is BUILD');

    // The Web UI shows the failure of the run's last event and lists it under the operator's query.
    const history = await handle.fetchHistory();
    const failed = history.events!.at(-1)!.workflowExecutionFailedEventAttributes!.failure!;
    expect(failed.applicationFailureInfo?.type).toBe('VmNotActive');
    const query = `SnapshotAccount = "acme" AND SnapshotStatus = "FAILED"`;
    expect(await findWorkflows(query, handle.workflowId)).toContain(handle.workflowId);
    expect(await currentDetails(handle.workflowId)).toMatch(/^\*\*FAILED\*\*/);
  });
});
