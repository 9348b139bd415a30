import type { Cadence, PolicyTarget } from '../domain/policies';
import type { Retention } from '../domain/retention';
import { formatWindow, inTimeZone } from '../domain/windows';
import { formatDetails, formatTable } from './format';
import type { PolicyView } from './policy-client';

/** As `--cadence` takes it: "hourly", "daily", "weekly:SUN", "cron:0 3 * * *". */
function formatCadence(cadence: Cadence): string {
  switch (cadence.kind) {
    case 'weekly':
      return `weekly:${cadence.day}`;
    case 'cron':
      return `cron:${cadence.expression}`;
    default:
      return cadence.kind;
  }
}

/** "vm-trainer-01, vm-trainer-02" or `CANADA-1 label "nightly"`. */
function formatTarget(target: PolicyTarget): string {
  return 'vmIds' in target ? target.vmIds.join(', ') : `${target.region} label "${target.label}"`;
}

/** "last 3, daily 7, monthly 12": the rules that keep something. */
function formatRetention(retention: Retention): string {
  const rules: [string, number][] = [
    ['last', retention.keepLast],
    ['daily', retention.keepDaily],
    ['weekly', retention.keepWeekly],
    ['monthly', retention.keepMonthly],
  ];
  return rules
    .filter(([, count]) => count > 0)
    .map(([rule, count]) => `${rule} ${count}`)
    .join(', ');
}

/** An instant to the second, as wall-clock time and offset in the policy's zone: "2026-11-29T02:00:12+01:00". */
function localTime(instant: Date, timeZone: string): string {
  return inTimeZone(instant, timeZone).startOf('second').toISO({ suppressMilliseconds: true });
}

export function policyRows(views: PolicyView[]): string {
  return formatTable(
    ['NAME', 'TARGETS', 'CADENCE', 'WINDOW', 'RETENTION', 'PAUSED', 'NEXT RUN'],
    views.map(({ policy, paused, nextRuns }) => [
      policy.name,
      formatTarget(policy.target),
      formatCadence(policy.cadence),
      formatWindow(policy.window),
      formatRetention(policy.retention),
      paused ? 'yes' : 'no',
      nextRuns[0] ? localTime(nextRuns[0], policy.window.timeZone) : '-',
    ]),
  );
}

export function policyDetails({ policy, scheduleId, paused, note, nextRuns, recentRuns }: PolicyView): string {
  const { timeZone } = policy.window;
  const { cpuPercent, diskIoPercent } = policy.loadThreshold;
  const runs = recentRuns.map((run) => `${localTime(run.scheduledAt, timeZone)}  ${run.status}  ${run.outcome || '-'}`);
  return formatDetails([
    ['Name', policy.name],
    ['Description', policy.description || '-'],
    ['Targets', formatTarget(policy.target)],
    ['Cadence', formatCadence(policy.cadence)],
    ['Window', formatWindow(policy.window)],
    [
      'Quiet when',
      `CPU <= ${cpuPercent}% and disk I/O <= ${diskIoPercent}%, checked every ${policy.loadCheckSeconds} s`,
    ],
    ['On window close', policy.onWindowClose],
    ['Name template', `${policy.nameTemplate} (purpose "${policy.purpose}")`],
    ['Create as image', policy.createAsImage ? 'yes' : 'no'],
    ['Quiesce', policy.quiesce],
    ['Retention', formatRetention(policy.retention)],
    ['Jitter', `${policy.jitterSeconds} s`],
    ['Paused', `${paused ? 'yes' : 'no'}${note ? ` (${note})` : ''}`],
    ['Schedule', scheduleId],
    [
      'Next runs',
      nextRuns
        .slice(0, 5)
        .map((at) => localTime(at, timeZone))
        .join('\n') || '-',
    ],
    ['Recent runs', runs.join('\n') || '-'],
  ]);
}
