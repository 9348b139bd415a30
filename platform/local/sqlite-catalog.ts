import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { SnapshotError } from '../../domain/errors';
import type {
  Account,
  Consistency,
  FullRead,
  HourlyCharge,
  ImageRecord,
  Region,
  SnapshotRecord,
  SnapshotStatus,
  Vm,
  VmStatus,
} from '../../domain/model';
import { AccountSchema, DEFAULT_HOST_ID, frozenMs, SNAPSHOT_STAGES, VmSchema } from '../../domain/model';
import { idempotencyKeyReusedMessage, nameTakenMessage } from '../../domain/acceptance';
import { NAME_KEY_RULE, snapshotNameKey } from '../../domain/requests';
import { checkCredits } from '../../domain/rules';
import type { Catalog, NewSnapshot, SnapshotPatch } from '../ports';

const IN_FLIGHT = SNAPSHOT_STAGES.map((s) => `'${s}'`).join(', ');
/** Snapshots that hold their name (and count as existing). */
const HOLDS_NAME = `status NOT IN ('FAILED', 'DELETED')`;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vms (
  id TEXT PRIMARY KEY, account_id TEXT NOT NULL, region TEXT NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL,
  host_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL,
  vm_id TEXT NOT NULL,
  vm_name TEXT NOT NULL,
  region TEXT NOT NULL,
  name TEXT NOT NULL,
  name_key TEXT NOT NULL,
  description TEXT NOT NULL,
  create_as_image INTEGER NOT NULL,
  status TEXT NOT NULL,
  workflow_id TEXT NOT NULL,
  parent_snapshot_id TEXT,
  vm_config TEXT,
  failure_type TEXT,
  failure_reason TEXT,
  logical_bytes INTEGER,
  stored_bytes INTEGER,
  added_bytes INTEGER,
  compression_ratio REAL,
  dedup_ratio REAL,
  created_at TEXT NOT NULL,
  completed_at TEXT,
  idempotency_key TEXT,
  request_digest TEXT,
  -- Credit hold taken at reservation: HELD while in flight, RELEASED on failure, CONVERTED on success.
  hold_micros INTEGER NOT NULL DEFAULT 0,
  hold_state TEXT NOT NULL DEFAULT 'HELD',
  policy_id TEXT,
  verified_at TEXT,
  deleted_at TEXT,
  deleted_reason TEXT
);
-- A name is taken by every snapshot that is not FAILED or DELETED, in every region of the account.
DROP INDEX IF EXISTS snapshots_name;
CREATE UNIQUE INDEX IF NOT EXISTS snapshots_live_name ON snapshots (account_id, name_key) WHERE ${HOLDS_NAME};
-- One snapshot in flight per VM.
CREATE UNIQUE INDEX IF NOT EXISTS snapshots_in_flight ON snapshots (vm_id) WHERE status IN (${IN_FLIGHT});
-- An idempotency key names one live snapshot of its account.
CREATE UNIQUE INDEX IF NOT EXISTS snapshots_idempotency_key ON snapshots (account_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL AND ${HOLDS_NAME};
CREATE INDEX IF NOT EXISTS snapshots_account ON snapshots (account_id, created_at);
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, account_id TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL, snapshot_id TEXT NOT NULL,
  doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_account ON images (account_id, region);
-- One row per account and hour: the primary key is what makes metering exactly once.
CREATE TABLE IF NOT EXISTS charges (
  account_id TEXT NOT NULL, hour TEXT NOT NULL, amount_micros INTEGER NOT NULL, doc TEXT NOT NULL,
  PRIMARY KEY (account_id, hour)
);
-- The version of snapshotNameKey the name_key column was computed with (one row).
CREATE TABLE IF NOT EXISTS name_key_rule (version INTEGER NOT NULL);
-- API keys by their SHA-256 hash (hex): a leaked catalog gives no usable key.
CREATE TABLE IF NOT EXISTS api_keys (key_hash TEXT PRIMARY KEY, account_id TEXT NOT NULL, created_at TEXT NOT NULL);
`;

interface SnapshotRow {
  id: string;
  account_id: string;
  vm_id: string;
  vm_name: string;
  region: Region;
  name: string;
  description: string;
  create_as_image: number;
  status: SnapshotStatus;
  workflow_id: string;
  parent_snapshot_id: string | null;
  vm_config: string | null;
  consistency: Consistency['kind'] | null;
  consistency_reason: string | null;
  frozen_ms: number | null;
  full_reads: string | null;
  failure_type: string | null;
  failure_reason: string | null;
  logical_bytes: number | null;
  stored_bytes: number | null;
  added_bytes: number | null;
  compression_ratio: number | null;
  dedup_ratio: number | null;
  created_at: string;
  completed_at: string | null;
  idempotency_key: string | null;
  request_digest: string | null;
  hold_micros: number;
  policy_id: string | null;
  verified_at: string | null;
  deleted_at: string | null;
  deleted_reason: string | null;
  manifest_digest: string | null;
}

function toRecord(row: SnapshotRow): SnapshotRecord {
  return {
    id: row.id,
    accountId: row.account_id,
    vmId: row.vm_id,
    vmName: row.vm_name,
    region: row.region,
    name: row.name,
    description: row.description,
    createAsImage: row.create_as_image === 1,
    status: row.status,
    workflowId: row.workflow_id,
    parentSnapshotId: row.parent_snapshot_id,
    vmConfig: row.vm_config === null ? null : (JSON.parse(row.vm_config) as Record<string, unknown>),
    consistency: toConsistency(row),
    fullReads: row.full_reads === null ? null : (JSON.parse(row.full_reads) as FullRead[]),
    failureType: row.failure_type,
    failureReason: row.failure_reason,
    logicalBytes: row.logical_bytes,
    storedBytes: row.stored_bytes,
    addedBytes: row.added_bytes,
    compressionRatio: row.compression_ratio,
    dedupRatio: row.dedup_ratio,
    createdAt: row.created_at,
    completedAt: row.completed_at,
    idempotencyKey: row.idempotency_key,
    creditHoldMicros: row.hold_micros,
    policyId: row.policy_id,
    verifiedAt: row.verified_at,
    deletedAt: row.deleted_at,
    deletedReason: row.deleted_reason,
    manifestDigest: row.manifest_digest,
  };
}

interface VmRow {
  doc: string;
  host_id: string;
}

/** A VM is its doc and its host, which has a column of its own (added after the doc). */
function toVm(row: VmRow): Vm {
  return VmSchema.parse({ ...(JSON.parse(row.doc) as object), hostId: row.host_id });
}

/** A crash-consistent snapshot's reason and an application-consistent one's freeze time have a column each. */
function toConsistency(row: SnapshotRow): Consistency | null {
  if (row.consistency === 'crash-consistent') return { kind: row.consistency, reason: row.consistency_reason ?? '' };
  if (row.consistency === null) return null;
  return row.frozen_ms === null ? { kind: row.consistency } : { kind: row.consistency, frozenMs: row.frozen_ms };
}

/** The columns of the fields a patch may set that are stored in one column each. */
const PATCH_COLUMNS: Record<Exclude<keyof SnapshotPatch, 'consistency'>, string> = {
  status: 'status',
  parentSnapshotId: 'parent_snapshot_id',
  vmConfig: 'vm_config',
  fullReads: 'full_reads',
  failureType: 'failure_type',
  failureReason: 'failure_reason',
  logicalBytes: 'logical_bytes',
  storedBytes: 'stored_bytes',
  addedBytes: 'added_bytes',
  compressionRatio: 'compression_ratio',
  dedupRatio: 'dedup_ratio',
  completedAt: 'completed_at',
  verifiedAt: 'verified_at',
  manifestDigest: 'manifest_digest',
};

/** The patch fields stored as JSON text. */
const JSON_COLUMNS = new Set<keyof SnapshotPatch>(['vmConfig', 'fullReads']);

/** Columns added after the first release, by table, with their definitions: catalogs made before them gain them on open. */
const ADDED_COLUMNS: Record<string, Record<string, string>> = {
  snapshots: {
    policy_id: 'TEXT',
    verified_at: 'TEXT',
    deleted_at: 'TEXT',
    deleted_reason: 'TEXT',
    request_digest: 'TEXT',
    manifest_digest: 'TEXT',
    // Snapshots made before consistency was recorded stay null: not known.
    consistency: 'TEXT',
    consistency_reason: 'TEXT',
    // Null where it was not recorded.
    frozen_ms: 'INTEGER',
    // JSON; null for snapshots from before it was recorded: not known.
    full_reads: 'TEXT',
  },
  vms: {
    // VMs made before hosts existed are on the one host there was: the default one (the column holds a VM's host, its
    // doc does not).
    host_id: `TEXT NOT NULL DEFAULT '${DEFAULT_HOST_ID}'`,
  },
};

/**
 * The embedded catalog: one SQLite file in WAL mode, shared by the worker and the CLI processes. Reservations rely on
 * partial unique indexes, so they stay race-free across processes.
 */
export class SqliteCatalog implements Catalog {
  private readonly db: Database.Database;

  constructor(file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
    this.addMissingColumns();
    this.recomputeNameKeys();
  }

  /**
   * Brings name_key to the current `snapshotNameKey` when the catalog was written under an older rule (once, in one
   * write transaction whichever process opens first). Two live names the new rule makes collide both stay: the
   * older keeps the key, and so is the one found by name; the newer gets its id appended (found by id).
   */
  private recomputeNameKeys(): void {
    const current = () =>
      (this.db.prepare('SELECT version FROM name_key_rule').get() as { version: number } | undefined)?.version;
    if (current() === NAME_KEY_RULE) return;
    const migrate = this.db.transaction(() => {
      if (current() === NAME_KEY_RULE) return;
      const rows = this.db
        .prepare(`SELECT id, name, ${HOLDS_NAME} AS live FROM snapshots ORDER BY created_at, id`)
        .all() as { id: string; name: string; live: number }[];
      const taken = new Set<string>();
      const update = this.db.prepare('UPDATE snapshots SET name_key = ? WHERE id = ?');
      // Clear first, so the unique index of live names never sees an old key beside a new one.
      this.db.prepare('UPDATE snapshots SET name_key = id').run();
      for (const row of rows) {
        const key = snapshotNameKey(row.name);
        const free = !row.live || !taken.has(key);
        if (row.live) taken.add(key);
        update.run(free ? key : `${key}/${row.id}`, row.id);
      }
      this.db.prepare('DELETE FROM name_key_rule').run();
      this.db.prepare('INSERT INTO name_key_rule (version) VALUES (?)').run(NAME_KEY_RULE);
    });
    migrate.immediate();
  }

  private addMissingColumns(): void {
    for (const [table, columns] of Object.entries(ADDED_COLUMNS)) {
      const present = new Set(
        (this.db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).map((c) => c.name),
      );
      for (const [column, type] of Object.entries(columns)) {
        if (!present.has(column)) this.db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${type}`);
      }
    }
  }

  getAccount(id: string): Account | undefined {
    const row = this.db.prepare('SELECT doc FROM accounts WHERE id = ?').get(id) as { doc: string } | undefined;
    return row && AccountSchema.parse(JSON.parse(row.doc));
  }

  listAccounts(): Account[] {
    const rows = this.db.prepare('SELECT doc FROM accounts ORDER BY id').all() as { doc: string }[];
    return rows.map((row) => AccountSchema.parse(JSON.parse(row.doc)));
  }

  recordHourlyCharge(charge: HourlyCharge): boolean {
    const record = this.db.transaction((c: HourlyCharge): boolean => {
      const inserted = this.db
        .prepare('INSERT OR IGNORE INTO charges (account_id, hour, amount_micros, doc) VALUES (?, ?, ?, ?)')
        .run(c.accountId, c.hour, c.amountMicros, JSON.stringify(c));
      if (inserted.changes === 0) return false;
      const account = this.getAccount(c.accountId);
      if (!account) throw new SnapshotError('AccountNotFound', `Account ${c.accountId} does not exist.`);
      this.putAccount({ ...account, creditMicros: account.creditMicros - c.amountMicros });
      return true;
    });
    return record.immediate(charge);
  }

  listCharges(accountId: string, from?: Date): HourlyCharge[] {
    const rows = this.db
      .prepare('SELECT doc FROM charges WHERE account_id = ? AND hour >= ? ORDER BY hour')
      .all(accountId, from?.toISOString() ?? '') as { doc: string }[];
    return rows.map((row) => JSON.parse(row.doc) as HourlyCharge);
  }

  putAccount(account: Account): void {
    this.db
      .prepare('INSERT INTO accounts (id, doc) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc')
      .run(account.id, JSON.stringify(AccountSchema.parse(account)));
  }

  getVm(id: string): Vm | undefined {
    const row = this.db.prepare('SELECT doc, host_id FROM vms WHERE id = ?').get(id) as VmRow | undefined;
    return row && toVm(row);
  }

  listVms(filter: { accountId?: string; region?: Region; status?: VmStatus }): Vm[] {
    const rows = this.db
      .prepare(
        `SELECT doc, host_id FROM vms WHERE (@accountId IS NULL OR account_id = @accountId)
         AND (@region IS NULL OR region = @region) AND (@status IS NULL OR status = @status) ORDER BY id`,
      )
      .all({
        accountId: filter.accountId ?? null,
        region: filter.region ?? null,
        status: filter.status ?? null,
      }) as VmRow[];
    return rows.map(toVm);
  }

  putVm(vm: Vm): void {
    const { hostId, ...doc } = VmSchema.parse(vm);
    this.db
      .prepare(
        `INSERT INTO vms (id, account_id, region, status, doc, host_id)
         VALUES (@id, @accountId, @region, @status, @doc, @hostId)
         ON CONFLICT (id) DO UPDATE SET account_id = excluded.account_id, region = excluded.region,
         status = excluded.status, doc = excluded.doc, host_id = excluded.host_id`,
      )
      .run({
        id: doc.id,
        accountId: doc.accountId,
        region: doc.region,
        status: doc.status,
        doc: JSON.stringify(doc),
        hostId,
      });
  }

  deleteVm(id: string): void {
    this.db.prepare('DELETE FROM vms WHERE id = ?').run(id);
  }

  reserveSnapshot(snapshot: NewSnapshot): SnapshotRecord {
    const reserve = this.db.transaction((s: NewSnapshot): SnapshotRecord => {
      const existing = this.getSnapshot(s.id);
      if (existing) return existing;
      if (s.idempotencyKey !== null) {
        const sameKey = this.db
          .prepare(`SELECT * FROM snapshots WHERE account_id = ? AND idempotency_key = ? AND ${HOLDS_NAME}`)
          .get(s.accountId, s.idempotencyKey) as SnapshotRow | undefined;
        if (sameKey && sameKey.request_digest === s.requestDigest) return toRecord(sameKey);
        if (sameKey) {
          throw new SnapshotError('IdempotencyKeyReused', idempotencyKeyReusedMessage(s.idempotencyKey, sameKey.id));
        }
      }
      const nameKey = snapshotNameKey(s.name);
      const sameName = this.db
        .prepare(`SELECT id FROM snapshots WHERE account_id = ? AND name_key = ? AND ${HOLDS_NAME}`)
        .get(s.accountId, nameKey) as { id: string } | undefined;
      if (sameName) throw new SnapshotError('SnapshotNameTaken', nameTakenMessage(s.name, sameName.id));
      // In flight now, or when the request arrived (accepted before it and ended after it): however late validation
      // is scheduled, a request made while the VM had a snapshot in flight is refused.
      const inFlight = this.db
        .prepare(
          `SELECT id, name FROM snapshots WHERE vm_id = @vmId AND (status IN (${IN_FLIGHT})
           OR (created_at <= @requestedAt AND COALESCE(completed_at, deleted_at, created_at) > @requestedAt))
           ORDER BY created_at DESC`,
        )
        .get({ vmId: s.vmId, requestedAt: s.requestedAt }) as { id: string; name: string } | undefined;
      if (inFlight) {
        throw new SnapshotError(
          'SnapshotInProgress',
          `VM ${s.vmName} already has a snapshot in progress ("${inFlight.name}", ${inFlight.id}); wait for it to finish.`,
        );
      }
      const account = this.getAccount(s.accountId);
      const vm = this.getVm(s.vmId);
      if (!account || !vm)
        throw new SnapshotError('VmNotFound', `VM ${s.vmId} does not exist in account ${s.accountId}.`);
      const holdMicros = checkCredits(account, vm, this.heldCredits(s.accountId));
      this.db
        .prepare(
          `INSERT INTO snapshots (id, account_id, vm_id, vm_name, region, name, name_key, description, create_as_image,
           status, workflow_id, created_at, idempotency_key, request_digest, hold_micros, policy_id)
           VALUES (@id, @accountId, @vmId, @vmName, @region, @name, @nameKey, @description, @createAsImage,
           'VALIDATING', @workflowId, @createdAt, @idempotencyKey, @requestDigest, @holdMicros, @policyId)`,
        )
        .run({
          id: s.id,
          accountId: s.accountId,
          vmId: s.vmId,
          vmName: s.vmName,
          region: s.region,
          name: s.name,
          description: s.description,
          workflowId: s.workflowId,
          idempotencyKey: s.idempotencyKey,
          requestDigest: s.requestDigest,
          policyId: s.policyId,
          nameKey,
          holdMicros,
          createAsImage: s.createAsImage ? 1 : 0,
          createdAt: new Date().toISOString(),
        });
      return this.getSnapshot(s.id)!;
    });
    // IMMEDIATE takes the write lock up front, so two processes cannot both pass the checks.
    return reserve.immediate(snapshot);
  }

  heldCredits(accountId: string): number {
    const row = this.db
      .prepare(
        `SELECT COALESCE(SUM(hold_micros), 0) AS held FROM snapshots WHERE account_id = ? AND hold_state = 'HELD'`,
      )
      .get(accountId) as { held: number };
    return row.held;
  }

  getSnapshot(id: string): SnapshotRecord | undefined {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRow | undefined;
    return row && toRecord(row);
  }

  findSnapshotByName(accountId: string, name: string): SnapshotRecord | undefined {
    const row = this.db
      .prepare(
        `SELECT * FROM snapshots WHERE account_id = ? AND name_key = ? AND ${HOLDS_NAME} ORDER BY created_at DESC`,
      )
      .get(accountId, snapshotNameKey(name)) as SnapshotRow | undefined;
    return row && toRecord(row);
  }

  listSnapshots(filter: {
    accountId?: string;
    region?: Region;
    vmId?: string;
    status?: SnapshotStatus;
    policyId?: string;
    includeDeleted?: boolean;
  }): SnapshotRecord[] {
    const rows = this.db
      .prepare(
        `SELECT * FROM snapshots WHERE (@accountId IS NULL OR account_id = @accountId)
         AND (@region IS NULL OR region = @region) AND (@vmId IS NULL OR vm_id = @vmId)
         AND (@status IS NULL OR status = @status) AND (@policyId IS NULL OR policy_id = @policyId)
         AND (@includeDeleted = 1 OR @status IS NOT NULL OR status <> 'DELETED')
         ORDER BY created_at, id`,
      )
      .all({
        accountId: filter.accountId ?? null,
        region: filter.region ?? null,
        vmId: filter.vmId ?? null,
        status: filter.status ?? null,
        policyId: filter.policyId ?? null,
        includeDeleted: filter.includeDeleted ? 1 : 0,
      }) as SnapshotRow[];
    return rows.map(toRecord);
  }

  updateSnapshot(id: string, patch: SnapshotPatch): SnapshotRecord {
    const { consistency, ...plain } = patch;
    const entries = Object.entries(plain).filter(([, value]) => value !== undefined) as [
      keyof typeof PATCH_COLUMNS,
      unknown,
    ][];
    const sets = entries.map(([key]) => `${PATCH_COLUMNS[key]} = @${key}`);
    const values: Record<string, unknown> = Object.fromEntries(
      entries.map(([key, value]) => [key, JSON_COLUMNS.has(key) && value !== null ? JSON.stringify(value) : value]),
    );
    if (consistency !== undefined) {
      sets.push('consistency = @consistency', 'consistency_reason = @consistencyReason', 'frozen_ms = @frozenMs');
      values.consistency = consistency?.kind ?? null;
      values.consistencyReason = consistency?.kind === 'crash-consistent' ? consistency.reason : null;
      values.frozenMs = frozenMs(consistency);
    }
    if (sets.length > 0) {
      // Ending a snapshot settles its credit hold in the same statement: released on failure, converted on success.
      const hold =
        patch.status === 'FAILED'
          ? `, hold_state = 'RELEASED'`
          : patch.status === 'SUCCESS'
            ? `, hold_state = 'CONVERTED'`
            : '';
      this.db.prepare(`UPDATE snapshots SET ${sets.join(', ')}${hold} WHERE id = @id`).run({ ...values, id });
    }
    const updated = this.getSnapshot(id);
    if (!updated) throw new SnapshotError('SnapshotNotFound', `Snapshot ${id} does not exist.`);
    return updated;
  }

  markSnapshotDeleted(id: string, reason: string): SnapshotRecord {
    this.db
      .prepare(
        `UPDATE snapshots SET status = 'DELETED', deleted_at = @now, deleted_reason = @reason,
         hold_state = CASE hold_state WHEN 'HELD' THEN 'RELEASED' ELSE hold_state END
         WHERE id = @id AND status <> 'DELETED'`,
      )
      .run({ id, reason, now: new Date().toISOString() });
    const deleted = this.getSnapshot(id);
    if (!deleted) throw new SnapshotError('SnapshotNotFound', `Snapshot ${id} does not exist.`);
    return deleted;
  }

  putImage(image: ImageRecord): ImageRecord {
    const existing = this.getImage(image.id);
    if (existing) return existing;
    this.db
      .prepare('INSERT INTO images (id, account_id, region, name, snapshot_id, doc) VALUES (?, ?, ?, ?, ?, ?)')
      .run(image.id, image.accountId, image.region, image.name, image.snapshotId, JSON.stringify(image));
    return image;
  }

  getImage(id: string): ImageRecord | undefined {
    const row = this.db.prepare('SELECT doc FROM images WHERE id = ?').get(id) as { doc: string } | undefined;
    return row && (JSON.parse(row.doc) as ImageRecord);
  }

  listImages(filter: { accountId?: string; region?: Region; snapshotId?: string }): ImageRecord[] {
    const rows = this.db
      .prepare(
        `SELECT doc FROM images WHERE (@accountId IS NULL OR account_id = @accountId)
         AND (@region IS NULL OR region = @region) AND (@snapshotId IS NULL OR snapshot_id = @snapshotId)
         ORDER BY name`,
      )
      .all({
        accountId: filter.accountId ?? null,
        region: filter.region ?? null,
        snapshotId: filter.snapshotId ?? null,
      }) as { doc: string }[];
    return rows.map((row) => JSON.parse(row.doc) as ImageRecord);
  }

  deleteImage(id: string): void {
    this.db.prepare('DELETE FROM images WHERE id = ?').run(id);
  }

  latestSuccessfulSnapshot(vmId: string): SnapshotRecord | undefined {
    const row = this.db
      .prepare(`SELECT * FROM snapshots WHERE vm_id = ? AND status = 'SUCCESS' ORDER BY completed_at DESC LIMIT 1`)
      .get(vmId) as SnapshotRow | undefined;
    return row && toRecord(row);
  }

  putApiKey(accountId: string, keyHash: string): void {
    this.db
      .prepare('INSERT OR IGNORE INTO api_keys (key_hash, account_id, created_at) VALUES (?, ?, ?)')
      .run(keyHash, accountId, new Date().toISOString());
  }

  accountForApiKey(keyHash: string): string | undefined {
    const row = this.db.prepare('SELECT account_id FROM api_keys WHERE key_hash = ?').get(keyHash) as
      { account_id: string } | undefined;
    return row?.account_id;
  }

  close(): void {
    this.db.close();
  }
}
