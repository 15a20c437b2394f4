import { randomBytes, randomUUID } from 'node:crypto';
import { CompiledQuery, Kysely, PostgresDialect, sql } from 'kysely';
import { DB } from '../../src/dbs/postgres/database';
import { PostgresObservabilityDao } from '../../src/dbs/postgres/postgres-observability.dao';
import { PostgresTracingDao } from '../../src/dbs/postgres/postgres-tracing.dao';
import { TreeTooLargeError } from '../../src/observability/observability.dao';
import { isoToMicros, microsToIso } from '../../src/tracing/timestamp';
import { TraceTooLargeError } from '../../src/tracing/tracing.dao';
import { makeNode, makeSpan, makeTrace } from '../support/fixtures';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/**
 * The DAOs return the rows a write committed, which is what the mirror
 * copies: ids a caller gives in upper case (the HTTP schemas lower-case
 * them, a service caller need not) must still find their stored rows.
 */
describe('Postgres DAOs with upper-case ids', () => {
  const project = '0c000000-0000-4000-8000-000000000001';
  let pg: TestDatabase;
  beforeAll(async () => (pg = await createTestDatabase()));
  afterAll(async () => pg.drop());

  it('span create, re-create and update return every stored span, in the caller\'s order', async () => {
    const dao = new PostgresTracingDao(pg.db);
    const spans = [makeSpan(), makeSpan()].map((s) => ({ ...s, trace_id: s.trace_id.toUpperCase(), span_id: s.span_id.toUpperCase() }));
    const created = await dao.createSpans(project, spans, { userId: null, upsert: false });
    expect(created.map((s) => s.span_id)).toEqual(spans.map((s) => s.span_id.toLowerCase()));
    expect((await dao.createSpans(project, spans, { userId: null, upsert: true })).map((s) => s.span_id)).toEqual(created.map((s) => s.span_id));
    const updated = await dao.updateSpans(project, [{ ...spans[1], span_name: 'renamed' }], { userId: null });
    expect(updated).toEqual([expect.objectContaining({ span_id: spans[1].span_id.toLowerCase(), span_name: 'renamed' })]);
  });

  it('node ingest returns every stored node', async () => {
    const nodes = [makeNode(), makeNode()].map((n) => ({ ...n, node_id: n.node_id.toUpperCase() }));
    const stored = await new PostgresObservabilityDao(pg.db).ingestNodes(project, nodes);
    expect(stored.map((n) => n.node_id)).toEqual(nodes.map((n) => n.node_id.toLowerCase()));
  });
});

/**
 * Postgres binds at most 65,535 parameters a statement, and MAX_BATCH_ITEMS
 * allows batches of 100,000 keys: reads and deletes by key bind them as arrays.
 */
describe('Postgres DAOs with batches past 65,535 parameters', () => {
  const project = '0c000000-0000-4000-8000-000000000002';
  const hex = (bytes: number) => randomBytes(bytes).toString('hex');
  let pg: TestDatabase;
  beforeAll(async () => (pg = await createTestDatabase()));
  afterAll(async () => pg.drop());

  it('reads and deletes spans by 40,000 keys and traces by 70,000 ids', async () => {
    const dao = new PostgresTracingDao(pg.db);
    const stored = [makeSpan(), makeSpan(), makeSpan()];
    const created = await dao.createSpans(project, stored, { userId: null, upsert: false });
    const absent = Array.from({ length: 40_000 }, () => ({ trace_id: hex(16), span_id: hex(8) }));
    const keys = [...absent, ...stored.map(({ trace_id, span_id }) => ({ trace_id, span_id }))];
    expect((await dao.readSpans(project, keys)).map((s) => s.span_id).sort()).toEqual(stored.map((s) => s.span_id).sort());
    const traces = [...Array.from({ length: 70_000 }, () => hex(16)), stored[0].trace_id];
    expect((await dao.readTraces(project, traces)).map((s) => s.span_id)).toEqual([stored[0].span_id]);

    expect((await dao.deleteSpans(project, keys.slice(0, -1))).map((s) => s.span_id).sort()).toEqual(stored.slice(0, 2).map((s) => s.span_id).sort());
    // stored[0]'s trace is among them, its span deleted above.
    expect(await dao.deleteTraces(project, traces)).toEqual([]);
    // A delete reports each span's key and its tombstone's version (one microsecond past the row's), never the payload.
    const last = created[2];
    expect(await dao.deleteTraces(project, [...traces.slice(0, -1), last.trace_id])).toEqual([
      { project_id: project, trace_id: last.trace_id, span_id: last.span_id, created_at: last.created_at, start_time: last.start_time, deleted_at: microsToIso(isoToMicros(last.updated_at) + 1n) },
    ]);
  });

  it('deletes the nodes of 70,000 tree ids', async () => {
    const dao = new PostgresObservabilityDao(pg.db);
    const node = makeNode();
    const [stored] = await dao.ingestNodes(project, [node]);
    const trees = [...Array.from({ length: 70_000 }, () => randomUUID()), node.tree_id];
    expect(await dao.deleteTrees(project, trees)).toEqual([
      { project_id: project, node_id: node.node_id, created_at: stored.created_at, tree_id: node.tree_id, time_start: stored.time_start, deleted_at: microsToIso(isoToMicros(stored.updated_at) + 1n) },
    ]);
  });
});

/** MAX_RESPONSE_ITEMS: a whole trace or tree is read only if it fits, and reading one that does not stops one row past the bound. */
describe('Postgres DAOs reading a whole trace or tree within a bound', () => {
  const project = '0c000000-0000-4000-8000-000000000003';
  let pg: TestDatabase;
  beforeAll(async () => (pg = await createTestDatabase()));
  afterAll(async () => pg.drop());

  it('reads a trace of exactly maxSpans spans, and refuses one more with TraceTooLargeError', async () => {
    const dao = new PostgresTracingDao(pg.db);
    const trace = makeTrace(4); // 5 spans
    await dao.createSpans(project, trace, { userId: null, upsert: false });
    expect(await dao.readTraces(project, [trace[0].trace_id], { maxSpans: 5 })).toHaveLength(5);
    await expect(dao.readTraces(project, [trace[0].trace_id], { maxSpans: 4 })).rejects.toThrow(new TraceTooLargeError([trace[0].trace_id], 4));
    // Several traces read together share the bound.
    const other = makeTrace(0);
    await dao.createSpans(project, other, { userId: null, upsert: false });
    await expect(dao.readTraces(project, [trace[0].trace_id, other[0].trace_id], { maxSpans: 5 })).rejects.toThrow('the 2 traces have more than 5 spans together');
    expect(await dao.readTraces(project, [trace[0].trace_id, other[0].trace_id])).toHaveLength(6);
  });

  it('reads a tree of exactly maxNodes nodes, and refuses one more with TreeTooLargeError', async () => {
    const dao = new PostgresObservabilityDao(pg.db);
    const tree = randomUUID();
    await dao.ingestNodes(project, Array.from({ length: 3 }, () => makeNode({ tree_id: tree })));
    expect(await dao.readTree(project, tree, { maxNodes: 3 })).toHaveLength(3);
    await expect(dao.readTree(project, tree, { maxNodes: 2 })).rejects.toThrow(new TreeTooLargeError(tree, 2));
    expect(await dao.readTree(project, tree)).toHaveLength(3);
  });
});

/**
 * Node query pages start at their cursor: what a page reads from the nodes
 * table is about its limit, not the size of the tree or project before it.
 * Checked on the plan Postgres runs for the DAO's own statement.
 */
describe('Postgres node query pages (real Postgres, EXPLAIN ANALYZE)', () => {
  const project = '0c000000-0000-4000-8000-000000000003';
  const tree = '0d000000-0000-4000-8000-000000000001';
  let pg: TestDatabase;
  beforeAll(async () => {
    pg = await createTestDatabase();
    // 20,000 nodes in the project: 10,000 in one tree, the rest in others; ties on time_start every 3 nodes.
    await sql`insert into nodes (project_id, node_id, tree_id, node_name, node_type, time_start, time_end, status_code)
      select ${project}::uuid, gen_random_uuid(), case when i % 2 = 0 then ${tree}::uuid else gen_random_uuid() end,
             'n' || i, 'task', timestamptz '2026-11-01' + (i / 3) * interval '1 second', timestamptz '2026-11-01' + (i / 3) * interval '1 second', 'OK'
      from generate_series(1, 20000) as i`.execute(pg.db);
    await sql`analyze nodes`.execute(pg.db);
  });
  afterAll(async () => pg.drop());

  /** Rows the plan's scans of nodes read: returned by the scan, or read and then filtered out. */
  function nodeRowsRead(plan: Record<string, unknown>): number {
    const here = plan['Relation Name'] === 'nodes' ? Number(plan['Actual Rows']) + Number(plan['Rows Removed by Filter'] ?? 0) : 0;
    return here + ((plan.Plans as Array<Record<string, unknown>> | undefined) ?? []).reduce((sum, child) => sum + nodeRowsRead(child), 0);
  }

  it.each([
    ['a tree', { tree_id: tree }],
    ['the whole project', {}],
  ])('of %s read about their limit, however deep the page', async (_, filter) => {
    const statements: CompiledQuery[] = [];
    const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool: pg.pool }), log: (event) => void statements.push(event.query) });
    const dao = new PostgresObservabilityDao(db);
    let next: string | undefined;
    const seen = new Set<string>();
    // 15 pages of 100: the last sits behind 1,400 newer nodes of the tree (2,900 of the project), thousands more after it.
    for (let page = 0; page < 15; page++) {
      const result = await dao.queryNodes(project, { ...filter, limit: 100, next });
      for (const node of result.nodes) seen.add(node.node_id);
      next = result.next!;
    }
    expect(seen.size).toBe(1_500);
    const last = statements.at(-1)!;
    const { rows } = await pg.pool.query(`explain (analyze, format json) ${last.sql}`, [...last.parameters]);
    const plan = (rows[0]['QUERY PLAN'] as Array<{ Plan: Record<string, unknown> }>)[0].Plan;
    // The limit (101), the cursor's ties (at most 3) and, for the project, nothing else in its way.
    expect(nodeRowsRead(plan)).toBeLessThanOrEqual(110);
  });
});

/**
 * A delete takes only rows it has locked in key order (lock-order.ts), in one statement: a trace or tree of
 * any size must not come back to the API just for the locks, and a row that joins the tree while the delete
 * waits must not be locked out of order.
 */
describe('Postgres DAOs locking the rows a delete removes', () => {
  const project = '0c000000-0000-4000-8000-000000000004';
  let pg: TestDatabase;
  beforeAll(async () => (pg = await createTestDatabase()));
  afterAll(async () => pg.drop());

  it('lock and delete a trace and a tree in one statement each, fetching nothing more', async () => {
    // Each statement's text (the log) and how many rows came back for it (a plugin sees results), in order: one at a time here.
    const statements: string[] = [];
    const rowCounts: number[] = [];
    const db = new Kysely<DB>({
      dialect: new PostgresDialect({ pool: pg.pool }),
      // begin and commit are logged too, but pass no plugin.
      log: (event) => void (/^(begin|commit|rollback)$/.test(event.query.sql) || statements.push(event.query.sql)),
      plugins: [{ transformQuery: (args) => args.node, transformResult: async (args) => (rowCounts.push(args.result.rows.length), args.result) }],
    });
    const answered = () => statements.map((sql, i) => ({ sql, rows: rowCounts[i] }));
    const trace = makeTrace(499);
    const tree = '0d000000-0000-4000-8000-000000000002';
    await new PostgresTracingDao(db).createSpans(project, trace, { userId: null, upsert: false });
    await new PostgresObservabilityDao(db).ingestNodes(project, Array.from({ length: 500 }, () => ({ ...makeNode(), tree_id: tree })));
    statements.length = 0;
    rowCounts.length = 0;

    expect(await new PostgresTracingDao(db).deleteTraces(project, [trace[0].trace_id])).toHaveLength(500);
    expect(await new PostgresObservabilityDao(db).deleteTrees(project, [tree])).toHaveLength(500);
    // Was: a locking select of every span_id and node_id (500 rows each), then the delete.
    expect(answered()).toEqual([
      { sql: expect.stringMatching(/^delete from "spans" .* order by "trace_id", "span_id" for update\)/), rows: 500 },
      { sql: expect.stringMatching(/^delete from "nodes" .* order by "node_id" for update\)/), rows: 500 },
    ]);
  });

  // The review's sequence: the delete has locked Z and waits for Y; meanwhile M (before Z) is moved into the
  // tree, and an ingest of [M, Z] locks M and waits for Z. A delete whose DELETE came after its lock step took
  // M in with a later snapshot, waited for the ingest that waits for it, and one of them died "deadlock detected".
  it('does not deadlock with an ingest of a node moved into the tree while it waited', async () => {
    const [tree, elsewhere] = ['0d000000-0000-4000-8000-000000000010', '0d000000-0000-4000-8000-000000000011'];
    const [m, z, y] = ['0e000000-0000-4000-8000-000000000001', '0e000000-0000-4000-8000-000000000002', '0e000000-0000-4000-8000-000000000003'];
    const dao = new PostgresObservabilityDao(pg.db);
    await dao.ingestNodes(project, [makeNode({ node_id: m, tree_id: elsewhere }), makeNode({ node_id: z, tree_id: tree }), makeNode({ node_id: y, tree_id: tree })]);
    const waitingOnLocks = async (n: number) => {
      for (let i = 0; ; i++) {
        const { rows } = await pg.pool.query(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`);
        if (rows[0].n >= n) return;
        if (i > 500) throw new Error(`${rows[0].n} sessions wait for a lock, expected ${n}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    };
    const holder = await pg.pool.connect();
    let deleted: Promise<unknown> | undefined;
    let ingested: Promise<unknown> | undefined;
    try {
      await holder.query('begin');
      await holder.query('select 1 from nodes where project_id = $1 and node_id = $2 for update', [project, y]);
      deleted = dao.deleteTrees(project, [tree]);
      deleted.catch(() => undefined);
      await waitingOnLocks(1);
      await dao.ingestNodes(project, [makeNode({ node_id: m, tree_id: tree })]);
      ingested = dao.ingestNodes(project, [makeNode({ node_id: m, tree_id: tree }), makeNode({ node_id: z, tree_id: tree })]);
      ingested.catch(() => undefined);
      await waitingOnLocks(2);
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    // The delete took the tree as it was when it began (Z, Y); M, moved in meanwhile, and Z, ingested after, remain.
    expect(((await ingested) as Array<{ node_id: string }>).map((n) => n.node_id)).toEqual([m, z]);
    expect(((await deleted) as Array<{ node_id: string }>).map((n) => n.node_id).sort()).toEqual([z, y]);
    expect((await dao.readTree(project, tree)).map((n) => n.node_id).sort()).toEqual([m, z]);
  });
});
