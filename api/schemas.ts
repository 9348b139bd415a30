import { z } from 'zod';
import { CURRENCIES } from '../domain/billing';
import { SnapshotErrorType } from '../domain/errors';
import { QuiesceSchema, RegionSchema, SnapshotStatusSchema, VmStatusSchema } from '../domain/model';
import { CadenceSchema, PolicyTargetSchema } from '../domain/policies';
import { CreateSnapshotRequestSchema, SnapshotNameSchema, VmNameSchema } from '../domain/requests';
import { RetentionSchema } from '../domain/retention';

/**
 * The HTTP API's boundary types. Requests reuse the domain's zod schemas; the same schemas validate requests,
 * serialize responses and generate the OpenAPI document (GET /api/openapi.json).
 */

/** Error types of the HTTP layer, beside the domain's closed set. */
export const HTTP_ERROR_TYPES = ['Unauthorized', 'NotFound', 'RateLimited', 'RequestTimeout', 'InternalError'] as const;

export const ApiErrorSchema = z.object({
  type: z.enum([...Object.values(SnapshotErrorType), ...HTTP_ERROR_TYPES]).describe('Stable error type'),
  message: z.string().describe('What went wrong and what to do about it'),
});
export type ApiError = z.infer<typeof ApiErrorSchema>;

export const RegionQuerySchema = z.object({ region: RegionSchema }).strict();
export const OptionalRegionQuerySchema = z.object({ region: RegionSchema.optional() }).strict();
export const SnapshotParamsSchema = z.object({ id: z.string().min(1).max(200) }).strict();

/** A create request as the API takes it: the account comes from the API key, the requester from the key too. */
export const CreateSnapshotBodySchema = CreateSnapshotRequestSchema.omit({
  accountId: true,
  requestedBy: true,
  policyId: true,
}).extend({
  name: SnapshotNameSchema.describe(
    '1–50 characters (NFC) of letters with their combining marks, digits, spaces, ".", "_" and "-" in one script; ' +
      'starts with a letter or digit, no trailing space, not shaped like an id; unique in the account across ' +
      'regions, ignoring case, width and look-alike characters',
  ),
});

export const NameCheckQuerySchema = z.object({ name: z.string().max(1000) }).strict();

export const NameCheckSchema = z.object({
  name: z.string(),
  available: z.boolean(),
  type: z.enum(['InvalidSnapshotName', 'SnapshotNameTaken']).nullable(),
  message: z.string().nullable().describe('Why the name cannot be used'),
});

export const RestoreBodySchema = z.object({ vmName: VmNameSchema.describe('Name of the new VM') }).strict();

export const MoneySchema = z.object({
  micros: z.number().int().describe('Amount in millionths of the currency unit'),
  currency: z.enum(CURRENCIES),
  text: z.string().describe('Formatted, e.g. "USD 1.23"'),
});
export type Money = z.infer<typeof MoneySchema>;

export const EligibleVmSchema = z.object({
  id: z.string(),
  name: z.string(),
  flavor: z.string(),
  region: RegionSchema,
  label: z.string().describe('As the VM dropdown shows it: "my-vm - H100-SXM5-80GB (CANADA-1)"'),
  creditHold: z.string().describe('Credit a snapshot of this VM holds while it is made'),
});

export const EligibleVmsSchema = z.object({
  region: RegionSchema,
  vms: z.array(EligibleVmSchema).describe('ACTIVE VMs of the account in the region'),
  createDisabledReason: z
    .string()
    .nullable()
    .describe('"No active VMs available" when the region has no ACTIVE VM (Create Snapshot is disabled)'),
});

export const ProgressSchema = z.object({
  stage: SnapshotStatusSchema,
  stageNumber: z.number().int().describe('1–5 while in flight (validation … verification)'),
  stageCount: z.number().int(),
  bytesDone: z.number(),
  bytesTotal: z.number(),
  percent: z.number().describe("Of the current stage's bytes, 0–100"),
  bytesPerSecond: z.number(),
  etaSeconds: z.number().nullable(),
});
export type Progress = z.infer<typeof ProgressSchema>;

export const SnapshotSchema = z.object({
  id: z.string(),
  name: z.string(),
  description: z.string(),
  vmId: z.string(),
  vmName: z.string(),
  region: RegionSchema,
  status: SnapshotStatusSchema,
  createAsImage: z.boolean(),
  consistency: z
    .string()
    .nullable()
    .describe('"application-consistent" or "crash-consistent: <why the guest was not frozen>"; null until initiated'),
  frozenMs: z
    .number()
    .nullable()
    .describe("How long the guest's file systems were frozen, from the freeze request to the thaw; null if not frozen"),
  capture: z
    .object({
      kind: z.enum(['full', 'incremental']),
      readWhole: z
        .array(z.object({ disk: z.string(), reason: z.string() }))
        .describe('Disks an incremental read whole (all their data, still deduplicated), and why'),
    })
    .nullable()
    .describe('How the snapshot was captured; null until captured'),
  createdAt: z.string(),
  completedAt: z.string().nullable(),
  failureType: z.string().nullable(),
  failureReason: z.string().nullable(),
  logicalBytes: z.number().nullable().describe('Sum of the captured disk sizes'),
  storedBytes: z.number().nullable().describe('Compressed bytes of the distinct chunks it references'),
  addedBytes: z.number().nullable().describe('Compressed bytes it added to the region'),
  compressionRatio: z.number().nullable(),
  dedupRatio: z.number().nullable(),
  progress: ProgressSchema.nullable().describe('Live progress while in flight'),
  cost: z
    .object({ hourly: MoneySchema, monthToDate: MoneySchema })
    .nullable()
    .describe('From billing: its charge in the last metered hour and this month; null until first metered'),
});
export type SnapshotView = z.infer<typeof SnapshotSchema>;

export const SnapshotListSchema = z.object({ snapshots: z.array(SnapshotSchema) });

export const RestoredVmSchema = z.object({
  vm: z.object({ id: z.string(), name: z.string(), region: RegionSchema, flavor: z.string(), status: VmStatusSchema }),
  bytesRestored: z.number(),
});

export const ImageListSchema = z.object({
  images: z.array(
    z.object({
      id: z.string(),
      name: z.string(),
      region: RegionSchema,
      snapshotId: z.string(),
      flavor: z.string(),
      logicalBytes: z.number(),
      createdAt: z.string(),
    }),
  ),
});

export const PolicyListSchema = z.object({
  policies: z.array(
    z.object({
      name: z.string(),
      description: z.string(),
      target: PolicyTargetSchema,
      cadence: CadenceSchema,
      window: z.string().describe('e.g. "02:00–05:00 America/Toronto, Mon–Sun"'),
      retention: RetentionSchema,
      createAsImage: z.boolean(),
      quiesce: QuiesceSchema,
      paused: z.boolean(),
      note: z.string().nullable(),
      nextRuns: z.array(z.string()).describe('ISO 8601 instants'),
    }),
  ),
});

export const BillingSchema = z.object({
  accountId: z.string(),
  balance: MoneySchema,
  held: MoneySchema.describe('Credit holds of snapshots in flight'),
  available: MoneySchema,
  lastHour: z.string().nullable().describe('Start of the last metered hour'),
  storedBytes: z.number(),
  hourly: MoneySchema,
  monthToDate: MoneySchema,
  hoursLeft: z.number().nullable(),
  low: z.boolean(),
  items: z.array(
    z.object({
      itemId: z.string(),
      kind: z.enum(['snapshot', 'image']),
      name: z.string(),
      exclusiveBytes: z.number(),
      sharedBytes: z.number(),
      hourly: MoneySchema,
      monthToDate: MoneySchema,
    }),
  ),
});
