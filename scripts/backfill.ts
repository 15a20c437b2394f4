import { parseConfig } from '../src/config/app-config';
import { Backfill, BackfillResult, DEFAULT_BACKFILL_OPTIONS, planBackfill } from '../src/dbs/backfill/backfill';
import { GapReplay, gapsCommand } from '../src/dbs/backfill/gap-replay';
import { createProgress } from '../src/dbs/backfill/progress';
import { PostgresMirrorGapsRepository } from '../src/dbs/postgres/postgres-mirror-gaps.repository';
import { parseFlags, positiveInt } from './cli/flags';
import { counted } from '../src/counted';
import { errorText } from '../src/error-text';
import { connectClickHouse, connectPostgres, formatRate, formatSeconds, scopesFrom } from './cli/history-cli';
import { namingPostgres } from './cli/postgres-cli';
import { exitOnSignal, runCli, UsageError } from './cli/run-cli';

const USAGE = `usage: npm run backfill -- [options]

Copies Postgres history into the ClickHouse mirror, at the versions live writes
use, so it is safe while the mirror runs and re-running adds nothing. A run
resumes from its checkpoint by default (the same options are the same run).

  --entity spans|nodes|all   what to copy (default all)
  --project <uuid>           one project (default: all, or CLICKHOUSE_PROJECT_IDS)
  --since <time>             created_at at or after this ISO-8601 time
  --until <time>             created_at before this ISO-8601 time
  --batch-rows <n>           rows per batch: one COPY, one ClickHouse insert, one checkpoint (default ${DEFAULT_BACKFILL_OPTIONS.batchRows})
  --batch-bytes <n>          bytes per batch, as Postgres stores the rows (default ${DEFAULT_BACKFILL_OPTIONS.batchBytes})
  --dry-run                  count what would be copied; write nothing
  --restart                  start the run over (new upper bound) instead of resuming
  --gaps                     replay the mirror's open gap records instead of copying history
                             (with --entity, --project and --dry-run only)

Connects to DATABASE_URL and CLICKHOUSE_URL, or to the embedded servers.
Exits 0 when done, 1 when it failed (the message names the server and what to
do; the checkpoint keeps what was copied), 2 for bad options.`;

runCli(USAGE, async (args, log) => {
  const flags = parseFlags(
    args,
    ['--entity', '--project', '--since', '--until', '--batch-rows', '--batch-bytes'],
    ['--dry-run', '--restart', '--gaps'],
  );
  const config = parseConfig();
  const scopes = scopesFrom(flags, config);
  const options = {
    batchRows: positiveInt(flags, '--batch-rows', DEFAULT_BACKFILL_OPTIONS.batchRows),
    batchBytes: positiveInt(flags, '--batch-bytes', DEFAULT_BACKFILL_OPTIONS.batchBytes),
    restart: flags.switches.has('--restart'),
  };
  const gaps = flags.switches.has('--gaps');
  const dryRun = flags.switches.has('--dry-run');
  const notForGaps = ['--since', '--until', '--batch-rows', '--batch-bytes'];
  if (gaps && (notForGaps.some((name) => flags.values.has(name)) || options.restart)) {
    throw new UsageError('--gaps replays whole gap records: it takes --entity, --project and --dry-run only');
  }
  const postgres = await connectPostgres(config, log);
  try {
    // Every scope has the same projects (--project, or CLICKHOUSE_PROJECT_IDS, or all).
    const gapScope = { entities: scopes.map((s) => s.entity), projectIds: scopes[0].projectIds };
    // A dry run reads only Postgres: its failure is named, and rerunning changes nothing.
    const dryRunFailed = (error: unknown) => {
      throw namingPostgres(postgres.at, error, 'run it again once it answers');
    };
    if (dryRun && gaps) {
      const open = await new PostgresMirrorGapsRepository(postgres.db).totals(gapScope).catch(dryRunFailed);
      process.stdout.write(`dry run: ${counted(open.gaps, 'open gap record')}, ${counted(open.rows, 'row')} to replay; nothing written\n`);
      return;
    }
    if (dryRun) {
      // Counting needs only Postgres; ClickHouse is not touched.
      for (const scope of scopes) {
        const plan = await planBackfill(postgres.db, scope, options).catch(dryRunFailed);
        const onRestart = plan.rowsOnRestart === undefined ? '' : `; --restart would copy ${plan.rowsOnRestart}`;
        // Not asked here: a table made again since (or another server's) has the real run start over.
        const into = plan.target ? `; as long as ClickHouse's ${plan.entity} table is still ${plan.target}, the one it copied into` : '';
        process.stdout.write(`dry run: ${plan.entity}: ${counted(plan.rows, 'row')} would be copied (${plan.checkpoint}; run "${plan.runKey}"${onRestart}${into}); nothing written\n`);
      }
      return;
    }

    // This process cannot see the API's setting, only its own environment's: say what matters, not a verdict.
    // A gap replay is about rows the mirror missed, not about rows written after it: the note has nothing to add there.
    if (!config.clickhouse.enabled && !gaps) {
      log('note: rows written after the backfill copies them reach ClickHouse only through an API running with USE_CLICKHOUSE=true (off in this shell, which is fine when the API has it on)');
    }
    const clickhouse = await connectClickHouse(config, log, 'backfill');
    const progress = createProgress(process.stderr, log);
    // With --restart, the same command would start over from the first row: resuming is the command without it,
    // but only once every entity has started over. Cut short before that, an entity not reset yet would still
    // read "complete" from the old run and be skipped, so the hint is to start over again.
    let restarting = options.restart;
    const hint = () =>
      gaps
        ? 'interrupted: every gap record ClickHouse accepted whole is marked replayed, the rest stay open; run the same command to replay them'
        : restarting
          ? 'interrupted while starting over, before any row was copied; run the same command (with --restart) again'
          : `interrupted: every batch ClickHouse accepted is checkpointed; ${options.restart ? 'run it again without --restart to resume' : 'run the same command to resume'}`;
    // Postgres failing mid-run is named, with what a rerun does (ClickHouse's failures are named where they happen).
    const rerun = () =>
      gaps
        ? 'run the same command again once it answers (gaps not marked replayed stay open)'
        : restarting
          ? 'run the same command (with --restart) again once it answers'
          : options.restart
            ? 'once it answers, run the command without --restart to resume (with it, the run starts over)'
            : 'run the same command again once it answers (it resumes from its checkpoint)';
    const named = (error: unknown) => namingPostgres(postgres.at, error, rerun());
    // A gap replay cut short while it held tombstones: after verify --repair, the gaps still open want replaying.
    const afterLoss = gaps ? `; then run ${gapsCommand(gapScope)} again for the gaps still open` : undefined;
    exitOnSignal(hint, () => progress.stop(), { describeFailure: named, afterLoss });
    try {
      if (gaps) {
        // A gap's own failure is listed and the run goes on: named there, as the run's own failures are named at its end.
        const replay = new GapReplay(postgres.db, clickhouse.history, log, (error) => namingPostgres(postgres.at, error));
        const done = await replay.run(gapScope);
        process.stdout.write(
          `gaps: replayed ${counted(done.gaps, 'gap record')}: ${counted(done.upserted, 'row')} upserted, ${done.tombstoned} tombstoned, ${done.reset} reset, ` +
            `in ${formatSeconds(done.durationMs)}\n`,
        );
        return;
      }
      const backfill = new Backfill(postgres, clickhouse.history, log);
      // Every entity starts over before any is copied, so the resume hint above holds for all of them.
      if (options.restart) await backfill.restart(scopes);
      restarting = false;
      try {
        for (const scope of scopes) {
          process.stdout.write(`${summary(await backfill.run(scope, { ...options, restart: false }, progress))}\n`);
        }
      } catch (error) {
        // A failure's own advice is to run the same command again, which with --restart would start over.
        // (A Postgres failure's, named below, says so itself.)
        if (!options.restart || named(error) !== error) throw error;
        throw new Error(`${errorText(error)} (to resume, run the command without --restart: with it, the run starts over)`);
      }
    } catch (error) {
      throw named(error);
    } finally {
      await clickhouse.close();
    }
  } finally {
    await postgres.close();
  }
});

function summary(r: BackfillResult): string {
  // A scope that held nothing is most often a mistyped --project or date, which is not an error to refuse.
  // Rows created since the run's bound are not in its count: the live mirror's, or --restart's to copy.
  const check = 'check --project, --since and --until (and CLICKHOUSE_PROJECT_IDS)';
  if (r.outcome === 'already-complete') {
    const empty = r.totalRowsCopied === 0 ? ` It found no ${r.entity} in its scope created before ${r.upperBound}: ${check}, or --restart for rows created since.` : '';
    return `backfill ${r.entity}: already complete (${counted(r.totalRowsCopied, 'row')}, run "${r.runKey}"); nothing to do. Use --restart to copy again.${empty}`;
  }
  const empty = r.totalRowsCopied === 0 ? ` Its scope holds no ${r.entity} in Postgres created before that bound: ${check}.` : '';
  const resumed = r.resumedFrom ? `; resumed from ${r.resumedFrom.join('/')}` : '';
  return (
    `backfill ${r.entity}: complete: ${counted(r.rowsCopied, 'row')} copied in ${counted(r.batches, 'batch', 'batches')}, ${formatSeconds(r.durationMs)}, ` +
    `${formatRate(r.rowsPerSecond)} rows/s${resumed} (run total ${counted(r.totalRowsCopied, 'row')}, upper bound ${r.upperBound}).${empty}`
  );
}
