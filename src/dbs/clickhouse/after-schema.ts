import { MirrorSink } from './batch-writer';
import { ClickHouseSchema } from './clickhouse-schema';
import { clickHouseCodeOf, describeSendError, MirrorSendError, publicSendError } from './retry-policy';
import { within } from '../../within';

/**
 * Inserts wait for the schema. When ClickHouse was unreachable at startup its
 * tables may not exist yet, and an insert would then be rejected as
 * UNKNOWN_DATABASE, a permanent error that turns the rows into gaps. Instead
 * the insert first applies the DDL (ClickHouse just answered, so it likely
 * works) and, if it still cannot, fails transiently and is retried. An insert
 * that finds its table gone later (ClickHouse lost its data) has the DDL run
 * again; once the table is there again, it fails transiently and the writer
 * sends it again (its body can be read only once). Otherwise (a table
 * dropped by hand) its error stands. Each wait is bounded like any request,
 * as the batch writer requires.
 */
export function afterSchema(sink: MirrorSink, schema: Pick<ClickHouseSchema, 'ensure' | 'failure' | 'publicFailure' | 'reapply'>, timeoutMs: number): MirrorSink {
  return {
    insert: async (table, lines, dedupToken) => {
      const ready = await within(schema.ensure(), timeoutMs, () => false);
      // Its cause goes with it: this is what a gap's reason shows, and in its public form /health's lastError.
      // Neither says "will retry": whether it is tried again is the writer's to say (its log does), and a
      // gap's reason is this text after the last attempt.
      if (!ready) {
        throw new MirrorSendError(
          `ClickHouse schema is not applied yet (${schema.failure ?? 'its DDL is still running'})`,
          `ClickHouse schema is not applied yet (${schema.publicFailure ?? 'its DDL is still running'})`,
        );
      }
      try {
        await sink.insert(table, lines, dedupToken);
      } catch (error) {
        if (!MISSING_SCHEMA_CODES.has(clickHouseCodeOf(error) ?? '')) throw error;
        const there = await within(schema.reapply(table), timeoutMs, () => null);
        if (there === false) throw error;
        // Back, or not known (the check failed or ran out of time): sent again, within the batch's attempts.
        const now = there ? 'it is there again' : 'whether it is back could not be read';
        throw new MirrorSendError(
          `ClickHouse had lost the mirror's table ${table} (${describeSendError(error)}); ${now}`,
          `ClickHouse had lost the mirror's table ${table} (${publicSendError(error)}); ${now}`,
        );
      }
    },
    ping: () => sink.ping(),
  };
}

/** UNKNOWN_TABLE, UNKNOWN_DATABASE: the mirror's tables are not where the schema put them. */
const MISSING_SCHEMA_CODES = new Set(['60', '81']);
