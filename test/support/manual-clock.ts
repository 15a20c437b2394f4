import type { Clock } from '../../src/dbs/clickhouse/clock';

/** Timers that only fire when the test advances time. */
export class ManualClock implements Clock {
  private time = 1_000_000;
  private nextId = 1;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();
  /**
   * How much sooner than asked a timer of more than a millisecond fires, as
   * now() reads. Node runs timers on libuv's clock, which can be a
   * millisecond ahead of Date.now(): 2 of 300 timers did so on this machine.
   */
  earlyMs = 0;

  now(): number {
    return this.time;
  }

  /** How far the wall clock reads from now(): a test steps it to tell the two apart. */
  wallOffsetMs = 0;

  wallNow(): number {
    return this.time + this.wallOffsetMs;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    const delay = Math.max(0, ms);
    this.timers.set(id, { at: this.time + delay - Math.min(this.earlyMs, Math.max(0, delay - 1)), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  get pendingTimers(): number {
    return this.timers.size;
  }

  /** Move time forward, firing due timers in order and letting promises settle after each. */
  async advance(ms: number): Promise<void> {
    const target = this.time + ms;
    for (;;) {
      await settle();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) {
        if (entry[1].at <= target && (!next || entry[1].at < next[1].at)) next = entry;
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].fn();
    }
    this.time = target;
    await settle();
  }
}

/** Let queued microtasks and promise chains run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}
