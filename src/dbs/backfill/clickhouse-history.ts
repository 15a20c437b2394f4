import { Readable } from 'node:stream';
import { ClickHouseClient, ClickHouseError } from '@clickhouse/client';
import { counted } from '../../counted';
import { errorText } from '../../error-text';
import { ClickHouseClients } from '../clickhouse/clickhouse-clients';
import { ClickHouseSink, linesBody } from '../clickhouse/clickhouse-sink';
import { classifySendError, describeSendError, EMPTY_ERROR_ANSWER, isEmptyErrorAnswer } from '../clickhouse/retry-policy';
import { countByProjectDay, ProjectDayCount } from '../clickhouse/mirror-queries';
import { clickHouseTimeToIso, isoToClickHouseTime } from '../clickhouse/span-clickhouse-row.mapper';
import { readTtlDays } from '../clickhouse/clickhouse-ddl-runner';
import { HistoryEntity, MirroredRecord } from './history-entities';
import { ENTITIES, Entity, HistoryScope } from './history-scope';
import { redactUrl } from '../../config/redact-url';
import { MAX_TTL_DAYS, TTL_WRAP } from '../../config/app-config';

const INSERT_ATTEMPTS = 4;
const FIRST_BACKOFF_MS = 500;

/** Per key of a bucket: the newest version ClickHouse holds in any row, and whether that row is a tombstone. */
export interface StoredKeyVersion {
  key: string[];
  version: bigint;
  deleted: boolean;
}

/** A tombstone as ClickHouse stores it: its key, its created_at (ISO) and its line, to write it again as it was. */
export interface StoredTombstone {
  key: string[];
  createdAt: string;
  line: string;
}

/** A row as ClickHouse returns it in JSONEachRow: the fields of its line. */
export interface StoredRow {
  project_id: string;
  /** DateTime64(6) text, 'YYYY-MM-DD hh:mm:ss.ffffff'. */
  created_at: string;
  [column: string]: unknown;
}

/** checkReady found ClickHouse unable to take the run (no answer, no database, a missing table): the message says what to do. */
export class ClickHouseNotReadyError extends Error {
  override name = 'ClickHouseNotReadyError';
}

/** ClickHouse failed a read or write after checkReady passed: the message names the server and what to do. */
export class ClickHouseFailedError extends Error {
  override name = 'ClickHouseFailedError';
}

/**
 * The rows an insert streams failed where they come from (Postgres's COPY),
 * not at ClickHouse: passed on as it is, neither retried by ClickHouse's
 * rules nor reported as ClickHouse stopping. The message names the source.
 */
export class RowSourceError extends Error {
  override name = 'RowSourceError';
}

/** True for a server on this machine; a URL that does not parse is not. */
function isLoopback(url: string): boolean {
  if (!URL.canParse(url)) return false;
  const host = new URL(url).hostname;
  return host === 'localhost' || host === '[::1]' || host.startsWith('127.');
}

/**
 * The ClickHouse side of backfill and verify: inserts through the mirror's
 * sink (retried with the same deduplication token), the FINAL counts the
 * verifier compares, a stream of live rows for content checksums, and the
 * per-key reads and mutation that repair needs. Every value is bound.
 */
export class ClickHouseHistory {
  private readonly sink: ClickHouseSink;
  private readonly query: ClickHouseClient;

  constructor(
    clients: Pick<ClickHouseClients, 'insert' | 'query'>,
    /** `task` names the run in errors ("during verify"). */
    private readonly where: { url: string; database: string; task?: string },
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((done) => setTimeout(done, ms)),
  ) {
    // Compression pays off over a network; to a server on this machine it only burns the CPU the copy needs.
    this.sink = new ClickHouseSink(clients.insert, { compress: !isLoopback(where.url) });
    this.query = clients.query;
  }

  private get at(): string {
    return `ClickHouse at ${redactUrl(this.where.url)}`;
  }

  /**
   * An error of a request made after checkReady, as an operator can act on
   * it: the client's own is a bare socket message ("connect ECONNREFUSED
   * 127.0.0.1:18123") that names neither the server nor what to do.
   */
  private failed(error: unknown, what?: string): Error {
    if (error instanceof ClickHouseFailedError) return error;
    const during = `during ${this.where.task ?? 'the run'}`;
    const message = errorText(error);
    const cause = what ? `${what}: ${message}` : message;
    if (error instanceof ClickHouseError) return new ClickHouseFailedError(`${this.at} failed a query ${during}: ${cause}`);
    if (isEmptyErrorAnswer(error)) {
      return new ClickHouseFailedError(`${this.at} answered ${during} with ${what ? `${what}: ` : ''}${EMPTY_ERROR_ANSWER}`);
    }
    // No answer at all (refused, reset, timed out): the server stopped or the path to it broke.
    return new ClickHouseFailedError(`${this.at} stopped answering ${during}: ${cause}; run it again once it is back`);
  }

  private async answered<T>(request: () => Promise<T>): Promise<T> {
    try {
      return await request();
    } catch (error) {
      throw this.failed(error);
    }
  }

  /** Fails with what an operator should do when the server does not answer or the tables are missing. */
  async checkReady(entities: readonly Entity[] = ENTITIES): Promise<void> {
    const at = this.at;
    const ping = await this.query.ping();
    if (!ping.success) throw new ClickHouseNotReadyError(`${at} does not answer: ${describeSendError(ping.error)}`);
    const migrate = 'run `npm run migrate:clickhouse`';
    let found: string[];
    try {
      const result = await this.query.query({
        query: 'SELECT name FROM system.tables WHERE database = {database:String} AND name IN {tables:Array(String)}',
        query_params: { database: this.where.database, tables: [...entities] },
        format: 'JSONEachRow',
      });
      found = (await result.json<{ name: string }>()).map((r) => r.name);
    } catch (error) {
      if (error instanceof ClickHouseError && error.code === '81') {
        throw new ClickHouseNotReadyError(`${at} has no database ${this.where.database}: ${migrate}`);
      }
      throw new ClickHouseNotReadyError(`${at} failed: ${(error as Error).message}`);
    }
    const missing = entities.filter((e) => !found.includes(e));
    if (missing.length) {
      throw new ClickHouseNotReadyError(`${at}: database ${this.where.database} has no table ${missing.join(', ')}: ${migrate}`);
    }
  }

  /**
   * The identity of `table` on this server: its UUID, which a table made
   * again (dropped and migrated, or on another server) does not keep. Null
   * where the database gives tables none (an Ordinary one: all zeros).
   */
  async tableIdentity(table: Entity): Promise<string | null> {
    const rows = await this.answered(async () => {
      const result = await this.query.query({
        query: 'SELECT toString(uuid) AS uuid FROM system.tables WHERE database = {database:String} AND name = {table:String}',
        query_params: { database: this.where.database, table },
        format: 'JSONEachRow',
      });
      return result.json<{ uuid: string }>();
    });
    const uuid = rows[0]?.uuid;
    return uuid && !/^[0-]+$/.test(uuid) ? uuid : null;
  }

  /**
   * The TTL in days (0: none) the tables of `entities` have, which is what
   * expires rows in ClickHouse, whatever CLICKHOUSE_TTL_DAYS says in the
   * shell that runs verify. Tables that disagree, or a TTL that
   * `migrate:clickhouse` did not write, leave verify no one age to compare
   * from: the error says to bring them in line.
   */
  async ttlDays(entities: readonly Entity[]): Promise<number> {
    const ttls = await this.answered(() => readTtlDays(this.query, this.where.database, entities));
    const values = [...new Set(entities.map((entity) => ttls.get(entity)))];
    const wrapping = entities.filter((entity) => (ttls.get(entity) ?? 0) > MAX_TTL_DAYS);
    if (wrapping.length > 0) {
      const described = wrapping.map((entity) => `${entity}: ${ttls.get(entity)} days`).join(', ');
      throw new ClickHouseNotReadyError(
        `${this.at}: a TTL more than ${MAX_TTL_DAYS} days (${described}): ${TTL_WRAP}; run \`npm run migrate:clickhouse\` with a shorter CLICKHOUSE_TTL_DAYS`,
      );
    }
    if (values.length === 1 && values[0] !== undefined && values[0] >= 0) return values[0];
    const described = entities.map((entity) => `${entity}: ${describeTtl(ttls.get(entity))}`).join(', ');
    throw new ClickHouseNotReadyError(
      `${this.at}: the tables' TTLs differ or are not ones migrate:clickhouse writes (${described}); ` +
        'run `npm run migrate:clickhouse` with the CLICKHOUSE_TTL_DAYS the API uses',
    );
  }

  /**
   * Inserts JSONEachRow lines (verify's repairs, gap replays). A transient
   * failure is retried with the same token, so an attempt that landed before
   * its answer was lost is dropped by ClickHouse rather than stored twice.
   */
  async insert(table: Entity, lines: string[], dedupToken: string): Promise<void> {
    if (lines.length === 0) return;
    await this.retried(table, () => this.sink.insert(table, linesBody(lines), dedupToken));
  }

  /**
   * Inserts TabSeparated rows of these columns, streamed as they come (the
   * bulk copy's COPY output). `rows` opens the stream: a retry (same token,
   * as above) reads the rows again. A stream that fails with a RowSourceError
   * fails the insert with it.
   */
  async insertTabSeparated(table: Entity, columns: readonly string[], rows: () => Promise<Readable>, dedupToken: string): Promise<void> {
    await this.retried(table, async () => {
      const body = await rows();
      try {
        await this.sink.insertTabSeparated(table, columns, body, dedupToken);
      } catch (error) {
        // A request that failed before reading the rows (refused, timed out) leaves their source
        // paused mid-stream, holding what feeds it (a Postgres connection inside a COPY).
        body.destroy();
        throw error;
      }
    });
  }

  private async retried(table: Entity, insert: () => Promise<void>): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await insert();
      } catch (error) {
        if (error instanceof RowSourceError) throw error;
        // The mirror's classification: an error it would retry is retried here, and no other.
        if (classifySendError(error) === 'permanent' || attempt >= INSERT_ATTEMPTS) {
          throw this.failed(error, `insert into ${table} failed after ${counted(attempt, 'attempt')}`);
        }
        await this.sleep(FIRST_BACKOFF_MS * 2 ** (attempt - 1));
      }
    }
  }

  /** Live rows per project and created_at day (FINAL), for the scope's projects. */
  async countByProjectDay(scope: HistoryScope): Promise<ProjectDayCount[]> {
    const projectId = scope.projectIds?.length === 1 ? scope.projectIds[0] : undefined;
    const counts = await this.answered(() => countByProjectDay(this.query, scope.entity, { projectId, since: scope.since, until: scope.until }));
    const projects = scope.projectIds && new Set(scope.projectIds);
    return projects ? counts.filter((c) => projects.has(c.project_id)) : counts;
  }

  /**
   * Every live row of the scope (FINAL) as ClickHouse returns it, in no
   * particular order, a block at a time: the mapper's columns in the
   * mapper's order and pinned formats, i.e. the stored line's fields.
   */
  async *streamStored(entity: HistoryEntity, scope: HistoryScope): AsyncGenerator<StoredRow[]> {
    const { conditions, params } = scopeConditions(scope);
    const columns = entity.clickHouseColumns.map((c) => `\`${c}\``).join(', ');
    yield* this.streamed<StoredRow>(`SELECT ${columns} FROM ${entity.table} FINAL WHERE ${['is_deleted = 0', ...conditions].join(' AND ')}`, params);
  }

  /**
   * Every key ClickHouse holds in one bucket, live or not, with its newest
   * version read from all rows (no FINAL): a tombstone or row newer than
   * Postgres hides the Postgres row from FINAL, and only this sees it.
   * `size` keys at a time, as the server streams them: a busy project's day
   * holds millions, which never sit in memory together. Read it on without
   * long pauses: ClickHouse gives up on a client that stops reading for
   * http_send_timeout (30 s), and the client on a socket idle for its
   * request timeout.
   */
  async *keyVersions(entity: HistoryEntity, bucket: HistoryScope, size: number): AsyncGenerator<StoredKeyVersion[]> {
    const { conditions, params } = scopeConditions(bucket);
    const keys = entity.clickHouseKeyColumns.map((expr, i) => `${expr} AS k${i}`).join(', ');
    const groups = entity.clickHouseKeyColumns.map((_, i) => `k${i}`).join(', ');
    const query = `SELECT ${keys}, toString(max(version)) AS top_version, argMax(is_deleted, version) AS top_deleted
                FROM ${entity.table} WHERE ${conditions.join(' AND ') || '1'} GROUP BY ${groups}`;
    let chunk: StoredKeyVersion[] = [];
    for await (const rows of this.streamed<Record<string, string | number>>(query, params)) {
      for (const row of rows) {
        chunk.push({
          key: entity.clickHouseKeyOf(entity.clickHouseKeyColumns.map((_, i) => String(row[`k${i}`]))),
          version: BigInt(row.top_version),
          deleted: Number(row.top_deleted) === 1,
        });
        if (chunk.length === size) {
          yield chunk;
          chunk = [];
        }
      }
    }
    if (chunk.length > 0) yield chunk;
  }

  /**
   * A JSONEachRow query's rows, a block at a time, as the server streams
   * them: the server can go away between its blocks too. A reader that
   * stops early (an error in its loop) closes the answer, rather than leave
   * the socket and the server's query waiting.
   */
  private async *streamed<Row>(query: string, params: Record<string, unknown>): AsyncGenerator<Row[]> {
    const result = await this.answered(() => this.query.query({ query, query_params: params, format: 'JSONEachRow' }));
    const blocks = result.stream()[Symbol.asyncIterator]();
    try {
      for (;;) {
        const next = await this.answered(() => blocks.next());
        if (next.done) return;
        yield next.value.map((row: { json(): unknown }) => row.json() as Row);
      }
    } finally {
      result.close();
    }
  }

  /**
   * The newest tombstone ClickHouse stores for each of these keys' creation
   * days, as its line to write again: read from all rows (FINAL hides
   * tombstones), newest version first per key and day.
   */
  async storedTombstones(entity: HistoryEntity, projectId: string, keys: string[][]): Promise<StoredTombstone[]> {
    if (keys.length === 0) return [];
    const { condition, params } = entity.clickHouseKeysCondition(keys);
    const columns = entity.clickHouseColumns.map((c) => `\`${c}\``).join(', ');
    const keyColumns = entity.clickHouseKeyColumns.map((expr, i) => `${expr} AS k${i}`).join(', ');
    const groups = entity.clickHouseKeyColumns.map((_, i) => `k${i}`).join(', ');
    const rows = await this.answered(async () => {
      const result = await this.query.query({
        query: `SELECT ${columns}, ${keyColumns} FROM ${entity.table}
                WHERE project_id = {projectId:UUID} AND ${condition} AND is_deleted = 1
                ORDER BY version DESC LIMIT 1 BY ${groups}, toDate(created_at)`,
        query_params: { projectId, ...params },
        format: 'JSONEachRow',
      });
      return result.json<StoredRow>();
    });
    return rows.map((row) => {
      const texts = entity.clickHouseKeyColumns.map((_, i) => String(row[`k${i}`]));
      // The key columns come last and leave the row: what remains is the mapper's fields in its order, the line.
      for (let i = 0; i < texts.length; i++) delete row[`k${i}`];
      return { key: entity.clickHouseKeyOf(texts), createdAt: clickHouseTimeToIso(row.created_at), line: JSON.stringify(row) };
    });
  }

  /** Live rows (FINAL) of one project with these keys. */
  readLive<Mirrored extends MirroredRecord>(entity: HistoryEntity<unknown, Mirrored>, projectId: string, keys: string[][]): Promise<Mirrored[]> {
    return this.answered(() => entity.readLive(this.query, projectId, keys));
  }

  /**
   * Removes every stored version of these keys (a synchronous mutation).
   * Only for rows ClickHouse holds at a version newer than Postgres's, which
   * no insert can outrank; the caller re-inserts Postgres's rows afterwards.
   */
  async removeKeys(entity: HistoryEntity, projectId: string, keys: string[][]): Promise<void> {
    if (keys.length === 0) return;
    const { condition, params } = entity.clickHouseKeysCondition(keys);
    try {
      await this.query.command({
        query: `ALTER TABLE ${entity.table} DELETE WHERE project_id = {projectId:UUID} AND ${condition}`,
        query_params: { projectId, ...params },
        clickhouse_settings: { mutations_sync: '2', wait_end_of_query: 1 },
      });
    } catch (error) {
      // Refused: the removal never reached the server. Any other lack of an answer is not proof it stopped:
      // a mutation over many parts outlasts the request's timeout.
      const refused = (error as { code?: unknown })?.code === 'ECONNREFUSED' || /ECONNREFUSED/.test(errorText(error));
      if (error instanceof ClickHouseError || isEmptyErrorAnswer(error) || refused) throw this.failed(error);
      throw new ClickHouseFailedError(
        `${this.at} gave no answer to the removal of ${keys.length === 1 ? "1 key's" : `${keys.length} keys'`} rows from ${entity.table} during ${this.where.task ?? 'the run'}: ` +
          `${errorText(error)}; its mutation may still be running (system.mutations); run it again once it is done`,
      );
    }
  }
}

function scopeConditions(scope: HistoryScope): { conditions: string[]; params: Record<string, unknown> } {
  const conditions: string[] = [];
  const params: Record<string, unknown> = {};
  if (scope.projectIds) {
    conditions.push('project_id IN {projectIds:Array(UUID)}');
    params.projectIds = scope.projectIds;
  }
  if (scope.since) {
    conditions.push(`created_at >= {since:DateTime64(6, 'UTC')}`);
    params.since = isoToClickHouseTime(scope.since);
  }
  if (scope.until) {
    conditions.push(`created_at < {until:DateTime64(6, 'UTC')}`);
    params.until = isoToClickHouseTime(scope.until);
  }
  return { conditions, params };
}

function describeTtl(days: number | undefined): string {
  if (days === undefined) return 'no table';
  if (days < 0) return 'a TTL of another shape';
  return days === 0 ? 'none' : `${days} days`;
}
