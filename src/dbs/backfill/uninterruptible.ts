/**
 * Stretches of an operator command that a Ctrl-C must let finish: between
 * reading ClickHouse's tombstones of some keys and writing them back after
 * their rows were removed, only this process holds them, and exiting once
 * the removal is issued (holdTombstones) loses them (verify's counts cannot
 * see it). The command's signal handler
 * (exitOnSignal) asks `deferInterrupt` before it exits: inside such a
 * stretch the exit waits for its end; another signal, or the same one a
 * second later (exitOnSignal's repeat window), still exits at once.
 */
let open = 0;
let deferred: ((failure?: unknown) => void) | null = null;
/** Tombstones held now, by stretches that have begun removing their keys (holdTombstones). */
let holding = 0;
/** Tombstones were lost (tombstonesLost): whatever ends the command from then on says so. */
let lost = false;

/**
 * What a stretch cut short, or failed part-way, loses, and what to do: the tombstones of deleted keys it held.
 * verify cannot see them missing until a create of such a key still queued in some API lands, hidden no more.
 */
export const LOST_IN_A_STRETCH =
  "the tombstones this process held: deleted keys' tombstones may be missing from ClickHouse, which verify sees only once " +
  "what the APIs' mirrors had queued by then has landed: once every API's /health shows a lagMs shorter than the time since, or queuedRows 0, " +
  'run `npm run verify -- --repair`';

/**
 * Runs `work`; an interrupt that comes meanwhile takes effect when it (and any other such stretch) ends,
 * whether it succeeded or failed. A failure is handed to the exit, which shows it first: it may say that the
 * held tombstones were lost, and a caller that catches it and goes on (a gap replay moves to the next gap)
 * would otherwise have kept the command running past the operator's interrupt.
 */
export async function uninterruptibly<T>(work: () => Promise<T>): Promise<T> {
  open++;
  let result: T;
  try {
    result = await work();
  } catch (error) {
    if (--open === 0) takeDeferred()?.(error);
    throw error;
  }
  if (--open === 0) takeDeferred()?.();
  return result;
}

function takeDeferred(): ((failure?: unknown) => void) | null {
  const exit = deferred;
  deferred = null;
  return exit;
}

/** Outside any stretch: false, and the caller exits now. Inside one: true, and `exit` runs when the last ends. */
export function deferInterrupt(exit: (failure?: unknown) => void): boolean {
  if (open === 0) return false;
  deferred = exit;
  return true;
}

/**
 * Marks, inside a stretch, the part that holds tombstones: from issuing the
 * removal of their keys until they are written back (the returned release).
 * Before it nothing is lost by exiting, as ClickHouse still has them.
 */
export function holdTombstones(): () => void {
  holding++;
  let released = false;
  return () => {
    if (!released) holding--;
    released = true;
  };
}

/**
 * Records that tombstones this process held were lost (their write-back
 * failed after the removal). The error saying so reaches the operator only
 * at the command's end, after its servers are closed: an interrupt before
 * then must not end the command as merely interrupted.
 */
export function tombstonesLost(): void {
  lost = true;
}

/** Whether tombstones are held now: an exit now loses them (holdTombstones). */
export function holdingTombstones(): boolean {
  return holding > 0;
}

/** Whether tombstones were lost already (tombstonesLost). */
export function tombstonesWereLost(): boolean {
  return lost;
}
