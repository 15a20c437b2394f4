import type { ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';

/**
 * Waits for a server this process spawned (the embedded Postgres, the local
 * ClickHouse) to say it is ready: `ready` is asked about all `output` has
 * said so far (a utf8 stream) and returns what it found, or undefined. If
 * the server exits first, cannot be started or says nothing in time, it is
 * killed and the promise rejects with why, for the caller to name the server
 * and add its log.
 */
export function untilReady<T>(child: ChildProcess, output: Readable, ready: (said: string) => T | undefined, timeoutMs: number): Promise<T> {
  let said = '';
  return new Promise((done, fail) => {
    const failWith = (why: string) => {
      cleanup();
      child.kill('SIGKILL');
      fail(new Error(why));
    };
    const onOutput = (chunk: string) => {
      said += chunk;
      const found = ready(said);
      if (found === undefined) return;
      cleanup();
      done(found);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => failWith(`exited before it was ready (${signal ?? `code ${code}`})`);
    const onError = (error: Error) => failWith(`could not be started: ${error.message}`);
    const timer = setTimeout(() => failWith(`was not ready within ${timeoutMs / 1000} s`), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      output.off('data', onOutput);
      child.off('exit', onExit);
      child.off('error', onError);
    };
    output.on('data', onOutput);
    child.once('exit', onExit);
    child.once('error', onError);
  });
}
