import { z } from 'zod';
import { SnapshotError } from './errors';
import { DEFAULT_QUIESCE, QuiesceSchema, RegionSchema } from './model';
import type { Vm, VmLoad } from './model';
import { DEFAULT_NAME_TEMPLATE, NameTemplateSchema, PurposeSchema } from './naming';
import { RetentionSchema } from './retention';
import { LowActivityWindowSchema, WEEKDAYS, windowContaining } from './windows';
import type { LowActivityWindow } from './windows';

/** Policy names: short, lower-case, URL- and id-safe (`nightly`, `hourly-trainers`). Unique per account. */
export const PolicyNameSchema = z
  .string()
  .regex(
    /^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$/,
    'must be 1–40 characters of lower-case letters, digits and "-", starting and ending with a letter or digit',
  );

/** Which VMs a policy snapshots: explicit ids, or every VM of the account in a region carrying a label. */
export const PolicyTargetSchema = z.union([
  z.object({ vmIds: z.array(z.string().min(1)).min(1, 'name at least one VM') }).strict(),
  z.object({ region: RegionSchema, label: z.string().min(1) }).strict(),
]);
export type PolicyTarget = z.infer<typeof PolicyTargetSchema>;

/**
 * How often the policy runs. Every kind starts inside the low-activity window: `hourly` at the window's start minute
 * of every hour the window is open, `daily` when the window opens on each of its days, `weekly` when it opens on one
 * of them. A `cron` expression (in the window's time zone) gives full control; a run it starts outside the window is
 * treated like a manual trigger (see `runDeadline`).
 */
export const CadenceSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('hourly') }).strict(),
  z.object({ kind: z.literal('daily') }).strict(),
  z.object({ kind: z.literal('weekly'), day: z.enum(WEEKDAYS) }).strict(),
  z.object({ kind: z.literal('cron'), expression: z.string().trim().min(1) }).strict(),
]);
export type Cadence = z.infer<typeof CadenceSchema>;

const percent = z.number().min(0).max(100);

/** A VM counts as quiet when both figures are at or under the threshold. */
export const LoadThresholdSchema = z
  .object({ cpuPercent: percent.default(30), diskIoPercent: percent.default(30) })
  .strict();
export type LoadThreshold = z.infer<typeof LoadThresholdSchema>;

export const SnapshotPolicySchema = z
  .object({
    accountId: z.string().min(1),
    name: PolicyNameSchema,
    target: PolicyTargetSchema,
    cadence: CadenceSchema,
    window: LowActivityWindowSchema,
    loadThreshold: LoadThresholdSchema.default({ cpuPercent: 30, diskIoPercent: 30 }),
    /** How often a busy VM's load is read again while the run waits. */
    loadCheckSeconds: z.number().int().min(1).max(3600).default(300),
    /** When the window closes before the VM is quiet: skip this run (and record why) or take the snapshot anyway. */
    onWindowClose: z.enum(['skip', 'snapshot-anyway']).default('skip'),
    nameTemplate: NameTemplateSchema.default(DEFAULT_NAME_TEMPLATE),
    /** The `{purpose}` of the name template. */
    purpose: PurposeSchema.default('scheduled'),
    createAsImage: z.boolean().default(false),
    /** The `quiesce` of the snapshots the policy makes. */
    quiesce: QuiesceSchema.default(DEFAULT_QUIESCE),
    retention: RetentionSchema,
    /** Random delay added to each start, so many policies with the same window do not start at the same second. */
    jitterSeconds: z.number().int().min(0).max(3600).default(30),
    description: z.string().max(1000).default(''),
  })
  .strict()
  .superRefine((policy, context) => {
    if (policy.cadence.kind === 'weekly' && !policy.window.days.includes(policy.cadence.day)) {
      context.addIssue({
        code: 'custom',
        path: ['cadence', 'day'],
        message: `the window does not open on ${policy.cadence.day} (it opens on ${policy.window.days.join(', ')})`,
      });
    }
    if (policy.jitterSeconds >= windowMinutes(policy.window) * 60) {
      context.addIssue({ code: 'custom', path: ['jitterSeconds'], message: 'must be shorter than the window' });
    }
  });
export type SnapshotPolicyInput = z.input<typeof SnapshotPolicySchema>;
export type SnapshotPolicy = z.output<typeof SnapshotPolicySchema>;

/** The policy `input` describes, with its defaults, or `InvalidPolicy` naming the first field at fault. */
export function parsePolicy(input: unknown): SnapshotPolicy {
  const parsed = SnapshotPolicySchema.safeParse(input);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const field = issue?.path.join('.') || 'policy';
  throw new SnapshotError('InvalidPolicy', `Invalid ${field}: ${issue?.message ?? 'malformed policy'}`);
}

/** The Temporal Schedule of a policy; also stored on the snapshots it makes (`policyId`). */
export function policyScheduleId(accountId: string, name: string): string {
  return `snapshot-policy/${accountId}/${name}`;
}

/**
 * The VMs a policy's target selects among the account's VMs (explicit ids in their order, or the region's VMs carrying
 * the label, whatever their state), and the explicit ids that match none of them.
 */
export function selectPolicyVms(target: PolicyTarget, accountVms: readonly Vm[]): { vms: Vm[]; unknownIds: string[] } {
  if ('vmIds' in target) {
    const byId = new Map(accountVms.map((vm) => [vm.id, vm]));
    return {
      vms: target.vmIds.flatMap((id) => byId.get(id) ?? []),
      unknownIds: target.vmIds.filter((id) => !byId.has(id)),
    };
  }
  return {
    vms: accountVms.filter((vm) => vm.region === target.region && vm.labels.includes(target.label)),
    unknownIds: [],
  };
}

/** Wall-clock length of the window in minutes on a day without a daylight-saving change. */
export function windowMinutes(window: Pick<LowActivityWindow, 'start' | 'end'>): number {
  const minutes = (hhmm: string) => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));
  return (minutes(window.end) - minutes(window.start) + 24 * 60) % (24 * 60);
}

/**
 * Until when a run may wait for the VM to be quiet. Started inside the window (the normal case): until the window
 * closes. Started outside it (trigger now, a backfill, a cron time outside the window, a start delayed past the
 * window's end): the window is taken to open at the start, for its nominal length.
 */
export function runDeadline(window: LowActivityWindow, now: Date): { closesAt: Date; insideWindow: boolean } {
  const current = windowContaining(window, now);
  if (current) return { closesAt: current.closesAt, insideWindow: true };
  return { closesAt: new Date(now.getTime() + windowMinutes(window) * 60_000), insideWindow: false };
}

export function isQuiet(load: VmLoad, threshold: LoadThreshold): boolean {
  return load.cpuPercent <= threshold.cpuPercent && load.diskIoPercent <= threshold.diskIoPercent;
}

export function formatLoad(load: VmLoad): string {
  return `CPU ${load.cpuPercent}%, disk I/O ${load.diskIoPercent}%`;
}
