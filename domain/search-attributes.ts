import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/**
 * Custom search attributes every snapshot workflow carries, so operators can find runs in the Web UI with queries
 * such as `SnapshotAccount = "acme" AND SnapshotStatus = "FAILED"`. All are Keywords (exact match, filterable).
 */
export const SnapshotAccount = defineSearchAttributeKey('SnapshotAccount', SearchAttributeType.KEYWORD);
export const SnapshotVm = defineSearchAttributeKey('SnapshotVm', SearchAttributeType.KEYWORD);
export const SnapshotRegion = defineSearchAttributeKey('SnapshotRegion', SearchAttributeType.KEYWORD);
export const SnapshotName = defineSearchAttributeKey('SnapshotName', SearchAttributeType.KEYWORD);
export const SnapshotStatus = defineSearchAttributeKey('SnapshotStatus', SearchAttributeType.KEYWORD);

/** Names the dev server must register up front (`--search-attribute Name=Keyword`). */
export const SEARCH_ATTRIBUTE_NAMES = [SnapshotAccount, SnapshotVm, SnapshotRegion, SnapshotName, SnapshotStatus].map(
  (key) => key.name,
);
