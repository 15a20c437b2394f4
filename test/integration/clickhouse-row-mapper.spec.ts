import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { ClickHouseSink, linesBody } from '../../src/dbs/clickhouse/clickhouse-sink';
import { MirroredNode, NODE_COLUMNS, NodeRecord, nodeTombstone, toNodeClickHouseLine, toNodeInsertLine } from '../../src/dbs/clickhouse/node-clickhouse-row.mapper';
import {
  MirroredSpan,
  SPAN_COLUMNS,
  SpanRecord,
  spanTombstone,
  toSpanClickHouseLine,
  toSpanClickHouseRow,
  toSpanInsertLine,
} from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { isoToMicros, microsToIso } from '../../src/tracing/timestamp';
import { Json, SpanInput } from '../../src/tracing/span';
import { NodeInput } from '../../src/observability/node';
import { createTestClickHouse, TestClickHouse } from '../support/clickhouse';
import { makeNode, makeSpan, uuid } from '../support/fixtures';
import { NodeMirrorQueries, SpanMirrorQueries } from '../support/mirror-reads';

const CREATED = '2026-11-20T10:00:00.000001Z';

/** A stored span as Postgres would hand it to the mirror, versioned by its updated_at. */
function mirroredSpan(projectId: string, input: Partial<SpanInput> = {}, stored: Partial<MirroredSpan> = {}): MirroredSpan {
  const updated_at = stored.updated_at ?? CREATED;
  return {
    ...makeSpan(input),
    project_id: projectId,
    created_at: CREATED,
    updated_at,
    created_by_id: null,
    updated_by_id: null,
    version: isoToMicros(updated_at),
    deleted: false,
    ...stored,
  };
}

function mirroredNode(projectId: string, input: Partial<NodeInput> = {}, stored: Partial<MirroredNode> = {}): MirroredNode {
  const updated_at = stored.updated_at ?? CREATED;
  return {
    ...makeNode(input),
    project_id: projectId,
    created_at: CREATED,
    updated_at,
    version: isoToMicros(updated_at),
    deleted: false,
    ...stored,
  };
}

/** About 1 MB of JSON with every kind of value and plenty of non-ASCII text. */
function largeJson(): { [key: string]: Json } {
  const items = Array.from({ length: 6000 }, (_, i) => ({
    i,
    text: `ünïcødé ✓ 日本語 🚀 "quoted" \\ back\nslash ${i}`,
    ratio: i / 7,
    flag: i % 2 === 0,
    none: null,
    nested: { deep: [1, 2.5, -3e-7, 'x'] },
  }));
  return { items, big: 'é'.repeat(200_000), max_safe: Number.MAX_SAFE_INTEGER };
}

/** fast-check's JSON with any unicode text; a fixed seed, so a failure reproduces. */
const jsonObjects = (count: number, seed: number) =>
  fc.sample(fc.dictionary(fc.string({ unit: 'grapheme' }), fc.jsonValue({ stringUnit: 'grapheme' }), { maxKeys: 6 }), { numRuns: count, seed }) as {
    [key: string]: Json;
  }[];
const jsonArrays = (count: number, seed: number) => fc.sample(fc.array(fc.jsonValue({ stringUnit: 'grapheme' }), { maxLength: 4 }), { numRuns: count, seed }) as Json[][];

/** Later than `iso` by `micros` microseconds. */
const later = (iso: string, micros: bigint) => microsToIso(isoToMicros(iso) + micros);

describe('ClickHouse row mappers, sink and DAOs (real engine)', () => {
  let ch: TestClickHouse;
  let sink: ClickHouseSink;
  let spans: SpanMirrorQueries;
  let nodes: NodeMirrorQueries;

  beforeAll(async () => {
    ch = await createTestClickHouse();
    sink = new ClickHouseSink(ch.clients.insert, { compress: true });
    spans = new SpanMirrorQueries(ch.clients.query);
    nodes = new NodeMirrorQueries(ch.clients.query);
  });
  afterAll(async () => ch?.drop());

  const insertSpans = (rows: SpanRecord[], token: string = randomUUID()) =>
    sink.insert('spans', linesBody(rows.map(toSpanInsertLine)), token);
  const insertNodes = (rows: NodeRecord[], token: string = randomUUID()) =>
    sink.insert('nodes', linesBody(rows.map(toNodeInsertLine)), token);

  /** Physical rows, before FINAL collapses versions. */
  async function storedRows(table: 'spans' | 'nodes', projectId: string): Promise<number> {
    const result = await ch.clients.query.query({
      query: `SELECT count() AS n FROM ${table} WHERE project_id = {projectId:UUID}`,
      query_params: { projectId },
      format: 'JSONEachRow',
    });
    return Number((await result.json<{ n: string }>())[0].n);
  }

  it('answers ping', async () => {
    expect(await sink.ping()).toBe(true);
  });

  it('round-trips every span column exactly: unicode, 1 MB JSON, nulls, microseconds, 64-bit ids', async () => {
    const projectId = uuid();
    const traceId = '00000000000000000000000000000001';
    const originals = [
      mirroredSpan(
        projectId,
        {
          trace_id: traceId,
          span_id: 'ffffffffffffffff',
          parent_id: null,
          span_name: 'ünïcødé ✓ 日本語 🚀 עברית "q" \\ \t\n',
          start_time: '1900-01-01T00:00:00.000000Z',
          end_time: '2299-12-31T23:59:59.999999Z',
          status_code: 'STATUS_CODE_ERROR',
          status_message: 'boom — 💥',
          attributes: largeJson(),
          references: [{ id: uuid(), type: 'testset' }],
          links: [{ trace_id: 'ab'.repeat(16), span_id: 'cd'.repeat(8), attributes: {} }],
          hashes: [{ id: 'h1' }],
          events: [{ name: 'exception', timestamp: '2026-11-20T10:00:00.500001Z', attributes: { msg: 'ünïcødé' } }],
          exception: { type: 'ValueError', message: 'bad', stacktrace: 'line 1\nline 2' },
        },
        { created_by_id: randomUUID(), updated_by_id: randomUUID(), updated_at: later(CREATED, 5n) },
      ),
      mirroredSpan(projectId, {
        trace_id: traceId,
        span_id: '0000000000000001',
        parent_id: 'ffffffffffffffff',
        start_time: '2026-11-20T10:00:00.000001Z',
        end_time: '2026-11-20T10:00:00.999999Z',
        attributes: {},
        references: null,
        links: null,
        hashes: null,
        events: null,
        exception: null,
        status_message: null,
      }),
      mirroredSpan(projectId, { trace_id: traceId, span_id: '8000000000000000', parent_id: '7fffffffffffffff' }),
    ];
    expect(toSpanClickHouseRow(originals[0])).toMatchObject({
      trace_id: '00000000-0000-0000-0000-000000000001',
      span_id: '18446744073709551615',
      start_time: '1900-01-01 00:00:00.000000',
    });
    await insertSpans(originals);

    const keys = originals.map((s) => ({ trace_id: s.trace_id, span_id: s.span_id }));
    const byKey = (list: MirroredSpan[]) => [...list].sort((a, b) => a.span_id.localeCompare(b.span_id));
    expect(byKey(await spans.readSpans(projectId, keys))).toEqual(byKey(originals));
    expect(byKey(await spans.readTrace(projectId, traceId))).toEqual(byKey(originals));
    expect(await spans.readSpans(projectId, [{ trace_id: traceId, span_id: '0000000000000002' }])).toEqual([]);
    expect(await spans.readSpans(uuid(), keys)).toEqual([]);
  });

  it('round-trips every node column exactly', async () => {
    const projectId = uuid();
    const treeId = uuid();
    const originals = [
      mirroredNode(
        projectId,
        {
          tree_id: treeId,
          node_name: 'ünïcødé ✓ 日本語 🚀',
          time_start: '2026-11-20T10:00:00.000001Z',
          time_end: '2299-12-31T23:59:59.999999Z',
          status: { code: 'ERROR', message: 'boom — 💥' },
          data: largeJson(),
          refs: { app: uuid() },
          exception: { type: 'E', message: 'm' },
          links: [{ tree_id: uuid() }],
          otel: { kind: 'SPAN_KIND_SERVER', events: [] },
        },
        { updated_at: later(CREATED, 1n) },
      ),
      mirroredNode(projectId, {
        tree_id: treeId,
        root_id: uuid(),
        parent_id: uuid(),
        time_start: '2026-11-20T10:00:00.000002Z',
        data: null,
        metrics: null,
        meta: null,
        refs: null,
        exception: null,
        links: null,
        otel: null,
        status: { code: 'OK', message: null },
      }),
    ];
    await insertNodes(originals);
    const byId = (list: MirroredNode[]) => [...list].sort((a, b) => a.node_id.localeCompare(b.node_id));
    expect(byId(await nodes.readNodes(projectId, originals.map((n) => n.node_id)))).toEqual(byId(originals));
    expect(await nodes.readTree(projectId, treeId)).toEqual(originals);
  });

  it('an update with a higher version replaces the span; an older version arriving later does not', async () => {
    const projectId = uuid();
    const first = mirroredSpan(projectId, { span_name: 'v1' });
    const second = { ...first, span_name: 'v2', updated_at: later(CREATED, 10n), version: isoToMicros(CREATED) + 10n };
    const stale = { ...first, span_name: 'stale', updated_at: later(CREATED, 5n), version: isoToMicros(CREATED) + 5n };
    const key = [{ trace_id: first.trace_id, span_id: first.span_id }];

    await insertSpans([first]);
    await insertSpans([second]);
    expect(await spans.readSpans(projectId, key)).toEqual([second]);
    await insertSpans([stale]);
    expect(await spans.readSpans(projectId, key)).toEqual([second]);
    expect(await storedRows('spans', projectId)).toBe(3);
  });

  it('a tombstone with a higher version hides the span everywhere; an older live row cannot revive it', async () => {
    const projectId = uuid();
    const kept = mirroredSpan(projectId);
    const gone = mirroredSpan(projectId, { trace_id: kept.trace_id });
    const deletedAt = later(CREATED, 20n);
    await insertSpans([kept, gone]);
    await insertSpans([spanTombstone(gone, isoToMicros(deletedAt))]);
    await insertSpans([{ ...gone, span_name: 'late update', updated_at: later(CREATED, 7n), version: isoToMicros(CREATED) + 7n }]);

    const keys = [kept, gone].map((s) => ({ trace_id: s.trace_id, span_id: s.span_id }));
    expect(await spans.readSpans(projectId, keys)).toEqual([kept]);
    expect(await spans.readTrace(projectId, kept.trace_id)).toEqual([kept]);
    expect(await spans.countByProjectDay({ projectId })).toEqual([
      { project_id: projectId, day: '2026-11-20', rows: 1, version_sum: kept.version },
    ]);
  });

  it('updates and tombstones work the same way for nodes', async () => {
    const projectId = uuid();
    const node = mirroredNode(projectId, { node_name: 'v1' });
    const other = mirroredNode(projectId, { tree_id: node.tree_id });
    const updated = { ...node, node_name: 'v2', updated_at: later(CREATED, 3n), version: isoToMicros(CREATED) + 3n };
    await insertNodes([node, other]);
    await insertNodes([updated]);
    await insertNodes([{ ...node, node_name: 'stale', version: isoToMicros(CREATED) + 1n }]);
    expect(await nodes.readNodes(projectId, [node.node_id])).toEqual([updated]);

    await insertNodes([nodeTombstone(other, isoToMicros(CREATED) + 9n)]);
    expect(await nodes.readTree(projectId, node.tree_id)).toEqual([updated]);
    expect(await nodes.countByProjectDay({ projectId })).toEqual([
      { project_id: projectId, day: '2026-11-20', rows: 1, version_sum: updated.version },
    ]);
  });

  it('a tombstone carries its key and skip-indexed columns only, and hides only its own key, whatever the skip-index settings', async () => {
    const projectId = uuid();
    const span = mirroredSpan(projectId, { attributes: largeJson() });
    const node = mirroredNode(projectId, { data: largeJson() });
    const tombstone = spanTombstone(span, span.version + 1n);
    expect(JSON.parse(toSpanInsertLine(tombstone))).toEqual({
      project_id: projectId,
      trace_id: toSpanClickHouseRow(span).trace_id,
      span_id: toSpanClickHouseRow(span).span_id,
      start_time: toSpanClickHouseRow(span).start_time,
      created_at: '2026-11-20 10:00:00.000001',
      version: String(span.version + 1n),
      is_deleted: 1,
    });
    expect(Object.keys(JSON.parse(toNodeInsertLine(nodeTombstone(node, node.version + 1n))))).toEqual([
      'project_id', 'node_id', 'tree_id', 'time_start', 'created_at', 'version', 'is_deleted',
    ]);

    // The same trace and span created on another day is another row: a tombstone of one leaves the other.
    const otherDay = { ...span, created_at: '2026-11-21T10:00:00.000001Z' };
    await insertSpans([span, otherDay]);
    await insertNodes([node]);
    await insertSpans([tombstone]);
    await insertNodes([nodeTombstone(node, node.version + 1n)]);
    expect(await spans.readSpans(projectId, [{ trace_id: span.trace_id, span_id: span.span_id }])).toEqual([otherDay]);
    expect(await nodes.readTree(projectId, node.tree_id)).toEqual([]);

    // Filters on the skip-indexed columns (start_time; tree_id, time_start) with the indexes applied before FINAL,
    // exact mode or not: the tombstone falls in the same granules as its row, so the deleted row does not come back.
    const count = async (query: string, params: Record<string, unknown>, exactMode: 0 | 1) => {
      const result = await ch.clients.query.query({
        query: `${query} SETTINGS use_skip_indexes_if_final = 1, use_skip_indexes_if_final_exact_mode = ${exactMode}`,
        query_params: { projectId, ...params },
        format: 'JSONEachRow',
      });
      return Number((await result.json<{ n: string }>())[0].n);
    };
    for (const exactMode of [0, 1] as const) {
      const spanQuery = `SELECT count() AS n FROM spans FINAL WHERE project_id = {projectId:UUID} AND is_deleted = 0
                         AND start_time >= {since:DateTime64(6)} AND created_at < {nextDay:DateTime64(6)}`;
      expect(await count(spanQuery, { since: '2026-01-01 00:00:00.000000', nextDay: '2026-11-21 00:00:00.000000' }, exactMode)).toBe(0);
      const nodeQuery = `SELECT count() AS n FROM nodes FINAL WHERE project_id = {projectId:UUID} AND is_deleted = 0
                         AND tree_id = {tree:UUID} AND time_start >= {since:DateTime64(6)}`;
      expect(await count(nodeQuery, { tree: node.tree_id, since: '2026-01-01 00:00:00.000000' }, exactMode)).toBe(0);
    }

    // Stored as is, the tombstone's other columns hold the table's defaults.
    const raw = await ch.clients.query.query({
      query: 'SELECT span_name, attributes, parent_id FROM spans WHERE project_id = {projectId:UUID} AND is_deleted = 1',
      query_params: { projectId },
      format: 'JSONEachRow',
    });
    expect(await raw.json()).toEqual([{ span_name: '', attributes: '', parent_id: null }]);
  });

  it('stores a batch once when it is sent again with the same dedup token', async () => {
    // These counts are of stored inserts. A background merge collapses same-key rows, so one between the
    // inserts and a count would read 3 for 6 here (seen under load) or, worse, 3 for a repeat that was not
    // dropped: merges wait until the counts are taken.
    await ch.clients.query.command({ query: 'SYSTEM STOP MERGES spans' });
    await ch.clients.query.command({ query: 'SYSTEM STOP MERGES nodes' });
    try {
      const projectId = uuid();
      const batch = [mirroredSpan(projectId), mirroredSpan(projectId), mirroredSpan(projectId)];
      await insertSpans(batch, 'batch-token-1');
      await insertSpans(batch, 'batch-token-1');
      expect(await storedRows('spans', projectId)).toBe(3);

      // The token, not the content, decides: a new token stores the rows again (FINAL still shows each once).
      await insertSpans(batch, 'batch-token-2');
      expect(await storedRows('spans', projectId)).toBe(6);
      expect(await spans.readSpans(projectId, batch.map((s) => ({ trace_id: s.trace_id, span_id: s.span_id })))).toHaveLength(3);

      const nodeProject = uuid();
      const nodeBatch = [mirroredNode(nodeProject), mirroredNode(nodeProject)];
      await insertNodes(nodeBatch, 'node-token');
      await insertNodes(nodeBatch, 'node-token');
      expect(await storedRows('nodes', nodeProject)).toBe(2);
    } finally {
      await ch.clients.query.command({ query: 'SYSTEM START MERGES spans' });
      await ch.clients.query.command({ query: 'SYSTEM START MERGES nodes' });
    }
  });

  it('counts live rows and sums versions per project and created_at day, within a time range', async () => {
    const a = uuid();
    const b = uuid();
    const day1 = '2026-11-18T23:59:59.999999Z';
    const day2 = '2026-11-19T00:00:00.000000Z';
    const rows = [
      mirroredSpan(a, {}, { created_at: day1, updated_at: day1, version: isoToMicros(day1) }),
      mirroredSpan(a, {}, { created_at: day1, updated_at: later(day1, 100n), version: isoToMicros(day1) + 100n }),
      mirroredSpan(a, {}, { created_at: day2, updated_at: day2, version: isoToMicros(day2) }),
      mirroredSpan(b, {}, { created_at: day2, updated_at: day2, version: isoToMicros(day2) }),
    ];
    await insertSpans(rows);
    // An update of a row adds no net row: the count stays, the version sum moves.
    const bumped = { ...rows[0], span_name: 'bumped', version: rows[0].version + 1_000n };
    await insertSpans([bumped]);

    const counts = (await spans.countByProjectDay({ since: '2026-11-18T00:00:00Z', until: '2026-11-20T00:00:00Z' })).filter(
      (c) => c.project_id === a || c.project_id === b,
    );
    const expected = [
      { project_id: a, day: '2026-11-18', rows: 2, version_sum: bumped.version + rows[1].version },
      { project_id: a, day: '2026-11-19', rows: 1, version_sum: rows[2].version },
      { project_id: b, day: '2026-11-19', rows: 1, version_sum: rows[3].version },
    ].sort((x, y) => (x.project_id + x.day).localeCompare(y.project_id + y.day));
    expect(counts).toEqual(expected);

    expect(await spans.countByProjectDay({ projectId: a, since: day2 })).toEqual([expected.find((e) => e.project_id === a && e.day === '2026-11-19')]);
    expect(await spans.countByProjectDay({ projectId: a, until: day2 })).toEqual([expected.find((e) => e.day === '2026-11-18')]);
  });

  it('reads a project-day bucket page by page (keyset), without tombstones', async () => {
    const projectId = uuid();
    const day = '2026-11-17T12:00:00.000000Z';
    const rows = Array.from({ length: 7 }, () => mirroredSpan(projectId, {}, { created_at: day, updated_at: day, version: isoToMicros(day) }));
    const elsewhere = mirroredSpan(projectId, {}, { created_at: '2026-11-16T12:00:00.000000Z' });
    await insertSpans([...rows, elsewhere]);
    await insertSpans([spanTombstone(rows[3], rows[3].version + 1n)]);

    const pages: MirroredSpan[][] = [];
    for await (const page of spans.readBucket(projectId, '2026-11-17', 2)) pages.push(page);
    expect(pages.map((p) => p.length)).toEqual([2, 2, 2]);
    const live = rows.filter((_, i) => i !== 3);
    const read = pages.flat();
    expect(new Set(read.map((s) => s.span_id))).toEqual(new Set(live.map((s) => s.span_id)));
    expect(read).toHaveLength(live.length);

    const nodeRows = Array.from({ length: 5 }, () => mirroredNode(projectId, {}, { created_at: day }));
    await insertNodes(nodeRows);
    const nodePages: MirroredNode[][] = [];
    for await (const page of nodes.readBucket(projectId, '2026-11-17', 2)) nodePages.push(page);
    expect(nodePages.map((p) => p.length)).toEqual([2, 2, 1]);
    expect(nodePages.flat().map((n) => n.node_id).sort()).toEqual(nodeRows.map((n) => n.node_id).sort());
  });

  /** The rows of a project as ClickHouse gives them back, each serialized as the stored row's line, by key. */
  async function storedLines(table: 'spans' | 'nodes', columns: readonly string[], projectId: string, keyOf: (row: Record<string, string>) => string) {
    const result = await ch.clients.query.query({
      query: `SELECT ${columns.map((c) => `\`${c}\``).join(', ')} FROM ${table} WHERE project_id = {projectId:UUID}`,
      query_params: { projectId },
      format: 'JSONEachRow',
    });
    const rows = await result.json<Record<string, string>>();
    return new Map(rows.map((row) => [keyOf(row), JSON.stringify(row)]));
  }

  it("stores the mirror's insert line as exactly the stored row's line: any JSON, any unicode, scalars too", async () => {
    // The insert line carries payloads as JSON values, the stored line as their text; verify's
    // checksums compare the stored line, so the two must agree byte for byte, not just parse alike.
    const projectId = uuid();
    const objects = jsonObjects(60, 4242);
    const arrays = jsonArrays(60, 4243);
    const scalars: Json[] = ['a "string" payload', 0, -1.5e-7, 1e21, true, false];
    const spanRows = objects.map((attributes, i) =>
      mirroredSpan(projectId, {
        attributes,
        references: i % 3 === 0 ? null : arrays[i],
        links: arrays[(i + 1) % arrays.length],
        events: i % 2 === 0 ? null : arrays[(i + 2) % arrays.length],
        hashes: [objects[(i + 1) % objects.length]],
        // Not a shape the API accepts, but Json allows it: the scalar path must store its JSON text too.
        exception: (i < scalars.length ? scalars[i] : objects[(i + 2) % objects.length]) as MirroredSpan['exception'],
      }),
    );
    await insertSpans(spanRows);
    const storedSpans = await storedLines('spans', SPAN_COLUMNS, projectId, (row) => row.span_id);
    expect(storedSpans.size).toBe(spanRows.length);
    for (const span of spanRows) {
      const row = toSpanClickHouseRow(span);
      expect({ span_id: row.span_id, line: storedSpans.get(row.span_id) }).toEqual({ span_id: row.span_id, line: toSpanClickHouseLine(span) });
    }

    const nodeRows = objects.map((data, i) =>
      mirroredNode(projectId, { data, meta: objects[(i + 3) % objects.length], links: i % 2 ? null : arrays[i], otel: null }),
    );
    await insertNodes(nodeRows);
    const storedNodes = await storedLines('nodes', NODE_COLUMNS, projectId, (row) => row.node_id);
    for (const node of nodeRows) {
      expect({ node_id: node.node_id, line: storedNodes.get(node.node_id) }).toEqual({ node_id: node.node_id, line: toNodeClickHouseLine(node) });
    }
  });

  it('rejects a row the table does not accept instead of dropping a field', async () => {
    const line = JSON.stringify({ ...toSpanClickHouseRow(mirroredSpan(uuid())), unexpected: 1 });
    await expect(sink.insert('spans', linesBody([line]), randomUUID())).rejects.toThrow(/Unknown field found while parsing JSONEachRow format: unexpected/);
  });
});
