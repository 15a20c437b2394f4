import { Transform } from 'node:stream';
import { ClickHouseClient } from '@clickhouse/client';
import { Kysely, sql } from 'kysely';
import { Client, Pool } from 'pg';
import { Backfill, BatchGrewError, planBackfill } from '../../src/dbs/backfill/backfill';
import { BackfillCheckpointsRepository, RunInProgressError } from '../../src/dbs/backfill/backfill-checkpoints.repository';
import { ClickHouseHistory } from '../../src/dbs/backfill/clickhouse-history';
import { GapReplay } from '../../src/dbs/backfill/gap-replay';
import { HistoryScope, runKeyOf } from '../../src/dbs/backfill/history-scope';
import { KeysetReader } from '../../src/dbs/backfill/keyset-reader';
import * as uninterruptible from '../../src/dbs/backfill/uninterruptible';
import { holdingTombstones } from '../../src/dbs/backfill/uninterruptible';
import { nodeHistory, spanHistory } from '../../src/dbs/backfill/history-entities';
import { gapEntryOf, groupIntoGaps } from '../../src/dbs/clickhouse/gap-ledger';
import { nodeTombstone, toNodeGapRow } from '../../src/dbs/clickhouse/node-clickhouse-row.mapper';
import { spanTombstone, toSpanGapRow } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { traceIdToUuid } from '../../src/tracing/trace-id';
import { Verifier } from '../../src/dbs/backfill/verify';
import { createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { NodeMirrorReads } from '../../src/dbs/clickhouse/node-mirror-reads';
import { SpanMirrorReads } from '../../src/dbs/clickhouse/span-mirror-reads';
import { DB } from '../../src/dbs/postgres/database';
import { KEYS_PER_RECORD, OpenGap, PostgresMirrorGapsRepository } from '../../src/dbs/postgres/postgres-mirror-gaps.repository';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { ObservabilityService } from '../../src/observability/observability.service';
import { TracingService } from '../../src/tracing/tracing.service';
import { createTestApp, TestApp } from '../support/app';
import { createTestClickHouse, TestClickHouse } from '../support/clickhouse';
import { makeNode, makeSpan, spanId, traceId, uuid } from '../support/fixtures';
import { seedNodes, seedSpans } from '../support/history';
import { createTestDatabase, TestDatabase } from '../support/postgres';

const P1 = '0a000000-0000-4000-8000-000000000001';
const P2 = '0a000000-0000-4000-8000-000000000002';
const P3 = '0a000000-0000-4000-8000-000000000003';
const ALL_SPANS: HistoryScope = { entity: 'spans', projectIds: null };
const ALL_NODES: HistoryScope = { entity: 'nodes', projectIds: null };

async function liveCount(client: ClickHouseClient, table: string, final = true): Promise<number> {
  const result = await client.query({
    query: final ? `SELECT count() AS n FROM ${table} FINAL WHERE is_deleted = 0` : `SELECT count() AS n FROM ${table}`,
    format: 'JSONEachRow',
  });
  return Number((await result.json<{ n: string }>())[0].n);
}

async function pgCount(db: Kysely<DB>, table: 'spans' | 'nodes'): Promise<number> {
  const { rows } = await sql<{ n: string }>`select count(*) as n from ${sql.table(table)}`.execute(db);
  return Number(rows[0].n);
}

/** Every open gap of either entity, in any project, as a replay lists them (without their keys). */
async function openGaps(gaps: PostgresMirrorGapsRepository): Promise<OpenGap[]> {
  const open: OpenGap[] = [];
  for await (const gap of gaps.open({ entities: ['spans', 'nodes'], projectIds: null })) open.push(gap);
  return open;
}

describe('backfill (real Postgres and ClickHouse)', () => {
  let pg: TestDatabase;
  let ch: TestClickHouse;
  let history: ClickHouseHistory;

  beforeEach(async () => {
    [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse()]);
    history = new ClickHouseHistory(ch.clients, { url: ch.url, database: ch.database });
  });
  afterEach(async () => Promise.all([pg?.drop(), ch?.drop()]));

  it('copies every row at its live version; a re-run reports already complete; --restart adds no net rows', async () => {
    await seedSpans(pg.db, { projects: [P1, P2, P3], days: 4, rows: 12_000 });
    await seedNodes(pg.db, { projects: [P1, P2], days: 3, rows: 3_000 });
    const backfill = new Backfill(pg, history);

    const spans = await backfill.run(ALL_SPANS, { batchRows: 2_000, batchBytes: 16 << 20 });
    const nodes = await backfill.run(ALL_NODES);
    expect(spans).toMatchObject({ outcome: 'complete', rowsCopied: 12_000, totalRowsCopied: 12_000, batches: 6, resumed: false });
    expect(nodes).toMatchObject({ outcome: 'complete', rowsCopied: 3_000, batches: 1 });

    const report = await new Verifier(pg.db, history).verify([ALL_SPANS, ALL_NODES]);
    expect(report.differing).toEqual([]);
    expect(report.rows).toEqual({ postgres: 15_000, clickhouse: 15_000 });
    expect(report.contentChecked).toBe(report.buckets.length);

    const again = await backfill.run(ALL_SPANS);
    expect(again).toMatchObject({ outcome: 'already-complete', rowsCopied: 0, totalRowsCopied: 12_000 });

    const restarted = await backfill.run(ALL_SPANS, { batchRows: 5_000, batchBytes: 16 << 20, restart: true });
    expect(restarted).toMatchObject({ outcome: 'complete', rowsCopied: 12_000, totalRowsCopied: 12_000 });
    expect(restarted.upperBound > spans.upperBound).toBe(true);
    expect(await liveCount(ch.clients.query, 'spans')).toBe(12_000);
    await ch.clients.query.command({ query: 'OPTIMIZE TABLE spans FINAL', clickhouse_settings: { wait_end_of_query: 1 } });
    expect(await liveCount(ch.clients.query, 'spans', false)).toBe(12_000);

    // restart() starts a finished run over without copying: the run after it copies everything again (not
    // "already complete"), from its start, under a new bound.
    await backfill.restart([ALL_NODES]);
    const nodesAgain = await backfill.run(ALL_NODES);
    expect(nodesAgain).toMatchObject({ outcome: 'complete', rowsCopied: 3_000, totalRowsCopied: 3_000, resumedFrom: null });
    expect(nodesAgain.upperBound > nodes.upperBound).toBe(true);
  });

  // A checkpoint counts rows in the table it copied into: taken into a table made again (or another server's),
  // "already complete" or a resume left everything before it out, and only a verify would have said so.
  it('starts a run over, saying why, when its table in ClickHouse is not the one its checkpoint copied into', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 3_000 });
    const lines: string[] = [];
    const backfill = new Backfill(pg, history, (line) => lines.push(line));
    const remakeSpans = async () => {
      for (const query of ['RENAME TABLE spans TO spans_before', 'CREATE TABLE spans AS spans_before', 'DROP TABLE spans_before']) {
        await ch.clients.query.command({ query, clickhouse_settings: { wait_end_of_query: 1 } });
      }
    };
    const first = await history.tableIdentity('spans');
    expect(first).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-/);
    expect(await backfill.run(ALL_SPANS)).toMatchObject({ outcome: 'complete', rowsCopied: 3_000 });

    await remakeSpans();
    expect(await history.tableIdentity('spans')).not.toBe(first);
    expect(await backfill.run(ALL_SPANS)).toMatchObject({ outcome: 'complete', rowsCopied: 3_000, totalRowsCopied: 3_000, resumed: false });
    expect(lines).toContainEqual(expect.stringMatching(/^backfill spans: run "spans project=\* since=- until=-" copied 3000 rows into another ClickHouse table spans \(uuid .+; now .+: made again, or another server\): starting it over$/));
    expect(await liveCount(ch.clients.query, 'spans')).toBe(3_000);
    // The same table again: complete, as before.
    expect(await backfill.run(ALL_SPANS)).toMatchObject({ outcome: 'already-complete' });

    // A run cut short, then resumed into a table made again: from the first row, not from its cursor.
    const failing = new ClickHouseHistory(ch.clients, { url: ch.url, database: ch.database });
    let inserts = 0;
    failing.insertTabSeparated = async (...args) => {
      if (++inserts === 2) throw new Error('ClickHouse went away');
      return history.insertTabSeparated(...args);
    };
    await expect(new Backfill(pg, failing).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20, restart: true })).rejects.toThrow('went away');
    await remakeSpans();
    expect(await backfill.run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 })).toMatchObject({ rowsCopied: 3_000, totalRowsCopied: 3_000, resumed: false });
    expect(await liveCount(ch.clients.query, 'spans')).toBe(3_000);

    // A table without a UUID (in a database of the Ordinary engine) is not the one the checkpoint named either.
    const noUuid = Object.create(history) as ClickHouseHistory;
    noUuid.tableIdentity = async () => null;
    lines.length = 0;
    expect(await new Backfill(pg, noUuid, (line) => lines.push(line)).run(ALL_SPANS)).toMatchObject({ outcome: 'complete', rowsCopied: 3_000, resumed: false });
    expect(lines).toContainEqual(expect.stringMatching(/^backfill spans: run "spans project=\* since=- until=-" copied 3000 rows into another ClickHouse table spans \(uuid .+; now none: made again, or another server\): starting it over$/));
  });

  it('fails naming Postgres when a batch\'s COPY cannot start (no connection), and the next run resumes', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 3_000 });
    let copies = 0;
    const pool = Object.create(pg.pool) as Pool;
    pool.connect = (async () => {
      if (++copies === 2) throw Object.assign(new Error('sorry, too many clients already'), { code: '53300' });
      return pg.pool.connect();
    }) as Pool['connect'];
    const failed = new Backfill({ db: pg.db, pool }, history).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 });
    // Not retried as an insert (53300 read as a ClickHouse code), nor named ClickHouse's failure.
    await expect(failed).rejects.toThrow('Postgres failed to start the copy of spans: sorry, too many clients already; run it again to resume once it answers');
    await expect(failed).rejects.toMatchObject({ name: 'RowSourceError' });
    expect(copies).toBe(2);
    expect(await new Backfill(pg, history).run(ALL_SPANS)).toMatchObject({ resumed: true, rowsCopied: 2_000, totalRowsCopied: 3_000 });
    expect(await liveCount(ch.clients.query, 'spans')).toBe(3_000);
  });

  it('ends and copies everything when more rows than a batch share one created_at', async () => {
    await seedSpans(pg.db, { projects: [P1, P2], days: 1, rows: 5_000, createdAt: '2026-10-01T12:00:00.000001Z' });
    const result = await new Backfill(pg, history).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 });
    expect(result).toMatchObject({ rowsCopied: 5_000, batches: 5 });
    expect(await liveCount(ch.clients.query, 'spans')).toBe(5_000);
  });

  it('bounds batches by bytes as well as rows', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 2_000 });
    // ~1.4 KB lines: 128 KiB holds under a hundred of them, far fewer than the row limit.
    const result = await new Backfill(pg, history).run(ALL_SPANS, { batchRows: 5_000, batchBytes: 128 * 1024 });
    expect(result.rowsCopied).toBe(2_000);
    expect(result.batches).toBeGreaterThanOrEqual(20);
    expect(await liveCount(ch.clients.query, 'spans')).toBe(2_000);
  });

  it('ends batches at the byte limit, counted as Postgres stores the rows', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 50 });
    // ~1.3 MB of hex that does not compress: each of these rows is about that big as stored.
    await sql`update spans set attributes = jsonb_build_object('blob', (select string_agg(md5(random()::text || g::text), '') from generate_series(1, 40000) g))
      where span_name in ('span-1', 'span-2', 'span-3')`.execute(pg.db);
    const { rows: big } = await sql<{ bytes: number }>`select max(pg_column_size(attributes)) as bytes from spans`.execute(pg.db);
    const batchBytes = Math.floor(big[0].bytes * 0.9);
    const rowsPerInsert: number[] = [];
    const counting = Object.create(history) as ClickHouseHistory;
    counting.insertTabSeparated = async (table, columns, rows, token) =>
      history.insertTabSeparated(
        table,
        columns,
        async () => {
          let lines = 0;
          // A pipe, not a 'data' listener: that would start the flow before ClickHouse reads it.
          const counter = new Transform({
            transform(chunk: Buffer, _encoding, done) {
              for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) lines++;
              done(null, chunk);
            },
            flush(done) {
              rowsPerInsert.push(lines);
              done();
            },
          });
          return (await rows()).pipe(counter);
        },
        token,
      );
    const result = await new Backfill(pg, counting).run(ALL_SPANS, { batchRows: 5_000, batchBytes });
    expect(result.rowsCopied).toBe(50);
    // A batch ends with the row that takes it to the limit: each big row ends one.
    expect(result.batches).toBeGreaterThanOrEqual(3);
    expect(rowsPerInsert.reduce((a, b) => a + b, 0)).toBe(50);
    expect(rowsPerInsert).toHaveLength(result.batches);
    expect((await new Verifier(pg.db, history).verify([ALL_SPANS])).differing).toEqual([]);
  });

  it('copies only the chosen project and time range, as a run of its own', async () => {
    await seedSpans(pg.db, { projects: [P1, P2], days: 10, rows: 4_000 });
    const { rows } = await sql<{ since: string; until: string }>`
      select min(created_at) + interval '3 days' as since, min(created_at) + interval '6 days' as until from spans`.execute(pg.db);
    const scope: HistoryScope = { entity: 'spans', projectIds: [P2], since: rows[0].since, until: rows[0].until };
    const expected = await sql<{ n: string }>`select count(*) as n from spans
      where project_id = ${P2} and created_at >= ${rows[0].since} and created_at < ${rows[0].until}`.execute(pg.db);

    const result = await new Backfill(pg, history).run(scope);
    expect(result.rowsCopied).toBe(Number(expected.rows[0].n));
    expect(result.runKey).toBe(runKeyOf(scope));
    expect(await liveCount(ch.clients.query, 'spans')).toBe(Number(expected.rows[0].n));
    expect((await new Verifier(pg.db, history).verify([scope])).differing).toEqual([]);
    // The whole table is another run, which copies the rest.
    expect((await new Backfill(pg, history).run(ALL_SPANS)).rowsCopied).toBe(4_000);
  });

  it('a dry run counts per entity and writes nothing, not even a checkpoint', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 700 });
    await seedNodes(pg.db, { projects: [P1], days: 2, rows: 300 });
    expect(await planBackfill(pg.db, ALL_SPANS)).toMatchObject({ rows: 700, checkpoint: 'new' });
    expect(await planBackfill(pg.db, ALL_NODES)).toMatchObject({ rows: 300, checkpoint: 'new' });
    expect(await pg.db.selectFrom('backfill_checkpoints').selectAll().execute()).toEqual([]);
    expect(await liveCount(ch.clients.query, 'spans', false)).toBe(0);
  });

  describe('when writes commit into a batch\'s range after its bound was taken', () => {
    /**
     * Rows whose INSERT read the clock before the run's bound and commit only now, just after the
     * first row: they land inside the first batch, after bound() counted it and before its COPY.
     */
    function commitIntoFirstBatch(rows: number) {
      const original = KeysetReader.prototype.bound;
      let done = false;
      return jest.spyOn(KeysetReader.prototype, 'bound').mockImplementation(async function (this: KeysetReader<unknown>, ...args) {
        const end = await original.apply(this, args);
        if (end && !done) {
          done = true;
          await sql`insert into spans (project_id, trace_id, span_id, trace_type, span_type, span_kind, span_name, start_time, end_time, status_code, created_at, updated_at)
            select first.project_id, gen_random_uuid(), decode(lpad(to_hex(g), 16, '0'), 'hex'), 'invocation', 'llm', 'SPAN_KIND_CLIENT', 'late',
                   first.start_time, first.end_time, 'STATUS_CODE_OK', first.created_at + g * interval '1 microsecond', first.created_at + g * interval '1 microsecond'
            from (select * from spans order by created_at limit 1) first, generate_series(1, ${rows}) g`.execute(pg.db);
        }
        return end;
      });
    }

    afterEach(() => jest.restoreAllMocks());

    it('copies the whole range, the rows that came in and the batch\'s last rows alike', async () => {
      await seedSpans(pg.db, { projects: [P1], days: 1, rows: 30 });
      commitIntoFirstBatch(3);
      const result = await new Backfill(pg, history).run(ALL_SPANS, { batchRows: 10, batchBytes: 16 << 20 });
      expect(result).toMatchObject({ outcome: 'complete', rowsCopied: 33, batches: 3 });
      const report = await new Verifier(pg.db, history).verify([ALL_SPANS]);
      expect(report.differing).toEqual([]);
      expect(report.rows).toEqual({ postgres: 33, clickhouse: 33 });
    });

    it('stops before the checkpoint when a batch doubled (its COPY may be cut short), and a rerun copies it', async () => {
      await seedSpans(pg.db, { projects: [P1], days: 1, rows: 30 });
      commitIntoFirstBatch(10);
      await expect(new Backfill(pg, history).run(ALL_SPANS, { batchRows: 10, batchBytes: 16 << 20 })).rejects.toThrow(BatchGrewError);
      expect(await pg.db.selectFrom('backfill_checkpoints').select(['status', 'rows_copied', 'cursor']).executeTakeFirstOrThrow()).toEqual({
        status: 'running',
        rows_copied: '0',
        cursor: null,
      });
      jest.restoreAllMocks();

      const resumed = await new Backfill(pg, history).run(ALL_SPANS, { batchRows: 10, batchBytes: 16 << 20 });
      expect(resumed).toMatchObject({ outcome: 'complete', resumed: true, totalRowsCopied: 40 });
      expect((await new Verifier(pg.db, history).verify([ALL_SPANS])).differing).toEqual([]);
    });
  });

  it('resumes from the last accepted batch after a failure, and refuses a second concurrent run of the same scope', async () => {
    await seedSpans(pg.db, { projects: [P1, P2], days: 3, rows: 6_000 });
    // ClickHouse accepts three batches, then goes away.
    let inserts = 0;
    const failing = Object.create(history) as ClickHouseHistory;
    failing.insertTabSeparated = async (...args) => {
      if (++inserts > 3) throw new Error('connection reset');
      return history.insertTabSeparated(...args);
    };
    await expect(new Backfill(pg, failing).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 })).rejects.toThrow('connection reset');
    const checkpoint = await pg.db.selectFrom('backfill_checkpoints').selectAll().executeTakeFirstOrThrow();
    expect(checkpoint).toMatchObject({ status: 'running', rows_copied: '3000' });

    // The same run key locked in another database on this server is another run: it neither blocks this one
    // nor is named as its holder (it is locked first, so a description that ignored databases would name it).
    const elsewhere = await createTestDatabase();
    const otherDatabase = new Client({ connectionString: elsewhere.url, application_name: 'another database' });
    await otherDatabase.connect();
    await otherDatabase.query('select pg_advisory_lock(hashtextextended($1, 0))', [`backfill ${runKeyOf(ALL_SPANS)}`]);

    // Another process holds the run's lock: a second run fails at once and says why.
    const other = new Client({ connectionString: pg.url, application_name: 'a stuck backfill' });
    await other.connect();
    await other.query('select pg_advisory_lock(hashtextextended($1, 0))', [`backfill ${runKeyOf(ALL_SPANS)}`]);
    const { rows: holder } = await other.query<{ pid: number }>('select pg_backend_pid() as pid');
    const refused = new Backfill(pg, history).run(ALL_SPANS);
    await expect(refused).rejects.toThrow(RunInProgressError);
    await expect(refused).rejects.toThrow(
      new RegExp(
        `^another backfill of the same scope is running \\(run key "${runKeyOf(ALL_SPANS).replace(/[*]/g, '\\*')}"\\): its Postgres session \\(pid ${holder[0].pid}; ` +
          `application "a stuck backfill", (from [^,]+|over a local socket), connected since \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{6}Z\\) holds the run's lock\\. .*select pg_terminate_backend\\(${holder[0].pid}\\)$`,
      ),
    );
    // A restart of both entities is refused as a whole: nodes, first in line, is not started over either.
    await expect(new Backfill(pg, history).restart([ALL_NODES, ALL_SPANS])).rejects.toThrow(RunInProgressError);
    expect(await pg.db.selectFrom('backfill_checkpoints').selectAll().execute()).toEqual([checkpoint]);
    await other.end();

    const resumed = await new Backfill(pg, history).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 });
    await otherDatabase.end();
    await elsewhere.drop();
    expect(resumed).toMatchObject({ outcome: 'complete', resumed: true, rowsCopied: 3_000, totalRowsCopied: 6_000 });
    expect(resumed.resumedFrom).toEqual(checkpoint.cursor);
    expect(await liveCount(ch.clients.query, 'spans')).toBe(6_000);
  });

  it('fails when ClickHouse refuses the inserts without holding Postgres connections, and the next run copies everything', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 3_000 });
    const refused = createClickHouseClients(ch.config, 'http://127.0.0.1:1');
    const noWait = async () => undefined;
    const refusing = new ClickHouseHistory({ insert: refused.insert, query: ch.clients.query }, { url: ch.url, database: ch.database }, noWait);
    try {
      await expect(new Backfill(pg, refusing).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 })).rejects.toThrow(/failed after 4 attempt/);
    } finally {
      await refused.close();
    }
    // Each attempt opened a COPY; none may be left paused on a checked-out connection.
    expect({ total: pg.pool.totalCount - pg.pool.idleCount, waiting: pg.pool.waitingCount }).toEqual({ total: 0, waiting: 0 });
    const result = await new Backfill(pg, history).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 });
    expect(result).toMatchObject({ rowsCopied: 3_000, resumed: true });
    expect(await liveCount(ch.clients.query, 'spans')).toBe(3_000);
  });

  it('stops when its lock session is gone (another run may have started), and the next run resumes without storing the landed batch twice', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 4_000 });
    // No merges: ReplacingMergeTree would fold a batch stored twice, and the raw count below would not see it.
    await ch.clients.query.command({ query: 'SYSTEM STOP MERGES spans' });
    try {
      await lostLockThenResume();
    } finally {
      await ch.clients.query.command({ query: 'SYSTEM START MERGES spans' });
    }
  });

  async function lostLockThenResume(): Promise<void> {
    const pool = createPool(pg.url, 4);
    pool.on('connect', (client) => client.on('error', () => undefined));
    const db = createKysely(pool);
    const admin = new Client({ connectionString: pg.url });
    await admin.connect();
    // After the first batch, end the session that holds the run's advisory lock (as an idle timeout would).
    let inserts = 0;
    const dropping = Object.create(history) as ClickHouseHistory;
    dropping.insertTabSeparated = async (...args) => {
      if (++inserts === 2) {
        // The first batch's checkpoint lands while this one is sent; wait for it, then end the session.
        while ((await admin.query(`select rows_copied from backfill_checkpoints`)).rows[0]?.rows_copied !== '1000') await new Promise((r) => setTimeout(r, 10));
        await admin.query(`select pg_terminate_backend(pid) from pg_locks where locktype = 'advisory' and database = (select oid from pg_database where datname = current_database())`);
      }
      return history.insertTabSeparated(...args);
    };
    try {
      await expect(new Backfill({ db, pool }, dropping).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 })).rejects.toThrow('lost its lock');
      expect(await pg.db.selectFrom('backfill_checkpoints').select('rows_copied').executeTakeFirstOrThrow()).toEqual({ rows_copied: '1000' });
    } finally {
      await admin.end();
      await db.destroy();
    }
    // The second batch (and the third, when it was in flight too) landed in ClickHouse without its checkpoint:
    // the resume sends them again, with the same tokens, and ClickHouse drops them.
    expect([2_000, 3_000]).toContain(await liveCount(ch.clients.query, 'spans', false));
    expect(await new Backfill(pg, history).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 })).toMatchObject({ resumed: true, rowsCopied: 3_000, totalRowsCopied: 4_000 });
    expect(await liveCount(ch.clients.query, 'spans', false)).toBe(4_000);
  }

  it('fails naming Postgres when a batch\'s COPY fails, and the next run resumes', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 3_000 });
    const admin = new Client({ connectionString: pg.url });
    // Watches from outside the locking transaction: inside one, pg_stat_activity keeps its first reading.
    const watcher = new Client({ connectionString: pg.url });
    await Promise.all([admin.connect(), watcher.connect()]);
    // The second batch's COPY waits behind a lock the test takes once its connection is ready, and is
    // cancelled there (as a DBA's pg_cancel_backend or a role's statement_timeout would): SQLSTATE 57014,
    // which the insert read as a ClickHouse code, reporting "ClickHouse ... stopped answering".
    let copies = 0;
    const pool = Object.create(pg.pool) as Pool;
    pool.connect = (async () => {
      const client = await pg.pool.connect();
      if (++copies === 2) {
        await admin.query('begin');
        await admin.query('lock table spans in access exclusive mode');
      }
      return client;
    }) as Pool['connect'];
    const cancelled = (async () => {
      const waiting = `select pid from pg_stat_activity where datname = current_database() and query ilike 'copy%' and wait_event_type = 'Lock'`;
      try {
        for (const deadline = Date.now() + 30_000; (await watcher.query(waiting)).rowCount === 0; await new Promise((done) => setTimeout(done, 10))) {
          if (Date.now() > deadline) throw new Error('no COPY waited for the lock');
        }
        await watcher.query(`select pg_cancel_backend(pid) from (${waiting}) as copy`);
      } finally {
        // Released whatever happened: held, the run would wait on it for ever instead of failing.
        await admin.query('rollback');
      }
    })();
    try {
      const failed = new Backfill({ db: pg.db, pool }, history).run(ALL_SPANS, { batchRows: 1_000, batchBytes: 16 << 20 });
      failed.catch(() => undefined);
      // The watch's own failure first, if it failed: the run's would only follow from it.
      await cancelled;
      await expect(failed).rejects.toThrow(
        'Postgres failed during the copy of spans: canceling statement due to user request; run it again to resume once it answers',
      );
      await expect(failed).rejects.toMatchObject({ name: 'RowSourceError' });
    } finally {
      await Promise.all([admin.end(), watcher.end()]);
    }
    expect({ copies, checkpoint: await pg.db.selectFrom('backfill_checkpoints').select('rows_copied').executeTakeFirstOrThrow() }).toEqual({
      copies: 2,
      checkpoint: { rows_copied: '1000' },
    });
    expect(await new Backfill(pg, history).run(ALL_SPANS)).toMatchObject({ resumed: true, rowsCopied: 2_000, totalRowsCopied: 3_000 });
    expect(await liveCount(ch.clients.query, 'spans')).toBe(3_000);
  });

  it('moves a checkpoint, or marks it complete, only for the session holding that run\'s lock, not any advisory lock of the same pid', async () => {
    const checkpoints = new BackfillCheckpointsRepository(pg.db);
    const runKey = runKeyOf(ALL_SPANS);
    await checkpoints.start(runKey, ALL_SPANS, null);
    const other = new Client({ connectionString: pg.url });
    await other.connect();
    try {
      // A session whose pid holds some advisory lock, but not the run's (as a new session that reused a dropped one's pid might).
      const { rows } = await other.query<{ pid: number }>(`select pg_backend_pid() as pid, pg_advisory_lock(42)`);
      const name = `backfill ${runKey}`;
      await expect(checkpoints.advance(runKey, ['a'], 5, { name, pid: rows[0].pid })).rejects.toThrow('lost its lock');
      expect(await checkpoints.find(runKey)).toMatchObject({ rowsCopied: 0 });

      // Nor is it marked complete: a run whose lock session ended may have been started over (--restart) since,
      // and "complete" would make the next run skip the range the restarted one had not copied.
      await expect(checkpoints.finish(runKey, { name, pid: rows[0].pid })).rejects.toThrow('lost its lock');
      expect(await checkpoints.find(runKey)).toMatchObject({ status: 'running', finishedAt: null });

      await other.query(`select pg_advisory_lock(hashtextextended($1, 0))`, [name]);
      await checkpoints.advance(runKey, ['a'], 5, { name, pid: rows[0].pid });
      expect(await checkpoints.find(runKey)).toMatchObject({ rowsCopied: 5 });
      await checkpoints.finish(runKey, { name, pid: rows[0].pid });
      expect(await checkpoints.find(runKey)).toMatchObject({ status: 'complete' });
    } finally {
      await other.end();
    }
  });

  it("keeps its lock session through the database's idle_session_timeout: the session runs nothing while the run goes on", async () => {
    const idle = await createTestDatabase();
    try {
      await sql`alter database ${sql.id(idle.name)} set idle_session_timeout = '300ms'`.execute(idle.db);
      const db = createKysely(createPool(idle.url, 2));
      const lockHeld = () =>
        sql<{ held: boolean }>`select exists (select 1 from pg_locks where locktype = 'advisory' and granted
                                   and database = (select oid from pg_database where datname = current_database())) as held`.execute(idle.db);
      try {
        await new BackfillCheckpointsRepository(db).withRunLock('idle', async () => {
          await new Promise((resolve) => setTimeout(resolve, 1_000));
          expect((await lockHeld()).rows[0].held).toBe(true);
        });
      } finally {
        await db.destroy();
      }
    } finally {
      await idle.drop();
    }
  });

  it('--gaps replays gap records: current versions for keys Postgres has, tombstones for keys it lost', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 2, rows: 40 });
    await seedNodes(pg.db, { projects: [P1], days: 2, rows: 10 });
    const backfill = new Backfill(pg, history);
    await backfill.run(ALL_SPANS);
    await backfill.run(ALL_NODES);

    // Writes the mirror never sent (as when its queue overflowed): an update, a delete, a create; a node update.
    const keyOf = (r: { trace_id: string; span_id: Buffer }) => [r.trace_id.replace(/-/g, ''), r.span_id.toString('hex')];
    const spans = await pg.db.selectFrom('spans').select(['trace_id', 'span_id', 'created_at']).orderBy('created_at').limit(2).execute();
    const [updated, deleted] = spans;
    await sql`update spans set span_name = 'renamed', updated_at = clock_timestamp() where trace_id = ${updated.trace_id} and span_id = ${updated.span_id}`.execute(pg.db);
    await sql`delete from spans where trace_id = ${deleted.trace_id} and span_id = ${deleted.span_id}`.execute(pg.db);
    const created = makeSpan();
    await sql`insert into spans (project_id, trace_id, span_id, trace_type, span_type, span_kind, span_name, start_time, end_time, status_code, attributes)
              values (${P1}, ${created.trace_id}::uuid, decode(${created.span_id}, 'hex'), 'invocation', 'llm', 'SPAN_KIND_CLIENT', 'late',
                      ${created.start_time}, ${created.end_time}, 'STATUS_CODE_OK', '{"late": true}')`.execute(pg.db);
    const node = await pg.db.selectFrom('nodes').select(['node_id']).limit(1).executeTakeFirstOrThrow();
    await sql`update nodes set node_name = 'renamed', updated_at = clock_timestamp() where node_id = ${node.node_id}`.execute(pg.db);

    const gaps = new PostgresMirrorGapsRepository(pg.db);
    const range = { minCreatedAt: spans[0].created_at, maxCreatedAt: spans[1].created_at, reason: 'queue full' };
    await gaps.record([
      { entity: 'spans', projectId: P1, keys: [keyOf(updated), keyOf(deleted), [created.trace_id, created.span_id]], rowCount: 3, ...range },
      { entity: 'nodes', projectId: P1, keys: [[node.node_id]], rowCount: 1, ...range },
    ]);
    const verifier = new Verifier(pg.db, history);
    expect((await verifier.verify([ALL_SPANS, ALL_NODES])).differing.length).toBeGreaterThan(0);

    const result = await new GapReplay(pg.db, history).run({ entities: ['spans', 'nodes'], projectIds: null });
    expect(result).toMatchObject({ gaps: 2, upserted: 3, tombstoned: 1, reset: 0 });
    expect(await gaps.countOpen()).toBe(0);
    expect((await verifier.verify([ALL_SPANS, ALL_NODES])).differing).toEqual([]);
    const dao = new SpanMirrorReads(ch.clients.query);
    expect(await dao.readSpans(P1, [{ trace_id: keyOf(deleted)[0], span_id: keyOf(deleted)[1] }])).toEqual([]);
    expect((await dao.readSpans(P1, [{ trace_id: keyOf(updated)[0], span_id: keyOf(updated)[1] }]))[0].span_name).toBe('renamed');

    // Replayed gaps are closed: a second run has nothing to do.
    expect(await new GapReplay(pg.db, history).run({ entities: ['spans', 'nodes'], projectIds: null })).toMatchObject({ gaps: 0, upserted: 0 });
  });

  /**
   * A span in Postgres whose key needs a reset, in a gap: ClickHouse's live row of the key was created earlier
   * that day, at a version above Postgres's (a re-create that raced an update of the row before it, whose
   * delete went into a gap). Its span_name there is 'deleted'.
   */
  async function keyAheadInGap() {
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 1, createdAt: '2026-10-01T12:00:00.000001Z' });
    const held = spanHistory.mirrored(await pg.db.selectFrom('spans').selectAll().executeTakeFirstOrThrow());
    const stale = { ...held, created_at: '2026-10-01T08:00:00.000001Z', span_name: 'deleted', version: held.version + 1_000n };
    await history.insert('spans', [spanHistory.line(stale)], 'stale');
    await new PostgresMirrorGapsRepository(pg.db).record(groupIntoGaps([toSpanGapRow(held)], 'queue_full'));
    return held;
  }

  it('--gaps resets a key whose ClickHouse row, at a newer version, is on the creation day Postgres holds it on, rather than tombstoning that day', async () => {
    const held = await keyAheadInGap();
    expect(await new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null })).toMatchObject({ gaps: 1, reset: 1, tombstoned: 0 });
    // Was hidden: a tombstone on that day's sort key outranked the row Postgres holds.
    const spans = await new SpanMirrorReads(ch.clients.query).readSpans(P1, [{ trace_id: held.trace_id, span_id: held.span_id }]);
    expect(spans.map((span) => [span.span_name, span.created_at])).toEqual([[held.span_name, expect.stringContaining('12:00:00')]]);
    expect((await new Verifier(pg.db, history).verify([ALL_SPANS])).differing).toEqual([]);
  });

  it('--gaps stops before a reset once its lock session is gone (another run may be resetting the same keys), leaving the gap open', async () => {
    const held = await keyAheadInGap();
    // The key needs a reset (its ClickHouse row outranks Postgres's); its lock session ends just before.
    const losing = Object.create(history) as ClickHouseHistory;
    losing.readLive = async (...args) => {
      await sql`select pg_terminate_backend(pid) from pg_locks where locktype = 'advisory' and granted
                and database = (select oid from pg_database where datname = current_database())`.execute(pg.db);
      return history.readLive(...args);
    };
    await expect(new GapReplay(pg.db, losing).run({ entities: ['spans'], projectIds: null })).rejects.toThrow(
      /^gap \d+: this run resetting keys lost its lock \(its Postgres session ended; another may have started\), so it stopped: run the same command again \(0 gap records replayed before it\)$/,
    );
    expect(await new PostgresMirrorGapsRepository(pg.db).totals({ entities: ['spans'], projectIds: null })).toMatchObject({ gaps: 1 });
    // Not reset: ClickHouse still shows the stale row.
    const spans = await new SpanMirrorReads(ch.clients.query).readSpans(P1, [{ trace_id: held.trace_id, span_id: held.span_id }]);
    expect(spans.map((span) => span.span_name)).toEqual(['deleted']);
  });

  it('--gaps tombstones a deleted key neither side holds, so its create, still queued in an API, lands hidden', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 2 });
    await seedNodes(pg.db, { projects: [P1], days: 1, rows: 1 });
    // Nothing reached ClickHouse yet: the creates are still queued in an API (their lines, as it queued them).
    const [span, kept] = (await pg.db.selectFrom('spans').selectAll().orderBy('span_id').execute()).map((r) => spanHistory.mirrored(r));
    const node = nodeHistory.mirrored(await pg.db.selectFrom('nodes').selectAll().executeTakeFirstOrThrow());
    const queuedCreates = { spans: [spanHistory.line(span)], nodes: [nodeHistory.line(node)] };

    // The deletes overflowed into gaps, with an update of a span Postgres keeps; each entry as the writer records it.
    await pg.db.deleteFrom('spans').where('span_id', '=', Buffer.from(span.span_id, 'hex')).execute();
    await pg.db.deleteFrom('nodes').execute();
    const deletedAt = span.version + 1n;
    const spanGap = groupIntoGaps([toSpanGapRow(spanTombstone(span, deletedAt)), toSpanGapRow(kept)], 'queue_full');
    const nodeGap = groupIntoGaps([toNodeGapRow(nodeTombstone(node, deletedAt))], 'queue_full');
    const gaps = new PostgresMirrorGapsRepository(pg.db);
    await gaps.record([...spanGap, ...nodeGap]);

    const result = await new GapReplay(pg.db, history).run({ entities: ['spans', 'nodes'], projectIds: null });
    expect(result).toMatchObject({ gaps: 2, upserted: 1, tombstoned: 2, reset: 0 });

    // The queued creates land after the replay, at their older versions.
    await history.insert('spans', queuedCreates.spans, 'late-span');
    await history.insert('nodes', queuedCreates.nodes, 'late-node');
    expect(await new SpanMirrorReads(ch.clients.query).readSpans(P1, [{ trace_id: span.trace_id, span_id: span.span_id }])).toEqual([]);
    expect(await new NodeMirrorReads(ch.clients.query).readNodes(P1, [node.node_id])).toEqual([]);
    expect(await new SpanMirrorReads(ch.clients.query).readSpans(P1, [{ trace_id: kept.trace_id, span_id: kept.span_id }])).toHaveLength(1);
    const report = await new Verifier(pg.db, history).verify([ALL_SPANS, ALL_NODES]);
    expect(report.differing).toEqual([]);
    expect(report.rows).toEqual({ postgres: 1, clickhouse: 1 });
  });

  /** A span of 2026-10-01 that Postgres deleted, its delete in a gap record: what the reset tests replay. */
  async function deletedSpanInGap() {
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 1, createdAt: '2026-10-01T12:00:00.000001Z' });
    const old = spanHistory.mirrored(await pg.db.selectFrom('spans').selectAll().executeTakeFirstOrThrow());
    await pg.db.deleteFrom('spans').execute();
    await new PostgresMirrorGapsRepository(pg.db).record(groupIntoGaps([toSpanGapRow(spanTombstone(old, old.version + 1n))], 'queue_full'));
    return old;
  }

  /** The span's key created again in Postgres, now: a new row under a new creation day. */
  const createAgain = (span: { trace_id: string; span_id: string }) =>
    sql`insert into spans (project_id, trace_id, span_id, trace_type, span_type, span_kind, span_name, start_time, end_time, status_code)
      values (${P1}::uuid, ${traceIdToUuid(span.trace_id)}::uuid, decode(${span.span_id}, 'hex'), 'invocation', 'llm', 'SPAN_KIND_CLIENT', 'created again', now(), now(), 'STATUS_CODE_OK')`.execute(pg.db);

  /**
   * The span is created again once the replay has written its tombstone and before it reads the key again,
   * so the replay resets the key. Inserts whose token `refused` picks fail as a ClickHouse gone would.
   */
  function createAgainAfterItsTombstone(span: { trace_id: string; span_id: string }, refused: (token: string) => boolean = () => false) {
    const insert = history.insert.bind(history);
    return jest.spyOn(history, 'insert').mockImplementation(async (table, lines, token) => {
      if (refused(token)) throw new Error('connect ECONNREFUSED 127.0.0.1:1');
      await insert(table, lines, token);
      if (token.includes(':tombstone:') && lines.length > 0) await createAgain(span);
    });
  }

  /**
   * The creates an API still held land now, each on its own day, at their older versions: hidden by the
   * tombstones the replay kept. ClickHouse shows the key as Postgres holds it (created again).
   */
  async function expectLateCreatesHidden(span: { trace_id: string; span_id: string }, lines: string[]) {
    await history.insert('spans', lines, 'late-creates');
    const spans = await new SpanMirrorReads(ch.clients.query).readSpans(P1, [{ trace_id: span.trace_id, span_id: span.span_id }]);
    expect(spans.map((span) => span.span_name)).toEqual(['created again']);
    expect((await new Verifier(pg.db, history).verify([ALL_SPANS])).differing).toEqual([]);
  }

  /** Every key removal's mutation runs to its end, but its request fails, as one past the client's timeout does. */
  function timeOutRemovals() {
    const command = ch.clients.query.command.bind(ch.clients.query);
    return jest.spyOn(ch.clients.query, 'command').mockImplementation(async (params) => {
      const done = await command(params);
      if (params.query.startsWith('ALTER TABLE spans DELETE')) throw new Error('Timeout error.');
      return done;
    });
  }

  it('--gaps keeps the tombstone of a key created again on another day while it replays, though it resets that key', async () => {
    const old = await deletedSpanInGap();
    const queuedCreate = spanHistory.line(old);
    const spy = createAgainAfterItsTombstone(old);
    // Only this process holds the tombstones it read from the removal of their keys until they are written back:
    // a second Ctrl-C then says they are lost (exitOnSignal), and at no other time.
    const held: string[] = [];
    const at = (step: string) => held.push(`${step}: ${holdingTombstones() ? 'held' : 'not held'}`);
    const reading = jest.spyOn(history, 'storedTombstones').mockImplementationOnce(async (...args) => {
      at('reading');
      return ClickHouseHistory.prototype.storedTombstones.apply(history, args);
    });
    const removing = jest.spyOn(history, 'removeKeys').mockImplementationOnce(async (...args) => {
      at('removing');
      return ClickHouseHistory.prototype.removeKeys.apply(history, args);
    });
    try {
      const result = await new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null });
      expect(result).toMatchObject({ gaps: 1, upserted: 0, reset: 1, tombstoned: 1 });
    } finally {
      spy.mockRestore();
      reading.mockRestore();
      removing.mockRestore();
    }
    at('after');
    expect(held).toEqual(['reading: not held', 'removing: held', 'after: not held']);

    // The create queued before the delete lands now, on its own day: hidden.
    await expectLateCreatesHidden(old, [queuedCreate]);
  });

  it('--gaps writes the reset key\'s rows and tombstones though the removal failed after ClickHouse took it (timed out while its mutation ran), then fails', async () => {
    const old = await deletedSpanInGap();
    const queuedCreate = spanHistory.line(old);
    const inserting = createAgainAfterItsTombstone(old);
    const removing = timeOutRemovals();
    try {
      const failed = new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null });
      await expect(failed).rejects.toThrow(
        /gave no answer to the removal of 1 key's rows from spans during the run: Timeout error\.; its mutation may still be running/,
      );
      expect(removing.mock.calls.filter(([params]) => params.query.startsWith('ALTER TABLE spans DELETE'))).toHaveLength(1);
    } finally {
      inserting.mockRestore();
      removing.mockRestore();
    }

    // Written after the mutation, which changes only what was stored before it: Postgres's row is there, and
    // the create queued before the delete lands hidden.
    await expectLateCreatesHidden(old, [queuedCreate]);
  });

  it('--gaps names both failures when the writes after a timed-out removal fail too: the saved tombstones may be lost', async () => {
    const old = await deletedSpanInGap();
    // The saved tombstones' rewrite after the removal fails too.
    const inserting = createAgainAfterItsTombstone(old, (token) => token.endsWith(':tombstones'));
    const removing = timeOutRemovals();
    // Recorded as lost, which a signal before the command prints its error says (exitOnSignal). The record is the
    // module's for good: watched here as a call, as a later test of this module could not see it change.
    const lost = jest.spyOn(uninterruptible, 'tombstonesLost');
    try {
      await expect(new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null })).rejects.toThrow(
        /its mutation may still be running .*; writing Postgres's rows and 1 saved tombstone\(s\) after it failed too: connect ECONNREFUSED 127\.0\.0\.1:1; lost with it, if the removal went through: the tombstones this process held: .* once every API's \/health shows a lagMs shorter than the time since, or queuedRows 0, run `npm run verify -- --repair`/,
      );
      expect(lost).toHaveBeenCalledTimes(1);
    } finally {
      inserting.mockRestore();
      removing.mockRestore();
      lost.mockRestore();
    }
  });

  it('--gaps says the saved tombstones may be lost when their rewrite fails after a removal that went through', async () => {
    const old = await deletedSpanInGap();
    const inserting = createAgainAfterItsTombstone(old, (token) => token.endsWith(':tombstones'));
    const lost = jest.spyOn(uninterruptible, 'tombstonesLost');
    try {
      await expect(new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null })).rejects.toThrow(
        /^gap \d+: removed the keys' rows from ClickHouse, but writing Postgres's rows and up to 1 saved tombstone\(s\) back failed: connect ECONNREFUSED 127\.0\.0\.1:1; lost with it: the tombstones this process held: .* run `npm run verify -- --repair` \(0 gap records replayed before it\); then run `npm run backfill -- --gaps --entity spans` again for the gaps still open$/,
      );
      expect(lost).toHaveBeenCalledTimes(1);
    } finally {
      inserting.mockRestore();
      lost.mockRestore();
    }
    // Released on the failure too.
    expect(holdingTombstones()).toBe(false);
  });

  it('--gaps replays a key\'s entries together, so resetting it keeps the tombstones of all its days, however far apart they were recorded', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 1, createdAt: '2026-10-01T12:00:00.000001Z' });
    const first = spanHistory.mirrored(await pg.db.selectFrom('spans').selectAll().executeTakeFirstOrThrow());
    // The key was created on 10-01 and on 10-02 (deleted in between); both creates are still queued in an API.
    const second = { ...first, created_at: '2026-10-02T12:00:00.000001Z', version: first.version + 10n };
    const queuedCreates = [spanHistory.line(first), spanHistory.line(second)];
    await pg.db.deleteFrom('spans').execute();
    // Its two deletes a chunk (1,000 entries) apart in one gap, with keys of spans that never were in between.
    const filler = Array.from({ length: 999 }, () => [traceId(), spanId()]);
    const entries = [
      gapEntryOf(toSpanGapRow(spanTombstone(first, first.version + 1n))),
      ...filler,
      gapEntryOf(toSpanGapRow(spanTombstone(second, second.version + 1n))),
    ];
    const range = { minCreatedAt: first.created_at, maxCreatedAt: second.created_at, reason: 'queue_full' };
    await new PostgresMirrorGapsRepository(pg.db).record([{ entity: 'spans', projectId: P1, keys: entries, rowCount: entries.length, ...range }]);

    // The span is created again today once the replay has written the tombstone of its second day.
    const insert = history.insert.bind(history);
    let created = false;
    const spy = jest.spyOn(history, 'insert').mockImplementation(async (table, lines, token) => {
      await insert(table, lines, token);
      if (token.includes(':tombstone:') && lines.some((line) => line.includes('"2026-10-02 12:00:00.000001"')) && !created) {
        created = true;
        await createAgain(first);
      }
    });
    try {
      const result = await new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null });
      expect(result).toMatchObject({ gaps: 1, upserted: 0, reset: 1, tombstoned: 2 });
      expect(created).toBe(true);
    } finally {
      spy.mockRestore();
    }

    await expectLateCreatesHidden(first, queuedCreates);
  });

  it('--gaps keeps the tombstones of a key\'s other days when it resets the key in a later gap of the run', async () => {
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 1, createdAt: '2026-10-01T12:00:00.000001Z' });
    const first = spanHistory.mirrored(await pg.db.selectFrom('spans').selectAll().executeTakeFirstOrThrow());
    // The key was created on 10-01 and on 10-02 (deleted in between); both creates are still queued in an API.
    const second = { ...first, created_at: '2026-10-02T12:00:00.000001Z', version: first.version + 10n };
    const queuedCreates = [spanHistory.line(first), spanHistory.line(second)];
    await pg.db.deleteFrom('spans').execute();
    // Each delete overflowed into a gap record of its own: the first is replayed before the second is read.
    const gaps = new PostgresMirrorGapsRepository(pg.db);
    await gaps.record(groupIntoGaps([toSpanGapRow(spanTombstone(first, first.version + 1n))], 'queue_full'));
    await gaps.record(groupIntoGaps([toSpanGapRow(spanTombstone(second, second.version + 1n))], 'queue_full'));

    // The span is created again today once the replay has written the tombstone of its second day: that gap resets the key.
    const insert = history.insert.bind(history);
    let created = false;
    const spy = jest.spyOn(history, 'insert').mockImplementation(async (table, lines, token) => {
      await insert(table, lines, token);
      if (token.includes(':tombstone:') && lines.some((line) => line.includes('"2026-10-02 12:00:00.000001"')) && !created) {
        created = true;
        await createAgain(first);
      }
    });
    try {
      const result = await new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null });
      expect(result).toMatchObject({ gaps: 2, upserted: 0, reset: 1, tombstoned: 2 });
      expect(created).toBe(true);
    } finally {
      spy.mockRestore();
    }

    // Both queued creates land now, each on its own day: the first gap's tombstone outlived the second gap's reset.
    await expectLateCreatesHidden(first, queuedCreates);
  });

  it('--gaps goes past a gap it cannot replay, leaves it open and fails naming it', async () => {
    await seedNodes(pg.db, { projects: [P1], days: 1, rows: 3 });
    await new Backfill(pg, history).run(ALL_NODES);
    const node = await pg.db.selectFrom('nodes').select(['node_id', 'created_at']).limit(1).executeTakeFirstOrThrow();
    await sql`update nodes set node_name = 'renamed', updated_at = clock_timestamp() where node_id = ${node.node_id}`.execute(pg.db);

    const gaps = new PostgresMirrorGapsRepository(pg.db);
    const range = { minCreatedAt: node.created_at, maxCreatedAt: node.created_at, reason: 'internal_error' };
    // The first gap's key is not a node id Postgres accepts (as a mapper's bug might have recorded it).
    await gaps.record([{ entity: 'nodes', projectId: P1, keys: [['not-a-uuid']], rowCount: 1, ...range }]);
    await gaps.record([{ entity: 'nodes', projectId: P1, keys: [[node.node_id]], rowCount: 1, ...range }]);
    const [bad, good] = await openGaps(gaps);
    expect(await gaps.keysOf(bad.id)).toEqual([['not-a-uuid']]);

    const lines: string[] = [];
    const replay = new GapReplay(pg.db, history, (line) => lines.push(line));
    const failure = replay.run({ entities: ['nodes'], projectIds: null });
    await expect(failure).rejects.toThrow(
      new RegExp(`^1 gap record could not be replayed and stays open \\(gap ${bad.id}: .*not-a-uuid.*\\); 1 replayed \\(1 row upserted, 0 tombstoned\\)\\. Fix the cause and run \`npm run backfill -- --gaps --entity nodes\` again$`),
    );
    expect(lines).toEqual([expect.stringContaining(`could not replay gap ${bad.id} (nodes`), expect.stringContaining(`replayed gap ${good.id} (nodes`)]);
    expect((await openGaps(gaps)).map((g) => g.id)).toEqual([bad.id]);
    const dao = new NodeMirrorReads(ch.clients.query);
    expect((await dao.readNodes(P1, [node.node_id]))[0].node_name).toBe('renamed');
  });

  it('--gaps with --project and an entity replays only those gaps; the others stay open', async () => {
    await seedNodes(pg.db, { projects: [P1, P2], days: 1, rows: 4 });
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 4 });
    const nodeOf = async (projectId: string) =>
      pg.db.selectFrom('nodes').select(['node_id', 'created_at']).where('project_id', '=', projectId).limit(1).executeTakeFirstOrThrow();
    const [n1, n2] = [await nodeOf(P1), await nodeOf(P2)];
    const span = await pg.db.selectFrom('spans').select(['trace_id', 'span_id', 'created_at']).limit(1).executeTakeFirstOrThrow();
    const gaps = new PostgresMirrorGapsRepository(pg.db);
    const range = (at: string) => ({ minCreatedAt: at, maxCreatedAt: at, rowCount: 1, reason: 'queue full' });
    await gaps.record([
      { entity: 'nodes', projectId: P1, keys: [[n1.node_id]], ...range(n1.created_at) },
      { entity: 'nodes', projectId: P2, keys: [[n2.node_id]], ...range(n2.created_at) },
      { entity: 'spans', projectId: P1, keys: [[span.trace_id.replace(/-/g, ''), span.span_id.toString('hex')]], ...range(span.created_at) },
    ]);

    const result = await new GapReplay(pg.db, history).run({ entities: ['nodes'], projectIds: [P1] });
    expect(result).toMatchObject({ gaps: 1, upserted: 1 });
    const open = await openGaps(gaps);
    expect(open.map((g) => [g.entity, g.project_id]).sort()).toEqual([['nodes', P2], ['spans', P1]]);
    const dao = new NodeMirrorReads(ch.clients.query);
    expect(await dao.readNodes(P1, [n1.node_id])).toHaveLength(1);
    expect(await dao.readNodes(P2, [n2.node_id])).toEqual([]);
  });

  it('records a gap of more keys than a record takes (the shutdown deadline\'s whole queue) as several, all or none', async () => {
    const gaps = new PostgresMirrorGapsRepository(pg.db);
    const range = { minCreatedAt: '2026-10-01T00:00:00.000001Z', maxCreatedAt: '2026-10-02T00:00:00.000001Z', reason: 'shutdown_deadline' };
    const keys = (n: number) => Array.from({ length: n }, () => [uuid()]);
    // 11 records: more than one statement takes, so they are written in one transaction.
    const big = { entity: 'nodes' as const, projectId: P1, keys: keys(10 * KEYS_PER_RECORD + 1), rowCount: 10 * KEYS_PER_RECORD + 1, ...range };
    expect(await gaps.record([big, { entity: 'spans', projectId: P2, keys: [[traceId(), spanId()]], rowCount: 1, ...range }])).toBe(12);
    const listed = await openGaps(gaps);
    expect(listed.map((g) => [g.entity, g.key_count, g.row_count, g.min_created_at, g.max_created_at])).toEqual([
      ...Array.from({ length: 10 }, () => ['nodes', KEYS_PER_RECORD, KEYS_PER_RECORD, range.minCreatedAt, range.maxCreatedAt]),
      ['nodes', 1, 1, range.minCreatedAt, range.maxCreatedAt],
      ['spans', 1, 1, range.minCreatedAt, range.maxCreatedAt],
    ]);
    // Every key once, in its order.
    const recorded = (await Promise.all(listed.filter((g) => g.entity === 'nodes').map((g) => gaps.keysOf(g.id)))).flat();
    expect(recorded).toEqual(big.keys);

    // A part Postgres refuses (a NUL in a key is not jsonb) writes none of the parts before it.
    await pg.db.deleteFrom('mirror_gaps').execute();
    const refused = { ...big, keys: [...keys(10 * KEYS_PER_RECORD), ['\u0000']], rowCount: 10 * KEYS_PER_RECORD + 1 };
    await expect(gaps.record([refused])).rejects.toThrow();
    expect(await gaps.countOpen()).toBe(0);
  }, 60_000);

  it('--gaps lists open gaps a page at a time without their keys, and replays only those open when it started', async () => {
    const nodes = await seedNodes(pg.db, { projects: [P1], days: 1, rows: 5 }).then(() =>
      pg.db.selectFrom('nodes').select(['node_id', 'created_at']).orderBy('node_id').execute(),
    );
    await new Backfill(pg, history).run(ALL_NODES);
    const gaps = new PostgresMirrorGapsRepository(pg.db);
    const gapOf = (i: number) => {
      const node = nodes[i % nodes.length];
      return { entity: 'nodes' as const, projectId: P1, keys: [[node.node_id]], rowCount: 1, minCreatedAt: node.created_at, maxCreatedAt: node.created_at, reason: 'queue full' };
    };
    // More than a page (100): the listing goes on past the first page, oldest first, each gap once.
    await gaps.record(Array.from({ length: 130 }, (_, i) => gapOf(i)));
    const listed = await openGaps(gaps);
    expect(listed).toHaveLength(130);
    expect(listed.map((g) => BigInt(g.id))).toEqual([...listed.map((g) => BigInt(g.id))].sort((a, b) => (a < b ? -1 : 1)));
    expect(new Set(listed.map((g) => g.id)).size).toBe(130);
    expect(listed[0]).toMatchObject({ key_count: 1 });
    expect(listed[0]).not.toHaveProperty('keys');
    expect(await gaps.totals({ entities: ['nodes'], projectIds: [P1] })).toEqual({ gaps: 130, rows: 130, lastId: listed[129].id });
    expect(await gaps.totals({ entities: ['spans'], projectIds: null })).toEqual({ gaps: 0, rows: 0, lastId: null });
    // An empty scope is nothing in scope (not `in ()`, a syntax error).
    expect(await gaps.totals({ entities: [], projectIds: null })).toEqual({ gaps: 0, rows: 0, lastId: null });
    const noProjects: OpenGap[] = [];
    for await (const gap of gaps.open({ entities: ['nodes'], projectIds: [] })) noProjects.push(gap);
    expect(noProjects).toEqual([]);

    // A gap the API records while a replay runs is the next run's: the first gap's replay records one more.
    const lines: string[] = [];
    let recordedDuring: Promise<number> | undefined;
    const replay = new GapReplay(pg.db, history, (line) => {
      lines.push(line);
      recordedDuring ??= gaps.record([gapOf(0)]);
    });
    expect(await replay.run({ entities: ['nodes'], projectIds: null })).toMatchObject({ gaps: 130, upserted: 130 });
    await recordedDuring;
    expect(lines).toHaveLength(130);
    expect(await gaps.countOpen()).toBe(1);
    expect(await new GapReplay(pg.db, history).run({ entities: ['nodes'], projectIds: null })).toMatchObject({ gaps: 1, upserted: 1 });
    expect(await gaps.countOpen()).toBe(0);
  }, 120_000);

  it('--gaps stops after three failures in a row and says how many it did not try', async () => {
    const gaps = new PostgresMirrorGapsRepository(pg.db);
    const at = '2026-11-22T10:00:00.000000Z';
    for (let i = 0; i < 4; i++) {
      await gaps.record([{ entity: 'nodes', projectId: P1, keys: [[`not-a-uuid-${i}`]], rowCount: 1, minCreatedAt: at, maxCreatedAt: at, reason: 'internal_error' }]);
    }
    const lines: string[] = [];
    // As backfill names the server a gap's failure came from (a bare driver text names none).
    const naming = (error: unknown) => new Error(`Postgres at here failed: ${(error as Error).message}`);
    await expect(new GapReplay(pg.db, history, (line) => lines.push(line), naming).run({ entities: ['nodes'], projectIds: null })).rejects.toThrow(
      /^3 gap records could not be replayed and stay open \(gap \d+: Postgres at here failed: .*not-a-uuid-0.*; gap \d+: Postgres at here failed: .*\); stopped after 3 failures in a row, 1 not tried; 0 replayed/,
    );
    expect(lines).toHaveLength(3);
    expect(lines.every((line) => line.includes('it stays open: Postgres at here failed: '))).toBe(true);
    expect(await gaps.countOpen()).toBe(4);
  });
});

describe('backfill while the mirror is on and the API keeps writing', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ MIRROR_FLUSH_INTERVAL_MS: '50' }, { clickhouse: true });
  });
  afterAll(async () => t?.close());

  it('converges: zero differences once the writer drains', async () => {
    const db = t.database.db;
    const other = uuid();
    // History written before the mirror was on: only the backfill can copy it.
    await seedSpans(db, { projects: [t.projectId, other], days: 5, rows: 8_000 });
    await seedNodes(db, { projects: [t.projectId], days: 5, rows: 1_000 });
    const clickhouse = t.mirror!.clickhouse;
    const history = new ClickHouseHistory(clickhouse, { url: 'test', database: t.database.name });
    const tracing = t.app.get(TracingService);
    const observability = t.app.get(ObservabilityService);

    // Oldest history first, so the backfill meets rows the writer below has already changed.
    const old = await db.selectFrom('spans').selectAll().where('project_id', '=', t.projectId).orderBy('created_at').limit(300).execute();
    const keys = old.map((r) => ({ trace_id: r.trace_id.replace(/-/g, ''), span_id: r.span_id.toString('hex') }));
    let writing = true;
    let round = 0;
    const writer = (async () => {
      while (writing || round < 5) {
        const batch = keys.slice((round * 20) % 280, ((round * 20) % 280) + 20);
        const current = await tracing.readSpans(t.projectId, batch.slice(0, 10));
        await tracing.updateSpans(t.projectId, current.map(({ project_id: _p, created_at: _c, updated_at: _u, created_by_id: _cb, updated_by_id: _ub, ...s }) => ({ ...s, span_name: `updated-${round}` })));
        await tracing.deleteSpans(t.projectId, batch.slice(10, 12));
        await tracing.createSpans(t.projectId, [makeSpan(), makeSpan()]);
        await observability.ingestNodes(t.projectId, [makeNode()]);
        round++;
      }
      return round;
    })();

    const backfill = new Backfill(t.database, history);
    const spans = await backfill.run({ entity: 'spans', projectIds: null }, { batchRows: 500, batchBytes: 16 << 20 });
    const nodes = await backfill.run({ entity: 'nodes', projectIds: null }, { batchRows: 200, batchBytes: 16 << 20 });
    // Rounds finished while the backfills ran: the writes did overlap them, not only follow.
    const roundsDuringBackfill = round;
    writing = false;
    const rounds = await writer;
    await t.mirror!.writer.drain();

    expect(roundsDuringBackfill).toBeGreaterThan(0);
    expect(rounds).toBeGreaterThanOrEqual(5);
    expect(spans.rowsCopied).toBeGreaterThan(7_000);
    expect(nodes.rowsCopied).toBeGreaterThanOrEqual(1_000);
    const report = await new Verifier(db, history).verify([{ entity: 'spans', projectIds: null }, { entity: 'nodes', projectIds: null }]);
    expect(report.differing).toEqual([]);
    expect(report.rows.postgres).toBe((await pgCount(db, 'spans')) + (await pgCount(db, 'nodes')));
    expect(t.mirror!.writer.stats().gapsRecorded).toBe(0);
  });
});
