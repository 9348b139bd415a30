import { z } from 'zod';
import { CURRENCIES } from './billing';
import type { Currency } from './billing';

/** Regions of the embedded platform; each has its own repository. */
export const REGIONS = ['CANADA-1', 'NORWAY-1', 'US-1'] as const;
export const RegionSchema = z.enum(REGIONS);
export type Region = z.infer<typeof RegionSchema>;

export const VM_STATUSES = ['ACTIVE', 'SHUTOFF', 'BUILD', 'PAUSED', 'ERROR'] as const;
export const VmStatusSchema = z.enum(VM_STATUSES);
export type VmStatus = z.infer<typeof VmStatusSchema>;

export const DiskSchema = z.object({
  name: z.string(),
  path: z.string(),
  sizeBytes: z.number().int().nonnegative(),
});
export type Disk = z.infer<typeof DiskSchema>;

/**
 * The host a worker stands for when SNAP_HOST_ID is not set, and the host the demo fleet is seeded on: a fixed name
 * rather than os.hostname(), so a data directory keeps its VMs' host across machines and renames, and the two-command
 * quick start needs no setting. Deployments with several hosts set SNAP_HOST_ID on each worker.
 */
export const DEFAULT_HOST_ID = 'local';

/** A host id: it is part of a task queue name (`<queue>-host-<host id>`), so letters, digits, `.`, `_` and `-`. */
export const HostIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'a host id is 1-63 letters, digits, ".", "_" or "-"');

/**
 * Where a VM's host-pinned steps run, as a workflow learns it from an activity's result (so a replay routes them the
 * same way): the VM's host, and how long a step may wait for a worker of that host to start it before the host is
 * taken as down (the worker's host start timeout).
 */
export interface HostPlacement {
  hostId: string;
  startTimeoutMs: number;
}

export const VmSchema = z.object({
  id: z.string(),
  /** The host whose hypervisor runs the VM: its disks, its views and its QEMU processes are there. */
  hostId: HostIdSchema,
  accountId: z.string(),
  name: z.string(),
  region: RegionSchema,
  flavor: z.string(),
  status: VmStatusSchema,
  config: z.record(z.string(), z.unknown()),
  disks: z.array(DiskSchema),
  /** Free-form tags (e.g. `nightly`, `team=ml`); snapshot policies can select the VMs of a region by label. */
  labels: z.array(z.string()).default([]),
});
export type Vm = z.infer<typeof VmSchema>;

/** How busy a VM is right now, as the hypervisor measures it: utilisation in percent (0–100). */
export const VmLoadSchema = z.object({
  cpuPercent: z.number().min(0).max(100),
  diskIoPercent: z.number().min(0).max(100),
});
export type VmLoad = z.infer<typeof VmLoadSchema>;

export const AccountSchema = z.object({
  id: z.string(),
  name: z.string(),
  profile: z.object({
    contactName: z.string().nullable(),
    contactEmail: z.string().nullable(),
    country: z.string().nullable(),
  }),
  billing: z.object({
    billingAddress: z.string().nullable(),
    paymentMethod: z.string().nullable(),
  }),
  currency: z.enum(CURRENCIES),
  /** Credit balance in micro-units of the currency. */
  creditMicros: z.number().int(),
});
export type Account = z.infer<typeof AccountSchema>;

/** The profile and billing fields a snapshot needs, as users see them named. */
const REQUIRED_ACCOUNT_FIELDS: [string, (a: Account) => string | null][] = [
  ['contact name', (a) => a.profile.contactName],
  ['contact email', (a) => a.profile.contactEmail],
  ['country', (a) => a.profile.country],
  ['billing address', (a) => a.billing.billingAddress],
  ['payment method', (a) => a.billing.paymentMethod],
];

/** What is missing from an account's profile and billing information; empty when complete. */
export function missingAccountFields(account: Account): string[] {
  return REQUIRED_ACCOUNT_FIELDS.filter(([, get]) => !get(account)?.trim()).map(([name]) => name);
}

/**
 * Snapshot lifecycle. The in-flight states are the five stages; SUCCESS is reached only after verification passed;
 * FAILED carries the typed reason (cancellation included); DAMAGED is a SUCCESS snapshot that re-verification found
 * with missing or corrupt chunks (the reason is kept); DELETED snapshots are gone from listings and billing.
 */
export const SNAPSHOT_STAGES = ['VALIDATING', 'INITIATING', 'CAPTURING', 'COMPRESSING', 'VERIFYING'] as const;
export const SnapshotStageSchema = z.enum(SNAPSHOT_STAGES);
export type SnapshotStage = z.infer<typeof SnapshotStageSchema>;
export const SnapshotStatusSchema = z.enum([...SNAPSHOT_STAGES, 'SUCCESS', 'FAILED', 'DAMAGED', 'DELETED']);
export type SnapshotStatus = z.infer<typeof SnapshotStatusSchema>;

/**
 * Whether a snapshot must quiesce the guest (as cloud APIs name it): `required` fails with `GuestFreezeFailed` when
 * the guest cannot be frozen; `best-effort` (the default) then takes a crash-consistent snapshot and records why.
 */
export const QUIESCE_MODES = ['best-effort', 'required'] as const;
export const QuiesceSchema = z.enum(QUIESCE_MODES);
export type Quiesce = z.infer<typeof QuiesceSchema>;
export const DEFAULT_QUIESCE: Quiesce = 'best-effort';

/**
 * What a snapshot's point in time guarantees: `application-consistent` (taken while the guest's file systems were
 * frozen, so flushed; `frozenMs`: for how long, from the freeze request to the thaw's answer, absent on snapshots
 * taken before it was recorded) or `crash-consistent` (the guest could not be frozen: the disks as after a power cut,
 * all at the same instant; writes still in the guest's page cache are missing), with the reason.
 */
export type Consistency =
  { kind: 'application-consistent'; frozenMs?: number } | { kind: 'crash-consistent'; reason: string };

/** How a snapshot's consistency reads everywhere it is shown: `crash-consistent: <reason>`, or null before initiation. */
export function describeConsistency(consistency: Consistency | null): string | null {
  if (consistency === null) return null;
  return consistency.kind === 'crash-consistent' ? `crash-consistent: ${consistency.reason}` : consistency.kind;
}

/** How long the guest was frozen for the snapshot, when it was and that was recorded. */
export function frozenMs(consistency: Consistency | null): number | null {
  return consistency?.kind === 'application-consistent' ? (consistency.frozenMs ?? null) : null;
}

/** The consistency with the freeze time, as one line: `application-consistent (guest frozen 42 ms)`. */
export function describeConsistencyLine(consistency: Consistency | null): string | null {
  const frozen = frozenMs(consistency);
  const line = describeConsistency(consistency);
  return frozen === null ? line : `${line} (guest frozen ${frozen} ms)`;
}

/**
 * A disk that an incremental snapshot's capture read whole (every data range), and why: its changes since the parent
 * could not be told (a QEMU checkpoint bitmap missing or inconsistent after an unclean exit, a driver that does not
 * track writes) or the parent's copy of it cannot be reused (the parent deleted, the disk resized).
 */
export interface FullRead {
  disk: string;
  reason: string;
}

/**
 * How a snapshot was captured, as the API and the page show it: `full` (no parent) or `incremental`, with the disks
 * read whole and why (every chunk read is still deduplicated: only changed chunks are stored); null before capture.
 */
export function describeCapture(
  record: Pick<SnapshotRecord, 'parentSnapshotId' | 'fullReads'>,
): { kind: 'full' | 'incremental'; readWhole: FullRead[] } | null {
  if (record.fullReads === null) return null;
  return { kind: record.parentSnapshotId === null ? 'full' : 'incremental', readWhole: record.fullReads };
}

/** describeCapture on one line: `incremental, read whole: root (bitmap … is inconsistent …)`. */
export function describeCaptureLine(record: Pick<SnapshotRecord, 'parentSnapshotId' | 'fullReads'>): string | null {
  const capture = describeCapture(record);
  if (capture === null) return null;
  if (capture.readWhole.length === 0) return capture.kind;
  return `${capture.kind}, read whole: ${capture.readWhole.map((read) => `${read.disk} (${read.reason})`).join('; ')}`;
}

export interface SnapshotRecord {
  id: string;
  accountId: string;
  vmId: string;
  vmName: string;
  region: Region;
  name: string;
  description: string;
  createAsImage: boolean;
  status: SnapshotStatus;
  workflowId: string;
  parentSnapshotId: string | null;
  vmConfig: Record<string, unknown> | null;
  /** What initiation got: frozen (application-consistent) or not (crash-consistent, with why); null until then. */
  consistency: Consistency | null;
  /**
   * What capture read whole of an incremental snapshot (see FullRead): empty when it read only what changed, or
   * when the snapshot is full; null until captured (and for snapshots from before it was recorded).
   */
  fullReads: FullRead[] | null;
  failureType: string | null;
  failureReason: string | null;
  /** Sum of the captured disks' sizes. */
  logicalBytes: number | null;
  /** Compressed bytes of the distinct chunks this snapshot references (what it would cost alone). */
  storedBytes: number | null;
  /** Compressed bytes this snapshot added to the region's repository (the rest was already there). */
  addedBytes: number | null;
  /** distinct raw bytes / stored bytes */
  compressionRatio: number | null;
  /** non-zero logical bytes / distinct raw bytes */
  dedupRatio: number | null;
  createdAt: string;
  completedAt: string | null;
  /** The client's idempotency key: a retried request with the same key gets this snapshot back. */
  idempotencyKey: string | null;
  /** Credit hold taken when the snapshot was accepted (micro-units of the account's currency). */
  creditHoldMicros: number;
  /** The snapshot policy whose scheduled run made this snapshot; null for snapshots users started. */
  policyId: string | null;
  /** When the snapshot's data was last read back and found intact (verification, then re-verification). */
  verifiedAt: string | null;
  deletedAt: string | null;
  /** Who deleted it: `user`, or `retention of policy <id>`. */
  deletedReason: string | null;
  /**
   * BLAKE3 of the snapshot's stored manifest bytes, recorded when compression wrote it; every read of the manifest
   * checks it (null: not written yet, or a snapshot from before manifests were digested).
   */
  manifestDigest: string | null;
}

/**
 * A boot image: the data of a snapshot made with "Create as Image" (or converted later), listed among boot sources.
 * It keeps its snapshot's manifest, and so its chunks, alive even after the snapshot itself is deleted.
 */
export interface ImageRecord {
  id: string;
  accountId: string;
  region: Region;
  name: string;
  /** The snapshot whose manifest the image uses. */
  snapshotId: string;
  flavor: string;
  vmConfig: Record<string, unknown>;
  logicalBytes: number;
  createdAt: string;
}

/** Live progress of a snapshot, as returned by the workflow's `progress` query. */
export interface SnapshotProgress {
  snapshotId: string;
  status: SnapshotStatus;
  /** Bytes handled in the current stage and the stage's total. */
  bytesDone: number;
  bytesTotal: number;
  /** Measured by the activity doing the work, bytes per second. */
  throughput: number;
  /** Seconds left in the current stage at the measured throughput; null when unknown. */
  etaSeconds: number | null;
  failureType: string | null;
  failureReason: string | null;
}

/** What an activity reports to its workflow while it runs. */
export interface StageProgress {
  stage: SnapshotStage | 'RESTORING';
  bytesDone: number;
  bytesTotal: number;
  throughput: number;
}

/** The in-flight stages, for "one snapshot in flight per VM". */
export function isInFlight(status: SnapshotStatus): boolean {
  return (SNAPSHOT_STAGES as readonly string[]).includes(status);
}

/** One account's storage charge for one UTC hour: written once (exactly once per account and hour). */
export interface HourlyCharge {
  accountId: string;
  /** Start of the UTC hour billed, ISO 8601. */
  hour: string;
  currency: Currency;
  /** Compressed bytes of the distinct chunks the account's snapshots and images referenced. */
  storedBytes: number;
  amountMicros: number;
  /** The charge split over what was stored; the amounts add up to `amountMicros`, the attributed bytes to `storedBytes`. */
  items: ChargeItem[];
}

export interface ChargeItem {
  /** A snapshot id, or an image id for an image whose snapshot was deleted. */
  itemId: string;
  kind: 'snapshot' | 'image';
  name: string;
  exclusiveBytes: number;
  sharedBytes: number;
  attributedBytes: number;
  amountMicros: number;
}
