import { ClickHouseError } from '@clickhouse/client';
import { Registry } from 'prom-client';
import { linesOfBody } from '../../../test/support/insert-body';
import { ManualClock, settle } from '../../../test/support/manual-clock';
import {
  InsertBody,
  BatchWriter,
  MirrorLogger,
  MirrorRow,
  MirrorSink,
  queuedRowBytes,
  SHUTDOWN_GAP_RECORDING_MS,
} from './batch-writer';
import { publicSendError } from './retry-policy';
import { Clock } from './clock';
import { gapEntryOf, GapRecorder, MirrorGap } from './gap-ledger';
import { BatchWriterSettings, DEFAULT_BATCH_WRITER_OPTIONS } from './batch-writer-options';
import { createMirrorMetrics, MirrorMetrics } from './mirror-metrics';
import { ROW_HEADER_BYTES } from './row-log';
import * as rowLog from './row-log';

type Behaviour = 'ok' | 'hang' | { reject: unknown } | { throwSync: unknown };

interface InsertCall {
  table: string;
  lines: string[];
  dedupToken: string;
  at: number;
}

/** Records every insert attempt; behaviours are consumed one per attempt, then `fallback` applies. */
class FakeSink implements MirrorSink {
  readonly attempts: InsertCall[] = [];
  readonly accepted: InsertCall[] = [];
  readonly behaviours: Behaviour[] = [];
  fallback: Behaviour = 'ok';
  pingResults: boolean[] = [];
  pings = 0;
  /** While set, ping() waits until answerHungPings() is called, like a server slow to answer. */
  hangPings = false;
  private hungPings: Array<(ok: boolean) => void> = [];
  private hung: Array<{ call: InsertCall; resolve: () => void; reject: (e: unknown) => void }> = [];

  constructor(private readonly clock: ManualClock) {}

  insert(table: string, body: InsertBody, dedupToken: string): Promise<void> {
    const call = { table, lines: linesOfBody(body), dedupToken, at: this.clock.now() };
    this.attempts.push(call);
    const behaviour = this.behaviours.shift() ?? this.fallback;
    if (behaviour === 'ok') {
      this.accepted.push(call);
      return Promise.resolve();
    }
    if (behaviour === 'hang') {
      return new Promise((resolve, reject) => this.hung.push({ call, resolve, reject }));
    }
    if ('throwSync' in behaviour) throw behaviour.throwSync;
    return Promise.reject(behaviour.reject);
  }

  async ping(): Promise<boolean> {
    this.pings += 1;
    if (this.hangPings) return new Promise((resolve) => this.hungPings.push(resolve));
    return this.pingResults.shift() ?? true;
  }

  answerHungPings(ok: boolean): void {
    const hung = this.hungPings;
    this.hungPings = [];
    for (const answer of hung) answer(ok);
  }

  /** Answer every hung insert with success. */
  releaseHung(): void {
    const hung = this.hung;
    this.hung = [];
    for (const { call, resolve } of hung) {
      this.accepted.push(call);
      resolve();
    }
  }

  /** Answer every hung insert with this error. */
  failHung(error: unknown): void {
    const hung = this.hung;
    this.hung = [];
    for (const { reject } of hung) reject(error);
  }

  sentLines(): string[] {
    return this.accepted.flatMap((call) => call.lines);
  }
}

class FakeGapRecorder implements GapRecorder {
  readonly recorded: MirrorGap[] = [];
  calls = 0;
  /** The clock's time at each call. */
  readonly callTimes: number[] = [];
  failures = 0;
  /** Gap records each gap makes (Postgres splits a gap of more than 10,000 keys). */
  recordsPerGap = 1;
  /** While set, record() waits until release() is called, like a slow Postgres. */
  held: Array<() => void> | null = null;

  constructor(private readonly clock: Pick<Clock, 'now'> = { now: () => Date.now() }) {}

  async record(gaps: MirrorGap[]): Promise<number> {
    this.calls += 1;
    this.callTimes.push(this.clock.now());
    if (this.held) await new Promise<void>((resolve) => this.held!.push(resolve));
    if (this.failures > 0) {
      this.failures -= 1;
      throw new Error('connect ECONNREFUSED 127.0.0.1:5432');
    }
    this.recorded.push(...gaps);
    return gaps.length * this.recordsPerGap;
  }

  release(): void {
    const held = this.held ?? [];
    this.held = null;
    for (const resolve of held) resolve();
  }

  rows(): number {
    return this.recorded.reduce((sum, gap) => sum + gap.rowCount, 0);
  }
}

class FakeLogger implements MirrorLogger {
  readonly entries: Array<{ level: string; obj: object; msg: string }> = [];
  info(obj: object, msg: string): void {
    this.entries.push({ level: 'info', obj, msg });
  }
  warn(obj: object, msg: string): void {
    this.entries.push({ level: 'warn', obj, msg });
  }
  error(obj: object, msg: string): void {
    this.entries.push({ level: 'error', obj, msg });
  }
  errors(): Array<{ obj: object; msg: string }> {
    return this.entries.filter((entry) => entry.level === 'error');
  }
}

const PROJECT_A = '11111111-1111-4111-8111-111111111111';
const PROJECT_B = '22222222-2222-4222-8222-222222222222';

/** A span row whose JSONEachRow line is exactly `bytes` long and names the row. */
function spanRow(n: number, options: { bytes?: number; projectId?: string; table?: string } = {}): MirrorRow {
  const projectId = options.projectId ?? PROJECT_A;
  const bytes = options.bytes ?? 10;
  const label = `r${n}`;
  return {
    table: options.table ?? 'spans',
    entity: options.table ?? 'spans',
    projectId,
    key: [projectId, 'a'.repeat(32), n.toString(16).padStart(16, '0')],
    createdAt: `2026-03-01T12:00:00.${String(n).padStart(6, '0')}Z`,
    tombstoneFields: [`2026-03-01T11:59:59.${String(n).padStart(6, '0')}Z`],
    line: label.padEnd(bytes, '.'),
  };
}

function rows(from: number, count: number, options: Parameters<typeof spanRow>[1] = {}): MirrorRow[] {
  return Array.from({ length: count }, (_, i) => spanRow(from + i, options));
}

/** What one spanRow with a 10-byte line costs the queue's bound (every spanRow's gap fields have the same length). */
const ROW = queuedRowBytes(spanRow(1));

function networkError(code = 'ECONNRESET'): Error {
  return Object.assign(new Error(`read ${code}`), { code });
}

function clickHouseError(code: string, type: string): ClickHouseError {
  return new ClickHouseError({ code, type, message: `${type} happened. ` });
}

interface Sample {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

async function samples(registry: Registry, name: string): Promise<Sample[]> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  if (!metric) throw new Error(`metric ${name} not registered`);
  return metric.values as unknown as Sample[];
}

/** A counter's or gauge's value for the labels given; 0 when the series has not been touched. */
async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const match = (await samples(registry, name)).find((sample) =>
    Object.entries(labels).every(([key, value]) => String(sample.labels[key]) === value),
  );
  return match?.value ?? 0;
}

/** A histogram's _count or _sum. */
async function histogramValue(registry: Registry, name: string, part: 'count' | 'sum'): Promise<number> {
  const match = (await samples(registry, name)).find((sample) => sample.metricName === `${name}_${part}`);
  return match?.value ?? 0;
}

/** Small limits so each trigger can be reached with a handful of rows. */
const TEST_SETTINGS: BatchWriterSettings = {
  flushRows: 100,
  flushBytes: 10_000,
  flushIntervalMs: 1000,
  queueMaxBytes: 100_000,
  shutdownDeadlineMs: 10_000,
  maxAttempts: 5,
  baseBackoffMs: 200,
  maxBackoffMs: 10_000,
  breaker: { failureThreshold: 5, openMs: 5000 },
};

function setup(settings: BatchWriterSettings = {}, random: () => number = () => 0.5) {
  const clock = new ManualClock();
  const sink = new FakeSink(clock);
  const gaps = new FakeGapRecorder(clock);
  const logger = new FakeLogger();
  const registry = new Registry();
  const metrics: MirrorMetrics = createMirrorMetrics(registry);
  const writer = new BatchWriter(
    { ...TEST_SETTINGS, ...settings, breaker: { ...TEST_SETTINGS.breaker!, ...settings.breaker } },
    { sink, gapRecorder: gaps, logger, clock, metrics, random },
  );
  return { clock, sink, gaps, logger, registry, writer };
}

describe('BatchWriter', () => {
  describe('when batches are sent', () => {
    it('flushes as soon as a table holds flushRows rows', async () => {
      const { sink, writer } = setup({ flushRows: 3 });
      writer.write(rows(1, 2));
      await settle();
      expect(sink.attempts).toHaveLength(0);

      writer.write(rows(3, 1));
      await settle();
      expect(sink.attempts).toHaveLength(1);
      expect(sink.attempts[0].table).toBe('spans');
      expect(sink.attempts[0].lines).toEqual(rows(1, 3).map((r) => r.line));
    });

    it('flushes when flushBytes is reached, cutting the batch at the byte limit', async () => {
      const { sink, writer, clock } = setup({ flushBytes: 25 });
      writer.write(rows(1, 2, { bytes: 10 }));
      await settle();
      expect(sink.attempts).toHaveLength(0);

      writer.write(rows(3, 1, { bytes: 10 }));
      await settle();
      expect(sink.attempts).toHaveLength(1);
      // 30 bytes queued, 25 allowed per batch: two rows go, the third waits for the interval.
      expect(sink.attempts[0].lines).toHaveLength(2);
      expect(writer.stats().queuedRows).toBe(1);

      await clock.advance(1000);
      expect(sink.attempts).toHaveLength(2);
      expect(sink.attempts[1].lines).toEqual([spanRow(3).line]);
    });

    it('sends a single row larger than flushBytes alone rather than holding it forever', async () => {
      const { sink, writer } = setup({ flushBytes: 20 });
      writer.write([spanRow(1, { bytes: 50 }), spanRow(2, { bytes: 5 })]);
      await settle();
      expect(sink.attempts.map((a) => a.lines.length)).toEqual([1]);
      expect(sink.attempts[0].lines[0]).toHaveLength(50);
    });

    it('waits flushIntervalMs from the oldest row, not the newest, before an interval flush', async () => {
      const { sink, writer, clock } = setup();
      writer.write(rows(1, 1));
      await clock.advance(600);
      writer.write(rows(2, 1));
      await clock.advance(399);
      expect(sink.attempts).toHaveLength(0);

      await clock.advance(1);
      expect(sink.attempts).toHaveLength(1);
      expect(sink.attempts[0].lines).toEqual([spanRow(1).line, spanRow(2).line]);
    });

    it('counts the interval and the lag from when a producer accepted the rows, when it says', async () => {
      const { sink, writer, clock } = setup();
      writer.write(rows(1, 1), clock.now() - 900);
      expect(writer.stats().lagMs).toBe(900);
      await clock.advance(99);
      expect(sink.attempts).toHaveLength(0);
      await clock.advance(1);
      expect(sink.attempts).toHaveLength(1);
    });

    it('keeps one insert in flight per table; rows arriving meanwhile go in the next batches, cut at flushRows', async () => {
      const { sink, writer } = setup({ flushRows: 2 });
      sink.behaviours.push('hang');
      writer.write(rows(1, 2));
      await settle();
      writer.write(rows(3, 5));
      await settle();
      expect(sink.attempts).toHaveLength(1);
      expect(writer.stats().inFlightBatches).toBe(1);

      // Another table is not held up by the stuck one.
      writer.write(rows(100, 2, { table: 'nodes' }));
      await settle();
      expect(sink.attempts.map((a) => a.table)).toEqual(['spans', 'nodes']);

      sink.releaseHung();
      await settle();
      const spanBatches = sink.accepted.filter((a) => a.table === 'spans').map((a) => a.lines.length);
      expect(spanBatches).toEqual([2, 2, 2]);
      expect(writer.stats().queuedRows).toBe(1);
    });

    it('gives each batch its own deduplication token', async () => {
      const { sink, writer } = setup({ flushRows: 1 });
      writer.write(rows(1, 2));
      await settle();
      await settle();
      const tokens = sink.attempts.map((a) => a.dedupToken);
      expect(tokens).toHaveLength(2);
      expect(tokens[0]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(tokens[0]).not.toBe(tokens[1]);
    });

    it('does not call the sink inside write()', () => {
      const { sink, writer } = setup({ flushRows: 1 });
      writer.write(rows(1, 1));
      expect(sink.attempts).toHaveLength(0);
    });
  });

  describe('when ClickHouse fails', () => {
    it('retries a transient failure with the same dedup token until it succeeds', async () => {
      const { sink, writer, clock, gaps } = setup({ flushRows: 2 });
      sink.behaviours.push({ reject: networkError('ECONNRESET') }, { reject: clickHouseError('252', 'TOO_MANY_PARTS') });
      writer.write(rows(1, 2));
      await clock.advance(60_000);

      expect(sink.attempts).toHaveLength(3);
      expect(new Set(sink.attempts.map((a) => a.dedupToken)).size).toBe(1);
      expect(sink.attempts.every((a) => a.lines.length === 2)).toBe(true);
      expect(writer.stats().rowsSent).toBe(2);
      expect(gaps.recorded).toHaveLength(0);
    });

    it('backs off exponentially with full jitter, capped at maxBackoffMs', async () => {
      const draws = [0.5, 0.25, 0.999, 0.999, 0.999];
      const { sink, writer, clock } = setup(
        { flushRows: 1, maxAttempts: 6, baseBackoffMs: 100, maxBackoffMs: 1000, breaker: { failureThreshold: 100, openMs: 5000 } },
        () => draws.shift() ?? 0,
      );
      sink.fallback = { reject: networkError('ETIMEDOUT') };
      writer.write(rows(1, 1));
      await clock.advance(60_000);

      const waits = sink.attempts.slice(1).map((a, i) => a.at - sink.attempts[i].at);
      // Ceilings 100, 200, 400, 800, 1000 (capped); each wait is the draw times its ceiling.
      expect(waits).toEqual([50, 50, 399, 799, 999]);
    });

    it('records a batch as a gap without retrying when ClickHouse rejects it permanently', async () => {
      // A threshold of 1: a rejection is an answer from a live server and must not open the breaker.
      const { sink, writer, clock, gaps, registry } = setup({ flushRows: 3, breaker: { failureThreshold: 1, openMs: 5000 } });
      sink.behaviours.push({ reject: clickHouseError('60', 'UNKNOWN_TABLE') });
      writer.write(rows(1, 3));
      await clock.advance(60_000);

      expect(sink.attempts).toHaveLength(1);
      expect(gaps.recorded).toHaveLength(1);
      expect(gaps.recorded[0].rowCount).toBe(3);
      expect(gaps.recorded[0].reason).toMatch(/^send_failed: ClickHouse code 60 UNKNOWN_TABLE/);
      expect(await metricValue(registry, 'mirror_send_failures_total', { kind: 'permanent' })).toBe(1);
      expect(await metricValue(registry, 'mirror_rows_dropped_total', { reason: 'send_failed' })).toBe(3);
      expect(writer.stats().breaker).toBe('closed');
    });

    // The rows' keys are read back from the row log for the gap record; a fault there left the rows
    // neither in a gap record nor counted, and (before) still counted against the queue's bound.
    it('counts a batch as lost, and frees its place in the queue, when its rows cannot be read back for a gap record', async () => {
      const { sink, writer, clock, gaps, registry, logger } = setup({ flushRows: 3 });
      sink.behaviours.push({ reject: clickHouseError('60', 'UNKNOWN_TABLE') });
      const unreadable = jest.spyOn(rowLog, 'gapRowsOf').mockImplementationOnce(() => {
        throw new Error('a row header that does not parse');
      });
      try {
        writer.write(rows(1, 3));
        await clock.advance(1000);
      } finally {
        unreadable.mockRestore();
      }
      expect(gaps.recorded).toEqual([]);
      expect(writer.stats()).toMatchObject({ queuedRows: 0, rowsDropped: 3, rowsLost: 3 });
      expect(await metricValue(registry, 'mirror_rows_lost_total')).toBe(3);
      const lost = logger.errors().find((entry) => /^mirror rows could not be read back for a gap record/.test(entry.msg));
      // When they were queued, for verify: from the rows' headers, on the wall clock.
      expect(lost?.obj).toMatchObject({ table: 'spans', lostRows: 3, queuedFrom: expect.stringMatching(/^\d{4}-\d\d-\d\dT/), queuedTo: expect.stringMatching(/^\d{4}-/) });
      writer.write(rows(4, 3));
      await clock.advance(1000);
      expect(sink.sentLines()).toEqual(rows(4, 3).map((r) => r.line));
    });

    it('records a batch as a gap once transient failures exhaust maxAttempts', async () => {
      const { sink, writer, clock, gaps } = setup({ flushRows: 2, maxAttempts: 3, breaker: { failureThreshold: 100, openMs: 5000 } });
      sink.fallback = { reject: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:8123'), { code: 'ECONNREFUSED' }) };
      writer.write(rows(1, 2));
      await clock.advance(60_000);

      expect(sink.attempts).toHaveLength(3);
      expect(gaps.recorded).toHaveLength(1);
      expect(gaps.recorded[0].reason).toBe('send_failed: connect ECONNREFUSED 127.0.0.1:8123');
      expect(writer.stats()).toMatchObject({ rowsDropped: 2, rowsSent: 0, queuedRows: 0, lastError: 'connect ECONNREFUSED 127.0.0.1:8123' });
    });

    it('never lets a failure reach the caller, even a sink that throws synchronously or a malformed row', async () => {
      const { sink, writer, clock, gaps, logger } = setup({ flushRows: 1, maxAttempts: 2 });
      sink.fallback = { throwSync: new Error('sink exploded') };

      expect(() => writer.write(rows(1, 1))).not.toThrow();
      expect(() => writer.write([{ ...spanRow(2), line: undefined as unknown as string }])).not.toThrow();
      expect(() => writer.write(null as unknown as MirrorRow[])).not.toThrow();
      await clock.advance(60_000);

      expect(sink.attempts.length).toBe(2);
      expect(gaps.recorded.map((g) => g.reason)).toEqual(
        expect.arrayContaining([expect.stringMatching(/^send_failed: sink exploded/), expect.stringMatching(/^internal_error/)]),
      );
      expect(gaps.rows()).toBe(2);
      expect(logger.errors().some((e) => e.msg.includes('mirror write failed internally'))).toBe(true);
    });
  });

  it("logs and sends outside the caller's async context: a request that wrote a row is not named in the mirror's lines", async () => {
    // The API's logger adds the request of the async context it is called in (nestjs-pino): a failure of
    // a batch several requests filled read as one request's own.
    const { AsyncLocalStorage } = await import('node:async_hooks');
    const request = new AsyncLocalStorage<string>();
    const { sink, writer, clock } = setup({ flushRows: 1 });
    const seen: Array<string | undefined> = [];
    const logger = (writer as unknown as { logger: MirrorLogger }).logger;
    const warn = logger.warn.bind(logger);
    logger.warn = (obj, msg) => {
      seen.push(request.getStore());
      warn(obj, msg);
    };
    // The sink sees the context too: the client's own logs and spans would otherwise carry the request.
    const insert = sink.insert.bind(sink);
    const inserted: Array<string | undefined> = [];
    sink.insert = (...args) => {
      inserted.push(request.getStore());
      return insert(...args);
    };
    sink.behaviours.push({ reject: networkError() });
    request.run('request 4343', () => writer.write(rows(1, 1)));
    await clock.advance(1000);
    expect(sink.accepted).toHaveLength(1);
    expect(seen).toEqual([undefined]);
    expect(inserted).toEqual([undefined, undefined]);
  });

  describe('circuit breaker', () => {
    /** Batches of two rows, three quick attempts each, and a breaker open for 1 s after `failureThreshold` failures. */
    const heldByBreaker = (failureThreshold: number): BatchWriterSettings => ({
      flushRows: 2,
      maxAttempts: 3,
      baseBackoffMs: 10,
      maxBackoffMs: 10,
      breaker: { failureThreshold, openMs: 1000 },
    });

    it('opens after failureThreshold failed attempts, holds rows while open, and closes after a successful probe', async () => {
      const { sink, writer, clock, gaps, registry } = setup({
        flushRows: 2,
        maxAttempts: 100,
        baseBackoffMs: 10,
        maxBackoffMs: 10,
        breaker: { failureThreshold: 3, openMs: 5000 },
      });
      sink.behaviours.push(...Array.from({ length: 3 }, () => ({ reject: networkError() })));
      writer.write(rows(1, 2));
      await clock.advance(100);

      expect(sink.attempts).toHaveLength(3);
      expect(writer.stats().breaker).toBe('open');
      expect(await metricValue(registry, 'mirror_breaker_state')).toBe(2);

      // While open: no inserts, no pings, and new rows queue instead of being dropped,
      // still merging into full batches even after their interval has passed.
      writer.write(rows(3, 2));
      writer.write([spanRow(10, { table: 'nodes' })]);
      await clock.advance(2000);
      writer.write([spanRow(11, { table: 'nodes' })]);
      await clock.advance(2800);
      expect(sink.attempts).toHaveLength(3);
      expect(sink.pings).toBe(0);
      expect(writer.stats().queuedRows).toBe(6);

      await clock.advance(200);
      expect(sink.pings).toBe(1);
      expect(writer.stats().breaker).toBe('closed');
      expect(await metricValue(registry, 'mirror_breaker_state')).toBe(0);
      await clock.advance(100);
      expect(sink.accepted.filter((a) => a.table === 'spans').flatMap((a) => a.lines)).toEqual(rows(1, 4).map((r) => r.line));
      expect(sink.accepted.filter((a) => a.table === 'nodes').map((a) => a.lines.length)).toEqual([2]);
      expect(gaps.recorded).toHaveLength(0);
    });

    it('holds a batch whose attempts ran out as the breaker opened, and sends it once ClickHouse is back: an outage is no gap', async () => {
      // The defaults' shape: the batch's last attempt is the failure that opens the breaker.
      const { sink, writer, clock, gaps, logger } = setup(heldByBreaker(3));
      sink.fallback = { reject: networkError('ECONNREFUSED') };
      sink.pingResults = [false, false];
      writer.write(rows(1, 2));
      await clock.advance(100);
      expect(sink.attempts).toHaveLength(3);
      expect(writer.stats()).toMatchObject({ breaker: 'open', queuedRows: 2, rowsDropped: 0 });

      // Down for two more open periods: pings only, no uploads, and still no gap.
      await clock.advance(2000);
      expect(sink.pings).toBe(2);
      expect(sink.attempts).toHaveLength(3);
      expect(writer.stats()).toMatchObject({ breaker: 'open', queuedRows: 2, inFlightBatches: 1 });

      sink.fallback = 'ok';
      await clock.advance(1000);
      expect(sink.accepted.map((call) => call.dedupToken)).toEqual([sink.attempts[0].dedupToken]);
      expect(sink.sentLines()).toEqual(rows(1, 2).map((r) => r.line));
      expect(writer.stats()).toMatchObject({ breaker: 'closed', queuedRows: 0, rowsSent: 2, rowsDropped: 0 });
      expect(gaps.recorded).toHaveLength(0);
      expect(logger.errors()).toHaveLength(0);
    });

    it('gives a batch its full attempts after the outage, however many it had used when the breaker opened', async () => {
      // The breaker opens on the batch's second failure, one short of its attempts.
      const { sink, writer, clock, gaps } = setup(heldByBreaker(2));
      // Pings answer from then on, and the server takes the batch on its third attempt after the outage.
      sink.behaviours.push(...Array(4).fill({ reject: networkError('ETIMEDOUT') }));
      writer.write(rows(1, 2));
      await clock.advance(100);
      expect(sink.attempts).toHaveLength(2);
      expect(writer.stats().breaker).toBe('open');

      await clock.advance(5000);
      expect(sink.attempts).toHaveLength(5);
      expect(sink.sentLines()).toEqual(rows(1, 2).map((r) => r.line));
      expect(gaps.recorded).toHaveLength(0);
      expect(writer.stats()).toMatchObject({ breaker: 'closed', rowsSent: 2, rowsDropped: 0 });
    });

    // The reset was only for the batch whose own failure opened the breaker: a batch of the other table, waiting
    // out its backoff then, kept the attempts it had used, and one more failure after the outage made it a gap.
    it('gives a batch its full attempts after the outage when the other table\'s failure opened the breaker while it waited to retry', async () => {
      const { sink, writer, clock, gaps } = setup({ ...heldByBreaker(3), baseBackoffMs: 50, maxBackoffMs: 50 });
      // nodes fails twice (one attempt short of its three), then spans fails once and the breaker opens.
      // Once the pings answer, spans (the first waiting) probes and goes through; nodes's next insert fails once more.
      const refused = { reject: networkError('ECONNREFUSED') };
      sink.behaviours.push(refused, refused, refused, 'ok', refused);
      writer.write(rows(1, 2, { table: 'nodes' }));
      for (let i = 0; i < 10 && sink.attempts.length < 2; i++) await clock.advance(10);
      expect(sink.attempts.map((call) => call.table)).toEqual(['nodes', 'nodes']);
      writer.write(rows(3, 2));
      await clock.advance(1);
      expect(sink.attempts.map((call) => call.table)).toEqual(['nodes', 'nodes', 'spans']);
      expect(writer.stats().breaker).toBe('open');

      await clock.advance(5000);
      expect(sink.attempts.map((call) => call.table)).toEqual(['nodes', 'nodes', 'spans', 'spans', 'nodes', 'nodes']);
      expect(gaps.recorded).toEqual([]);
      expect(sink.sentLines().sort()).toEqual([...rows(1, 2, { table: 'nodes' }), ...rows(3, 2)].map((r) => r.line).sort());
      expect(writer.stats()).toMatchObject({ breaker: 'closed', rowsSent: 4, rowsDropped: 0 });
    });

    // Each failed probe reopens the breaker; counted as a new outage, it gave the other table's waiting batch
    // fresh attempts, and two tables probing in turn held both batches (and the queue behind them) for ever.
    it('records both tables\' held batches as gaps when pings answer and every insert fails, probing in turn', async () => {
      const { sink, writer, clock, gaps } = setup(heldByBreaker(3));
      sink.fallback = { reject: networkError('ETIMEDOUT') };
      writer.write(rows(1, 2, { table: 'nodes' }));
      writer.write(rows(3, 2));
      for (let i = 0; i < 60 && gaps.recorded.length < 2; i++) await clock.advance(1000);
      expect(gaps.recorded.map((gap) => [gap.entity, gap.rowCount]).sort()).toEqual([['nodes', 2], ['spans', 2]]);
      // Each had its attempts after the outage began, and a few more: not one per probe for ever.
      expect(sink.attempts.length).toBeLessThanOrEqual(4 * 3);
    });

    it('records a held batch as a gap once it has failed maxAttempts more times after probes ClickHouse answered', async () => {
      const { sink, writer, clock, gaps } = setup(heldByBreaker(3));
      // Pings answer, inserts of this batch time out: the server is up, and the batch must not hold the queue for ever.
      sink.fallback = { reject: networkError('ETIMEDOUT') };
      writer.write(rows(1, 2));
      await clock.advance(100);
      expect(writer.stats().breaker).toBe('open');

      await clock.advance(2050);
      expect(sink.pings).toBe(2);
      expect(sink.attempts).toHaveLength(5);
      expect(gaps.recorded).toHaveLength(0);

      await clock.advance(1000);
      expect(sink.pings).toBe(3);
      expect(sink.attempts).toHaveLength(6);
      expect(gaps.recorded).toHaveLength(1);
      expect(gaps.recorded[0]).toMatchObject({ rowCount: 2, reason: expect.stringMatching(/^send_failed: /) });

      // The rows behind it go on as usual once the server takes inserts again.
      sink.fallback = 'ok';
      writer.write(rows(3, 2));
      await clock.advance(2000);
      expect(sink.sentLines()).toEqual(rows(3, 2).map((r) => r.line));
    });

    /** One row whose first two attempts fail: the breaker (2 failures, open 1 s) opens holding it. */
    async function openedOnOneRow(options: { pingResults?: boolean[]; timersEarlyMs?: number } = {}) {
      const opened = setup({
        flushRows: 1,
        maxAttempts: 100,
        baseBackoffMs: 10,
        maxBackoffMs: 10,
        breaker: { failureThreshold: 2, openMs: 1000 },
      });
      opened.clock.earlyMs = options.timersEarlyMs ?? 0;
      opened.sink.pingResults = options.pingResults ?? [];
      opened.sink.behaviours.push({ reject: networkError() }, { reject: networkError() });
      opened.writer.write(rows(1, 1));
      await opened.clock.advance(50);
      expect(opened.writer.stats().breaker).toBe('open');
      return opened;
    }

    it('re-opens when the half-open probe fails, and probes again after openMs', async () => {
      const { sink, writer, clock } = await openedOnOneRow({ pingResults: [false] });

      await clock.advance(1000);
      expect(sink.pings).toBe(1);
      expect(writer.stats().breaker).toBe('open');
      expect(sink.attempts).toHaveLength(2);

      await clock.advance(1000);
      expect(sink.pings).toBe(2);
      expect(writer.stats().breaker).toBe('closed');
      expect(sink.accepted).toHaveLength(1);
    });

    // The gate waits for the probe's outcome; a fault of ours that skipped telling it stopped the mirror for good.
    it('goes on probing after a fault of ours during the probe, which turns that batch into a gap', async () => {
      const { sink, writer, clock, gaps } = await openedOnOneRow();
      const hostile = networkError();
      Object.defineProperty(hostile, 'code', { get: () => { throw new Error('a getter that throws'); } });
      sink.behaviours.push({ reject: hostile });
      await clock.advance(1000);
      expect(sink.attempts).toHaveLength(3);
      expect(gaps.recorded).toEqual([expect.objectContaining({ rowCount: 1, reason: expect.stringMatching(/^internal_error/) })]);

      writer.write(rows(2, 1));
      await clock.advance(2000);
      expect(sink.sentLines()).toEqual(rows(2, 1).map((r) => r.line));
      expect(writer.stats().breaker).toBe('closed');
    });

    // publicSendError followed `cause` until the stack ran out (RangeError), inside the probe.
    it('names an error whose cause chain comes back on itself, and goes on', async () => {
      const { sink, writer, clock, gaps } = await openedOnOneRow();
      const [a, b] = [networkError('ETIMEDOUT'), new Error('wrapped')];
      Object.assign(a, { cause: b });
      Object.assign(b, { cause: a });
      sink.behaviours.push({ reject: b });
      await clock.advance(1000);
      expect(writer.stats().breaker).toBe('open');
      await clock.advance(1100);
      expect(sink.sentLines()).toEqual(rows(1, 1).map((r) => r.line));
      expect(gaps.recorded).toEqual([]);
      expect(publicSendError(b)).toBe('no answer (ETIMEDOUT)');
    });

    it('keeps one probe out: an insert sent before the breaker opened, failing while the probe is out, starts no second probe', async () => {
      const { sink, writer, clock } = setup({ flushRows: 1, maxAttempts: 100, baseBackoffMs: 10, maxBackoffMs: 10, breaker: { failureThreshold: 1, openMs: 1000 } });
      // A nodes insert goes out while the breaker is closed and hangs; a spans insert fails and opens it.
      sink.behaviours.push('hang', { reject: networkError() });
      writer.write([spanRow(1, { table: 'nodes' })]);
      await settle();
      writer.write(rows(2, 1));
      await clock.advance(50);
      expect(writer.stats().breaker).toBe('open');

      // The spans batch's probe: its ping does not answer yet.
      sink.hangPings = true;
      await clock.advance(1000);
      expect(sink.pings).toBe(1);

      // The nodes insert fails now: the breaker opens again, but the probe is still out.
      sink.failHung(networkError());
      await clock.advance(2500);
      expect(sink.pings).toBe(1);

      // Once the probe's ping answers, both batches go.
      sink.hangPings = false;
      sink.answerHungPings(true);
      await clock.advance(100);
      expect(writer.stats().breaker).toBe('closed');
      expect(sink.sentLines().sort()).toEqual([spanRow(1, { table: 'nodes' }).line, spanRow(2).line].sort());
    });

    it('logs an outage once when it opens, at most once a minute while probes fail, and once when it closes', async () => {
      const { sink, writer, clock, logger } = await openedOnOneRow({ pingResults: Array.from({ length: 130 }, () => false) });
      const breakerLines = () => logger.entries.filter((e) => e.msg.startsWith('ClickHouse circuit breaker'));

      await clock.advance(130_000);
      expect(writer.stats().breaker).toBe('open');
      expect(breakerLines().map((e) => e.msg)).toEqual([
        'ClickHouse circuit breaker opened',
        'ClickHouse circuit breaker still open: probes keep failing',
        'ClickHouse circuit breaker still open: probes keep failing',
      ]);
      expect(breakerLines()[1].obj).toMatchObject({ openForMs: 60_000, failedProbes: 60, queuedRows: 1 });

      await clock.advance(1000);
      expect(writer.stats().breaker).toBe('closed');
      const closed = breakerLines().at(-1)!;
      expect(closed).toMatchObject({ level: 'info', msg: 'ClickHouse circuit breaker closed: inserts go through again', obj: { openForMs: 131_000, failedProbes: 130 } });

      // The next outage is a new one, logged as such.
      sink.fallback = { reject: networkError() };
      writer.write(rows(2, 1));
      await clock.advance(50);
      expect(breakerLines().slice(4).map((e) => e.msg)).toEqual(['ClickHouse circuit breaker opened']);
    });

    it('probes even when its timer fires a moment before the clock says the open period is over', async () => {
      // Woken while the breaker still reads open, the senders would wait again with no timer left to wake
      // them, and the mirror would stop sending for good (seen once in the ClickHouse outage e2e spec).
      const { sink, writer, clock } = await openedOnOneRow({ timersEarlyMs: 1 });

      await clock.advance(1000);
      expect(sink.pings).toBe(1);
      expect(writer.stats().breaker).toBe('closed');
      expect(sink.accepted.flatMap((call) => call.lines)).toEqual(rows(1, 1).map((r) => r.line));
      expect(writer.stats().inFlightBatches).toBe(0);
    });
  });

  describe('memory bound', () => {
    it('turns rows beyond queueMaxBytes into gap records, and every written row is either sent or in a gap', async () => {
      const { sink, writer, gaps, registry, logger, clock } = setup({ queueMaxBytes: 4 * ROW });
      const written = [
        spanRow(1, { projectId: PROJECT_A }),
        spanRow(2, { projectId: PROJECT_B }),
        spanRow(3, { projectId: PROJECT_A }),
        spanRow(4, { projectId: PROJECT_B }),
        // Out of created_at order, as concurrent requests deliver them.
        spanRow(7, { projectId: PROJECT_A }),
        spanRow(6, { projectId: PROJECT_B }),
        spanRow(5, { projectId: PROJECT_A }),
      ];
      writer.write(written);
      await settle();

      expect(writer.stats()).toMatchObject({ queuedRows: 4, queuedBytes: 4 * ROW, rowsDropped: 3 });
      // Overflow gaps are recorded once per flush interval (see 'records the gaps of rows turned away ... together').
      await clock.advance(TEST_SETTINGS.flushIntervalMs!);
      const byProject = new Map(gaps.recorded.map((g) => [g.projectId, g]));
      expect(byProject.get(PROJECT_A)).toEqual({
        entity: 'spans',
        projectId: PROJECT_A,
        keys: [gapEntryOf(spanRow(7)), gapEntryOf(spanRow(5))],
        minCreatedAt: '2026-03-01T12:00:00.000005Z',
        maxCreatedAt: '2026-03-01T12:00:00.000007Z',
        rowCount: 2,
        reason: 'queue_full',
      });
      expect(byProject.get(PROJECT_B)).toMatchObject({ keys: [gapEntryOf(spanRow(6, { projectId: PROJECT_B }))], rowCount: 1 });
      expect(await metricValue(registry, 'mirror_rows_dropped_total', { reason: 'queue_full' })).toBe(3);
      expect(logger.entries.filter((e) => e.msg.includes('queue is full'))).toHaveLength(1);

      await writer.drain();
      const sentRows = sink.sentLines().map((line) => Number(line.replace(/\.+$/, '').slice(1)));
      const gappedRows = gaps.recorded.flatMap((g) => g.keys.map((key) => parseInt(key[2], 16)));
      expect(sentRows).toEqual([1, 2, 3, 4]);
      expect([...sentRows, ...gappedRows].sort()).toEqual([1, 2, 3, 4, 5, 6, 7]);
    });

    it('once a row does not fit, turns every row away, even one that would, until rows leave the queue', async () => {
      // Rows 1 and 2 take 2 ROW; row 3 (10 bytes more) does not fit in the third, row 4 (5 bytes less) would.
      const { sink, writer, gaps, logger } = setup({ queueMaxBytes: 3 * ROW, flushRows: 2 });
      sink.behaviours.push('hang');
      writer.write(rows(1, 2));
      await settle();
      expect(writer.full).toBe(false);
      writer.write([spanRow(3, { bytes: 20 }), spanRow(4, { bytes: 5 })]);
      writer.write([spanRow(5, { bytes: 5 })]);
      expect(writer.full).toBe(true);
      expect(writer.stats()).toMatchObject({ queuedRows: 2, queuedBytes: 2 * ROW, rowsDropped: 3 });

      sink.releaseHung();
      await settle();
      expect(writer.full).toBe(false);
      writer.write([spanRow(6, { bytes: 5 })]);
      expect(writer.stats()).toMatchObject({ queuedRows: 1, queuedBytes: ROW - 5, rowsDropped: 3 });
      await writer.drain();
      expect(gaps.recorded.flatMap((g) => g.keys)).toEqual([3, 4, 5].map((n) => gapEntryOf(spanRow(n))));
      expect(logger.entries.filter((e) => e.msg.includes('queue is full'))).toHaveLength(1);
      expect(logger.entries.filter((e) => e.msg.includes('has room again'))).toEqual([expect.objectContaining({ obj: { rowsRecordedAsGaps: 3 } })]);
    });

    it('turns away a row bigger than the whole bound alone, and goes on queueing the rows after it', async () => {
      const { sink, writer, gaps, logger } = setup({ queueMaxBytes: 3 * ROW });
      writer.write([spanRow(1, { bytes: 5 * ROW }), ...rows(2, 2)]);
      expect(writer.full).toBe(false);
      writer.write(rows(4, 1));
      await writer.drain();
      expect(sink.sentLines().map((line) => line.replace(/\.+$/, ''))).toEqual(['r2', 'r3', 'r4']);
      expect(gaps.recorded).toEqual([expect.objectContaining({ keys: [gapEntryOf(spanRow(1))], reason: 'queue_full' })]);
      expect(logger.entries.filter((e) => e.msg.includes('larger than the whole queue bound'))).toHaveLength(1);
    });

    it('records rows a producer hands over without lines (writeOverflow) as queue_full gaps, never queueing them', async () => {
      const { writer, gaps, registry } = setup({ queueMaxBytes: ROW });
      writer.write(rows(1, 2));
      const { line: _line, ...keysOnly } = spanRow(3);
      writer.writeOverflow([keysOnly]);
      await writer.drain();
      expect(writer.stats()).toMatchObject({ rowsSent: 1, rowsDropped: 2 });
      expect(gaps.recorded.flatMap((g) => g.keys)).toEqual([gapEntryOf(spanRow(2)), gapEntryOf(spanRow(3))]);
      expect(gaps.recorded.every((g) => g.reason === 'queue_full')).toBe(true);
      expect(await metricValue(registry, 'mirror_rows_dropped_total', { reason: 'queue_full' })).toBe(2);

      await writer.shutdown();
      writer.writeOverflow([keysOnly]);
      await settle();
      expect(gaps.recorded.at(-1)).toMatchObject({ keys: [gapEntryOf(spanRow(3))], reason: 'writer_closed' });
    });

    it('counts what a row costs in memory: its record header, gap fields, and line with its newline, in UTF-8', async () => {
      const row: MirrorRow = { table: 'spans', entity: 'spans', projectId: PROJECT_A, key: ['trace-é', 'span-✓'], createdAt: '2026-03-01T12:00:00.000001Z', tombstoneFields: ['é'], line: '{"name":"café"}' };
      const fields = JSON.stringify(['spans', PROJECT_A, ['trace-é', 'span-✓'], row.createdAt, ['é']]);
      expect(queuedRowBytes(row)).toBe(ROW_HEADER_BYTES + Buffer.byteLength(fields) + Buffer.byteLength(row.line) + 1);

      // Exactly one such row fits; its gap fields come back from the store intact when it cannot be sent.
      const { sink, writer, gaps } = setup({ queueMaxBytes: queuedRowBytes(row), maxAttempts: 1 });
      sink.fallback = { reject: clickHouseError('60', 'UNKNOWN_TABLE') };
      writer.write([row, { ...row, key: ['trace-é', 'another'] }]);
      expect(writer.stats()).toMatchObject({ queuedRows: 1, queuedBytes: queuedRowBytes(row) });
      await writer.drain();
      expect(gaps.recorded).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ entity: 'spans', projectId: PROJECT_A, keys: [gapEntryOf(row)], minCreatedAt: row.createdAt, maxCreatedAt: row.createdAt }),
        ]),
      );
      expect(sink.attempts.map((a) => a.lines)).toEqual([[row.line]]);
    });

    it('counts in-flight batches against the bound', async () => {
      const { sink, writer, gaps, clock } = setup({ queueMaxBytes: 3 * ROW, flushRows: 3 });
      sink.behaviours.push('hang');
      writer.write(rows(1, 3));
      await settle();
      expect(writer.stats().inFlightBatches).toBe(1);

      writer.write(rows(4, 1));
      await clock.advance(TEST_SETTINGS.flushIntervalMs!);
      expect(gaps.rows()).toBe(1);
      expect(writer.stats().queuedBytes).toBe(3 * ROW);
    });
  });

  describe('gap recording', () => {
    it('records the gaps of rows turned away at the bound together, once per flush interval, one per entity and project', async () => {
      const { writer, clock, gaps, registry, sink } = setup({ queueMaxBytes: ROW });
      // ClickHouse hangs, so the one row that fits stays queued throughout.
      sink.fallback = 'hang';
      writer.write(rows(1, 1));
      writer.write([spanRow(2, { projectId: PROJECT_A })]);
      writer.write([spanRow(3, { projectId: PROJECT_B })]);
      const { line: _line, ...keysOnly } = spanRow(4, { projectId: PROJECT_A });
      writer.writeOverflow([keysOnly]);
      // Counted as dropped at once, recorded one interval later.
      expect(writer.stats().rowsDropped).toBe(3);
      await clock.advance(999);
      expect(gaps.calls).toBe(0);
      await clock.advance(1);
      expect(gaps.calls).toBe(1);
      expect(gaps.recorded).toEqual([
        expect.objectContaining({ projectId: PROJECT_A, keys: [gapEntryOf(spanRow(2)), gapEntryOf(spanRow(4))], rowCount: 2, reason: 'queue_full' }),
        expect.objectContaining({ projectId: PROJECT_B, keys: [gapEntryOf(spanRow(3, { projectId: PROJECT_B }))], rowCount: 1, reason: 'queue_full' }),
      ]);
      expect(await metricValue(registry, 'mirror_gaps_recorded_total')).toBe(2);

      // The next overflow starts the next interval.
      writer.write([spanRow(5)]);
      await clock.advance(999);
      expect(gaps.calls).toBe(1);
      await clock.advance(1);
      expect(gaps.calls).toBe(2);
      expect(gaps.rows()).toBe(4);
    });

    it('records held overflow gaps at once when they reach flushRows keys', async () => {
      const { writer, gaps } = setup({ queueMaxBytes: ROW, flushRows: 3 });
      writer.write(rows(1, 3));
      await settle();
      expect(gaps.calls).toBe(0);
      writer.write(rows(4, 1));
      await settle();
      expect(gaps.calls).toBe(1);
      expect(gaps.recorded).toEqual([expect.objectContaining({ keys: [2, 3, 4].map((n) => gapEntryOf(spanRow(n))), rowCount: 3 })]);
    });

    it('drain() and shutdown() record held overflow gaps without waiting for the interval', async () => {
      const drained = setup({ queueMaxBytes: ROW });
      drained.writer.write(rows(1, 3));
      await drained.writer.drain();
      expect(drained.gaps.rows()).toBe(2);

      const shut = setup({ queueMaxBytes: ROW });
      shut.writer.write(rows(1, 3));
      await shut.writer.shutdown();
      expect(shut.gaps.rows()).toBe(2);
      expect(shut.writer.stats()).toMatchObject({ rowsSent: 1, rowsDropped: 2, gapsRecorded: 1 });
      expect(shut.clock.pendingTimers).toBe(0);
    });

    it('recordHeldGaps() records held overflow gaps while ClickHouse hangs, where drain() would wait for it', async () => {
      const { writer, gaps, sink } = setup({ queueMaxBytes: ROW });
      sink.fallback = 'hang';
      writer.write(rows(1, 3));
      await writer.recordHeldGaps();
      expect(gaps.rows()).toBe(2);
      expect(writer.stats()).toMatchObject({ rowsSent: 0, queuedRows: 1, gapsRecorded: 1 });
    });

    it('retries a failed gap record and succeeds without losing rows', async () => {
      const { writer, clock, gaps, registry } = setup({ queueMaxBytes: ROW });
      gaps.failures = 2;
      writer.write(rows(1, 2));
      await clock.advance(60_000);
      expect(gaps.calls).toBe(3);
      expect(gaps.rows()).toBe(1);
      expect(await metricValue(registry, 'mirror_rows_lost_total')).toBe(0);
      expect(writer.stats().gapsRecorded).toBe(1);
    });

    it('counts the gap records the recorder wrote, which one large gap can make several of', async () => {
      const { writer, clock, gaps, registry } = setup({ queueMaxBytes: ROW });
      gaps.recordsPerGap = 3;
      writer.write(rows(1, 2));
      await clock.advance(60_000);
      expect(gaps.recorded).toHaveLength(1);
      expect(writer.stats().gapsRecorded).toBe(3);
      expect(await metricValue(registry, 'mirror_gaps_recorded_total')).toBe(3);
    });

    it('backs off between gap record attempts at shutdown too, so a short Postgres blip loses nothing', async () => {
      const { sink, writer, clock, gaps, registry } = setup({ shutdownDeadlineMs: 1000 }, () => 0.99);
      sink.fallback = 'hang';
      writer.write(rows(1, 2));
      await settle();
      gaps.failures = 2;

      let finished = false;
      const done = writer.shutdown().then(() => (finished = true));
      await clock.advance(1000);
      expect(gaps.calls).toBe(1);
      expect(finished).toBe(false);
      await clock.advance(1000);
      await done;
      // Full-jitter backoff with draws of 0.99: 198 ms, then 396 ms.
      expect(gaps.callTimes.map((t) => t - gaps.callTimes[0])).toEqual([0, 198, 594]);
      expect(gaps.rows()).toBe(2);
      expect(await metricValue(registry, 'mirror_rows_lost_total')).toBe(0);
      sink.releaseHung();
      await settle();
      expect(clock.pendingTimers).toBe(0);
    });

    it('counts rows as lost and logs their time range when Postgres cannot record the gap either', async () => {
      const { writer, clock, gaps, registry, logger } = setup({ queueMaxBytes: ROW });
      gaps.failures = 100;
      writer.write(rows(1, 3));
      await clock.advance(60_000);

      expect(gaps.calls).toBe(3);
      expect(await metricValue(registry, 'mirror_rows_lost_total')).toBe(2);
      expect(writer.stats()).toMatchObject({ rowsLost: 2, gapsRecorded: 0 });
      expect(await metricValue(registry, 'mirror_gaps_recorded_total')).toBe(0);
      const lastResort = logger.errors().find((e) => e.msg.includes('gap could not be recorded'));
      expect(lastResort?.obj).toMatchObject({
        lostRows: 2,
        gaps: [
          {
            entity: 'spans',
            projectId: PROJECT_A,
            rowCount: 2,
            minCreatedAt: '2026-03-01T12:00:00.000002Z',
            maxCreatedAt: '2026-03-01T12:00:00.000003Z',
            reason: 'queue_full',
          },
        ],
      });
    });
  });

  describe('shutdown', () => {
    it('flushes everything still queued, in batches no larger than flushRows', async () => {
      const { sink, writer, gaps, clock } = setup({ flushRows: 2 });
      writer.write(rows(1, 5));
      await settle();
      expect(sink.attempts).toHaveLength(2);

      await writer.shutdown();
      expect(sink.accepted.map((a) => a.lines.length)).toEqual([2, 2, 1]);
      expect(gaps.recorded).toHaveLength(0);
      expect(writer.stats()).toMatchObject({ queuedRows: 0, rowsSent: 5 });
      expect(clock.pendingTimers).toBe(0);
    });

    it('records rows not confirmed by the deadline as gaps, in flight and queued alike', async () => {
      const { sink, writer, gaps, clock } = setup({ flushRows: 2, shutdownDeadlineMs: 3000 });
      sink.fallback = 'hang';
      writer.write(rows(1, 5));
      await settle();

      let finished = false;
      const done = writer.shutdown().then(() => (finished = true));
      await clock.advance(2999);
      expect(finished).toBe(false);
      expect(gaps.recorded).toHaveLength(0);

      // Shutdown returns only once the gaps are in Postgres.
      gaps.held = [];
      await clock.advance(1);
      expect(finished).toBe(false);
      gaps.release();
      await done;
      expect(gaps.rows()).toBe(5);
      expect(gaps.recorded.every((g) => g.reason === 'shutdown_deadline')).toBe(true);
      expect(gaps.recorded.flatMap((g) => g.keys)).toEqual(rows(1, 5).map(gapEntryOf));
      expect(writer.stats()).toMatchObject({ queuedRows: 0, queuedBytes: 0, inFlightBatches: 0 });

      // A late answer from the hung insert does not count the rows twice.
      sink.releaseHung();
      await settle();
      expect(writer.stats().rowsSent + writer.stats().rowsDropped).toBe(5);
      expect(clock.pendingTimers).toBe(0);
    });

    // The same fault at the deadline threw out of shutdown before it stopped its timers and recorded the held gaps.
    it('counts rows it cannot read back at the deadline as lost, and still ends cleanly', async () => {
      const { sink, writer, gaps, clock } = setup({ shutdownDeadlineMs: 1000, flushRows: 2 });
      sink.fallback = 'hang';
      writer.write(rows(1, 2)); // in flight, hung
      writer.write(rows(3, 1)); // pending behind it
      await settle();
      const unreadable = jest.spyOn(rowLog, 'gapRowsOf').mockImplementation(() => {
        throw new Error('a row header that does not parse');
      });
      try {
        const done = writer.shutdown();
        await clock.advance(1000);
        await done;
      } finally {
        unreadable.mockRestore();
      }
      expect(gaps.recorded).toEqual([]);
      expect(writer.stats()).toMatchObject({ queuedRows: 0, rowsDropped: 3, rowsLost: 3 });
      sink.releaseHung();
      await settle();
      expect(clock.pendingTimers).toBe(0);
    });

    it('takes a shorter deadline from its caller (who spent part of the budget already)', async () => {
      const { sink, writer, gaps, clock } = setup({ shutdownDeadlineMs: 3000 });
      sink.fallback = 'hang';
      writer.write(rows(1, 2));
      await settle();

      let finished = false;
      const done = writer.shutdown(500).then(() => (finished = true));
      // A second call (another shutdown hook) joins the first rather than starting a longer wait.
      const again = writer.shutdown();
      await clock.advance(499);
      expect(gaps.recorded).toHaveLength(0);
      await clock.advance(1);
      await Promise.all([done, again]);
      expect(finished).toBe(true);
      expect(gaps.recorded).toEqual([expect.objectContaining({ rowCount: 2, reason: 'shutdown_deadline' })]);
      sink.releaseHung();
      await settle();
      expect(clock.pendingTimers).toBe(0);
    });

    it('ends at the deadline while the breaker is open, leaving no timers behind', async () => {
      const { sink, writer, gaps, clock } = setup({ shutdownDeadlineMs: 1000, breaker: { failureThreshold: 1, openMs: 60_000 } });
      sink.fallback = { reject: networkError('ECONNREFUSED') };
      writer.write(rows(1, 3));
      await clock.advance(1000);
      expect(writer.stats().breaker).toBe('open');

      const done = writer.shutdown();
      await clock.advance(1000);
      await done;
      expect(gaps.recorded).toEqual([expect.objectContaining({ rowCount: 3, reason: 'shutdown_deadline' })]);
      expect(sink.attempts).toHaveLength(1);
      expect(clock.pendingTimers).toBe(0);
    });

    it('sends nothing when a probe answers after the deadline turned its batch into a gap', async () => {
      const { sink, writer, gaps, clock } = setup({ shutdownDeadlineMs: 1000, breaker: { failureThreshold: 1, openMs: 500 } });
      sink.fallback = { reject: networkError('ECONNREFUSED') };
      writer.write(rows(1, 3));
      await clock.advance(1000);
      expect(sink.attempts).toHaveLength(1);

      // The open period ends and the batch goes out as the probe, whose ping hangs past the deadline.
      sink.hangPings = true;
      const done = writer.shutdown();
      await clock.advance(1000);
      await done;
      expect(sink.pings).toBe(1);
      expect(gaps.recorded).toEqual([expect.objectContaining({ rowCount: 3, reason: 'shutdown_deadline' })]);

      // ClickHouse answers the ping now: the writer has stopped and the rows are a gap, so no insert follows.
      sink.fallback = 'ok';
      sink.answerHungPings(true);
      await settle();
      expect(sink.attempts).toHaveLength(1);
      expect(writer.stats()).toMatchObject({ rowsSent: 0, rowsDropped: 3 });
      expect(clock.pendingTimers).toBe(0);
    });

    it('waits SHUTDOWN_GAP_RECORDING_MS at most for a Postgres that takes a gap record and never answers, then logs its rows as lost, once', async () => {
      const { sink, writer, gaps, clock, registry, logger } = setup({ shutdownDeadlineMs: 1000 });
      sink.fallback = 'hang';
      writer.write(rows(1, 3));
      await settle();
      gaps.held = [];

      let finished = false;
      const done = writer.shutdown().then(() => (finished = true));
      await clock.advance(1000);
      expect(gaps.calls).toBe(1);
      await clock.advance(SHUTDOWN_GAP_RECORDING_MS - 1);
      expect(finished).toBe(false);
      await clock.advance(1);
      await done;
      const lastResort = () => logger.errors().filter((e) => e.msg.includes('gap could not be recorded'));
      expect(lastResort()).toEqual([
        expect.objectContaining({
          obj: expect.objectContaining({
            lostRows: 3,
            error: `Postgres did not record the gap within the ${SHUTDOWN_GAP_RECORDING_MS} ms shutdown allows it`,
            gaps: [expect.objectContaining({ rowCount: 3, reason: 'shutdown_deadline' })],
          }),
        }),
      ]);
      expect(await metricValue(registry, 'mirror_rows_lost_total')).toBe(3);

      // Postgres fails the record at last: no retry, and the rows are not reported a second time.
      gaps.failures = 3;
      gaps.release();
      await clock.advance(10_000);
      expect(gaps.calls).toBe(1);
      expect(lastResort()).toHaveLength(1);
      expect(await metricValue(registry, 'mirror_rows_lost_total')).toBe(3);
      expect(writer.stats().rowsLost).toBe(3);
      sink.releaseHung();
      await settle();
      expect(clock.pendingTimers).toBe(0);
    });

    it('says so when a gap record it gave up on at shutdown lands after all', async () => {
      const { sink, writer, gaps, clock, logger } = setup({ shutdownDeadlineMs: 1000 });
      sink.fallback = 'hang';
      writer.write(rows(1, 2));
      await settle();
      gaps.held = [];
      const done = writer.shutdown();
      await clock.advance(1000 + SHUTDOWN_GAP_RECORDING_MS);
      await done;
      expect(logger.errors().filter((e) => e.msg.includes('gap could not be recorded'))).toHaveLength(1);

      gaps.release();
      await settle();
      expect(gaps.rows()).toBe(2);
      expect(logger.entries.filter((e) => e.level === 'warn' && e.msg.includes('recorded after shutdown had declared its rows lost'))).toEqual([
        expect.objectContaining({ obj: { gaps: [expect.objectContaining({ rowCount: 2 })] } }),
      ]);
      sink.releaseHung();
      await settle();
      expect(clock.pendingTimers).toBe(0);
    });

    it('turns writes after shutdown into gaps', async () => {
      const { sink, writer, gaps } = setup();
      await writer.shutdown();
      writer.write(rows(1, 2));
      await settle();
      expect(sink.attempts).toHaveLength(0);
      expect(gaps.recorded).toEqual([expect.objectContaining({ rowCount: 2, reason: 'writer_closed' })]);
    });
  });

  describe('drain and stats', () => {
    it('drain() sends what is queued without waiting for the interval', async () => {
      const { sink, writer, registry } = setup();
      writer.write(rows(1, 3));
      await writer.drain();
      expect(sink.sentLines()).toHaveLength(3);
      expect(writer.stats().queuedRows).toBe(0);
      expect(await metricValue(registry, 'mirror_queue_rows', { table: 'spans' })).toBe(0);
      expect(await metricValue(registry, 'mirror_queue_bytes', { table: 'spans' })).toBe(0);
      expect(await metricValue(registry, 'mirror_rows_sent_total', { table: 'spans' })).toBe(3);
    });

    it('reports queue, in-flight, breaker, counters, last success/error (wall clock) and lag (monotonic)', async () => {
      const { sink, writer, clock, registry } = setup({ flushRows: 2, maxAttempts: 1 });
      const start = clock.now();
      // The wall clock was stepped back an hour: the times shown follow it, the lag does not.
      clock.wallOffsetMs = -3_600_000;
      expect(writer.stats()).toEqual({
        queuedRows: 0,
        acceptedRows: 0,
        queuedBytes: 0,
        inFlightBatches: 0,
        breaker: 'closed',
        gapsRecorded: 0,
        rowsLost: 0,
        rowsSent: 0,
        rowsDropped: 0,
        lastSuccessAt: null,
        lastErrorAt: null,
        lastError: null,
        lastPublicError: null,
        lagMs: 0,
      });

      sink.behaviours.push('ok', { reject: clickHouseError('62', 'SYNTAX_ERROR') }, 'hang');
      writer.write(rows(1, 2));
      await clock.advance(250);
      writer.write(rows(3, 2));
      await clock.advance(250);
      writer.write(rows(5, 3, { bytes: 20 }));
      await settle();

      expect(writer.stats()).toEqual({
        queuedRows: 3,
        acceptedRows: 0,
        queuedBytes: 3 * (ROW + 10),
        inFlightBatches: 1,
        breaker: 'closed',
        gapsRecorded: 1,
        rowsLost: 0,
        rowsSent: 2,
        rowsDropped: 2,
        lastSuccessAt: start - 3_600_000,
        lastErrorAt: start + 250 - 3_600_000,
        lastError: 'ClickHouse code 62 SYNTAX_ERROR: SYNTAX_ERROR happened.',
        lastPublicError: 'ClickHouse code 62 SYNTAX_ERROR',
        lagMs: 0,
      });
      expect(await metricValue(registry, 'mirror_queue_rows', { table: 'spans' })).toBe(3);
      expect(await metricValue(registry, 'mirror_queue_bytes', { table: 'spans' })).toBe(3 * (ROW + 10));
      expect(await metricValue(registry, 'mirror_rows_sent_total', { table: 'spans' })).toBe(2);

      await clock.advance(700);
      expect(writer.stats().lagMs).toBe(700);
    });

    it("counts a producer's held rows as queued and their age as lag, without having it write them", async () => {
      const { writer, clock } = setup();
      const flushed: number[] = [];
      let held: { rows: number; oldestAt: number } | null = null;
      writer.addProducer({ flush: () => flushed.push(1), held: () => held });
      writer.write(rows(1, 2));
      await clock.advance(100);
      held = { rows: 5, oldestAt: clock.now() - 400 };
      expect(writer.stats()).toMatchObject({ queuedRows: 7, acceptedRows: 5, queuedBytes: 2 * ROW, lagMs: 400 });
      held = { rows: 5, oldestAt: clock.now() };
      expect(writer.stats()).toMatchObject({ queuedRows: 7, acceptedRows: 5, lagMs: 100 });
      expect(flushed).toEqual([]);
    });

    it('observes flush size and lag from enqueue to confirmed insert', async () => {
      const { sink, writer, clock, registry } = setup({ flushRows: 4 });
      sink.behaviours.push('hang');
      writer.write(rows(1, 4));
      await clock.advance(1500);
      sink.releaseHung();
      await settle();

      expect(await histogramValue(registry, 'mirror_lag_seconds', 'count')).toBe(4);
      expect(await histogramValue(registry, 'mirror_lag_seconds', 'sum')).toBeCloseTo(6);
      expect(await histogramValue(registry, 'mirror_flush_rows', 'sum')).toBe(4);
      expect(await histogramValue(registry, 'mirror_flush_duration_seconds', 'sum')).toBeCloseTo(1.5);
    });
  });

  it('flushes on the real clock when none is injected', async () => {
    const sink = new FakeSink(new ManualClock());
    const gaps = new FakeGapRecorder();
    const writer = new BatchWriter({ flushIntervalMs: 20 }, { sink, gapRecorder: gaps, logger: new FakeLogger() });
    writer.write(rows(1, 2));
    // Polled (a busy machine may run the 20 ms timer late), never drain(): the timer alone must send them.
    for (const deadline = Date.now() + 5_000; sink.accepted.length === 0 && Date.now() < deadline; ) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(sink.accepted.map((a) => a.lines.length)).toEqual([2]);
    await writer.shutdown();
    expect(gaps.recorded).toHaveLength(0);
  });

  it('ships defaults that follow the ClickHouse guidance', () => {
    expect(DEFAULT_BATCH_WRITER_OPTIONS).toEqual({
      flushRows: 10_000,
      flushBytes: 16 * 1024 * 1024,
      flushIntervalMs: 1000,
      queueMaxBytes: 256 * 1024 * 1024,
      shutdownDeadlineMs: 10_000,
      maxAttempts: 5,
      baseBackoffMs: 200,
      maxBackoffMs: 10_000,
      breaker: { failureThreshold: 5, openMs: 5000 },
    });
  });

  it('rejects a nonsensical option at construction, naming it', () => {
    const clock = new ManualClock();
    expect(
      () =>
        new BatchWriter(
          { flushRows: 0 },
          { sink: new FakeSink(clock), gapRecorder: new FakeGapRecorder(), logger: new FakeLogger(), clock },
        ),
    ).toThrow(/flushRows/);
  });
});
