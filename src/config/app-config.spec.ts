import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, envSchema, MAX_TTL_DAYS, parseConfig } from './app-config';
import { DEFAULT_BATCH_WRITER_OPTIONS } from '../dbs/clickhouse/batch-writer-options';

/** What parseConfig refuses `env` for: its problems, one line each, or none. */
function problems(env: NodeJS.ProcessEnv): string[] {
  try {
    parseConfig(env);
    return [];
  } catch (error) {
    return (error as ConfigError).problems;
  }
}

describe('parseConfig: Postgres timeouts', () => {
  const postgres = (env: NodeJS.ProcessEnv) => parseConfig(env).postgres;

  it('gives up on an unanswering server 5 s after the statement timeout by default', () => {
    expect(postgres({})).toMatchObject({ statementTimeoutMs: 30_000, clientTimeoutMs: 35_000 });
    expect(postgres({ DB_STATEMENT_TIMEOUT_MS: '300' })).toMatchObject({ statementTimeoutMs: 300, clientTimeoutMs: 5_300 });
  });

  it('takes DB_CLIENT_TIMEOUT_MS as given, and waits for ever without either timeout', () => {
    expect(postgres({ DB_STATEMENT_TIMEOUT_MS: '300', DB_CLIENT_TIMEOUT_MS: '1500' })).toMatchObject({ clientTimeoutMs: 1_500 });
    expect(postgres({ DB_STATEMENT_TIMEOUT_MS: '0' })).toMatchObject({ statementTimeoutMs: 0, clientTimeoutMs: 0 });
    expect(postgres({ DB_STATEMENT_TIMEOUT_MS: '0', DB_CLIENT_TIMEOUT_MS: '2000' })).toMatchObject({ clientTimeoutMs: 2_000 });
  });

  it('refuses a client timeout that would fire before the server could cancel the statement itself', () => {
    for (const client of ['300', '100']) {
      expect(() => parseConfig({ DB_STATEMENT_TIMEOUT_MS: '300', DB_CLIENT_TIMEOUT_MS: client })).toThrow(ConfigError);
      expect(() => parseConfig({ DB_STATEMENT_TIMEOUT_MS: '300', DB_CLIENT_TIMEOUT_MS: client })).toThrow(
        /DB_CLIENT_TIMEOUT_MS \(\d+\) must be greater than DB_STATEMENT_TIMEOUT_MS \(300\)/,
      );
    }
    expect(() => parseConfig({ DB_CLIENT_TIMEOUT_MS: 'soon' })).toThrow(/DB_CLIENT_TIMEOUT_MS must be a whole number, got "soon"/);
  });
});

describe('parseConfig: variables that are not its business', () => {
  it('starts whatever NODE_ENV says: the API reads no setting from it, so it cannot be wrong', () => {
    // NODE_ENV=staging, common in deployments, used to stop the API and every command with
    // "NODE_ENV Invalid enum value", for a variable no setting depended on and the README did not name.
    for (const NODE_ENV of ['staging', 'production', 'development', 'test', '']) {
      expect(() => parseConfig({ NODE_ENV })).not.toThrow();
    }
  });
});

describe('parseConfig: the mirror', () => {
  it("gives the batch writer its own defaults when no MIRROR_* is set, and each variable's value when it is", () => {
    expect(parseConfig({}).mirror).toEqual(DEFAULT_BATCH_WRITER_OPTIONS);
    expect(parseConfig({ MIRROR_FLUSH_ROWS: '500', MIRROR_BREAKER_OPEN_MS: '750' }).mirror).toEqual({
      ...DEFAULT_BATCH_WRITER_OPTIONS,
      flushRows: 500,
      breaker: { ...DEFAULT_BATCH_WRITER_OPTIONS.breaker, openMs: 750 },
    });
  });

  it('refuses a value the writer cannot work with, naming the variable', () => {
    expect(() => parseConfig({ MIRROR_FLUSH_INTERVAL_MS: '5' })).toThrow(/MIRROR_FLUSH_INTERVAL_MS/);
    expect(() => parseConfig({ MIRROR_MAX_ATTEMPTS: '0' })).toThrow(/MIRROR_MAX_ATTEMPTS/);
  });
});

describe('parseConfig: a variable set to nothing', () => {
  it('takes its default, for every variable alike', () => {
    const blank = Object.fromEntries(Object.keys(envSchema.shape).map((name, i) => [name, i % 2 ? '' : '  ']));
    expect(parseConfig(blank)).toEqual(parseConfig({}));
    // The ones that were not: a data directory at the filesystem root, an empty host and user, a refusal.
    const config = parseConfig({ EMBEDDED_DATA_DIR: '', HOST: '', CLICKHOUSE_USER: '', LOG_LEVEL: '', BODY_LIMIT: ' ', CLICKHOUSE_DATABASE: '' });
    expect(config.postgres.embedded.dataDir).toBe('.data/postgres');
    expect(config.http.host).toBe('0.0.0.0');
    expect(config.clickhouse.user).toBe('default');
    expect(config.logLevel).toBe('info');
  });
});

describe('README "Configuration"', () => {
  /** The table's rows: the variables a row names, and the defaults it gives when they are plain values. */
  function readmeRows(): Array<{ names: string[]; defaults: string[] | null }> {
    const readme = readFileSync(join(__dirname, '..', '..', 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 1));
    return section
      .split('\n')
      .filter((line) => line.startsWith('| `'))
      .map((line) => {
        const [names, defaults] = line.split(' | ').map((cell) => cell.replace(/^\| /, ''));
        const ticked = (cell: string) => [...cell.matchAll(/`([^`]*)`/g)].map((m) => m[1]);
        // Only a cell of nothing but values (`200`, `10000`, or `0` (none)) states the defaults themselves.
        const plain = /^`[^`]*`( \([^)]*\))?(, `[^`]*`)*$/.test(defaults);
        return { names: ticked(names), defaults: plain ? ticked(defaults) : null };
      });
  }

  it('names every variable the API reads, and nothing it does not', () => {
    const documented = readmeRows().flatMap((row) => row.names);
    expect([...documented].sort()).toEqual(Object.keys(envSchema.shape).sort());
  });

  it('gives each default the API applies when the variable is unset', () => {
    const shape = envSchema.shape as Record<string, { parse(value: unknown): unknown }>;
    const compared: string[] = [];
    for (const { names, defaults } of readmeRows()) {
      if (!defaults || defaults.length !== names.length) continue;
      names.forEach((name, i) => {
        expect({ name, default: String(shape[name].parse(undefined)) }).toEqual({ name, default: defaults[i] });
        compared.push(name);
      });
    }
    // The table's plain cells: most variables, the mirror's among them.
    expect(compared).toEqual(expect.arrayContaining(['PORT', 'HOST', 'MIRROR_FLUSH_ROWS', 'MIRROR_QUEUE_MAX_BYTES', 'MIRROR_MAX_BACKOFF_MS']));
    expect(compared.length).toBeGreaterThanOrEqual(25);
  });
});

describe('parseConfig: what a bad value is told', () => {
  it('names the variable, what it takes and what it got', () => {
    // -5 is a whole number; its range is what is wrong (was: 'must be a whole number, got "-5"').
    expect(problems({ MIRROR_FLUSH_ROWS: '-5' })).toEqual([`MIRROR_FLUSH_ROWS must be between 1 and ${Number.MAX_SAFE_INTEGER}, got -5`]);
    expect(problems({ MIRROR_FLUSH_ROWS: '1.5' })).toEqual(['MIRROR_FLUSH_ROWS must be a whole number, got "1.5"']);
    // Was zod's "Invalid enum value. Expected 'fatal' | ..., received 'verbose'".
    // It takes more than the two words it named: the message says which.
    expect(problems({ USE_CLICKHOUSE: 'maybe' })).toEqual(['USE_CLICKHOUSE must be true or false (or 1/0, yes/no, on/off), got "maybe"']);
    expect(['1', 'YES', 'on'].map((v) => parseConfig({ USE_CLICKHOUSE: v }).clickhouse.enabled)).toEqual([true, true, true]);
    expect(problems({ LOG_LEVEL: 'verbose' })).toEqual(['LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "verbose"']);
  });
});

describe('parseConfig: values that would mean the opposite of what they say', () => {

  it('refuses a duration past what a timer keeps: Node fires such a timeout after 1 ms', () => {
    // Each was accepted: SHUTDOWN_TIMEOUT_MS=3000000000 gave up the drain at once, and a client timeout
    // that long failed every query as "Query read timeout".
    const durations = ['SHUTDOWN_TIMEOUT_MS', 'DB_CLIENT_TIMEOUT_MS', 'CLICKHOUSE_REQUEST_TIMEOUT_MS', 'MIRROR_FLUSH_INTERVAL_MS', 'MIRROR_SHUTDOWN_DEADLINE_MS', 'MIRROR_BASE_BACKOFF_MS', 'MIRROR_MAX_BACKOFF_MS', 'MIRROR_BREAKER_OPEN_MS'];
    for (const name of durations) {
      expect(problems({ [name]: '2147483648' })).toEqual([expect.stringMatching(new RegExp(`^${name} must be between \\d+ and 2147483647, got 2147483648$`))]);
      expect(problems({ [name]: '2147483647', DB_STATEMENT_TIMEOUT_MS: '0' })).toEqual([]);
    }
    // The statement timeout leaves room for the client timeout derived from it.
    expect(problems({ DB_STATEMENT_TIMEOUT_MS: '2147478648' })).toEqual(['DB_STATEMENT_TIMEOUT_MS must be between 0 and 2147478647, got 2147478648']);
    expect(parseConfig({ DB_STATEMENT_TIMEOUT_MS: '2147478647' }).postgres.clientTimeoutMs).toBe(2_147_483_647);
    // Serving on after SIGTERM has a bound of its own: it comes before the drain, inside the orchestrator's grace period.
    expect(problems({ SHUTDOWN_DELAY_MS: '60001' })).toEqual(['SHUTDOWN_DELAY_MS must be between 0 and 60000, got 60001']);
    expect(parseConfig({ SHUTDOWN_DELAY_MS: '5000' }).http.shutdownDelayMs).toBe(5_000);
  });

  it('refuses a data directory or host with spaces around it, which would be another one', () => {
    expect(() => parseConfig({ EMBEDDED_DATA_DIR: '.data ' })).toThrow(/EMBEDDED_DATA_DIR.*must not start or end with spaces/);
    expect(() => parseConfig({ HOST: ' 127.0.0.1' })).toThrow(/HOST.*must not start or end with spaces/);
    expect(parseConfig({ EMBEDDED_DATA_DIR: 'my data' }).postgres.embedded.dataDir).toBe('my data/postgres');
  });

  it('refuses a body limit of zero, which would refuse every request with a body', () => {
    for (const BODY_LIMIT of ['0kb', '0mb', '0b', '00kb']) {
      expect(problems({ BODY_LIMIT })).toEqual(['BODY_LIMIT must look like 512kb or 10mb (and not be zero)']);
    }
    expect(parseConfig({ BODY_LIMIT: '1b' }).http.bodyLimit).toBe('1b');
  });

  it('refuses a project list that names no project: empty means every project', () => {
    for (const CLICKHOUSE_PROJECT_IDS of [',', ' , ,']) {
      expect(problems({ CLICKHOUSE_PROJECT_IDS })).toEqual([
        `CLICKHOUSE_PROJECT_IDS names no project, got "${CLICKHOUSE_PROJECT_IDS}": list project UUIDs, or leave it unset to mirror every project`,
      ]);
    }
    const id = '0b6f7c55-6a43-4f3a-9d2e-1c3b5a7e9f01';
    expect(parseConfig({ CLICKHOUSE_PROJECT_IDS: `${id},` }).clickhouse.projectIds).toEqual([id]);
  });

  it('never quotes a database URL it cannot redact: a scheme left out, or a keyword string', () => {
    expect(problems({ DATABASE_URL: 'tracing:s3cret@postgres:5432/tracing' })).toEqual([
      'DATABASE_URL must be a postgres: or postgresql:// URL; the value given is not one (not shown: it may hold a password)',
    ]);
    expect(problems({ DATABASE_URL: 'postgres:app:s3cret@db/tracing' })).toEqual([
      'DATABASE_URL must be a postgres: or postgresql:// URL; the value given is not one (not shown: it may hold a password)',
    ]);
    expect(problems({ DATABASE_URL: 'host=db user=app password=s3cret' }).join()).not.toContain('s3cret');
    // A '//' in the password is not the authority form redactUrl hides a password in.
    expect(problems({ DATABASE_URL: 'app:Zm9v//YmFy@db/tracing' }).join()).not.toContain('YmFy');
    expect(problems({ DATABASE_URL: 'postgresql:/app:s3//cret@db/x' }).join()).not.toContain('cret');
    expect(problems({ DATABASE_URL: 'mysql://app:s3cret@db/tracing' })).toEqual(['DATABASE_URL must be a postgres: or postgresql:// URL, got "mysql://app:***@db/tracing"']);
    expect(parseConfig({ DATABASE_URL: 'postgresql://app:s3cret@db:5432/tracing?sslmode=require' }).postgres.url).toBe('postgresql://app:s3cret@db:5432/tracing?sslmode=require');
  });

  it('refuses a ClickHouse URL with a path or query, which the client would read as the database and settings', () => {
    const why = 'the client would read a path as the database and a query as settings; name the database in CLICKHOUSE_DATABASE';
    const server = 'must name the server only (scheme, user, password, host, port; a proxy\'s ?pathname= and ?http_header_… too)';
    expect(problems({ CLICKHOUSE_URL: 'http://ch:8123/default' })).toEqual([`CLICKHOUSE_URL ${server}, got "http://ch:8123/default": ${why}`]);
    expect(problems({ CLICKHOUSE_URL: 'https://u:pw@ch:8443?ch_date_time_output_format=iso' })).toEqual([
      `CLICKHOUSE_URL ${server}, got "https://u:***@ch:8443?ch_date_time_output_format=iso": ${why}`,
    ]);
    expect(problems({ CLICKHOUSE_URL: 'https://ch:8443?request_timeout=1' })).toHaveLength(1);
    expect(parseConfig({ CLICKHOUSE_URL: 'https://u:pw@ch:8443/' }).clickhouse.url).toBe('https://u:pw@ch:8443/');
    // A proxy that routes by path, and headers for it: the client's own parameters, not settings.
    expect(parseConfig({ CLICKHOUSE_URL: 'https://gw.example/?pathname=/clickhouse&http_header_X-Team=obs' }).clickhouse.url).toBe(
      'https://gw.example/?pathname=/clickhouse&http_header_X-Team=obs',
    );
  });

  it('refuses two servers on one port, counting only the embedded servers it would start', () => {
    expect(problems({ USE_CLICKHOUSE: 'true', EMBEDDED_POSTGRES_PORT: '18123' })).toEqual([
      'EMBEDDED_POSTGRES_PORT and EMBEDDED_CLICKHOUSE_PORT are both 18123: each server needs a port of its own',
    ]);
    expect(problems({ PORT: '15432' })).toEqual(['PORT and EMBEDDED_POSTGRES_PORT are both 15432: each server needs a port of its own']);
    // A server not started here (DATABASE_URL, CLICKHOUSE_URL, the flag off) takes no port of this host's.
    expect(problems({ PORT: '15432', DATABASE_URL: 'postgres://db/tracing' })).toEqual([]);
    expect(problems({ EMBEDDED_POSTGRES_PORT: '18123' })).toEqual([]);
    expect(problems({ USE_CLICKHOUSE: 'true', CLICKHOUSE_URL: 'http://ch:8123', EMBEDDED_POSTGRES_PORT: '18123' })).toEqual([]);
  });

  it('refuses a TTL so long that ClickHouse would wrap it into the past and expire every row at once', () => {
    for (const days of ['36500', '400000']) {
      expect(problems({ CLICKHOUSE_TTL_DAYS: days })).toEqual([
        expect.stringMatching(new RegExp(`^CLICKHOUSE_TTL_DAYS must be at most 20000, got ${days}: ClickHouse computes the tables' TTL as a 32-bit DateTime, which ends in 2106`)),
      ]);
    }
    expect(parseConfig({ CLICKHOUSE_TTL_DAYS: String(MAX_TTL_DAYS) }).clickhouse.ttlDays).toBe(20_000);
  });
});
