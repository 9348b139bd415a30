import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { GuestAgentClient } from '../../platform/qemu/guest-agent';
import { startHostAgent, type HostAgent } from '../helpers/qemu';

/**
 * The agent runs on this host, not in a guest, so it must never be able to freeze this machine's file systems: both
 * freeze commands are blocked (startHostAgent checks that they are), and so is everything that could shut down,
 * suspend or change the host.
 */

let dir: string;
let agent: HostAgent;
let client: GuestAgentClient | undefined;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-qga-'));
  agent = await startHostAgent(dir);
});

afterEach(async () => {
  await client?.close();
  client = undefined;
  await agent.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

async function connect(): Promise<GuestAgentClient> {
  client = await GuestAgentClient.connect(agent.socketPath);
  return client;
}

test('ping, info, fsfreeze-status and thaw answer', async () => {
  const ga = await connect();
  await ga.ping();
  const info = await ga.info();
  expect(info.version).toMatch(/^\d+\.\d+/);
  expect(info.commands).toContainEqual({ name: 'guest-ping', enabled: true });
  expect(info.commands).toContainEqual({ name: 'guest-fsfreeze-freeze', enabled: false });
  await expect(ga.fsfreezeStatus()).resolves.toBe('thawed');
  // Thawing a thawed system is not an error: it thawed none.
  await expect(ga.fsfreezeThaw()).resolves.toBe(0);
});

test('a blocked command answers a typed agent error', async () => {
  const ga = await connect();
  // Guard: never send a freeze to an agent on this host unless it is known to refuse it.
  const freeze = (await ga.info()).commands.find((c) => c.name === 'guest-fsfreeze-freeze');
  if (freeze?.enabled !== false) throw new Error('qemu-ga would freeze this host: --block-rpcs did not take effect');
  await expect(ga.fsfreezeFreeze()).rejects.toMatchObject({
    type: 'GuestAgentCommandFailed',
    command: 'guest-fsfreeze-freeze',
    errorClass: 'CommandNotFound',
  });
  await expect(ga.fsfreezeStatus()).resolves.toBe('thawed');
});

test('commands issued together are serialised and each gets its own answer', async () => {
  const ga = await connect();
  const answers = await Promise.all([
    ga.fsfreezeStatus(),
    ga.ping(),
    ga.fsfreezeThaw(),
    ga.execute('no-such-command').catch((error: unknown) => error),
    ga.info().then((info) => info.version),
    ga.fsfreezeStatus(),
  ]);
  expect(answers[0]).toBe('thawed');
  expect(answers[1]).toBeUndefined();
  expect(answers[2]).toBe(0);
  expect(answers[3]).toMatchObject({ type: 'GuestAgentCommandFailed', errorClass: 'CommandNotFound' });
  expect(answers[4]).toMatch(/^\d+\.\d+/);
  expect(answers[5]).toBe('thawed');
});

test('connecting resyncs past a half-written command left in the channel', async () => {
  // A previous client wrote whole commands and half of one, then went away once the whole ones were answered (so
  // the half is in the agent's parser when the next client connects).
  const raw = net.createConnection(agent.socketPath);
  let received = '';
  const answered = new Promise<void>((resolve) =>
    raw.on('data', (chunk: Buffer) => {
      received += chunk.toString();
      if (received.split('\n').length > 2) resolve();
    }),
  );
  raw.write('{"execute": "guest-ping"}\n{"execute": "guest-info"}\n{"execute": "guest-pi');
  await answered;
  raw.destroy();
  const ga = await connect();
  await ga.ping();
  await expect(ga.fsfreezeStatus()).resolves.toBe('thawed');
});

test('after deadlines pass, the next command resyncs past the late replies', async () => {
  const ga = await connect();
  agent.process.kill('SIGSTOP');
  // A command sent to a stopped agent, and one queued behind it whose deadline passes before its turn.
  const sent = ga.ping({ timeoutMs: 300 });
  const queued = ga.fsfreezeStatus({ timeoutMs: 100 });
  await expect(sent).rejects.toMatchObject({ type: 'GuestAgentTimeout', command: 'guest-ping', timeoutMs: 300 });
  await expect(queued).rejects.toMatchObject({ type: 'GuestAgentTimeout', timeoutMs: 100 });
  // Out of sync now: this one tries to resync first, and that times out too.
  await expect(ga.info({ timeoutMs: 200 })).rejects.toMatchObject({ type: 'GuestAgentTimeout' });
  agent.process.kill('SIGCONT');
  // The agent now answers the old ping and the old resync before the new resync: all discarded.
  await expect(ga.fsfreezeStatus()).resolves.toBe('thawed');
  await expect(ga.fsfreezeThaw()).resolves.toBe(0);
});

test('an agent that never answers fails the connect with a timeout within its deadline', async () => {
  const socketPath = path.join(dir, 'silent.sock');
  const accepted: net.Socket[] = [];
  const silent = net.createServer((socket) => accepted.push(socket));
  await new Promise<void>((resolve) => silent.listen(socketPath, resolve));
  try {
    const started = performance.now();
    await expect(GuestAgentClient.connect(socketPath, { timeoutMs: 300 })).rejects.toMatchObject({
      type: 'GuestAgentTimeout',
      command: 'guest-sync-delimited',
      timeoutMs: 300,
    });
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(5_000);
  } finally {
    for (const socket of accepted) socket.destroy();
    await new Promise((resolve) => silent.close(resolve));
  }
});

test('a command pending when the agent dies rejects as closed, and so do later ones', async () => {
  const ga = await connect();
  agent.process.kill('SIGSTOP');
  const pending = ga.ping({ timeoutMs: 60_000 });
  agent.process.kill('SIGKILL');
  await expect(pending).rejects.toMatchObject({ type: 'GuestAgentConnectionClosed', command: 'guest-ping' });
  await expect(ga.ping()).rejects.toMatchObject({ type: 'GuestAgentConnectionClosed' });
});

test('close() is idempotent and later commands reject as closed', async () => {
  const ga = await connect();
  await Promise.all([ga.close(), ga.close()]);
  await expect(ga.fsfreezeStatus()).rejects.toMatchObject({ type: 'GuestAgentConnectionClosed' });
});

test('connecting where nothing listens rejects as unavailable', async () => {
  await expect(GuestAgentClient.connect(path.join(dir, 'nothing.sock'))).rejects.toMatchObject({
    type: 'GuestAgentUnavailable',
    reason: 'ENOENT',
  });
});
