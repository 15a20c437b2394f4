import { AsyncResource } from 'node:async_hooks';
import { Logger } from '@nestjs/common';
import { Counter, Registry } from 'prom-client';
import { BatchWriter, MirrorRow } from '../clickhouse/batch-writer';
import { GapRow } from '../clickhouse/gap-ledger';
import { errorText } from '../../error-text';
import { MIRRORED_ENTITIES, MirrorPlan, MirrorTarget } from './mirrored-dao';

/** Records mapped per event-loop turn while the backlog is small (about half a millisecond of spans). */
const SLICE_RECORDS = 16;
/** Records per slice when drain() or shutdown() has the whole backlog mapped at once. */
const FLUSH_SLICE_RECORDS = 1_024;

/**
 * How often, at most, an entity's "could not build mirror records" line repeats: a mapper that fails every row
 * (a column format it does not expect) logged one error line per mirrored row, at the ingest rate. The counter
 * counts them all; each line says how many were not logged since the one before.
 */
const FAILURE_LINE_EVERY_MS = 60_000;

interface Accepted {
  plan: MirrorPlan<unknown, unknown>;
  /** One write's committed rows, as the DAO returned them. */
  rows: readonly unknown[];
  toRecord: (row: unknown) => unknown;
  /** Index of the next row to map. */
  next: number;
  /** When the write was accepted, on the writer's clock: the writer's lag counts from it. */
  acceptedAt: number;
}

/**
 * Where the decorator hands committed rows: builds each row's record (its
 * version and tombstone flag), keeps only the projects being rolled out
 * (CLICKHOUSE_PROJECT_IDS, empty = all), maps the record through its
 * table's row mapper and enqueues it on the batch writer. On the caller's
 * path it only takes the rows: mapping is JSON serialization (~12 µs a
 * span), which the write-path benchmark saw add a third to a 50-span create,
 * and building the record another ~3 µs. Both run after the call has
 * returned, a slice per event-loop turn, so most of it falls while requests
 * wait for Postgres; a backlog gets bigger slices so it cannot outgrow the
 * loop, and the writer's drain() and shutdown() map what is left first;
 * stats() (every /health) only counts it. The rows come from RETURNING for
 * this call and callers only serialize them, so building and mapping a
 * moment later sees the same values. While the writer's queue is full
 * (ClickHouse down for a while), a line would only be dropped: records then
 * become gap rows (their keys) without being mapped. A row that cannot be
 * built or mapped is counted and logged, and the rest of its write still
 * goes. Never throws.
 */
export class Mirror implements MirrorTarget {
  private readonly logger = new Logger('Mirror');
  private readonly projects: Set<string> | null;
  private readonly failures: Counter<'entity'>;
  private readonly unknownOutcomes: Counter<'entity'>;
  private readonly backlog: Accepted[] = [];
  private backlogRecords = 0;
  private scheduled = false;
  /**
   * The mirror's own async context, as the writer has one: the slices of the backlog run in it, not in
   * that of the request whose write scheduled them, which the API's logger would name in their lines
   * (a steady load keeps the backlog going, and would keep that request's context alive with it).
   */
  private readonly scope = new AsyncResource('Mirror');
  /** Mirrored writes on their way to Postgres, and who waits for there to be none. */
  private writesInFlight = 0;
  private readonly onNoWritesInFlight: Array<() => void> = [];
  /** Per entity: when its failure line was last logged (performance.now()), and how many failures since. */
  private readonly failureLines = new Map<string, { at: number; notLogged: number }>();

  constructor(
    private readonly writer: BatchWriter,
    projectIds: string[],
    registry: Registry,
  ) {
    this.projects = projectIds.length ? new Set(projectIds) : null;
    this.failures = new Counter({
      name: 'mirror_record_failures_total',
      help: 'Committed rows (or whole writes) the mirror could not build or map into records (found later by verify)',
      labelNames: ['entity'],
      registers: [registry],
    });
    this.unknownOutcomes = new Counter({
      name: 'mirror_writes_outcome_unknown_total',
      help: 'Mirrored writes that failed without saying whether Postgres committed them (connection cut or given up mid-write): if they did, ClickHouse lacks them until verify --repair',
      labelNames: ['entity'],
      registers: [registry],
    });
    for (const entity of MIRRORED_ENTITIES) {
      // A series to alert on before the first one.
      this.failures.inc({ entity }, 0);
      this.unknownOutcomes.inc({ entity }, 0);
    }
    writer.addProducer({
      // In slices, each looking again whether the writer's queue is full: past it, lines are not built.
      flush: () => {
        while (this.backlog.length > 0) this.mapBacklog(FLUSH_SLICE_RECORDS);
      },
      held: () => (this.backlog.length ? { rows: this.backlogRecords, oldestAt: this.backlog[0].acceptedAt } : null),
    });
  }

  mirrors(projectId: string): boolean {
    return this.projects === null || this.projects.has(projectId);
  }

  started(): () => void {
    this.writesInFlight++;
    let settled = false;
    return () => {
      if (settled) return;
      settled = true;
      if (--this.writesInFlight === 0) for (const wake of this.onNoWritesInFlight.splice(0)) wake();
    };
  }

  /**
   * Waits until no mirrored write is still on its way to Postgres, or for
   * `timeoutMs`; resolves to how many still are. Shutdown calls it before
   * closing the writer: a write that commits after that would find the
   * writer closed and its gap record racing the pool's end.
   */
  async writesSettled(timeoutMs: number): Promise<number> {
    if (this.writesInFlight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.onNoWritesInFlight.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.writesInFlight;
  }

  accept<Row, Mirrored>(plan: MirrorPlan<unknown, Mirrored>, rows: readonly Row[], toRecord: (row: Row) => Mirrored): void {
    if (rows.length === 0) return;
    this.backlog.push({
      plan: plan as MirrorPlan<unknown, unknown>,
      rows,
      toRecord: toRecord as (row: unknown) => unknown,
      next: 0,
      acceptedAt: this.writer.now(),
    });
    this.backlogRecords += rows.length;
    this.scheduleSlice();
  }

  private scheduleSlice(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    this.scope.runInAsyncScope(() => setImmediate(() => this.mapSlice()));
  }

  private mapSlice(): void {
    this.scheduled = false;
    try {
      this.mapBacklog(Math.max(SLICE_RECORDS, Math.ceil(this.backlogRecords / 8)));
    } catch (error) {
      // Not reachable through the mappers (their errors are caught per record); a timer must not throw.
      this.logger.error({ err: error }, 'mirror could not map accepted records');
    }
  }

  /**
   * Maps up to `limit` records, oldest first, hands them to the writer in one write(), and schedules the rest.
   * They go with the time the slice's oldest write was accepted: the writer's lag and flush interval count
   * from the commit, not from when the mirror got round to mapping it (for the slice's later writes, from a
   * moment before theirs; one write() per accepted write cost a 1-span load a write() call per request).
   */
  private mapBacklog(limit: number): void {
    if (this.backlog.length === 0) return;
    const acceptedAt = this.backlog[0].acceptedAt;
    // Nothing below changes the writer's state before it is handed the rows, so one look serves the whole slice.
    const keysOnly = this.writer.full;
    const rows: Array<MirrorRow | GapRow> = [];
    // Rows whose keys are known but whose line could not be built: gaps, so nothing is missed silently.
    const unmapped: GapRow[] = [];
    let unmappedError: unknown;
    let mapped = 0;
    while (mapped < limit && this.backlog.length > 0) {
      const accepted = this.backlog[0];
      const end = Math.min(accepted.rows.length, accepted.next + (limit - mapped));
      for (; accepted.next < end; accepted.next++, mapped++) {
        let keys: GapRow | undefined;
        try {
          const record = accepted.toRecord(accepted.rows[accepted.next]);
          keys = accepted.plan.toGapRow(record);
          // Projects not rolled out are skipped before their line is built: it is most of the cost.
          if (!this.mirrors(keys.projectId)) continue;
          rows.push(keysOnly ? keys : { line: accepted.plan.toLine(record), ...keys }); // line first: see upserted (mirror-plans)
        } catch (error) {
          this.failed(accepted.plan.entity, error);
          if (keys && this.mirrors(keys.projectId)) {
            unmapped.push(keys);
            unmappedError ??= error;
          }
        }
      }
      if (accepted.next === accepted.rows.length) this.backlog.shift();
    }
    this.backlogRecords -= mapped;
    if (unmapped.length) this.writer.writeUnmapped(unmapped, unmappedError);
    if (rows.length && keysOnly) this.writer.writeOverflow(rows);
    else if (rows.length) this.writer.write(rows as MirrorRow[], acceptedAt);
    if (this.backlog.length > 0) this.scheduleSlice();
  }

  failed(entity: string, error: unknown): void {
    this.failures.inc({ entity });
    const now = performance.now();
    const last = this.failureLines.get(entity);
    if (last && now - last.at < FAILURE_LINE_EVERY_MS) {
      last.notLogged++;
      return;
    }
    this.failureLines.set(entity, { at: now, notLogged: 0 });
    this.logger.error({ entity, err: error, notLoggedSinceLastLine: last?.notLogged ?? 0 }, 'could not build mirror records for a committed write');
  }

  outcomeUnknown(entity: string, method: string, projectId: unknown, error: unknown): void {
    this.unknownOutcomes.inc({ entity });
    this.logger.warn(
      { entity, method, projectId, error: errorText(error) },
      'a mirrored write failed without saying whether Postgres committed it; if it did, ClickHouse lacks it: ' +
        'run `npm run verify -- --project <projectId> --counts-only --repair` over all history (an update or delete lands on the day its row was created)',
    );
  }
}
