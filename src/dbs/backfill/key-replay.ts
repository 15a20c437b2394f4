import { Kysely, sql } from 'kysely';
import { isoToMicros } from '../../tracing/timestamp';
import { DB } from '../postgres/database';
import { errorText } from '../../error-text';
import { ClickHouseHistory, StoredTombstone } from './clickhouse-history';
import { GapEntry, HistoryEntity, keyText, MirroredRecord } from './history-entities';
import { KEYS_PER_READ, KeysetReader } from './keyset-reader';
import { holdTombstones, LOST_IN_A_STRETCH, tombstonesLost, uninterruptibly } from './uninterruptible';

export interface ReplayResult {
  /** Postgres rows written at their current version. */
  upserted: number;
  /**
   * Tombstones written: for live ClickHouse rows Postgres no longer has (its
   * key deleted, or created again another day), and for gap entries whose
   * creation neither side holds (see KeyReplay.unseen).
   */
  tombstoned: number;
  /** Keys whose ClickHouse rows were newer than Postgres's and were replaced by mutation. */
  reset: number;
}

const MICROS_PER_DAY = 86_400_000_000n;
/** The creation day ClickHouse sorts a row under: toDate of its created_at, in UTC. */
const dayOfMicros = (micros: bigint): bigint => (micros >= 0n ? micros : micros - MICROS_PER_DAY + 1n) / MICROS_PER_DAY;

/** A key (as keyText) on one creation day (µs): what a row's sort key tells apart. */
const atDay = (text: string, micros: bigint): string => `${text}@${dayOfMicros(micros)}`;
const dayKey = (key: string[], createdAt: string): string => atDay(keyText(key), isoToMicros(createdAt));

/** Entries sorted by key (stably), so each key's entries are side by side. */
function byKey(entries: GapEntry[]): GapEntry[] {
  return entries
    .map((entry, at) => ({ entry, at, text: keyText(entry.key) }))
    .sort((a, b) => (a.text < b.text ? -1 : a.text > b.text ? 1 : a.at - b.at))
    .map(({ entry }) => entry);
}

/** Keys without repeats, in their first order. */
function uniqueKeys(keys: string[][]): string[][] {
  return [...new Map(keys.map((k) => [keyText(k), k])).values()];
}

/** Keys alone, as a replay takes them when there is no gap entry to read a tombstone from (verify --repair). */
export const keysOnly = (keys: string[][]): GapEntry[] => keys.map((key) => ({ key, tombstone: null }));

export const emptyReplay = (): ReplayResult => ({ upserted: 0, tombstoned: 0, reset: 0 });

export function addReplay(total: ReplayResult, more: ReplayResult): ReplayResult {
  total.upserted += more.upserted;
  total.tombstoned += more.tombstoned;
  total.reset += more.reset;
  return total;
}

/**
 * A reset removed keys' rows (or may have) and could not write back the
 * tombstones it had read of them: they are lost with this process, and a
 * run that goes on would lose more the same way. It stops, and says to run
 * verify.
 */
export class TombstonesLostError extends Error {
  override name = 'TombstonesLostError';
}

/**
 * Brings named keys of one project in ClickHouse to what Postgres holds now:
 * the one mechanism behind `backfill --gaps` and `verify --repair`.
 *
 * Keys present in Postgres are re-inserted at their version (µs of
 * updated_at). Live ClickHouse rows Postgres does not hold get a tombstone
 * at Postgres's clock_timestamp(), read after we saw them missing: rows of
 * keys Postgres no longer has, and rows of a key under another created_at
 * (deleted, then created again on another day: ClickHouse sorts rows by
 * creation day, so the new row has a sort key of its own and does not
 * replace the old one). That is safe: such a row's key or creation is gone
 * because a delete committed before our read, and every version ever
 * written for it (each write's updated_at, the delete's deleted_at) came
 * from Postgres's clock before that commit, so the tombstone outranks all
 * the mirror holds or still has queued. A key re-created while we worked
 * would be hidden by it, so tombstoned keys are read again afterwards.
 *
 * A gap entry (recorded since entries carry created_at and the tombstone's
 * fields) also gets its tombstone when neither side holds its creation: the
 * delete of a row whose create is still queued in some API, on its way to
 * land after this replay. Its older version loses to the tombstone.
 * Left: a re-creation on the same day whose transaction is still open when
 * we read again is not seen, and its row (versioned before our tombstone)
 * stays hidden; the next verify finds it and --repair mends it. Closing that
 * would mean waiting out every transaction open at the first read. Also left:
 * reset() keeps the tombstones it finds (see resetKeys), but one the mirror
 * writes between that read and the removal is removed with the rest: the key
 * is then left with no row in ClickHouse, which is right, but with nothing to
 * outrank a copy of an older version written after it (a backfill that read
 * the key before the delete). The next verify finds that row too.
 */
export class KeyReplay<Row, Mirrored extends MirroredRecord> {
  private readonly reader: KeysetReader<Row>;

  /**
   * `stillExclusive`: throws when the run's lock (KEY_REPLAY_RUN) is no longer held, asked before each reset
   * chunk: a lock whose session ended (terminated, or cut off) lets another reset of the same keys start.
   */
  constructor(
    private readonly db: Kysely<DB>,
    private readonly clickhouse: ClickHouseHistory,
    private readonly entity: HistoryEntity<Row, Mirrored>,
    private readonly stillExclusive: () => Promise<void>,
  ) {
    this.reader = new KeysetReader(db, entity);
  }

  /** `token` must be unique to this attempt; inserts derive their deduplication tokens from it. */
  async replay(projectId: string, keys: GapEntry[], token: string): Promise<ReplayResult> {
    const result = emptyReplay();
    // A key's entries (one per write of it) side by side and in one chunk: the key is read, its
    // tombstones written and, if need be, the key reset once, not once per chunk it turns up in.
    const ordered = byKey(keys);
    for (let i = 0, end = 0; i < ordered.length; i = end) {
      end = Math.min(i + KEYS_PER_READ, ordered.length);
      while (end < ordered.length && keyText(ordered[end].key) === keyText(ordered[end - 1].key)) end++;
      const chunk = ordered.slice(i, end);
      const chunkKeys = chunk.map((entry) => entry.key);
      const rows = await this.reader.byKeys(projectId, chunkKeys);
      await this.upsert(rows, `${token}:upsert:${i}`);
      result.upserted += rows.length;

      // Each key's creation as Postgres holds it (µs): a live ClickHouse row under any other is an orphan.
      const createdAt = new Map(rows.map((r) => [keyText(this.entity.keyOf(r)), isoToMicros(this.entity.mirrored(r).created_at)]));
      const version = await this.postgresClock();
      const live = await this.clickhouse.readLive(this.entity, projectId, chunkKeys);
      const orphans = live.filter((m) => createdAt.get(keyText(this.entity.mirroredKeyOf(m))) !== isoToMicros(m.created_at));
      // A stored version at or past Postgres's clock cannot be outranked by a tombstone. Nor can an orphan on
      // the creation day Postgres holds the key on be tombstoned: that is Postgres's row's sort key, and the
      // tombstone would hide the row just upserted there (which lost to the orphan's newer version).
      const resets = (m: Mirrored) => {
        const held = createdAt.get(keyText(this.entity.mirroredKeyOf(m)));
        return m.version >= version || (held !== undefined && dayOfMicros(held) === dayOfMicros(isoToMicros(m.created_at)));
      };
      const ahead = orphans.filter(resets).map((m) => this.entity.mirroredKeyOf(m));
      const tombstones = [
        ...orphans
          .filter((m) => !resets(m))
          .map((m) => ({ key: this.entity.mirroredKeyOf(m), createdAt: m.created_at, line: this.entity.tombstoneLine(m, version) })),
        ...this.unseen(chunk, createdAt, live).map(({ key, tombstone }) => ({ key, createdAt: tombstone.createdAt, line: tombstone.lineAt(version) })),
      ];
      if (tombstones.length === 0 && ahead.length === 0) continue;
      await this.clickhouse.insert(
        this.entity.table,
        tombstones.map((t) => t.line),
        `${token}:tombstone:${i}`,
      );

      // Only a key Postgres did not have can have been created again under a tombstone's sort key.
      const gone = uniqueKeys(tombstones.map((t) => t.key).filter((k) => !createdAt.has(keyText(k))));
      const recreated = (await this.reader.byKeys(projectId, gone)).map((r) => this.entity.keyOf(r));
      const resetKeys = uniqueKeys([...ahead, ...recreated]);
      const held = await this.resetKeys(projectId, resetKeys, `${token}:reset:${i}`);
      result.reset += resetKeys.length;
      // A tombstone on the day Postgres now holds its key was removed by the reset, and stays removed.
      const heldDays = new Set(held.map((r) => dayKey(this.entity.keyOf(r), this.entity.mirrored(r).created_at)));
      result.tombstoned += tombstones.filter((t) => !heldDays.has(dayKey(t.key, t.createdAt))).length;
    }
    return result;
  }

  /**
   * Gap entries whose creation neither side holds: no Postgres row and no
   * live ClickHouse row of the key on the entry's creation day (the sort
   * key's), one per key and day. Their tombstone is for a create that may
   * still be queued in an API whose delete this gap holds: it lands after
   * the replay at an older version, and stays hidden. When there is no such
   * create the tombstone hides nothing.
   */
  private unseen(
    chunk: GapEntry[],
    postgresCreatedAt: ReadonlyMap<string, bigint>,
    live: Mirrored[],
  ): Array<GapEntry & { tombstone: NonNullable<GapEntry['tombstone']> }> {
    const held = new Set<string>();
    for (const [key, micros] of postgresCreatedAt) held.add(atDay(key, micros));
    for (const m of live) held.add(dayKey(this.entity.mirroredKeyOf(m), m.created_at));
    const unseen = new Map<string, GapEntry & { tombstone: NonNullable<GapEntry['tombstone']> }>();
    for (const entry of chunk) {
      if (entry.tombstone === null) continue;
      const at = dayKey(entry.key, entry.tombstone.createdAt);
      if (!held.has(at)) unseen.set(at, { key: entry.key, tombstone: entry.tombstone });
    }
    return [...unseen.values()];
  }

  /**
   * Keys whose ClickHouse rows outrank Postgres's: removes all their stored
   * versions by mutation, then writes Postgres's rows as they are after it,
   * so a write that commits meanwhile is either read here or mirrored later.
   */
  async reset(projectId: string, keys: string[][], token: string): Promise<number> {
    await this.resetKeys(projectId, keys, token);
    return keys.length;
  }

  /**
   * reset(), giving back the Postgres rows it wrote. The removal takes every
   * stored row of a key, tombstones included, but a tombstone on a creation
   * day Postgres does not hold the key (a delete) still has work to do: it
   * hides a create of that day still queued in some API. So the newest
   * tombstone of each such day, read just before the removal, is written
   * again: those this replay wrote and those earlier replays, gap records
   * or the mirror itself wrote alike.
   */
  private async resetKeys(projectId: string, keys: string[][], token: string): Promise<Row[]> {
    const written: Row[] = [];
    for (let i = 0; i < keys.length; i += KEYS_PER_READ) {
      const chunk = keys.slice(i, i + KEYS_PER_READ);
      await this.stillExclusive();
      // From reading the tombstones to writing them back a Ctrl-C waits (uninterruptible.ts): once the removal is issued, only this process holds them.
      written.push(...(await uninterruptibly(() => this.resetChunk(projectId, chunk, `${token}:${i}`))));
    }
    return written;
  }

  /** One chunk of resetKeys: reads its keys' tombstones, removes the keys, writes Postgres's rows and the tombstones back. */
  private async resetChunk(projectId: string, chunk: string[][], token: string): Promise<Row[]> {
    const tombstones = await this.clickhouse.storedTombstones(this.entity, projectId, chunk);
    // From the removal on, until they are written back, only this process holds the tombstones.
    const release = tombstones.length > 0 ? holdTombstones() : () => undefined;
    try {
      return await this.replaceChunk(projectId, chunk, tombstones, token);
    } finally {
      release();
    }
  }

  /** resetChunk past its read of the tombstones: removes the keys, then writes Postgres's rows and the tombstones back. */
  private async replaceChunk(projectId: string, chunk: string[][], tombstones: StoredTombstone[], token: string): Promise<Row[]> {
    // A removal can fail after ClickHouse took it (past the request's timeout, its mutation runs on) and
    // would then take the tombstones resetChunk read with it, which only this process holds. A mutation changes
    // only the parts stored before it, so what is written after it stays: the rows and tombstones are
    // written whatever the removal's outcome, and its error is the run's.
    const removal = await this.clickhouse.removeKeys(this.entity, projectId, chunk).then(
      () => null,
      (error: unknown) => ({ error }),
    );
    let rows: Row[];
    try {
      rows = await this.reader.byKeys(projectId, chunk);
      await this.upsert(rows, token);
      const heldDays = new Set(rows.map((r) => dayKey(this.entity.keyOf(r), this.entity.mirrored(r).created_at)));
      await this.clickhouse.insert(
        this.entity.table,
        tombstones.filter((t) => !heldDays.has(dayKey(t.key, t.createdAt))).map((t) => t.line),
        `${token}:tombstones`,
      );
    } catch (error) {
      if (!removal) {
        // The keys' rows are gone from ClickHouse, and the tombstones resetChunk read with them: only this process held them.
        if (tombstones.length === 0) throw error;
        tombstonesLost();
        throw new TombstonesLostError(
          `removed the keys' rows from ClickHouse, but writing Postgres's rows and up to ${tombstones.length} saved tombstone(s) back failed: ${errorText(error)}; ` +
            `lost with it: ${LOST_IN_A_STRETCH}`,
        );
      }
      if (tombstones.length === 0) throw removal.error;
      // Both failed: the tombstones resetChunk read are lost with this process, which only a verify finds out.
      tombstonesLost();
      throw new TombstonesLostError(
        `${errorText(removal.error)}; writing Postgres's rows and ${tombstones.length} saved tombstone(s) after it failed too: ${errorText(error)}; ` +
          `lost with it, if the removal went through: ${LOST_IN_A_STRETCH}`,
      );
    }
    if (removal) throw removal.error;
    return rows;
  }

  async upsert(rows: Row[], token: string): Promise<void> {
    await this.clickhouse.insert(
      this.entity.table,
      rows.map((r) => this.entity.line(this.entity.mirrored(r))),
      token,
    );
  }

  private async postgresClock(): Promise<bigint> {
    const { rows } = await sql<{ now: string }>`select clock_timestamp() as now`.execute(this.db);
    return isoToMicros(rows[0].now);
  }
}
