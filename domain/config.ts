import path from 'node:path';
import { z } from 'zod';

/** Runtime configuration, parsed once at start-up from the environment. */
export const ConfigSchema = z.object({
  TEMPORAL_ADDRESS: z.string().default('127.0.0.1:7233'),
  TEMPORAL_NAMESPACE: z.string().default('default'),
  SNAP_TASK_QUEUE: z.string().default('snapshots'),
  /** Embedded platform state: catalog, demo disks, repositories, point-in-time views, Temporal's database. */
  SNAP_DATA_DIR: z.string().default(path.resolve(__dirname, '..', '.data')),
  /** The account the CLI acts for. */
  SNAP_ACCOUNT: z.string().default('acme'),
  /** Cap on capture read rate, so a snapshot never starves the running VM's disk; 0 = unlimited. */
  SNAP_CAPTURE_MAX_MBPS: z.coerce.number().nonnegative().default(0),
  /**
   * The worker's memory budget for its data stages, in MiB: the working memory of the data activities running at
   * once. It sets how many run at once (budget / one activity's working set, see worker/worker.ts); by default there
   * is room for two. A budget below one activity's working set is refused at start.
   */
  SNAP_DATA_MEMORY_MIB: z.coerce.number().int().positive().optional(),
  /** The HTTP API and the Snapshots page (`npm run api`, `npm run demo`). */
  SNAP_HTTP_HOST: z.string().default('127.0.0.1'),
  SNAP_HTTP_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
});
export type Config = z.infer<typeof ConfigSchema>;

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = ConfigSchema.safeParse(env);
  if (!parsed.success) {
    throw new Error(`Invalid configuration: ${z.prettifyError(parsed.error)}`);
  }
  return parsed.data;
}
