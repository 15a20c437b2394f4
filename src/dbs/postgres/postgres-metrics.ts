import { Counter, Gauge, Registry } from 'prom-client';
import { Pool } from 'pg';
import { AbandonOnTimeoutClient } from './postgres-pool';

/**
 * The API's Postgres pool as Prometheus metrics; names are part of the
 * dashboards' and alerts' contract.
 *
 *   postgres_pool_connections{state}        gauge: open connections, state idle|busy
 *   postgres_pool_waiting_requests          gauge: queries waiting for a connection
 *   postgres_connections_abandoned_total    counter: connections given up after DB_CLIENT_TIMEOUT_MS
 *                                           without an answer (Postgres stopped answering)
 *
 * Pool counts are read when /metrics is scraped; nothing runs in between.
 */
export function registerPoolMetrics(pool: Pool, registry: Registry): void {
  const registers = [registry];
  new Gauge({
    name: 'postgres_pool_connections',
    help: 'Open connections of the API pool to Postgres, by state',
    labelNames: ['state'],
    registers,
    collect() {
      this.set({ state: 'idle' }, pool.idleCount);
      this.set({ state: 'busy' }, pool.totalCount - pool.idleCount);
    },
  });
  new Gauge({
    name: 'postgres_pool_waiting_requests',
    help: 'Queries waiting for a connection of the API pool',
    registers,
    collect() {
      this.set(pool.waitingCount);
    },
  });
  const abandoned = new Counter({
    name: 'postgres_connections_abandoned_total',
    help: 'Connections given up because Postgres did not answer within DB_CLIENT_TIMEOUT_MS',
    registers,
  });
  // pg's typings list only pg's own client events; ours is an EventEmitter event like them.
  pool.on('connect', (client) => (client as unknown as NodeJS.EventEmitter).on(AbandonOnTimeoutClient.ABANDONED, () => abandoned.inc()));
}
