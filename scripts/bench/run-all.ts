import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { BenchFlags } from './support/cli';

const BENCHES = ['write-path', 'mirror-throughput', 'mirror-lag', 'memory', 'backfill'] as const;

const USAGE = `usage: npm run bench -- [--quick] [--only a,b]

Runs every benchmark, one after another, each in its own process (so none
inherits another's heap or servers), then repeats every goal line (and write-path's noise-floor and CPU notes). Each
benchmark prints its figures and writes bench-results/<name>-<time>.json.
Run one alone, with its own flags, as npm run bench:<name> -- --help.

  --quick       each benchmark's smoke run (under a minute each, write-path's a few)
  --only LIST   comma-separated subset of: ${BENCHES.join(', ')}`;

/** What the summary repeats: every goal, and beside write-path's goals the A/A noise floor and the API CPU per request they are read by. */
const summarized = (line: string) => line.startsWith('goal ') || line.startsWith('note: noise floor') || (line.startsWith('note: ') && line.includes('API CPU per request'));

async function run(name: string, args: string[]): Promise<{ code: number; goals: string[] }> {
  const goals: string[] = [];
  const child = spawn(process.execPath, ['--expose-gc', resolve(__dirname, `${name}.js`), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let partial = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    process.stdout.write(chunk);
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    goals.push(...lines.filter(summarized));
  });
  // 'close', not 'exit': the last lines (the goals) may still be in the pipe when the process exits.
  const code = await new Promise<number>((done) => child.on('close', (c) => done(c ?? 1)));
  if (summarized(partial)) goals.push(partial);
  return { code, goals };
}

async function main(): Promise<void> {
  const flags = new BenchFlags(process.argv.slice(2), USAGE);
  const only = flags.names('only', BENCHES, [...BENCHES]);
  const args = flags.has('quick') ? ['--quick'] : [];
  const summary: string[] = [];
  let failed = 0;
  for (const name of BENCHES.filter((b) => only.includes(b))) {
    process.stdout.write(`\n######## ${name}\n`);
    const { code, goals } = await run(name, args);
    if (code !== 0) {
      failed += 1;
      summary.push(`${name}: FAILED (exit ${code})`);
    }
    summary.push(...goals.map((goal) => `${name}: ${goal}`));
  }
  process.stdout.write(`\n######## summary\n${summary.join('\n')}\n`);
  process.exit(failed ? 1 : 0);
}

void main();
