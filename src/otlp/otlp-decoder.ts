import generatedRoot = require('@opentelemetry/otlp-transformer/build/src/generated/root');
import { isUtf8 } from 'node:buffer';
import { BufferReader } from 'protobufjs/minimal';
import { jsonProblem, MAX_JSON_DEPTH } from '../http/json-value';
import { Json, SPAN_KINDS, STATUS_CODES } from '../tracing/span';
import { MAX_YEAR } from '../tracing/timestamp';

/**
 * Decodes OTLP/HTTP trace export requests (binary protobuf and OTLP/JSON) into
 * one normalized, fully validated list of spans, and the refusals of the
 * spans that were not valid (see OtlpExport). Protobuf is decoded only by
 * the OpenTelemetry project's generated definitions; both formats then go
 * through the same walk, so they validate and normalize identically.
 */

/**
 * The most a resource's attributes may take, as JSON. A resource (service,
 * host, container, cloud) typically takes a few hundred bytes to a few KiB;
 * each of its spans stores a copy, in the span and in its node, so what
 * an export stores of them is bounded as a whole too (below).
 */
export const MAX_RESOURCE_ATTRIBUTE_BYTES = 64 * 1024;

/**
 * The most one export's resources may store with their spans: each
 * resource's attribute bytes times its spans, summed. Without it a 0.7 MB
 * export (one 64 KiB resource over 10,000 tiny spans) stored 640 MiB twice
 * over, which the API also serialized and read back in one request. Typical
 * resources of 1-4 KiB over 10,000 spans take 10-40 MiB.
 */
export const MAX_RESOURCE_COPY_BYTES = 64 * 1024 * 1024;

/**
 * The longest an instrumentation scope's name or version may be, in
 * characters (a span's name has the same bound). Names are library names
 * ("io.opentelemetry.http"); each span of the scope stores a copy, in the
 * span and in its node, which also counts against MAX_RESOURCE_COPY_BYTES.
 * Unbounded, one 9 MB name over 10,000 tiny spans fit a 10 MB body.
 */
export const MAX_SCOPE_FIELD_LENGTH = 1024;

/**
 * An export that holds more entries than it may: more spans than
 * MAX_OTLP_SPANS, or more resources or scopes than that (a resource or a
 * scope without spans stores nothing). Counted before anything in the
 * export is walked (each entry walked can become a refusal, and a 10 MB body
 * holds millions of empty ones), and a protobuf body as it is decoded: the
 * decode stops past the bound (see countDecodes).
 */
export class OtlpTooLargeError extends Error {
  /** `counting`: the count stopped at the bound, and the export holds `count` or more. */
  constructor(readonly path: string, readonly count: number, readonly max: number, counting = false) {
    super(`${path}: at most ${max} per OTLP export (MAX_OTLP_SPANS), got ${count}${counting ? ' or more' : ''}`);
    this.name = 'OtlpTooLargeError';
  }
}

export class OtlpDecodeError extends Error {
  constructor(readonly path: string, readonly reason: string) {
    super(`${path}: ${reason}`);
    this.name = 'OtlpDecodeError';
  }
}

export interface OtlpKeyValue {
  key: string;
  /**
   * int64 is a number when it is a safe integer, else its decimal string;
   * bytes are standard base64; non-finite doubles are "NaN", "Infinity", "-Infinity".
   */
  value: Json;
}

export interface OtlpEvent {
  name: string;
  /** Null when the event has none (absent or 0, OTLP's "unset"). */
  timeUnixNano: bigint | null;
  attributes: OtlpKeyValue[];
}

export interface OtlpLink {
  /** Null for an invalid span context's (empty or all zeros), as for spanId. */
  traceId: string | null;
  spanId: string | null;
  attributes: OtlpKeyValue[];
}

/** Span kind and status code keep their OTLP enum numbers. */
export interface OtlpSpan {
  /** Where the span is in the request (resourceSpans[0].scopeSpans[0].spans[0]), for refusals that come after decoding. */
  path: string;
  resource: { attributes: OtlpKeyValue[] };
  scope: { name: string; version: string };
  /** Lowercase hex; never all zeros. */
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  name: string;
  kind: number;
  startTimeUnixNano: bigint;
  endTimeUnixNano: bigint;
  attributes: OtlpKeyValue[];
  events: OtlpEvent[];
  links: OtlpLink[];
  status: { code: number; message: string };
}

/**
 * A decoded export: its valid spans, and what it refused. A bad span refuses
 * itself; a bad resource or scope refuses every span under it (`spans`, 0
 * when there were none or they were not in a list). Only a body that cannot
 * be read as an export at all is refused as a whole (decode throws).
 */
export interface OtlpExport {
  spans: OtlpSpan[];
  rejected: OtlpRejection[];
  /**
   * OTLP/JSON levels without the field spans are under, holding a list
   * under a field this receiver does not know instead: `resource_spans` (a
   * proto field name, which OTLP/JSON does not take) or a pre-1.0
   * exporter's `instrumentationLibrarySpans`. Unknown fields are ignored, as
   * OTLP requires, so such spans are not stored; the answer warns of it
   * (a partial success refusing none) instead of a bare success.
   */
  ignored: string[];
}

export interface OtlpRejection {
  error: OtlpDecodeError;
  spans: number;
}

interface LongBits {
  low: number;
  high: number;
}

/** The decoded protobuf message, as the generated code builds it (unset fields are null). */
interface ProtoAnyValue {
  stringValue?: string | null;
  boolValue?: boolean | null;
  intValue?: LongBits | number | null;
  doubleValue?: number | null;
  arrayValue?: { values?: ProtoAnyValue[] | null } | null;
  kvlistValue?: { values?: ProtoKeyValue[] | null } | null;
  bytesValue?: Uint8Array | null;
}
interface ProtoKeyValue {
  key?: string | null;
  value?: ProtoAnyValue | null;
}
interface ProtoSpan {
  traceId?: Uint8Array | null;
  spanId?: Uint8Array | null;
  parentSpanId?: Uint8Array | null;
  name?: string | null;
  kind?: number | null;
  startTimeUnixNano?: LongBits | number | null;
  endTimeUnixNano?: LongBits | number | null;
  attributes?: ProtoKeyValue[] | null;
  events?: Array<{ name?: string | null; timeUnixNano?: LongBits | number | null; attributes?: ProtoKeyValue[] | null }> | null;
  links?: Array<{ traceId?: Uint8Array | null; spanId?: Uint8Array | null; attributes?: ProtoKeyValue[] | null }> | null;
  status?: { code?: number | null; message?: string | null } | null;
}
export interface ProtoExportTraceServiceRequest {
  resourceSpans?: Array<{
    resource?: { attributes?: ProtoKeyValue[] | null } | null;
    scopeSpans?: Array<{
      scope?: { name?: string | null; version?: string | null } | null;
      spans?: ProtoSpan[] | null;
    }> | null;
  }> | null;
}

interface GeneratedMessage<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(buffer: Uint8Array): T;
}

interface TraceServiceMessages {
  ExportTraceServiceRequest: GeneratedMessage<ProtoExportTraceServiceRequest>;
  ExportTraceServiceResponse: GeneratedMessage<{ partialSuccess?: { rejectedSpans?: number; errorMessage?: string } }>;
}

/** The collector trace service messages from @opentelemetry/otlp-transformer's generated protobufjs root. */
export const otlpTraceService = (
  generatedRoot as unknown as { opentelemetry: { proto: { collector: { trace: { v1: TraceServiceMessages } } } } }
).opentelemetry.proto.collector.trace.v1;

/** Times must stay inside the years both Postgres and ClickHouse DateTime64(6) hold. */
const TIME_LIMIT = `${MAX_YEAR + 1}-01-01T00:00:00Z`;
const MAX_TIME_NANOS = BigInt(Date.parse(TIME_LIMIT)) * 1_000_000n;
// Bounds the walk's recursion early; what is stored is held to the REST rules after mapping (storableProblem).
const MAX_VALUE_DEPTH = MAX_JSON_DEPTH;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const ANY_VALUE_FIELDS = ['stringValue', 'boolValue', 'intValue', 'doubleValue', 'arrayValue', 'kvlistValue', 'bytesValue'] as const;

type Format = 'json' | 'protobuf';

/** `maxEntries`: MAX_OTLP_SPANS, which bounds the export's spans, and its resources and scopes each (OtlpTooLargeError). */
export function decodeOtlpJson(body: unknown, maxEntries = Infinity): OtlpExport {
  if (!isObject(body)) throw new OtlpDecodeError('body', 'must be a JSON object');
  return walkRequest(body, 'json', maxEntries);
}

/**
 * Counts what the export holds at each level, as far as its shape lets
 * them be counted (the walk refuses the rest), and refuses too many before
 * anything is walked. The same for both formats: a decoded protobuf
 * message has the same arrays (or null where a field is absent).
 */
function boundShape(request: Record<string, unknown>, max: number): void {
  const resources = Array.isArray(request.resourceSpans) ? request.resourceSpans : [];
  if (resources.length > max) throw new OtlpTooLargeError('resourceSpans', resources.length, max);
  let scopes = 0;
  let spans = 0;
  for (const resourceSpans of resources) {
    if (!isObject(resourceSpans) || !Array.isArray(resourceSpans.scopeSpans)) continue;
    scopes += resourceSpans.scopeSpans.length;
    if (scopes > max) throw new OtlpTooLargeError('scopeSpans', scopes, max, true);
    spans += spansUnderResource(resourceSpans);
  }
  if (spans > max) throw new OtlpTooLargeError('spans', spans, max);
}

type CountedLevel = 'resourceSpans' | 'scopeSpans' | 'spans';

/** While decodeOtlpProtobuf runs the generated decoder (synchronously), the bound and what it has built so far. */
let decoding: { max: number; built: Record<CountedLevel, number> } | null = null;

/**
 * Bounds the generated decoder itself: each ResourceSpans, ScopeSpans and
 * Span it builds is counted, and past MAX_OTLP_SPANS of one the decode
 * stops with OtlpTooLargeError. Without it a 10 MB body of 2-byte empty
 * spans is 5M Span objects before any check can run, and a count of the
 * body's bytes made beforehand cannot stand in: the decoder is lenient (it
 * reads a known field whatever its wire type, and lets a message run past
 * its length), so a crafted body decodes into spans such a count reads as
 * the bytes of a string. The generated code looks each message type's
 * decode up on the root at every call, so the counting wrappers are put
 * there once; outside decodeOtlpProtobuf they only pass the call on.
 */
function countDecodes(): void {
  const v1 = (generatedRoot as unknown as { opentelemetry: { proto: { trace: { v1: Record<string, { decode: (...args: unknown[]) => unknown }> } } } })
    .opentelemetry.proto.trace.v1;
  const levels: Array<[string, CountedLevel]> = [['ResourceSpans', 'resourceSpans'], ['ScopeSpans', 'scopeSpans'], ['Span', 'spans']];
  for (const [type, level] of levels) {
    const message = v1[type];
    const decode = message.decode as ((...args: unknown[]) => unknown) & { counted?: true };
    if (decode.counted) continue;
    const counted = Object.assign(
      function countedDecode(this: unknown, ...args: unknown[]): unknown {
        if (decoding && ++decoding.built[level] > decoding.max) throw new OtlpTooLargeError(level, decoding.built[level], decoding.max, true);
        return decode.apply(this, args);
      },
      { counted: true as const },
    );
    message.decode = counted;
  }
}
countDecodes();

/**
 * protobufjs decodes invalid UTF-8 in a string field to U+FFFD, so the stored
 * text would differ from what was sent; protobuf requires valid UTF-8 there.
 */
class StrictUtf8Reader extends BufferReader {
  override string(): string {
    const bytes = this.bytes();
    if (!isUtf8(bytes)) throw new Error('a string field is not valid UTF-8');
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8');
  }
}

/** `maxEntries`: as decodeOtlpJson's, checked as the body is decoded: the decode stops past it (see countDecodes). */
export function decodeOtlpProtobuf(buf: Buffer, maxEntries = Infinity): OtlpExport {
  let message: ProtoExportTraceServiceRequest;
  decoding = { max: maxEntries, built: { resourceSpans: 0, scopeSpans: 0, spans: 0 } };
  try {
    // The generated decoder keeps using a reader it is handed, nested messages included.
    message = otlpTraceService.ExportTraceServiceRequest.decode(new StrictUtf8Reader(buf) as unknown as Uint8Array);
  } catch (error) {
    if (error instanceof OtlpTooLargeError) throw error;
    throw new OtlpDecodeError('body', `not a valid protobuf ExportTraceServiceRequest (${(error as Error).message})`);
  } finally {
    decoding = null;
  }
  return walkRequest(message as Record<string, unknown>, 'protobuf', maxEntries);
}

function walkRequest(request: Record<string, unknown>, format: Format, maxEntries: number): OtlpExport {
  // Each entry walked can become a refusal: counted first.
  boundShape(request, maxEntries);
  const decoded: OtlpExport = { spans: [], rejected: [], ignored: [] };
  /** Resource bytes the resources taken so far store with their spans. */
  let copied = 0;
  if (format === 'json') noteIgnored(decoded, request, 'body', 'resourceSpans', []);
  list(request.resourceSpans, 'resourceSpans').forEach((resourceSpans, r) => {
    const rPath = `resourceSpans[${r}]`;
    if (format === 'json') noteIgnored(decoded, resourceSpans, rPath, 'scopeSpans', ['resource', 'schemaUrl']);
    const spans = spansUnderResource(resourceSpans);
    const resource = refusing(decoded, spans, () => walkResource(resourceSpans, rPath, format, spans, MAX_RESOURCE_COPY_BYTES - copied));
    if (!resource) return;
    copied += resource.bytes * spans;
    resource.scopeSpans.forEach((scopeSpans, s) => {
      const sPath = `${rPath}.scopeSpans[${s}]`;
      if (format === 'json') noteIgnored(decoded, scopeSpans, sPath, 'spans', ['scope', 'schemaUrl']);
      const scope = refusing(decoded, spansUnderScope(scopeSpans), () => walkScope(scopeSpans, sPath, MAX_RESOURCE_COPY_BYTES - copied));
      if (!scope) return;
      copied += scope.bytes * scope.spans.length;
      scope.spans.forEach((span, i) => {
        const path = `${sPath}.spans[${i}]`;
        const walked = refusing(decoded, 1, () => walkSpan(object(span, path), path, format, resource.resource, scope.scope));
        if (walked) decoded.spans.push(walked);
      });
    });
  });
  return decoded;
}

/** At most this many levels are named in `ignored`; a sender that names its fields wrongly does so everywhere. */
const MAX_IGNORED_NOTES = 5;

/**
 * A level without `nested` (the field its spans are under) where a field this receiver does not know holds a
 * non-empty list: spans, most likely, under another name. Known fields beside it do not matter (an exporter
 * from before OTLP 1.0 sends its `resource` beside `instrumentationLibrarySpans`); a level with no such list
 * holds no spans to miss.
 */
function noteIgnored(decoded: OtlpExport, level: unknown, path: string, nested: string, known: readonly string[]): void {
  if (!isObject(level) || !isAbsent(level[nested]) || decoded.ignored.length >= MAX_IGNORED_NOTES) return;
  const keys = Object.keys(level).filter((key) => !known.includes(key) && Array.isArray(level[key]) && (level[key] as unknown[]).length > 0);
  if (keys.length === 0) return;
  const shown = keys.slice(0, 5).map((key) => JSON.stringify(key.slice(0, 64)));
  const why = keys.includes('instrumentationLibrarySpans')
    ? ': instrumentationLibrarySpans is what exporters before OTLP 1.0 sent, renamed scopeSpans since'
    : keys.some((key) => key.includes('_'))
      ? ': OTLP/JSON names fields in lowerCamelCase (resourceSpans, not resource_spans)'
      : '';
  decoded.ignored.push(`${path}: no ${nested}, but a list under a field this receiver does not know (${shown.join(', ')}${keys.length > shown.length ? ', …' : ''}), which was ignored${why}`);
}

/** Runs one level of the walk; a refusal there is recorded against the spans under that level, and the walk goes on. */
function refusing<T>(decoded: OtlpExport, spans: number, walk: () => T): T | null {
  try {
    return walk();
  } catch (error) {
    if (!(error instanceof OtlpDecodeError)) throw error;
    decoded.rejected.push({ error, spans });
    return null;
  }
}

function walkResource(
  value: unknown,
  rPath: string,
  format: Format,
  spans: number,
  copyBytesLeft: number,
): { resource: OtlpSpan['resource']; bytes: number; scopeSpans: unknown[] } {
  const rs = object(value, rPath);
  const resourceMessage = optionalObject(rs.resource, `${rPath}.resource`);
  const resource = { attributes: keyValues(resourceMessage?.attributes, `${rPath}.resource.attributes`, format) };
  // Stored with every span of the resource (and its node): bounded, so an export cannot multiply its own size by its span count.
  const resourceBytes = Buffer.byteLength(JSON.stringify(resource.attributes));
  if (resourceBytes > MAX_RESOURCE_ATTRIBUTE_BYTES) {
    throw new OtlpDecodeError(
      `${rPath}.resource.attributes`,
      `at most ${MAX_RESOURCE_ATTRIBUTE_BYTES.toLocaleString('en-US')} bytes (they are stored with every span of the resource), got ${resourceBytes.toLocaleString('en-US')}`,
    );
  }
  if (resourceBytes * spans > copyBytesLeft) {
    const bytes = (n: number) => n.toLocaleString('en-US');
    throw new OtlpDecodeError(
      `${rPath}.resource.attributes`,
      `${bytes(resourceBytes)} bytes stored with each of its ${bytes(spans)} spans take ${bytes(resourceBytes * spans)}, and an export's resources may store ` +
        `at most ${bytes(MAX_RESOURCE_COPY_BYTES)} with their spans${copyBytesLeft < MAX_RESOURCE_COPY_BYTES ? ` (${bytes(Math.max(copyBytesLeft, 0))} left after the resources before it)` : ''}: ` +
        'send fewer spans per export, or a smaller resource',
    );
  }
  return { resource, bytes: resourceBytes, scopeSpans: list(rs.scopeSpans, `${rPath}.scopeSpans`) };
}

function walkScope(value: unknown, sPath: string, copyBytesLeft: number): { scope: OtlpSpan['scope']; bytes: number; spans: unknown[] } {
  const ss = object(value, sPath);
  const scopeMessage = optionalObject(ss.scope, `${sPath}.scope`);
  const field = (name: 'name' | 'version') => {
    const text = string(scopeMessage?.[name], `${sPath}.scope.${name}`);
    if (text.length > MAX_SCOPE_FIELD_LENGTH) {
      throw new OtlpDecodeError(
        `${sPath}.scope.${name}`,
        `at most ${MAX_SCOPE_FIELD_LENGTH.toLocaleString('en-US')} characters (it is stored with every span of the scope), got ${text.length.toLocaleString('en-US')}`,
      );
    }
    return text;
  };
  const scope = { name: field('name'), version: field('version') };
  const spans = list(ss.spans, `${sPath}.spans`);
  // Stored with each span, like the resource's attributes: it draws on the same budget.
  const bytes = Buffer.byteLength(scope.name) + Buffer.byteLength(scope.version);
  if (bytes * spans.length > copyBytesLeft) {
    const n = (count: number) => count.toLocaleString('en-US');
    throw new OtlpDecodeError(
      `${sPath}.scope`,
      `its name and version (${n(bytes)} bytes) stored with each of its ${n(spans.length)} spans take ${n(bytes * spans.length)}, more than the ` +
        `${n(Math.max(copyBytesLeft, 0))} left of the ${n(MAX_RESOURCE_COPY_BYTES)} an export's resources and scopes may store with their spans: send fewer spans per export`,
    );
  }
  return { scope, bytes, spans };
}

/** How many spans a refused scope held, as far as its shape says (spans that are not in a list cannot be counted). */
function spansUnderScope(scopeSpans: unknown): number {
  return isObject(scopeSpans) && Array.isArray(scopeSpans.spans) ? scopeSpans.spans.length : 0;
}

function spansUnderResource(resourceSpans: unknown): number {
  if (!isObject(resourceSpans) || !Array.isArray(resourceSpans.scopeSpans)) return 0;
  return resourceSpans.scopeSpans.reduce((sum: number, scopeSpans) => sum + spansUnderScope(scopeSpans), 0);
}

function walkSpan(
  span: Record<string, unknown>,
  path: string,
  format: Format,
  resource: OtlpSpan['resource'],
  scope: OtlpSpan['scope'],
): OtlpSpan {
  const traceId = id(span.traceId, `${path}.traceId`, format, 16) as string;
  const spanId = id(span.spanId, `${path}.spanId`, format, 8) as string;
  const parentSpanId = id(span.parentSpanId, `${path}.parentSpanId`, format, 8, true);
  if (parentSpanId === spanId) throw new OtlpDecodeError(`${path}.parentSpanId`, 'must differ from spanId');
  const startTimeUnixNano = time(span.startTimeUnixNano, `${path}.startTimeUnixNano`, format, true);
  const endTimeUnixNano = time(span.endTimeUnixNano, `${path}.endTimeUnixNano`, format, true);
  if (endTimeUnixNano < startTimeUnixNano) {
    throw new OtlpDecodeError(`${path}.endTimeUnixNano`, 'must not be before startTimeUnixNano');
  }
  const status = optionalObject(span.status, `${path}.status`);
  return {
    path,
    resource,
    scope,
    traceId,
    spanId,
    parentSpanId,
    name: string(span.name, `${path}.name`),
    kind: enumValue(span.kind, `${path}.kind`, SPAN_KINDS),
    startTimeUnixNano,
    endTimeUnixNano,
    attributes: keyValues(span.attributes, `${path}.attributes`, format),
    events: list(span.events, `${path}.events`).map((event, e) => {
      const ePath = `${path}.events[${e}]`;
      const ev = object(event, ePath);
      return {
        name: string(ev.name, `${ePath}.name`),
        timeUnixNano: time(ev.timeUnixNano, `${ePath}.timeUnixNano`, format, false) || null,
        attributes: keyValues(ev.attributes, `${ePath}.attributes`, format),
      };
    }),
    links: list(span.links, `${path}.links`).map((link, l) => {
      const lPath = `${path}.links[${l}]`;
      const ln = object(link, lPath);
      // A link to an invalid span context (ids empty or all zeros) is kept, its ids null: OpenTelemetry's SDKs
      // record one when it carries attributes (messaging does), and it is no reason to refuse its span.
      return {
        traceId: id(ln.traceId, `${lPath}.traceId`, format, 16, true),
        spanId: id(ln.spanId, `${lPath}.spanId`, format, 8, true),
        attributes: keyValues(ln.attributes, `${lPath}.attributes`, format),
      };
    }),
    status: {
      code: enumValue(status?.code, `${path}.status.code`, STATUS_CODES),
      message: string(status?.message, `${path}.status.message`),
    },
  };
}

/** Proto3 JSON treats null like an absent field; the generated decoder leaves absent fields null. */
function isAbsent(value: unknown): value is null | undefined {
  return value === null || value === undefined;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function object(value: unknown, path: string): Record<string, unknown> {
  if (!isObject(value)) throw new OtlpDecodeError(path, 'must be an object');
  return value;
}

function optionalObject(value: unknown, path: string): Record<string, unknown> | null {
  return isAbsent(value) ? null : object(value, path);
}

function list(value: unknown, path: string): unknown[] {
  if (isAbsent(value)) return [];
  if (!Array.isArray(value)) throw new OtlpDecodeError(path, 'must be an array');
  return value;
}

function string(value: unknown, path: string): string {
  if (isAbsent(value)) return '';
  if (typeof value !== 'string') throw new OtlpDecodeError(path, 'must be a string');
  // Strings end up in jsonb, which refuses NUL and unpaired surrogates: refuse them here, by path.
  const problem = jsonProblem(value);
  if (problem) throw new OtlpDecodeError(path, problem[1]);
  return value;
}

/** The domain's span kinds and status codes are the OTLP enum names, in enum order. */
function enumValue(value: unknown, path: string, names: readonly string[]): number {
  if (isAbsent(value)) return 0;
  if (typeof value === 'string' && names.includes(value)) return names.indexOf(value);
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < names.length) return value;
  throw new OtlpDecodeError(path, `must be an integer from 0 to ${names.length - 1} or one of ${names.join(', ')}`);
}

/**
 * Trace and span ids: hex strings in OTLP/JSON, raw bytes in protobuf. An
 * empty optional id means "none", and so does an all-zero one: the invalid
 * span id, which several SDKs and exporters send as a root span's parent.
 * Refusing it would refuse every root span they send.
 */
function id(value: unknown, path: string, format: Format, bytes: number, optional = false): string | null {
  let hex: string;
  if (format === 'json') {
    if (isAbsent(value) || value === '') {
      if (optional) return null;
      throw new OtlpDecodeError(path, 'is required');
    }
    if (typeof value !== 'string' || value.length !== bytes * 2 || !/^[0-9a-fA-F]+$/.test(value)) {
      throw new OtlpDecodeError(path, `must be ${bytes * 2} hex characters`);
    }
    hex = value.toLowerCase();
  } else {
    if (isAbsent(value) || (value instanceof Uint8Array && value.length === 0)) {
      if (optional) return null;
      throw new OtlpDecodeError(path, 'is required');
    }
    if (!(value instanceof Uint8Array) || value.length !== bytes) {
      throw new OtlpDecodeError(path, `must be ${bytes} bytes`);
    }
    hex = Buffer.from(value.buffer, value.byteOffset, value.length).toString('hex');
  }
  if (/^0+$/.test(hex)) {
    if (optional) return null;
    throw new OtlpDecodeError(path, 'must not be all zeros');
  }
  return hex;
}

/**
 * fixed64 nanoseconds: a Long from protobuf; a decimal string or a number in
 * OTLP/JSON, which says a receiver takes either. A number past 2^53 (every
 * time since 1970-04-15) arrives rounded to the nearest double, at most
 * 128 ns off today; stored in microseconds, it can land 1 µs from the time
 * its exact digits give. Refusing it refused every span of exporters that
 * send numbers.
 */
function time(value: unknown, path: string, format: Format, required: boolean): bigint {
  if (isAbsent(value)) {
    if (required) throw new OtlpDecodeError(path, 'is required');
    return 0n;
  }
  const nanos = integer(value, path, format, 'an unsigned 64-bit integer', false, { rounded: true });
  if (nanos < 0n) throw new OtlpDecodeError(path, 'must be an unsigned 64-bit integer');
  if (required && nanos === 0n) throw new OtlpDecodeError(path, 'is required');
  if (nanos >= MAX_TIME_NANOS) throw new OtlpDecodeError(path, `must be before ${TIME_LIMIT}`);
  return nanos;
}

/** `rounded`: a JSON number past 2^53 is taken as the double it arrived as (a time), not refused (an attribute's value). */
function integer(value: unknown, path: string, format: Format, what: string, signed: boolean, options: { rounded?: boolean } = {}): bigint {
  if (format === 'protobuf' && isLongBits(value)) {
    const bits = (BigInt(value.high >>> 0) << 32n) | BigInt(value.low >>> 0);
    return signed ? BigInt.asIntN(64, bits) : bits;
  }
  if (typeof value === 'number' && Number.isInteger(value)) {
    // JSON.parse has already rounded a number past 2^53 to the nearest double (…999 became …1024), and
    // nothing tells an exact one apart: storing it would store another value than the one sent.
    if (format === 'json' && !Number.isSafeInteger(value) && !options.rounded) {
      throw new OtlpDecodeError(path, `must be ${what}; a JSON number past 2^53 loses precision, so send int64 values as decimal strings, as OTLP/JSON encodes them`);
    }
    return BigInt(value);
  }
  if (format === 'json' && typeof value === 'string' && /^-?\d{1,20}$/.test(value)) {
    const parsed = BigInt(value);
    const [min, max] = signed ? [INT64_MIN, INT64_MAX] : [0n, 2n ** 64n - 1n];
    if (parsed >= min && parsed <= max) return parsed;
  }
  throw new OtlpDecodeError(path, `must be ${what}`);
}

function isLongBits(value: unknown): value is LongBits {
  return typeof value === 'object' && value !== null && typeof (value as LongBits).low === 'number' && typeof (value as LongBits).high === 'number';
}

function keyValues(value: unknown, path: string, format: Format, depth = 0): OtlpKeyValue[] {
  return list(value, path).map((item, i) => {
    const kv = object(item, `${path}[${i}]`);
    return {
      key: string(kv.key, `${path}[${i}].key`),
      value: anyValue(kv.value, `${path}[${i}].value`, format, depth),
    };
  });
}

function anyValue(value: unknown, path: string, format: Format, depth: number): Json {
  if (isAbsent(value)) return null;
  const av = object(value, path);
  const set = ANY_VALUE_FIELDS.filter((field) => !isAbsent(av[field]));
  if (set.length === 0) return null;
  if (set.length > 1) throw new OtlpDecodeError(path, `must set only one of ${set.join(', ')}`);
  const field = set[0];
  const v = av[field];
  const fieldPath = `${path}.${field}`;
  switch (field) {
    case 'stringValue':
      return string(v, fieldPath);
    case 'boolValue':
      if (typeof v !== 'boolean') throw new OtlpDecodeError(fieldPath, 'must be a boolean');
      return v;
    case 'intValue': {
      const n = integer(v, fieldPath, format, 'a signed 64-bit integer', true);
      if (n < INT64_MIN || n > INT64_MAX) throw new OtlpDecodeError(fieldPath, 'must be a signed 64-bit integer');
      // JSON numbers lose precision past 2^53, so larger values keep their exact decimal text.
      return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString();
    }
    case 'doubleValue':
      return double(v, fieldPath);
    case 'bytesValue':
      return bytes(v, fieldPath, format);
    case 'arrayValue':
    case 'kvlistValue': {
      if (depth >= MAX_VALUE_DEPTH) throw new OtlpDecodeError(fieldPath, `must not nest deeper than ${MAX_VALUE_DEPTH} levels`);
      const container = object(v, fieldPath);
      if (field === 'arrayValue') {
        return list(container.values, `${fieldPath}.values`).map((item, i) =>
          anyValue(item, `${fieldPath}.values[${i}]`, format, depth + 1),
        );
      }
      // Later duplicates win; own data properties keep keys like "__proto__" inert.
      return Object.fromEntries(
        keyValues(container.values, `${fieldPath}.values`, format, depth + 1).map((kv) => [kv.key, kv.value]),
      );
    }
  }
}

/**
 * A JSON number's text, as proto3 JSON takes a double given as a string: not
 * what Number() also reads (hex "0x10", binary "0b11", surrounding spaces).
 */
const JSON_NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

/** JSON cannot carry NaN or the infinities, so they keep the proto3 JSON names. */
function double(value: unknown, path: string): Json {
  let n: number;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'string' && ['NaN', 'Infinity', '-Infinity'].includes(value)) return value;
  else if (typeof value === 'string' && JSON_NUMBER.test(value) && Number.isFinite(Number(value))) n = Number(value);
  else throw new OtlpDecodeError(path, 'must be a number');
  if (Number.isNaN(n)) return 'NaN';
  if (!Number.isFinite(n)) return n > 0 ? 'Infinity' : '-Infinity';
  return n;
}

function bytes(value: unknown, path: string, format: Format): string {
  if (format === 'protobuf' && value instanceof Uint8Array) {
    return Buffer.from(value.buffer, value.byteOffset, value.length).toString('base64');
  }
  // Proto3 JSON writes standard base64 and accepts the URL-safe alphabet too.
  if (format === 'json' && typeof value === 'string' && /^[A-Za-z0-9+/_-]*={0,2}$/.test(value) && value.replace(/=+$/, '').length % 4 !== 1) {
    return Buffer.from(value, 'base64').toString('base64');
  }
  throw new OtlpDecodeError(path, 'must be base64');
}
