/**
 * Rows one step of a whole-trace or whole-tree delete takes: each step is a
 * transaction of its own, so a trace of millions of spans is deleted in
 * bounded statements (each within the statement timeout, its tombstones
 * handed to the mirror as it commits) rather than in one that holds every
 * row's lock, and every deleted row in memory, to the end.
 */
export const DELETE_STEP_ROWS = 10_000;

/**
 * Runs `step` (a delete of at most `atMost` rows, returning those it took)
 * until one takes fewer than that; returns how many rows they took in all.
 * A delete cut short (a failed step) leaves the earlier steps committed:
 * repeating it deletes the rest.
 */
export async function deleteInSteps(step: (atMost: number) => Promise<readonly unknown[]>, atMost = DELETE_STEP_ROWS): Promise<number> {
  let total = 0;
  for (;;) {
    const taken = (await step(atMost)).length;
    total += taken;
    if (taken < atMost) return total;
  }
}
