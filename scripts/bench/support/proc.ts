import { readdirSync, readFileSync } from 'node:fs';

/** Linux /proc readings for processes the benchmark does not run in-process (the API, the local ClickHouse). */

/** USER_HZ: /proc/<pid>/stat counts CPU time in these ticks; 100 on every Linux the project runs on. */
const TICKS_PER_SECOND = 100;

function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces; the rest is space-separated.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** User + system CPU seconds the process has used so far. */
export function cpuSecondsOf(pid: number): number {
  const fields = statFields(pid);
  // After the name: state is index 0, so utime (field 14) is index 11 and stime (field 15) index 12.
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** Resident set size in bytes (VmRSS), or null once the process is gone. */
export function rssOf(pid: number): number | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Pids of this process's direct children whose command line contains `needle`. */
export function childPids(needle: string, parent = process.pid): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const pid = Number(entry);
      if (Number(statFields(pid)[1]) !== parent) continue;
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(needle)) pids.push(pid);
    } catch {
      // The process ended while we looked.
    }
  }
  return pids;
}

export const MiB = 1024 * 1024;

/** CPU seconds of children the process has reaped (cutime + cstime): where an exited backend's time goes. */
function reapedCpuSecondsOf(pid: number): number {
  const fields = statFields(pid);
  return (Number(fields[13]) + Number(fields[14])) / TICKS_PER_SECOND;
}

/**
 * CPU seconds of a process and all its descendants (e.g. the embedded
 * postmaster and its backends), counting exited descendants through their
 * parents' reaped time, so a backend that ends between two readings is not lost.
 */
export function treeCpuSecondsOf(root: number): number {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const pid = Number(entry);
      const parent = Number(statFields(pid)[1]);
      children.set(parent, [...(children.get(parent) ?? []), pid]);
    } catch {
      // The process ended while we looked.
    }
  }
  let total = 0;
  const stack = [root];
  while (stack.length) {
    const pid = stack.pop()!;
    try {
      total += cpuSecondsOf(pid) + reapedCpuSecondsOf(pid);
    } catch {
      continue;
    }
    stack.push(...(children.get(pid) ?? []));
  }
  return total;
}

/**
 * Waits until a process has been nearly idle (under `busyMs` of CPU per
 * `windowMs`) or `maxMs` have passed; how long it waited, in ms. After a
 * benchmark phase inserts into the local ClickHouse, its background merges
 * go on for seconds, and the next phase would pay for them.
 */
export async function waitUntilQuiet(pid: number, { windowMs = 250, busyMs = 15, maxMs = 10_000 } = {}): Promise<number> {
  const started = Date.now();
  let before = cpuSecondsOf(pid);
  while (Date.now() - started < maxMs) {
    await new Promise((resolve) => setTimeout(resolve, windowMs));
    const now = cpuSecondsOf(pid);
    if ((now - before) * 1000 < busyMs) break;
    before = now;
  }
  return Date.now() - started;
}
