import type { IncomingMessage, ServerResponse } from 'node:http';
import { assignRequestId } from './request-id';

function assign(offered?: string | string[]): { id: string; header: unknown } {
  const headers: Record<string, unknown> = {};
  const req = { headers: offered === undefined ? {} : { 'x-request-id': offered } } as unknown as IncomingMessage;
  const res = { setHeader: (name: string, value: unknown) => (headers[name.toLowerCase()] = value) } as unknown as ServerResponse;
  const id = assignRequestId(req, res);
  return { id, header: headers['x-request-id'] };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('assignRequestId', () => {
  it('keeps an id the caller sent, and answers with it', () => {
    for (const offered of ['f47ac10b-58cc-4372-a567-0e02b2c3d479', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'Root=1-5759e988-bd862e3fe1be46a994272793', 'a'.repeat(128)]) {
      expect(assign(offered)).toEqual({ id: offered, header: offered });
    }
  });

  it('gives a fresh UUID to a request without one, and a different one each time', () => {
    const first = assign();
    const second = assign();
    expect(first.id).toMatch(UUID);
    expect(first.header).toBe(first.id);
    expect(second.id).toMatch(UUID);
    expect(second.id).not.toBe(first.id);
  });

  it('replaces an offered id that could break a log line or flood it: empty, too long, spaces, quotes, control characters, repeated headers', () => {
    for (const offered of ['', 'a'.repeat(129), 'two words', 'x"y', 'line\nbreak', 'tab\there', ['a', 'b']]) {
      const { id, header } = assign(offered);
      expect(id).toMatch(UUID);
      expect(header).toBe(id);
    }
  });
});
