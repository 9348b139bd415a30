import {
  DEFAULT_NAME_TEMPLATE,
  NameTemplateSchema,
  PurposeSchema,
  checkNameTemplate,
  renderSnapshotName,
} from '../../domain/naming';
import { MAX_NAME_LENGTH, SnapshotNameSchema } from '../../domain/requests';

const values = {
  vm: 'trainer-01',
  purpose: 'nightly',
  at: new Date('2026-11-25T06:40:00Z'),
  timeZone: 'Europe/Oslo',
  version: 3,
};

describe('renderSnapshotName', () => {
  test('fills the default template with the date and time in the time zone', () => {
    expect(renderSnapshotName(DEFAULT_NAME_TEMPLATE, values)).toBe('trainer-01-nightly-2026-11-25-0740-v3');
    expect(renderSnapshotName(DEFAULT_NAME_TEMPLATE, { ...values, timeZone: 'America/New_York' })).toBe(
      'trainer-01-nightly-2026-11-25-0140-v3',
    );
  });

  test('takes the date of the time zone, not of UTC', () => {
    const lateEvening = { ...values, at: new Date('2026-11-24T23:30:00Z') };
    expect(renderSnapshotName('{date} {time}', lateEvening)).toBe('2026-11-25 0030');
  });

  test('replaces every use of a token', () => {
    expect(renderSnapshotName('{purpose}.{vm}.{purpose}_{version}', values)).toBe('nightly.trainer-01.nightly_3');
  });

  test('turns characters a name may not hold into "-" and trims the ends of the values', () => {
    expect(renderSnapshotName(DEFAULT_NAME_TEMPLATE, { ...values, vm: 'gpu/box:1', purpose: ' pre upgrade! ' })).toBe(
      'gpu-box-1-pre upgrade-2026-11-25-0740-v3',
    );
    expect(renderSnapshotName('{vm} v{version}', { ...values, vm: '-Übung_1-' })).toBe('Übung_1 v3');
  });

  test('refuses a value with no letter or digit and a version that is not a positive integer', () => {
    expect(() => renderSnapshotName(DEFAULT_NAME_TEMPLATE, { ...values, purpose: '!!' })).toThrow(
      'purpose "!!" has no letter or digit',
    );
    expect(() => renderSnapshotName(DEFAULT_NAME_TEMPLATE, { ...values, version: 0 })).toThrow(
      'version must be a positive integer',
    );
    expect(() => renderSnapshotName(DEFAULT_NAME_TEMPLATE, { ...values, version: 1.5 })).toThrow(RangeError);
  });

  test('shortens the VM name first, then the purpose, never the date, time or version', () => {
    const longVm = { ...values, vm: 'a-very-long-virtual-machine-name-for-training-runs' };
    expect(renderSnapshotName(DEFAULT_NAME_TEMPLATE, longVm)).toBe(
      'a-very-long-virtual-mac-nightly-2026-11-25-0740-v3',
    );

    const longBoth = { ...longVm, purpose: 'weekly-full-backup-before-the-cluster-upgrade' };
    expect(renderSnapshotName(DEFAULT_NAME_TEMPLATE, longBoth)).toBe(
      'a-weekly-full-backup-before-the-2026-11-25-0740-v3',
    );
  });

  test('never leaves a cut value ending in a separator', () => {
    // Cutting "trainer-01-…" at 8 characters would end it with "-".
    const name = renderSnapshotName('{vm}-{date}-{time}-v{version}-xxxxxxxxxxxxxxxxxxxxxx', {
      ...values,
      vm: 'trainer-01-with-a-long-suffix',
    });
    expect(name).toBe('trainer-2026-11-25-0740-v3-xxxxxxxxxxxxxxxxxxxxxx');
  });

  test('counts a token used twice once per use when shortening', () => {
    const name = renderSnapshotName('{vm}-{vm}-{date}', { ...values, vm: 'abcdefghijklmnopqrstuvwxyz' });
    expect(name).toBe('abcdefghijklmnopqrs-abcdefghijklmnopqrs-2026-11-25');
  });

  test('always renders a valid name for an accepted template', () => {
    const long = 'x'.repeat(200);
    for (const template of [DEFAULT_NAME_TEMPLATE, '{purpose} {vm} {date}', 'snap_{version}_{vm}.{purpose}']) {
      const name = renderSnapshotName(template, { ...values, vm: long, purpose: long, version: 999_999 });
      expect([...name].length).toBeLessThanOrEqual(MAX_NAME_LENGTH);
      expect(SnapshotNameSchema.safeParse(name).success).toBe(true);
    }
  });
});

describe('checkNameTemplate', () => {
  test.each([DEFAULT_NAME_TEMPLATE, '{date}', 'nightly {vm} v{version}', '{vm}_{time}'])('accepts %j', (template) => {
    expect(checkNameTemplate(template)).toBeUndefined();
    expect(NameTemplateSchema.safeParse(template).success).toBe(true);
  });

  test.each([
    ['{vm}-{foo}-{date}', 'unknown token "{foo}"; use {vm}, {purpose}, {date}, {time}, {version}'],
    ['{vm}-{}-{date}', 'unknown token "{}"; use {vm}, {purpose}, {date}, {time}, {version}'],
    ['{vm}-{purpose}', 'must contain {date}, {time} or {version} so that names differ between runs'],
    ['', 'must contain {date}, {time} or {version} so that names differ between runs'],
    ['-{vm}-{date}', 'sample name "-v-2026-11-25" is not valid: may contain letters, digits, spaces'],
    ['{vm}/{date}', 'sample name "v/2026-11-25" is not valid: may contain letters, digits, spaces'],
    ['{vm}-{date} ', 'sample name "v-2026-11-25 " is not valid: may contain letters, digits, spaces'],
    ['{vm-{date}', 'sample name "{vm-2026-11-25" is not valid: may contain letters, digits, spaces'],
    [`${'x'.repeat(40)}-{date}`, `sample name "${'x'.repeat(40)}-2026-11-25" is not valid: must be 1–50 characters`],
  ])('refuses %j', (template, message) => {
    expect(checkNameTemplate(template)).toContain(message);
    expect(NameTemplateSchema.safeParse(template).error?.issues.map((issue) => issue.message)).toEqual([
      checkNameTemplate(template),
    ]);
  });
});

describe('names from values in any script', () => {
  test('keeps the combining marks of a letter and drops invisible characters', () => {
    expect(renderSnapshotName('{purpose} {date}', { ...values, purpose: 'नमस्ते\u200b' })).toBe('नमस्ते 2026-11-25');
    expect(renderSnapshotName('{purpose} {date}', { ...values, purpose: '\u0301ok\u0301' })).toBe(
      'o\u1e31 2026-11-25', // NFC composes k + U+0301,
    );
  });

  test('refuses a purpose whose script cannot go with the Latin of VM names', () => {
    expect(PurposeSchema.safeParse('ночь').error?.issues[0]?.message).toBe(
      'must be in a script that goes with the Latin of VM names: Latin, Han, Japanese or Korean',
    );
    expect(PurposeSchema.parse(' 夜間 ')).toBe('夜間');
    expect(renderSnapshotName(DEFAULT_NAME_TEMPLATE, { ...values, purpose: '夜間' })).toBe(
      'trainer-01-夜間-2026-11-25-0740-v3',
    );
    expect(() => renderSnapshotName(DEFAULT_NAME_TEMPLATE, { ...values, purpose: 'ночь' })).toThrow(
      'which is not a valid name: must be written in one script',
    );
  });
});
