import { Expression, RawBuilder, sql, SqlBool } from 'kysely';
import { Condition, Filter, InvalidQueryError } from '../../tracing/span-query';
import { FieldKind, spanQueryField } from '../../tracing/span-query.parser';
import { traceIdToUuid } from '../../tracing/trace-id';
import { spanIdToBytes } from './span-row.mapper';

/**
 * Compiles a parsed filter (see span-query.parser.ts for the semantics) into
 * a boolean over the `spans` table. Column names are unqualified so the same
 * expression works wherever `spans` is the innermost table (a CTE, an EXISTS
 * subquery). Every value and every JSON path is a bound parameter.
 */
export function spanFilter(filter: Filter): Expression<SqlBool> {
  return compileFilter(filter);
}

type Sql = RawBuilder<unknown>;

function compileFilter(filter: Filter): RawBuilder<SqlBool> {
  const parts = filter.conditions.map((c) => ('conditions' in c ? compileFilter(c) : compileCondition(c)));
  switch (filter.operator) {
    case 'and':
      return parts.length === 0 ? sql<SqlBool>`true` : sql<SqlBool>`(${sql.join(parts, sql` and `)})`;
    case 'or':
      return parts.length === 0 ? sql<SqlBool>`false` : sql<SqlBool>`(${sql.join(parts, sql` or `)})`;
    case 'not':
      return sql<SqlBool>`(not ${compileFilter({ operator: 'and', conditions: filter.conditions })})`;
    default:
      throw new InvalidQueryError('filter.operator', `unknown logical operator "${filter.operator as string}"`);
  }
}

function compileCondition(condition: Condition): RawBuilder<SqlBool> {
  const spec = spanQueryField(condition.field);
  if (!spec) throw new InvalidQueryError('filter', `unknown field "${condition.field}"`);
  const column = sql.ref(condition.field);
  if (spec.kind !== 'json') return columnCondition(column, spec.kind, condition, spec.nullable === true);
  if (condition.key === undefined) return wholeJsonCondition(column, condition);
  return jsonKeyCondition(column, condition.key, condition);
}

/** Conditions are two-valued: a comparison with a missing value is false, not NULL, so `not` is a true complement. */
function known(expression: Sql): RawBuilder<SqlBool> {
  return sql<SqlBool>`coalesce(${expression}, false)`;
}

function negate(expression: RawBuilder<SqlBool>): RawBuilder<SqlBool> {
  return sql<SqlBool>`(not ${expression})`;
}

const COMPARISONS = { eq: '=', neq: '<>', gt: '>', lt: '<', gte: '>=', lte: '<=' } as const;

/** `lhs op rhs`, two-valued by `twoValued` (coalesce to false, unless the caller knows no side can be null). */
function comparison(lhs: Sql, operator: keyof typeof COMPARISONS, rhs: Sql, twoValued = known): RawBuilder<SqlBool> {
  return twoValued(sql`${lhs} ${sql.raw(COMPARISONS[operator])} ${rhs}`);
}

/**
 * A comparison on a NOT NULL column is two-valued as it stands, and left bare:
 * wrapped in coalesce() it is no index condition, so `trace_id in [...]` or
 * `start_time lt ...` read every span of the project instead of the index.
 */
function columnCondition(column: Sql, kind: Exclude<FieldKind, 'json'>, c: Condition, nullable: boolean): RawBuilder<SqlBool> {
  // Text compares bytewise, as ClickHouse does, whatever the database collation.
  const lhs = kind === 'text' || kind === 'enum' ? sql`(${column} collate "C")` : column;
  const one = (v: unknown) => columnValue(kind, v);
  const twoValued = nullable ? known : (expression: Sql) => sql<SqlBool>`(${expression})`;
  switch (c.operator) {
    case 'is':
      return c.value === null ? sql<SqlBool>`(${column} is null)` : twoValued(sql`${lhs} = ${one(c.value)}`);
    case 'is_not':
      return negate(columnCondition(column, kind, { ...c, operator: 'is' }, nullable));
    case 'exists':
      return sql<SqlBool>`(${column} is not null)`;
    case 'not_exists':
      return sql<SqlBool>`(${column} is null)`;
    case 'eq':
    case 'neq':
    case 'gt':
    case 'lt':
    case 'gte':
    case 'lte':
      return comparison(lhs, c.operator, one(c.value), twoValued);
    case 'btwn': {
      const [low, high] = c.value as unknown[];
      return twoValued(sql`${lhs} between ${one(low)} and ${one(high)}`);
    }
    case 'in':
      return twoValued(sql`${lhs} = any(${columnArray(kind, c.value as unknown[])})`);
    case 'not_in':
      return twoValued(sql`${lhs} <> all(${columnArray(kind, c.value as unknown[])})`);
    case 'contains':
    case 'startswith':
    case 'endswith':
    case 'like':
      return twoValued(sql`${lhs} like ${likePattern(c.operator, c.value as string)}`);
    default:
      throw new InvalidQueryError('filter', `operator "${c.operator}" does not apply to ${c.field}`);
  }
}

function columnValue(kind: Exclude<FieldKind, 'json'>, value: unknown): Sql {
  switch (kind) {
    case 'trace_id':
      return sql`${traceIdToUuid(value as string)}::uuid`;
    case 'span_id':
      return sql`${spanIdToBytes(value as string)}::bytea`;
    case 'user_id':
      return sql`${value}::uuid`;
    case 'enum':
    case 'text':
      return sql`${value}::text`;
    case 'time':
      return sql`${value}::timestamptz`;
  }
}

function columnArray(kind: Exclude<FieldKind, 'json'>, values: unknown[]): Sql {
  switch (kind) {
    case 'trace_id':
      return sql`${values.map((v) => traceIdToUuid(v as string))}::uuid[]`;
    case 'span_id':
      return sql`${values.map((v) => spanIdToBytes(v as string))}::bytea[]`;
    case 'user_id':
      return sql`${values}::uuid[]`;
    case 'enum':
    case 'text':
      return sql`${values}::text[]`;
    case 'time':
      return sql`${values}::timestamptz[]`;
  }
}

function jsonb(value: unknown): Sql {
  return sql`${JSON.stringify(value)}::jsonb`;
}

function wholeJsonCondition(column: Sql, c: Condition): RawBuilder<SqlBool> {
  return jsonCondition(column, column, c);
}

function jsonKeyCondition(column: Sql, path: string[], c: Condition): RawBuilder<SqlBool> {
  const node = sql`(${column} #> ${path}::text[])`;
  const text = sql`(${column} #>> ${path}::text[])`;
  return jsonCondition(node, text, c);
}

/** `node` is the jsonb at field/key (NULL when missing); `text` is its text (strings unquoted). */
function jsonCondition(node: Sql, text: Sql, c: Condition): RawBuilder<SqlBool> {
  switch (c.operator) {
    case 'is':
      return known(sql`coalesce(${node}, 'null'::jsonb) = ${jsonb(c.value)}`);
    case 'is_not':
      return negate(jsonCondition(node, text, { ...c, operator: 'is' }));
    case 'exists':
      return sql<SqlBool>`(${node} is not null)`;
    case 'not_exists':
      return sql<SqlBool>`(${node} is null)`;
    case 'has':
      return known(sql`${node} @> ${jsonb(c.value)}`);
    case 'has_not':
      return negate(jsonCondition(node, text, { ...c, operator: 'has' }));
    case 'eq':
    case 'neq':
    case 'gt':
    case 'lt':
    case 'gte':
    case 'lte':
      return comparison(typedJson(node, text, c.value), c.operator, typedValue(c.value));
    case 'btwn': {
      const [low, high] = c.value as unknown[];
      return known(sql`${typedJson(node, text, low)} between ${typedValue(low)} and ${typedValue(high)}`);
    }
    case 'in':
    case 'not_in': {
      const values = c.value as unknown[];
      const test = c.operator === 'in' ? sql`= any` : sql`<> all`;
      return known(sql`${typedJson(node, text, values[0])} ${test}(${typedArray(values)})`);
    }
    case 'contains':
    case 'startswith':
    case 'endswith':
    case 'like':
      return known(sql`${text} like ${likePattern(c.operator, c.value as string)}`);
    default:
      throw new InvalidQueryError('filter', `operator "${c.operator as string}" does not apply to ${c.field}`);
  }
}

/** The JSON at a key as the SQL type of the caller's value; NULL when the JSON is of another type. */
function typedJson(node: Sql, text: Sql, value: unknown): Sql {
  switch (typeof value) {
    case 'number':
      return sql`(case when jsonb_typeof(${node}) = 'number' then (${node})::numeric end)`;
    case 'boolean':
      return sql`(case when jsonb_typeof(${node}) = 'boolean' then (${node})::boolean end)`;
    default:
      return sql`(${text} collate "C")`;
  }
}

function typedValue(value: unknown): Sql {
  switch (typeof value) {
    case 'number':
      return sql`${value}::numeric`;
    case 'boolean':
      return sql`${value}::boolean`;
    default:
      return sql`${value}::text`;
  }
}

function typedArray(values: unknown[]): Sql {
  switch (typeof values[0]) {
    case 'number':
      return sql`${values}::numeric[]`;
    case 'boolean':
      return sql`${values}::boolean[]`;
    default:
      return sql`${values}::text[]`;
  }
}

/** LIKE's own pattern for `like`; the others match their value literally (\, % and _ escaped). */
function likePattern(operator: 'contains' | 'startswith' | 'endswith' | 'like', value: string): Sql {
  if (operator === 'like') return sql`${value}::text`;
  const literal = value.replace(/[\\%_]/g, (ch) => `\\${ch}`);
  const pattern = operator === 'contains' ? `%${literal}%` : operator === 'startswith' ? `${literal}%` : `%${literal}`;
  return sql`${pattern}::text`;
}
