import { promises as fs } from 'node:fs';
import type { SnapshotProgress } from '../domain/model';
import { createSnapshotEnv } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';

let env: SnapshotEnv;

beforeAll(async () => {
  env = await createSnapshotEnv();
});

afterAll(async () => {
  await env.close();
});

/**
 * A snapshot's history must not grow with its duration (Temporal terminates a run past 51,200 events): a snapshot
 * takes a fixed number of events, whatever the disk size. 60 leaves room for every stage, the acceptance update and
 * the compensations' bookkeeping; a signal per second of progress would add three or more events a second.
 */
const HISTORY_EVENT_BOUND = 60;

/** Takes a snapshot of trainer-02 (96 MiB) with capture throttled to `bytesPerSecond`; its events and readings. */
async function throttledSnapshot(name: string, bytesPerSecond: number) {
  const worker = await env.startWorker({ captureMaxBytesPerSecond: bytesPerSecond });
  try {
    const started = await env.snapshots.createSnapshot({
      accountId: 'acme',
      vmId: 'vm-trainer-02',
      region: 'CANADA-1',
      name,
    });
    const readings: SnapshotProgress[] = [];
    const record = await env.snapshots.watchProgress(started, (p) => readings.push(p));
    expect(record.status).toBe('SUCCESS');
    const history = await env.client.workflow.getHandle(started.workflowId).fetchHistory();
    const events = history.events!;
    // How activity completions batch into workflow tasks varies from run to run (the two final cleanups may finish
    // in one task or two); every other event is the snapshot's own.
    const own = events.filter(
      (e) =>
        !e.workflowTaskScheduledEventAttributes &&
        !e.workflowTaskStartedEventAttributes &&
        !e.workflowTaskCompletedEventAttributes,
    );
    const signals = events.filter((e) => e.workflowExecutionSignaledEventAttributes).length;
    return { events: events.length, own: own.map((e) => e.eventType), signals, readings };
  } finally {
    await worker.stop();
  }
}

/** The bytes trainer-02's disks hold (capture reads only those, and the throttle counts what it reads). */
async function trainerDataBytes(): Promise<number> {
  const vm = env.platform.catalog.getVm('vm-trainer-02')!;
  const sizes = await Promise.all(vm.disks.map(async (disk) => (await fs.stat(disk.path)).blocks * 512));
  return sizes.reduce((sum, bytes) => sum + bytes, 0);
}

test('a snapshot history has a fixed number of events however long its stages run, and progress still advances', async () => {
  // About 3 s of capture, then about 9 s.
  const dataBytes = await trainerDataBytes();
  const short = await throttledSnapshot('history-short', dataBytes / 3);
  const long = await throttledSnapshot('history-long', dataBytes / 9);
  expect(long.own).toEqual(short.own);
  expect([short.signals, long.signals]).toEqual([0, 0]);
  expect(short.events).toBeLessThan(HISTORY_EVENT_BOUND);
  expect(long.events).toBeLessThan(HISTORY_EVENT_BOUND);

  // Progress was read from the capture activity's heartbeats while it ran: several rising readings, each with the
  // stage's total and a measured throughput, then the final SUCCESS.
  const capturing = long.readings.filter((p) => p.status === 'CAPTURING' && p.bytesDone > 0);
  expect(capturing.length).toBeGreaterThanOrEqual(3);
  const done = capturing.map((p) => p.bytesDone);
  expect(done).toEqual([...done].sort((a, b) => a - b));
  expect(new Set(done).size).toBeGreaterThanOrEqual(3);
  expect(capturing.every((p) => p.bytesTotal === 96 * 2 ** 20 && p.throughput > 0)).toBe(true);
  expect(capturing.every((p) => p.etaSeconds !== null && p.etaSeconds >= 0)).toBe(true);
  expect(long.readings.at(-1)).toMatchObject({ status: 'SUCCESS', bytesDone: 96 * 2 ** 20 });
});
