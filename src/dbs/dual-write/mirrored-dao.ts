/**
 * The dual-write decorator: one generic mechanism for every DAO port. It
 * forwards each call to the Postgres DAO unchanged and returns its result.
 * For the methods a MirrorPlan names as writes, once Postgres has committed
 * (the call resolved), it hands the committed rows to the mirror. Handing
 * over is synchronous and never throws into the caller: the mirror only
 * enqueues, and any fault there is logged and counted, not propagated.
 */

/** A committed row as the mirror sees it: the row, its version, and whether it is a tombstone. */
export interface MirrorRecord<Row> {
  row: Row;
  /** Microseconds of the row's Postgres clock at this write. */
  version: bigint;
  deleted: boolean;
}

type AsyncMethods<T> = { [K in keyof T]: T[K] extends (...args: never[]) => Promise<unknown> ? K : never }[keyof T];

/** The ClickHouse side of one mirrored row, ready for the batch writer. */
export interface MirroredRow {
  table: string;
  projectId: string;
  key: string[];
  createdAt: string;
  line: string;
}

/**
 * Which methods of a DAO write, how their results become mirror records, and
 * how a record becomes a ClickHouse row (through that table's row mapper).
 */
export interface MirrorPlan<Dao, Row> {
  entity: 'spans' | 'nodes';
  writes: { [K in AsyncMethods<Dao>]?: (result: Awaited<ReturnType<Extract<Dao[K], (...args: never[]) => unknown>>>) => MirrorRecord<Row>[] };
  toClickHouse(record: MirrorRecord<Row>): MirroredRow;
}

/** Receives committed rows; must return at once. */
export interface MirrorTarget {
  accept<Row>(plan: MirrorPlan<unknown, Row>, records: MirrorRecord<Row>[]): void;
  /** A write whose records could not even be built; logged and counted, never thrown. */
  failed(entity: string, error: unknown): void;
}

export function mirrorWrites<Dao extends object, Row>(dao: Dao, plan: MirrorPlan<Dao, Row>, mirror: MirrorTarget): Dao {
  return new Proxy(dao, {
    get(target, property, receiver) {
      const member = Reflect.get(target, property, receiver);
      if (typeof member !== 'function') return member;
      const toRecords = (plan.writes as Record<PropertyKey, ((result: unknown) => MirrorRecord<Row>[]) | undefined>)[property];
      if (!toRecords) return member.bind(target);
      return async (...args: unknown[]) => {
        const result = await member.apply(target, args);
        try {
          mirror.accept(plan as MirrorPlan<unknown, Row>, toRecords(result));
        } catch (error) {
          // The caller's write has committed and stands; the verifier finds what the mirror missed.
          mirror.failed(plan.entity, error);
        }
        return result;
      };
    },
  });
}
