import fs from 'node:fs/promises';
import path from 'node:path';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { z } from 'zod';
import { snapshotWorkflowId } from '../domain/requests';
import { hashApiKey } from '../platform/api-keys';
import type {
  ApiError,
  BillingSchema,
  EligibleVmsSchema,
  ImageListSchema,
  NameCheckSchema,
  PolicyListSchema,
  RestoredVmSchema,
  SnapshotListSchema,
  SnapshotView,
} from '../api/schemas';
import { startApiServer } from './helpers/api-server';
import type { RunningApi } from './helpers/api-server';
import { createSnapshotEnv, waitFor } from './helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';
import { uniqueId } from './support/temporal';

const MiB = 1024 * 1024;

let env: SnapshotEnv;
let worker: RunningWorker;
let api: RunningApi;

beforeAll(async () => {
  env = await createSnapshotEnv();
  // Capture at 48 MiB/s: a test VM's 96 MiB take about two seconds, so progress can be seen while it runs.
  worker = await env.startWorker({ captureMaxBytesPerSecond: 48 * MiB });
  api = await startApiServer(env);
});

afterAll(async () => {
  await api?.close();
  await worker?.stop();
  await env?.close();
});

const createBody = (name: string, extra: Record<string, unknown> = {}) => ({
  vmId: 'vm-trainer-01',
  region: 'CANADA-1',
  name,
  ...extra,
});

/** Creates a snapshot as acme and polls it until it ends; returns every reading and the final one. */
async function createAndWait(name: string, extra: Record<string, unknown> = {}, vmId = 'vm-trainer-01') {
  const created = await api.call<SnapshotView>('acme', 'POST', '/api/snapshots', createBody(name, { vmId, ...extra }));
  expect(created.status).toBe(202);
  expect(created.headers.get('location')).toBe(`/api/snapshots/${created.body.id}`);
  const readings: SnapshotView[] = [created.body];
  const final = await waitFor(async () => {
    const { body } = await api.call<SnapshotView>('acme', 'GET', `/api/snapshots/${created.body.id}`);
    readings.push(body);
    return body.status === 'SUCCESS' || body.status === 'FAILED' ? body : undefined;
  }, 90_000);
  return { created: created.body, readings, final };
}

const ROUTES: [string, string][] = [
  ['GET', '/api/vms?region=CANADA-1'],
  ['GET', '/api/snapshots'],
  ['POST', '/api/snapshots'],
  ['GET', '/api/snapshots/check-name?name=x'],
  ['GET', '/api/snapshots/snap-1'],
  ['DELETE', '/api/snapshots/snap-1'],
  ['POST', '/api/snapshots/snap-1/restore'],
  ['GET', '/api/images'],
  ['GET', '/api/policies'],
  ['GET', '/api/billing'],
];

describe('HTTP API', () => {
  test('every route needs a valid API key, sent as a Bearer token', async () => {
    const attempts: [string, Record<string, string>][] = [
      ['no header', {}],
      ['unknown key', { authorization: 'Bearer snap_not-a-key' }],
      ['another scheme', { authorization: `Basic ${api.keys.acme}` }],
      ['the hash instead of the key', { authorization: `Bearer ${hashApiKey(api.keys.acme!)}` }],
    ];
    for (const [method, route] of ROUTES) {
      for (const [what, headers] of attempts) {
        const response = await fetch(`${api.baseUrl}${route}`, { method, headers });
        expect({ route, what, status: response.status }).toEqual({ route, what, status: 401 });
        expect(response.headers.get('www-authenticate')).toBe('Bearer');
        const body = (await response.json()) as ApiError;
        expect(body.type).toBe('Unauthorized');
        expect(body.message).toMatch(/API key/);
      }
    }
  });

  test('the catalog stores API keys only as SHA-256 hashes', async () => {
    const catalog = env.platform.catalog;
    expect(catalog.accountForApiKey(hashApiKey(api.keys.acme!))).toBe('acme');
    expect(catalog.accountForApiKey(hashApiKey(api.keys.fjord!))).toBe('fjord');
    expect(catalog.accountForApiKey(api.keys.acme!)).toBeUndefined();
    const files = (await fs.readdir(env.platform.dataDir)).filter((f) => f.startsWith('catalog.db'));
    const stored = (await Promise.all(files.map((f) => fs.readFile(path.join(env.platform.dataDir, f))))).join('');
    for (const key of Object.values(api.keys)) {
      expect(stored).not.toContain(key);
      expect(stored).toContain(hashApiKey(key));
    }
  });

  test('the OpenAPI document is public and describes every endpoint from the zod schemas', async () => {
    const response = await fetch(`${api.baseUrl}/api/openapi.json`);
    expect(response.status).toBe(200);
    const doc = (await response.json()) as {
      openapi: string;
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: unknown }> } }>>;
      components: { securitySchemes: Record<string, unknown> };
    };
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.fromEntries(Object.entries(doc.paths).map(([p, ops]) => [p, Object.keys(ops).sort()]))).toEqual({
      '/api/vms': ['get'],
      '/api/snapshots': ['get', 'post'],
      '/api/snapshots/check-name': ['get'],
      '/api/snapshots/{id}': ['delete', 'get'],
      '/api/snapshots/{id}/restore': ['post'],
      '/api/images': ['get'],
      '/api/policies': ['get'],
      '/api/billing': ['get'],
    });
    expect(doc.components.securitySchemes).toEqual({ apiKey: { type: 'http', scheme: 'bearer' } });
    const create = doc.paths['/api/snapshots']!.post!.requestBody!.content['application/json']!.schema;
    expect(create).toMatchObject({
      type: 'object',
      required: ['vmId', 'region', 'name'],
      additionalProperties: false,
      properties: {
        region: { enum: ['CANADA-1', 'NORWAY-1', 'US-1'] },
        description: { maxLength: 10_000 },
        createAsImage: { type: 'boolean' },
      },
    });
    expect(Object.keys((create as { properties: object }).properties)).not.toContain('accountId');
  });

  test('eligible VMs are the ACTIVE ones of the region, labelled as the dropdown shows them', async () => {
    type Vms = z.infer<typeof EligibleVmsSchema>;
    const canada = await api.call<Vms>('acme', 'GET', '/api/vms?region=CANADA-1');
    expect(canada.status).toBe(200);
    expect(canada.body.vms.map((vm) => vm.label)).toEqual([
      'trainer-01 - H100-SXM5-80GB (CANADA-1)',
      'trainer-02 - H100-SXM5-80GB (CANADA-1)',
    ]);
    expect(canada.body.createDisabledReason).toBeNull();
    expect(canada.body.vms[0]!.creditHold).toMatch(/^USD .* for 720 h$/);
    const us = await api.call<Vms>('acme', 'GET', '/api/vms?region=US-1');
    expect(us.body).toEqual({ region: 'US-1', vms: [], createDisabledReason: 'No active VMs available' });
    const fjord = await api.call<Vms>('fjord', 'GET', '/api/vms?region=NORWAY-1');
    expect(fjord.body.vms.map((vm) => vm.label)).toEqual(['arm-sim-01 - L40S-48GB (NORWAY-1)']);
    const bad = await api.call('acme', 'GET', '/api/vms?region=MARS-1');
    expect(bad.status).toBe(400);
    expect(bad.body.type).toBe('InvalidRequest');
  });

  test('bad input is refused with a typed JSON error and changes nothing', async () => {
    const cases: [string, string, unknown, number, string][] = [
      ['51 characters', 'acme', createBody('x'.repeat(51)), 400, 'InvalidSnapshotName'],
      ['empty name', 'acme', createBody(''), 400, 'InvalidSnapshotName'],
      ['slash in the name', 'acme', createBody('a/b'), 400, 'InvalidSnapshotName'],
      ['long description', 'acme', createBody('ok', { description: 'd'.repeat(10_001) }), 400, 'InvalidDescription'],
      ['another account in the body', 'acme', createBody('ok', { accountId: 'fjord' }), 400, 'InvalidRequest'],
      ['requester in the body', 'acme', createBody('ok', { requestedBy: 'someone' }), 400, 'InvalidRequest'],
      ['unknown region', 'acme', createBody('ok', { region: 'MARS-1' }), 400, 'InvalidRequest'],
      ['wrong type', 'acme', createBody('ok', { createAsImage: 'yes' }), 400, 'InvalidRequest'],
      ['unknown quiesce', 'acme', createBody('ok', { quiesce: 'sometimes' }), 400, 'InvalidRequest'],
      ['missing VM', 'acme', { region: 'CANADA-1', name: 'ok' }, 400, 'InvalidRequest'],
      ['malformed JSON', 'acme', '{"name": ', 400, 'InvalidRequest'],
      [
        'VM of another account',
        'acme',
        createBody('ok', { vmId: 'vm-fjord-01', region: 'NORWAY-1' }),
        404,
        'VmNotFound',
      ],
      ['VM in another region', 'acme', createBody('ok', { region: 'NORWAY-1' }), 400, 'RegionMismatch'],
      ['VM not ACTIVE', 'acme', createBody('ok', { vmId: 'vm-builder-01' }), 409, 'VmNotActive'],
      [
        'region without ACTIVE VM',
        'acme',
        createBody('ok', { vmId: 'vm-notebook-01', region: 'US-1' }),
        409,
        'NoActiveVms',
      ],
      [
        'not enough credits',
        'fjord',
        createBody('ok', { vmId: 'vm-fjord-01', region: 'NORWAY-1' }),
        402,
        'InsufficientCredits',
      ],
      [
        'incomplete profile',
        'newco',
        createBody('ok', { vmId: 'vm-newco-01', region: 'US-1' }),
        403,
        'ProfileIncomplete',
      ],
    ];
    for (const [what, account, body, status, type] of cases) {
      const response = await api.call(account, 'POST', '/api/snapshots', body);
      expect({ what, status: response.status, type: response.body.type }).toEqual({ what, status, type });
      expect(response.body.message.length).toBeGreaterThan(10);
    }
    expect(env.platform.catalog.listSnapshots({ includeDeleted: true })).toEqual([]);
    for (const account of ['acme', 'fjord', 'newco']) expect(env.platform.catalog.heldCredits(account)).toBe(0);
  });

  test('a snapshot created over the API shows its stage progress and reaches SUCCESS with its sizes and cost', async () => {
    const name = uniqueId('api-full');
    const { created, readings, final } = await createAndWait(name, { description: 'made over HTTP' });
    expect(created).toMatchObject({ name, vmName: 'trainer-01', region: 'CANADA-1', description: 'made over HTTP' });
    const running = readings.filter((r) => r.progress !== null);
    expect(running.length).toBeGreaterThan(0);
    for (const { progress } of running) {
      expect(progress!.stageCount).toBe(5);
      expect(progress!.stageNumber).toBeGreaterThanOrEqual(1);
      expect(progress!.percent).toBeGreaterThanOrEqual(0);
      expect(progress!.percent).toBeLessThanOrEqual(100);
    }
    expect(final).toMatchObject({ status: 'SUCCESS', progress: null, logicalBytes: 96 * MiB, failureType: null });
    // The embedded driver always freezes the guest.
    expect(final.consistency).toBe('application-consistent');
    expect(final.frozenMs).toEqual(expect.any(Number));
    expect(final.capture).toEqual({ kind: 'full', readWhole: [] });
    expect(final.storedBytes).toBeGreaterThan(0);
    expect(final.cost).toBeNull();

    // The name is now taken, whatever its case; it stays free in other accounts.
    const again = await api.call(
      'acme',
      'POST',
      '/api/snapshots',
      createBody(name.toUpperCase(), { vmId: 'vm-trainer-02' }),
    );
    expect([again.status, again.body.type]).toEqual([409, 'SnapshotNameTaken']);
    type Check = z.infer<typeof NameCheckSchema>;
    const taken = await api.call<Check>('acme', 'GET', `/api/snapshots/check-name?name=${name.toUpperCase()}`);
    expect(taken.body).toMatchObject({ available: false, type: 'SnapshotNameTaken' });
    const free = await api.call<Check>('fjord', 'GET', `/api/snapshots/check-name?name=${name}`);
    expect(free.body).toEqual({ name, available: true, type: null, message: null });
    const tooLong = await api.call<Check>('acme', 'GET', `/api/snapshots/check-name?name=${'x'.repeat(51)}`);
    expect(tooLong.body).toMatchObject({
      available: false,
      type: 'InvalidSnapshotName',
      message: 'Invalid name: must be 1–50 characters',
    });

    // Once the hour is metered, the list shows what the snapshot costs.
    await env.billing.meterHour(new Date());
    const list = await api.call<z.infer<typeof SnapshotListSchema>>('acme', 'GET', '/api/snapshots?region=CANADA-1');
    const listed = list.body.snapshots.find((s) => s.id === created.id)!;
    expect(listed.cost!.hourly.micros).toBeGreaterThan(0);
    expect(listed.cost!.hourly.text).toMatch(/^USD /);
    const billing = await api.call<z.infer<typeof BillingSchema>>('acme', 'GET', '/api/billing');
    expect(billing.body.items.find((i) => i.itemId === created.id)?.hourly).toEqual(listed.cost!.hourly);
    const norway = await api.call<z.infer<typeof SnapshotListSchema>>('acme', 'GET', '/api/snapshots?region=NORWAY-1');
    expect(norway.body.snapshots).toEqual([]);
  });

  test('a second snapshot of a VM while one is in flight is refused', async () => {
    const first = await api.call<SnapshotView>('acme', 'POST', '/api/snapshots', createBody(uniqueId('busy-a')));
    expect(first.status).toBe(202);
    const second = await api.call('acme', 'POST', '/api/snapshots', createBody(uniqueId('busy-b')));
    expect([second.status, second.body.type]).toEqual([409, 'SnapshotInProgress']);
    await waitFor(async () => {
      const { body } = await api.call<SnapshotView>('acme', 'GET', `/api/snapshots/${first.body.id}`);
      return body.status === 'SUCCESS';
    }, 90_000);
  });

  test('another account can neither see, restore nor delete a snapshot: it is SnapshotNotFound', async () => {
    const { final } = await createAndWait(uniqueId('private'));
    const list = await api.call<z.infer<typeof SnapshotListSchema>>('fjord', 'GET', '/api/snapshots');
    expect(list.body.snapshots).toEqual([]);
    const attempts: [string, string, unknown][] = [
      ['GET', `/api/snapshots/${final.id}`, undefined],
      ['DELETE', `/api/snapshots/${final.id}`, undefined],
      ['POST', `/api/snapshots/${final.id}/restore`, { vmName: 'stolen-01' }],
    ];
    for (const [method, route, body] of attempts) {
      const response = await api.call('fjord', method, route, body);
      expect({ method, status: response.status, type: response.body.type }).toEqual({
        method,
        status: 404,
        type: 'SnapshotNotFound',
      });
      expect(response.body.message).toContain('fjord');
    }
    const still = await api.call<SnapshotView>('acme', 'GET', `/api/snapshots/${final.id}`);
    expect(still.body.status).toBe('SUCCESS');
    expect(env.platform.catalog.listVms({ accountId: 'fjord' }).map((vm) => vm.name)).toEqual(['arm-sim-01']);
  });

  test('a snapshot restores to a new VM, and a deleted snapshot is gone', async () => {
    const { final } = await createAndWait(uniqueId('restore-me'), {}, 'vm-trainer-02');
    const badName = await api.call('acme', 'POST', `/api/snapshots/${final.id}/restore`, { vmName: 'no spaces!' });
    expect([badName.status, badName.body.type]).toEqual([400, 'InvalidVmName']);
    const taken = await api.call('acme', 'POST', `/api/snapshots/${final.id}/restore`, { vmName: 'trainer-01' });
    expect([taken.status, taken.body.type]).toEqual([400, 'InvalidVmName']);

    const restored = await api.call<z.infer<typeof RestoredVmSchema>>(
      'acme',
      'POST',
      `/api/snapshots/${final.id}/restore`,
      {
        vmName: 'api-restored-01',
      },
    );
    expect(restored.status).toBe(201);
    expect(restored.body.vm).toMatchObject({ name: 'api-restored-01', region: 'CANADA-1', status: 'ACTIVE' });
    // Every disk of the source VM, in full (holes included).
    const trainerBytes = env.platform.catalog.getVm('vm-trainer-02')!.disks.reduce((sum, d) => sum + d.sizeBytes, 0);
    expect(restored.body.bytesRestored).toBe(trainerBytes);

    const deleted = await api.call('acme', 'DELETE', `/api/snapshots/${final.id}`);
    expect([deleted.status, deleted.body]).toEqual([204, null]);
    const gone = await api.call('acme', 'GET', `/api/snapshots/${final.id}`);
    expect([gone.status, gone.body.type]).toEqual([404, 'SnapshotNotFound']);
    const list = await api.call<z.infer<typeof SnapshotListSchema>>('acme', 'GET', '/api/snapshots');
    expect(list.body.snapshots.map((s) => s.id)).not.toContain(final.id);
  });

  test('images and policies are listed for their own account only', async () => {
    const name = uniqueId('as-image');
    const { final } = await createAndWait(name, { createAsImage: true });
    expect(final.createAsImage).toBe(true);
    type Images = z.infer<typeof ImageListSchema>;
    // The image is registered just after the snapshot is marked SUCCESS.
    const images = await waitFor(async () => {
      const { body } = await api.call<Images>('acme', 'GET', '/api/images');
      return body.images.length > 0 ? body.images : undefined;
    });
    expect(images).toContainEqual(expect.objectContaining({ name, snapshotId: final.id, region: 'CANADA-1' }));
    expect((await api.call<Images>('fjord', 'GET', '/api/images')).body.images).toEqual([]);

    const policyName = `api-${Date.now().toString(36)}`;
    await env.policies.createPolicy({
      accountId: 'acme',
      name: policyName,
      target: { region: 'CANADA-1', label: 'nightly' },
      cadence: { kind: 'daily' },
      window: { start: '02:00', end: '05:00', timeZone: 'America/Toronto' },
      retention: { keepLast: 3 },
    });
    try {
      type Policies = z.infer<typeof PolicyListSchema>;
      // Schedules are listed through the visibility store, which catches up within a second or two.
      const listed = await waitFor(async () => {
        const { body } = await api.call<Policies>('acme', 'GET', '/api/policies');
        return body.policies.find((p) => p.name === policyName);
      });
      expect(listed).toMatchObject({
        target: { region: 'CANADA-1', label: 'nightly' },
        cadence: { kind: 'daily' },
        window: expect.stringContaining('02:00–05:00 America/Toronto') as string,
        paused: false,
      });
      expect(listed.nextRuns.length).toBeGreaterThan(0);
      const fjord = await api.call<Policies>('fjord', 'GET', '/api/policies');
      expect(fjord.body.policies.map((p) => p.name)).not.toContain(policyName);
    } finally {
      await env.policies.deletePolicy('acme', policyName);
    }
  });

  test('unknown endpoints answer a typed 404 that points at the OpenAPI document', async () => {
    const response = await api.call('acme', 'GET', '/api/volumes');
    expect(response.status).toBe(404);
    expect(response.body.type).toBe('NotFound');
    expect(response.body.message).toContain('/api/openapi.json');
  });
});

describe('HTTP API with no worker on its task queue', () => {
  let idle: SnapshotEnv;
  let idleApi: RunningApi;

  beforeAll(async () => {
    idle = await createSnapshotEnv();
    idleApi = await startApiServer(idle);
  });

  afterAll(async () => {
    await idleApi?.close();
    await idle?.close();
  });

  test('a create is refused 503 WorkerUnavailable within seconds and starts nothing', async () => {
    const name = uniqueId('unpolled');
    const refused = await idleApi.call('acme', 'POST', '/api/snapshots', createBody(name));
    expect(refused.status).toBe(503);
    expect(refused.body).toEqual({
      type: 'WorkerUnavailable',
      message:
        `No worker polls the task queue ${idle.taskQueue} (workflow tasks), ${idle.taskQueue} (activity tasks) ` +
        `in namespace ${idle.client.options.namespace}: nothing would run. ` +
        'Start one with `npm run worker` (or `npm run demo`), then try again.',
    });
    expect(idle.platform.catalog.findSnapshotByName('acme', name)).toBeUndefined();
    const workflow = idle.client.workflow.getHandle(snapshotWorkflowId('acme', name));
    await expect(workflow.describe()).rejects.toBeInstanceOf(WorkflowNotFoundError);
  });
});
