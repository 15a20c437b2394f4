import { sql } from 'kysely';
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

  it('outside a scope, each write is its own transaction', async () => {
    expect(currentWriteScope()).toBeUndefined();
    await insert(4);
    await expect(insert(4)).rejects.toThrow(/duplicate key/);
    expect(await stored()).toEqual([1, 2, 4]);
  });
});
