import { randomBytes, randomUUID } from 'node:crypto';
import { MirroredSpan } from '../../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { JsonObject, SpanInput } from '../../../src/tracing/span';
import { microsToIso } from '../../../src/tracing/timestamp';
import { makeSpan } from '../../../test/support/fixtures';

/**
 * Spans shaped like an LLM app's: the fixture span with about 1 KB of
 * attributes (messages, model parameters, token counts and costs). The text
 * is drawn from a vocabulary at random, so it compresses like prose rather
 * than like one repeated string.
 */

const WORDS = (
  'the a of to and in that is for it as with was on be by this are or from at which but have an not they ' +
  'retrieval context answer question summary document model token prompt user assistant system tool call ' +
  'result error latency cost invoice customer order shipping refund policy account billing address search ' +
  'embedding vector index query rerank chunk page section paragraph citation source evidence reasoning step'
).split(' ');

function prose(words: number): string {
  let text = '';
  for (let i = 0; i < words; i++) text += (i ? ' ' : '') + WORDS[Math.floor(Math.random() * WORDS.length)];
  return text;
}

export function realisticAttributes(): JsonObject {
  const prompt = 200 + Math.floor(Math.random() * 400);
  const completion = 50 + Math.floor(Math.random() * 300);
  return {
    ag: {
      type: { trace: 'invocation', span: 'llm' },
      data: {
        inputs: {
          prompt: [
            { role: 'system', content: prose(25) },
            { role: 'user', content: prose(30) },
          ],
        },
        outputs: { completion: [{ role: 'assistant', content: prose(35) }] },
      },
      metrics: {
        costs: { cumulative: { total: Number((prompt * 2.5e-6 + completion * 1e-5).toFixed(6)) } },
        tokens: { cumulative: { prompt, completion, total: prompt + completion } },
      },
      meta: { environment: 'production', session_id: randomUUID(), user_id: `user-${Math.floor(Math.random() * 10_000)}` },
    },
    gen_ai: {
      system: 'openai',
      request: { model: 'gpt-4o-2024-08-06', temperature: 0.2, max_tokens: 1024, top_p: 1 },
      response: { id: `chatcmpl-${randomBytes(12).toString('hex')}`, finish_reasons: ['stop'] },
      usage: { input_tokens: prompt, output_tokens: completion },
    },
  };
}

/** One trace of `size` spans (a root and its children) as the API takes them. */
export function benchTrace(size: number): SpanInput[] {
  const root = makeSpan({ span_type: 'workflow', span_name: 'agent run', attributes: realisticAttributes() });
  const spans = [root];
  for (let i = 1; i < size; i++) {
    spans.push(makeSpan({ trace_id: root.trace_id, parent_id: root.span_id, span_name: `llm call ${i % 8}`, attributes: realisticAttributes() }));
  }
  return spans;
}

/** A POST /tracing/spans body of one trace. */
export function spansBody(size: number): Buffer {
  return Buffer.from(JSON.stringify({ spans: benchTrace(size) }));
}

/**
 * Spans in a pool of traces for a timed loop: ~2,000 of them, as in
 * committedSpanSource, so its content repeats only every few MB of insert
 * lines, past what the mirror's compression looks back at.
 */
const POOL_SPANS = 2_000;

/** Fresh trace ids for one pool: a random prefix of its own, then a counter. */
function traceIds(): () => string {
  const prefix = randomBytes(8).toString('hex');
  let n = 0;
  return () => `${prefix}${(n++).toString(16).padStart(16, '0')}`;
}

/**
 * Traces of `size` spans for a timed loop, built before the clock starts and
 * handed out in turn, each time under a new trace id: the API refuses a span
 * it already holds (409), and span ids are unique only within their trace.
 * Building a trace (random prose, ~1 KB of attributes a span) inside the loop
 * is the load generator's work: in the API's process it counted as the API's
 * CPU, and on an HTTP client's event loop it delayed the other workers'
 * requests while they were timed. What is left per call is a shallow copy of
 * each span with its new trace id.
 */
export function tracePool(size: number): () => SpanInput[] {
  const traces = Array.from({ length: Math.ceil(POOL_SPANS / size) }, () => benchTrace(size));
  const nextId = traceIds();
  let n = 0;
  return () => {
    const trace_id = nextId();
    return traces[n++ % traces.length].map((span) => ({ ...span, trace_id }));
  };
}

/**
 * POST /tracing/spans bodies of one trace of `size` spans, as tracePool's,
 * serialized before the clock starts: each call copies a prebuilt body and
 * writes a new trace id over the old one where each span has it.
 */
export function spansBodyPool(size: number): () => Buffer {
  const bodies = Array.from({ length: Math.ceil(POOL_SPANS / size) }, () => {
    const spans = benchTrace(size);
    const body = Buffer.from(JSON.stringify({ spans }));
    const key = '"trace_id":"';
    const field = Buffer.from(`${key}${spans[0].trace_id}"`);
    // Where each span's trace id starts.
    const at: number[] = [];
    for (let i = body.indexOf(field); i >= 0; i = body.indexOf(field, i + field.length)) at.push(i + key.length);
    if (at.length !== size) throw new Error(`found the trace id ${at.length} times in a body of ${size} spans`);
    return { body, at };
  });
  const nextId = traceIds();
  let n = 0;
  return () => {
    const { body, at } = bodies[n++ % bodies.length];
    const copy = Buffer.from(body);
    const traceId = nextId();
    for (const offset of at) copy.write(traceId, offset, 'latin1');
    return copy;
  };
}

let clockMicros = BigInt(Date.now()) * 1000n;

/**
 * Committed spans made cheaply inside a timed loop: unique keys from a
 * counter, payloads shared from a pool of realistic spans. Nothing but the
 * pool stays reachable, so the garbage collector sees what the API's heap
 * would (short-lived request objects), not a benchmark's retained input.
 */
export function committedSpanSource(projectId: string, poolSize = 2_000): (count: number) => MirroredSpan[] {
  const pool = committedSpans(poolSize, projectId);
  const run = randomBytes(8).toString('hex');
  let n = 0;
  return (count) => {
    const spans: MirroredSpan[] = [];
    for (let i = 0; i < count; i++, n++) {
      clockMicros += 1n;
      const at = microsToIso(clockMicros);
      const counter = n.toString(16).padStart(16, '0');
      const template = pool[n % poolSize];
      spans.push({ ...template, trace_id: `${run}${counter}`, span_id: counter, parent_id: null, created_at: at, updated_at: at, version: clockMicros });
    }
    return spans;
  };
}

/** Committed spans as the decorator hands them to the mirror: stored fields plus version, with distinct microsecond times. */
export function committedSpans(count: number, projectId: string): MirroredSpan[] {
  const spans: MirroredSpan[] = [];
  while (spans.length < count) {
    for (const input of benchTrace(Math.min(10, count - spans.length))) {
      clockMicros += 1n;
      const at = microsToIso(clockMicros);
      spans.push({ ...input, project_id: projectId, created_at: at, updated_at: at, created_by_id: null, updated_by_id: null, version: clockMicros, deleted: false });
    }
  }
  return spans;
}
