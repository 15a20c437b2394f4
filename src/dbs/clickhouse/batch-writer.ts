import { AsyncResource } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { DropReason, MirrorMetrics } from './mirror-metrics';
import { BatchWriterOptions, BatchWriterSettings, DEFAULT_BATCH_WRITER_OPTIONS } from './batch-writer-options';
import { forEachEnqueueTime, gapRowsOf, linesOf, recordBytes, RowLog, RowSpan } from './row-log';
import { GapLedger, GapRecorder, GapRow } from './gap-ledger';
import { errorText } from '../../error-text';
import { BreakerState, classifySendError, describeSendError, fullJitterBackoff, publicSendError } from './retry-policy';
import { BreakerGate } from './breaker-gate';
import { Clock, realClock } from './clock';

/**
 * One row to mirror: what a gap record needs of it, and its line. The writer
 * is generic: it knows tables and keys, not spans or nodes.
 */
export interface MirrorRow extends GapRow {
  /** The row serialized as one JSONEachRow line, no trailing newline; its UTF-8 length is what flushBytes counts. */
  line: string;
}

/**
 * A JSONEachRow insert body: whole lines of UTF-8 text, each ending in
 * '\n', in pieces that may end mid-line, even mid-character. The writer
 * hands over slices of its off-heap stores, a few per batch, as the sink
 * reads them: nothing is copied or decoded at flush time
 * (decoding a batch to strings held the event loop for milliseconds once per
 * interval: write-path p99). Iterate it at most once per insert call.
 */
export type InsertBody = Iterable<Uint8Array>;

/** The ClickHouse side. The implementation must bound each request with a timeout: the writer has no timeout of its own. */
export interface MirrorSink {
  insert(table: string, body: InsertBody, dedupToken: string): Promise<void>;
  ping(): Promise<boolean>;
}

/** The slice of pino the writer uses. */
export interface MirrorLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/**
 * What accepts rows before it writes them (the mirror takes committed rows on
 * the caller's path and maps them a slice per event-loop turn afterwards).
 */
export interface RowProducer {
  /** write() everything held now: drain() and shutdown() call it before they look at the queue. */
  flush(): void;
  /**
   * How many rows are held and since when (the writer's now(), taken as the oldest was accepted); null when none.
   * stats() reads it instead of calling flush(): a probe must not map a large backlog in one go.
   */
  held(): { rows: number; oldestAt: number } | null;
}

export interface BatchWriterStats {
  /**
   * Rows waiting to be sent, including those a producer holds (acceptedRows). A held row the producer then
   * skips (a project not rolled out) or turns into a gap leaves the count without being sent.
   */
  queuedRows: number;
  /** Of queuedRows, those a producer has accepted and not written yet: in neither queuedBytes nor its bound yet. */
  acceptedRows: number;
  /** What the rows written to the writer hold in memory (queuedRowBytes each), bounded by queueMaxBytes. */
  queuedBytes: number;
  inFlightBatches: number;
  breaker: BreakerState;
  gapsRecorded: number;
  /** Rows neither sent nor recorded as gaps (mirror_rows_lost_total): only the error log has their ranges. */
  rowsLost: number;
  rowsSent: number;
  rowsDropped: number;
  lastSuccessAt: number | null;
  lastErrorAt: number | null;
  /** The last failure, in full: for logs. */
  lastError: string | null;
  /** The same, as /health shows it: kind and code, no host, user or server message (publicSendError). */
  lastPublicError: string | null;
  /** Age of the oldest row not yet confirmed by ClickHouse; 0 when nothing is queued. */
  lagMs: number;
}

export interface BatchWriterDeps {
  sink: MirrorSink;
  gapRecorder: GapRecorder;
  logger: MirrorLogger;
  clock?: Clock;
  metrics?: MirrorMetrics;
  /** Source of jitter for backoff; [0, 1). */
  random?: () => number;
}

/**
 * After the shutdown deadline, how long the writer waits for its gap records
 * to reach Postgres, outside `shutdownDeadlineMs`: a Postgres that answers
 * writes them in milliseconds, and three tries with the default backoff
 * (pauses under 0.2 and 0.4 s) fit with room to spare; with a larger
 * MIRROR_BASE_BACKOFF_MS fewer tries fit. Past it, their rows are declared
 * lost in the error log (GapLedger.settledWithin) while the process can
 * still write it. Fixed, so the shutdown's sum in README stays one figure.
 */
export const SHUTDOWN_GAP_RECORDING_MS = 3_000;

/** What a row costs the queue, as its bound counts it: its record in the table's log (see RowLog). */
export function queuedRowBytes(row: MirrorRow): number {
  return recordBytes(Buffer.byteLength(gapFieldsOf(row), 'utf8'), Buffer.byteLength(row.line, 'utf8'));
}

function gapFieldsOf(row: GapRow): string {
  return JSON.stringify([row.entity, row.projectId, row.key, row.createdAt, row.tombstoneFields]);
}

interface Batch {
  table: string;
  /** The rows, off-heap; read per attempt, so a batch waiting out an outage stays off the heap. */
  rows: RowSpan;
  /** Fixed when the batch is cut and reused on every retry, so ClickHouse drops a repeated insert. */
  dedupToken: string;
  attempts: number;
  /** The outages begun (BreakerGate.outages) as of this batch's last attempt. */
  outagesSeen: number;
  /** This batch has the half-open probe, and the gate has not heard how it went. */
  holdsProbe: boolean;
  /** Sent or turned into a gap; whichever happens first counts, exactly once. */
  settled: boolean;
}

interface DrainWaiter {
  through: number;
  resolve: () => void;
}

interface TableQueue {
  table: string;
  /** Rows not yet cut into a batch, oldest first. */
  pending: RowLog;
  inFlight: Batch | null;
  intervalTimer: unknown | null;
}

/**
 * Mirrors rows to ClickHouse in batches without ever making the caller wait
 * or fail. Per table: rows queue up, a batch is cut when the queue reaches
 * `flushRows` or `flushBytes` or its oldest row is `flushIntervalMs` old, and
 * at most one insert is in flight. Transient failures are retried with
 * backoff under one shared circuit breaker (BreakerGate). Whatever cannot be sent (queue
 * full, permanent error, retries exhausted, shutdown deadline) becomes a gap
 * record in Postgres, which `backfill --gaps` replays.
 */
export class BatchWriter {
  private readonly options: BatchWriterOptions;
  private readonly sink: MirrorSink;
  /** Where rows that will not be sent go: gap records in Postgres. */
  private readonly gaps: GapLedger;
  private readonly logger: MirrorLogger;
  private readonly clock: Clock;
  private readonly metrics?: MirrorMetrics;
  private readonly random: () => number;
  /** The shared circuit breaker, with its waiting senders, timer, gauge and outage log. */
  private readonly gate: BreakerGate;
  /**
   * The writer's own async context, taken when it is built. Sends, retries and timers start in it, not in
   * the context of the write() that filled the batch: the API's logger names the request of the context
   * it runs in, so an outage's lines read as one unrelated request's (and its timers would keep that alive).
   */
  private readonly scope = new AsyncResource('MirrorBatchWriter');

  private readonly tables = new Map<string, TableQueue>();
  private queuedRows = 0;
  private queuedBytes = 0;
  private lastSeq = 0;
  /** Rows up to this sequence are flushed without waiting for the interval (drain and shutdown). */
  private forceFlushThrough = 0;

  /** shutdown() has begun: new writes become gaps. */
  private closed = false;
  /** Nothing more is sent and no new timers are set. */
  private stopped = false;
  private shutdownPromise: Promise<void> | null = null;

  /** Backoff waits between attempts; stop() cuts them short. */
  private readonly sleeps = new Set<{ handle: unknown; wake: () => void }>();
  private drainWaiters: DrainWaiter[] = [];
  /** Callers holding rows they will write() shortly; drain() and shutdown() have them write those first. */
  private readonly producers: RowProducer[] = [];
  /**
   * Set when a row does not fit, cleared when rows leave the queue (sent or
   * turned into gaps). While set, every row is turned away without trying to
   * fit it: a smaller row could squeeze in, but it would be a gap a moment
   * later anyway, and a stable state lets producers skip building lines.
   */
  private queueFull = false;
  /** Rows turned away in the current overflow episode, for its closing log line. */
  private overflowRows = 0;

  private rowsSent = 0;
  private rowsDropped = 0;
  private lastSuccessAt: number | null = null;
  private lastErrorAt: number | null = null;
  private lastError: string | null = null;
  private lastPublicError: string | null = null;

  constructor(settings: BatchWriterSettings, deps: BatchWriterDeps) {
    this.options = resolveOptions(settings);
    this.sink = deps.sink;
    this.logger = deps.logger;
    this.clock = deps.clock ?? realClock;
    this.metrics = deps.metrics;
    this.random = deps.random ?? Math.random;
    // Turned-away rows are held for a flush interval or a batch's worth of keys, like rows waiting to be sent.
    this.gaps = new GapLedger(
      { ...this.options, holdRows: this.options.flushRows, holdMs: this.options.flushIntervalMs },
      {
        recorder: deps.gapRecorder,
        logger: this.logger,
        timers: this.clock,
        metrics: this.metrics,
        random: this.random,
        guarded: (message, work) => this.guarded(message, work),
      },
    );
    this.gate = new BreakerGate(this.options.breaker, {
      clock: this.clock,
      logger: this.logger,
      metrics: this.metrics,
      guarded: (message, work) => this.guarded(message, work),
      onReopen: () => {
        for (const queue of this.tables.values()) this.maybeFlush(queue);
      },
      outageContext: () => ({ queuedRows: this.queuedRows + this.accepted().rows, lastError: this.lastError }),
    });
  }

  /**
   * Queue rows for ClickHouse and return at once. Never throws and never
   * waits: the caller has already committed to Postgres and must not notice
   * the mirror. Rows past the memory bound become gap records (newest
   * dropped: the queue keeps the rows that arrived first, in order, and the
   * gap covers one contiguous tail of this call). A row bigger than the
   * whole bound is turned away by itself. `acceptedAt` (the writer's now()
   * when a producer took the rows; now by default) is where their lag and
   * flush interval count from; calls must not give times older than an
   * earlier call's.
   */
  write(rows: MirrorRow[], acceptedAt?: number): void {
    this.scope.runInAsyncScope(() => this.queueRows(rows, acceptedAt ?? this.clock.now()));
  }

  private queueRows(rows: MirrorRow[], acceptedAt: number): void {
    // Rows before this index are queued or already handed to a gap; the rest are what an internal failure must account for.
    let accounted = 0;
    const touched = new Set<TableQueue>();
    try {
      if (this.closed) {
        accounted = rows.length;
        this.logger.warn({ rows: rows.length }, 'mirror write after shutdown; recording the rows as gaps');
        this.dropIntoGaps(rows, 'writer_closed');
        return;
      }
      for (; accounted < rows.length && !this.queueFull; accounted++) {
        const row = rows[accounted];
        const fields = gapFieldsOf(row);
        const fieldBytes = Buffer.byteLength(fields, 'utf8');
        const lineBytes = Buffer.byteLength(row.line, 'utf8');
        const bytes = recordBytes(fieldBytes, lineBytes);
        if (this.queuedBytes + bytes > this.options.queueMaxBytes) {
          if (this.queuedRows === 0) {
            // A row bigger than the whole bound never fits. With nothing queued or in flight no row would
            // ever leave to clear a "full" flag, so it is turned away alone and the rows after it still fit.
            this.logger.warn({ bytes, queueMaxBytes: this.options.queueMaxBytes }, 'mirror row is larger than the whole queue bound; recording it as a gap');
            this.dropIntoGaps([row], 'queue_full');
            continue;
          }
          this.queueFull = true;
          break;
        }
        const queue = this.queueFor(row.table);
        queue.pending.append(fields, fieldBytes, row.line, lineBytes, acceptedAt, ++this.lastSeq);
        this.queuedRows += 1;
        this.queuedBytes += bytes;
        touched.add(queue);
      }
      const overflow = rows.slice(accounted);
      accounted = rows.length;
      this.turnAway(overflow);
    } catch (error) {
      this.failSafe(error, 'mirror write failed internally', () =>
        this.dropIntoGaps(Array.isArray(rows) ? rows.slice(accounted) : [], 'internal_error', describeSendError(error)),
      );
    } finally {
      for (const queue of touched) {
        this.guarded('mirror flush failed to start', () => {
          this.updateQueueGauges(queue);
          this.maybeFlush(queue);
        });
      }
    }
  }

  /**
   * True while the queue is full: a producer may then hand over rows without
   * their lines (writeOverflow), since write() would only drop the lines. With
   * ClickHouse down for long, that is every write, and mapping a span to its
   * line is the mirror's largest cost in CPU and garbage.
   */
  get full(): boolean {
    return this.queueFull;
  }

  /** Rows a producer did not map because the queue was full: recorded as gaps, as write() records its overflow. */
  writeOverflow(rows: GapRow[]): void {
    this.scope.runInAsyncScope(() => this.turnAwayOverflow(rows));
  }

  /**
   * Rows a producer could not build a line for (a mapper's bug, or a row it
   * cannot take): their keys are all the mirror has, so they become gap
   * records at once, for `backfill --gaps` to replay from Postgres.
   */
  writeUnmapped(rows: GapRow[], error: unknown): void {
    this.scope.runInAsyncScope(() => {
      try {
        this.dropIntoGaps(rows, 'internal_error', describeSendError(error));
      } catch (failure) {
        this.failSafe(failure, 'mirror could not record unmapped rows as gaps');
      }
    });
  }

  private turnAwayOverflow(rows: GapRow[]): void {
    try {
      if (this.closed) {
        this.dropIntoGaps(rows, 'writer_closed');
        return;
      }
      this.turnAway(rows);
    } catch (error) {
      this.failSafe(error, 'mirror overflow write failed internally');
    }
  }

  /**
   * Flush everything queued so far and resolve once each of those rows is sent
   * or recorded as a gap. While ClickHouse is unreachable this waits for it;
   * shutdown() is the bounded wait.
   */
  async drain(): Promise<void> {
    this.flushProducers();
    const through = this.lastSeq;
    this.forceFlushThrough = Math.max(this.forceFlushThrough, through);
    for (const queue of this.tables.values()) this.maybeFlush(queue);
    await new Promise<void>((resolve) => {
      this.drainWaiters.push({ through, resolve });
      this.resolveDrainWaiters();
    });
    await this.recordHeldGaps();
  }

  /**
   * Records now the gaps held for their flush interval (rows turned away at
   * the queue's bound; see GapLedger) and resolves once every gap record is
   * written or failed. drain() ends with it; on its own it settles the gaps
   * while ClickHouse is down, when drain() would wait for ClickHouse.
   */
  async recordHeldGaps(): Promise<void> {
    this.flushProducers();
    this.gaps.recordHeld();
    await this.gaps.settled();
  }

  /**
   * Stop accepting rows, flush what remains (batch limits still apply, the
   * interval does not) and wait up to `deadlineMs` (`shutdownDeadlineMs`
   * unless the caller has spent part of that budget already). Rows not
   * confirmed by then become gaps. Resolves once those gaps are recorded, or
   * SHUTDOWN_GAP_RECORDING_MS later with the rest logged as lost.
   * Later calls return the first call's promise.
   */
  shutdown(deadlineMs = this.options.shutdownDeadlineMs): Promise<void> {
    if (!this.shutdownPromise) this.flushProducers();
    this.shutdownPromise ??= this.runShutdown(deadlineMs);
    return this.shutdownPromise;
  }

  /** Registers a producer: drain() and shutdown() have it write what it holds first; stats() counts what it holds. */
  addProducer(producer: RowProducer): void {
    this.producers.push(producer);
  }

  /** The writer's clock (monotonic epoch ms), for producers stamping what they hold: stats() measures lag against it. */
  now(): number {
    return this.clock.now();
  }

  private flushProducers(): void {
    for (const producer of this.producers) this.guarded('mirror producer failed to flush', () => producer.flush());
  }

  stats(): BatchWriterStats {
    // Rows a producer has accepted count as queued, and their age as lag: /health sees every accepted row.
    const accepted = this.accepted();
    let oldest = accepted.oldestAt;
    let inFlightBatches = 0;
    for (const queue of this.tables.values()) {
      if (queue.inFlight) {
        inFlightBatches += 1;
        oldest = Math.min(oldest, queue.inFlight.rows.firstEnqueuedAt);
      }
      if (queue.pending.count > 0) oldest = Math.min(oldest, queue.pending.firstEnqueuedAt);
    }
    return {
      queuedRows: this.queuedRows + accepted.rows,
      acceptedRows: accepted.rows,
      queuedBytes: this.queuedBytes,
      inFlightBatches,
      breaker: this.gate.state,
      gapsRecorded: this.gaps.recorded,
      rowsLost: this.gaps.lost,
      rowsSent: this.rowsSent,
      rowsDropped: this.rowsDropped,
      lastSuccessAt: this.lastSuccessAt,
      lastErrorAt: this.lastErrorAt,
      lastError: this.lastError,
      lastPublicError: this.lastPublicError,
      lagMs: oldest === Infinity ? 0 : this.clock.now() - oldest,
    };
  }

  /** What the producers hold: how many rows, and since when (Infinity when none). */
  private accepted(): { rows: number; oldestAt: number } {
    let rows = 0;
    let oldestAt = Infinity;
    for (const producer of this.producers) {
      let held: ReturnType<RowProducer['held']> = null;
      try {
        held = producer.held();
      } catch (error) {
        // A producer's failure must not fail /health: its rows go uncounted until it writes them. Logged only:
        // it is no send error, and /health's lastError must keep ClickHouse's.
        this.logger.error({ error: describeSendError(error) }, 'mirror producer failed to count the rows it holds');
      }
      if (held) {
        rows += held.rows;
        oldestAt = Math.min(oldestAt, held.oldestAt);
      }
    }
    return { rows, oldestAt };
  }

  private queueFor(table: string): TableQueue {
    let queue = this.tables.get(table);
    if (!queue) {
      queue = { table, pending: new RowLog(), inFlight: null, intervalTimer: null };
      this.tables.set(table, queue);
    }
    return queue;
  }

  /** Start the table's next insert if one is due and allowed; otherwise make sure something will look again. */
  private maybeFlush(queue: TableQueue): void {
    if (this.stopped || queue.inFlight || queue.pending.count === 0) return;
    if (!this.isDue(queue)) {
      this.armIntervalTimer(queue);
      return;
    }
    // An open breaker (or a probe already out) keeps rows in the queue; the breaker's change restarts every table.
    if (this.gate.holding) return;

    const batch = this.cutBatch(queue);
    queue.inFlight = batch;
    // A microtask later, so no part of sending runs inside the caller's write().
    queueMicrotask(() => void this.send(queue, batch));
  }

  private isDue(queue: TableQueue): boolean {
    const { pending } = queue;
    return (
      pending.count >= this.options.flushRows ||
      pending.lineBytes >= this.options.flushBytes ||
      pending.firstSeq <= this.forceFlushThrough ||
      this.clock.now() - pending.firstEnqueuedAt >= this.options.flushIntervalMs
    );
  }

  private armIntervalTimer(queue: TableQueue): void {
    if (queue.intervalTimer !== null || this.stopped) return;
    const delay = Math.max(0, queue.pending.firstEnqueuedAt + this.options.flushIntervalMs - this.clock.now());
    queue.intervalTimer = this.clock.setTimeout(() => {
      queue.intervalTimer = null;
      this.guarded('mirror flush timer failed', () => this.maybeFlush(queue));
    }, delay);
  }

  private clearIntervalTimer(queue: TableQueue): void {
    if (queue.intervalTimer === null) return;
    this.clock.clearTimeout(queue.intervalTimer);
    queue.intervalTimer = null;
  }

  /** Take rows from the front up to the batch limits; a single row larger than a limit still goes alone. */
  private cutBatch(queue: TableQueue): Batch {
    // maybeFlush only cuts a batch from a non-empty queue.
    const rows = queue.pending.take(this.options.flushRows, this.options.flushBytes)!;
    // The timer was set for the row that just left; the rest get a fresh one once this batch settles.
    this.clearIntervalTimer(queue);
    return {
      table: queue.table,
      rows,
      dedupToken: randomUUID(),
      attempts: 0,
      outagesSeen: this.gate.outages,
      holdsProbe: false,
      settled: false,
    };
  }

  private async send(queue: TableQueue, batch: Batch): Promise<void> {
    try {
      await this.deliver(batch);
    } catch (error) {
      this.failSafe(error, 'mirror batch failed internally', () =>
        this.settleAsGap(batch, 'internal_error', describeSendError(error)),
      );
    } finally {
      if (queue.inFlight === batch) queue.inFlight = null;
      this.guarded('mirror flush follow-up failed', () => {
        this.updateQueueGauges(queue);
        this.maybeFlush(queue);
        this.resolveDrainWaiters();
      });
    }
  }

  /**
   * Try the batch until it is sent, fails permanently, runs out of attempts, or the writer stops. A fault
   * of ours while this batch has the half-open probe (send() turns the batch into a gap) counts as the
   * probe's failure: left out, the breaker would wait for that probe for ever, and no batch would be sent
   * again until a restart.
   */
  private async deliver(batch: Batch): Promise<void> {
    try {
      await this.tryUntilSettled(batch);
    } catch (error) {
      if (batch.holdsProbe) this.gate.recordFailure('probe');
      batch.holdsProbe = false;
      throw error;
    }
  }

  private async tryUntilSettled(batch: Batch): Promise<void> {
    while (!batch.settled) {
      const admission = await this.gate.admit();
      if (admission === 'stopped' || batch.settled) return;
      batch.holdsProbe = admission === 'probe';
      if (admission === 'probe' && !(await this.probeServer())) {
        batch.holdsProbe = false;
        continue;
      }
      // The ping may answer after the shutdown deadline turned this batch into a gap and released its rows.
      if (this.stopped || batch.settled) return;

      // Another sender's failure opened the breaker since this batch's last attempt (a batch of the other
      // table, while this one waited out its backoff): the outage used up its attempts, as below.
      if (this.gate.outages !== batch.outagesSeen) batch.attempts = 0;
      batch.attempts += 1;
      const error = await this.attemptInsert(batch);
      if (error === null) {
        this.gate.recordAnswer();
        batch.holdsProbe = false;
        this.settleAsSent(batch);
        return;
      }

      const kind = classifySendError(error);
      const description = describeSendError(error);
      this.noteError(description, publicSendError(error));
      this.metrics?.sendFailures.inc({ kind });
      const context = { table: batch.table, rows: batch.rows.count, attempt: batch.attempts, dedupToken: batch.dedupToken, kind, error: description };

      if (kind === 'permanent') {
        // The server is up and said no: that is not an outage, so the breaker counts it as an answer.
        this.gate.recordAnswer();
        batch.holdsProbe = false;
        this.logger.error(context, 'ClickHouse rejected a mirror batch; recording it as a gap');
        this.settleAsGap(batch, 'send_failed', description);
        return;
      }

      this.gate.recordFailure(admission);
      batch.holdsProbe = false;
      // An outage this failure began gives fresh attempts just below, not once more on the next turn.
      batch.outagesSeen = this.gate.outages;
      if (this.gate.state === 'open' && admission !== 'probe') {
        // The breaker is open: ClickHouse is down, and the outage, not this batch, used up its attempts
        // so far (however many: another table's failures may have opened it). It waits with the rest of
        // the queue (an in-flight batch counts against queueMaxBytes) and starts its attempts afresh once
        // a probe's ping finds ClickHouse answering, so an outage longer than the retries (about 1.5 s by
        // default) ends with the queue drained rather than with a gap for `backfill --gaps` to replay.
        // Only attempts made while ClickHouse answers can use up the fresh count, which bounds how long
        // a batch the server never takes is held.
        this.logger.warn(context, 'mirror insert failed and ClickHouse looks down; the batch waits for the breaker');
        batch.attempts = 0;
        continue;
      }
      if (batch.attempts >= this.options.maxAttempts) {
        // The breaker is closed, or this attempt followed a probe ClickHouse answered: the server is
        // up and still does not take this batch, so waiting longer would hold the queue behind it.
        this.logger.error(context, 'mirror batch failed on every attempt; recording it as a gap');
        this.settleAsGap(batch, 'send_failed', description);
        return;
      }
      this.logger.warn(context, 'mirror insert failed; retrying');
      await this.sleep(fullJitterBackoff(batch.attempts, this.options, this.random));
    }
  }

  /** The half-open probe starts with a ping, so a dead server costs a ping rather than a batch upload. */
  private async probeServer(): Promise<boolean> {
    let failure: { description: string; publicReason: string } | null = null;
    try {
      if ((await this.sink.ping()) !== true) failure = { description: 'ClickHouse ping answered not ok', publicReason: 'ClickHouse ping answered not ok' };
    } catch (error) {
      failure = { description: `ClickHouse ping failed: ${describeSendError(error)}`, publicReason: `ClickHouse ping failed: ${publicSendError(error)}` };
    }
    if (failure === null) return true;
    this.noteError(failure.description, failure.publicReason);
    this.gate.recordFailure('probe');
    return false;
  }

  /** One insert; resolves to the error or null, never rejects (a sink that throws synchronously included). */
  private async attemptInsert(batch: Batch): Promise<unknown> {
    const started = this.clock.now();
    try {
      await this.sink.insert(batch.table, linesOf(batch.rows), batch.dedupToken);
      return null;
    } catch (error) {
      return error ?? new Error('insert failed without an error');
    } finally {
      this.metrics?.flushDuration.observe({ table: batch.table }, (this.clock.now() - started) / 1000);
    }
  }

  private settleAsSent(batch: Batch): void {
    if (batch.settled) return;
    batch.settled = true;
    const now = this.clock.now();
    this.rowsSent += batch.rows.count;
    this.lastSuccessAt = this.clock.wallNow();
    const { metrics } = this;
    if (metrics) {
      metrics.rowsSent.inc({ table: batch.table }, batch.rows.count);
      metrics.flushRows.observe({ table: batch.table }, batch.rows.count);
      forEachEnqueueTime(batch.rows, (enqueuedAt) => metrics.lag.observe((now - enqueuedAt) / 1000));
    }
    this.releaseQueued(batch.table, batch.rows);
  }

  private settleAsGap(batch: Batch, reason: DropReason, detail?: string): void {
    if (batch.settled) return;
    batch.settled = true;
    this.releaseIntoGaps(batch.table, batch.rows, reason, detail);
  }

  /** Queued rows that will not be sent: read back into gap records, and released. */
  private releaseIntoGaps(table: string, span: RowSpan, reason: DropReason, detail?: string): void {
    let rows: GapRow[];
    try {
      rows = gapRowsOf(table, span);
    } catch (error) {
      // A fault of ours reading the rows back: no keys for a gap record. Counted as lost and logged, with
      // when they were queued (their headers, apart from the fields that failed), and released: rows left
      // counted would hold the queue's bound down until a restart.
      this.countDropped(span.count, reason);
      this.gaps.declareUnreadable(table, span.count, `${detail ?? reason}; reading the rows back failed: ${errorText(error)}`, this.queuedBetween(span));
      this.releaseQueued(table, span);
      return;
    }
    this.releaseQueued(table, span);
    this.dropIntoGaps(rows, reason, detail);
  }

  /** The wall-clock times the span's first and last rows were queued, or null where the headers cannot be read. */
  private queuedBetween(span: RowSpan): { from: string; to: string } | null {
    try {
      let first = Infinity;
      let last = -Infinity;
      forEachEnqueueTime(span, (at) => {
        first = Math.min(first, at);
        last = Math.max(last, at);
      });
      if (first > last) return null;
      // Enqueue times are on the writer's monotonic clock; the log wants the wall clock's.
      const toWall = (at: number) => new Date(this.clock.wallNow() - (this.clock.now() - at)).toISOString();
      return { from: toWall(first), to: toWall(last) };
    } catch {
      return null;
    }
  }

  /** The rows are settled (sent, or read into gaps): they leave the count, and their stores may take new rows. */
  private releaseQueued(table: string, rows: RowSpan): void {
    this.tables.get(table)?.pending.release(rows);
    this.queuedRows -= rows.count;
    this.queuedBytes -= rows.bytes;
    this.noteRoom();
  }

  /** Rows that will not be sent: count them and record their keys and time range in Postgres, in the background. */
  private dropIntoGaps(rows: GapRow[], reason: DropReason, detail?: string): void {
    if (rows.length === 0) return;
    this.countDropped(rows.length, reason);
    this.gaps.record(rows, detail ? `${reason}: ${detail}` : reason);
  }

  private countDropped(rows: number, reason: DropReason): void {
    this.rowsDropped += rows;
    this.metrics?.rowsDropped.inc({ reason }, rows);
  }

  private async runShutdown(deadlineMs: number): Promise<void> {
    this.closed = true;
    let deadlineTimer: unknown = null;
    const deadline = new Promise<'deadline'>((resolve) => {
      deadlineTimer = this.clock.setTimeout(() => resolve('deadline'), deadlineMs);
    });
    const outcome = await Promise.race([this.drain().then(() => 'flushed' as const), deadline]);
    this.clock.clearTimeout(deadlineTimer);

    if (outcome === 'deadline') this.abandonUnsent(deadlineMs);
    this.stop();
    this.gaps.recordHeld();
    await this.gaps.settledWithin(SHUTDOWN_GAP_RECORDING_MS);
    this.logger.info(
      { outcome, rowsSent: this.rowsSent, rowsDropped: this.rowsDropped, gapsRecorded: this.gaps.recorded, rowsLost: this.gaps.lost },
      'mirror batch writer shut down',
    );
  }

  /** At the shutdown deadline: nothing unconfirmed may stay unaccounted for. */
  private abandonUnsent(deadlineMs: number): void {
    this.logger.warn(
      { queuedRows: this.queuedRows, deadlineMs },
      'mirror shutdown deadline reached; recording unsent rows as gaps',
    );
    for (const queue of this.tables.values()) {
      if (queue.inFlight) {
        // Its insert may still be reading the rows this releases. That is safe only because the writer is
        // closed: no row is appended again, so no released segment is reused under that read.
        this.settleAsGap(queue.inFlight, 'shutdown_deadline');
        queue.inFlight = null;
      }
      const unsent = queue.pending.take();
      if (unsent !== null) this.releaseIntoGaps(queue.table, unsent, 'shutdown_deadline');
      this.updateQueueGauges(queue);
    }
    this.resolveDrainWaiters();
  }

  /** No more sends or timers: pending sleeps and breaker waits end now so every loop can finish. */
  private stop(): void {
    this.stopped = true;
    for (const queue of this.tables.values()) this.clearIntervalTimer(queue);
    for (const sleep of [...this.sleeps]) {
      this.clock.clearTimeout(sleep.handle);
      sleep.wake();
    }
    this.gate.stop();
  }

  /** A wait on the writer's clock that stop() cuts short. */
  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const sleep = {
        handle: null as unknown,
        wake: () => {
          this.sleeps.delete(sleep);
          resolve();
        },
      };
      sleep.handle = this.clock.setTimeout(sleep.wake, ms);
      this.sleeps.add(sleep);
    });
  }

  private resolveDrainWaiters(): void {
    if (this.drainWaiters.length === 0) return;
    const remaining: DrainWaiter[] = [];
    for (const waiter of this.drainWaiters) {
      if (this.settledThrough(waiter.through)) waiter.resolve();
      else remaining.push(waiter);
    }
    this.drainWaiters = remaining;
  }

  /** True when every row up to `seq` is sent or a gap: queues are FIFO, so each table's first row tells. */
  private settledThrough(seq: number): boolean {
    for (const queue of this.tables.values()) {
      if (queue.pending.count > 0 && queue.pending.firstSeq <= seq) return false;
      if (queue.inFlight && !queue.inFlight.settled && queue.inFlight.rows.firstSeq <= seq) return false;
    }
    return true;
  }

  private updateQueueGauges(queue: TableQueue): void {
    if (!this.metrics) return;
    const inFlight = queue.inFlight && !queue.inFlight.settled ? queue.inFlight : null;
    this.metrics.queueRows.set({ table: queue.table }, queue.pending.count + (inFlight?.rows.count ?? 0));
    this.metrics.queueBytes.set({ table: queue.table }, queue.pending.bytes + (inFlight?.rows.bytes ?? 0));
  }

  /**
   * Rows past the bound become queue_full gaps, held and recorded together
   * (see GapLedger.hold). The first of an overflow episode is logged, not every write.
   */
  private turnAway(rows: GapRow[]): void {
    if (rows.length === 0) return;
    if (this.overflowRows === 0) {
      this.logger.warn(
        { queuedBytes: this.queuedBytes, queueMaxBytes: this.options.queueMaxBytes },
        'mirror queue is full; further rows are recorded as gaps until it drains',
      );
    }
    this.overflowRows += rows.length;
    this.countDropped(rows.length, 'queue_full');
    this.gaps.hold(rows, 'queue_full');
  }

  /** Rows left the queue: the next row gets a chance to fit, and an overflow episode ends. */
  private noteRoom(): void {
    this.queueFull = false;
    if (this.overflowRows === 0) return;
    this.logger.info({ rowsRecordedAsGaps: this.overflowRows }, 'mirror queue has room again');
    this.overflowRows = 0;
  }

  /** `publicReason`: what /health may show of it (see publicSendError); the description goes to logs and gap reasons. */
  private noteError(description: string, publicReason: string): void {
    this.lastError = description;
    this.lastPublicError = publicReason;
    this.lastErrorAt = this.clock.wallNow();
  }

  /** Runs work that must not throw into a timer or a caller; a failure is logged. */
  private guarded(message: string, work: () => void): void {
    try {
      work();
    } catch (error) {
      this.failSafe(error, message);
    }
  }

  /** Last line of defence: log the internal failure, then account for the rows involved; never rethrow. */
  private failSafe(error: unknown, message: string, recover?: () => void): void {
    try {
      this.noteError(describeSendError(error), 'an internal failure of the mirror (the log says which)');
      this.logger.error({ error: describeSendError(error) }, message);
      recover?.();
    } catch (secondError) {
      try {
        this.logger.error({ error: describeSendError(secondError) }, 'mirror could not account for rows after an internal failure');
      } catch {
        // The logger itself is failing; there is nowhere left to report to.
      }
    }
  }
}

function resolveOptions(settings: BatchWriterSettings): BatchWriterOptions {
  const options: BatchWriterOptions = {
    ...DEFAULT_BATCH_WRITER_OPTIONS,
    ...withoutUndefined(settings),
    breaker: { ...DEFAULT_BATCH_WRITER_OPTIONS.breaker, ...withoutUndefined(settings.breaker ?? {}) },
  };
  const positive: Array<[string, number]> = [
    ['flushRows', options.flushRows],
    ['flushBytes', options.flushBytes],
    ['flushIntervalMs', options.flushIntervalMs],
    ['queueMaxBytes', options.queueMaxBytes],
    ['maxAttempts', options.maxAttempts],
    ['baseBackoffMs', options.baseBackoffMs],
    ['maxBackoffMs', options.maxBackoffMs],
    ['breaker.failureThreshold', options.breaker.failureThreshold],
    ['breaker.openMs', options.breaker.openMs],
  ];
  for (const [name, value] of positive) {
    if (!Number.isFinite(value) || value <= 0) throw new Error(`BatchWriter option ${name} must be a positive number, got ${value}`);
  }
  if (!Number.isFinite(options.shutdownDeadlineMs) || options.shutdownDeadlineMs < 0) {
    throw new Error(`BatchWriter option shutdownDeadlineMs must be zero or more, got ${options.shutdownDeadlineMs}`);
  }
  return options;
}

function withoutUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
