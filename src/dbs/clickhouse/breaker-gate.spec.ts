import { Registry } from 'prom-client';
import { BreakerGate, GateAdmission } from './breaker-gate';
import { createMirrorMetrics } from './mirror-metrics';
import { ManualClock, settle } from '../../../test/support/manual-clock';

function setup(failureThreshold = 2, openMs = 1000) {
  const clock = new ManualClock();
  const lines: Array<{ level: string; obj: Record<string, unknown>; msg: string }> = [];
  const logger = {
    info: (obj: object, msg: string) => lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    warn: (obj: object, msg: string) => lines.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
  };
  const registry = new Registry();
  const metrics = createMirrorMetrics(registry);
  let reopened = 0;
  const gate = new BreakerGate(
    { failureThreshold, openMs },
    {
      clock,
      logger,
      metrics,
      guarded: (_message, work) => work(),
      onReopen: () => {
        reopened += 1;
      },
      outageContext: () => ({ queuedRows: 7, lastError: 'connect ECONNREFUSED' }),
    },
  );
  const gauge = async () => (await registry.getSingleMetric('mirror_breaker_state')!.get()).values[0].value;
  return { clock, lines, gate, gauge, reopened: () => reopened };
}

/** Start waiting for admission; `result` is filled in when the gate lets the sender go. */
function waitFor(gate: BreakerGate) {
  const sender: { result: GateAdmission | null } = { result: null };
  void gate.admit().then((admission) => (sender.result = admission));
  return sender;
}

describe('BreakerGate', () => {
  it('admits senders at once while closed', async () => {
    const { gate, gauge } = setup();
    await expect(gate.admit()).resolves.toBe('send');
    expect(gate.holding).toBe(false);
    expect(await gauge()).toBe(0);
  });

  it('holds senders while open, lets one through as the probe when the open period ends, and the rest once it answers', async () => {
    const { clock, gate, gauge, reopened, lines } = setup(2, 1000);
    gate.recordFailure('send');
    expect(gate.state).toBe('closed');
    gate.recordFailure('send');
    expect(gate.state).toBe('open');
    expect(gate.holding).toBe(true);
    expect(await gauge()).toBe(2);
    expect(lines).toEqual([{ level: 'warn', obj: { openMs: 1000, lastError: 'connect ECONNREFUSED' }, msg: 'ClickHouse circuit breaker opened' }]);

    const first = waitFor(gate);
    const second = waitFor(gate);
    await settle();
    expect([first.result, second.result]).toEqual([null, null]);

    await clock.advance(1000);
    expect([first.result, second.result]).toEqual(['probe', null]);
    expect(gate.holding).toBe(true);
    expect(await gauge()).toBe(1);
    expect(reopened()).toBe(1);

    await clock.advance(200);
    gate.recordAnswer();
    await settle();
    expect(second.result).toBe('send');
    expect(gate.state).toBe('closed');
    expect(await gauge()).toBe(0);
    expect(lines.at(-1)).toEqual({ level: 'info', obj: { openForMs: 1200, failedProbes: 0 }, msg: 'ClickHouse circuit breaker closed: inserts go through again' });
  });

  it('a failed probe reopens it for another open period and counts the probe, without a new outage line', async () => {
    const { clock, gate, lines } = setup(1, 1000);
    gate.recordFailure('send');
    await clock.advance(1000);
    await expect(gate.admit()).resolves.toBe('probe');
    gate.recordFailure('probe');
    expect(gate.state).toBe('open');
    expect(lines.filter((line) => line.msg.startsWith('ClickHouse circuit breaker opened'))).toHaveLength(1);

    // The next probe goes a whole open period after the failed one.
    const next = waitFor(gate);
    await clock.advance(999);
    expect(next.result).toBeNull();
    await clock.advance(1);
    expect(next.result).toBe('probe');
    gate.recordAnswer();
    expect(lines.at(-1)!.obj).toEqual({ openForMs: 2000, failedProbes: 1 });
  });

  it('does not count a send that was out before it opened, failing after the open period, as a failed probe', async () => {
    const { clock, gate, lines } = setup(1, 1000);
    gate.recordFailure('send');
    await clock.advance(1000);
    // An insert sent before the breaker opened ends now (its request timeout is longer than the open period).
    gate.recordFailure('send');
    expect(gate.state).toBe('open');
    await clock.advance(1000);
    await expect(gate.admit()).resolves.toBe('probe');
    gate.recordAnswer();
    expect(lines.at(-1)).toEqual({ level: 'info', obj: { openForMs: 2000, failedProbes: 0 }, msg: 'ClickHouse circuit breaker closed: inserts go through again' });
  });

  it('counts a failed probe when such a send reopened the breaker while the probe was out', async () => {
    const { clock, gate, lines } = setup(1, 1000);
    gate.recordFailure('send');
    await clock.advance(1000);
    await expect(gate.admit()).resolves.toBe('probe');
    gate.recordFailure('send');
    gate.recordFailure('probe');
    await clock.advance(1000);
    await expect(gate.admit()).resolves.toBe('probe');
    gate.recordAnswer();
    expect(lines.at(-1)!.obj).toEqual({ openForMs: 2000, failedProbes: 1 });
  });

  it('reminds at most once a minute while probes keep failing, with what the writer holds', async () => {
    const { clock, gate, lines } = setup(1, 1000);
    gate.recordFailure('send');
    for (let probe = 1; probe <= 130; probe++) {
      await clock.advance(1000);
      await expect(gate.admit()).resolves.toBe('probe');
      gate.recordFailure('probe');
    }
    const reminders = lines.filter((line) => line.msg === 'ClickHouse circuit breaker still open: probes keep failing');
    expect(reminders.map((line) => line.obj)).toEqual([
      { openForMs: 60_000, failedProbes: 60, queuedRows: 7, lastError: 'connect ECONNREFUSED' },
      { openForMs: 120_000, failedProbes: 120, queuedRows: 7, lastError: 'connect ECONNREFUSED' },
    ]);
  });

  it('looks again when its timer fires while the breaker still reads open (the event loop clock ran ahead of Date.now)', async () => {
    const { clock, gate, reopened } = setup(1, 1000);
    clock.earlyMs = 1;
    gate.recordFailure('send');
    const sender = waitFor(gate);
    // The open period's timer fires at 999 ms, as now() reads.
    await clock.advance(999);
    expect(sender.result).toBeNull();
    expect(reopened()).toBe(0);
    // Woken now, the sender would wait again with no timer left: the gate must have set a new one.
    expect(clock.pendingTimers).toBe(1);

    await clock.advance(1);
    expect(sender.result).toBe('probe');
  });

  it('stop lets every waiting sender go with stopped, clears its timer and admits nobody after', async () => {
    const { clock, gate } = setup(1, 1000);
    gate.recordFailure('send');
    const senders = [waitFor(gate), waitFor(gate)];
    gate.stop();
    await settle();
    expect(senders.map((sender) => sender.result)).toEqual(['stopped', 'stopped']);
    expect(clock.pendingTimers).toBe(0);
    await expect(gate.admit()).resolves.toBe('stopped');
    gate.recordFailure('send');
    expect(clock.pendingTimers).toBe(0);
  });
});
