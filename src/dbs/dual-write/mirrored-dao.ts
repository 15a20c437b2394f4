import { GapRow } from '../clickhouse/gap-ledger';

/**
 * The dual-write decorator: one generic mechanism for every DAO port. It
 * forwards each call to the Postgres DAO unchanged and returns its result.
 * For the methods a MirrorPlan names as writes, once Postgres has committed
 * (the call resolved), it hands the committed rows to the mirror. Handing
 * over is synchronous and never throws into the caller: the mirror only
 * takes the rows, and any fault there is logged and counted, not propagated.
 */

/** The async methods that resolve to an array: a write resolves to the rows it committed. */
type RowWriters<T> = { [K in keyof T]: T[K] extends (...args: never[]) => Promise<readonly unknown[]> ? K : never }[keyof T];
type CommittedRow<F> = F extends (...args: never[]) => Promise<readonly (infer R)[]> ? R : never;

/** What the mirror copies, one plan each; the backfill and verify work over the same list. */
export const MIRRORED_ENTITIES = ['spans', 'nodes'] as const;
export type MirroredEntity = (typeof MIRRORED_ENTITIES)[number];

/**
 * Which methods of a DAO write, how each committed row they return becomes
 * a mirrored record (with its version and tombstone flag), and, through
 * that table's row mapper, what the batch writer needs of a record: its
 * table, project and keys (a gap row), and its ClickHouse line. Records and
 * lines are built after the call has returned (see Mirror); the line only
 * for rows the mirror sends.
 */
export interface MirrorPlan<Dao, Mirrored> {
  entity: MirroredEntity;
  writes: { [K in RowWriters<Dao>]?: (row: CommittedRow<Dao[K]>) => Mirrored };
  toGapRow(record: Mirrored): GapRow;
  toLine(record: Mirrored): string;
}

/** Receives committed rows; must return at once. */
export interface MirrorTarget {
  /**
   * A write is on its way to Postgres; call the function returned once it
   * has settled (its rows handed over, or failed). Shutdown waits for these
   * before it closes the mirror, so a write that commits late is not lost.
   */
  started(): () => void;
  /** One write's committed rows, and how each becomes its record: built later, off the caller's path. */
  accept<Row, Mirrored>(plan: MirrorPlan<unknown, Mirrored>, rows: readonly Row[], toRecord: (row: Row) => Mirrored): void;
  /** A write whose records could not be built; logged and counted, never thrown. */
  failed(entity: string, error: unknown): void;
}

export function mirrorWrites<Dao extends object, Mirrored>(dao: Dao, plan: MirrorPlan<Dao, Mirrored>, mirror: MirrorTarget): Dao {
  const writes = plan.writes as Record<PropertyKey, ((row: unknown) => Mirrored) | undefined>;
  return new Proxy(dao, {
    get(target, property, receiver) {
      const member = Reflect.get(target, property, receiver);
      if (typeof member !== 'function') return member;
      const toRecord = writes[property];
      if (!toRecord) return member.bind(target);
      return async (...args: unknown[]) => {
        const settled = mirror.started();
        try {
          const result: unknown = await member.apply(target, args);
          try {
            if (!Array.isArray(result)) throw new Error(`${String(property)} resolved to ${typeof result}, not the rows it committed`);
            mirror.accept(plan as MirrorPlan<unknown, Mirrored>, result, toRecord);
          } catch (error) {
            // The caller's write has committed and stands; the verifier finds what the mirror missed.
            mirror.failed(plan.entity, error);
          }
          return result;
        } finally {
          settled();
        }
      };
    },
  });
}
