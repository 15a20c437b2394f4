import type { LoggerService } from '@nestjs/common';
import { Pool } from 'pg';
import { within } from '../../within';
import { createPool, endPool } from './postgres-pool';

/** How long /health waits for Postgres to answer its probe query. */
export const PROBE_TIMEOUT_MS = 2_000;

/** How old /health's answer to "does Postgres take writes?" may get before it asks a new session (see writability). */
export const WRITABLE_CHECK_MS = 30_000;

class ProbeTimeout extends Error {}

/**
 * `writable` false: Postgres answers but refuses writes (a standby reached after a failover, a database made
 * read-only). Still up: reads go on, and taking every replica out of rotation would stop them too; /health says
 * it and the log warns once, for whoever watches.
 */
export type ProbeResult = { up: true; writable: boolean } | { up: false; reason: string };

/** The request pool's use, as pg-pool counts it: a saturated pool has no idle connection and requests waiting. */
export interface PoolUse {
  connections: number;
  idle: number;
  waiting: number;
}

/**
 * /health's view of Postgres, on a connection of its own. Borrowing one from
 * the request pool reported Postgres "unavailable" whenever requests held
 * every connection longer than the probe waits (a few long queries do), and
 * a readiness probe would then take a busy API whose database is fine out of
 * service (a liveness probe, pointed at /health rather than /health/live,
 * would restart it).
 * The request pool's use is reported beside the answer, so a saturated pool
 * shows as what it is.
 */
export class PostgresProbe {
  private readonly own: Pool;
  private running: Promise<ProbeResult> | undefined;

  /** Whether the last probe failed: its whole error is logged when it starts failing, and the recovery once. */
  private failing = false;
  /** Whether the last answer refused writes: logged when it starts and when it ends, as failures are. */
  private readOnly = false;
  /** What a new session last said of transaction_read_only, and when (performance.now()); see writability. */
  private newSessionReadOnly = { readOnly: false, at: -Infinity };
  /** The kept connection's server process: another one is a session just opened. */
  private keptPid: number | undefined;

  constructor(
    private readonly url: string,
    private readonly requests: Pool,
    private readonly log: Pick<LoggerService, 'log' | 'warn'>,
    private readonly timeoutMs = PROBE_TIMEOUT_MS,
    private readonly writableCheckMs = WRITABLE_CHECK_MS,
  ) {
    // The server's statement timeout ends a probe query stuck behind something; the client timeout gives up a
    // server that does not answer. The connection is kept between probes (pg-pool would close it after 10 s
    // idle): a probe that had to reconnect would report a server out of connection slots as down.
    this.own = createPool(url, 1, { statementTimeoutMs: timeoutMs, clientTimeoutMs: timeoutMs + 500, idleTimeoutMs: 0 });
  }

  /** Concurrent callers (several probes, or a probe and an operator) share one probe query, rather than queueing on the one connection. */
  check(): Promise<ProbeResult> {
    this.running ??= this.probe().finally(() => (this.running = undefined));
    return this.running;
  }

  private async probe(): Promise<ProbeResult> {
    const started = performance.now();
    try {
      const asked = this.own.query<{ in_recovery: boolean; read_only: string; pid: number }>(
        `select pg_is_in_recovery() as in_recovery, current_setting('transaction_read_only') as read_only, pg_backend_pid() as pid`,
      );
      const { rows } = await within(asked, this.timeoutMs, () => {
        throw new ProbeTimeout(`no answer within ${this.timeoutMs} ms`);
      });
      if (this.failing) this.log.log('Postgres answers /health again');
      this.failing = false;
      const readOnly = rows[0].in_recovery || (await this.writability(rows[0], started));
      if (readOnly && !this.readOnly) this.log.warn('/health: Postgres refuses writes (a standby, or a database made read-only): writes are 503s, reads go on');
      if (!readOnly && this.readOnly) this.log.log('Postgres takes writes again');
      this.readOnly = readOnly;
      return { up: true, writable: !readOnly };
    } catch (error) {
      if (!this.failing) this.log.warn(`/health: Postgres is unavailable: ${(error as Error).message}`);
      this.failing = true;
      return { up: false, reason: publicReason(error) };
    }
  }

  /**
   * Whether a request's session would be refused writes. A standby says so at
   * once (pg_is_in_recovery, asked by the caller). A database or role made
   * read-only (ALTER DATABASE/ROLE ... SET default_transaction_read_only)
   * reaches only sessions opened since, and the kept connection lives for
   * ever: so this takes what a new session says, the kept one's own when it
   * has just been opened, else one opened for the question once its last
   * answer is `writableCheckMs` old, within what is left of the probe's time.
   * A new session that cannot be opened (no free slot) leaves the last answer
   * standing; whether Postgres is up is the kept connection's to say.
   */
  private async writability(kept: { read_only: string; pid: number }, started: number): Promise<boolean> {
    const now = performance.now();
    if (kept.pid !== this.keptPid) {
      this.keptPid = kept.pid;
      this.newSessionReadOnly = { readOnly: kept.read_only === 'on', at: now };
    }
    const last = this.newSessionReadOnly;
    if (now - last.at < this.writableCheckMs) return last.readOnly;
    last.at = now; // asked again after another interval, whatever this attempt gives
    const budget = Math.max(Math.floor(this.timeoutMs - (now - started)), 1);
    const fresh = createPool(this.url, 1, { statementTimeoutMs: budget, clientTimeoutMs: budget + 500 });
    try {
      const { rows } = await within(fresh.query<{ read_only: string }>(`select current_setting('transaction_read_only') as read_only`), budget, () => {
        throw new ProbeTimeout('no new session in time');
      });
      this.newSessionReadOnly = { readOnly: rows[0].read_only === 'on', at: performance.now() };
    } catch {
      // The last answer stands: asked again after another interval.
    } finally {
      void fresh.end().catch(() => undefined);
    }
    return this.newSessionReadOnly.readOnly;
  }

  /** Its own pool of one, for the pool metrics. */
  get pool(): Pool {
    return this.own;
  }

  requestPoolUse(): PoolUse {
    return { connections: this.requests.totalCount, idle: this.requests.idleCount, waiting: this.requests.waitingCount };
  }

  close(): Promise<void> {
    return endPool(this.own);
  }
}

/**
 * What /health, a public route, says of a failure: a kind and the error's
 * code (ECONNREFUSED, a SQLSTATE), never the driver's message, which can
 * name hosts, ports and users. The message goes to the log.
 */
function publicReason(error: unknown): string {
  if (error instanceof ProbeTimeout) return error.message;
  const e = error as { code?: unknown; message?: unknown; errors?: Array<{ code?: unknown }> };
  // A dual-stack connect fails with an AggregateError whose parts carry the code.
  const code = [e?.code, ...(e?.errors ?? []).map((part) => part?.code)].find((c): c is string => typeof c === 'string' && /^[0-9A-Z_]{2,32}$/.test(c));
  if (code) return `${kindOf(code)} (${code})`;
  return typeof e?.message === 'string' && /terminated|closed/i.test(e.message) ? 'connection lost' : 'connection error';
}

function kindOf(code: string): string {
  if (code.startsWith('E')) return 'could not connect';
  const byClass: Record<string, string> = {
    '08': 'connection failure',
    '28': 'authentication failed',
    '3D': 'no such database',
    '53': 'insufficient resources',
    '57': 'server shutting down, starting up or cancelling',
  };
  return byClass[code.slice(0, 2)] ?? 'error';
}
