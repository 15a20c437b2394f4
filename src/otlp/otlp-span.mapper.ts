import { z } from 'zod';
import { fieldErrors, formatPath } from '../http/zod-validation';
import { nodeInputSchema } from '../observability/dto/node.schema';
import { NodeInput } from '../observability/node';
import { spanInputSchema } from '../tracing/dto/span.schema';
import {
  Json, JsonObject, SPAN_KINDS, SPAN_TYPES, STATUS_CODES, SpanInput, SpanType, TRACE_TYPES, TraceType,
} from '../tracing/span';
import { traceIdToUuid } from '../tracing/trace-id';
import { OtlpDecodeError, OtlpEvent, OtlpKeyValue, OtlpLink, OtlpRejection, OtlpSpan } from './otlp-decoder';

/**
 * Maps a decoded OTLP span to the span and the legacy node the receiver
 * stores. Everything here is a pure function of the OTLP span, so an exporter
 * retry maps to exactly the same rows.
 *
 * Attributes: dotted keys are unflattened ("gen_ai.usage.input_tokens": 3 ->
 * {gen_ai: {usage: {input_tokens: 3}}}). Keys are placed in sorted order, so a
 * key is placed before every key it prefixes; when a path runs into a value
 * that is not an object ("a": 1 then "a.b": 2), the rest of the key stays one
 * literal dotted key at that level ({a: 1, "a.b": 2}), so flattening the
 * result gives back the original keys; so does a key that ends on a member
 * of a kvlist value ("a": {b: 1} then "a.b": 2 is {a: {b: 1}, "a.b": 2}).
 * Keys with an empty segment ("a..b", ".a") are never split. Duplicate keys:
 * the last one sent wins.
 *
 * Span attributes are the top level of `attributes`; the receiver adds the
 * keys `otel.resource` (resource attributes, unflattened) and `otel.scope`
 * ({name, version}) after all of the span's own, so they replace a span
 * attribute with those keys or under them: `otel.scope.name`, which the
 * semantic conventions define for formats without scopes, cannot mix into
 * the scope OTLP sent.
 */

const SPAN_TYPE_BY_GEN_AI_OPERATION = new Map<string, SpanType>([
  ['chat', 'chat'],
  ['text_completion', 'completion'],
  ['generate_content', 'llm'],
  ['embeddings', 'embedding'],
  ['execute_tool', 'tool'],
  ['invoke_agent', 'agent'],
  ['create_agent', 'agent'],
]);

/** Legacy node statuses use the short names (UNSET, OK, ERROR). */
const NODE_STATUS_CODES = ['UNSET', 'OK', 'ERROR'];

export function nanosToIso(nanos: bigint): string {
  // Truncates below the microsecond; the fraction never goes through Date.
  const micros = nanos / 1000n;
  const seconds = micros / 1_000_000n;
  const fraction = (micros % 1_000_000n).toString().padStart(6, '0');
  return `${new Date(Number(seconds) * 1000).toISOString().slice(0, 19)}.${fraction}Z`;
}

/** A span id as a node uuid: sixteen zeros, then the span id (00000000-0000-0000-xxxx-xxxxxxxxxxxx). */
export function spanIdToNodeId(spanId: string): string {
  return `00000000-0000-0000-${spanId.slice(0, 4)}-${spanId.slice(4)}`;
}

/** A trace's node tree is keyed by the trace id in its UUID form: the 32 hex digits grouped 8-4-4-4-12. */
export function traceIdToTreeId(traceId: string): string {
  return traceIdToUuid(traceId);
}

/** `placedLast` go in after every other key, in order, so each replaces whatever was at or under its key. */
export function unflattenAttributes(keyValues: OtlpKeyValue[], placedLast: OtlpKeyValue[] = []): JsonObject {
  const target: JsonObject = {};
  const placing: Placing = { owned: new WeakSet<JsonObject>([target]), fromValues: new WeakSet<JsonObject>(), placed: new Map() };
  const sorted = keyValues
    .map((kv, index) => ({ ...kv, index }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.index - b.index));
  // A key at or under a placedLast key is replaced by it whole: not placed at all, so no literal rest of it
  // ("otel.scope.name" beside a non-object or a kvlist "otel.scope") outlives the replacement.
  // Keys with an empty segment are never split (placeAt), so they stay literal, under nothing.
  const replaced = (key: string) => !neverSplit(key) && placedLast.some((last) => key === last.key || key.startsWith(`${last.key}.`));
  for (const { key, value } of sorted) if (!replaced(key)) placeAt(target, key, value, placing, false);
  for (const { key, value } of placedLast) placeAt(target, key, value, placing, true);
  return target;
}

/** A key with an empty segment ("a..b", ".a", "a."), which is kept literal, never split at its dots. */
const neverSplit = (key: string) => key.split('.').includes('');

interface Placing {
  /** Objects this call made (or copied), which a dotted key may add to. */
  owned: WeakSet<JsonObject>;
  /** Copies of objects that came in as values (kvlists): their members were sent, not placed by a key. */
  fromValues: WeakSet<JsonObject>;
  /** Where each key's value went: a duplicate key replaces it there (the last one sent wins). */
  placed: Map<string, { level: JsonObject; name: string }>;
}

/**
 * Objects that came in as values (kvlists) are copied before a dotted key adds to them, never mutated. A
 * dotted key that ends on a member a kvlist sent ("a": {b: 1} then "a.b": 2) keeps the rest of the key
 * literal where the kvlist's object starts ({a: {b: 1}, "a.b": 2}), as for a path that runs into a value:
 * neither is lost. With `replace` (placedLast), the key's value replaces whatever is there.
 */
function placeAt(target: JsonObject, key: string, value: Json, placing: Placing, replace: boolean): void {
  const place = (level: JsonObject, name: string) => {
    setOwn(level, name, value);
    placing.placed.set(key, { level, name });
  };
  const earlier = replace ? undefined : placing.placed.get(key);
  if (earlier) return place(earlier.level, earlier.name);
  if (neverSplit(key)) return place(target, key);
  const segments = key.split('.');
  let level = target;
  /** Where the innermost object a kvlist sent starts along the path, and the segment that enters it. */
  let sentFrom: { level: JsonObject; index: number } | null = null;
  for (let i = 0; i < segments.length - 1; i++) {
    const existing = Object.prototype.hasOwnProperty.call(level, segments[i]) ? level[segments[i]] : undefined;
    if (existing !== undefined && !isJsonObject(existing)) return place(level, segments.slice(i).join('.'));
    const sent = existing !== undefined && (!placing.owned.has(existing) || placing.fromValues.has(existing));
    if (sent) sentFrom = { level, index: i };
    const child: JsonObject = existing === undefined ? {} : placing.owned.has(existing) ? existing : { ...existing };
    placing.owned.add(child);
    if (sent) placing.fromValues.add(child);
    setOwn(level, segments[i], child);
    level = child;
  }
  const last = segments[segments.length - 1];
  if (!replace && sentFrom && Object.prototype.hasOwnProperty.call(level, last)) {
    return place(sentFrom.level, segments.slice(sentFrom.index).join('.'));
  }
  place(level, last);
}

/** A data property even for keys like "__proto__", which plain assignment would turn into a prototype change. */
function setOwn(target: JsonObject, key: string, value: Json): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

function isJsonObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function pick(object: JsonObject, path: string): Json | undefined {
  let current: Json | undefined = object;
  for (const segment of path.split('.')) {
    if (!isJsonObject(current) || !Object.prototype.hasOwnProperty.call(current, segment)) return undefined;
    current = current[segment];
  }
  return current;
}

/** A deep copy without `path`; parents left empty by the removal go too. */
function omit(object: JsonObject, path: string[]): JsonObject {
  const [head, ...rest] = path;
  const copy: JsonObject = {};
  for (const [key, value] of Object.entries(object)) {
    if (key !== head) setOwn(copy, key, value);
    else if (rest.length > 0 && isJsonObject(value)) {
      const inner = omit(value, rest);
      if (Object.keys(inner).length > 0) setOwn(copy, key, inner);
    }
  }
  return copy;
}

/** An event without a time keeps a null timestamp rather than a made-up one (1970, or the span's start). */
function eventTime(event: OtlpEvent): string | null {
  return event.timeUnixNano === null ? null : nanosToIso(event.timeUnixNano);
}

function mapEvent(event: OtlpEvent): JsonObject {
  return { name: event.name, timestamp: eventTime(event), attributes: unflattenAttributes(event.attributes) };
}

function mapLink(link: OtlpLink): JsonObject {
  return { trace_id: link.traceId, span_id: link.spanId, attributes: unflattenAttributes(link.attributes) };
}

function stringOrNull(value: Json | undefined): string | null {
  return typeof value === 'string' ? value : null;
}

/**
 * The last event named "exception" (the one most likely to have ended the
 * span), read from its flat semantic-convention keys; null without one.
 */
function mapException(span: OtlpSpan): JsonObject | null {
  const event = [...span.events].reverse().find((e) => e.name === 'exception');
  if (!event) return null;
  const attribute = (key: string) => stringOrNull(event.attributes.filter((kv) => kv.key === key).pop()?.value);
  return {
    type: attribute('exception.type'),
    message: attribute('exception.message'),
    stacktrace: attribute('exception.stacktrace'),
    timestamp: eventTime(event),
  };
}

/** `ag.type.node` when it names a span type, else the gen_ai operation, else unknown. */
function spanType(attributes: JsonObject): SpanType {
  const declared = pick(attributes, 'ag.type.node');
  if (typeof declared === 'string' && (SPAN_TYPES as readonly string[]).includes(declared)) return declared as SpanType;
  const operation = pick(attributes, 'gen_ai.operation.name');
  return (typeof operation === 'string' && SPAN_TYPE_BY_GEN_AI_OPERATION.get(operation)) || 'unknown';
}

/** `ag.type.trace` when it names a trace type (annotations arrive this way), else invocation. */
function traceType(attributes: JsonObject): TraceType {
  const declared = pick(attributes, 'ag.type.trace');
  return typeof declared === 'string' && (TRACE_TYPES as readonly string[]).includes(declared) ? (declared as TraceType) : 'invocation';
}

function scopeJson(span: OtlpSpan): JsonObject {
  return { name: span.scope.name, version: span.scope.version === '' ? null : span.scope.version };
}

export function toSpanInput(span: OtlpSpan): SpanInput {
  const attributes = unflattenAttributes(span.attributes, [
    { key: 'otel.resource', value: unflattenAttributes(span.resource.attributes) },
    { key: 'otel.scope', value: scopeJson(span) },
  ]);
  return {
    trace_id: span.traceId,
    span_id: span.spanId,
    parent_id: span.parentSpanId,
    trace_type: traceType(attributes),
    span_type: spanType(attributes),
    span_kind: SPAN_KINDS[span.kind],
    span_name: span.name,
    start_time: nanosToIso(span.startTimeUnixNano),
    end_time: nanosToIso(span.endTimeUnixNano),
    status_code: STATUS_CODES[span.status.code],
    status_message: span.status.message === '' ? null : span.status.message,
    attributes,
    references: null,
    links: span.links.length > 0 ? span.links.map(mapLink) : null,
    hashes: null,
    events: span.events.length > 0 ? span.events.map(mapEvent) : null,
    exception: mapException(span),
  };
}

/**
 * node.data is `ag.data`; node.metrics is `ag.metrics`, else token counts from
 * `gen_ai.usage` as {unit: {tokens: {prompt, completion, total}}}; meta is the
 * span's attributes without what data and metrics took. root_id is the node's
 * own id for a root span and null otherwise: a span cannot know its root
 * before the whole trace has arrived, and the value must not depend on how an
 * exporter batched the trace.
 */
export function toNodeInput(span: OtlpSpan): NodeInput {
  const attributes = unflattenAttributes(span.attributes);
  const nodeId = spanIdToNodeId(span.spanId);
  let meta = attributes;

  const agData = pick(attributes, 'ag.data');
  const data = isJsonObject(agData) ? agData : null;
  if (data) meta = omit(meta, ['ag', 'data']);

  let metrics: JsonObject | null = null;
  const agMetrics = pick(attributes, 'ag.metrics');
  const usage = pick(attributes, 'gen_ai.usage');
  if (isJsonObject(agMetrics)) {
    metrics = agMetrics;
    meta = omit(meta, ['ag', 'metrics']);
  } else if (isJsonObject(usage)) {
    const prompt = typeof usage.input_tokens === 'number' ? usage.input_tokens : null;
    const completion = typeof usage.output_tokens === 'number' ? usage.output_tokens : null;
    if (prompt !== null || completion !== null) {
      const sum = (prompt ?? 0) + (completion ?? 0);
      // No total rather than a wrong one: when a count is there but not a number (one past 2^53
      // arrives as a string), or the sum itself is past 2^53 and rounded.
      const unknownCount = (usage.input_tokens !== undefined && prompt === null) || (usage.output_tokens !== undefined && completion === null);
      const total = unknownCount || (Number.isInteger(sum) && !Number.isSafeInteger(sum)) ? null : sum;
      metrics = { unit: { tokens: { prompt, completion, total } } };
      // Only the counts metrics took: the rest of gen_ai.usage (cache_read_input_tokens, a count
      // past 2^53 that arrived as a string) stays in meta.
      if (prompt !== null) meta = omit(meta, ['gen_ai', 'usage', 'input_tokens']);
      if (completion !== null) meta = omit(meta, ['gen_ai', 'usage', 'output_tokens']);
    }
  }

  return {
    node_id: nodeId,
    tree_id: traceIdToTreeId(span.traceId),
    root_id: span.parentSpanId === null ? nodeId : null,
    parent_id: span.parentSpanId === null ? null : spanIdToNodeId(span.parentSpanId),
    node_name: span.name,
    node_type: spanType(attributes),
    time_start: nanosToIso(span.startTimeUnixNano),
    time_end: nanosToIso(span.endTimeUnixNano),
    status: { code: NODE_STATUS_CODES[span.status.code], message: span.status.message === '' ? null : span.status.message },
    data,
    metrics,
    meta: Object.keys(meta).length > 0 ? meta : null,
    refs: null,
    exception: mapException(span),
    links: span.links.length > 0 ? span.links.map(mapLink) : null,
    otel: {
      kind: SPAN_KINDS[span.kind],
      attributes,
      resource: unflattenAttributes(span.resource.attributes),
      scope: scopeJson(span),
      events: span.events.map(mapEvent),
    },
  };
}

/**
 * Spans and nodes for one request. A request may repeat a span (or, rarely,
 * a span id across traces, which share a node id); the last valid one wins, since a
 * single upsert statement cannot write the same key twice. A span whose span
 * or node the REST schemas refuse (storableProblem) is refused, alone: it is
 * in `rejected`, and neither its span nor its node is written.
 */
export function mapOtlpSpans(spans: OtlpSpan[]): { spans: SpanInput[]; nodes: NodeInput[]; rejected: OtlpRejection[] } {
  const spanInputs = new Map<string, SpanInput>();
  const nodeInputs = new Map<string, NodeInput>();
  const rejected: OtlpRejection[] = [];
  for (const otlp of spans) {
    const span = toSpanInput(otlp);
    const node = toNodeInput(otlp);
    const problem = storableProblem(otlp, span, node);
    if (problem) {
      rejected.push({ error: problem, spans: 1 });
      continue;
    }
    const key = `${span.trace_id}/${span.span_id}`;
    spanInputs.delete(key);
    spanInputs.set(key, span);
    nodeInputs.delete(node.node_id);
    nodeInputs.set(node.node_id, node);
  }
  return { spans: [...spanInputs.values()], nodes: [...nodeInputs.values()], rejected };
}

/**
 * What OTLP stores must be what the REST API would take, or a span read back
 * with GET could not be PUT back: so the span and node a span maps to are
 * checked by the REST schemas themselves, which hold every limit once (a
 * non-empty name of at most 1024 characters, a status message of at most
 * 10,000, JSON at most 32 levels deep, which unflattened dotted keys and the
 * node's otel wrapper deepen). An empty name is refused too: OTLP calls the
 * name required and "semantically required to be set to non-empty string",
 * and REST refuses it. Returns the refusal, naming the OTLP field the value
 * came from, or null when both are storable.
 */
export function storableProblem(otlp: OtlpSpan, span: SpanInput, node: NodeInput): OtlpDecodeError | null {
  for (const [what, schema, row] of [['span', spanInputSchema, span], ['node', nodeInputSchema, node]] as const) {
    const result = (schema as z.ZodTypeAny).safeParse(row);
    if (result.success) continue;
    const issue = result.error.issues[0];
    const [field, isJson] = otlpFieldOf(otlp.path, issue.path);
    const reason = fieldErrors(new z.ZodError([issue]))[0].message;
    const stored = formatPath(issue.path);
    return new OtlpDecodeError(field, isJson ? `${reason} (as stored in the ${what}: ${stored.length > 80 ? `${stored.slice(0, 80)}…` : stored}; dotted keys are unflattened)` : reason);
  }
  return null;
}

/** The OTLP field a stored span's or node's value comes from (see toSpanInput, toNodeInput), and whether it is JSON there. */
function otlpFieldOf(spanPath: string, stored: (string | number)[]): [string, boolean] {
  const resource = `${spanPath.slice(0, spanPath.indexOf('.scopeSpans['))}.resource.attributes`;
  const scope = `${spanPath.slice(0, spanPath.lastIndexOf('.spans['))}.scope`;
  const [field, second, third] = stored;
  const indexed = (name: string, index: unknown) => (typeof index === 'number' ? `${spanPath}.${name}[${index}]` : `${spanPath}.${name}`);
  switch (field) {
    case 'span_name':
    case 'node_name':
      return [`${spanPath}.name`, false];
    case 'status_message':
      return [`${spanPath}.status.message`, false];
    case 'status':
      return [`${spanPath}.status${second === 'message' ? '.message' : ''}`, false];
    case 'attributes':
      return [second === 'otel' && third === 'resource' ? resource : second === 'otel' && third === 'scope' ? scope : `${spanPath}.attributes`, true];
    case 'data':
    case 'metrics':
    case 'meta':
      return [`${spanPath}.attributes`, true];
    case 'otel':
      if (second === 'resource') return [resource, true];
      if (second === 'scope') return [scope, true];
      if (second === 'events') return [indexed('events', third), true];
      return [`${spanPath}.attributes`, true];
    case 'events':
    case 'links':
      return [indexed(field, second), true];
    case 'exception':
      return [`${spanPath}.events`, true];
    default:
      return [spanPath, false];
  }
}
