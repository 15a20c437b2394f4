import { randomBytes } from 'node:crypto';
import { SpanInput } from '../../src/tracing/span';
import { NodeInput } from '../../src/observability/node';

export const hex = (bytes: number) => randomBytes(bytes).toString('hex');
export const traceId = () => hex(16);
export const spanId = () => hex(8);

/** A valid span with realistic attributes; override any field. */
export function makeSpan(overrides: Partial<SpanInput> = {}): SpanInput {
  return {
    trace_id: traceId(),
    span_id: spanId(),
    parent_id: null,
    trace_type: 'invocation',
    span_type: 'llm',
    span_kind: 'SPAN_KIND_CLIENT',
    span_name: 'chat gpt-4o',
    start_time: '2026-11-20T10:00:00.123456Z',
    end_time: '2026-11-20T10:00:01.654321Z',
    status_code: 'STATUS_CODE_OK',
    status_message: null,
    attributes: {
      ag: { metrics: { costs: { cumulative: { total: 0.0125 } }, tokens: { cumulative: { total: 321 } } } },
      gen_ai: { request: { model: 'gpt-4o' } },
      'ünïcødé ✓': '日本語 🚀',
    },
    references: null,
    links: null,
    hashes: null,
    events: [{ name: 'token', timestamp: '2026-11-20T10:00:00.500000Z', attributes: { n: 1 } }],
    exception: null,
    ...overrides,
  };
}

/** A small trace: a root and `children` children, all in one trace. */
export function makeTrace(children = 2, overrides: Partial<SpanInput> = {}): SpanInput[] {
  const root = makeSpan({ span_type: 'workflow', span_name: 'root', ...overrides });
  const kids = Array.from({ length: children }, (_, i) =>
    makeSpan({ trace_id: root.trace_id, parent_id: root.span_id, span_name: `child-${i}`, ...overrides }),
  );
  return [root, ...kids];
}

export const uuid = () => {
  const h = hex(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20)}`;
};

export function makeNode(overrides: Partial<NodeInput> = {}): NodeInput {
  return {
    node_id: uuid(),
    tree_id: uuid(),
    root_id: null,
    parent_id: null,
    node_name: 'retrieve',
    node_type: 'task',
    time_start: '2026-11-20T10:00:00.000001Z',
    time_end: '2026-11-20T10:00:02.000002Z',
    status: { code: 'OK', message: null },
    data: { inputs: { q: 'why?' }, outputs: { a: 'because' } },
    metrics: { acc: { tokens: 12 } },
    meta: { env: 'test' },
    refs: null,
    exception: null,
    links: null,
    otel: null,
    ...overrides,
  };
}
