/**
 * Create latency under load: 50 concurrent creates on one VM, each timed from the moment it is sent to its answer
 * (accepted, or refused with its type). Issue 15 asks for every answer within 2 s; this prints the figures.
 *
 * Starts its own dev server (in memory), an embedded platform with the small test fleet in a temporary directory and
 * one worker whose capture is throttled (so the accepted snapshot is still in flight while the others are answered),
 * then runs ROUNDS rounds: 50 creates of distinct names on vm-trainer-01 at once, then waits for the one accepted.
 *
 * Usage: npx tsx scripts/load-create.ts [concurrency=50] [rounds=3]
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { SnapshotClient } from '../client/snapshot-client';
import { startDevServer } from '../devserver/dev-server';
import { ensureTemporalCli } from '../devserver/temporal-cli';
import { SnapshotError } from '../domain/errors';
import type { StartedSnapshot } from '../client/snapshot-client';
import { openEmbeddedPlatform, seedDemoFleet } from '../platform/local';
import { createSnapshotWorker } from '../worker/worker';

const MiB = 2 ** 20;
/** Capture rate cap: the demo VM's 96 MiB take about 3 s, long enough for every rival to arrive while it runs. */
const CAPTURE_BYTES_PER_SECOND = 32e6;

async function main(): Promise<void> {
  const concurrency = Number(process.argv[2] ?? 50);
  const rounds = Number(process.argv[3] ?? 3);
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const log = (message: string) => process.stderr.write(`${message}\n`);
  const server = await startDevServer({ cliPath: await ensureTemporalCli(log), port: 0, uiPort: false });
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'load-create-'));
  const platform = openEmbeddedPlatform(dataDir);
  await seedDemoFleet(platform.catalog, {
    dataDir,
    rootDiskBytes: 64 * MiB,
    dataDiskBytes: 32 * MiB,
    rootSources: ['/usr/share/perl', '/usr/share/i18n', '/usr/share/doc'],
    dataSources: ['/usr/share/i18n', '/usr/share/zoneinfo', '/usr/share/doc'],
  });
  const nativeConnection = await NativeConnection.connect({ address: server.address });
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection, namespace: server.namespace });
  const taskQueue = 'load-create';
  const { worker, pool } = await createSnapshotWorker({
    connection: nativeConnection,
    namespace: server.namespace,
    taskQueue,
    platform,
    captureMaxBytesPerSecond: CAPTURE_BYTES_PER_SECOND,
  });
  const running = worker.run();
  const snapshots = new SnapshotClient({ client, catalog: platform.catalog, taskQueue });
  // Warm-up: the worker's first workflow task loads the bundle; a real service has done that long before.
  await snapshots.watchProgress(
    await snapshots.createSnapshot({ accountId: 'acme', vmId: 'vm-infer-01', region: 'NORWAY-1', name: 'warm-up' }),
  );

  const all: number[] = [];
  for (let round = 1; round <= rounds; round++) {
    const outcomes = await Promise.all(
      Array.from({ length: concurrency }, async (_, i) => {
        const sent = performance.now();
        const answer = await snapshots
          .createSnapshot({ accountId: 'acme', vmId: 'vm-trainer-01', region: 'CANADA-1', name: `load-${round}-${i}` })
          .then(
            (started: StartedSnapshot) => ({ accepted: started }),
            (error: unknown) => ({ refused: error instanceof SnapshotError ? error.type : String(error) }),
          );
        return { ...answer, ms: performance.now() - sent };
      }),
    );
    const ms = outcomes.map((o) => o.ms);
    all.push(...ms);
    const types = new Map<string, number>();
    for (const o of outcomes) {
      const key = 'accepted' in o ? 'accepted' : o.refused;
      types.set(key, (types.get(key) ?? 0) + 1);
    }
    console.log(`round ${round}: ${[...types].map(([t, n]) => `${n} ${t}`).join(', ')}; ${summary(ms)}`);
    for (const o of outcomes) if ('accepted' in o) await snapshots.watchProgress(o.accepted);
  }
  console.log(`all ${all.length} creates: ${summary(all)}`);

  worker.shutdown();
  await running;
  await pool.destroy();
  await connection.close();
  await nativeConnection.close();
  platform.catalog.close();
  await server.stop();
  await fs.rm(dataDir, { recursive: true, force: true });
}

function summary(ms: number[]): string {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return `answered in p50 ${fmt(at(0.5))}, p95 ${fmt(at(0.95))}, max ${fmt(sorted.at(-1)!)}`;
}

function fmt(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
