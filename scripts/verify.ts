import { parseConfig } from '../src/config/app-config';
import { createProgress } from '../src/dbs/backfill/progress';
import { BucketComparison, Verifier, VerifyReport } from '../src/dbs/backfill/verify';
import { parseFlags } from './cli/flags';
import { counted } from '../src/counted';
import { connectClickHouse, connectPostgres, formatSeconds, scopesFrom } from './cli/history-cli';
import { namingPostgres } from './cli/postgres-cli';
import { exitOnSignal, runCli } from './cli/run-cli';

const USAGE = `usage: npm run verify -- [options]

Compares Postgres with the ClickHouse mirror per entity, project and
created_at day: row counts and version sums, then a checksum of every row's
content. Prints the buckets that differ; exits 0 when everything agrees, 1 when
anything differs. Safe while the API writes: rows created after verify starts
are left out, and a bucket that differs is compared again once the mirror's
writes in flight have landed (MIRROR_FLUSH_INTERVAL_MS + 1 s) before it counts.

  --entity spans|nodes|all   what to compare (default all)
  --project <uuid>           one project (default: all, or CLICKHOUSE_PROJECT_IDS)
  --since <time>             created_at at or after this ISO-8601 time
  --until <time>             created_at before this ISO-8601 time
  --counts-only              compare row counts and version sums only: quick on any
                             size, but blind to a row changed in place at the same version
  --repair                   re-copy exactly the differing buckets, then verify them again
                             (content included)

Connects to DATABASE_URL and CLICKHOUSE_URL, or to the embedded servers.
Exits 0 when everything agrees (after --repair: when the repaired buckets
agree), 1 when anything differs or a server fails, 2 for bad options.`;

/** Beyond the flush interval, what an insert takes to be readable: the mirror-lag benchmark's goal allows 1 s. */
const SEND_ALLOWANCE_MS = 1_000;

runCli(USAGE, async (args, log) => {
  const flags = parseFlags(args, ['--entity', '--project', '--since', '--until'], ['--repair', '--counts-only']);
  const config = parseConfig();
  const scopes = scopesFrom(flags, config);
  const postgres = await connectPostgres(config, log);
  try {
    const clickhouse = await connectClickHouse(config, log, 'verify');
    const named = (error: unknown) => namingPostgres(postgres.at, error, 'run the same command again once it answers (a --repair cut short is safe to repeat)');
    try {
      const progress = createProgress(process.stderr, log, 'verify');
      const repairProgress = createProgress(process.stderr, log, 'repair');
      exitOnSignal(
        'interrupted: verify did not finish; run the same command again (a --repair cut short is safe to repeat)',
        () => {
          progress.stop();
          repairProgress.stop();
        },
        { describeFailure: named },
      );
      const verifier = new Verifier(postgres.db, clickhouse.history);
      // A running API's mirror is up to its flush interval (and a send) behind Postgres: a bucket that differs is
      // compared again after that long (this shell's MIRROR_FLUSH_INTERVAL_MS, the API's when both read one .env).
      const settle = { settleMs: config.mirror.flushIntervalMs + SEND_ALLOWANCE_MS, log };
      // The tables' TTL, not this shell's CLICKHOUSE_TTL_DAYS, decides which days ClickHouse still keeps whole.
      const ttlDays = await clickhouse.history.ttlDays([...new Set(scopes.map((scope) => scope.entity))]);
      if (ttlDays !== config.clickhouse.ttlDays) {
        log(`note: the ClickHouse tables' TTL is ${ttlDays || 'none'}${ttlDays ? ' days' : ''}, CLICKHOUSE_TTL_DAYS here ${config.clickhouse.ttlDays || 'unset'}; comparing by the tables'`);
      }
      const report = await verifier.verify(scopes, { content: !flags.switches.has('--counts-only'), progress, ttlDays, ...settle });
      log(`compared rows created before ${report.asOf} (Postgres's clock as verify started; later ones are still arriving)`);
      if (report.settled > 0) log(`${counted(report.settled, 'bucket')} that differed at first agreed once the writes in flight had landed`);
      if (report.retainedFrom) {
        log(`TTL of ${ttlDays} days: rows created before ${report.retainedFrom.slice(0, 10)} expire in ClickHouse by design and are not compared`);
      }
      write(describe(report));
      if (report.buckets.length === 0) {
        // They agree, but on nothing: most often a mistyped --project or date, which a script gating on the exit code would not see.
        // Under a TTL only the days ClickHouse keeps whole are in the scope: older rows may well be stored.
        const kept = report.retainedFrom ? ` created from ${report.retainedFrom.slice(0, 10)} on (the days the TTL keeps whole)` : '';
        log(`warning: nothing was compared: neither Postgres nor ClickHouse holds rows in this scope${kept}; check --entity, --project, --since and --until (and CLICKHOUSE_PROJECT_IDS)`);
      }
      if (report.differing.length === 0) return;
      if (!flags.switches.has('--repair')) throw new Error(`${counted(report.differing.length, 'bucket')} differ${report.differing.length === 1 ? 's' : ''}; run with --repair to re-copy them`);

      const repair = await verifier.repair(report.differing, { ...settle, progress, repairProgress });
      write(
        `repair: ${counted(repair.buckets, 'bucket')} re-copied in ${formatSeconds(repair.durationMs)}: ${counted(repair.upserted, 'row')} upserted, ` +
          `${repair.tombstoned} tombstoned, ${repair.reset} reset`,
      );
      write(`after repair: ${describe(repair.after)}`);
      if (repair.after.differing.length > 0) {
        throw new Error(
          `${counted(repair.after.differing.length, 'bucket')} still differ${repair.after.differing.length === 1 ? 's' : ''} after repair: rows in them changed while it ran (run verify again), or ` +
            'ClickHouse does not keep what it is sent (see its logs)',
        );
      }
    } catch (error) {
      // Postgres failing mid-run is named (ClickHouse's failures are named where they happen).
      throw named(error);
    } finally {
      await clickhouse.close();
    }
  } finally {
    await postgres.close();
  }
});

function write(text: string): void {
  process.stdout.write(`${text}\n`);
}

function describe(report: VerifyReport): string {
  const summary =
    `verify: ${counted(report.buckets.length, 'bucket')} compared (${report.contentChecked} by content), ` +
    `${counted(report.rows.postgres, 'row')} in Postgres, ${report.rows.clickhouse} in ClickHouse, ` +
    `${report.differing.length} differ, in ${formatSeconds(report.durationMs)}`;
  if (report.differing.length === 0) return `${summary}: no differences`;
  return `${table(report.differing)}\n${summary}`;
}

function table(buckets: BucketComparison[]): string {
  const rows = [
    ['entity', 'project', 'day', 'pg rows', 'ch rows', 'differs'],
    ...buckets.map((b) => [b.entity, b.projectId, b.day, String(b.postgres.rows), String(b.clickhouse.rows), b.differs.join(', ')]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const numeric = new Set([3, 4]);
  return rows.map((r) => r.map((cell, i) => (numeric.has(i) ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))).join('  ').trimEnd()).join('\n');
}
