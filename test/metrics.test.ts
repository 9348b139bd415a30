import net from 'node:net';
import type { SnapshotView } from '../api/schemas';
import { installPrometheusRuntime } from '../worker/metrics';
import { startApiServer } from './helpers/api-server';
import type { RunningApi } from './helpers/api-server';
import { createSnapshotEnv, waitFor } from './helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';
import { uniqueId } from './support/temporal';

const MiB = 1024 * 1024;

/** A port nothing listens on now (the OS hands out a free one, which is closed again for the SDK to bind). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The value of each series in a Prometheus text scrape, by its full name with labels as printed. */
function parseScrape(text: string): Map<string, number> {
  const series = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    series.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return series;
}

/** The one series of `name` whose labels include every one of `labels`; fails unless exactly one matches. */
function valueOf(series: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels).map(([label, value]) => `${label}="${value}"`);
  const matches = [...series].filter(([key]) => {
    const [seriesName, rest = ''] = key.split('{');
    return seriesName === name && wanted.every((pair) => rest.includes(pair));
  });
  if (matches.length !== 1) throw new Error(`${matches.length} series ${name}${JSON.stringify(labels)}`);
  return matches[0]![1];
}

let workerMetricsUrl: string;
let env: SnapshotEnv;
let worker: RunningWorker;
let api: RunningApi;

beforeAll(async () => {
  // Before the first Temporal connection of this process: the SDK's runtime is made once, by that connection.
  workerMetricsUrl = `http://127.0.0.1:${await freePort()}/metrics`;
  installPrometheusRuntime(new URL(workerMetricsUrl).host);
  env = await createSnapshotEnv();
  // Capture at 48 MiB/s: a test VM's 96 MiB take about two seconds, long enough to cancel one while it runs.
  worker = await env.startWorker({ captureMaxBytesPerSecond: 48 * MiB });
  api = await startApiServer(env);
});

afterAll(async () => {
  await api?.close();
  await worker?.stop();
  await env?.close();
});

async function waitForStatus(id: string, done: (status: string) => boolean) {
  return waitFor(async () => {
    const { body } = await api.call<SnapshotView>('acme', 'GET', `/api/snapshots/${id}`);
    return done(body.status) ? body : undefined;
  }, 90_000);
}

test('the worker and the API expose Prometheus metrics of a real snapshot and a cancelled one', async () => {
  const create = (vmId: string) =>
    api.call<SnapshotView>('acme', 'POST', '/api/snapshots', { vmId, region: 'CANADA-1', name: uniqueId('metrics') });
  const done = await create('vm-trainer-01');
  expect(done.status).toBe(202);
  const success = await waitForStatus(done.body.id, (status) => status === 'SUCCESS' || status === 'FAILED');
  expect(success.status).toBe('SUCCESS');
  const record = env.platform.catalog.getSnapshot(done.body.id)!;
  const vm = env.platform.catalog.getVm('vm-trainer-01')!;
  const diskBytes = vm.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0);

  const cancelled = await create('vm-trainer-02');
  await waitForStatus(cancelled.body.id, (status) => status === 'CAPTURING');
  expect((await api.call('acme', 'DELETE', `/api/snapshots/${cancelled.body.id}`)).status).toBe(204);
  await waitFor(() => env.platform.catalog.getSnapshot(cancelled.body.id)?.failureType === 'Cancelled', 60_000);

  const workerScrape = await (await fetch(workerMetricsUrl)).text();
  const fromWorker = parseScrape(workerScrape);
  const queue = { task_queue: env.taskQueue };
  expect(valueOf(fromWorker, 'snap_snapshots_ended', { ...queue, outcome: 'success', failure_type: 'none' })).toBe(1);
  expect(valueOf(fromWorker, 'snap_snapshots_ended', { ...queue, outcome: 'failed', failure_type: 'Cancelled' })).toBe(
    1,
  );
  // Capture reads only the chunks the (sparse) seeded images hold data in.
  const captureRead = valueOf(fromWorker, 'snap_stage_bytes', { stage: 'captureSnapshot', direction: 'read' });
  expect(captureRead).toBeGreaterThan(0);
  expect(captureRead).toBeLessThanOrEqual(diskBytes);
  expect(valueOf(fromWorker, 'snap_stage_bytes', { stage: 'compressSnapshot', direction: 'stored' })).toBe(
    record.addedBytes,
  );
  expect(valueOf(fromWorker, 'snap_stage_duration_count', { stage: 'verifySnapshot', outcome: 'completed' })).toBe(1);
  expect(valueOf(fromWorker, 'snap_freeze_duration_count', queue)).toBe(2);
  // The SDK's own runtime metrics are on the same endpoint.
  expect(valueOf(fromWorker, 'temporal_worker_start', queue)).toBeGreaterThanOrEqual(1);

  const apiScrape = await api.scrapeMetrics();
  const fromApi = parseScrape(apiScrape);
  const created = { method: 'POST', route: '/api/snapshots', status: '202' };
  expect(valueOf(fromApi, 'snap_api_requests_total', created)).toBe(2);
  const deleted = { method: 'DELETE', route: '/api/snapshots/:id', status: '204' };
  expect(valueOf(fromApi, 'snap_api_requests_total', deleted)).toBe(1);
  const successes = env.platform.catalog.listSnapshots({ status: 'SUCCESS' }).length;
  expect(valueOf(fromApi, 'snap_catalog_snapshots', { status: 'SUCCESS' })).toBe(successes);
  expect(valueOf(fromApi, 'snap_task_queue_backlog', { ...queue, type: 'activity' })).toBe(0);
});
