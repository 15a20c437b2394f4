import { performance } from 'node:perf_hooks';
import { BenchFlags } from './support/cli';
import { ApiClient, postOk, sleep } from './support/http-load';
import { freePort } from '../cli/free-port';
import { MiB, rssOf } from './support/proc';
import { startApiProcess } from './support/processes';
import { BenchReport, runBench } from './support/report';
import { startNullClickHouse } from './support/null-clickhouse';
import { createApiKey, startBenchPostgres } from './support/servers';
import { spansBody, spansBodyPool } from './support/spans';
import { median, num, rotated, showSpread, spread, table } from './support/stats';

const USAGE = `usage: npm run bench:memory -- [options]

Peak RSS of the API (the compiled main.js, a child process) under sustained
load through a ClickHouse outage: ClickHouse (a null endpoint) answers for
--lead-seconds, then goes down for --down-seconds (it stops listening: every
connection refused), so the mirror queues up to MIRROR_QUEUE_MAX_BYTES and
records the rest as gaps, then comes back for --recovery-seconds, while the
mirror sends its queue on top of the load. Three baselines, per round:
  idle     the same process's RSS after start-up and a short warm-up, before
           the load (the process's baseline in the brief);
  control  the peak RSS of an API with USE_CLICKHOUSE off under the same load:
           what the load costs V8 and the API without any mirror;
  healthy  the peak RSS of an API with the flag on and a ClickHouse that keeps
           up (a null endpoint: it takes every insert and stores nothing, as
           a ClickHouse on its own machines would keep up; the local one
           shares these two cores and falls behind under this load), under
           the same load: the mirror without an outage, so what the outage
           adds is the queue.
Each round runs control, healthy and down in an order rotated between rounds,
each for as long as the others (lead + down + recovery) unless told otherwise: a peak is the maximum of
RSS samples every 100 ms, and a maximum over a noisy or growing plateau rises
with the window's length, so peaks over unequal windows do not compare.
Goals, each judged in every round:
  the brief's:         peak - idle <= MIRROR_QUEUE_MAX_BYTES (counts the load's own growth too);
  the mirror's share:  peak - control peak <= MIRROR_QUEUE_MAX_BYTES;
  the outage's share:  peak - healthy peak <= MIRROR_QUEUE_MAX_BYTES.

  --lead-seconds N     load before the outage, ClickHouse answering (default 10)
  --down-seconds N     load with ClickHouse down, per round (default 60)
  --recovery-seconds N load after ClickHouse is back (default 20)
  --control-seconds N  load on the flag-off control, and on the healthy API, per round (default: lead + down + recovery)
  --rounds N           rounds, each with fresh API processes (default 3)
  --queue-mib N        MIRROR_QUEUE_MAX_BYTES in MiB (default 64), of both flag-on APIs
  --concurrency N      requests in flight (default 8)
  --spans N            spans per request (default 50)
  --max-old-space-mib N  run every API with node --max-old-space-size=N: how RSS behaves
                       when V8 is told the heap's limit, as a container deployment would
  --quick              1 round: 5 s of load, a 20 s outage, 10 s of recovery; a smoke run`;

interface Sample {
  second: number;
  rssMiB: number;
  queuedMiB: number | null;
}

type Flag = 'off (control)' | 'on, ClickHouse keeping up (healthy)' | 'on, through a ClickHouse outage';
const CONTROL: Flag = 'off (control)';
const HEALTHY: Flag = 'on, ClickHouse keeping up (healthy)';
const DOWN: Flag = 'on, through a ClickHouse outage';

interface Run {
  round: number;
  flag: Flag;
  idleBytes: number;
  peakBytes: number;
  /** The outage's phase: its peak while ClickHouse was down (the phase's peak also covers before and after). */
  downPeakBytes: number | null;
  spansPerSecond: number;
  mirrorAtEnd: unknown;
  heapAtEnd: Record<string, number>;
  timeline: Sample[];
}

/** The V8 heap as prom-client's default metrics report it, in bytes. */
function heapOf(metrics: string): Record<string, number> {
  const read = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(metrics)?.[1] ?? NaN);
  return { heapUsed: read('nodejs_heap_size_used_bytes'), heapTotal: read('nodejs_heap_size_total_bytes'), external: read('nodejs_external_memory_bytes') };
}

async function main(): Promise<void> {
  const flags = new BenchFlags(process.argv.slice(2), USAGE);
  const quick = flags.has('quick');
  const leadSeconds = flags.int('lead-seconds', quick ? 5 : 10);
  const downSeconds = flags.int('down-seconds', quick ? 20 : 60);
  const recoverySeconds = flags.int('recovery-seconds', quick ? 10 : 20);
  const outagePhaseSeconds = leadSeconds + downSeconds + recoverySeconds;
  const options = {
    leadSeconds,
    downSeconds,
    recoverySeconds,
    controlSeconds: flags.int('control-seconds', outagePhaseSeconds),
    rounds: flags.int('rounds', quick ? 1 : 3),
    queueMiB: flags.int('queue-mib', 64),
    concurrency: flags.int('concurrency', 8),
    spans: flags.int('spans', 50),
    maxOldSpaceMiB: flags.has('max-old-space-mib') ? flags.int('max-old-space-mib', 256) : null,
  };
  const report = new BenchReport('memory', options);
  const log = (line: string) => report.print(line);
  const bound = options.queueMiB * MiB;
  if (options.controlSeconds !== outagePhaseSeconds) {
    log(
      `warning: control and healthy run ${options.controlSeconds} s, the outage's phase ${outagePhaseSeconds} s: their peaks are maxima over windows of other lengths` +
        ' (the longer window\'s tends higher), so the mirror\'s and the outage\'s shares lean toward the longer phase',
    );
  }

  const postgres = await startBenchPostgres(log);
  let stopClickHouse: () => Promise<void> = async () => undefined;
  const runs: Run[] = [];
  try {
    const clickhouse = await startNullClickHouse();
    stopClickHouse = clickhouse.stop;
    const measure = async (round: number, flag: Flag, seconds: number): Promise<Run> => {
      const database = await postgres.createDatabase('memory');
      const env: Record<string, string> = { DATABASE_URL: database.url, MIGRATE_ON_START: 'false', LOG_LEVEL: 'warn', USE_CLICKHOUSE: 'false' };
      if (options.maxOldSpaceMiB !== null) env.NODE_OPTIONS = `--max-old-space-size=${options.maxOldSpaceMiB}`;
      // Its own endpoint, which goes down and comes back during the phase.
      const outage = flag === DOWN ? await startNullClickHouse() : null;
      if (outage) {
        Object.assign(env, { USE_CLICKHOUSE: 'true', CLICKHOUSE_URL: outage.url, CLICKHOUSE_DATABASE: 'bench_null', MIRROR_QUEUE_MAX_BYTES: String(bound) });
      }
      if (flag === HEALTHY) {
        Object.assign(env, { USE_CLICKHOUSE: 'true', CLICKHOUSE_URL: clickhouse.url, CLICKHOUSE_DATABASE: 'bench_null', MIRROR_QUEUE_MAX_BYTES: String(bound) });
      }
      const api = await startApiProcess(env, await freePort(), log);
      try {
        const { key } = await createApiKey(database.db);
        const client = new ApiClient(api.url, key, options.concurrency);
        // Warm-up: JIT, the pg pool, the key cache.
        for (let i = 0; i < 50; i++) await postOk(client, '/tracing/spans', spansBody(1));
        // Built before the load: building each body in the loop (random prose, JSON.stringify) ran on this
        // client's one event loop, on the API's two cores, and held each phase's rate to what it could build.
        const nextBody = spansBodyPool(options.spans);
        await sleep(2000);
        const idle: number[] = [];
        for (let i = 0; i < 10; i++) {
          idle.push(rssOf(api.pid)!);
          await sleep(100);
        }

        let peak = 0;
        /** While the outage's ClickHouse is down: its API's peak then is kept apart from the phase's. */
        const clickHouse = { down: false };
        let downPeak = 0;
        let sampling = true;
        const timeline: Sample[] = [];
        const started = performance.now();
        const sampler = (async () => {
          let nextSecond = 0;
          while (sampling) {
            const rss = rssOf(api.pid) ?? 0;
            peak = Math.max(peak, rss);
            if (clickHouse.down) downPeak = Math.max(downPeak, rss);
            const second = Math.floor((performance.now() - started) / 1000);
            if (second >= nextSecond) {
              nextSecond = second + 1;
              const health = (await fetch(`${api.url}/health`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.json()).catch(() => null)) as { info?: { mirror?: { queuedBytes?: number } } } | null;
              const queued = health?.info?.mirror?.queuedBytes;
              timeline.push({ second, rssMiB: Number((rss / MiB).toFixed(1)), queuedMiB: queued === undefined ? null : Number((queued / MiB).toFixed(1)) });
            }
            await sleep(100);
          }
        })();
        let spans = 0;
        const until = performance.now() + seconds * 1000;
        // The outage, on its schedule from the load's start. It checks `loadEnded` after each wait: a load that
        // failed ends the phase, and its endpoint must not come back after the phase has stopped it.
        // Resolves to the endpoint's failure, if it had one.
        let loadEnded = false;
        const outageCourse: Promise<{ error: unknown } | null> = outage
          ? (async () => {
              await sleep(options.leadSeconds * 1000);
              if (loadEnded) return null;
              await outage.goDown();
              clickHouse.down = true;
              await sleep(options.downSeconds * 1000);
              if (loadEnded) return null;
              clickHouse.down = false;
              await outage.comeBack();
              return null;
            })().catch((error: unknown) => ({ error }))
          : Promise.resolve(null);
        try {
          await Promise.all(
            Array.from({ length: options.concurrency }, async () => {
              while (performance.now() < until) {
                await postOk(client, '/tracing/spans', nextBody());
                spans += options.spans;
              }
            }),
          );
        } finally {
          sampling = false;
          loadEnded = true;
          // Its last probe, before the API is stopped (a failed load goes on to that at once).
          await sampler;
        }
        const outageFailure = await outageCourse;
        if (outageFailure) throw new Error(`the outage's ClickHouse endpoint failed: ${String(outageFailure.error)}`);
        peak = Math.max(peak, rssOf(api.pid) ?? 0);
        const health = (await (await fetch(`${api.url}/health`)).json()) as { info?: { mirror?: unknown } };
        const heap = heapOf(await (await fetch(`${api.url}/metrics`)).text());
        client.close();
        const run: Run = {
          round,
          flag,
          idleBytes: median(idle),
          peakBytes: peak,
          downPeakBytes: outage ? downPeak : null,
          spansPerSecond: spans / seconds,
          mirrorAtEnd: health.info?.mirror ?? null,
          heapAtEnd: heap,
          timeline,
        };
        log(
          `round ${round + 1}, flag ${flag}: RSS idle ${num(run.idleBytes / MiB, 1)} MiB, peak ${num(peak / MiB, 1)} MiB over ${seconds} s of load${outage ? ` (${num(downPeak / MiB, 1)} MiB while ClickHouse was down)` : ''} (${num(run.spansPerSecond, 0)} spans/s);` +
            ` V8 heap at end: used ${num(heap.heapUsed / MiB, 1)} MiB, total ${num(heap.heapTotal / MiB, 1)} MiB, external ${num(heap.external / MiB, 1)} MiB; mirror ${JSON.stringify(run.mirrorAtEnd)}`,
        );
        log(`  RSS/queued MiB every 5 s: ${timeline.filter((s) => s.second % 5 === 0).map((s) => `${s.second}s ${Math.round(s.rssMiB)}/${s.queuedMiB ?? '-'}`).join(', ')}`);
        return run;
      } finally {
        await api.stop();
        await outage?.stop();
      }
    };

    for (let round = 0; round < options.rounds; round++) {
      // Rotated, so no phase always runs first (on a cold machine) or last.
      for (const flag of rotated([CONTROL, HEALTHY, DOWN], round)) {
        runs.push(await measure(round, flag, flag === DOWN ? outagePhaseSeconds : options.controlSeconds));
      }
    }

    const of = (flag: Flag) => runs.filter((r) => r.flag === flag).sort((a, b) => a.round - b.round);
    const [control, healthy, down] = [of(CONTROL), of(HEALTHY), of(DOWN)];
    /** Per round, (peak of `phases` - `baseline` of the same round) / bound. */
    const over = (phases: Run[], baseline: (round: number) => number) => spread(phases.map((r) => (r.peakBytes - baseline(r.round)) / bound));
    const growth = (phases: Run[]) => over(phases, (round) => phases.find((r) => r.round === round)!.idleBytes);
    const peakOf = (phases: Run[]) => (round: number) => phases.find((r) => r.round === round)!.peakBytes;
    const overIdle = growth(down);
    const overControl = over(down, peakOf(control));
    const overHealthy = over(down, peakOf(healthy));
    const controlGrowth = growth(control);
    const healthyOverControl = over(healthy, peakOf(control));
    /** The most a phase's queue held, from the samples of /health. */
    const maxQueuedMiB = (run: Run) => Math.max(0, ...run.timeline.map((s) => s.queuedMiB ?? 0));
    const healthyQueuedMiB = spread(healthy.map(maxQueuedMiB));
    log(`\nRSS in MiB, median of rounds (min–max); bound = MIRROR_QUEUE_MAX_BYTES = ${options.queueMiB} MiB`);
    log("idle: the process before the load (the brief's baseline); control: the flag-off API under the same load (no mirror)");
    log('healthy: the flag-on API with a ClickHouse that keeps up (null endpoint) under the same load (the mirror without an outage: what is left is the queue)');
    log(
      table([
        ['flag', 'idle', 'peak under load', '(peak - idle) / bound', '(peak - control peak) / bound', '(peak - healthy peak) / bound', 'spans/s'],
        ...[control, healthy, down].map((phases) => [
          phases[0].flag,
          showSpread(spread(phases.map((r) => r.idleBytes / MiB)), 1),
          showSpread(spread(phases.map((r) => r.peakBytes / MiB)), 1),
          showSpread(growth(phases), 2),
          phases === control ? '' : showSpread(phases === down ? overControl : healthyOverControl, 2),
          phases === down ? showSpread(overHealthy, 2) : '',
          showSpread(spread(phases.map((r) => r.spansPerSecond)), 0),
        ]),
      ]),
    );
    log(`note: the control alone, flag off, grows by (peak - idle) / bound = ${showSpread(controlGrowth, 2)}: the load's share of the brief's goal, no mirror in it`);
    log(
      `note: healthy, flag on with ClickHouse keeping up, peaks (peak - control peak) / bound = ${showSpread(healthyOverControl, 2)} over the control: the mirror's cost without an outage;` +
        ` its queue held at most ${showSpread(healthyQueuedMiB, 1)} MiB (sampled every second)`,
    );
    // The healthy baseline holds only while ClickHouse keeps up; a queue that grows toward the bound is part of what it was meant to leave out.
    const backedUp = healthy.filter((r) => maxQueuedMiB(r) * MiB >= bound / 2).length;
    if (backedUp > 0) {
      log(
        `warning: in ${backedUp} of ${healthy.length} rounds the healthy API's queue reached half the bound or more: ClickHouse did not keep up with this load` +
          ', so the healthy peak holds queue too and the outage\'s share understates what the outage adds',
      );
    }
    // Whether the queue the outage built was sent once ClickHouse came back: the recovery's peak counts only if it happened.
    const left = down.map((r) => ((r.mirrorAtEnd as { queuedBytes?: number } | null)?.queuedBytes ?? NaN) / MiB);
    log(`note: after ${options.recoverySeconds} s of ClickHouse back, the outage's queue held ${showSpread(spread(left), 1)} MiB (the healthy API's at most ${showSpread(healthyQueuedMiB, 1)})`);
    // The peak while ClickHouse was down alone, beside the phase's (which also covers the recovery's sending).
    const downOnly = spread(down.map((r) => ((r.downPeakBytes ?? NaN) - r.idleBytes) / bound));
    log(`note: the outage's API while ClickHouse was down only: (peak - idle) / bound = ${showSpread(downOnly, 2)}; the goals below take the whole phase's peak, recovery included`);
    report.goal({ name: "the brief's: peak RSS through a ClickHouse outage: (peak - idle baseline) / MIRROR_QUEUE_MAX_BYTES", target: '<= 1.00 in every round', spread: overIdle, met: overIdle.max <= 1 });
    report.goal({ name: "the mirror's share: (peak - flag-off control peak, same load) / MIRROR_QUEUE_MAX_BYTES", target: '<= 1.00 in every round', spread: overControl, met: overControl.max <= 1 });
    report.goal({
      name: "the outage's share: (peak - healthy peak, flag on with ClickHouse keeping up, same load) / MIRROR_QUEUE_MAX_BYTES",
      target: '<= 1.00 in every round',
      spread: overHealthy,
      met: overHealthy.max <= 1,
    });
    report.finish({ runs, queueMaxBytes: bound });
  } finally {
    await stopClickHouse();
    await postgres.stop();
  }
}

runBench(main);
