import { setTimeout as sleep } from 'node:timers/promises';
import type { CalendarSpec, Client, DayOfWeek, ScheduleDescription, ScheduleSpec } from '@temporalio/client';
import { MONTHS, ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy } from '@temporalio/client';
import type { Currency } from '../domain/billing';
import { estimatedStoredBytes } from '../domain/billing';
import { SnapshotError } from '../domain/errors';
import { hourlyChargeMicros } from '../domain/metering';
import type { SnapshotPolicy, SnapshotPolicyInput } from '../domain/policies';
import {
  parsePolicy,
  policyScheduleId,
  selectPolicyVms,
  SnapshotPolicySchema,
  windowMinutes,
} from '../domain/policies';
import { SnapshotAccount } from '../domain/search-attributes';
import type { Weekday } from '../domain/windows';
import { formatWindow, inTimeZone, shiftedOpenings } from '../domain/windows';
import type { Catalog } from '../platform/ports';
import type { scheduledSnapshotWorkflow } from '../workflows';
import type { ScheduledRunState } from '../workflows/messages';
import { scheduledRunQuery } from '../workflows/messages';

export interface PolicyClientOptions {
  client: Client;
  catalog: Catalog;
  taskQueue: string;
}

/** A policy as its Schedule describes it: the policy, its state, when it runs next and what its last runs did. */
export interface PolicyView {
  policy: SnapshotPolicy;
  scheduleId: string;
  paused: boolean;
  note: string | null;
  nextRuns: Date[];
  recentRuns: RecentRun[];
}

export interface RecentRun {
  scheduledAt: Date;
  startedAt: Date;
  workflowId: string;
  runId: string;
  /** Temporal's execution status: RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED, TIMED_OUT. */
  status: string;
  /** What the run did (finished runs) or its latest decision (running ones). */
  outcome: string;
}

export interface PolicyCostPreview {
  currency: Currency;
  perVm: { vmId: string; vmName: string; retained: number; estimatedBytes: number }[];
  totalBytes: number;
  hourlyMicros: number;
  /** Hourly cost × 730 (an average month). */
  monthlyMicros: number;
}

const HOURS_PER_MONTH = 730;

/** Changes to a policy: any field but the account and the name. */
export type PolicyPatch = Partial<Omit<SnapshotPolicyInput, 'accountId' | 'name'>>;

const TRIGGER_WAIT_MS = 10_000;

/**
 * Snapshot policies, each one a Temporal Schedule (visible under Schedules in the Web UI) whose action starts a
 * `scheduledSnapshotWorkflow` with the policy. The Schedule is the policy's only store: what `describe` shows is what
 * runs.
 */
export class PolicyClient {
  constructor(private readonly options: PolicyClientOptions) {}

  /** Creates the policy's Schedule. Fails with `InvalidPolicy`, `VmNotFound` or `PolicyExists`; nothing is changed then. */
  async createPolicy(input: SnapshotPolicyInput): Promise<PolicyView> {
    const policy = this.validate(input);
    try {
      await this.options.client.schedule.create<typeof scheduledSnapshotWorkflow>({
        scheduleId: policyScheduleId(policy.accountId, policy.name),
        ...this.scheduleBody(policy),
      });
    } catch (error) {
      if (error instanceof ScheduleAlreadyRunning) {
        throw new SnapshotError('PolicyExists', `Account ${policy.accountId} already has a policy "${policy.name}".`);
      }
      throw invalidSpec(error, policy);
    }
    return this.describePolicy(policy.accountId, policy.name);
  }

  /** Applies `patch` to the policy; the Schedule's spec and action are rebuilt from the result. */
  async updatePolicy(accountId: string, name: string, patch: PolicyPatch): Promise<PolicyView> {
    const current = await this.describePolicy(accountId, name);
    const policy = this.validate({ ...current.policy, ...patch, accountId, name });
    try {
      await this.handle(accountId, name).update<typeof scheduledSnapshotWorkflow>((previous) => ({
        ...this.scheduleBody(policy),
        state: previous.state,
      }));
    } catch (error) {
      throw invalidSpec(error, policy);
    }
    return this.describePolicy(accountId, name);
  }

  async pausePolicy(accountId: string, name: string, note = 'paused'): Promise<void> {
    await this.withSchedule(accountId, name, (handle) => handle.pause(note));
  }

  async resumePolicy(accountId: string, name: string, note = 'resumed'): Promise<void> {
    await this.withSchedule(accountId, name, (handle) => handle.unpause(note));
  }

  /**
   * Starts a run now (outside the window it may wait for low load for the window's length). Resolves with the run's
   * workflow id; a run already in progress is not doubled (`SnapshotInProgress`).
   */
  async triggerPolicy(accountId: string, name: string): Promise<{ workflowId: string; runId: string }> {
    const handle = this.handle(accountId, name);
    const before = await this.describeSchedule(accountId, name);
    await handle.trigger(ScheduleOverlapPolicy.SKIP);
    const deadline = Date.now() + TRIGGER_WAIT_MS;
    while (Date.now() < deadline) {
      const now = await handle.describe();
      if (now.info.numActionsTaken > before.info.numActionsTaken) {
        const { workflowId, firstExecutionRunId } = now.info.recentActions.at(-1)!.action.workflow;
        return { workflowId, runId: firstExecutionRunId };
      }
      if (now.info.numActionsSkippedOverlap > before.info.numActionsSkippedOverlap) break;
      await sleep(200);
    }
    const running = before.info.runningActions[0]?.workflow.workflowId ?? 'a run';
    throw new SnapshotError(
      'SnapshotInProgress',
      `Policy "${name}" already has a run in progress (${running}); runs never pile up. Wait for it to finish.`,
    );
  }

  /** Takes the runs the policy would have started between `start` and `end`, one after the other, now. */
  async backfillPolicy(accountId: string, name: string, start: Date, end: Date): Promise<void> {
    if (!(start < end) || end.getTime() > Date.now()) {
      throw new SnapshotError('InvalidPolicy', 'A backfill needs start < end, both in the past.');
    }
    await this.withSchedule(accountId, name, (handle) =>
      handle.backfill({ start, end, overlap: ScheduleOverlapPolicy.BUFFER_ALL }),
    );
  }

  /** Deletes the policy's Schedule. Snapshots it made are kept; a run in progress finishes. */
  async deletePolicy(accountId: string, name: string): Promise<void> {
    await this.withSchedule(accountId, name, (handle) => handle.delete());
  }

  /**
   * What a policy's retained snapshots would cost to store, which no big cloud shows before you schedule: per VM,
   * its newest snapshot's stored size (or, with none yet, its provisioned size) plus, for every further retained
   * snapshot, the average size its incremental snapshots added (10 % of the full size without history), at the
   * account's rate. An estimate: dedup across VMs lowers the real bill.
   */
  previewCost(input: SnapshotPolicyInput): PolicyCostPreview {
    const policy = this.validate(input);
    const account = this.options.catalog.getAccount(policy.accountId)!;
    const { keepLast, keepDaily, keepWeekly, keepMonthly } = policy.retention;
    const retained = keepLast + keepDaily + keepWeekly + keepMonthly;
    const { vms } = selectPolicyVms(policy.target, this.options.catalog.listVms({ accountId: policy.accountId }));
    const perVm = vms.map((vm) => {
      const history = this.options.catalog.listSnapshots({ vmId: vm.id, status: 'SUCCESS' });
      const full = history.at(-1)?.storedBytes ?? estimatedStoredBytes(vm.disks.map((d) => d.sizeBytes));
      const increments = history.filter((s) => s.parentSnapshotId !== null).map((s) => s.addedBytes ?? 0);
      const increment = increments.length > 0 ? increments.reduce((a, b) => a + b, 0) / increments.length : full * 0.1;
      return { vmId: vm.id, vmName: vm.name, retained, estimatedBytes: Math.round(full + (retained - 1) * increment) };
    });
    const totalBytes = perVm.reduce((sum, vm) => sum + vm.estimatedBytes, 0);
    const hourlyMicros = hourlyChargeMicros(totalBytes, account.currency);
    return {
      currency: account.currency,
      perVm,
      totalBytes,
      hourlyMicros,
      monthlyMicros: hourlyMicros * HOURS_PER_MONTH,
    };
  }

  /** The account's policies, by name. */
  async listPolicies(accountId: string): Promise<PolicyView[]> {
    const prefix = policyScheduleId(accountId, '');
    const names: string[] = [];
    for await (const summary of this.options.client.schedule.list({ query: `SnapshotAccount = "${accountId}"` })) {
      if (summary.scheduleId.startsWith(prefix)) names.push(summary.scheduleId.slice(prefix.length));
    }
    const views = await Promise.all(names.map((name) => this.describePolicy(accountId, name).catch(() => undefined)));
    return views.filter((view) => view !== undefined).sort((a, b) => a.policy.name.localeCompare(b.policy.name));
  }

  async describePolicy(accountId: string, name: string): Promise<PolicyView> {
    const description = await this.describeSchedule(accountId, name);
    const policy = SnapshotPolicySchema.parse(description.action.args?.[0]);
    return {
      policy,
      scheduleId: description.scheduleId,
      paused: description.state.paused,
      note: description.state.note ?? null,
      nextRuns: description.info.nextActionTimes,
      recentRuns: await Promise.all(
        description.info.recentActions.map((action) =>
          this.recentRun(action.scheduledAt, action.takenAt, action.action.workflow),
        ),
      ),
    };
  }

  private validate(input: SnapshotPolicyInput): SnapshotPolicy {
    const policy = parsePolicy(input);
    if (!this.options.catalog.getAccount(policy.accountId)) {
      throw new SnapshotError('AccountNotFound', `Account ${policy.accountId} does not exist.`);
    }
    const [unknown] = selectPolicyVms(
      policy.target,
      this.options.catalog.listVms({ accountId: policy.accountId }),
    ).unknownIds;
    if (unknown) {
      throw new SnapshotError('VmNotFound', `Unknown VM ${unknown}: it does not exist in account ${policy.accountId}.`);
    }
    return policy;
  }

  /** Spec, action and policies of a policy's Schedule. */
  private scheduleBody(policy: SnapshotPolicy) {
    return {
      spec: policyScheduleSpec(policy),
      action: {
        type: 'startWorkflow' as const,
        workflowType: 'scheduledSnapshotWorkflow',
        // Temporal appends the scheduled time, so every run has its own id.
        workflowId: `scheduled-snapshots/${policy.accountId}/${policy.name}`,
        taskQueue: this.options.taskQueue,
        args: [policy] as [SnapshotPolicy],
        typedSearchAttributes: [{ key: SnapshotAccount, value: policy.accountId }],
        staticSummary: `Scheduled snapshots: policy "${policy.name}" of ${policy.accountId}`,
        staticDetails: describeTarget(policy),
      },
      policies: {
        // A new run must not pile up on a slow one.
        overlap: ScheduleOverlapPolicy.SKIP,
        // Runs missed while the server was down are still taken if the window has not passed since.
        catchupWindow: Math.max(windowMinutes(policy.window), 1) * 60_000,
        pauseOnFailure: false,
      },
      typedSearchAttributes: [{ key: SnapshotAccount, value: policy.accountId }],
    };
  }

  private async recentRun(
    scheduledAt: Date,
    startedAt: Date,
    workflow: { workflowId: string; firstExecutionRunId: string },
  ): Promise<RecentRun> {
    const handle = this.options.client.workflow.getHandle<typeof scheduledSnapshotWorkflow>(
      workflow.workflowId,
      workflow.firstExecutionRunId,
    );
    const base = { scheduledAt, startedAt, workflowId: workflow.workflowId, runId: workflow.firstExecutionRunId };
    const { status } = await handle.describe();
    if (status.name === 'COMPLETED')
      return { ...base, status: status.name, outcome: summarizeRun(await handle.result()) };
    if (status.name === 'RUNNING') {
      const state = await handle.query(scheduledRunQuery).catch(() => undefined);
      return { ...base, status: status.name, outcome: state?.decisions.at(-1)?.slice(25) ?? 'starting' };
    }
    const failure = await handle.result().then(
      () => '',
      (error: unknown) => (error instanceof Error ? (error.cause?.toString() ?? error.message) : String(error)),
    );
    return { ...base, status: status.name, outcome: failure };
  }

  private handle(accountId: string, name: string) {
    return this.options.client.schedule.getHandle(policyScheduleId(accountId, name));
  }

  private async describeSchedule(accountId: string, name: string): Promise<ScheduleDescription> {
    return this.withSchedule(accountId, name, (handle) => handle.describe());
  }

  private async withSchedule<T>(
    accountId: string,
    name: string,
    fn: (handle: ReturnType<PolicyClient['handle']>) => Promise<T>,
  ): Promise<T> {
    try {
      return await fn(this.handle(accountId, name));
    } catch (error) {
      if (error instanceof ScheduleNotFoundError) {
        throw new SnapshotError('PolicyNotFound', `Account ${accountId} has no policy "${name}".`);
      }
      throw error;
    }
  }
}

const DAY_NAMES: Record<Weekday, DayOfWeek> = {
  MON: 'MONDAY',
  TUE: 'TUESDAY',
  WED: 'WEDNESDAY',
  THU: 'THURSDAY',
  FRI: 'FRIDAY',
  SAT: 'SATURDAY',
  SUN: 'SUNDAY',
};
const NEXT_DAY: Record<Weekday, Weekday> = {
  MON: 'TUE',
  TUE: 'WED',
  WED: 'THU',
  THU: 'FRI',
  FRI: 'SAT',
  SAT: 'SUN',
  SUN: 'MON',
};

/** How far ahead the spec lists the openings a spring-forward change moves (see `policyScheduleSpec`). */
const DST_LOOKAHEAD_DAYS = 20 * 366;

/**
 * The Schedule spec of a policy, in the window's time zone: `daily` and `weekly` fire when the window opens; `hourly`
 * at the window's start minute of every hour it is open (hours past midnight fall on the next day); `cron` as written.
 *
 * Temporal skips a calendar time that a spring-forward change removes, so a 02:00 Europe/Oslo window would get no run
 * on the last Sunday of March. For `daily` and `weekly`, the spec therefore also lists those days' real openings (the
 * moment of the change) for the next 20 years; they are recomputed whenever the policy is updated. (`hourly` loses only
 * the removed hour's fire; the window's other hours still fire.) A time a fall-back change repeats fires once, at its
 * second occurrence (Temporal's choice), which still lies inside the window.
 */
export function policyScheduleSpec(policy: SnapshotPolicy, now = new Date()): ScheduleSpec {
  const { window, cadence } = policy;
  const [hour, minute] = window.start.split(':').map(Number) as [number, number];
  const base = { timezone: window.timeZone, jitter: policy.jitterSeconds * 1000 };
  const days = (list: readonly Weekday[]) => list.map((day) => DAY_NAMES[day]);
  const atOpenings = (openingDays: Weekday[]): CalendarSpec[] => [
    { hour, minute, dayOfWeek: days(openingDays) },
    ...shiftedOpenings({ ...window, days: openingDays }, now, DST_LOOKAHEAD_DAYS).map((opening) => {
      const local = inTimeZone(opening, window.timeZone);
      return {
        year: local.year,
        month: MONTHS[local.month - 1]!,
        dayOfMonth: local.day,
        hour: local.hour,
        minute: local.minute,
        comment: `${window.start} does not exist that day (daylight saving): the window opens at ${local.toFormat('HH:mm')}`,
      };
    }),
  ];
  switch (cadence.kind) {
    case 'cron':
      return { ...base, cronExpressions: [cadence.expression] };
    case 'daily':
      return { ...base, calendars: atOpenings(window.days) };
    case 'weekly':
      return { ...base, calendars: atOpenings([cadence.day]) };
    case 'hourly': {
      const sameDay: number[] = [];
      const nextDay: number[] = [];
      for (let offset = 0; offset < windowMinutes(window); offset += 60) {
        const at = hour * 60 + minute + offset;
        (at >= 24 * 60 ? nextDay : sameDay).push(Math.floor(at / 60) % 24);
      }
      const calendars: CalendarSpec[] = [{ hour: sameDay, minute, dayOfWeek: days(window.days) }];
      if (nextDay.length > 0) {
        calendars.push({ hour: nextDay, minute, dayOfWeek: days(window.days.map((day) => NEXT_DAY[day])) });
      }
      return { ...base, calendars };
    }
  }
}

function describeTarget(policy: SnapshotPolicy): string {
  const target =
    'vmIds' in policy.target
      ? `VMs ${policy.target.vmIds.join(', ')}`
      : `VMs of ${policy.target.region} labelled "${policy.target.label}"`;
  const { keepLast, keepDaily, keepWeekly, keepMonthly } = policy.retention;
  return [
    `**Targets**: ${target}`,
    `**Cadence**: ${policy.cadence.kind === 'cron' ? `cron "${policy.cadence.expression}"` : policy.cadence.kind}`,
    `**Window**: ${formatWindow(policy.window)}; waits for CPU ≤ ${policy.loadThreshold.cpuPercent}% and disk I/O ≤ ${policy.loadThreshold.diskIoPercent}%, then ${policy.onWindowClose === 'skip' ? 'skips' : 'snapshots anyway'} when the window closes`,
    `**Names**: ${policy.nameTemplate}${policy.createAsImage ? ', created as images' : ''}`,
    `**Retention**: last ${keepLast}, daily ${keepDaily}, weekly ${keepWeekly}, monthly ${keepMonthly}`,
  ].join('\n\n');
}

/** One line per VM: `trainer-01: snapshot "trainer-01-nightly-…"`, `trainer-02: skipped (…)`. */
export function summarizeRun(state: ScheduledRunState): string {
  if (state.vms.length === 0) return 'no VM to snapshot';
  return state.vms
    .map((vm) =>
      vm.outcome === 'snapshot'
        ? `${vm.vmName}: snapshot "${vm.snapshotName}"${vm.expired.length ? `, expired ${vm.expired.length}` : ''}`
        : `${vm.vmName}: ${vm.outcome} (${vm.reason})`,
    )
    .join('; ');
}

/**
 * The server refuses what only it parses (a cron expression) with INVALID_ARGUMENT, which the Temporal client raises
 * as a TypeError: that is the policy's fault, not a bug.
 */
function invalidSpec(error: unknown, policy: SnapshotPolicy): unknown {
  if (!(error instanceof TypeError)) return error;
  const what = policy.cadence.kind === 'cron' ? `cron expression "${policy.cadence.expression}"` : 'schedule';
  return new SnapshotError('InvalidPolicy', `Invalid cadence: the server refused the ${what}: ${error.message}`);
}
