import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { QmpClient } from '../../platform/qemu/qmp';
import { startStorageDaemon, type StorageDaemon } from '../../platform/qemu/storage-daemon';
import { LineBuffer } from '../../platform/qemu/wire';

const nodesSchema = z.array(
  z.object({
    'node-name': z.string(),
    drv: z.string(),
    'dirty-bitmaps': z
      .array(z.object({ name: z.string(), persistent: z.boolean(), recording: z.boolean() }))
      .optional(),
  }),
);

let dir: string;
let daemon: StorageDaemon;
let qmp: QmpClient | undefined;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-qmp-'));
  const image = path.join(dir, 'disk0.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  daemon = await startStorageDaemon({ dir, disks: [{ nodeName: 'disk0', path: image }] });
});

afterEach(async () => {
  await qmp?.close();
  qmp = undefined;
  await daemon.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

async function connect(): Promise<QmpClient> {
  qmp = await QmpClient.connect(daemon.qmpSocket);
  return qmp;
}

async function bitmapsOf(client: QmpClient, node: string) {
  const nodes = nodesSchema.parse(await client.execute('query-named-block-nodes', { flat: true }));
  return nodes.find((n) => n['node-name'] === node)?.['dirty-bitmaps'] ?? [];
}

test('the greeting gives QEMU’s version and query-version agrees with it', async () => {
  const client = await connect();
  expect(client.version.major).toBeGreaterThanOrEqual(7);
  expect(client.version.package).not.toBe('');
  const reply = z
    .object({ qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }) })
    .parse(await client.execute('query-version'));
  expect(reply.qemu).toEqual({ major: client.version.major, minor: client.version.minor, micro: client.version.micro });
});

test('query-named-block-nodes lists the qcow2 disk the daemon opened', async () => {
  const client = await connect();
  const nodes = nodesSchema.parse(await client.execute('query-named-block-nodes', { flat: true }));
  expect(nodes.find((n) => n['node-name'] === 'disk0')?.drv).toBe('qcow2');
});

test('a persistent dirty bitmap, once added, is listed on its node', async () => {
  const client = await connect();
  await client.execute('block-dirty-bitmap-add', { node: 'disk0', name: 'cp-1', persistent: true });
  expect(await bitmapsOf(client, 'disk0')).toMatchObject([{ name: 'cp-1', persistent: true, recording: true }]);
});

test('an error reply rejects with its QMP class and description', async () => {
  const client = await connect();
  await expect(client.execute('no-such-command')).rejects.toMatchObject({
    type: 'QmpCommandFailed',
    command: 'no-such-command',
    errorClass: 'CommandNotFound',
    desc: 'The command no-such-command has not been found',
  });
  // The connection stays usable after an error reply.
  await expect(client.execute('query-version')).resolves.toBeDefined();
});

test('one transaction adds the new bitmap and disables the old one', async () => {
  const client = await connect();
  await client.execute('block-dirty-bitmap-add', { node: 'disk0', name: 'old', persistent: true });
  await client.execute('transaction', {
    actions: [
      { type: 'block-dirty-bitmap-add', data: { node: 'disk0', name: 'new', persistent: true } },
      { type: 'block-dirty-bitmap-disable', data: { node: 'disk0', name: 'old' } },
    ],
  });
  const bitmaps = await bitmapsOf(client, 'disk0');
  expect(bitmaps.find((b) => b.name === 'old')?.recording).toBe(false);
  expect(bitmaps.find((b) => b.name === 'new')?.recording).toBe(true);
});

test('a failing transaction action rolls back the whole transaction', async () => {
  const client = await connect();
  await expect(
    client.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-add', data: { node: 'disk0', name: 'new', persistent: true } },
        { type: 'block-dirty-bitmap-disable', data: { node: 'disk0', name: 'missing' } },
      ],
    }),
  ).rejects.toMatchObject({ type: 'QmpCommandFailed', errorClass: 'GenericError' });
  expect(await bitmapsOf(client, 'disk0')).toEqual([]);
});

test('several commands in flight each get their own reply', async () => {
  const client = await connect();
  const names = Array.from({ length: 20 }, (_, i) => `b${i}`);
  const results = await Promise.allSettled([
    ...names.map((name) => client.execute('block-dirty-bitmap-add', { node: 'disk0', name })),
    client.execute('block-dirty-bitmap-add', { node: 'no-such-node', name: 'x' }),
  ]);
  expect(results.slice(0, names.length).every((r) => r.status === 'fulfilled')).toBe(true);
  expect(results.at(-1)).toMatchObject({ status: 'rejected', reason: { type: 'QmpCommandFailed' } });
  expect((await bitmapsOf(client, 'disk0')).map((b) => b.name).sort()).toEqual([...names].sort());
});

test('events reach listeners and waitForEvent', async () => {
  const client = await connect();
  const seen: string[] = [];
  client.onEvent((event) => seen.push(event.event));
  // A job on a node of its own: blockdev-create of a qcow2 on a new file node runs as a job and emits events.
  const target = path.join(dir, 'new.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'raw', target, '0']);
  await client.execute('blockdev-add', { driver: 'file', 'node-name': 'target-file', filename: target });
  const concluded = client.waitForEvent('JOB_STATUS_CHANGE', (e) => e.data.status === 'concluded', 10_000);
  await client.execute('blockdev-create', {
    'job-id': 'create-1',
    options: { driver: 'qcow2', file: 'target-file', size: 1024 * 1024 },
  });
  await expect(concluded).resolves.toMatchObject({ data: { id: 'create-1', status: 'concluded' } });
  expect(seen).toContain('JOB_STATUS_CHANGE');
  await client.execute('job-dismiss', { id: 'create-1' });
});

test('quit answers, then the socket closes and later commands reject as closed', async () => {
  const client = await connect();
  await expect(client.execute('quit')).resolves.toEqual({});
  await client.closed;
  await expect(client.execute('query-version')).rejects.toMatchObject({ type: 'QmpConnectionClosed' });
  await expect(daemon.exited).resolves.toBe('code 0');
});

test('commands pending when QEMU dies reject as closed, and so does a pending waitForEvent', async () => {
  const client = await connect();
  process.kill(daemon.pid, 'SIGSTOP');
  const pending = [client.execute('query-version'), client.execute('query-named-block-nodes')];
  const event = client.waitForEvent('SHUTDOWN', () => true, 60_000);
  process.kill(daemon.pid, 'SIGKILL');
  for (const command of pending) await expect(command).rejects.toMatchObject({ type: 'QmpConnectionClosed' });
  await expect(event).rejects.toMatchObject({ type: 'QmpConnectionClosed' });
});

test('a command unanswered past its deadline rejects as a timeout; the late reply is dropped', async () => {
  const client = await connect();
  process.kill(daemon.pid, 'SIGSTOP');
  const started = performance.now();
  await expect(client.execute('query-version', undefined, { timeoutMs: 200 })).rejects.toMatchObject({
    type: 'QmpTimeout',
    command: 'query-version',
    timeoutMs: 200,
  });
  expect(performance.now() - started).toBeLessThan(5_000);
  process.kill(daemon.pid, 'SIGCONT');
  // The stopped daemon now answers both; the first (abandoned) reply must not be taken for the second.
  const version = z.object({ qemu: z.object({ major: z.number() }) }).parse(await client.execute('query-version'));
  expect(version.qemu.major).toBe(client.version.major);
});

test('close() rejects pending commands as closed and is idempotent', async () => {
  const client = await connect();
  process.kill(daemon.pid, 'SIGSTOP');
  const pending = client.execute('query-version');
  await Promise.all([client.close(), client.close()]);
  await expect(pending).rejects.toMatchObject({ type: 'QmpConnectionClosed' });
  await client.close();
});

test('connecting where nothing listens rejects as unavailable', async () => {
  await expect(QmpClient.connect(path.join(dir, 'nothing.sock'))).rejects.toMatchObject({
    type: 'QmpUnavailable',
    reason: 'ENOENT',
  });
});

test('a peer that does not greet like QMP is a protocol violation', async () => {
  const socketPath = path.join(dir, 'not-qmp.sock');
  const server = net.createServer((socket) => socket.write('{"hello": "world"}\n'));
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  try {
    await expect(QmpClient.connect(socketPath)).rejects.toMatchObject({ type: 'QmpProtocolViolation' });
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

test('the line buffer splits messages cut anywhere across chunks', () => {
  const text = Buffer.from('{"return": {}, "id": 1}\r\n{"event": "X", "data": {}}\r\n{"id": 2, "return": 3}\r\n');
  for (let cut = 1; cut < text.length; cut++) {
    const lines = new LineBuffer();
    const got = [...lines.push(text.subarray(0, cut)), ...lines.push(text.subarray(cut))];
    expect(got.map((line) => line.toString())).toEqual([
      '{"return": {}, "id": 1}',
      '{"event": "X", "data": {}}',
      '{"id": 2, "return": 3}',
    ]);
  }
});
