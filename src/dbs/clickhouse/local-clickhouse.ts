import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import type { Socket } from 'node:net';
import { resolve } from 'node:path';
import { OperatorError } from '../../config/operator-error';
import { nodeCommand } from '../node-command';
import { childRunning } from '../process-alive';
import { untilReady } from '../server-ready';

/**
 * The embedded default: a local ClickHouse endpoint (the real engine via chdb,
 * behind scripts/clickhouse-local) at a well-known local address with its
 * data under the project. Every command that needs ClickHouse calls
 * resolveClickHouse(); the first one to find nothing answering starts the
 * server as its child process, the others join it, so they all see the same
 * data. The server runs while the process that started it, or any that joined
 * it, still does. chdb allows one data directory per process, which is why the
 * server is a process of its own.
 */

export interface LocalClickHouseOptions {
  /** 0 lets the server pick a free port (tests); the ready line reports it. */
  port: number;
  dataDir: string;
  log?: (message: string) => void;
}

export interface ResolvedClickHouse {
  url: string;
  /**
   * Present when this process started the server; stops it again, unless a
   * process that joined it still runs. Then it is left running for them and
   * stops itself once they have ended.
   */
  stop?: () => Promise<void>;
  /** Present when this process joined a server another one started: lets go of it (ending this process does too). */
  release?: () => void;
}

/**
 * The local server's own path for the processes that joined it (see
 * scripts/clickhouse-local/server-holders.ts). A joiner holds the server up
 * while it runs by keeping a request open on it; the process that started the
 * server asks it to stop unless someone else holds it.
 */
export const LOCAL_HOLDERS_PATH = '/local/holders';

/** On the 503 a stopping local server answers a hold with: ours, not a proxy's 503 (see ServerHolders). */
export const LOCAL_STOPPING_HEADER = 'x-local-clickhouse';

const READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;
const READY_LINE = /^CLICKHOUSE_LOCAL_READY (\S+)/m;

export function localClickHouseUrl(port: number): string {
  return `http://127.0.0.1:${port}`;
}

/**
 * A request (GET unless said) of `path` at `url`: its status and body; `refused` when nothing
 * listens; `held` when a program took the request and did not answer in time
 * (a server of ours holds requests while its engine opens); `reset` when the
 * connection was cut before an answer (a server of ours stopping closes every
 * connection); `garbled` when a program answered in something other than
 * HTTP (another protocol).
 */
type Answer = { status?: number; body: string } | 'refused' | 'held' | 'reset' | 'garbled';

function get(url: string, path: string, timeoutMs: number, method = 'GET'): Promise<Answer> {
  return new Promise((done) => {
    let timedOut = false;
    const req = request(new URL(path, url), { method, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => done({ status: res.statusCode, body }));
      res.on('error', () => done('garbled'));
    });
    req.on('timeout', () => {
      timedOut = true;
      req.destroy();
    });
    req.on('error', (error: NodeJS.ErrnoException) =>
      done(timedOut ? 'held' : error.code === 'ECONNREFUSED' ? 'refused' : error.code === 'ECONNRESET' ? 'reset' : 'garbled'),
    );
    req.end();
  });
}

const isClickHouse = (answer: Answer) => typeof answer === 'object' && answer.status === 200 && answer.body.startsWith('Ok.');

/** Whether a ClickHouse HTTP endpoint answers /ping at this URL. */
export async function clickHouseAnswers(url: string, timeoutMs = 2_000): Promise<boolean> {
  return isClickHouse(await get(url, '/ping', timeoutMs));
}

/**
 * Who is on the port at `url`: a ClickHouse; another program; nobody (the
 * port is free again); or, at `deadline`, a program still holding the
 * request. Until then a held request is asked again, as a server of ours
 * holds them while its engine opens, and so is a cut one: a server of ours
 * that another command is stopping cuts it, then frees the port.
 */
async function whoAnswers(url: string, deadline: number): Promise<'clickhouse' | 'other' | 'nobody' | 'held'> {
  for (;;) {
    const answer = await get(url, '/ping', Math.max(100, Math.min(2_000, deadline - Date.now())));
    if (isClickHouse(answer)) return 'clickhouse';
    if (answer === 'refused') return 'nobody';
    if (answer !== 'held' && answer !== 'reset') return 'other';
    if (Date.now() >= deadline) return answer === 'held' ? 'held' : 'other';
    if (answer === 'reset') await new Promise((done) => setTimeout(done, 100));
  }
}

class ServerStartError extends Error {
  constructor(
    message: string,
    readonly portTaken: boolean,
  ) {
    super(message);
  }
}

async function launch(options: LocalClickHouseOptions): Promise<{ url: string; child: ChildProcess }> {
  const log = options.log ?? (() => undefined);
  const { command, args } = nodeCommand(resolve(__dirname, '../../../scripts/clickhouse-local/main'));
  // stdin stays an open pipe: the server exits when it closes, i.e. when this process dies. Its own process
  // group: a Ctrl-C in the terminal signals the whole foreground group, and the server stopped at once while
  // this process was still flushing the mirror into it; this process stops it when it is done with it.
  const child = spawn(command, [...args, '--port', String(options.port), '--data-dir', resolve(options.dataDir), '--exit-with-parent'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  let stderr = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-4_000)));
  try {
    const url = await untilReady(child, child.stdout!, (said) => READY_LINE.exec(said)?.[1], READY_TIMEOUT_MS);
    // After the ready line, keep draining the pipes (a full pipe would block the server) and pass its logs on.
    child.stdout!.resume();
    child.stderr!.on('data', (text: string) => text.split('\n').forEach((line) => line.trim() && log(line.trim())));
    return { url, child };
  } catch (error) {
    const tail = stderr.trim() ? `\n--- server stderr (tail) ---\n${stderr.trim()}` : '';
    throw new ServerStartError(`local ClickHouse (${command} ${args.join(' ')}) ${(error as Error).message}${tail}`, /EADDRINUSE/.test(stderr));
  }
}

/**
 * Holds the local server up for as long as this process runs, or until the
 * returned release is called: one request on LOCAL_HOLDERS_PATH that the
 * server never ends. Its connection closes when this process ends, however it
 * ends. A ClickHouse that is not ours has no such path: nothing to hold
 * (`not ours`). `gone`: the server stopped before it could be held, or is
 * stopping (503: its starter is done with it and nobody held it then).
 */
function holdServer(url: string): Promise<(() => void) | 'not ours' | 'gone'> {
  return new Promise((done) => {
    const hold = request(new URL(`${LOCAL_HOLDERS_PATH}?hold=${process.pid}`, url), { agent: false, timeout: 2_000 }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return done(res.statusCode === 503 && res.headers[LOCAL_STOPPING_HEADER] === 'stopping' ? 'gone' : 'not ours');
      }
      hold.setTimeout(0);
      res.on('error', () => undefined);
      res.resume();
      // The hold must not keep this process alive: it lasts as long as the process does, no longer.
      res.socket.unref();
      done(() => hold.destroy());
    });
    // No answer in time: a ClickHouse (not ours) that holds the request; refused or cut: ours, stopping.
    let timedOut = false;
    hold.on('timeout', () => {
      timedOut = true;
      hold.destroy();
    });
    hold.on('error', () => done(timedOut ? 'not ours' : 'gone'));
    hold.end();
  });
}

/**
 * Asks the server to stop unless another process holds it (see holdServer):
 * the pids holding it when it stays, `stopping` when it refuses holds from
 * now on, `no answer` when it could not say (it is stopped anyway). The
 * server decides, so no hold can come between the look and the stop.
 */
export async function stopUnlessHeld(url: string): Promise<number[] | 'stopping' | 'no answer'> {
  const answer = await get(url, `${LOCAL_HOLDERS_PATH}?stop-unless-held=${process.pid}`, 2_000, 'POST');
  if (typeof answer !== 'object' || answer.status !== 200) return 'no answer';
  try {
    const { stopping, pids } = JSON.parse(answer.body) as { stopping?: unknown; pids?: unknown };
    if (stopping === true) return 'stopping';
    return Array.isArray(pids) && pids.every((pid) => typeof pid === 'number') && pids.length > 0 ? pids : 'no answer';
  } catch {
    return 'no answer';
  }
}

function stopper(child: ChildProcess, url: string, log: (message: string) => void): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  return () =>
    (stopping ??= (async () => {
      if (!childRunning(child)) return;
      // Another process may have joined the server since (the API, started while a backfill ran): stopping it
      // would turn that process's mirror into an outage. Leave it to them; closing our end of its stdin tells
      // the server to stop once they have ended.
      const others = await stopUnlessHeld(url);
      if (Array.isArray(others)) {
        const one = others.length === 1;
        log(`local ClickHouse left running on ${url}: ${one ? 'process' : 'processes'} ${others.join(', ')} use${one ? 's' : ''} it; it stops once ${one ? 'it has' : 'they have'} ended`);
        child.stdin?.end();
        return;
      }
      await terminate(child);
    })());
}

function terminate(child: ChildProcess): Promise<void> {
  return new Promise<void>((done) => {
    if (!childRunning(child)) return done();
    // The child was unref'd so a process can end without stopping it; one that waits for it to stop
    // must keep its event loop alive until it has. Otherwise, once the SIGKILL timer had fired, the
    // loop could run dry first: the process ended with exit code 0 mid-await (a jest run with failed
    // tests exited 0 when the server was slow to stop).
    child.ref();
    const killer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    child.once('exit', () => {
      clearTimeout(killer);
      done();
    });
    child.kill('SIGTERM');
  });
}

/**
 * Starts the local ClickHouse server as a child process, unless one already
 * answers on the port; with port 0 it always starts one, on a free port.
 *
 * Other commands may be starting or stopping the same server at the same
 * moment (the port is the lock: the server listens before it opens its data
 * directory). So this joins a server that answers, waits while one on the
 * port holds requests (its engine opening), and starts one when the port is
 * free, again if a server it was about to join stopped first: a quick
 * command that started it and was done with it before anyone held it (the
 * server refuses holds from then on; see ServerHolders).
 */
export async function startLocalClickHouse(options: LocalClickHouseOptions): Promise<ResolvedClickHouse> {
  const log = options.log ?? (() => undefined);
  const url = localClickHouseUrl(options.port);
  let deadline: number | undefined;
  for (;;) {
    if (options.port !== 0 && (await clickHouseAnswers(url))) {
      const held = await joined(url, log);
      if (held) return held;
      // It stopped between its answer and the hold: start one here, for as long as a start may take.
      deadline ??= Date.now() + READY_TIMEOUT_MS;
      if (Date.now() >= deadline) throw new Error(`the local ClickHouse at ${url} stopped each time this process was about to use it`);
    }
    try {
      const { url: started, child } = await launch(options);
      // Let this process exit on its own; the server follows when our end of its stdin closes.
      child.unref();
      for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as Socket | null)?.unref();
      log(`local ClickHouse listening on ${started}, data in ${resolve(options.dataDir)}`);
      return { url: started, stop: stopper(child, started, log) };
    } catch (error) {
      if (options.port === 0 || !(error instanceof ServerStartError)) throw error;
      // Lost a race with another command starting (or stopping) the same server: use theirs once its engine
      // is open, or start again once the port is free, until the deadline.
      deadline ??= Date.now() + (error.portTaken ? READY_TIMEOUT_MS : 0);
      const there = await whoAnswers(url, deadline);
      if (there === 'clickhouse') {
        const held = await joined(url, log);
        if (held) return held;
      }
      if ((there === 'clickhouse' || there === 'nobody') && Date.now() < deadline) {
        await new Promise((done) => setTimeout(done, 250));
        continue;
      }
      if (error.portTaken) {
        throw new OperatorError(
          `127.0.0.1:${options.port} is in use by a program that does not answer as ClickHouse: ` +
            'stop it, or set EMBEDDED_CLICKHOUSE_PORT to a free port (or CLICKHOUSE_URL to a ClickHouse of your own)',
        );
      }
      throw error;
    }
  }
}

/** A server another process started, held up for this one while it runs; undefined when it stopped first. */
async function joined(url: string, log: (message: string) => void): Promise<ResolvedClickHouse | undefined> {
  const release = await holdServer(url);
  if (release === 'gone') return undefined;
  if (release === 'not ours') {
    // A ClickHouse of its own on the port: nothing to hold, and nobody here stops it.
    log(`using the ClickHouse that already answers at ${url}`);
    return { url };
  }
  log(`using the local ClickHouse at ${url} that another process started`);
  return { url, release };
}

/** CLICKHOUSE_URL when set, otherwise the local server (started if needed). */
export async function resolveClickHouse(
  config: { url?: string; embedded: { port: number; dataDir: string } },
  log?: (message: string) => void,
): Promise<ResolvedClickHouse> {
  if (config.url) return { url: config.url };
  return startLocalClickHouse({ port: config.embedded.port, dataDir: config.embedded.dataDir, log });
}
