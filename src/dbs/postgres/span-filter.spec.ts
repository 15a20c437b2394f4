import { DummyDriver, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler, sql } from 'kysely';
import { Condition } from '../../tracing/span-query';
import { spanFilter } from './span-filter';

/** Compiles without a server: the SQL a filter becomes. */
const db = new Kysely<Record<string, never>>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (k) => new PostgresIntrospector(k),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

const compiled = (condition: Condition) => sql`select 1 where ${spanFilter({ operator: 'and', conditions: [condition] })}`.compile(db).sql;

describe('spanFilter', () => {
  it('leaves a comparison on a NOT NULL column bare, so Postgres can use it as an index condition', () => {
    expect(compiled({ field: 'trace_id', operator: 'in', value: ['4bf92f3577b34da6a3ce929d0e0e4736'] })).toBe('select 1 where (("trace_id" = any($1::uuid[])))');
    expect(compiled({ field: 'start_time', operator: 'lt', value: '2026-12-07T00:00:00Z' })).toBe('select 1 where (("start_time" < $1::timestamptz))');
    expect(compiled({ field: 'span_id', operator: 'eq', value: '00f067aa0ba902b7' })).toBe('select 1 where (("span_id" = $1::bytea))');
  });

  it('keeps a comparison on a nullable column two-valued, so `not` is its complement', () => {
    expect(compiled({ field: 'parent_id', operator: 'eq', value: '00f067aa0ba902b7' })).toBe('select 1 where (coalesce("parent_id" = $1::bytea, false))');
    expect(compiled({ field: 'status_message', operator: 'contains', value: 'x' })).toMatch(/^select 1 where \(coalesce\(\("status_message" collate "C"\) like /);
    expect(compiled({ field: 'created_by_id', operator: 'in', value: ['5b0c2f8e-0000-4000-8000-000000000001'] })).toMatch(/^select 1 where \(coalesce\(/);
  });
});
