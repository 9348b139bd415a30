import { distinctChunks } from '../dataplane';
import { ScheduleNotFoundError } from '@temporalio/client';
import { METERING_SCHEDULE_ID } from '../client/billing-client';
import { RATE_PER_TB_HOUR } from '../domain/billing';
import { HOUR_MS, hourStart } from '../domain/metering';
import type { Account } from '../domain/model';
import { openEmbeddedPlatform, writeGuestBlocks } from '../platform/local';
import { createSnapshotWorker } from '../worker/worker';
import { createSnapshotEnv, takeSnapshot, waitFor } from './helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';
import { connectTestClient, testWorkflowBundle } from './support/temporal';

let env: SnapshotEnv;
let worker: RunningWorker;
/** The hour being metered: taken once the snapshots exist, so they were completed before it ended. */
let thisHour: Date;

beforeAll(async () => {
  env = await createSnapshotEnv();
  worker = await env.startWorker();
  // fjord (INR) gets credit and newco (EUR) a complete profile, so every currency has a snapshot to bill.
  const catalog = env.platform.catalog;
  const acme = catalog.getAccount('acme')!;
  catalog.putAccount({ ...catalog.getAccount('fjord')!, creditMicros: 1_000_000_000 });
  catalog.putAccount({ ...catalog.getAccount('newco')!, profile: acme.profile, billing: acme.billing });
  const trainer = catalog.getVm('vm-trainer-01')!;
  await takeSnapshot(env, trainer, 'bill-full');
  await writeGuestBlocks(env.platform.hypervisor, trainer, 'root', [
    { offset: 8 * 4096, data: Buffer.alloc(4096, 'billing changes this block\n') },
  ]);
  await takeSnapshot(env, trainer, 'bill-incremental');
  await takeSnapshot(env, catalog.getVm('vm-fjord-01')!, 'bill-inr');
  await takeSnapshot(env, catalog.getVm('vm-newco-01')!, 'bill-eur');
  thisHour = hourStart(new Date());
});

afterAll(async () => {
  await worker.stop();
  await env.close();
});

/** What the account stores: the compressed bytes of the distinct chunks of its SUCCESS snapshots, read from disk. */
async function distinctStoredBytes(accountId: string): Promise<number> {
  const sizes = new Map<string, number>();
  for (const snapshot of env.platform.catalog.listSnapshots({ accountId, status: 'SUCCESS' })) {
    const repository = env.platform.repositoryFor(snapshot.region);
    for (const id of distinctChunks(await repository.readManifest(snapshot.id))) {
      sizes.set(`${snapshot.region}/${id}`, await repository.chunkStoredSize(id));
    }
  }
  return [...sizes.values()].reduce((a, b) => a + b, 0);
}

const account = (id: string): Account => env.platform.catalog.getAccount(id)!;
const nextHourOf = (hour: Date): string => new Date(hour.getTime() + HOUR_MS).toISOString();

describe('storage billing, exactly once per hour', () => {
  test('charges are the rate times the distinct stored bytes, in USD, EUR and INR, and debit the balance', async () => {
    const before = Object.fromEntries(['acme', 'fjord', 'newco'].map((id) => [id, account(id).creditMicros]));
    const result = await env.billing.meterHour(thisHour);
    expect(result.hour).toBe(thisHour.toISOString());

    for (const id of ['acme', 'fjord', 'newco']) {
      const charge = env.platform.catalog.listCharges(id).find((c) => c.hour === thisHour.toISOString())!;
      const bytes = await distinctStoredBytes(id);
      expect(charge.storedBytes).toBe(bytes);
      expect(bytes).toBeGreaterThan(0);
      // bytes / 10^12 TB × rate per TB-hour, in micro-units, rounded to the nearest micro-unit.
      const exact = (bytes / 1e12) * RATE_PER_TB_HOUR[account(id).currency] * 1e6;
      expect(Math.abs(charge.amountMicros - exact)).toBeLessThanOrEqual(0.5);
      expect(account(id).creditMicros).toBe(before[id]! - charge.amountMicros);
    }
    expect(env.platform.catalog.listCharges('fjord')[0]!.currency).toBe('INR');
    expect(env.platform.catalog.listCharges('newco')[0]!.currency).toBe('EUR');
  });

  test('shared chunks are charged once per account, and the per-snapshot figures add up to the charge', async () => {
    const charge = env.platform.catalog.listCharges('acme').find((c) => c.hour === thisHour.toISOString())!;
    const snapshots = env.platform.catalog.listSnapshots({ accountId: 'acme', status: 'SUCCESS' });
    const sumOfSnapshotSizes = snapshots.reduce((sum, s) => sum + (s.storedBytes ?? 0), 0);
    // The incremental snapshot shares almost everything with the full one: charged once.
    expect(charge.storedBytes).toBeLessThan(sumOfSnapshotSizes * 0.6);
    expect(charge.items.map((i) => i.name).sort()).toEqual(['bill-full', 'bill-incremental']);
    expect(charge.items.reduce((sum, i) => sum + i.amountMicros, 0)).toBe(charge.amountMicros);
    expect(charge.items.reduce((sum, i) => sum + i.attributedBytes, 0)).toBeCloseTo(charge.storedBytes, 3);
    for (const item of charge.items) {
      const record = snapshots.find((s) => s.id === item.itemId)!;
      expect(item.exclusiveBytes + item.sharedBytes).toBe(record.storedBytes);
      expect(item.sharedBytes).toBeGreaterThan(0);
    }
  });

  test('the same hour run twice charges once', async () => {
    const balance = account('acme').creditMicros;
    const again = await env.billing.meterHour(thisHour);
    expect(again.accounts.every((a) => !a.charged)).toBe(true);
    expect(account('acme').creditMicros).toBe(balance);
    expect(env.platform.catalog.listCharges('acme').filter((c) => c.hour === thisHour.toISOString())).toHaveLength(1);
  });

  test('a backfill of three missed hours charges each exactly once, on the hourly Schedule', async () => {
    // The Schedule's id is namespace-wide: one left on the test server by an earlier run is replaced, so that its task
    // queue is this test's and its action count starts at zero; it is deleted at the end.
    const schedule = env.client.schedule.getHandle(METERING_SCHEDULE_ID);
    await schedule.delete().catch((error: unknown) => {
      if (!(error instanceof ScheduleNotFoundError)) throw error;
    });
    await env.billing.ensureSchedule();
    try {
      const described = await schedule.describe();
      expect(described.policies.overlap).toBe('BUFFER_ALL');
      expect(described.action).toMatchObject({ workflowType: 'meteringWorkflow', taskQueue: env.taskQueue });
      // Fires at 3 h, 2 h and 1 h before this hour bill the 3 hours before those.
      const from = new Date(thisHour.getTime() - 3 * HOUR_MS - 60_000);
      const to = new Date(thisHour.getTime() - HOUR_MS + 60_000);
      const missed = [4, 3, 2].map((h) => new Date(thisHour.getTime() - h * HOUR_MS).toISOString());
      const balance = account('acme').creditMicros;
      await env.billing.backfill(from, to);
      // A repeated backfill must not charge again. Whether the server starts its runs at all varies (the Temporal
      // dev server here skips them: a scheduled run's id is the schedule's and the time); either way each hour is
      // charged once.
      await env.billing.backfill(from, to);
      await waitFor(async () => {
        const info = (await schedule.describe()).info;
        const charged = env.platform.catalog.listCharges('acme').map((c) => c.hour);
        return info.runningActions.length === 0 && missed.every((hour) => charged.includes(hour));
      });
      const hours = env.platform.catalog.listCharges('acme').map((c) => c.hour);
      for (const hour of missed) expect(hours.filter((h) => h === hour)).toHaveLength(1);
      // Those hours ended before the snapshots were made: nothing was stored then, nothing is charged (charging an
      // hour with real charges exactly once is the concurrent-metering test below).
      expect(
        env.platform.catalog
          .listCharges('acme')
          .filter((c) => missed.includes(c.hour))
          .map((c) => c.amountMicros),
      ).toEqual([0, 0, 0]);
      expect(account('acme').creditMicros).toBe(balance);
    } finally {
      await schedule.delete();
    }
  });

  test('deleting a snapshot stops its charge from the next hour', async () => {
    const doomed = env.platform.catalog.findSnapshotByName('acme', 'bill-full')!;
    await env.snapshots.deleteSnapshot('acme', doomed.id);
    const nextHour = new Date(thisHour.getTime() + HOUR_MS);
    await env.billing.meterHour(nextHour);
    const chargeFor = (hour: Date) =>
      env.platform.catalog.listCharges('acme').find((c) => c.hour === hour.toISOString())!;
    const [current, next] = [chargeFor(thisHour), chargeFor(nextHour)];
    expect(current.items.map((i) => i.itemId)).toContain(doomed.id);
    expect(next.items.map((i) => i.itemId)).not.toContain(doomed.id);
    expect(next.items.map((i) => i.name)).toEqual(['bill-incremental']);
    expect(next.storedBytes).toBe(await distinctStoredBytes('acme'));
  });

  test('cost visibility: hourly and month-to-date cost per account and per snapshot, and a low balance', () => {
    const now = new Date(thisHour.getTime() + HOUR_MS + 60_000);
    const bill = env.billing.accountBilling('acme', now);
    const charges = env.platform.catalog
      .listCharges('acme')
      .filter((c) => c.hour.slice(0, 7) === now.toISOString().slice(0, 7));
    expect(bill.monthToDateMicros).toBe(charges.reduce((sum, c) => sum + c.amountMicros, 0));
    expect(bill.hourlyMicros).toBe(charges.at(-1)!.amountMicros);
    expect(bill.items.find((i) => i.name === 'bill-incremental')!.hourlyMicros).toBe(bill.hourlyMicros);
    expect(bill.low).toBe(false);

    env.platform.catalog.putAccount({ ...account('fjord'), creditMicros: 50 });
    const fjord = env.billing.accountBilling('fjord', now);
    expect(fjord.hourlyMicros).toBeGreaterThan(0);
    expect(fjord.hoursLeft).toBe(Math.floor(50 / fjord.hourlyMicros));
    expect(fjord.low).toBe(true);
  });

  test("a policy's cost preview prices its retained snapshots at the account's rate", () => {
    const preview = env.policies.previewCost({
      accountId: 'acme',
      name: 'preview',
      target: { vmIds: ['vm-trainer-01'] },
      cadence: { kind: 'daily' },
      window: { start: '02:00', end: '05:00', timeZone: 'UTC' },
      retention: { keepLast: 5, keepWeekly: 2 },
    });
    const history = env.platform.catalog.listSnapshots({ vmId: 'vm-trainer-01', status: 'SUCCESS' });
    const full = history.at(-1)!.storedBytes!;
    const increment = history.find((s) => s.name === 'bill-incremental')!.addedBytes!;
    expect(preview.perVm).toEqual([
      { vmId: 'vm-trainer-01', vmName: 'trainer-01', retained: 7, estimatedBytes: Math.round(full + 6 * increment) },
    ]);
    const exact = (preview.totalBytes / 1e12) * RATE_PER_TB_HOUR.USD * 1e6;
    expect(Math.abs(preview.hourlyMicros - exact)).toBeLessThanOrEqual(0.5);
    expect(preview.monthlyMicros).toBe(preview.hourlyMicros * 730);
  });
  test('an hour with real charges metered twice at once, on two workers, is charged exactly once', async () => {
    // Two hours on, which no other test meters: the snapshots are billable then as in the hour after this one (last
    // metered, after bill-full was deleted).
    const hour = new Date(thisHour.getTime() + 2 * HOUR_MS);
    const expected = env.platform.catalog.listCharges('acme').find((c) => c.hour === nextHourOf(thisHour))!;
    expect(expected.amountMicros).toBeGreaterThan(0);
    const balance = account('acme').creditMicros;
    // A second worker on the same task queue with its own catalog connection, as another worker process has.
    const second = openEmbeddedPlatform(env.platform.dataDir);
    const temporal = await connectTestClient();
    const other = await createSnapshotWorker({
      connection: temporal.nativeConnection,
      namespace: temporal.client.options.namespace,
      taskQueue: env.taskQueue,
      platform: second,
      workflowBundle: testWorkflowBundle(),
    });
    try {
      const results = await other.worker.runUntil(
        Promise.all([env.billing.meterHour(hour), env.billing.meterHour(hour)]),
      );
      const acmeResults = results.map((r) => r.accounts.find((a) => a.accountId === 'acme')!);
      expect(acmeResults.map((a) => a.charged).sort()).toEqual([false, true]);
      expect(acmeResults.map((a) => a.amountMicros)).toEqual([expected.amountMicros, expected.amountMicros]);
    } finally {
      await other.pool.destroy();
      second.catalog.close();
      await temporal.close();
    }
    const ledger = env.platform.catalog.listCharges('acme').filter((c) => c.hour === hour.toISOString());
    expect(ledger.map((c) => [c.amountMicros, c.storedBytes])).toEqual([[expected.amountMicros, expected.storedBytes]]);
    expect(account('acme').creditMicros).toBe(balance - expected.amountMicros);
  });
});
