import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { createSnapshotEnv, fileHash } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';

const run = promisify(execFile);
let env: SnapshotEnv;

beforeAll(async () => {
  env = await createSnapshotEnv();
  await env.startWorker();
});

afterAll(async () => {
  await env.close();
});

/** Runs the CLI as a user would, against the test server and the env's data directory. */
async function snap(...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  const tsx = path.join(__dirname, '..', 'node_modules', '.bin', 'tsx');
  return run(tsx, [path.join(__dirname, '..', 'client', 'cli.ts'), ...args], {
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: process.env.TEMPORAL_TEST_ADDRESS,
      TEMPORAL_NAMESPACE: process.env.TEMPORAL_TEST_NAMESPACE,
      SNAP_TASK_QUEUE: env.taskQueue,
      SNAP_DATA_DIR: env.platform.dataDir,
    },
  }).then(
    ({ stdout, stderr }) => ({ stdout, stderr, code: 0 }),
    (error: { stdout: string; stderr: string; code: number }) => error,
  );
}

test('vms lists the ACTIVE VMs of a region in the product format, or says none are available', async () => {
  const canada = await snap('vms', '--region', 'CANADA-1');
  expect(canada.stdout).toContain('trainer-01 - H100-SXM5-80GB (CANADA-1)');
  expect(canada.stdout).toContain('trainer-02 - H100-SXM5-80GB (CANADA-1)');
  expect(canada.stdout).not.toContain('builder-01');
  expect(canada.stdout).toMatch(/trainer-01 .* credit hold USD \d+\.\d+ for 720 h/);
  expect((await snap('vms', '--region', 'US-1')).stdout.trim()).toBe('No active VMs available');
});

test('create, list, show and restore work end to end', async () => {
  const created = await snap(
    'create',
    '--vm',
    'trainer-02',
    '--name',
    'cli-nightly-v1',
    '--description',
    'from the CLI',
  );
  expect(created.code).toBe(0);
  expect(created.stderr).toContain('SUCCESS');
  expect(created.stdout).toMatch(/Status:\s+SUCCESS/);
  expect(created.stdout).toMatch(/Compression ratio:\s+\d+\.\d+x/);

  const list = await snap('list');
  expect(list.stdout).toMatch(/cli-nightly-v1\s+trainer-02\s+CANADA-1\s+SUCCESS/);
  expect((await snap('show', 'cli-nightly-v1')).stdout).toContain('from the CLI');

  const target = path.join(env.platform.dataDir, 'cli-root.raw');
  const restored = await snap('restore', 'cli-nightly-v1', '--disk', 'root', '--to', target);
  expect(restored.stdout).toContain('restored');
  const vm = env.platform.catalog.getVm('vm-trainer-02')!;
  expect(await fileHash(target)).toBe(await fileHash(vm.disks[0]!.path));
});

test('typed errors reach the user as one line and exit code 2', async () => {
  const taken = await snap('create', '--vm', 'trainer-01', '--name', 'CLI-Nightly-v1');
  expect(taken.code).toBe(2);
  expect(taken.stderr).toContain('error SnapshotNameTaken');
  const inactive = await snap('create', '--vm', 'vm-notebook-01', '--region', 'US-1', '--name', 'x');
  expect(inactive.stderr).toContain('error NoActiveVms');
  const building = await snap('create', '--vm', 'builder-01', '--name', 'while-building');
  expect(building.stderr).toContain('error VmNotActive: VM builder-01 is BUILD');
  const badName = await snap('create', '--vm', 'trainer-01', '--name', '../etc');
  expect(badName.stderr).toContain('error InvalidSnapshotName');
});
