import { Kysely, sql } from 'kysely';
import { isoToMicros } from '../../tracing/timestamp';
import { DB } from '../postgres/database';
import { ClickHouseHistory } from './clickhouse-history';
import { HistoryEntity, keyText, MirroredRecord } from './history-entities';
import { KEYS_PER_READ, KeysetReader } from './keyset-reader';

export interface ReplayResult {
  /** Postgres rows written at their current version. */
  upserted: number;
  /** Live ClickHouse rows Postgres no longer has (its key deleted, or created again another day), now tombstoned. */
  tombstoned: number;
  /** Keys whose ClickHouse rows were newer than Postgres's and were replaced by mutation. */
  reset: number;
}

export const emptyReplay = (): ReplayResult => ({ upserted: 0, tombstoned: 0, reset: 0 });

export function addReplay(total: ReplayResult, more: ReplayResult): ReplayResult {
  total.upserted += more.upserted;
  total.tombstoned += more.tombstoned;
  total.reset += more.reset;
  return total;
}

/**
 * Brings named keys of one project in ClickHouse to what Postgres holds now:
 * the one mechanism behind `backfill --gaps` and `verify --repair`.
 *
 * Keys present in Postgres are re-inserted at their version (µs of
 * updated_at). Live ClickHouse rows Postgres does not hold get a tombstone
 * at Postgres's clock_timestamp(), read after we saw them missing: rows of
 * keys Postgres no longer has, and rows of a key under another created_at
 * (deleted, then created again on another day: ClickHouse sorts rows by
 * creation day, so the new row has a sort key of its own and does not
 * replace the old one). That is safe: such a row's key or creation is gone
 * because a delete committed before our read, and every version ever
 * written for it (each write's updated_at, the delete's deleted_at) came
 * from Postgres's clock before that commit, so the tombstone outranks all
 * the mirror holds or still has queued. A key re-created while we worked
 * would be hidden by it, so tombstoned keys are read again afterwards.
 * Left: a re-creation on the same day whose transaction is still open when
 * we read again is not seen, and its row (versioned before our tombstone)
 * stays hidden; the next verify finds it and --repair mends it. Closing that
 * would mean waiting out every transaction open at the first read. Also left:
 * reset() removes every stored version of a key, a tombstone included, so a
 * key deleted in Postgres while it runs is left with no row in ClickHouse,
 * which is right, but with nothing to outrank a copy of an older version
 * written after it (a backfill that read the key before the delete). The
 * next verify finds that row too.
 */
export class KeyReplay<Row, Mirrored extends MirroredRecord> {
  private readonly reader: KeysetReader<Row>;

  constructor(
    private readonly db: Kysely<DB>,
    private readonly clickhouse: ClickHouseHistory,
    private readonly entity: HistoryEntity<Row, Mirrored>,
  ) {
    this.reader = new KeysetReader(db, entity);
  }

  /** `token` must be unique to this attempt; inserts derive their deduplication tokens from it. */
  async replay(projectId: string, keys: string[][], token: string): Promise<ReplayResult> {
    const result = emptyReplay();
    for (let i = 0; i < keys.length; i += KEYS_PER_READ) {
      const chunk = keys.slice(i, i + KEYS_PER_READ);
      const rows = await this.reader.byKeys(projectId, chunk);
      await this.upsert(rows, `${token}:upsert:${i}`);
      result.upserted += rows.length;

      // Each key's creation as Postgres holds it (µs): a live ClickHouse row under any other is an orphan.
      const createdAt = new Map(rows.map((r) => [keyText(this.entity.keyOf(r)), isoToMicros(this.entity.mirrored(r).created_at)]));
      const version = await this.postgresClock();
      const live = await this.clickhouse.readLive(this.entity, projectId, chunk);
      const orphans = live.filter((m) => createdAt.get(keyText(this.entity.mirroredKeyOf(m))) !== isoToMicros(m.created_at));
      if (orphans.length === 0) continue;
      // A stored version at or past Postgres's clock cannot be outranked by a tombstone.
      const ahead = orphans.filter((m) => m.version >= version).map((m) => this.entity.mirroredKeyOf(m));
      const stale = orphans.filter((m) => m.version < version);
      await this.clickhouse.insert(
        this.entity.table,
        stale.map((m) => this.entity.tombstoneLine(m, version)),
        `${token}:tombstone:${i}`,
      );
      result.tombstoned += stale.length;

      // Only a key Postgres did not have can have been created again under the tombstone's sort key.
      const gone = stale.map((m) => this.entity.mirroredKeyOf(m)).filter((k) => !createdAt.has(keyText(k)));
      const recreated = (await this.reader.byKeys(projectId, gone)).map((r) => this.entity.keyOf(r));
      result.reset += await this.reset(projectId, [...ahead, ...recreated], `${token}:reset:${i}`);
      result.tombstoned -= recreated.length;
    }
    return result;
  }

  /**
   * Keys whose ClickHouse rows outrank Postgres's: removes all their stored
   * versions by mutation, then writes Postgres's rows as they are after it,
   * so a write that commits meanwhile is either read here or mirrored later.
   */
  async reset(projectId: string, keys: string[][], token: string): Promise<number> {
    if (keys.length === 0) return 0;
    for (let i = 0; i < keys.length; i += KEYS_PER_READ) {
      const chunk = keys.slice(i, i + KEYS_PER_READ);
      await this.clickhouse.removeKeys(this.entity, projectId, chunk);
      await this.upsert(await this.reader.byKeys(projectId, chunk), `${token}:${i}`);
    }
    return keys.length;
  }

  async upsert(rows: Row[], token: string): Promise<void> {
    await this.clickhouse.insert(
      this.entity.table,
      rows.map((r) => this.entity.line(this.entity.mirrored(r))),
      token,
    );
  }

  private async postgresClock(): Promise<bigint> {
    const { rows } = await sql<{ now: string }>`select clock_timestamp() as now`.execute(this.db);
    return isoToMicros(rows[0].now);
  }
}
