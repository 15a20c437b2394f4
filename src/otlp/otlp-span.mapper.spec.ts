import { OtlpDecodeError, OtlpKeyValue, OtlpSpan, decodeOtlpJson, decodeOtlpProtobuf, otlpTraceService } from './otlp-decoder';
import {
  mapOtlpSpans, nanosToIso, spanIdToNodeId, toNodeInput, toSpanInput, traceIdToTreeId, unflattenAttributes,
} from './otlp-span.mapper';

const TRACE = '5b8efff798038103d269b633813fc60c';
const ROOT = 'eee19b7ec3c1b174';
const CHILD = '0102030405060708';

const kv = (key: string, value: OtlpKeyValue['value']): OtlpKeyValue => ({ key, value });

function otlpSpan(overrides: Partial<OtlpSpan> = {}): OtlpSpan {
  return {
    path: 'resourceSpans[0].scopeSpans[0].spans[0]',
    resource: { attributes: [kv('service.name', 'checkout'), kv('service.version', '2.0')] },
    scope: { name: 'my-lib', version: '' },
    traceId: TRACE,
    spanId: CHILD,
    parentSpanId: ROOT,
    name: 'chat gpt-4o',
    kind: 3,
    startTimeUnixNano: 1700000000123456789n,
    endTimeUnixNano: 1700000001000000999n,
    attributes: [
      kv('gen_ai.operation.name', 'chat'),
      kv('gen_ai.usage.input_tokens', 3),
      kv('gen_ai.usage.output_tokens', 5),
      kv('http.status_code', 200),
    ],
    events: [
      { name: 'retry', timeUnixNano: 1700000000200000000n, attributes: [kv('attempt', 1)] },
      {
        name: 'exception',
        timeUnixNano: 1700000000300000000n,
        attributes: [kv('exception.type', 'RateLimitError'), kv('exception.message', 'slow down'), kv('exception.stacktrace', 'at x')],
      },
    ],
    links: [{ traceId: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', spanId: 'bbbbbbbbbbbbbbbb', attributes: [kv('link.kind', 'follows')] }],
    status: { code: 2, message: 'rate limited' },
    ...overrides,
  };
}

describe('nanosToIso', () => {
  it.each([
    [1700000000123456789n, '2023-11-14T22:13:20.123456Z'],
    [1700000000123456000n, '2023-11-14T22:13:20.123456Z'],
    [1700000000000000999n, '2023-11-14T22:13:20.000000Z'],
    [1700000000000001000n, '2023-11-14T22:13:20.000001Z'],
    [1n, '1970-01-01T00:00:00.000000Z'],
    [10413791999999999999n, '2299-12-31T23:59:59.999999Z'],
  ])('%s ns -> %s (truncating below the microsecond)', (nanos, iso) => {
    expect(nanosToIso(nanos)).toBe(iso);
  });
});

describe('ids', () => {
  it('turns a span id into a node uuid and a trace id into a tree uuid', () => {
    expect(spanIdToNodeId('eee19b7ec3c1b174')).toBe('00000000-0000-0000-eee1-9b7ec3c1b174');
    expect(traceIdToTreeId(TRACE)).toBe('5b8efff7-9803-8103-d269-b633813fc60c');
  });
});

describe('unflattenAttributes', () => {
  it('nests dotted keys', () => {
    expect(
      unflattenAttributes([kv('gen_ai.usage.input_tokens', 3), kv('gen_ai.usage.output_tokens', 4), kv('gen_ai.system', 'openai'), kv('plain', true)]),
    ).toEqual({ gen_ai: { usage: { input_tokens: 3, output_tokens: 4 }, system: 'openai' }, plain: true });
  });

  it('keeps the rest of a key literal when its path runs into a value, whatever the input order', () => {
    const expected = { a: 1, 'a.b': 2, x: { y: 'v', 'y.z': [1] } };
    expect(unflattenAttributes([kv('a', 1), kv('a.b', 2), kv('x.y', 'v'), kv('x.y.z', [1])])).toEqual(expected);
    expect(unflattenAttributes([kv('x.y.z', [1]), kv('a.b', 2), kv('x.y', 'v'), kv('a', 1)])).toEqual(expected);
  });

  it('lets the last of duplicate keys win', () => {
    expect(unflattenAttributes([kv('k', 1), kv('other', 0), kv('k', 2)])).toEqual({ k: 2, other: 0 });
  });

  it('never splits keys with an empty segment', () => {
    expect(unflattenAttributes([kv('a..b', 1), kv('.c', 2), kv('d.', 3), kv('', 4)])).toEqual({ 'a..b': 1, '.c': 2, 'd.': 3, '': 4 });
  });

  it('adds dotted keys to a copy of a kvlist value, leaving the decoded value untouched', () => {
    const kvlist = { x: 1 };
    const attributes = [kv('a', kvlist), kv('a.y', 2)];
    expect(unflattenAttributes(attributes)).toEqual({ a: { x: 1, y: 2 } });
    expect(kvlist).toEqual({ x: 1 });
  });

  it('keeps a dotted key that ends on a member a kvlist sent literal where the kvlist starts, losing neither', () => {
    expect(unflattenAttributes([kv('a.b', 2), kv('a', { b: 1 })])).toEqual({ a: { b: 1 }, 'a.b': 2 });
    expect(unflattenAttributes([kv('a.b', { c: 1 }), kv('a.b.c', 2), kv('a.x', 3)])).toEqual({ a: { b: { c: 1 }, 'b.c': 2, x: 3 } });
    expect(unflattenAttributes([kv('a', { b: { c: 1 } }), kv('a.b.c', 2), kv('a.b.d', 4)])).toEqual({ a: { b: { c: 1, d: 4 }, 'b.c': 2 } });
    // A duplicate key still replaces its own earlier value, where that went.
    expect(unflattenAttributes([kv('a', { b: 1 }), kv('a.b', 2), kv('a.b', 3)])).toEqual({ a: { b: 1 }, 'a.b': 3 });
  });

  it('drops a key at or under a key placed last, whatever shape it had, so the one placed last replaces it whole', () => {
    const scope = kv('otel.scope', { name: 'lib' });
    expect(unflattenAttributes([kv('otel.scope', { name: 'x' }), kv('otel.scope.name', 'bar')], [scope])).toEqual({ otel: { scope: { name: 'lib' } } });
    expect(unflattenAttributes([kv('otel.scope', 'x'), kv('otel.scope.name', 'bar'), kv('otel.other', 1)], [scope])).toEqual({ otel: { scope: { name: 'lib' }, other: 1 } });
    expect(unflattenAttributes([kv('otel', { resource: 1 }), kv('otel.resource', 5)], [kv('otel.resource', { r: 1 })])).toEqual({ otel: { resource: { r: 1 } } });
    // A key with an empty segment is never split, so it is under nothing, and kept.
    expect(unflattenAttributes([kv('otel.scope..x', 1), kv('otel.scope.', 2)], [scope])).toEqual({ 'otel.scope..x': 1, 'otel.scope.': 2, otel: { scope: { name: 'lib' } } });
  });

  it('stores "__proto__" as a plain key', () => {
    const result = unflattenAttributes([kv('__proto__.polluted', 1), kv('x.__proto__', 2)]);
    expect(Object.getPrototypeOf(result)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(JSON.parse(JSON.stringify(result))).toEqual(JSON.parse('{"__proto__":{"polluted":1},"x":{"__proto__":2}}'));
  });
});

describe('toSpanInput', () => {
  it('maps every field', () => {
    expect(toSpanInput(otlpSpan())).toEqual({
      trace_id: TRACE,
      span_id: CHILD,
      parent_id: ROOT,
      trace_type: 'invocation',
      span_type: 'chat',
      span_kind: 'SPAN_KIND_CLIENT',
      span_name: 'chat gpt-4o',
      start_time: '2023-11-14T22:13:20.123456Z',
      end_time: '2023-11-14T22:13:21.000000Z',
      status_code: 'STATUS_CODE_ERROR',
      status_message: 'rate limited',
      attributes: {
        gen_ai: { operation: { name: 'chat' }, usage: { input_tokens: 3, output_tokens: 5 } },
        http: { status_code: 200 },
        otel: {
          resource: { service: { name: 'checkout', version: '2.0' } },
          scope: { name: 'my-lib', version: null },
        },
      },
      references: null,
      links: [{ trace_id: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', span_id: 'bbbbbbbbbbbbbbbb', attributes: { link: { kind: 'follows' } } }],
      hashes: null,
      events: [
        { name: 'retry', timestamp: '2023-11-14T22:13:20.200000Z', attributes: { attempt: 1 } },
        {
          name: 'exception',
          timestamp: '2023-11-14T22:13:20.300000Z',
          attributes: { exception: { type: 'RateLimitError', message: 'slow down', stacktrace: 'at x' } },
        },
      ],
      exception: { type: 'RateLimitError', message: 'slow down', stacktrace: 'at x', timestamp: '2023-11-14T22:13:20.300000Z' },
    });
  });

  it('maps a bare root span with nulls, not empty lists', () => {
    const span = toSpanInput(
      otlpSpan({ spanId: ROOT, parentSpanId: null, kind: 0, attributes: [], events: [], links: [], status: { code: 0, message: '' } }),
    );
    expect(span).toMatchObject({
      parent_id: null,
      span_type: 'unknown',
      span_kind: 'SPAN_KIND_UNSPECIFIED',
      status_code: 'STATUS_CODE_UNSET',
      status_message: null,
      links: null,
      events: null,
      exception: null,
    });
    expect(span.attributes).toEqual({ otel: { resource: { service: { name: 'checkout', version: '2.0' } }, scope: { name: 'my-lib', version: null } } });
  });

  it('takes the exception from the last "exception" event', () => {
    const event = (message: string, at: bigint) => ({ name: 'exception', timeUnixNano: at, attributes: [kv('exception.message', message)] });
    const span = toSpanInput(otlpSpan({ events: [event('first', 1n), event('last', 2000n)] }));
    expect(span.exception).toEqual({ type: null, message: 'last', stacktrace: null, timestamp: '1970-01-01T00:00:00.000002Z' });
  });

  it('keeps a null timestamp for an event without a time, in the events and in the exception', () => {
    const span = toSpanInput(otlpSpan({ events: [{ name: 'exception', timeUnixNano: null, attributes: [kv('exception.type', 'E')] }] }));
    expect(span.events).toEqual([{ name: 'exception', timestamp: null, attributes: { exception: { type: 'E' } } }]);
    expect(span.exception).toEqual({ type: 'E', message: null, stacktrace: null, timestamp: null });
    expect(toNodeInput(otlpSpan({ events: [{ name: 'e', timeUnixNano: null, attributes: [] }] })).otel).toMatchObject({ events: [{ name: 'e', timestamp: null, attributes: {} }] });
  });

  it('lets the receiver keys otel.resource and otel.scope replace span attributes with those keys or under them', () => {
    const expected = {
      resource: { service: { name: 'checkout', version: '2.0' } },
      scope: { name: 'my-lib', version: null },
      status_code: 'ERROR',
    };
    const span = toSpanInput(otlpSpan({ attributes: [kv('otel.scope', 'mine'), kv('otel.status_code', 'ERROR')] }));
    expect(span.attributes.otel).toEqual(expected);
    const under = toSpanInput(otlpSpan({
      attributes: [kv('otel.scope.name', 'other'), kv('otel.scope.extra', 1), kv('otel.resource.service.name', 'x'), kv('otel.status_code', 'ERROR')],
    }));
    expect(under.attributes.otel).toEqual(expected);
  });

  it.each([
    [[kv('ag.type.node', 'workflow'), kv('gen_ai.operation.name', 'chat')], 'workflow'],
    [[kv('ag.type.node', 'nonsense'), kv('gen_ai.operation.name', 'embeddings')], 'embedding'],
    [[kv('gen_ai.operation.name', 'text_completion')], 'completion'],
    [[kv('gen_ai.operation.name', 'execute_tool')], 'tool'],
    [[kv('gen_ai.operation.name', 'invoke_agent')], 'agent'],
    [[kv('gen_ai.operation.name', 'constructor')], 'unknown'],
    [[kv('gen_ai.operation.name', 1)], 'unknown'],
    [[], 'unknown'],
  ])('span_type from %j is %s', (attributes, expected) => {
    expect(toSpanInput(otlpSpan({ attributes })).span_type).toBe(expected);
    expect(toNodeInput(otlpSpan({ attributes })).node_type).toBe(expected);
  });

  it('takes trace_type from ag.type.trace when it names one', () => {
    expect(toSpanInput(otlpSpan({ attributes: [kv('ag.type.trace', 'annotation')] })).trace_type).toBe('annotation');
    expect(toSpanInput(otlpSpan({ attributes: [kv('ag.type.trace', 'other')] })).trace_type).toBe('invocation');
  });
});

describe('toNodeInput', () => {
  it('maps a child span', () => {
    const attributes = {
      gen_ai: { operation: { name: 'chat' }, usage: { input_tokens: 3, output_tokens: 5 } },
      http: { status_code: 200 },
    };
    expect(toNodeInput(otlpSpan())).toEqual({
      node_id: '00000000-0000-0000-0102-030405060708',
      tree_id: '5b8efff7-9803-8103-d269-b633813fc60c',
      root_id: null,
      parent_id: '00000000-0000-0000-eee1-9b7ec3c1b174',
      node_name: 'chat gpt-4o',
      node_type: 'chat',
      time_start: '2023-11-14T22:13:20.123456Z',
      time_end: '2023-11-14T22:13:21.000000Z',
      status: { code: 'ERROR', message: 'rate limited' },
      data: null,
      metrics: { unit: { tokens: { prompt: 3, completion: 5, total: 8 } } },
      meta: { gen_ai: { operation: { name: 'chat' } }, http: { status_code: 200 } },
      refs: null,
      exception: { type: 'RateLimitError', message: 'slow down', stacktrace: 'at x', timestamp: '2023-11-14T22:13:20.300000Z' },
      links: [{ trace_id: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', span_id: 'bbbbbbbbbbbbbbbb', attributes: { link: { kind: 'follows' } } }],
      otel: {
        kind: 'SPAN_KIND_CLIENT',
        attributes,
        resource: { service: { name: 'checkout', version: '2.0' } },
        scope: { name: 'my-lib', version: null },
        events: [
          { name: 'retry', timestamp: '2023-11-14T22:13:20.200000Z', attributes: { attempt: 1 } },
          {
            name: 'exception',
            timestamp: '2023-11-14T22:13:20.300000Z',
            attributes: { exception: { type: 'RateLimitError', message: 'slow down', stacktrace: 'at x' } },
          },
        ],
      },
    });
  });

  it('makes a root span its own root', () => {
    const node = toNodeInput(otlpSpan({ spanId: ROOT, parentSpanId: null }));
    expect(node.root_id).toBe('00000000-0000-0000-eee1-9b7ec3c1b174');
    expect(node.parent_id).toBeNull();
  });

  it('takes data from ag.data and metrics from ag.metrics, leaving the rest as meta', () => {
    const node = toNodeInput(
      otlpSpan({
        attributes: [
          kv('ag.data.inputs', { q: 'hi' }),
          kv('ag.data.outputs', 'hello'),
          kv('ag.metrics.costs.total', 0.5),
          kv('ag.type.node', 'llm'),
          kv('gen_ai.usage.input_tokens', 3),
        ],
      }),
    );
    expect(node.data).toEqual({ inputs: { q: 'hi' }, outputs: 'hello' });
    expect(node.metrics).toEqual({ costs: { total: 0.5 } });
    expect(node.meta).toEqual({ ag: { type: { node: 'llm' } }, gen_ai: { usage: { input_tokens: 3 } } });
    expect(node.node_type).toBe('llm');
  });

  it('takes only the token counts it uses from gen_ai.usage: the rest stays in meta', () => {
    const node = toNodeInput(
      otlpSpan({
        attributes: [
          kv('gen_ai.usage.input_tokens', 10),
          kv('gen_ai.usage.cache_read_input_tokens', 4),
          // The decoder gives an int64 past 2^53 as its decimal string.
          kv('gen_ai.usage.output_tokens', '9007199254740993'),
        ],
      }),
    );
    // The total is not known: the output count is there, past what a number holds.
    expect(node.metrics).toEqual({ unit: { tokens: { prompt: 10, completion: null, total: null } } });
    expect(node.meta).toEqual({ gen_ai: { usage: { cache_read_input_tokens: 4, output_tokens: '9007199254740993' } } });
  });

  it('gives no total when the sum of the counts is past 2^53 (rounded), and the sum when only one count is sent', () => {
    const node = toNodeInput(otlpSpan({ attributes: [kv('gen_ai.usage.input_tokens', 2 ** 53 - 1), kv('gen_ai.usage.output_tokens', 2)] }));
    expect(node.metrics).toEqual({ unit: { tokens: { prompt: 2 ** 53 - 1, completion: 2, total: null } } });
    expect(node.meta).toBeNull();
    expect(toNodeInput(otlpSpan({ attributes: [kv('gen_ai.usage.output_tokens', 7)] })).metrics).toEqual({ unit: { tokens: { prompt: null, completion: 7, total: 7 } } });
  });

  it('leaves data, metrics and meta null without attributes', () => {
    const node = toNodeInput(otlpSpan({ attributes: [] }));
    expect([node.data, node.metrics, node.meta]).toEqual([null, null, null]);
  });
});

describe('mapOtlpSpans', () => {
  const deep = (segments: number) => Array.from({ length: segments }, () => 'k').join('.');
  it.each([
    ['an empty name', { name: '' }, 'resourceSpans[0].scopeSpans[0].spans[0].name: must not be empty'],
    ['a name over 1024 characters', { name: 'n'.repeat(1025) }, 'resourceSpans[0].scopeSpans[0].spans[0].name: String must contain at most 1024 character(s)'],
    ['a status message over 10,000 characters', { status: { code: 2, message: 'm'.repeat(10_001) } }, 'resourceSpans[0].scopeSpans[0].spans[0].status.message: String must contain at most 10000 character(s)'],
    ['a span attribute 32 deep in the node', { attributes: [kv(deep(32), 1)] }, /^resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]\.attributes: is nested deeper than 32 levels \(as stored in the node: otel\.attributes\.k/],
    ['a resource attribute', { resource: { attributes: [kv(deep(31), 1)] } }, /^resourceSpans\[0\]\.resource\.attributes: is nested deeper than 32 levels/],
    ['an event attribute', { events: [{ name: 'e', timeUnixNano: 1n, attributes: [kv(deep(30), 1)] }] }, /^resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]\.events\[0\]: is nested deeper/],
  ])('refuses what REST would refuse: %s, naming the OTLP field; that span alone', (_, overrides, message) => {
    const good = otlpSpan({ spanId: ROOT, parentSpanId: null, name: 'good' });
    const { spans, nodes, rejected } = mapOtlpSpans([good, otlpSpan(overrides as Partial<OtlpSpan>)]);
    expect(spans.map((s) => s.span_name)).toEqual(['good']);
    expect(nodes.map((n) => n.node_name)).toEqual(['good']);
    expect(rejected).toEqual([{ error: expect.any(OtlpDecodeError), spans: 1 }]);
    expect(rejected[0].error.message).toMatch(message);
  });

  it('takes a span at the REST limits', () => {
    const { spans, rejected } = mapOtlpSpans([otlpSpan({ name: 'n'.repeat(1024), status: { code: 2, message: 'm'.repeat(10_000) }, attributes: [kv(deep(31), 1)] })]);
    expect([spans.length, rejected]).toEqual([1, []]);
  });

  it('keeps the earlier copy of a span whose later copy is refused', () => {
    const { spans, rejected } = mapOtlpSpans([otlpSpan({ name: 'kept' }), otlpSpan({ name: '' })]);
    expect(spans.map((s) => s.span_name)).toEqual(['kept']);
    expect(rejected).toHaveLength(1);
  });

  it('keeps the last copy of a repeated span and of a repeated node id', () => {
    const first = otlpSpan({ name: 'first' });
    const other = otlpSpan({ spanId: ROOT, parentSpanId: null, name: 'root' });
    const again = otlpSpan({ name: 'again' });
    const otherTrace = otlpSpan({ traceId: 'cccccccccccccccccccccccccccccccc', name: 'other trace' });
    const { spans, nodes } = mapOtlpSpans([first, other, again, otherTrace]);
    expect(spans.map((s) => s.span_name)).toEqual(['root', 'again', 'other trace']);
    expect(nodes.map((n) => n.node_name)).toEqual(['root', 'other trace']);
  });

  it('maps a request to the same spans and nodes from OTLP/JSON and from protobuf', () => {
    const attributes = [
      { key: 'gen_ai.operation.name', value: { stringValue: 'chat' } },
      { key: 'gen_ai.usage.input_tokens', value: { intValue: '12' } },
      { key: 'big', value: { intValue: '9223372036854775807' } },
      { key: 'ratio', value: { doubleValue: 0.5 } },
      { key: 'flag', value: { boolValue: true } },
      { key: 'raw', value: { bytesValue: '3q2+7w==' } },
      { key: 'tags', value: { arrayValue: { values: [{ stringValue: 'a' }, { doubleValue: 'Infinity' }] } } },
      { key: 'ag.data', value: { kvlistValue: { values: [{ key: 'inputs', value: { stringValue: 'q' } }] } } },
    ];
    const request = {
      resourceSpans: [
        {
          resource: { attributes: [{ key: 'service.name', value: { stringValue: 'svc' } }] },
          scopeSpans: [
            {
              scope: { name: 'lib', version: '1' },
              spans: [
                {
                  traceId: TRACE, spanId: ROOT, name: 'root', kind: 2,
                  startTimeUnixNano: '1700000000000000001', endTimeUnixNano: '1700000009999999999',
                  status: {},
                },
                {
                  traceId: TRACE, spanId: CHILD, parentSpanId: ROOT, name: 'child', kind: 3,
                  startTimeUnixNano: '1700000000123456789', endTimeUnixNano: '1700000001123456789',
                  attributes,
                  events: [{ name: 'exception', timeUnixNano: '1700000000500000000', attributes: [{ key: 'exception.type', value: { stringValue: 'E' } }] }],
                  links: [{ traceId: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', spanId: 'bbbbbbbbbbbbbbbb' }],
                  status: { code: 2, message: 'failed' },
                },
              ],
            },
          ],
        },
      ],
    };
    const codec = otlpTraceService.ExportTraceServiceRequest as unknown as {
      fromObject(o: unknown): object;
      encode(m: object): { finish(): Uint8Array };
    };
    const protoRequest = JSON.parse(JSON.stringify(request), (key, value) =>
      ['traceId', 'spanId', 'parentSpanId'].includes(key) ? Buffer.from(value, 'hex') : value,
    );
    const protobuf = Buffer.from(codec.encode(codec.fromObject(protoRequest)).finish());

    const fromJson = mapOtlpSpans(decodeOtlpJson(request).spans);
    const fromProtobuf = mapOtlpSpans(decodeOtlpProtobuf(protobuf).spans);
    expect(fromProtobuf).toEqual(fromJson);
    expect(fromJson.spans).toHaveLength(2);
    expect(fromJson.spans[1].attributes).toMatchObject({
      big: '9223372036854775807',
      ratio: 0.5,
      flag: true,
      raw: '3q2+7w==',
      tags: ['a', 'Infinity'],
    });
    expect(fromJson.nodes[1].data).toEqual({ inputs: 'q' });
  });
});
