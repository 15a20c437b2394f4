/**
 * Two transactions that write overlapping rows in different orders can each
 * hold a row lock the other waits for; Postgres then aborts one of them
 * ("deadlock detected"). That happens as soon as two clients send the same
 * spans in different orders (an exporter's retry racing a collector's copy).
 * So every batch write touches its rows in one order, the primary key's, and
 * concurrent writers of the same rows queue behind each other instead.
 *
 * Keys are compared as lower-case text: hex ids and UUIDs sort as such text exactly
 * as Postgres sorts them as uuid and bytea, so the order is also the index's.
 */
export function inLockOrder<T>(rows: readonly T[], key: (row: T) => string): T[] {
  return rows
    .map((row) => ({ row, key: key(row) }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map(({ row }) => row);
}

/** The stored rows back in the order the caller gave them (rows it gave that were not stored are skipped). */
export function inCallersOrder<K, R extends K>(given: readonly K[], stored: readonly R[], key: (row: K) => string): R[] {
  const byKey = new Map(stored.map((row) => [key(row), row]));
  return given.flatMap((row) => byKey.get(key(row)) ?? []);
}
