/**
 * Stretches of an operator command that a Ctrl-C must let finish: between
 * reading ClickHouse's tombstones of some keys and writing them back after
 * their rows were removed, only this process holds them, and exiting there
 * loses them (verify's counts cannot see it). The command's signal handler
 * (exitOnSignal) asks `deferInterrupt` before it exits: inside such a
 * stretch the exit waits for its end; a second signal still exits at once.
 */
let open = 0;
let deferred: (() => void) | null = null;

/**
 * Runs `work`; an interrupt that comes meanwhile takes effect when it (and any other such stretch) ends. If
 * it fails, the interrupt is dropped: the failure is what the operator must read (it may say that the held
 * tombstones were lost), and the command reports it and exits as failed; a further signal exits at once.
 */
export async function uninterruptibly<T>(work: () => Promise<T>): Promise<T> {
  open++;
  let result: T;
  try {
    result = await work();
  } catch (error) {
    if (--open === 0) deferred = null;
    throw error;
  }
  if (--open === 0 && deferred) {
    const exit = deferred;
    deferred = null;
    exit();
  }
  return result;
}

/** Outside any stretch: false, and the caller exits now. Inside one: true, and `exit` runs when the last ends. */
export function deferInterrupt(exit: () => void): boolean {
  if (open === 0) return false;
  deferred = exit;
  return true;
}
