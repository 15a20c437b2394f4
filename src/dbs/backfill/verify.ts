import { createHash, randomUUID } from 'node:crypto';
import { Kysely, sql } from 'kysely';
import { counted } from '../../counted';
import { DB } from '../postgres/database';
import { BackfillCheckpointsRepository, KEY_REPLAY_RUN } from './backfill-checkpoints.repository';
import { ClickHouseHistory } from './clickhouse-history';
import { historyOf, keyText } from './history-entities';
import { bucketScope, dayOf, ENTITIES, Entity, HistoryScope } from './history-scope';
import { addReplay, emptyReplay, KeyReplay, keysOnly, ReplayResult } from './key-replay';
import { KeysetReader, PageLimits } from './keyset-reader';
import { HistoryProgress, silentProgress } from './progress';

export type Difference = 'rows' | 'versions' | 'content';

export interface BucketSide {
  rows: number;
  /** Sum of the rows' versions (µs of updated_at): a missed update or delete changes it. */
  versionSum: bigint;
  /** Sum mod 2^64 of a 64-bit hash of each row's ClickHouse line; null when not computed. */
  checksum: bigint | null;
}

/** One entity's rows of one project and UTC created_at day, on both sides. */
export interface BucketComparison {
  entity: Entity;
  projectId: string;
  day: string;
  /** The bucket as a scope (the run's filters, narrowed to this project and day). */
  scope: HistoryScope;
  postgres: BucketSide;
  clickhouse: BucketSide;
  /** Empty when the bucket agrees. */
  differs: Difference[];
}

export interface VerifyReport {
  buckets: BucketComparison[];
  differing: BucketComparison[];
  rows: { postgres: number; clickhouse: number };
  /** Buckets whose content was compared row by row (those whose counts and versions agreed). */
  contentChecked: number;
  /** With a TTL: the start of the oldest day compared, as older rows expire in ClickHouse by design; else null. */
  retainedFrom: string | null;
  /** Rows created at or after this (Postgres's clock when verify started) are not compared: writes go on meanwhile. */
  asOf: string;
  /** Buckets that differed at first and agreed once the mirror's writes in flight had landed (see settleMs). */
  settled: number;
  durationMs: number;
}

export interface VerifyOptions {
  /**
   * Also hash every row of the buckets whose counts and versions agree
   * (default). Off: only the two GROUP BYs, quick at any size, and blind to a
   * row changed in place at the same version.
   */
  content?: boolean;
  /** Told of the content pass's Postgres rows as they are hashed (the counts pass is two queries). */
  progress?: HistoryProgress;
  /**
   * The TTL of the ClickHouse tables (read from them, not CLICKHOUSE_TTL_DAYS):
   * ClickHouse drops rows this many days after their created_at, so only the
   * days it still holds whole are compared. 0 or unset: all of history.
   */
  ttlDays?: number;
  /** The clock the TTL is read against (tests); default now. */
  now?: Date;
  /**
   * On a live system the mirror runs up to a flush interval and a send behind
   * Postgres, so a bucket can differ only because a write is on its way.
   * Buckets that differ are compared once more after this many ms, and only
   * those that still differ are reported. 0 (default): reported at once.
   */
  settleMs?: number;
  /** Told when verify waits to compare buckets again. */
  log?: (line: string) => void;
}

/**
 * How long every day verify compares must stay whole after it starts. The
 * oldest whole day starts expiring at the next UTC midnight: a verify begun
 * at 23:50, or on a machine whose clock is behind ClickHouse's, saw rows of
 * it go (a TTL merge) between its passes, and reported them as differences,
 * or "repaired" them only to see them go again.
 */
const RETENTION_MARGIN_MS = 6 * 3_600_000;

/**
 * The start of the oldest UTC day whose rows are all younger than the TTL,
 * and stay so for RETENTION_MARGIN_MS more: rows of older days may be gone
 * from ClickHouse (its TTL removes them at its next merge), so those days
 * cannot be compared.
 */
export function retainedFrom(ttlDays: number, now: Date): string {
  const DAY = 86_400_000;
  const oldestKept = now.getTime() + RETENTION_MARGIN_MS - ttlDays * DAY;
  return `${new Date((Math.floor(oldestKept / DAY) + 1) * DAY).toISOString().slice(0, 10)}T00:00:00.000000Z`;
}

const bucketId = (b: BucketComparison): string => `${b.entity} ${b.projectId} ${b.day}`;

/** The scope up to `asOf` (exclusive), or to its own --until when that is earlier. */
function before(scope: HistoryScope, asOf: string): HistoryScope {
  return scope.until && scope.until <= asOf ? scope : { ...scope, until: asOf };
}

/** The scope without the days the TTL has expired; null when nothing of it is left. */
function withinRetention(scope: HistoryScope, from: string | null): HistoryScope | null {
  if (from === null || (scope.since && scope.since >= from)) return scope;
  if (scope.until && scope.until <= from) return null;
  return { ...scope, since: from };
}

export interface RepairReport extends ReplayResult {
  buckets: number;
  /** Verification of the repaired buckets afterwards. */
  after: VerifyReport;
  durationMs: number;
}

const PAGE: PageLimits = { rows: 5_000, bytes: 16 * 1024 * 1024 };

/** Keys a repair compares with Postgres at once (see repairBucket). */
const REPAIR_CHUNK_KEYS = 5_000;
const UINT64 = (1n << 64n) - 1n;

const rowHash = (line: string): bigint => createHash('sha1').update(line).digest().readBigUInt64LE(0);

/**
 * Proves the mirror holds what Postgres holds, per entity, project and
 * created_at day. The first pass is two GROUP BYs (rows and version sums),
 * cheap on both sides and enough to catch missing rows and missed updates or
 * deletes. The second pass hashes every row's ClickHouse line (the line the
 * row mapper makes of the Postgres row, and the line ClickHouse stores) for
 * every bucket the first pass found equal: that is the only way to see a row changed in place
 * at the same version. It reads each side once, in one stream per side, so
 * it costs about as much as a backfill of the scope, which is affordable for
 * a check an operator runs after a migration.
 */
export class Verifier {
  constructor(
    private readonly db: Kysely<DB>,
    private readonly clickhouse: ClickHouseHistory,
    private readonly repairChunkKeys = REPAIR_CHUNK_KEYS,
  ) {}

  async verify(scopes: HistoryScope[], options: VerifyOptions = {}): Promise<VerifyReport> {
    const startedAt = Date.now();
    // Rows created from now on are not compared: on a live system they are still arriving on both sides.
    const asOf = await this.postgresNow();
    const from = options.ttlDays ? retainedFrom(options.ttlDays, options.now ?? new Date()) : null;
    const retained = scopes.map((s) => withinRetention(before(s, asOf), from)).filter((s): s is HistoryScope => s !== null);
    let { buckets, contentChecked } = await this.compare(retained, options);

    let settled = 0;
    const differing = buckets.filter((b) => b.differs.length > 0);
    if (differing.length > 0 && options.settleMs) {
      options.log?.(
        `${counted(differing.length, 'bucket')} differ${differing.length === 1 ? 's' : ''}; comparing them again in ${(options.settleMs / 1000).toFixed(1)} s, once writes the mirror has in flight have landed`,
      );
      await new Promise((resolve) => setTimeout(resolve, options.settleMs));
      // Each bucket's scope is already bounded by asOf and the retention.
      const again = await this.compare(differing.map((b) => b.scope), options);
      const stillDiffering = new Set(again.buckets.filter((b) => b.differs.length > 0).map(bucketId));
      settled = differing.filter((b) => !stillDiffering.has(bucketId(b))).length;
      buckets = [...buckets.filter((b) => b.differs.length === 0), ...again.buckets];
      // The report describes each bucket's last comparison: a re-compared bucket counts as checked by content only if that was.
      const recompared = new Set(differing.map(bucketId));
      contentChecked = new Set([...[...contentChecked].filter((id) => !recompared.has(id)), ...again.contentChecked]);
    }
    return {
      buckets,
      differing: buckets.filter((b) => b.differs.length > 0),
      rows: {
        postgres: buckets.reduce((n, b) => n + b.postgres.rows, 0),
        clickhouse: buckets.reduce((n, b) => n + b.clickhouse.rows, 0),
      },
      contentChecked: contentChecked.size,
      retainedFrom: from,
      asOf,
      settled,
      durationMs: Date.now() - startedAt,
    };
  }

  /** Both passes over these scopes: counts for every bucket, then content for those whose counts agree. */
  private async compare(scopes: HistoryScope[], options: VerifyOptions): Promise<{ buckets: BucketComparison[]; contentChecked: Set<string> }> {
    const buckets: BucketComparison[] = [];
    const contentChecked = new Set<string>();
    for (const scope of scopes) {
      const compared = await this.compareCounts(scope);
      if (options.content !== false) {
        const agreed = compared.filter((b) => b.differs.length === 0);
        await this.compareContent(scope, agreed, compared, options.progress ?? silentProgress);
        for (const bucket of agreed) contentChecked.add(bucketId(bucket));
      }
      buckets.push(...compared);
    }
    return { buckets, contentChecked };
  }

  /** Postgres's clock (the pool reads timestamptz in the scopes' format): created_at comes from it, not from this machine's. */
  private async postgresNow(): Promise<string> {
    const { rows } = await sql<{ now: string }>`select clock_timestamp() as now`.execute(this.db);
    return rows[0].now;
  }

  /**
   * Re-copies exactly the differing buckets: every Postgres row at its
   * version, a tombstone for each key ClickHouse holds live that Postgres
   * lacks, and a reset for keys ClickHouse holds at a newer version than
   * Postgres (which no insert could outrank). Then verifies those buckets
   * again, content included: they are few, and a repair must be proven whole.
   */
  async repair(
    differing: BucketComparison[],
    options: Pick<VerifyOptions, 'settleMs' | 'log' | 'progress'> & { repairProgress?: HistoryProgress } = {},
  ): Promise<RepairReport> {
    const startedAt = Date.now();
    const attempt = randomUUID();
    const total = emptyReplay();
    // Told of every Postgres row re-copied, an entity at a time: the bar's total is that entity's rows in the buckets.
    const progress = options.repairProgress ?? silentProgress;
    const numbered = differing.map((bucket, i) => ({ bucket, token: `repair:${attempt}:${i}` }));
    // Its resets must not run beside another run's (KEY_REPLAY_RUN): refused, before any key is touched, while one does.
    const checkpoints = new BackfillCheckpointsRepository(this.db);
    await checkpoints.withRunLock(KEY_REPLAY_RUN, async (lock) => {
      const stillExclusive = () => checkpoints.assertHeld(KEY_REPLAY_RUN, lock);
      for (const entity of ENTITIES) {
        const buckets = numbered.filter(({ bucket }) => bucket.entity === entity);
        if (buckets.length === 0) continue;
        progress.start(entity, buckets.reduce((n, { bucket }) => n + bucket.postgres.rows, 0));
        try {
          for (const { bucket, token } of buckets) addReplay(total, await this.repairBucket(bucket, token, progress, stillExclusive));
        } finally {
          progress.stop();
        }
      }
    });
    const after = await this.verify(differing.map((b) => b.scope), options);
    return { buckets: differing.length, ...total, after, durationMs: Date.now() - startedAt };
  }

  private async compareCounts(scope: HistoryScope): Promise<BucketComparison[]> {
    const reader = new KeysetReader(this.db, historyOf(scope.entity));
    const [postgres, clickhouse] = await Promise.all([
      sql<{ project_id: string; day: string; rows: string; version_sum: string }>`
        select project_id, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD') as day, count(*) as rows,
               sum((extract(epoch from updated_at) * 1000000)::bigint)::text as version_sum
        from ${sql.table(scope.entity)}
        where ${reader.conditions(scope)}
        group by 1, 2`.execute(this.db),
      this.clickhouse.countByProjectDay(scope),
    ]);
    const buckets = new Map<string, BucketComparison>();
    const bucket = (projectId: string, day: string) => {
      const id = `${projectId} ${day}`;
      let found = buckets.get(id);
      if (!found) {
        const empty = (): BucketSide => ({ rows: 0, versionSum: 0n, checksum: null });
        found = { entity: scope.entity, projectId, day, scope: bucketScope(scope, projectId, day), postgres: empty(), clickhouse: empty(), differs: [] };
        buckets.set(id, found);
      }
      return found;
    };
    for (const r of postgres.rows) Object.assign(bucket(r.project_id, r.day).postgres, { rows: Number(r.rows), versionSum: BigInt(r.version_sum) });
    for (const r of clickhouse) Object.assign(bucket(r.project_id, r.day).clickhouse, { rows: r.rows, versionSum: r.version_sum });
    const all = [...buckets.values()].sort((a, b) => (a.projectId + a.day < b.projectId + b.day ? -1 : 1));
    for (const b of all) {
      if (b.postgres.rows !== b.clickhouse.rows) b.differs.push('rows');
      if (b.postgres.versionSum !== b.clickhouse.versionSum) b.differs.push('versions');
    }
    return all;
  }

  /**
   * Fills in both checksums of these buckets, reading each side's rows in the
   * buckets' span once. `all` is every bucket of the scope: the span read can
   * hold rows of differing buckets too, and progress counts them all.
   */
  private async compareContent(scope: HistoryScope, buckets: BucketComparison[], all: BucketComparison[], progress: HistoryProgress): Promise<void> {
    if (buckets.length === 0) return;
    const entity = historyOf(scope.entity);
    const byId = new Map(buckets.map((b) => [`${b.projectId} ${b.day}`, b]));
    for (const b of buckets) {
      b.postgres.checksum = 0n;
      b.clickhouse.checksum = 0n;
    }
    const days = buckets.map((b) => b.day).sort();
    const span = bucketScope(scope, '', days[0]);
    const last = bucketScope(scope, '', days[days.length - 1]);
    const projects = [...new Set(buckets.map((b) => b.projectId))].sort();
    const narrowed: HistoryScope = {
      entity: scope.entity,
      // Past a thousand ids the list would outgrow a query string; the buckets filter rows anyway.
      projectIds: projects.length <= 1000 ? projects : scope.projectIds,
      since: span.since,
      until: last.until,
    };
    // The buckets whose rows the Postgres read below goes through: the narrowed span's projects and days.
    const readProjects = narrowed.projectIds && new Set(narrowed.projectIds);
    const read = all.filter((b) => (!readProjects || readProjects.has(b.projectId)) && b.day >= days[0] && b.day <= days[days.length - 1]);
    const add = (side: 'postgres' | 'clickhouse', projectId: string, day: string, line: string) => {
      const b = byId.get(`${projectId} ${day}`);
      if (b) b[side].checksum = (b[side].checksum! + rowHash(line)) & UINT64;
    };

    const readPostgres = async () => {
      const reader = new KeysetReader(this.db, entity);
      let next = reader.page(narrowed, null, PAGE);
      for (;;) {
        const page = await next;
        if (page.rows.length === 0) return;
        next = reader.page(narrowed, page.last, PAGE);
        next.catch(() => undefined);
        for (const row of page.rows) {
          const m = entity.mirrored(row);
          add('postgres', m.project_id, dayOf(m.created_at), entity.line(m));
        }
        progress.advance(page.rows.length, page.last ?? []);
      }
    };
    const readClickHouse = async () => {
      // The stored row is compared as it is: ClickHouse gives back the mapper's fields in the
      // mapper's order and formats, so it serializes to the line the mapper wrote for it.
      for await (const rows of this.clickhouse.streamStored(entity, narrowed)) {
        for (const row of rows) add('clickhouse', row.project_id, dayOf(row.created_at), JSON.stringify(row));
      }
    };
    progress.start(scope.entity, read.reduce((n, b) => n + b.postgres.rows, 0));
    try {
      await Promise.all([readPostgres(), readClickHouse()]);
    } finally {
      progress.stop();
    }
    for (const b of buckets) if (b.postgres.checksum !== b.clickhouse.checksum) b.differs.push('content');
  }

  private async repairBucket(bucket: BucketComparison, token: string, progress: HistoryProgress, stillExclusive: () => Promise<void>): Promise<ReplayResult> {
    const entity = historyOf(bucket.entity);
    const reader = new KeysetReader(this.db, entity);
    const replay = new KeyReplay(this.db, this.clickhouse, entity, stillExclusive);
    const result = emptyReplay();

    // Every Postgres row of the bucket at its version, a page at a time.
    let after: string[] | null = null;
    for (let page = 0; ; page++) {
      const { rows, last } = await reader.page(bucket.scope, after, PAGE);
      if (rows.length === 0) break;
      await this.clickhouse.insert(entity.table, rows.map((row) => entity.line(entity.mirrored(row))), `${token}:page:${page}`);
      result.upserted += rows.length;
      progress.advance(rows.length, last ?? []);
      after = last;
    }

    // Then every key ClickHouse holds in the bucket against Postgres's row of it in the bucket, a chunk of keys
    // at a time: a busy day's keys, millions, never sit in memory together (~800 B each, on both sides). Only
    // the keys to mend are kept, and mended once ClickHouse's answer is read: a reset waits for a mutation,
    // and a stream left unread that long is dropped by the server.
    const absent: string[][] = [];
    const ahead: string[][] = [];
    for await (const stored of this.clickhouse.keyVersions(entity, bucket.scope, this.repairChunkKeys)) {
      const versions = await reader.versionsByKey(bucket.scope, stored.map((s) => s.key));
      for (const s of stored) {
        const version = versions.get(keyText(s.key));
        if (version === undefined) {
          if (!s.deleted) absent.push(s.key);
        } else if (s.version > version || (s.version === version && s.deleted)) {
          // Equal versions: which of two rows FINAL keeps is not ours to rely on when one is a tombstone.
          ahead.push(s.key);
        }
      }
    }
    addReplay(result, await replay.replay(bucket.projectId, keysOnly(absent), `${token}:absent`));
    result.reset += await replay.reset(bucket.projectId, ahead, `${token}:ahead`);
    return result;
  }
}
