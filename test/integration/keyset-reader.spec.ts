import { sql } from 'kysely';
import { spanHistory } from '../../src/dbs/backfill/history-entities';
import { KeysetReader } from '../../src/dbs/backfill/keyset-reader';
import { SpanRow } from '../../src/dbs/postgres/database';
import { seedSpans } from '../support/history';
import { createTestDatabase, TestDatabase } from '../support/postgres';

const P = '0c000000-0000-4000-8000-000000000001';
const ALL = { entity: 'spans' as const, projectIds: null };

describe('KeysetReader (real Postgres)', () => {
  let pg: TestDatabase;
  beforeEach(async () => {
    pg = await createTestDatabase();
  });
  afterEach(async () => pg?.drop());

  it('page() (verify) and bound() (backfill) cut the same batches by rows and stored bytes, every row once, in key order', async () => {
    await seedSpans(pg.db, { projects: [P], days: 1, rows: 60 });
    // Rows that stay big as stored (hex does not compress well): each should end a byte-limited batch.
    await sql`update spans set attributes = jsonb_build_object('blob', (select string_agg(md5(random()::text || g::text), '') from generate_series(1, 20000) g))
      where span_name in ('span-3', 'span-17', 'span-40')`.execute(pg.db);
    const { rows: big } = await sql<{ bytes: number }>`select max(pg_column_size(attributes)) as bytes from spans`.execute(pg.db);
    const reader = new KeysetReader<SpanRow>(pg.db, spanHistory);

    for (const limits of [
      { rows: 7, bytes: 1 << 30 },
      { rows: 1_000, bytes: Math.floor(big[0].bytes * 0.9) },
    ]) {
      const pages: Array<{ rows: number; last: string[] }> = [];
      const seen: string[] = [];
      for (let after: string[] | null = null; ; ) {
        const page = await reader.page(ALL, after, limits);
        const end = await reader.bound(ALL, after, limits);
        if (page.rows.length === 0) {
          expect(end).toBeNull();
          break;
        }
        expect(end).toEqual({ rows: page.rows.length, last: page.last });
        pages.push({ rows: page.rows.length, last: page.last! });
        seen.push(...page.rows.map((r) => spanHistory.cursorOf(r).join('/')));
        after = page.last;
      }
      const { rows: all } = await sql<SpanRow>`select * from spans order by created_at, project_id, trace_id, span_id`.execute(pg.db);
      expect(seen).toEqual(all.map((r) => spanHistory.cursorOf(r).join('/')));
      expect(Math.max(...pages.map((p) => p.rows))).toBeLessThanOrEqual(limits.rows);
      if (limits.bytes < 1 << 30) expect(pages.length).toBeGreaterThanOrEqual(3);
    }
  });
});
