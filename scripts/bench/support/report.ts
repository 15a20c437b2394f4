import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { num, Spread, showSpread } from './stats';

/**
 * What every benchmark prints and saves: the machine it ran on, what it
 * measured, and each goal with the figure it is judged on (the median of
 * the rounds unless the goal names another, with the rounds' median, min
 * and max beside it).
 */

export interface Machine {
  date: string;
  nproc: string;
  memory: string;
  node: string;
  loadAverageAtStart: number[];
}

export interface Goal {
  name: string;
  /** E.g. "<= 1.05". */
  target: string;
  spread: Spread;
  /** The figure the goal is judged on when it is not the median of rounds (write-path: the p99 of every round's requests pooled). */
  judgedOn?: { label: string; value: number };
  unit?: string;
  met: boolean;
}

const RESULTS_DIR = resolve(process.cwd(), 'bench-results');

function run(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

export function describeMachine(): Machine {
  return {
    date: run('date', []),
    nproc: run('nproc', []),
    memory: run('free', ['-h']),
    node: process.version,
    loadAverageAtStart: loadavg().map((l) => Number(l.toFixed(2))),
  };
}

export class BenchReport {
  private readonly machine = describeMachine();
  private readonly goals: Goal[] = [];
  /** What finish() prints, in order: the goals and the notes placed among them. */
  private readonly summary: Array<{ goal: Goal } | { note: string }> = [];
  private readonly started = Date.now();

  constructor(
    readonly bench: string,
    private readonly options: Record<string, unknown>,
  ) {
    this.print(`== ${bench} == ${this.machine.date} | nproc ${this.machine.nproc} | node ${this.machine.node} | load ${this.machine.loadAverageAtStart.join(' ')}`);
    this.print(this.machine.memory);
    this.print(`options: ${JSON.stringify(options)}`);
  }

  print(text: string): void {
    process.stdout.write(`${text}\n`);
  }

  goal(goal: Goal): void {
    this.goals.push(goal);
    this.summary.push({ goal });
  }

  /** A `note:` line printed among the goal lines, after the goals given before it; a figure to read them by, not a goal. */
  note(text: string): void {
    this.summary.push({ note: text });
  }

  /** Prints the goals and writes bench-results/<bench>-<time>.json; returns whether every goal was met. */
  finish(results: unknown): boolean {
    this.print('');
    for (const entry of this.summary) {
      if ('note' in entry) {
        this.print(`note: ${entry.note}`);
        continue;
      }
      const g = entry.goal;
      const judged = g.judgedOn ? `${g.judgedOn.label} ${num(g.judgedOn.value, 2)}${g.unit ?? ''}; per round ` : '';
      this.print(`goal ${g.met ? 'MET   ' : 'MISSED'} ${g.name} ${g.target}: ${judged}median ${showSpread(g.spread, 2, g.unit ?? '')} (min–max)`);
    }
    const finishedAt = new Date();
    const file = resolve(RESULTS_DIR, `${this.bench}-${finishedAt.toISOString().replace(/[:.]/g, '-')}.json`);
    mkdirSync(RESULTS_DIR, { recursive: true });
    const payload = {
      bench: this.bench,
      machine: { ...this.machine, loadAverageAtEnd: loadavg().map((l) => Number(l.toFixed(2))) },
      options: this.options,
      durationSeconds: Math.round((Date.now() - this.started) / 1000),
      goals: this.goals,
      results,
    };
    writeFileSync(file, `${JSON.stringify(payload, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
    this.print(`load average at end: ${payload.machine.loadAverageAtEnd.join(' ')}; took ${payload.durationSeconds} s; wrote ${file}`);
    return this.goals.every((g) => g.met);
  }
}

/** Runs a benchmark's main, reporting a crash plainly; the exit code is 0 even when a goal is missed (figures, not a test). */
export function runBench(main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`benchmark failed: ${(error as Error)?.stack ?? String(error)}\n`);
      process.exit(1);
    },
  );
}
