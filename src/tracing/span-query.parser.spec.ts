import { InvalidQueryError } from './span-query';
import { parseAnalyticsQuery, parseSpanQuery } from './span-query.parser';

const TRACE = '0123456789abcdef0123456789abcdef';
const SPAN = '0123456789abcdef';
const USER = '6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b';
const T1 = '2026-11-22T10:00:00.000001Z';
const T2 = '2026-11-22T11:00:00Z';

const withCondition = (condition: Record<string, unknown>) => ({ filter: { conditions: [condition] } });

/** The InvalidQueryError `run` throws, as [field, reason]. */
function rejection(run: () => unknown): [string, string] {
  try {
    run();
  } catch (error) {
    if (error instanceof InvalidQueryError) return [error.field, error.reason];
    throw error;
  }
  throw new Error('expected an InvalidQueryError');
}

describe('parseSpanQuery', () => {
  it('defaults focus to span and passes an empty body', () => {
    expect(parseSpanQuery({})).toEqual({ focus: 'span' });
    expect(parseSpanQuery({ focus: null, filter: null, windowing: null })).toEqual({ focus: 'span' });
    expect(parseSpanQuery({ focus: 'trace' })).toEqual({ focus: 'trace' });
  });

  it('parses windowing and normalizes times to UTC microseconds', () => {
    expect(
      parseSpanQuery({ windowing: { oldest: '2026-11-22T12:30:00.5+02:30', newest: T2, limit: 1000, order: 'ascending', next: 'abc_-9' } }),
    ).toEqual({
      focus: 'span',
      windowing: { oldest: '2026-11-22T10:00:00.500000Z', newest: '2026-11-22T11:00:00.000000Z', limit: 1000, order: 'ascending', next: 'abc_-9' },
    });
  });

  it.each([
    ['a non-object body', [], 'body', 'expected an object with focus, filter, windowing'],
    ['an unknown top-level key', { focus: 'span', sort: 'x' }, 'sort', 'unknown field; expected one of focus, filter, windowing'],
    ['an unknown focus', { focus: 'node' }, 'focus', 'unknown focus "node"; expected one of trace, span'],
    ['an unknown windowing key', { windowing: { limit: 5, offset: 10 } }, 'windowing.offset', 'unknown field; expected one of oldest, newest, limit, order, next'],
    ['limit 0', { windowing: { limit: 0 } }, 'windowing.limit', 'expected an integer from 1 to 1000'],
    ['limit 1001', { windowing: { limit: 1001 } }, 'windowing.limit', 'expected an integer from 1 to 1000'],
    ['a fractional limit', { windowing: { limit: 1.5 } }, 'windowing.limit', 'expected an integer from 1 to 1000'],
    ['a string limit', { windowing: { limit: '10' } }, 'windowing.limit', 'expected an integer from 1 to 1000'],
    ['an unknown order', { windowing: { order: 'asc' } }, 'windowing.order', 'unknown order "asc"; expected one of ascending, descending'],
    ['a time without zone', { windowing: { oldest: '2026-11-22T10:00:00' } }, 'windowing.oldest', 'expected an ISO-8601 time with a time zone between years 1900 and 2299, e.g. "2026-11-22T10:00:00.000000Z"'],
    ['a time outside the years both stores hold', { windowing: { oldest: '1850-01-01T00:00:00Z' } }, 'windowing.oldest', 'expected an ISO-8601 time with a time zone between years 1900 and 2299, e.g. "2026-11-22T10:00:00.000000Z"'],
    ['an impossible date', { windowing: { newest: '2026-02-30T00:00:00Z' } }, 'windowing.newest', 'expected an ISO-8601 time with a time zone between years 1900 and 2299, e.g. "2026-11-22T10:00:00.000000Z"'],
    ['newest before oldest', { windowing: { oldest: T2, newest: T1 } }, 'windowing.newest', 'must be later than windowing.oldest'],
    ['a cursor with odd characters', { windowing: { next: "x' or 1=1" } }, 'windowing.next', 'expected a cursor returned as "next" by a previous page'],
  ])('rejects %s', (_name, body, field, reason) => {
    expect(rejection(() => parseSpanQuery(body))).toEqual([field, reason]);
  });
});

describe('conditions', () => {
  it.each<[string, Record<string, unknown>, unknown]>([
    ['trace_id is (uppercase normalized)', { field: 'trace_id', operator: 'is', value: TRACE.toUpperCase() }, TRACE],
    ['parent_id is null', { field: 'parent_id', operator: 'is', value: null }, null],
    ['span_id is_not', { field: 'span_id', operator: 'is_not', value: SPAN }, SPAN],
    ['span_type eq', { field: 'span_type', operator: 'eq', value: 'llm' }, 'llm'],
    ['status_code neq', { field: 'status_code', operator: 'neq', value: 'STATUS_CODE_ERROR' }, 'STATUS_CODE_ERROR'],
    ['start_time gt', { field: 'start_time', operator: 'gt', value: '2026-11-22T10:00:00+00:00' }, '2026-11-22T10:00:00.000000Z'],
    ['end_time lt', { field: 'end_time', operator: 'lt', value: T1 }, T1],
    ['span_name gte', { field: 'span_name', operator: 'gte', value: 'b' }, 'b'],
    ['created_at lte', { field: 'created_at', operator: 'lte', value: T1 }, T1],
    ['updated_at btwn', { field: 'updated_at', operator: 'btwn', value: [T1, T2] }, [T1, '2026-11-22T11:00:00.000000Z']],
    ['span_kind in', { field: 'span_kind', operator: 'in', value: ['SPAN_KIND_SERVER', 'SPAN_KIND_CLIENT'] }, ['SPAN_KIND_SERVER', 'SPAN_KIND_CLIENT']],
    ['created_by_id not_in', { field: 'created_by_id', operator: 'not_in', value: [USER.toUpperCase()] }, [USER]],
    ['span_name contains', { field: 'span_name', operator: 'contains', value: '50%_off' }, '50%_off'],
    ['status_message startswith', { field: 'status_message', operator: 'startswith', value: 'time' }, 'time'],
    ['span_name endswith', { field: 'span_name', operator: 'endswith', value: 'call' }, 'call'],
    ['span_name like', { field: 'span_name', operator: 'like', value: 'open%\\_x' }, 'open%\\_x'],
    ['status_message exists', { field: 'status_message', operator: 'exists' }, undefined],
    ['exception not_exists', { field: 'exception', operator: 'not_exists' }, undefined],
    ['references has', { field: 'references', operator: 'has', value: [{ id: 'x' }] }, [{ id: 'x' }]],
    ['attributes key has_not', { field: 'attributes', key: 'ag.tags', operator: 'has_not', value: { env: 'prod' } }, { env: 'prod' }],
    ['attributes key eq number', { field: 'attributes', key: 'gen_ai.usage.input_tokens', operator: 'eq', value: 3 }, 3],
    ['attributes key eq boolean', { field: 'attributes', key: 'ag.flag', operator: 'eq', value: true }, true],
    ['attributes key gt string', { field: 'attributes', key: 'ag.name', operator: 'gt', value: 'm' }, 'm'],
    ['attributes key btwn numbers', { field: 'attributes', key: 'ag.x', operator: 'btwn', value: [1, 2.5] }, [1, 2.5]],
    ['attributes key in booleans', { field: 'attributes', key: 'ag.x', operator: 'in', value: [true, false] }, [true, false]],
    ['attributes key is object', { field: 'attributes', key: 'ag', operator: 'is', value: { a: [1, null] } }, { a: [1, null] }],
    ['events key with index and dash', { field: 'events', key: '0.event-name', operator: 'exists' }, undefined],
    ['attributes key as an array of keys with dots', { field: 'attributes', key: ['gen_ai.request.model'], operator: 'eq', value: 'gpt-4o' }, 'gpt-4o'],
    ['attributes key as an array of any text', { field: 'attributes', key: ['a b', "it's", 'é.ü', '0'], operator: 'exists' }, undefined],
  ])('accepts %s', (_name, condition, value) => {
    const parsed = parseSpanQuery(withCondition(condition));
    const expected: Record<string, unknown> = { field: condition.field, operator: condition.operator };
    if (condition.key !== undefined) expected.key = typeof condition.key === 'string' ? condition.key.split('.') : condition.key;
    if (value !== undefined) expected.value = value;
    expect(parsed.filter).toEqual({ operator: 'and', conditions: [expected] });
  });

  it('defaults the condition operator to is and the filter operator to and', () => {
    expect(parseSpanQuery(withCondition({ field: 'span_name', value: 'x' })).filter).toEqual({
      operator: 'and',
      conditions: [{ field: 'span_name', operator: 'is', value: 'x' }],
    });
  });

  it('parses nested and/or/not filters', () => {
    const body = {
      filter: {
        operator: 'or',
        conditions: [
          { operator: 'not', conditions: [{ field: 'span_type', operator: 'eq', value: 'tool' }] },
          { conditions: [] },
        ],
      },
    };
    expect(parseSpanQuery(body).filter).toEqual({
      operator: 'or',
      conditions: [
        { operator: 'not', conditions: [{ field: 'span_type', operator: 'eq', value: 'tool' }] },
        { operator: 'and', conditions: [] },
      ],
    });
  });

  const c0 = 'filter.conditions[0]';
  it.each<[string, Record<string, unknown>, string, string]>([
    ['an unknown field', { field: 'costs', operator: 'eq', value: 1 }, `${c0}.field`, 'unknown field "costs"; expected one of trace_id, span_id, parent_id, trace_type, span_type, span_kind, span_name, start_time, end_time, status_code, status_message, attributes, references, links, hashes, events, exception, created_at, updated_at, created_by_id, updated_by_id'],
    ['a prototype name as field', { field: 'constructor', operator: 'exists' }, `${c0}.field`, expect.stringMatching(/^unknown field "constructor"/) as unknown as string],
    ['a missing field', { operator: 'exists' }, `${c0}.field`, 'required: the name of a span field'],
    ['an unknown condition key', { field: 'span_name', operator: 'eq', value: 'x', options: {} }, `${c0}.options`, 'unknown field; expected one of field, key, operator, value'],
    ['an unknown operator', { field: 'span_name', operator: 'foo', value: 'x' }, `${c0}.operator`, 'unknown operator "foo"; expected one of is, is_not, eq, neq, gt, lt, gte, lte, btwn, in, not_in, contains, startswith, endswith, like, exists, not_exists, has, has_not'],
    ['a key on a column', { field: 'span_name', key: 'a', operator: 'eq', value: 'x' }, `${c0}.key`, 'a key applies only to JSON fields (attributes, references, links, hashes, events, exception)'],
    ['a key with a quote', { field: 'attributes', key: "a'b", operator: 'exists' }, `${c0}.key`, 'expected a dotted path of non-empty segments of letters, digits, "_" and "-" (an array of keys takes any)'],
    ['a key with an empty segment', { field: 'attributes', key: 'a..b', operator: 'exists' }, `${c0}.key`, 'expected a dotted path of non-empty segments of letters, digits, "_" and "-" (an array of keys takes any)'],
    ['a key of 21 segments', { field: 'attributes', key: Array(21).fill('a').join('.'), operator: 'exists' }, `${c0}.key`, 'more than 20 segments'],
    ['a key of 21 keys', { field: 'attributes', key: Array(21).fill('a'), operator: 'exists' }, `${c0}.key`, 'more than 20 segments'],
    ['a key that is neither', { field: 'attributes', key: 7, operator: 'exists' }, `${c0}.key`, 'expected a dotted path such as "ag.metrics.costs", or an array of keys such as ["gen_ai.request.model"]'],
    ['an empty array of keys', { field: 'attributes', key: [], operator: 'exists' }, `${c0}.key`, 'expected at least one key'],
    ['an empty key in an array', { field: 'attributes', key: ['a', ''], operator: 'exists' }, `${c0}.key[1]`, 'expected a key of 1 to 1000 characters'],
    ['a non-string key in an array', { field: 'attributes', key: ['a', 1], operator: 'exists' }, `${c0}.key[1]`, 'expected a string'],
    ['a NUL in a key of an array', { field: 'attributes', key: ['a\u0000'], operator: 'exists' }, `${c0}.key[0]`, 'contains a NUL character'],
    ['gt on an enum', { field: 'span_type', operator: 'gt', value: 'llm' }, `${c0}.operator`, 'operator "gt" does not apply to span_type; expected one of is, is_not, eq, neq, in, not_in, exists, not_exists'],
    ['contains on an id', { field: 'trace_id', operator: 'contains', value: 'ab' }, `${c0}.operator`, 'operator "contains" does not apply to trace_id; expected one of is, is_not, eq, neq, in, not_in, exists, not_exists'],
    ['has on a text column', { field: 'span_name', operator: 'has', value: 'x' }, `${c0}.operator`, 'operator "has" does not apply to span_name; expected one of is, is_not, eq, neq, in, not_in, exists, not_exists, gt, lt, gte, lte, btwn, contains, startswith, endswith, like'],
    ['eq on JSON without a key', { field: 'attributes', operator: 'eq', value: 1 }, `${c0}.operator`, 'operator "eq" does not apply to attributes without a key; expected one of is, is_not, exists, not_exists, has, has_not'],
    ['a value that is not in the enum', { field: 'status_code', operator: 'eq', value: 'ERROR' }, `${c0}.value`, 'unknown value "ERROR"; expected one of STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR'],
    ['an enum value of the wrong type', { field: 'span_kind', operator: 'eq', value: 1 }, `${c0}.value`, 'expected a string, one of SPAN_KIND_UNSPECIFIED, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER'],
    ['a short trace id', { field: 'trace_id', operator: 'eq', value: 'abc' }, `${c0}.value`, 'expected a trace id (32 hex characters)'],
    ['a non-hex span id', { field: 'parent_id', operator: 'eq', value: 'zzzzzzzzzzzzzzzz' }, `${c0}.value`, 'expected a span id (16 hex characters)'],
    ['a trace id as span id', { field: 'span_id', operator: 'in', value: [SPAN, TRACE] }, `${c0}.value[1]`, 'expected a span id (16 hex characters)'],
    ['a non-UUID user', { field: 'updated_by_id', operator: 'eq', value: '1' }, `${c0}.value`, 'expected a UUID'],
    ['a time without zone', { field: 'start_time', operator: 'gt', value: '2026-11-22 10:00:00' }, `${c0}.value`, 'expected an ISO-8601 time with a time zone between years 1900 and 2299, e.g. "2026-11-22T10:00:00.000000Z"'],
    ['a number for a time', { field: 'end_time', operator: 'gt', value: 1764000000 }, `${c0}.value`, 'expected an ISO-8601 time with a time zone between years 1900 and 2299, e.g. "2026-11-22T10:00:00.000000Z"'],
    ['a missing value', { field: 'span_name', operator: 'eq' }, `${c0}.value`, 'required for operator "eq"'],
    ['null for eq', { field: 'parent_id', operator: 'eq', value: null }, `${c0}.value`, '"eq" does not take null; use is, is_not, exists or not_exists'],
    ['a value for exists', { field: 'attributes', key: 'a', operator: 'exists', value: true }, `${c0}.value`, '"exists" takes no value'],
    ['btwn with one value', { field: 'start_time', operator: 'btwn', value: [T1] }, `${c0}.value`, 'expected [low, high]'],
    ['btwn with reversed times', { field: 'start_time', operator: 'btwn', value: ['2026-12-01T00:00:00Z', '2026-11-01T00:00:00+01:00'] }, `${c0}.value[1]`, `must not be before ${c0}.value[0] (2026-12-01T00:00:00.000000Z)`],
    ['btwn with reversed JSON numbers', { field: 'attributes', key: 'a', operator: 'btwn', value: [2.5, 1] }, `${c0}.value[1]`, `must not be less than ${c0}.value[0] (2.5)`],
    ['btwn with mixed JSON types', { field: 'attributes', key: 'a', operator: 'btwn', value: [1, 'z'] }, `${c0}.value[1]`, 'expected a number'],
    ['btwn with booleans', { field: 'attributes', key: 'a', operator: 'btwn', value: [true, false] }, `${c0}.value[0]`, 'expected a number or string'],
    ['gt with a boolean', { field: 'attributes', key: 'a', operator: 'gt', value: true }, `${c0}.value`, 'expected a number or string'],
    ['eq with an object', { field: 'attributes', key: 'a', operator: 'eq', value: { b: 1 } }, `${c0}.value`, 'expected a number, string or boolean'],
    ['in with a scalar', { field: 'span_name', operator: 'in', value: 'x' }, `${c0}.value`, 'expected a non-empty array of at most 1000 values'],
    ['in with an empty array', { field: 'span_name', operator: 'in', value: [] }, `${c0}.value`, 'expected a non-empty array of at most 1000 values'],
    ['in with 1001 values', { field: 'span_name', operator: 'not_in', value: Array(1001).fill('x') }, `${c0}.value`, 'expected a non-empty array of at most 1000 values'],
    ['in with mixed JSON types', { field: 'attributes', key: 'a', operator: 'in', value: ['1', 2] }, `${c0}.value[1]`, 'expected a string'],
    ['in with a null', { field: 'span_name', operator: 'in', value: ['x', null] }, `${c0}.value[1]`, 'expected a string'],
    ['contains with a number', { field: 'span_name', operator: 'contains', value: 5 }, `${c0}.value`, 'expected a string'],
    ['a string over 10k characters', { field: 'span_name', operator: 'eq', value: 'x'.repeat(10_001) }, `${c0}.value`, 'longer than 10000 characters'],
    ['a NUL character', { field: 'span_name', operator: 'eq', value: 'a\u0000b' }, `${c0}.value`, 'contains a NUL character'],
    ['a lone surrogate', { field: 'attributes', key: 'a', operator: 'eq', value: 'a\uD800' }, `${c0}.value`, 'contains an unpaired UTF-16 surrogate'],
    ['a like pattern ending in an escape', { field: 'span_name', operator: 'like', value: 'abc\\' }, `${c0}.value`, 'a LIKE pattern cannot end with an escape character'],
    ['has with null', { field: 'attributes', operator: 'has', value: null }, `${c0}.value`, '"has" does not take null; use is, is_not, exists or not_exists'],
    ['a NUL inside a JSON value', { field: 'attributes', operator: 'has', value: { a: ['\u0000'] } }, `${c0}.value.a[0]`, 'contains a NUL character'],
  ])('rejects %s', (_name, condition, field, reason) => {
    expect(rejection(() => parseSpanQuery(withCondition(condition)))).toEqual([field, reason]);
  });

  it('accepts an escaped trailing backslash in a like pattern', () => {
    expect(parseSpanQuery(withCondition({ field: 'span_name', operator: 'like', value: 'abc\\\\' })).filter?.conditions[0]).toEqual({
      field: 'span_name', operator: 'like', value: 'abc\\\\',
    });
  });

  it('names the path of nested conditions', () => {
    const body = { filter: { conditions: [{ field: 'span_name', operator: 'exists' }, { operator: 'or', conditions: [{ field: 'span_name', operator: 'exists' }, { field: 'span_type', operator: 'bogus' }] }] } };
    expect(rejection(() => parseSpanQuery(body))).toEqual(['filter.conditions[1].conditions[1].operator', expect.stringMatching(/^unknown operator "bogus"/)]);
  });

  it('rejects an unknown logical operator and a filter without conditions', () => {
    expect(rejection(() => parseSpanQuery({ filter: { operator: 'xor', conditions: [] } }))).toEqual(['filter.operator', 'unknown logical operator "xor"; expected one of and, or, not']);
    expect(rejection(() => parseSpanQuery({ filter: { operator: 'and' } }))).toEqual(['filter.conditions', 'expected an array of conditions and filters']);
    expect(rejection(() => parseSpanQuery({ filter: { conditions: ['span_name'] } }))).toEqual(['filter.conditions[0]', 'expected an object with field, key, operator, value']);
  });

  it('allows 10 levels of nesting, not 11', () => {
    const nest = (levels: number): Record<string, unknown> =>
      levels === 1 ? { conditions: [{ field: 'span_name', operator: 'exists' }] } : { conditions: [nest(levels - 1)] };
    expect(() => parseSpanQuery({ filter: nest(10) })).not.toThrow();
    const path = `filter${'.conditions[0]'.repeat(10)}`;
    expect(rejection(() => parseSpanQuery({ filter: nest(11) }))).toEqual([path, 'filters nest deeper than 10 levels']);
  });

  it('allows 100 conditions and nested filters in all, not 101', () => {
    const condition = { field: 'span_name', operator: 'exists' };
    const hundred = { conditions: [{ conditions: Array(49).fill(condition) }, { conditions: Array(49).fill(condition) }] };
    expect(() => parseSpanQuery({ filter: hundred })).not.toThrow();
    const more = { conditions: [...hundred.conditions, condition] };
    expect(rejection(() => parseSpanQuery({ filter: more }))).toEqual(['filter.conditions[2]', 'more than 100 conditions and filters in the filter']);
  });

  it('counts empty nested filters too: each is a term of the query', () => {
    const empties = { conditions: Array(101).fill({ conditions: [] }) };
    expect(rejection(() => parseSpanQuery({ filter: empties }))).toEqual(['filter.conditions[100]', 'more than 100 conditions and filters in the filter']);
  });
});

describe('parseAnalyticsQuery', () => {
  it('defaults focus to span and the interval to 60 minutes', () => {
    expect(parseAnalyticsQuery({ windowing: { oldest: T1, newest: T2 } })).toEqual({
      focus: 'span',
      windowing: { oldest: T1, newest: '2026-11-22T11:00:00.000000Z', interval: 60 },
    });
  });

  it('keeps focus, filter and interval', () => {
    const query = parseAnalyticsQuery({
      focus: 'trace',
      filter: { conditions: [{ field: 'span_type', operator: 'eq', value: 'llm' }] },
      windowing: { oldest: T1, newest: T2, interval: 10_080 },
    });
    expect(query).toEqual({
      focus: 'trace',
      filter: { operator: 'and', conditions: [{ field: 'span_type', operator: 'eq', value: 'llm' }] },
      windowing: { oldest: T1, newest: '2026-11-22T11:00:00.000000Z', interval: 10_080 },
    });
  });

  it('allows exactly 10000 buckets', () => {
    // 10000 one-minute buckets: 6 days, 22 hours and 40 minutes.
    expect(parseAnalyticsQuery({ windowing: { oldest: '2026-01-01T00:00:00Z', newest: '2026-01-07T22:40:00Z', interval: 1 } }).windowing.interval).toBe(1);
    expect(rejection(() => parseAnalyticsQuery({ windowing: { oldest: '2026-01-01T00:00:00Z', newest: '2026-01-07T22:40:00.000001Z', interval: 1 } }))).toEqual([
      'windowing.interval', '10001 buckets of 1 minutes between oldest and newest; at most 10000',
    ]);
  });

  it.each([
    ['no windowing', {}, 'windowing', 'required: { oldest, newest, interval? }'],
    ['no oldest', { windowing: { newest: T2 } }, 'windowing.oldest', 'required'],
    ['no newest', { windowing: { oldest: T1 } }, 'windowing.newest', 'required'],
    ['newest equal to oldest', { windowing: { oldest: T1, newest: T1 } }, 'windowing.newest', 'must be later than windowing.oldest'],
    ['interval 0', { windowing: { oldest: T1, newest: T2, interval: 0 } }, 'windowing.interval', 'expected an integer from 1 to 10080'],
    ['interval 10081', { windowing: { oldest: T1, newest: T2, interval: 10_081 } }, 'windowing.interval', 'expected an integer from 1 to 10080'],
    ['limit in analytics windowing', { windowing: { oldest: T1, newest: T2, limit: 5 } }, 'windowing.limit', 'unknown field; expected one of oldest, newest, interval'],
    ['an unknown top-level key', { windowing: { oldest: T1, newest: T2 }, group_by: 'x' }, 'group_by', 'unknown field; expected one of focus, filter, windowing'],
    ['a bad filter', { windowing: { oldest: T1, newest: T2 }, filter: { conditions: [{ field: 'x' }] } }, 'filter.conditions[0].field', expect.stringMatching(/^unknown field "x"/)],
  ])('rejects %s', (_name, body, field, reason) => {
    expect(rejection(() => parseAnalyticsQuery(body))).toEqual([field, reason]);
  });
});
