import { ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';

export interface PostgresProcess {
  url: string;
  /** Stops the server (fast shutdown) and waits for its process to exit. */
  stop(): Promise<void>;
}

/** An embedded PostgreSQL in a child process, on `port`, with its data in `dataDir`. */
export function startPostgresProcess(port: number, dataDir: string): Promise<PostgresProcess> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'postgres-process.main.ts'), String(port), dataDir], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`embedded Postgres did not start within 60 s:\n${output}`)), 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const m = /POSTGRES_READY (\S+)/.exec(output);
      if (!m) return;
      clearTimeout(timer);
      const exited = new Promise<void>((done) => child.once('exit', () => done()));
      resolve({
        url: m[1],
        stop: async () => {
          child.kill('SIGTERM');
          await exited;
        },
      });
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`embedded Postgres exited with ${code}:\n${output}`));
    });
  });
}
