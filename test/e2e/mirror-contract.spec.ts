import request from 'supertest';
import { ObservabilityService } from '../../src/observability/observability.service';
import { TracingService } from '../../src/tracing/tracing.service';
import { createTestApp, TestApp } from '../support/app';
import { makeNode, makeSpan } from '../support/fixtures';
import { snapshotBothSides } from '../support/mirror';
import { normalize } from '../support/normalize';

/**
 * One contract over the REST routes and the services, run with the mirror
 * off and on. Callers must see identical results either way; with the mirror
 * on, ClickHouse must then hold exactly what Postgres holds.
 */

const T1 = '11111111111111111111111111111111';
const T2 = '22222222222222222222222222222222';
const T3 = '33333333333333333333333333333333';
const TREE = '44444444-4444-4444-8444-444444444444';
const id = (n: number) => n.toString(16).padStart(16, 'a');

type Step = { step: string; status: number; body: unknown };

async function runContract(t: TestApp): Promise<Step[]> {
  const auth = { Authorization: `ApiKey ${t.apiKey}` };
  const steps: Step[] = [];
  const http = async (step: string, call: (r: ReturnType<typeof request>) => request.Test) => {
    const res = await call(request(t.url)).set(auth);
    steps.push({ step, status: res.status, body: normalize(res.body) });
    return res;
  };
  const service = async (step: string, run: () => Promise<unknown>) => {
    try {
      steps.push({ step, status: 0, body: normalize(await run()) });
    } catch (error) {
      steps.push({ step, status: -1, body: `${(error as Error).name}: ${(error as Error).message}` });
    }
  };

  const trace1 = [
    makeSpan({ trace_id: T1, span_id: id(1), span_name: 'root', span_type: 'workflow', start_time: '2026-11-20T10:00:00.000001Z', end_time: '2026-11-20T10:00:09Z' }),
    makeSpan({ trace_id: T1, span_id: id(2), parent_id: id(1), span_name: 'llm', start_time: '2026-11-20T10:00:01.000002Z', end_time: '2026-11-20T10:00:02Z', status_code: 'STATUS_CODE_ERROR', status_message: 'rate limited' }),
    makeSpan({ trace_id: T1, span_id: id(3), parent_id: id(1), span_name: 'tool', span_type: 'tool', start_time: '2026-11-20T10:00:03.000003Z', end_time: '2026-11-20T10:00:04Z' }),
  ];
  const trace2 = [
    makeSpan({ trace_id: T2, span_id: id(4), span_name: 'root', start_time: '2026-11-20T11:30:00Z', end_time: '2026-11-20T11:30:01Z' }),
    makeSpan({ trace_id: T2, span_id: id(5), parent_id: id(4), span_name: 'embed', span_type: 'embedding', start_time: '2026-11-20T11:30:00.5Z', end_time: '2026-11-20T11:30:00.75Z' }),
  ];

  await http('create trace 1', (r) => r.post('/tracing/spans').send({ spans: trace1 }));
  await http('create trace 2', (r) => r.post('/tracing/spans').send({ spans: trace2 }));
  await http('create again: conflict', (r) => r.post('/tracing/spans').send({ spans: [trace1[0]] }));
  await http('bad span: 400', (r) => r.post('/tracing/spans').send({ spans: [{ ...trace1[0], span_id: 'no' }] }));
  await http('read trace 1', (r) => r.get(`/tracing/traces/${T1}`));
  await http('read one span', (r) => r.get(`/tracing/spans/${T1}/${id(2)}`));
  await http('update llm span', (r) => r.put('/tracing/spans').send({ spans: [{ ...trace1[1], span_name: 'llm-retried', status_code: 'STATUS_CODE_OK', status_message: null }] }));
  await http('update missing: 404', (r) => r.put('/tracing/spans').send({ spans: [makeSpan({ trace_id: T3, span_id: id(9) })] }));
  await http('query errors', (r) => r.post('/tracing/spans/query').send({ focus: 'span', filter: { conditions: [{ field: 'status_code', operator: 'is', value: 'STATUS_CODE_OK' }] }, windowing: { limit: 2, order: 'ascending' } }));
  await http('query traces', (r) => r.post('/tracing/spans/query').send({ focus: 'trace', filter: { conditions: [{ field: 'span_name', operator: 'startswith', value: 'emb' }] } }));
  await http('query attribute', (r) => r.post('/tracing/spans/query').send({ filter: { conditions: [{ field: 'attributes', key: 'ag.metrics.tokens.cumulative.total', operator: 'gte', value: 300 }] } }));
  await http('analytics', (r) => r.post('/tracing/analytics/query').send({ focus: 'span', windowing: { oldest: '2026-11-20T10:00:00Z', newest: '2026-11-20T12:00:00Z', interval: 60 } }));
  await http('delete one span', (r) => r.delete('/tracing/spans').send({ spans: [{ trace_id: T1, span_id: id(3) }] }));
  await http('delete trace 2', (r) => r.delete(`/tracing/traces/${T2}`));
  await http('trace 2 gone', (r) => r.get(`/tracing/traces/${T2}`));
  await http('otlp json', (r) =>
    r.post('/otlp/v1/traces').send({
      resourceSpans: [{
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'svc' } }] },
        scopeSpans: [{
          scope: { name: 'contract' },
          spans: [
            { traceId: T3, spanId: id(6), name: 'otlp-root', kind: 2, startTimeUnixNano: '1763632800000001000', endTimeUnixNano: '1763632801000000000', attributes: [{ key: 'gen_ai.usage.input_tokens', value: { intValue: '7' } }], status: { code: 1 } },
            { traceId: T3, spanId: id(7), parentSpanId: id(6), name: 'otlp-child', kind: 3, startTimeUnixNano: '1763632800500000000', endTimeUnixNano: '1763632800600000000', status: { code: 2, message: 'boom' } },
          ],
        }],
      }],
    }),
  );
  await http('read otlp trace', (r) => r.get(`/tracing/traces/${T3}`));

  const nodes = [makeNode({ node_id: '55555555-5555-4555-8555-555555555555', tree_id: TREE }), makeNode({ node_id: '66666666-6666-4666-8666-666666666666', tree_id: TREE, parent_id: '55555555-5555-4555-8555-555555555555' })];
  await http('ingest nodes', (r) => r.post('/observability/nodes').send({ nodes }));
  await http('re-ingest a node', (r) => r.post('/observability/nodes').send({ nodes: [{ ...nodes[1], node_name: 'renamed' }] }));
  await http('read tree', (r) => r.get(`/observability/trees/${TREE}`));
  await http('query nodes', (r) => r.post('/observability/nodes/query').send({ node_type: 'task' }));

  const tracing = t.app.get(TracingService);
  const observability = t.app.get(ObservabilityService);
  const p = t.projectId;
  await service('service createSpans upsert', () => tracing.createSpans(p, [{ ...trace1[0], span_name: 'root-upserted' }], { upsert: true }));
  await service('service readSpans', () => tracing.readSpans(p, [{ trace_id: T1, span_id: id(1) }, { trace_id: T1, span_id: id(2) }]));
  await service('service readTraces', () => tracing.readTraces(p, [T1, T3]));
  await service('service updateSpans missing', () => tracing.updateSpans(p, [makeSpan({ trace_id: T2, span_id: id(8) })]));
  await service('service deleteTraces', () => tracing.deleteTraces(p, [T3]));
  await service('service query', () => tracing.query(p, { focus: 'span', windowing: { limit: 10 } }));
  await service('service analytics', () => tracing.analytics(p, { focus: 'trace', windowing: { oldest: '2026-11-20T00:00:00Z', newest: '2026-11-21T00:00:00Z', interval: 1440 } }));
  await service('service ingestNodes', () => observability.ingestNodes(p, [makeNode({ node_id: '77777777-7777-4777-8777-777777777777', tree_id: TREE })]));
  await service('service readTree', () => observability.readTree(p, TREE));
  await service('service deleteTrees', () => observability.deleteTrees(p, [TREE]));
  await service('service readTree after delete', () => observability.readTree(p, TREE));
  return steps;
}

describe('the contract is the same with the mirror off and on', () => {
  let off: TestApp;
  let on: TestApp;
  beforeAll(async () => {
    [off, on] = await Promise.all([createTestApp(), createTestApp({}, { clickhouse: true })]);
  });
  afterAll(async () => Promise.all([off?.close(), on?.close()]));

  it('callers see identical results, and ClickHouse then holds exactly what Postgres holds', async () => {
    expect(off.mirror).toBeNull();
    expect(on.mirror).not.toBeNull();

    const withoutMirror = await runContract(off);
    const withMirror = await runContract(on);
    expect(withMirror).toEqual(withoutMirror);
    // The script did real work: writes, reads, conflicts, deletes.
    expect(withoutMirror.map((s) => s.status)).toEqual(expect.arrayContaining([201, 200, 409, 400, 404, 0, -1]));

    await on.mirror!.writer.drain();
    const both = await snapshotBothSides(on.database.db, on.mirror!.clickhouse.query, on.projectId);
    expect(both.pgSpans.length).toBe(2); // trace 1 minus its deleted span (root upserted in place); traces 2 and 3 deleted
    expect(both.chSpans).toEqual(both.pgSpans);
    expect(both.pgNodes.length).toBe(2); // the OTLP nodes of trace 3 (trees are not deleted with traces)
    expect(both.chNodes).toEqual(both.pgNodes);
    expect(on.mirror!.writer.stats().gapsRecorded).toBe(0);
  });
});
