import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { startApiServer } from './helpers/api-server';
import { createSnapshotEnv, fileHash, reserveTestSnapshot, waitFor } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';
import { connectSnapshotClient } from '../client/connect';
import { queuesWithoutWorkers } from '../client/workers';
import { loadConfig } from '../domain/config';
import { SnapshotError } from '../domain/errors';
import { uniqueId } from './support/temporal';

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
  return snapWith({}, ...args);
}

/** `snap` with some of the environment changed; a CLI still running after 30 s is killed (code null). */
async function snapWith(
  overrides: Record<string, string>,
  ...args: string[]
): Promise<{ stdout: string; stderr: string; code: number }> {
  const tsx = path.join(__dirname, '..', 'node_modules', '.bin', 'tsx');
  return run(tsx, [path.join(__dirname, '..', 'client', 'cli.ts'), ...args], {
    timeout: 30_000,
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: process.env.TEMPORAL_TEST_ADDRESS,
      TEMPORAL_NAMESPACE: process.env.TEMPORAL_TEST_NAMESPACE,
      SNAP_TASK_QUEUE: env.taskQueue,
      SNAP_DATA_DIR: env.platform.dataDir,
      ...overrides,
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
  expect(created.stdout).toMatch(/Consistency:\s+application-consistent \(guest frozen \d+ ms\)\n/);

  const list = await snap('list');
  expect(list.stdout).toMatch(/cli-nightly-v1\s+trainer-02\s+CANADA-1\s+SUCCESS/);
  const shown = (await snap('show', 'cli-nightly-v1')).stdout;
  expect(shown).toContain('from the CLI');
  expect(shown).toMatch(/Consistency:\s+application-consistent \(guest frozen \d+ ms\)\n/);
  expect(shown).toMatch(/Capture:\s+full\n/);
  const unknownMode = await snap('create', '--vm', 'trainer-02', '--name', 'cli-quiesce', '--quiesce', 'sometimes');
  expect(unknownMode.code).not.toBe(0);
  expect(unknownMode.stderr).toContain('InvalidRequest');

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

describe('snapshot policies', () => {
  /** Policies are Schedules, namespace-wide: every test uses its own name. */
  const policyName = () => uniqueId('cli').toLowerCase();

  test('create and show a policy; update changes only the given fields; pause with a note; list; delete', async () => {
    const name = policyName();
    const created = await snap(
      ...['policy', 'create', '--name', name, '--region', 'CANADA-1', '--label', 'nightly'],
      ...['--cadence', 'weekly:SUN', '--window', '02:00-05:00', '--days', 'SAT,SUN', '--tz', 'Europe/Oslo'],
      ...['--cpu', '20', '--keep-last', '3', '--keep-daily', '7', '--purpose', 'nightly'],
    );
    expect(created).toMatchObject({ code: 0, stderr: '' });

    const shown = await snap('policy', 'show', name);
    expect(shown.stdout).toMatch(/Targets:\s+CANADA-1 label "nightly"/);
    expect(shown.stdout).toMatch(/Cadence:\s+weekly:SUN/);
    expect(shown.stdout).toMatch(/Window:\s+02:00–05:00 Europe\/Oslo, Sat, Sun/);
    expect(shown.stdout).toMatch(/Quiet when:\s+CPU <= 20% and disk I\/O <= 30%/);
    expect(shown.stdout).toMatch(/Retention:\s+last 3, daily 7\n/);
    expect(shown.stdout).toMatch(/Paused:\s+no/);
    // The next five runs: Sundays at 02:00 Oslo time, delayed by less than the 30 s jitter.
    const nextRuns = shown.stdout.match(/\d{4}-\d\d-\d\dT02:00:\d\d\+0[12]:00/g) ?? [];
    expect(nextRuns).toHaveLength(5);
    for (const run of nextRuns) expect(new Date(run).getUTCDay()).toBe(0);

    const updated = await snap('policy', 'update', name, '--keep-last', '5', '--tz', 'UTC', '--io', '10');
    expect(updated.code).toBe(0);
    expect(updated.stdout).toMatch(/Window:\s+02:00–05:00 UTC, Sat, Sun/);
    expect(updated.stdout).toMatch(/Quiet when:\s+CPU <= 20% and disk I\/O <= 10%/);
    expect(updated.stdout).toMatch(/Retention:\s+last 5, daily 7\n/);
    expect(updated.stdout).toMatch(/Cadence:\s+weekly:SUN/);
    expect(updated.stdout).toMatch(
      /Name template:\s+\{vm\}-\{purpose\}-\{date\}-\{time\}-v\{version\} \(purpose "nightly"\)/,
    );

    expect((await snap('policy', 'pause', name, '--note', 'maintenance freeze until Monday')).code).toBe(0);
    const paused = await snap('policy', 'show', name);
    expect(paused.stdout).toMatch(/Paused:\s+yes \(maintenance freeze until Monday\)/);
    expect(paused.stdout).toMatch(/Retention:\s+last 5, daily 7\n/);

    // The list comes from the visibility store, which may lag a moment behind.
    const listed = await waitFor(async () => {
      const list = await snap('policy', 'list');
      return list.stdout.includes(name) ? list.stdout : undefined;
    });
    expect(listed).toMatch(/NAME\s+TARGETS\s+CADENCE\s+WINDOW\s+RETENTION\s+PAUSED\s+NEXT RUN/);
    expect(listed).toMatch(
      new RegExp(
        `${name}\\s+CANADA-1 label "nightly"\\s+weekly:SUN\\s+02:00–05:00 UTC, Sat, Sun\\s+last 5, daily 7\\s+yes\\s+\\d{4}-`,
      ),
    );

    expect(await snap('policy', 'delete', name)).toMatchObject({ code: 0, stdout: `policy ${name} deleted\n` });
    const gone = await snap('policy', 'show', name);
    expect(gone.code).toBe(2);
    expect(gone.stderr).toBe(`error PolicyNotFound: Account acme has no policy "${name}".\n`);
  });

  test('invalid policies are refused with error InvalidPolicy and exit code 2', async () => {
    const create = (...args: string[]) =>
      snap('policy', 'create', '--name', policyName(), '--vm', 'trainer-01', '--keep-last', '3', ...args);
    const badZone = await create('--cadence', 'daily', '--window', '02:00-05:00', '--tz', 'Mars/Base');
    expect(badZone.code).toBe(2);
    expect(badZone.stderr).toBe('error InvalidPolicy: Invalid window.timeZone: unknown time zone "Mars/Base"\n');
    const badCadence = await create('--cadence', 'monthly', '--window', '02:00-05:00');
    expect(badCadence.code).toBe(2);
    expect(badCadence.stderr).toContain('error InvalidPolicy: Invalid cadence "monthly": use hourly, daily, weekly:');
    const badWindow = await create('--cadence', 'daily', '--window', '02:00');
    expect(badWindow.code).toBe(2);
    expect(badWindow.stderr).toContain('error InvalidPolicy: Invalid window "02:00": use HH:MM-HH:MM');
  });

  test('load sets the load figure of a VM by name; a figure left out keeps its value', async () => {
    const vm = env.platform.catalog.getVm('vm-infer-01')!;
    const set = await snap('load', 'inference-01', '--cpu', '85', '--io', '40');
    expect(set).toMatchObject({ code: 0, stdout: 'inference-01 (vm-infer-01): CPU 85%, disk I/O 40%\n' });
    expect(await env.platform.hypervisor.readLoad(vm)).toEqual({ cpuPercent: 85, diskIoPercent: 40 });
    expect((await snap('load', 'vm-infer-01', '--io', '5')).stdout).toContain('CPU 85%, disk I/O 5%');
    expect(await env.platform.hypervisor.readLoad(vm)).toEqual({ cpuPercent: 85, diskIoPercent: 5 });
  });

  test('policy trigger --wait follows the run and prints what it did; the snapshot shows its policy', async () => {
    const name = policyName();
    // A UTC window opening six hours from now: the triggered run starts outside it, whenever the test runs.
    const utc = (hours: number) => new Date(Date.now() + hours * 60 * 60 * 1000).toISOString().slice(11, 16);
    const [start, end] = [utc(6), utc(9)];
    const created = await snap(
      ...['policy', 'create', '--name', name, '--vm', 'trainer-01', '--cadence', 'daily'],
      ...['--window', `${start}-${end}`, '--keep-last', '2', '--purpose', 'cli'],
    );
    expect(created).toMatchObject({ code: 0, stderr: '' });
    try {
      const { stdout, code } = await snap('policy', 'trigger', name, '--wait');
      expect(code).toBe(0);
      const lines = stdout.trim().split('\n');
      expect(lines[0]).toMatch(new RegExp(`^policy ${name} started run scheduled-snapshots/acme/${name}-`));
      expect(lines[1]).toMatch(new RegExp(`^\\S+Z started outside the window ${start}–${end} UTC, Mon–Sun`));
      expect(stdout).toMatch(/Z starting snapshot "trainer-01-cli-\S+" of trainer-01\n/);
      expect(stdout).toMatch(/Z retention kept (all )?\d+ snapshots of trainer-01/);
      const snapshotName = /^trainer-01: snapshot "(trainer-01-cli-[\w-]+)"$/.exec(lines.at(-1)!)?.[1];
      expect(snapshotName).toBeDefined();

      const shown = await snap('show', snapshotName!);
      expect(shown.stdout).toMatch(/Status:\s+SUCCESS/);
      expect(shown.stdout).toMatch(new RegExp(`Policy:\\s+snapshot-policy/acme/${name}\n`));
    } finally {
      await env.policies.deletePolicy('acme', name);
    }
  });
});

test('restore-vm, images, billing, delete, gc and reverify from the CLI', async () => {
  expect((await snap('create', '--vm', 'trainer-01', '--name', 'cli-image-src', '--image')).code).toBe(0);
  const images = await snap('images', '--region', 'CANADA-1');
  const imageId = /^(img-\S+)\s+cli-image-src\s+H100-SXM5-80GB\s+CANADA-1/m.exec(images.stdout)?.[1];
  expect(imageId).toBeDefined();

  const restored = await snap('restore-vm', 'cli-image-src', '--name', 'cli-restored');
  expect(restored.stdout).toMatch(/VM cli-restored \(vm-\w+\) is ACTIVE in CANADA-1: H100-SXM5-80GB/);
  const fromImage = await snap('restore-vm', '--image', imageId!, '--name', 'cli-from-image');
  expect(fromImage.stdout).toContain('VM cli-from-image');
  const both = await snap('restore-vm', 'cli-image-src', '--image', imageId!, '--name', 'cli-neither');
  expect(both.stderr).toContain('error InvalidRequest');

  await env.billing.meterHour(new Date());
  const billing = await snap('billing');
  expect(billing.stdout).toMatch(/Balance:\s+USD \d+\.\d+/);
  expect(billing.stdout).toMatch(/Hourly cost:\s+USD/);
  expect(billing.stdout).toMatch(/snapshot\s+cli-image-src\s+exclusive/);

  expect((await snap('delete', 'cli-image-src')).stdout).toContain('deleted cli-image-src');
  expect((await snap('list')).stdout).not.toContain('cli-image-src');
  expect((await snap('image', 'delete', imageId!)).stdout).toContain(`deleted image ${imageId}`);
  expect((await snap('gc', '--region', 'CANADA-1', '--grace-minutes', '0')).stdout).toMatch(
    /CANADA-1: freed [\d.]+ \w+ \(\d+ chunks\); \d+ referenced, 0 kept by the grace period/,
  );
  expect((await snap('reverify', '--region', 'CANADA-1', '--older-than-days', '0')).stdout).toMatch(
    /CANADA-1: \d+ snapshots re-verified, 0 damaged/,
  );
  expect((await snap('delete', 'no-such-snapshot')).stderr).toContain('error SnapshotNotFound');
});

test('--output json prints what the HTTP API answers, field for field, for every listing and show', async () => {
  const api = await startApiServer(env);
  const policy = uniqueId('cli-json').toLowerCase();
  try {
    expect((await snap('create', '--vm', 'trainer-01', '--name', 'cli-json-src', '--image')).code).toBe(0);
    await env.billing.meterHour(new Date());
    const created = await snap(
      ...['policy', 'create', '--name', policy, '--region', 'CANADA-1', '--label', 'nightly'],
      ...['--cadence', 'daily', '--window', '02:00-05:00', '--keep-last', '3'],
    );
    expect(created.code).toBe(0);
    const json = async (...args: string[]): Promise<unknown> => {
      const result = await snap(...args, '--output', 'json');
      expect(result).toMatchObject({ code: 0, stderr: '' });
      return JSON.parse(result.stdout);
    };
    const answer = async (route: string): Promise<unknown> => {
      const { status, body } = await api.call<unknown>('acme', 'GET', route);
      expect(status).toBe(200);
      return body;
    };

    const list = (await json('list')) as { snapshots: { id: string; name: string }[] };
    expect(list.snapshots.map((snapshot) => snapshot.name)).toContain('cli-json-src');
    expect(list).toEqual(await answer('/api/snapshots'));
    expect(await json('list', '--region', 'US-1')).toEqual(await answer('/api/snapshots?region=US-1'));
    const id = list.snapshots.find((snapshot) => snapshot.name === 'cli-json-src')!.id;
    expect(await json('show', 'cli-json-src')).toEqual(await answer(`/api/snapshots/${id}`));
    expect(await json('vms', '--region', 'CANADA-1')).toEqual(await answer('/api/vms?region=CANADA-1'));
    expect(await json('vms', '--region', 'US-1')).toEqual(await answer('/api/vms?region=US-1'));
    expect(await json('images')).toEqual(await answer('/api/images'));
    expect(await json('billing')).toEqual(await answer('/api/billing'));
    const policies = (await json('policy', 'list')) as { policies: { name: string }[] };
    expect(policies).toEqual(await answer('/api/policies'));
    // show adds what the recent runs did (none yet) to the policy as listed.
    const listed = policies.policies.find((entry) => entry.name === policy);
    expect(await json('policy', 'show', policy)).toEqual({ ...listed, recentRuns: [] });
    // The text output stays the default.
    expect((await snap('list')).stdout).toMatch(/cli-json-src\s+trainer-01\s+CANADA-1\s+SUCCESS/);
  } finally {
    await snap('policy', 'delete', policy);
    await api.close();
  }
});

/** A snapshot row put straight into the catalog, as older versions could store it (no rule checks), SUCCESS. */
function storedSnapshot(fields: { vmId: string; name: string; description?: string }) {
  const vm = env.platform.catalog.getVm(fields.vmId)!;
  const id = `snap-${randomUUID()}`;
  reserveTestSnapshot(env.platform.catalog, vm, id, {
    name: fields.name,
    description: fields.description ?? '',
    workflowId: `stored/${id}`,
  });
  return env.platform.catalog.updateSnapshot(id, { status: 'SUCCESS' });
}

describe('ids and names', () => {
  test('a reference shaped like an id is resolved as an id only, a name by its key only', async () => {
    const target = storedSnapshot({ vmId: 'vm-trainer-01', name: 'cli-id-target' });
    // Stored before names shaped like ids were refused: a snapshot named like the first one's id.
    const impostor = storedSnapshot({ vmId: 'vm-trainer-02', name: target.id });

    expect((await snap('delete', target.id)).stdout.trim()).toBe(`deleted cli-id-target (${target.id})`);
    const again = await snap('delete', target.id);
    expect(again).toMatchObject({
      code: 2,
      stderr: `error SnapshotNotFound: No snapshot with id "${target.id}" in account acme.\n`,
    });
    expect(env.platform.catalog.getSnapshot(impostor.id)?.status).toBe('SUCCESS');

    // Names are found by their collision key: case and width do not matter.
    const named = storedSnapshot({ vmId: 'vm-trainer-01', name: 'Straße-Nightly' });
    expect((await snap('show', 'ＳＴＲＡＳＳＥ-nightly')).stdout).toContain(`ID:                  ${named.id}`);

    const idShaped = await snap('create', '--vm', 'trainer-01', '--name', `snap-${randomUUID()}`);
    expect(idShaped).toMatchObject({
      code: 2,
      stderr:
        'error InvalidSnapshotName: Invalid name: must not look like a snapshot or image id (snap-<uuid>, img-<uuid>)\n',
    });
  });

  test('user text is printed with its terminal controls escaped, newlines of a description kept', async () => {
    const hostile = storedSnapshot({
      vmId: 'vm-trainer-01',
      name: 'cli-escapes',
      description: '\u001b]0;owned\u0007first line\nsecond \u009b2J\u001b[31mred',
    });
    const shown = await snap('show', hostile.id);
    expect(shown.stdout).toContain(
      'Description:         \\x1b]0;owned\\x07first line\n                     second \\x9b2J\\x1b[31mred\n',
    );
    for (const control of ['\u001b', '\u0007', '\u009b']) expect(shown.stdout).not.toContain(control);
    const missing = await snap('show', 'no-such\u001b[2J');
    expect(missing.stderr).toBe('error SnapshotNotFound: No snapshot named "no-such\\x1b[2J" in account acme.\n');
  });
});

describe('a newcomer without a server or a worker', () => {
  /** A port nothing listens on: bound, then released. */
  async function closedPort(): Promise<number> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    await new Promise((resolve) => server.close(resolve));
    return port;
  }

  test('with no Temporal server, a command says so in one line within 2 s, with the command that starts one', async () => {
    const address = `127.0.0.1:${await closedPort()}`;
    const message =
      `error TemporalUnavailable: No Temporal server answers at ${address} (TEMPORAL_ADDRESS): ` +
      'start one with `npm run server` (or the whole demo with `npm run demo`), then try again.\n';

    const connecting = Date.now();
    const error = await connectSnapshotClient({ ...loadConfig(), TEMPORAL_ADDRESS: address }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const connectMs = Date.now() - connecting;
    expect(error).toBeInstanceOf(SnapshotError);
    expect((error as SnapshotError).type).toBe('TemporalUnavailable');

    const started = Date.now();
    const listed = await snapWith({ TEMPORAL_ADDRESS: address }, 'list');
    const cliMs = Date.now() - started;
    console.log(`no server: connect refused after ${connectMs} ms; the whole CLI (tsx start-up included) ${cliMs} ms`);
    expect(listed).toMatchObject({ code: 2, stdout: '', stderr: message });
    expect(connectMs).toBeLessThan(2_000);
    // The CLI's own start-up (tsx compiling it) comes on top; the SDK's default alone waited 10 s.
    expect(cliMs).toBeLessThan(8_000);
  });

  test('create with no worker on the task queue says so at once and starts nothing', async () => {
    const queue = uniqueId('no-worker');
    expect(await queuesWithoutWorkers(env.client, [env.taskQueue, queue])).toEqual([
      `${queue} (workflow tasks)`,
      `${queue} (activity tasks)`,
    ]);

    const created = await snapWith({ SNAP_TASK_QUEUE: queue }, 'create', '--vm', 'trainer-01', '--name', 'unpolled');
    expect(created).toMatchObject({
      code: 2,
      stderr:
        `error WorkerUnavailable: No worker polls the task queue ${queue} (workflow tasks), ${queue} (activity tasks) ` +
        `in namespace ${env.client.options.namespace}: nothing would run. ` +
        'Start one with `npm run worker` (or `npm run demo`), then try again.\n',
    });
    expect(env.platform.catalog.findSnapshotByName('acme', 'unpolled')).toBeUndefined();
  });
});
