import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { Connection } from '@temporalio/client';
import { SEARCH_ATTRIBUTE_NAMES } from '../domain/search-attributes';

// A cold start with a SQLite file takes a few seconds on 2 cores; 30 s leaves room for a loaded CI machine.
const READY_TIMEOUT_MS = 30_000;
// The server flushes SQLite on SIGTERM; after this long it is killed.
const STOP_TIMEOUT_MS = 10_000;
// Lines of server output kept for error messages.
const OUTPUT_TAIL_LINES = 40;

/** Options of {@link startDevServer}. */
export interface DevServerOptions {
  /** Path of the `temporal` CLI (see `ensureTemporalCli`). */
  cliPath: string;
  /** Address the frontend binds. Default 127.0.0.1. */
  ip?: string;
  /** Frontend gRPC port. Default 7233; 0 picks a free port. */
  port?: number;
  /** Web UI port: default gRPC port + 1000 (a free port when `port` is 0); 0 picks a free port; false = no UI. */
  uiPort?: number | false;
  /** Persistent SQLite file (its folder is created); omitted = in-memory, state is lost on stop. */
  dbFile?: string;
  /** Namespace created at start and checked for readiness. Default `default` (always created). */
  namespace?: string;
  /** Receives progress messages and the server's own warnings. Default: silent. */
  log?: (message: string) => void;
}

/** A running dev server. */
export interface DevServer {
  /** `ip:port` of the frontend, for `Connection.connect({ address })`. */
  address: string;
  /** Web UI URL, when the UI is on. */
  uiUrl?: string;
  namespace: string;
  /** Stops the server (SIGTERM, then SIGKILL after 10 s). Safe to call twice. */
  stop(): Promise<void>;
  /** Resolves with the exit status (`code 0`, `signal SIGKILL`, ...) once the server process has ended. */
  exited: Promise<string>;
}

/**
 * Starts `temporal server start-dev` with every search attribute of {@link SEARCH_ATTRIBUTE_NAMES} registered as
 * Keyword, and resolves once the frontend answers for `namespace`. Fails at once if a port is taken, and with the
 * tail of the server's output if the server exits or does not answer within 30 s.
 */
export async function startDevServer(options: DevServerOptions): Promise<DevServer> {
  const ip = options.ip ?? '127.0.0.1';
  const namespace = options.namespace ?? 'default';
  const log = options.log ?? (() => undefined);
  const port = options.port === 0 ? await freePort(ip) : (options.port ?? 7233);
  const uiPort =
    options.uiPort === false
      ? undefined
      : options.uiPort === 0 || (options.uiPort === undefined && options.port === 0)
        ? await freePort(ip)
        : (options.uiPort ?? port + 1000);
  await assertPortFree(ip, port, 'gRPC');
  if (uiPort !== undefined) await assertPortFree(ip, uiPort, 'Web UI');
  if (options.dbFile) await fs.mkdir(path.dirname(path.resolve(options.dbFile)), { recursive: true });

  const args = ['server', 'start-dev', '--ip', ip, '--port', String(port), '--log-level', 'warn'];
  args.push(...(uiPort === undefined ? ['--headless'] : ['--ui-port', String(uiPort)]));
  if (options.dbFile) args.push('--db-filename', path.resolve(options.dbFile));
  if (namespace !== 'default') args.push('--namespace', namespace);
  for (const name of SEARCH_ATTRIBUTE_NAMES) args.push('--search-attribute', `${name}=Keyword`);

  const address = `${ip}:${port}`;
  log(`Starting the Temporal dev server on ${address}${options.dbFile ? ` (database ${options.dbFile})` : ''}`);
  const child = spawn(options.cliPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  let stopping: Promise<void> | undefined;
  const collect = (forward: boolean) => (line: string) => {
    if (!line.trim()) return;
    tail.push(line);
    if (tail.length > OUTPUT_TAIL_LINES) tail.shift();
    // Shutdown always logs a burst of cancelled polls: keep those out of the log.
    if (forward && !stopping) log(`[temporal] ${line}`);
  };
  readline.createInterface({ input: child.stdout }).on('line', collect(false));
  readline.createInterface({ input: child.stderr }).on('line', collect(true));
  let exitStatus: string | undefined;
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => {
      exitStatus ??= signal ? `signal ${signal}` : `code ${code}`;
      resolve(exitStatus);
    });
    child.once('error', (error) => {
      exitStatus ??= `error: ${error.message}`;
      resolve(exitStatus);
    });
  });
  // Never leave an orphan server behind if this process exits without calling stop().
  const killOnExit = (): void => void child.kill('SIGTERM');
  process.once('exit', killOnExit);

  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      process.removeListener('exit', killOnExit);
      if (exitStatus === undefined) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
    })();
    return stopping;
  };

  const outputTail = (): string => (tail.length ? `\nServer output (last lines):\n${tail.join('\n')}` : '');
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exitStatus !== undefined) {
      process.removeListener('exit', killOnExit);
      throw new Error(
        `The Temporal dev server (${options.cliPath}) exited with ${exitStatus} before answering on ${address}.` +
          outputTail(),
      );
    }
    if (await answers(address, namespace)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(
        `The Temporal dev server did not answer on ${address} within ${READY_TIMEOUT_MS / 1000} s; stopped it.` +
          outputTail(),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }

  const uiHost = ip === '127.0.0.1' || ip === '0.0.0.0' ? 'localhost' : ip;
  const uiUrl = uiPort === undefined ? undefined : `http://${uiHost}:${uiPort}`;
  log(`Temporal dev server ready on ${address}${uiUrl ? `, Web UI ${uiUrl}` : ''}`);
  return { address, uiUrl, namespace, stop, exited };
}

/** True if a Temporal frontend answers on `address` (e.g. `127.0.0.1:7233`) within about `timeoutMs`. */
export async function isServerUp(address: string, timeoutMs = 2_000): Promise<boolean> {
  return answers(address, undefined, timeoutMs);
}

/** One probe: `describeNamespace` when a namespace is given (it must exist), else `getSystemInfo`. */
async function answers(address: string, namespace: string | undefined, timeoutMs = 1_000): Promise<boolean> {
  let connection: Connection | undefined;
  try {
    connection = await Connection.connect({ address, connectTimeout: timeoutMs });
    const service = connection.workflowService;
    await connection.withDeadline(Date.now() + timeoutMs, async () => {
      if (namespace) await service.describeNamespace({ namespace });
      else await service.getSystemInfo({});
    });
    return true;
  } catch {
    return false;
  } finally {
    await connection?.close();
  }
}

/** A port the OS considers free right now on `ip`. */
async function freePort(ip: string): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, ip, resolve);
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function assertPortFree(ip: string, port: number, what: string): Promise<void> {
  const server = net.createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, ip, resolve);
    });
  } catch (error) {
    const code = (error as { code?: string }).code;
    throw new Error(
      `Cannot start the Temporal dev server: ${what} port ${ip}:${port} is not available (${code ?? String(error)}). ` +
        'Stop whatever uses it (another `npm run server`?) or choose other ports (TEMPORAL_PORT / TEMPORAL_UI_PORT).',
    );
  }
  await new Promise((resolve) => server.close(resolve));
}
