import { cut, quoted } from '../echo';
import { SPAN_KINDS, SPAN_TYPES, STATUS_CODES, TRACE_TYPES } from './span';
import {
  AnalyticsQuery, CONDITION_OPERATORS, Condition, ConditionOperator, Filter, FOCUSES, Focus,
  InvalidQueryError, LOGICAL_OPERATORS, LogicalOperator, SpanQuery, Windowing,
} from './span-query';
import { MAX_YEAR, MIN_YEAR, microsToIso, parseTimestampMicros } from './timestamp';

/**
 * Strict parsing of untrusted query bodies into SpanQuery / AnalyticsQuery.
 * Anything unknown or ill-typed is an InvalidQueryError naming the field path,
 * so storage adapters only ever see well-formed values.
 *
 * Operator semantics (every condition is true or false, never SQL NULL, so
 * `not` is an exact complement):
 * - is / is_not: equality including null (null matches a missing value; on a
 *   JSON key, a missing key or JSON null). is_not is the complement of is.
 * - eq / neq / gt / lt / gte / lte: comparison; a missing value never matches
 *   (not even neq). On JSON keys the value's type picks the comparison:
 *   number -> numeric (JSON numbers only), string -> the key's text,
 *   boolean -> JSON booleans only (eq/neq). Text compares bytewise.
 * - btwn [a, b]: inclusive on both ends. Times or numbers with b before a
 *   are refused: they would match nothing.
 * - in / not_in: equal to one of / none of the values (same typing as eq);
 *   a missing value never matches either.
 * - contains / startswith / endswith: case-sensitive substring tests.
 * - like: SQL LIKE with the caller's pattern (% and _, backslash escapes).
 * - exists / not_exists: the JSON key is present (even as JSON null), or the
 *   field is not null; not_exists is the complement.
 * - has / has_not: JSON containment (jsonb @>) of the value in the JSON at
 *   field/key; has_not is the complement (a missing key does not "have").
 * Logical: and / or over the conditions (and [] is true, or [] is false);
 * not negates the and of its conditions.
 */

export type FieldKind = 'trace_id' | 'span_id' | 'user_id' | 'enum' | 'text' | 'time' | 'json';

export interface FieldSpec {
  kind: FieldKind;
  /** The allowed values of an enum field. */
  values?: readonly string[];
  /** The column may be null (the others are NOT NULL in the schema). */
  nullable?: true;
}

const FIELDS: Record<string, FieldSpec> = {
  trace_id: { kind: 'trace_id' },
  span_id: { kind: 'span_id' },
  parent_id: { kind: 'span_id', nullable: true },
  trace_type: { kind: 'enum', values: TRACE_TYPES },
  span_type: { kind: 'enum', values: SPAN_TYPES },
  span_kind: { kind: 'enum', values: SPAN_KINDS },
  span_name: { kind: 'text' },
  start_time: { kind: 'time' },
  end_time: { kind: 'time' },
  status_code: { kind: 'enum', values: STATUS_CODES },
  status_message: { kind: 'text', nullable: true },
  attributes: { kind: 'json' },
  references: { kind: 'json' },
  links: { kind: 'json' },
  hashes: { kind: 'json' },
  events: { kind: 'json' },
  exception: { kind: 'json' },
  created_at: { kind: 'time' },
  updated_at: { kind: 'time' },
  created_by_id: { kind: 'user_id', nullable: true },
  updated_by_id: { kind: 'user_id', nullable: true },
};

export const QUERYABLE_FIELDS = Object.keys(FIELDS);
const JSON_FIELDS = QUERYABLE_FIELDS.filter((f) => FIELDS[f].kind === 'json');

/** The spec of a queryable field; undefined for anything else (including "constructor"). */
export function spanQueryField(name: string): FieldSpec | undefined {
  return Object.hasOwn(FIELDS, name) ? FIELDS[name] : undefined;
}

export const MAX_LIMIT = 1000;
export const MAX_IN_VALUES = 1000;
export const MAX_FILTER_DEPTH = 10;
export const MAX_CONDITIONS = 100;
export const MAX_STRING_LENGTH = 10_000;
export const MAX_KEY_SEGMENTS = 20;
const MAX_KEY_LENGTH = 1000;
export const MAX_INTERVAL_MINUTES = 10_080;
export const DEFAULT_INTERVAL_MINUTES = 60;
export const MAX_BUCKETS = 10_000;
export const MAX_CURSOR_LENGTH = 2048;
const MAX_JSON_DEPTH = 10;
const MAX_JSON_NODES = 10_000;

const EQUALITY: readonly ConditionOperator[] = ['is', 'is_not', 'eq', 'neq', 'in', 'not_in', 'exists', 'not_exists'];
const ORDERED: readonly ConditionOperator[] = [...EQUALITY, 'gt', 'lt', 'gte', 'lte', 'btwn'];
const TEXTUAL: readonly ConditionOperator[] = [...ORDERED, 'contains', 'startswith', 'endswith', 'like'];
const WHOLE_JSON: readonly ConditionOperator[] = ['is', 'is_not', 'exists', 'not_exists', 'has', 'has_not'];

function operatorsFor(kind: FieldKind, hasKey: boolean): readonly ConditionOperator[] {
  switch (kind) {
    case 'trace_id':
    case 'span_id':
    case 'user_id':
    case 'enum':
      return EQUALITY;
    case 'time':
      return ORDERED;
    case 'text':
      return TEXTUAL;
    case 'json':
      return hasKey ? CONDITION_OPERATORS : WHOLE_JSON;
  }
}

export function parseSpanQuery(body: unknown): SpanQuery {
  const fields = objectAt(body, 'body', ['focus', 'filter', 'windowing'], '');
  const query: SpanQuery = { focus: parseFocus(fields.focus) };
  if (present(fields.filter)) query.filter = parseFilter(fields.filter, 'filter', 1, { conditions: 0 });
  if (present(fields.windowing)) query.windowing = parseWindowing(fields.windowing);
  return query;
}

export function parseAnalyticsQuery(body: unknown): AnalyticsQuery {
  const fields = objectAt(body, 'body', ['focus', 'filter', 'windowing'], '');
  const focus = parseFocus(fields.focus);
  if (!present(fields.windowing)) throw new InvalidQueryError('windowing', 'required: { oldest, newest, interval? }');
  const windowing = parseAnalyticsWindowing(fields.windowing);
  const query: AnalyticsQuery = { focus, windowing };
  if (present(fields.filter)) query.filter = parseFilter(fields.filter, 'filter', 1, { conditions: 0 });
  return query;
}

function parseFocus(value: unknown): Focus {
  if (!present(value)) return 'span';
  return oneOf(value, FOCUSES, 'focus', 'focus');
}

function parseWindowing(value: unknown): Windowing {
  const fields = objectAt(value, 'windowing', ['oldest', 'newest', 'limit', 'order', 'next'], 'windowing.');
  const windowing: Windowing = {};
  const oldest = present(fields.oldest) ? timeAt(fields.oldest, 'windowing.oldest') : undefined;
  const newest = present(fields.newest) ? timeAt(fields.newest, 'windowing.newest') : undefined;
  if (oldest && newest && newest.micros <= oldest.micros) {
    throw new InvalidQueryError('windowing.newest', 'must be later than windowing.oldest');
  }
  if (oldest) windowing.oldest = oldest.iso;
  if (newest) windowing.newest = newest.iso;
  if (present(fields.limit)) windowing.limit = integerAt(fields.limit, 'windowing.limit', 1, MAX_LIMIT);
  if (present(fields.order)) windowing.order = oneOf(fields.order, ['ascending', 'descending'] as const, 'windowing.order', 'order');
  if (present(fields.next)) {
    const next = fields.next;
    if (typeof next !== 'string' || next.length === 0 || next.length > MAX_CURSOR_LENGTH || !/^[A-Za-z0-9_-]+$/.test(next)) {
      throw new InvalidQueryError('windowing.next', 'expected a cursor returned as "next" by a previous page');
    }
    windowing.next = next;
  }
  return windowing;
}

function parseAnalyticsWindowing(value: unknown): AnalyticsQuery['windowing'] {
  const fields = objectAt(value, 'windowing', ['oldest', 'newest', 'interval'], 'windowing.');
  if (!present(fields.oldest)) throw new InvalidQueryError('windowing.oldest', 'required');
  if (!present(fields.newest)) throw new InvalidQueryError('windowing.newest', 'required');
  const oldest = timeAt(fields.oldest, 'windowing.oldest');
  const newest = timeAt(fields.newest, 'windowing.newest');
  if (newest.micros <= oldest.micros) throw new InvalidQueryError('windowing.newest', 'must be later than windowing.oldest');
  const interval = present(fields.interval)
    ? integerAt(fields.interval, 'windowing.interval', 1, MAX_INTERVAL_MINUTES)
    : DEFAULT_INTERVAL_MINUTES;
  const width = BigInt(interval) * 60_000_000n;
  const buckets = (newest.micros - oldest.micros + width - 1n) / width;
  if (buckets > BigInt(MAX_BUCKETS)) {
    throw new InvalidQueryError('windowing.interval', `${buckets} buckets of ${interval} minutes between oldest and newest; at most ${MAX_BUCKETS}`);
  }
  return { oldest: oldest.iso, newest: newest.iso, interval };
}

function parseFilter(value: unknown, path: string, depth: number, budget: { conditions: number }): Filter {
  const fields = objectAt(value, path, ['operator', 'conditions'], `${path}.`);
  const operator: LogicalOperator = present(fields.operator)
    ? oneOf(fields.operator, LOGICAL_OPERATORS, `${path}.operator`, 'logical operator')
    : 'and';
  if (!Array.isArray(fields.conditions)) {
    throw new InvalidQueryError(`${path}.conditions`, 'expected an array of conditions and filters');
  }
  const conditions = fields.conditions.map((item: unknown, i): Condition | Filter => {
    const itemPath = `${path}.conditions[${i}]`;
    // Nested filters count too: each is a term of the SQL, even an empty one.
    budget.conditions += 1;
    if (budget.conditions > MAX_CONDITIONS) throw new InvalidQueryError(itemPath, `more than ${MAX_CONDITIONS} conditions and filters in the filter`);
    if (isObject(item) && Object.hasOwn(item, 'conditions')) {
      if (depth + 1 > MAX_FILTER_DEPTH) throw new InvalidQueryError(itemPath, `filters nest deeper than ${MAX_FILTER_DEPTH} levels`);
      return parseFilter(item, itemPath, depth + 1, budget);
    }
    return parseCondition(item, itemPath);
  });
  return { operator, conditions };
}

function parseCondition(value: unknown, path: string): Condition {
  const fields = objectAt(value, path, ['field', 'key', 'operator', 'value'], `${path}.`);
  if (typeof fields.field !== 'string') throw new InvalidQueryError(`${path}.field`, 'required: the name of a span field');
  const field = fields.field;
  const spec = spanQueryField(field);
  if (!spec) throw new InvalidQueryError(`${path}.field`, `unknown field ${quoted(field)}; expected one of ${QUERYABLE_FIELDS.join(', ')}`);

  let key: string[] | undefined;
  if (present(fields.key)) {
    if (spec.kind !== 'json') {
      throw new InvalidQueryError(`${path}.key`, `a key applies only to JSON fields (${JSON_FIELDS.join(', ')})`);
    }
    key = keyAt(fields.key, `${path}.key`);
  }

  const operator: ConditionOperator = present(fields.operator)
    ? oneOf(fields.operator, CONDITION_OPERATORS, `${path}.operator`, 'operator')
    : 'is';
  const allowed = operatorsFor(spec.kind, key !== undefined);
  if (!allowed.includes(operator)) {
    const hint = spec.kind === 'json' ? ' without a key' : '';
    throw new InvalidQueryError(`${path}.operator`, `operator "${operator}" does not apply to ${field}${hint}; expected one of ${allowed.join(', ')}`);
  }

  const parsed = parseValue(spec, key !== undefined, operator, fields.value, `${path}.value`);
  const condition: Condition = { field, operator };
  if (key !== undefined) condition.key = key;
  if (parsed !== undefined) condition.value = parsed;
  return condition;
}

/** Checks the value against the operator and the field, and returns it normalized. */
function parseValue(spec: FieldSpec, hasKey: boolean, operator: ConditionOperator, value: unknown, path: string): unknown {
  if (operator === 'exists' || operator === 'not_exists') {
    if (present(value)) throw new InvalidQueryError(path, `"${operator}" takes no value`);
    return undefined;
  }
  if (value === undefined) throw new InvalidQueryError(path, `required for operator "${operator}"`);
  if (value === null && operator !== 'is' && operator !== 'is_not') {
    throw new InvalidQueryError(path, `"${operator}" does not take null; use is, is_not, exists or not_exists`);
  }
  const json = spec.kind === 'json';
  switch (operator) {
    case 'is':
    case 'is_not':
      if (value === null) return null;
      return json ? jsonValueAt(value, path) : scalarAt(spec, value, path);
    case 'eq':
    case 'neq':
      return json ? jsonScalarAt(value, path, ['number', 'string', 'boolean']) : scalarAt(spec, value, path);
    case 'gt':
    case 'lt':
    case 'gte':
    case 'lte':
      return json ? jsonScalarAt(value, path, ['number', 'string']) : scalarAt(spec, value, path);
    case 'btwn': {
      if (!Array.isArray(value) || value.length !== 2) throw new InvalidQueryError(path, 'expected [low, high]');
      // Reversed bounds match nothing: a mistake to name, as windowing's are. Only where the order is the same here
      // as in Postgres (times, numbers): text compares bytewise there, JavaScript by UTF-16 units.
      if (!json) {
        const [low, high] = value.map((v, i) => scalarAt(spec, v, `${path}[${i}]`));
        if (spec.kind === 'time' && high < low) throw new InvalidQueryError(`${path}[1]`, `must not be before ${path}[0] (${low})`);
        return [low, high];
      }
      const low = jsonScalarAt(value[0], `${path}[0]`, ['number', 'string']);
      const high = jsonScalarAt(value[1], `${path}[1]`, [typeof low as 'number' | 'string']);
      if (typeof low === 'number' && (high as number) < low) throw new InvalidQueryError(`${path}[1]`, `must not be less than ${path}[0] (${low})`);
      return [low, high];
    }
    case 'in':
    case 'not_in': {
      if (!Array.isArray(value) || value.length === 0 || value.length > MAX_IN_VALUES) {
        throw new InvalidQueryError(path, `expected a non-empty array of at most ${MAX_IN_VALUES} values`);
      }
      if (!json) return value.map((v, i) => scalarAt(spec, v, `${path}[${i}]`));
      const first = jsonScalarAt(value[0], `${path}[0]`, ['number', 'string', 'boolean']);
      const type = typeof first as 'number' | 'string' | 'boolean';
      return value.map((v, i) => (i === 0 ? first : jsonScalarAt(v, `${path}[${i}]`, [type])));
    }
    case 'contains':
    case 'startswith':
    case 'endswith':
      return textAt(value, path);
    case 'like': {
      const pattern = textAt(value, path);
      if (/(^|[^\\])(\\\\)*\\$/.test(pattern)) throw new InvalidQueryError(path, 'a LIKE pattern cannot end with an escape character');
      return pattern;
    }
    case 'has':
    case 'has_not':
      return jsonValueAt(value, path);
    default:
      throw new InvalidQueryError(path, `unexpected operator "${operator as string}"`);
  }
}

function scalarAt(spec: FieldSpec, value: unknown, path: string): string {
  switch (spec.kind) {
    case 'trace_id':
      if (typeof value !== 'string' || !/^[0-9a-fA-F]{32}$/.test(value)) throw new InvalidQueryError(path, 'expected a trace id (32 hex characters)');
      return value.toLowerCase();
    case 'span_id':
      if (typeof value !== 'string' || !/^[0-9a-fA-F]{16}$/.test(value)) throw new InvalidQueryError(path, 'expected a span id (16 hex characters)');
      return value.toLowerCase();
    case 'user_id':
      if (typeof value !== 'string' || !/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(value)) {
        throw new InvalidQueryError(path, 'expected a UUID');
      }
      return value.toLowerCase();
    case 'enum':
      return oneOf(value, spec.values ?? [], path, 'value');
    case 'text':
      return textAt(value, path);
    case 'time':
      return timeAt(value, path).iso;
    case 'json':
      throw new InvalidQueryError(path, 'a JSON field takes JSON values');
  }
}

function jsonScalarAt(value: unknown, path: string, types: ReadonlyArray<'number' | 'string' | 'boolean'>): number | string | boolean {
  const expected = `expected ${types.length === 1 ? `a ${types[0]}` : `a ${types.slice(0, -1).join(', ')} or ${types[types.length - 1]}`}`;
  if (typeof value === 'number') {
    if (!types.includes('number')) throw new InvalidQueryError(path, expected);
    if (!Number.isFinite(value)) throw new InvalidQueryError(path, 'expected a finite number');
    return value;
  }
  if (typeof value === 'string' && types.includes('string')) return textAt(value, path);
  if (typeof value === 'boolean' && types.includes('boolean')) return value;
  throw new InvalidQueryError(path, expected);
}

/** Any JSON value, bounded in size so it binds as one modest jsonb parameter. */
function jsonValueAt(value: unknown, path: string): unknown {
  let nodes = 0;
  const visit = (v: unknown, at: string, depth: number): void => {
    nodes += 1;
    if (nodes > MAX_JSON_NODES) throw new InvalidQueryError(path, `a JSON value of more than ${MAX_JSON_NODES} elements`);
    if (depth > MAX_JSON_DEPTH) throw new InvalidQueryError(at, `JSON nests deeper than ${MAX_JSON_DEPTH} levels`);
    if (v === null || typeof v === 'boolean') return;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw new InvalidQueryError(at, 'expected a finite number');
      return;
    }
    if (typeof v === 'string') {
      textAt(v, at);
      return;
    }
    if (Array.isArray(v)) {
      v.forEach((item, i) => visit(item, `${at}[${i}]`, depth + 1));
      return;
    }
    if (isObject(v)) {
      for (const [k, item] of Object.entries(v)) {
        textAt(k, at);
        visit(item, `${at}.${k}`, depth + 1);
      }
      return;
    }
    throw new InvalidQueryError(at, 'expected a JSON value');
  };
  visit(value, path, 1);
  return value;
}

/** A dotted path ("ag.metrics.costs"), or an array of keys any of which may hold dots (["gen_ai.request.model"]). */
function keyAt(value: unknown, path: string): string[] {
  if (Array.isArray(value)) {
    if (value.length === 0) throw new InvalidQueryError(path, 'expected at least one key');
    if (value.length > MAX_KEY_SEGMENTS) throw new InvalidQueryError(path, `more than ${MAX_KEY_SEGMENTS} segments`);
    return value.map((segment, i) => {
      const text = textAt(segment, `${path}[${i}]`);
      if (text.length === 0 || text.length > MAX_KEY_LENGTH) throw new InvalidQueryError(`${path}[${i}]`, `expected a key of 1 to ${MAX_KEY_LENGTH} characters`);
      return text;
    });
  }
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_KEY_LENGTH) {
    throw new InvalidQueryError(path, 'expected a dotted path such as "ag.metrics.costs", or an array of keys such as ["gen_ai.request.model"]');
  }
  const segments = value.split('.');
  if (segments.some((s) => !/^[A-Za-z0-9_-]+$/.test(s))) {
    throw new InvalidQueryError(path, 'expected a dotted path of non-empty segments of letters, digits, "_" and "-" (an array of keys takes any)');
  }
  if (segments.length > MAX_KEY_SEGMENTS) throw new InvalidQueryError(path, `more than ${MAX_KEY_SEGMENTS} segments`);
  return segments;
}

function textAt(value: unknown, path: string): string {
  if (typeof value !== 'string') throw new InvalidQueryError(path, 'expected a string');
  if (value.length > MAX_STRING_LENGTH) throw new InvalidQueryError(path, `longer than ${MAX_STRING_LENGTH} characters`);
  // Postgres text cannot hold NUL, and a lone surrogate is not valid UTF-8: both would fail inside the database.
  if (value.includes('\u0000')) throw new InvalidQueryError(path, 'contains a NUL character');
  if (/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(value)) {
    throw new InvalidQueryError(path, 'contains an unpaired UTF-16 surrogate');
  }
  return value;
}

function timeAt(value: unknown, path: string): { iso: string; micros: bigint } {
  const micros = typeof value === 'string' ? parseTimestampMicros(value) : null;
  if (micros === null) {
    throw new InvalidQueryError(path, `expected an ISO-8601 time with a time zone between years ${MIN_YEAR} and ${MAX_YEAR}, e.g. "2026-11-22T10:00:00.000000Z"`);
  }
  return { iso: microsToIso(micros), micros };
}

/** How a bounded integer (a limit, an interval) is refused, here and in node queries (node.schema.ts). */
export function integerRangeMessage(min: number, max: number): string {
  return `expected an integer from ${min} to ${max}`;
}

function integerAt(value: unknown, path: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidQueryError(path, integerRangeMessage(min, max));
  }
  return value;
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], path: string, what: string): T {
  if (typeof value !== 'string') throw new InvalidQueryError(path, `expected a string, one of ${allowed.join(', ')}`);
  if (!(allowed as readonly string[]).includes(value)) {
    throw new InvalidQueryError(path, `unknown ${what} ${quoted(value)}; expected one of ${allowed.join(', ')}`);
  }
  return value as T;
}

function objectAt(value: unknown, path: string, allowed: readonly string[], prefix: string): Record<string, unknown> {
  if (!isObject(value)) throw new InvalidQueryError(path, `expected an object with ${allowed.join(', ')}`);
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw new InvalidQueryError(`${prefix}${cut(key)}`, `unknown field; expected one of ${allowed.join(', ')}`);
    }
  }
  return value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** null counts as absent: clients often send explicit nulls for optional parts. */
function present(value: unknown): boolean {
  return value !== undefined && value !== null;
}

