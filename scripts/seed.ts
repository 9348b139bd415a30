import { loadConfig } from '../domain/config';
import { formatVmChoice } from '../domain/rules';
import { openEmbeddedPlatform, seedDemoFleet } from '../platform/local';

/** `npm run seed`: creates the demo account and fleet under SNAP_DATA_DIR (existing disk images are kept). */
async function main(): Promise<void> {
  const config = loadConfig();
  const platform = openEmbeddedPlatform(config.SNAP_DATA_DIR);
  try {
    const vms = await seedDemoFleet(platform.catalog, { dataDir: config.SNAP_DATA_DIR });
    for (const vm of vms) console.log(`${formatVmChoice(vm)}  ${vm.status}  [${vm.id}]`);
  } finally {
    platform.catalog.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
