import fc from 'fast-check';
import { sql } from 'kysely';
import { Backfill } from '../../src/dbs/backfill/backfill';
import { ClickHouseHistory } from '../../src/dbs/backfill/clickhouse-history';
import { HistoryEntity, keyText, nodeHistory, spanHistory } from '../../src/dbs/backfill/history-entities';
import { createTestClickHouse, TestClickHouse } from '../support/clickhouse';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/**
 * The backfill's bulk copy (Postgres computes the ClickHouse columns, COPY
 * streams them as TabSeparated, jsonb made compact on the way) must store
 * exactly the line the row mapper makes of the same row, or a copied row
 * and a mirrored one would differ and verify would flag them. Rows here are
 * chosen to break that: every escape COPY and TabSeparated know, numbers
 * Postgres prints differently from JavaScript, keys JavaScript reorders,
 * span ids past 2^63, whole-second and one-microsecond times, and random
 * JSON from fast-check.
 */

const P = '0b000000-0000-4000-8000-000000000001';

/** jsonb texts, written as Postgres receives them (not through JSON.stringify). */
const HOSTILE_JSON = [
  '{}',
  '{"a": 1.50, "b": -0, "c": 1e21, "d": 0.000001, "e": 1e-7, "f": 123456789012345678901234567890, "g": -12.5e3}',
  '{"10": "ten", "a": 1, "9": "nine", "01": "not an index", "4294967295": "past the last index"}',
  '{"s": "tab\\there, back \\\\ slash, \\"quoted\\": yes, newline\\nand\\r\\u0001\\u001f\\u007f ünïcødé 😀 \\u2028 \\/"}',
  '{"nested": {"x": [1, [2, [3, {"y": null}]], true, false], "spaces: , ": "  ,  :  "}, "empty": {}, "list": []}',
  '{"literal": "\\\\N", "tab key\\t": "\\\\t", "backslash at end\\\\": "\\\\"}',
  '[1, 2.0, "three", null]',
  `{"past a double": 1${'0'.repeat(400)}, "below one": 0.${'0'.repeat(400)}1, "trailing zeros": [0.00100, 2.000]}`,
];

const STRINGS = ['plain', 'tab\there', 'newline\nthere', 'carriage\rreturn', 'back\\slash', '\\N', '', 'ünïcødé 😀', 'form\ffeed\vvertical\bback'];

const SPAN_IDS = ['0000000000000000', '0000000000000001', '7fffffffffffffff', '8000000000000000', 'ffffffffffffffff', 'deadbeefcafebabe'];

const TIMES = ['2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000001Z', '2026-06-15T12:30:45.500000Z', '2025-12-31T23:59:59.999999Z', '2024-02-29T01:02:03.040506Z'];

/** fast-check's JSON, minus what jsonb refuses (\u0000). */
const jsonTexts = (count: number, seed: number): string[] =>
  fc
    .sample(fc.dictionary(fc.string({ unit: 'grapheme' }), fc.jsonValue({ stringUnit: 'grapheme' }), { maxKeys: 6 }), { numRuns: count, seed })
    .map((value) => JSON.stringify(value))
    .filter((text) => !text.includes('\\u0000'));

async function copiedEqualsMapped(
  pg: TestDatabase,
  ch: TestClickHouse,
  entity: HistoryEntity,
  storedKey: (row: Record<string, unknown>) => string[],
): Promise<void> {
  const history = new ClickHouseHistory(ch.clients, { url: ch.url, database: ch.database });
  // Small batches: several COPY statements, cursors inlined between them.
  const result = await new Backfill(pg, history).run({ entity: entity.name, projectIds: null }, { batchRows: 7, batchBytes: 64 << 20 });
  const { rows } = await sql`select ${sql.join(entity.columns.map((c) => sql.ref(c)))} from ${sql.table(entity.table)}`.execute(pg.db);
  expect(result.rowsCopied).toBe(rows.length);

  const mapped = new Map(rows.map((row) => [keyText(entity.keyOf(row)), entity.line(entity.mirrored(row))]));
  const stored = new Map<string, string>();
  for await (const block of history.streamStored(entity, { entity: entity.name, projectIds: null })) {
    for (const row of block) stored.set(keyText(entity.clickHouseKeyOf(storedKey(row))), JSON.stringify(row));
  }
  expect(stored.size).toBe(mapped.size);
  for (const [key, line] of mapped) expect({ key, line: stored.get(key) }).toEqual({ key, line });
}

describe('bulk copy conformance: what the backfill stores is the row mapper line (real Postgres and ClickHouse)', () => {
  let pg: TestDatabase;
  let ch: TestClickHouse;

  beforeEach(async () => {
    [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse()]);
  });
  afterEach(async () => Promise.all([pg?.drop(), ch?.drop()]));

  it('spans', async () => {
    const json = [...HOSTILE_JSON, ...jsonTexts(120, 42)];
    for (let i = 0; i < json.length; i++) {
      const text = STRINGS[i % STRINGS.length];
      const at = TIMES[i % TIMES.length];
      await sql`
        insert into spans (project_id, trace_id, span_id, parent_id, trace_type, span_type, span_kind, span_name, start_time, end_time,
                           status_code, status_message, attributes, "references", links, hashes, events, exception,
                           created_at, updated_at, created_by_id, updated_by_id)
        values (${P}::uuid, md5(${`trace${i}`})::uuid, decode(${i < SPAN_IDS.length ? SPAN_IDS[i] : `${i.toString(16).padStart(8, '0')}9abcdef0`}, 'hex'),
                ${i % 3 === 0 ? null : sql`decode(${SPAN_IDS[i % SPAN_IDS.length]}, 'hex')`},
                'invocation', 'llm', 'SPAN_KIND_INTERNAL', ${`${text} ${i}`}, ${at}::timestamptz, ${TIMES[(i + 1) % TIMES.length]}::timestamptz,
                'STATUS_CODE_ERROR', ${i % 4 === 0 ? null : text},
                ${json[i].startsWith('{') ? json[i] : `{"wrapped": ${json[i]}}`}::jsonb,
                ${i % 2 ? json[(i + 1) % json.length] : null}::jsonb, ${i % 5 ? null : '[]'}::jsonb, ${i % 7 ? null : json[(i + 3) % json.length]}::jsonb,
                ${json[(i + 2) % json.length]}::jsonb, ${i % 3 ? null : json[(i + 4) % json.length]}::jsonb,
                ${at}::timestamptz + ${i % 3} * interval '1 microsecond', ${at}::timestamptz + ${i} * interval '1 second',
                ${i % 2 ? null : P}::uuid, ${i % 3 ? P : null}::uuid)`.execute(pg.db);
    }
    await copiedEqualsMapped(pg, ch, spanHistory, (row) => [String(row.trace_id), String(row.span_id)]);
  });

  it('nodes', async () => {
    const json = [...HOSTILE_JSON, ...jsonTexts(60, 7)];
    for (let i = 0; i < json.length; i++) {
      const text = STRINGS[i % STRINGS.length];
      const at = TIMES[i % TIMES.length];
      await sql`
        insert into nodes (project_id, node_id, tree_id, root_id, parent_id, node_name, node_type, time_start, time_end, status_code, status_message,
                           data, metrics, meta, refs, exception, links, otel, created_at, updated_at)
        values (${P}::uuid, md5(${`node${i}`})::uuid, md5(${`tree${i % 4}`})::uuid, ${i % 2 ? null : P}::uuid, ${i % 3 ? P : null}::uuid,
                ${`${text} ${i}`}, ${text || 'task'}, ${at}::timestamptz, ${TIMES[(i + 2) % TIMES.length]}::timestamptz, 'OK', ${i % 4 === 0 ? null : text},
                ${json[i].startsWith('{') ? json[i] : `{"wrapped": ${json[i]}}`}::jsonb, ${i % 2 ? null : '{"tokens": 1.0}'}::jsonb,
                ${json[(i + 1) % json.length]}::jsonb, ${i % 3 ? null : json[(i + 2) % json.length]}::jsonb, ${null}::jsonb,
                ${i % 5 ? null : '[{"to": "x"}]'}::jsonb, ${json[(i + 3) % json.length]}::jsonb,
                ${at}::timestamptz, ${at}::timestamptz + ${i} * interval '1 millisecond')`.execute(pg.db);
    }
    await copiedEqualsMapped(pg, ch, nodeHistory, (row) => [String(row.node_id)]);
  });
});
