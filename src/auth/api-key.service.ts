import { Injectable } from '@nestjs/common';
import { couldBeApiKey, displayPrefix, generateApiKey, hashApiKey } from './api-key';
import { ApiKeysRepository } from './api-keys.repository';

const CACHE_MAX = 10_000;

@Injectable()
export class ApiKeyService {
  /**
   * How long a verified key is trusted without asking Postgres again: every
   * request would otherwise cost a query. A key revoked from another process
   * (`npm run apikey -- revoke`) is refused by a running API within this time.
   */
  static readonly TRUST_SECONDS = 30;

  private readonly cache = new Map<string, { projectId: string; until: number }>();

  constructor(private readonly keys: ApiKeysRepository) {}

  /** Creates a key for a project; the plain key is returned once and never stored. */
  async create(projectId: string): Promise<{ id: string; key: string; projectId: string; prefix: string }> {
    const key = generateApiKey();
    const row = await this.keys.insert(projectId, hashApiKey(key), displayPrefix(key));
    return { id: row.id, key, projectId: row.project_id, prefix: row.prefix };
  }

  /** The project a key belongs to, or null for an unknown or revoked key. */
  async projectOf(key: string): Promise<string | null> {
    if (!couldBeApiKey(key)) return null;
    const hash = hashApiKey(key);
    const cached = this.cache.get(hash);
    // The monotonic clock, not the wall clock: a wall clock stepped back (NTP) would have trusted a revoked key
    // for that much longer. The window counts from when the lookup was asked, so a slow lookup does not lengthen it.
    if (cached && cached.until > performance.now()) return cached.projectId;
    const asked = performance.now();
    const row = await this.keys.findActiveByHash(hash);
    if (!row) {
      this.cache.delete(hash);
      return null;
    }
    if (this.cache.size >= CACHE_MAX) this.cache.clear();
    this.cache.set(hash, { projectId: row.project_id, until: asked + ApiKeyService.TRUST_SECONDS * 1000 });
    return row.project_id;
  }

  async revoke(id: string): Promise<boolean> {
    const result = await this.keys.revoke(id);
    this.cache.clear();
    return Number(result.numUpdatedRows) > 0;
  }

  list(projectId?: string) {
    return this.keys.list(projectId);
  }
}
