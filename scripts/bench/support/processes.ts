import { ChildProcess, fork, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import type { HostReady, HostRequest } from './app-host';
import { childRunning } from '../../../src/dbs/process-alive';
import { sleep } from './http-load';

/** The API under test as a child process: either the compiled main.js, or the app host (createApp + IPC). */

const BUILD_ROOT = resolve(__dirname, '../../..');

/** BENCH_CPU_PROF=<dir>: the API processes write a V8 CPU profile there when they exit (node --cpu-prof). */
function profileFlags(): string[] {
  const dir = process.env.BENCH_CPU_PROF;
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${resolve(dir)}`] : [];
}

/** Distributive Omit, so each request variant keeps its own fields. */
type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;

export interface AppHost extends HostReady {
  call<T>(request: WithoutId<HostRequest>): Promise<T>;
  close(): Promise<void>;
}

export async function startAppHost(env: Record<string, string>, log: (line: string) => void): Promise<AppHost> {
  const child = fork(resolve(__dirname, 'app-host.js'), [], {
    execArgv: profileFlags(),
    env: { ...process.env, BENCH_APP_ENV: JSON.stringify(env) },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-4000);
    for (const line of chunk.split('\n')) if (line.trim()) log(`[app ${child.pid}] ${line.trim()}`);
  });
  const pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  let nextId = 1;
  const ready = await new Promise<HostReady>((done, fail) => {
    child.once('exit', (code) => fail(new Error(`app host exited (${code}) before it was ready:\n${stderr}`)));
    child.on('message', (message: HostReady | { id: number; error?: string }) => {
      if ('ready' in message) return done(message);
      const waiter = pending.get(message.id);
      if (!waiter) return;
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(message.error));
      else waiter.resolve(message);
    });
  });
  child.removeAllListeners('exit');
  child.once('exit', (code) => {
    for (const waiter of pending.values()) waiter.reject(new Error(`app host exited (${code})`));
  });
  return {
    ...ready,
    call: <T>(request: WithoutId<HostRequest>) =>
      new Promise<T>((done, fail) => {
        const id = nextId++;
        pending.set(id, { resolve: done as (value: unknown) => void, reject: fail });
        child.send({ ...request, id });
      }),
    close: async () => {
      if (!childRunning(child)) return;
      const exited = new Promise((done) => child.once('exit', done));
      const id = nextId++;
      child.send({ id, cmd: 'close' });
      await Promise.race([exited, sleep(20_000)]);
      if (childRunning(child)) child.kill('SIGKILL');
    },
  };
}

export interface ApiProcess {
  url: string;
  pid: number;
  child: ChildProcess;
  /**
   * Whether it still runs, and the last of what it printed: for a benchmark's
   * failure message. Waits up to a second for an exit to be reported, since a
   * dead API's sockets fail before its exit event arrives.
   */
  describe(): Promise<string>;
  /** SIGTERM (graceful: drains requests, flushes the mirror within its deadline), then waits. */
  stop(): Promise<void>;
}

/** The compiled API (src/main.js) as production runs it, on `port`; resolves once GET /health answers 200. */
export async function startApiProcess(env: Record<string, string>, port: number, log: (line: string) => void): Promise<ApiProcess> {
  const child = spawn(process.execPath, [...profileFlags(), resolve(BUILD_ROOT, 'src/main.js')], {
    env: { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer) => (output = (output + chunk.toString('utf8')).slice(-8000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (!childRunning(child)) throw new Error(`API exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${output}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`API was not ready within 60 s:\n${output}`);
    }
    const ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
    if (ok) break;
    await sleep(200);
  }
  log(`API pid ${child.pid} on ${url}`);
  return {
    url,
    pid: child.pid!,
    child,
    describe: async () => {
      if (childRunning(child)) await Promise.race([new Promise((done) => child.once('exit', done)), sleep(1000)]);
      const state = childRunning(child) ? 'still running' : `exited (${child.exitCode ?? child.signalCode})`;
      return `API pid ${child.pid} ${state}; its last output:\n${output.trimEnd() || '(none)'}`;
    },
    stop: async () => {
      if (!childRunning(child)) return;
      const exited = new Promise((done) => child.once('exit', done));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(30_000)]);
      if (childRunning(child)) child.kill('SIGKILL');
    },
  };
}
