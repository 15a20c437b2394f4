import { sql } from 'kysely';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { inOneTransaction, inTransaction } from '../../src/dbs/postgres/transactions';
import { currentWriteScope, ScopeOutcome } from '../../src/dbs/write-scope';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/** Writes that commit together, on the real Postgres: what the OTLP receiver's spans and nodes rely on. */
describe('inOneTransaction', () => {
  let test: TestDatabase;
  beforeAll(async () => {
    test = await createTestDatabase();
    await sql`create table scoped (id int primary key)`.execute(test.db);
  });
  afterAll(async () => test.drop());

  const insert = (id: number) => inTransaction(test.db, (trx) => sql`insert into scoped values (${id})`.execute(trx));
  const stored = async () => (await sql<{ id: number }>`select id from scoped order by id`.execute(test.db)).rows.map((r) => r.id);
  const watched = async (work: () => Promise<unknown>) => {
    const outcomes: ScopeOutcome[] = [];
    const error = await inOneTransaction(test.db, async () => {
      currentWriteScope()!.onEnd((outcome) => outcomes.push(outcome));
      return work();
    }).then(() => null, (e: Error) => e);
    return { error, outcomes };
  };

  it('commits the writes made inside it together, and then tells its listeners', async () => {
    const { error, outcomes } = await watched(async () => {
      await insert(1);
      // Inside: the second write sees the first, uncommitted, in the same transaction.
      await insert(2);
    });
    expect({ error, outcomes }).toEqual({ error: null, outcomes: [{ committed: true }] });
    expect(await stored()).toEqual([1, 2]);
  });

  it('rolls them all back when one fails, and says the outcome is known', async () => {
    const { error, outcomes } = await watched(async () => {
      await insert(3);
      await insert(1); // a duplicate key
    });
    expect(error?.message).toMatch(/duplicate key/);
    expect(outcomes).toEqual([{ committed: false, unknown: false, error }]);
    expect(await stored()).toEqual([1, 2]);
  });

  it('nested inside another, joins it: one commit for both', async () => {
    const { error, outcomes } = await watched(async () => {
      await insert(5);
      await inOneTransaction(test.db, async () => insert(6));
      await insert(5); // a duplicate key: the inner write goes too
    });
    expect(error?.message).toMatch(/duplicate key/);
    expect(outcomes).toEqual([{ committed: false, unknown: false, error }]);
    expect(await stored()).toEqual([1, 2]);
  });

  it('says the outcome is unknown when the client gives up on the COMMIT, which then lands', async () => {
    // A deferred trigger makes the COMMIT itself slow (as a synchronous standby would), past the client's timeout.
    await sql`create table slow_commit (id int primary key)`.execute(test.db);
    await sql`create function sleep_at_commit() returns trigger language plpgsql as $$ begin perform pg_sleep(1.5); return null; end $$`.execute(test.db);
    await sql`create constraint trigger sleep_at_commit after insert on slow_commit deferrable initially deferred for each row execute function sleep_at_commit()`.execute(test.db);
    const impatient = createKysely(createPool(test.url, 2, { statementTimeoutMs: 0, clientTimeoutMs: 500 }));
    try {
      const outcomes: ScopeOutcome[] = [];
      const error = await inOneTransaction(impatient, async () => {
        currentWriteScope()!.onEnd((outcome) => outcomes.push(outcome));
        await inTransaction(impatient, (trx) => sql`insert into slow_commit values (1)`.execute(trx));
      }).then(() => null, (e: Error) => e);
      expect(error).not.toBeNull();
      expect(outcomes).toEqual([{ committed: false, unknown: true, error }]);
      // And it did commit, once the server got there (about 1.5 s after it was asked; looked at until 10 s).
      const count = async () => (await sql<{ n: number }>`select count(*)::int as n from slow_commit`.execute(test.db)).rows[0].n;
      for (const until = Date.now() + 10_000; (await count()) === 0 && Date.now() < until; ) await new Promise((done) => setTimeout(done, 100));
      expect(await count()).toBe(1);
    } finally {
      await impatient.destroy();
    }
  }, 30_000);

  it('outside a scope, each write is its own transaction', async () => {
    expect(currentWriteScope()).toBeUndefined();
    await insert(4);
    await expect(insert(4)).rejects.toThrow(/duplicate key/);
    expect(await stored()).toEqual([1, 2, 4]);
  });
});
