import type { SnapshotPolicyInput } from '../domain/policies';
import { policyScheduleId, SnapshotPolicySchema } from '../domain/policies';
import { policyScheduleSpec } from '../client/policy-client';
import { nextWindowOpening, windowContaining } from '../domain/windows';
import type { scheduledSnapshotWorkflow } from '../workflows';
import { scheduledRunQuery } from '../workflows/messages';
import { activityRecords } from './helpers/history';
import { createSnapshotEnv, refusal, waitFor } from './helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';
import { uniqueId } from './support/temporal';

let env: SnapshotEnv;
let worker: RunningWorker;

beforeAll(async () => {
  env = await createSnapshotEnv();
  worker = await env.startWorker();
});

afterAll(async () => {
  await worker.stop();
  await env.close();
});

/** "HH:MM" of `date` in `timeZone`. */
function hhmm(date: Date, timeZone: string): string {
  return new Intl.DateTimeFormat('en-GB', { timeZone, hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).format(
    date,
  );
}

/** A three-hour window opening six hours from now: runs started by the tests are outside it, whenever they run. */
function windowAwayFromNow(timeZone: string) {
  const hour = 60 * 60 * 1000;
  return {
    start: hhmm(new Date(Date.now() + 6 * hour), timeZone),
    end: hhmm(new Date(Date.now() + 9 * hour), timeZone),
    timeZone,
  };
}

/** A policy of acme's trainer-01 with a unique name (Schedules are namespace-wide). */
function policyInput(overrides: Partial<SnapshotPolicyInput> = {}): SnapshotPolicyInput {
  return {
    accountId: 'acme',
    name: uniqueId('p').toLowerCase(),
    target: { vmIds: ['vm-trainer-01'] },
    cadence: { kind: 'daily' },
    window: windowAwayFromNow('Europe/Oslo'),
    purpose: 'nightly',
    retention: { keepLast: 3 },
    loadCheckSeconds: 1,
    ...overrides,
  };
}

/** A run time the Schedule gave is the spec's time, delayed by less than the policy's jitter (30 s). */
function withinJitter(next: Date, specTime: Date): boolean {
  const delay = next.getTime() - specTime.getTime();
  return delay >= 0 && delay < 30_000;
}

async function runResult(workflowId: string, runId: string) {
  return env.client.workflow.getHandle<typeof scheduledSnapshotWorkflow>(workflowId, runId).result();
}

describe('snapshot policies on Temporal Schedules', () => {
  test('a policy is a Schedule with its window as calendar spec, time zone, jitter and the skip overlap policy', async () => {
    const input = policyInput({
      window: { start: '02:00', end: '05:00', timeZone: 'Europe/Oslo', days: ['MON', 'FRI'] },
    });
    const view = await env.policies.createPolicy(input);
    const described = await env.client.schedule.getHandle(policyScheduleId('acme', input.name)).describe();

    expect(described.spec.timezone).toBe('Europe/Oslo');
    expect(described.spec.calendars).toEqual([
      expect.objectContaining({
        hour: [{ start: 2, end: 2, step: 1 }],
        minute: [{ start: 0, end: 0, step: 1 }],
        dayOfWeek: [
          { start: 'MONDAY', end: 'MONDAY', step: 1 },
          { start: 'FRIDAY', end: 'FRIDAY', step: 1 },
        ],
      }),
    ]);
    expect(described.spec.jitter).toBe(30_000);
    expect(described.policies.overlap).toBe('SKIP');
    expect(described.policies.catchupWindow).toBe(3 * 60 * 60 * 1000);
    expect(described.action).toMatchObject({ workflowType: 'scheduledSnapshotWorkflow', taskQueue: env.taskQueue });

    // The server's next run times are the window's openings (02:00 Oslo time on Mondays and Fridays) plus jitter.
    expect(view.nextRuns.length).toBeGreaterThan(2);
    let after = new Date(Date.now());
    for (const next of view.nextRuns.slice(0, 3)) {
      const opening = nextWindowOpening(view.policy.window, after);
      expect(withinJitter(next, opening.opensAt)).toBe(true);
      after = opening.opensAt;
    }
    await env.policies.deletePolicy('acme', input.name);
  });

  test('hourly policies fire at every hour of the window, across midnight on the next day', async () => {
    const input = policyInput({
      cadence: { kind: 'hourly' },
      window: { start: '22:30', end: '01:00', timeZone: 'UTC', days: ['SAT'] },
    });
    const view = await env.policies.createPolicy(input);
    // Jitter only ever delays a run, by less than jitterSeconds (30 s): the minute is the spec's.
    const times = view.nextRuns.slice(0, 3).map((t) => `${t.getUTCDay()} ${t.toISOString().slice(11, 16)}`);
    // The next three fires are the window's three hours, whichever comes first (the test may run inside the window).
    expect(times.sort()).toEqual(['0 00:30', '6 22:30', '6 23:30']);
    await env.policies.deletePolicy('acme', input.name);
  });

  test('on daylight-saving change days the Schedule fires inside the window, as the window arithmetic says', async () => {
    const input = policyInput({ window: { start: '02:00', end: '05:00', timeZone: 'Europe/Oslo' }, jitterSeconds: 0 });
    const policy = SnapshotPolicySchema.parse(input);
    // The policy's own spec as computed just before each change, 2027-03-28 (02:00 is skipped) and 2027-10-31
    // (repeated), starting then: a fixed `now`, so the spring-forward openings it lists do not depend on today's date.
    const springStart = new Date('2027-03-27T12:00:00Z');
    const autumnStart = new Date('2027-10-30T12:00:00Z');
    const handle = await env.client.schedule.create({
      scheduleId: uniqueId('dst-check'),
      spec: { ...policyScheduleSpec(policy, springStart), startAt: springStart },
      action: {
        type: 'startWorkflow',
        workflowType: 'scheduledSnapshotWorkflow',
        taskQueue: env.taskQueue,
        args: [policy],
      },
      state: { paused: true },
    });
    const spring = (await handle.describe()).info.nextActionTimes.slice(0, 3);
    await handle.update((previous) => ({
      ...previous,
      spec: { ...policyScheduleSpec(policy, autumnStart), startAt: autumnStart },
    }));
    const autumn = (await handle.describe()).info.nextActionTimes.slice(0, 3);
    await handle.delete();

    // Each fire lies in the window it opens (or, for the repeated 02:00, in the one that opened an hour before).
    const openedAt = [...spring, ...autumn].map((fire) => windowContaining(policy.window, fire)?.opensAt.toISOString());
    expect(openedAt).toEqual([
      '2027-03-28T01:00:00.000Z',
      '2027-03-29T00:00:00.000Z',
      '2027-03-30T00:00:00.000Z',
      '2027-10-31T00:00:00.000Z',
      '2027-11-01T01:00:00.000Z',
      '2027-11-02T01:00:00.000Z',
    ]);
    expect(spring.map((t) => t.toISOString())).toEqual([
      '2027-03-28T01:00:00.000Z', // 02:00 CET (UTC+1) does not exist that day: 03:00 CEST, when the window opens
      '2027-03-29T00:00:00.000Z',
      '2027-03-30T00:00:00.000Z',
    ]);
    expect(autumn.map((t) => t.toISOString())).toEqual([
      '2027-10-31T01:00:00.000Z', // the second 02:00 (CET): the window opened at the first, an hour earlier
      '2027-11-01T01:00:00.000Z',
      '2027-11-02T01:00:00.000Z',
    ]);
  });

  test('bad policies are refused with a clear reason and create nothing', async () => {
    const cases: [Partial<SnapshotPolicyInput>, string, RegExp][] = [
      [{ window: { start: '02:00', end: '05:00', timeZone: 'Mars/Base' } }, 'InvalidPolicy', /unknown time zone/],
      [{ window: { start: '02:00', end: '02:00', timeZone: 'UTC' } }, 'InvalidPolicy', /zero length/],
      [{ retention: { keepLast: 0 } }, 'InvalidPolicy', /keepLast/],
      [{ target: { vmIds: ['vm-nope'] } }, 'VmNotFound', /Unknown VM vm-nope/],
      [{ cadence: { kind: 'cron', expression: 'every tuesday-ish' } }, 'InvalidPolicy', /refused the cron expression/],
    ];
    for (const [overrides, type, message] of cases) {
      const input = policyInput(overrides);
      const error = await refusal(env.policies.createPolicy(input));
      expect(error.type).toBe(type);
      expect(error.message).toMatch(message);
      expect((await refusal(env.policies.describePolicy('acme', input.name))).type).toBe('PolicyNotFound');
    }
  });

  test('update, pause with a note, resume, list and delete', async () => {
    const input = policyInput();
    await env.policies.createPolicy(input);
    const updated = await env.policies.updatePolicy('acme', input.name, {
      window: { start: '03:00', end: '04:00', timeZone: 'America/New_York' },
      retention: { keepLast: 5, keepDaily: 7 },
    });
    expect(updated.policy.window.timeZone).toBe('America/New_York');
    expect(updated.policy.retention).toEqual({ keepLast: 5, keepDaily: 7, keepWeekly: 0, keepMonthly: 0 });
    expect(withinJitter(updated.nextRuns[0]!, nextWindowOpening(updated.policy.window, new Date()).opensAt)).toBe(true);
    const refused = await refusal(env.policies.updatePolicy('acme', input.name, { retention: { keepLast: 0 } }));
    expect(refused.type).toBe('InvalidPolicy');
    expect((await env.policies.describePolicy('acme', input.name)).policy.retention.keepLast).toBe(5);

    await env.policies.pausePolicy('acme', input.name, 'maintenance freeze until Monday');
    expect(await env.policies.describePolicy('acme', input.name)).toMatchObject({
      paused: true,
      note: 'maintenance freeze until Monday',
    });
    await env.policies.resumePolicy('acme', input.name, 'freeze over');
    expect(await env.policies.describePolicy('acme', input.name)).toMatchObject({ paused: false, note: 'freeze over' });

    const listed = await waitFor(async () => {
      const all = await env.policies.listPolicies('acme');
      return all.find((p) => p.policy.name === input.name);
    });
    expect(listed.policy.retention.keepDaily).toBe(7);

    await env.policies.deletePolicy('acme', input.name);
    expect((await refusal(env.policies.describePolicy('acme', input.name))).type).toBe('PolicyNotFound');
    expect((await refusal(env.policies.deletePolicy('acme', input.name))).type).toBe('PolicyNotFound');
  });

  test('trigger starts a run that snapshots the VM and names it from the template', async () => {
    const input = policyInput();
    await env.policies.createPolicy(input);
    const run = await env.policies.triggerPolicy('acme', input.name);
    const result = await runResult(run.workflowId, run.runId);

    expect(result.vms).toHaveLength(1);
    const [outcome] = result.vms;
    expect(outcome).toMatchObject({ vmId: 'vm-trainer-01', outcome: 'snapshot' });
    const scheduled = new Date(result.scheduledAt);
    const oslo = new Intl.DateTimeFormat('sv-SE', {
      timeZone: 'Europe/Oslo',
      dateStyle: 'short',
      timeStyle: 'short',
    }).format(scheduled); // "2026-11-25 10:41"
    const [date, time] = oslo.split(' ') as [string, string];
    expect(outcome!.snapshotName).toBe(`trainer-01-nightly-${date}-${time.replace(':', '')}-v1`);

    const record = env.platform.catalog.getSnapshot(outcome!.snapshotId!)!;
    expect(record).toMatchObject({ status: 'SUCCESS', policyId: policyScheduleId('acme', input.name) });
    expect(result.decisions.some((d) => d.includes('started outside the window'))).toBe(true);

    const view = await env.policies.describePolicy('acme', input.name);
    expect(view.recentRuns).toHaveLength(1);
    expect(view.recentRuns[0]).toMatchObject({ workflowId: run.workflowId, status: 'COMPLETED' });
    expect(view.recentRuns[0]!.outcome).toContain(outcome!.snapshotName!);
    await env.policies.deletePolicy('acme', input.name);
  });

  test('a run that finds the VM busy waits, then proceeds when the load drops', async () => {
    const input = policyInput({ target: { vmIds: ['vm-trainer-02'] }, loadThreshold: { cpuPercent: 50 } });
    await env.policies.createPolicy(input);
    await env.platform.hypervisor.setLoad('vm-trainer-02', { cpuPercent: 95, diskIoPercent: 10 });
    const run = await env.policies.triggerPolicy('acme', input.name);
    const handle = env.client.workflow.getHandle<typeof scheduledSnapshotWorkflow>(run.workflowId, run.runId);
    // Three load readings, each found busy, with a 1 s timer (loadCheckSeconds) between them: the run has waited.
    await waitFor(async () => {
      const history = await handle.fetchHistory();
      return activityRecords(history, 'readVmLoad').filter((r) => r.completed).length >= 3;
    });
    const state = await handle.query(scheduledRunQuery);
    expect(state.decisions.filter((d) => d.includes('is busy'))).toHaveLength(1);
    expect(env.platform.catalog.listSnapshots({ vmId: 'vm-trainer-02' })).toHaveLength(0);

    await env.platform.hypervisor.setLoad('vm-trainer-02', { cpuPercent: 20, diskIoPercent: 10 });
    const result = await handle.result();
    expect(result.vms[0]).toMatchObject({ outcome: 'snapshot' });
    expect(result.vms[0]!.waitedSeconds).toBeGreaterThanOrEqual(2);
    expect(result.decisions.some((d) => /trainer-02 quiet .* after waiting/.test(d))).toBe(true);
    await env.policies.deletePolicy('acme', input.name);
  });

  test('backfill takes the missed runs one after another, and retention keeps exactly keepLast', async () => {
    const input = policyInput({
      target: { region: 'CANADA-1', label: 'nightly' },
      cadence: { kind: 'hourly' },
      window: { start: '00:00', end: '23:59', timeZone: 'UTC' },
      purpose: 'hourly',
      retention: { keepLast: 2 },
    });
    await env.policies.createPolicy(input);
    const hour = 60 * 60 * 1000;
    const thisHour = Math.floor(Date.now() / hour) * hour;
    // From half an hour before the hour three hours ago to half an hour before this one: exactly three hourly fire
    // times (xx:00), all in the past, whatever the minute the test runs at.
    await env.policies.backfillPolicy(
      'acme',
      input.name,
      new Date(thisHour - 3.5 * hour),
      new Date(thisHour - 0.5 * hour),
    );
    const policyId = policyScheduleId('acme', input.name);
    const runs = await waitFor(async () => {
      const view = await env.policies.describePolicy('acme', input.name);
      return view.recentRuns.length === 3 && view.recentRuns.every((r) => r.status === 'COMPLETED')
        ? view.recentRuns
        : undefined;
    }, 110_000);
    expect(runs.map((r) => r.scheduledAt.getUTCMinutes())).toEqual([0, 0, 0]);

    // Both labelled ACTIVE VMs (trainer-01 and trainer-02) got three snapshots; each VM keeps its newest two, the
    // oldest was deleted the way a user deletes one.
    for (const vmId of ['vm-trainer-01', 'vm-trainer-02']) {
      const made = env.platform.catalog.listSnapshots({ vmId, policyId, includeDeleted: true });
      expect(made.map((s) => s.status)).toEqual(['DELETED', 'SUCCESS', 'SUCCESS']);
      expect(made[0]!.deletedReason).toBe(`retention of policy ${policyId}`);
      expect(made.map((s) => s.name.slice(-3))).toEqual(['-v1', '-v2', '-v3']);
      expect(env.platform.catalog.listSnapshots({ vmId, policyId })).toHaveLength(2);
    }
    // builder-01 carries the label too but is in BUILD: skipped with the reason.
    const last = await runResult(runs[2]!.workflowId, runs[2]!.runId);
    const builder = last.vms.find((v) => v.vmId === 'vm-builder-01');
    expect(builder?.outcome).toBe('skipped');
    expect(builder?.reason).toContain('is BUILD');
    await env.policies.deletePolicy('acme', input.name);
  });
});
