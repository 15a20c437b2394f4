import { ProvidedServer } from './servers';

export default async function globalTeardown(): Promise<void> {
  const servers = (globalThis as { __servers?: ProvidedServer[] }).__servers ?? [];
  await Promise.allSettled(servers.map((server) => server.stop()));
}
