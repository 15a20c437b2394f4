import { Client } from 'pg';
import { createTestApp, TestApp } from '../support/app';
import { hex, makeNode, makeSpan, makeTrace, uuid } from '../support/fixtures';
import { snapshotBothSides } from '../support/mirror';

/**
 * Clients write the same rows at the same time: an OTLP exporter retrying a
 * batch that a collector also forwards, two workers replacing the same spans.
 * Each request is one transaction, and Postgres serializes transactions over
 * the same rows. None of them may fail for it (a deadlock was a 500), the
 * result must be one request's whole batch, never a mix, and the mirror must
 * hold what Postgres holds.
 *
 * Where a statement finds its rows through the heap rather than the primary
 * key (a delete over many traces, the rows of a tree), it would lock them in
 * the order they sit on disk; rows written one request at a time in
 * descending key order (`storedOutOfKeyOrder`) make that order the opposite
 * of the key's.
 */

const ROUNDS = 12;
const BATCH = 40;
/** Two requests carry the batch in one order, two in the reverse: the orders that deadlocked. */
const REQUESTS_PER_ROUND = 4;

describe('concurrent writes over the same rows', () => {
  let t: TestApp;
  beforeAll(async () => (t = await createTestApp({}, { clickhouse: true })));
  afterAll(async () => t?.close());

  const send = (method: string, path: string, body: unknown) =>
    fetch(`${t.url}${path}`, {
      method,
      headers: { Authorization: `ApiKey ${t.apiKey}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    }).then(async (res) => ({ status: res.status, body: await res.text() }));

  /** Sends each round's bodies at once; returns every answer's status, and the first 5xx body seen. */
  async function race(rounds: Array<Array<{ method: string; path: string; body: unknown }>>) {
    const statuses: number[] = [];
    for (const requests of rounds) {
      const answers = await Promise.all(requests.map((r) => send(r.method, r.path, r.body)));
      for (const answer of answers) {
        if (answer.status >= 500) throw new Error(`a concurrent write answered ${answer.status}: ${answer.body}`);
        statuses.push(answer.status);
      }
    }
    return statuses;
  }

  const inBothOrders = <T>(batch: T[]) => Array.from({ length: REQUESTS_PER_ROUND }, (_, i) => (i % 2 ? [...batch].reverse() : batch));

  function otlpExport(traceId: string, name: string, spanIds: string[]) {
    const spans = spanIds.map((spanId) => ({
      traceId,
      spanId,
      name,
      kind: 1,
      startTimeUnixNano: '1795000000000000000',
      endTimeUnixNano: '1795000001000000000',
    }));
    return { resourceSpans: [{ resource: { attributes: [] }, scopeSpans: [{ scope: { name: 'race' }, spans }] }] };
  }

  /** One OTLP export carrying these spans (of any traces), all named `name`. */
  function otlpExports(spans: Array<{ trace_id: string; span_id: string }>, name: string) {
    const otlp = otlpExport('', name, []);
    otlp.resourceSpans[0].scopeSpans[0].spans = spans.map((s) => ({ ...otlpExport(s.trace_id, name, [s.span_id]).resourceSpans[0].scopeSpans[0].spans[0] }));
    return otlp;
  }

  const spanKey = (s: { trace_id: string; span_id: string }) => `${s.trace_id}/${s.span_id}`;

  /** Spans in traces of their own, written one request each in descending key order: on disk, the reverse of the key's. */
  async function storedOutOfKeyOrder(count: number) {
    const spans = Array.from({ length: count }, () => makeSpan()).sort((a, b) => (spanKey(a) < spanKey(b) ? 1 : -1));
    for (const span of spans) expect((await send('POST', '/tracing/spans', { spans: [span] })).status).toBe(201);
    return spans;
  }

  it('OTLP exports of the same spans in opposite orders all succeed, each leaving one whole batch', async () => {
    const traceId = hex(16);
    const spanIds = Array.from({ length: BATCH }, () => hex(8));
    const statuses = await race(
      Array.from({ length: ROUNDS }, (_, round) =>
        inBothOrders(spanIds).map((ids, i) => ({ method: 'POST', path: '/otlp/v1/traces', body: otlpExport(traceId, `round ${round} request ${i}`, ids) })),
      ),
    );
    expect(statuses).toEqual(Array(ROUNDS * REQUESTS_PER_ROUND).fill(200));

    const trace = await send('GET', `/tracing/traces/${traceId}`, undefined);
    const names = new Set((JSON.parse(trace.body).spans as Array<{ span_name: string }>).map((s) => s.span_name));
    expect(names.size).toBe(1); // the last committed request's batch, whole
  });

  it('PUTs racing OTLP exports of the same spans, stored out of key order, all succeed, each leaving one whole batch', async () => {
    const spans = await storedOutOfKeyOrder(BATCH);
    const statuses = await race(
      Array.from({ length: ROUNDS }, (_, round) =>
        inBothOrders(spans).map((batch, i) =>
          i < 2
            ? { method: 'PUT', path: '/tracing/spans', body: { spans: batch.map((s) => ({ ...s, span_name: `put round ${round} request ${i}` })) } }
            : { method: 'POST', path: '/otlp/v1/traces', body: otlpExports(batch, `put round ${round} request ${i}`) },
        ),
      ),
    );
    expect(statuses).toEqual(Array(ROUNDS * REQUESTS_PER_ROUND).fill(200));

    const names = await t.database.db
      .selectFrom('spans')
      .select('span_name')
      .distinct()
      .where('project_id', '=', t.projectId)
      .where('span_name', 'like', 'put round %')
      .execute();
    expect(names).toHaveLength(1); // the last committed request's batch, whole
  });

  it('creating the same new spans in opposite orders: one request creates them, the others get a 409', async () => {
    const statuses = await race(
      Array.from({ length: ROUNDS }, () => {
        const spans = Array.from({ length: BATCH }, () => makeSpan({ trace_id: hex(16) }));
        return inBothOrders(spans).map((batch) => ({ method: 'POST', path: '/tracing/spans', body: { spans: batch } }));
      }),
    );
    expect(statuses.filter((s) => s === 201)).toHaveLength(ROUNDS);
    expect(statuses.filter((s) => s === 409)).toHaveLength(ROUNDS * (REQUESTS_PER_ROUND - 1));
  });

  it('node ingests of the same nodes in opposite orders all succeed', async () => {
    const treeId = uuid();
    const nodes = Array.from({ length: BATCH }, () => makeNode({ tree_id: treeId }));
    const statuses = await race(
      Array.from({ length: ROUNDS }, (_, round) =>
        inBothOrders(nodes).map((batch, i) => ({ method: 'POST', path: '/observability/nodes', body: { nodes: batch.map((n) => ({ ...n, node_name: `round ${round} request ${i}` })) } })),
      ),
    );
    expect(new Set(statuses)).toEqual(new Set([201]));
  });

  it('deleting a tree while its nodes, stored out of key order, are ingested again: every answer is a 201, 200 or 404', async () => {
    const statuses: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const treeId = uuid();
      const nodes = Array.from({ length: BATCH }, () => makeNode({ tree_id: treeId })).sort((a, b) => (a.node_id < b.node_id ? 1 : -1));
      for (const node of nodes) expect((await send('POST', '/observability/nodes', { nodes: [node] })).status).toBe(201);
      statuses.push(
        ...(await race([
          [
            { method: 'POST', path: '/observability/nodes', body: { nodes } },
            { method: 'DELETE', path: `/observability/trees/${treeId}`, body: undefined },
          ],
        ])),
      );
    }
    expect(statuses.every((s) => s === 201 || s === 200 || s === 404)).toBe(true);
  });

  it('deletes racing replacements of the same spans, stored out of key order: every answer is a 200 or a 404, never a 5xx', async () => {
    const statuses: number[] = [];
    for (let round = 0; round < ROUNDS / 2; round++) {
      const spans = await storedOutOfKeyOrder(BATCH);
      const keys = spans.map(({ trace_id, span_id }) => ({ trace_id, span_id }));
      statuses.push(
        ...(await race([
          [
            { method: 'PUT', path: '/tracing/spans', body: { spans: spans.map((s) => ({ ...s, span_name: 'replaced' })) } },
            { method: 'DELETE', path: '/tracing/spans', body: { spans: keys } },
            { method: 'PUT', path: '/tracing/spans', body: { spans: [...spans].reverse().map((s) => ({ ...s, span_name: 'replaced again' })) } },
            { method: 'DELETE', path: '/tracing/spans', body: { spans: [...keys].reverse() } },
          ],
        ])),
      );
    }
    expect(statuses.every((s) => s === 200 || s === 404)).toBe(true);
  });

  /**
   * The delete, then the re-export, each queued behind a row lock: another session holds the last of the
   * spans in key order, so the delete, which locks them in that order, waits there holding all the others.
   * The re-export then waits on the first, and re-creates the spans once the delete commits.
   */
  async function deleteHoldingRowsThenReExport(
    keys: Array<{ trace_id: string; span_id: string }>,
    del: { method: string; path: string; body: unknown },
    reExport: { method: string; path: string; body: unknown },
  ) {
    const last = keys.map((k) => `${k.trace_id.toLowerCase()} ${k.span_id.toLowerCase()}`).sort().at(-1)!.split(' ');
    const locker = new Client({ connectionString: t.database.url });
    await locker.connect();
    try {
      await locker.query('begin');
      const held = await locker.query(`select 1 from spans where project_id = $1 and trace_id = $2::uuid and span_id = decode($3, 'hex') for update`, [t.projectId, ...last]);
      expect(held.rowCount).toBe(1);
      /** Sessions waiting for a row lock (the delete on the held row, the re-export on the delete's first). */
      const waiting = async (count: number) => {
        for (const deadline = Date.now() + 10_000; ; await new Promise((done) => setTimeout(done, 25))) {
          const { rows } = await locker.query<{ n: number }>(
            `select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()`,
          );
          if (rows[0].n === count) return;
          if (Date.now() > deadline) throw new Error(`the writes did not queue as meant: ${rows[0].n} waiting, expected ${count}`);
        }
      };
      const answers = [send(del.method, del.path, del.body)];
      await waiting(1);
      answers.push(send(reExport.method, reExport.path, reExport.body));
      await waiting(2);
      await locker.query('rollback');
      const statuses = (await Promise.all(answers)).map((answer) => {
        if (answer.status >= 500) throw new Error(`a concurrent write answered ${answer.status}: ${answer.body}`);
        return answer.status;
      });
      return statuses;
    } finally {
      await locker.end();
    }
  }

  // An exporter re-sending spans a user deletes: the span re-created while its delete was in flight must
  // not hide behind the delete's tombstone in ClickHouse (the tombstone's version was the delete's clock).
  it('deletes racing re-exports of the same spans: all succeed, and ClickHouse shows every span Postgres has', async () => {
    // How each round ended in Postgres: the re-export re-created the spans after the delete, or the delete came last.
    const endings = { recreated: 0, deleted: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      const spans = await storedOutOfKeyOrder(BATCH);
      const keys = spans.map(({ trace_id, span_id }) => ({ trace_id, span_id }));
      const deleteFirst = { method: 'DELETE', path: '/tracing/spans', body: { spans: keys } };
      const exportFirst = { method: 'POST', path: '/otlp/v1/traces', body: otlpExports(spans, 'exported again') };
      // Round 0 made certain (the rest are left to scheduling): the delete holds the rows when the re-export arrives.
      const statuses =
        round === 0
          ? await deleteHoldingRowsThenReExport(keys, deleteFirst, exportFirst)
          : // Sent at once, in turns: the delete then usually holds the rows when the re-export arrives, or the other way round.
            await race([round % 2 === 0 ? [deleteFirst, exportFirst] : [exportFirst, deleteFirst]]);
      expect(new Set(statuses)).toEqual(new Set([200]));
      const left = await t.database.db.selectFrom('spans').select((eb) => eb.fn.countAll<string>().as('n'))
        .where('project_id', '=', t.projectId).where('span_name', '=', 'exported again').where('trace_id', 'in', spans.map((s) => s.trace_id)).executeTakeFirstOrThrow();
      // One request's whole batch, never a mix.
      expect([0, BATCH]).toContain(Number(left.n));
      if (round === 0) expect(Number(left.n)).toBe(BATCH);
      endings[Number(left.n) === BATCH ? 'recreated' : 'deleted']++;
    }
    // The case this test is for occurred: the re-export re-created spans the racing delete had deleted.
    expect(endings.recreated).toBeGreaterThan(0);
    await t.mirror!.writer.drain();
    const both = await snapshotBothSides(t.database.db, t.mirror!.clickhouse.query, t.projectId);
    expect(both.chSpans).toEqual(both.pgSpans);
    process.stdout.write(`concurrent-writes: delete vs re-export, ${ROUNDS} rounds: ${endings.recreated} re-created after the delete, ${endings.deleted} deleted last\n`);
  });

  it('deleting traces racing replacements of their spans: every answer is a 200 or a 404', async () => {
    const statuses: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const trace = makeTrace(BATCH - 1);
      expect((await send('POST', '/tracing/spans', { spans: trace })).status).toBe(201);
      statuses.push(
        ...(await race([
          [
            { method: 'PUT', path: '/tracing/spans', body: { spans: trace.map((s) => ({ ...s, span_name: 'replaced' })) } },
            { method: 'DELETE', path: `/tracing/traces/${trace[0].trace_id}`, body: undefined },
            { method: 'PUT', path: '/tracing/spans', body: { spans: [...trace].reverse().map((s) => ({ ...s, span_name: 'replaced again' })) } },
          ],
        ])),
      );
    }
    expect(statuses.every((s) => s === 200 || s === 404)).toBe(true);
  });

  it('afterwards ClickHouse holds exactly what Postgres holds, with no gap recorded', async () => {
    await t.mirror!.writer.drain();
    const both = await snapshotBothSides(t.database.db, t.mirror!.clickhouse.query, t.projectId);
    expect(both.pgSpans.length).toBeGreaterThan(0);
    expect(both.chSpans).toEqual(both.pgSpans);
    expect(both.chNodes).toEqual(both.pgNodes);
    expect(t.mirror!.writer.stats().gapsRecorded).toBe(0);
  });
});
