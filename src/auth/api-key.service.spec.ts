import { ApiKeyService } from './api-key.service';
import { ApiKeysRepository } from './api-keys.repository';

/** The api_keys table as the service sees it: rows by hash, revocable from "another process" (the test). */
class FakeKeys {
  readonly rows: Array<{ id: string; project_id: string; key_hash: string; prefix: string; revoked: boolean }> = [];
  lookups = 0;
  /** While set, lookups wait here until answered (a slow Postgres): each resolves when its function is called. */
  held: Array<() => void> | null = null;

  async insert(projectId: string, keyHash: string, prefix: string) {
    const row = { id: `id-${this.rows.length}`, project_id: projectId, key_hash: keyHash, prefix, revoked: false };
    this.rows.push(row);
    return { id: row.id, project_id: projectId, prefix, created_at: new Date() };
  }

  async findActiveByHash(keyHash: string) {
    this.lookups++;
    // Read now, answered later: what a lookup under way read before a revoke committed.
    const read = this.rows.find((r) => r.key_hash === keyHash && !r.revoked);
    if (this.held) {
      await new Promise<void>((answer) => this.held!.push(answer));
      return read && { id: read.id, project_id: read.project_id };
    }
    const row = this.rows.find((r) => r.key_hash === keyHash && !r.revoked);
    return row && { id: row.id, project_id: row.project_id };
  }

  async revoke(id: string) {
    const row = this.rows.find((r) => r.id === id && !r.revoked);
    if (row) row.revoked = true;
    return { numUpdatedRows: BigInt(row ? 1 : 0) };
  }
}

describe('ApiKeyService', () => {
  const project = '7d1e0e3c-0000-4000-8000-000000000001';
  let keys: FakeKeys;
  let service: ApiKeyService;

  beforeEach(() => {
    jest.useFakeTimers({ now: new Date('2026-12-03T12:00:00Z') });
    keys = new FakeKeys();
    service = new ApiKeyService(keys as unknown as ApiKeysRepository);
  });
  afterEach(() => jest.useRealTimers());

  it('asks Postgres once per key within the trust window', async () => {
    const { key } = await service.create(project);
    for (let i = 0; i < 5; i++) expect(await service.projectOf(key)).toBe(project);
    expect(keys.lookups).toBe(1);
    // Shaped like a key but unknown: looked up, and not remembered.
    const unknown = `tk_${'A'.repeat(43)}`;
    expect(await service.projectOf(unknown)).toBeNull();
    expect(await service.projectOf(unknown)).toBeNull();
    expect(keys.lookups).toBe(3);
  });

  it('refuses what no generated key looks like without asking Postgres', async () => {
    const { key } = await service.create(project);
    for (const junk of ['tk_not-a-key', `${key}x`, key.slice(0, -1), key.replace('tk_', 'tx_'), `tk_${'A'.repeat(42)}=`]) {
      expect(await service.projectOf(junk)).toBeNull();
    }
    expect(keys.lookups).toBe(0);
  });

  it('refuses a key revoked elsewhere once the trust window has passed, and not before', async () => {
    const { id, key } = await service.create(project);
    expect(await service.projectOf(key)).toBe(project);
    await keys.revoke(id); // `npm run apikey -- revoke`: another process, this service's cache is untouched

    jest.advanceTimersByTime(ApiKeyService.TRUST_SECONDS * 1000 - 1);
    expect(await service.projectOf(key)).toBe(project);
    jest.advanceTimersByTime(1);
    expect(await service.projectOf(key)).toBeNull();
  });

  it('keeps the trust window to its length when the wall clock is stepped back', async () => {
    const { id, key } = await service.create(project);
    expect(await service.projectOf(key)).toBe(project);
    await keys.revoke(id);
    // NTP steps the wall clock back a minute; the window still ends 30 s after the lookup.
    jest.setSystemTime(Date.now() - 60_000);
    jest.advanceTimersByTime(ApiKeyService.TRUST_SECONDS * 1000);
    expect(await service.projectOf(key)).toBeNull();
  });

  it('asks Postgres once for a burst of requests with a key it is looking up', async () => {
    const { key } = await service.create(project);
    keys.held = [];
    const burst = Array.from({ length: 20 }, () => service.projectOf(key));
    await Promise.resolve();
    expect(keys.lookups).toBe(1);
    keys.held.splice(0).forEach((answer) => answer());
    expect(await Promise.all(burst)).toEqual(Array(20).fill(project));
    keys.held = null;
    expect(await service.projectOf(key)).toBe(project);
    expect(keys.lookups).toBe(1);
  });

  it('shares a lookup only while it is young: requests after a second ask for themselves', async () => {
    const { key } = await service.create(project);
    keys.held = [];
    const stuck = service.projectOf(key);
    await Promise.resolve();
    jest.advanceTimersByTime(ApiKeyService.JOIN_LOOKUP_MS);
    const later = service.projectOf(key);
    await Promise.resolve();
    expect(keys.lookups).toBe(2);
    keys.held[1](); // the later lookup answers; the first is still stuck
    expect(await later).toBe(project);
    keys.held[0]();
    expect(await stuck).toBe(project);
    keys.held = null;
  });

  it('does not trust what a lookup read before a revoke of its own', async () => {
    const { id, key } = await service.create(project);
    keys.held = [];
    const before = service.projectOf(key);
    await Promise.resolve();
    await service.revoke(id);
    keys.held.splice(0).forEach((answer) => answer());
    expect(await before).toBe(project); // asked before the revoke: answered as it was then
    keys.held = null;
    expect(await service.projectOf(key)).toBeNull();
  });

  it('refuses a key it revoked itself at once', async () => {
    const { id, key } = await service.create(project);
    expect(await service.projectOf(key)).toBe(project);
    expect(await service.revoke(id)).toBe(true);
    expect(await service.projectOf(key)).toBeNull();
    expect(await service.revoke(id)).toBe(false);
  });
});
