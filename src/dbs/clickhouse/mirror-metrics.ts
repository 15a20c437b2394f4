import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { NODE_TABLE } from './node-clickhouse-row.mapper';
import { SEND_ERROR_KINDS } from './retry-policy';
import { SPAN_TABLE } from './span-clickhouse-row.mapper';

/** Why rows became gap records instead of being sent: mirror_rows_dropped_total's reason, and the start of the gap record's. */
export const DROP_REASONS = ['queue_full', 'send_failed', 'shutdown_deadline', 'writer_closed', 'internal_error'] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/**
 * The mirror's Prometheus metrics. Names are part of the dashboards' and
 * alerts' contract: keep them stable.
 *
 *   mirror_queue_rows{table}              gauge: serialized rows waiting or in flight
 *   mirror_queue_bytes{table}             gauge: the memory they hold, off the V8 heap: lines, gap fields and a 24-byte header per row (bounded by queueMaxBytes in total)
 *   mirror_flush_duration_seconds{table}  histogram: one insert attempt, request to answer, with any wait for the mirror's tables (after-schema.ts)
 *   mirror_flush_rows{table}              histogram: rows per batch sent
 *   mirror_rows_sent_total{table}         counter: rows ClickHouse confirmed
 *   mirror_send_failures_total{kind}      counter: failed insert attempts, kind transient|permanent
 *   mirror_rows_dropped_total{reason}     counter: rows not sent, handed to a gap record (backfill --gaps replays it once written)
 *   mirror_gaps_recorded_total            counter: gap records written to Postgres
 *   mirror_rows_lost_total                counter: of those rows, the ones whose gap record could not be written (only in the error log);
 *                                         a subset of dropped, so do not add the two
 *   mirror_breaker_state                  gauge: 0 closed, 1 half-open, 2 open
 *   mirror_lag_seconds                    histogram: from the commit (the oldest of the rows mapped with it) to confirmed insert, per row
 *
 * Counters and the queue gauges start at 0 for every label value they can
 * take: an alert on increase() needs a series before the first event, not
 * one that appears with it.
 */
export interface MirrorMetrics {
  queueRows: Gauge<'table'>;
  queueBytes: Gauge<'table'>;
  flushDuration: Histogram<'table'>;
  flushRows: Histogram<'table'>;
  rowsSent: Counter<'table'>;
  sendFailures: Counter<'kind'>;
  rowsDropped: Counter<'reason'>;
  gapsRecorded: Counter;
  rowsLost: Counter;
  breakerState: Gauge;
  lag: Histogram;
}

/** Registered on the registry given, so the app and each test keep their own. */
export function createMirrorMetrics(registry: Registry): MirrorMetrics {
  const registers = [registry];
  const metrics: MirrorMetrics = {
    queueRows: new Gauge({
      name: 'mirror_queue_rows',
      help: 'Rows queued for the ClickHouse mirror, including in-flight batches (serialized rows: /health counts those not serialized yet in acceptedRows)',
      labelNames: ['table'],
      registers,
    }),
    queueBytes: new Gauge({
      name: 'mirror_queue_bytes',
      help: 'Memory held by rows queued for the ClickHouse mirror (lines, gap fields and a 24-byte header per row, off the V8 heap), including in-flight batches',
      labelNames: ['table'],
      registers,
    }),
    flushDuration: new Histogram({
      name: 'mirror_flush_duration_seconds',
      help: "Duration of one ClickHouse insert attempt, waiting for the mirror's tables included (their DDL, while ClickHouse was unreachable at start or had lost them)",
      labelNames: ['table'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    flushRows: new Histogram({
      name: 'mirror_flush_rows',
      help: 'Rows per batch sent to ClickHouse',
      labelNames: ['table'],
      buckets: [1, 10, 100, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000],
      registers,
    }),
    rowsSent: new Counter({
      name: 'mirror_rows_sent_total',
      help: 'Rows ClickHouse confirmed',
      labelNames: ['table'],
      registers,
    }),
    sendFailures: new Counter({
      name: 'mirror_send_failures_total',
      help: 'Failed ClickHouse insert attempts by kind (transient errors are retried)',
      labelNames: ['kind'],
      registers,
    }),
    rowsDropped: new Counter({
      name: 'mirror_rows_dropped_total',
      help: 'Rows the mirror did not send and turned into gap records, by reason',
      labelNames: ['reason'],
      registers,
    }),
    gapsRecorded: new Counter({
      name: 'mirror_gaps_recorded_total',
      help: 'Gap records written to Postgres for later replay',
      registers,
    }),
    rowsLost: new Counter({
      name: 'mirror_rows_lost_total',
      help: 'Rows neither sent nor recorded as a gap (Postgres was unreachable too); see the error log',
      registers,
    }),
    breakerState: new Gauge({
      name: 'mirror_breaker_state',
      help: 'ClickHouse circuit breaker: 0 closed, 1 half-open, 2 open',
      registers,
    }),
    lag: new Histogram({
      name: 'mirror_lag_seconds',
      help: 'Time from the commit (the oldest among the rows the mirror mapped with it) to confirmed ClickHouse insert, per row',
      // To an hour: the queue rides out outages of many minutes, whose rows are confirmed once ClickHouse is back.
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600],
      registers,
    }),
  };
  for (const kind of SEND_ERROR_KINDS) metrics.sendFailures.inc({ kind }, 0);
  for (const reason of DROP_REASONS) metrics.rowsDropped.inc({ reason }, 0);
  for (const table of [SPAN_TABLE, NODE_TABLE]) {
    metrics.rowsSent.inc({ table }, 0);
    metrics.queueRows.set({ table }, 0);
    metrics.queueBytes.set({ table }, 0);
  }
  return metrics;
}
