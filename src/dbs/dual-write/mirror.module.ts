import { BeforeApplicationShutdown, Global, Inject, Logger, Module, OnApplicationShutdown } from '@nestjs/common';
import { Kysely } from 'kysely';
import { Registry } from 'prom-client';
import { AppConfig, MAX_TTL_DAYS, TTL_WRAP } from '../../config/app-config';
import { APP_CONFIG } from '../../config/config.module';
import { MIRROR_HEALTH, MirrorHealth } from '../../health/mirror-health';
import { METRICS_REGISTRY } from '../../metrics/metrics.tokens';
import { BatchWriter, MirrorLogger } from '../clickhouse/batch-writer';
import { outageGapsWarning } from '../clickhouse/batch-writer-options';
import { ClickHouseClients, createClickHouseClients } from '../clickhouse/clickhouse-clients';
import { migrateClickHouse } from '../clickhouse/clickhouse-ddl-runner';
import { ClickHouseSchema } from '../clickhouse/clickhouse-schema';
import { afterSchema } from '../clickhouse/after-schema';
import { realClock } from '../clickhouse/clock';
import { ClickHouseSink } from '../clickhouse/clickhouse-sink';
import { localClickHouseUrl, resolveClickHouse, type ResolvedClickHouse } from '../clickhouse/local-clickhouse';
import { createMirrorMetrics } from '../clickhouse/mirror-metrics';
import { DB } from '../postgres/database';
import { MIRROR_KYSELY } from '../postgres/postgres.tokens';
import { PostgresMirrorGapsRepository } from '../postgres/postgres-mirror-gaps.repository';
import { Mirror } from './mirror';
import { redactUrl } from '../../config/redact-url';
import { within } from '../../within';
import { PROBE_TIMEOUT_MS } from '../postgres/postgres-probe';

export const MIRROR = Symbol('MIRROR');

/** Everything the mirror owns, created together and closed together; null when USE_CLICKHOUSE is off. */
export interface MirrorRuntime {
  mirror: Mirror;
  writer: BatchWriter;
  gaps: PostgresMirrorGapsRepository;
  clickhouse: ClickHouseClients;
  schema: ClickHouseSchema;
  close(): Promise<void>;
}

function mirrorLogger(logger: Logger): MirrorLogger {
  return {
    info: (obj, msg) => logger.log({ msg, ...obj }),
    warn: (obj, msg) => logger.warn({ msg, ...obj }),
    error: (obj, msg) => logger.error({ msg, ...obj }),
  };
}

/**
 * With USE_CLICKHOUSE off this creates nothing: no client, no connection, no
 * timer. With it on: resolves ClickHouse (CLICKHOUSE_URL or the local
 * endpoint), starts applying the ClickHouse DDL, and builds the batch
 * writer that the decorator feeds. ClickHouse being down never stops or
 * holds the API's start: the DDL retries in the background, and the writer
 * queues, retries and records gaps.
 */
async function createMirrorRuntime(config: AppConfig, db: Kysely<DB>, registry: Registry): Promise<MirrorRuntime | null> {
  if (!config.clickhouse.enabled) return null;
  const logger = new Logger('Mirror');
  let url = config.clickhouse.url;
  let local: ResolvedClickHouse | undefined;
  try {
    local = await resolveClickHouse(config.clickhouse, (m) => logger.log(m));
    url = local.url;
  } catch (error) {
    url = localClickHouseUrl(config.clickhouse.embedded.port);
    logger.error({ msg: 'could not start the local ClickHouse endpoint; mirrored rows will queue and become gaps', err: error });
  }
  const clients = createClickHouseClients(config.clickhouse, url!);

  const schema = new ClickHouseSchema(async () => {
    const result = await migrateClickHouse(config.clickhouse, url!, { ttl: 'new-tables' });
    if (result.unknown.length) logger.warn(`the ClickHouse database has migrations this build does not know (${result.unknown.join(', ')}): a newer build migrated it; used as it is`);
    for (const { table, days } of result.ttlDiffers) {
      if (days > MAX_TTL_DAYS) {
        logger.error(`ClickHouse table ${table} has a TTL of ${days} days: ${TTL_WRAP}. Run npm run migrate:clickhouse with a shorter CLICKHOUSE_TTL_DAYS`);
        continue;
      }
      const has = days < 0 ? 'a TTL of another shape' : days ? `a TTL of ${days} days` : 'no TTL';
      logger.warn(`ClickHouse table ${table} has ${has}, CLICKHOUSE_TTL_DAYS here ${config.clickhouse.ttlDays}: left as it is (npm run migrate:clickhouse sets it)`);
    }
    return result.applied;
  }, mirrorLogger(logger), realClock, async (table) => {
    const answer = await clients.query.query({
      query: 'SELECT count() AS n FROM system.tables WHERE database = {database:String} AND name = {table:String}',
      query_params: { database: config.clickhouse.database, table },
      format: 'JSONEachRow',
    });
    return Number((await answer.json<{ n: string }>())[0]?.n ?? 0) > 0;
  });

  const gaps = new PostgresMirrorGapsRepository(db);
  const writer = new BatchWriter(config.mirror, {
    // Always compress: in production ClickHouse is across a network, and the benchmarks measure that cost.
    sink: afterSchema(new ClickHouseSink(clients.insert, { compress: true }), schema, config.clickhouse.requestTimeoutMs),
    gapRecorder: gaps,
    logger: mirrorLogger(logger),
    metrics: createMirrorMetrics(registry),
  });
  const mirror = new Mirror(writer, config.clickhouse.projectIds, registry);

  // Not awaited: a ClickHouse that does not answer must not hold the API's start (each insert waits for it instead).
  void schema.ensure();
  const projects = config.clickhouse.projectIds.length ? `projects ${config.clickhouse.projectIds.join(', ')}` : 'all projects';
  logger.log(`mirroring ${projects} to ClickHouse at ${redactUrl(url!)} (database ${config.clickhouse.database})`);
  const gapsWarning = outageGapsWarning(config.mirror);
  if (gapsWarning) logger.warn(gapsWarning);

  return {
    mirror,
    writer,
    gaps,
    clickhouse: clients,
    schema,
    close: async () => {
      schema.stop();
      await clients.close();
      // The local server: stopped if this API started it (unless others joined it), let go of if it joined it.
      await local?.stop?.();
      local?.release?.();
    },
  };
}

const isoOrNull = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

/**
 * Waits for writes still on their way to Postgres (main.ts has ended their
 * sessions if it gave up on their requests), then flushes what is queued;
 * the rest becomes gaps. Both steps share one budget, `deadlineMs`
 * (MIRROR_SHUTDOWN_DEADLINE_MS): shutdown as a whole has to fit the
 * orchestrator's grace period beside the HTTP drain.
 */
export async function shutDownMirror(
  runtime: { mirror: Pick<Mirror, 'writesSettled'>; writer: Pick<BatchWriter, 'shutdown'> },
  deadlineMs: number,
  warn: (message: string) => void,
  now: () => number = () => performance.now(),
): Promise<void> {
  const started = now();
  const unsettled = await runtime.mirror.writesSettled(deadlineMs);
  if (unsettled > 0) {
    warn(`${unsettled} writes were still waiting on Postgres at shutdown; if they commit, run \`npm run verify -- --repair\``);
  }
  await runtime.writer.shutdown(Math.max(0, deadlineMs - (now() - started)));
}

@Global()
@Module({
  providers: [
    {
      provide: MIRROR,
      inject: [APP_CONFIG, MIRROR_KYSELY, METRICS_REGISTRY],
      useFactory: createMirrorRuntime,
    },
    {
      provide: MIRROR_HEALTH,
      inject: [MIRROR],
      useFactory: (runtime: MirrorRuntime | null): MirrorHealth => {
        /**
         * The count of open gaps in progress. Probes that come while it runs share it: /health stops waiting
         * after PROBE_TIMEOUT_MS, but the query goes on, on the mirror's pool of three that gap records are
         * written through, and probes every few seconds against a slow Postgres would fill it with counts.
         */
        let counting: Promise<number | null> | null = null;
        return {
          status: async () => {
            if (!runtime) return { enabled: false };
            const stats = runtime.writer.stats();
            counting ??= runtime.gaps
              .countOpen()
              .catch(() => null)
              .finally(() => (counting = null));
            // Bounded like the Postgres probe, so a busy or slow Postgres cannot hold /health up (null: unknown now).
            const openGaps = await within(counting, PROBE_TIMEOUT_MS, () => null);
            return {
              enabled: true,
              // False while ClickHouse has not taken the DDL (down since startup): rows queue until it does.
              schemaApplied: runtime.schema.isApplied,
              breaker: stats.breaker,
              queuedRows: stats.queuedRows,
              acceptedRows: stats.acceptedRows,
              queuedBytes: stats.queuedBytes,
              lagMs: stats.lagMs,
              rowsSent: stats.rowsSent,
              gapsRecorded: stats.gapsRecorded,
              openGaps,
              // With both times an error that recovery has since followed reads as history, not as the present.
              // Its public form: /health needs no key, and the full text names hosts and users (the log has it).
              lastError: stats.lastPublicError,
              lastErrorAt: isoOrNull(stats.lastErrorAt),
              lastSuccessAt: isoOrNull(stats.lastSuccessAt),
            };
          },
        };
      },
    },
  ],
  exports: [MIRROR, MIRROR_HEALTH],
})
export class MirrorModule implements BeforeApplicationShutdown, OnApplicationShutdown {
  constructor(
    @Inject(MIRROR) private readonly runtime: MirrorRuntime | null,
    @Inject(APP_CONFIG) private readonly config: AppConfig,
  ) {}

  /** Before the pools close: the mirror's last rows go to ClickHouse or become gap records in Postgres. */
  async beforeApplicationShutdown(): Promise<void> {
    if (!this.runtime) return;
    await shutDownMirror(this.runtime, this.config.mirror.shutdownDeadlineMs, (message) => new Logger('Mirror').warn(message));
  }

  async onApplicationShutdown(): Promise<void> {
    await this.runtime?.close();
  }
}
