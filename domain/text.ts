import unhomoglyph from 'unhomoglyph';

/**
 * Unicode rules for user text (names, descriptions): well-formedness, the scripts a name mixes, and the keys two
 * names are compared on. Pure functions of the string, the same in the client, the API, activities and workflows.
 */

/** Whether `text` is well-formed UTF-16 (no lone surrogate): what JSON and SQLite would otherwise replace silently. */
export function isWellFormed(text: string): boolean {
  return !/\p{Cs}/u.test(text);
}

/**
 * A full case fold: JavaScript has none built in, and `toLowerCase` alone keeps `ß` apart from `SS`. Lower, upper,
 * then lower again brings every case variant to one form (`ẞ`, `ß`, `SS`, `ss` → `ss`; `Σ`/`σ`/`ς` by position; `ﬁ`
 * → `fi`); NFC undoes the decompositions upper-casing makes (`ǰ` → `J̌`).
 */
export function caseFold(text: string): string {
  return text.toLowerCase().toUpperCase().toLowerCase().normalize('NFC');
}

/**
 * The key names are told apart by when a person reads them: NFKC (fullwidth `Ｎ` → `N`, `ﬁ` → `fi`), the case fold,
 * then the UTS #39 skeleton (Unicode's confusables.txt mapping, through `unhomoglyph`: Cyrillic `а` → `a`, `rn` and
 * `m` alike, `1` and `l` alike) on the decomposed form, folded again as the skeleton's targets have case. As
 * confusables.txt is case-sensitive (`I` looks like `l`, `i` does not) while the fold makes `I` and `i` one, the
 * skeleton is taken once more of the upper-case form, so that look-alikes of either case collide (`NightIy`,
 * `NIGHTLY`, `nightly`). Not meant to be read: two names are confusable exactly when their keys are equal.
 */
export function confusableKey(text: string): string {
  const skeleton = (s: string) => unhomoglyph(s.normalize('NFD')).normalize('NFD');
  const lower = caseFold(skeleton(caseFold(text.normalize('NFKC'))));
  return caseFold(skeleton(lower.toUpperCase()));
}

/**
 * ISO 15924 codes of the Unicode scripts (Unicode 16), each a regular expression property value. Zyyy (Common:
 * digits, punctuation) and Zinh (Inherited: most combining marks) go with any script.
 */
const SCRIPTS =
  `Adlm Aghb Ahom Arab Armi Armn Avst Bali Bamu Bass Batk Beng Bhks Bopo Brah Brai Bugi Buhd Cakm Cans Cari
  Cham Cher Chrs Copt Cpmn Cprt Cyrl Deva Diak Dogr Dsrt Dupl Egyp Elba Elym Ethi Gara Geor Glag Gong Gonm Goth Gran
  Grek Gujr Gukh Guru Hang Hani Hano Hatr Hebr Hira Hluw Hmng Hmnp Hung Ital Java Kali Kana Kawi Khar Khmr Khoj Kits
  Knda Krai Kthi Lana Laoo Latn Lepc Limb Lina Linb Lisu Lyci Lydi Mahj Maka Mand Mani Marc Medf Mend Merc Mero Mlym
  Modi Mong Mroo Mtei Mult Mymr Nagm Nand Narb Nbat Newa Nkoo Nshu Ogam Olck Onao Orkh Orya Osge Osma Ougr Palm Pauc
  Perm Phag Phli Phlp Phnx Plrd Prti Rjng Rohg Runr Samr Sarb Saur Sgnw Shaw Shrd Sidd Sind Sinh Sogd Sogo Sora Soyo
  Sund Sunu Sylo Syrc Tagb Takr Tale Talu Taml Tang Tavt Telu Tfng Tglg Thaa Thai Tibt Tirh Tnsa Todr Toto Tutg Ugar
  Vaii Vith Wara Wcho Xpeo Xsux Yezi Yiii Zanb`.split(/\s+/);

/** UTS #39 §5.1: the writing systems a script belongs to, so that Han, Hiragana and Katakana resolve to Japanese. */
const AUGMENTED: Record<string, string[]> = {
  Hani: ['Hanb', 'Jpan', 'Kore'],
  Hira: ['Jpan'],
  Kana: ['Jpan'],
  Hang: ['Kore'],
  Bopo: ['Hanb'],
};

let scriptPatterns: [string, RegExp][] | undefined;
const COMMON = /^[\p{scx=Zyyy}\p{scx=Zinh}]$/u;

/** The augmented Script_Extensions of one code point; undefined for Common and Inherited (they go with any). */
function scriptsOf(char: string): Set<string> | undefined {
  if (COMMON.test(char)) return undefined;
  // Built on first use: a hundred and seventy patterns that most processes never need.
  scriptPatterns ??= SCRIPTS.map((code) => [code, new RegExp(`^\\p{scx=${code}}$`, 'u')]);
  const scripts = scriptPatterns.filter(([, pattern]) => pattern.test(char)).map(([code]) => code);
  // A script newer than the list above: its own set, so a name wholly in it is still single-script.
  return new Set(scripts.length === 0 ? ['Zzzz'] : scripts.flatMap((code) => [code, ...(AUGMENTED[code] ?? [])]));
}

/** The intersection of the script sets of `chars` (UTS #39's resolved script set); undefined when all are Common. */
function resolvedScripts(chars: string[]): Set<string> | undefined {
  let resolved: Set<string> | undefined;
  for (const char of chars) {
    const scripts = scriptsOf(char);
    if (scripts) resolved = resolved ? new Set([...resolved].filter((s) => scripts.has(s))) : scripts;
  }
  return resolved;
}

/**
 * UTS #39 §5.2 "Highly Restrictive": the text is in one script (Common and Inherited characters go with any), or is
 * Latin with Han, Hiragana and Katakana (Japanese), with Han and Bopomofo, or with Han and Hangul (Korean). So
 * `Nightlу` with a Cyrillic `у` is refused, `東京 backup` and `ნიკა-01` are not.
 */
export function isHighlyRestrictive(text: string): boolean {
  const chars = [...text];
  const whole = resolvedScripts(chars);
  if (!whole || whole.size > 0) return true;
  const nonLatin = resolvedScripts(chars.filter((char) => !scriptsOf(char)?.has('Latn')));
  return !nonLatin || ['Jpan', 'Hanb', 'Kore'].some((system) => nonLatin.has(system));
}
