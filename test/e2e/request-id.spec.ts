import { ApiKeyService } from '../../src/auth/api-key.service';
import { ApiKeysRepository } from '../../src/auth/api-keys.repository';
import { ApiProcess, startApiProcess } from '../../scripts/cli/api-process';
import { spanId, traceId, uuid } from '../support/fixtures';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/**
 * Every answer carries X-Request-Id, and the compiled API's JSON log line
 * for that request carries the same id: a caller's own id when it sent a
 * plausible one, else a fresh UUID. Answers given before any route (415, 404)
 * and errors included.
 */
describe('request ids in answers and logs (compiled API)', () => {
  let database: TestDatabase;
  let api: ApiProcess;
  const projectId = uuid();
  let key: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    key = (await new ApiKeyService(new ApiKeysRepository(database.db)).create(projectId)).key;
    api = await startApiProcess({ DATABASE_URL: database.url, MIGRATE_ON_START: 'false', LOG_LEVEL: 'info' });
  }, 180_000);

  afterAll(async () => {
    await api?.stop(5_000);
    await database?.drop();
  }, 60_000);

  /** The request's completion line, found by the id the answer carried. */
  async function logLineOf(id: string): Promise<{ req: { id: string; url: string }; res: { statusCode: number } }> {
    for (let waited = 0; waited < 5_000; waited += 50) {
      const line = api
        .logs()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { req?: { id?: string; url: string }; res?: { statusCode: number } })
        .find((entry) => entry.req?.id === id && entry.res);
      if (line) return line as never;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`no log line for request ${id}\n${api.logs().slice(-2_000)}`);
  }

  it('echoes the caller\'s id and logs the request under it', async () => {
    const res = await fetch(`${api.url}/tracing/traces/4bf92f3577b34da6a3ce929d0e0e4736`, { headers: { 'X-Request-Id': 'caller-7f3a.1' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('x-request-id')).toBe('caller-7f3a.1');
    expect(await logLineOf('caller-7f3a.1')).toMatchObject({ req: { url: '/tracing/traces/4bf92f3577b34da6a3ce929d0e0e4736' }, res: { statusCode: 401 } });
  });

  it('logs an OTLP export it partly refused as a warn line under the request\'s id, with what it refused', async () => {
    const span = (name: string) => ({ traceId: traceId(), spanId: spanId(), name, kind: 1, startTimeUnixNano: '1700000000000000000', endTimeUnixNano: '1700000000001000000' });
    const res = await fetch(`${api.url}/otlp/v1/traces`, {
      method: 'POST',
      headers: { Authorization: `ApiKey ${key}`, 'Content-Type': 'application/json', 'X-Request-Id': 'otlp-partly-1' },
      body: JSON.stringify({ resourceSpans: [{ scopeSpans: [{ spans: [span('kept'), span('')] }] }] }),
    });
    expect(res.status).toBe(200);
    await logLineOf('otlp-partly-1');
    const warning = api
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((entry) => entry.msg === 'otlp export partly refused');
    expect(warning).toMatchObject({ level: 40, req: { id: 'otlp-partly-1' }, projectId, rejectedSpans: 1, sent: 2, errorMessage: expect.stringMatching(/^1 of 2 spans refused: .*spans\[1\]\.name/) });
  });

  it('logs no line for the health probe and the metrics scrape, however Express would route their paths', async () => {
    const probes = ['/health', '/health?verbose=1', '/HEALTH/', '/metrics', '/metrics/?name[]=x'];
    const ids: string[] = [];
    for (const path of probes) ids.push((await fetch(`${api.url}${path}`)).headers.get('x-request-id') ?? '');
    // A request logged after the probes: once its line is there, theirs would be too.
    const after = (await fetch(`${api.url}/no/such/path`)).headers.get('x-request-id') ?? '';
    await logLineOf(after);
    const logged = probes.filter((_, i) => api.logs().includes(`"id":"${ids[i]}"`));
    expect(logged).toEqual([]);
    expect(ids.every((id) => id.length > 0)).toBe(true);
  });

  it('gives requests without one, or with one that could break a log line, a fresh UUID, answers no handler gave (404, 401 before the body is read) included', async () => {
    const answers = [
      await fetch(`${api.url}/no/such/path`),
      await fetch(`${api.url}/tracing/spans`, { method: 'POST', body: 'x', headers: { 'Content-Type': 'text/plain', 'X-Request-Id': 'two words' } }),
    ];
    expect(answers.map((a) => a.status)).toEqual([404, 401]);
    const ids = answers.map((a) => a.headers.get('x-request-id') ?? '');
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(ids[0]).not.toBe(ids[1]);
    expect((await logLineOf(ids[0])).res.statusCode).toBe(404);
    expect((await logLineOf(ids[1])).res.statusCode).toBe(401);
  });

  it('gives an id to a path the router cannot decode, refused before any middleware ran, and logs it under that id', async () => {
    const res = await fetch(`${api.url}/tracing/traces/%E0`, { headers: { 'X-Request-Id': 'undecodable-1' } });
    expect(res.status).toBe(400);
    expect(res.headers.get('x-request-id')).toBe('undecodable-1');
    let line: { reqId?: string; url?: string; status?: number; msg?: string } | undefined;
    for (let waited = 0; waited < 5_000 && !line; waited += 50) {
      line = api
        .logs()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as typeof line)
        .find((entry) => entry?.reqId === 'undecodable-1');
      if (!line) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(line).toMatchObject({ url: '/tracing/traces/%E0', status: 400, msg: 'request refused before routing' });
  });
});
