import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { ExportResult, ExportResultCode } from '@opentelemetry/core';
import { OTLPTraceExporter as OTLPHttpJsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as OTLPHttpProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider, BatchSpanProcessor, ReadableSpan, SimpleSpanProcessor, SpanExporter, SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { gzipSync } from 'node:zlib';
import request from 'supertest';
import { otlpTraceService } from '../../src/otlp/otlp-decoder';
import { spanIdToNodeId, traceIdToTreeId } from '../../src/otlp/otlp-span.mapper';
import { createTestApp, TestApp } from '../support/app';
import { spanId, traceId } from '../support/fixtures';
import { decodeRpcStatus } from '../support/rpc-status';

/** supertest: keep the answer's bytes (a protobuf body) instead of parsing it. */
const binary = (res: request.Response, done: (error: Error | null, body: Buffer) => void) => {
  const stream = res as unknown as NodeJS.ReadableStream;
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  stream.on('end', () => done(null, Buffer.concat(chunks)));
};

/**
 * The SDK's own OTLP/HTTP exporter, unchanged; this wrapper only records
 * what each export reported, so a rejected export fails the test.
 */
class RecordingExporter implements SpanExporter {
  readonly results: ExportResult[] = [];
  readonly failures: unknown[] = [];

  constructor(private readonly inner: SpanExporter) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.inner.export(spans, (result) => {
      this.results.push(result);
      if (result.code !== ExportResultCode.SUCCESS) this.failures.push(result.error ?? result);
      done(result);
    });
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }
}

function sdkExporter(kind: 'protobuf' | 'json', url: string, apiKey: string): RecordingExporter {
  const options = { url: `${url}/otlp/v1/traces`, headers: { Authorization: `ApiKey ${apiKey}` } };
  return new RecordingExporter(kind === 'protobuf' ? new OTLPHttpProtoExporter(options) : new OTLPHttpJsonExporter(options));
}

/** Seconds and nanoseconds, the SDK's HrTime: explicit times make the stored microseconds checkable. */
const at = (nanosAfter: number): [number, number] => [1700000000, nanosAfter];

/**
 * A root workflow with a failing chat child (an event, an exception, error
 * status, gen_ai attributes) and a successful tool child.
 */
async function exportTrace(processorFor: (exporter: SpanExporter) => SpanProcessor, exporter: RecordingExporter) {
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'checkout', 'deployment.environment': 'test' }),
    spanProcessors: [processorFor(exporter)],
  });
  const tracer = provider.getTracer('otlp-e2e', '1.0.0');
  const root = tracer.startSpan('workflow', { kind: SpanKind.SERVER, startTime: at(123_456_789), attributes: { 'ag.type.node': 'workflow' } });
  const parent = trace.setSpan(context.active(), root);

  const chat = tracer.startSpan(
    'chat gpt-4o',
    {
      kind: SpanKind.CLIENT,
      startTime: at(200_000_999),
      attributes: {
        'gen_ai.operation.name': 'chat',
        'gen_ai.request.model': 'gpt-4o',
        'gen_ai.usage.input_tokens': 3,
        'gen_ai.usage.output_tokens': 5,
        'llm.temperature': 0.5,
        'llm.stream': false,
        tags: ['a', 'b'],
      },
    },
    parent,
  );
  chat.addEvent('first token', { index: 0 }, at(300_000_000));
  chat.recordException(new TypeError('bad input'), at(400_000_000));
  chat.setStatus({ code: SpanStatusCode.ERROR, message: 'bad input' });
  chat.end(at(500_000_000));

  const tool = tracer.startSpan('lookup', { kind: SpanKind.INTERNAL, startTime: at(600_000_000), attributes: { 'gen_ai.operation.name': 'execute_tool' } }, parent);
  tool.setStatus({ code: SpanStatusCode.OK });
  tool.end(at(700_000_001));
  root.end([1700000001, 0]);

  await provider.forceFlush();
  await provider.shutdown();
  expect(exporter.failures).toEqual([]);
  return { root: root.spanContext(), chat: chat.spanContext(), tool: tool.spanContext() };
}

const nodeId = (span: string) => `00000000-0000-0000-${span.slice(0, 4)}-${span.slice(4)}`;
const treeId = (id: string) => `${id.slice(0, 8)}-${id.slice(8, 12)}-${id.slice(12, 16)}-${id.slice(16, 20)}-${id.slice(20)}`;

describe('OTLP/HTTP receiver', () => {
  let t: TestApp;
  let auth: { Authorization: string };
  beforeAll(async () => {
    // OTLP exports have their own bound, larger than REST's (a collector batches thousands): small ones here.
    t = await createTestApp({ BODY_LIMIT: '256kb', MAX_BATCH_ITEMS: '20', MAX_OTLP_SPANS: '30' });
    auth = { Authorization: `ApiKey ${t.apiKey}` };
  });
  afterAll(async () => t.close());

  const http = () => request(t.url);
  const count = async (table: 'spans' | 'nodes') =>
    Number((await t.database.db.selectFrom(table).select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);
  const rejectedTotal = async () => {
    const line = /^otlp_spans_rejected_total (\d+)$/m.exec((await http().get('/metrics').expect(200)).text);
    // Not found would be NaN, and every comparison of NaNs below would pass.
    if (!line) throw new Error('no otlp_spans_rejected_total line in /metrics');
    return Number(line[1]);
  };

  describe.each([
    ['protobuf, one request per span', 'protobuf' as const, (e: SpanExporter) => new SimpleSpanProcessor(e)],
    ['OTLP/JSON, the whole trace in one batch', 'json' as const, (e: SpanExporter) => new BatchSpanProcessor(e)],
  ])('the OpenTelemetry JS SDK exporting %s', (_, kind, processorFor) => {
    it('stores spans and nodes with their ids, parents, kinds, statuses, attributes, events, exception and microsecond times', async () => {
      const exporter = sdkExporter(kind, t.url, t.apiKey);
      const ids = await exportTrace(processorFor, exporter);
      expect(exporter.results.length).toBeGreaterThan(0);
      expect(exporter.results.every((r) => r.code === ExportResultCode.SUCCESS)).toBe(true);

      const { body } = await http().get(`/tracing/traces/${ids.root.traceId}`).set(auth).expect(200);
      const spans = new Map<string, Record<string, unknown>>(body.spans.map((s: { span_id: string }) => [s.span_id, s]));
      expect(spans.size).toBe(3);
      const otel = {
        resource: { service: { name: 'checkout' }, deployment: { environment: 'test' } },
        scope: { name: 'otlp-e2e', version: '1.0.0' },
      };
      expect(spans.get(ids.root.spanId)).toMatchObject({
        project_id: t.projectId,
        trace_id: ids.root.traceId,
        parent_id: null,
        trace_type: 'invocation',
        span_type: 'workflow',
        span_kind: 'SPAN_KIND_SERVER',
        span_name: 'workflow',
        start_time: '2023-11-14T22:13:20.123456Z',
        end_time: '2023-11-14T22:13:21.000000Z',
        status_code: 'STATUS_CODE_UNSET',
        status_message: null,
        attributes: { ag: { type: { node: 'workflow' } }, otel },
        events: null,
        links: null,
        exception: null,
      });
      expect(spans.get(ids.chat.spanId)).toMatchObject({
        parent_id: ids.root.spanId,
        span_type: 'chat',
        span_kind: 'SPAN_KIND_CLIENT',
        span_name: 'chat gpt-4o',
        start_time: '2023-11-14T22:13:20.200000Z',
        end_time: '2023-11-14T22:13:20.500000Z',
        status_code: 'STATUS_CODE_ERROR',
        status_message: 'bad input',
        attributes: {
          gen_ai: { operation: { name: 'chat' }, request: { model: 'gpt-4o' }, usage: { input_tokens: 3, output_tokens: 5 } },
          llm: { temperature: 0.5, stream: false },
          tags: ['a', 'b'],
          otel,
        },
        events: [
          { name: 'first token', timestamp: '2023-11-14T22:13:20.300000Z', attributes: { index: 0 } },
          {
            name: 'exception',
            timestamp: '2023-11-14T22:13:20.400000Z',
            attributes: { exception: { type: 'TypeError', message: 'bad input', stacktrace: expect.stringContaining('TypeError: bad input') } },
          },
        ],
        exception: {
          type: 'TypeError',
          message: 'bad input',
          stacktrace: expect.stringContaining('TypeError: bad input'),
          timestamp: '2023-11-14T22:13:20.400000Z',
        },
      });
      expect(spans.get(ids.tool.spanId)).toMatchObject({
        parent_id: ids.root.spanId,
        span_type: 'tool',
        span_kind: 'SPAN_KIND_INTERNAL',
        status_code: 'STATUS_CODE_OK',
        start_time: '2023-11-14T22:13:20.600000Z',
        end_time: '2023-11-14T22:13:20.700000Z',
      });

      const tree = await http().get(`/observability/trees/${treeId(ids.root.traceId)}`).set(auth).expect(200);
      const nodes = new Map<string, Record<string, unknown>>(tree.body.nodes.map((n: { node_id: string }) => [n.node_id, n]));
      expect(nodes.size).toBe(3);
      expect(nodes.get(nodeId(ids.root.spanId))).toMatchObject({
        tree_id: treeId(ids.root.traceId),
        root_id: nodeId(ids.root.spanId),
        parent_id: null,
        node_name: 'workflow',
        node_type: 'workflow',
        time_start: '2023-11-14T22:13:20.123456Z',
        time_end: '2023-11-14T22:13:21.000000Z',
        status: { code: 'UNSET', message: null },
        otel: { kind: 'SPAN_KIND_SERVER', scope: otel.scope },
      });
      expect(nodes.get(nodeId(ids.chat.spanId))).toMatchObject({
        root_id: null,
        parent_id: nodeId(ids.root.spanId),
        node_type: 'chat',
        status: { code: 'ERROR', message: 'bad input' },
        metrics: { unit: { tokens: { prompt: 3, completion: 5, total: 8 } } },
        meta: { gen_ai: { operation: { name: 'chat' }, request: { model: 'gpt-4o' } }, tags: ['a', 'b'] },
        exception: { type: 'TypeError', message: 'bad input' },
        time_start: '2023-11-14T22:13:20.200000Z',
      });
      expect(nodes.get(nodeId(ids.tool.spanId))).toMatchObject({ node_type: 'tool', status: { code: 'OK', message: null } });
    });
  });

  it.each(['protobuf' as const, 'json' as const])('the SDK exporter (%s) reports success for a batch with a span the API refuses; the rest is stored', async (kind) => {
    const exporter = sdkExporter(kind, t.url, t.apiKey);
    const provider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(exporter)] });
    const tracer = provider.getTracer('partial');
    const root = tracer.startSpan('root', { startTime: at(0) });
    const parent = trace.setSpan(context.active(), root);
    // An empty name: OTLP calls it required, and the REST routes refuse it.
    const unnamed = tracer.startSpan('', { startTime: at(1_000) }, parent);
    unnamed.end(at(2_000));
    root.end(at(3_000));
    await provider.forceFlush();
    await provider.shutdown();

    expect(exporter.results.map((r) => r.code)).toEqual([ExportResultCode.SUCCESS]);
    const { body } = await http().get(`/tracing/traces/${root.spanContext().traceId}`).set(auth).expect(200);
    expect(body.spans.map((s: { span_name: string }) => s.span_name)).toEqual(['root']);
  });

  describe('HTTP', () => {
    const { ExportTraceServiceRequest, ExportTraceServiceResponse } = otlpTraceService;
    const bufferBody = (res: request.Response, callback: (error: Error | null, body: Buffer) => void) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => callback(null, Buffer.concat(chunks)));
    };

    function jsonRequest(spans: Record<string, unknown>[]) {
      return { resourceSpans: [{ scopeSpans: [{ scope: { name: 'raw' }, spans }] }] };
    }
    function jsonSpan(trace: string, span: string, overrides: Record<string, unknown> = {}) {
      return {
        traceId: trace, spanId: span, name: 'op', kind: 1,
        startTimeUnixNano: '1700000000000000000', endTimeUnixNano: '1700000000001000000',
        ...overrides,
      };
    }
    function protobufRequest(trace: string, span: string): Buffer {
      const message = {
        resourceSpans: [{
          scopeSpans: [{
            spans: [{
              traceId: Buffer.from(trace, 'hex'), spanId: Buffer.from(span, 'hex'), name: 'gzipped', kind: 2,
              startTimeUnixNano: '1700000000000000000', endTimeUnixNano: '1700000000001000000',
              attributes: [{ key: 'big', value: { intValue: '9223372036854775807' } }],
            }],
          }],
        }],
      };
      return Buffer.from(ExportTraceServiceRequest.encode(message as never).finish());
    }

    it('answers OTLP/JSON with {"partialSuccess":{}} as application/json', async () => {
      const trace = traceId();
      const res = await http().post('/otlp/v1/traces').set(auth).send(jsonRequest([jsonSpan(trace, spanId())])).expect(200);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.text).toBe('{"partialSuccess":{}}');
      await http().get(`/tracing/traces/${trace}`).set(auth).expect(200);
    });

    it('accepts gzip protobuf and answers with an encoded ExportTraceServiceResponse', async () => {
      const trace = traceId();
      const span = spanId();
      const res = await http()
        .post('/otlp/v1/traces')
        .set(auth)
        .set('Content-Type', 'application/x-protobuf')
        .set('Content-Encoding', 'gzip')
        .send(gzipSync(protobufRequest(trace, span)))
        .buffer(true)
        .parse(bufferBody)
        .expect(200);
      expect(res.headers['content-type']).toBe('application/x-protobuf');
      expect(ExportTraceServiceResponse.decode(res.body as Buffer)).toEqual(ExportTraceServiceResponse.decode(new Uint8Array()));
      const read = await http().get(`/tracing/spans/${trace}/${span}`).set(auth).expect(200);
      expect(read.body.span).toMatchObject({ span_name: 'gzipped', span_kind: 'SPAN_KIND_SERVER', attributes: { big: '9223372036854775807' } });
    });

    it('stores a retried export once, with the same content', async () => {
      const trace = traceId();
      const body = jsonRequest([jsonSpan(trace, spanId()), jsonSpan(trace, spanId())]);
      await http().post('/otlp/v1/traces').set(auth).send(body).expect(200);
      const [spansBefore, nodesBefore] = [await count('spans'), await count('nodes')];
      const first = (await http().get(`/tracing/traces/${trace}`).set(auth).expect(200)).body.spans;
      await http().post('/otlp/v1/traces').set(auth).send(body).expect(200);
      expect([await count('spans'), await count('nodes')]).toEqual([spansBefore, nodesBefore]);
      const again = (await http().get(`/tracing/traces/${trace}`).set(auth).expect(200)).body.spans;
      const content = (spans: Record<string, unknown>[]) => spans.map(({ updated_at: _u, ...rest }) => rest);
      expect(content(again)).toEqual(content(first));
    });

    it('moves the node of a span id reused in another trace to that tree, and leaves a tree when its trace is deleted', async () => {
      const [first, second, span] = [traceId(), traceId(), spanId()];
      await http().post('/otlp/v1/traces').set(auth).send(jsonRequest([jsonSpan(first, span, { name: 'first' })])).expect(200);
      await http().post('/otlp/v1/traces').set(auth).send(jsonRequest([jsonSpan(second, span, { name: 'second' })])).expect(200);

      // Two spans, one per trace; one node (its id is the span id's), now in the second trace's tree.
      await http().get(`/tracing/spans/${first}/${span}`).set(auth).expect(200);
      await http().get(`/tracing/spans/${second}/${span}`).set(auth).expect(200);
      await http().get(`/observability/trees/${traceIdToTreeId(first)}`).set(auth).expect(404);
      const tree = await http().get(`/observability/trees/${traceIdToTreeId(second)}`).set(auth).expect(200);
      expect(tree.body.nodes).toEqual([expect.objectContaining({ node_id: spanIdToNodeId(span), node_name: 'second' })]);

      await http().delete(`/tracing/traces/${second}`).set(auth).expect(200);
      await http().get(`/tracing/spans/${second}/${span}`).set(auth).expect(404);
      await http().get(`/observability/trees/${traceIdToTreeId(second)}`).set(auth).expect(200);
    });

    it('warns, refusing none, when an OTLP/JSON export holds its spans under fields it does not know (proto names, pre-1.0 exporters)', async () => {
      const trace = traceId();
      const request = jsonRequest([jsonSpan(trace, spanId())]) as { resourceSpans: unknown[] };
      const rejectedBefore = await rejectedTotal();
      const res = await http().post('/otlp/v1/traces').set(auth).send({ resource_spans: request.resourceSpans }).expect(200);
      expect(res.body).toEqual({
        partialSuccess: {
          rejectedSpans: '0',
          errorMessage:
            'body: no resourceSpans, but a list under a field this receiver does not know ("resource_spans"), which was ignored: OTLP/JSON names fields in lowerCamelCase (resourceSpans, not resource_spans)',
        },
      });
      await http().get(`/tracing/traces/${trace}`).set(auth).expect(404);
      expect(await rejectedTotal()).toBe(rejectedBefore);
    });

    it('stores the valid spans of an export and answers how many it refused and why (partial success), in both encodings', async () => {
      const P = 'resourceSpans[0].scopeSpans[0].spans';
      const trace = traceId();
      const [good, late, empty] = [spanId(), spanId(), spanId()];
      const spans = [
        jsonSpan(trace, good),
        jsonSpan(trace, late, { endTimeUnixNano: '1' }),
        jsonSpan(trace, empty, { name: '' }),
      ];
      const errorMessage = `2 of 3 spans refused: ${P}[1].endTimeUnixNano: must not be before startTimeUnixNano; ${P}[2].name: must not be empty`;
      const rejectedBefore = await rejectedTotal();

      const res = await http().post('/otlp/v1/traces').set(auth).send(jsonRequest(spans)).expect(200);
      // Proto3 JSON writes the int64 count as a string.
      expect(res.body).toEqual({ partialSuccess: { rejectedSpans: '2', errorMessage } });
      const stored = (await http().get(`/tracing/traces/${trace}`).set(auth).expect(200)).body.spans;
      expect(stored.map((s: { span_id: string }) => s.span_id)).toEqual([good]);
      const tree = (await http().get(`/observability/trees/${treeId(trace)}`).set(auth).expect(200)).body.nodes;
      expect(tree.map((n: { node_id: string }) => n.node_id)).toEqual([nodeId(good)]);

      const protobuf = ExportTraceServiceRequest.encode(JSON.parse(JSON.stringify(jsonRequest(spans)), (key, value) =>
        ['traceId', 'spanId'].includes(key) ? Buffer.from(value, 'hex') : value) as never).finish();
      const binaryRes = await http().post('/otlp/v1/traces').set(auth).set('Content-Type', 'application/x-protobuf')
        .send(Buffer.from(protobuf)).buffer(true).parse(bufferBody).expect(200);
      const decoded = ExportTraceServiceResponse.decode(binaryRes.body as Buffer) as { partialSuccess?: { rejectedSpans: { toString(): string }; errorMessage: string } };
      expect([decoded.partialSuccess?.rejectedSpans.toString(), decoded.partialSuccess?.errorMessage]).toEqual(['2', errorMessage]);
      expect(await rejectedTotal()).toBe(rejectedBefore + 4);
    });

    it('refuses a bad resource with all of its spans, and says so in a partial success', async () => {
      const trace = traceId();
      const [kept, refused] = [spanId(), spanId()];
      const body = {
        resourceSpans: [
          { resource: { attributes: [{ key: 'r', value: 'not an AnyValue' }] }, scopeSpans: [{ spans: [jsonSpan(trace, refused), jsonSpan(trace, spanId())] }] },
          { scopeSpans: [{ spans: [jsonSpan(trace, kept)] }] },
        ],
      };
      const res = await http().post('/otlp/v1/traces').set(auth).send(body).expect(200);
      expect(res.body.partialSuccess).toEqual({
        rejectedSpans: '2',
        errorMessage: '2 of 3 spans refused: resourceSpans[0].resource.attributes[0].value: must be an object',
      });
      const stored = (await http().get(`/tracing/traces/${trace}`).set(auth).expect(200)).body.spans;
      expect(stored.map((s: { span_id: string }) => s.span_id)).toEqual([kept]);
    });

    it('answers 400 naming the bad fields when no span is valid, and writes nothing', async () => {
      const P = 'resourceSpans[0].scopeSpans[0].spans';
      const trace = traceId();
      const [spansBefore, nodesBefore, rejectedBefore] = [await count('spans'), await count('nodes'), await rejectedTotal()];
      const bad = Array.from({ length: 7 }, (_, i) => jsonSpan(trace, spanId(), { endTimeUnixNano: String(i + 1) }));
      const res = await http().post('/otlp/v1/traces').set(auth).send(jsonRequest(bad)).expect(400);
      const reason = 'must not be before startTimeUnixNano';
      // The first five fields are listed; the message counts the rest.
      expect(res.body).toMatchObject({
        message: `${P}[0].endTimeUnixNano: ${reason} (and 6 more)`,
        errors: [0, 1, 2, 3, 4].map((i) => ({ field: `${P}[${i}].endTimeUnixNano`, message: reason })),
      });
      expect([await count('spans'), await count('nodes')]).toEqual([spansBefore, nodesBefore]);
      await http().get(`/tracing/traces/${trace}`).set(auth).expect(404);
      await http().get(`/observability/trees/${treeId(trace)}`).set(auth).expect(404);
      expect(await rejectedTotal()).toBe(rejectedBefore + 7);
    });

    it('refuses OTLP/JSON attribute integers sent as numbers past 2^53 (they arrive rounded), takes times so, and keeps both exact as strings', async () => {
      const P = 'resourceSpans[0].scopeSpans[0].spans[0]';
      const UNSAFE = 'a JSON number past 2^53 loses precision, so send int64 values as decimal strings, as OTLP/JSON encodes them';
      const [spansBefore, nodesBefore] = [await count('spans'), await count('nodes')];
      // Written as text: a JavaScript number literal would already be rounded.
      const asText = (overrides: Record<string, unknown>, number: string) =>
        JSON.stringify(jsonRequest([jsonSpan(traceId(), spanId(), overrides)])).replace('"@NUMBER@"', number);
      const send = (text: string) => http().post('/otlp/v1/traces').set(auth).set('Content-Type', 'application/json').send(text);
      const cases: Array<[Record<string, unknown>, string, string]> = [
        [{ attributes: [{ key: 'n', value: { intValue: '@NUMBER@' } }] }, '1795000000000000999', `${P}.attributes[0].value.intValue: must be a signed 64-bit integer; ${UNSAFE}`],
      ];
      for (const [overrides, number, message] of cases) {
        const res = await send(asText(overrides, number)).expect(400);
        expect(res.body).toMatchObject({ message, errors: [{ field: message.split(': ')[0], message: message.split(': ').slice(1).join(': ') }] });
      }
      expect([await count('spans'), await count('nodes')]).toEqual([spansBefore, nodesBefore]);

      const [trace, span] = [traceId(), spanId()];
      await http().post('/otlp/v1/traces').set(auth).send(jsonRequest([jsonSpan(trace, span, {
        startTimeUnixNano: '1795000000000000999', endTimeUnixNano: '1795000000000001999', attributes: [{ key: 'n', value: { intValue: '1795000000000000999' } }],
      })])).expect(200);
      const read = await http().get(`/tracing/spans/${trace}/${span}`).set(auth).expect(200);
      expect(read.body.span).toMatchObject({ start_time: '2026-11-18T11:06:40.000000Z', end_time: '2026-11-18T11:06:40.000001Z', attributes: { n: '1795000000000000999' } });

      // A time sent as a number arrives as the nearest double (...0999 as ...1024): stored 1 µs from its exact digits.
      const [numbered, numberedSpan] = [traceId(), spanId()];
      await send(JSON.stringify(jsonRequest([jsonSpan(numbered, numberedSpan, { startTimeUnixNano: '@NUMBER@', endTimeUnixNano: '1795000000000001999' })])).replace('"@NUMBER@"', '1795000000000000999')).expect(200);
      const numberedRead = await http().get(`/tracing/spans/${numbered}/${numberedSpan}`).set(auth).expect(200);
      expect(numberedRead.body.span).toMatchObject({ start_time: '2026-11-18T11:06:40.000001Z', end_time: '2026-11-18T11:06:40.000001Z' });
    });

    it('refuses what the REST API would refuse (name, status message, JSON depth), naming the OTLP field and writing nothing', async () => {
      const P = 'resourceSpans[0].scopeSpans[0].spans[0]';
      const deepKey = (segments: number) => Array.from({ length: segments }, () => 'k').join('.');
      const cases: Array<[Record<string, unknown>, string, RegExp]> = [
        [{ name: undefined }, `${P}.name`, /^must not be empty$/],
        [{ name: '' }, `${P}.name`, /^must not be empty$/],
        [{ name: 'n'.repeat(5000) }, `${P}.name`, /at most 1024 character/],
        [{ status: { code: 2, message: 'm'.repeat(20_000) } }, `${P}.status.message`, /at most 10000 character/],
        [{ attributes: [{ key: deepKey(60), value: { stringValue: 'v' } }] }, `${P}.attributes`, /^is nested deeper than 32 levels \(as stored in the span: attributes\.k\.k/],
      ];
      const [spansBefore, nodesBefore] = [await count('spans'), await count('nodes')];
      for (const [overrides, field, message] of cases) {
        const trace = traceId();
        const res = await http().post('/otlp/v1/traces').set(auth).send(jsonRequest([jsonSpan(trace, spanId(), overrides)])).expect(400);
        expect(res.body.errors).toEqual([{ field, message: expect.stringMatching(message) }]);
        expect(res.body.message).toBe(`${field}: ${res.body.errors[0].message}`);
      }
      expect([await count('spans'), await count('nodes')]).toEqual([spansBefore, nodesBefore]);

      // At the limits a span is stored, and what GET returns the REST API takes back.
      const [trace, span] = [traceId(), spanId()];
      await http().post('/otlp/v1/traces').set(auth).send(jsonRequest([jsonSpan(trace, span, {
        name: 'n'.repeat(1024), status: { code: 2, message: 'm'.repeat(10_000) }, attributes: [{ key: deepKey(31), value: { stringValue: 'v' } }],
      })])).expect(200);
      const stored = (await http().get(`/tracing/spans/${trace}/${span}`).set(auth).expect(200)).body.span;
      const { project_id: _p, created_at: _c, updated_at: _u, created_by_id: _cb, updated_by_id: _ub, ...input } = stored;
      await http().put('/tracing/spans').set(auth).send({ spans: [input] }).expect(200);
      const tree = (await http().get(`/observability/trees/${treeId(trace)}`).set(auth).expect(200)).body.nodes;
      const { project_id: _np, created_at: _nc, updated_at: _nu, ...node } = tree[0];
      await http().post('/observability/nodes').set(auth).send({ nodes: [node] }).expect(201);
    });

    it('answers 400 for garbage protobuf and for malformed JSON', async () => {
      // A binary export's error is a protobuf google.rpc.Status, as OTLP/HTTP prescribes.
      const garbage = await http().post('/otlp/v1/traces').set(auth).set('Content-Type', 'application/x-protobuf').send(Buffer.from('garbage garbage')).buffer(true).parse(binary).expect(400);
      expect(garbage.headers['content-type']).toMatch(/^application\/x-protobuf/);
      expect(decodeRpcStatus(garbage.body)).toEqual({ code: 3, message: 'body: not a valid protobuf ExportTraceServiceRequest (invalid wire type 7 at offset 1)' }); // 3: INVALID_ARGUMENT
      await http().post('/otlp/v1/traces').set(auth).set('Content-Type', 'application/json').send('{"resourceSpans": [').expect(400);
    });

    it('answers an empty export with success and writes nothing', async () => {
      const [spansBefore, nodesBefore] = [await count('spans'), await count('nodes')];
      await http().post('/otlp/v1/traces').set(auth).send({}).expect(200, { partialSuccess: {} });
      await http().post('/otlp/v1/traces').set(auth).set('Content-Type', 'application/x-protobuf').send(Buffer.alloc(0)).expect(200);
      expect([await count('spans'), await count('nodes')]).toEqual([spansBefore, nodesBefore]);
    });

    it('answers 415 for other content types', async () => {
      const res = await http().post('/otlp/v1/traces').set(auth).set('Content-Type', 'text/plain').send('hello').expect(415);
      expect(res.body.message).toBe('Content-Type must be application/x-protobuf or application/json, got "text/plain"');
    });

    it('takes exports larger than a REST batch up to MAX_OTLP_SPANS, and refuses a larger one with 413, writing nothing', async () => {
      const trace = traceId();
      const spans = (n: number) => Array.from({ length: n }, () => jsonSpan(trace, spanId()));
      await http().post('/otlp/v1/traces').set(auth).send(jsonRequest(spans(30))).expect(200);
      expect((await http().get(`/tracing/traces/${trace}`).set(auth).expect(200)).body.spans).toHaveLength(30);

      const [spansBefore, nodesBefore] = [await count('spans'), await count('nodes')];
      const res = await http().post('/otlp/v1/traces').set(auth).send(jsonRequest(spans(31))).expect(413);
      expect(res.body.message).toBe('spans: at most 30 per OTLP export (MAX_OTLP_SPANS), got 31');
      expect([await count('spans'), await count('nodes')]).toEqual([spansBefore, nodesBefore]);
    });

    it('answers 413 when the protobuf body, once inflated, exceeds the limit', async () => {
      const res = await http()
        .post('/otlp/v1/traces')
        .set(auth)
        .set('Content-Type', 'application/x-protobuf')
        .set('Content-Encoding', 'gzip')
        .send(gzipSync(Buffer.alloc(300 * 1024)))
        .buffer(true)
        .parse(binary)
        .expect(413);
      expect(decodeRpcStatus(res.body).message).toMatch(/larger than the limit/);
    });

    it('answers a binary export without a valid key with a Status saying UNAUTHENTICATED', async () => {
      const res = await http()
        .post('/otlp/v1/traces')
        .set('Authorization', 'ApiKey not-a-key')
        .set('Content-Type', 'application/x-protobuf')
        .send(protobufRequest(traceId(), spanId()))
        .buffer(true)
        .parse(binary)
        .expect(401);
      expect(decodeRpcStatus(res.body).code).toBe(16);
    });

    it('answers 401 without a valid API key and writes nothing', async () => {
      const trace = traceId();
      await http().post('/otlp/v1/traces').send(jsonRequest([jsonSpan(trace, spanId())])).expect(401);
      await http()
        .post('/otlp/v1/traces')
        .set('Authorization', 'ApiKey not-a-key')
        .set('Content-Type', 'application/x-protobuf')
        .send(protobufRequest(trace, spanId()))
        .expect(401);
      await http().get(`/tracing/traces/${trace}`).set(auth).expect(404);
    });

    it('keeps projects apart', async () => {
      const other = await t.createApiKey();
      const trace = traceId();
      await http().post('/otlp/v1/traces').set('Authorization', `ApiKey ${other.key}`).send(jsonRequest([jsonSpan(trace, spanId())])).expect(200);
      await http().get(`/tracing/traces/${trace}`).set(auth).expect(404);
      await http().get(`/tracing/traces/${trace}`).set('Authorization', `ApiKey ${other.key}`).expect(200);
    });

    it('is listed in the OpenAPI document', async () => {
      const doc = await http().get('/docs/openapi.json').expect(200);
      const operation = doc.body.paths['/otlp/v1/traces'].post;
      expect(operation.tags).toEqual(['otlp']);
      expect(Object.keys(operation.requestBody.content)).toEqual(['application/x-protobuf', 'application/json']);
    });
  });
});
