import fs from 'node:fs/promises';
import path from 'node:path';
import type { SnapshotError } from '../domain/errors';
import { MAX_DESCRIPTION_LENGTH } from '../domain/requests';
import type { CreateSnapshotRequest } from '../domain/requests';
import { creditHoldFor } from '../domain/rules';
import type { snapshotWorkflow } from '../workflows';
import { createSnapshotEnv } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';

let env: SnapshotEnv;

beforeAll(async () => {
  env = await createSnapshotEnv();
  // Capture throttled (~32 MB/s, about 3 s per VM) so a snapshot stays in flight while rivals arrive.
  await env.startWorker({ captureMaxBytesPerSecond: 32e6 });
});

afterAll(async () => {
  await env.close();
});

/** The credit hold a snapshot of `vmId` takes (priced on the VM's provisioned bytes, 720 hours). */
const holdOf = (vmId: string) =>
  creditHoldFor(env.platform.catalog.getAccount('acme')!, env.platform.catalog.getVm(vmId)!).hold;

const trainer: CreateSnapshotRequest = { accountId: 'acme', vmId: 'vm-trainer-01', region: 'CANADA-1', name: 'x' };

async function refusal(request: CreateSnapshotRequest): Promise<SnapshotError> {
  const error = await env.snapshots.createSnapshot(request).then(
    () => undefined,
    (e: unknown) => e as SnapshotError,
  );
  if (!error) throw new Error(`request ${JSON.stringify(request)} was accepted`);
  return error;
}

function snapshotCount(): number {
  return env.platform.catalog.listSnapshots({}).length;
}

describe('every rule has a typed refusal that changes nothing', () => {
  test.each<[string, CreateSnapshotRequest, string, RegExp]>([
    ['unknown account', { ...trainer, accountId: 'ghost' }, 'AccountNotFound', /ghost/],
    ['VM not ACTIVE', { ...trainer, vmId: 'vm-builder-01' }, 'VmNotActive', /builder-01 is BUILD/],
    ['VM in another region', { ...trainer, region: 'NORWAY-1' }, 'RegionMismatch', /trainer-01 is in CANADA-1/],
    ['VM of another account', { ...trainer, vmId: 'vm-fjord-01', region: 'NORWAY-1' }, 'VmNotFound', /vm-fjord-01/],
    [
      'profile incomplete',
      { accountId: 'newco', vmId: 'vm-newco-01', region: 'US-1', name: 'x' },
      'ProfileIncomplete',
      /missing: country, billing address, payment method/,
    ],
    [
      'insufficient credits',
      { accountId: 'fjord', vmId: 'vm-fjord-01', region: 'NORWAY-1', name: 'x' },
      'InsufficientCredits',
      /available INR 0\.00100 .* less than the INR \d+\.\d+ needed .* 720 hours at INR 10 per TB per hour/,
    ],
    [
      'no ACTIVE VM in the region',
      { ...trainer, vmId: 'vm-notebook-01', region: 'US-1' },
      'NoActiveVms',
      /No active VMs available/,
    ],
    [
      'description too long',
      { ...trainer, description: 'd'.repeat(MAX_DESCRIPTION_LENGTH + 1) },
      'InvalidDescription',
      /10000/,
    ],
    ['unknown field', { ...trainer, colour: 'blue' } as CreateSnapshotRequest, 'InvalidRequest', /colour/],
    [
      'wrong type',
      { ...trainer, createAsImage: 'yes' } as unknown as CreateSnapshotRequest,
      'InvalidRequest',
      /createAsImage/,
    ],
    [
      'unknown region',
      { ...trainer, region: 'MARS-1' } as unknown as CreateSnapshotRequest,
      'InvalidRequest',
      /region/,
    ],
  ])('%s', async (_rule, request, type, message) => {
    const before = snapshotCount();
    const error = await refusal(request);
    expect(error.type).toBe(type);
    expect(error.message).toMatch(message);
    expect(snapshotCount()).toBe(before);
  });

  test('the workflow re-checks the rules authoritatively when the client is bypassed', async () => {
    const handle = await env.client.workflow.start<typeof snapshotWorkflow>('snapshotWorkflow', {
      taskQueue: env.taskQueue,
      workflowId: `bypass-${Date.now()}`,
      args: [
        {
          snapshotId: `snap-bypass-${Date.now()}`,
          request: {
            accountId: 'fjord',
            vmId: 'vm-fjord-01',
            region: 'NORWAY-1',
            name: 'bypass',
            description: '',
            createAsImage: false,
            quiesce: 'best-effort',
            requestedBy: 'test',
          },
        },
      ],
    });
    await expect(handle.result()).rejects.toMatchObject({ cause: { type: 'InsufficientCredits' } });
    expect(env.platform.catalog.findSnapshotByName('fjord', 'bypass')).toBeUndefined();
  });

  test('eligible VMs are the ACTIVE VMs of the region, labelled as in the product', () => {
    expect(env.snapshots.listEligibleVms('acme', 'CANADA-1').map((v) => v.label)).toEqual([
      'trainer-01 - H100-SXM5-80GB (CANADA-1)',
      'trainer-02 - H100-SXM5-80GB (CANADA-1)',
    ]);
    expect(env.snapshots.listEligibleVms('acme', 'US-1')).toEqual([]);
  });
});

describe('snapshot names', () => {
  const valid = ['a', 'n'.repeat(50), 'é'.repeat(50), 'ñandú-ø_2026.11.25 v1', 'nightly 2026-11-25'];
  const invalid = [
    '',
    'n'.repeat(51),
    ' leading',
    'trailing ',
    'tab\there',
    'bell\u0007',
    '../etc',
    'a/b',
    '😀snap',
    '-dash',
  ];

  test.each(invalid.map((n) => [JSON.stringify(n), n]))(
    '%s is refused as InvalidSnapshotName',
    async (_label, name) => {
      const error = await refusal({ ...trainer, name });
      expect(error.type).toBe('InvalidSnapshotName');
    },
  );

  test('valid names are accepted, descriptions stored faithfully, and names collide ignoring case', async () => {
    const description = `Line one\nLine two — ünïcödé, tabs\tand 'quotes'\n${'x'.repeat(500)}`;
    for (const [i, name] of valid.entries()) {
      const vm = i % 2 === 0 ? 'vm-trainer-01' : 'vm-trainer-02';
      const started = await env.snapshots.createSnapshot({
        ...trainer,
        vmId: vm,
        name,
        description,
        createAsImage: i === 0,
      });
      const record = await env.snapshots.watchProgress(started);
      expect(record.name).toBe(name);
      expect(record.description).toBe(description);
      expect(record.createAsImage).toBe(i === 0);
    }
    const collision = await refusal({ ...trainer, name: 'NIGHTLY 2026-11-25' });
    expect(collision.type).toBe('SnapshotNameTaken');
    // Names are unique across regions too.
    const otherRegion = await refusal({ ...trainer, vmId: 'vm-infer-01', region: 'NORWAY-1', name: 'A' });
    expect(otherRegion.type).toBe('SnapshotNameTaken');
  });
});

describe('race-free reservations', () => {
  afterEach(async () => {
    // Let in-flight snapshots finish so each test starts with free VMs.
    for (const s of env.platform.catalog.listSnapshots({ status: undefined })) {
      if (!['SUCCESS', 'FAILED'].includes(s.status))
        await env.client.workflow
          .getHandle(s.workflowId)
          .result()
          .catch(() => undefined);
    }
  });

  test('20 concurrent creates of one name yield one snapshot and SnapshotNameTaken for the rest', async () => {
    const vms = ['vm-trainer-01', 'vm-trainer-02'];
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        env.snapshots.createSnapshot({ ...trainer, vmId: vms[i % 2]!, name: 'race-name' }),
      ),
    );
    const accepted = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(accepted).toHaveLength(1);
    expect(refused.map((r) => (r.reason as SnapshotError).type)).toEqual(Array(19).fill('SnapshotNameTaken'));
    const record = await env.snapshots.watchProgress(
      (accepted[0] as PromiseFulfilledResult<{ snapshotId: string; workflowId: string }>).value,
    );
    expect(record.status).toBe('SUCCESS');
    expect(env.platform.catalog.listSnapshots({}).filter((s) => s.name === 'race-name')).toHaveLength(1);
    expect(env.platform.catalog.heldCredits('acme')).toBe(0);
  });

  test('20 concurrent creates on one VM yield one snapshot and SnapshotInProgress for the rest', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => env.snapshots.createSnapshot({ ...trainer, name: `race-vm-${i}` })),
    );
    const accepted = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(accepted).toHaveLength(1);
    expect(new Set(refused.map((r) => (r.reason as SnapshotError).type))).toEqual(new Set(['SnapshotInProgress']));
    expect(env.platform.catalog.heldCredits('acme')).toBe(holdOf('vm-trainer-01'));
    await env.snapshots.watchProgress(
      (accepted[0] as PromiseFulfilledResult<{ snapshotId: string; workflowId: string }>).value,
    );
    // No reservation leaked: no other live snapshot of these names, and every hold is settled.
    const live = env.platform.catalog
      .listSnapshots({ vmId: 'vm-trainer-01' })
      .filter((s) => s.name.startsWith('race-vm-') && s.status !== 'FAILED');
    expect(live).toHaveLength(1);
    expect(env.platform.catalog.heldCredits('acme')).toBe(0);
  });

  test('a retried request with the same idempotency key returns the same snapshot', async () => {
    const request = { ...trainer, vmId: 'vm-trainer-02', name: 'retry-me', idempotencyKey: 'req-42' };
    const concurrent = await Promise.all([1, 2, 3].map(() => env.snapshots.createSnapshot(request)));
    expect(new Set(concurrent.map((s) => s.snapshotId)).size).toBe(1);
    await env.snapshots.watchProgress(concurrent[0]!);
    const later = await env.snapshots.createSnapshot(request);
    expect(later.snapshotId).toBe(concurrent[0]!.snapshotId);
    const otherKey = await refusal({ ...request, idempotencyKey: 'req-43' });
    expect(otherKey.type).toBe('SnapshotNameTaken');
  });

  test('cancelling a snapshot cleans up: FAILED as Cancelled, hold released, name free, views gone', async () => {
    const started = await env.snapshots.createSnapshot({ ...trainer, name: 'cancel-me' });
    await env.client.workflow.getHandle(started.workflowId).cancel();
    const error = await env.snapshots.watchProgress(started).catch((e: unknown) => e as SnapshotError);
    expect(error).toMatchObject({ type: 'Cancelled' });
    const record = env.platform.catalog.getSnapshot(started.snapshotId)!;
    expect(record).toMatchObject({ status: 'FAILED', failureType: 'Cancelled' });
    expect(env.platform.catalog.heldCredits('acme')).toBe(0);
    expect(env.platform.catalog.findSnapshotByName('acme', 'cancel-me')).toBeUndefined();
    const repository = env.platform.repositoryFor('CANADA-1');
    expect(await repository.listStagingIds()).not.toContain(started.snapshotId);
    await expect(fs.access(path.join(env.platform.dataDir, 'views', started.snapshotId))).rejects.toThrow();
  });

  test('the credit hold is taken on acceptance and converted on success', async () => {
    const started = await env.snapshots.createSnapshot({
      ...trainer,
      vmId: 'vm-infer-01',
      region: 'NORWAY-1',
      name: 'held',
    });
    expect(env.platform.catalog.heldCredits('acme')).toBe(holdOf('vm-infer-01'));
    const record = await env.snapshots.watchProgress(started);
    expect(record.creditHoldMicros).toBe(holdOf('vm-infer-01'));
    expect(env.platform.catalog.heldCredits('acme')).toBe(0);
  });
});
