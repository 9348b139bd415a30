import path from 'node:path';
import { z } from 'zod';
import { isServerUp, startDevServer } from '../devserver/dev-server';
import { ensureTemporalCli } from '../devserver/temporal-cli';
import { loadConfig } from '../domain/config';

const Port = z.coerce.number().int().min(1).max(65_535);
const EnvSchema = z.object({
  TEMPORAL_PORT: Port.default(7233),
  /** Default: gRPC port + 1000, the dev server's own convention (8233). */
  TEMPORAL_UI_PORT: Port.optional(),
});

/**
 * `npm run server`: the Temporal dev server with a persistent SQLite database in `<SNAP_DATA_DIR>/temporal/`, the
 * project's search attributes and the Web UI, until Ctrl-C / SIGTERM. Exits 0 at once if a server already answers.
 */
async function main(): Promise<void> {
  const parsed = EnvSchema.safeParse(process.env);
  if (!parsed.success) throw new Error(`Invalid environment: ${z.prettifyError(parsed.error)}`);
  const port = parsed.data.TEMPORAL_PORT;
  const uiPort = parsed.data.TEMPORAL_UI_PORT ?? port + 1000;
  const address = `127.0.0.1:${port}`;

  if (await isServerUp(address)) {
    console.log(`A Temporal server already answers on ${address}; nothing to start.`);
    return;
  }

  const cliPath = await ensureTemporalCli();
  const dbFile = path.join(loadConfig().SNAP_DATA_DIR, 'temporal', 'temporal.db');
  const server = await startDevServer({
    cliPath,
    port,
    uiPort,
    dbFile,
    log: (message) => console.error(message),
  });
  console.log(`Temporal dev server: ${server.address} (namespace ${server.namespace}, database ${dbFile})`);
  console.log(`Web UI: ${server.uiUrl ?? `http://localhost:${uiPort}`}`);
  console.log('Press Ctrl-C to stop.');

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    stopping = true;
    console.log(`\n${signal}: stopping the Temporal dev server...`);
    void server.stop();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const status = await server.exited;
  if (!stopping) throw new Error(`The Temporal dev server exited unexpectedly (${status}).`);
  await server.stop();
  console.log('Stopped.');
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  },
);
