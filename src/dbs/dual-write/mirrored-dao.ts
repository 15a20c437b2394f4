import { GapRow } from '../clickhouse/gap-ledger';
import { leavesCommitUnknown } from '../postgres/unavailable';
import { currentWriteScope } from '../write-scope';

/**
 * The dual-write decorator: one generic mechanism for every DAO port. It
 * forwards each call to the Postgres DAO unchanged and returns its result.
 * For the methods a MirrorPlan names as writes, once Postgres has committed
 * (the call resolved; inside a WriteScope, the scope's transaction), it hands
 * the committed rows to the mirror. Handing over is synchronous and never
 * throws into the caller: the mirror only takes the rows, and any fault there
 * is logged and counted, not propagated.
 */

type Methods<T> = { [K in keyof T]: T[K] extends (...args: never[]) => unknown ? K : never }[keyof T];
/** The async methods that resolve to an array: a write resolves to the rows it committed. */
type RowWriters<T> = { [K in keyof T]: T[K] extends (...args: never[]) => Promise<readonly unknown[]> ? K : never }[keyof T];
type CommittedRow<F> = F extends (...args: never[]) => Promise<readonly (infer R)[]> ? R : never;

/** A plan's mark for a method that writes nothing: the decorator passes it straight through. */
export const READS = 'reads';

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
  /**
   * Every method of the port, each either a write (how its committed rows
   * become records) or READS. Complete, so that a method added to the port
   * does not pass through unmirrored by omission: the compiler asks which it
   * is. Only a method resolving to rows can be a write.
   */
  methods: { [K in Methods<Dao>]: (K extends RowWriters<Dao> ? (row: CommittedRow<Dao[K]>) => Mirrored : never) | typeof READS };
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
  /**
   * A write that failed without saying whether it committed (see
   * leavesCommitUnknown): if it did, the mirror has none of its rows, and
   * nothing else would tell. Logged and counted, never thrown.
   */
  outcomeUnknown(entity: string, method: string, projectId: unknown, error: unknown): void;
}

export function mirrorWrites<Dao extends object, Mirrored>(dao: Dao, plan: MirrorPlan<Dao, Mirrored>, mirror: MirrorTarget): Dao {
  const methods = plan.methods as Record<PropertyKey, ((row: unknown) => Mirrored) | typeof READS | undefined>;
  return new Proxy(dao, {
    get(target, property, receiver) {
      const member = Reflect.get(target, property, receiver);
      if (typeof member !== 'function') return member;
      // Own entries only: `constructor`, `toString` and the rest of Object.prototype are no writes.
      const toRecord = Object.hasOwn(methods, property) ? methods[property] : undefined;
      if (toRecord === undefined || toRecord === READS) return member.bind(target);
      return async (...args: unknown[]) => {
        const settled = mirror.started();
        // Inside a WriteScope the call has not committed when it resolves: the scope's transaction commits later.
        const scope = currentWriteScope();
        // Every write method of a port takes the project first.
        const outcomeUnknown = (error: unknown) => mirror.outcomeUnknown(plan.entity, String(property), args[0], error);
        let settledLater = false;
        try {
          let result: unknown;
          try {
            result = await member.apply(target, args);
          } catch (error) {
            // In a scope, a failed write rolls the scope back: nothing of it can have committed.
            if (!scope && leavesCommitUnknown(error)) outcomeUnknown(error);
            throw error;
          }
          const handOver = () => {
            try {
              if (!Array.isArray(result)) throw new Error(`${String(property)} resolved to ${typeof result}, not the rows it committed`);
              mirror.accept(plan as MirrorPlan<unknown, Mirrored>, result, toRecord);
            } catch (error) {
              // The caller's write has committed and stands; the verifier finds what the mirror missed.
              mirror.failed(plan.entity, error);
            }
          };
          if (!scope) {
            handOver();
          } else {
            settledLater = true;
            scope.onEnd((outcome) => {
              try {
                if (outcome.committed) handOver();
                else if (outcome.unknown) outcomeUnknown(outcome.error);
              } finally {
                settled();
              }
            });
          }
          return result;
        } finally {
          if (!settledLater) settled();
        }
      };
    },
  });
}
