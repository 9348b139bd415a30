import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import { generateApiKey, hashApiKey } from '../api-keys';
import { DEFAULT_HOST_ID } from '../../domain/model';
import type { Account, Region, Vm, VmStatus } from '../../domain/model';
import type { Catalog } from '../ports';

const run = promisify(execFile);
const MiB = 1024 * 1024;

export interface SeedOptions {
  /** Where the disk images go (`<dataDir>/disks/<vmId>/<disk>.raw`). */
  dataDir: string;
  rootDiskBytes?: number;
  dataDiskBytes?: number;
  /** Directories whose files fill the root and data disks (first that exists wins). */
  rootSources?: string[];
  dataSources?: string[];
  /** The host the fleet runs on: DEFAULT_HOST_ID (a worker's host when SNAP_HOST_ID is not set) by default. */
  hostId?: string;
}

interface FleetVm {
  id: string;
  accountId: string;
  name: string;
  region: Region;
  flavor: string;
  status: VmStatus;
  gpus: number;
  labels: string[];
}

const complete = {
  profile: { contactName: 'Ada Operator', contactEmail: 'ops@example.com', country: 'CA' },
  billing: { billingAddress: '1 Research Way, Montreal', paymentMethod: 'card-visa-4242' },
};

/**
 * Demo accounts: one complete with ample credit (the one the CLI and demo use), one with almost no credit, one whose
 * profile lacks billing information.
 */
export const DEMO_ACCOUNTS: readonly Account[] = [
  { id: 'acme', name: 'Acme AI Research', ...complete, currency: 'USD', creditMicros: 500_000_000 },
  { id: 'fjord', name: 'Fjord Robotics', ...complete, currency: 'INR', creditMicros: 1_000 },
  {
    id: 'newco',
    name: 'NewCo Labs',
    profile: { contactName: 'Sam Founder', contactEmail: 'sam@newco.example', country: null },
    billing: { billingAddress: null, paymentMethod: null },
    currency: 'EUR',
    creditMicros: 100_000_000,
  },
];
export const DEMO_ACCOUNT = DEMO_ACCOUNTS[0]!;

/**
 * The demo fleet: two ACTIVE VMs of acme in CANADA-1 (so they dedupe against each other), VMs in every other state,
 * and one ACTIVE VM for each other account.
 */
export const DEMO_FLEET: readonly FleetVm[] = [
  {
    id: 'vm-trainer-01',
    accountId: 'acme',
    name: 'trainer-01',
    region: 'CANADA-1',
    flavor: 'H100-SXM5-80GB',
    status: 'ACTIVE',
    gpus: 8,
    labels: ['nightly', 'team=research'],
  },
  {
    id: 'vm-trainer-02',
    accountId: 'acme',
    name: 'trainer-02',
    region: 'CANADA-1',
    flavor: 'H100-SXM5-80GB',
    status: 'ACTIVE',
    gpus: 8,
    labels: ['nightly', 'team=research'],
  },
  {
    id: 'vm-builder-01',
    accountId: 'acme',
    name: 'builder-01',
    region: 'CANADA-1',
    flavor: 'A100-SXM4-80GB',
    status: 'BUILD',
    gpus: 1,
    labels: ['nightly'],
  },
  {
    id: 'vm-infer-01',
    accountId: 'acme',
    name: 'inference-01',
    region: 'NORWAY-1',
    flavor: 'L40S-48GB',
    status: 'ACTIVE',
    gpus: 2,
    labels: [],
  },
  {
    id: 'vm-broken-01',
    accountId: 'acme',
    name: 'broken-01',
    region: 'NORWAY-1',
    flavor: 'H100-SXM5-80GB',
    status: 'ERROR',
    gpus: 1,
    labels: [],
  },
  {
    id: 'vm-notebook-01',
    accountId: 'acme',
    name: 'notebook-01',
    region: 'US-1',
    flavor: 'RTX-A6000-48GB',
    status: 'SHUTOFF',
    gpus: 1,
    labels: [],
  },
  {
    id: 'vm-fjord-01',
    accountId: 'fjord',
    name: 'arm-sim-01',
    region: 'NORWAY-1',
    flavor: 'L40S-48GB',
    status: 'ACTIVE',
    gpus: 1,
    labels: [],
  },
  {
    id: 'vm-newco-01',
    accountId: 'newco',
    name: 'dev-01',
    region: 'US-1',
    flavor: 'A100-SXM4-80GB',
    status: 'ACTIVE',
    gpus: 1,
    labels: [],
  },
];

/**
 * Creates the demo account and fleet. Disks are real ext4 images built with `mke2fs -d` from system directories, so
 * they hold real files no one here wrote, with free space left as holes: snapshots compress and dedupe like real
 * ones. Existing images are kept, so seeding twice is harmless.
 */
export async function seedDemoFleet(catalog: Catalog, options: SeedOptions): Promise<Vm[]> {
  const rootBytes = options.rootDiskBytes ?? 512 * MiB;
  const dataBytes = options.dataDiskBytes ?? 256 * MiB;
  const rootSource = await firstExisting(options.rootSources ?? ['/usr/include', '/usr/share']);
  const dataSource = await firstExisting(options.dataSources ?? ['/usr/lib/python3', '/usr/share/doc']);
  for (const account of DEMO_ACCOUNTS) catalog.putAccount(account);
  const vms: Vm[] = [];
  for (const spec of DEMO_FLEET) {
    const dir = path.join(options.dataDir, 'disks', spec.id);
    const root = { name: 'root', path: path.join(dir, 'root.raw'), sizeBytes: rootBytes };
    const data = { name: 'data', path: path.join(dir, 'data.raw'), sizeBytes: dataBytes };
    await makeExt4Image(root.path, rootBytes, rootSource, 'root');
    await makeExt4Image(data.path, dataBytes, dataSource, 'data');
    const vm: Vm = {
      id: spec.id,
      hostId: options.hostId ?? DEFAULT_HOST_ID,
      accountId: spec.accountId,
      name: spec.name,
      region: spec.region,
      flavor: spec.flavor,
      status: spec.status,
      config: {
        flavor: spec.flavor,
        gpus: spec.gpus,
        vcpus: spec.gpus * 16,
        ramGiB: spec.gpus * 128,
        image: 'ubuntu-22.04-cuda-12.4',
        network: { publicIp: true, securityGroups: ['default', 'ssh'] },
        sshKeys: ['ops@acme'],
      },
      disks: [root, data],
      labels: spec.labels,
    };
    catalog.putVm(vm);
    vms.push(vm);
  }
  await seedDemoApiKeys(catalog, options.dataDir);
  return vms;
}

/** Where the demo accounts' API keys are written (the catalog keeps only their hashes). */
export function demoApiKeysFile(dataDir: string): string {
  return path.join(dataDir, 'api-keys.json');
}

const ApiKeysFileSchema = z.record(z.string(), z.string());

/**
 * One random API key per demo account, written to `<dataDir>/api-keys.json` (readable by its owner only) as
 * `{ "<account>": "<key>" }`; the catalog stores only their SHA-256 hashes. Keys the catalog already knows are kept,
 * so seeding twice changes nothing. Returns the keys by account.
 */
export async function seedDemoApiKeys(catalog: Catalog, dataDir: string): Promise<Record<string, string>> {
  const file = demoApiKeysFile(dataDir);
  const existing = await fs.readFile(file, 'utf8').then(
    (text) => ApiKeysFileSchema.parse(JSON.parse(text)),
    (): Record<string, string> => ({}),
  );
  const keys: Record<string, string> = {};
  for (const account of DEMO_ACCOUNTS) {
    const known = existing[account.id];
    if (known && catalog.accountForApiKey(hashApiKey(known)) === account.id) {
      keys[account.id] = known;
      continue;
    }
    const key = generateApiKey();
    catalog.putApiKey(account.id, hashApiKey(key));
    keys[account.id] = key;
  }
  await fs.mkdir(dataDir, { recursive: true });
  await fs.writeFile(file, `${JSON.stringify(keys, null, 2)}\n`, { mode: 0o600 });
  return keys;
}

/** Builds a sparse ext4 image of `sizeBytes` filled from `sourceDir`, unless it already exists. */
export async function makeExt4Image(file: string, sizeBytes: number, sourceDir: string, label: string): Promise<void> {
  if (
    await fs.stat(file).then(
      (s) => s.size === sizeBytes,
      () => false,
    )
  )
    return;
  await fs.mkdir(path.dirname(file), { recursive: true });
  const partial = `${file}.partial`;
  await fs.rm(partial, { force: true });
  try {
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', label, '-d', sourceDir, partial, `${sizeBytes / 1024}k`], {
      env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` },
    });
  } catch (error) {
    throw new Error(
      `mke2fs could not build ${file} from ${sourceDir} (is e2fsprogs installed? run scripts/setup.sh): ${String(error)}`,
    );
  }
  await fs.rename(partial, file);
}

async function firstExisting(dirs: string[]): Promise<string> {
  for (const dir of dirs) {
    if (
      await fs.stat(dir).then(
        (s) => s.isDirectory(),
        () => false,
      )
    )
      return dir;
  }
  throw new Error(`None of ${dirs.join(', ')} exists to fill a demo disk`);
}
