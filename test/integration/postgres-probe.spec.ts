import { connect, createServer, Server, Socket } from 'node:net';
import { Client, Pool } from 'pg';
import { PostgresProbe, PROBE_TIMEOUT_MS } from '../../src/dbs/postgres/postgres-probe';
import { createTestDatabase, TestDatabase } from '../support/postgres';
import { freePort } from '../../scripts/cli/free-port';

/**
 * /health's probe against a real Postgres reached through a TCP relay the
 * spec opens and closes: refused while closed, the real server once open.
 * A failing /health is probed every few seconds by every orchestrator, so
 * the probe logs the failure once when it starts and the recovery once,
 * not a line per probe.
 */
describe('PostgresProbe (real Postgres behind a relay)', () => {
  let database: TestDatabase;
  let port: number;
  let relay: Server | undefined;
  const sockets = new Set<Socket>();

  const openRelay = async (to: URL) => {
    relay = createServer((client) => {
      const server = connect(Number(to.port), to.hostname);
      for (const s of [client, server]) {
        sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => sockets.delete(s));
      }
      client.pipe(server).pipe(client);
    });
    await new Promise<void>((done) => relay!.listen(port, '127.0.0.1', done));
  };
  const closeRelay = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((done) => (relay ? relay.close(() => done()) : done()));
    relay = undefined;
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    port = await freePort();
  });
  afterEach(closeRelay);
  afterAll(async () => database?.drop());

  const probeUrl = () => {
    const url = new URL(database.url);
    url.hostname = '127.0.0.1';
    url.port = String(port);
    return url.toString();
  };

  it('logs a failure once when it starts and the recovery once, and answers with the reason each time', async () => {
    const lines: string[] = [];
    const probe = new PostgresProbe(probeUrl(), new Pool(), { log: (m: string) => lines.push(`log ${m}`), warn: (m: string) => lines.push(`warn ${m}`) });
    try {
      expect(await probe.check()).toEqual({ up: false, reason: 'could not connect (ECONNREFUSED)' });
      expect(await probe.check()).toEqual({ up: false, reason: 'could not connect (ECONNREFUSED)' });
      expect(lines).toEqual([expect.stringMatching(/^warn \/health: Postgres is unavailable: .*ECONNREFUSED/)]);

      await openRelay(new URL(database.url));
      expect(await probe.check()).toEqual({ up: true, writable: true });
      expect(await probe.check()).toEqual({ up: true, writable: true });
      expect(lines.slice(1)).toEqual(['log Postgres answers /health again']);

      // The connection it kept is cut: the next probe fails (logged once more), the one after reconnects.
      await closeRelay();
      const afterCut = await probe.check();
      expect(afterCut.up).toBe(false);
      expect(lines.filter((l) => l.startsWith('warn'))).toHaveLength(2);
    } finally {
      await probe.close();
    }
  });

  it('reports a Postgres that refuses writes as up and not writable, warning once', async () => {
    const lines: string[] = [];
    const url = new URL(database.url);
    url.searchParams.set('options', '-c default_transaction_read_only=on');
    const probe = new PostgresProbe(url.toString(), new Pool(), { log: (m: string) => lines.push(`log ${m}`), warn: (m: string) => lines.push(`warn ${m}`) });
    try {
      expect(await probe.check()).toEqual({ up: true, writable: false });
      expect(await probe.check()).toEqual({ up: true, writable: false });
      expect(lines).toEqual(['warn /health: Postgres refuses writes (a standby, or a database made read-only): writes are 503s, reads go on']);
    } finally {
      await probe.close();
    }
  });

  // ALTER DATABASE ... SET reaches only sessions opened since, and the probe keeps its connection for ever: it
  // went on saying writable (or not) for as long as that connection lived.
  it('sees a database made read-only, and writable again, without its kept session ending', async () => {
    const lines: string[] = [];
    const admin = new Client({ connectionString: database.url });
    await admin.connect();
    const probe = new PostgresProbe(database.url, new Pool(), { log: (m: string) => lines.push(`log ${m}`), warn: (m: string) => lines.push(`warn ${m}`) }, PROBE_TIMEOUT_MS, 0);
    const keptPid = async () => (await probe.pool.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0].pid;
    try {
      expect(await probe.check()).toEqual({ up: true, writable: true });
      const pid = await keptPid();
      await admin.query(`alter database ${database.name} set default_transaction_read_only = on`);
      expect(await probe.check()).toEqual({ up: true, writable: false });
      await admin.query(`alter database ${database.name} reset default_transaction_read_only`);
      expect(await probe.check()).toEqual({ up: true, writable: true });
      expect(await keptPid()).toBe(pid);
      expect(lines).toEqual([expect.stringMatching(/^warn \/health: Postgres refuses writes/), 'log Postgres takes writes again']);
    } finally {
      await admin.query(`alter database ${database.name} reset default_transaction_read_only`);
      await admin.end();
      await probe.close();
    }
  });

  it('gives concurrent callers the one probe in flight', async () => {
    await openRelay(new URL(database.url));
    const probe = new PostgresProbe(probeUrl(), new Pool(), { log: () => undefined, warn: () => undefined });
    try {
      const [a, b] = [probe.check(), probe.check()];
      expect(a).toBe(b);
      expect(await a).toEqual({ up: true, writable: true });
      // Once settled, the next call probes anew.
      const next = probe.check();
      expect(next).not.toBe(a);
      await next;
    } finally {
      await probe.close();
    }
  });
});
