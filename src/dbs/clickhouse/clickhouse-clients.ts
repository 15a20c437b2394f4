import { ClickHouseClient, ClickHouseClientConfigOptions, ClickHouseLogLevel, ClickHouseSettings, createClient } from '@clickhouse/client';
import { AppConfig } from '../../config/app-config';

/**
 * The mirror's connections to ClickHouse. Inserts and queries get separate
 * clients, as @clickhouse/client advises: a slow read (verify's counts, the
 * backfill's lookups) never holds the sockets inserts need. The API inserts,
 * and queries a little (the tables' identity, the mirror's reads); backfill
 * and verify build the same pair with a longer timeout (history-cli.ts); the
 * DDL runner makes clients of its own, with its longer timeout. Neither
 * compresses: ClickHouseSink compresses insert bodies itself where that pays (the client cannot be told
 * zlib's chunk size), and answers are small. Constructed only when
 * USE_CLICKHOUSE is on.
 */
export interface ClickHouseClients {
  insert: ClickHouseClient;
  query: ClickHouseClient;
  close(): Promise<void>;
}

/**
 * Formats the row mappers depend on, pinned here so a server profile with
 * other defaults cannot change what they read or write.
 */
export const PINNED_SETTINGS: ClickHouseSettings = {
  // 'YYYY-MM-DD hh:mm:ss.ffffff', which the mappers convert to and from ISO-8601.
  date_time_input_format: 'basic',
  date_time_output_format: 'simple',
  // UInt64 ids and versions as JSON strings: a JS number cannot hold them exactly.
  output_format_json_quote_64bit_integers: 1,
  // A misspelled column in a mapper fails the insert instead of silently dropping the value.
  input_format_skip_unknown_fields: 0,
};

export function clickHouseClientOptions(
  config: AppConfig['clickhouse'],
  url: string,
  database: string = config.database,
): ClickHouseClientConfigOptions {
  // Credentials in the URL win in the client, which also prints a warning to the console for each
  // setting a URL overrides, whatever the log level: give it CLICKHOUSE_USER/PASSWORD only where the URL has none.
  const inUrl = URL.canParse(url) ? new URL(url) : undefined;
  return {
    url,
    ...(inUrl?.username ? {} : { username: config.user }),
    ...(inUrl?.password ? {} : { password: config.password }),
    database,
    request_timeout: config.requestTimeoutMs,
    keep_alive: { enabled: true },
    application: 'tracing-api',
    clickhouse_settings: PINNED_SETTINGS,
    // Failures are thrown to the caller, which logs them with context through the app's logger. The
    // client's own logger writes to the console, ignoring LOG_LEVEL, and during an outage repeats every retry.
    log: { level: ClickHouseLogLevel.OFF },
  };
}

/** The insert and query clients; `requestTimeoutMs` in place of CLICKHOUSE_REQUEST_TIMEOUT_MS (the commands' longer one). */
export function createClickHouseClients(config: AppConfig['clickhouse'], url: string, options: { requestTimeoutMs?: number } = {}): ClickHouseClients {
  const base = { ...clickHouseClientOptions(config, url), request_timeout: options.requestTimeoutMs ?? config.requestTimeoutMs };
  const insert = createClient({ ...base, compression: { request: false, response: false } });
  const query = createClient({ ...base, compression: { request: false, response: false } });
  return {
    insert,
    query,
    close: async () => {
      await Promise.allSettled([insert.close(), query.close()]);
    },
  };
}
