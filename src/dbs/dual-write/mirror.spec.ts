import { Logger } from '@nestjs/common';
import { Registry } from 'prom-client';
import { BatchWriter, MirrorRow, queuedRowBytes } from '../clickhouse/batch-writer';
import { MirrorGap } from '../clickhouse/gap-ledger';
import { BatchWriterSettings } from '../clickhouse/batch-writer-options';
import { Clock, realClock } from '../clickhouse/clock';
import { linesOfBody } from '../../../test/support/insert-body';
import { Mirror } from './mirror';
import { MirrorPlan } from './mirrored-dao';

interface Item {
  id: number;
  projectId: string;
}

const A = '00000000-0000-4000-8000-00000000000a';
const B = '00000000-0000-4000-8000-00000000000b';

/** Records mapped to lines, by id: the keys-only path must not add to it. */
const mappedIds: number[] = [];

const plan: MirrorPlan<unknown, Item> = {
  entity: 'spans',
  methods: {},
  toGapRow: (record) => ({ table: 'spans', entity: 'spans', projectId: record.projectId, key: [String(record.id)], createdAt: '2026-11-22T10:00:00.000000Z', tombstoneFields: [] }),
  toLine: (record) => {
    if (record.id < 0) throw new Error(`record ${record.id} cannot be mapped`);
    mappedIds.push(record.id);
    return `{"id":${record.id}}`;
  },
};

/** Rows whose records were built, by id: none may be built on the caller's path. */
const builtIds: number[] = [];

/** How a committed row becomes its record (the plans add its version); id -2 cannot be built. */
const toRecord = (row: Item): Item => {
  if (row.id === -2) throw new Error('row -2 has no record');
  builtIds.push(row.id);
  return { ...row };
};

const records = (from: number, to: number, projectId = A): Item[] => Array.from({ length: to - from + 1 }, (_, i) => ({ id: from + i, projectId }));
const turn = () => new Promise((resolve) => setImmediate(resolve));
/** Lets the mirror's slices run until the writer counts no accepted record as unmapped (10 turns at most). */
const mapped = async (writer: BatchWriter) => {
  for (let i = 0; i < 10 && writer.stats().acceptedRows > 0; i++) await turn();
};

/** Every rig's writer, shut down after each test: a writer left with queued rows keeps its 60 s flush timer. */
const writers: BatchWriter[] = [];

function rig(projectIds: string[] = [], settings: BatchWriterSettings = {}, clock?: Clock) {
  const sent: string[] = [];
  const writes: number[] = [];
  const gaps: MirrorGap[] = [];
  // While ClickHouse hangs, inserts wait here until it answers.
  let hanging: Array<() => void> | null = null;
  const writer = new BatchWriter(
    { flushIntervalMs: 60_000, ...settings },
    {
      sink: {
        insert: async (_table, body) => {
          if (hanging) await new Promise<void>((answer) => hanging!.push(answer));
          sent.push(...linesOfBody(body));
        },
        ping: async () => true,
      },
      gapRecorder: {
        record: async (recorded: MirrorGap[]) => {
          gaps.push(...recorded);
          return recorded.length;
        },
      },
      logger: { info: () => undefined, warn: () => undefined, error: () => undefined },
      clock,
    },
  );
  writers.push(writer);
  const write = writer.write.bind(writer);
  writer.write = (rows: MirrorRow[], acceptedAt?: number) => {
    writes.push(rows.length);
    write(rows, acceptedAt);
  };
  const registry = new Registry();
  const mirror = new Mirror(writer, projectIds, registry);
  const clickHouse = {
    hang: () => (hanging = []),
    answer: () => {
      const waiting = hanging ?? [];
      hanging = null;
      for (const answer of waiting) answer();
    },
  };
  return { mirror, writer, sent, writes, gaps, registry, clickHouse };
}

describe('Mirror', () => {
  beforeAll(() => Logger.overrideLogger(false));
  afterAll(() => Logger.overrideLogger(['log', 'error', 'warn', 'debug', 'verbose']));
  afterEach(async () => {
    for (const writer of writers.splice(0)) await writer.shutdown();
  });

  it('builds and maps nothing on the caller’s path: rows reach the writer on later turns, in order', async () => {
    const { mirror, writer, sent, writes } = rig();
    builtIds.length = 0;
    mirror.accept(plan, records(1, 50), toRecord);
    mirror.accept(plan, records(51, 60), toRecord);
    expect(writes).toEqual([]);
    expect(builtIds).toEqual([]);
    const written = () => writes.reduce((n, w) => n + w, 0);
    for (let i = 0; i < 10 && written() < 60; i++) await turn();
    expect(written()).toBe(60);
    expect(writes.length).toBeGreaterThan(1);
    await writer.drain();
    expect(sent).toEqual(records(1, 60).map((r) => `{"id":${r.id}}`));
  });

  // The API's logger names the request of the async context it runs in: a record that could not be built
  // was logged as the request whose write happened to schedule the slice, not the one that wrote it.
  it("maps records outside the async context of the request whose write scheduled the slice", async () => {
    const { AsyncLocalStorage } = await import('node:async_hooks');
    const request = new AsyncLocalStorage<string>();
    const { mirror } = rig();
    const contexts: Array<string | undefined> = [];
    const watched = (row: Item) => (contexts.push(request.getStore()), toRecord(row));
    request.run('request 17', () => mirror.accept(plan, records(1, 3), watched));
    // Not drain(), which would map what is left in its own caller's context.
    for (let i = 0; i < 10 && contexts.length < 3; i++) await turn();
    expect(contexts).toEqual([undefined, undefined, undefined]);
  });

  it('drain() and shutdown() write records accepted but not mapped yet; stats() counts them without mapping them', async () => {
    const counted = rig();
    builtIds.length = 0;
    counted.mirror.accept(plan, records(1, 200), toRecord);
    expect(counted.writer.stats()).toMatchObject({ queuedRows: 200, acceptedRows: 200, queuedBytes: 0 });
    // A /health probe right after a large export mapped the whole backlog in one event-loop turn.
    expect(builtIds).toEqual([]);

    const first = rig();
    first.mirror.accept(plan, records(1, 500), toRecord);
    await first.writer.drain();
    expect(first.sent).toHaveLength(500);

    const second = rig();
    second.mirror.accept(plan, records(1, 300), toRecord);
    await second.writer.shutdown();
    expect(second.sent).toHaveLength(300);
    expect(second.writer.stats().rowsDropped).toBe(0);
  });

  // Rows mapped a while after their commit restarted their age: /health's lagMs fell although nothing was sent.
  it("counts a row's lag from when its write was accepted, not from when it was mapped", async () => {
    let now = 5_000;
    const clock: Clock = { ...realClock, now: () => now };
    const { mirror, writer } = rig([], { flushIntervalMs: 1_000 }, clock);
    mirror.accept(plan, records(1, 3), toRecord);
    now += 400;
    expect(writer.stats()).toMatchObject({ acceptedRows: 3, lagMs: 400 });
    await mapped(writer);
    expect(writer.stats()).toMatchObject({ queuedRows: 3, acceptedRows: 0, lagMs: 400 });

    // Two writes mapped in one slice go in one write(), with the older one's time.
    const { mirror: second, writer: secondWriter, writes } = rig([], { flushIntervalMs: 1_000 }, clock);
    second.accept(plan, records(1, 3), toRecord);
    now += 300;
    second.accept(plan, records(4, 6), toRecord);
    now += 100;
    await mapped(secondWriter);
    expect(secondWriter.stats()).toMatchObject({ queuedRows: 6, acceptedRows: 0, lagMs: 400 });
    expect(writes).toEqual([6]);
  });

  // drain() and shutdown() map the whole backlog at once: in one slice, every line was built before the
  // queue's bound turned all but its first rows away.
  it('maps a backlog written at once in slices, building no lines once the queue is full', async () => {
    const queueMaxBytes = records(1, 10).reduce((sum, r) => sum + queuedRowBytes({ ...plan.toGapRow(r), line: `{"id":${r.id}}` }), 0);
    const { mirror, writer, clickHouse } = rig([], { queueMaxBytes, flushRows: 10 });
    clickHouse.hang();
    mappedIds.length = 0;
    mirror.accept(plan, records(1, 3_000), toRecord);
    await writer.recordHeldGaps();
    expect(writer.stats()).toMatchObject({ acceptedRows: 0, queuedRows: 10, rowsDropped: 2_990 });
    expect(mappedIds.length).toBeLessThanOrEqual(1_024);
    // Sent, so the shutdown after the test does not wait out its deadline for the hung insert.
    clickHouse.answer();
  });

  it('keeps only the rolled-out projects, and counts rows that cannot be built or mapped without losing the rest', async () => {
    const { mirror, writer, sent, gaps, registry } = rig([A]);
    mappedIds.length = 0;
    const rows = [...records(1, 3, A), { id: -1, projectId: A }, ...records(4, 5, B), { id: -2, projectId: A }, ...records(6, 7, A)];
    mirror.accept(plan, rows, toRecord);
    await writer.drain();
    expect(sent).toEqual(['{"id":1}', '{"id":2}', '{"id":3}', '{"id":6}', '{"id":7}']);
    // Project B's records were never serialized.
    expect(mappedIds).toEqual([1, 2, 3, 6, 7]);
    expect(await registry.getSingleMetricAsString('mirror_record_failures_total')).toMatch(/entity="spans"} 2/);
    // A row whose keys are known but whose line failed is a gap record, for `backfill --gaps` to replay;
    // a row whose record could not be built has no keys, and only the counter and the error log know it.
    expect(gaps).toEqual([
      expect.objectContaining({ projectId: A, keys: [['-1', '2026-11-22T10:00:00.000000Z']], rowCount: 1, reason: 'internal_error: record -1 cannot be mapped' }),
    ]);
  });

  // A mapper that fails every row (a column format it does not expect) logged an error line per mirrored row.
  it('logs rows that cannot be mapped once a minute at most, counting every one', async () => {
    const lines: unknown[] = [];
    Logger.overrideLogger({ log: () => undefined, warn: () => undefined, error: (message: unknown) => void lines.push(message) });
    const clock = jest.spyOn(performance, 'now');
    try {
      const { mirror, writer, registry } = rig([A]);
      mirror.accept(plan, [{ id: -1, projectId: A }, { id: -2, projectId: A }, { id: -3, projectId: A }], toRecord);
      await writer.drain();
      mirror.accept(plan, [{ id: -4, projectId: A }], toRecord);
      await writer.drain();
      expect(await registry.getSingleMetricAsString('mirror_record_failures_total')).toMatch(/entity="spans"} 4/);
      expect(lines).toEqual([expect.objectContaining({ entity: 'spans', notLoggedSinceLastLine: 0 })]);

      // A minute on, the next failure is logged again, with how many the minute did not log.
      const now = performance.now();
      clock.mockReturnValue(now + 60_000);
      mirror.accept(plan, [{ id: -5, projectId: A }], toRecord);
      await writer.drain();
      expect(lines).toEqual([
        expect.objectContaining({ entity: 'spans', notLoggedSinceLastLine: 0 }),
        expect.objectContaining({ entity: 'spans', notLoggedSinceLastLine: 3 }),
      ]);
    } finally {
      clock.mockRestore();
      Logger.overrideLogger(false);
    }
  });

  it('counts a write whose commit is unknown per entity, from zero, and logs it with the method and the error', async () => {
    const { mirror, registry } = rig();
    const warn = jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    try {
      expect(await registry.getSingleMetricAsString('mirror_writes_outcome_unknown_total')).toMatch(/entity="nodes"} 0/);
      mirror.outcomeUnknown('spans', 'updateSpans', A, new Error('Query read timeout'));
      expect(await registry.getSingleMetricAsString('mirror_writes_outcome_unknown_total')).toMatch(/entity="spans"} 1/);
      expect(warn).toHaveBeenCalledWith(
        { entity: 'spans', method: 'updateSpans', projectId: A, error: 'Query read timeout' },
        expect.stringContaining('run `npm run verify -- --project <projectId> --counts-only --repair` over all history'),
      );
    } finally {
      warn.mockRestore();
    }
  });

  it('while the writer\'s queue is full, hands over keys without mapping lines, and maps again once there is room', async () => {
    // Records 1–10 fill the queue; ClickHouse hangs, so they stay there.
    const queueMaxBytes = records(1, 10).reduce((sum, r) => sum + queuedRowBytes({ ...plan.toGapRow(r), line: `{"id":${r.id}}` }), 0);
    const { mirror, writer, sent, gaps, clickHouse } = rig([], { queueMaxBytes, flushRows: 10 });
    clickHouse.hang();
    mirror.accept(plan, records(1, 15), toRecord);
    await mapped(writer);
    expect(writer.stats()).toMatchObject({ queuedRows: 10, acceptedRows: 0, rowsDropped: 5 });
    expect(writer.full).toBe(true);

    mappedIds.length = 0;
    mirror.accept(plan, records(16, 30), toRecord);
    await mapped(writer);
    expect(writer.stats()).toMatchObject({ queuedRows: 10, acceptedRows: 0, rowsDropped: 20 });
    expect(mappedIds).toEqual([]);

    // ClickHouse answers: the batch leaves the queue, and lines are mapped again.
    clickHouse.answer();
    await writer.drain();
    expect(writer.full).toBe(false);
    mirror.accept(plan, records(31, 35), toRecord);
    await writer.drain();
    expect(mappedIds).toEqual([31, 32, 33, 34, 35]);
    expect(sent).toEqual([...records(1, 10), ...records(31, 35)].map((r) => `{"id":${r.id}}`));
    expect(gaps.every((gap) => gap.reason === 'queue_full')).toBe(true);
    expect(gaps.flatMap((gap) => gap.keys.map((key) => Number(key[0])))).toEqual(records(11, 30).map((r) => r.id));
  });

  it('writesSettled() waits for the writes still on their way to Postgres, up to its timeout, and says how many are left', async () => {
    const { mirror } = rig();
    expect(await mirror.writesSettled(5_000)).toBe(0);

    const first = mirror.started();
    const second = mirror.started();
    let started = Date.now();
    expect(await mirror.writesSettled(50)).toBe(2);
    expect(Date.now() - started).toBeGreaterThanOrEqual(45);

    first();
    first(); // settling twice counts once
    expect(await mirror.writesSettled(10)).toBe(1);
    started = Date.now();
    const waiting = mirror.writesSettled(30_000);
    setTimeout(second, 20);
    expect(await waiting).toBe(0);
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
