import { SingleBar } from 'cli-progress';
import { Entity } from './history-scope';

/** What a long history command (the backfill's copy, verify's content pass, its repair) reports while it runs. */
export interface HistoryProgress {
  start(entity: Entity, total: number): void;
  advance(rows: number, cursor: string[]): void;
  stop(): void;
}

export const silentProgress: HistoryProgress = { start: () => undefined, advance: () => undefined, stop: () => undefined };

const LOG_EVERY_MS = 5_000;

/**
 * A bar with percent, rows/s and ETA on a terminal; a logfmt line every few
 * seconds otherwise (CI, files, pipes), starting with the task's name.
 */
export function createProgress(stream: NodeJS.WriteStream, log: (line: string) => void, task: 'backfill' | 'verify' | 'repair' = 'backfill'): HistoryProgress {
  return stream.isTTY ? new BarProgress(stream, task) : new LogProgress(log, task);
}

class BarProgress implements HistoryProgress {
  private bar?: SingleBar;
  private startedAt = 0;
  private done = 0;

  constructor(
    private readonly stream: NodeJS.WriteStream,
    private readonly task: string,
  ) {}

  start(entity: Entity, total: number): void {
    this.startedAt = Date.now();
    this.done = 0;
    this.bar = new SingleBar({
      stream: this.stream,
      format: `${this.task} ${entity.padEnd(5)} |{bar}| {percentage}% | {value}/{total} rows | {speed} rows/s | ETA {eta_formatted}`,
      etaBuffer: 50,
      hideCursor: true,
    });
    // A total of 0 (nothing left to copy) shows as done: cli-progress counts 0 of 0 as 100%.
    this.bar.start(total, 0, { speed: 0 });
  }

  advance(rows: number): void {
    this.done += rows;
    const seconds = (Date.now() - this.startedAt) / 1000;
    // A resumed run's total was counted after its cursor, but live inserts may still land inside the range.
    if (this.done > this.bar!.getTotal()) this.bar!.setTotal(this.done);
    this.bar!.update(this.done, { speed: seconds > 0 ? Math.round(this.done / seconds) : 0 });
  }

  stop(): void {
    this.bar?.stop();
  }
}

class LogProgress implements HistoryProgress {
  private entity: Entity = 'spans';
  private total = 0;
  private done = 0;
  private startedAt = 0;
  private loggedAt = 0;

  constructor(
    private readonly log: (line: string) => void,
    private readonly task: string,
  ) {}

  start(entity: Entity, total: number): void {
    Object.assign(this, { entity, total, done: 0, startedAt: Date.now(), loggedAt: Date.now() });
  }

  advance(rows: number, cursor: string[]): void {
    this.done += rows;
    // As the bar does: rows that land inside the range after it was counted raise the total, not the percent past 100.
    this.total = Math.max(this.total, this.done);
    const now = Date.now();
    if (now - this.loggedAt < LOG_EVERY_MS) return;
    this.loggedAt = now;
    const rate = Math.round(this.done / ((now - this.startedAt) / 1000));
    const percent = this.total ? ((100 * this.done) / this.total).toFixed(1) : '100.0';
    this.log(`${this.task} progress entity=${this.entity} rows=${this.done} total=${this.total} percent=${percent} rows_per_s=${rate} cursor=${cursor.join('/')}`);
  }

  stop(): void {}
}
