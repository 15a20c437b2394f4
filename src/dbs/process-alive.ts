import type { ChildProcess } from 'node:child_process';

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
