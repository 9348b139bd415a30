import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { QmpClient } from '../../platform/qemu/qmp';
import { startStorageDaemon, type StorageDaemon } from '../../platform/qemu/storage-daemon';

const nodesSchema = z.array(
  z.object({
    'node-name': z.string(),
    'dirty-bitmaps': z.array(z.object({ name: z.string(), inconsistent: z.boolean().optional() })).optional(),
  }),
);

let dir: string;
let image: string;
const daemons: StorageDaemon[] = [];

beforeEach(async () => {
  // A comma in the folder name: the monitor socket's path must be escaped in QEMU's option syntax.
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-qsd,'));
  image = path.join(dir, 'disk0.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
});

afterEach(async () => {
  for (const daemon of daemons.splice(0)) await daemon.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

async function start(): Promise<StorageDaemon> {
  const daemon = await startStorageDaemon({ dir, disks: [{ nodeName: 'disk0', path: image }] });
  daemons.push(daemon);
  return daemon;
}

/** The bitmaps of node disk0, as a fresh QMP connection reports them. */
async function bitmaps(daemon: StorageDaemon) {
  const qmp = await QmpClient.connect(daemon.qmpSocket);
  try {
    const nodes = nodesSchema.parse(await qmp.execute('query-named-block-nodes', { flat: true }));
    return nodes.find((node) => node['node-name'] === 'disk0')?.['dirty-bitmaps'] ?? [];
  } finally {
    await qmp.close();
  }
}

async function addBitmap(daemon: StorageDaemon, name: string): Promise<void> {
  const qmp = await QmpClient.connect(daemon.qmpSocket);
  try {
    await qmp.execute('block-dirty-bitmap-add', { node: 'disk0', name, persistent: true });
  } finally {
    await qmp.close();
  }
}

test('stop() is a clean exit: a persistent bitmap is there, consistent, after a restart', async () => {
  const first = await start();
  await addBitmap(first, 'cp-1');
  await first.stop();
  await expect(first.exited).resolves.toBe('code 0');
  await first.stop();
  expect(await bitmaps(await start())).toEqual([{ name: 'cp-1' }]);
});

test('a bitmap loaded from the image reloads inconsistent after a SIGKILL; one added since is lost', async () => {
  const first = await start();
  await addBitmap(first, 'cp-1');
  await first.stop();
  // Loading a persistent bitmap marks it in use in the image; only a clean exit clears the mark.
  const second = await start();
  await addBitmap(second, 'cp-2');
  process.kill(second.pid, 'SIGKILL');
  await expect(second.exited).resolves.toBe('signal SIGKILL');
  expect(await bitmaps(await start())).toEqual([{ name: 'cp-1', inconsistent: true }]);
});

test('a daemon that cannot open its disk fails to start with its own message', async () => {
  await expect(
    startStorageDaemon({ dir, disks: [{ nodeName: 'disk0', path: path.join(dir, 'missing.qcow2') }] }),
  ).rejects.toThrow(/exited with code 1 before listening[\s\S]*missing\.qcow2/);
});
