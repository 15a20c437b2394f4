import { sql } from 'kysely';
import { Client } from 'pg';
import { runCommand } from '../support/commands';
import { createTestDatabase, TestDatabase, withDatabaseEncoded } from '../support/postgres';

/** `npm run migrate` as an operator runs it against a database: status, down, latest, and bad arguments. */
describe('npm run migrate', () => {
  let test: TestDatabase;
  beforeAll(async () => (test = await createTestDatabase()));
  afterAll(async () => test.drop());

  const migrate = (...args: string[]) => runCommand('migrate', args, { DATABASE_URL: test.url });

  it('status lists what is applied and what is pending (exit 3 while any is); down and latest move between them', async () => {
    const current = await migrate('status');
    expect(current).toMatchObject({ code: 0, stderr: 'the schema is current for this build\n' });
    expect(current.stdout).toMatch(/^0001_initial {2}applied \d{4}-\d\d-\d\dT[\d:.]+Z\n0002_node_page_indexes {2}applied [\d:.TZ-]+\n0003_trace_roots_index {2}applied [\d:.TZ-]+\n$/);

    expect(await migrate('down', '--yes')).toMatchObject({ code: 0, stderr: 'reverted 0003_trace_roots_index\n' });
    expect(await migrate('status')).toMatchObject({
      code: 3,
      stdout: expect.stringMatching(/^0001_initial {2}applied .*\n0002_node_page_indexes {2}applied .*\n0003_trace_roots_index {2}pending\n$/),
      stderr: '1 pending: run `npm run migrate`\n',
    });
    expect(await migrate()).toMatchObject({ code: 0, stderr: 'applied 0003_trace_roots_index\n' });

    expect(await migrate('down', '--all', '--yes')).toMatchObject({ code: 0, stderr: 'reverted 0003_trace_roots_index\nreverted 0002_node_page_indexes\nreverted 0001_initial\n' });
    expect(await migrate('status')).toMatchObject({
      code: 3,
      stdout: '0001_initial  pending\n0002_node_page_indexes  pending\n0003_trace_roots_index  pending\n',
      stderr: '3 pending: run `npm run migrate`\n',
    });

    expect(await migrate()).toMatchObject({ code: 0, stderr: 'applied 0001_initial\napplied 0002_node_page_indexes\napplied 0003_trace_roots_index\n' });
    expect(await migrate('latest')).toMatchObject({ code: 0, stderr: 'nothing to do: already at the requested version\n' });
  });

  it('status names a migration a newer build ran', async () => {
    await sql`insert into kysely_migration (name, timestamp) values ('9999_from_a_newer_build', ${new Date().toISOString()})`.execute(test.db);
    try {
      const status = await migrate('status');
      expect(status.code).toBe(0);
      expect(status.stdout).toContain('9999_from_a_newer_build  applied by a newer build (this build does not know it)\n');
    } finally {
      await sql`delete from kysely_migration where name = '9999_from_a_newer_build'`.execute(test.db);
    }
  });

  it('latest uses a database a newer build migrated as it is; down refuses to undo under a migration it does not know', async () => {
    await sql`insert into kysely_migration (name, timestamp) values ('9999_from_a_newer_build', ${new Date().toISOString()})`.execute(test.db);
    try {
      expect(await migrate('latest')).toMatchObject({
        code: 0,
        stderr:
          'nothing to do: already at the requested version\n' +
          'the database also ran 9999_from_a_newer_build, applied by a newer build (this build does not know them); it is used as it is\n',
      });
      for (const args of [['down', '--yes'], ['down', '--all', '--yes']]) {
        expect(await migrate(...args)).toMatchObject({
          code: 1,
          stderr:
            'error: the database has migrations this build does not know (9999_from_a_newer_build): ' +
            'migrate down with the build that applied them first\n',
        });
      }
      expect((await migrate('status')).stdout).toMatch(/^0001_initial {2}applied /);
    } finally {
      await sql`delete from kysely_migration where name = '9999_from_a_newer_build'`.execute(test.db);
    }
  });

  it('unknown arguments exit 2 with the usage, and change nothing', async () => {
    for (const args of [['sideways'], ['status', '--all'], ['latest', '--all'], ['latest', '--yes']]) {
      const run = await migrate(...args);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain(`error: unknown arguments: ${args.join(' ')}`);
      expect(run.stderr).toContain('usage: npm run migrate -- [latest | status | down --yes | down --all --yes]');
    }
    expect((await migrate('status')).stderr).toBe('the schema is current for this build\n');
  });

  it('down without --yes exits 2 saying what it would drop, and drops nothing', async () => {
    for (const args of [['down'], ['down', '--all']]) {
      const run = await migrate(...args);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain('error: down drops the tables the migrations created, with their rows: add --yes to run it');
    }
    expect((await migrate('status')).stderr).toBe('the schema is current for this build\n');
  });

  // The API refused such a database at its start, but `npm run migrate` (or apikey, with MIGRATE_ON_START) built
  // the schema in it first.
  it('refuses a database not encoded in UTF8, migrating nothing into it', async () => {
    await withDatabaseEncoded('LATIN1', async (url) => {
      const run = await runCommand('migrate', [], { DATABASE_URL: url.toString() });
      expect(run.code).toBe(1);
      const redacted = new URL(url);
      redacted.password = '***';
      expect(run.stderr).toContain(
        `error: the Postgres database at ${redacted.toString()} is encoded LATIN1, which cannot hold every text a span may carry: use a database created with ENCODING 'UTF8'`,
      );
      const client = new Client({ connectionString: url.toString() });
      await client.connect();
      try {
        expect((await client.query(`select count(*)::int as n from pg_tables where schemaname = 'public'`)).rows[0].n).toBe(0);
      } finally {
        await client.end();
      }
    });
  });

  it('names the server it cannot use, without its password', async () => {
    for (const [command, args] of [['migrate', ['status']], ['apikey', ['list']]] as const) {
      const run = await runCommand(command, [...args], { DATABASE_URL: 'postgres://nobody:secret@localhost:1/none' });
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/^error: cannot use Postgres at postgres:\/\/nobody:\*\*\*@localhost:1\/none: \S.*\n$/m);
      expect(run.stderr).not.toContain('secret');
    }
  });
});
