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

  it('PUTs of the same spans in opposite orders all succeed, each leaving one whole batch', async () => {
    const spans = Array.from({ length: BATCH }, () => makeSpan({ trace_id: hex(16) }));
    expect((await send('POST', '/tracing/spans', { spans })).status).toBe(201);
    const statuses = await race(
      Array.from({ length: ROUNDS }, (_, round) =>
        inBothOrders(spans).map((batch, i) => ({ method: 'PUT', path: '/tracing/spans', body: { spans: batch.map((s) => ({ ...s, span_name: `put round ${round} request ${i}` })) } })),
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

  it('deletes racing replacements of the same spans: every answer is a 200 or a 404, never a 5xx', async () => {
    const statuses: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const trace = makeTrace(BATCH - 1);
      expect((await send('POST', '/tracing/spans', { spans: trace })).status).toBe(201);
      const keys = trace.map(({ trace_id, span_id }) => ({ trace_id, span_id }));
      statuses.push(
        ...(await race([
          [
            { method: 'PUT', path: '/tracing/spans', body: { spans: trace.map((s) => ({ ...s, span_name: 'replaced' })) } },
            { method: 'DELETE', path: '/tracing/spans', body: { spans: [...keys].reverse() } },
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
