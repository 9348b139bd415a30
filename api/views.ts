import type { AccountBilling, ItemCost } from '../client/billing-client';
import type { PolicyView } from '../client/policy-client';
import type { Currency } from '../domain/billing';
import { formatMoney } from '../domain/billing';
import type { SnapshotProgress, SnapshotRecord } from '../domain/model';
import { SNAPSHOT_STAGES, describeCapture, describeConsistency, frozenMs } from '../domain/model';
import { formatWindow } from '../domain/windows';
import type { Money, Progress, SnapshotView } from './schemas';

/** How the API shows what the client libraries return. */

export function money(micros: number, currency: Currency): Money {
  return { micros, currency, text: formatMoney(micros, currency) };
}

/** A snapshot's cost from billing: its charge in the last metered hour and this month. */
export function costView(item: ItemCost, currency: Currency): NonNullable<SnapshotView['cost']> {
  return { hourly: money(item.hourlyMicros, currency), monthToDate: money(item.monthToDateMicros, currency) };
}

export function snapshotView(
  record: SnapshotRecord & { progress?: SnapshotProgress },
  cost: SnapshotView['cost'],
): SnapshotView {
  return {
    id: record.id,
    name: record.name,
    description: record.description,
    vmId: record.vmId,
    vmName: record.vmName,
    region: record.region,
    // The workflow's live status is newer than the catalog's while the snapshot runs.
    status: record.progress?.status ?? record.status,
    createAsImage: record.createAsImage,
    consistency: describeConsistency(record.consistency),
    frozenMs: frozenMs(record.consistency),
    capture: describeCapture(record),
    createdAt: record.createdAt,
    completedAt: record.completedAt,
    failureType: record.failureType,
    failureReason: record.failureReason,
    logicalBytes: record.logicalBytes,
    storedBytes: record.storedBytes,
    addedBytes: record.addedBytes,
    compressionRatio: record.compressionRatio,
    dedupRatio: record.dedupRatio,
    progress: record.progress ? progressView(record.progress) : null,
    cost,
  };
}

function progressView(progress: SnapshotProgress): Progress | null {
  const stageNumber = (SNAPSHOT_STAGES as readonly string[]).indexOf(progress.status) + 1;
  if (stageNumber === 0) return null;
  return {
    stage: progress.status,
    stageNumber,
    stageCount: SNAPSHOT_STAGES.length,
    bytesDone: progress.bytesDone,
    bytesTotal: progress.bytesTotal,
    percent: progress.bytesTotal > 0 ? Math.min(100, Math.floor((100 * progress.bytesDone) / progress.bytesTotal)) : 0,
    bytesPerSecond: progress.throughput,
    etaSeconds: progress.etaSeconds,
  };
}

export function policyView(view: PolicyView) {
  const { policy } = view;
  return {
    name: policy.name,
    description: policy.description,
    target: policy.target,
    cadence: policy.cadence,
    window: formatWindow(policy.window),
    retention: policy.retention,
    createAsImage: policy.createAsImage,
    quiesce: policy.quiesce,
    paused: view.paused,
    note: view.note,
    nextRuns: view.nextRuns.map((t) => t.toISOString()),
  };
}

export function billingView(bill: AccountBilling) {
  const m = (micros: number) => money(micros, bill.currency);
  return {
    accountId: bill.accountId,
    balance: m(bill.balanceMicros),
    held: m(bill.heldMicros),
    available: m(bill.availableMicros),
    lastHour: bill.lastHour,
    storedBytes: bill.storedBytes,
    hourly: m(bill.hourlyMicros),
    monthToDate: m(bill.monthToDateMicros),
    hoursLeft: bill.hoursLeft,
    low: bill.low,
    items: bill.items.map((item) => ({
      itemId: item.itemId,
      kind: item.kind,
      name: item.name,
      exclusiveBytes: item.exclusiveBytes,
      sharedBytes: item.sharedBytes,
      hourly: m(item.hourlyMicros),
      monthToDate: m(item.monthToDateMicros),
    })),
  };
}
