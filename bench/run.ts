import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ChunkPool, DEFAULT_CHUNK_SIZE, LocalRepository } from '../dataplane';
import { captureDisk, measureGrowth } from './capture';
import { benchConcurrency } from './concurrency';
import type { GrowthResult } from './capture';
import type { ChildReport } from './capture-child';
import {
  CONTENT_BUDGET_BYTES,
  IMAGE_BYTES,
  SPARSE_DISK_BYTES,
  applyWrites,
  buildExt4Image,
  buildSparseDisk,
  buildStagingDir,
  planChanges,
} from './images';
import { benchQemu } from './qemu';
import { printReport } from './report';
import type { DataPlaneResult, Images, MemoryResult, ResticRun, Results, WorkflowResult } from './report';
import { ResticRepository } from './restic';
import { startSnapshotService } from './service';
import type { TimedSnapshot } from './service';
import { ensureTools } from './tools';
import type { Tools } from './tools';
import { KiB, MiB, dirSize, errorText, formatMiB, formatSize, run, settleWrites, timed, warmPageCache } from './util';

/** The chunk sizes whose incremental growth is compared (DEFAULT_CHUNK_SIZE should be among them). */
const CHUNK_SIZES = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB];
/**
 * The data plane and zstd are each run this many times (fresh repository / output file each time); the fastest run
 * counts. The full snapshot and restic's full backup are run twice too (see benchWorkflow).
 */
const RUNS = 2;

const startedAt = performance.now();
const loadAtStart = os.loadavg();
const log = (message: string): void => {
  process.stderr.write(`[bench ${((performance.now() - startedAt) / 1000).toFixed(0).padStart(3)} s] ${message}\n`);
};

interface Context {
  workDir: string;
  tools: Tools;
  images: Images;
  pool: ChunkPool;
}

async function main(): Promise<number> {
  const workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-bench-'));
  removeOnInterrupt(workDir);
  const results: Results = {};
  const errors: string[] = [];
  const section = async <T>(name: string, fn: () => Promise<T>): Promise<T | undefined> => {
    log(`${name}...`);
    try {
      return await fn();
    } catch (error) {
      errors.push(`${name}: ${errorText(error)}`);
      log(`${name} FAILED: ${errorText(error)}`);
      return undefined;
    }
  };

  let tools: Tools | undefined;
  try {
    tools = await ensureTools(log);
    const images = await prepareImages(workDir);
    results.images = images;
    const pool = new ChunkPool();
    const context: Context = { workDir, tools, images, pool };
    try {
      results.dataPlane = await section('(a) data plane vs zstd', () => benchDataPlane(context));
      results.workflow = await section('(b, c) snapshots through the workflow vs restic', () => benchWorkflow(context));
      results.chunkSizes = await section('incremental growth by chunk size', () => benchChunkSizes(context));
    } finally {
      await pool.destroy();
    }
    results.memory = await section('(d) peak memory of a capture', () => benchMemory(context));
    results.concurrency = await section('(e) peak memory of the worker, 1 and 10 snapshots at once', () =>
      benchConcurrency({ workDir, image: images.base, log }),
    );
    results.qemu = await section('(q) snapshots through the QEMU driver', () =>
      benchQemu({ workDir, image: images.base, restic: context.tools.restic, log }),
    );
  } catch (error) {
    errors.push(errorText(error));
  } finally {
    await fs.rm(workDir, { recursive: true, force: true });
  }

  printReport(results, [...(tools?.notes ?? []), ...errors.map((e) => `ERROR ${e}`)], startedAt, loadAtStart);
  // Missed targets are results, not failures: only a measurement that could not run makes the exit code non-zero.
  return errors.length > 0 ? 1 : 0;
}

/** Base image from system files, its changed copy, and the sparse 10 GiB disk; base and changed are page-cached. */
async function prepareImages(workDir: string): Promise<Images> {
  const staging = path.join(workDir, 'staging');
  log(`Collecting ${formatMiB(CONTENT_BUDGET_BYTES)} of system files`);
  const content = await buildStagingDir(staging, CONTENT_BUDGET_BYTES);
  const base = path.join(workDir, 'base.raw');
  log(`Building the ${formatSize(IMAGE_BYTES)} ext4 image (mke2fs -d, ${content.files} files)`);
  await buildExt4Image(base, staging);
  await fs.rm(staging, { recursive: true, force: true });

  const changed = path.join(workDir, 'changed.raw');
  const writes = await planChanges(IMAGE_BYTES);
  await run('cp', ['--sparse=always', base, changed]);
  await applyWrites(changed, writes);

  const sparse = path.join(workDir, 'sparse.raw');
  log(`Building the sparse ${formatSize(SPARSE_DISK_BYTES)} disk`);
  await buildSparseDisk(sparse, base);

  for (const image of [base, changed]) await warmPageCache(image);
  const allocatedBytes = (await fs.stat(base)).blocks * 512;
  return { base, changed, sparse, writes, contentBytes: content.bytes, contentFiles: content.files, allocatedBytes };
}

/** (a) scanDisk + storeChunks of the base image into a fresh repository, vs `zstd -1 -T0` of it into a file. */
async function benchDataPlane(context: Context): Promise<DataPlaneResult> {
  const { workDir, images, pool, tools } = context;
  const repoDir = path.join(workDir, 'dataplane-repo');
  const ours = await bestOf(RUNS, async () => {
    await fs.rm(repoDir, { recursive: true, force: true });
    const repository = new LocalRepository(repoDir);
    return captureDisk({ path: images.base, sizeBytes: IMAGE_BYTES, chunkSize: DEFAULT_CHUNK_SIZE, repository, pool });
  });
  await fs.rm(repoDir, { recursive: true, force: true });
  if (!tools.zstd) return { ours };

  // zstd writes its output to a file in the work dir, where the data plane writes its chunks (zstd does not fsync it;
  // the data plane fsyncs every chunk).
  const output = path.join(workDir, 'base.raw.zst');
  const zstd = tools.zstd;
  const best = await bestOf(RUNS, () =>
    timed(() => run(zstd, ['-1', '-T0', '-q', '-c', images.base], { stdoutFile: output })),
  );
  const outputBytes = (await fs.stat(output)).size;
  const test = await timed(() => run(zstd, ['-t', '-q', output]));
  await fs.rm(output, { force: true });
  return { ours, zstd: { seconds: best.seconds, testSeconds: test.seconds, outputBytes } };
}

/**
 * (b) a full snapshot through Temporal (validate, initiate, capture, compress, verify), then (c) an incremental one
 * after the guest writes the change; restic backs up the same disk file before and after the same writes. The full
 * snapshot and restic's full backup run in turns, twice each, each time into a fresh repository; the faster run of
 * each counts.
 */
async function benchWorkflow(context: Context): Promise<WorkflowResult> {
  const { workDir, images, tools } = context;
  const service = await startSnapshotService({
    dataDir: path.join(workDir, 'platform'),
    image: images.base,
    imageBytes: IMAGE_BYTES,
    log,
  });
  try {
    const disk = service.vm.disks[0]!.path;
    // One VM per full run, each in its own region, so each full snapshot goes into a fresh repository.
    const fullRunVms = [service.vm, service.twin];
    for (const vm of fullRunVms) await warmPageCache(vm.disks[0]!.path);
    const tool = tools.restic;
    const resticAt = (n: number) => ResticRepository.init(tool!, path.join(workDir, `restic-repo-${n}`));
    const restic = tool ? await resticAt(1) : undefined;

    // Ours and restic's take turns, so that a slow spell of the machine weighs on both alike.
    let full: TimedSnapshot | undefined;
    let resticFull: ResticRun | undefined;
    for (const [run, vm] of fullRunVms.entries()) {
      log(`Full snapshot through the workflow (run ${run + 1} of ${fullRunVms.length}, VM ${vm.name} in ${vm.region})`);
      await settleWrites();
      const snapshot = await service.snapshot(`bench-full-${run + 1}`, vm);
      if (!full || snapshot.seconds < full.seconds) full = snapshot;
      if (!restic) continue;
      log(`restic backup of the same disk (run ${run + 1}, into a fresh repository)`);
      await settleWrites();
      const backup = await (run === 0 ? restic : await resticAt(run + 1)).backup(disk);
      if (!resticFull || backup.seconds < resticFull.seconds) resticFull = backup;
    }
    const repoBytesAfterFull = (await dirSize(service.repositoryDir)).apparent;

    await service.writeToDisk(images.writes);
    log('Incremental snapshot through the workflow');
    await settleWrites();
    const incremental = await service.snapshot('bench-incremental');
    const repoGrowthBytes = (await dirSize(service.repositoryDir)).apparent - repoBytesAfterFull;
    log('restic backup of the changed disk');
    await settleWrites();
    const resticIncremental = await restic?.backup(disk);

    const resticResult =
      restic && resticFull && resticIncremental
        ? { full: resticFull, incremental: resticIncremental, repoBytes: await restic.sizeBytes() }
        : undefined;
    return { full: full!, incremental, repoBytesAfterFull, repoGrowthBytes, restic: resticResult };
  } finally {
    await service.close();
  }
}

/** Growth of a fresh repository from the base to the changed image, for each chunk size (data plane alone). */
async function benchChunkSizes(context: Context): Promise<GrowthResult[]> {
  const results: GrowthResult[] = [];
  for (const chunkSize of CHUNK_SIZES) {
    log(`  ${chunkSize / KiB} KiB chunks`);
    const repoDir = path.join(context.workDir, `growth-${chunkSize}`);
    results.push(
      await measureGrowth({
        baseImage: context.images.base,
        changedImage: context.images.changed,
        sizeBytes: IMAGE_BYTES,
        chunkSize,
        repoDir,
        pool: context.pool,
      }),
    );
    await fs.rm(repoDir, { recursive: true, force: true });
  }
  return results;
}

/** (d) each capture in a child process of its own, which reports its peak RSS. */
async function benchMemory(context: Context): Promise<MemoryResult> {
  const capture = async (disk: string, name: string): Promise<ChildReport> => {
    const repoDir = path.join(context.workDir, `memory-${name}`);
    try {
      return await runCaptureChild(disk, repoDir);
    } finally {
      await fs.rm(repoDir, { recursive: true, force: true });
    }
  };
  log('  1 GiB image');
  const image = await capture(context.images.base, 'image');
  log('  10 GiB sparse disk');
  const sparse = await capture(context.images.sparse, 'sparse');
  return { image, sparse };
}

/** `node --import tsx bench/capture-child.ts <disk> <repo>` (the worker also runs under tsx); parses its report. */
function runCaptureChild(disk: string, repoDir: string): Promise<ChildReport> {
  return new Promise((resolve, reject) => {
    const script = path.join(__dirname, 'capture-child.ts');
    const child = spawn(process.execPath, ['--import', 'tsx', script, disk, repoDir], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (data: Buffer) => (stdout += data.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const last = stdout.trim().split('\n').pop() ?? '';
      if (code !== 0) return reject(new Error(`capture child exited with ${code}: ${last}`));
      try {
        resolve(JSON.parse(last) as ChildReport);
      } catch {
        reject(new Error(`capture child printed no report: ${stdout.slice(-500)}`));
      }
    });
  });
}

/** Runs `fn` `runs` times, one after the other; returns the fastest run's result. */
async function bestOf<T extends { seconds: number }>(runs: number, fn: () => Promise<T>): Promise<T> {
  let best: T | undefined;
  for (let i = 0; i < runs; i++) {
    await settleWrites();
    const result = await fn();
    if (!best || result.seconds < best.seconds) best = result;
  }
  return best!;
}

/** On Ctrl-C the finally blocks do not run: remove the work dir (GiBs of images) before exiting. */
function removeOnInterrupt(workDir: string): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      rmSync(workDir, { recursive: true, force: true });
      process.exit(130);
    });
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
