import { connect } from 'node:net';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import request from 'supertest';
import { makeNode, makeSpan, makeTrace, traceId, uuid } from '../support/fixtures';
import { createTestApp, TestApp } from '../support/app';
import { eventually } from '../support/fake-clickhouse';

describe('REST: /tracing and /observability', () => {
  let t: TestApp;
  let auth: { Authorization: string };
  beforeAll(async () => {
    t = await createTestApp({ MAX_BATCH_ITEMS: '50', MAX_RESPONSE_ITEMS: '40', BODY_LIMIT: '256kb' });
    auth = { Authorization: `ApiKey ${t.apiKey}` };
  });
  afterAll(async () => t.close());

  const http = () => request(t.url);
  const countSpans = async () => Number((await t.database.db.selectFrom('spans').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

  describe('spans', () => {
    it('keeps a "__proto__" key in JSON fields as the ordinary key it is in JSON', async () => {
      const span = makeSpan();
      // Written as text: in a JavaScript object literal __proto__ would set the prototype instead.
      const payload = '{"__proto__":{"polluted":1},"ok":1}';
      const body = JSON.stringify({ spans: [{ ...span, exception: { type: 'x' } }] }).replace('"exception":{"type":"x"}', `"attributes":${payload},"exception":{"__proto__":"s"}`);
      await http().post('/tracing/spans').set(auth).set('Content-Type', 'application/json').send(body).expect(201);
      const node = makeNode();
      const nodeBody = JSON.stringify({ nodes: [{ ...node, data: { type: 'x' } }] }).replace('"data":{"type":"x"}', `"data":${payload}`);
      await http().post('/observability/nodes').set(auth).set('Content-Type', 'application/json').send(nodeBody).expect(201);

      const read = await http().get(`/tracing/spans/${span.trace_id}/${span.span_id}`).set(auth).buffer(true).parse((res, done) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => done(null, text));
      });
      const returned = JSON.parse(read.body).span;
      expect(Object.keys(returned.attributes).sort()).toEqual(['__proto__', 'ok']);
      expect(JSON.stringify(returned.attributes.__proto__)).toBe('{"polluted":1}');
      expect(Object.keys(returned.exception)).toEqual(['__proto__']);
      const stored = await t.database.db.selectFrom('nodes').select((eb) => eb.cast<string>('data', 'text').as('data')).where('node_id', '=', node.node_id).executeTakeFirstOrThrow();
      expect(stored.data).toBe('{"ok": 1, "__proto__": {"polluted": 1}}');
      expect(({} as { polluted?: number }).polluted).toBeUndefined();
    });

    it('refuses a JSON body in another charset than UTF-8 with a 415, writing nothing (UTF-16 is what body-parser would guess the byte order of)', async () => {
      const before = await countSpans();
      const text = JSON.stringify({ spans: [makeSpan()] });
      for (const [charset, bytes] of [['utf-16', Buffer.from(text, 'utf16le')], ['utf-16le', Buffer.from(text, 'utf16le')], ['utf-32', Buffer.alloc(8)]] as const) {
        const res = await http().post('/tracing/spans').set(auth).set('Content-Type', `application/json; charset=${charset}`).send(bytes).expect(415);
        expect(res.body.message).toBe(`JSON bodies must be UTF-8, got charset "${charset}"`);
      }
      await http().post('/tracing/spans').set(auth).set('Content-Type', 'application/json; charset=UTF-8').send(text).expect(201);
      expect(await countSpans()).toBe(before + 1);
    });

    it('refuses an integer JSON would round (400, nothing written) and stores one sent as a string, or printed from a double, as sent', async () => {
      const countNodes = async () => Number((await t.database.db.selectFrom('nodes').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);
      // Written as text: a JavaScript number literal would already be rounded.
      const withNumber = (body: object, number: string) => JSON.stringify(body).replace('"@N@"', number);
      const send = (method: 'post' | 'put', path: string, text: string) => http()[method](path).set(auth).set('Content-Type', 'application/json').send(text);
      const existing = makeSpan({ attributes: { id: 1 } });
      await http().post('/tracing/spans').set(auth).send({ spans: [existing] }).expect(201);
      const message = 'the integer 12345678901234567891 would be stored as 12345678901234567000: a JSON number keeps every integer exactly only up to 2^53 (9007199254740992); send it as a string';
      const [spansBefore, nodesBefore] = [await countSpans(), await countNodes()];
      for (const [method, path, body, field] of [
        ['post', '/tracing/spans', { spans: [makeSpan(), makeSpan({ attributes: { id: '@N@' } })] }, 'spans[1].attributes.id'],
        ['put', '/tracing/spans', { spans: [{ ...existing, attributes: { id: '@N@' } }] }, 'spans[0].attributes.id'],
        ['post', '/observability/nodes', { nodes: [makeNode({ metrics: { ids: [1, '@N@'] } })] }, 'nodes[0].metrics.ids[1]'],
        ['post', '/tracing/spans/query', { filter: { operator: 'and', conditions: [{ field: 'attributes', key: 'id', operator: 'eq', value: '@N@' }] } }, 'filter.conditions[0].value'],
      ] as const) {
        const res = await send(method, path, withNumber(body, '12345678901234567891')).expect(400);
        expect({ path, body: res.body }).toEqual({ path, body: { statusCode: 400, error: 'Bad Request', message: `${field}: ${message}`, errors: [{ field, message }] } });
      }
      expect([await countSpans(), await countNodes()]).toEqual([spansBefore, nodesBefore]);
      const read = async (span: { trace_id: string; span_id: string }) =>
        (await http().get(`/tracing/spans/${span.trace_id}/${span.span_id}`).set(auth).buffer(true).parse((res, done) => {
          let text = '';
          res.on('data', (chunk: Buffer) => (text += chunk.toString()));
          res.on('end', () => done(null, text));
        })).body as string;
      expect(await read(existing)).toContain('"attributes":{"id":1}');

      const asText = makeSpan({ attributes: { id: '12345678901234567891' } });
      const printed = makeSpan({ attributes: { id: '@N@' } });
      await send('post', '/tracing/spans', withNumber({ spans: [asText, printed] }, JSON.stringify(-882642929372611300))).expect(201);
      expect(await read(asText)).toContain('"attributes":{"id":"12345678901234567891"}');
      expect(await read(printed)).toContain('"attributes":{"id":-882642929372611300}');
    });

    it('creates a trace and reads it back exactly, with microsecond times', async () => {
      const spans = makeTrace(2);
      const created = await http().post('/tracing/spans').set(auth).send({ spans }).expect(201);
      expect(created.body.count).toBe(3);

      const read = await http().get(`/tracing/traces/${spans[0].trace_id}`).set(auth).expect(200);
      expect(read.body.spans).toHaveLength(3);
      const byId = new Map(read.body.spans.map((s: { span_id: string }) => [s.span_id, s]));
      for (const input of spans) {
        expect(byId.get(input.span_id)).toMatchObject({ ...input, project_id: t.projectId });
      }
      const one = await http().get(`/tracing/spans/${spans[1].trace_id}/${spans[1].span_id}`).set(auth).expect(200);
      expect(one.body.span.start_time).toBe('2026-11-20T10:00:00.123456Z');
      expect(one.body.span.parent_id).toBe(spans[0].span_id);
      expect(one.body.span.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    });

    it('normalizes ids to lowercase and times to UTC microseconds', async () => {
      const span = makeSpan({ start_time: '2026-11-20T12:00:00.5+02:00', end_time: '2026-11-20T10:00:01Z' });
      const body = { spans: [{ ...span, trace_id: span.trace_id.toUpperCase() }] };
      const res = await http().post('/tracing/spans').set(auth).send(body).expect(201);
      expect(res.body.spans[0]).toMatchObject({ trace_id: span.trace_id, start_time: '2026-11-20T10:00:00.500000Z', end_time: '2026-11-20T10:00:01.000000Z' });
    });

    it('answers 409 and writes nothing when one span of a batch already exists', async () => {
      const [existing] = makeTrace(0);
      await http().post('/tracing/spans').set(auth).send({ spans: [existing] }).expect(201);
      const before = await countSpans();
      const res = await http().post('/tracing/spans').set(auth).send({ spans: [makeSpan(), existing] }).expect(409);
      expect(res.body.message).toContain(existing.span_id);
      expect(await countSpans()).toBe(before);
    });

    it('names the first ten conflicting spans of a large batch, and how many more', async () => {
      const existing = makeTrace(11);
      await http().post('/tracing/spans').set(auth).send({ spans: existing }).expect(201);
      const res = await http().post('/tracing/spans').set(auth).send({ spans: existing }).expect(409);
      const named = existing.slice(0, 10).map((s) => `${s.trace_id}/${s.span_id}`).join(', ');
      expect(res.body.message).toBe(`spans already exist: ${named} and 2 more`);
    });

    it('updates spans with PUT, bumping updated_at and keeping created_at', async () => {
      const [span] = makeTrace(0);
      const created = (await http().post('/tracing/spans').set(auth).send({ spans: [span] }).expect(201)).body.spans[0];
      const res = await http().put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'renamed', attributes: { x: 1 } }] }).expect(200);
      expect(res.body.spans[0]).toMatchObject({ span_name: 'renamed', attributes: { x: 1 }, created_at: created.created_at });
      expect(res.body.spans[0].updated_at > created.updated_at).toBe(true);
    });

    it('answers 404 and changes nothing when a PUT names a missing span', async () => {
      const [span] = makeTrace(0);
      await http().post('/tracing/spans').set(auth).send({ spans: [span] }).expect(201);
      await http().put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'changed' }, makeSpan()] }).expect(404);
      const read = await http().get(`/tracing/spans/${span.trace_id}/${span.span_id}`).set(auth).expect(200);
      expect(read.body.span.span_name).toBe(span.span_name);
    });

    it('deletes a trace, then answers 404 for it', async () => {
      const spans = makeTrace(3);
      await http().post('/tracing/spans').set(auth).send({ spans }).expect(201);
      const res = await http().delete(`/tracing/traces/${spans[0].trace_id}`).set(auth).expect(200);
      expect(res.body.count).toBe(4);
      await http().get(`/tracing/traces/${spans[0].trace_id}`).set(auth).expect(404);
      await http().delete(`/tracing/traces/${spans[0].trace_id}`).set(auth).expect(404);
    });

    it('deletes single spans by key', async () => {
      const spans = makeTrace(1);
      await http().post('/tracing/spans').set(auth).send({ spans }).expect(201);
      const res = await http().delete('/tracing/spans').set(auth).send({ spans: [{ trace_id: spans[1].trace_id, span_id: spans[1].span_id }] }).expect(200);
      expect(res.body.count).toBe(1);
      expect((await http().get(`/tracing/traces/${spans[0].trace_id}`).set(auth).expect(200)).body.spans).toHaveLength(1);
    });
  });

  describe('bad input gets a 4xx naming the field, and writes nothing', () => {
    const cases: Array<[string, unknown, RegExp]> = [
      ['a bad trace id in the third span', { spans: [makeSpan(), makeSpan(), { ...makeSpan(), trace_id: 'xyz' }] }, /spans\[2\]\.trace_id: must be 32 hex characters/],
      ['a wrong type', { spans: [{ ...makeSpan(), span_name: 42 }] }, /spans\[0\]\.span_name: must be string, got number/],
      ['a missing field', { spans: [{ ...makeSpan(), start_time: undefined }] }, /spans\[0\]\.start_time: is required/],
      ['an unknown field', { spans: [{ ...makeSpan(), colour: 'red' }] }, /spans\[0\]: unknown field\(s\): colour/],
      ['an unknown enum value', { spans: [{ ...makeSpan(), span_kind: 'SPAN_KIND_WEIRD' }] }, /spans\[0\]\.span_kind: must be one of/],
      ['end before start', { spans: [{ ...makeSpan(), end_time: '2000-01-01T00:00:00Z' }] }, /spans\[0\]\.end_time: must not be before start_time/],
      ['a time without zone', { spans: [{ ...makeSpan(), start_time: '2026-11-20T10:00:00' }] }, /spans\[0\]\.start_time: must be an ISO-8601 time/],
      ['a NUL character in attributes', { spans: [{ ...makeSpan(), attributes: { a: 'x\u0000y' } }] }, /spans\[0\]\.attributes\.a: must not contain the NUL/],
      ['the same span twice', (() => { const s = makeSpan(); return { spans: [s, s] }; })(), /spans\[1\]\.span_id: duplicates spans\[0\]/],
      ['an empty batch', { spans: [] }, /spans: must hold at least one span/],
      ['no body fields', {}, /spans: is required/],
    ];
    it.each(cases)('%s', async (_, body, message) => {
      const before = await countSpans();
      const res = await http().post('/tracing/spans').set(auth).send(body as object).expect(400);
      expect(res.body.message).toMatch(message);
      expect(await countSpans()).toBe(before);
    });

    it('an invalid start time is the one error, not also "end before start" (spans, nodes and node queries)', async () => {
      const timeError = (field: string) => ({ field, message: 'must be an ISO-8601 time with a zone between years 1900 and 2299, got "garbage"' });
      const span = await http().post('/tracing/spans').set(auth).send({ spans: [{ ...makeSpan(), start_time: 'garbage' }] }).expect(400);
      expect(span.body.errors).toEqual([timeError('spans[0].start_time')]);
      const node = await http().post('/observability/nodes').set(auth).send({ nodes: [{ ...makeNode(), time_start: 'garbage' }] }).expect(400);
      expect(node.body.errors).toEqual([timeError('nodes[0].time_start')]);
      const query = await http().post('/observability/nodes/query').set(auth).send({ oldest: 'garbage', newest: '2026-11-20T00:00:00Z' }).expect(400);
      expect(query.body.errors).toEqual([timeError('oldest')]);
      // Other fields of the same item are still reported beside it.
      const both = await http().post('/tracing/spans').set(auth).send({ spans: [{ ...makeSpan(), start_time: 'garbage', span_name: '' }] }).expect(400);
      expect(both.body.errors).toEqual([{ field: 'spans[0].span_name', message: 'must not be empty' }, timeError('spans[0].start_time')]);
    });

    it('refuses empty values and batches in the same words on every route (spans, span keys, nodes)', async () => {
      const errors = async (method: 'post' | 'delete', path: string, body: object) => (await http()[method](path).set(auth).send(body).expect(400)).body.errors;
      expect(await errors('delete', '/tracing/spans', { spans: [] })).toEqual([{ field: 'spans', message: 'must hold at least one span' }]);
      expect(await errors('post', '/observability/nodes', { nodes: [{ ...makeNode(), node_type: '', status: { code: '', message: null } }] })).toEqual([
        { field: 'nodes[0].node_type', message: 'must not be empty' },
        { field: 'nodes[0].status.code', message: 'must not be empty' },
      ]);
    });

    it('repeats at most 64 characters of a refused value or key, and names at most five unknown fields', async () => {
      const huge = 'W'.repeat(100_000);
      const kind = await http().post('/tracing/spans').set(auth).send({ spans: [{ ...makeSpan(), span_kind: huge }] }).expect(400);
      expect(kind.body.errors).toEqual([{ field: 'spans[0].span_kind', message: expect.stringMatching(new RegExp(`^must be one of .*, got "W{64}…"$`)) }]);
      const keys = Object.fromEntries([huge, ...Array.from({ length: 11 }, (_, i) => `k${i}`)].map((key) => [key, 1]));
      const unknown = await http().post('/tracing/spans').set(auth).send({ spans: [{ ...makeSpan(), ...keys }] }).expect(400);
      expect(unknown.body.errors).toEqual([{ field: 'spans[0]', message: `unknown field(s): ${'W'.repeat(64)}…, k0, k1, k2, k3 and 7 more` }]);
      for (const res of [kind, unknown]) expect(JSON.stringify(res.body).length).toBeLessThan(1_000);
    });

    it('malformed JSON is a 400 shaped like every other: errors name the body', async () => {
      const res = await http().post('/tracing/spans').set(auth).set('Content-Type', 'application/json').send('{"spans": [').expect(400);
      expect(res.body).toEqual({
        statusCode: 400,
        error: 'Bad Request',
        message: expect.stringMatching(/^\(body\): could not be parsed as JSON: /),
        errors: [{ field: '(body)', message: expect.stringMatching(/^could not be parsed as JSON: /) }],
      });
    });

    it.each([['null', 'null'], ['"x"', 'string'], ['1', 'number'], [' true ', 'boolean']])('a JSON body of %s is a 400 saying it must be an object (was "could not be parsed as JSON")', async (body, kind) => {
      const message = `must be a JSON object, got ${kind}`;
      for (const path of ['/tracing/spans', '/tracing/spans/query', '/observability/nodes/query', '/otlp/v1/traces']) {
        const res = await http().post(path).set(auth).set('Content-Type', 'application/json').send(body).expect(400);
        expect(res.body).toEqual({ statusCode: 400, error: 'Bad Request', message: `(body): ${message}`, errors: [{ field: '(body)', message }] });
      }
    });

    it('a body that is not JSON is a 415, on write and on query routes', async () => {
      const before = await countSpans();
      const res = await http().post('/tracing/spans').set(auth).set('Content-Type', 'text/plain').send(JSON.stringify({ spans: [makeSpan()] })).expect(415);
      expect(res.body.message).toMatch(/must be application\/json, got "text\/plain"/);
      await http().post('/tracing/spans/query').set(auth).set('Content-Type', 'application/x-www-form-urlencoded').send('filter=x').expect(415);
      expect(await countSpans()).toBe(before);
    });

    it('a bad id in the path is a 400 naming the parameter', async () => {
      const res = await http().get('/tracing/traces/not-hex').set(auth).expect(400);
      expect(res.body.errors).toEqual([{ field: 'traceId', message: 'must be 32 hex characters' }]);
      expect(res.body.message).toBe('traceId: must be 32 hex characters');
      expect((await http().get(`/tracing/spans/${traceId()}/zz`).set(auth).expect(400)).body.errors).toEqual([{ field: 'spanId', message: 'must be 16 hex characters' }]);
      expect((await http().get('/tracing/spans/xyz/abc').set(auth).expect(400)).body.errors).toEqual([
        { field: 'traceId', message: 'must be 32 hex characters' },
        { field: 'spanId', message: 'must be 16 hex characters' },
      ]);
      expect((await http().delete('/tracing/traces/zz').set(auth).expect(400)).body.errors).toEqual([{ field: 'traceId', message: 'must be 32 hex characters' }]);
      expect((await http().get('/observability/trees/zz').set(auth).expect(400)).body.errors).toEqual([{ field: 'treeId', message: 'must be a UUID' }]);
    });

    it('too many spans in one batch is a 413', async () => {
      const spans = Array.from({ length: 51 }, () => makeSpan());
      const res = await http().post('/tracing/spans').set(auth).send({ spans }).expect(413);
      expect(res.body.message).toMatch(/spans: at most 50 per request/);
    });

    it('an oversize body is a 413', async () => {
      const res = await http().post('/tracing/spans').set(auth).send({ spans: [makeSpan({ attributes: { big: 'x'.repeat(300_000) } })] }).expect(413);
      // BODY_LIMIT 256kb: the answer says how large the body was and what the limit is.
      expect(res.body.message).toMatch(/^request body of \d{6} bytes is larger than the limit of 262144 bytes$/);
    });
  });

  describe('auth', () => {
    it('refuses requests without a key, with a malformed key, or an unknown key', async () => {
      await http().get(`/tracing/traces/${traceId()}`).expect(401);
      await http().get(`/tracing/traces/${traceId()}`).set({ Authorization: 'Bearer abc' }).expect(401);
      await http().get(`/tracing/traces/${traceId()}`).set({ Authorization: 'ApiKey tk_nope' }).expect(401);
    });

    it('answers a request without a live key, to a path no route serves, or to a public route, without reading its body', async () => {
      // Declares a 5 MB body and sends 20 bytes of it: an API that read bodies first would wait for the rest.
      const answerTo = (head: string) => new Promise<string>((resolve, reject) => {
        const socket = connect(Number(new URL(t.url).port), '127.0.0.1', () => socket.write(`${head}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{"spans":[{"trace_id`));
        let text = '';
        socket.on('data', (chunk) => {
          text += chunk.toString();
          if (text.includes('\r\n\r\n')) { socket.destroy(); resolve(text.split('\r\n')[0]); }
        });
        socket.on('error', reject);
        setTimeout(() => { socket.destroy(); reject(new Error(`no answer to ${head} in 3 s`)); }, 3000);
      });
      expect(await answerTo('POST /tracing/spans HTTP/1.1')).toBe('HTTP/1.1 401 Unauthorized');
      expect(await answerTo('POST /tracing/spans HTTP/1.1\r\nAuthorization: ApiKey tk_nope')).toBe('HTTP/1.1 401 Unauthorized');
      expect(await answerTo('POST /no/such/route HTTP/1.1')).toBe('HTTP/1.1 404 Not Found');
      expect(await answerTo('GET /health HTTP/1.1')).toBe('HTTP/1.1 200 OK');
      expect(await answerTo('GET /metrics HTTP/1.1')).toBe('HTTP/1.1 200 OK');
      // So a body that would be refused is not even looked at.
      await http().post('/tracing/spans').set('Content-Type', 'application/json').send('{x').expect(401);
      await http().post('/tracing/spans').set('Content-Type', 'application/json').send(`{"spans":"${'x'.repeat(300_000)}"}`).expect(401);
      await http().post('/tracing/spans').set('Content-Type', 'text/plain').send('x').expect(401);
    });

    it('scopes everything to the key’s project', async () => {
      const other = await t.createApiKey();
      const spans = makeTrace(1);
      await http().post('/tracing/spans').set(auth).send({ spans }).expect(201);
      const otherAuth = { Authorization: `ApiKey ${other.key}` };
      await http().get(`/tracing/traces/${spans[0].trace_id}`).set(otherAuth).expect(404);
      await http().delete(`/tracing/traces/${spans[0].trace_id}`).set(otherAuth).expect(404);
      // The same ids in another project are another span, not a conflict.
      await http().post('/tracing/spans').set(otherAuth).send({ spans }).expect(201);
      await http().get(`/tracing/traces/${spans[0].trace_id}`).set(auth).expect(200);
    });

    it('stores keys hashed', async () => {
      const rows = await t.database.db.selectFrom('api_keys').select(['key_hash', 'prefix']).execute();
      expect(rows.length).toBeGreaterThan(0);
      expect(rows.some((r) => r.key_hash.includes(t.apiKey) || t.apiKey === r.key_hash)).toBe(false);
      expect(rows.every((r) => /^[0-9a-f]{64}$/.test(r.key_hash))).toBe(true);
    });
  });

  describe('nodes', () => {
    it('ingests a tree, reads it, replaces a node, deletes the tree', async () => {
      const tree = uuid();
      const root = makeNode({ tree_id: tree });
      const child = makeNode({ tree_id: tree, parent_id: root.node_id, root_id: root.node_id });
      await http().post('/observability/nodes').set(auth).send({ nodes: [root, child] }).expect(201);
      const read = await http().get(`/observability/trees/${tree}`).set(auth).expect(200);
      expect(read.body.nodes).toHaveLength(2);
      const stored = read.body.nodes.find((n: { node_id: string }) => n.node_id === root.node_id);
      expect(stored).toMatchObject({ ...root, project_id: t.projectId });

      await http().post('/observability/nodes').set(auth).send({ nodes: [{ ...child, node_name: 'renamed' }] }).expect(201);
      const again = await http().get(`/observability/trees/${tree}`).set(auth).expect(200);
      expect(again.body.nodes.map((n: { node_name: string }) => n.node_name).sort()).toEqual(['renamed', 'retrieve']);

      const query = await http().post('/observability/nodes/query').set(auth).send({ tree_id: tree }).expect(200);
      expect(query.body.count).toBe(2);

      expect((await http().delete(`/observability/trees/${tree}`).set(auth).expect(200)).body.count).toBe(2);
      await http().get(`/observability/trees/${tree}`).set(auth).expect(404);
    });

    // MAX_RESPONSE_ITEMS counts items: 40 spans of 15 MB each (whole prompts) pass it, and their JSON passes the
    // longest string V8 builds, which res.json threw as a RangeError: a 500 "internal error". Storing 600 MB here
    // would take the suite's memory, so JSON.stringify fails as it would, for that answer alone.
    it('an answer too large to serialize is a 422 saying to read it in pages, not a 500', async () => {
      const trace = makeTrace(3);
      await http().post('/tracing/spans').set(auth).send({ spans: trace }).expect(201);
      const stringify = JSON.stringify;
      const tooLong = jest.spyOn(JSON, 'stringify').mockImplementation(((value: unknown, ...rest: []) => {
        if ((value as { spans?: Array<{ trace_id: string }> })?.spans?.[0]?.trace_id === trace[0].trace_id) throw new RangeError('Invalid string length');
        return stringify(value, ...rest);
      }) as typeof JSON.stringify);
      try {
        const refused = await http().get(`/tracing/traces/${trace[0].trace_id}`).set(auth).expect(422);
        expect(refused.body).toEqual({
          statusCode: 422,
          error: 'Unprocessable Entity',
          message:
            'the answer is larger than one JSON response can hold (about 512 MB): read it in pages with a smaller limit ' +
            '(POST /tracing/spans/query, POST /observability/nodes/query); an operator can lower MAX_RESPONSE_ITEMS',
        });
      } finally {
        tooLong.mockRestore();
      }
      expect((await http().get(`/tracing/traces/${trace[0].trace_id}`).set(auth).expect(200)).body.spans).toHaveLength(4);
    });

    it('a trace or tree larger than MAX_RESPONSE_ITEMS (40) is a 422 saying how to read it in pages; the pages read it whole', async () => {
      const big = makeTrace(40); // 41 spans
      await http().post('/tracing/spans').set(auth).send({ spans: big.slice(0, 40) }).expect(201);
      expect((await http().get(`/tracing/traces/${big[0].trace_id}`).set(auth).expect(200)).body.spans).toHaveLength(40);
      await http().post('/tracing/spans').set(auth).send({ spans: big.slice(40) }).expect(201);
      const refused = await http().get(`/tracing/traces/${big[0].trace_id}`).set(auth).expect(422);
      const trace = big[0].trace_id;
      const pageQuery = { focus: 'span', filter: { operator: 'and', conditions: [{ field: 'trace_id', operator: 'is', value: trace }] } };
      expect(refused.body).toEqual({
        statusCode: 422,
        error: 'Unprocessable Entity',
        message: `trace ${trace} has more than 40 spans, more than one answer carries (MAX_RESPONSE_ITEMS); read it in pages with POST /tracing/spans/query, ${JSON.stringify(pageQuery)} and windowing.next`,
      });
      // What the message says works: the pages hold the whole trace.
      const read: string[] = [];
      let next: string | undefined;
      do {
        const page = await http().post('/tracing/spans/query').set(auth).send({ ...pageQuery, windowing: { limit: 30, ...(next ? { next } : {}) } }).expect(200);
        read.push(...page.body.spans.map((s: { span_id: string }) => s.span_id));
        next = page.body.next ?? undefined;
      } while (next);
      expect(read.sort()).toEqual(big.map((s) => s.span_id).sort());
      // A focus-trace page that would pass the bound ends before that trace; alone, it is the same 422.
      const focusTrace = { focus: 'trace', filter: { operator: 'and', conditions: [{ field: 'trace_id', operator: 'in', value: [trace] }] } };
      const tooLarge = await http().post('/tracing/spans/query').set(auth).send(focusTrace).expect(422);
      expect(tooLarge.body).toEqual({ ...refused.body, message: `${refused.body.message}; to page on past it, pass this answer's \`next\` as windowing.next`, next: expect.any(String) });
      const pastIt = await http().post('/tracing/spans/query').set(auth).send({ ...focusTrace, windowing: { next: tooLarge.body.next } }).expect(200);
      expect(pastIt.body).toEqual({ count: 0, spans: [], next: null });

      const tree = uuid();
      const nodes = Array.from({ length: 41 }, () => makeNode({ tree_id: tree }));
      await http().post('/observability/nodes').set(auth).send({ nodes: nodes.slice(0, 40) }).expect(201);
      await http().get(`/observability/trees/${tree}`).set(auth).expect(200);
      await http().post('/observability/nodes').set(auth).send({ nodes: nodes.slice(40) }).expect(201);
      expect((await http().get(`/observability/trees/${tree}`).set(auth).expect(422)).body.message).toBe(
        `tree ${tree} has more than 40 nodes, more than one answer carries (MAX_RESPONSE_ITEMS); read it in pages with POST /observability/nodes/query, {"tree_id":"${tree}"} and next`,
      );
      // Its 41 nodes share one time_start: pages of 15 go by node_id within it, none skipped or repeated.
      const nodeIds: string[] = [];
      let nodesNext: string | undefined;
      do {
        const page = await http().post('/observability/nodes/query').set(auth).send({ tree_id: tree, limit: 15, ...(nodesNext ? { next: nodesNext } : {}) }).expect(200);
        expect(page.body.count).toBe(page.body.nodes.length);
        nodeIds.push(...page.body.nodes.map((n: { node_id: string }) => n.node_id));
        nodesNext = page.body.next ?? undefined;
      } while (nodesNext);
      expect(nodeIds).toHaveLength(41);
      expect([...nodeIds].sort()).toEqual(nodes.map((n) => n.node_id).sort());
      // A page asking for more than one answer carries holds MAX_RESPONSE_ITEMS, and goes on with `next`.
      const cappedSpans = await http().post('/tracing/spans/query').set(auth).send({ ...pageQuery, windowing: { limit: 1000 } }).expect(200);
      expect({ count: cappedSpans.body.count, more: cappedSpans.body.next !== null }).toEqual({ count: 40, more: true });
      const cappedNodes = await http().post('/observability/nodes/query').set(auth).send({ tree_id: tree, limit: 1000 }).expect(200);
      expect({ count: cappedNodes.body.count, more: cappedNodes.body.next !== null }).toEqual({ count: 40, more: true });
      // Deleting takes the whole trace and tree: the answer is a count.
      expect((await http().delete(`/tracing/traces/${trace}`).set(auth).expect(200)).body.count).toBe(41);
      expect((await http().delete(`/observability/trees/${tree}`).set(auth).expect(200)).body.count).toBe(41);
    });

    it('nodes/query pages newest first with a cursor, and refuses a cursor it did not issue', async () => {
      const tree = uuid();
      const times = ['10:00:00.000001', '10:00:00.000002', '10:00:00.000002', '10:00:00.000002', '10:00:03', '10:00:04', '10:00:04'];
      const nodes = times.map((time) => makeNode({ tree_id: tree, time_start: `2026-11-21T${time}Z`, time_end: '2026-11-21T11:00:00Z' }));
      await http().post('/observability/nodes').set(auth).send({ nodes }).expect(201);
      const whole = (await http().post('/observability/nodes/query').set(auth).send({ tree_id: tree }).expect(200)).body;
      expect(whole).toMatchObject({ count: 7, next: null });
      const paged: Array<{ node_id: string }> = [];
      // The first page's `next` sent as null, as a client looping on `next` does; null leaves a part out, as in span queries.
      let next: string | null = null;
      do {
        const page: { nodes: Array<{ node_id: string }>; next: string | null } = (await http().post('/observability/nodes/query').set(auth).send({ tree_id: tree, limit: 2, next, node_type: null, oldest: null }).expect(200)).body;
        paged.push(...page.nodes);
        next = page.next;
      } while (next);
      expect(paged.map((n) => n.node_id)).toEqual(whole.nodes.map((n: { node_id: string }) => n.node_id));
      // A cursor pages on only the selection it was issued for: another tree's page would start where this one stopped.
      const first = (await http().post('/observability/nodes/query').set(auth).send({ tree_id: tree, limit: 2 }).expect(200)).body;
      const elsewhere = await http().post('/observability/nodes/query').set(auth).send({ tree_id: uuid(), limit: 2, next: first.next }).expect(400);
      expect(elsewhere.body.errors).toEqual([{ field: 'next', message: expect.stringMatching(/^the cursor continues a query with another filter or window/) }]);

      await http().post('/tracing/spans').set(auth).send({ spans: makeTrace(1) }).expect(201);
      const spanCursor = (await http().post('/tracing/spans/query').set(auth).send({ windowing: { limit: 1 } }).expect(200)).body.next;
      expect(typeof spanCursor).toBe('string');
      for (const [cursor, message] of [
        [spanCursor, /^the cursor belongs to another kind of query, focus or order \(span:descending\)/],
        ['bm90LWEtY3Vyc29y', /^not a cursor returned by this API$/],
        ['not a cursor!', /^expected a cursor returned as "next" by a previous page$/],
      ]) {
        const res = await http().post('/observability/nodes/query').set(auth).send({ tree_id: tree, next: cursor }).expect(400);
        expect(res.body.errors).toEqual([{ field: 'next', message: expect.stringMatching(message) }]);
      }
    });

    it.each([['a string', '5'], ['a boolean', true], ['an array', [3]], ['a fraction', 2.5]])('nodes/query refuses %s as limit, as spans/query does (was coerced)', async (_, limit) => {
      const spans = await http().post('/tracing/spans/query').set(auth).send({ windowing: { limit } }).expect(400);
      expect(spans.body.errors).toEqual([{ field: 'windowing.limit', message: 'expected an integer from 1 to 1000' }]);
      const nodes = await http().post('/observability/nodes/query').set(auth).send({ limit }).expect(400);
      expect(nodes.body).toEqual({
        statusCode: 400,
        error: 'Bad Request',
        message: 'limit: expected an integer from 1 to 1000',
        errors: [{ field: 'limit', message: 'expected an integer from 1 to 1000' }],
      });
      expect((await http().post('/observability/nodes/query').set(auth).send({ limit: 3 }).expect(200)).body.count).toBeLessThanOrEqual(3);
    });

    it.each([
      ['newest before oldest', { oldest: '2026-11-21T00:00:00Z', newest: '2026-11-20T00:00:00Z' }],
      ['newest equal to oldest', { oldest: '2026-11-20T00:00:00Z', newest: '2026-11-20T00:00:00.000000+00:00' }],
    ])('nodes/query refuses a window with %s, as spans/query does (was 200, count 0)', async (_, window) => {
      const spans = await http().post('/tracing/spans/query').set(auth).send({ windowing: window }).expect(400);
      expect(spans.body.errors).toEqual([{ field: 'windowing.newest', message: 'must be later than windowing.oldest' }]);
      const nodes = await http().post('/observability/nodes/query').set(auth).send(window).expect(400);
      expect(nodes.body.errors).toEqual([{ field: 'newest', message: 'must be later than oldest' }]);
    });

    it('refuses a node that is its own parent, as a span that is (was 201)', async () => {
      const span = makeSpan();
      const spanRes = await http().post('/tracing/spans').set(auth).send({ spans: [{ ...span, parent_id: span.span_id }] }).expect(400);
      expect(spanRes.body.errors).toEqual([{ field: 'spans[0].parent_id', message: 'must differ from span_id' }]);
      const node = makeNode();
      const nodeRes = await http().post('/observability/nodes').set(auth).send({ nodes: [{ ...node, parent_id: node.node_id.toUpperCase() }] }).expect(400);
      expect(nodeRes.body.errors).toEqual([{ field: 'nodes[0].parent_id', message: 'must differ from node_id' }]);
      await http().get(`/observability/trees/${node.tree_id}`).set(auth).expect(404);
    });

    it('rejects a bad node with the field named', async () => {
      const res = await http().post('/observability/nodes').set(auth).send({ nodes: [{ ...makeNode(), tree_id: 'nope' }] }).expect(400);
      expect(res.body.message).toMatch(/nodes\[0\]\.tree_id: must be a UUID/);
    });
  });

  describe('operations', () => {
    it('GET /health reports Postgres up and the mirror off', async () => {
      const res = await http().get('/health').expect(200);
      expect(res.body.status).toBe('ok');
      expect(res.body.info.postgres.status).toBe('up');
      expect(res.body.info.mirror).toMatchObject({ status: 'up', enabled: false });
    });

    /** Requests http_request_duration_seconds has counted under these labels, as /metrics says now (0 before the first). */
    const requestCount = async (method: string, route: string, status: string) => {
      const text = (await http().get('/metrics').expect(200)).text;
      const labels = `method="${method}",route="${route}",status="${status}"`.replace(/[{}*/]/g, '\\$&');
      return Number(new RegExp(`^http_request_duration_seconds_count\\{${labels}\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    };

    it('counts refused bodies (415, 400, 413) under their route in the HTTP metrics: bodies are read once a route has the request', async () => {
      const count = (status: string) => requestCount('POST', '/tracing/spans', status);
      const before = { 415: await count('415'), 400: await count('400'), 413: await count('413') };
      await http().post('/tracing/spans').set(auth).set('Content-Type', 'text/plain').send('x').expect(415);
      await http().post('/tracing/spans').set(auth).set('Content-Type', 'application/json').send('{x').expect(400);
      await http().post('/tracing/spans').set(auth).set('Content-Type', 'application/json').send(`{"spans":"${'x'.repeat(300_000)}"}`).expect(413);
      expect({ 415: await count('415'), 400: await count('400'), 413: await count('413') }).toEqual({ 415: before[415] + 1, 400: before[400] + 1, 413: before[413] + 1 });
    });

    it('counts a request whose caller went away before its answer as status="aborted"', async () => {
      const count = () => requestCount('POST', '/tracing/spans', 'aborted');
      const before = await count();
      // A key that is live, and a body that never ends: the route waits for the rest until the caller hangs up.
      await new Promise<void>((resolve, reject) => {
        const head = `POST /tracing/spans HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth.Authorization}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"spans":[`;
        const socket = connect(Number(new URL(t.url).port), '127.0.0.1', () => socket.write(head, () => setTimeout(() => socket.destroy(), 200)));
        socket.on('close', () => resolve());
        socket.on('error', reject);
      });
      await eventually('the aborted request to be counted', async () => (await count()) === before + 1, 5_000, 50);
    });

    it('counts a path or method no route serves (404) as route="unmatched", not as the middleware mount', async () => {
      // Was route="/{*path}": req.route named the forRoutes('*') mount the request last went through.
      const counts = async () => ({
        getUnmatched: await requestCount('GET', 'unmatched', '404'),
        deleteUnmatched: await requestCount('DELETE', 'unmatched', '404'),
        mount: (await requestCount('GET', '/{*path}', '404')) + (await requestCount('DELETE', '/{*path}', '404')),
      });
      const before = await counts();
      await http().get('/no-such-path/42').expect(404);
      await http().delete('/metrics').expect(404);
      expect(await counts()).toEqual({ getUnmatched: before.getUnmatched + 1, deleteUnmatched: before.deleteUnmatched + 1, mount: 0 });
    });

    it('counts the OpenAPI UI\'s files, served without a route, as route="static"', async () => {
      const count = () => requestCount('GET', 'static', '200');
      const before = await count();
      await http().get('/docs/swagger-ui.css').expect(200);
      await eventually('the file to be counted', async () => (await count()) === before + 1, 5_000, 50);
    });

    it('counts a path the router cannot decode (400 before any route) as route="unmatched"', async () => {
      // Was missing: Nest mounted the middleware as a route (`/{*path}`), whose parameter fails to decode.
      const count = () => requestCount('GET', 'unmatched', '400');
      const before = await count();
      // fetch, not supertest: the path must reach the server as written, its bad escape included.
      expect((await fetch(`${t.url}/tracing/traces/%E0`)).status).toBe(400);
      await eventually('the refused request to be counted', async () => (await count()) === before + 1, 5_000, 50);
    });

    it('GET /metrics serves Prometheus text with HTTP metrics', async () => {
      const res = await http().get('/metrics').expect(200);
      expect(res.headers['content-type']).toMatch(/text\/plain/);
      expect(res.text).toMatch(/http_request_duration_seconds_count\{method="POST",route="\/tracing\/spans",status="201"\} \d+/);
      expect(res.text).toMatch(/process_cpu_seconds_total/);
      for (const pool of ['request', 'mirror', 'probe']) {
        expect(res.text).toMatch(new RegExp(`^postgres_pool_connections\\{pool="${pool}",state="idle"\\} \\d+$`, 'm'));
        expect(res.text).toMatch(new RegExp(`^postgres_pool_waiting_requests\\{pool="${pool}"\\} 0$`, 'm'));
        expect(res.text).toMatch(new RegExp(`^postgres_connections_abandoned_total\\{pool="${pool}"\\} 0$`, 'm'));
      }
    });

    it('GET /docs serves the OpenAPI UI and document', async () => {
      await http().get('/docs').redirects(1).expect(200);
      const doc = await http().get('/docs/openapi.json').expect(200);
      expect(Object.keys(doc.body.paths)).toEqual(expect.arrayContaining(['/tracing/spans', '/tracing/traces/{traceId}', '/observability/nodes', '/otlp/v1/traces']));
      expect(doc.body.paths['/tracing/spans'].post.requestBody.content['application/json'].schema.properties.spans).toBeDefined();
    });

    it('documents the error answers each route can give, with the body they carry', async () => {
      const doc = (await http().get('/docs/openapi.json').expect(200)).body;
      const statuses = (path: string, method: string) => Object.keys(doc.paths[path][method].responses).sort();
      expect(statuses('/tracing/spans', 'post')).toEqual(['201', '400', '401', '409', '413', '415', '500', '503']);
      expect(statuses('/tracing/spans', 'put')).toEqual(['200', '400', '401', '404', '413', '415', '500', '503']);
      expect(statuses('/tracing/traces/{traceId}', 'get')).toEqual(['200', '400', '401', '404', '422', '500', '503']);
      expect(statuses('/observability/trees/{treeId}', 'get')).toEqual(['200', '400', '401', '404', '422', '500', '503']);
      expect(statuses('/tracing/spans/query', 'post')).toEqual(['200', '400', '401', '413', '415', '422', '500', '503']);
      expect(statuses('/observability/trees/{treeId}', 'delete')).toEqual(['200', '400', '401', '404', '500', '503']);
      // Public routes answer for themselves: no API key, no 401.
      expect(statuses('/health', 'get')).not.toContain('401');
      // OTLP's own descriptions are kept.
      expect(doc.paths['/otlp/v1/traces'].post.responses['415'].description).toMatch(/Content-Type/);

      // The documented body is the one a real error answer carries.
      const schema = doc.components.schemas.Error;
      expect(doc.paths['/tracing/spans'].post.responses['409'].content['application/json'].schema).toEqual({ $ref: '#/components/schemas/Error' });
      const bad = await http().post('/tracing/spans').set(auth).send({ spans: [makeSpan({ span_id: 'xyz' })] }).expect(400);
      expect(Object.keys(bad.body).sort()).toEqual(Object.keys(schema.properties).sort());
      for (const field of schema.required) expect(bad.body[field]).toBeDefined();
      expect(bad.body.errors[0]).toEqual({ field: expect.any(String), message: expect.any(String) });
    });

    it('documents X-Request-Id on every answer of every route, and sends it', async () => {
      const doc = (await http().get('/docs/openapi.json').expect(200)).body;
      const answers = Object.values(doc.paths).flatMap((path) => Object.values(path as Record<string, { responses: Record<string, { headers?: object }> }>)).flatMap((op) => Object.values(op.responses));
      expect(answers.length).toBeGreaterThan(50);
      for (const answer of answers) expect(answer.headers).toEqual({ 'X-Request-Id': expect.objectContaining({ schema: { type: 'string' } }) });
      const res = await http().get('/health').expect(200);
      expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    });
  });

  it('documents the query bodies: the schema takes the queries the server answers, its own examples among them', async () => {
    const doc = (await http().get('/docs/openapi.json').expect(200)).body;
    // What a schema-driven client or validator does with the document, formats included.
    const ajv = addFormats(new Ajv({ strict: false }));
    // Zone offsets in the forms the parser takes besides RFC 3339's, which ajv-formats' date-time takes too.
    const windowing = { oldest: '2026-11-01 05:00:00+05', newest: '2026-11-02T05:30:00+0530' };
    // A condition without an operator (it defaults to "is"), and a nested filter.
    const filter = { operator: 'or', conditions: [{ field: 'span_name', value: 'llm' }, { operator: 'not', conditions: [{ field: 'status_code', operator: 'eq', value: 'STATUS_CODE_ERROR' }] }] };
    for (const path of ['/tracing/spans/query', '/tracing/analytics/query']) {
      const schema = doc.paths[path].post.requestBody.content['application/json'].schema;
      expect(schema.properties.filter.properties.conditions.items.anyOf[0].properties.operator.enum).toContain('btwn');
      const validate = ajv.compile(schema);
      // Null for a part left out, as a client looping on `next` sends the last page's.
      const withNulls = { focus: null, filter: { operator: null, conditions: [{ field: 'span_name', key: null, operator: null, value: 'llm' }] }, windowing: { ...windowing, ...(path.endsWith('spans/query') ? { next: null, limit: null, order: null } : { interval: null }) } };
      for (const query of [schema.example, { filter, windowing }, withNulls]) {
        // Under oneOf, every condition matched both branches and no filter validated.
        expect({ query, valid: validate(query), errors: validate.errors ?? null }).toEqual({ query, valid: true, errors: null });
        await http().post(path).set(auth).send(query).expect(200);
      }
      // And refuses what the server refuses.
      expect(validate({ filter: { conditions: [{ operator: 'eq', value: 1 }] }, windowing })).toBe(false);
      await http().post(path).set(auth).send({ filter: { conditions: [{ operator: 'eq', value: 1 }] }, windowing }).expect(400);
    }
    // Analytics measures a trace on its root spans, once, which its focus says.
    expect(doc.paths['/tracing/analytics/query'].post.requestBody.content['application/json'].schema.properties.focus.description).toMatch(/once, in the bucket of its first root span/);
    expect(doc.paths['/tracing/spans/query'].post.requestBody.required).toBe(false);
    // A JSON object field is documented as one.
    const span = doc.paths['/tracing/spans'].post.requestBody.content['application/json'].schema.properties.spans.items;
    expect(span.properties.attributes).toMatchObject({ type: 'object', additionalProperties: {} });
  });

  it('span ids that are all zeros are refused', async () => {
    const res = await http().post('/tracing/spans').set(auth).send({ spans: [makeSpan({ span_id: '0'.repeat(16) })] }).expect(400);
    expect(res.body.message).toMatch(/must not be all zeros/);
  });
});
