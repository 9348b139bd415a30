import fs from 'node:fs/promises';
import { takeTestHarness } from './harness';

/** Jest global teardown: stops the dev server of the global setup and deletes the workflow bundle. */
export default async function globalTeardown(): Promise<void> {
  const harness = takeTestHarness();
  if (!harness) return;
  await harness.server.stop();
  await fs.rm(harness.bundleDir, { recursive: true, force: true });
}
