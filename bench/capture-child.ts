import fs from 'node:fs/promises';
import { ChunkPool, DEFAULT_CHUNK_SIZE, LocalRepository } from '../dataplane';
import { captureDisk } from './capture';
import { errorText } from './util';

/** What the child prints on its last stdout line, as JSON. */
export interface ChildReport {
  seconds: number;
  chunks: number;
  storedBytesWritten: number;
  /** Peak resident set size of this process (all its threads, so the chunk pool's too), from the kernel. */
  peakRssBytes: number;
}

/**
 * `capture-child.ts <disk> <repoDir>`: captures one disk into a fresh repository in its own process, the way a worker
 * does, and reports its peak RSS. Run by the benchmark so the figure is this capture's alone.
 */
async function main(): Promise<void> {
  const [disk, repoDir] = process.argv.slice(2);
  if (!disk || !repoDir) throw new Error('usage: capture-child.ts <disk image> <repository dir>');
  const { size } = await fs.stat(disk);
  const pool = new ChunkPool();
  try {
    const repository = new LocalRepository(repoDir);
    const result = await captureDisk({ path: disk, sizeBytes: size, chunkSize: DEFAULT_CHUNK_SIZE, repository, pool });
    const report: ChildReport = {
      seconds: result.seconds,
      chunks: result.chunks,
      storedBytesWritten: result.storedBytesWritten,
      peakRssBytes: await peakRss(),
    };
    console.log(JSON.stringify(report));
  } finally {
    await pool.destroy();
  }
}

/** VmHWM ("high water mark" of RSS) from /proc, else Node's maxRSS (KiB in both). */
async function peakRss(): Promise<number> {
  const status = await fs.readFile('/proc/self/status', 'utf8').catch(() => '');
  const kib = /^VmHWM:\s+(\d+) kB/m.exec(status)?.[1];
  return (kib ? Number(kib) : process.resourceUsage().maxRSS) * 1024;
}

main().catch((error: unknown) => {
  console.error(errorText(error));
  process.exit(1);
});
