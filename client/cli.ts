import path from 'node:path';
import { Command, Option } from 'commander';
import { loadConfig } from '../domain/config';
import { SnapshotError } from '../domain/errors';
import { REGIONS } from '../domain/model';
import type { Region, SnapshotRecord } from '../domain/model';
import { connectSnapshotClient } from './connect';
import { snapshotDetails, snapshotRows } from './format';
import { stageProgressBar } from './progress-bar';
import type { SnapshotClient } from './snapshot-client';
import { NO_ACTIVE_VMS } from './snapshot-client';

const config = loadConfig();
const program = new Command('snap')
  .description('Create, inspect and restore VM snapshots')
  .option('--account <id>', 'account to act for', config.SNAP_ACCOUNT);

const regionOption = () => new Option('--region <region>', 'region').choices(REGIONS);

/** Runs a command with a connected client and turns typed errors into a one-line message and exit code 2. */
function action<A extends unknown[]>(fn: (snapshots: SnapshotClient, account: string, ...args: A) => Promise<void>) {
  return async (...args: A) => {
    const connected = await connectSnapshotClient(config);
    try {
      await fn(connected.snapshots, program.opts<{ account: string }>().account, ...args);
    } catch (error) {
      if (!(error instanceof SnapshotError)) throw error;
      console.error(`error ${error.type}: ${error.message}`);
      process.exitCode = 2;
    } finally {
      await connected.close();
    }
  };
}

function findSnapshot(snapshots: SnapshotClient, account: string, ref: string): SnapshotRecord {
  const found = snapshots.listSnapshots(account).filter((s) => s.id === ref || s.name === ref);
  const snapshot = found.find((s) => s.status !== 'FAILED') ?? found[found.length - 1];
  if (!snapshot) throw new SnapshotError('SnapshotNotFound', `No snapshot "${ref}" in account ${account}.`);
  return snapshot;
}

program
  .command('vms')
  .description('list the VMs that can be snapshotted (ACTIVE) in a region')
  .addOption(regionOption().makeOptionMandatory())
  .action(
    action(async (snapshots, account, options: { region: Region }) => {
      const vms = snapshots.listEligibleVms(account, options.region);
      const lines = vms.map(
        (v) => `${v.label}  [${v.vm.id}]  credit hold ${snapshots.creditHold(account, v.vm.id).text}`,
      );
      console.log(vms.length === 0 ? NO_ACTIVE_VMS : lines.join('\n'));
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
  .option('--no-wait', 'return once the snapshot is accepted')
  .action(
    action(
      async (
        snapshots,
        account,
        options: { vm: string; name: string; region?: Region; description: string; image: boolean; wait: boolean },
      ) => {
        const vm = snapshots.findVm(account, options.vm);
        const started = await snapshots.createSnapshot({
          accountId: account,
          vmId: vm?.id ?? options.vm,
          region: options.region ?? vm?.region ?? 'CANADA-1',
          name: options.name,
          description: options.description,
          createAsImage: options.image,
          requestedBy: `cli:${process.env.USER ?? 'unknown'}`,
        });
        const hold = snapshots.creditHold(account, vm?.id ?? options.vm).text;
        console.log(`snapshot ${started.snapshotId} accepted (workflow ${started.workflowId}); credit hold ${hold}`);
        if (!options.wait) return;
        const bar = stageProgressBar();
        try {
          const record = await snapshots.watchProgress(started, (p) => bar.update({ ...p, stage: p.status }));
          bar.stop();
          console.log(snapshotDetails(record));
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
  .action(
    action(async (snapshots, account, options: { region?: Region }) => {
      const list = snapshots.listSnapshots(account, options.region ? { region: options.region } : {});
      console.log(list.length === 0 ? 'No snapshots' : snapshotRows(list));
    }),
  );

program
  .command('show <snapshot>')
  .description('show one snapshot (id or name), with live progress while it runs')
  .action(
    action(async (snapshots, account, ref: string) => {
      const snapshot = await snapshots.getSnapshot(account, findSnapshot(snapshots, account, ref).id);
      console.log(snapshotDetails(snapshot));
      if (snapshot.progress) {
        const p = snapshot.progress;
        console.log(
          `Progress:            ${p.status} ${p.bytesDone}/${p.bytesTotal} bytes, ETA ${p.etaSeconds ?? '-'} s`,
        );
      }
    }),
  );

program
  .command('restore <snapshot>')
  .description('restore one disk of a snapshot to a raw image file')
  .requiredOption('--disk <name>', 'disk name, e.g. root')
  .requiredOption('--to <file>', 'target raw image file')
  .action(
    action(async (snapshots, account, ref: string, options: { disk: string; to: string }) => {
      const snapshot = findSnapshot(snapshots, account, ref);
      const bar = stageProgressBar();
      try {
        const result = await snapshots.restoreDisk(
          { accountId: account, snapshotId: snapshot.id, diskName: options.disk, targetPath: path.resolve(options.to) },
          (p) => bar.update({ ...p, etaSeconds: null }),
        );
        bar.stop();
        console.log(`restored ${result.bytesRestored} bytes to ${path.resolve(options.to)}`);
      } finally {
        bar.stop();
      }
    }),
  );

program.parseAsync().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
