import { parseConfig } from '../src/config/app-config';
import { migrateDown, prepareSchema, schemaState } from '../src/dbs/postgres/postgres-migrator';
import { openPostgres } from './cli/postgres-cli';
import { runCli, UsageError } from './cli/run-cli';

const USAGE = `usage: npm run migrate -- [latest | status | down --yes | down --all --yes]

  latest      apply every pending migration (default)
  status      list this build's migrations, applied or pending, and any the database ran that this build does not know;
              exits 3 while any is pending (1 on an error, such as no connection), so a deploy step can check first
  down        undo the most recent migration
  down --all  undo every migration
  --yes       down drops what the migrations created, rows included
              (0001_initial: every table, API keys too): say so to run it`;

/** Not 1, which any failure exits with: a deploy step tells "migrate first" from "could not look". */
const PENDING_EXIT_CODE = 3;

runCli(USAGE, async (args, log) => {
  const [command = 'latest', ...rest] = args;
  if (!['latest', 'status', 'down'].includes(command) || rest.some((a) => a !== '--all' && a !== '--yes') || (command !== 'down' && rest.length)) {
    throw new UsageError(`unknown arguments: ${args.join(' ')}`);
  }
  if (command === 'down' && !rest.includes('--yes')) {
    throw new UsageError('down drops the tables the migrations created, with their rows: add --yes to run it');
  }
  const config = parseConfig();
  const { db, redactedUrl, close } = await openPostgres(config, log, 1);
  try {
    if (command === 'status') {
      const { migrations, pending, unknown } = await schemaState(db);
      for (const m of migrations) process.stdout.write(`${m.name}  ${m.executedAt ? `applied ${m.executedAt.toISOString()}` : 'pending'}\n`);
      for (const name of unknown) process.stdout.write(`${name}  applied by a newer build (this build does not know it)\n`);
      if (pending.length === 0) {
        log('the schema is current for this build');
        return;
      }
      log(`${pending.length} pending: run \`npm run migrate\``);
      return PENDING_EXIT_CODE;
    }
    if (command === 'latest') {
      // Kysely's migrator calls a database a newer build migrated corrupted; prepareSchema uses it as it is (README "Migrations").
      const { applied, unknown } = await prepareSchema(db, true, { where: redactedUrl, warn: (line) => log(`warning: ${line}`) });
      if (applied.length === 0) log('nothing to do: already at the requested version');
      for (const name of applied) log(`applied ${name}`);
      if (unknown.length) log(`the database also ran ${unknown.join(', ')}, applied by a newer build (this build does not know them); it is used as it is`);
      return;
    }
    const { unknown } = await schemaState(db);
    if (unknown.length) {
      // Only the build that wrote a migration can undo it; undoing ours beneath it would pull the schema out from under its changes.
      throw new Error(
        `the database has migrations this build does not know (${unknown.join(', ')}): migrate down with the build that applied them first`,
      );
    }
    // migrateDown refuses, before undoing anything, when a migration it would undo has no down step; one applied
    // between that look and Kysely's lock (a replica migrating at start) is still reported by its status here.
    const done = (await migrateDown(db, rest.includes('--all'))).results ?? [];
    if (done.length === 0) log('nothing to do: already at the requested version');
    const notReverted = done.filter((r) => r.status !== 'Success').map((r) => r.migrationName);
    for (const r of done) if (r.status === 'Success') log(`reverted ${r.migrationName}`);
    if (notReverted.length) {
      // Steps run one at a time and stop at it: what is above it was reverted, it and what is beneath it stay.
      throw new Error(
        `not reverted: ${notReverted.join(', ')}: no down step, applied while this command ran (another migrator); it and the migrations beneath it stay applied`,
      );
    }
  } finally {
    await close();
  }
});
