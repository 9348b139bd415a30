import { z } from 'zod';
import { MAX_NAME_LENGTH, SnapshotNameSchema } from './requests';
import { isHighlyRestrictive } from './text';
import { inTimeZone } from './windows';

/** Names carry the VM, the purpose, the date and time and a version: "trainer-01-nightly-2026-11-25-0740-v3". */
export const DEFAULT_NAME_TEMPLATE = '{vm}-{purpose}-{date}-{time}-v{version}';

const TOKENS = ['vm', 'purpose', 'date', 'time', 'version'] as const;
type Token = (typeof TOKENS)[number];
const TOKEN_PATTERN = /\{([^{}]*)\}/g;

/** Token values checked templates are rendered with: the shortest `{vm}` and `{purpose}`, a six-digit version. */
const SAMPLE: Record<Token, string> = { vm: 'v', purpose: 'p', date: '2026-11-25', time: '0740', version: '999999' };

const isToken = (name: string): name is Token => (TOKENS as readonly string[]).includes(name);

/** `template` with its known tokens replaced; unknown ones stay as they are. */
function render(template: string, values: Record<Token, string>): string {
  return template.replace(TOKEN_PATTERN, (token, name: string) => (isToken(name) ? values[name] : token));
}

const length = (text: string) => [...text].length;

/** Drops the code points past `keep` (at least one), then any non-letter-or-digit left at the end. */
function shorten(value: string, keep: number): string {
  return [...value]
    .slice(0, Math.max(1, keep))
    .join('')
    .replace(/[^\p{L}\p{M}\p{N}]+$/u, '');
}

/**
 * Invisible characters are dropped, and other characters a name may not contain become "-" (a combining mark stays
 * after a letter); the value then starts and ends with a letter (with its marks) or a digit.
 */
function sanitise(value: string, what: Token): string {
  const clean = value
    .normalize('NFC')
    .replace(/\p{Default_Ignorable_Code_Point}/gu, '')
    .replace(/(?<![\p{L}\p{M}])\p{M}+|[^\p{L}\p{M}\p{N} ._-]/gu, '-')
    .replace(/^[^\p{L}\p{N}]+|[^\p{L}\p{M}\p{N}]+$/gu, '');
  if (!clean) throw new RangeError(`${what} "${value}" has no letter or digit to name a snapshot with`);
  return clean;
}

/**
 * The snapshot name `template` gives: `{vm}`, `{purpose}`, `{date}` (YYYY-MM-DD) and `{time}` (HHmm, both in
 * `timeZone`) and `{version}` replaced. Characters of `vm` and `purpose` a name may not hold become "-". A name longer
 * than `MAX_NAME_LENGTH` has its `{vm}` value shortened first, then its `{purpose}`, down to one character each; the
 * date, time and version are never cut. For a template `checkNameTemplate` accepts and a version below 1,000,000 the
 * result is a valid `SnapshotNameSchema` name; otherwise this may throw a `RangeError` (also for an unknown zone).
 */
export function renderSnapshotName(
  template: string,
  values: { vm: string; purpose: string; at: Date; timeZone: string; version: number },
): string {
  if (!Number.isSafeInteger(values.version) || values.version < 1) {
    throw new RangeError(`version must be a positive integer, got ${values.version}`);
  }
  const local = inTimeZone(values.at, values.timeZone);
  const tokens: Record<Token, string> = {
    vm: sanitise(values.vm, 'vm'),
    purpose: sanitise(values.purpose, 'purpose'),
    date: local.toISODate(),
    // Built from the numbers: luxon's formatting would follow the machine's locale and could bring other digits.
    time: [local.hour, local.minute].map((part) => String(part).padStart(2, '0')).join(''),
    version: String(values.version),
  };
  // Too long: cut {vm} by the excess shared among its uses, then {purpose} by what is left.
  for (const token of ['vm', 'purpose'] as const) {
    const excess = length(render(template, tokens)) - MAX_NAME_LENGTH;
    const uses = template.split(`{${token}}`).length - 1;
    if (excess > 0 && uses > 0) {
      tokens[token] = shorten(tokens[token], length(tokens[token]) - Math.ceil(excess / uses));
    }
  }
  const name = render(template, tokens);
  if (length(name) > MAX_NAME_LENGTH) throw new RangeError(`template "${template}" cannot fit "${name}" in a name`);
  const problem = SnapshotNameSchema.safeParse(name).error?.issues[0]?.message;
  if (problem) throw new RangeError(`template "${template}" gives "${name}", which is not a valid name: ${problem}`);
  return name;
}

/**
 * Why `template` cannot name snapshots, or undefined when it can: every token must be known, one of `{date}`,
 * `{time}` and `{version}` must make successive names differ, and a sample rendering (one-character VM name and
 * purpose, six-digit version) must be a valid snapshot name.
 */
export function checkNameTemplate(template: string): string | undefined {
  const used = [...template.matchAll(TOKEN_PATTERN)].map((match) => match[1]!);
  const unknown = used.find((name) => !isToken(name));
  if (unknown !== undefined) {
    return `unknown token "{${unknown}}"; use ${TOKENS.map((token) => `{${token}}`).join(', ')}`;
  }
  if (!used.some((name) => name === 'date' || name === 'time' || name === 'version')) {
    return 'must contain {date}, {time} or {version} so that names differ between runs';
  }
  const sample = render(template, SAMPLE);
  const problem = SnapshotNameSchema.safeParse(sample).error?.issues[0]?.message;
  return problem && `sample name "${sample}" is not valid: ${problem}`;
}

/**
 * The `{purpose}` of a policy's names: 1–30 characters, in a script that goes with the Latin of VM names (Latin, or
 * Han, Japanese or Korean), so that every rendered name is in one script (see `SnapshotNameSchema`).
 */
export const PurposeSchema = z
  .string()
  .trim()
  .min(1)
  .max(30)
  .refine((purpose) => isHighlyRestrictive(`${SAMPLE.vm}-${purpose}`), {
    message: 'must be in a script that goes with the Latin of VM names: Latin, Han, Japanese or Korean',
  });

/** A snapshot name template, checked by `checkNameTemplate`. */
export const NameTemplateSchema = z.string().superRefine((template, context) => {
  const problem = checkNameTemplate(template);
  if (problem) context.addIssue({ code: 'custom', message: problem });
});
