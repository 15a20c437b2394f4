import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * Whether a process with this id exists: signal 0 checks without sending
 * anything. EPERM means it exists but belongs to another user (the postgres
 * user, when we run as root).
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether a child we spawned still runs: one killed by a signal has no exit code, only a signal code. */
export function childRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/**
 * When a process started, as Linux counts it (clock ticks since boot, the
 * 22nd field of /proc/<pid>/stat). With its pid it names one process, which
 * the pid alone stops doing once the process has ended and the pid is
 * reused. null without an answer: the process gone, or no /proc (not Linux).
 */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2, the command name, is in parentheses and may hold spaces and ')': count from after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}
