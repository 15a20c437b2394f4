import { gapEntryOf } from '../clickhouse/gap-ledger';
import { nodeTombstone, toNodeGapRow, toNodeInsertLine } from '../clickhouse/node-clickhouse-row.mapper';
import { spanTombstone, toSpanGapRow, toSpanInsertLine } from '../clickhouse/span-clickhouse-row.mapper';
import { nodeHistory, spanHistory } from './history-entities';

const PROJECT = '0a000000-0000-4000-8000-000000000001';
const deletedSpan = spanTombstone(
  {
    project_id: PROJECT,
    trace_id: 'ab'.repeat(16),
    span_id: 'cd'.repeat(8),
    created_at: '2026-11-22T23:59:59.999999Z',
    start_time: '2026-11-22T23:59:58.000001Z',
  },
  1_700_000_000_000_001n,
);
const deletedNode = nodeTombstone(
  {
    project_id: PROJECT,
    node_id: '0b000000-0000-4000-8000-000000000002',
    created_at: '2026-11-22T10:00:00.000001Z',
    tree_id: '0c000000-0000-4000-8000-000000000003',
    time_start: '2026-11-22T09:59:59.500000Z',
  },
  1_700_000_000_000_001n,
);

describe('gap entries, as the writer records them and a replay reads them', () => {
  it('give back the key and the very tombstone the mirror would have written, at the replay\'s version', () => {
    const version = 1_800_000_000_000_000n;
    const span = spanHistory.readGapEntry(PROJECT, gapEntryOf(toSpanGapRow(deletedSpan)));
    expect(span.key).toEqual([deletedSpan.trace_id, deletedSpan.span_id]);
    expect(span.tombstone?.createdAt).toBe(deletedSpan.created_at);
    expect(span.tombstone?.lineAt(version)).toBe(toSpanInsertLine({ ...deletedSpan, version }));

    const node = nodeHistory.readGapEntry(PROJECT, gapEntryOf(toNodeGapRow(deletedNode)));
    expect(node.key).toEqual([deletedNode.node_id]);
    expect(node.tombstone?.lineAt(version)).toBe(toNodeInsertLine({ ...deletedNode, version }));
  });

  it('give their ids in lower case, as Postgres gives them back (replay compares keys as text)', () => {
    const span = spanHistory.readGapEntry(PROJECT, ['AB'.repeat(16), 'CD'.repeat(8), deletedSpan.created_at, deletedSpan.start_time]);
    expect(span.key).toEqual(['ab'.repeat(16), 'cd'.repeat(8)]);
    expect(span.tombstone?.lineAt(1n)).toBe(toSpanInsertLine({ ...deletedSpan, version: 1n }));
    const upper = [deletedNode.node_id.toUpperCase(), deletedNode.created_at, deletedNode.tree_id.toUpperCase(), deletedNode.time_start];
    const node = nodeHistory.readGapEntry(PROJECT, upper);
    expect(node.key).toEqual([deletedNode.node_id]);
    expect(node.tombstone?.lineAt(1n)).toBe(toNodeInsertLine({ ...deletedNode, version: 1n }));
  });

  it('recorded with the key alone (before entries carried tombstones) give the key and no tombstone', () => {
    expect(spanHistory.readGapEntry(PROJECT, ['ab'.repeat(16), 'cd'.repeat(8)])).toEqual({ key: ['ab'.repeat(16), 'cd'.repeat(8)], tombstone: null });
    expect(nodeHistory.readGapEntry(PROJECT, [deletedNode.node_id])).toEqual({ key: [deletedNode.node_id], tombstone: null });
  });

  it.each([
    ['a span entry of 3 strings', spanHistory, ['a', 'b', '2026-11-22T10:00:00Z'], /is not 2 strings \(a key\) or 4 \(a key, its created_at and tombstone fields\)/],
    ['a node entry of 2 strings', nodeHistory, [deletedNode.node_id, '2026-11-22T10:00:00Z'], /is not 1 strings \(a key\) or 4/],
    ['a number in an entry', nodeHistory, [42], /gap entry \[42\] is not/],
    ['an entry that is not an array', nodeHistory, { node_id: 'x' }, /gap entry \{"node_id":"x"\} is not/],
    ['a created_at that is not a time', spanHistory, ['ab'.repeat(16), 'cd'.repeat(8), 'yesterday', '2026-11-22T10:00:00Z'], /not an ISO-8601 timestamp: "yesterday"/],
    ['a start time that is not a time', spanHistory, ['ab'.repeat(16), 'cd'.repeat(8), '2026-11-22T10:00:00Z', 'soon'], /^gap entry .*: not an ISO-8601 timestamp: "soon"/],
    ['a span id that is not 16 hex digits', spanHistory, ['ab'.repeat(16), 'xyz', '2026-11-22T10:00:00Z', '2026-11-22T10:00:00Z'], /^gap entry \["ab/],
    ['a start time past its month', spanHistory, ['ab'.repeat(16), 'cd'.repeat(8), '2026-11-22T10:00:00Z', '2026-02-30T10:00:00.000000Z'], /not an ISO-8601 timestamp: "2026-02-30/],
    ['a key-only span entry whose span id is not hex', spanHistory, ['ab'.repeat(16), 'nothex!!nothex!!'], /^gap entry .*: span id must be 16 hex characters, got "nothex!!nothex!!"$/],
    ['a key-only node entry whose id is not a UUID', nodeHistory, ['not-a-uuid'], /node id "not-a-uuid" must be a UUID/],
    ['a tree id that is not a UUID', nodeHistory, [deletedNode.node_id, '2026-11-22T10:00:00Z', 'tree-1', '2026-11-22T10:00:00Z'], /tree id "tree-1" must be a UUID/],
  ])('are refused, naming them: %s', (_, entity, entry, message) => {
    expect(() => entity.readGapEntry(PROJECT, entry)).toThrow(message);
  });
});
