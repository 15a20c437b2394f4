import request from 'supertest';
import { createTestApp, TestApp } from '../support/app';
import { sql } from 'kysely';
import { migrateDown } from '../../src/dbs/postgres/postgres-migrator';
import { runCommand } from '../support/commands';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/** `npm run apikey` as an operator runs it, against the database a running API serves from. */
describe('npm run apikey', () => {
  let t: TestApp;
  beforeAll(async () => (t = await createTestApp()));
  afterAll(async () => t.close());

  const apikey = (...args: string[]) => runCommand('apikey', args, { DATABASE_URL: t.database.url });
  const projectId = '7d1e0e3c-0000-4000-8000-0000000000a1';
  const readTrace = (key: string) => request(t.url).get('/tracing/traces/4bf92f3577b34da6a3ce929d0e0e4736').set('Authorization', `ApiKey ${key}`);
  const keyCount = async () => (await t.database.db.selectFrom('api_keys').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()).n;

  it('create prints the key alone on the last line, and the running API takes it for that project', async () => {
    const run = await apikey('create', '--project', projectId.toUpperCase());
    expect(run.code).toBe(0);
    const key = run.stdout.trim().split('\n').pop()!;
    expect(key).toMatch(/^tk_[A-Za-z0-9_-]{43}$/);
    expect(run.stderr).toMatch(new RegExp(`created key [0-9a-f-]{36} \\(${key.slice(0, 9)}…\\) for project ${projectId}; store it now`));
    // 404, not 401: the key is accepted, and the project has no such trace.
    expect((await readTrace(key)).status).toBe(404);
  });

  it('list shows each key by id, project and prefix, never the key itself', async () => {
    const key = (await apikey('create', '--project', projectId)).stdout.trim();
    const listed = await apikey('list', '--project', projectId);
    expect(listed.code).toBe(0);
    expect(listed.stdout).not.toContain(key);
    expect(listed.stdout).toContain(`  ${projectId}  ${key.slice(0, 9)}…  created `);
    expect(listed.stdout.trim().split('\n')).toHaveLength(2);
    // Without --project: every project's keys, the test app's own among them.
    expect((await apikey('list')).stdout).toContain(t.projectId);
  });

  it('revoke: the API refuses the key, list says when, and a second revoke fails', async () => {
    const key = (await apikey('create', '--project', projectId)).stdout.trim();
    const id = (await apikey('list', '--project', projectId)).stdout.split('\n').find((line) => line.includes(key.slice(0, 9)))!.split(' ')[0];

    const revoked = await apikey('revoke', '--id', id);
    expect(revoked).toMatchObject({ code: 0, stderr: expect.stringContaining(`revoked key ${id}; running APIs refuse it within 30 s`) });
    const refused = await readTrace(key);
    expect(refused.status).toBe(401);
    expect(refused.body.message).toBe('unknown or revoked API key');
    expect((await apikey('list', '--project', projectId)).stdout).toMatch(new RegExp(`^${id} .* created \\S+Z {2}revoked \\S+Z$`, 'm'));

    const again = await apikey('revoke', '--id', id);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`error: no active key with id ${id}`);
  });

  it('bad arguments exit 2 with the usage, and write nothing', async () => {
    const before = await keyCount();
    const cases: Array<[string[], string]> = [
      [[], 'missing command'],
      [['rotate'], 'unknown command "rotate"'],
      [['create'], 'create needs --project <uuid>'],
      [['create', '--project'], '--project needs a value'],
      [['create', '--project', 'nope'], '--project must be a UUID, got "nope"'],
      [['create', '--project', projectId, '--extra', 'x'], 'unknown option "--extra"'],
      [['create', '--project', projectId, projectId], `unknown option "${projectId}"`],
      [['create', '--project', projectId, '--project', projectId], '--project given twice'],
      [['create', '--id', projectId], 'unknown option "--id"'],
      [['list', '--id', projectId], 'unknown option "--id"'],
      [['revoke', '--project', projectId], 'unknown option "--project"'],
      [['revoke', '--id', 'abc'], '--id must be a UUID, got "abc"'],
    ];
    for (const [args, message] of cases) {
      const run = await apikey(...args);
      expect({ args, code: run.code, stdout: run.stdout }).toEqual({ args, code: 2, stdout: '' });
      expect(run.stderr.split('\n\n')[0]).toBe(`error: ${message}`);
      expect(run.stderr).toContain('usage: npm run apikey -- <command>\n');
    }
    expect(await keyCount()).toBe(before);
  });
});

/** The command on a schema that is not this build's, as the API treats it (postgres-migrations.spec). */
describe('npm run apikey on a schema that is not this build\'s', () => {
  let test: TestDatabase;
  beforeAll(async () => (test = await createTestDatabase()));
  afterAll(async () => test.drop());

  const projectId = '7d1e0e3c-0000-4000-8000-0000000000a2';
  const create = (env: Record<string, string> = {}) => runCommand('apikey', ['create', '--project', projectId], { DATABASE_URL: test.url, ...env });

  it('uses a database a newer build migrated (Kysely alone calls it corrupted)', async () => {
    await sql`insert into kysely_migration (name, timestamp) values ('9999_from_a_newer_build', ${new Date().toISOString()})`.execute(test.db);
    try {
      const run = await create();
      expect(run.code).toBe(0);
      expect(run.stdout.trim()).toMatch(/^tk_/);
    } finally {
      await sql`delete from kysely_migration where name = '9999_from_a_newer_build'`.execute(test.db);
    }
  });

  it('with MIGRATE_ON_START=false and a migration pending, says what to run and writes nothing; with it on, migrates', async () => {
    await migrateDown(test.db, true);
    const refused = await create({ MIGRATE_ON_START: 'false' });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(
      'error: the Postgres schema is behind this build: pending migrations 0001_initial, 0002_node_page_indexes, 0003_trace_roots_index. Run `npm run migrate` (or set MIGRATE_ON_START=true), then try again.\n',
    );
    const { rows } = await sql<{ table: string | null }>`select to_regclass('api_keys')::text as table`.execute(test.db);
    expect(rows[0].table).toBeNull();

    const migrated = await create({ MIGRATE_ON_START: 'true' });
    expect(migrated.code).toBe(0);
    // Said, not silent: a `npm run migrate -- down` undone by an apikey run should not surprise anyone.
    expect(migrated.stderr).toContain('applied migrations: 0001_initial, 0002_node_page_indexes, 0003_trace_roots_index\n');
    expect(await test.db.selectFrom('api_keys').select('project_id').execute()).toEqual([{ project_id: projectId }]);
  });
});
