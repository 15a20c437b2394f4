import { ClickHouseError } from '@clickhouse/client';
import { MirrorSink } from './batch-writer';
import { publicSendError } from './retry-policy';
import { afterSchema } from './after-schema';

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
  const applied = (overrides: Partial<{ ensure: () => Promise<boolean>; failure: string | null; publicFailure: string | null }> = {}) => ({
    ensure: async () => true,
    failure: null,
    publicFailure: null,
    reapply: async (): Promise<boolean | null> => {
      throw new Error('not expected to run the DDL again');
    },
    ...overrides,
  });
  beforeEach(() => (inserted.length = 0));

  it('inserts once the schema is applied', async () => {
    await afterSchema(sink, applied(), 1000).insert('spans', body, 'token');
    expect(inserted).toEqual(['spans']);
  });

  it("fails with the DDL's own error while it fails: whole in a gap's reason, its kind and code in /health's lastError", async () => {
    const schema = applied({ ensure: async () => false, failure: 'connect ECONNREFUSED 10.0.0.9:8123', publicFailure: 'no answer (ECONNREFUSED)' });
    const failed = afterSchema(sink, schema, 1000).insert('spans', body, 'token');
    await expect(failed).rejects.toThrow(/^ClickHouse schema is not applied yet \(connect ECONNREFUSED 10\.0\.0\.9:8123\)$/);
    expect(publicSendError(await failed.catch((error: unknown) => error))).toBe('ClickHouse schema is not applied yet (no answer (ECONNREFUSED))');
    expect(inserted).toEqual([]);
  });

  it('waits no longer than its timeout for a DDL still running', async () => {
    const schema = applied({ ensure: () => new Promise<boolean>(() => undefined) });
    await expect(afterSchema(sink, schema, 20).insert('spans', body, 'token')).rejects.toThrow(
      /^ClickHouse schema is not applied yet \(its DDL is still running\)$/,
    );
    expect(inserted).toEqual([]);
  });

  describe('an insert that finds its table gone (ClickHouse lost its data)', () => {
    const missing = (code: string, type: string) => new ClickHouseError({ message: `Database mirror does not exist. (${type})`, code, type });
    const rejecting = (error: Error): MirrorSink => ({ insert: async () => Promise.reject(error), ping: async () => true });

    it.each([
      ['60', 'UNKNOWN_TABLE'],
      ['81', 'UNKNOWN_DATABASE'],
    ])('runs the DDL again and, once the table is there, fails transiently for the writer to send it again (%s %s)', async (code, type) => {
      const schema = { ...applied(), reapply: jest.fn(async () => true) };
      await expect(afterSchema(rejecting(missing(code, type)), schema, 1000).insert('spans', body, 'token')).rejects.toThrow(
        new RegExp(`^ClickHouse had lost the mirror's table spans \\(ClickHouse code ${code} ${type}: .*\\); it is there again$`),
      );
      expect(schema.reapply.mock.calls).toEqual([['spans']]);
    });

    it("fails with the insert's own error when the table is still missing (dropped by hand, or the DDL failed)", async () => {
      const error = missing('60', 'UNKNOWN_TABLE');
      const schema = { ...applied(), reapply: jest.fn(async () => false) };
      await expect(afterSchema(rejecting(error), schema, 1000).insert('spans', body, 'token')).rejects.toBe(error);
      expect(schema.reapply).toHaveBeenCalledTimes(1);
    });

    it.each([
      ['the check of system.tables failed', () => Promise.resolve(null)],
      ['the DDL and check ran past the timeout', () => new Promise<boolean | null>(() => undefined)],
    ])('fails transiently when it cannot tell whether the table is back (%s): the batch is sent again, within its attempts', async (_, reapply) => {
      const schema = { ...applied(), reapply };
      await expect(afterSchema(rejecting(missing('81', 'UNKNOWN_DATABASE')), schema, 20).insert('spans', body, 'token')).rejects.toThrow(
        /^ClickHouse had lost the mirror's table spans \(.*\); whether it is back could not be read$/,
      );
    });

    it('leaves any other rejection to the batch writer, without running the DDL', async () => {
      const error = new ClickHouseError({ message: 'Cannot parse input', code: '27', type: 'CANNOT_PARSE_INPUT_ASSERTION_FAILED' });
      await expect(afterSchema(rejecting(error), applied(), 1000).insert('spans', body, 'token')).rejects.toBe(error);
    });
  });
});
