import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import { ScheduleOverlapPolicy } from '@temporalio/client';
import type { MeteredAccount } from '../activities/metering';
import type { Currency } from '../domain/billing';
import { SnapshotError } from '../domain/errors';
import type { ChargeItem, HourlyCharge } from '../domain/model';
import { HOUR_MS, hourStart } from '../domain/metering';
import type { Catalog } from '../platform/ports';
import type { meteringWorkflow } from '../workflows';
import { createScheduleIfMissing } from './schedules';

export const METERING_SCHEDULE_ID = 'billing/hourly';

/** Hours of storage a balance must still cover before it is reported low. */
export const LOW_BALANCE_HOURS = 7 * 24;

export interface ItemCost {
  itemId: string;
  kind: ChargeItem['kind'];
  name: string;
  exclusiveBytes: number;
  sharedBytes: number;
  /** Its charge in the last metered hour. */
  hourlyMicros: number;
  monthToDateMicros: number;
}

export interface AccountBilling {
  accountId: string;
  currency: Currency;
  balanceMicros: number;
  /** Credit holds of snapshots in flight. */
  heldMicros: number;
  availableMicros: number;
  /** The last metered hour (null before the first). */
  lastHour: string | null;
  storedBytes: number;
  hourlyMicros: number;
  monthToDateMicros: number;
  /** Hours of storage at the current hourly cost the available balance still covers (null when nothing is billed). */
  hoursLeft: number | null;
  /** Below LOW_BALANCE_HOURS of cover, or nothing available: new snapshots will soon be refused (never deleted). */
  low: boolean;
  items: ItemCost[];
}

/**
 * Storage billing: the hourly metering Schedule, on-demand metering (backfills, tests), and what an account and each
 * of its snapshots cost.
 */
export class BillingClient {
  constructor(private readonly options: { client: Client; catalog: Catalog; taskQueue: string }) {}

  /**
   * Creates the hourly metering Schedule if missing: at minute 0 of every UTC hour, buffering overlapping runs (an
   * hour is never skipped) and catching up on up to a week of missed hours after downtime.
   */
  async ensureSchedule(): Promise<void> {
    await createScheduleIfMissing(this.options.client, {
      scheduleId: METERING_SCHEDULE_ID,
      spec: { calendars: [{ minute: 0, hour: '*' }], timezone: 'UTC' },
      action: {
        type: 'startWorkflow',
        workflowType: 'meteringWorkflow',
        taskQueue: this.options.taskQueue,
        workflowId: 'metering',
        args: [{}],
        staticSummary: 'Hourly storage metering',
      },
      policies: { overlap: ScheduleOverlapPolicy.BUFFER_ALL, catchupWindow: 7 * 24 * HOUR_MS },
    });
  }

  /** Meters the UTC hour containing `hour` now (idempotent per account and hour). */
  async meterHour(hour: Date): Promise<{ hour: string; accounts: MeteredAccount[] }> {
    const start = hourStart(hour).toISOString();
    return this.options.client.workflow.execute<typeof meteringWorkflow>('meteringWorkflow', {
      workflowId: `metering/${start}/${randomUUID()}`,
      taskQueue: this.options.taskQueue,
      args: [{ hour: start }],
      staticSummary: `Storage metering for ${start}`,
    });
  }

  /** Runs the hourly Schedule for the hours between `from` and `to` that it missed (each bills the hour before). */
  async backfill(from: Date, to: Date): Promise<void> {
    await this.options.client.schedule
      .getHandle(METERING_SCHEDULE_ID)
      .backfill({ start: from, end: to, overlap: ScheduleOverlapPolicy.BUFFER_ALL });
  }

  /** Balance, holds, current hourly cost, month-to-date total and per-snapshot costs of an account. */
  accountBilling(accountId: string, now = new Date()): AccountBilling {
    const account = this.options.catalog.getAccount(accountId);
    if (!account) throw new SnapshotError('AccountNotFound', `Account ${accountId} does not exist.`);
    const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
    // One read: this month's charges, and the last two days' (the last metered hour lies there unless metering stopped).
    const since = new Date(Math.min(monthStart.getTime(), now.getTime() - 48 * HOUR_MS));
    const recent = this.options.catalog.listCharges(accountId, since);
    const charges = recent.filter((c) => c.hour >= monthStart.toISOString());
    const last: HourlyCharge | undefined = recent.at(-1);
    const items = new Map<string, ItemCost>();
    for (const charge of charges) {
      for (const item of charge.items) {
        const cost = items.get(item.itemId) ?? { ...item, hourlyMicros: 0, monthToDateMicros: 0 };
        cost.monthToDateMicros += item.amountMicros;
        items.set(item.itemId, cost);
      }
    }
    for (const item of last?.items ?? []) {
      items.set(item.itemId, {
        ...item,
        hourlyMicros: item.amountMicros,
        monthToDateMicros: items.get(item.itemId)?.monthToDateMicros ?? 0,
      });
    }
    const heldMicros = this.options.catalog.heldCredits(accountId);
    const availableMicros = account.creditMicros - heldMicros;
    const hourlyMicros = last?.amountMicros ?? 0;
    const hoursLeft = hourlyMicros > 0 ? Math.max(0, Math.floor(availableMicros / hourlyMicros)) : null;
    return {
      accountId,
      currency: account.currency,
      balanceMicros: account.creditMicros,
      heldMicros,
      availableMicros,
      lastHour: last?.hour ?? null,
      storedBytes: last?.storedBytes ?? 0,
      hourlyMicros,
      monthToDateMicros: charges.reduce((sum, c) => sum + c.amountMicros, 0),
      hoursLeft,
      low: availableMicros <= 0 || (hoursLeft !== null && hoursLeft < LOW_BALANCE_HOURS),
      items: [...items.values()].map(
        ({ itemId, kind, name, exclusiveBytes, sharedBytes, hourlyMicros, monthToDateMicros }) => ({
          itemId,
          kind,
          name,
          exclusiveBytes,
          sharedBytes,
          hourlyMicros,
          monthToDateMicros,
        }),
      ),
    };
  }
}
