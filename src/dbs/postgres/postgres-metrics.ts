import { Counter, Gauge, Registry } from 'prom-client';
import { Pool } from 'pg';
import { AbandonOnTimeoutClient } from './postgres-pool';

/** The API's pools by their `pool` label: requests', the mirror's gap records' (see MIRROR_KYSELY) and /health's (PostgresProbe). */
export type NamedPools = Readonly<Record<'request' | 'mirror' | 'probe', Pool>>;

/**
 * The API's Postgres pools as Prometheus metrics; names and labels are part
 * of the dashboards' and alerts' contract. `pool` is `request` (the requests'
 * pool, DB_POOL_MAX), `mirror` (the mirror's gap records, its own small
 * pool, so a busy request pool never holds them up) or `probe` (/health's
 * one connection).
 *
 *   postgres_pool_connections{pool,state}        gauge: open connections, state idle|busy
 *   postgres_pool_waiting_requests{pool}         gauge: queries waiting for a connection
 *   postgres_connections_abandoned_total{pool}   counter: connections given up after DB_CLIENT_TIMEOUT_MS
 *                                                without an answer (Postgres stopped answering)
 *
 * Pool counts are read when /metrics is scraped; nothing runs in between.
 */
export function registerPoolMetrics(pools: NamedPools, registry: Registry): void {
  const registers = [registry];
  const named = Object.entries(pools);
  new Gauge({
    name: 'postgres_pool_connections',
    help: 'Open connections of the API pools to Postgres, by pool and state',
    labelNames: ['pool', 'state'],
    registers,
    collect() {
      for (const [name, pool] of named) {
        this.set({ pool: name, state: 'idle' }, pool.idleCount);
        this.set({ pool: name, state: 'busy' }, pool.totalCount - pool.idleCount);
      }
    },
  });
  new Gauge({
    name: 'postgres_pool_waiting_requests',
    help: 'Queries waiting for a connection of the API pools, by pool',
    labelNames: ['pool'],
    registers,
    collect() {
      for (const [name, pool] of named) this.set({ pool: name }, pool.waitingCount);
    },
  });
  const abandoned = new Counter({
    name: 'postgres_connections_abandoned_total',
    help: 'Connections given up because Postgres did not answer within DB_CLIENT_TIMEOUT_MS, by pool',
    labelNames: ['pool'],
    registers,
  });
  for (const [name, pool] of named) {
    // Present from the start at 0, so an alert on any increase sees the first one.
    abandoned.inc({ pool: name }, 0);
    // pg's typings list only pg's own client events; ours is an EventEmitter event like them.
    pool.on('connect', (client) => (client as unknown as NodeJS.EventEmitter).on(AbandonOnTimeoutClient.ABANDONED, () => abandoned.inc({ pool: name })));
  }
}
