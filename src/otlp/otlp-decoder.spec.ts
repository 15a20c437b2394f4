import { MAX_RESOURCE_ATTRIBUTE_BYTES, MAX_RESOURCE_COPY_BYTES, MAX_SCOPE_FIELD_LENGTH, OtlpDecodeError, OtlpExport, OtlpSpan, OtlpTooLargeError, decodeOtlpJson, decodeOtlpProtobuf, otlpTraceService } from './otlp-decoder';

const { ExportTraceServiceRequest } = otlpTraceService;

const TRACE = '5b8efff798038103d269b633813fc60c';
const SPAN = 'eee19b7ec3c1b174';
const PARENT = '0102030405060708';
const LINKED_TRACE = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa';
const LINKED_SPAN = 'bbbbbbbbbbbbbbbb';

/** An OTLP/JSON span; `overrides` replace fields (undefined deletes one). */
function jsonSpan(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const span: Record<string, unknown> = {
    traceId: TRACE.toUpperCase(),
    spanId: SPAN,
    parentSpanId: PARENT,
    name: 'llm call',
    kind: 3,
    startTimeUnixNano: '1700000000123456789',
    endTimeUnixNano: '1700000001000000000',
    attributes: [{ key: 'gen_ai.operation.name', value: { stringValue: 'chat' } }],
    events: [
      {
        name: 'exception',
        timeUnixNano: '1700000000500000000',
        attributes: [{ key: 'exception.type', value: { stringValue: 'TypeError' } }],
      },
    ],
    links: [{ traceId: LINKED_TRACE, spanId: LINKED_SPAN, attributes: [{ key: 'why', value: { stringValue: 'retry' } }] }],
    status: { code: 2, message: 'boom' },
    ...overrides,
  };
  for (const [key, value] of Object.entries(overrides)) if (value === undefined) delete span[key];
  return span;
}

function jsonRequest(spans: Record<string, unknown>[]): Record<string, unknown> {
  return {
    resourceSpans: [
      {
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'checkout' } }] },
        scopeSpans: [{ scope: { name: 'my-lib', version: '1.2.3' }, spans }],
      },
    ],
  };
}

const UNSAFE = 'a JSON number past 2^53 loses precision, so send int64 values as decimal strings, as OTLP/JSON encodes them';

const ID_FIELDS = new Set(['traceId', 'spanId', 'parentSpanId']);

/**
 * The protobuf encoding of an OTLP/JSON request, built by the generated code:
 * fromObject reads proto3 JSON except that OTLP ids are hex rather than base64.
 */
function toProtobuf(json: unknown): Buffer {
  const convert = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(convert);
    if (typeof value !== 'object' || value === null) return value;
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, ID_FIELDS.has(k) && typeof v === 'string' ? Buffer.from(v, 'hex') : convert(v)]),
    );
  };
  const codec = ExportTraceServiceRequest as unknown as { fromObject(o: unknown): object; encode(m: object): { finish(): Uint8Array } };
  return Buffer.from(codec.encode(codec.fromObject(convert(json))).finish());
}

/** The error of a body that cannot be read as an export at all. */
function refusedWhole(decode: () => unknown): string {
  try {
    decode();
  } catch (error) {
    expect(error).toBeInstanceOf(OtlpDecodeError);
    return (error as Error).message;
  }
  throw new Error('expected an OtlpDecodeError');
}

/** The message of a one-span export's refusal of its span. */
function spanRefusal(decoded: OtlpExport): string {
  expect(decoded.spans).toEqual([]);
  expect(decoded.rejected).toEqual([{ error: expect.any(OtlpDecodeError), spans: 1 }]);
  return decoded.rejected[0].error.message;
}

const jsonError = (span: Record<string, unknown>) => spanRefusal(decodeOtlpJson(jsonRequest([span])));
const protobufError = (span: Record<string, unknown>) => spanRefusal(decodeOtlpProtobuf(toProtobuf(jsonRequest([span]))));
const messages = (decoded: OtlpExport) => decoded.rejected.map((r) => [r.error.message, r.spans]);
const P = 'resourceSpans[0].scopeSpans[0].spans[0]';

describe('decodeOtlpJson', () => {
  it('normalizes a span: lowercase hex ids, bigint nanoseconds, enum numbers', () => {
    const expected: OtlpSpan = {
      path: 'resourceSpans[0].scopeSpans[0].spans[0]',
      resource: { attributes: [{ key: 'service.name', value: 'checkout' }] },
      scope: { name: 'my-lib', version: '1.2.3' },
      traceId: TRACE,
      spanId: SPAN,
      parentSpanId: PARENT,
      name: 'llm call',
      kind: 3,
      startTimeUnixNano: 1700000000123456789n,
      endTimeUnixNano: 1700000001000000000n,
      attributes: [{ key: 'gen_ai.operation.name', value: 'chat' }],
      events: [{ name: 'exception', timeUnixNano: 1700000000500000000n, attributes: [{ key: 'exception.type', value: 'TypeError' }] }],
      links: [{ traceId: LINKED_TRACE, spanId: LINKED_SPAN, attributes: [{ key: 'why', value: 'retry' }] }],
      status: { code: 2, message: 'boom' },
    };
    expect(decodeOtlpJson(jsonRequest([jsonSpan()]))).toEqual({ spans: [expected], rejected: [], ignored: [] });
  });

  it('accepts enum names, numeric times, an empty parent id and absent optional fields', () => {
    const [span] = decodeOtlpJson(
      jsonRequest([
        jsonSpan({
          kind: 'SPAN_KIND_SERVER',
          status: { code: 'STATUS_CODE_OK' },
          startTimeUnixNano: 1_000_000_000,
          endTimeUnixNano: Number.MAX_SAFE_INTEGER,
          parentSpanId: '',
          attributes: null,
          events: undefined,
          links: undefined,
          name: undefined,
        }),
      ]),
    ).spans;
    expect(span).toMatchObject({
      kind: 2,
      status: { code: 1, message: '' },
      startTimeUnixNano: 1_000_000_000n,
      endTimeUnixNano: BigInt(Number.MAX_SAFE_INTEGER),
      parentSpanId: null,
      attributes: [],
      events: [],
      links: [],
      name: '',
    });
  });

  it('takes times sent as JSON numbers past 2^53, as OTLP/JSON receivers must, at the double they arrive as', () => {
    // Exporters that send numbers: every time since 1970-04-15 is past 2^53, and arrives rounded (at most 128 ns today).
    const [span] = decodeOtlpJson(
      jsonRequest([jsonSpan({ startTimeUnixNano: 1795000000000000999, endTimeUnixNano: 1795000000500000000, events: [{ name: 'e', timeUnixNano: 1795000000250000000 }] })]),
    ).spans;
    // The doubles' exact values: ...0999 arrived as ...1024, ...250000000 as ...249999872.
    expect(span).toMatchObject({
      startTimeUnixNano: 1795000000000001024n,
      endTimeUnixNano: 1795000000500000000n,
      events: [{ name: 'e', timeUnixNano: 1795000000249999872n }],
    });
  });

  it('reads an event without a time (absent or 0, OTLP\'s "unset") as null, in both encodings', () => {
    const request = jsonRequest([jsonSpan({ events: [{ name: 'absent' }, { name: 'zero', timeUnixNano: '0' }, { name: 'set', timeUnixNano: '5' }] })]);
    const [span] = decodeOtlpJson(request).spans;
    expect(span.events.map((e) => e.timeUnixNano)).toEqual([null, null, 5n]);
    expect(decodeOtlpProtobuf(toProtobuf(request)).spans).toEqual([span]);
  });

  it('keeps a link to an invalid span context (ids empty or all zeros) with null ids, and its span, in both encodings', () => {
    const links = [
      { traceId: '00000000000000000000000000000000', spanId: '0000000000000000', attributes: [{ key: 'messaging.message.id', value: { stringValue: 'm1' } }] },
      { traceId: '', spanId: '' },
      { traceId: LINKED_TRACE, spanId: LINKED_SPAN },
    ];
    const request = jsonRequest([jsonSpan({ links })]);
    const decoded = decodeOtlpJson(request);
    expect(decoded.rejected).toEqual([]);
    expect(decoded.spans[0].links).toEqual([
      { traceId: null, spanId: null, attributes: [{ key: 'messaging.message.id', value: 'm1' }] },
      { traceId: null, spanId: null, attributes: [] },
      { traceId: LINKED_TRACE, spanId: LINKED_SPAN, attributes: [] },
    ]);
    expect(decodeOtlpProtobuf(toProtobuf(request)).spans).toEqual(decoded.spans);
  });

  it('answers an empty request with no spans', () => {
    const none = { spans: [], rejected: [], ignored: [] };
    expect(decodeOtlpJson({})).toEqual(none);
    expect(decodeOtlpJson({ resourceSpans: [] })).toEqual(none);
    expect(decodeOtlpJson({ resourceSpans: [{ scopeSpans: [{ spans: [] }] }] })).toEqual(none);
  });

  it('notes a level without the field its spans are under that holds a list under an unknown field instead (proto field names, a pre-1.0 exporter\'s)', () => {
    const span = jsonSpan();
    const note = (path: string, nested: string, fields: string, why = '') =>
      `${path}: no ${nested}, but a list under a field this receiver does not know (${fields}), which was ignored${why}`;
    const camel = ': OTLP/JSON names fields in lowerCamelCase (resourceSpans, not resource_spans)';
    expect(decodeOtlpJson({ resource_spans: [{ scope_spans: [{ spans: [span] }] }] })).toEqual({ spans: [], rejected: [], ignored: [note('body', 'resourceSpans', '"resource_spans"', camel)] });
    // As a pre-1.0 exporter sends it: its resource beside the old name.
    const resource = { attributes: [{ key: 'service.name', value: { stringValue: 'old' } }] };
    expect(decodeOtlpJson({ resourceSpans: [{ resource, instrumentationLibrarySpans: [{ spans: [span] }] }] }).ignored).toEqual([
      note('resourceSpans[0]', 'scopeSpans', '"instrumentationLibrarySpans"', ': instrumentationLibrarySpans is what exporters before OTLP 1.0 sent, renamed scopeSpans since'),
    ]);
    expect(decodeOtlpJson({ resourceSpans: [{ resource, scope_spans: [{ spans: [span] }] }] }).ignored).toEqual([note('resourceSpans[0]', 'scopeSpans', '"scope_spans"', camel)]);
    expect(decodeOtlpJson({ resourceSpans: [{ scopeSpans: [{ scope: {}, Spans: [span] }] }] }).ignored).toEqual([note('resourceSpans[0].scopeSpans[0]', 'spans', '"Spans"')]);
    // Beside the field spans are under, without a list, with an empty one, or with nothing at all: nothing to note.
    expect(decodeOtlpJson({ ...jsonRequest([span]), somethingNew: [1] }).ignored).toEqual([]);
    expect(decodeOtlpJson({ resourceSpans: [{ resource, foo: { a: 1 } }, { scopeSpans: [{ scope: {}, bar: 1 }] }, { instrumentationLibrarySpans: [] }] }).ignored).toEqual([]);
    expect(decodeOtlpJson({ resourceSpans: [{}, { scopeSpans: [{}] }] }).ignored).toEqual([]);
    // Protobuf has no field names to get wrong.
    expect(decodeOtlpProtobuf(toProtobuf(jsonRequest([span]))).ignored).toEqual([]);
  });

  it('ignores unknown fields, as OTLP/JSON receivers must', () => {
    expect(decodeOtlpJson(jsonRequest([jsonSpan({ somethingNew: { x: 1 } })])).spans).toHaveLength(1);
  });

  it('refuses a bad span alone, naming it by its full path, and decodes the others', () => {
    const request = {
      resourceSpans: [
        {
          scopeSpans: [
            { spans: [jsonSpan()] },
            { spans: [jsonSpan(), jsonSpan(), jsonSpan(), jsonSpan({ traceId: 'abc' })] },
          ],
        },
      ],
    };
    const decoded = decodeOtlpJson(request);
    expect(decoded.spans.map((span) => span.path)).toEqual([
      'resourceSpans[0].scopeSpans[0].spans[0]',
      'resourceSpans[0].scopeSpans[1].spans[0]',
      'resourceSpans[0].scopeSpans[1].spans[1]',
      'resourceSpans[0].scopeSpans[1].spans[2]',
    ]);
    expect(messages(decoded)).toEqual([['resourceSpans[0].scopeSpans[1].spans[3].traceId: must be 32 hex characters', 1]]);
  });

  it('refuses a bad resource or scope with every span under it, and decodes the rest', () => {
    const badValue = [{ key: 'k', value: 'v' }];
    const request = {
      resourceSpans: [
        { resource: { attributes: badValue }, scopeSpans: [{ spans: [jsonSpan(), jsonSpan()] }, { spans: [jsonSpan()] }, { spans: 'x' }] },
        { scopeSpans: [{ scope: { name: 3 }, spans: [jsonSpan(), jsonSpan()] }, { spans: [jsonSpan(), 7] }] },
        7,
        { scopeSpans: [{ spans: {} }] },
      ],
    };
    const decoded = decodeOtlpJson(request);
    expect(decoded.spans.map((span) => span.path)).toEqual(['resourceSpans[1].scopeSpans[1].spans[0]']);
    expect(messages(decoded)).toEqual([
      ['resourceSpans[0].resource.attributes[0].value: must be an object', 3],
      ['resourceSpans[1].scopeSpans[0].scope.name: must be a string', 2],
      ['resourceSpans[1].scopeSpans[1].spans[1]: must be an object', 1],
      // Spans not in a list cannot be counted.
      ['resourceSpans[2]: must be an object', 0],
      ['resourceSpans[3].scopeSpans[0].spans: must be an array', 0],
    ]);
  });

  it.each([
    [{ traceId: null }, `${P}.traceId: is required`],
    [{ traceId: 'zz8efff798038103d269b633813fc60c' }, `${P}.traceId: must be 32 hex characters`],
    [{ traceId: 'W47/95gDgQPSabYzgT/GDA==' }, `${P}.traceId: must be 32 hex characters`],
    [{ traceId: '00000000000000000000000000000000' }, `${P}.traceId: must not be all zeros`],
    [{ spanId: '0000000000000000' }, `${P}.spanId: must not be all zeros`],
    [{ spanId: 42 }, `${P}.spanId: must be 16 hex characters`],
    [{ parentSpanId: '01020304' }, `${P}.parentSpanId: must be 16 hex characters`],
    [{ links: [{ traceId: TRACE, spanId: 'abc' }] }, `${P}.links[0].spanId: must be 16 hex characters`],
    [{ parentSpanId: SPAN }, `${P}.parentSpanId: must differ from spanId`],
    [{ name: 7 }, `${P}.name: must be a string`],
    [{ name: 'a\u0000b' }, `${P}.name: must not contain the NUL character (U+0000)`],
    [{ status: { message: '\ud800' } }, `${P}.status.message: must be valid UTF-16 text (unpaired surrogate)`],
    [{ attributes: [{ key: 'k\u0000', value: {} }] }, `${P}.attributes[0].key: must not contain the NUL character (U+0000)`],
    [{ attributes: [{ key: 'k', value: { stringValue: '\u0000' } }] }, `${P}.attributes[0].value.stringValue: must not contain the NUL character (U+0000)`],
    [{ kind: 9 }, `${P}.kind: must be an integer from 0 to 5 or one of SPAN_KIND_UNSPECIFIED, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER`],
    [{ kind: 'SERVER' }, `${P}.kind: must be an integer from 0 to 5 or one of SPAN_KIND_UNSPECIFIED, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER`],
    [{ status: { code: 3 } }, `${P}.status.code: must be an integer from 0 to 2 or one of STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR`],
    [{ status: 'ok' }, `${P}.status: must be an object`],
    [{ startTimeUnixNano: null }, `${P}.startTimeUnixNano: is required`],
    [{ startTimeUnixNano: '0' }, `${P}.startTimeUnixNano: is required`],
    [{ startTimeUnixNano: 'soon' }, `${P}.startTimeUnixNano: must be an unsigned 64-bit integer`],
    [{ startTimeUnixNano: '-5' }, `${P}.startTimeUnixNano: must be an unsigned 64-bit integer`],
    [{ startTimeUnixNano: 1.5 }, `${P}.startTimeUnixNano: must be an unsigned 64-bit integer`],
    [{ startTimeUnixNano: '18446744073709551616' }, `${P}.startTimeUnixNano: must be an unsigned 64-bit integer`],
    // An attribute's JSON number past 2^53 arrives rounded (1795000000000000999 parses as ...1024): refused, never
    // stored changed. (Times are taken as they arrive: see 'takes times sent as JSON numbers past 2^53'.)
    [{ endTimeUnixNano: 1e20 }, `${P}.endTimeUnixNano: must be before 2300-01-01T00:00:00Z`],
    [{ attributes: [{ key: 'k', value: { intValue: 1795000000000000999 } }] }, `${P}.attributes[0].value.intValue: must be a signed 64-bit integer; ${UNSAFE}`],
    [{ attributes: [{ key: 'k', value: { intValue: -(2 ** 53) } }] }, `${P}.attributes[0].value.intValue: must be a signed 64-bit integer; ${UNSAFE}`],
    [{ endTimeUnixNano: '10413792000000000000' }, `${P}.endTimeUnixNano: must be before 2300-01-01T00:00:00Z`],
    [{ endTimeUnixNano: '1700000000123456788' }, `${P}.endTimeUnixNano: must not be before startTimeUnixNano`],
    [{ events: {} }, `${P}.events: must be an array`],
    [{ events: [{ name: 'e', timeUnixNano: 'x' }] }, `${P}.events[0].timeUnixNano: must be an unsigned 64-bit integer`],
    [{ attributes: [7] }, `${P}.attributes[0]: must be an object`],
    [{ attributes: [{ key: 1, value: { stringValue: 'x' } }] }, `${P}.attributes[0].key: must be a string`],
    [{ attributes: [{ key: 'k', value: { stringValue: 1 } }] }, `${P}.attributes[0].value.stringValue: must be a string`],
    [{ attributes: [{ key: 'k', value: { boolValue: 'true' } }] }, `${P}.attributes[0].value.boolValue: must be a boolean`],
    [{ attributes: [{ key: 'k', value: { intValue: '1.5' } }] }, `${P}.attributes[0].value.intValue: must be a signed 64-bit integer`],
    [{ attributes: [{ key: 'k', value: { intValue: 1.5 } }] }, `${P}.attributes[0].value.intValue: must be a signed 64-bit integer`],
    [{ attributes: [{ key: 'k', value: { intValue: '9223372036854775808' } }] }, `${P}.attributes[0].value.intValue: must be a signed 64-bit integer`],
    [{ attributes: [{ key: 'k', value: { doubleValue: 'many' } }] }, `${P}.attributes[0].value.doubleValue: must be a number`],
    [{ attributes: [{ key: 'k', value: { bytesValue: 'not base64!' } }] }, `${P}.attributes[0].value.bytesValue: must be base64`],
    [{ attributes: [{ key: 'k', value: { stringValue: 'a', intValue: 1 } }] }, `${P}.attributes[0].value: must set only one of stringValue, intValue`],
    [{ attributes: [{ key: 'k', value: { arrayValue: { values: [{ kvlistValue: { values: [{ key: 'x', value: { boolValue: 1 } }] } }] } } }] },
      `${P}.attributes[0].value.arrayValue.values[0].kvlistValue.values[0].value.boolValue: must be a boolean`],
    [{ attributes: [{ key: 'k', value: { arrayValue: [] } }] }, `${P}.attributes[0].value.arrayValue: must be an object`],
  ])('%j is rejected', (overrides, message) => {
    expect(jsonError(jsonSpan(overrides))).toBe(message);
  });

  it.each(['0x10', '0b11', ' 1.5 ', '1.', '+1', '1e400', ''])('a doubleValue string %j that is not a JSON number is rejected', (text) => {
    expect(jsonError(jsonSpan({ attributes: [{ key: 'k', value: { doubleValue: text } }] }))).toBe(`${P}.attributes[0].value.doubleValue: must be a number`);
  });

  it('rejects values nested deeper than 32 levels', () => {
    let value: Record<string, unknown> = { stringValue: 'leaf' };
    for (let i = 0; i < 33; i++) value = { arrayValue: { values: [value] } };
    const message = jsonError(jsonSpan({ attributes: [{ key: 'deep', value }] }));
    expect(message).toBe(`${P}.attributes[0].value${'.arrayValue.values[0]'.repeat(32)}.arrayValue: must not nest deeper than 32 levels`);
  });

  it('bounds a resource\'s attributes, which every span of the resource stores a copy of', () => {
    const resourceOf = (length: number) => ({
      resourceSpans: [{ resource: { attributes: [{ key: 'blob', value: { stringValue: 'a'.repeat(length) } }] }, scopeSpans: [{ spans: [jsonSpan()] }] }],
    });
    // The attributes' JSON: [{"key":"blob","value":"aaa…"}] is 27 bytes besides the string.
    expect(decodeOtlpJson(resourceOf(MAX_RESOURCE_ATTRIBUTE_BYTES - 27)).spans).toHaveLength(1);
    expect(spanRefusal(decodeOtlpJson(resourceOf(MAX_RESOURCE_ATTRIBUTE_BYTES - 26)))).toBe(
      'resourceSpans[0].resource.attributes: at most 65,536 bytes (they are stored with every span of the resource), got 65,537',
    );
    expect(spanRefusal(decodeOtlpProtobuf(toProtobuf(resourceOf(100_000))))).toMatch(/^resourceSpans\[0\]\.resource\.attributes: at most 65,536 bytes .*, got 100,027$/);
  });

  it('bounds what an export\'s resources store with their spans, so a small export cannot write its resource thousands of times', () => {
    // 65,536 bytes of attributes, stored with each span: 1,024 spans take the 64 MiB an export may store.
    const resourceSpans = (spans: number) => ({
      resource: { attributes: [{ key: 'blob', value: { stringValue: 'a'.repeat(MAX_RESOURCE_ATTRIBUTE_BYTES - 27) } }] },
      scopeSpans: [{ spans: Array.from({ length: spans }, () => jsonSpan()) }],
    });
    expect(MAX_RESOURCE_COPY_BYTES).toBe(1024 * MAX_RESOURCE_ATTRIBUTE_BYTES);
    expect(decodeOtlpJson({ resourceSpans: [resourceSpans(1024)] }).spans).toHaveLength(1024);
    const over = decodeOtlpJson({ resourceSpans: [resourceSpans(1025)] });
    expect({ spans: over.spans.length, refused: over.rejected.map((r) => r.spans) }).toEqual({ spans: 0, refused: [1025] });
    expect(over.rejected[0].error.message).toBe(
      'resourceSpans[0].resource.attributes: 65,536 bytes stored with each of its 1,025 spans take 67,174,400, and an export\'s resources ' +
        'may store at most 67,108,864 with their spans: send fewer spans per export, or a smaller resource',
    );
    // Summed over the export: the resource that would pass the budget is refused, those before it stored.
    const split = decodeOtlpProtobuf(toProtobuf({ resourceSpans: [resourceSpans(1000), resourceSpans(25)] }));
    expect({ spans: split.spans.length, refused: split.rejected.map((r) => r.spans) }).toEqual({ spans: 1000, refused: [25] });
    expect(split.rejected[0].error.message).toMatch(/^resourceSpans\[1\]\.resource\.attributes: .* \(1,572,864 left after the resources before it\): /);
  });

  it("bounds a scope's name and version, which every span of the scope stores a copy of", () => {
    const scoped = (scope: Record<string, string>, spans = 3) => ({
      resourceSpans: [{ resource: {}, scopeSpans: [{ scope, spans: Array.from({ length: spans }, () => jsonSpan()) }] }],
    });
    expect(MAX_SCOPE_FIELD_LENGTH).toBe(1024);
    // Characters, as a span's name is bounded: 1,024 of them that take 3 bytes each pass.
    expect(decodeOtlpJson(scoped({ name: '名'.repeat(1024), version: 'v'.repeat(1024) })).spans).toHaveLength(3);
    for (const field of ['name', 'version']) {
      for (const decode of [decodeOtlpJson, (json: unknown) => decodeOtlpProtobuf(toProtobuf(json))]) {
        const over = decode(scoped({ [field]: 'x'.repeat(9_000_000) }));
        expect({ spans: over.spans.length, refused: messages(over) }).toEqual({
          spans: 0,
          refused: [[`resourceSpans[0].scopeSpans[0].scope.${field}: at most 1,024 characters (it is stored with every span of the scope), got 9,000,000`, 3]],
        });
      }
    }
  });

  it('counts what scopes store with their spans in the budget resources draw on', () => {
    // A resource of 65,536 bytes over 1,000 spans leaves 1,572,864 bytes; a 2,048-byte scope over 768 spans takes them all.
    const request = (scopeSpans: number) => ({
      resourceSpans: [
        {
          resource: { attributes: [{ key: 'blob', value: { stringValue: 'a'.repeat(MAX_RESOURCE_ATTRIBUTE_BYTES - 27) } }] },
          scopeSpans: [
            { spans: Array.from({ length: 1000 - scopeSpans }, () => jsonSpan()) },
            { scope: { name: 'n'.repeat(1024), version: 'v'.repeat(1024) }, spans: Array.from({ length: scopeSpans }, () => jsonSpan()) },
          ],
        },
      ],
    });
    expect(decodeOtlpJson(request(768)).rejected).toEqual([]);
    const over = decodeOtlpProtobuf(toProtobuf(request(769)));
    expect({ spans: over.spans.length, refused: messages(over) }).toEqual({
      spans: 231,
      refused: [
        [
          'resourceSpans[0].scopeSpans[1].scope: its name and version (2,048 bytes) stored with each of its 769 spans take 1,574,912, more than the ' +
            "1,572,864 left of the 67,108,864 an export's resources and scopes may store with their spans: send fewer spans per export",
          769,
        ],
      ],
    });
  });

  it.each([
    [[], 'body: must be a JSON object'],
    ['text', 'body: must be a JSON object'],
    [{ resourceSpans: {} }, 'resourceSpans: must be an array'],
  ])('refuses the request %j as a whole', (body, message) => {
    expect(refusedWhole(() => decodeOtlpJson(body))).toBe(message);
  });
});

describe('decodeOtlpProtobuf', () => {
  it('reads an all-zero parent span id as "no parent", in both encodings (a root span, as several SDKs send it)', () => {
    const request = jsonRequest([jsonSpan({ parentSpanId: '0000000000000000' })]);
    const [fromJson] = decodeOtlpJson(request).spans;
    expect(fromJson.parentSpanId).toBeNull();
    expect(decodeOtlpProtobuf(toProtobuf(request)).spans).toEqual([fromJson]);
  });

  it('decodes exactly what the same request in OTLP/JSON decodes to', () => {
    const request = jsonRequest([jsonSpan(), jsonSpan({ spanId: 'ffffffffffffffff', parentSpanId: '', kind: 1, events: [], links: [] })]);
    const fromJson = decodeOtlpJson(request);
    expect(fromJson.spans).toHaveLength(2);
    expect(decodeOtlpProtobuf(toProtobuf(request))).toEqual(fromJson);
  });

  it('normalizes every attribute type the same way as OTLP/JSON', () => {
    const attributes = [
      { key: 'str', value: { stringValue: 'text' } },
      { key: 'empty.str', value: { stringValue: '' } },
      { key: 'bool', value: { boolValue: false } },
      { key: 'int', value: { intValue: '-42' } },
      { key: 'int.big', value: { intValue: '9007199254740993' } },
      { key: 'int.min', value: { intValue: '-9223372036854775808' } },
      { key: 'double', value: { doubleValue: 0.25 } },
      { key: 'double.nan', value: { doubleValue: 'NaN' } },
      { key: 'double.inf', value: { doubleValue: '-Infinity' } },
      { key: 'double.text', value: { doubleValue: '-1.5e3' } },
      { key: 'bytes', value: { bytesValue: 'AAEC/w==' } },
      { key: 'array', value: { arrayValue: { values: [{ stringValue: 'a' }, { intValue: '1' }, {}] } } },
      { key: 'kvlist', value: { kvlistValue: { values: [{ key: 'x.y', value: { doubleValue: 1.5 } }, { key: 'z' }] } } },
      { key: 'none', value: {} },
    ];
    const request = jsonRequest([jsonSpan({ attributes })]);
    const expected = [
      { key: 'str', value: 'text' },
      { key: 'empty.str', value: '' },
      { key: 'bool', value: false },
      { key: 'int', value: -42 },
      { key: 'int.big', value: '9007199254740993' },
      { key: 'int.min', value: '-9223372036854775808' },
      { key: 'double', value: 0.25 },
      { key: 'double.nan', value: 'NaN' },
      { key: 'double.inf', value: '-Infinity' },
      { key: 'double.text', value: -1500 },
      { key: 'bytes', value: 'AAEC/w==' },
      { key: 'array', value: ['a', 1, null] },
      { key: 'kvlist', value: { 'x.y': 1.5, z: null } },
      { key: 'none', value: null },
    ];
    expect(decodeOtlpJson(request).spans[0].attributes).toEqual(expected);
    expect(decodeOtlpProtobuf(toProtobuf(request)).spans[0].attributes).toEqual(expected);
  });

  it('reads URL-safe and unpadded base64 in OTLP/JSON bytes', () => {
    const [span] = decodeOtlpJson(jsonRequest([jsonSpan({ attributes: [{ key: 'b', value: { bytesValue: 'AAEC_w' } }] })])).spans;
    expect(span.attributes).toEqual([{ key: 'b', value: 'AAEC/w==' }]);
  });

  it('answers an empty body with no spans', () => {
    expect(decodeOtlpProtobuf(Buffer.alloc(0))).toEqual({ spans: [], rejected: [], ignored: [] });
  });

  it.each([
    [{ traceId: '5b8efff798038103d269b633813fc6' }, `${P}.traceId: must be 16 bytes`],
    [{ traceId: null }, `${P}.traceId: is required`],
    [{ spanId: '00000000000000000000' }, `${P}.spanId: must be 8 bytes`],
    [{ spanId: '0000000000000000' }, `${P}.spanId: must not be all zeros`],
    [{ parentSpanId: '000102' }, `${P}.parentSpanId: must be 8 bytes`],
    [{ links: [{ traceId: '0000', spanId: SPAN }] }, `${P}.links[0].traceId: must be 16 bytes`],
    [{ kind: 9 }, `${P}.kind: must be an integer from 0 to 5 or one of SPAN_KIND_UNSPECIFIED, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER`],
    [{ startTimeUnixNano: null }, `${P}.startTimeUnixNano: is required`],
    [{ endTimeUnixNano: '18446744073709551615' }, `${P}.endTimeUnixNano: must be before 2300-01-01T00:00:00Z`],
  ])('%j is rejected', (overrides, message) => {
    expect(protobufError(jsonSpan(overrides))).toBe(message);
  });

  it('answers garbage and truncated bodies with a decode error, not a crash', () => {
    expect(refusedWhole(() => decodeOtlpProtobuf(Buffer.from('garbage garbage garbage')))).toBe(
      'body: not a valid protobuf ExportTraceServiceRequest (invalid wire type 7 at offset 1)',
    );
    const truncated = toProtobuf(jsonRequest([jsonSpan()])).subarray(0, -5);
    expect(refusedWhole(() => decodeOtlpProtobuf(truncated))).toMatch(
      new RegExp(`^body: not a valid protobuf ExportTraceServiceRequest \\(index out of range: \\d+ \\+ \\d+ > ${truncated.length}\\)$`),
    );
  });

  it('refuses invalid UTF-8 in a string field instead of storing U+FFFD', () => {
    const encoded = Buffer.from(toProtobuf(jsonRequest([jsonSpan({ name: 'name-XY' })])));
    const at = encoded.indexOf('XY');
    encoded[at] = 0xff;
    encoded[at + 1] = 0xc3;
    expect(refusedWhole(() => decodeOtlpProtobuf(encoded))).toBe('body: not a valid protobuf ExportTraceServiceRequest (a string field is not valid UTF-8)');
  });

  it('answers a JSON body sent as protobuf with a decode error', () => {
    const json = Buffer.from(JSON.stringify({ resourceSpans: [{ scopeSpans: [] }] }));
    expect(refusedWhole(() => decodeOtlpProtobuf(json))).toBe(
      'body: not a valid protobuf ExportTraceServiceRequest (index out of range: 3 + 114 > 37)',
    );
  });
});

describe("an export's entries, counted before it is walked, and in protobuf as it is decoded", () => {
  /** What decoding `request` with at most `max` entries throws, in each encoding, or null. */
  function tooLarge(request: Record<string, unknown>, max: number): { json: string | null; protobuf: string | null } {
    const outcome = (decode: () => unknown) => {
      try {
        decode();
        return null;
      } catch (error) {
        expect(error).toBeInstanceOf(OtlpTooLargeError);
        return (error as Error).message;
      }
    };
    return { json: outcome(() => decodeOtlpJson(request, max)), protobuf: outcome(() => decodeOtlpProtobuf(toProtobuf(request), max)) };
  }
  const scope = (spans: unknown[]) => ({ scopeSpans: [{ spans }] });
  const limit = (what: string, max: number, got: string) => `${what}: at most ${max} per OTLP export (MAX_OTLP_SPANS), got ${got}`;

  it('refuses more spans than the bound, counting empty and invalid ones, which would each become a refusal', () => {
    const spans = [jsonSpan(), {}, { traceId: 'x' }, {}];
    // JSON counts them all; the protobuf decode stops at the first past the bound.
    expect(tooLarge({ resourceSpans: [scope(spans)] }, 2)).toEqual({ json: limit('spans', 2, '4'), protobuf: limit('spans', 2, '3 or more') });
    // Across resources and scopes.
    expect(tooLarge({ resourceSpans: [scope([{}]), scope([{}, {}])] }, 2)).toEqual({ json: limit('spans', 2, '3'), protobuf: limit('spans', 2, '3 or more') });
    expect(tooLarge({ resourceSpans: [scope(spans)] }, 4)).toEqual({ json: null, protobuf: null });
  });

  it('refuses more resources or scopes than the bound, though they hold no spans', () => {
    expect(tooLarge({ resourceSpans: [{}, {}, {}] }, 2)).toEqual({ json: limit('resourceSpans', 2, '3'), protobuf: limit('resourceSpans', 2, '3 or more') });
    expect(tooLarge({ resourceSpans: [{ scopeSpans: [{}, {}] }, { scopeSpans: [{}] }] }, 2)).toEqual({
      json: limit('scopeSpans', 2, '3 or more'),
      protobuf: limit('scopeSpans', 2, '3 or more'),
    });
    expect(tooLarge({ resourceSpans: [{ scopeSpans: [{}] }, { scopeSpans: [{}] }] }, 2)).toEqual({ json: null, protobuf: null });
  });

  it('counts JSON entries that are not objects, which a protobuf body cannot hold', () => {
    expect(() => decodeOtlpJson({ resourceSpans: [0, 0, 0] }, 2)).toThrow(limit('resourceSpans', 2, '3'));
    expect(() => decodeOtlpJson({ resourceSpans: [{ scopeSpans: [0, 'x', null] }] }, 2)).toThrow('scopeSpans: at most 2');
    expect(() => decodeOtlpJson({ resourceSpans: [scope([0, 'x', null])] }, 2)).toThrow(limit('spans', 2, '3'));
  });

  it('refuses a truncated protobuf body in the reader\'s words', () => {
    const truncated = toProtobuf({ resourceSpans: [scope([jsonSpan()])] }).subarray(0, -5);
    expect(refusedWhole(() => decodeOtlpProtobuf(truncated, 10))).toMatch(/^body: not a valid protobuf ExportTraceServiceRequest \(index out of range/);
  });

  it('stops decoding past the bound however the spans are hidden from a reading of the body\'s bytes (the decoder is lenient)', () => {
    // A scope whose unknown field 5 runs past the scope's end, over the tag and length of what reads as the
    // ScopeSpans' schema_url holding 1,000 empty spans: a count of the body's fields sees none there, the
    // decoder, resuming after the overrun, decodes them all.
    const hidden = Buffer.alloc(2_000);
    for (let i = 0; i < hidden.length; i += 2) hidden.set([0x12, 0x00], i);
    const schemaUrl = Buffer.concat([Buffer.from([0x1a]), varint(hidden.length), hidden]);
    const scopeSpans = Buffer.concat([Buffer.from([0x0a, 0x02, 0x2a, schemaUrl.length - hidden.length]), schemaUrl]);
    const resource = Buffer.concat([Buffer.from([0x12]), varint(scopeSpans.length), scopeSpans]);
    const body = Buffer.concat([Buffer.from([0x0a]), varint(resource.length), resource]);
    expect(decodeOtlpProtobuf(body).rejected).toHaveLength(1_000);
    // With the bound, the decode stops at the span past it, not after building all 1,000.
    expect(() => decodeOtlpProtobuf(body, 2)).toThrow(limit('spans', 2, '3 or more'));
    // A known field of the wrong wire type, read as a message all the same.
    const threeSpans = toProtobuf({ resourceSpans: [scope([jsonSpan(), jsonSpan({ spanId: 'eee19b7ec3c1b175' }), jsonSpan({ spanId: 'eee19b7ec3c1b176' })])] });
    expect(() => decodeOtlpProtobuf(Buffer.concat([Buffer.from([0x0c, 0x00]), threeSpans]), 2)).toThrow(limit('spans', 2, '3 or more'));
  });

  it('reads past unknown fields of every wire type, groups included', () => {
    const unknown = Buffer.from([0x98, 0x06, 0x01, 0x93, 0x06, 0x98, 0x06, 0x02, 0x94, 0x06, 0xa5, 0x06, 1, 2, 3, 4]); // field 99 varint; group 98 holding field 99; field 100 fixed32
    const request = Buffer.concat([unknown, toProtobuf(jsonRequest([jsonSpan(), jsonSpan({ spanId: 'eee19b7ec3c1b175' })])), unknown]);
    expect(decodeOtlpProtobuf(request, 2).spans).toHaveLength(2);
    expect(() => decodeOtlpProtobuf(request, 1)).toThrow(limit('spans', 1, '2 or more'));
  });

  it('counts nothing outside a protobuf decode: the generated decoder, called by anyone else, passes through', () => {
    const body = toProtobuf({ resourceSpans: [scope([{}, {}, {}])] });
    expect(() => decodeOtlpProtobuf(body, 2)).toThrow(OtlpTooLargeError);
    expect((ExportTraceServiceRequest.decode(body) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: unknown[] }> }> }).resourceSpans[0].scopeSpans[0].spans).toHaveLength(3);
  });
});

/** A protobuf varint. */
function varint(value: number): Buffer {
  const bytes: number[] = [];
  for (; value >= 0x80; value >>>= 7) bytes.push((value & 0x7f) | 0x80);
  bytes.push(value);
  return Buffer.from(bytes);
}
