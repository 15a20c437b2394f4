import type { MirrorLogger } from './batch-writer';
import type { Clock } from './clock';
import type { MirrorMetrics } from './mirror-metrics';
import { BreakerOptions, BreakerState, CircuitBreaker } from './retry-policy';

/** What a sender is let do: send, send as the one half-open probe, or give up because the writer stopped. */
export type GateAdmission = 'send' | 'probe' | 'stopped';

export interface BreakerGateDeps {
  /** The batch writer's clock, so tests drive both with one fake. */
  clock: Clock;
  logger: Pick<MirrorLogger, 'info' | 'warn'>;
  metrics?: MirrorMetrics;
  /** Runs a timer's work so that a throw is logged, not raised into the event loop. */
  guarded: (message: string, work: () => void) => void;
  /** Senders may go again (the breaker closed or turned half-open): tables that held rows back should look again. */
  onReopen: () => void;
  /** What the outage lines report of the writer. */
  outageContext: () => { queuedRows: number; lastError: string | null };
}

/** How the mirror_breaker_state gauge spells each state. */
const BREAKER_GAUGE: Record<BreakerState, number> = { closed: 0, half_open: 1, open: 2 };

/** While an outage lasts, how often the log says it still does. */
const OUTAGE_REMINDER_MS = 60_000;

/**
 * The batch writer's side of the circuit breaker: everything that turns the
 * breaker's state (a pure function of failures and the clock, see
 * CircuitBreaker) into behaviour. Senders wait here while it is open; a timer
 * lets one of them through as the probe when the open period ends; every
 * change sets the gauge, and an outage is logged when it starts, at most once
 * a minute while its probes keep failing (not at every probe: 720 lines an
 * hour at the default 5 s), and when it ends. One gate per writer, shared by
 * all its tables, since they all talk to one server.
 */
export class BreakerGate {
  private readonly breaker: CircuitBreaker;
  private readonly waiters = new Set<() => void>();
  private halfOpenTimer: unknown | null = null;
  private outage: { since: number; failedProbes: number; remindedAt: number } | null = null;
  private stopped = false;
  private outagesBegun = 0;

  constructor(
    private readonly options: BreakerOptions,
    private readonly deps: BreakerGateDeps,
  ) {
    this.breaker = new CircuitBreaker(options, () => deps.clock.now());
    deps.metrics?.breakerState.set(BREAKER_GAUGE.closed);
  }

  get state(): BreakerState {
    return this.breaker.state;
  }

  /**
   * How many outages have begun: times the breaker opened from closed. A sender tells by it that one began
   * since it last looked. A reopening after a failed probe is not a new one: that probe's insert may have
   * failed while ClickHouse answered its ping, and counting it would give every other waiting batch fresh
   * attempts each time, so two tables' batches failing in turn were held for ever.
   */
  get outages(): number {
    return this.outagesBegun;
  }

  /** True while no new batch should start: the breaker is open, or its half-open probe is out. */
  get holding(): boolean {
    return this.breaker.state === 'open' || this.breaker.probing;
  }

  /** Waits until this sender may send: resolves 'send' while closed, 'probe' for the one half-open probe, 'stopped' on stop(). */
  async admit(): Promise<GateAdmission> {
    for (;;) {
      if (this.stopped) return 'stopped';
      const admission = this.breaker.admit();
      if (admission !== 'wait') return admission;
      await new Promise<void>((wake) => this.waiters.add(wake));
    }
  }

  /** ClickHouse answered (a rejection is an answer too): the breaker closes. */
  recordAnswer(): void {
    this.change(() => this.breaker.recordSuccess());
  }

  /** ClickHouse did not answer a send or the probe: past the threshold the breaker (re)opens. */
  recordFailure(of: 'send' | 'probe'): void {
    this.change(() => this.breaker.recordFailure(of), of);
  }

  /** No more timers; every waiting sender is let go with 'stopped'. */
  stop(): void {
    this.stopped = true;
    if (this.halfOpenTimer !== null) this.deps.clock.clearTimeout(this.halfOpenTimer);
    this.halfOpenTimer = null;
    this.wakeWaiters();
  }

  /**
   * Apply a breaker change and react to a new state: update the gauge, log, and wake or schedule the waiting
   * senders. `failure`: what failed, when a failure made the change (a send that was out before the breaker
   * opened can end after the open period).
   */
  private change(apply: () => void, failure?: 'send' | 'probe'): void {
    const before = this.breaker.state;
    apply();
    const after = this.breaker.state;
    if (after === 'open') this.scheduleHalfOpen();
    // Counted whatever the state was: a send that was out before the breaker opened may have reopened it first.
    if (failure === 'probe' && this.outage) this.outage.failedProbes += 1;
    if (before === after) return;
    this.deps.metrics?.breakerState.set(BREAKER_GAUGE[after]);
    if (after === 'open') {
      if (before === 'closed') this.outagesBegun += 1;
      this.noteOutage();
      return;
    }
    if (after === 'closed' && this.outage) {
      const { since, failedProbes } = this.outage;
      this.outage = null;
      this.deps.logger.info({ openForMs: this.deps.clock.now() - since, failedProbes }, 'ClickHouse circuit breaker closed: inserts go through again');
    } else {
      this.deps.logger.info({ state: after }, 'ClickHouse circuit breaker changed state');
    }
    this.reopen();
  }

  /** The breaker (re)opened: log the outage's start, then a reminder at most every OUTAGE_REMINDER_MS. */
  private noteOutage(): void {
    const now = this.deps.clock.now();
    if (!this.outage) {
      this.outage = { since: now, failedProbes: 0, remindedAt: now };
      this.deps.logger.warn({ openMs: this.options.openMs, lastError: this.deps.outageContext().lastError }, 'ClickHouse circuit breaker opened');
      return;
    }
    if (now - this.outage.remindedAt < OUTAGE_REMINDER_MS) return;
    this.outage.remindedAt = now;
    this.deps.logger.warn(
      { openForMs: now - this.outage.since, failedProbes: this.outage.failedProbes, ...this.deps.outageContext() },
      'ClickHouse circuit breaker still open: probes keep failing',
    );
  }

  /** (Re)start the open period's timer; when it fires, one sender gets to probe. */
  private scheduleHalfOpen(): void {
    if (this.stopped) return;
    if (this.halfOpenTimer !== null) this.deps.clock.clearTimeout(this.halfOpenTimer);
    this.halfOpenTimer = this.deps.clock.setTimeout(() => {
      this.halfOpenTimer = null;
      this.deps.guarded('mirror breaker timer failed', () => {
        // Node runs timers on libuv's clock, which can be a millisecond ahead of the one it reads, so the
        // breaker may still read open here. Woken now, the senders would wait again with no timer
        // left to wake them, and the mirror would stop sending for good: look again instead.
        if (this.breaker.state === 'open') return this.scheduleHalfOpen();
        this.deps.metrics?.breakerState.set(BREAKER_GAUGE[this.breaker.state]);
        this.reopen();
      });
    }, this.breaker.msUntilHalfOpen());
  }

  /** Waiting senders re-check the breaker, and the writer restarts tables that held back. */
  private reopen(): void {
    this.wakeWaiters();
    this.deps.onReopen();
  }

  private wakeWaiters(): void {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const wake of waiters) wake();
  }
}
