import { Kysely } from 'kysely';
import type { GapRecorder, MirrorGap } from '../clickhouse/gap-ledger';
import { DB, MirrorGapRow } from './database';

/** The durable record of mirror rows that never reached ClickHouse; replayed by `backfill --gaps`. */
export class PostgresMirrorGapsRepository implements GapRecorder {
  constructor(private readonly db: Kysely<DB>) {}

  async record(gaps: MirrorGap[]): Promise<void> {
    if (gaps.length === 0) return;
    await this.db
      .insertInto('mirror_gaps')
      .values(
        gaps.map((g) => ({
          entity: g.entity,
          project_id: g.projectId,
          keys: JSON.stringify(g.keys),
          row_count: g.rowCount,
          min_created_at: g.minCreatedAt,
          max_created_at: g.maxCreatedAt,
          reason: g.reason.slice(0, 1000),
        })),
      )
      .execute();
  }

  /** Gaps not yet replayed, oldest first. */
  open(filter: { entity?: string; projectId?: string } = {}): Promise<MirrorGapRow[]> {
    let q = this.db.selectFrom('mirror_gaps').selectAll().where('replayed_at', 'is', null);
    if (filter.entity) q = q.where('entity', '=', filter.entity);
    if (filter.projectId) q = q.where('project_id', '=', filter.projectId);
    return q.orderBy('id').execute();
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
}
