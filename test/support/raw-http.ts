import { Agent, request } from 'node:http';

export interface RawResponse {
  status: number;
  contentType: string;
  text: string;
  bytes: Buffer;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: unknown;
}

const agent = new Agent({ keepAlive: true, maxSockets: 8 });

/**
 * One HTTP request with exactly the bytes given: no client-side JSON
 * encoding, so tests can send invalid UTF-8, truncated bodies, odd headers.
 */
export function rawRequest(
  baseUrl: string,
  method: string,
  path: string,
  body?: Buffer | string,
  headers: Record<string, string> = {},
  timeoutMs = 15_000,
): Promise<RawResponse> {
  // Node sends a DELETE body without a length unless told, and the server would read it as the next request.
  const withLength = body === undefined ? headers : { 'Content-Length': String(Buffer.byteLength(body)), ...headers };
  return new Promise((resolve, reject) => {
    const req = request(`${baseUrl}${path}`, { method, headers: withLength, agent, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        const bytes = Buffer.concat(chunks);
        const text = bytes.toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), text, bytes, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export function closeRawAgent(): void {
  agent.destroy();
}
