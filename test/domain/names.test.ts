import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { SnapshotError } from '../../domain/errors';
import { imageIdFrom, imageIdOfSnapshot, isIdOf, restoredVmIdFrom, snapshotIdFrom } from '../../domain/ids';
import {
  CreateSnapshotRequestSchema,
  SnapshotNameSchema,
  VmNameSchema,
  snapshotNameKey,
  snapshotWorkflowId,
} from '../../domain/requests';
import { SqliteCatalog } from '../../platform/local';
import { DEMO_ACCOUNT } from '../../platform/local/seed';
import { DEFAULT_HOST_ID } from '../../domain/model';

const accepted = (name: string) => SnapshotNameSchema.parse(name);
const refusal = (name: string) => SnapshotNameSchema.safeParse(name).error?.issues[0]?.message;

describe('snapshot names', () => {
  test('are NFC-normalised first, then validated and counted on the normalised form', () => {
    // "Café" as macOS types it: "e" + U+0301 COMBINING ACUTE ACCENT.
    expect(accepted('Cafe\u0301')).toBe('Caf\u00e9');
    // 50 decomposed "é" are 100 code points but 50 characters once composed.
    expect(accepted('e\u0301'.repeat(50))).toBe('\u00e9'.repeat(50));
    expect(refusal('e\u0301'.repeat(51))).toBe('must be 1–50 characters');
  });

  test('allow combining marks after a letter: Devanagari, Tamil, Thai', () => {
    for (const name of ['नमस्ते', 'தமிழ் காப்பு', 'สำรองข้อมูล', 'x\u0301-01']) expect(accepted(name)).toBe(name);
    expect(refusal('\u0301x')).toMatch(/^may contain letters, digits/);
    expect(refusal('a-\u0301')).toMatch(/^may contain letters, digits/);
  });

  test('refuse invisible (default-ignorable) characters', () => {
    for (const name of ['\u3164', 'a\u3164b', 'nightly\u200b', 'a\u200db', 'x\ufe0f']) {
      expect(refusal(name)).toBe('must not contain invisible characters');
    }
  });

  test('refuse a mix of scripts, except Latin with Han, Japanese or Korean (UTS #39 Highly Restrictive)', () => {
    const mixed = 'must be written in one script (Latin may be mixed with Han, Japanese or Korean only)';
    expect(refusal('Nightl\u0443')).toBe(mixed); // Cyrillic у
    expect(refusal('\u0391lpha')).toBe(mixed); // Greek Α
    expect(refusal('backup-ночь')).toBe(mixed);
    for (const name of ['ночь-01', '東京 backup', 'バックアップ 2026', '백업 db-01', 'ნიკა_1'])
      expect(accepted(name)).toBe(name);
  });

  test('refuse names shaped like a snapshot or image id, whatever their case or width', () => {
    const message = 'must not look like a snapshot or image id (snap-<uuid>, img-<uuid>)';
    const uuid = '3f2b1c4d-1111-2222-3333-444455556666';
    expect(refusal(`snap-${uuid}`)).toBe(message);
    expect(refusal(`IMG-${uuid.toUpperCase()}`)).toBe(message);
    expect(refusal(`ｓｎａｐ-${uuid}`)).toBe(message);
    expect(accepted(`snap-${uuid}-old`)).toBe(`snap-${uuid}-old`);
  });

  test('refuse every id the service mints, and each minted id is looked up as an id', () => {
    const uuid = randomUUID();
    const snapshotId = snapshotIdFrom(uuid);
    expect([snapshotId, imageIdFrom(uuid), imageIdOfSnapshot(snapshotId)]).toEqual([
      `snap-${uuid}`,
      `img-${uuid}`,
      `img-${uuid}`,
    ]);
    expect([isIdOf('snapshot', snapshotId), isIdOf('image', imageIdFrom(uuid))]).toEqual([true, true]);
    expect(refusal(snapshotId)).toMatch(/^must not look like a snapshot or image id/);
    expect(refusal(imageIdFrom(uuid))).toMatch(/^must not look like a snapshot or image id/);
    const vmId = restoredVmIdFrom(uuid);
    expect(vmId).toBe(`vm-${uuid.slice(0, 8)}`);
    expect(isIdOf('vm', vmId)).toBe(true);
    expect(VmNameSchema.safeParse(vmId).success).toBe(false);
  });

  test('refuse lone surrogates instead of letting them be replaced', () => {
    expect(refusal('ab\ud800')).toBe('must be well-formed Unicode text (it has a lone surrogate)');
  });
});

describe('the name key', () => {
  test('folds case fully: STRASSE, straße and Straẞe collide', () => {
    expect(new Set(['STRASSE', 'straße', 'Stra\u1e9ee', 'strasse'].map(snapshotNameKey)).size).toBe(1);
  });

  test('folds compatibility forms and confusables: fullwidth and all-Cyrillic look-alikes collide with Latin', () => {
    expect(snapshotNameKey('Ｎｉｇｈｔｌｙ')).toBe(snapshotNameKey('Nightly'));
    // "рое" in Cyrillic letters only (one script, so a valid name) looks like the Latin "poe".
    expect(accepted('\u0440\u043e\u0435')).toBe('рое');
    expect(snapshotNameKey('\u0440\u043e\u0435')).toBe(snapshotNameKey('POE'));
    expect(snapshotNameKey('Nightly')).not.toBe(snapshotNameKey('Daily'));
  });

  test('makes look-alikes of either case collide: a capital I, a digit 1 or an l, in any case', () => {
    // confusables.txt maps I and 1 to l but leaves i alone; with the case fold, all of them are one.
    expect(new Set(['Nightly', 'NightIy', 'Night1y', 'NIGHTLY', 'nightiy'].map(snapshotNameKey)).size).toBe(1);
    expect(snapshotNameKey('Nightly')).not.toBe(snapshotNameKey('Nightfy'));
  });

  test('leaves the workflow id readable: the NFKC case-folded name', () => {
    expect(snapshotWorkflowId('acme', 'Ｎｉｇｈｔｌｙ STRAẞE')).toBe('snapshot/acme/nightly strasse');
  });
});

test('descriptions with a lone surrogate are refused', () => {
  const request = { accountId: 'acme', vmId: 'vm-trainer-01', region: 'CANADA-1', name: 'n' };
  const parsed = CreateSnapshotRequestSchema.safeParse({ ...request, description: 'ok \udc00 not' });
  expect(parsed.error?.issues[0]).toMatchObject({
    path: ['description'],
    message: 'must be well-formed Unicode text (it has a lone surrogate)',
  });
  expect(CreateSnapshotRequestSchema.parse({ ...request, description: 'ok 🙂' }).description).toBe('ok 🙂');
});

test('VM names may not start like a VM id', () => {
  expect(VmNameSchema.safeParse('vm-1a2b3c4d').error?.issues[0]?.message).toBe(
    'must not start with "vm-", which VM ids start with',
  );
  expect(VmNameSchema.parse('trainer-01-vm')).toBe('trainer-01-vm');
});

describe('the catalog', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'names-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const vm = (id: string) => ({
    hostId: DEFAULT_HOST_ID,
    id,
    accountId: DEMO_ACCOUNT.id,
    name: id.slice(3),
    region: 'CANADA-1' as const,
    flavor: 'A100',
    status: 'ACTIVE' as const,
    config: {},
    disks: [],
    labels: [],
  });
  const reserve = (catalog: SqliteCatalog, vmId: string, name: string) =>
    catalog.reserveSnapshot({
      id: `snap-${vmId}-${name}`,
      accountId: DEMO_ACCOUNT.id,
      vmId,
      vmName: vmId,
      region: 'CANADA-1',
      name,
      description: '',
      createAsImage: false,
      workflowId: `w-${vmId}`,
      idempotencyKey: null,
      policyId: null,
      requestDigest: null,
      requestedAt: new Date().toISOString(),
    });
  const open = () => {
    const catalog = new SqliteCatalog(path.join(dir, 'catalog.db'));
    catalog.putAccount(DEMO_ACCOUNT);
    for (let i = 1; i <= 4; i++) catalog.putVm(vm(`vm-${i}`));
    return catalog;
  };

  test('refuses a name that folds or looks like a taken one, and finds a name by its key', () => {
    const catalog = open();
    reserve(catalog, 'vm-1', 'Nightly');
    for (const [vmId, name] of [
      ['vm-2', 'NIGHTLY'],
      ['vm-3', 'Ｎｉｇｈｔｌｙ'],
    ] as const) {
      expect(() => reserve(catalog, vmId, name)).toThrow(SnapshotError);
      expect(() => reserve(catalog, vmId, name)).toThrow(/A snapshot named ".*" already exists/);
    }
    reserve(catalog, 'vm-2', 'STRASSE');
    expect(() => reserve(catalog, 'vm-3', 'straße')).toThrow(/already exists/);
    expect(catalog.findSnapshotByName(DEMO_ACCOUNT.id, 'nightly')?.name).toBe('Nightly');
    expect(catalog.findSnapshotByName(DEMO_ACCOUNT.id, 'Straße')?.name).toBe('STRASSE');
    catalog.close();
  });

  test('recomputes the name keys of a catalog written under the old rule when it opens', () => {
    const first = open();
    reserve(first, 'vm-1', 'STRASSE');
    reserve(first, 'vm-2', 'Other');
    first.close();
    // As the old rule stored them: NFC + toLowerCase, and no rule version; a second live name that now collides.
    const db = new Database(path.join(dir, 'catalog.db'));
    db.prepare('DELETE FROM name_key_rule').run();
    db.prepare('UPDATE snapshots SET name_key = lower(name)').run();
    db.prepare(
      `INSERT INTO snapshots (id, account_id, vm_id, vm_name, region, name, name_key, description, create_as_image,
       status, workflow_id, created_at) SELECT 'snap-late', account_id, 'vm-3', vm_name, region, 'straße', 'straße',
       '', 0, 'SUCCESS', 'w', '2999-01-01T00:00:00Z' FROM snapshots WHERE name = 'Other'`,
    ).run();
    db.close();

    const reopened = open();
    expect(reopened.findSnapshotByName(DEMO_ACCOUNT.id, 'strasse')?.id).toBe('snap-vm-1-STRASSE');
    expect(reopened.findSnapshotByName(DEMO_ACCOUNT.id, 'ＯＴＨＥＲ')?.id).toBe('snap-vm-2-Other');
    expect(reopened.getSnapshot('snap-late')?.name).toBe('straße');
    expect(() => reserve(reopened, 'vm-4', 'Strasse')).toThrow(/already exists/);
    reopened.close();
  });
});
