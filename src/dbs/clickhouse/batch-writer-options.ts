import type { BreakerOptions } from './retry-policy';

/**
 * How the batch writer batches, bounds, retries and gives up. Its own module,
 * free of the writer's dependencies, because the API's configuration
 * (src/config/app-config.ts) takes its MIRROR_* defaults and type from here:
 * one place for each default and the reason for it.
 */
export interface BatchWriterOptions {
  flushRows: number;
  flushBytes: number;
  flushIntervalMs: number;
  queueMaxBytes: number;
  shutdownDeadlineMs: number;
  maxAttempts: number;
  baseBackoffMs: number;
  maxBackoffMs: number;
  breaker: BreakerOptions;
}

export type BatchWriterSettings = Partial<Omit<BatchWriterOptions, 'breaker'>> & { breaker?: Partial<BreakerOptions> };

export const DEFAULT_BATCH_WRITER_OPTIONS: BatchWriterOptions = {
  // ClickHouse asks for inserts of at least 1,000 rows; 10,000 keeps parts few without huge requests.
  flushRows: 10_000,
  // Caps one request body well under ClickHouse's and proxies' limits while still amortizing the per-insert cost.
  flushBytes: 16 * 1024 * 1024,
  // About one insert per second per table is ClickHouse's guidance for a steady trickle.
  flushIntervalMs: 1000,
  // Enough to ride out a ClickHouse restart at high ingest without letting the API's heap grow unbounded.
  queueMaxBytes: 256 * 1024 * 1024,
  // Fits inside the orchestrator's grace period (Kubernetes: 30 s) next to the HTTP server's own drain.
  shutdownDeadlineMs: 10_000,
  // Five attempts wait at most 0.2 + 0.4 + 0.8 + 1.6 s between them (full jitter draws below each): a blip,
  // not an outage (the breaker handles those).
  maxAttempts: 5,
  // Long enough for a dropped connection to be re-established, short enough not to add visible lag.
  baseBackoffMs: 200,
  // A cap for a larger MIRROR_MAX_ATTEMPTS or base: no wait longer than twice the breaker's open period. At the
  // defaults the doubling stops at 1.6 s, below it.
  maxBackoffMs: 10_000,
  // Five consecutive failures is an outage, not noise; 5 s open spares a restarting server without delaying recovery.
  breaker: { failureThreshold: 5, openMs: 5000 },
};

/**
 * What a setting gives up, said once at start: null at the defaults. A
 * batch waits out an outage only once the breaker has opened; with more
 * failures to open it than a batch has tries, the first batches of every
 * outage use up their tries first and become gap records.
 */
export function outageGapsWarning(options: Pick<BatchWriterOptions, 'maxAttempts' | 'breaker'>): string | null {
  const { maxAttempts, breaker } = options;
  if (breaker.failureThreshold <= maxAttempts) return null;
  return (
    `MIRROR_BREAKER_FAILURES (${breaker.failureThreshold}) is above MIRROR_MAX_ATTEMPTS (${maxAttempts}): ` +
    'each ClickHouse outage turns the batches that use up their tries before the breaker opens into gap records ' +
    '(npm run backfill -- --gaps replays them) instead of holding them until ClickHouse is back'
  );
}
