import { errorText, run, which } from './util';

/** The external programs the benchmark uses; a missing reference tool is undefined and its comparison is skipped. */
export interface Tools {
  mke2fs: string;
  zstd?: string;
  restic?: string;
  /** Why a reference is missing, for the report. */
  notes: string[];
}

/** command -> the Debian package that provides it. */
const PACKAGES = { mke2fs: 'e2fsprogs', zstd: 'zstd', restic: 'restic' } as const;
type Command = keyof typeof PACKAGES;

/**
 * Finds mke2fs, zstd and restic, installing the missing ones from Debian with apt-get when running as root. Without
 * root a missing reference tool is reported and skipped; mke2fs is required (it builds the test images).
 */
export async function ensureTools(log: (message: string) => void): Promise<Tools> {
  const commands = Object.keys(PACKAGES) as Command[];
  const found = new Map<Command, string | undefined>();
  for (const command of commands) found.set(command, await which(command));
  const missing = commands.filter((command) => !found.get(command));
  const notes: string[] = [];

  if (missing.length > 0) {
    const packages = missing.map((command) => PACKAGES[command]);
    if (process.getuid?.() === 0) {
      log(`Installing ${packages.join(', ')} with apt-get`);
      try {
        await aptInstall(packages);
      } catch (error) {
        notes.push(`apt-get install ${packages.join(' ')} failed: ${errorText(error)}`);
      }
      for (const command of missing) found.set(command, await which(command));
    } else {
      notes.push(`not root: cannot apt-get install ${packages.join(' ')}; install them to get those references`);
    }
  }

  const mke2fs = found.get('mke2fs');
  if (!mke2fs)
    throw new Error(`mke2fs is required to build the test images (apt-get install e2fsprogs). ${notes.join(' ')}`);
  for (const command of ['zstd', 'restic'] as const) {
    if (!found.get(command)) notes.push(`${command} is missing: its comparison is skipped`);
  }
  return { mke2fs, zstd: found.get('zstd'), restic: found.get('restic'), notes };
}

async function aptInstall(packages: string[]): Promise<void> {
  const env = { DEBIAN_FRONTEND: 'noninteractive' };
  await run('apt-get', ['update', '-qq'], { env });
  await run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...packages], { env });
}
