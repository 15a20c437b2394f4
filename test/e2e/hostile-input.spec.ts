import fc from 'fast-check';
import { sql } from 'kysely';
import { brotliDecompressSync, gunzipSync, gzipSync, inflateSync } from 'node:zlib';
import { otlpTraceService } from '../../src/otlp/otlp-decoder';
import { SPAN_KINDS, SPAN_TYPES, STATUS_CODES, TRACE_TYPES } from '../../src/tracing/span';
import { CONDITION_OPERATORS, LOGICAL_OPERATORS } from '../../src/tracing/span-query';
import { QUERYABLE_FIELDS } from '../../src/tracing/span-query.parser';
import { createTestApp, TestApp } from '../support/app';
import { makeNode, makeSpan } from '../support/fixtures';
import { closeRawAgent, rawRequest, RawResponse } from '../support/raw-http';
import { errorMessageOf } from '../support/rpc-status';

/**
 * Property-based hostile input over every write and query route and the OTLP
 * receiver. Each generated request must get a 4xx (never a 5xx) whose JSON
 * body has a non-empty `message`, and must leave Postgres exactly as it was;
 * but an OTLP export with valid spans besides a bad one is a partial success
 * that stores exactly the valid ones (OTLP's rule).
 *
 * The seed is printed in the suite's name; rerun a failure with
 * FC_SEED=<seed> (fast-check's own report adds the counterexample's path).
 */

const SEED = process.env.FC_SEED ? Number(process.env.FC_SEED) : Date.now() % 2 ** 31;
const RUNS = Number(process.env.FC_RUNS ?? 150);
const MAX_BATCH = 20;
/** OTLP exports have a bound of their own (collectors batch more than REST callers): kept apart from MAX_BATCH here. */
const MAX_OTLP_SPANS = 30;
const BODY_LIMIT_BYTES = 64 * 1024;
const PARAMS = { seed: SEED, numRuns: RUNS, endOnFailure: false };

// ---------- generators ----------

const SQL_FRAGMENTS = [
  "' OR '1'='1", "'; DROP TABLE spans; --", '" OR 1=1 --', '1; SELECT pg_sleep(5)', '$1', '$$; DELETE FROM spans; $$',
  "') OR true --", "%' --", "\\'", "E'\\\\x00'", '::jsonb', 'project_id', '/* */', '${x}', "'||(select project_id from spans limit 1)||'",
  'spans.project_id', '1) OR (1=1', "x' UNION SELECT * FROM api_keys --", '\\', '%', '_', "-- '",
];
const ODD_CHARS = ['\u0000', '\ud800', '\udfff', '\ufeff', '\u202e', '\uffff', '\u0085', '\u2028', '\\', '"', "'"];

/** Any UTF-16 code units, so unpaired surrogates too. */
const utf16String = (maxLength = 30) => fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength }).map((codes) => String.fromCharCode(...codes));
const hostileString = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.string({ unit: 'binary', maxLength: 30 }),
  utf16String(),
  fc.constantFrom(...SQL_FRAGMENTS),
  fc.tuple(fc.string({ maxLength: 8 }), fc.constantFrom(...ODD_CHARS), fc.string({ maxLength: 8 })).map(([a, b, c]) => a + b + c),
);
/** Strings the API must refuse wherever text is stored: NUL or an unpaired surrogate inside. */
const unstorableString = fc
  .tuple(fc.string({ maxLength: 10 }), fc.constantFrom('\u0000', '\ud800', '\udbff', '\udc00', '\udfff'), fc.string({ maxLength: 10 }))
  .map(([a, b, c]) => a + b + c);
const hugeString = (over: number) => fc.integer({ min: over + 1, max: over + 20_000 }).map((n) => 'ä'.repeat(n).slice(0, n));
const jsonScalar = fc.oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), hostileString);
const anyJson = fc.oneof(fc.jsonValue({ maxDepth: 3 }), jsonScalar, fc.constant(null));
const notAString = fc.oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.array(anyJson, { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 5 }), anyJson, { maxKeys: 3 }));
const notAnObject = fc.oneof(jsonScalar, fc.array(anyJson, { maxLength: 3 }));
const notAnArray = fc.oneof(jsonScalar, fc.dictionary(fc.string({ maxLength: 5 }), anyJson, { maxKeys: 3 }));

const hexBytes = (bytes: number) =>
  fc.uint8Array({ minLength: bytes, maxLength: bytes }).filter((a) => a.some((b) => b !== 0)).map((a) => Buffer.from(a).toString('hex'));
const badHexId = (chars: number) =>
  fc.oneof(
    hostileString.filter((s) => !new RegExp(`^[0-9a-fA-F]{${chars}}$`).test(s)),
    fc.constant('0'.repeat(chars)),
    fc.integer({ min: 0 }).map((n) => n.toString(16).padStart(chars + 1, '1')),
    fc.constantFrom('٠'.repeat(chars), 'ａ'.repeat(chars), `${'a'.repeat(chars - 1)}g`, ` ${'a'.repeat(chars - 1)}`),
    notAString,
  );
const badUuid = fc.oneof(
  hostileString.filter((s) => !/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(s)),
  fc.uuid().map((u) => u.replace(/-/g, '')),
  fc.uuid().map((u) => `{${u}}`),
  notAString,
);
/** Times the API must refuse: not zoned ISO-8601, impossible dates, or outside 1900-2299. */
const badTime = fc.oneof(
  hostileString.filter((s) => !/^\d{4}-/.test(s)),
  fc.constantFrom(
    '2026-13-01T00:00:00Z', '2026-02-30T00:00:00Z', '2026-11-20T24:00:00Z', '2026-11-20T10:60:00Z', '2026-11-20T10:00:00',
    '2026-11-20', '0000-01-01T00:00:00Z', '0050-01-01T00:00:00Z', '1899-12-31T23:59:59Z', '2300-01-01T00:00:00Z',
    '99999-01-01T00:00:00Z', '2026-11-20T10:00:00+24:00', '2026-11-20T10:00:00 UTC', 'NaN', '2026-11-20T10:00:00.Z',
    `2026-11-20T10:00:00.${'1'.repeat(80)}Z`,
  ),
  notAString,
);
/** Nesting deeper than the 32 levels JSON payloads may have; serialized by bodyText, never by JSON.stringify. */
const deepJson = fc.record({ depth: fc.integer({ min: 34, max: 8_000 }), kind: fc.constantFrom('array', 'object') }).map(({ depth, kind }) => `@@DEEP_${kind}_${depth}@@`);

const isIntegerIn = (v: unknown, min: number, max: number) => Number.isInteger(v) && (v as number) >= min && (v as number) <= max;

/** JSON text of a body, with deep-nesting placeholders expanded in place. */
function bodyText(body: unknown): string {
  return JSON.stringify(body).replace(/"@@DEEP_(array|object)_(\d+)@@"/g, (_, kind: string, depth: string) => {
    const n = Number(depth);
    return kind === 'array' ? `${'['.repeat(n)}1${']'.repeat(n)}` : `${'{"a":'.repeat(n)}1${'}'.repeat(n)}`;
  });
}

type Edit = { op: 'set'; field: string; value: unknown } | { op: 'delete'; field: string } | { op: 'swapTimes' } | { op: 'selfParent' };

function applyEdit(item: Record<string, unknown>, edit: Edit, times: [string, string], idField: string, parentField?: string): Record<string, unknown> {
  const copy = { ...item };
  switch (edit.op) {
    case 'set':
      // A data property, so a generated "__proto__" is sent as a field and not swallowed as a prototype.
      Object.defineProperty(copy, edit.field, { value: edit.value, enumerable: true, writable: true, configurable: true });
      break;
    case 'delete':
      delete copy[edit.field];
      break;
    case 'swapTimes':
      [copy[times[0]], copy[times[1]]] = ['2026-11-20T10:00:02Z', '2026-11-20T10:00:01.999999Z'];
      break;
    case 'selfParent':
      copy[parentField!] = copy[idField];
      break;
  }
  return copy;
}

const set = (field: string, value: fc.Arbitrary<unknown>) => value.map((v): Edit => ({ op: 'set', field, value: v }));
const enumViolation = (values: readonly string[]) => fc.oneof(hostileString.filter((s) => !values.includes(s)), notAString, fc.constant(null));
const unknownField = (known: string[]) =>
  fc.record({ field: hostileString.filter((f) => !known.includes(f)), value: anyJson }).map(({ field, value }): Edit => ({ op: 'set', field, value }));

const SPAN_FIELDS = ['trace_id', 'span_id', 'parent_id', 'trace_type', 'span_type', 'span_kind', 'span_name', 'start_time', 'end_time', 'status_code', 'status_message', 'attributes', 'references', 'links', 'hashes', 'events', 'exception'];
const jsonArrayViolation = fc.oneof(notAnArray, deepJson, fc.array(unstorableString, { minLength: 1, maxLength: 3 }), deepJson.map((d) => [d]));
const jsonObjectViolation = (nullable: boolean) =>
  fc.oneof(
    nullable ? notAnObject : fc.oneof(notAnObject, fc.constant(null)),
    deepJson.map((d) => ({ nested: d })),
    fc.record({ k: fc.string({ maxLength: 5 }), bad: unstorableString, asKey: fc.boolean() }).map(({ k, bad, asKey }) => (asKey ? { [bad]: 1 } : { [k]: { inner: bad } })),
  );

/** One edit that makes a valid span invalid. */
const spanEdit: fc.Arbitrary<Edit> = fc.oneof(
  set('trace_id', badHexId(32)),
  set('span_id', badHexId(16)),
  set('parent_id', badHexId(16)),
  set('trace_type', enumViolation(TRACE_TYPES)),
  set('span_type', enumViolation(SPAN_TYPES)),
  set('span_kind', enumViolation(SPAN_KINDS)),
  set('status_code', enumViolation(STATUS_CODES)),
  set('span_name', fc.oneof(notAString, fc.constant(null), fc.constant(''), hugeString(1024), unstorableString)),
  set('start_time', badTime),
  set('end_time', badTime),
  set('status_message', fc.oneof(notAString, hugeString(10_000), unstorableString)),
  set('attributes', jsonObjectViolation(false)),
  set('exception', jsonObjectViolation(true)),
  fc.constantFrom('references', 'links', 'hashes', 'events').chain((field) => set(field, jsonArrayViolation)),
  unknownField(SPAN_FIELDS),
  fc.constantFrom('trace_id', 'span_id', 'span_name', 'start_time', 'end_time').map((field): Edit => ({ op: 'delete', field })),
  fc.constant<Edit>({ op: 'swapTimes' }),
  fc.constant<Edit>({ op: 'selfParent' }),
);

const NODE_FIELDS = ['node_id', 'tree_id', 'root_id', 'parent_id', 'node_name', 'node_type', 'time_start', 'time_end', 'status', 'data', 'metrics', 'meta', 'refs', 'exception', 'links', 'otel'];
const nodeEdit: fc.Arbitrary<Edit> = fc.oneof(
  fc.constantFrom('node_id', 'tree_id', 'root_id', 'parent_id').chain((field) => set(field, badUuid)),
  set('node_name', fc.oneof(notAString, fc.constant(null), fc.constant(''), hugeString(1024), unstorableString)),
  set('node_type', fc.oneof(notAString, fc.constant(null), fc.constant(''), hugeString(64), unstorableString)),
  set('time_start', badTime),
  set('time_end', badTime),
  set('status', fc.oneof(
    notAnObject,
    fc.constant(null),
    fc.record({ code: fc.oneof(notAString, fc.constant(''), unstorableString, hugeString(64)), message: fc.constant(null) }),
    fc.record({ code: fc.constant('OK'), message: fc.oneof(notAString, unstorableString, hugeString(10_000)) }),
    fc.record({ code: fc.constant('OK'), extra: anyJson }),
  )),
  fc.constantFrom('data', 'metrics', 'meta', 'refs', 'exception', 'otel').chain((field) => set(field, jsonObjectViolation(true))),
  set('links', jsonArrayViolation),
  unknownField(NODE_FIELDS),
  fc.constantFrom('node_id', 'tree_id', 'node_name', 'time_start', 'time_end').map((field): Edit => ({ op: 'delete', field })),
  fc.constant<Edit>({ op: 'swapTimes' }),
  fc.constant<Edit>({ op: 'selfParent' }),
);

const validSpan = fc.record({ trace_id: hexBytes(16), span_id: hexBytes(8) }).map(({ trace_id, span_id }) => makeSpan({ trace_id, span_id }) as unknown as Record<string, unknown>);
const validNode = fc.record({ node_id: fc.uuid(), tree_id: fc.uuid() }).map(({ node_id, tree_id }) => makeNode({ node_id, tree_id }) as unknown as Record<string, unknown>);

/** A batch of valid items with one edited item somewhere in it. */
function batchWithOneBad(valid: fc.Arbitrary<Record<string, unknown>>, edit: fc.Arbitrary<Edit>, times: [string, string], idField: string, parentField?: string) {
  return fc
    .record({ items: fc.array(valid, { minLength: 1, maxLength: 4 }), at: fc.nat(), edit })
    .map(({ items, at, edit: e }) => {
      const index = at % items.length;
      return { edit: e, index, items: items.map((item, i) => (i === index ? applyEdit(item, e, times, idField, parentField) : item)) };
    });
}

/** Ways to break the envelope of a batch body rather than an item. */
const badEnvelope = (field: string, valid: fc.Arbitrary<Record<string, unknown>>, duplicatesRefused = true) =>
  fc.oneof(
    anyJson.filter((v) => v === null || typeof v !== 'object' || Array.isArray(v)),
    notAnArray.map((v) => ({ [field]: v })),
    fc.constant({ [field]: [] }),
    fc.constant({}),
    duplicatesRefused ? valid.map((item) => ({ [field]: [item, item] })) : fc.constant({ [field]: null }),
    fc.record({ extra: hostileString.filter((k) => k !== field), value: anyJson, item: valid }).map(({ extra, value, item }) => ({ [field]: [item], [extra]: value })),
    fc.array(anyJson, { maxLength: 3 }).map((items) => ({ [field]: items.length ? items : [1] })),
  );

// ---------- query generators ----------

const TEXT_OPS = ['is', 'is_not', 'eq', 'neq', 'contains', 'startswith', 'endswith', 'like'] as const;
const textValue = fc.oneof(fc.constantFrom(...SQL_FRAGMENTS), fc.string({ maxLength: 40 })).map((s) => `${s}x`); // never ends in a LIKE escape
/** Filters with SQL in values and JSON containment: valid queries that must match nothing and change nothing. */
const sqlInValues = fc.oneof(
  fc.record({ field: fc.constantFrom('span_name', 'status_message'), operator: fc.constantFrom(...TEXT_OPS), value: textValue }),
  fc.record({ field: fc.constant('attributes'), key: fc.constantFrom('gen_ai.request.model', 'a', 'x-y_z'), operator: fc.constantFrom(...TEXT_OPS), value: textValue }),
  fc.record({ field: fc.constant('attributes'), operator: fc.constantFrom('has', 'has_not'), value: fc.dictionary(fc.constantFrom(...SQL_FRAGMENTS), textValue, { minKeys: 1, maxKeys: 2 }) }),
  fc.record({ field: fc.constant('span_name'), operator: fc.constantFrom('in', 'not_in'), value: fc.array(textValue, { minLength: 1, maxLength: 5 }) }),
);

const condition = (c: Record<string, unknown>) => ({ filter: { conditions: [c] } });
/** Queries the parser must refuse, each naming the field. */
const badQuery = fc.oneof(
  fc.record({ key: hostileString.filter((k) => !['focus', 'filter', 'windowing'].includes(k)), value: anyJson }).map(({ key, value }) => ({ [key]: value })),
  fc.oneof(hostileString.filter((s) => s !== 'span' && s !== 'trace'), notAString).map((focus) => ({ focus })),
  notAnObject.map((filter) => ({ filter })),
  notAnArray.map((conditions) => ({ filter: { conditions } })),
  fc.oneof(hostileString.filter((s) => !(LOGICAL_OPERATORS as readonly string[]).includes(s)), notAString).map((operator) => ({ filter: { operator, conditions: [] } })),
  fc.oneof(hostileString.filter((f) => !QUERYABLE_FIELDS.includes(f)), notAString).map((field) => condition({ field, operator: 'is', value: 'x' })),
  fc.oneof(hostileString.filter((o) => !(CONDITION_OPERATORS as readonly string[]).includes(o)), notAString).map((operator) => condition({ field: 'span_name', operator, value: 'x' })),
  fc.oneof(
    fc.constantFrom(...SQL_FRAGMENTS),
    hostileString,
    notAString,
    // An array of keys is a key when it holds 1 to 20 storable, non-empty strings: these break one rule each.
    fc.constantFrom<unknown[]>([], [1], ['a', ''], ['a', null], Array(21).fill('a'), ['x'.repeat(1001)]),
    unstorableString.map((k) => ['a', k]),
  )
    .filter((k) => !isValidKey(k))
    .map((key) => condition({ field: 'attributes', key, operator: 'eq', value: 1 })),
  fc.constantFrom('span_name', 'trace_id', 'start_time', 'status_code').map((field) => condition({ field, key: 'a', operator: 'eq', value: 'x' })),
  // All-zero ids cannot be stored but may be asked for (they match nothing), so they are left out here.
  fc.oneof(badHexId(32), fc.constant(null)).filter((v) => v !== '0'.repeat(32)).map((value) => condition({ field: 'trace_id', operator: 'eq', value })),
  badHexId(16).filter((v) => v !== '0'.repeat(16)).map((value) => condition({ field: 'span_id', operator: 'in', value: [value] })),
  badUuid.map((value) => condition({ field: 'created_by_id', operator: 'is', value })),
  badTime.filter((t) => t !== null).map((value) => condition({ field: 'start_time', operator: 'gte', value })),
  enumViolation(STATUS_CODES).filter((v) => v !== null).map((value) => condition({ field: 'status_code', operator: 'is', value })),
  fc.oneof(unstorableString, hugeString(10_000), notAString).map((value) => condition({ field: 'span_name', operator: 'contains', value })),
  fc.constantFrom('like', 'contains', 'gt', 'btwn', 'has').map((operator) => condition({ field: 'trace_id', operator, value: 'a'.repeat(32) })),
  fc.constantFrom('exists', 'not_exists').map((operator) => condition({ field: 'attributes', key: 'a', operator, value: 1 })),
  fc.constantFrom('eq', 'gt', 'contains', 'in').map((operator) => condition({ field: 'attributes', key: 'a', operator, value: null })),
  fc.oneof(fc.constant([]), fc.array(fc.constant('x'), { minLength: 1001, maxLength: 1001 }), notAnArray).map((value) => condition({ field: 'span_name', operator: 'in', value })),
  fc.oneof(fc.constant([1]), fc.constant([1, 2, 3]), fc.constant([1, 'a']), notAnArray).map((value) => condition({ field: 'attributes', key: 'a', operator: 'btwn', value })),
  fc.constant('a\\').map((value) => condition({ field: 'span_name', operator: 'like', value })),
  deepJson.map((d) => condition({ field: 'attributes', operator: 'has', value: { d } })),
  fc.integer({ min: 11, max: 200 }).map((depth) => {
    let filter: Record<string, unknown> = { conditions: [] };
    for (let i = 0; i < depth; i++) filter = { conditions: [filter] };
    return { filter };
  }),
  fc.integer({ min: 101, max: 300 }).map((n) => ({ filter: { conditions: Array.from({ length: n }, () => ({ field: 'span_name', operator: 'is', value: 'x' })) } })),
  fc.oneof(fc.constantFrom(0, -1, 1001, 1.5, '10'), notAString).filter((v) => !isIntegerIn(v, 1, 1000)).map((limit) => ({ windowing: { limit } })),
  fc.oneof(hostileString.filter((s) => s !== 'ascending' && s !== 'descending'), notAString).map((order) => ({ windowing: { order } })),
  fc.oneof(hostileString.filter((s) => s.length > 0), notAString).map((next) => ({ windowing: { next } })),
  fc.record({ v: fc.integer({ min: 0, max: 3 }), focus: hostileString, time: badTime, trace: fc.oneof(hexBytes(16), badHexId(32)), span: fc.oneof(hexBytes(8), badHexId(16)) })
    .map(({ v, focus, time, trace, span }) => ({ windowing: { next: Buffer.from(JSON.stringify([v, focus, time, trace, span])).toString('base64url') } })),
  fc.record({ oldest: badTime }).map((windowing) => ({ windowing })),
  fc.constant({ windowing: { oldest: '2026-11-20T10:00:00Z', newest: '2026-11-20T10:00:00Z' } }),
  fc.record({ key: hostileString.filter((k) => !['oldest', 'newest', 'limit', 'order', 'next'].includes(k)), value: anyJson }).map(({ key, value }) => ({ windowing: { [key]: value } })),
);

/** What the query parser takes as a key: a dotted path of plain segments, or 1 to 20 storable strings of 1 to 1000 characters. */
function isValidKey(key: unknown): boolean {
  if (typeof key === 'string') return key.length <= 1000 && /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(key) && key.split('.').length <= 20;
  const storable = (k: unknown) => typeof k === 'string' && k.length >= 1 && k.length <= 1000 && !/\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(k);
  return Array.isArray(key) && key.length >= 1 && key.length <= 20 && key.every(storable);
}

const WINDOW = { oldest: '2026-11-20T00:00:00Z', newest: '2026-11-21T00:00:00Z' };
const badAnalytics = fc.oneof(
  badQuery.filter((q) => 'filter' in q || 'focus' in q).map((q) => ({ ...q, windowing: { ...WINDOW, interval: 60 } })),
  fc.constant({}),
  fc.oneof(fc.constantFrom(0, -5, 10_081, 1.5, '60'), notAString).filter((v) => !isIntegerIn(v, 1, 10_080)).map((interval) => ({ windowing: { ...WINDOW, interval } })),
  fc.constant({ windowing: { oldest: '1900-01-01T00:00:00Z', newest: '2299-01-01T00:00:00Z', interval: 1 } }),
  fc.record({ oldest: badTime, newest: fc.constant(WINDOW.newest) }).map((windowing) => ({ windowing })),
  fc.constant({ windowing: { oldest: WINDOW.newest, newest: WINDOW.oldest } }),
  fc.constant({ windowing: { oldest: WINDOW.oldest } }),
  fc.record({ key: hostileString.filter((k) => !['oldest', 'newest', 'interval'].includes(k)), value: anyJson }).map(({ key, value }) => ({ windowing: { ...WINDOW, [key]: value } })),
);

const badNodeQuery = fc.oneof(
  fc.record({ key: hostileString.filter((k) => !['tree_id', 'node_type', 'node_name', 'oldest', 'newest', 'limit'].includes(k)), value: anyJson }).map(({ key, value }) => ({ [key]: value })),
  badUuid.map((tree_id) => ({ tree_id })),
  fc.oneof(unstorableString, hugeString(1024), notAString, fc.constant('')).map((node_name) => ({ node_name })),
  fc.oneof(unstorableString, hugeString(64), notAString, fc.constant('')).map((node_type) => ({ node_type })),
  badTime.map((oldest) => ({ oldest })),
  fc.constantFrom({ oldest: WINDOW.newest, newest: WINDOW.oldest }, { oldest: WINDOW.oldest, newest: WINDOW.oldest }),
  fc.constantFrom(0, -1, 1001, 1.5, 'ten', '1e9', {}, '5', true, [3]).map((limit) => ({ limit })),
);

// ---------- OTLP generators ----------

const otlpKeyValue = (key: string, value: unknown) => ({ key, value });
function otlpRequest(spans: Array<Record<string, unknown>>, resourceAttributes: unknown[] = [otlpKeyValue('service.name', { stringValue: 'fuzz' })]) {
  return { resourceSpans: [{ resource: { attributes: resourceAttributes }, scopeSpans: [{ scope: { name: 'fuzz', version: '1' }, spans }] }] };
}
const validOtlpSpan = fc.record({ traceId: hexBytes(16), spanId: hexBytes(8) }).map(({ traceId, spanId }) => ({
  traceId, spanId, name: 'fuzzed', kind: 2,
  startTimeUnixNano: '1763632800000001000', endTimeUnixNano: '1763632801000000000',
  attributes: [otlpKeyValue('gen_ai.usage.input_tokens', { intValue: '7' }), otlpKeyValue('text', { stringValue: 'hello' })],
  events: [{ name: 'e', timeUnixNano: '1763632800500000000', attributes: [] }],
  status: { code: 1, message: '' },
}) as Record<string, unknown>);
const badAnyValue = fc.oneof(
  fc.record({ intValue: fc.oneof(fc.constantFrom('1.5', '99999999999999999999', '-9223372036854775809', 'x', '', 2 ** 53, -(2 ** 53), 1795000000000000999), fc.double({ noInteger: true, noNaN: true, noDefaultInfinity: true }), fc.boolean()) }),
  fc.record({ stringValue: fc.oneof(unstorableString, notAString) }),
  fc.record({ boolValue: fc.oneof(hostileString, fc.integer()) }),
  fc.record({ arrayValue: notAnObject }),
  fc.record({ kvlistValue: fc.record({ values: notAnArray }) }),
  fc.record({ bytesValue: fc.oneof(notAString, fc.constantFrom('!!!', 'a', '%%%%')) }),
  notAnObject,
  fc.integer({ min: 33, max: 200 }).map((depth) => {
    let value: Record<string, unknown> = { stringValue: 'leaf' };
    for (let i = 0; i < depth; i++) value = { arrayValue: { values: [value] } };
    return value;
  }),
);
const otlpSpanEdit: fc.Arbitrary<Edit> = fc.oneof(
  set('traceId', fc.oneof(badHexId(32).filter((v) => v !== ''), fc.constant(null))),
  set('spanId', fc.oneof(badHexId(16).filter((v) => v !== ''), fc.constant(''))),
  // Empty, null and all zeros are "no parent" (a root span), not bad ids.
  set('parentSpanId', badHexId(16).filter((v) => v !== '' && v !== null && v !== '0'.repeat(16))),
  set('startTimeUnixNano', fc.oneof(fc.constantFrom('-1', '1.5', 'x', '0', '18446744073709551616', '9999999999999999999', null), fc.integer({ max: 0 }), fc.double({ noInteger: true, noNaN: true, noDefaultInfinity: true }), fc.boolean())),
  set('endTimeUnixNano', fc.constantFrom('1', '1763632800000000999', '-5', 'soon', null)),
  set('kind', fc.oneof(fc.integer({ min: 6 }), fc.integer({ max: -1 }), fc.constantFrom(1.5, 'SPAN_KIND_BOGUS', 'client', true))),
  set('status', fc.oneof(notAnObject.filter((v) => v !== null), fc.record({ code: fc.oneof(fc.integer({ min: 3 }), fc.constantFrom(-1, 'STATUS_CODE_MAYBE', 0.5)) }), fc.record({ code: fc.constant(1), message: fc.oneof(unstorableString, notAString, hugeString(10_000)) }))),
  set('name', fc.oneof(notAString, unstorableString, fc.constant(''), hugeString(1024))),
  set('attributes', fc.oneof(notAnArray.filter((v) => v !== null), fc.array(notAnObject, { minLength: 1, maxLength: 2 }), badAnyValue.map((value) => [otlpKeyValue('bad', value)]), fc.oneof(notAString, unstorableString).filter((k) => k !== null).map((key) => [otlpKeyValue(key as string, { stringValue: 'v' })]), fc.integer({ min: 32, max: 80 }).map((n) => [otlpKeyValue(Array(n).fill('k').join('.'), { stringValue: 'v' })]))),
  set('events', fc.oneof(notAnArray.filter((v) => v !== null), fc.constant([{ name: 'e', timeUnixNano: 'later' }]), fc.constant([{ name: 5 }]))),
  // Empty, absent and all-zero link ids are an invalid span context, which is kept (null ids), not a bad id.
  set('links', fc.oneof(notAnArray.filter((v) => v !== null), badHexId(32).filter((v) => v !== '' && v != null && v !== '0'.repeat(32)).map((traceId) => [{ traceId, spanId: 'a'.repeat(16) }]))),
  fc.constant<Edit>({ op: 'selfParent' }),
);

// ---------- the suite ----------

describe(`hostile input (fast-check seed ${SEED}, ${RUNS} runs per property; rerun with FC_SEED=${SEED})`, () => {
  let t: TestApp;
  let auth: Record<string, string>;
  let json: Record<string, string>;
  const existing: Array<Record<string, unknown>> = [];
  const existingNodes: Array<Record<string, unknown>> = [];

  /** Everything a request could change: row counts and the newest write of each table. */
  const snapshot = async () =>
    (await sql<Record<string, string | null>>`
      select (select count(*) from spans)::text as spans, (select max(updated_at)::text from spans) as spans_written,
             (select count(*) from nodes)::text as nodes, (select max(updated_at)::text from nodes) as nodes_written,
             (select count(*) from api_keys)::text as keys, (select count(*) from mirror_gaps)::text as gaps`.execute(t.database.db)).rows[0];

  const send = (method: string, path: string, body?: Buffer | string, headers: Record<string, string> = json) => rawRequest(t.url, method, path, body, headers);

  /**
   * The answer is a 4xx error with a message (JSON, or for a binary OTLP export the protobuf
   * google.rpc.Status OTLP/HTTP prescribes), and nothing changed in Postgres.
   */
  async function expectRefused(res: RawResponse, before: Awaited<ReturnType<typeof snapshot>>, allowed: number[] = [], status?: number): Promise<void> {
    const summary = `${res.status} ${res.text.slice(0, 300)}`;
    if (!allowed.includes(res.status)) {
      expect({ status: status === undefined ? res.status >= 400 && res.status < 500 : res.status === status, summary }).toEqual({ status: true, summary });
      expect(res.contentType).toMatch(/^application\/(json|x-protobuf)/);
      const message = errorMessageOf(res);
      expect({ message: typeof message === 'string' && message.length > 0, summary }).toEqual({ message: true, summary });
    }
    expect(await snapshot()).toEqual(before);
  }

  /** Runs one property: every generated request is refused (with `status`, when given) and changes nothing. */
  async function refusesAll<T>(arbitrary: fc.Arbitrary<T>, request: (value: T) => Promise<RawResponse>, allowed: number[] = [], status?: number): Promise<void> {
    await fc.assert(
      fc.asyncProperty(arbitrary, async (value) => {
        const before = await snapshot();
        await expectRefused(await request(value), before, allowed, status);
      }),
      PARAMS,
    );
  }

  beforeAll(async () => {
    t = await createTestApp({ MAX_BATCH_ITEMS: String(MAX_BATCH), MAX_OTLP_SPANS: String(MAX_OTLP_SPANS), BODY_LIMIT: '64kb' });
    auth = { Authorization: `ApiKey ${t.apiKey}` };
    json = { ...auth, 'Content-Type': 'application/json' };
    // Seeds apart from the properties' own, so no property generates a span that already exists.
    existing.push(...fc.sample(validSpan, { seed: SEED + 7919, numRuns: 5 }));
    existingNodes.push(...fc.sample(validNode, { seed: SEED + 7919, numRuns: 3 }));
    expect((await send('POST', '/tracing/spans', JSON.stringify({ spans: existing }))).status).toBe(201);
    expect((await send('POST', '/observability/nodes', JSON.stringify({ nodes: existingNodes }))).status).toBe(201);
  });
  afterAll(async () => {
    closeRawAgent();
    await t?.close();
  });

  it('the unedited bases are accepted, so every refusal below is the edit’s doing', async () => {
    const [span] = fc.sample(validSpan, { seed: SEED + 104729, numRuns: 1 });
    expect((await send('POST', '/tracing/spans', JSON.stringify({ spans: [span] }))).status).toBe(201);
    expect((await send('PUT', '/tracing/spans', JSON.stringify({ spans: [existing[0]] }))).status).toBe(200);
    expect((await send('POST', '/observability/nodes', JSON.stringify({ nodes: fc.sample(validNode, { seed: SEED + 104729, numRuns: 1 }) }))).status).toBe(201);
    const [otlpSpan] = fc.sample(validOtlpSpan, { seed: SEED + 104729, numRuns: 1 });
    expect((await send('POST', '/otlp/v1/traces', JSON.stringify(otlpRequest([otlpSpan])))).status).toBe(200);
    expect((await send('POST', '/tracing/spans/query', JSON.stringify(condition({ field: 'span_name', operator: 'is', value: 'x' })))).status).toBe(200);
    expect((await send('POST', '/tracing/analytics/query', JSON.stringify({ windowing: { ...WINDOW, interval: 60 } }))).status).toBe(200);
    expect((await send('DELETE', '/tracing/spans', JSON.stringify({ spans: [{ trace_id: span.trace_id, span_id: span.span_id }] }))).status).toBe(200);
  });

  describe('span and node writes', () => {
    it('POST /tracing/spans: a batch with one bad span writes nothing', async () => {
      await refusesAll(batchWithOneBad(validSpan, spanEdit, ['start_time', 'end_time'], 'span_id', 'parent_id'), ({ items }) =>
        send('POST', '/tracing/spans', bodyText({ spans: items })),
      );
    });

    it('POST /tracing/spans: broken envelopes and arbitrary JSON', async () => {
      await refusesAll(fc.oneof(badEnvelope('spans', validSpan), anyJson), (body) => send('POST', '/tracing/spans', bodyText(body)));
    });

    it('PUT /tracing/spans: an edited existing span is refused and the stored one is unchanged', async () => {
      const edits = fc.record({ index: fc.nat(existing.length - 1), edit: spanEdit });
      await refusesAll(edits, ({ index, edit }) =>
        send('PUT', '/tracing/spans', bodyText({ spans: [applyEdit(existing[index], edit, ['start_time', 'end_time'], 'span_id', 'parent_id')] })),
      );
    });

    it('DELETE /tracing/spans: bad keys delete nothing', async () => {
      const keyEdit = fc.oneof(
        set('trace_id', badHexId(32)),
        set('span_id', badHexId(16)),
        unknownField(['trace_id', 'span_id']),
        fc.constantFrom('trace_id', 'span_id').map((field): Edit => ({ op: 'delete', field })),
      );
      const keys = fc.record({ index: fc.nat(existing.length - 1), edit: keyEdit }).map(({ index, edit }) => {
        const { trace_id, span_id } = existing[index];
        return { spans: [{ trace_id: existing[0].trace_id, span_id: existing[0].span_id }, applyEdit({ trace_id, span_id }, edit, ['', ''], 'span_id')] };
      });
      await refusesAll(fc.oneof(keys, badEnvelope('spans', fc.constant({ trace_id: existing[0].trace_id as string, span_id: existing[0].span_id as string }), false)), (body) =>
        send('DELETE', '/tracing/spans', bodyText(body)),
      );
    });

    it('POST /observability/nodes: a batch with one bad node, or a broken envelope, writes nothing', async () => {
      await refusesAll(
        fc.oneof(batchWithOneBad(validNode, nodeEdit, ['time_start', 'time_end'], 'node_id', 'parent_id').map(({ items }) => ({ nodes: items })), badEnvelope('nodes', validNode)),
        (body) => send('POST', '/observability/nodes', bodyText(body)),
      );
    });

    it('ids in paths: anything but a well-formed existing id is a 400 or 404 and deletes nothing', async () => {
      const segment = fc.oneof(
        hostileString.filter((s) => s.length > 0 && !/[\ud800-\udfff]/.test(s)).map(encodeURIComponent),
        fc.constantFrom('%', '%zz', '%E0%A4%A', '%C0%AF', '..%2F..%2Fetc%2Fpasswd', '%00', '%ff%fe', '%F0%9F%98', '%2e%2e', '%20'),
        hexBytes(16),
        hexBytes(8),
        fc.uuid(),
      );
      const route = fc.constantFrom(
        (a: string) => ['GET', `/tracing/traces/${a}`],
        (a: string) => ['DELETE', `/tracing/traces/${a}`],
        (a: string, b: string) => ['GET', `/tracing/spans/${a}/${b}`],
        (a: string) => ['GET', `/observability/trees/${a}`],
        (a: string) => ['DELETE', `/observability/trees/${a}`],
      );
      await refusesAll(fc.tuple(route, segment, segment), ([to, a, b]) => {
        const [method, path] = to(a, b);
        return send(method, path, undefined, auth);
      });
    });

    it('times: a zoned-looking string is stored as exactly the instant it names, or refused; never a 500', async () => {
      const ZONES: Record<string, number | null> = { Z: 0, z: 0, '+00:00': 0, '+14:00': 840, '-12:00': -720, '+05:30': 330, '-0930': -570, '+2400': null, '-25:00': null, '': null, ' ': null, UTC: null };
      const timeish = fc.record({
        year: fc.oneof(fc.integer({ min: 0, max: 9_999 }), fc.integer({ min: 1890, max: 2310 })),
        month: fc.integer({ min: 0, max: 13 }), day: fc.integer({ min: 0, max: 32 }),
        hour: fc.integer({ min: 0, max: 25 }), minute: fc.integer({ min: 0, max: 61 }), second: fc.integer({ min: 0, max: 61 }),
        fraction: fc.oneof(fc.constant(''), fc.integer({ min: 0, max: 999_999_999 }).map(String)),
        zone: fc.constantFrom(...Object.keys(ZONES)),
      });
      const p = (n: number, w = 2) => String(n).padStart(w, '0');
      await fc.assert(
        fc.asyncProperty(validSpan, timeish, async (span, c) => {
          const text = `${p(c.year, 4)}-${p(c.month)}-${p(c.day)}T${p(c.hour)}:${p(c.minute)}:${p(c.second)}${c.fraction ? `.${c.fraction}` : ''}${c.zone}`;
          const offset = ZONES[c.zone];
          const date = new Date(0);
          date.setUTCFullYear(c.year, c.month - 1, c.day);
          date.setUTCHours(c.hour, c.minute, c.second, 0);
          const real = offset !== null && c.month >= 1 && c.month <= 12 && c.day >= 1 && date.getUTCDate() === c.day && c.hour < 24 && c.minute < 60 && c.second < 60;
          const micros = BigInt(date.getTime() - (offset ?? 0) * 60_000) * 1000n + BigInt(c.fraction.padEnd(6, '0').slice(0, 6));
          const year = new Date(Number(micros / 1000n)).getUTCFullYear();
          const storable = real && year >= 1900 && year <= 2299;

          const before = await snapshot();
          const res = await send('POST', '/tracing/spans', JSON.stringify({ spans: [{ ...span, start_time: text, end_time: text }] }));
          if (!storable) return expectRefused(res, before);
          expect({ text, status: res.status }).toEqual({ text, status: 201 });
          const stored = (res.json as { spans: Array<{ start_time: string }> }).spans[0].start_time;
          const [, whole, frac] = /^(.*)\.(\d{6})Z$/.exec(stored)!;
          expect({ text, stored: BigInt(Date.parse(`${whole}Z`)) * 1000n + BigInt(frac) }).toEqual({ text, stored: micros });
          // Shrinking replays the same ids: leave no span behind to conflict with.
          expect((await send('DELETE', '/tracing/spans', JSON.stringify({ spans: [{ trace_id: span.trace_id, span_id: span.span_id }] }))).status).toBe(200);
        }),
        PARAMS,
      );
    });
  });

  describe('queries', () => {
    it('POST /tracing/spans/query: malformed filters, fields, operators, keys and windows are 400s', async () => {
      await refusesAll(badQuery, (body) => send('POST', '/tracing/spans/query', bodyText(body)));
    });

    it('POST /tracing/spans/query: SQL in values and JSON is just data (200, no match, nothing changed)', async () => {
      await fc.assert(
        fc.asyncProperty(sqlInValues, fc.constantFrom('span', 'trace'), async (c, focus) => {
          const before = await snapshot();
          const res = await send('POST', '/tracing/spans/query', JSON.stringify({ focus, ...condition(c) }));
          expect({ status: res.status, text: res.text.slice(0, 200) }).toMatchObject({ status: 200 });
          const spans = (res.json as { spans: unknown[] }).spans;
          // Only the negative operators can match the stored spans, whose names and attributes hold no SQL.
          if (!['is_not', 'neq', 'not_in', 'has_not'].includes(c.operator)) expect(spans).toEqual([]);
          expect(await snapshot()).toEqual(before);
        }),
        PARAMS,
      );
    });

    it('POST /tracing/analytics/query: bad windows, intervals and filters are 400s', async () => {
      await refusesAll(badAnalytics, (body) => send('POST', '/tracing/analytics/query', bodyText(body)));
    });

    it('POST /observability/nodes/query: bad fields and values are 400s', async () => {
      await refusesAll(badNodeQuery, (body) => send('POST', '/observability/nodes/query', bodyText(body)));
    });

    it('arbitrary JSON to any query route: never a 5xx, never a write', async () => {
      const route = fc.constantFrom('/tracing/spans/query', '/tracing/analytics/query', '/observability/nodes/query');
      await refusesAll(fc.tuple(route, anyJson), ([path, body]) => send('POST', path, JSON.stringify(body)), [200]);
    });
  });

  describe('the OTLP receiver', () => {
    it('OTLP/JSON: a bad span is refused alone; the others are stored and the answer counts the refused one', async () => {
      const requests = fc.record({ spans: fc.array(validOtlpSpan, { minLength: 1, maxLength: 3 }), at: fc.nat(), edit: otlpSpanEdit });
      await fc.assert(
        fc.asyncProperty(requests, async ({ spans, at, edit }) => {
          const bad = at % spans.length;
          const body = otlpRequest(spans.map((s, i) => (i === bad ? applyEdit(s, edit, ['startTimeUnixNano', 'endTimeUnixNano'], 'spanId', 'parentSpanId') : s)));
          const before = await snapshot();
          const res = await send('POST', '/otlp/v1/traces', JSON.stringify(body));
          // With nothing valid to store the export is refused whole.
          if (spans.length === 1) return expectRefused(res, before, [], 400);
          const summary = `${res.status} ${res.text.slice(0, 300)}`;
          const partialSuccess = res.status === 200 ? JSON.parse(res.text).partialSuccess : undefined;
          expect({ status: res.status, rejectedSpans: partialSuccess?.rejectedSpans, summary }).toEqual({ status: 200, rejectedSpans: '1', summary });
          expect(partialSuccess.errorMessage).toContain(`.spans[${bad}]`);
          const after = await snapshot();
          const added = (table: 'spans' | 'nodes') => Number(after[table]) - Number(before[table]);
          expect([added('spans'), added('nodes')]).toEqual([spans.length - 1, spans.length - 1]);
        }),
        PARAMS,
      );
    });

    it('OTLP/JSON: broken envelopes, resources and scopes are refused and write nothing', async () => {
      const envelope = fc.oneof(
        notAnArray.filter((v) => v !== null).map((resourceSpans) => ({ resourceSpans })),
        fc.array(notAnObject.filter((v) => v !== null), { minLength: 1, maxLength: 2 }).map((resourceSpans) => ({ resourceSpans })),
        notAnArray.filter((v) => v !== null).map((scopeSpans) => ({ resourceSpans: [{ scopeSpans }] })),
        notAnArray.filter((v) => v !== null).map((spans) => ({ resourceSpans: [{ scopeSpans: [{ spans }] }] })),
        fc.array(notAnObject.filter((v) => v !== null), { minLength: 1, maxLength: 2 }).map((spans) => ({ resourceSpans: [{ scopeSpans: [{ spans }] }] })),
        // A bad resource or scope refuses the valid spans under it too.
        fc.tuple(badAnyValue, validOtlpSpan).map(([value, span]) => otlpRequest([span], [otlpKeyValue('r', value)])),
        fc.tuple(fc.oneof(notAString.filter((v) => v !== null), unstorableString), validOtlpSpan).map(([name, span]) => ({ resourceSpans: [{ scopeSpans: [{ scope: { name }, spans: [span] }] }] })),
        fc.array(anyJson, { maxLength: 3 }),
        jsonScalar.filter((v) => typeof v !== 'object'),
      );
      await refusesAll(envelope, (body) => send('POST', '/otlp/v1/traces', JSON.stringify(body)), [], 400);
    });

    it('OTLP/JSON: arbitrary JSON objects never 5xx and never write', async () => {
      await refusesAll(fc.dictionary(hostileString, anyJson, { maxKeys: 4 }), (body) => send('POST', '/otlp/v1/traces', JSON.stringify(body)), [200]);
    });

    it('OTLP/protobuf: random bytes never 5xx and never write', async () => {
      const headers = () => ({ ...auth, 'Content-Type': 'application/x-protobuf' });
      await refusesAll(fc.uint8Array({ maxLength: 2_000 }), (bytes) => send('POST', '/otlp/v1/traces', Buffer.from(bytes), headers()), [200]);
    });

    it('OTLP/protobuf: a valid export with flipped, cut or inserted bytes is never a 5xx; a refusal writes nothing', async () => {
      const damaged = fc.record({
        spans: fc.array(validOtlpSpan, { minLength: 1, maxLength: 3 }),
        damage: fc.array(fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }), how: fc.constantFrom('flip', 'cut', 'insert') }), { minLength: 1, maxLength: 4 }),
      });
      await fc.assert(
        fc.asyncProperty(damaged, async ({ spans, damage }) => {
          let bytes = Buffer.from(encodeOtlpProtobuf(spans));
          for (const { at, byte, how } of damage) {
            const i = at % (bytes.length + 1);
            if (how === 'flip' && i < bytes.length) bytes[i] ^= byte || 1;
            else if (how === 'cut') bytes = bytes.subarray(0, i);
            else bytes = Buffer.concat([bytes.subarray(0, i), Buffer.from([byte]), bytes.subarray(i)]);
          }
          const before = await snapshot();
          const res = await send('POST', '/otlp/v1/traces', bytes, { ...auth, 'Content-Type': 'application/x-protobuf' });
          // Some damage still decodes to a valid export (a changed name, say): then it is stored like any export.
          if (res.status !== 200) await expectRefused(res, before);
        }),
        PARAMS,
      );
    });

    it('compressed bodies that do not decompress, and unknown encodings, are 4xx', async () => {
      const body = fc.uint8Array({ minLength: 1, maxLength: 500 }).map((b) => Buffer.from(b));
      const encoding = fc.constantFrom('gzip', 'deflate', 'br', 'x-unknown', 'gzip, gzip', 'compress');
      const route = fc.constantFrom(
        ['/otlp/v1/traces', 'application/json'], ['/otlp/v1/traces', 'application/x-protobuf'],
        ['/tracing/spans', 'application/json'], ['/tracing/spans/query', 'application/json'], ['/observability/nodes', 'application/json'],
      );
      await fc.assert(
        fc.asyncProperty(body, encoding, route, async (bytes, contentEncoding, [to, contentType]) => {
          const before = await snapshot();
          const res = await send('POST', to, bytes, { ...auth, 'Content-Type': contentType, 'Content-Encoding': contentEncoding });
          // A few random byte strings are valid (empty) compressed streams: those are read like any body.
          await expectRefused(res, before, inflates(bytes, contentEncoding) ? [200] : []);
        }),
        PARAMS,
      );
    });
  });

  describe('raw bodies', () => {
    it('invalid UTF-8 inside an otherwise valid body is a 400 on every JSON route', async () => {
      const invalidUtf8 = fc.constantFrom([0xff], [0xfe, 0xff], [0xc3], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xf4, 0x90, 0x80, 0x80], [0x80]);
      const routes = fc.constantFrom(
        (mark: string) => ['POST', '/tracing/spans', JSON.stringify({ spans: [makeSpan({ span_name: mark })] })],
        (mark: string) => ['POST', '/tracing/spans', JSON.stringify({ spans: [makeSpan({ attributes: { [mark]: 1 } })] })],
        (mark: string) => ['PUT', '/tracing/spans', JSON.stringify({ spans: [{ ...existing[0], span_name: mark }] })],
        (mark: string) => ['POST', '/observability/nodes', JSON.stringify({ nodes: [makeNode({ node_name: mark })] })],
        (mark: string) => ['POST', '/otlp/v1/traces', JSON.stringify(otlpRequest([{ ...fc.sample(validOtlpSpan, { seed: SEED, numRuns: 1 })[0], name: mark }]))],
        (mark: string) => ['POST', '/tracing/spans/query', JSON.stringify(condition({ field: 'span_name', operator: 'is', value: mark }))],
      );
      await refusesAll(fc.tuple(routes, invalidUtf8, fc.string({ maxLength: 5 })), ([route, bytes, prefix]) => {
        const [method, path, text] = route('@@MARK@@');
        const [head, tail] = text.split('@@MARK@@');
        return send(method, path, Buffer.concat([Buffer.from(head + prefix), Buffer.from(bytes), Buffer.from(tail)]));
      }, [], 400);
    });

    it('invalid UTF-8 in a protobuf string field is a 400', async () => {
      // Two bytes replace the two-byte marker, so every length prefix stays right.
      const invalid = fc.constantFrom([0xff, 0xfe], [0xc3, 0x28], [0xed, 0xa0], [0x80, 0x80], [0xc0, 0xaf], [0x41, 0xf0]);
      const where = fc.constantFrom('name' as const, 'attribute' as const, 'scope' as const);
      await refusesAll(fc.tuple(validOtlpSpan, invalid, where), ([span, bytes, at]) => {
        const marked = { name: 'name-@@', attribute: 'v-@@', scope: 'scope-@@' }[at];
        const encoded = Buffer.from(encodeOtlpProtobuf([{ ...span, name: at === 'name' ? marked : 'name' }], at === 'attribute' ? marked : 'hello', at === 'scope' ? marked : 'fuzz'));
        // The marker with the text before it: '@@' alone is also two bytes of some generated ids
        // (a trace id 0x0040400000...), and replacing those left a valid body.
        const i = encoded.indexOf(marked) + marked.length - 2;
        encoded[i] = bytes[0];
        encoded[i + 1] = bytes[1];
        return send('POST', '/otlp/v1/traces', encoded, { ...auth, 'Content-Type': 'application/x-protobuf' });
      }, [], 400);
    });

    it('random bytes as JSON are a 400', async () => {
      const path = fc.constantFrom('/tracing/spans', '/observability/nodes', '/tracing/spans/query', '/otlp/v1/traces');
      await refusesAll(fc.tuple(path, fc.uint8Array({ minLength: 1, maxLength: 1_000 })), ([to, bytes]) => send('POST', to, Buffer.from(bytes)), [], 400);
    });

    it('any Authorization header but a live key is a 401 that reads and writes nothing', async () => {
      const header = fc.oneof(
        fc.string({ unit: 'grapheme-ascii', maxLength: 300 }).map((s) => s.replace(/[\r\n]/g, '')),
        fc.string({ maxLength: 60 }).map((k) => `ApiKey ${k}`.trimEnd()),
        fc.constant(`ApiKey ${t?.apiKey ?? ''}x`),
        fc.constant(`Bearer ${'a'.repeat(43)}`),
        fc.constant(`ApiKey tk_${'A'.repeat(5000)}`),
      );
      await refusesAll(header, (authorization) => send('POST', '/tracing/spans', JSON.stringify({ spans: [existing[0]] }), { 'Content-Type': 'application/json', Authorization: authorization }), [], 401);
    });
  });

  describe('limits', () => {
    const routes: Array<[string, string, (n: number) => string, string]> = [
      ['POST', '/tracing/spans', (n) => JSON.stringify({ spans: fc.sample(validSpan, n) }), 'application/json'],
      ['PUT', '/tracing/spans', (n) => JSON.stringify({ spans: fc.sample(validSpan, n) }), 'application/json'],
      ['DELETE', '/tracing/spans', (n) => JSON.stringify({ spans: fc.sample(validSpan, n).map(({ trace_id, span_id }) => ({ trace_id, span_id })) }), 'application/json'],
      ['POST', '/observability/nodes', (n) => JSON.stringify({ nodes: fc.sample(validNode, n) }), 'application/json'],
      ['POST', '/otlp/v1/traces', (n) => JSON.stringify(otlpRequest(fc.sample(validOtlpSpan, n))), 'application/json'],
      ['POST', '/otlp/v1/traces', (n) => Buffer.from(encodeOtlpProtobuf(fc.sample(validOtlpSpan, n))).toString('latin1'), 'application/x-protobuf'],
    ];

    const limitOf = (path: string) => (path.startsWith('/otlp/') ? MAX_OTLP_SPANS : MAX_BATCH);
    it.each(routes)(`%s %s with more items than its limit (${MAX_BATCH}; OTLP ${MAX_OTLP_SPANS}) is a 413 and writes nothing`, async (method, path, body, type) => {
      const limit = limitOf(path);
      const before = await snapshot();
      const text = body(limit + 1);
      const res = await send(method, path, type === 'application/json' ? text : Buffer.from(text, 'latin1'), { ...auth, 'Content-Type': type });
      expect(res.status).toBe(413);
      expect(errorMessageOf(res)).toMatch(new RegExp(`at most ${limit}`));
      await expectRefused(res, before);
      // Exactly at the limit is fine (PUT of new spans is a 404, DELETE of unknown keys deletes none).
      const atLimit = await send(method, path, type === 'application/json' ? body(limit) : Buffer.from(body(limit), 'latin1'), { ...auth, 'Content-Type': type });
      expect([200, 201, 404]).toContain(atLimit.status);
    });

    // Each entry walked can become a refusal: the decoders count them first, so a small body of empty entries
    // (millions fit BODY_LIMIT) is refused before any is walked, not after building a refusal for each.
    const floods: Array<[string, Record<string, unknown>]> = [
      ['spans', { resourceSpans: [{ scopeSpans: [{ spans: Array.from({ length: MAX_OTLP_SPANS + 1 }, () => ({})) }] }] }],
      ['resourceSpans', { resourceSpans: Array.from({ length: MAX_OTLP_SPANS + 1 }, () => ({})) }],
      ['scopeSpans', { resourceSpans: [{ scopeSpans: Array.from({ length: MAX_OTLP_SPANS + 1 }, () => ({})) }] }],
    ];
    it.each(floods.flatMap(([what, request]) => [[what, 'application/json', request], [what, 'application/x-protobuf', request]] as const))(
      `POST /otlp/v1/traces with more empty %s than MAX_OTLP_SPANS (${MAX_OTLP_SPANS}) as %s is a 413 and writes nothing`,
      async (what, type, request) => {
        const before = await snapshot();
        const codec = otlpTraceService.ExportTraceServiceRequest as unknown as { fromObject(o: unknown): object; encode(m: object): { finish(): Uint8Array } };
        const body = type === 'application/json' ? JSON.stringify(request) : Buffer.from(codec.encode(codec.fromObject(request)).finish());
        const res = await send('POST', '/otlp/v1/traces', body, { ...auth, 'Content-Type': type });
        expect(res.status).toBe(413);
        expect(errorMessageOf(res)).toMatch(new RegExp(`^${what}: at most ${MAX_OTLP_SPANS} per OTLP export`));
        await expectRefused(res, before);
      },
    );

    const anyRoute = [...routes.map(([method, path, , type]) => [method, path, type]), ['POST', '/tracing/spans/query', 'application/json'], ['POST', '/tracing/analytics/query', 'application/json'], ['POST', '/observability/nodes/query', 'application/json']];
    it.each(anyRoute)('%s %s with a body over BODY_LIMIT (%s) is a 413 and writes nothing', async (method, path, type) => {
      const before = await snapshot();
      const oversize = type === 'application/json' ? JSON.stringify({ spans: [makeSpan({ attributes: { big: 'x'.repeat(BODY_LIMIT_BYTES) } })] }) : Buffer.alloc(BODY_LIMIT_BYTES + 1, 0x0a);
      const res = await send(method, path, oversize, { ...auth, 'Content-Type': type });
      expect(res.status).toBe(413);
      await expectRefused(res, before);
      // A gzip body is limited after inflating, so a small bomb is refused too.
      const bomb = await send(method, path, gzipSync(Buffer.alloc(BODY_LIMIT_BYTES * 16, 0x20)), { ...auth, 'Content-Type': type, 'Content-Encoding': 'gzip' });
      expect(bomb.status).toBe(413);
      await expectRefused(bomb, before);
    });
  });

  describe('regressions found by these properties', () => {
    const cases: Array<[string, string, string, () => Buffer | string, Record<string, string>?]> = [
      ['an unpaired surrogate in span_name (was stored as U+FFFD)', 'POST', '/tracing/spans', () => JSON.stringify({ spans: [makeSpan({ span_name: 'a\ud800b' })] })],
      ['NUL in span_name (was a Postgres error without the field)', 'POST', '/tracing/spans', () => JSON.stringify({ spans: [makeSpan({ span_name: 'a\u0000b' })] })],
      ['an unpaired surrogate in node_name', 'POST', '/observability/nodes', () => JSON.stringify({ nodes: [makeNode({ node_name: 'a\udc00' })] })],
      ['year 0050 (was read as 1950)', 'POST', '/tracing/spans', () => JSON.stringify({ spans: [makeSpan({ start_time: '0050-01-01T00:00:00Z', end_time: '0050-01-01T00:00:01Z' })] })],
      ['invalid UTF-8 in a JSON body (was stored as U+FFFD)', 'POST', '/tracing/spans', () => Buffer.concat([Buffer.from(JSON.stringify({ spans: [makeSpan({ span_name: 'A' })] }).split('"A"')[0] + '"'), Buffer.from([0xff]), Buffer.from(`"${JSON.stringify({ spans: [makeSpan({ span_name: 'A' })] }).split('"A"')[1]}`)])],
      ['a gzip body that does not inflate (was a 500)', 'POST', '/tracing/spans', () => Buffer.from('not gzip'), { 'Content-Encoding': 'gzip' }],
      ['a brotli protobuf body that does not inflate (was a 500)', 'POST', '/otlp/v1/traces', () => Buffer.from('not brotli'), { 'Content-Type': 'application/x-protobuf', 'Content-Encoding': 'br' }],
    ];
    it.each(cases)('%s', async (_, method, path, body, headers = {}) => {
      const before = await snapshot();
      const res = await send(method, path, body(), { ...json, ...headers });
      expect(res.status).toBe(400);
      await expectRefused(res, before);
    });
  });
});

/** The protobuf encoding of valid OTLP spans (hex ids as bytes; fromObject reads the decimal nanosecond strings exactly). */
function encodeOtlpProtobuf(spans: Array<Record<string, unknown>>, attributeText = 'hello', scopeName = 'fuzz'): Uint8Array {
  const codec = otlpTraceService.ExportTraceServiceRequest as unknown as { fromObject(o: unknown): object; encode(m: object): { finish(): Uint8Array } };
  const toProto = (span: Record<string, unknown>) => ({
    traceId: Buffer.from(String(span.traceId), 'hex'),
    spanId: Buffer.from(String(span.spanId), 'hex'),
    name: span.name,
    kind: span.kind,
    startTimeUnixNano: span.startTimeUnixNano,
    endTimeUnixNano: span.endTimeUnixNano,
    attributes: [{ key: 'text', value: { stringValue: attributeText } }],
    status: { code: 1 },
  });
  return codec.encode(codec.fromObject({
    resourceSpans: [{ resource: { attributes: [] }, scopeSpans: [{ scope: { name: scopeName }, spans: spans.map(toProto) }] }],
  })).finish();
}

function inflates(bytes: Buffer, encoding: string): boolean {
  const inflate = { gzip: gunzipSync, deflate: inflateSync, br: brotliDecompressSync }[encoding];
  try {
    return inflate !== undefined && (inflate(bytes), true);
  } catch {
    return false;
  }
}
