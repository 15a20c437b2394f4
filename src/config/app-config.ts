import { z } from 'zod';
import { BatchWriterOptions, DEFAULT_BATCH_WRITER_OPTIONS as MIRROR_DEFAULTS } from '../dbs/clickhouse/batch-writer-options';
import { OperatorError } from './operator-error';
import { redactUrl } from './redact-url';
import { isUuid } from '../uuid';

/**
 * The one typed configuration object. Every setting comes from the
 * environment, is validated once at boot, and a bad or missing value stops the
 * process with a message that names the variable.
 */

const bool = (name: string, fallback: boolean) =>
  z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined) return fallback;
      const v = value.trim().toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(v)) return true;
      if (['0', 'false', 'no', 'off'].includes(v)) return false;
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${name} must be true or false (or 1/0, yes/no, on/off), got "${value}"` });
      return z.NEVER;
    });

/**
 * The longest TTL the mirror's tables can take. Their TTL is `toDateTime(created_at) + INTERVAL n DAY`: a
 * 32-bit DateTime, which ends on 2106-02-07 and wraps round past it (checked on ClickHouse 26: 36,500 days
 * from 2026 gives 1990, and OPTIMIZE then removed the row). 20,000 days (about 54 years) keeps rows created
 * until 2051 clear of the wrap.
 */
export const MAX_TTL_DAYS = 20_000;

/** Why a longer TTL is refused, in the words every place that finds one uses. */
export const TTL_WRAP =
  "ClickHouse computes the tables' TTL as a 32-bit DateTime, which ends in 2106 and wraps round past it: a row created after 2106 minus the TTL " +
  `expires at once (36500 days from 2026 is 1990); ${MAX_TTL_DAYS} keeps rows created until 2051 clear`;

const int = (fallback: number, min: number, max = Number.MAX_SAFE_INTEGER) =>
  z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined) return fallback;
      if (!/^-?\d+$/.test(value.trim())) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: `must be a whole number, got "${value}"` });
        return z.NEVER;
      }
      // A negative number is a whole number too: what is wrong with it is the range.
      const n = Number(value);
      if (n < min || n > max) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: `must be between ${min} and ${max}, got ${n}` });
        return z.NEVER;
      }
      return n;
    });

/** A whole number that may be left unset, for a setting whose default depends on another. */
const optionalInt = (min: number, max?: number) => int(Number.NaN, min, max).transform((n) => (Number.isNaN(n) ? undefined : n));

/**
 * The longest delay a Node timer keeps (and Postgres's statement_timeout
 * takes): setTimeout fires a longer one after 1 ms, so "a very long
 * timeout" would become none at all; such a value is refused instead.
 */
const MAX_TIMER_MS = 2_147_483_647;

/** A duration in milliseconds, at most MAX_TIMER_MS. */
const ms = (fallback: number, min: number, max = MAX_TIMER_MS) => int(fallback, min, max);

/**
 * A name or path taken as written, so not with spaces around it: `.data ` is another directory than
 * `.data`, and a fresh embedded cluster there read as every key gone.
 */
const bare = (fallback: string) =>
  z
    .string()
    .refine((value) => value === value.trim(), { message: 'must not start or end with spaces' })
    .default(fallback);

/**
 * A server's URL. A value that is not one is quoted only where redactUrl can
 * hide its password, after a `//`: a scheme left out (`app:s3cret@db/x`) or
 * a libpq keyword string (`host=db password=s3cret`) would be printed whole.
 * `serverOnly`: no path, fragment or query parameter but the client's own
 * `pathname` and `http_header_*` (ClickHouse's client reads a path as the
 * database and other parameters as settings or options, over the variables
 * that name them).
 */
const url = (protocols: string[], serverOnly?: string) =>
  z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined) return undefined;
      const refuse = (message: string) => {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message });
        return z.NEVER;
      };
      const expected = `must be a ${protocols.join(' or ')}// URL`;
      let parsed: URL | null = null;
      try {
        parsed = new URL(value);
      } catch {
        // Not a URL at all: refused below, unquoted.
      }
      // redactUrl hides a password in the authority form only: a scheme, then `//` at once.
      const authorityForm = /^[a-z][a-z0-9+.-]*:\/\//i.test(value.trim());
      if (parsed === null || !protocols.includes(parsed.protocol) || !authorityForm) {
        return refuse(parsed !== null && authorityForm ? `${expected}, got "${redactUrl(value)}"` : `${expected}; the value given is not one (not shown: it may hold a password)`);
      }
      // The client's own parameters that are not settings: a proxy's path prefix, and headers to send.
      const clientOnly = (key: string) => key === 'pathname' || key.startsWith('http_header_');
      if (serverOnly && ((parsed.pathname !== '' && parsed.pathname !== '/') || parsed.hash !== '' || [...parsed.searchParams.keys()].some((key) => !clientOnly(key)))) {
        return refuse(`must name the server only (scheme, user, password, host, port; a proxy's ?pathname= and ?http_header_… too), got "${redactUrl(value)}": ${serverOnly}`);
      }
      return value.trim();
    });

const uuidList = z
  .string()
  .optional()
  .transform((value, ctx) => {
    const ids = (value ?? '')
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean);
    // "," (a template whose values are all unset) would otherwise mean the opposite of what it lists: every project.
    if (value !== undefined && ids.length === 0) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `names no project, got "${value}": list project UUIDs, or leave it unset to mirror every project` });
      return z.NEVER;
    }
    const bad = ids.filter((id) => !isUuid(id));
    if (bad.length) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `must be comma-separated project UUIDs; not a UUID: ${bad.join(', ')}` });
      return z.NEVER;
    }
    return ids;
  });

/**
 * DB_CLIENT_TIMEOUT_MS's default is the statement timeout plus this: long
 * enough that a statement the server cancels reports as such first.
 */
const CLIENT_TIMEOUT_MARGIN_MS = 5_000;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Every variable the API reads, with its validation and default (README "Configuration" lists each one). */
export const envSchema = z.object({
  PORT: int(3000, 0, 65535),
  HOST: bare('0.0.0.0'),
  LOG_LEVEL: z
    .enum(LOG_LEVELS, { errorMap: (_issue, ctx) => ({ message: `must be one of ${LOG_LEVELS.join(', ')}, got "${String(ctx.data)}"` }) })
    .default('info'),
  BODY_LIMIT: z
    .string()
    // Not zero: every request with a body would be refused.
    .regex(/^[1-9]\d*(b|kb|mb)$/i, 'must look like 512kb or 10mb (and not be zero)')
    .default('10mb'),
  MAX_BATCH_ITEMS: int(1000, 1, 100_000),
  // The OpenTelemetry Collector's batch processor sends 8,192 spans a batch by default, and exporters drop a
  // batch answered 413 (they retry only 429, 502, 503, 504): an OTLP export needs a bound of its own.
  MAX_OTLP_SPANS: int(10_000, 1, 100_000),
  MAX_RESPONSE_ITEMS: int(10_000, 1, 1_000_000),
  SHUTDOWN_TIMEOUT_MS: ms(15_000, 0),
  SHUTDOWN_DELAY_MS: ms(0, 0, 60_000),

  DATABASE_URL: url(['postgres:', 'postgresql:']),
  DB_POOL_MAX: int(10, 1, 1000),
  MIGRATE_ON_START: bool('MIGRATE_ON_START', true),
  // Below the timer bound by the margin its derived client timeout adds.
  DB_STATEMENT_TIMEOUT_MS: ms(30_000, 0, MAX_TIMER_MS - CLIENT_TIMEOUT_MARGIN_MS),
  DB_CLIENT_TIMEOUT_MS: optionalInt(0, MAX_TIMER_MS),
  // Below 32768, so outside the kernel's ephemeral range (32768-60999): an outgoing connection cannot be holding it.
  EMBEDDED_POSTGRES_PORT: int(15432, 1, 65535),
  EMBEDDED_DATA_DIR: bare('.data'),

  USE_CLICKHOUSE: bool('USE_CLICKHOUSE', false),
  CLICKHOUSE_URL: url(['http:', 'https:'], 'the client would read a path as the database and a query as settings; name the database in CLICKHOUSE_DATABASE'),
  CLICKHOUSE_USER: z.string().default('default'),
  CLICKHOUSE_PASSWORD: z.string().default(''),
  CLICKHOUSE_DATABASE: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a plain identifier').default('tracing'),
  CLICKHOUSE_PROJECT_IDS: uuidList,
  // Its upper bound is parseConfig's, with the reason (MAX_TTL_DAYS).
  CLICKHOUSE_TTL_DAYS: int(0, 0),
  EMBEDDED_CLICKHOUSE_PORT: int(18123, 1, 65535),
  CLICKHOUSE_REQUEST_TIMEOUT_MS: ms(10_000, 100),

  // The writer's defaults, with their reasons, are in batch-writer-options.ts; the bounds here are what the writer can work with.
  MIRROR_FLUSH_ROWS: int(MIRROR_DEFAULTS.flushRows, 1),
  MIRROR_FLUSH_BYTES: int(MIRROR_DEFAULTS.flushBytes, 1024),
  MIRROR_FLUSH_INTERVAL_MS: ms(MIRROR_DEFAULTS.flushIntervalMs, 10),
  MIRROR_QUEUE_MAX_BYTES: int(MIRROR_DEFAULTS.queueMaxBytes, 1024),
  MIRROR_SHUTDOWN_DEADLINE_MS: ms(MIRROR_DEFAULTS.shutdownDeadlineMs, 0),
  MIRROR_MAX_ATTEMPTS: int(MIRROR_DEFAULTS.maxAttempts, 1, 100),
  MIRROR_BASE_BACKOFF_MS: ms(MIRROR_DEFAULTS.baseBackoffMs, 1),
  MIRROR_MAX_BACKOFF_MS: ms(MIRROR_DEFAULTS.maxBackoffMs, 1),
  MIRROR_BREAKER_FAILURES: int(MIRROR_DEFAULTS.breaker.failureThreshold, 1),
  MIRROR_BREAKER_OPEN_MS: ms(MIRROR_DEFAULTS.breaker.openMs, 1),
});

export interface AppConfig {
  http: {
    host: string;
    port: number;
    bodyLimit: string;
    maxBatchItems: number;
    /** The most spans one OTLP export may carry (its own bound: collectors batch more than REST callers). */
    maxOtlpSpans: number;
    /** The most spans or nodes one answer carries: a whole trace or tree, or a page of traces. */
    maxResponseItems: number;
    shutdownTimeoutMs: number;
    /** After SIGTERM, how long the API goes on serving (with /health at 503) before it stops accepting connections. */
    shutdownDelayMs: number;
  };
  logLevel: string;
  postgres: {
    /** Set when DATABASE_URL is given; otherwise the embedded server is used. */
    url?: string;
    poolMax: number;
    migrateOnStart: boolean;
    /** Server-side bound on every API statement; 0 = none. */
    statementTimeoutMs: number;
    /** Client-side bound on waiting for any answer (a server that stopped answering); 0 = none. */
    clientTimeoutMs: number;
    embedded: { port: number; dataDir: string };
  };
  clickhouse: {
    enabled: boolean;
    /** Set when CLICKHOUSE_URL is given; otherwise the local chdb endpoint is used. */
    url?: string;
    user: string;
    password: string;
    database: string;
    /** Empty means every project is mirrored. */
    projectIds: string[];
    ttlDays: number;
    requestTimeoutMs: number;
    embedded: { port: number; dataDir: string };
  };
  mirror: BatchWriterOptions;
}

export class ConfigError extends OperatorError {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/**
 * A variable set to nothing (`EMBEDDED_DATA_DIR=` in a .env or compose file,
 * or only spaces) counts as unset, for every variable alike: it takes its
 * default, rather than becoming a data directory at the filesystem root, an
 * empty host or user, or a refusal.
 */
function withoutBlanks(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([, value]) => value === undefined || value.trim() !== ''));
}

export function parseConfig(env: NodeJS.ProcessEnv = process.env): AppConfig {
  const result = envSchema.safeParse(withoutBlanks(env));
  if (!result.success) {
    throw new ConfigError(
      result.error.issues.map((issue) => {
        const name = issue.path.join('.');
        const message = issue.message.startsWith(name) ? issue.message : `${name} ${issue.message}`;
        return message;
      }),
    );
  }
  const e = result.data;
  const clientTimeoutMs = e.DB_CLIENT_TIMEOUT_MS ?? (e.DB_STATEMENT_TIMEOUT_MS ? e.DB_STATEMENT_TIMEOUT_MS + CLIENT_TIMEOUT_MARGIN_MS : 0);
  if (clientTimeoutMs && e.DB_STATEMENT_TIMEOUT_MS && clientTimeoutMs <= e.DB_STATEMENT_TIMEOUT_MS) {
    throw new ConfigError([
      `DB_CLIENT_TIMEOUT_MS (${clientTimeoutMs}) must be greater than DB_STATEMENT_TIMEOUT_MS (${e.DB_STATEMENT_TIMEOUT_MS}): ` +
        "the server's own timeout rolls a slow statement back cleanly; the client's is for a server that no longer answers",
    ]);
  }
  // Servers this process may bind or start on one port: the second found it taken, and a local ClickHouse
  // taken for Postgres failed only later, as the mirror's (rows queued, then became gaps).
  const ports = [
    ['PORT', e.PORT],
    ['EMBEDDED_POSTGRES_PORT', e.DATABASE_URL === undefined ? e.EMBEDDED_POSTGRES_PORT : 0],
    ['EMBEDDED_CLICKHOUSE_PORT', e.USE_CLICKHOUSE && e.CLICKHOUSE_URL === undefined ? e.EMBEDDED_CLICKHOUSE_PORT : 0],
  ] as const;
  const clashes = ports.flatMap(([name, port], i) => ports.slice(i + 1).filter(([, other]) => port !== 0 && other === port).map(([otherName]) => `${name} and ${otherName} are both ${port}`));
  if (clashes.length > 0) throw new ConfigError(clashes.map((clash) => `${clash}: each server needs a port of its own`));
  if (e.CLICKHOUSE_TTL_DAYS > MAX_TTL_DAYS) {
    throw new ConfigError([
      `CLICKHOUSE_TTL_DAYS must be at most ${MAX_TTL_DAYS}, got ${e.CLICKHOUSE_TTL_DAYS}: ${TTL_WRAP}`,
    ]);
  }
  const dataDir = e.EMBEDDED_DATA_DIR;
  return {
    http: {
      host: e.HOST,
      port: e.PORT,
      bodyLimit: e.BODY_LIMIT,
      maxBatchItems: e.MAX_BATCH_ITEMS,
      maxOtlpSpans: e.MAX_OTLP_SPANS,
      maxResponseItems: e.MAX_RESPONSE_ITEMS,
      shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
      shutdownDelayMs: e.SHUTDOWN_DELAY_MS,
    },
    logLevel: e.LOG_LEVEL,
    postgres: {
      url: e.DATABASE_URL,
      poolMax: e.DB_POOL_MAX,
      migrateOnStart: e.MIGRATE_ON_START,
      statementTimeoutMs: e.DB_STATEMENT_TIMEOUT_MS,
      clientTimeoutMs,
      embedded: { port: e.EMBEDDED_POSTGRES_PORT, dataDir: `${dataDir}/postgres` },
    },
    clickhouse: {
      enabled: e.USE_CLICKHOUSE,
      url: e.CLICKHOUSE_URL,
      user: e.CLICKHOUSE_USER,
      password: e.CLICKHOUSE_PASSWORD,
      database: e.CLICKHOUSE_DATABASE,
      projectIds: e.CLICKHOUSE_PROJECT_IDS,
      ttlDays: e.CLICKHOUSE_TTL_DAYS,
      requestTimeoutMs: e.CLICKHOUSE_REQUEST_TIMEOUT_MS,
      embedded: { port: e.EMBEDDED_CLICKHOUSE_PORT, dataDir: `${dataDir}/clickhouse` },
    },
    mirror: {
      flushRows: e.MIRROR_FLUSH_ROWS,
      flushBytes: e.MIRROR_FLUSH_BYTES,
      flushIntervalMs: e.MIRROR_FLUSH_INTERVAL_MS,
      queueMaxBytes: e.MIRROR_QUEUE_MAX_BYTES,
      shutdownDeadlineMs: e.MIRROR_SHUTDOWN_DEADLINE_MS,
      maxAttempts: e.MIRROR_MAX_ATTEMPTS,
      baseBackoffMs: e.MIRROR_BASE_BACKOFF_MS,
      maxBackoffMs: e.MIRROR_MAX_BACKOFF_MS,
      breaker: { failureThreshold: e.MIRROR_BREAKER_FAILURES, openMs: e.MIRROR_BREAKER_OPEN_MS },
    },
  };
}
