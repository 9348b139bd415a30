import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { Command, Option } from 'commander';
import { formatMoney } from '../domain/billing';
import { loadConfig } from '../domain/config';
import { SnapshotError } from '../domain/errors';
import { isIdOf } from '../domain/ids';
import { REGIONS, VmLoadSchema } from '../domain/model';
import type { Quiesce, Region, SnapshotRecord } from '../domain/model';
import { formatLoad } from '../domain/policies';
import type { Cadence, PolicyTarget, SnapshotPolicy, SnapshotPolicyInput } from '../domain/policies';
import { snapshotNameKey } from '../domain/requests';
import type { Weekday } from '../domain/windows';
import type { scheduledSnapshotWorkflow } from '../workflows';
import { scheduledRunQuery } from '../workflows/messages';
import type { ScheduledRunState } from '../workflows/messages';
import {
  billingView,
  eligibleVmsView,
  imagesView,
  policyDetailView,
  policyView,
  snapshotCosts,
  snapshotView,
} from '../api/views';
import { connectSnapshotClient } from './connect';
import type { ConnectedClients } from './connect';
import { escapeControls, formatBytes, formatDetails, snapshotDetails, snapshotRows } from './format';
import { DEFAULT_GC_GRACE_MINUTES, DEFAULT_REVERIFY_DAYS } from './maintenance-client';
import { summarizeRun } from './policy-client';
import type { PolicyPatch } from './policy-client';
import { policyDetails, policyRows } from './policy-format';
import { stageProgressBar } from './progress-bar';
import type { SnapshotClient } from './snapshot-client';
import { NO_ACTIVE_VMS, toSnapshotError } from './snapshot-client';

const config = loadConfig();
const program = new Command('snap')
  .description('Create, inspect and restore VM snapshots')
  .option('--account <id>', 'account to act for', config.SNAP_ACCOUNT);

const regionOption = () => new Option('--region <region>', 'region').choices(REGIONS);
/** `--output json`: what the HTTP API answers for the same listing or snapshot, field for field, for scripts. */
const outputOption = () =>
  new Option('--output <format>', "text, or json: the HTTP API's fields").choices(['text', 'json']).default('text');
type Output = { output: 'text' | 'json' };

function printJson(value: unknown): void {
  console.log(JSON.stringify(value, null, 2));
}

/** Prints a line of output; the user text in it has its terminal controls escaped. */
function print(text: string): void {
  console.log(escapeControls(text));
}

/**
 * Runs a command with connected clients and turns typed errors into a one-line message and exit code 2. A command
 * that starts workflows and waits for them (`needsWorker`) first checks that a worker polls their task queues.
 */
function action<A extends unknown[]>(
  fn: (clients: ConnectedClients, account: string, ...args: A) => Promise<void>,
  { needsWorker = false } = {},
) {
  return async (...args: A) => {
    let connected: ConnectedClients | undefined;
    try {
      connected = await connectSnapshotClient(config);
      if (needsWorker) await connected.requireWorkers();
      await fn(connected, program.opts<{ account: string }>().account, ...args);
    } catch (error) {
      if (!(error instanceof SnapshotError)) throw error;
      console.error(`error ${error.type}: ${escapeControls(error.message, false)}`);
      process.exitCode = 2;
    } finally {
      await connected?.close();
    }
  };
}

/**
 * The snapshot `ref` names: a ref shaped like a snapshot id is looked up by id only, any other by its name key only
 * (so `NIGHTLY` finds `nightly`). Of several with the name, the live one, else the newest failed one.
 */
function findSnapshot(snapshots: SnapshotClient, account: string, ref: string): SnapshotRecord {
  const byId = isIdOf('snapshot', ref);
  const key = byId ? ref.toLowerCase() : snapshotNameKey(ref);
  const found = snapshots.listSnapshots(account).filter((s) => (byId ? s.id === key : snapshotNameKey(s.name) === key));
  const snapshot = found.find((s) => s.status !== 'FAILED') ?? found[found.length - 1];
  if (!snapshot) {
    throw new SnapshotError(
      'SnapshotNotFound',
      `No snapshot ${byId ? 'with id' : 'named'} "${ref}" in account ${account}.`,
    );
  }
  return snapshot;
}

program
  .command('vms')
  .description('list the VMs that can be snapshotted (ACTIVE) in a region')
  .addOption(regionOption().makeOptionMandatory())
  .addOption(outputOption())
  .action(
    action(async ({ snapshots }, account, options: { region: Region } & Output) => {
      const vms = snapshots.listEligibleVms(account, options.region);
      if (options.output === 'json') {
        const creditHold = (vmId: string) => snapshots.creditHold(account, vmId).text;
        return printJson(eligibleVmsView(options.region, vms, creditHold));
      }
      const lines = vms.map(
        (v) => `${v.label}  [${v.vm.id}]  credit hold ${snapshots.creditHold(account, v.vm.id).text}`,
      );
      print(vms.length === 0 ? NO_ACTIVE_VMS : lines.join('\n'));
    }),
  );

program
  .command('create')
  .description('create a snapshot of a VM and wait for it with a progress bar')
  .requiredOption('--vm <id>', 'VM id or name')
  .requiredOption('--name <name>', 'snapshot name, unique in the account (1-50 characters)')
  .addOption(regionOption().default(undefined, "the VM's region"))
  .option('--description <text>', 'description', '')
  .option('--image', 'also register the snapshot as a boot image ("Create as Image")', false)
  .option(
    '--quiesce <mode>',
    'required: fail if the guest cannot be frozen; best-effort: take a crash-consistent snapshot then',
    'best-effort',
  )
  .option('--no-wait', 'return once the snapshot is accepted')
  .action(
    action(
      async (
        { snapshots },
        account,
        options: {
          vm: string;
          name: string;
          region?: Region;
          description: string;
          image: boolean;
          quiesce: Quiesce;
          wait: boolean;
        },
      ) => {
        const vm = snapshots.findVm(account, options.vm);
        const started = await snapshots.createSnapshot({
          accountId: account,
          vmId: vm?.id ?? options.vm,
          region: options.region ?? vm?.region ?? 'CANADA-1',
          name: options.name,
          description: options.description,
          createAsImage: options.image,
          // Checked by the client: anything but the two modes is InvalidRequest.
          quiesce: options.quiesce,
          requestedBy: `cli:${process.env.USER ?? 'unknown'}`,
        });
        const hold = snapshots.creditHold(account, vm?.id ?? options.vm).text;
        print(`snapshot ${started.snapshotId} accepted (workflow ${started.workflowId}); credit hold ${hold}`);
        if (!options.wait) return;
        const bar = stageProgressBar();
        try {
          const record = await snapshots.watchProgress(started, (p) => bar.update({ ...p, stage: p.status }));
          bar.stop();
          print(snapshotDetails(record));
        } finally {
          bar.stop();
        }
      },
    ),
  );

program
  .command('list')
  .description('list snapshots with their status and sizes')
  .addOption(regionOption())
  .addOption(outputOption())
  .action(
    action(async ({ snapshots, billing }, account, options: { region?: Region } & Output) => {
      if (options.output === 'json') {
        const live = await snapshots.listSnapshotsLive(account, { region: options.region });
        const costs = snapshotCosts(billing.accountBilling(account));
        return printJson({ snapshots: live.map((record) => snapshotView(record, costs(record.id))) });
      }
      const list = snapshots.listSnapshots(account, options.region ? { region: options.region } : {});
      print(list.length === 0 ? 'No snapshots' : snapshotRows(list));
    }),
  );

program
  .command('show <snapshot>')
  .description('show one snapshot (id or name), with live progress while it runs')
  .addOption(outputOption())
  .action(
    action(async ({ snapshots, billing }, account, ref: string, options: Output) => {
      const snapshot = await snapshots.getSnapshot(account, findSnapshot(snapshots, account, ref).id);
      if (options.output === 'json') {
        return printJson(snapshotView(snapshot, snapshotCosts(billing.accountBilling(account))(snapshot.id)));
      }
      print(snapshotDetails(snapshot));
      if (snapshot.progress) {
        const p = snapshot.progress;
        print(`Progress:            ${p.status} ${p.bytesDone}/${p.bytesTotal} bytes, ETA ${p.etaSeconds ?? '-'} s`);
      }
    }),
  );

program
  .command('restore <snapshot>')
  .description('restore one disk of a snapshot to a raw image file')
  .requiredOption('--disk <name>', 'disk name, e.g. root')
  .requiredOption('--to <file>', 'target raw image file')
  .action(
    action(
      async ({ snapshots }, account, ref: string, options: { disk: string; to: string }) => {
        const snapshot = findSnapshot(snapshots, account, ref);
        const bar = stageProgressBar();
        try {
          const result = await snapshots.restoreDisk(
            {
              accountId: account,
              snapshotId: snapshot.id,
              diskName: options.disk,
              targetPath: path.resolve(options.to),
            },
            (p) => bar.update(p),
          );
          bar.stop();
          print(`restored ${result.bytesRestored} bytes to ${path.resolve(options.to)}`);
        } finally {
          bar.stop();
        }
      },
      { needsWorker: true },
    ),
  );

program
  .command('restore-vm [snapshot]')
  .description('restore a snapshot (or --image) to a new VM in its region, with a progress bar')
  .requiredOption('--name <vm-name>', 'name of the new VM')
  .option('--image <image-id>', 'restore from a boot image instead of a snapshot')
  .addOption(regionOption().default(undefined, "the source's region (the only one possible)"))
  .action(
    action(
      async (
        { snapshots },
        account,
        ref: string | undefined,
        options: { name: string; image?: string; region?: Region },
      ) => {
        if (!ref === !options.image) {
          throw new SnapshotError('InvalidRequest', 'Give either a snapshot (id or name) or --image <image-id>.');
        }
        const source = options.image
          ? { imageId: options.image }
          : { snapshotId: findSnapshot(snapshots, account, ref!).id };
        const bar = stageProgressBar();
        try {
          const request = { accountId: account, source, vmName: options.name, region: options.region };
          const { vm } = await snapshots.restoreVm(request, (p) => bar.update(p));
          bar.stop();
          print(`VM ${vm.name} (${vm.id}) is ${vm.status} in ${vm.region}: ${vm.flavor}`);
        } finally {
          bar.stop();
        }
      },
      { needsWorker: true },
    ),
  );

program
  .command('delete <snapshot>')
  .description('delete a snapshot (a running one is cancelled); its data is freed by garbage collection')
  .action(
    action(
      async ({ snapshots }, account, ref: string) => {
        const snapshot = findSnapshot(snapshots, account, ref);
        await snapshots.deleteSnapshot(account, snapshot.id);
        print(`deleted ${snapshot.name} (${snapshot.id})`);
      },
      { needsWorker: true },
    ),
  );

program
  .command('images')
  .description('list the boot images (boot sources) of the account')
  .addOption(regionOption())
  .addOption(outputOption())
  .action(
    action(async ({ snapshots }, account, options: { region?: Region } & Output) => {
      const images = snapshots.listImages(account, options.region);
      if (options.output === 'json') return printJson(imagesView(images));
      print(
        images.length === 0
          ? 'No images'
          : images
              .map(
                (i) =>
                  `${i.id}  ${i.name}  ${i.flavor}  ${i.region}  ${formatBytes(i.logicalBytes)}  from ${i.snapshotId}`,
              )
              .join('\n'),
      );
    }),
  );

const imageCommand = program.command('image').description('create or delete boot images');
imageCommand
  .command('create <snapshot>')
  .description('register a SUCCESS snapshot as a boot image ("Create as Image" after the fact)')
  .option('--name <name>', "image name (default: the snapshot's)")
  .action(
    action(
      async ({ snapshots }, account, ref: string, options: { name?: string }) => {
        const image = await snapshots.createImage(account, findSnapshot(snapshots, account, ref).id, options.name);
        print(`image ${image.name} (${image.id})`);
      },
      { needsWorker: true },
    ),
  );
imageCommand
  .command('delete <image-id>')
  .description('delete a boot image')
  .action(
    action(
      async ({ snapshots }, account, imageId: string) => {
        await snapshots.deleteImage(account, imageId);
        print(`deleted image ${imageId}`);
      },
      { needsWorker: true },
    ),
  );

program
  .command('gc')
  .description("run garbage collection on a region's repository now and print what it freed")
  .addOption(regionOption().makeOptionMandatory())
  .option('--grace-minutes <n>', 'keep unreferenced chunks younger than this', String(DEFAULT_GC_GRACE_MINUTES))
  .action(
    action(
      async ({ maintenance }, _account, options: { region: Region; graceMinutes: string }) => {
        const result = await maintenance.collectGarbage(options.region, Number(options.graceMinutes));
        print(
          `${options.region}: freed ${formatBytes(result.bytesFreed)} (${result.chunksRemoved} chunks); ` +
            `${result.chunksReferenced} referenced, ${result.chunksKeptByGrace} kept by the grace period`,
        );
      },
      { needsWorker: true },
    ),
  );

program
  .command('reverify')
  .description("re-verify a region's snapshots now; damaged ones are marked DAMAGED")
  .addOption(regionOption().makeOptionMandatory())
  .option('--older-than-days <n>', 'only snapshots not verified within this many days', String(DEFAULT_REVERIFY_DAYS))
  .action(
    action(
      async ({ maintenance }, _account, options: { region: Region; olderThanDays: string }) => {
        const report = await maintenance.reverify(options.region, Number(options.olderThanDays));
        print(`${options.region}: ${report.checked} snapshots re-verified, ${report.damaged.length} damaged`);
        for (const d of report.damaged)
          print(`  DAMAGED ${d.name} (${d.snapshotId}): ${d.failureType}: ${d.failureReason}`);
      },
      { needsWorker: true },
    ),
  );

program
  .command('billing')
  .description('balance, hourly storage cost, month-to-date total and what each snapshot costs')
  .addOption(outputOption())
  .action(
    action(async ({ billing }, account, options: Output) => {
      const bill = billing.accountBilling(account);
      if (options.output === 'json') return printJson(billingView(bill));
      const money = (micros: number) => formatMoney(micros, bill.currency);
      print(
        formatDetails([
          ['Balance', money(bill.balanceMicros)],
          ['Held', `${money(bill.heldMicros)} (credit holds of snapshots in progress)`],
          ['Available', money(bill.availableMicros)],
          ['Stored', `${formatBytes(bill.storedBytes)} (last metered hour: ${bill.lastHour ?? 'none yet'})`],
          ['Hourly cost', money(bill.hourlyMicros)],
          ['Month to date', money(bill.monthToDateMicros)],
          ['Covers', bill.hoursLeft === null ? '-' : `${bill.hoursLeft} h of storage`],
        ]),
      );
      if (bill.low) print('WARNING: the balance is low; new snapshots will be refused. Stored data is kept.');
      for (const item of bill.items) {
        print(
          `  ${item.kind.padEnd(8)} ${item.name.padEnd(40)} exclusive ${formatBytes(item.exclusiveBytes).padStart(10)}` +
            `  shared ${formatBytes(item.sharedBytes).padStart(10)}  ${money(item.hourlyMicros)}/h  ${money(item.monthToDateMicros)} this month`,
        );
      }
    }),
  );

program
  .command('load <vm>')
  .description("set the embedded platform's load figure of a VM (what policies wait on) and print it")
  .option('--cpu <percent>', 'CPU utilisation, 0-100 (unchanged when left out)', Number)
  .option('--io <percent>', 'disk I/O utilisation, 0-100 (unchanged when left out)', Number)
  .action(
    action(async ({ snapshots, hypervisor }, account, ref: string, options: { cpu?: number; io?: number }) => {
      const vm = snapshots.findVm(account, ref);
      if (!vm) throw new SnapshotError('VmNotFound', `Unknown VM ${ref}: it does not exist in account ${account}.`);
      const load = VmLoadSchema.safeParse({
        ...(await hypervisor.readLoad(vm)),
        ...defined({ cpuPercent: options.cpu, diskIoPercent: options.io }),
      });
      if (!load.success) {
        const issue = load.error.issues[0];
        throw new SnapshotError('InvalidRequest', `Invalid ${issue?.path.join('.')}: ${issue?.message}`);
      }
      await hypervisor.setLoad(vm.id, load.data);
      print(`${vm.name} (${vm.id}): ${formatLoad(await hypervisor.readLoad(vm))}`);
    }),
  );

/** What the policy options give, as commander parses them; the PolicyClient validates the policy made of them. */
interface PolicyOptions {
  vm?: string[];
  region?: Region;
  label?: string;
  cadence?: string;
  window?: string;
  days?: string;
  tz?: string;
  cpu?: number;
  io?: number;
  checkEvery?: number;
  onWindowClose?: SnapshotPolicy['onWindowClose'];
  nameTemplate?: string;
  purpose?: string;
  image?: boolean;
  quiesce?: Quiesce;
  keepLast?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  jitter?: number;
  description?: string;
}

/** The options that set policy fields: required where a new policy needs them on `create`, all optional on `update`. */
function addPolicyOptions(command: Command, create: boolean): Command {
  const number = (flags: string, description: string) => new Option(flags, description).argParser(Number);
  const options = [
    new Option('--vm <vm>', 'target VM, id or name (repeatable)').argParser((vm: string, previous: string[] = []) => [
      ...previous,
      vm,
    ]),
    regionOption(),
    new Option('--label <label>', 'with --region: every VM of the region carrying this label'),
    new Option('--cadence <cadence>', 'hourly, daily, weekly:<DAY> or "cron:<expression>"').makeOptionMandatory(create),
    new Option('--window <start-end>', 'low-activity window, HH:MM-HH:MM (e.g. 02:00-05:00)').makeOptionMandatory(
      create,
    ),
    new Option('--days <days>', 'days the window opens, e.g. MON,WED,FRI (policy default: every day)'),
    new Option('--tz <zone>', 'IANA time zone of the window').default(create ? 'UTC' : undefined),
    number('--cpu <percent>', 'quiet when CPU utilisation is at most this (policy default 30)'),
    number('--io <percent>', 'quiet when disk I/O utilisation is at most this (policy default 30)'),
    number('--check-every <seconds>', 'how often a busy VM is checked again (policy default 300)'),
    new Option('--on-window-close <action>', 'when the window closes on a busy VM: skip or snapshot-anyway'),
    new Option('--name-template <template>', 'snapshot names, from {vm} {purpose} {date} {time} {version}'),
    new Option('--purpose <purpose>', 'the {purpose} of the name template (policy default "scheduled")'),
    new Option('--image', 'also register the snapshots as boot images'),
    new Option('--quiesce <mode>', 'required or best-effort (policy default): when a guest cannot be frozen'),
    number('--keep-last <n>', 'retention: keep the newest n snapshots of each VM').makeOptionMandatory(create),
    number('--keep-daily <n>', 'retention: and the newest of each of the last n days'),
    number('--keep-weekly <n>', 'retention: and the newest of each of the last n ISO weeks'),
    number('--keep-monthly <n>', 'retention: and the newest of each of the last n months'),
    number('--jitter <seconds>', 'random delay added to each start (policy default 30)'),
    new Option('--description <text>', 'description'),
  ];
  if (!create) options.push(new Option('--no-image', 'stop registering the snapshots as boot images'));
  for (const option of options) command.addOption(option);
  return command;
}

const TARGET_USAGE = 'name VMs with --vm (repeatable), or a region and a label with --region and --label';

/** The target the options name (VM names resolved to ids), or undefined when they name none. */
function parseTarget(options: PolicyOptions, snapshots: SnapshotClient, account: string): PolicyTarget | undefined {
  const { vm, region, label } = options;
  if (vm && !region && !label) return { vmIds: vm.map((ref) => snapshots.findVm(account, ref)?.id ?? ref) };
  if (!vm && region && label) return { region, label };
  if (vm || region || label) throw invalidPolicy(`Invalid target: ${TARGET_USAGE}`);
  return undefined;
}

function parseCadence(text: string): Cadence {
  if (text === 'hourly' || text === 'daily') return { kind: text };
  if (text.startsWith('weekly:')) return { kind: 'weekly', day: text.slice('weekly:'.length).toUpperCase() as Weekday };
  if (text.startsWith('cron:')) return { kind: 'cron', expression: text.slice('cron:'.length) };
  throw invalidPolicy(
    `Invalid cadence "${text}": use hourly, daily, weekly:<DAY> (e.g. weekly:SUN) or cron:<expression> (e.g. "cron:0 3 * * *")`,
  );
}

function parseWindowTimes(text: string): { start: string; end: string } {
  const [start, end, ...rest] = text.split(/[-–]/);
  if (start === undefined || end === undefined || rest.length > 0) {
    throw invalidPolicy(`Invalid window "${text}": use HH:MM-HH:MM, e.g. 02:00-05:00 (in the --tz time zone)`);
  }
  return { start: start.trim(), end: end.trim() };
}

function parseInstant(option: string, text: string): Date {
  const instant = new Date(text);
  if (Number.isNaN(instant.getTime())) {
    throw invalidPolicy(`Invalid ${option} "${text}": use an ISO 8601 time, e.g. 2026-11-20T00:00:00Z`);
  }
  return instant;
}

/**
 * The policy fields the options set. `window`, `loadThreshold` and `retention` are completed from `current` (the
 * policy being updated), so that `--keep-last 5` alone keeps the other retention counts.
 */
function policyFields(options: PolicyOptions, target: PolicyTarget | undefined, current?: SnapshotPolicy): PolicyPatch {
  const completed = <T extends object>(base: T | undefined, changes: Partial<T>) =>
    Object.keys(changes).length === 0 ? undefined : { ...base, ...changes };
  const window = defined({
    ...(options.window === undefined ? {} : parseWindowTimes(options.window)),
    days: options.days?.split(',').map((day) => day.trim().toUpperCase() as Weekday),
    timeZone: options.tz,
  });
  return defined({
    target,
    cadence: options.cadence === undefined ? undefined : parseCadence(options.cadence),
    window: completed(current?.window, window),
    loadThreshold: completed(current?.loadThreshold, defined({ cpuPercent: options.cpu, diskIoPercent: options.io })),
    loadCheckSeconds: options.checkEvery,
    onWindowClose: options.onWindowClose,
    nameTemplate: options.nameTemplate,
    purpose: options.purpose,
    createAsImage: options.image,
    quiesce: options.quiesce,
    retention: completed(
      current?.retention,
      defined({
        keepLast: options.keepLast,
        keepDaily: options.keepDaily,
        keepWeekly: options.keepWeekly,
        keepMonthly: options.keepMonthly,
      }),
    ),
    jitterSeconds: options.jitter,
    description: options.description,
  }) as PolicyPatch;
}

/** `fields` without the undefined ones. */
function defined<T extends object>(fields: T): Partial<T> {
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined)) as Partial<T>;
}

function invalidPolicy(message: string): SnapshotError {
  return new SnapshotError('InvalidPolicy', message);
}

const policyCommand = program
  .command('policy')
  .description('recurring snapshots in a low-activity window, each policy a Temporal Schedule');

addPolicyOptions(
  policyCommand
    .command('create')
    .description('create a policy: a Temporal Schedule that starts runs in its window')
    .requiredOption('--name <name>', 'policy name, unique in the account (lower-case letters, digits, "-")'),
  true,
).action(
  action(async ({ snapshots, policies }, account, options: PolicyOptions & { name: string }) => {
    const target = parseTarget(options, snapshots, account);
    if (!target) throw invalidPolicy(`Invalid target: ${TARGET_USAGE}`);
    const input = { accountId: account, name: options.name, ...policyFields(options, target) };
    print(policyDetails(await policies.createPolicy(input as SnapshotPolicyInput)));
  }),
);

addPolicyOptions(
  policyCommand
    .command('update <name>')
    .description('change the given fields of a policy; window, load threshold and retention fields one by one'),
  false,
).action(
  action(async ({ snapshots, policies }, account, name: string, options: PolicyOptions) => {
    const { policy } = await policies.describePolicy(account, name);
    const patch = policyFields(options, parseTarget(options, snapshots, account), policy);
    print(policyDetails(await policies.updatePolicy(account, name, patch)));
  }),
);

policyCommand
  .command('pause <name>')
  .description('stop starting runs (a run in progress finishes)')
  .option('--note <text>', 'why, shown with the policy')
  .action(
    action(async ({ policies }, account, name: string, options: { note?: string }) => {
      await policies.pausePolicy(account, name, options.note);
      print(`policy ${name} paused`);
    }),
  );

policyCommand
  .command('resume <name>')
  .description('start runs again')
  .option('--note <text>', 'why, shown with the policy')
  .action(
    action(async ({ policies }, account, name: string, options: { note?: string }) => {
      await policies.resumePolicy(account, name, options.note);
      print(`policy ${name} resumed`);
    }),
  );

policyCommand
  .command('trigger <name>')
  .description('start a run now; outside the window it may wait for low load for the length of the window')
  .option('--wait', "follow the run's decisions as it makes them, then print what it did", false)
  .action(
    action(async ({ policies, client }, account, name: string, options: { wait: boolean }) => {
      const run = await policies.triggerPolicy(account, name);
      print(`policy ${name} started run ${run.workflowId}`);
      if (!options.wait) return;
      const state = await followRun(
        client.workflow.getHandle<typeof scheduledSnapshotWorkflow>(run.workflowId, run.runId),
      );
      print(summarizeRun(state));
    }),
  );

const FOLLOW_INTERVAL_MS = 500;

/** Prints each decision of a scheduled run as it appears (polling its query) until the run ends; returns its result. */
async function followRun(handle: WorkflowHandle<typeof scheduledSnapshotWorkflow>): Promise<ScheduledRunState> {
  let printed = 0;
  const printNew = (decisions: string[]) => {
    for (const line of decisions.slice(printed)) print(line);
    printed = Math.max(printed, decisions.length);
  };
  const result = handle.result();
  const ended = result.then(
    () => true,
    () => true,
  );
  const tick = () => new Promise<false>((resolve) => setTimeout(() => resolve(false), FOLLOW_INTERVAL_MS));
  while (!(await Promise.race([ended, tick()]))) {
    // The first query may come before the run's first workflow task: skip it then.
    const state = await handle.query(scheduledRunQuery).catch(() => undefined);
    if (state) printNew(state.decisions);
  }
  const state = await result.catch((error: unknown) => {
    throw toSnapshotError(error);
  });
  printNew(state.decisions);
  return state;
}

policyCommand
  .command('backfill <name>')
  .description('take now, one after the other, the runs the policy would have started between two past times')
  .requiredOption('--from <time>', 'ISO 8601 start, e.g. 2026-11-20T00:00:00Z')
  .requiredOption('--to <time>', 'ISO 8601 end, in the past')
  .action(
    action(async ({ policies }, account, name: string, options: { from: string; to: string }) => {
      const from = parseInstant('--from', options.from);
      const to = parseInstant('--to', options.to);
      await policies.backfillPolicy(account, name, from, to);
      print(`policy ${name}: backfilling the runs between ${from.toISOString()} and ${to.toISOString()}`);
    }),
  );

policyCommand
  .command('delete <name>')
  .description('delete a policy; the snapshots it made are kept and a run in progress finishes')
  .action(
    action(async ({ policies }, account, name: string) => {
      await policies.deletePolicy(account, name);
      print(`policy ${name} deleted`);
    }),
  );

policyCommand
  .command('list')
  .description("list the account's policies with their targets, cadence, window, retention and next run")
  .addOption(outputOption())
  .action(
    action(async ({ policies }, account, options: Output) => {
      const views = await policies.listPolicies(account);
      if (options.output === 'json') return printJson({ policies: views.map(policyView) });
      print(views.length === 0 ? 'No policies' : policyRows(views));
    }),
  );

policyCommand
  .command('show <name>')
  .description('show a policy in full, with its next runs and what its recent runs did')
  .addOption(outputOption())
  .action(
    action(async ({ policies }, account, name: string, options: Output) => {
      const view = await policies.describePolicy(account, name);
      if (options.output === 'json') return printJson(policyDetailView(view));
      print(policyDetails(view));
    }),
  );

policyCommand
  .command('cost <name>')
  .description("estimate what the policy's retained snapshots cost to store (per VM, per hour and per month)")
  .action(
    action(async ({ policies }, account, name: string) => {
      const preview = policies.previewCost((await policies.describePolicy(account, name)).policy);
      const money = (micros: number) => formatMoney(micros, preview.currency);
      for (const vm of preview.perVm) {
        print(`${vm.vmName.padEnd(24)} ${vm.retained} snapshots  ~${formatBytes(vm.estimatedBytes)}`);
      }
      print(
        `estimated ${formatBytes(preview.totalBytes)}: ${money(preview.hourlyMicros)} per hour, ` +
          `${money(preview.monthlyMicros)} per month`,
      );
    }),
  );

program.parseAsync().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
