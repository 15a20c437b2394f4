import { Kysely } from 'kysely';
import request from 'supertest';
import { GapEntry, historyOf } from '../../src/dbs/backfill/history-entities';
import { Entity } from '../../src/dbs/backfill/history-scope';
import { ClickHouseClients, createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { DB, MirrorGapRow } from '../../src/dbs/postgres/database';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { createTestApp, TestApp } from '../support/app';
import { dropClickHouseDatabase, testClickHouseConfig } from '../support/clickhouse';
import { eventually, FakeClickHouse, FakeClickHouseMode } from '../support/fake-clickhouse';
import { makeNode, makeSpan, spanId, traceId } from '../support/fixtures';
import { snapshotBothSides } from '../support/mirror';
import { normalize } from '../support/normalize';

/**
 * Fault isolation of the ClickHouse mirror, end to end: the real app and
 * servers, with ClickHouse behind a proxy that can stop, hang or fail. Callers
 * must see exactly what they see with the mirror off; what the mirror could
 * not send must arrive later or be recorded as a gap, never silently lost.
 */

const T1 = '1f'.repeat(16);
const T2 = '2f'.repeat(16);
const T3 = '3f'.repeat(16);
const TREE = '44444444-4444-4444-8444-444444444444';
const N1 = '55555555-5555-4555-8555-555555555555';
const N2 = '66666666-6666-4666-8666-666666666666';
const id = (n: number) => n.toString(16).padStart(16, 'b');

/** Mirrored records the script writes: spans 3 + 2 created, 1 updated, 1 + 2 deleted, 2 from OTLP; nodes 2 from OTLP, 2 + 1 ingested, 2 deleted. */
const SCRIPT_SPAN_ROWS = 11;
const SCRIPT_NODE_ROWS = 7;

/** Small intervals and backoffs so faults and recoveries play out within a test. */
/**
 * Shorter intervals, so each fault plays out within a test. MIRROR_MAX_ATTEMPTS keeps its default:
 * an outage must not turn the batch it caught into a gap however few tries that batch has.
 */
const FAST = {
  MIRROR_FLUSH_INTERVAL_MS: '50',
  MIRROR_BASE_BACKOFF_MS: '10',
  MIRROR_MAX_BACKOFF_MS: '100',
  MIRROR_BREAKER_OPEN_MS: '100',
  MIRROR_SHUTDOWN_DEADLINE_MS: '300',
};

type Step = { step: string; status: number; body: unknown };

interface ScriptRun {
  steps: Step[];
  /** created_at of every span ("spans:<trace>/<span>") and node ("nodes:<node>") the responses showed. */
  createdAt: Map<string, string>;
}

function collectCreatedAt(value: unknown, into: Map<string, string>): void {
  if (Array.isArray(value)) return value.forEach((v) => collectCreatedAt(v, into));
  if (!value || typeof value !== 'object') return;
  const row = value as Record<string, unknown>;
  if (typeof row.created_at === 'string') {
    if (typeof row.span_id === 'string') into.set(`spans:${row.trace_id}/${row.span_id}`, row.created_at);
    if (typeof row.node_id === 'string') into.set(`nodes:${row.node_id}`, row.created_at);
  }
  Object.values(row).forEach((v) => collectCreatedAt(v, into));
}

/**
 * Every write path (POST/PUT/DELETE spans, DELETE trace, OTLP, POST nodes,
 * DELETE tree) with reads and error answers in between. `afterEach` runs as
 * each response arrives.
 */
async function runScript(t: TestApp, afterEach: () => void = () => undefined): Promise<ScriptRun> {
  const auth = { Authorization: `ApiKey ${t.apiKey}` };
  const steps: Step[] = [];
  const createdAt = new Map<string, string>();
  const http = async (step: string, call: (r: ReturnType<typeof request>) => request.Test) => {
    const res = await call(request(t.url)).set(auth);
    afterEach();
    collectCreatedAt(res.body, createdAt);
    steps.push({ step, status: res.status, body: normalize(res.body) });
  };

  const trace1 = [
    makeSpan({ trace_id: T1, span_id: id(1), span_name: 'root', span_type: 'workflow', start_time: '2026-11-20T10:00:00.000001Z', end_time: '2026-11-20T10:00:09Z' }),
    makeSpan({ trace_id: T1, span_id: id(2), parent_id: id(1), span_name: 'llm', start_time: '2026-11-20T10:00:01.000002Z', end_time: '2026-11-20T10:00:02Z' }),
    makeSpan({ trace_id: T1, span_id: id(3), parent_id: id(1), span_name: 'tool', span_type: 'tool', start_time: '2026-11-20T10:00:03.000003Z', end_time: '2026-11-20T10:00:04Z' }),
  ];
  const trace2 = [
    makeSpan({ trace_id: T2, span_id: id(4), span_name: 'root', start_time: '2026-11-20T11:30:00Z', end_time: '2026-11-20T11:30:01Z' }),
    makeSpan({ trace_id: T2, span_id: id(5), parent_id: id(4), span_name: 'embed', span_type: 'embedding', start_time: '2026-11-20T11:30:00.5Z', end_time: '2026-11-20T11:30:00.75Z' }),
  ];
  const nodes = [makeNode({ node_id: N1, tree_id: TREE }), makeNode({ node_id: N2, tree_id: TREE, parent_id: N1 })];

  await http('create trace 1', (r) => r.post('/tracing/spans').send({ spans: trace1 }));
  await http('create trace 2', (r) => r.post('/tracing/spans').send({ spans: trace2 }));
  await http('create again: conflict', (r) => r.post('/tracing/spans').send({ spans: [trace1[0]] }));
  await http('update llm span', (r) => r.put('/tracing/spans').send({ spans: [{ ...trace1[1], span_name: 'llm-retried', status_code: 'STATUS_CODE_ERROR', status_message: 'retried' }] }));
  await http('read trace 1', (r) => r.get(`/tracing/traces/${T1}`));
  await http('delete one span', (r) => r.delete('/tracing/spans').send({ spans: [{ trace_id: T1, span_id: id(3) }] }));
  await http('delete trace 2', (r) => r.delete(`/tracing/traces/${T2}`));
  await http('trace 2 gone', (r) => r.get(`/tracing/traces/${T2}`));
  await http('otlp json', (r) =>
    r.post('/otlp/v1/traces').send({
      resourceSpans: [{
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'svc' } }] },
        scopeSpans: [{
          scope: { name: 'faults' },
          spans: [
            { traceId: T3, spanId: id(6), name: 'otlp-root', kind: 2, startTimeUnixNano: '1763632800000001000', endTimeUnixNano: '1763632801000000000', status: { code: 1 } },
            { traceId: T3, spanId: id(7), parentSpanId: id(6), name: 'otlp-child', kind: 3, startTimeUnixNano: '1763632800500000000', endTimeUnixNano: '1763632800600000000', status: { code: 2, message: 'boom' } },
          ],
        }],
      }],
    }),
  );
  await http('read otlp span', (r) => r.get(`/tracing/spans/${T3}/${id(6)}`));
  await http('query spans', (r) => r.post('/tracing/spans/query').send({ focus: 'span', windowing: { limit: 10, order: 'ascending' } }));
  await http('ingest nodes', (r) => r.post('/observability/nodes').send({ nodes }));
  await http('re-ingest a node', (r) => r.post('/observability/nodes').send({ nodes: [{ ...nodes[1], node_name: 'renamed' }] }));
  await http('read tree', (r) => r.get(`/observability/trees/${TREE}`));
  await http('query all nodes', (r) => r.post('/observability/nodes/query').send({}));
  await http('delete tree', (r) => r.delete(`/observability/trees/${TREE}`));
  await http('tree gone', (r) => r.get(`/observability/trees/${TREE}`));
  return { steps, createdAt };
}

/** The app with its ClickHouse behind a fake, plus direct connections to the real servers to look at what arrived. */
interface Rig {
  t: TestApp;
  proxy: FakeClickHouse;
  /** The app's Postgres database. */
  pg: Kysely<DB>;
  /** The app's ClickHouse database, not through the proxy. */
  direct: ClickHouseClients;
  health(): Promise<request.Response>;
  gaps(): Promise<MirrorGapRow[]>;
  /** Closes the app (flushing the mirror into whatever the proxy does), then reads the gaps, then drops the databases. */
  closeAndReadGaps(): Promise<{ gaps: MirrorGapRow[]; closeMs: number }>;
  close(): Promise<void>;
}

/** `mode` is where the proxy starts: `forward` lets the startup DDL reach the real server; each test then picks the fault. */
async function startRig(env: Record<string, string> = {}, mode: FakeClickHouseMode = 'forward'): Promise<Rig> {
  const proxy = await FakeClickHouse.start(testClickHouseConfig('default').url, mode);
  // Started healthy, its tables are there before a fault; started in a fault, it is the start that is tested.
  const t = await createTestApp({ ...FAST, CLICKHOUSE_URL: proxy.url, ...env }, { clickhouse: true, awaitSchema: mode === 'forward' });
  const { url, config } = testClickHouseConfig(t.database.name);
  const direct = createClickHouseClients(config, url);
  const pool = createPool(t.database.url, 2);
  // The forced DROP DATABASE at the end can hit a connection the pool is still closing; that is expected.
  pool.on('error', () => undefined);
  const pg = createKysely(pool);
  const gaps = () => pg.selectFrom('mirror_gaps').selectAll().orderBy('id').execute();
  let closed = false;
  const dropAll = async () => {
    closed = true;
    await pg.destroy();
    await t.database.drop();
    await direct.close();
    await dropClickHouseDatabase(config, url);
    await proxy.close();
  };
  return {
    t,
    proxy,
    pg,
    direct,
    health: () => request(t.url).get('/health'),
    gaps,
    closeAndReadGaps: async () => {
      const started = Date.now();
      await t.app.close();
      const closeMs = Date.now() - started;
      const rows = await gaps();
      await dropAll();
      return { gaps: rows, closeMs };
    },
    close: async () => {
      if (closed) return;
      await t.app.close();
      await dropAll();
    },
  };
}

async function expectClickHouseMatchesPostgres(rig: Rig): Promise<void> {
  const both = await snapshotBothSides(rig.pg, rig.direct.query, rig.t.projectId);
  expect(both.pgSpans).toHaveLength(4);
  expect(both.pgNodes).toHaveLength(2);
  expect(both.chSpans).toEqual(both.pgSpans);
  expect(both.chNodes).toEqual(both.pgNodes);
}

const rowsIn = (gaps: MirrorGapRow[]) => gaps.reduce((sum, gap) => sum + gap.row_count, 0);
/** A gap's entries, read as `backfill --gaps` reads them. */
const entriesOf = (gap: MirrorGapRow): GapEntry[] =>
  (gap.keys as unknown[]).map((entry) => historyOf(gap.entity as Entity).readGapEntry(gap.project_id, entry));

describe('the API is isolated from ClickHouse faults', () => {
  let baseline: Step[];
  beforeAll(async () => {
    const off = await createTestApp();
    try {
      baseline = (await runScript(off)).steps;
    } finally {
      await off.close();
    }
    // The script did real work: writes, reads, conflicts and misses.
    expect(baseline.map((s) => s.status)).toEqual(expect.arrayContaining([200, 201, 404, 409]));
  });

  describe('ClickHouse stopped', () => {
    let rig: Rig;
    beforeAll(async () => {
      rig = await startRig();
    });
    afterAll(async () => rig?.close());

    it('answers exactly as with the mirror off; /health stays 200 and reports the breaker open', async () => {
      await rig.proxy.setMode('refuse');
      const { steps } = await runScript(rig.t);
      expect(steps).toEqual(baseline);

      const health = await eventually('the breaker to open', async () => {
        const res = await rig.health();
        return res.body?.info?.mirror?.breaker === 'open' ? res : null;
      });
      expect(health.status).toBe(200);
      expect(health.body.status).toBe('ok');
      expect(health.body.info.postgres.status).toBe('up');
      // Nothing is lost or given up yet: every row waits in the queue.
      expect(health.body.info.mirror).toMatchObject({ enabled: true, queuedRows: SCRIPT_SPAN_ROWS + SCRIPT_NODE_ROWS, openGaps: 0 });
      expect(health.body.info.mirror.lastError).toMatch(/ECONNREFUSED/);
      // /health needs no key: it names the kind of failure, not the server's address (the log has that).
      expect(health.body.info.mirror.lastError).not.toMatch(/127\.0\.0\.1|localhost|:\d{2,5}\b/);
      expect(health.body.info.mirror.lastErrorAt).toEqual(expect.stringMatching(/^\d{4}-\d\d-\d\dT.*Z$/));
      expect(health.body.info.mirror.lastSuccessAt).toBeNull();
    });

    it('once ClickHouse is back, what was queued arrives and no gap is recorded', async () => {
      await rig.proxy.setMode('forward');
      await rig.t.mirror!.writer.drain();
      await expectClickHouseMatchesPostgres(rig);
      expect(await rig.gaps()).toEqual([]);
      const mirror = (await rig.health()).body.info.mirror;
      expect(mirror).toMatchObject({ breaker: 'closed', queuedRows: 0, rowsSent: SCRIPT_SPAN_ROWS + SCRIPT_NODE_ROWS, openGaps: 0 });
      // The outage's error stays on record, and the times show recovery came after it.
      expect(mirror.lastError).toMatch(/ECONNREFUSED/);
      expect(Date.parse(mirror.lastSuccessAt)).toBeGreaterThan(Date.parse(mirror.lastErrorAt));
    });
  });

  describe('ClickHouse hanging', () => {
    let rig: Rig;
    beforeAll(async () => {
      // Longer than the test: the hung insert stays unanswered throughout, so only the shutdown deadline can end it.
      rig = await startRig({ CLICKHOUSE_REQUEST_TIMEOUT_MS: '60000' });
    });
    afterAll(async () => rig?.close());

    it('answers exactly as with the mirror off while ClickHouse holds an unanswered insert', async () => {
      await rig.proxy.setMode('hang');
      // A write in another project gets the first insert hung before the script starts.
      const other = await rig.t.createApiKey();
      await request(rig.t.url).post('/tracing/spans').set({ Authorization: `ApiKey ${other.key}` }).send({ spans: [makeSpan()] }).expect(201);
      await eventually('an insert to hang', () => rig.proxy.stats().inserts >= 1 && rig.proxy.stats().pending >= 1);

      const pendingAtResponse: number[] = [];
      const { steps } = await runScript(rig.t, () => pendingAtResponse.push(rig.proxy.stats().pending));
      expect(steps).toEqual(baseline);
      expect(pendingAtResponse).toHaveLength(baseline.length);
      expect(Math.min(...pendingAtResponse)).toBeGreaterThanOrEqual(1);
      expect(rig.t.mirror!.writer.stats().rowsSent).toBe(0);

      const health = await rig.health();
      expect(health.status).toBe(200);
      expect(health.body.status).toBe('ok');
    });

    it('shutdown ends at its deadline and records every unsent row as a gap (shutdown_deadline)', async () => {
      const unsent = rig.t.mirror!.writer.stats().queuedRows;
      expect(unsent).toBe(1 + SCRIPT_SPAN_ROWS + SCRIPT_NODE_ROWS);

      // Would wait out the 60 s request timeout (and retries) if the deadline were not kept, and the default 10 s
      // deadline passes the jest timeout. The mirror's part is its 300 ms deadline and the gap records' writing;
      // the bound leaves the rest of the close (its pools, on a loaded machine) seconds to spare.
      const { gaps, closeMs } = await rig.closeAndReadGaps();
      expect(closeMs).toBeLessThan(5_000);
      expect(gaps.length).toBeGreaterThan(0);
      for (const gap of gaps) expect(gap.reason).toBe('shutdown_deadline');
      expect(rowsIn(gaps)).toBe(unsent);
      const ofScript = gaps.filter((gap) => gap.project_id === rig.t.projectId);
      expect(rowsIn(ofScript.filter((gap) => gap.entity === 'spans'))).toBe(SCRIPT_SPAN_ROWS);
      expect(rowsIn(ofScript.filter((gap) => gap.entity === 'nodes'))).toBe(SCRIPT_NODE_ROWS);
    }, 10_000);
  });

  it('a hung ClickHouse is given up on after the request timeout; once it answers again, everything arrives', async () => {
    const rig = await startRig({ CLICKHOUSE_REQUEST_TIMEOUT_MS: '500' });
    try {
      await rig.proxy.setMode('hang');
      const { steps } = await runScript(rig.t);
      expect(steps).toEqual(baseline);
      await eventually('an insert to hang', () => rig.proxy.stats().inserts >= 1 && rig.proxy.stats().pending >= 1);

      // The hung requests stay hung: only the client's request timeout frees the writer to retry.
      await rig.proxy.setMode('forward');
      await rig.t.mirror!.writer.drain();
      await expectClickHouseMatchesPostgres(rig);
      expect(await rig.gaps()).toEqual([]);
      expect((await rig.health()).body.info.mirror.lastError).toMatch(/timeout/i);
    } finally {
      await rig.close();
    }
  });

  it('ClickHouse answering a transient error (241): the API is unchanged and the rows arrive once it recovers', async () => {
    // The server answers pings and fails inserts, so every probe lets the batch try again and uses one of its
    // attempts (with the defaults and 100 ms open periods, about a second's worth): enough for the whole fault.
    const rig = await startRig({ MIRROR_MAX_ATTEMPTS: '100' });
    try {
      await rig.proxy.setMode('error', { code: 241 });
      const { steps } = await runScript(rig.t);
      expect(steps).toEqual(baseline);
      await eventually('ClickHouse to answer errors', () => rig.proxy.stats().errors >= 2);

      await rig.proxy.setMode('forward');
      await rig.t.mirror!.writer.drain();
      await expectClickHouseMatchesPostgres(rig);
      expect(await rig.gaps()).toEqual([]);
      expect((await rig.health()).body.info.mirror.lastError).toMatch(/241/);
    } finally {
      await rig.close();
    }
  });

  it('ClickHouse rejecting inserts (60, permanent): the API is unchanged and each batch becomes a gap naming its rows', async () => {
    const rig = await startRig();
    try {
      await rig.proxy.setMode('error', { code: 60 });
      const { steps, createdAt } = await runScript(rig.t);
      expect(steps).toEqual(baseline);
      await rig.t.mirror!.writer.drain();

      const gaps = await rig.gaps();
      expect(gaps.length).toBeGreaterThanOrEqual(2);
      const keysOf = (entity: string) =>
        gaps
          .filter((gap) => gap.entity === entity)
          .flatMap(entriesOf)
          .map((entry) => entry.key.join('/'))
          .sort();
      expect(keysOf('spans')).toEqual(
        [1, 2, 3, 4, 5, 2, 3, 4, 5].map((n) => `${n <= 3 ? T1 : T2}/${id(n)}`).concat([`${T3}/${id(6)}`, `${T3}/${id(7)}`]).sort(),
      );
      const otlpNodes = (await rig.pg.selectFrom('nodes').select('node_id').where('tree_id', '!=', TREE).execute()).map((n) => n.node_id);
      expect(keysOf('nodes')).toEqual([N1, N2, N2, N1, N2, ...otlpNodes].sort());

      for (const gap of gaps) {
        expect(gap.project_id).toBe(rig.t.projectId);
        expect(gap.reason).toMatch(/^send_failed: ClickHouse code 60 UNKNOWN_TABLE/);
        const entries = entriesOf(gap);
        expect(gap.row_count).toBe(entries.length);
        // Each entry carries its row's created_at (for its tombstone), and the time range is exactly theirs.
        const times = entries.map((entry) => createdAt.get(`${gap.entity}:${entry.key.join('/')}`)).sort();
        expect(times).not.toContain(undefined);
        expect(entries.map((entry) => entry.tombstone?.createdAt).sort()).toEqual(times);
        expect([gap.min_created_at, gap.max_created_at]).toEqual([times[0], times[times.length - 1]]);
      }

      const both = await snapshotBothSides(rig.pg, rig.direct.query, rig.t.projectId);
      expect(both.pgSpans).toHaveLength(4);
      expect(both.chSpans).toEqual([]);
      expect(both.chNodes).toEqual([]);
      expect((await rig.health()).body.info.mirror).toMatchObject({ openGaps: gaps.length, queuedRows: 0 });
    } finally {
      await rig.close();
    }
  });

  it('ClickHouse losing its database while the API runs (a wiped disk, a rebuilt replica): the DDL runs again and every row arrives, no gap', async () => {
    const rig = await startRig();
    try {
      const { config, url } = testClickHouseConfig(rig.t.database.name);
      await dropClickHouseDatabase(config, url);
      const { steps } = await runScript(rig.t);
      expect(steps).toEqual(baseline);
      await rig.t.mirror!.writer.drain();
      expect(await rig.gaps()).toEqual([]);
      await expectClickHouseMatchesPostgres(rig);
      expect((await rig.health()).body.info.mirror).toMatchObject({ schemaApplied: true, queuedRows: 0, openGaps: 0 });
    } finally {
      await rig.close();
    }
  });

  /**
   * An API started while ClickHouse could not take its DDL: it answers as with the mirror off, and once
   * ClickHouse answers, the schema is applied and every row arrives, none as a gap (inserts sent before the
   * tables existed would have been rejected, UNKNOWN_DATABASE, and become gaps).
   */
  async function expectServedThenCaughtUp(rig: Rig): Promise<void> {
    const { steps } = await runScript(rig.t);
    expect(steps).toEqual(baseline);
    expect((await rig.health()).body.info.mirror).toMatchObject({ status: 'up', schemaApplied: false });

    await rig.proxy.setMode('forward');
    await rig.t.mirror!.writer.drain();
    expect((await rig.health()).body.info.mirror).toMatchObject({ schemaApplied: true, breaker: 'closed', queuedRows: 0 });
    expect(await rig.gaps()).toEqual([]);
    await expectClickHouseMatchesPostgres(rig);
  }

  it('ClickHouse down at startup: the API starts and answers as usual; once ClickHouse is up, its schema is applied and the rows arrive', async () => {
    const rig = await startRig({}, 'refuse');
    try {
      await expectServedThenCaughtUp(rig);
    } finally {
      await rig.close();
    }
  });

  it('ClickHouse not answering at startup: the API starts without waiting for its DDL, which goes through once ClickHouse answers', async () => {
    const rig = await startRig({ CLICKHOUSE_REQUEST_TIMEOUT_MS: '5000' }, 'hang');
    try {
      // Serving while the DDL's first request (its ping) still hangs: the start did not wait for it (it did, up
      // to 15 s, and would have found it failed here, 5 s on). The DDL runs in the background, so its ping may
      // reach the proxy a moment after the start returns; it must then still be hanging, well within its 5 s.
      await eventually('the DDL\'s ping to hang', () => rig.proxy.stats().pings >= 1, 2_000);
      expect(rig.proxy.stats()).toMatchObject({ pings: 1, pending: 1 });
      await expectServedThenCaughtUp(rig);
    } finally {
      await rig.close();
    }
  }, 60_000);

  it('ClickHouse stopped for longer than a batch\'s retries, with one table written: the batch waits for it and arrives, no gap', async () => {
    // With spans only, each failure is the one batch's, so its last attempt is the one that opens the breaker.
    const rig = await startRig();
    try {
      await rig.proxy.setMode('refuse');
      const auth = { Authorization: `ApiKey ${rig.t.apiKey}` };
      const trace = traceId();
      const spans = Array.from({ length: 10 }, () => makeSpan({ trace_id: trace, span_id: spanId() }));
      await request(rig.t.url).post('/tracing/spans').set(auth).send({ spans }).expect(201);

      await eventually('the breaker to open', () => rig.t.mirror!.writer.stats().breaker === 'open');
      // Five failed probes (one per 100 ms open period here) of a server still down, counted by the times
      // they noted, not by a sleep that timers running late would cut short: nothing is given up.
      const failedProbes = new Set<number>();
      await eventually('five failed probes', () => {
        const { lastError, lastErrorAt } = rig.t.mirror!.writer.stats();
        if (lastErrorAt !== null && lastError?.startsWith('ClickHouse ping failed')) failedProbes.add(lastErrorAt);
        return failedProbes.size >= 5;
      }, 10_000, 10);
      expect(rig.t.mirror!.writer.stats()).toMatchObject({ queuedRows: 10, rowsDropped: 0 });

      await rig.proxy.setMode('forward');
      await rig.t.mirror!.writer.drain();
      expect(await rig.gaps()).toEqual([]);
      const both = await snapshotBothSides(rig.pg, rig.direct.query, rig.t.projectId);
      expect(both.chSpans).toHaveLength(10);
      expect(both.chSpans).toEqual(both.pgSpans);
    } finally {
      await rig.close();
    }
  });

  it('memory is bounded: past MIRROR_QUEUE_MAX_BYTES rows become gaps, and sent + gap rows = rows written', async () => {
    const rig = await startRig({ MIRROR_QUEUE_MAX_BYTES: '8192' });
    try {
      await rig.proxy.setMode('refuse');
      const auth = { Authorization: `ApiKey ${rig.t.apiKey}` };
      const written: string[] = [];
      for (let batch = 0; batch < 3; batch++) {
        const trace = traceId();
        const spans = Array.from({ length: 10 }, () => makeSpan({ trace_id: trace, span_id: spanId() }));
        await request(rig.t.url).post('/tracing/spans').set(auth).send({ spans }).expect(201);
        written.push(...spans.map((s) => `${s.trace_id}/${s.span_id}`));
      }
      // The mirror maps accepted rows a slice per event-loop turn after each response: the bound applies once it has.
      await eventually('the mirror to map what it accepted', () => rig.t.mirror!.writer.stats().acceptedRows === 0);
      const held = rig.t.mirror!.writer.stats();
      expect(held.queuedBytes).toBeLessThanOrEqual(8192);
      expect(held.queuedRows).toBeGreaterThan(0);
      expect(held.queuedRows).toBeLessThan(written.length);

      await rig.proxy.setMode('forward');
      await rig.t.mirror!.writer.drain();

      const gaps = await rig.gaps();
      for (const gap of gaps) expect(gap.reason).toBe('queue_full');
      const inGaps = gaps.flatMap(entriesOf).map((entry) => entry.key.join('/'));
      const both = await snapshotBothSides(rig.pg, rig.direct.query, rig.t.projectId);
      const inClickHouse = both.chSpans.map((s) => `${s.trace_id}/${s.span_id}`);
      expect(inClickHouse.length).toBe(held.queuedRows);
      expect(rig.t.mirror!.writer.stats().rowsSent + rowsIn(gaps)).toBe(written.length);
      // Each row is in exactly one place.
      expect([...inClickHouse, ...inGaps].sort()).toEqual([...written].sort());
    } finally {
      await rig.close();
    }
  });
});
