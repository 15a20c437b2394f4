import { MirrorLogger } from './batch-writer';
import { ClickHouseSchema, SCHEMA_RETRY_MS } from './clickhouse-schema';
import { ManualClock } from '../../../test/support/manual-clock';

function recordingLogger() {
  const lines: Array<{ level: string; msg: string; obj: Record<string, unknown> }> = [];
  const logger: MirrorLogger = {
    info: (obj, msg) => lines.push({ level: 'info', msg, obj: obj as Record<string, unknown> }),
    warn: (obj, msg) => lines.push({ level: 'warn', msg, obj: obj as Record<string, unknown> }),
    error: (obj, msg) => lines.push({ level: 'error', msg, obj: obj as Record<string, unknown> }),
  };
  return { logger, lines };
}

describe('ClickHouseSchema', () => {
  it('applies the DDL once and answers from then on without running it again', async () => {
    const apply = jest.fn(async () => ['0001_spans', '0002_nodes']);
    const { logger, lines } = recordingLogger();
    const schema = new ClickHouseSchema(apply, logger, new ManualClock());
    expect(schema.isApplied).toBe(false);
    expect(await Promise.all([schema.ensure(), schema.ensure()])).toEqual([true, true]);
    expect(await schema.ensure()).toBe(true);
    expect(apply).toHaveBeenCalledTimes(1);
    expect(schema.isApplied).toBe(true);
    expect(lines).toEqual([{ level: 'info', msg: 'applied ClickHouse migrations', obj: { migrations: ['0001_spans', '0002_nodes'] } }]);
  });

  it('reapply(): one DDL run for the inserts that ask together, then whether the table is there, whoever made it', async () => {
    let runs = 0;
    const made = new Set<string>();
    // Another API made the tables already: this run applies nothing, and the table is there all the same.
    const apply = async () => {
      runs += 1;
      made.add('spans');
      return [];
    };
    const { logger, lines } = recordingLogger();
    const schema = new ClickHouseSchema(apply, logger, new ManualClock(), async (table) => made.has(table));
    expect(await Promise.all([schema.reapply('spans'), schema.reapply('spans'), schema.reapply('nodes')])).toEqual([true, true, false]);
    expect(runs).toBe(1);
    expect(lines).toEqual([]);

    // A run that created the tables answers so itself; a check without an answer is an unknown (null), and
    // one ClickHouse refuses (it answered, with an error) a no.
    const timedOut = () => Promise.reject(new Error('Timeout error.'));
    const recreating = new ClickHouseSchema(async () => ['0001_spans'], logger, new ManualClock(), timedOut);
    expect(await recreating.reapply('spans')).toBe(true);
    const unanswered = new ClickHouseSchema(async () => [], logger, new ManualClock(), timedOut);
    expect(await unanswered.reapply('spans')).toBeNull();
    const refused = new ClickHouseSchema(async () => [], logger, new ManualClock(), async () =>
      Promise.reject(Object.assign(new Error('Not enough privileges'), { code: '497', type: 'ACCESS_DENIED' })),
    );
    expect(await refused.reapply('spans')).toBe(false);
    lines.length = 0;

    // A DDL that fails is logged, and the answer is still the table's.
    const failing = new ClickHouseSchema(async () => Promise.reject(new Error('Code: 497. Not enough privileges')), logger, new ManualClock(), async () => false);
    expect(await failing.reapply('spans')).toBe(false);
    expect(lines).toEqual([{ level: 'warn', msg: "ClickHouse DDL failed after an insert found the mirror's tables missing", obj: { err: 'Code: 497. Not enough privileges' } }]);
  });

  it('retries a failing DDL every SCHEMA_RETRY_MS, logging it when it starts, once a minute while it lasts and when it goes through', async () => {
    const clock = new ClockWithFailures();
    const { logger, lines } = recordingLogger();
    const schema = new ClickHouseSchema(clock.apply, logger, clock);

    expect(schema.failure).toBeNull();
    expect(await schema.ensure()).toBe(false);
    expect(schema.failure).toBe('connect ECONNREFUSED 127.0.0.1:8123');
    await clock.advance(125_000);
    // The first try and one every 5 s: 26 in 125 s, besides any an insert asks for.
    expect(clock.tries).toBe(26);
    expect(schema.isApplied).toBe(false);
    expect(lines.map((l) => `${l.level} ${l.msg}`)).toEqual([
      'error ClickHouse DDL failed; mirrored rows queue until it is applied, retrying',
      'warn ClickHouse DDL still failing',
      'warn ClickHouse DDL still failing',
    ]);
    expect(lines[1].obj).toMatchObject({ err: 'connect ECONNREFUSED 127.0.0.1:8123', failingForMs: 60_000, tries: 13 });

    clock.up = true;
    await clock.advance(SCHEMA_RETRY_MS);
    expect(schema.isApplied).toBe(true);
    expect(schema.failure).toBeNull();
    expect(lines.slice(3)).toEqual([
      { level: 'info', msg: 'applied ClickHouse migrations', obj: { migrations: ['0001_spans'] } },
      { level: 'info', msg: 'ClickHouse schema applied after failing', obj: { failingForMs: 130_000, tries: 27 } },
    ]);
    expect(clock.pendingTimers).toBe(0);
  });

  it('stops retrying on stop()', async () => {
    const clock = new ClockWithFailures();
    const schema = new ClickHouseSchema(clock.apply, recordingLogger().logger, clock);
    await schema.ensure();
    expect(clock.pendingTimers).toBe(1);
    schema.stop();
    expect(clock.pendingTimers).toBe(0);
    await clock.advance(60_000);
    expect(clock.tries).toBe(1);
  });

  it('leaves a run that fails after stop() unreported: the shutdown closed what it ran on', async () => {
    let fail: (error: Error) => void = () => undefined;
    const { logger, lines } = recordingLogger();
    const clock = new ManualClock();
    const schema = new ClickHouseSchema(() => new Promise((_, reject) => (fail = reject)), logger, clock);
    const running = schema.ensure();
    schema.stop();
    fail(new Error('socket hang up'));
    expect(await running).toBe(false);
    expect(lines).toEqual([]);
    expect(schema.failure).toBeNull();
    expect(clock.pendingTimers).toBe(0);
  });
});

/** A clock whose ClickHouse refuses the DDL until `up`. */
class ClockWithFailures extends ManualClock {
  up = false;
  tries = 0;
  apply = async (): Promise<string[]> => {
    this.tries += 1;
    if (!this.up) throw new Error('connect ECONNREFUSED 127.0.0.1:8123');
    return ['0001_spans'];
  };
}
