/**
 * A snapshot worker in a process of its own, for tests that SIGKILL it: `node --import tsx worker-process.ts
 * <dataDir> <taskQueue>`, connected to the test run's Temporal server (the TEST_ENV variables the jest global setup
 * sets, inherited). Prints `ready` once it polls. Fault wrappers, chosen by environment variables:
 * - SNAP_TEST_SLOW_OPEN_VIEWS_MS: the step of openViews that fixes the views' moment (run frozen) takes this much
 *   longer, so the guest stays frozen.
 * - SNAP_TEST_CAPTURE_BYTES_PER_SECOND: caps the capture's read rate, so a capture lasts long enough to be killed.
 * - SNAP_TEST_PUT_DELAY_MS / SNAP_TEST_GET_DELAY_MS: each repository putChunks / getChunks call waits this long first,
 *   so a compression / verification lasts long enough to be killed.
 * - SNAP_TEST_COUNTS_FILE: after every view read and getChunks call, the process's totals so far (`viewBytesRead`,
 *   `chunksRead`) are written there as JSON, so a test sees how much a resumed stage re-read.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { writeFileSync } from 'node:fs';
import type { DiskReader, Repository } from '../../dataplane';
import type { Region } from '../../domain/model';
import type { DiskView } from '../../platform/ports';
import { openEmbeddedPlatform } from '../../platform/local';
import type { LocalHypervisor } from '../../platform/local';
import { createSnapshotWorker } from '../../worker/worker';
import { connectTestClient, testWorkflowBundle } from '../support/temporal';

async function main(): Promise<void> {
  const [dataDir, taskQueue] = process.argv.slice(2);
  if (!dataDir || !taskQueue) throw new Error('usage: worker-process.ts <dataDir> <taskQueue>');
  const platform = openEmbeddedPlatform(dataDir);
  const slowOpenViewsMs = Number(process.env.SNAP_TEST_SLOW_OPEN_VIEWS_MS ?? 0);
  const countsFile = process.env.SNAP_TEST_COUNTS_FILE;
  const counts = { viewBytesRead: 0, chunksRead: 0 };
  const count = (key: keyof typeof counts, n: number): void => {
    counts[key] += n;
    if (countsFile) writeFileSync(countsFile, JSON.stringify(counts));
  };
  const hypervisor: LocalHypervisor = Object.create(platform.hypervisor) as LocalHypervisor;
  hypervisor.readView = async (view): Promise<DiskReader> => {
    const reader = await platform.hypervisor.readView(view);
    return {
      read: async (buffer, position) => (await reader.read(buffer, position), count('viewBytesRead', buffer.length)),
      close: () => reader.close(),
    };
  };
  // The views' moment is slow to pass: the guest stays frozen that long (the freeze wraps the step).
  hypervisor.openViews = (vm, viewId, options): Promise<DiskView[]> =>
    platform.hypervisor.openViews(vm, viewId, {
      ...options,
      atPointInTime: (step) =>
        options!.atPointInTime!(async () => {
          const views = await step();
          await sleep(slowOpenViewsMs);
          return views;
        }),
    });
  const putDelayMs = Number(process.env.SNAP_TEST_PUT_DELAY_MS ?? 0);
  const getDelayMs = Number(process.env.SNAP_TEST_GET_DELAY_MS ?? 0);
  const repositoryFor = (region: Region): Repository => {
    const repository = platform.repositoryFor(region);
    const slowed = Object.create(repository) as Repository;
    slowed.putChunks = async (chunks) => (await sleep(putDelayMs), repository.putChunks(chunks));
    slowed.getChunks = async (ids, into) => {
      await sleep(getDelayMs);
      const frames = await repository.getChunks(ids, into);
      count('chunksRead', ids.length);
      return frames;
    };
    return slowed;
  };
  const temporal = await connectTestClient();
  const { worker } = await createSnapshotWorker({
    connection: temporal.nativeConnection,
    namespace: temporal.client.options.namespace,
    taskQueue,
    platform: { ...platform, hypervisor, repositoryFor },
    captureMaxBytesPerSecond: Number(process.env.SNAP_TEST_CAPTURE_BYTES_PER_SECOND ?? 0),
    workflowBundle: testWorkflowBundle(),
  });
  const running = worker.run();
  process.stdout.write('ready\n');
  await running;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
