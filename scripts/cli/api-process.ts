import { ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { request } from 'node:http';
import { join, resolve } from 'node:path';
import { freePort } from './free-port';

/**
 * The real API as its own process, started the way production starts it:
 * `node <build>/src/main.js` from a tsc build (tsx/esbuild drops the decorator
 * metadata Nest's DI needs), for `npm run load` and the end-to-end specs. The
 * build is their own, in .data/api-build/<hash of the sources>, so `npm run build` in the same tree
 * (which deletes dist/) never pulls it from under a running spec; concurrent
 * builders of the same sources race to one atomic rename.
 */

export const ROOT = resolve(__dirname, '../..');
const BUILDS = join(ROOT, '.data', 'api-build');
const SOURCES = ['src', 'migrations', 'scripts', 'tsconfig.json', 'tsconfig.build.json'];
const LOG_TAIL_BYTES = 256 * 1024;
const EXIT_WITH_PARENT = join(ROOT, 'scripts', 'cli', 'exit-with-parent.cjs');

export interface ApiProcess {
  url: string;
  port: number;
  child: ChildProcess;
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The tail of stdout and stderr (JSON log lines), for diagnosing a failure. */
  logs(): string;
  /** SIGTERM, then SIGKILL if it is still running after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

async function sourceFiles(): Promise<string[]> {
  const files: string[] = [];
  for (const entry of SOURCES) {
    const path = join(ROOT, entry);
    if (!existsSync(path)) continue;
    if ((await stat(path)).isFile()) {
      files.push(entry);
      continue;
    }
    for (const file of await readdir(path, { recursive: true })) {
      const relative = join(entry, String(file));
      if (relative.startsWith(join('scripts', 'bench'))) continue; // not part of the build (tsconfig.build.json)
      if ((await stat(join(ROOT, relative))).isFile()) files.push(relative);
    }
  }
  return files.sort();
}

async function sourceHash(): Promise<string> {
  const hash = createHash('sha256');
  for (const file of await sourceFiles()) {
    hash.update(file).update('\0').update(await readFile(join(ROOT, file))).update('\0');
  }
  return hash.digest('hex').slice(0, 16);
}

function tsc(outDir: string): Promise<{ code: number; signal: NodeJS.Signals | null; output: string }> {
  const compiler = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  return new Promise((done) => {
    execFile(process.execPath, [compiler, '-p', 'tsconfig.build.json', '--outDir', outDir], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) =>
      done({
        code: error ? (typeof error.code === 'number' ? error.code : 1) : 0,
        signal: (error?.signal as NodeJS.Signals | undefined) ?? null,
        output: `${stdout}${stderr}`,
      }),
    );
  });
}

/**
 * The compiled API for the current sources: reused when the sources have not
 * changed, else built (tens of seconds). Returns the path of main.js.
 */
export async function ensureApiBuild(log: (message: string) => void = () => undefined): Promise<string> {
  const hash = await sourceHash();
  const dir = join(BUILDS, hash);
  const main = join(dir, 'src', 'main.js');
  if (existsSync(main)) return main;

  await mkdir(BUILDS, { recursive: true });
  const tmp = join(BUILDS, `.tmp-${hash}-${process.pid}-${randomBytes(4).toString('hex')}`);
  log(`building the API into ${dir} (a build of its own, reused while the sources are unchanged)`);
  const { code, signal, output } = await tsc(tmp);
  if (signal) {
    // Stopped part way (a Ctrl-C reaches tsc too): what it wrote may lack files, and kept it would be reused
    // for as long as the sources are unchanged.
    await rm(tmp, { recursive: true, force: true });
    throw new Error(`tsc was stopped by ${signal} before it finished the build; nothing was kept`);
  }
  // tsc emits even with type errors (elsewhere in scripts/, say); `npm test` type-checks separately.
  if (!existsSync(join(tmp, 'src', 'main.js'))) {
    await rm(tmp, { recursive: true, force: true });
    throw new Error(`tsc did not build src/main.js (exit ${code}):\n${output.slice(0, 4_000)}`);
  }
  if (code !== 0) log(`tsc reported errors, the build is used anyway:\n${output.slice(0, 2_000)}`);
  await cp(join(ROOT, 'migrations', 'clickhouse'), join(tmp, 'migrations', 'clickhouse'), { recursive: true });
  try {
    await rename(tmp, dir);
  } catch {
    // Another worker finished the same build first.
    await rm(tmp, { recursive: true, force: true });
  }
  await removeStaleBuilds(hash);
  return main;
}

/** Builds of older sources, an hour old or more, are no longer used by anyone. */
async function removeStaleBuilds(keep: string): Promise<void> {
  for (const name of await readdir(BUILDS)) {
    if (name === keep) continue;
    const path = join(BUILDS, name);
    const age = Date.now() - (await stat(path).catch(() => ({ mtimeMs: Date.now() }))).mtimeMs;
    if (age > 60 * 60 * 1000) await rm(path, { recursive: true, force: true });
  }
}

function answers(url: string): Promise<boolean> {
  return new Promise((done) => {
    const req = request(`${url}/health`, { timeout: 2_000 }, (res) => {
      res.resume();
      done(true);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => done(false));
    req.end();
  });
}

/** Runs `node main.js` with `env` (on a free loopback port unless `env` says otherwise) until it exits by itself: for starts that must fail. */
export async function runApiUntilExit(env: Record<string, string>, timeoutMs = 60_000): Promise<{ code: number | null; stderr: string; stdout: string }> {
  const main = await ensureApiBuild();
  const port = await freePort();
  const { NODE_OPTIONS: _jest, DATABASE_URL: _db, ...inherited } = process.env;
  const child = spawn(process.execPath, [main], {
    cwd: ROOT,
    env: { ...inherited, LOG_LEVEL: 'warn', HOST: '127.0.0.1', PORT: String(port), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((done) => child.once('exit', (exitCode) => done(exitCode)));
  clearTimeout(killer);
  return { code, stderr, stdout };
}

/**
 * Starts `node main.js` on a free loopback port with `env` on top of this
 * process's environment (minus jest's NODE_OPTIONS), and waits until it
 * answers HTTP. Fails with the process's log if it exits or does not answer.
 */
export async function startApiProcess(
  env: Record<string, string>,
  /** `detached`: in a process group of its own, as a terminal's job, so `process.kill(-child.pid, signal)` reaches all of it. */
  options: { main?: string; readyTimeoutMs?: number; detached?: boolean } = {},
): Promise<ApiProcess> {
  const main = options.main ?? (await ensureApiBuild());
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const { NODE_OPTIONS: _jest, ...inherited } = process.env;
  // Its stdin is a pipe from this process: exit-with-parent.cjs stops the API when this process dies.
  const child = spawn(process.execPath, ['--require', EXIT_WITH_PARENT, main], {
    cwd: ROOT,
    env: { ...inherited, LOG_LEVEL: 'warn', ...env, HOST: '127.0.0.1', PORT: String(port) },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: options.detached ?? false,
  });
  let tail = '';
  const keep = (chunk: Buffer) => {
    tail += chunk.toString('utf8');
    if (tail.length > LOG_TAIL_BYTES) tail = tail.slice(-LOG_TAIL_BYTES);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  // 'exit' can come before the pipes have given up their last lines (the one saying how shutdown ended):
  // exited waits for them too, up to a bound, in case a process the API started holds them open.
  const streamsClosed = Promise.all([child.stdout!, child.stderr!].map((stream) => new Promise((closed) => stream.once('close', closed))));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.once('exit', (code, signal) => {
      let bound: NodeJS.Timeout | undefined;
      void Promise.race([streamsClosed, new Promise((elapsed) => (bound = setTimeout(elapsed, 2_000)))]).then(() => {
        clearTimeout(bound);
        done({ code, signal });
      });
    }),
  );
  let hasExited = false;
  void exited.then(() => (hasExited = true));

  const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000);
  while (!(await answers(url))) {
    if (hasExited) throw new Error(`the API exited before it answered: ${JSON.stringify(await exited)}\n${tail.slice(-4_000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the API did not answer on ${url} within ${options.readyTimeoutMs ?? 60_000} ms\n${tail.slice(-4_000)}`);
    }
    await new Promise((done) => setTimeout(done, 100));
  }

  return {
    url,
    port,
    child,
    exited,
    logs: () => tail,
    stop: async (graceMs = 30_000) => {
      if (hasExited) return;
      const killer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      child.kill('SIGTERM');
      await exited;
      clearTimeout(killer);
    },
  };
}
