/** Time as the mirror's parts read it and wait on it; tests drive them all with one ManualClock (test/support). */
export interface Clock {
  /** Epoch ms for durations: never goes back. */
  now(): number;
  /** Epoch ms as the wall clock reads it, for times shown to people (/health's lastSuccessAt). */
  wallNow(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realClock: Clock = {
  // Monotonic, in epoch milliseconds. The mirror measures durations with it (flush intervals, the
  // breaker's open period, lag): on Date.now() a wall clock stepped back by H (NTP, a resumed VM)
  // held the interval flush and kept the breaker open, with no probe, for H.
  now: () => performance.timeOrigin + performance.now(),
  // The monotonic clock drifts from the wall clock by every step and suspend since start.
  wallNow: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};
