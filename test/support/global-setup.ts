import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { bundleWorkflowCode, DefaultLogger } from '@temporalio/worker';
import { startDevServer } from '../../devserver/dev-server';
import { ensureTemporalCli } from '../../devserver/temporal-cli';
import { WORKFLOW_BUNDLE_OPTIONS } from '../../worker/bundle';
import { TEST_ENV, setTestHarness } from './harness';

/**
 * Jest global setup: one in-memory Temporal dev server on a free port (no UI) and one workflow bundle for the whole
 * run, published to the test files through `process.env` (see `./temporal.ts`).
 */
export default async function globalSetup(): Promise<void> {
  const started = Date.now();
  const cliPath = await ensureTemporalCli();
  const server = await startDevServer({ cliPath, port: 0, uiPort: false });
  const bundleDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-workflow-bundle-'));
  setTestHarness({ server, bundleDir });
  try {
    const { code } = await bundleWorkflowCode({
      ...WORKFLOW_BUNDLE_OPTIONS,
      // Webpack's progress chatter off; warnings and errors still show.
      logger: new DefaultLogger('WARN'),
    });
    const codePath = path.join(bundleDir, 'workflows.js');
    await fs.writeFile(codePath, code);
    process.env[TEST_ENV.address] = server.address;
    process.env[TEST_ENV.namespace] = server.namespace;
    process.env[TEST_ENV.workflowBundle] = codePath;
  } catch (error) {
    await server.stop();
    await fs.rm(bundleDir, { recursive: true, force: true });
    throw error;
  }
  process.stderr.write(`\nTemporal test server ${server.address}, workflows bundled (${Date.now() - started} ms)\n`);
}
