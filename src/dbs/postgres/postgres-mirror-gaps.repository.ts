import { Kysely, sql } from 'kysely';
import type { GapRecorder, MirrorGap } from '../clickhouse/gap-ledger';
import { DB, MirrorGapRow } from './database';

/** Which open gaps a replay (or its dry run) is about. */
export interface GapScope {
  entities: readonly string[];
  /** null: every project. */
  projectIds: readonly string[] | null;
}

/**
 * An open gap without its keys. A long outage leaves millions of keys in
 * open gaps; a replay lists the gaps a page at a time and reads one gap's
 * keys (at most a flush's worth) only when it replays that gap.
 */
export type OpenGap = Omit<MirrorGapRow, 'keys' | 'replayed_at'> & { key_count: number };

/** The open gaps in a scope when a replay starts: the replay goes up to lastId, not on to gaps recorded after it began. */
export interface OpenGapTotals {
  gaps: number;
  rows: number;
  lastId: string | null;
}

const PAGE_SIZE = 100;

/** Keys in one gap record: a replay reads one record's keys at once. The writer's default flush (10,000 rows). */
export const KEYS_PER_RECORD = 10_000;
/** Gap records in one INSERT: about 10 MB of keys. */
const RECORDS_PER_STATEMENT = 10;

/** No entity or no project: nothing in scope (and `in ()` is not SQL). */
const isEmpty = (scope: GapScope) => scope.entities.length === 0 || scope.projectIds?.length === 0;

/** The durable record of mirror rows that never reached ClickHouse; replayed by `backfill --gaps`. */
export class PostgresMirrorGapsRepository implements GapRecorder {
  constructor(private readonly db: Kysely<DB>) {}

  /**
   * Writes the gaps, each as records of at most KEYS_PER_RECORD keys, all or
   * none (a retry must not write some twice). A gap of the shutdown deadline
   * holds every row left in the queue, hundreds of thousands of keys: as one
   * record it was one statement of tens of MB, and a replay read all its keys
   * at once. Each part keeps the gap's created_at range, which then covers
   * its own rows and maybe more: a wider range only makes verify read more.
   */
  async record(gaps: MirrorGap[]): Promise<number> {
    const records = gaps.flatMap((g) => {
      const parts = [];
      for (let at = 0; at < g.keys.length; at += KEYS_PER_RECORD) {
        const keys = g.keys.slice(at, at + KEYS_PER_RECORD);
        parts.push({
          entity: g.entity,
          project_id: g.projectId,
          keys: JSON.stringify(keys),
          row_count: keys.length,
          min_created_at: g.minCreatedAt,
          max_created_at: g.maxCreatedAt,
          reason: g.reason.slice(0, 1000),
        });
      }
      return parts;
    });
    if (records.length === 0) return 0;
    if (records.length <= RECORDS_PER_STATEMENT) {
      await this.db.insertInto('mirror_gaps').values(records).execute();
      return records.length;
    }
    await this.db.transaction().execute(async (trx) => {
      for (let at = 0; at < records.length; at += RECORDS_PER_STATEMENT) {
        await trx.insertInto('mirror_gaps').values(records.slice(at, at + RECORDS_PER_STATEMENT)).execute();
      }
    });
    return records.length;
  }

  async totals(scope: GapScope): Promise<OpenGapTotals> {
    if (isEmpty(scope)) return { gaps: 0, rows: 0, lastId: null };
    const row = await this.openIn(scope)
      .select((eb) => [
        eb.fn.countAll<string>().as('gaps'),
        eb.fn.coalesce(eb.fn.sum<string>('row_count'), sql<string>`0`).as('rows'),
        eb.fn.max('id').as('last_id'),
      ])
      .executeTakeFirstOrThrow();
    return { gaps: Number(row.gaps), rows: Number(row.rows), lastId: row.last_id };
  }

  /** Open gaps in the scope, oldest first, up to `upToId` (all when absent); read a page at a time, without their keys. */
  async *open(scope: GapScope, upToId?: string | null): AsyncGenerator<OpenGap> {
    if (upToId === null || isEmpty(scope)) return;
    let afterId: string | null = null;
    for (;;) {
      let q = this.openIn(scope)
        .select(['id', 'entity', 'project_id', 'row_count', 'min_created_at', 'max_created_at', 'reason', 'recorded_at'])
        .select(sql<number>`jsonb_array_length(keys)`.as('key_count'));
      if (afterId !== null) q = q.where('id', '>', afterId);
      if (upToId !== undefined) q = q.where('id', '<=', upToId);
      const page = await q.orderBy('id').limit(PAGE_SIZE).execute();
      yield* page;
      if (page.length < PAGE_SIZE) return;
      afterId = page[page.length - 1].id;
    }
  }

  /** One gap's entries as the mirror recorded them (gapEntryOf; HistoryEntity.readGapEntry reads one). */
  async keysOf(id: string): Promise<unknown[]> {
    const row = await this.db.selectFrom('mirror_gaps').select('keys').where('id', '=', id).executeTakeFirstOrThrow();
    // jsonb: whatever the column holds, checked entry by entry where it is read.
    return Array.isArray(row.keys) ? row.keys : [row.keys];
  }

  async countOpen(): Promise<number> {
    const row = await this.db
      .selectFrom('mirror_gaps')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .where('replayed_at', 'is', null)
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  async markReplayed(ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.db.updateTable('mirror_gaps').set({ replayed_at: new Date().toISOString() }).where('id', 'in', ids).execute();
  }

  /** The open gaps in the scope, nothing selected yet. */
  private openIn(scope: GapScope) {
    const open = this.db.selectFrom('mirror_gaps').where('replayed_at', 'is', null).where('entity', 'in', [...scope.entities]);
    return scope.projectIds ? open.where('project_id', 'in', [...scope.projectIds]) : open;
  }
}
