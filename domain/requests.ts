import { z } from 'zod';
import { isIdOf } from './ids';
import { DEFAULT_QUIESCE, QuiesceSchema, RegionSchema } from './model';
import { caseFold, confusableKey, isHighlyRestrictive, isWellFormed } from './text';

/** Longest description stored; the UI has no limit, the server bounds it so one request cannot bloat the catalog. */
export const MAX_DESCRIPTION_LENGTH = 10_000;
export const MAX_NAME_LENGTH = 50;

/**
 * A letter with the combining marks that follow it (`é` typed as `e` + U+0301, Devanagari `नमस्ते`, Tamil `தமிழ்`),
 * or a digit.
 */
const UNIT = String.raw`(?:\p{L}\p{M}*|\p{N})`;
/** Units, spaces and `.`, `_`, `-`; the first a unit, the last not a space. */
const NAME_PATTERN = new RegExp(`^${UNIT}(?:(?:${UNIT}|[ ._-])*(?:${UNIT}|[._-]))?$`, 'u');
/** Invisible characters (U+3164 HANGUL FILLER, zero-width joiners, variation selectors): a name must be readable. */
const INVISIBLE = /\p{Default_Ignorable_Code_Point}/u;

/**
 * Snapshot (and image) names, checked in this order on the NFC form, which is what is stored: well-formed text; 1–50
 * characters (code points); no invisible (default-ignorable) characters; letters (each with its combining marks),
 * digits, spaces and `.`, `_`, `-`, starting with a letter or digit and not ending in a space; one script, or Latin
 * with Han/Japanese/Korean (UTS #39 "Highly Restrictive"); not shaped like a snapshot's or an image's id. Such a name
 * is safe in a file name, a URL and a Temporal workflow id.
 */
export const SnapshotNameSchema = z
  .string()
  .refine(isWellFormed, { message: 'must be well-formed Unicode text (it has a lone surrogate)', abort: true })
  .normalize('NFC')
  .refine((name) => [...name].length >= 1 && [...name].length <= MAX_NAME_LENGTH, {
    message: `must be 1–${MAX_NAME_LENGTH} characters`,
  })
  .refine((name) => !INVISIBLE.test(name), { message: 'must not contain invisible characters' })
  .refine((name) => NAME_PATTERN.test(name), {
    message:
      'may contain letters, digits, spaces, ".", "_" and "-", must start with a letter or digit and must not end with a space',
  })
  .refine(isHighlyRestrictive, {
    message: 'must be written in one script (Latin may be mixed with Han, Japanese or Korean only)',
  })
  .refine((name) => !isIdOf('snapshot', foldedName(name)) && !isIdOf('image', foldedName(name)), {
    message: 'must not look like a snapshot or image id (snap-<uuid>, img-<uuid>)',
  });

/** The readable comparison form of a name: NFKC (fullwidth `Ｎｉｇｈｔｌｙ` → `Nightly`), then case-folded. */
function foldedName(name: string): string {
  return caseFold(name.normalize('NFKC'));
}

/** The version of the `snapshotNameKey` rule: raise it whenever the key changes, and catalogs recompute theirs. */
export const NAME_KEY_RULE = 3;

/**
 * The key two names collide on, and a name is looked up by: the confusable-safe `confusableKey` of the name, so
 * `Nightly`, `NIGHTLY`, fullwidth `Ｎｉｇｈｔｌｙ` and `Nightly` in Cyrillic look-alikes share one, as do `STRASSE` and
 * `straße`. The catalog stores it (`name_key`) and recomputes it on open when this rule changes.
 */
export function snapshotNameKey(name: string): string {
  return confusableKey(name.normalize('NFC'));
}

/**
 * Workflow id of a snapshot, derived from the account and the readable folded name: a retried request lands on the
 * same workflow and never starts a second snapshot. Names that differ here but share a `snapshotNameKey` get two
 * workflows, and the catalog's reservation refuses the second (`SnapshotNameTaken`).
 */
export function snapshotWorkflowId(accountId: string, name: string): string {
  return `snapshot/${accountId}/${foldedName(name.normalize('NFC'))}`;
}

export const CreateSnapshotRequestSchema = z
  .object({
    accountId: z.string().min(1),
    vmId: z.string().min(1),
    region: RegionSchema,
    name: SnapshotNameSchema,
    description: z
      .string()
      .refine(isWellFormed, 'must be well-formed Unicode text (it has a lone surrogate)')
      .max(MAX_DESCRIPTION_LENGTH, `must be at most ${MAX_DESCRIPTION_LENGTH} characters`)
      .default(''),
    createAsImage: z.boolean().default(false),
    /** Freeze the guest or fail (`required`), or fall back to a crash-consistent snapshot (`best-effort`). */
    quiesce: QuiesceSchema.default(DEFAULT_QUIESCE),
    requestedBy: z.string().max(200).default('unknown'),
    /** Retrying a request with the same key returns the snapshot it created instead of failing or duplicating. */
    idempotencyKey: z.string().min(1).max(200).optional(),
    /** Set by scheduled runs: the snapshot policy the snapshot belongs to (its retention applies to it). */
    policyId: z.string().min(1).max(200).optional(),
  })
  .strict();
export type CreateSnapshotRequest = z.input<typeof CreateSnapshotRequestSchema>;
export type ValidCreateSnapshotRequest = z.output<typeof CreateSnapshotRequestSchema>;

/** What the snapshot workflow is started with: the validated request plus the id the client chose. */
export interface SnapshotWorkflowInput {
  snapshotId: string;
  request: ValidCreateSnapshotRequest;
}

export const RestoreDiskRequestSchema = z
  .object({
    accountId: z.string().min(1),
    snapshotId: z.string().min(1),
    diskName: z.string().min(1),
    targetPath: z.string().min(1),
  })
  .strict();
export type RestoreDiskRequest = z.infer<typeof RestoreDiskRequestSchema>;

/**
 * VM names: 1–63 letters, digits, "-", "_" and "." starting with a letter or digit (a host name's label), not
 * starting like a VM id (`vm-`).
 */
export const VmNameSchema = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/,
    'must be 1–63 letters, digits, "-", "_" or ".", starting with a letter or digit',
  )
  .refine((name) => !isIdOf('vm', name), 'must not start with "vm-", which VM ids start with');

/** A new VM in the source's region from a SUCCESS snapshot or from an image, with the captured configuration. */
export const RestoreVmRequestSchema = z
  .object({
    accountId: z.string().min(1),
    source: z.union([
      z.object({ snapshotId: z.string().min(1) }).strict(),
      z.object({ imageId: z.string().min(1) }).strict(),
    ]),
    vmName: VmNameSchema,
    /** Optional check: the new VM is always created in the source's region; naming another is `RegionMismatch`. */
    region: RegionSchema.optional(),
  })
  .strict();
export type RestoreVmRequest = z.infer<typeof RestoreVmRequestSchema>;
