import { randomUUID } from 'node:crypto';
import { Kysely } from 'kysely';
import { DB } from '../postgres/database';
import { PostgresMirrorGapsRepository } from '../postgres/postgres-mirror-gaps.repository';
import { BackfillCheckpointsRepository } from './backfill-checkpoints.repository';
import { ClickHouseHistory } from './clickhouse-history';
import { historyOf } from './history-entities';
import { Entity } from './history-scope';
import { addReplay, emptyReplay, KeyReplay, ReplayResult } from './key-replay';

export interface GapReplayFilter {
  entities: Entity[];
  /** null: every project. */
  projectIds: string[] | null;
}

export interface GapReplayResult extends ReplayResult {
  gaps: number;
  durationMs: number;
}

/**
 * Replays the mirror's open gap records (`mirror_gaps`): the keys of rows the
 * batch writer could not send. Each key is brought to what Postgres holds now
 * (see KeyReplay), and a gap is marked replayed only after ClickHouse accepted
 * all of its rows, so a failure leaves it open for the next run.
 */
export class GapReplay {
  private readonly gaps: PostgresMirrorGapsRepository;
  private readonly checkpoints: BackfillCheckpointsRepository;

  constructor(
    private readonly db: Kysely<DB>,
    private readonly clickhouse: ClickHouseHistory,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.gaps = new PostgresMirrorGapsRepository(db);
    this.checkpoints = new BackfillCheckpointsRepository(db);
  }

  async run(filter: GapReplayFilter): Promise<GapReplayResult> {
    return this.checkpoints.withRunLock('gaps', async () => {
      const startedAt = Date.now();
      // Tokens unique to this attempt: ClickHouse must not drop a replay as a repeat of an earlier one.
      const attempt = randomUUID();
      const projects = filter.projectIds && new Set(filter.projectIds);
      const open = (await this.gaps.open()).filter(
        (g) => filter.entities.includes(g.entity as Entity) && (!projects || projects.has(g.project_id)),
      );
      const total = emptyReplay();
      for (const gap of open) {
        const replay = new KeyReplay(this.db, this.clickhouse, historyOf(gap.entity as Entity));
        const keys = gap.keys as string[][];
        const done = await replay.replay(gap.project_id, keys, `gap:${gap.id}:${attempt}`);
        await this.gaps.markReplayed([gap.id]);
        addReplay(total, done);
        this.log(
          `replayed gap ${gap.id} (${gap.entity}, project ${gap.project_id}, ${keys.length} keys, recorded ${gap.recorded_at}: ${gap.reason}): ` +
            `${done.upserted} upserted, ${done.tombstoned} tombstoned${done.reset ? `, ${done.reset} reset` : ''}`,
        );
      }
      return { gaps: open.length, ...total, durationMs: Date.now() - startedAt };
    });
  }
}
