import type { MirrorLogger } from './batch-writer';
import type { Clock } from './clock';
import type { MirrorMetrics } from './mirror-metrics';
import { BackoffOptions, describeSendError, fullJitterBackoff } from './retry-policy';

/** What a gap record needs of a mirrored row: which entity and project, its key, its created_at and its tombstone's other fields. */
export interface GapRow {
  /** ClickHouse table, e.g. 'spans'. */
  table: string;
  /** 'spans' | 'nodes': written into gap records so `backfill --gaps` knows what to replay. */
  entity: string;
  projectId: string;
  /** The row's primary key values as strings, for gap records. */
  key: string[];
  /** ISO-8601 with microseconds, for gap time ranges. */
  createdAt: string;
  /**
   * What a tombstone of this key holds besides its key and created_at, as
   * the row had them (spans: start_time; nodes: tree_id, time_start). With
   * them a replay can tombstone a key that neither Postgres nor ClickHouse
   * holds when it runs: a delete whose gap is replayed while the create
   * before it still waits in some API's queue, to land afterwards as a live
   * row unless a tombstone at a later version is already there.
   */
  tombstoneFields: string[];
}

/**
 * A row's entry in its gap record's `keys`: its key, its created_at, then
 * its tombstone fields. Records written before entries carried the last two
 * hold the key alone; HistoryEntity.readGapEntry reads both.
 */
export function gapEntryOf(row: GapRow): string[] {
  return [...row.key, row.createdAt, ...row.tombstoneFields];
}

/** A durable note, in Postgres, of rows the mirror did not send: what `backfill --gaps` replays. */
export interface MirrorGap {
  entity: string;
  projectId: string;
  /** One entry per row (gapEntryOf). */
  keys: string[][];
  minCreatedAt: string;
  maxCreatedAt: string;
  rowCount: number;
  reason: string;
}

/** The Postgres side: writes gap records. */
export interface GapRecorder {
  /** Writes the gaps; resolves how many gap records that made (a large gap may take several). */
  record(gaps: MirrorGap[]): Promise<number>;
}

export interface GapLedgerDeps {
  recorder: GapRecorder;
  logger: Pick<MirrorLogger, 'error' | 'warn'>;
  /** The batch writer's clock, so tests drive both with one fake. */
  timers: Pick<Clock, 'setTimeout' | 'clearTimeout'>;
  metrics?: MirrorMetrics;
  /** Source of jitter for the retry backoff; [0, 1). */
  random: () => number;
  /** Runs a timer's work so that a throw is logged, not raised into the event loop. */
  guarded: (message: string, work: () => void) => void;
}

export interface GapLedgerOptions extends BackoffOptions {
  /** Held rows are recorded once this many have gathered... */
  holdRows: number;
  /** ...or this long after the first of them, whichever comes first. */
  holdMs: number;
}

/** Writing a gap record is tried this many times before the rows are declared lost (error log only). */
const GAP_RECORD_ATTEMPTS = 3;

/** A gap record on its way to Postgres; given up when shutdown could wait no longer for it. */
interface Recording {
  gaps: MirrorGap[];
  givenUp: boolean;
}

/**
 * Where the batch writer's unsent rows go: it groups them into gap records
 * (one per entity and project) and writes those to Postgres in the
 * background, retrying a few times, for `backfill --gaps` to replay. If
 * Postgres refuses every attempt, the error log is the last record of the
 * rows, with the ranges `verify --repair` needs.
 *
 * Rows are recorded at once (record) or held and recorded together (hold):
 * once the writer's queue is full every write overflows, and recording each
 * write's gap at once meant a second Postgres transaction per API write,
 * competing with the API's own for the pool and the CPU. Held rows are
 * recorded after `holdMs`, or sooner at `holdRows` keys, and by
 * recordHeld(). The price: a held gap is durable up to `holdMs` after its
 * rows were turned away, so a crash in between loses it, as it loses the
 * queue itself (verify --repair finds both).
 */
export class GapLedger {
  private readonly recordings = new Map<Recording, Promise<void>>();
  private held = new Map<string, MirrorGap>();
  private heldRows = 0;
  private heldTimer: unknown | null = null;
  private recordedGaps = 0;
  private lostRows = 0;

  constructor(
    private readonly options: GapLedgerOptions,
    private readonly deps: GapLedgerDeps,
  ) {}

  /** Gap records written so far. */
  get recorded(): number {
    return this.recordedGaps;
  }

  /** Rows declared lost so far: no gap record holds them, only the error log. */
  get lost(): number {
    return this.lostRows;
  }

  /** Records the rows' gaps now, in the background. */
  record(rows: GapRow[], reason: string): void {
    if (rows.length === 0) return;
    this.startRecording(groupIntoGaps(rows, reason));
  }

  /** Adds the rows to the held gaps, to be recorded with the rest (see the class comment). */
  hold(rows: GapRow[], reason: string): void {
    if (rows.length === 0) return;
    addToGaps(this.held, rows, reason);
    this.heldRows += rows.length;
    if (this.heldRows >= this.options.holdRows) {
      this.recordHeld();
    } else if (this.heldTimer === null) {
      this.heldTimer = this.deps.timers.setTimeout(() => {
        this.heldTimer = null;
        this.deps.guarded('mirror gap recording failed to start', () => this.recordHeld());
      }, this.options.holdMs);
    }
  }

  /** Records the held gaps now (drain and shutdown). */
  recordHeld(): void {
    if (this.heldTimer !== null) this.deps.timers.clearTimeout(this.heldTimer);
    this.heldTimer = null;
    if (this.held.size === 0) return;
    const gaps = [...this.held.values()];
    this.held = new Map();
    this.heldRows = 0;
    this.startRecording(gaps);
  }

  /** Resolves once every recording started so far, and any started meanwhile, has ended (written or logged as lost). */
  async settled(): Promise<void> {
    while (this.recordings.size > 0) await Promise.all([...this.recordings.values()]);
  }

  /**
   * settled(), for shutdown: at most `withinMs`. A Postgres that stops
   * answering (rather than refusing) holds each attempt for the pool's
   * client timeout, 35 s by default, three times over: past any grace
   * period, and the SIGKILL that ends it would take the last-resort log line
   * with it. So the recordings still running at `withinMs` are declared lost
   * now, their ranges logged and counted, and their later end, whichever it
   * is, is not reported again.
   */
  async settledWithin(withinMs: number): Promise<void> {
    let timer: unknown = null;
    const timedOut = new Promise<'timed out'>((resolve) => {
      timer = this.deps.timers.setTimeout(() => resolve('timed out'), withinMs);
    });
    const outcome = await Promise.race([this.settled().then(() => 'settled' as const), timedOut]);
    this.deps.timers.clearTimeout(timer);
    if (outcome === 'settled') return;
    for (const recording of this.recordings.keys()) {
      if (recording.givenUp) continue;
      recording.givenUp = true;
      this.declareLost(recording.gaps, `Postgres did not record the gap within the ${withinMs} ms shutdown allows it`);
    }
  }

  private startRecording(gaps: MirrorGap[]): void {
    const recording: Recording = { gaps, givenUp: false };
    const done = this.recordGaps(recording);
    this.recordings.set(recording, done);
    void done.finally(() => this.recordings.delete(recording));
  }

  /** Postgres may be down too: retry a few times, then the error log is the last record of these rows. */
  private async recordGaps(recording: Recording): Promise<void> {
    const { recorder, metrics } = this.deps;
    const { gaps } = recording;
    for (let attempt = 1; ; attempt++) {
      try {
        const records = await recorder.record(gaps);
        this.recordedGaps += records;
        metrics?.gapsRecorded.inc(records);
        if (recording.givenUp) {
          // Declared lost at shutdown, and written all the same. A counter cannot take the rows back; the log can.
          this.deps.logger.warn(
            { gaps: rangesOf(gaps) },
            'mirror gap recorded after shutdown had declared its rows lost: backfill --gaps replays them; the lost-rows line before this one overstates',
          );
        }
        return;
      } catch (error) {
        if (recording.givenUp) return;
        if (attempt < GAP_RECORD_ATTEMPTS) {
          await this.retryPause(fullJitterBackoff(attempt, this.options, this.deps.random));
          if (recording.givenUp) return;
          continue;
        }
        this.declareLost(gaps, describeSendError(error));
        return;
      }
    }
  }

  /**
   * Rows whose keys could not be read back (a fault of ours): no gap record can hold them. Counted as
   * lost; the error log says when and how many, which is all there is for `verify` to go on.
   */
  declareUnreadable(table: string, rowCount: number, error: string, queued: { from: string; to: string } | null): void {
    this.lostRows += rowCount;
    this.deps.metrics?.rowsLost.inc(rowCount);
    this.deps.logger.error(
      { table, lostRows: rowCount, error, queuedFrom: queued?.from, queuedTo: queued?.to },
      'mirror rows could not be read back for a gap record: they are missing from ClickHouse; run verify --repair. ' +
        (queued
          ? 'They were written between queuedFrom and queuedTo, but an update or delete then may be of a row created days before: verify by created_at, so without --since unless you know'
          : 'When they were written is not known either'),
    );
  }

  /** The rows' last record: counted as lost, their ranges in the error log for `verify --repair`. */
  private declareLost(gaps: MirrorGap[], error: string): void {
    const lostRows = gaps.reduce((sum, gap) => sum + gap.rowCount, 0);
    this.lostRows += lostRows;
    this.deps.metrics?.rowsLost.inc(lostRows);
    this.deps.logger.error(
      {
        error,
        lostRows,
        gaps: rangesOf(gaps),
      },
      'mirror gap could not be recorded: these rows are missing from ClickHouse and only this log knows; repair with verify --repair over this range',
    );
  }

  /**
   * Between a gap record's attempts. Not cut short when the writer stops:
   * shutdown is when most gaps are recorded (what the deadline left, the held
   * overflow), and back-to-back attempts would all fall inside one Postgres
   * blip. It is bounded: GAP_RECORD_ATTEMPTS − 1 backoffs.
   */
  private retryPause(ms: number): Promise<void> {
    return new Promise((resolve) => this.deps.timers.setTimeout(resolve, ms));
  }
}

/** What a log line says of gaps: everything but their keys, which `verify --repair` does not need. */
function rangesOf(gaps: MirrorGap[]) {
  return gaps.map(({ entity, projectId, rowCount, minCreatedAt, maxCreatedAt, reason }) => ({ entity, projectId, rowCount, minCreatedAt, maxCreatedAt, reason }));
}

/** One gap per entity and project: the rows' entries, their created_at range and count. */
export function groupIntoGaps(rows: GapRow[], reason: string): MirrorGap[] {
  const gaps = new Map<string, MirrorGap>();
  addToGaps(gaps, rows, reason);
  return [...gaps.values()];
}

/** Adds rows to the gaps of their entity and project, keyed by both. */
function addToGaps(gaps: Map<string, MirrorGap>, rows: GapRow[], reason: string): void {
  for (const row of rows) {
    const id = `${row.entity}\u0000${row.projectId}`;
    const gap = gaps.get(id);
    if (!gap) {
      gaps.set(id, {
        entity: row.entity,
        projectId: row.projectId,
        keys: [gapEntryOf(row)],
        minCreatedAt: row.createdAt,
        maxCreatedAt: row.createdAt,
        rowCount: 1,
        reason,
      });
      continue;
    }
    gap.keys.push(gapEntryOf(row));
    gap.rowCount += 1;
    // Same-format ISO-8601 UTC strings order lexically, and comparing them keeps the microseconds a Date would drop.
    if (row.createdAt < gap.minCreatedAt) gap.minCreatedAt = row.createdAt;
    if (row.createdAt > gap.maxCreatedAt) gap.maxCreatedAt = row.createdAt;
  }
}
