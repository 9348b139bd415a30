import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import type { Account, Vm } from '../domain/model';
import type { CreateSnapshotRequest } from '../domain/requests';
import { creditHoldFor } from '../domain/rules';
import { DEMO_ACCOUNT } from '../platform/local';
import { createSnapshotEnv, waitFor } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';
import type { RaceOutcome } from './support/race-client';
import { DEFAULT_HOST_ID } from '../domain/model';

// Races between processes: each request is sent by one of several client processes (test/support/race-client.ts),
// and validated by one of three workers (this process's and two child processes', test/support/race-worker.ts). They
// share only the catalog file and the Temporal server, and the clients are released at the same moment.

const PROCESSES = 4;
/** Capture throttled (~32 MB/s, about 3 s per demo VM) so the winner is still in flight while its rivals validate. */
const CAPTURE_BYTES_PER_SECOND = 32e6;
const TSX = path.join(__dirname, '..', 'node_modules', '.bin', 'tsx');
let env: SnapshotEnv;
const workers: ChildProcessWithoutNullStreams[] = [];

beforeAll(async () => {
  env = await createSnapshotEnv();
  await env.startWorker({ captureMaxBytesPerSecond: CAPTURE_BYTES_PER_SECOND });
  for (let i = 0; i < 2; i++) {
    const child = spawn(TSX, [
      path.join(__dirname, 'support', 'race-worker.ts'),
      env.platform.dataDir,
      env.taskQueue,
      String(CAPTURE_BYTES_PER_SECOND),
    ]);
    child.stderr.pipe(process.stderr);
    workers.push(child);
    const [line] = (await once(readline.createInterface({ input: child.stdout }), 'line')) as [string];
    expect(line).toBe('ready');
  }
});

afterAll(async () => {
  for (const child of workers) {
    const exited = once(child, 'exit');
    child.stdin.end();
    await exited;
  }
  await env.close();
});

/**
 * Sends `requests` from PROCESSES client processes at once (request i from process i mod PROCESSES) and returns the
 * outcomes in request order. `distinctIds`: each request's workflow gets an id of its own instead of the name's.
 */
async function race(requests: CreateSnapshotRequest[], distinctIds: boolean): Promise<RaceOutcome[]> {
  const script = path.join(__dirname, 'support', 'race-client.ts');
  const groups = Array.from({ length: PROCESSES }, (_, p) => requests.filter((_r, i) => i % PROCESSES === p));
  const racers = groups.map((group) => {
    const child = spawn(
      TSX,
      [script, env.platform.dataDir, env.taskQueue, distinctIds ? '1' : '0', JSON.stringify(group)],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const lines = readline.createInterface({ input: child.stdout });
    const iterator = lines[Symbol.asyncIterator]();
    const next = async (): Promise<string> => {
      const line = await iterator.next();
      if (line.done) throw new Error('a racer exited early');
      return line.value;
    };
    return { child, next };
  });
  for (const racer of racers) expect(await racer.next()).toBe('ready');
  for (const racer of racers) racer.child.stdin.write('go\n');
  const results = await Promise.all(racers.map(async (r) => JSON.parse(await r.next()) as RaceOutcome[]));
  for (const racer of racers) racer.child.stdin.end();
  const outcomes: RaceOutcome[] = [];
  requests.forEach((_r, i) => outcomes.push(results[i % PROCESSES]![Math.floor(i / PROCESSES)]!));
  return outcomes;
}

const accepted = (outcomes: RaceOutcome[]) =>
  outcomes.filter((o): o is { snapshotId: string } => 'snapshotId' in o).map((o) => o.snapshotId);
const refusals = (outcomes: RaceOutcome[]) => outcomes.flatMap((o) => ('refused' in o ? [o.refused] : []));

/** Waits for every snapshot workflow of the env's catalog still in flight to end. */
async function settle(): Promise<void> {
  for (const s of env.platform.catalog.listSnapshots({})) {
    if (!['SUCCESS', 'FAILED'].includes(s.status)) {
      await env.client.workflow
        .getHandle(s.workflowId)
        .result()
        .catch(() => undefined);
    }
  }
}

afterEach(settle);

const trainer = { accountId: 'acme', vmId: 'vm-trainer-01', region: 'CANADA-1' } as const;

test('20 requests for one name under distinct workflow ids from 4 processes: one snapshot, the rest SnapshotNameTaken', async () => {
  const vms = ['vm-trainer-01', 'vm-trainer-02'];
  const outcomes = await race(
    Array.from({ length: 20 }, (_, i) => ({ ...trainer, vmId: vms[i % 2]!, name: 'raced-name' })),
    true,
  );
  expect(accepted(outcomes)).toHaveLength(1);
  expect(refusals(outcomes)).toEqual(Array(19).fill('SnapshotNameTaken'));
  // Twenty runs, and their validations ran in more than one worker process.
  const runs = await waitFor(async () => {
    const ids: string[] = [];
    for await (const w of env.client.workflow.list({ query: `SnapshotName = "raced-name"` })) ids.push(w.workflowId);
    return ids.length === 20 ? ids : undefined;
  });
  const identities = new Set<string>();
  for (const id of runs) {
    for (const event of (await env.client.workflow.getHandle(id).fetchHistory()).events ?? []) {
      const identity = event.workflowTaskCompletedEventAttributes?.identity;
      if (identity) identities.add(identity);
    }
  }
  expect(identities.size).toBeGreaterThan(1);
  await settle();
  const named = env.platform.catalog.listSnapshots({ accountId: 'acme' }).filter((s) => s.name === 'raced-name');
  expect(named.map((s) => [s.id, s.status])).toEqual([[accepted(outcomes)[0], 'SUCCESS']]);
  expect(env.platform.catalog.heldCredits('acme')).toBe(0);
});

test('20 requests for one VM from 4 processes: one snapshot, the rest SnapshotInProgress', async () => {
  const outcomes = await race(
    Array.from({ length: 20 }, (_, i) => ({ ...trainer, name: `raced-vm-${i}` })),
    false,
  );
  expect(accepted(outcomes)).toHaveLength(1);
  expect(refusals(outcomes)).toEqual(Array(19).fill('SnapshotInProgress'));
  await settle();
  const made = env.platform.catalog.listSnapshots({ vmId: trainer.vmId }).filter((s) => s.name.startsWith('raced-vm-'));
  expect(made.map((s) => [s.id, s.status])).toEqual([[accepted(outcomes)[0], 'SUCCESS']]);
  expect(env.platform.catalog.heldCredits('acme')).toBe(0);
});

test('20 requests with one idempotency key under distinct workflow ids from 4 processes: all answered by one snapshot', async () => {
  const request = { ...trainer, name: 'raced-key', idempotencyKey: 'raced-key-1' };
  const outcomes = await race(
    Array.from({ length: 20 }, () => request),
    true,
  );
  const ids = accepted(outcomes);
  expect(ids).toHaveLength(20);
  expect(new Set(ids).size).toBe(1);
  await settle();
  const made = env.platform.catalog.listSnapshots({ accountId: 'acme' }).filter((s) => s.name === 'raced-key');
  expect(made.map((s) => [s.id, s.status, s.idempotencyKey])).toEqual([[ids[0], 'SUCCESS', 'raced-key-1']]);
  expect(env.platform.catalog.heldCredits('acme')).toBe(0);
});

test('one idempotency key with two sets of fields, 10 requests each, raced: one set answered by one snapshot, the other IdempotencyKeyReused', async () => {
  const requests = Array.from({ length: 20 }, (_, i) => ({
    ...trainer,
    name: 'raced-key-fields',
    description: i % 2 ? 'odd' : 'even',
    idempotencyKey: 'raced-key-2',
  }));
  const outcomes = await race(requests, true);
  const ids = accepted(outcomes);
  expect(ids).toHaveLength(10);
  expect(new Set(ids).size).toBe(1);
  expect(refusals(outcomes)).toEqual(Array(10).fill('IdempotencyKeyReused'));
  // The accepted ten are exactly the requests with the winner's fields.
  const winners = new Set(outcomes.flatMap((o, i) => ('snapshotId' in o ? [requests[i]!.description] : [])));
  expect(winners.size).toBe(1);
  await settle();
  const made = env.platform.catalog.listSnapshots({ accountId: 'acme' }).filter((s) => s.name === 'raced-key-fields');
  expect(made.map((s) => [s.id, s.status, s.description])).toEqual([[ids[0], 'SUCCESS', [...winners][0]]]);
});

test('money for 5 snapshots, 20 requests on 20 VMs from 4 processes: exactly 5 accepted, 15 InsufficientCredits, no hold left', async () => {
  // 20 small VMs of one account (a 4 MiB disk each), and credit for five holds and a half.
  const vms: Vm[] = [];
  for (let i = 0; i < 20; i++) {
    const id = `vm-racer-${String(i).padStart(2, '0')}`;
    const disk = path.join(env.platform.dataDir, 'disks', id, 'root.raw');
    await fs.mkdir(path.dirname(disk), { recursive: true });
    await fs.writeFile(disk, Buffer.alloc(4 * 2 ** 20, `racer ${i}\n`));
    const vm: Vm = {
      id,
      hostId: DEFAULT_HOST_ID,
      accountId: 'racer',
      name: `racer-${i}`,
      region: 'US-1',
      flavor: 'A100-80GB',
      status: 'ACTIVE',
      config: { flavor: 'A100-80GB' },
      disks: [{ name: 'root', path: disk, sizeBytes: 4 * 2 ** 20 }],
      labels: [],
    };
    env.platform.catalog.putVm(vm);
    vms.push(vm);
  }
  const account: Account = { ...DEMO_ACCOUNT, id: 'racer', name: 'Racer', creditMicros: 0 };
  const { hold } = creditHoldFor(account, vms[0]!);
  env.platform.catalog.putAccount({ ...account, creditMicros: Math.floor(5.5 * hold) });

  const outcomes = await race(
    vms.map((vm) => ({ accountId: 'racer', vmId: vm.id, region: 'US-1', name: `credit-${vm.id}` })),
    false,
  );
  expect(accepted(outcomes)).toHaveLength(5);
  expect(refusals(outcomes)).toEqual(Array(15).fill('InsufficientCredits'));
  await settle();
  const made = env.platform.catalog.listSnapshots({ accountId: 'racer' });
  expect(made.map((s) => s.id).sort()).toEqual(accepted(outcomes).sort());
  expect(made.map((s) => s.status)).toEqual(Array(5).fill('SUCCESS'));
  expect(made.map((s) => s.creditHoldMicros)).toEqual(Array(5).fill(hold));
  expect(env.platform.catalog.heldCredits('racer')).toBe(0);
});
