import { ClickHouseError } from '@clickhouse/client';
import { MirrorSink } from '../clickhouse/batch-writer';
import { afterSchema } from './mirror.module';

describe('afterSchema: inserts wait for the ClickHouse schema', () => {
  const inserted: string[] = [];
  const sink: MirrorSink = {
    insert: async (table) => {
      inserted.push(table);
    },
    ping: async () => true,
  };
  const body = [Buffer.from('{}\n')];
  /** A schema applied at start, whose reapply() is not expected. */
  const applied = (overrides: Partial<{ ensure: () => Promise<boolean>; failure: string | null }> = {}) => ({
    ensure: async () => true,
    failure: null,
    recreated: 0,
    reapply: async () => {
      throw new Error('not expected to run the DDL again');
    },
    ...overrides,
  });
  beforeEach(() => (inserted.length = 0));

  it('inserts once the schema is applied', async () => {
    await afterSchema(sink, applied(), 1000).insert('spans', body, 'token');
    expect(inserted).toEqual(['spans']);
  });

  it("fails with the DDL's own error while it fails, so /health's lastError and a gap's reason say why", async () => {
    const schema = applied({ ensure: async () => false, failure: 'connect ECONNREFUSED 10.0.0.9:8123' });
    await expect(afterSchema(sink, schema, 1000).insert('spans', body, 'token')).rejects.toThrow(
      'ClickHouse schema is not applied yet (connect ECONNREFUSED 10.0.0.9:8123); will retry',
    );
    expect(inserted).toEqual([]);
  });

  it('waits no longer than its timeout for a DDL still running', async () => {
    const schema = applied({ ensure: () => new Promise<boolean>(() => undefined) });
    await expect(afterSchema(sink, schema, 20).insert('spans', body, 'token')).rejects.toThrow(
      'ClickHouse schema is not applied yet (its DDL is still running); will retry',
    );
    expect(inserted).toEqual([]);
  });

  describe('an insert that finds the tables gone (ClickHouse lost its data)', () => {
    const missing = (code: string, type: string) => new ClickHouseError({ message: `Database mirror does not exist. (${type})`, code, type });
    const rejecting = (error: Error): MirrorSink => ({ insert: async () => Promise.reject(error), ping: async () => true });

    it.each([
      ['60', 'UNKNOWN_TABLE'],
      ['81', 'UNKNOWN_DATABASE'],
    ])('runs the DDL again and, once that created the tables, fails transiently for the writer to send it again (%s %s)', async (code, type) => {
      const schema = { ...applied(), reapply: jest.fn(async () => void (schema.recreated += 1)) };
      await expect(afterSchema(rejecting(missing(code, type)), schema, 1000).insert('spans', body, 'token')).rejects.toThrow(
        new RegExp(`^ClickHouse had lost the mirror's tables \\(ClickHouse code ${code} ${type}: .*\\); they were created again; will retry$`),
      );
      expect(schema.reapply).toHaveBeenCalledTimes(1);
    });

    it('counts the tables as back when another insert had them created while this one was on its way', async () => {
      const schema = { ...applied(), reapply: jest.fn(async () => undefined) };
      const racing: MirrorSink = {
        insert: async () => {
          schema.recreated += 1;
          throw missing('81', 'UNKNOWN_DATABASE');
        },
        ping: async () => true,
      };
      await expect(afterSchema(racing, schema, 1000).insert('spans', body, 'token')).rejects.toThrow(/they were created again; will retry$/);
    });

    it("fails with the insert's own error when the DDL created nothing (a table dropped by hand, or the DDL failed)", async () => {
      const error = missing('60', 'UNKNOWN_TABLE');
      const schema = { ...applied(), reapply: jest.fn(async () => undefined) };
      await expect(afterSchema(rejecting(error), schema, 1000).insert('spans', body, 'token')).rejects.toBe(error);
      expect(schema.reapply).toHaveBeenCalledTimes(1);
    });

    it('leaves any other rejection to the batch writer, without running the DDL', async () => {
      const error = new ClickHouseError({ message: 'Cannot parse input', code: '27', type: 'CANNOT_PARSE_INPUT_ASSERTION_FAILED' });
      await expect(afterSchema(rejecting(error), applied(), 1000).insert('spans', body, 'token')).rejects.toBe(error);
    });
  });
});
