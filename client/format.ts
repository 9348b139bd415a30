import { describeCaptureLine, describeConsistencyLine } from '../domain/model';
import type { SnapshotRecord } from '../domain/model';

/** C0 controls but the newline, DEL and C1 controls: what a terminal may act on (ESC sequences, CSI, bell). */
/* eslint-disable no-control-regex -- matching control characters is the point */
const CONTROLS = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/g;
const CONTROLS_AND_NEWLINE = /[\u0000-\u001f\u007f-\u009f]/g;
/* eslint-enable no-control-regex */

/**
 * User text made safe to print on a terminal: every C0 and C1 control becomes a visible `\xHH` (ESC → `\x1b`), so a
 * stored escape sequence is shown, never run. Newlines stay when `multiline` (descriptions, lists of lines); a
 * table cell or a one-line field passes false. The one place user text is escaped: the CLI prints through it.
 */
export function escapeControls(text: string, multiline = true): string {
  return text.replace(multiline ? CONTROLS : CONTROLS_AND_NEWLINE, (char) => {
    return `\\x${char.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}

/** 1536 → "1.5 KiB" */
export function formatBytes(bytes: number | null): string {
  if (bytes === null) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatRatio(ratio: number | null): string {
  return ratio === null ? '-' : `${ratio.toFixed(2)}x`;
}

/** Plain aligned columns for terminal tables; a cell's controls and newlines are escaped, so each row is one line. */
export function formatTable(header: string[], cells: string[][]): string {
  const rows = cells.map((row) => row.map((cell) => escapeControls(cell, false)));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export function snapshotRows(snapshots: SnapshotRecord[]): string {
  return formatTable(
    ['ID', 'NAME', 'VM', 'REGION', 'STATUS', 'LOGICAL', 'STORED', 'ADDED', 'DEDUP', 'COMPRESSION', 'CREATED'],
    snapshots.map((s) => [
      s.id,
      s.name,
      s.vmName,
      s.region,
      s.status,
      formatBytes(s.logicalBytes),
      formatBytes(s.storedBytes),
      formatBytes(s.addedBytes),
      formatRatio(s.dedupRatio),
      formatRatio(s.compressionRatio),
      s.createdAt,
    ]),
  );
}

export function snapshotDetails(s: SnapshotRecord): string {
  const rows: [string, string][] = [
    ['ID', s.id],
    ['Name', s.name],
    ['Description', s.description || '-'],
    ['VM', `${s.vmName} (${s.vmId})`],
    ['Region', s.region],
    ['Status', s.status],
    ['Create as image', s.createAsImage ? 'yes' : 'no'],
    ['Consistency', describeConsistencyLine(s.consistency) ?? '- (not initiated)'],
    ['Policy', s.policyId ?? '- (not scheduled)'],
    ['Incremental parent', s.parentSnapshotId ?? '- (full)'],
    ['Capture', describeCaptureLine(s) ?? '- (not captured)'],
    ['Logical size', formatBytes(s.logicalBytes)],
    ['Stored size', `${formatBytes(s.storedBytes)} (compressed bytes of the distinct chunks it references)`],
    ['Added to repository', formatBytes(s.addedBytes)],
    ['Dedup ratio', formatRatio(s.dedupRatio)],
    ['Compression ratio', formatRatio(s.compressionRatio)],
    ['Created', s.createdAt],
    ['Completed', s.completedAt ?? '-'],
    ['Workflow', s.workflowId],
  ];
  if (s.failureType) rows.push(['Failure', `${s.failureType}: ${s.failureReason ?? ''}`]);
  return formatDetails(rows);
}

/** One "Key:  value" line per row, values aligned; the lines of a multi-line value stay in the value column. */
export function formatDetails(rows: [string, string][]): string {
  return rows.map(([k, v]) => `${`${k}:`.padEnd(21)}${v.replaceAll('\n', `\n${' '.repeat(21)}`)}`).join('\n');
}
