import { ApiClient, closedLoop, postOk } from './support/http-load';
import { BenchFlags } from './support/cli';
import { closedPort } from './support/proc';
import { AppHost, startAppHost } from './support/processes';
import { BenchReport, runBench } from './support/report';
import { startBenchClickHouse, startBenchPostgres } from './support/servers';
import { benchTrace, spansBody } from './support/spans';
import { num, quantile, rotated, showSpread, Spread, spread, table } from './support/stats';

const USAGE = `usage: npm run bench:write-path -- [options]

What mirroring costs a writer: latency of POST /tracing/spans and of
TracingService.createSpans (in-process) with USE_CLICKHOUSE off, on with
ClickHouse up, and on with ClickHouse down (a closed loopback port). Each mode
is its own API process; every round runs each scenario once per mode, in a
rotated order. Goal: p99 on/off <= 1.05, up and down.

  --rounds N        rounds (default 5)
  --requests N      requests (or calls) per mode per scenario per round (default 200)
  --sizes A,B       spans per request (default 1,50)
  --concurrency N   the concurrent scenarios' in-flight requests (default 8)
  --quick           3 rounds of 40 requests: a smoke run, not a measurement`;

type Mode = 'off' | 'up' | 'down';
const MODES: Mode[] = ['off', 'up', 'down'];

interface Scenario {
  name: string;
  transport: 'http' | 'inproc';
  spans: number;
  concurrency: number;
}

interface Phase {
  round: number;
  mode: Mode;
  p50: number;
  p99: number;
  latencies: number[];
}

async function runPhase(host: AppHost, scenario: Scenario, requests: number): Promise<number[]> {
  if (scenario.transport === 'inproc') {
    const { latencies } = await host.call<{ latencies: number[] }>({ cmd: 'inproc', spans: scenario.spans, calls: requests, concurrency: scenario.concurrency });
    return latencies;
  }
  const bodies = Array.from({ length: requests }, () => spansBody(scenario.spans));
  // A fresh agent per phase: a keep-alive socket idle through the other modes' phases may be closed by the server just as it is reused.
  const client = new ApiClient(host.url, host.apiKey, scenario.concurrency);
  try {
    return await closedLoop(
      bodies.map((body) => () => postOk(client, '/tracing/spans', body)),
      scenario.concurrency,
    );
  } finally {
    client.close();
  }
}

async function main(): Promise<void> {
  const flags = new BenchFlags(process.argv.slice(2), USAGE);
  const quick = flags.has('quick');
  const options = {
    rounds: flags.int('rounds', quick ? 3 : 5),
    requests: flags.int('requests', quick ? 40 : 200),
    sizes: flags.list('sizes', [1, 50]),
    concurrency: flags.int('concurrency', 8),
  };
  const report = new BenchReport('write-path', options);
  const log = (line: string) => report.print(line);

  const postgres = await startBenchPostgres(log);
  const clickhouse = await startBenchClickHouse(log);
  const hosts = new Map<Mode, AppHost>();
  try {
    const downPort = await closedPort();
    for (const mode of MODES) {
      const database = await postgres.createDatabase(`write_${mode}`);
      const env: Record<string, string> = { DATABASE_URL: database.url, MIGRATE_ON_START: 'false', LOG_LEVEL: 'warn', USE_CLICKHOUSE: 'false' };
      if (mode === 'up') {
        const config = await clickhouse.createDatabase('write_up');
        Object.assign(env, { USE_CLICKHOUSE: 'true', CLICKHOUSE_URL: clickhouse.url, CLICKHOUSE_DATABASE: config.database });
      }
      if (mode === 'down') {
        Object.assign(env, { USE_CLICKHOUSE: 'true', CLICKHOUSE_URL: `http://127.0.0.1:${downPort}`, CLICKHOUSE_DATABASE: 'bench_down' });
      }
      hosts.set(mode, await startAppHost(env, log));
    }

    const scenarios: Scenario[] = [];
    for (const transport of ['http', 'inproc'] as const) {
      for (const spans of options.sizes) {
        for (const concurrency of [1, options.concurrency]) {
          scenarios.push({ name: `${transport === 'http' ? 'POST /tracing/spans' : 'createSpans in-process'} ${spans} span(s), ${concurrency === 1 ? 'sequential' : `${concurrency} concurrent`}`, transport, spans, concurrency });
        }
      }
    }

    log('warming up every mode (not measured)');
    for (const mode of MODES) {
      for (const scenario of scenarios) await runPhase(hosts.get(mode)!, scenario, Math.max(10, Math.round(options.requests / 4)));
      await hosts.get(mode)!.call({ cmd: 'drain', timeoutMs: mode === 'up' ? 60_000 : 0 });
    }

    const results: Array<{ scenario: Scenario; phases: Array<Omit<Phase, 'latencies'>>; ratios: Record<string, Spread>; pooled: Record<Mode, { p50: number; p99: number }> }> = [];
    for (const [s, scenario] of scenarios.entries()) {
      const phases: Phase[] = [];
      for (let round = 0; round < options.rounds; round++) {
        for (const mode of rotated(MODES, round + s)) {
          const latencies = await runPhase(hosts.get(mode)!, scenario, options.requests);
          phases.push({ round, mode, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99), latencies });
          // The mirror's flush of this phase's tail happens here, not during the next mode's phase.
          if (mode === 'up') await hosts.get(mode)!.call({ cmd: 'drain', timeoutMs: 60_000 });
        }
      }
      const of = (mode: Mode) => phases.filter((p) => p.mode === mode).sort((a, b) => a.round - b.round);
      const ratio = (mode: Mode, q: 'p50' | 'p99') => spread(of(mode).map((p, i) => p[q] / of('off')[i][q]));
      const pooled = Object.fromEntries(
        MODES.map((mode) => {
          const all = of(mode).flatMap((p) => p.latencies);
          return [mode, { p50: quantile(all, 0.5), p99: quantile(all, 0.99) }];
        }),
      ) as Record<Mode, { p50: number; p99: number }>;
      const ratios = { up_p50: ratio('up', 'p50'), up_p99: ratio('up', 'p99'), down_p50: ratio('down', 'p50'), down_p99: ratio('down', 'p99') };

      log(`\n${scenario.name}: ${options.rounds} rounds x ${options.requests} per mode; latency ms, median of rounds (min–max); ratio = mode/off per round`);
      log(
        table([
          ['mode', 'p50 ms', 'p99 ms', 'p50 / off', 'p99 / off', 'pooled p99', 'pooled p99 / off'],
          ...MODES.map((mode) => [
            mode,
            showSpread(spread(of(mode).map((p) => p.p50))),
            showSpread(spread(of(mode).map((p) => p.p99))),
            mode === 'off' ? '' : showSpread(ratios[`${mode}_p50` as keyof typeof ratios], 3),
            mode === 'off' ? '' : showSpread(ratios[`${mode}_p99` as keyof typeof ratios], 3),
            num(pooled[mode].p99),
            mode === 'off' ? '' : num(pooled[mode].p99 / pooled.off.p99, 3),
          ]),
        ]),
      );
      for (const mode of ['up', 'down'] as const) {
        const r = ratios[`${mode}_p99`];
        report.goal({ name: `${scenario.name}: p99 flag on (ClickHouse ${mode}) / off`, target: '<= 1.05', spread: r, met: r.median <= 1.05 });
      }
      results.push({ scenario, phases: phases.map(({ latencies: _l, ...p }) => p), ratios, pooled });
    }

    const mirrorStats: Record<string, unknown> = {};
    for (const mode of ['up', 'down'] as const) {
      mirrorStats[mode] = (await hosts.get(mode)!.call<{ stats: unknown }>({ cmd: 'drain', timeoutMs: mode === 'up' ? 60_000 : 0 })).stats;
    }
    log(`\nmirror at the end: ${JSON.stringify(mirrorStats)}`);
    report.finish({ scenarios: results, mirrorStats, spanBytes: Buffer.byteLength(JSON.stringify(benchTrace(1)[0])) });
  } finally {
    await Promise.allSettled([...hosts.values()].map((host) => host.close()));
    await clickhouse.stop();
    await postgres.stop();
  }
}

runBench(main);
