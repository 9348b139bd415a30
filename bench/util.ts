import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
/** Throughputs are reported in MB/s, decimal (10^6 bytes per second), as zstd and restic print them. */
export const MB = 1_000_000;

/** PATH with the sbin folders, where Debian keeps mke2fs. */
export const TOOL_PATH = [process.env.PATH ?? '', '/usr/local/sbin', '/usr/sbin', '/sbin'].filter(Boolean).join(':');

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Send stdout to this file instead of collecting it (e.g. zstd's compressed output). */
  stdoutFile?: string;
}

/** Runs a command to completion; rejects with the tail of its output when it exits non-zero. */
export function run(command: string, args: string[], options: RunOptions = {}): Promise<{ stdout: string }> {
  // The child writes straight into the output file (no copy through this process).
  const outputFd = options.stdoutFile ? openSync(options.stdoutFile, 'w') : undefined;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: { ...process.env, PATH: TOOL_PATH, ...options.env },
      stdio: ['ignore', outputFd ?? 'pipe', 'pipe'],
    });
    if (outputFd !== undefined) closeSync(outputFd);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (data: Buffer) => (stdout += data.toString()));
    child.stderr?.on('data', (data: Buffer) => (stderr = (stderr + data.toString()).slice(-8192)));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve({ stdout });
      const tail = `${stdout.slice(-2000)}${stderr}`.trim().split('\n').slice(-10).join('\n');
      reject(new Error(`\`${command} ${args.join(' ')}\` exited with ${code}:\n${tail}`));
    });
  });
}

/** Absolute path of a command on PATH (sbin folders included), or undefined. */
export async function which(command: string): Promise<string | undefined> {
  for (const dir of TOOL_PATH.split(':')) {
    const candidate = path.join(dir, command);
    if (
      await fs.access(candidate, fs.constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return candidate;
  }
  return undefined;
}

/** Runs `fn` and returns its value with the wall-clock seconds it took. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { seconds: Number(process.hrtime.bigint() - start) / 1e9, value };
}

/** Total size of the files under `dir`: apparent bytes (sum of file sizes) and allocated bytes (blocks on disk). */
export async function dirSize(dir: string): Promise<{ apparent: number; allocated: number }> {
  const total = { apparent: 0, allocated: 0 };
  const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  for (const entry of entries) {
    if (!entry.isFile()) continue;
    const stat = await fs.stat(path.join(entry.parentPath, entry.name)).catch(() => undefined);
    if (!stat) continue;
    total.apparent += stat.size;
    total.allocated += stat.blocks * 512;
  }
  return total;
}

/**
 * Writes every dirty page out (`sync`), so a timed run does not pay for the write-back of what an earlier step wrote
 * (the images, other runs' repositories). Called before each timed run, ours and the references alike.
 */
export async function settleWrites(): Promise<void> {
  await run('sync', []);
}

/** Reads a file once, start to end, so the timed runs that follow all find it in the page cache. */
export async function warmPageCache(file: string): Promise<void> {
  const handle = await fs.open(file, 'r');
  const buffer = Buffer.allocUnsafe(4 * MiB);
  try {
    for (let position = 0; ; position += buffer.length) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
      if (bytesRead === 0) break;
    }
  } finally {
    await handle.close();
  }
}

export function formatMiB(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** Whole sizes (disks, RAM) in GiB when they are that large. */
export function formatSize(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(bytes % GiB === 0 ? 0 : 1)} GiB` : formatMiB(bytes);
}

export function formatMBps(bytes: number, seconds: number): string {
  return `${(bytes / MB / seconds).toFixed(0)} MB/s`;
}

export function formatSeconds(seconds: number): string {
  return `${seconds.toFixed(2)} s`;
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
