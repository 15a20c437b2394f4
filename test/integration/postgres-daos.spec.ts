import { PostgresObservabilityDao } from '../../src/dbs/postgres/postgres-observability.dao';
import { PostgresTracingDao } from '../../src/dbs/postgres/postgres-tracing.dao';
import { makeNode, makeSpan } from '../support/fixtures';
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
