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
  beforeEach(() => (inserted.length = 0));

  it('inserts once the schema is applied', async () => {
    await afterSchema(sink, { ensure: async () => true, failure: null }, 1000).insert('spans', body, 'token');
    expect(inserted).toEqual(['spans']);
  });

  it("fails with the DDL's own error while it fails, so /health's lastError and a gap's reason say why", async () => {
    const schema = { ensure: async () => false, failure: 'connect ECONNREFUSED 10.0.0.9:8123' };
    await expect(afterSchema(sink, schema, 1000).insert('spans', body, 'token')).rejects.toThrow(
      'ClickHouse schema is not applied yet (connect ECONNREFUSED 10.0.0.9:8123); will retry',
    );
    expect(inserted).toEqual([]);
  });

  it('waits no longer than its timeout for a DDL still running', async () => {
    const schema = { ensure: () => new Promise<boolean>(() => undefined), failure: null };
    await expect(afterSchema(sink, schema, 20).insert('spans', body, 'token')).rejects.toThrow(
      'ClickHouse schema is not applied yet (its DDL is still running); will retry',
    );
    expect(inserted).toEqual([]);
  });
});
