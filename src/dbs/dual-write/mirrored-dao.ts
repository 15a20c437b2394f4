import { GapRow } from '../clickhouse/batch-writer';

/**
 * The dual-write decorator: one generic mechanism for every DAO port. It
 * forwards each call to the Postgres DAO unchanged and returns its result.
 * For the methods a MirrorPlan names as writes, once Postgres has committed
 * (the call resolved), it hands the committed rows to the mirror. Handing
 * over is synchronous and never throws into the caller: the mirror only
 * enqueues, and any fault there is logged and counted, not propagated.
 */

type AsyncMethods<T> = { [K in keyof T]: T[K] extends (...args: never[]) => Promise<unknown> ? K : never }[keyof T];
type Resolved<F> = F extends (...args: never[]) => Promise<infer R> ? R : never;

/**
 * Which methods of a DAO write, how their results become mirrored rows (each
 * with its version and tombstone flag), and, through that table's row
 * mapper, what the batch writer needs of one: its table, project and keys
 * (a gap row), and its ClickHouse line. The line is the expensive part, so
 * the mirror asks for it only for rows it sends (see Mirror).
 */
export interface MirrorPlan<Dao, Mirrored> {
  entity: 'spans' | 'nodes';
  writes: { [K in AsyncMethods<Dao>]?: (result: Resolved<Dao[K]>) => Mirrored[] };
  toGapRow(record: Mirrored): GapRow;
  toLine(record: Mirrored): string;
}

/** Receives committed rows; must return at once. */
export interface MirrorTarget {
  accept<Mirrored>(plan: MirrorPlan<unknown, Mirrored>, records: Mirrored[]): void;
  /** A write whose records could not even be built; logged and counted, never thrown. */
  failed(entity: string, error: unknown): void;
}

export function mirrorWrites<Dao extends object, Mirrored>(dao: Dao, plan: MirrorPlan<Dao, Mirrored>, mirror: MirrorTarget): Dao {
  const writes = plan.writes as Record<PropertyKey, ((result: unknown) => Mirrored[]) | undefined>;
  return new Proxy(dao, {
    get(target, property, receiver) {
      const member = Reflect.get(target, property, receiver);
      if (typeof member !== 'function') return member;
      const toRecords = writes[property];
      if (!toRecords) return member.bind(target);
      return async (...args: unknown[]) => {
        const result = await member.apply(target, args);
        try {
          mirror.accept(plan as MirrorPlan<unknown, Mirrored>, toRecords(result));
        } catch (error) {
          // The caller's write has committed and stands; the verifier finds what the mirror missed.
          mirror.failed(plan.entity, error);
        }
        return result;
      };
    },
  });
}
