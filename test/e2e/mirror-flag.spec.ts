import { createClient } from '@clickhouse/client';
import { Kysely } from 'kysely';
import request from 'supertest';
import { DB } from '../../src/dbs/postgres/database';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { createTestApp, TestApp } from '../support/app';
import { testClickHouseConfig } from '../support/clickhouse';
import { eventually, FakeClickHouse } from '../support/fake-clickhouse';
import { makeNode, makeSpan, spanId, traceId, uuid } from '../support/fixtures';
import { snapshotBothSides } from '../support/mirror';
import { normalize } from '../support/normalize';

/**
 * USE_CLICKHOUSE and CLICKHOUSE_PROJECT_IDS as an operator sees them: off
 * means nothing touches ClickHouse; on means every write path reaches it
 * (by itself, within the flush interval); a rollout list limits it to some
 * projects; /health and /metrics say what the mirror is doing.
 */

type Step = { step: string; status: number; body: unknown };

interface Written {
  steps: Step[];
  /** Mirrored records the writes produced (creates, updates and delete tombstones). */
  spanRows: number;
  nodeRows: number;
  /** What must be left afterwards, by path. */
  updated: { trace_id: string; span_id: string; span_name: string };
  deletedSpan: string;
  deletedTrace: string;
  otlpTrace: string;
  keptTree: string;
  deletedTree: string;
}

const newIds = () => ({ t1: traceId(), t2: traceId(), t3: traceId(), spans: [spanId(), spanId(), spanId(), spanId(), spanId()], trees: [uuid(), uuid()], nodes: [uuid(), uuid(), uuid()] });

/** One call on every write path: POST/PUT/DELETE spans, DELETE trace, OTLP/JSON, POST nodes, DELETE tree. */
async function writeThroughEveryPath(url: string, apiKey: string, ids = newIds()): Promise<Written> {
  const auth = { Authorization: `ApiKey ${apiKey}` };
  const steps: Step[] = [];
  const http = async (step: string, call: (r: ReturnType<typeof request>) => request.Test) => {
    const res = await call(request(url)).set(auth);
    steps.push({ step, status: res.status, body: normalize(res.body) });
    if (res.status >= 300) throw new Error(`${step}: ${res.status} ${JSON.stringify(res.body)}`);
  };
  const { t1, t2, t3 } = ids;
  const root = makeSpan({ trace_id: t1, span_id: ids.spans[0], span_name: 'root' });
  const child = makeSpan({ trace_id: t1, span_id: ids.spans[1], parent_id: root.span_id, span_name: 'child' });
  const doomed = makeSpan({ trace_id: t1, span_id: ids.spans[2], parent_id: root.span_id, span_name: 'doomed' });
  const other = makeSpan({ trace_id: t2, span_id: ids.spans[3], span_name: 'other trace' });
  const [keptTree, deletedTree] = ids.trees;

  await http('POST spans', (r) => r.post('/tracing/spans').send({ spans: [root, child, doomed, other] }));
  await http('PUT spans', (r) => r.put('/tracing/spans').send({ spans: [{ ...child, span_name: 'child-renamed', attributes: { retried: true } }] }));
  await http('DELETE spans', (r) => r.delete('/tracing/spans').send({ spans: [{ trace_id: t1, span_id: doomed.span_id }] }));
  await http('DELETE trace', (r) => r.delete(`/tracing/traces/${t2}`));
  await http('OTLP JSON', (r) =>
    r.post('/otlp/v1/traces').send({
      resourceSpans: [{
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'flag' } }] },
        scopeSpans: [{
          scope: { name: 'flag' },
          spans: [{ traceId: t3, spanId: ids.spans[4], name: 'otlp', kind: 2, startTimeUnixNano: '1763632800000001000', endTimeUnixNano: '1763632801000000000', status: { code: 1 } }],
        }],
      }],
    }),
  );
  await http('POST nodes', (r) =>
    r.post('/observability/nodes').send({
      nodes: [
        makeNode({ node_id: ids.nodes[0], tree_id: keptTree }),
        makeNode({ node_id: ids.nodes[1], tree_id: deletedTree }),
        makeNode({ node_id: ids.nodes[2], tree_id: deletedTree }),
      ],
    }),
  );
  await http('DELETE tree', (r) => r.delete(`/observability/trees/${deletedTree}`));
  return {
    steps,
    // 4 created, 1 updated, 1 + 1 tombstones, 1 from OTLP.
    spanRows: 8,
    // 1 from OTLP, 3 ingested, 2 tombstones.
    nodeRows: 6,
    updated: { trace_id: t1, span_id: child.span_id, span_name: 'child-renamed' },
    deletedSpan: doomed.span_id,
    deletedTrace: t2,
    otlpTrace: t3,
    keptTree,
    deletedTree,
  };
}

/** ClickHouse must hold exactly what Postgres holds, and Postgres must show each write path's effect. */
function expectEveryPathMirrored(both: Awaited<ReturnType<typeof snapshotBothSides>>, written: Written): void {
  expect(both.chSpans).toEqual(both.pgSpans);
  expect(both.chNodes).toEqual(both.pgNodes);
  const spanIds = both.pgSpans.map((s) => s.span_id);
  expect(both.pgSpans).toHaveLength(3); // root, the renamed child, the OTLP span
  expect(both.pgSpans.find((s) => s.span_id === written.updated.span_id)?.span_name).toBe(written.updated.span_name);
  expect(spanIds).not.toContain(written.deletedSpan);
  expect(both.pgSpans.map((s) => s.trace_id)).not.toContain(written.deletedTrace);
  expect(both.pgSpans.map((s) => s.trace_id)).toContain(written.otlpTrace);
  expect(both.pgNodes).toHaveLength(2); // the kept tree's node and the OTLP node
  expect(both.pgNodes.map((n) => n.tree_id)).toContain(written.keptTree);
  expect(both.pgNodes.map((n) => n.tree_id)).not.toContain(written.deletedTree);
}

const get = (t: TestApp, path: string) => request(t.url).get(path);

/** The app's Postgres database, for comparing with ClickHouse; destroy it before t.close(). */
function openPostgres(t: TestApp): Kysely<DB> {
  const pool = createPool(t.database.url, 2);
  // The forced DROP DATABASE at the end can hit a connection the pool is still closing; that is expected.
  pool.on('error', () => undefined);
  return createKysely(pool);
}

describe('USE_CLICKHOUSE off', () => {
  let fake: FakeClickHouse;
  let t: TestApp;
  beforeAll(async () => {
    fake = await FakeClickHouse.start(testClickHouseConfig('default').url);
    // The URL is set, only the flag is off: it alone must keep the app away from ClickHouse.
    t = await createTestApp({ USE_CLICKHOUSE: 'false', CLICKHOUSE_URL: fake.url });
  });
  afterAll(async () => {
    await t?.close();
    await fake?.close();
  });

  it('connects to nothing, builds no mirror, and says so on /health and /metrics', async () => {
    await writeThroughEveryPath(t.url, t.apiKey);
    expect(t.mirror).toBeNull();

    const health = await get(t, '/health').expect(200);
    expect(health.body.info.mirror).toEqual({ status: 'up', enabled: false });
    const metrics = (await get(t, '/metrics').expect(200)).text;
    expect(metrics).toMatch(/^http_request_duration_seconds_count/m);
    expect(metrics).not.toMatch(/^(# HELP )?mirror_/m);
    // Past the default flush interval (1 s), with /health and /metrics answered: nothing reached ClickHouse.
    await new Promise((done) => setTimeout(done, 1_500));
    expect({ connections: fake.stats().connections, requests: fake.stats().requests }).toEqual({ connections: 0, requests: 0 });

    // The counter does count: a ClickHouse client reaching it is seen.
    const client = createClient({ url: fake.url });
    expect((await client.ping()).success).toBe(true);
    await client.close();
    expect(fake.stats().connections).toBeGreaterThan(0);
  });
});

describe('USE_CLICKHOUSE on', () => {
  let t: TestApp;
  let pg: Kysely<DB>;
  let written: Written;
  beforeAll(async () => {
    // The default flush interval (1 s): rows must get there without anyone calling drain().
    t = await createTestApp({}, { clickhouse: true });
    pg = openPostgres(t);
  });
  afterAll(async () => {
    await pg?.destroy();
    await t?.close();
  });

  it('mirrors every write path, and the rows arrive by themselves, without a drain', async () => {
    written = await writeThroughEveryPath(t.url, t.apiKey);
    const mirror = t.mirror!;
    const both = await eventually('ClickHouse to match Postgres without a drain', async () => {
      const snapshot = await snapshotBothSides(pg, mirror.clickhouse.query, t.projectId);
      const same = JSON.stringify([snapshot.chSpans, snapshot.chNodes]) === JSON.stringify([snapshot.pgSpans, snapshot.pgNodes]);
      return same ? snapshot : null;
    }, 15_000, 200);
    expectEveryPathMirrored(both, written);

    await mirror.writer.drain();
    expectEveryPathMirrored(await snapshotBothSides(pg, mirror.clickhouse.query, t.projectId), written);
    expect(mirror.writer.stats()).toMatchObject({ rowsSent: written.spanRows + written.nodeRows, gapsRecorded: 0, rowsDropped: 0 });
  });

  it('/health reports the mirror and /metrics carries its counters', async () => {
    const health = await get(t, '/health').expect(200);
    expect(health.body.status).toBe('ok');
    expect(health.body.info.mirror).toMatchObject({
      status: 'up',
      enabled: true,
      breaker: 'closed',
      queuedRows: 0,
      openGaps: 0,
      rowsSent: written.spanRows + written.nodeRows,
      gapsRecorded: 0,
      // Nothing queued (the test above drained it): no row is waiting.
      lagMs: 0,
    });

    const metrics = (await get(t, '/metrics').expect(200)).text;
    expect(metrics).toContain(`mirror_rows_sent_total{table="spans"} ${written.spanRows}`);
    expect(metrics).toContain(`mirror_rows_sent_total{table="nodes"} ${written.nodeRows}`);
    expect(metrics).toMatch(/^mirror_breaker_state 0$/m);
    expect(metrics).toMatch(/^mirror_queue_rows\{table="spans"\} 0$/m);
    expect(metrics).toMatch(/^mirror_gaps_recorded_total 0$/m);
    expect(metrics).toMatch(/^mirror_flush_duration_seconds_count\{table="spans"\} [1-9]/m);
    expect(metrics).toMatch(/^mirror_lag_seconds_count [1-9]/m);
    // Nothing failed, and each failure counter says so for every label value an alert may watch.
    for (const series of [
      'mirror_send_failures_total{kind="transient"}',
      'mirror_send_failures_total{kind="permanent"}',
      'mirror_rows_dropped_total{reason="queue_full"}',
      'mirror_rows_dropped_total{reason="send_failed"}',
      'mirror_rows_dropped_total{reason="shutdown_deadline"}',
      'mirror_record_failures_total{entity="spans"}',
      'mirror_record_failures_total{entity="nodes"}',
      'mirror_writes_outcome_unknown_total{entity="spans"}',
      'mirror_writes_outcome_unknown_total{entity="nodes"}',
      'mirror_rows_lost_total',
    ]) {
      expect(metrics).toContain(`\n${series} 0\n`);
    }
  });

  it('before any write, /metrics already has every table’s series at 0', async () => {
    const fresh = await createTestApp({}, { clickhouse: true });
    try {
      const metrics = (await get(fresh, '/metrics').expect(200)).text;
      for (const table of ['spans', 'nodes']) {
        for (const series of ['mirror_rows_sent_total', 'mirror_queue_rows', 'mirror_queue_bytes']) expect(metrics).toContain(`\n${series}{table="${table}"} 0\n`);
      }
    } finally {
      await fresh.close();
    }
  });
});

describe('CLICKHOUSE_PROJECT_IDS (gradual rollout)', () => {
  const projectA = uuid();
  const projectB = uuid();
  let t: TestApp;
  let pg: Kysely<DB>;
  beforeAll(async () => {
    t = await createTestApp({ CLICKHOUSE_PROJECT_IDS: projectA, MIRROR_FLUSH_INTERVAL_MS: '50' }, { clickhouse: true });
    pg = openPostgres(t);
  });
  afterAll(async () => {
    await pg?.destroy();
    await t?.close();
  });

  it("mirrors the listed project's writes and none of the others', whose API results are unchanged", async () => {
    const a = await t.createApiKey(projectA);
    const b = await t.createApiKey(projectB);
    // The same ids in both projects: each project's rows are its own.
    const ids = newIds();
    const writtenA = await writeThroughEveryPath(t.url, a.key, ids);
    const writtenB = await writeThroughEveryPath(t.url, b.key, ids);
    await t.mirror!.writer.drain();

    const bothA = await snapshotBothSides(pg, t.mirror!.clickhouse.query, projectA);
    expectEveryPathMirrored(bothA, writtenA);

    const bothB = await snapshotBothSides(pg, t.mirror!.clickhouse.query, projectB);
    expect(bothB.pgSpans).toHaveLength(3);
    expect(bothB.pgNodes).toHaveLength(2);
    expect(bothB.chSpans).toEqual([]);
    expect(bothB.chNodes).toEqual([]);
    // B is served as usual: the same calls get the same answers as A's.
    expect(writtenB.steps).toEqual(writtenA.steps);
    const readB = await request(t.url).get(`/tracing/traces/${writtenB.updated.trace_id}`).set({ Authorization: `ApiKey ${b.key}` }).expect(200);
    expect(readB.body.spans.map((s: { span_name: string }) => s.span_name).sort()).toEqual(['child-renamed', 'root']);

    expect(t.mirror!.writer.stats()).toMatchObject({ rowsSent: writtenA.spanRows + writtenA.nodeRows, rowsDropped: 0 });
  });
});
