import path from 'node:path';
import { z } from 'zod';
import { DEFAULT_HOST_ID, HostIdSchema } from './model';

/** Runtime configuration, parsed once at start-up from the environment. */
export const ConfigSchema = z.object({
  TEMPORAL_ADDRESS: z.string().default('127.0.0.1:7233'),
  TEMPORAL_NAMESPACE: z.string().default('default'),
  SNAP_TASK_QUEUE: z.string().default('snapshots'),
  /**
   * The host this worker runs on: it runs the host-pinned steps and data stages of the VMs placed on this host (their
   * hypervisor, views and QEMU processes are here), on the task queues `<SNAP_TASK_QUEUE>-host-<id>` and
   * `<SNAP_TASK_QUEUE>-host-<id>-data`. One id per host, the same for every worker on it; `local` by default, the
   * host the demo fleet is seeded on.
   */
  SNAP_HOST_ID: HostIdSchema.default(DEFAULT_HOST_ID),
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
  /**
   * The worker's hypervisor driver: `local` (the embedded raw-file VMs) or `qemu` (VMs run by QEMU on this host, each
   * listening in `<SNAP_QEMU_HOST_DIR>/vms/<vm>/`; see platform/qemu/qemu-hypervisor.ts).
   */
  SNAP_HYPERVISOR: z.enum(['local', 'qemu']).default('local'),
  /** The QEMU driver's folder on this host: the VMs' sockets, the freeze guard's state, open views' records. */
  SNAP_QEMU_HOST_DIR: z.string().optional(),
  /**
   * How the QEMU driver runs the VMs it starts (restores): `kvm` on a hypervisor host; `tcg` (emulation) where KVM
   * does not work, as on the CI machine, whose guests hang under KVM.
   */
  SNAP_QEMU_ACCEL: z.enum(['kvm', 'tcg']).default('kvm'),
  /**
   * Free space the QEMU driver keeps in the VMs' folders while snapshot views are open there (their temporary images
   * grow with what the guest overwrites meanwhile): a snapshot opens only with this much free, and one whose views
   * would leave less is cancelled (`SnapshotSpaceExhausted`) before any guest write could fail. Unset: the driver's
   * default, 1024.
   */
  SNAP_QEMU_TEMP_MIN_FREE_MIB: z.coerce.number().int().positive().optional(),
  /** The HTTP API and the Snapshots page (`npm run api`, `npm run demo`). */
  SNAP_HTTP_HOST: z.string().default('127.0.0.1'),
  SNAP_HTTP_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  /**
   * Time a client has to send a request's headers, and its whole request (headers and body), before it is answered
   * 408 and disconnected: a request of this API is at most a few KiB, so seconds are plenty, and a half-sent request
   * holds a connection no longer than that.
   */
  SNAP_HTTP_HEADERS_TIMEOUT_MS: z.coerce.number().int().positive().default(10_000),
  SNAP_HTTP_REQUEST_TIMEOUT_MS: z.coerce.number().int().positive().default(30_000),
  /** How long an idle keep-alive connection stays open after its last answer (Node's own default). */
  SNAP_HTTP_KEEP_ALIVE_TIMEOUT_MS: z.coerce.number().int().positive().default(5_000),
  /** Open connections the API accepts at once; more are closed on arrival. */
  SNAP_HTTP_MAX_CONNECTIONS: z.coerce.number().int().positive().default(1_000),
  /**
   * Requests allowed per rate-limit window, per API key and per client address (the address limit also covers
   * requests without a valid key). 600 a minute is 10 a second, above what the Snapshots page sends while it polls.
   */
  SNAP_HTTP_RATE_WINDOW_MS: z.coerce.number().int().positive().default(60_000),
  SNAP_HTTP_RATE_PER_KEY: z.coerce.number().int().positive().default(600),
  SNAP_HTTP_RATE_PER_ADDRESS: z.coerce.number().int().positive().default(1_200),
  /**
   * Prometheus endpoints (`GET /metrics`) of the worker (the SDK's runtime metrics and the service's) and of the API
   * (requests, snapshots by status, task queue backlog). Operator endpoints without authentication, so on their own
   * ports, bound to loopback by default: expose them to the monitoring network only, never beside the tenant API.
   */
  SNAP_METRICS_HOST: z.string().default('127.0.0.1'),
  SNAP_WORKER_METRICS_PORT: z.coerce.number().int().min(1).max(65535).default(9464),
  SNAP_API_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(9465),
});
export type Config = z.infer<typeof ConfigSchema>;

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = ConfigSchema.safeParse(env);
  if (!parsed.success) {
    throw new Error(`Invalid configuration: ${z.prettifyError(parsed.error)}`);
  }
  return parsed.data;
}
