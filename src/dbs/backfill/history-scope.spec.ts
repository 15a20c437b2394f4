import { bucketScope, parseScopes, runKeyOf, ScopeError } from './history-scope';

const P = '7d1e0e3c-0000-4000-8000-000000000001';

describe('backfill and verify scopes', () => {
  it('normalizes filters, one scope per entity, and keys a run by them', () => {
    const scopes = parseScopes({ entity: 'all', project: P.toUpperCase(), since: '2026-11-01T01:00:00+01:00', until: '2026-11-02T00:00:00.5Z' });
    expect(scopes).toEqual([
      { entity: 'spans', projectIds: [P], since: '2026-11-01T00:00:00.000000Z', until: '2026-11-02T00:00:00.500000Z' },
      { entity: 'nodes', projectIds: [P], since: '2026-11-01T00:00:00.000000Z', until: '2026-11-02T00:00:00.500000Z' },
    ]);
    expect(runKeyOf(scopes[0])).toBe(`spans project=${P} since=2026-11-01T00:00:00.000000Z until=2026-11-02T00:00:00.500000Z`);
    expect(runKeyOf(parseScopes({ entity: 'nodes' })[0])).toBe('nodes project=* since=- until=-');
  });

  it('copies only the mirrored projects when CLICKHOUSE_PROJECT_IDS is set, and refuses another', () => {
    const other = '7d1e0e3c-0000-4000-8000-000000000002';
    expect(parseScopes({ entity: 'spans', mirroredProjects: [other, P] })[0].projectIds).toEqual([P, other]);
    expect(() => parseScopes({ project: '7d1e0e3c-0000-4000-8000-000000000003', mirroredProjects: [P] })).toThrow('not in CLICKHOUSE_PROJECT_IDS: the mirror does not keep it up to date, so backfill does not copy it and verify does not compare it');
  });

  it.each([
    [{ entity: 'traces' }, '--entity must be spans, nodes or all'],
    [{ project: 'p1' }, '--project must be a UUID'],
    [{ since: '2026-11-01' }, '--since must be an ISO-8601 time with a zone'],
    [{ until: '2026-02-30T00:00:00Z' }, '--until must be an ISO-8601 time'],
    [{ since: '2400-01-01T00:00:00Z' }, '--since must be an ISO-8601 time with a zone between years 1900 and 2299 (e.g. 2026-11-01T00:00:00Z), got "2400-01-01T00:00:00Z"'],
    [{ until: '1899-12-31T23:59:59Z' }, '--until must be an ISO-8601 time with a zone between years 1900 and 2299'],
    [{ since: '2026-11-01T00:00:00Z', until: '2026-11-01T00:00:00Z' }, 'must be earlier than --until'],
  ])('rejects %j', (options, message) => {
    expect(() => parseScopes(options)).toThrow(ScopeError);
    expect(() => parseScopes(options)).toThrow(message);
  });

  it('narrows a scope to one project and UTC day, keeping tighter bounds', () => {
    const scope = { entity: 'spans' as const, projectIds: null, since: '2026-11-01T12:00:00.000000Z' };
    expect(bucketScope(scope, P, '2026-11-01')).toEqual({ entity: 'spans', projectIds: [P], since: '2026-11-01T12:00:00.000000Z', until: '2026-11-02T00:00:00.000000Z' });
    expect(bucketScope(scope, P, '2026-12-31')).toEqual({ entity: 'spans', projectIds: [P], since: '2026-12-31T00:00:00.000000Z', until: '2027-01-01T00:00:00.000000Z' });
  });
});
