import { sql } from 'kysely';
import { Client } from 'pg';
import { KEY_REPLAY_RUN } from '../../src/dbs/backfill/backfill-checkpoints.repository';
import { Backfill } from '../../src/dbs/backfill/backfill';
import { ClickHouseHistory } from '../../src/dbs/backfill/clickhouse-history';
import { GapReplay } from '../../src/dbs/backfill/gap-replay';
import { spanHistory } from '../../src/dbs/backfill/history-entities';
import { Entity, HistoryScope } from '../../src/dbs/backfill/history-scope';
import { HistoryProgress } from '../../src/dbs/backfill/progress';
import { KeysetReader } from '../../src/dbs/backfill/keyset-reader';
import { retainedFrom, Verifier, VerifyReport } from '../../src/dbs/backfill/verify';
import { toNodeClickHouseLine } from '../../src/dbs/clickhouse/node-clickhouse-row.mapper';
import { spanIdToUInt64, toSpanClickHouseLine, toSpanInsertLine } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { PostgresMirrorGapsRepository } from '../../src/dbs/postgres/postgres-mirror-gaps.repository';
import { spanFromRow } from '../../src/dbs/postgres/span-row.mapper';
import { isoToMicros } from '../../src/tracing/timestamp';
import { createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { classifySendError } from '../../src/dbs/clickhouse/retry-policy';
import { createTestClickHouse, TestClickHouse } from '../support/clickhouse';
import { FakeClickHouse } from '../support/fake-clickhouse';
import { makeNode } from '../support/fixtures';
import { seedNodes, seedSpans } from '../support/history';
import { createTestDatabase, TestDatabase } from '../support/postgres';

const P1 = '0b000000-0000-4000-8000-000000000001';
const P2 = '0b000000-0000-4000-8000-000000000002';
const P3 = '0b000000-0000-4000-8000-000000000003';
const SCOPES: HistoryScope[] = [
  { entity: 'spans', projectIds: null },
  { entity: 'nodes', projectIds: null },
];

describe('verify and --repair (real Postgres and ClickHouse)', () => {
  let pg: TestDatabase;
  let ch: TestClickHouse;
  let verifier: Verifier;

  beforeAll(async () => {
    [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse()]);
    const history = new ClickHouseHistory(ch.clients, { url: ch.url, database: ch.database });
    verifier = new Verifier(pg.db, history);
    await seedSpans(pg.db, { projects: [P1, P2, P3], days: 5, rows: 9_000 });
    await seedNodes(pg.db, { projects: [P1, P2, P3], days: 5, rows: 1_500 });
    const backfill = new Backfill(pg, history);
    for (const scope of SCOPES) await backfill.run(scope);
  });
  afterAll(async () => Promise.all([pg?.drop(), ch?.drop()]));

  /** One span of a project created on the given day (the n-th in key order). */
  async function spanOn(projectId: string, day: string, n = 0) {
    const row = await pg.db
      .selectFrom('spans')
      .selectAll()
      .where('project_id', '=', projectId)
      .where(sql<boolean>`to_char(created_at at time zone 'UTC', 'YYYY-MM-DD') = ${day}`)
      .orderBy('created_at')
      .offset(n)
      .limit(1)
      .executeTakeFirstOrThrow();
    return spanFromRow(row);
  }

  const spanCondition = 'project_id = {p:UUID} AND trace_id = {t:UUID} AND span_id = {s:UInt64}';
  const spanParams = (span: { project_id: string; trace_id: string; span_id: string }) => ({
    p: span.project_id,
    t: span.trace_id.replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5'),
    s: BigInt(spanIdToUInt64(span.span_id)),
  });

  /** A progress that records what it was told: starts and stops in order, the totals and the rows advanced, summed. */
  function recordingProgress(): { seen: { events: string[]; total: number; advanced: number }; progress: HistoryProgress } {
    const seen = { events: [] as string[], total: 0, advanced: 0 };
    const progress: HistoryProgress = {
      start: (entity: Entity, total: number) => {
        seen.events.push(`start ${entity}`);
        seen.total += total;
      },
      advance: (rows: number) => (seen.advanced += rows),
      stop: () => seen.events.push('stop'),
    };
    return { seen, progress };
  }

  it('names each bucket that was changed behind its back, and --repair heals exactly those', async () => {
    expect((await verifier.verify(SCOPES)).differing).toEqual([]);
    const { rows } = await sql<{ day: string }>`select distinct to_char(created_at at time zone 'UTC', 'YYYY-MM-DD') as day from spans order by 1`.execute(pg.db);
    const days = rows.map((r) => r.day);
    const mutate = (query: string, params: Record<string, unknown>) =>
      ch.clients.query.command({ query, query_params: params, clickhouse_settings: { mutations_sync: '2', wait_end_of_query: 1 } });

    // Rows deleted from ClickHouse by hand.
    for (const n of [0, 1, 2]) await mutate(`ALTER TABLE spans DELETE WHERE ${spanCondition}`, spanParams(await spanOn(P1, days[0], n)));
    // A tombstone from elsewhere, newer than anything Postgres wrote: no insert at Postgres's version can outrank it.
    const hidden = await spanOn(P2, days[1]);
    await ch.clients.insert.insert({
      table: 'spans',
      values: [JSON.parse(toSpanInsertLine({ project_id: hidden.project_id, trace_id: hidden.trace_id, span_id: hidden.span_id, created_at: hidden.created_at, start_time: hidden.start_time, version: isoToMicros(new Date().toISOString()) + 1_000_000n, deleted: true }))],
      format: 'JSONEachRow',
    });
    // A row changed in place, at the same version: only the content checksum sees it.
    await mutate(`ALTER TABLE spans UPDATE span_name = 'tampered' WHERE ${spanCondition}`, spanParams(await spanOn(P3, days[2])));
    // An update in Postgres that never reached the mirror.
    const missed = await spanOn(P1, days[3]);
    await sql`update spans set status_code = 'STATUS_CODE_ERROR', updated_at = clock_timestamp()
              where project_id = ${P1} and trace_id = ${missed.trace_id}::uuid and span_id = decode(${missed.span_id}, 'hex')`.execute(pg.db);
    // A node only ClickHouse has, on a day Postgres has none for that project.
    const strayDay = '2026-01-15';
    await ch.clients.insert.insert({
      table: 'nodes',
      values: [
        JSON.parse(
          toNodeClickHouseLine({
            ...makeNode(),
            project_id: P2,
            created_at: `${strayDay}T08:00:00.000001Z`,
            updated_at: `${strayDay}T08:00:00.000001Z`,
            version: isoToMicros(`${strayDay}T08:00:00.000001Z`),
            deleted: false,
          }),
        ),
      ],
      format: 'JSONEachRow',
    });

    const report = await verifier.verify(SCOPES);
    const named = report.differing.map((b) => ({ entity: b.entity, project: b.projectId, day: b.day, differs: b.differs }));
    expect(named).toEqual(
      expect.arrayContaining([
        { entity: 'spans', project: P1, day: days[0], differs: ['rows', 'versions'] },
        { entity: 'spans', project: P2, day: days[1], differs: ['rows', 'versions'] },
        { entity: 'spans', project: P3, day: days[2], differs: ['content'] },
        { entity: 'spans', project: P1, day: days[3], differs: ['versions'] },
        { entity: 'nodes', project: P2, day: strayDay, differs: ['rows', 'versions'] },
      ]),
    );
    expect(named).toHaveLength(5);
    const p1 = report.differing.find((b) => b.projectId === P1 && b.day === days[0])!;
    expect(p1.postgres.rows - p1.clickhouse.rows).toBe(3);
    expect(report.differing.find((b) => b.day === strayDay)).toMatchObject({ postgres: { rows: 0 }, clickhouse: { rows: 1 } });

    // Counts only: the same buckets but the one changed in place, and no row hashed.
    const counted = await verifier.verify(SCOPES, { content: false });
    expect(counted.contentChecked).toBe(0);
    expect(counted.differing.map((b) => ({ entity: b.entity, project: b.projectId, day: b.day, differs: b.differs }))).toEqual(
      expect.arrayContaining(named.filter((b) => !b.differs.includes('content'))),
    );
    expect(counted.differing).toHaveLength(4);
    expect(counted.buckets.every((b) => b.postgres.checksum === null && b.clickhouse.checksum === null)).toBe(true);

    // Checked by content: the buckets whose last comparison's counts agreed. Compared again after a wait, the bucket
    // changed in place is checked by content twice and counts once...
    const checkedByContent = (r: VerifyReport) => r.buckets.filter((b) => !b.differs.some((d) => d !== 'content')).length;
    expect(report.contentChecked).toBe(checkedByContent(report));
    const settled = await verifier.verify(SCOPES, { settleMs: 1 });
    expect(settled.differing).toHaveLength(5);
    expect(settled.contentChecked).toBe(report.contentChecked);
    // ...and not at all when its counts differ by the time it is compared again (a row of it deleted meanwhile).
    let deleting: Promise<unknown> = Promise.resolve();
    const tampered = await spanOn(P3, days[2]);
    const recounted = await verifier.verify(SCOPES, {
      settleMs: 3_000,
      log: () => (deleting = mutate(`ALTER TABLE spans DELETE WHERE ${spanCondition}`, spanParams(tampered))),
    });
    await deleting;
    expect(recounted.differing.find((b) => b.projectId === P3 && b.day === days[2])?.differs).toEqual(['rows', 'versions']);
    expect(recounted.contentChecked).toBe(report.contentChecked - 1);
    expect(recounted.contentChecked).toBe(checkedByContent(recounted));

    // Another run that resets keys holds their lock (two resets of one key at once can lose its tombstones):
    // the repair is refused before it touches a key.
    const differingBefore = (await verifier.verify(SCOPES, { content: false })).differing.length;
    const other = new Client({ connectionString: pg.url, application_name: 'a gap replay' });
    await other.connect();
    try {
      await other.query('select pg_advisory_lock(hashtextextended($1, 0))', [`backfill ${KEY_REPLAY_RUN}`]);
      await expect(verifier.repair(report.differing)).rejects.toThrow(
        /^another run that resets keys \(`backfill --gaps` or `verify --repair`\) is running: its Postgres session \(pid \d+; application "a gap replay"/,
      );
      expect((await verifier.verify(SCOPES, { content: false })).differing).toHaveLength(differingBefore);
    } finally {
      await other.end();
    }

    const { seen, progress: repairProgress } = recordingProgress();
    const repair = await verifier.repair(report.differing, { repairProgress });
    expect(repair.after.differing).toEqual([]);
    // Its re-copy reported as it went: an entity at a time, every Postgres row of the buckets once.
    const rowsInBuckets = report.differing.reduce((n, b) => n + b.postgres.rows, 0);
    expect(seen).toEqual({ events: ['start spans', 'stop', 'start nodes', 'stop'], total: rowsInBuckets, advanced: rowsInBuckets });
    // The stray node's bucket is gone from both sides now; the other four agree.
    expect(repair.after.buckets.map((b) => b.day).sort()).toEqual([days[0], days[1], days[2], days[3]].sort());
    expect(repair).toMatchObject({ buckets: 5, tombstoned: 1, reset: 1 });
    expect((await verifier.verify(SCOPES)).differing).toEqual([]);
  });

  it('compares only the projects and times asked for', async () => {
    const { rows } = await sql<{ since: string }>`select min(created_at) + interval '2 days' as since from spans`.execute(pg.db);
    const report = await verifier.verify([{ entity: 'spans', projectIds: [P3], since: rows[0].since }]);
    expect(report.buckets.length).toBeGreaterThan(0);
    expect(new Set(report.buckets.map((b) => b.projectId))).toEqual(new Set([P3]));
    expect(report.buckets.every((b) => b.day >= rows[0].since.slice(0, 10))).toBe(true);
    const { rows: expected } = await sql<{ n: string }>`select count(*) as n from spans where project_id = ${P3} and created_at >= ${rows[0].since}`.execute(pg.db);
    expect(report.rows).toEqual({ postgres: Number(expected[0].n), clickhouse: Number(expected[0].n) });
  });

  it('reports its content pass as it goes: every Postgres row it hashes, once', async () => {
    const { seen, progress } = recordingProgress();
    const report = await verifier.verify(SCOPES, { progress });
    expect(report.differing).toEqual([]);
    expect(seen.events).toEqual(['start spans', 'stop', 'start nodes', 'stop']);
    expect(seen.total).toBe(report.rows.postgres);
    expect(seen.advanced).toBe(report.rows.postgres);

    // Counts only: nothing hashed, nothing to report.
    seen.events.length = 0;
    await verifier.verify(SCOPES, { content: false, progress });
    expect(seen.events).toEqual([]);
  });

  /**
   * A ClickHouseHistory that reaches ClickHouse through `proxy` (retrying
   * without waiting), for `use`; the clients and the proxy are closed after.
   */
  async function throughProxy(proxy: FakeClickHouse, task: string | undefined, use: (history: ClickHouseHistory) => Promise<void>): Promise<void> {
    const clients = createClickHouseClients(ch.config, proxy.url);
    try {
      await use(new ClickHouseHistory(clients, { url: proxy.url, database: ch.database, task }, async () => undefined));
    } finally {
      await clients.close();
      await proxy.close();
    }
  }

  /** The error a call failed with; an Error saying 'answered' when it did not fail. */
  const failure = (call: Promise<unknown>): Promise<Error> =>
    call.then(
      () => new Error('answered'),
      (e: Error) => e,
    );

  it('says so when an empty error answer comes back (a proxy\'s 502), rather than that ClickHouse stopped answering', async () => {
    const proxy = await FakeClickHouse.start(ch.url);
    await throughProxy(proxy, 'backfill', async (history) => {
      await history.checkReady();
      await proxy.setMode('gateway');
      const foreign = (what: string) =>
        `ClickHouse at ${proxy.url} answered during backfill with ${what}an HTTP error answer with an empty body, not ClickHouse's (a proxy in front of it, or a request refused unread)`;
      await expect(history.countByProjectDay({ entity: 'spans', projectIds: [P1] })).rejects.toThrow(foreign(''));
      await expect(history.insert('spans', ['{}'], 'token')).rejects.toThrow(foreign('insert into spans failed after 4 attempts: '));
    });
  });

  it('names an empty error answer to the readiness ping too (a proxy whose ClickHouse is gone), not an empty reason', async () => {
    const proxy = await FakeClickHouse.start(null, 'gateway', { pings: true });
    await throughProxy(proxy, undefined, async (history) => {
      await expect(history.checkReady()).rejects.toThrow(
        `ClickHouse at ${proxy.url} does not answer: an HTTP error answer with an empty body, not ClickHouse's (a proxy in front of it, or a request refused unread)`,
      );
    });
  });

  it('retries an insert on exactly the errors the mirror retries (one classification for both)', async () => {
    const proxy = await FakeClickHouse.start(ch.url);
    await throughProxy(proxy, undefined, async (history) => {
      const attempts = async (code: number) => {
        await proxy.setMode('error', { code });
        const before = proxy.stats().errors;
        const error = await failure(history.insert('spans', ['{}'], `token-${code}`));
        return { code, kind: classifySendError(Object.assign(new Error(), { code: String(code) })), tries: proxy.stats().errors - before, error: error.message };
      };
      // 394 QUERY_WAS_CANCELLED and 236 ABORTED are transient to the mirror; 164 READONLY and 60 UNKNOWN_TABLE are not.
      const expected: Array<[number, 'transient' | 'permanent', number, string]> = [
        [394, 'transient', 4, '4 attempts'],
        [236, 'transient', 4, '4 attempts'],
        [164, 'permanent', 1, '1 attempt'],
        [60, 'permanent', 1, '1 attempt'],
      ];
      for (const [code, kind, tries, attempted] of expected) {
        expect(await attempts(code)).toEqual({ code, kind, tries, error: expect.stringContaining(`insert into spans failed after ${attempted}`) });
      }
    });
  });

  it('names the server and what to do when ClickHouse stops answering after it was found ready, for every read and write', async () => {
    const proxy = await FakeClickHouse.start(ch.url);
    await throughProxy(proxy, 'verify', async (history) => {
      await history.checkReady();
      await proxy.setMode('refuse');
      const stopped = new RegExp(`^ClickHouse at ${proxy.url} stopped answering during verify: [^\\n]+; run it again once it is back$`);
      const scope: HistoryScope = { entity: 'spans', projectIds: [P1] };
      const key = ['0123456789abcdef0123456789abcdef', '0123456789abcdef'];
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['countByProjectDay', () => history.countByProjectDay(scope)],
        ['streamStored', async () => history.streamStored(spanHistory, scope).next()],
        ['keyVersions', async () => history.keyVersions(spanHistory, scope, 1_000).next()],
        ['readLive', () => history.readLive(spanHistory, P1, [key])],
        ['removeKeys', () => history.removeKeys(spanHistory, P1, [key])],
        ['insert', () => history.insert('spans', ['{}'], 'token')],
      ];
      for (const [name, call] of calls) {
        const error = await failure(call());
        expect({ name, message: error.message }).toEqual({ name, message: expect.stringMatching(stopped) });
      }
    });
  });

  it('on a live system: leaves out rows created after it started, and reports only buckets still differing once writes in flight have landed', async () => {
    const P4 = '0b000000-0000-4000-8000-000000000004';
    const P5 = '0b000000-0000-4000-8000-000000000005';
    const scopes: HistoryScope[] = [{ entity: 'spans', projectIds: [P4, P5] }];
    const insertSpan = (projectId: string, traceId: string, createdAt = sql`now()`) =>
      sql<{ created_at: string }>`insert into spans (project_id, trace_id, span_id, trace_type, span_type, span_kind, span_name, start_time, end_time, status_code, attributes, created_at, updated_at)
        values (${projectId}, ${traceId}::uuid, decode('00f067aa0ba902b7', 'hex'), 'invocation', 'llm', 'SPAN_KIND_CLIENT', 'live',
                now(), now(), 'STATUS_CODE_OK', '{}', ${createdAt}, ${createdAt})
        returning created_at`.execute(pg.db);
    // In Postgres only: P4's span is on its way through the mirror, P5's was lost.
    await insertSpan(P4, '4bf92f35-77b3-4da6-a3ce-929d0e0e4736');
    await insertSpan(P5, '5bf92f35-77b3-4da6-a3ce-929d0e0e4736');
    // Created after verify starts, as far as it can tell (Postgres's clock an hour on): not compared.
    const later = await insertSpan(P4, '6bf92f35-77b3-4da6-a3ce-929d0e0e4736', sql`now() + interval '1 hour'`);

    // The mirror's write of P4's span, built now so that only its insert is left for verify's wait.
    const row = await pg.db.selectFrom('spans').selectAll().where('project_id', '=', P4).where('span_name', '=', 'live').orderBy('created_at').limit(1).executeTakeFirstOrThrow();
    const span = spanFromRow(row);
    const mirrored = JSON.parse(toSpanClickHouseLine({ ...span, version: isoToMicros(span.updated_at), deleted: false })) as Record<string, unknown>;

    const lines: string[] = [];
    let landing: Promise<unknown> = Promise.resolve();
    const report = await verifier.verify(scopes, {
      // Room for the landing below (one insert) on a busy machine.
      settleMs: 3_000,
      log: (line) => {
        lines.push(line);
        // The mirror's write lands while verify waits.
        landing = ch.clients.insert.insert({ table: 'spans', values: [mirrored], format: 'JSONEachRow' });
      },
    });
    await landing;
    expect(lines).toEqual(['2 buckets differ; comparing them again in 3.0 s, once writes the mirror has in flight have landed']);
    expect(report.asOf < later.rows[0].created_at).toBe(true);
    expect(report.settled).toBe(1);
    expect(report.differing.map((b) => [b.projectId, b.differs, b.postgres.rows, b.clickhouse.rows])).toEqual([[P5, ['rows', 'versions'], 1, 0]]);
    expect(report.buckets.find((b) => b.projectId === P4)).toMatchObject({ differs: [], postgres: { rows: 1 }, clickhouse: { rows: 1 } });

    // Without the wait, the same lost span is reported at once, and the later one still is not compared.
    const quick = await verifier.verify(scopes);
    expect(quick.settled).toBe(0);
    expect(quick.differing.map((b) => b.projectId)).toEqual([P5]);

    await sql`delete from spans where project_id in (${P4}, ${P5})`.execute(pg.db);
    await ch.clients.query.command({ query: `ALTER TABLE spans DELETE WHERE project_id = {p:UUID}`, query_params: { p: P4 }, clickhouse_settings: { mutations_sync: '2' } });
  });
});

describe('verify with CLICKHOUSE_TTL_DAYS (real Postgres and ClickHouse)', () => {
  it('compares from the oldest day the TTL keeps whole for six hours more', () => {
    const now = new Date('2026-12-03T16:45:00Z');
    // Rows of 2026-11-25 before 16:45 are 8 days old: that day is no longer whole, the next one is.
    expect(retainedFrom(8, now)).toBe('2026-11-26T00:00:00.000000Z');
    expect(retainedFrom(8, new Date('2026-12-03T00:00:00Z'))).toBe('2026-11-26T00:00:00.000000Z');
    // 2026-11-26's rows start expiring at midnight: a verify from 18:00 on could see them go under it.
    expect(retainedFrom(8, new Date('2026-12-03T17:59:59Z'))).toBe('2026-11-26T00:00:00.000000Z');
    expect(retainedFrom(8, new Date('2026-12-03T18:00:00Z'))).toBe('2026-11-27T00:00:00.000000Z');
    expect(retainedFrom(8, new Date('2026-12-03T23:50:00Z'))).toBe('2026-11-27T00:00:00.000000Z');
  });

  it('leaves out the days ClickHouse has expired, and finds differences in the days it keeps', async () => {
    // The seeded history is 40 to 35 days old; a 38-day TTL expires its first two days and part of the third,
    // and leaves two or three whole days to compare (two from 18:00 UTC on, when the oldest of them has less
    // than six hours left).
    const [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse({ ttlDays: 38 })]);
    try {
      const history = new ClickHouseHistory(ch.clients, { url: ch.url, database: ch.database });
      await seedSpans(pg.db, { projects: [P1], days: 6, rows: 2_000 });
      await new Backfill(pg, history).run(SCOPES[0]);
      // TTL removes rows at merges; a final merge applies it now.
      await ch.clients.query.command({ query: 'OPTIMIZE TABLE spans FINAL', clickhouse_settings: { wait_end_of_query: 1 } });
      const verifier = new Verifier(pg.db, history);

      const blind = await verifier.verify([SCOPES[0]], { content: false });
      expect(blind.differing.length).toBeGreaterThanOrEqual(2);
      expect(blind.retainedFrom).toBeNull();

      const report = await verifier.verify([SCOPES[0]], { ttlDays: 38 });
      expect(report.retainedFrom).toBe(retainedFrom(38, new Date()));
      expect(report.buckets.map((b) => b.day)).toEqual(blind.buckets.map((b) => b.day).filter((day) => day >= report.retainedFrom!.slice(0, 10)));
      expect(report.buckets.length).toBeGreaterThanOrEqual(2);
      expect(report.differing).toEqual([]);

      // A scope entirely older than the TTL compares nothing.
      expect((await verifier.verify([{ ...SCOPES[0], until: blind.buckets[0].scope.until }], { ttlDays: 38 })).buckets).toEqual([]);

      // A day the TTL keeps is still checked: a row missing there is found.
      const kept = report.buckets[report.buckets.length - 1];
      await ch.clients.query.command({
        query: 'ALTER TABLE spans DELETE WHERE project_id = {p:UUID} AND toDate(created_at) = {d:Date}',
        query_params: { p: P1, d: kept.day },
        clickhouse_settings: { mutations_sync: '1' },
      });
      expect((await verifier.verify([SCOPES[0]], { ttlDays: 38, content: false })).differing.map((b) => b.day)).toEqual([kept.day]);

      // verify takes the TTL from the tables, not from its shell; tables that disagree leave it no age to compare from.
      expect(await history.ttlDays(['spans', 'nodes'])).toBe(38);
      await ch.clients.query.command({ query: 'ALTER TABLE nodes REMOVE TTL', clickhouse_settings: { wait_end_of_query: 1 } });
      expect(await history.ttlDays(['spans'])).toBe(38);
      expect(await history.ttlDays(['nodes'])).toBe(0);
      await expect(history.ttlDays(['spans', 'nodes'])).rejects.toThrow(/TTLs differ .*\(spans: 38 days, nodes: none\); run `npm run migrate:clickhouse`/);
      // A TTL an earlier build allowed, past what ClickHouse can count to: it expires every row, and verify says so.
      await ch.clients.query.command({ query: 'ALTER TABLE nodes MODIFY TTL toDateTime(created_at) + INTERVAL 36500 DAY', clickhouse_settings: { wait_end_of_query: 1 } });
      await expect(history.ttlDays(['nodes'])).rejects.toThrow(/a TTL more than 20000 days \(nodes: 36500 days\): ClickHouse computes the tables' TTL as a 32-bit DateTime/);
      // Beside a table whose TTL is fine, the wrap is still what is named.
      await expect(history.ttlDays(['spans', 'nodes'])).rejects.toThrow(/a TTL more than 20000 days \(nodes: 36500 days\)/);
    } finally {
      await Promise.all([pg.drop(), ch.drop()]);
    }
  });
});

describe('a span deleted on one day and created again on another, unmirrored (real Postgres and ClickHouse)', () => {
  const ALL_SPANS: HistoryScope = { entity: 'spans', projectIds: null };
  let pg: TestDatabase;
  let ch: TestClickHouse;
  let history: ClickHouseHistory;
  beforeEach(async () => {
    [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse()]);
    history = new ClickHouseHistory(ch.clients, { url: ch.url, database: ch.database });
  });
  afterEach(async () => Promise.all([pg?.drop(), ch?.drop()]));

  const liveInClickHouse = async () =>
    (
      await ch.clients.query.query({
        query: 'SELECT toString(toDate(created_at)) AS day, span_name FROM spans FINAL WHERE is_deleted = 0 ORDER BY day',
        format: 'JSONEachRow',
      })
    ).json<{ day: string; span_name: string }>();

  /** Copied while it was 40 days old; then deleted and written again today while nothing mirrored (the flag off, or the tombstone lost). */
  async function deleteAndCreateAgainToday() {
    await seedSpans(pg.db, { projects: [P1], days: 1, rows: 1 });
    await new Backfill(pg, history).run(ALL_SPANS);
    const old = await pg.db.selectFrom('spans').selectAll().executeTakeFirstOrThrow();
    await pg.db.deleteFrom('spans').execute();
    await sql`insert into spans (project_id, trace_id, span_id, trace_type, span_type, span_kind, span_name, start_time, end_time, status_code)
      values (${P1}, ${old.trace_id}, ${old.span_id}, 'invocation', 'llm', 'SPAN_KIND_CLIENT', 'created again', now(), now(), 'STATUS_CODE_OK')`.execute(pg.db);
    return old;
  }

  it('--repair tombstones the old day\'s row, which the new one does not replace in ClickHouse', async () => {
    await deleteAndCreateAgainToday();
    const verifier = new Verifier(pg.db, history);
    const before = await verifier.verify([ALL_SPANS]);
    expect(before.differing).toHaveLength(2);
    const repaired = await verifier.repair(before.differing);
    expect(repaired).toMatchObject({ tombstoned: 1 });
    expect(repaired.after.differing).toEqual([]);
    expect((await verifier.verify([ALL_SPANS])).differing).toEqual([]);
    expect((await liveInClickHouse()).map((r) => r.span_name)).toEqual(['created again']);
  });

  it('backfill --gaps (a gap of the lost delete) does the same', async () => {
    const old = await deleteAndCreateAgainToday();
    await new PostgresMirrorGapsRepository(pg.db).record([
      { entity: 'spans', projectId: P1, keys: [spanHistory.keyOf(old)], minCreatedAt: old.created_at, maxCreatedAt: old.created_at, rowCount: 1, reason: 'send_failed' },
    ]);
    const replay = await new GapReplay(pg.db, history).run({ entities: ['spans'], projectIds: null });
    expect(replay).toMatchObject({ upserted: 1, tombstoned: 1 });
    expect((await liveInClickHouse()).map((r) => r.span_name)).toEqual(['created again']);
    expect((await new Verifier(pg.db, history).verify([ALL_SPANS])).differing).toEqual([]);
  });
});

// A busy project's day runs to millions of rows; repairing it whole held every key's version of both sides at once.
describe('--repair of a bucket with more keys than it compares at once (real Postgres and ClickHouse)', () => {
  it('compares its keys a chunk at a time, within the bound, and heals it whole', async () => {
    const [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse()]);
    try {
      const history = new ClickHouseHistory(ch.clients, { url: ch.url, database: ch.database });
      await seedSpans(pg.db, { projects: [P1], days: 1, rows: 1_000 });
      await new Backfill(pg, history).run(SCOPES[0]);
      const spans = await pg.db.selectFrom('spans').selectAll().orderBy('created_at').execute();
      const mutate = (query: string, params: Record<string, unknown>) =>
        ch.clients.query.command({ query, query_params: params, clickhouse_settings: { mutations_sync: '2', wait_end_of_query: 1 } });
      const condition = 'project_id = {p:UUID} AND trace_id = {t:UUID} AND span_id = {s:UInt64}';
      const params = (row: (typeof spans)[number]) => {
        const span = spanFromRow(row);
        return { p: span.project_id, t: span.trace_id.replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5'), s: BigInt(spanIdToUInt64(span.span_id)) };
      };
      // Rows missing early, midway and late in the day; one changed in place; one hidden by a newer tombstone;
      // a live row only ClickHouse has, in the middle of the day; and one ClickHouse holds at a newer version
      // and another created_at of the same day (as after a Postgres restore), which one ClickHouse row of
      // that day's sort key keeps.
      for (const n of [5, 500, 995]) await mutate(`ALTER TABLE spans DELETE WHERE ${condition}`, params(spans[n]));
      await mutate(`ALTER TABLE spans UPDATE span_name = 'tampered' WHERE ${condition}`, params(spans[250]));
      const hidden = spanFromRow(spans[750]);
      const stray = spanFromRow(spans[400]);
      const ahead = spanFromRow(spans[600]);
      const earlier = `${ahead.created_at.slice(0, 10)}T00:00:00.000001Z`;
      await ch.clients.insert.insert({
        table: 'spans',
        values: [
          JSON.parse(toSpanInsertLine({ ...hidden, version: isoToMicros(new Date().toISOString()) + 1_000_000n, deleted: true })),
          JSON.parse(toSpanClickHouseLine({ ...stray, span_id: 'ab'.repeat(8), version: isoToMicros(stray.updated_at), deleted: false })),
          JSON.parse(toSpanClickHouseLine({ ...ahead, created_at: earlier, span_name: 'restored', version: isoToMicros(new Date().toISOString()) + 1_000_000n, deleted: false })),
        ],
        format: 'JSONEachRow',
      });

      // How many keys each comparison took from ClickHouse.
      const keysRead: number[] = [];
      const measured = Object.create(history) as ClickHouseHistory;
      // And what else it asked of ClickHouse while that answer was open: ClickHouse drops a client that stops
      // reading for 30 s, and a reset waits for a mutation.
      let streaming = false;
      const whileStreaming: string[] = [];
      measured.keyVersions = async function* (...args) {
        streaming = true;
        try {
          for await (const chunk of history.keyVersions(...args)) {
            keysRead.push(chunk.length);
            yield chunk;
          }
        } finally {
          streaming = false;
        }
      };
      measured.removeKeys = async (...args) => (streaming && whileStreaming.push('removeKeys'), history.removeKeys(...args));
      measured.readLive = async (...args) => (streaming && whileStreaming.push('readLive'), history.readLive(...args));
      measured.insert = async (...args) => (streaming && whileStreaming.push('insert'), history.insert(...args));
      // And how many keys each Postgres lookup was asked for.
      const lookedUp: number[] = [];
      const versionsByKey = KeysetReader.prototype.versionsByKey;
      const lookups = jest.spyOn(KeysetReader.prototype, 'versionsByKey').mockImplementation(function (this: KeysetReader<unknown>, scope, keys) {
        lookedUp.push(keys.length);
        return versionsByKey.call(this, scope, keys);
      });
      const verifier = new Verifier(pg.db, measured, 100);
      const report = await verifier.verify([SCOPES[0]]);
      expect(report.differing.map((b) => b.differs)).toEqual([['rows', 'versions']]);
      const repair = await verifier.repair(report.differing).finally(() => lookups.mockRestore());
      expect(repair.after.differing).toEqual([]);
      expect(repair).toMatchObject({ buckets: 1, upserted: 1_000, tombstoned: 1, reset: 2 });
      expect(lookedUp.length).toBeGreaterThanOrEqual(10);
      expect(Math.max(...lookedUp)).toBeLessThanOrEqual(100);
      // About 1,000 keys in chunks of at most 100: ten or more, none read whole.
      expect(keysRead.length).toBeGreaterThanOrEqual(10);
      expect(Math.max(...keysRead)).toBeLessThanOrEqual(100);
      expect(whileStreaming).toEqual([]);
      expect((await new Verifier(pg.db, history).verify([SCOPES[0]])).differing).toEqual([]);
      const [shown] = await history.readLive(spanHistory, ahead.project_id, [[ahead.trace_id, ahead.span_id]]);
      expect({ created_at: shown.created_at, span_name: shown.span_name }).toEqual({ created_at: ahead.created_at, span_name: ahead.span_name });
    } finally {
      await Promise.all([pg.drop(), ch.drop()]);
    }
  });
});
