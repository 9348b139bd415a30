import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { ensureTimeSkippingServer } from '../devserver/temporal-cli';
import type { SnapshotPolicyInput } from '../domain/policies';
import { SEARCH_ATTRIBUTE_NAMES } from '../domain/search-attributes';
import type { EmbeddedPlatform } from '../platform/local';
import { openEmbeddedPlatform } from '../platform/local';
import { createSnapshotWorker } from '../worker/worker';
import type { scheduledSnapshotWorkflow } from '../workflows';
import { seedTestFleet } from './helpers/snapshot-env';
import { testWorkflowBundle, uniqueId } from './support/temporal';

/**
 * Scheduled runs that wait hours for a busy VM, on Temporal's time-skipping test server: durable timers fire as soon
 * as nothing else is pending, so three hours of waiting take seconds. The snapshots themselves are real (real worker,
 * real disk images), only the clock is skipped. The test server has no Schedules; runs are started directly, as a
 * Schedule would start them (Schedules themselves are tested against the dev server in schedules.test.ts).
 */
let env: TestWorkflowEnvironment;
let platform: EmbeddedPlatform;
let dataDir: string;

const HOUR = 60 * 60 * 1000;

beforeAll(async () => {
  const server = await ensureTimeSkippingServer();
  env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: server } },
  });
  // The test server knows no custom search attributes until they are registered (2 = Keyword).
  await env.connection.operatorService.addSearchAttributes({
    namespace: env.namespace ?? 'default',
    searchAttributes: Object.fromEntries(SEARCH_ATTRIBUTE_NAMES.map((name) => [name, 2])),
  });
  dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-timeskip-'));
  platform = openEmbeddedPlatform(dataDir);
  await seedTestFleet(platform);
});

afterAll(async () => {
  await env?.teardown();
  platform?.catalog.close();
  if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
});

/**
 * A three-hour window opening at the test server's current minute (UTC), so runs start inside it. The server's clock
 * runs ahead of the machine's once time was skipped.
 */
async function policyFor(vmId: string, overrides: Partial<SnapshotPolicyInput> = {}): Promise<SnapshotPolicyInput> {
  const now = new Date(await env.currentTimeMs());
  const hhmm = (d: Date) => d.toISOString().slice(11, 16);
  return {
    accountId: 'acme',
    name: uniqueId('run').toLowerCase(),
    target: { vmIds: [vmId] },
    cadence: { kind: 'daily' },
    window: { start: hhmm(now), end: hhmm(new Date(now.getTime() + 3 * HOUR)), timeZone: 'UTC' },
    loadThreshold: { cpuPercent: 40, diskIoPercent: 40 },
    loadCheckSeconds: 300,
    retention: { keepLast: 5 },
    ...overrides,
  };
}

async function withWorker<T>(fn: (taskQueue: string) => Promise<T>): Promise<T> {
  const taskQueue = uniqueId('timeskip');
  const { worker, pool } = await createSnapshotWorker({
    connection: env.nativeConnection,
    namespace: env.namespace ?? 'default',
    taskQueue,
    platform,
    workflowBundle: testWorkflowBundle(),
  });
  try {
    return await worker.runUntil(fn(taskQueue));
  } finally {
    await pool.destroy();
  }
}

function start(taskQueue: string, policy: SnapshotPolicyInput) {
  return env.client.workflow.start<typeof scheduledSnapshotWorkflow>('scheduledSnapshotWorkflow', {
    taskQueue,
    workflowId: uniqueId('scheduled'),
    args: [policy as Parameters<typeof scheduledSnapshotWorkflow>[0]],
  });
}

describe('scheduled runs wait for low load with durable timers (time-skipping server)', () => {
  test('a VM busy until the window closes is skipped, and the run records why', async () => {
    await platform.hypervisor.setLoad('vm-trainer-01', { cpuPercent: 90, diskIoPercent: 70 });
    const result = await withWorker(async (taskQueue) =>
      (await start(taskQueue, await policyFor('vm-trainer-01'))).result(),
    );

    expect(result.vms).toHaveLength(1);
    const [vm] = result.vms;
    expect(vm!.outcome).toBe('skipped');
    expect(vm!.reason).toMatch(/the window closed after waiting \d+ min while trainer-01 stayed busy \(CPU 90%/);
    // It waited (in skipped time) until the window closed: close to three hours.
    expect(vm!.waitedSeconds).toBeGreaterThan(2.9 * 3600);
    expect(vm!.waitedSeconds).toBeLessThanOrEqual(3 * 3600);
    expect(result.decisions[0]).toContain('inside the window');
    expect(result.decisions.some((d) => d.includes('trainer-01 is busy (CPU 90%, disk I/O 70%)'))).toBe(true);
    expect(result.decisions.at(-1)).toContain('skipped trainer-01');
    expect(platform.catalog.listSnapshots({ vmId: 'vm-trainer-01' })).toHaveLength(0);
  });

  test('a VM that quiets down after 45 minutes is snapshotted then', async () => {
    await platform.hypervisor.setLoad('vm-trainer-02', { cpuPercent: 95, diskIoPercent: 5 });
    const result = await withWorker(async (taskQueue) => {
      const handle = await start(taskQueue, await policyFor('vm-trainer-02'));
      await env.sleep('45 minutes');
      await platform.hypervisor.setLoad('vm-trainer-02', { cpuPercent: 10, diskIoPercent: 5 });
      return handle.result();
    });

    const [vm] = result.vms;
    expect(result.decisions[0]).toContain('inside the window');
    expect(vm!.outcome).toBe('snapshot');
    // The load is read every 5 minutes: the run noticed within one interval of the drop.
    expect(vm!.waitedSeconds).toBeGreaterThanOrEqual(45 * 60);
    expect(vm!.waitedSeconds).toBeLessThanOrEqual(50 * 60 + 60);
    expect(
      result.decisions.some((d) =>
        /trainer-02 quiet \(CPU 10%, disk I\/O 5%\) after waiting (4[5-9]|5[01]) min/.test(d),
      ),
    ).toBe(true);
    expect(platform.catalog.getSnapshot(vm!.snapshotId!)).toMatchObject({ status: 'SUCCESS', name: vm!.snapshotName });
  });

  test('with "snapshot-anyway", a VM still busy when the window closes is snapshotted regardless', async () => {
    await platform.hypervisor.setLoad('vm-infer-01', { cpuPercent: 20, diskIoPercent: 99 });
    const result = await withWorker(async (taskQueue) =>
      (await start(taskQueue, await policyFor('vm-infer-01', { onWindowClose: 'snapshot-anyway' }))).result(),
    );

    const [vm] = result.vms;
    expect(vm!.outcome).toBe('snapshot');
    expect(vm!.waitedSeconds).toBeGreaterThan(2.9 * 3600);
    expect(result.decisions.some((d) => d.includes('taking the snapshot anyway, as the policy says'))).toBe(true);
    expect(platform.catalog.getSnapshot(vm!.snapshotId!)?.status).toBe('SUCCESS');
  });

  test('a run whose policy is invalid (a Schedule edited by hand) fails at once with InvalidPolicy', async () => {
    const policy = await policyFor('vm-infer-01', { retention: { keepLast: 0 } });
    const before = platform.catalog.listSnapshots({ vmId: 'vm-infer-01' }).length;
    const failure = await withWorker(async (taskQueue) =>
      (await start(taskQueue, policy)).result().then(
        () => undefined,
        (error: unknown) => error,
      ),
    );
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    const cause = (failure as WorkflowFailedError).cause?.cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect(cause).toMatchObject({ type: 'InvalidPolicy', nonRetryable: true });
    expect((cause as ApplicationFailure).message).toMatch(/^Invalid retention\.keepLast: /);
    expect(platform.catalog.listSnapshots({ vmId: 'vm-infer-01' })).toHaveLength(before);
  });
});
