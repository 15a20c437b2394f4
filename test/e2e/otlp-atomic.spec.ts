import { sql } from 'kysely';
import request from 'supertest';
import { createTestApp, TestApp } from '../support/app';
import { snapshotBothSides } from '../support/mirror';

/**
 * An OTLP export stores each span twice, as a span and as a node: in one
 * transaction, so an export whose nodes fail to store leaves no spans
 * either (it used to leave its spans without nodes, for good if the
 * exporter gave up retrying), and the mirror sends nothing of it. Here the
 * node write fails by a trigger that refuses one node name.
 */
describe('an OTLP export whose nodes fail to store', () => {
  const trace = (n: number) => n.toString(16).padStart(32, 'c');
  /** An export of one span per name; a name starting with "ends before it starts" makes a span the receiver refuses alone. */
  const exportOf = (traceId: string, names: string[]) => ({
    resourceSpans: [{
      resource: { attributes: [{ key: 'service.name', value: { stringValue: 'svc' } }] },
      scopeSpans: [{
        scope: { name: 'atomic' },
        spans: names.map((name, i) => ({
          traceId, spanId: (i + 1).toString(16).padStart(16, 'd'), name, kind: 1,
          startTimeUnixNano: '1763632800000001000',
          endTimeUnixNano: name.startsWith('ends before it starts') ? '1763632700000000000' : '1763632801000000000',
        })),
      }],
    }],
  });

  for (const mirrored of [false, true]) {
    describe(mirrored ? 'with the mirror on' : 'with the mirror off', () => {
      let t: TestApp;
      beforeAll(async () => {
        t = await createTestApp({}, { clickhouse: mirrored });
        await sql`create function refuse_node() returns trigger language plpgsql as $$
          begin
            if new.node_name = 'refused by the test' then raise exception 'node refused by the test'; end if;
            if new.node_name = 'unavailable by the test' then raise exception 'too many connections, says the test' using errcode = '53300'; end if;
            return new;
          end $$`.execute(t.database.db);
        await sql`create trigger refuse_node before insert on nodes for each row execute function refuse_node()`.execute(t.database.db);
      });
      afterAll(async () => t?.close());

      it('stores neither its spans nor its nodes, and mirrors nothing; the next export is stored whole', async () => {
        const auth = { Authorization: `ApiKey ${t.apiKey}` };
        const failed = await request(t.url).post('/otlp/v1/traces').set(auth).send(exportOf(trace(1), ['fine', 'refused by the test']));
        expect(failed.status).toBe(500);
        await request(t.url).get(`/tracing/traces/${trace(1)}`).set(auth).expect(404);

        await request(t.url).post('/otlp/v1/traces').set(auth).send(exportOf(trace(2), ['fine', 'also fine'])).expect(200);
        expect((await request(t.url).get(`/tracing/traces/${trace(2)}`).set(auth).expect(200)).body.spans).toHaveLength(2);
        const counts = await sql<{ spans: number; nodes: number }>`
          select (select count(*)::int from spans where project_id = ${t.projectId}) as spans,
                 (select count(*)::int from nodes where project_id = ${t.projectId}) as nodes`.execute(t.database.db);
        expect(counts.rows[0]).toEqual({ spans: 2, nodes: 2 });

        if (t.mirror) {
          await t.mirror.writer.drain();
          const both = await snapshotBothSides(t.database.db, t.mirror.clickhouse.query, t.projectId);
          expect({ spans: both.chSpans.length, nodes: both.chNodes.length }).toEqual({ spans: 2, nodes: 2 });
          expect(both.chSpans).toEqual(both.pgSpans);
          expect(both.chNodes).toEqual(both.pgNodes);
          // Nothing of the failed export was handed over, so nothing became a gap either.
          expect(t.mirror.writer.stats()).toMatchObject({ rowsSent: 4, rowsDropped: 0, gapsRecorded: 0 });
        }
      });

      // An exporter sends an export again after a 503 (or 429, 502, 504), its refused spans with it: they are counted
      // when it is stored. After any other failure it drops the export: they are counted then.
      it('counts refused spans in otlp_spans_rejected_total once per export an exporter will not send again', async () => {
        const auth = { Authorization: `ApiKey ${t.apiKey}` };
        const rejectedTotal = async () => Number(/^otlp_spans_rejected_total (\d+)$/m.exec((await request(t.url).get('/metrics').expect(200)).text)?.[1]);
        const before = await rejectedTotal();
        expect(Number.isInteger(before)).toBe(true); // the metric's line was found: NaN would make every comparison below pass
        const retried = await request(t.url).post('/otlp/v1/traces').set(auth).send(exportOf(trace(3), ['ends before it starts', 'unavailable by the test']));
        expect(retried.status).toBe(503);
        expect(await rejectedTotal()).toBe(before);
        const stored = await request(t.url).post('/otlp/v1/traces').set(auth).send(exportOf(trace(3), ['ends before it starts', 'fine'])).expect(200);
        expect(stored.body.partialSuccess).toMatchObject({ rejectedSpans: '1' });
        expect(await rejectedTotal()).toBe(before + 1);
        const dropped = await request(t.url).post('/otlp/v1/traces').set(auth).send(exportOf(trace(4), ['ends before it starts', 'refused by the test']));
        expect(dropped.status).toBe(500);
        expect(await rejectedTotal()).toBe(before + 2);
      });
    });
  }
});
