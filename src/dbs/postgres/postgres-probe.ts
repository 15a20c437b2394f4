import { Pool } from 'pg';
import { within } from '../../within';
import { createPool, endPool } from './postgres-pool';

/** How long /health waits for Postgres to answer `select 1`. */
export const PROBE_TIMEOUT_MS = 2_000;

export type ProbeResult = { up: true } | { up: false; reason: string };

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
 * a liveness probe would then restart a busy API whose database is fine.
 * The request pool's use is reported beside the answer, so a saturated pool
 * shows as what it is.
 */
export class PostgresProbe {
  private readonly own: Pool;
  private running: Promise<ProbeResult> | undefined;

  constructor(
    url: string,
    private readonly requests: Pool,
    private readonly timeoutMs = PROBE_TIMEOUT_MS,
  ) {
    // The server's statement timeout ends a `select 1` stuck behind something; the client timeout gives up a
    // server that does not answer. The connection is kept between probes (pg-pool would close it after 10 s
    // idle): a probe that had to reconnect would report a server out of connection slots as down.
    this.own = createPool(url, 1, { statementTimeoutMs: timeoutMs, clientTimeoutMs: timeoutMs + 500, idleTimeoutMs: 0 });
  }

  /** Concurrent callers (a liveness and a readiness probe) share one `select 1`, rather than queueing on the one connection. */
  check(): Promise<ProbeResult> {
    this.running ??= this.probe().finally(() => (this.running = undefined));
    return this.running;
  }

  private async probe(): Promise<ProbeResult> {
    try {
      await within(this.own.query('select 1'), this.timeoutMs, () => {
        throw new Error(`no answer within ${this.timeoutMs} ms`);
      });
      return { up: true };
    } catch (error) {
      return { up: false, reason: (error as Error).message };
    }
  }

  requestPoolUse(): PoolUse {
    return { connections: this.requests.totalCount, idle: this.requests.idleCount, waiting: this.requests.waitingCount };
  }

  close(): Promise<void> {
    return endPool(this.own);
  }
}
