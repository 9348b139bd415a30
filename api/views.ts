import type { AccountBilling, ItemCost } from '../client/billing-client';
import type { PolicyView } from '../client/policy-client';
import { NO_ACTIVE_VMS, type EligibleVm } from '../client/snapshot-client';
import type { Currency } from '../domain/billing';
import { formatMoney } from '../domain/billing';
import type { ImageRecord, Region, SnapshotProgress, SnapshotRecord } from '../domain/model';
import { SNAPSHOT_STAGES, describeCapture, describeConsistency, frozenMs } from '../domain/model';
import { formatWindow } from '../domain/windows';
import type { Money, Progress, SnapshotView } from './schemas';

/** How the API shows what the client libraries return; the CLI's `--output json` prints the same. */

export function money(micros: number, currency: Currency): Money {
  return { micros, currency, text: formatMoney(micros, currency) };
}

/** A snapshot's cost from billing: its charge in the last metered hour and this month. */
export function costView(item: ItemCost, currency: Currency): NonNullable<SnapshotView['cost']> {
  return { hourly: money(item.hourlyMicros, currency), monthToDate: money(item.monthToDateMicros, currency) };
}

/** Each snapshot's cost from the account's bill (null: not billed yet). */
export function snapshotCosts(bill: AccountBilling): (snapshotId: string) => SnapshotView['cost'] {
  const items = new Map(bill.items.map((item) => [item.itemId, costView(item, bill.currency)]));
  return (snapshotId) => items.get(snapshotId) ?? null;
}

/** The ACTIVE VMs of a region, as the Create Snapshot dropdown lists them, each with its credit hold. */
export function eligibleVmsView(region: Region, eligible: EligibleVm[], creditHold: (vmId: string) => string) {
  return {
    region,
    vms: eligible.map(({ vm, label }) => ({
      id: vm.id,
      name: vm.name,
      flavor: vm.flavor,
      region: vm.region,
      label,
      creditHold: creditHold(vm.id),
    })),
    createDisabledReason: eligible.length === 0 ? NO_ACTIVE_VMS : null,
  };
}

export function imagesView(images: ImageRecord[]) {
  return {
    images: images.map((image) => ({
      id: image.id,
      name: image.name,
      region: image.region,
      snapshotId: image.snapshotId,
      flavor: image.flavor,
      logicalBytes: image.logicalBytes,
      createdAt: image.createdAt,
    })),
  };
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

/** One policy in full: as listed, and what its recent runs did. */
export function policyDetailView(view: PolicyView) {
  return {
    ...policyView(view),
    recentRuns: view.recentRuns.map((run) => ({
      scheduledAt: run.scheduledAt.toISOString(),
      startedAt: run.startedAt.toISOString(),
      workflowId: run.workflowId,
      runId: run.runId,
      status: run.status,
      outcome: run.outcome,
    })),
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
