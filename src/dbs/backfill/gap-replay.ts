import { randomUUID } from 'node:crypto';
import { Kysely } from 'kysely';
import { counted } from '../../counted';
import { errorText } from '../../error-text';
import { DB } from '../postgres/database';
import { PostgresMirrorGapsRepository } from '../postgres/postgres-mirror-gaps.repository';
import { BackfillCheckpointsRepository, KEY_REPLAY_RUN, RunInProgressError } from './backfill-checkpoints.repository';
import { ClickHouseHistory } from './clickhouse-history';
import { historyOf } from './history-entities';
import { Entity } from './history-scope';
import { addReplay, emptyReplay, KeyReplay, ReplayResult, TombstonesLostError } from './key-replay';

export interface GapReplayFilter {
  entities: Entity[];
  /** null: every project. */
  projectIds: string[] | null;
}

export interface GapReplayResult extends ReplayResult {
  gaps: number;
  durationMs: number;
}

/** A replay gives up after this many gaps failed one after another: a server is failing, not a gap. */
const FAILURES_IN_A_ROW_TO_STOP = 3;

/**
 * Replays the mirror's open gap records (`mirror_gaps`): the keys of rows the
 * batch writer could not send. Each key is brought to what Postgres holds now
 * (see KeyReplay), and a gap is marked replayed only after ClickHouse accepted
 * all of its rows, so a failure leaves it open for the next run. A gap that
 * fails does not stop the ones after it; the run then fails, naming it.
 */
export class GapReplay {
  private readonly gaps: PostgresMirrorGapsRepository;
  private readonly checkpoints: BackfillCheckpointsRepository;

  constructor(
    private readonly db: Kysely<DB>,
    private readonly clickhouse: ClickHouseHistory,
    private readonly log: (line: string) => void = () => undefined,
    /** What a gap's failure is made of before it is listed: the command names the server that failed (a bare driver text names none). */
    private readonly describeFailure: (error: unknown) => unknown = (error) => error,
  ) {
    this.gaps = new PostgresMirrorGapsRepository(db);
    this.checkpoints = new BackfillCheckpointsRepository(db);
  }

  async run(filter: GapReplayFilter): Promise<GapReplayResult> {
    return this.checkpoints.withRunLock(KEY_REPLAY_RUN, async (lock) => {
      const stillExclusive = () => this.checkpoints.assertHeld(KEY_REPLAY_RUN, lock);
      const startedAt = Date.now();
      // Tokens unique to this attempt: ClickHouse must not drop a replay as a repeat of an earlier one.
      const attempt = randomUUID();
      // The gaps open now; ones the API records while this runs are the next run's.
      const { gaps: listed, lastId } = await this.gaps.totals(filter);
      const total = emptyReplay();
      let replayed = 0;
      const failed: string[] = [];
      let failedInARow = 0;
      for await (const gap of this.gaps.open(filter, lastId)) {
        const about = `gap ${gap.id} (${gap.entity}, project ${gap.project_id}, ${counted(gap.key_count, 'key')}, recorded ${gap.recorded_at}: ${gap.reason})`;
        try {
          // Each gap's writes too, not only its resets (KeyReplay asks before each), wait on the lock still being held.
          await stillExclusive();
          const entity = historyOf(gap.entity as Entity);
          const entries = (await this.gaps.keysOf(gap.id)).map((entry) => entity.readGapEntry(gap.project_id, entry));
          const done = await new KeyReplay(this.db, this.clickhouse, entity, stillExclusive).replay(gap.project_id, entries, `gap:${gap.id}:${attempt}`);
          await this.gaps.markReplayed([gap.id]);
          addReplay(total, done);
          replayed += 1;
          failedInARow = 0;
          this.log(`replayed ${about}: ${counted(done.upserted, 'row')} upserted, ${done.tombstoned} tombstoned${done.reset ? `, ${done.reset} reset` : ''}`);
        } catch (error) {
          // The run's lock is gone: another run may be resetting the same keys, and every later gap would fail so.
          // Or a reset lost the tombstones it held, and every later one would lose its own the same way.
          if (error instanceof RunInProgressError || error instanceof TombstonesLostError) {
            const message = `gap ${gap.id}: ${error.message} (${counted(replayed, 'gap record')} replayed before it${failed.length ? `; ${failed.length} could not be: ${failed.join('; ')}` : ''})`;
            if (error instanceof RunInProgressError) throw new RunInProgressError(message);
            throw new TombstonesLostError(`${message}; then run ${gapsCommand(filter)} again for the gaps still open`);
          }
          // One gap that cannot be replayed (a key Postgres rejects) must not keep every later one open;
          // several in a row mean a server is failing, and the rest would only fail the same way.
          const message = errorText(this.describeFailure(error));
          failed.push(`gap ${gap.id}: ${message}`);
          this.log(`could not replay ${about}; it stays open: ${message}`);
          if (++failedInARow === FAILURES_IN_A_ROW_TO_STOP) break;
        }
      }
      if (failed.length > 0) {
        const untried = listed - replayed - failed.length;
        throw new Error(
          `${counted(failed.length, 'gap record')} could not be replayed and stay${failed.length === 1 ? 's' : ''} open (${failed.join('; ')})` +
            (untried > 0 ? `; stopped after ${FAILURES_IN_A_ROW_TO_STOP} failures in a row, ${untried} not tried` : '') +
            `; ${replayed} replayed (${counted(total.upserted, 'row')} upserted, ${total.tombstoned} tombstoned). ` +
            `Fix the cause and run ${gapsCommand(filter)} again`,
        );
      }
      return { gaps: replayed, ...total, durationMs: Date.now() - startedAt };
    });
  }
}

/** The command that replays the same scope's gaps again (scopeFlags). */
export function gapsCommand(filter: GapReplayFilter): string {
  return `\`npm run backfill -- --gaps${scopeFlags(filter)}\``;
}

/** The flags that name the replay's scope again: one entity, one project (more come from CLICKHOUSE_PROJECT_IDS, as before). */
function scopeFlags(filter: GapReplayFilter): string {
  const entity = filter.entities.length === 1 ? ` --entity ${filter.entities[0]}` : '';
  const project = filter.projectIds?.length === 1 ? ` --project ${filter.projectIds[0]}` : '';
  return entity + project;
}
