import { MirrorLogger } from './batch-writer';
import { Clock, realClock } from './clock';
import { classifySendError, publicSendError } from './retry-policy';

/** How often to retry the ClickHouse DDL while it fails (ClickHouse down at startup). */
export const SCHEMA_RETRY_MS = 5_000;
/** While the DDL keeps failing, how often the log says it still does. */
const SCHEMA_REMINDER_MS = 60_000;

/**
 * The mirror's ClickHouse tables: applies the DDL at startup and, while
 * ClickHouse cannot take it, every SCHEMA_RETRY_MS and whenever an insert
 * asks (ensure()), one run at a time, until it has gone through once. A
 * failing DDL is logged when it first fails, at most once a minute while it
 * goes on failing, and once when it goes through; /health shows `applied`.
 */
export class ClickHouseSchema {
  private applied = false;
  private running: Promise<boolean> | null = null;
  private reapplying: Promise<boolean> | null = null;
  private retry: unknown = null;
  private stopped = false;
  private failing: { since: number; tries: number; remindedAt: number; error: string; publicError: string } | null = null;

  constructor(
    /** Applies the migrations; resolves to the names of those it applied. */
    private readonly apply: () => Promise<string[]>,
    private readonly logger: MirrorLogger,
    private readonly clock: Clock = realClock,
    /** Whether the mirror's database has this table now (ClickHouse's system.tables); fails when it cannot tell. */
    private readonly tableExists: (table: string) => Promise<boolean> = async () => false,
  ) {}

  get isApplied(): boolean {
    return this.applied;
  }

  /** While the DDL fails: its last error, which is what an insert waiting for the schema waits on. */
  get failure(): string | null {
    return this.failing?.error ?? null;
  }

  /** The same, as /health may show it: kind and code (publicSendError). */
  get publicFailure(): string | null {
    return this.failing?.publicError ?? null;
  }

  /** Resolves true once the schema is applied, false if this run failed (a retry is then scheduled). */
  ensure(): Promise<boolean> {
    if (this.applied) return Promise.resolve(true);
    this.running ??= this.run().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /**
   * For an insert that found the mirror's database or table gone after the
   * schema was applied: ClickHouse lost its data (a wiped disk, a rebuilt
   * replica, a dropped database), and with it the migrations ledger, so the
   * migrations create everything again. Runs the DDL once more (one run for
   * every insert that asks meanwhile), then resolves whether `table` is
   * there now: true when this run created the tables, else what ClickHouse's
   * system.tables says, whoever made the table (another API, an operator's
   * `migrate:clickhouse`); null when the check got no answer. A table dropped
   * by hand stays dropped (the ledger still lists it). Never fails.
   */
  async reapply(table: string): Promise<boolean | null> {
    this.reapplying ??= this.apply()
      .then(
        (migrations) => {
          if (migrations.length === 0) return false;
          this.logger.warn({ migrations }, "ClickHouse had lost the mirror's tables; applied its migrations again");
          return true;
        },
        (error: unknown) => {
          this.logger.warn({ err: (error as Error)?.message ?? String(error) }, "ClickHouse DDL failed after an insert found the mirror's tables missing");
          return false;
        },
      )
      .finally(() => {
        this.reapplying = null;
      });
    if (await this.reapplying) return true;
    // Not known only when the check got no answer (a server just back, busy): one ClickHouse refused is a no.
    return this.tableExists(table).catch((error: unknown) => (classifySendError(error) === 'transient' ? null : false));
  }

  /** No more retries (shutdown); a run still going ends unreported, its failure being the shutdown's. */
  stop(): void {
    this.stopped = true;
    if (this.retry !== null) this.clock.clearTimeout(this.retry);
    this.retry = null;
  }

  private async run(): Promise<boolean> {
    try {
      const migrations = await this.apply();
      this.applied = true;
      if (migrations.length) this.logger.info({ migrations }, 'applied ClickHouse migrations');
      if (this.failing) {
        this.logger.info({ failingForMs: this.clock.now() - this.failing.since, tries: this.failing.tries + 1 }, 'ClickHouse schema applied after failing');
        this.failing = null;
      }
    } catch (error) {
      if (this.stopped) return false;
      this.noteFailure((error as Error)?.message ?? String(error), publicSendError(error));
      if (this.retry === null) {
        this.retry = this.clock.setTimeout(() => {
          this.retry = null;
          void this.ensure();
        }, SCHEMA_RETRY_MS);
      }
    }
    return this.applied;
  }

  private noteFailure(message: string, publicError: string): void {
    const now = this.clock.now();
    if (!this.failing) {
      this.failing = { since: now, tries: 1, remindedAt: now, error: message, publicError };
      this.logger.error({ err: message, retryMs: SCHEMA_RETRY_MS }, 'ClickHouse DDL failed; mirrored rows queue until it is applied, retrying');
      return;
    }
    this.failing.tries += 1;
    this.failing.error = message;
    this.failing.publicError = publicError;
    if (now - this.failing.remindedAt < SCHEMA_REMINDER_MS) return;
    this.failing.remindedAt = now;
    this.logger.warn({ err: message, failingForMs: now - this.failing.since, tries: this.failing.tries }, 'ClickHouse DDL still failing');
  }
}
