import { DEFAULT_BATCH_WRITER_OPTIONS, outageGapsWarning } from './batch-writer-options';

describe('batch writer options', () => {
  it('warn when the breaker needs more failures to open than a batch has tries: outages then leave gaps', () => {
    expect(outageGapsWarning(DEFAULT_BATCH_WRITER_OPTIONS)).toBeNull();
    expect(outageGapsWarning({ maxAttempts: 5, breaker: { failureThreshold: 5, openMs: 1 } })).toBeNull();
    expect(outageGapsWarning({ maxAttempts: 3, breaker: { failureThreshold: 10, openMs: 1 } })).toBe(
      'MIRROR_BREAKER_FAILURES (10) is above MIRROR_MAX_ATTEMPTS (3): each ClickHouse outage turns the batches that use up their tries ' +
        'before the breaker opens into gap records (npm run backfill -- --gaps replays them) instead of holding them until ClickHouse is back',
    );
  });
});
