import request from 'supertest';
import { spanIdToUInt64 } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { SpanInput } from '../../src/tracing/span';
import { traceIdToUuid } from '../../src/tracing/trace-id';
import { NodeInput } from '../../src/observability/node';
import { createTestApp, TestApp } from '../support/app';
import { makeNode, makeSpan, spanId, traceId, uuid } from '../support/fixtures';
import { snapshotBothSides } from '../support/mirror';

/**
 * Two projects with overlapping data: the same trace, span and node ids in
 * both, each row marked with its owner. Project A's key tries every route
 * against B's data; B's rows must come through unchanged, A must never see
 * them, and the ClickHouse mirror must file every row under its own project.
 */

const SHARED_TRACE = traceId();
const SHARED_ROOT = spanId();
const SHARED_CHILD = spanId();
const B_ONLY_TRACE = traceId();
const B_ONLY_SPAN = spanId();
const SHARED_TREE = uuid();
const SHARED_NODE = uuid();
const B_ONLY_TREE = uuid();
const B_ONLY_NODE = uuid();
const B_SECRET = 'b-secret-4f1d';
const WINDOW = { oldest: '2026-11-20T00:00:00Z', newest: '2026-11-21T00:00:00Z' };

function spansOf(owner: string, extra: Record<string, unknown> = {}): SpanInput[] {
  const attributes = { owner, ...extra };
  return [
    makeSpan({ trace_id: SHARED_TRACE, span_id: SHARED_ROOT, span_name: `root-${owner}`, span_type: 'workflow', attributes }),
    makeSpan({ trace_id: SHARED_TRACE, span_id: SHARED_CHILD, parent_id: SHARED_ROOT, span_name: `child-${owner}`, attributes }),
  ];
}

function nodesOf(owner: string): NodeInput[] {
  return [makeNode({ node_id: SHARED_NODE, tree_id: SHARED_TREE, node_name: `node-${owner}`, meta: { owner } })];
}

describe('tenant isolation: a key of project A never reaches project B', () => {
  let t: TestApp;
  let a: { Authorization: string };
  let b: { Authorization: string };
  let projectA: string;
  let projectB: string;
  const http = () => request(t.url);

  /** B's rows as Postgres holds them, compared before and after each attack. */
  const rowsOfB = async () => ({
    spans: await t.database.db.selectFrom('spans').selectAll().where('project_id', '=', projectB).orderBy('trace_id').orderBy('span_id').execute(),
    nodes: await t.database.db.selectFrom('nodes').selectAll().where('project_id', '=', projectB).orderBy('node_id').execute(),
  });
  let bBefore: Awaited<ReturnType<typeof rowsOfB>>;

  beforeAll(async () => {
    t = await createTestApp({}, { clickhouse: true });
    projectA = t.projectId;
    a = { Authorization: `ApiKey ${t.apiKey}` };
    const other = await t.createApiKey();
    projectB = other.projectId;
    b = { Authorization: `ApiKey ${other.key}` };

    await http().post('/tracing/spans').set(a).send({ spans: spansOf(projectA) }).expect(201);
    const bSpans = [
      ...spansOf(projectB, { secret: B_SECRET }),
      makeSpan({ trace_id: B_ONLY_TRACE, span_id: B_ONLY_SPAN, span_name: 'b-only', status_code: 'STATUS_CODE_ERROR', attributes: { owner: projectB, secret: B_SECRET } }),
    ];
    await http().post('/tracing/spans').set(b).send({ spans: bSpans }).expect(201);
    await http().post('/observability/nodes').set(a).send({ nodes: nodesOf(projectA) }).expect(201);
    await http().post('/observability/nodes').set(b).send({
      nodes: [...nodesOf(projectB), makeNode({ node_id: B_ONLY_NODE, tree_id: B_ONLY_TREE, node_name: 'b-only', meta: { owner: projectB } })],
    }).expect(201);
    bBefore = await rowsOfB();
    expect(bBefore.spans).toHaveLength(3);
    expect(bBefore.nodes).toHaveLength(2);
  });
  afterAll(async () => t?.close());

  /** Every span or node in a response belongs to A and carries A's marker. */
  const expectOnlyA = (items: Array<{ project_id: string; attributes?: unknown; meta?: unknown }>) => {
    for (const item of items) {
      expect(item.project_id).toBe(projectA);
      expect(JSON.stringify(item)).not.toContain(projectB);
      expect(JSON.stringify(item)).not.toContain(B_SECRET);
    }
  };

  describe('reads', () => {
    it("GET of B's trace and span answers 404", async () => {
      await http().get(`/tracing/traces/${B_ONLY_TRACE}`).set(a).expect(404);
      await http().get(`/tracing/spans/${B_ONLY_TRACE}/${B_ONLY_SPAN}`).set(a).expect(404);
      // Upper-case ids are the same ids: no way around the scope through normalization.
      await http().get(`/tracing/traces/${B_ONLY_TRACE.toUpperCase()}`).set(a).expect(404);
    });

    it('GET of a shared trace id answers with A’s spans only', async () => {
      const trace = await http().get(`/tracing/traces/${SHARED_TRACE}`).set(a).expect(200);
      expect(trace.body.spans).toHaveLength(2);
      expectOnlyA(trace.body.spans);
      const span = await http().get(`/tracing/spans/${SHARED_TRACE}/${SHARED_ROOT}`).set(a).expect(200);
      expect(span.body.span).toMatchObject({ project_id: projectA, span_name: `root-${projectA}` });
    });

    // Built lazily: the projects exist only once beforeAll has run.
    const queries: Array<[string, number, number, () => object]> = [
      ['no filter', 2, 3, () => ({})],
      ['B-only trace id', 0, 1, () => ({ filter: { conditions: [{ field: 'trace_id', operator: 'is', value: B_ONLY_TRACE }] } })],
      ['B-only trace id, focus trace', 2, 3, () => ({ focus: 'trace', filter: { conditions: [{ field: 'trace_id', operator: 'in', value: [B_ONLY_TRACE, SHARED_TRACE] }] } })],
      ['B-only span id', 0, 1, () => ({ filter: { conditions: [{ field: 'span_id', operator: 'eq', value: B_ONLY_SPAN }] } })],
      ["B's owner marker", 0, 3, () => ({ filter: { conditions: [{ field: 'attributes', key: 'owner', operator: 'eq', value: projectB }] } })],
      ["B's secret, by containment", 0, 3, () => ({ filter: { conditions: [{ field: 'attributes', operator: 'has', value: { secret: B_SECRET } }] } })],
      ["B's secret, by LIKE", 0, 3, () => ({ filter: { conditions: [{ field: 'attributes', key: 'secret', operator: 'like', value: '%' }] } })],
      ['B-only name', 0, 1, () => ({ filter: { conditions: [{ field: 'span_name', operator: 'is', value: 'b-only' }] } })],
      ['an or that is always true', 2, 3, () => ({ filter: { operator: 'or', conditions: [{ field: 'span_id', operator: 'exists' }, { field: 'span_id', operator: 'not_exists' }] } })],
      ['a not that is always true', 2, 2, () => ({ focus: 'trace', filter: { operator: 'not', conditions: [{ field: 'trace_id', operator: 'is', value: B_ONLY_TRACE }] } })],
      ['errors only (only B has one)', 0, 1, () => ({ filter: { conditions: [{ field: 'status_code', operator: 'is', value: 'STATUS_CODE_ERROR' }] } })],
    ];
    it.each(queries)('POST /tracing/spans/query with %s returns none of B’s spans', async (_, forA, forB, build) => {
      const body = build();
      const res = await http().post('/tracing/spans/query').set(a).send(body).expect(200);
      expectOnlyA(res.body.spans);
      expect(res.body.spans).toHaveLength(forA);
      // The same query with B's key does find B's spans: the filter works, the scope is what hides them.
      const asB = await http().post('/tracing/spans/query').set(b).send(body).expect(200);
      expect(asB.body.spans).toHaveLength(forB);
      for (const span of asB.body.spans) expect(span.project_id).toBe(projectB);
    });

    it('a filter on project_id is refused as an unknown field', async () => {
      for (const condition of [
        { field: 'project_id', operator: 'is', value: projectB },
        { field: 'spans.project_id', operator: 'is', value: projectB },
        { field: 'project_id = project_id or true --', operator: 'is', value: 'x' },
      ]) {
        const res = await http().post('/tracing/spans/query').set(a).send({ filter: { conditions: [condition] } }).expect(400);
        expect(res.body.message).toMatch(/unknown field/);
      }
      const res = await http().post('/tracing/spans/query').set(a).send({ project_id: projectB }).expect(400);
      expect(res.body.message).toMatch(/unknown field/);
    });

    it("a cursor from B's pages, replayed by A, pages through A's spans only, from where it stands", async () => {
      const query = (as: { Authorization: string }, windowing: Record<string, unknown>) => http().post('/tracing/spans/query').set(as).send({ windowing }).expect(200);
      const key = (span: { trace_id: string; span_id: string }) => `${span.trace_id}/${span.span_id}`;
      // Both listings share one order, and A's spans have the keys of two of B's three: after B's i-th span,
      // A's page is A's spans that come after it in B's listing. A cursor at each of B's first two spans lands on
      // a key A has at least once, where a page from the start, or one that keeps the cursor's own span, differs.
      const allB = ((await query(b, { limit: 1000 })).body.spans as Array<{ trace_id: string; span_id: string }>).map(key);
      const allA = ((await query(a, { limit: 1000 })).body.spans as Array<{ trace_id: string; span_id: string }>).map(key);
      expect(allB).toHaveLength(3);
      expect(allA).toHaveLength(2);
      expect(allA.filter((k) => allB.includes(k))).toEqual(allA);
      let next: string | undefined;
      for (let i = 0; i < allB.length - 1; i++) {
        const page = await query(b, { limit: 1, ...(next ? { next } : {}) });
        expect(key(page.body.spans[0])).toBe(allB[i]);
        next = page.body.next as string;
        expect(next).toEqual(expect.any(String));
        const replay = await query(a, { limit: 10, next });
        expectOnlyA(replay.body.spans);
        expect((replay.body.spans as Array<{ trace_id: string; span_id: string }>).map(key)).toEqual(allA.filter((k) => allB.indexOf(k) > i));
      }
    });

    it('analytics count only A’s spans and traces', async () => {
      for (const focus of ['span', 'trace'] as const) {
        const asA = await http().post('/tracing/analytics/query').set(a).send({ focus, windowing: { ...WINDOW, interval: 1440 } }).expect(200);
        const asB = await http().post('/tracing/analytics/query').set(b).send({ focus, windowing: { ...WINDOW, interval: 1440 } }).expect(200);
        const total = (r: request.Response) => r.body.buckets.reduce((n: number, bucket: { total: { count: number } }) => n + bucket.total.count, 0);
        const errors = (r: request.Response) => r.body.buckets.reduce((n: number, bucket: { errors: { count: number } }) => n + bucket.errors.count, 0);
        expect(total(asA)).toBe(focus === 'span' ? 2 : 1);
        expect(errors(asA)).toBe(0);
        expect(total(asB)).toBe(focus === 'span' ? 3 : 2);
        expect(errors(asB)).toBe(1);
      }
      const filtered = await http().post('/tracing/analytics/query').set(a).send({
        windowing: { ...WINDOW, interval: 1440 },
        filter: { conditions: [{ field: 'trace_id', operator: 'is', value: B_ONLY_TRACE }] },
      }).expect(200);
      expect(filtered.body.buckets.every((bucket: { total: { count: number } }) => bucket.total.count === 0)).toBe(true);
    });

    it("nodes: B's trees are not found, and queries return A's nodes only", async () => {
      await http().get(`/observability/trees/${B_ONLY_TREE}`).set(a).expect(404);
      const shared = await http().get(`/observability/trees/${SHARED_TREE}`).set(a).expect(200);
      expect(shared.body.nodes).toHaveLength(1);
      expectOnlyA(shared.body.nodes);
      for (const body of [{}, { tree_id: B_ONLY_TREE }, { node_name: 'b-only' }, { tree_id: SHARED_TREE }]) {
        const res = await http().post('/observability/nodes/query').set(a).send(body).expect(200);
        expectOnlyA(res.body.nodes);
      }
      const unknown = await http().post('/observability/nodes/query').set(a).send({ project_id: projectB }).expect(400);
      expect(unknown.body.message).toMatch(/unknown field/);
    });
  });

  describe('writes', () => {
    it("PUT of B's span answers 404 and B's row is unchanged", async () => {
      const bOnly = makeSpan({ trace_id: B_ONLY_TRACE, span_id: B_ONLY_SPAN, span_name: 'hijacked', attributes: { owner: projectA } });
      const res = await http().put('/tracing/spans').set(a).send({ spans: [bOnly] }).expect(404);
      expect(res.body.message).toContain(B_ONLY_SPAN);
      expect(await rowsOfB()).toEqual(bBefore);
    });

    it('PUT of a shared key updates A’s span only', async () => {
      const [root] = spansOf(projectA);
      await http().put('/tracing/spans').set(a).send({ spans: [{ ...root, span_name: 'renamed-by-a' }] }).expect(200);
      expect((await http().get(`/tracing/spans/${SHARED_TRACE}/${SHARED_ROOT}`).set(a).expect(200)).body.span.span_name).toBe('renamed-by-a');
      expect((await http().get(`/tracing/spans/${SHARED_TRACE}/${SHARED_ROOT}`).set(b).expect(200)).body.span.span_name).toBe(`root-${projectB}`);
      expect(await rowsOfB()).toEqual(bBefore);
    });

    it('POST of spans with B’s ids creates A’s own spans; a second POST conflicts within A only', async () => {
      const span = makeSpan({ trace_id: B_ONLY_TRACE, span_id: B_ONLY_SPAN, span_name: 'a-copy', attributes: { owner: projectA } });
      await http().post('/tracing/spans').set(a).send({ spans: [span] }).expect(201);
      await http().post('/tracing/spans').set(a).send({ spans: [span] }).expect(409);
      expect(await rowsOfB()).toEqual(bBefore);
      await http().delete('/tracing/spans').set(a).send({ spans: [{ trace_id: B_ONLY_TRACE, span_id: B_ONLY_SPAN }] }).expect(200);
      expect(await rowsOfB()).toEqual(bBefore);
    });

    it("DELETE of B's spans and trace deletes nothing of B's", async () => {
      const spans = await http().delete('/tracing/spans').set(a).send({ spans: [{ trace_id: B_ONLY_TRACE, span_id: B_ONLY_SPAN }] }).expect(200);
      expect(spans.body.count).toBe(0);
      await http().delete(`/tracing/traces/${B_ONLY_TRACE}`).set(a).expect(404);
      expect(await rowsOfB()).toEqual(bBefore);
    });

    it("nodes: ingesting B's node ids writes A's own nodes; deleting B's tree is a 404", async () => {
      await http().post('/observability/nodes').set(a).send({ nodes: [makeNode({ node_id: B_ONLY_NODE, tree_id: B_ONLY_TREE, node_name: 'a-copy', meta: { owner: projectA } })] }).expect(201);
      expect(await rowsOfB()).toEqual(bBefore);
      // A's copy of the tree goes; B's stays.
      expect((await http().delete(`/observability/trees/${B_ONLY_TREE}`).set(a).expect(200)).body.count).toBe(1);
      await http().delete(`/observability/trees/${B_ONLY_TREE}`).set(a).expect(404);
      expect(await rowsOfB()).toEqual(bBefore);
      expect((await http().get(`/observability/trees/${B_ONLY_TREE}`).set(b).expect(200)).body.nodes[0].node_name).toBe('b-only');
    });

    it("OTLP with B's trace and span ids lands in A only", async () => {
      await http().post('/otlp/v1/traces').set(a).send({
        resourceSpans: [{
          scopeSpans: [{
            spans: [{
              traceId: B_ONLY_TRACE, spanId: B_ONLY_SPAN, name: 'otlp-by-a', kind: 1,
              startTimeUnixNano: '1763632800000001000', endTimeUnixNano: '1763632801000000000',
              attributes: [{ key: 'owner', value: { stringValue: projectA } }],
            }],
          }],
        }],
      }).expect(200);
      expect(await rowsOfB()).toEqual(bBefore);
      expect((await http().get(`/tracing/spans/${B_ONLY_TRACE}/${B_ONLY_SPAN}`).set(a).expect(200)).body.span.span_name).toBe('otlp-by-a');
      expect((await http().get(`/tracing/spans/${B_ONLY_TRACE}/${B_ONLY_SPAN}`).set(b).expect(200)).body.span.span_name).toBe('b-only');
    });

    it('deleting the shared trace as A leaves B’s copy whole', async () => {
      expect((await http().delete(`/tracing/traces/${SHARED_TRACE}`).set(a).expect(200)).body.count).toBe(2);
      await http().get(`/tracing/traces/${SHARED_TRACE}`).set(a).expect(404);
      expect((await http().get(`/tracing/traces/${SHARED_TRACE}`).set(b).expect(200)).body.spans).toHaveLength(2);
      expect(await rowsOfB()).toEqual(bBefore);
    });
  });

  describe('the ClickHouse mirror', () => {
    it('files every row, every version and tombstone, under the project it came from', async () => {
      await t.mirror!.writer.drain();
      const clickhouse = t.mirror!.clickhouse.query;
      const all = async (query: string) => (await clickhouse.query({ query, format: 'JSONEachRow' })).json<Record<string, string>>();

      // Raw rows, no FINAL: inserts and updates carry the owner's project. A tombstone holds keys, not attributes: it must be
      // filed under the project that deleted the row, and only A deleted (its copy of B's span, the shared trace, its copy of B's
      // node). Merges may already have replaced some (A wrote B's span again over OTLP), so: among those, and at least one.
      const spanRows = await all(
        `SELECT toString(project_id) AS project, toString(trace_id) || '/' || toString(span_id) AS key, JSONExtractString(attributes, 'owner') AS owner, is_deleted FROM spans`,
      );
      const nodeRows = await all(`SELECT toString(project_id) AS project, toString(node_id) AS key, JSONExtractString(meta, 'owner') AS owner, is_deleted FROM nodes`);
      for (const row of [...spanRows, ...nodeRows].filter((r) => Number(r.is_deleted) === 0)) expect(row.owner).toBe(row.project);
      const tombstones = (rows: Record<string, string>[]) => rows.filter((r) => Number(r.is_deleted) === 1).map((r) => `${r.project} ${r.key}`).sort();
      const spanKey = (trace: string, span: string) => `${projectA} ${traceIdToUuid(trace)}/${spanIdToUInt64(span)}`;
      const deletedByA = [spanKey(B_ONLY_TRACE, B_ONLY_SPAN), spanKey(SHARED_TRACE, SHARED_ROOT), spanKey(SHARED_TRACE, SHARED_CHILD), `${projectA} ${B_ONLY_NODE}`];
      const filed = [...tombstones(spanRows), ...tombstones(nodeRows)];
      expect(tombstones(spanRows).length).toBeGreaterThan(0);
      for (const tombstone of filed) expect(deletedByA).toContain(tombstone);
      expect(new Set(spanRows.map((r) => r.project))).toEqual(new Set([projectA, projectB]));

      // Per project, the mirror holds exactly what Postgres holds.
      for (const project of [projectA, projectB]) {
        const both = await snapshotBothSides(t.database.db, clickhouse, project);
        expect(both.chSpans).toEqual(both.pgSpans);
        expect(both.chNodes).toEqual(both.pgNodes);
      }
      const bFinal = await clickhouse.query({
        query: 'SELECT count() AS n FROM spans FINAL WHERE project_id = {project:UUID} AND is_deleted = 0',
        query_params: { project: projectB },
        format: 'JSONEachRow',
      });
      expect(Number((await bFinal.json<{ n: string }>())[0].n)).toBe(bBefore.spans.length);
      expect(t.mirror!.writer.stats().gapsRecorded).toBe(0);
    });
  });
});
