import { ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processAlive } from '../../src/dbs/process-alive';
import { freePort } from '../../scripts/cli/free-port';

export interface PostgresProcess {
  url: string;
  /** Stops the server (fast shutdown; a frozen one is thawed first) and waits for its process to exit. */
  stop(): Promise<void>;
  /**
   * Stops every PostgreSQL process (SIGSTOP) without closing a socket: the
   * server that no longer answers, which a crash or a refused connect is not.
   */
  freeze(): void;
  /** Lets the frozen server run again (SIGCONT). */
  thaw(): void;
}

/** The processes below `pid` (Linux /proc): the postmaster and its backends, for the helper process. */
function descendantsOf(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // The process exited while we looked.
    }
  }
  const found: number[] = [];
  const walk = (parent: number) => {
    for (const [child, ppid] of parentOf) {
      if (ppid !== parent) continue;
      found.push(child);
      walk(child);
    }
  };
  walk(pid);
  return found;
}

function signalAll(pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (error) {
      // A backend may exit between listing and signalling.
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  }
}

/** An embedded PostgreSQL in a child process, on `port`, with its data in `dataDir`. */
function startPostgresProcess(port: number, dataDir: string): Promise<PostgresProcess> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'postgres-process.main.ts'), String(port), dataDir], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`embedded Postgres did not start within 60 s:\n${output}`)), 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const m = /POSTGRES_READY (\S+)/.exec(output);
      if (!m) return;
      clearTimeout(timer);
      const exited = new Promise<void>((done) => child.once('exit', () => done()));
      resolve({
        url: m[1],
        stop: async () => {
          signalAll(descendantsOf(child.pid!), 'SIGCONT');
          child.kill('SIGTERM');
          await exited;
        },
        freeze: () => {
          const server = descendantsOf(child.pid!);
          if (server.length === 0) throw new Error('no PostgreSQL process found to freeze');
          signalAll(server, 'SIGSTOP');
        },
        thaw: () => signalAll(descendantsOf(child.pid!), 'SIGCONT'),
      });
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`embedded Postgres exited with ${code}:\n${output}`));
    });
  });
}

export interface OwnedPostgres {
  /** Starts the server on its port and data directory; after a stop, again (a restart keeps the data). */
  start(): Promise<PostgresProcess>;
  /** Deletes the data directory; stop the server first. */
  remove(): Promise<void>;
}

/**
 * A PostgreSQL server for a spec that stops or freezes it, which the run's
 * shared server must never be: a free port and a data directory of its own.
 */
export async function ownPostgres(prefix: string): Promise<OwnedPostgres> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  // mkdtemp makes it 0700; PostgreSQL runs as the `postgres` user when we are root.
  await chmod(dir, 0o755);
  const port = await freePort();
  return {
    start: () => startPostgresProcess(port, join(dir, 'data')),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/**
 * Stops the server of this data directory, whoever started it (postmaster.pid
 * names it), and waits for it to go: a leftover of a failed run, or one that
 * another process left running.
 */
export async function stopPostmasterOf(dataDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return;
  }
  if (processAlive(pid)) process.kill(pid, 'SIGINT');
  for (let i = 0; i < 200 && processAlive(pid); i++) await new Promise((done) => setTimeout(done, 50));
}

/**
 * Stops (SIGSTOP) or resumes (SIGCONT) the server of this data directory,
 * whoever started it, with every process of it: the server that no longer
 * answers, without closing a socket.
 */
export function signalPostmasterOf(dataDir: string, signal: 'SIGSTOP' | 'SIGCONT'): void {
  const postmaster = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  signalAll([postmaster, ...descendantsOf(postmaster)], signal);
}
