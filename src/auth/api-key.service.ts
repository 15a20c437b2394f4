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

  /** How long a lookup under way is shared with requests for the same key; past that they ask for themselves. */
  static readonly JOIN_LOOKUP_MS = 1_000;

  private readonly cache = new Map<string, { projectId: string; until: number }>();
  /**
   * Lookups on their way, by key hash: requests with the same key while it is looked up wait for that one
   * lookup. After a deploy (or every 30 s for a busy key) each request in the burst asked Postgres itself,
   * from the pool the requests' own queries need.
   */
  private readonly lookups = new Map<string, { answer: Promise<string | null>; asked: number }>();
  /** Bumped by every revoke: a lookup begun before it must not put what it read into the cache after it. */
  private revocations = 0;

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
    const pending = this.lookups.get(hash);
    // Joined only while young: one stuck on a connection that died (no statement timeout) would hold every
    // request with its key until TCP gave up on it, where each used to wait for its own.
    if (pending && performance.now() - pending.asked < ApiKeyService.JOIN_LOOKUP_MS) return pending.answer;
    const asked = performance.now();
    const lookup = {
      asked,
      answer: this.lookUp(hash, asked).finally(() => {
        // Not a newer lookup's, begun after a revoke cleared this one away or this one grew old.
        if (this.lookups.get(hash) === lookup) this.lookups.delete(hash);
      }),
    };
    this.lookups.set(hash, lookup);
    return lookup.answer;
  }

  /** Asks Postgres; a key found is trusted for TRUST_SECONDS from `asked`, when the lookup began. */
  private async lookUp(hash: string, asked: number): Promise<string | null> {
    const revocations = this.revocations;
    const row = await this.keys.findActiveByHash(hash);
    if (!row) {
      this.cache.delete(hash);
      return null;
    }
    if (revocations !== this.revocations) return row.project_id;
    if (this.cache.size >= CACHE_MAX) this.cache.clear();
    this.cache.set(hash, { projectId: row.project_id, until: asked + ApiKeyService.TRUST_SECONDS * 1000 });
    return row.project_id;
  }

  async revoke(id: string): Promise<boolean> {
    this.revocations += 1;
    const result = await this.keys.revoke(id);
    this.revocations += 1;
    this.cache.clear();
    // Requests from now on ask again rather than wait for an answer read before the revoke.
    this.lookups.clear();
    return Number(result.numUpdatedRows) > 0;
  }

  list(projectId?: string) {
    return this.keys.list(projectId);
  }
}
