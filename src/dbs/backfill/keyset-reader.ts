import { Kysely, RawBuilder, sql } from 'kysely';
import { DB } from '../postgres/database';
import { HistoryEntity } from './history-entities';
import { HistoryScope } from './history-scope';

/** Rows per read by key: two bound values per span key stay far below Postgres's 65535. */
export const KEYS_PER_READ = 1000;

export interface PageLimits {
  rows: number;
  /** Stops a page once the rows' stored size reaches this; a page always has at least one row. */
  bytes: number;
}

export interface KeysetPage<Row> {
  rows: Row[];
  /** The last row's keyset tuple, or null when the page is empty (the range is exhausted). */
  last: string[] | null;
}

/**
 * Postgres history in keyset order: rows whose (created_at, project_id, key...)
 * is strictly greater than the cursor, ordered by that same tuple, so the
 * (created_at, project_id, ...) index serves each page as one range scan
 * however deep it is, and progress is strict even when thousands of rows share
 * one created_at. Never OFFSET. Timestamps stay microsecond text throughout.
 */
export class KeysetReader<Row> {
  constructor(
    private readonly db: Kysely<DB>,
    private readonly entity: HistoryEntity<Row>,
  ) {}

  async page(scope: HistoryScope, after: string[] | null, limits: PageLimits, upperBound?: string): Promise<KeysetPage<Row>> {
    const key = this.keyColumns();
    const columns = sql.join(this.entity.columns.map((c) => sql.ref(c)));
    // The running size is a window over the same ordered index scan, cut off by LIMIT, so
    // Postgres stops reading at the row limit and we drop the rows past the byte limit.
    const result = await sql<Row>`
      select ${columns} from (
        select ${columns}, ${this.entity.storedSize} as row_bytes,
               sum(${this.entity.storedSize}) over (order by ${key} rows between unbounded preceding and current row) as running_bytes
        from ${sql.table(this.entity.table)}
        where ${this.conditions(scope, after, upperBound)}
        order by ${key}
        limit ${limits.rows}
      ) page
      where page.running_bytes - page.row_bytes < ${limits.bytes}
      order by ${key}`.execute(this.db);
    const rows = result.rows;
    return { rows, last: rows.length ? this.entity.cursorOf(rows[rows.length - 1]) : null };
  }

  /** Rows of the scope after the cursor: the progress total. */
  async count(scope: HistoryScope, after: string[] | null, upperBound?: string): Promise<number> {
    const result = await sql<{ n: string }>`select count(*) as n from ${sql.table(this.entity.table)} where ${this.conditions(scope, after, upperBound)}`.execute(this.db);
    return Number(result.rows[0].n);
  }

  /** The rows of one project with these keys (in any order); absent keys are simply missing. */
  async byKeys(projectId: string, keys: string[][]): Promise<Row[]> {
    const rows: Row[] = [];
    for (let i = 0; i < keys.length; i += KEYS_PER_READ) {
      const chunk = keys.slice(i, i + KEYS_PER_READ);
      const columns = sql.join(this.entity.columns.map((c) => sql.ref(c)));
      const result = await sql<Row>`select ${columns} from ${sql.table(this.entity.table)}
        where project_id = ${projectId}::uuid and ${this.entity.keysCondition(chunk)}`.execute(this.db);
      rows.push(...result.rows);
    }
    return rows;
  }

  private keyColumns(): RawBuilder<unknown> {
    return sql.join(this.entity.keyset.map((k) => sql.ref(k.column)));
  }

  /** The scope (and cursor and bound) as a bound SQL condition. */
  conditions(scope: HistoryScope, after: string[] | null = null, upperBound?: string): RawBuilder<unknown> {
    const conditions: RawBuilder<unknown>[] = [];
    if (after) {
      const values = sql.join(this.entity.keyset.map((k, i) => k.bind(after[i])));
      conditions.push(sql`(${this.keyColumns()}) > (${values})`);
    }
    if (scope.since) conditions.push(sql`created_at >= ${scope.since}::timestamptz`);
    if (scope.until) conditions.push(sql`created_at < ${scope.until}::timestamptz`);
    if (upperBound) conditions.push(sql`created_at < ${upperBound}::timestamptz`);
    if (scope.projectIds) conditions.push(sql`project_id = any(${scope.projectIds}::uuid[])`);
    return conditions.length ? sql.join(conditions, sql` and `) : sql`true`;
  }
}
