import { CompiledQuery, Kysely, RawBuilder, sql } from 'kysely';
import { DB } from '../postgres/database';
import { HistoryEntity, keyText } from './history-entities';
import { isoToMicros } from '../../tracing/timestamp';
import { HistoryScope } from './history-scope';

/** Keys per read by key (bound as arrays: two parameters however many): a read's rows stay a few MB. */
export const KEYS_PER_READ = 1000;

export interface PageLimits {
  rows: number;
  /** Stops a page once the rows' stored size reaches this; a page always has at least one row. */
  bytes: number;
}

/** Where a batch ends: its last row's keyset tuple and how many rows it holds. */
export interface KeysetBound {
  last: string[];
  rows: number;
}

/** How a value reaches the SQL: bound (a parameter), or inlined (COPY takes no parameters). */
type ValueOf = (value: string) => unknown;
const bound: ValueOf = (value) => value;
/**
 * Only what keysets and scopes hold can be inlined: timestamps, UUIDs and
 * hex, all from our own rows, checkpoints and validated options. Anything
 * else is refused rather than escaped, so no text can reach the SQL.
 */
const SAFE_LITERAL = /^[0-9A-Za-z:.+\- ]{1,64}$/;
export const inlined: ValueOf = (value) => {
  if (!SAFE_LITERAL.test(value)) throw new Error(`refusing to inline "${value}" into a COPY statement`);
  return sql.lit(value);
};

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
    const columns = sql.join(this.entity.columns.map((c) => sql.ref(c)));
    const result = await sql<Row>`
      select ${columns} from ${this.withinLimits(columns, scope, after, limits, upperBound)}
      order by ${this.keyColumns()}`.execute(this.db);
    const rows = result.rows;
    return { rows, last: rows.length ? this.entity.cursorOf(rows[rows.length - 1]) : null };
  }

  /**
   * The end of the next batch after the cursor, by the same row and byte
   * limits as page(), without fetching the rows: the keyset columns only,
   * so Postgres walks the index (and reads row sizes). Null: nothing left.
   */
  async bound(scope: HistoryScope, after: string[] | null, limits: PageLimits, upperBound?: string): Promise<KeysetBound | null> {
    const key = this.keyColumns();
    const result = await sql<Record<string, unknown> & { n: string }>`
      select ${key}, n from ${this.withinLimits(key, scope, after, limits, upperBound)}
      order by n desc
      limit 1`.execute(this.db);
    const row = result.rows[0];
    return row ? { last: this.entity.cursorOf(row as Row), rows: Number(row.n) } : null;
  }

  /**
   * The next page after the cursor as a subquery of these columns plus n,
   * each row's position: the one place the limits are applied, so page() and
   * bound() end batches alike. The running size is a window over the same
   * ordered index scan, cut off by LIMIT, so Postgres stops reading at the
   * row limit and the rows past the byte limit are dropped; each row's size
   * is computed once, in the innermost query (computing it again inside the
   * running sum was a third of bound()'s CPU).
   */
  private withinLimits(
    columns: RawBuilder<unknown>,
    scope: HistoryScope,
    after: string[] | null,
    limits: PageLimits,
    upperBound?: string,
  ): RawBuilder<unknown> {
    const key = this.keyColumns();
    return sql`(
      select * from (
        select ${columns}, row_number() over w as n, sum(row_bytes) over w - row_bytes as bytes_before
        from (
          select ${columns}, ${this.entity.storedSize} as row_bytes
          from ${sql.table(this.entity.table)}
          where ${this.conditions(scope, after, upperBound)}
          order by ${key}
          limit ${limits.rows}
        ) page
        window w as (order by ${key} rows between unbounded preceding and current row)
      ) sized
      where bytes_before < ${limits.bytes}
    ) within_limits`;
  }

  /**
   * A COPY ... TO STDOUT of the rows a bound() ends: after the cursor, up to
   * and including its last row, as the entity's ClickHouse columns
   * (entity.copy), and `limit`, the most rows it may stream.
   *
   * The range, not the limit, is the batch: a write whose INSERT read the
   * clock before the run's bound can commit into the range after bound()
   * counted it, and a limit of bound()'s count would then push the batch's
   * last rows out, behind a checkpoint past them. The limit is there for
   * the planner, which otherwise prefers a sequential scan and a sort to the
   * index for a range between two row comparisons; it is twice the count,
   * and a COPY that fills it may have been cut short (see Backfill).
   */
  copyStatement(scope: HistoryScope, after: string[] | null, end: KeysetBound, upperBound?: string): { statement: string; limit: number } {
    const key = this.keyColumns();
    const last = sql.join(this.entity.keyset.map((k, i) => k.bind(inlined(end.last[i]))));
    const limit = 2 * end.rows;
    const query = sql`copy (
        select ${this.entity.copy.select} from ${sql.table(this.entity.table)}
        where ${this.conditions(scope, after, upperBound, inlined)} and (${key}) <= (${last})
        order by ${key}
        limit ${sql.lit(limit)}
      ) to stdout`.compile(this.db);
    return { statement: withoutParameters(query), limit };
  }

  /** Rows of the scope after the cursor: the progress total. */
  async count(scope: HistoryScope, after: string[] | null, upperBound?: string): Promise<number> {
    const result = await sql<{ n: string }>`select count(*) as n from ${sql.table(this.entity.table)} where ${this.conditions(scope, after, upperBound)}`.execute(this.db);
    return Number(result.rows[0].n);
  }

  /**
   * The version (µs of updated_at, as entity.mirrored gives it) of each row
   * of the scope with one of these keys, by keyText; keys the scope has no
   * row of are missing. Reads the key columns (the keyset's after created_at
   * and project_id) and updated_at only.
   */
  async versionsByKey(scope: HistoryScope, keys: string[][]): Promise<Map<string, bigint>> {
    const versions = new Map<string, bigint>();
    const columns = sql.join([...this.entity.keyset.slice(2).map((k) => sql.ref(k.column)), sql.ref('updated_at')]);
    for (let i = 0; i < keys.length; i += KEYS_PER_READ) {
      const chunk = keys.slice(i, i + KEYS_PER_READ);
      const result = await sql<Row & { updated_at: string }>`select ${columns} from ${sql.table(this.entity.table)}
        where ${this.conditions(scope)} and ${this.entity.keysCondition(chunk)}`.execute(this.db);
      for (const row of result.rows) versions.set(keyText(this.entity.keyOf(row)), isoToMicros(row.updated_at));
    }
    return versions;
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
  conditions(scope: HistoryScope, after: string[] | null = null, upperBound?: string, value: ValueOf = bound): RawBuilder<unknown> {
    const conditions: RawBuilder<unknown>[] = [];
    if (after) {
      const values = sql.join(this.entity.keyset.map((k, i) => k.bind(value(after[i]))));
      conditions.push(sql`(${this.keyColumns()}) > (${values})`);
    }
    if (scope.since) conditions.push(sql`created_at >= ${value(scope.since)}::timestamptz`);
    if (scope.until) conditions.push(sql`created_at < ${value(scope.until)}::timestamptz`);
    if (upperBound) conditions.push(sql`created_at < ${value(upperBound)}::timestamptz`);
    if (scope.projectIds) {
      const ids = value === bound ? sql`${scope.projectIds}` : sql`array[${sql.join(scope.projectIds.map(value))}]`;
      conditions.push(sql`project_id = any(${ids}::uuid[])`);
    }
    return conditions.length ? sql.join(conditions, sql` and `) : sql`true`;
  }
}

/** The statement's text; it must have no parameters, as COPY cannot take any. */
function withoutParameters(query: CompiledQuery): string {
  if (query.parameters.length > 0) throw new Error(`a COPY statement cannot take parameters (${query.parameters.length} given)`);
  return query.sql;
}
