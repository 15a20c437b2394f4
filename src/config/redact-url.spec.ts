import { redactUrl } from './redact-url';

describe('redactUrl', () => {
  it('hides the password and keeps the rest', () => {
    expect(redactUrl('postgres://tracing:s3cr:et@db.internal:5432/tracing')).toBe('postgres://tracing:***@db.internal:5432/tracing');
    expect(redactUrl('https://default:pw@ch.example.com:8443')).toBe('https://default:***@ch.example.com:8443');
  });

  it('hides a password without a user name, and one given as a parameter', () => {
    expect(redactUrl('postgres://:secret@db:5432/tracing')).toBe('postgres://:***@db:5432/tracing');
    expect(redactUrl('postgres://db:5432/tracing?user=tracing&password=secret&sslmode=require')).toBe('postgres://db:5432/tracing?user=tracing&password=***&sslmode=require');
  });

  it('hides all of a password holding @ or /, which drivers accept', () => {
    // Both printed part of the password: "u:***@ss@ch" and, unmatched, the whole of "Zm9v/YmFy".
    expect(redactUrl('http://u:p@ss@ch:8123')).toBe('http://u:***@ch:8123');
    expect(redactUrl('postgres://app:Zm9v/YmFy@db/tracing')).toBe('postgres://app:***@db/tracing');
    expect(redactUrl('postgres://app:12/34@db/tracing')).toBe('postgres://app:***@db/tracing');
  });

  it('hides all of a password holding ? or #, which fails URL parsing and is quoted in the refusal', () => {
    expect(redactUrl('postgres://app:p?ss@db/x')).toBe('postgres://app:***@db/x');
    expect(redactUrl('http://default:p#ss@ch:8123')).toBe('http://default:***@ch:8123');
    expect(redactUrl('postgres://app:a@b?c#d@db/x?sslmode=require')).toBe('postgres://app:***@db/x?sslmode=require');
    expect(redactUrl('postgres://app:pa\nss\u2028@db/x')).toBe('postgres://app:***@db/x');
  });

  it("hides the password of a user name holding @ (Azure's user@server form)", () => {
    expect(redactUrl('postgres://admin@myserver:S3cret@myserver.postgres.database.azure.com/db')).toBe('postgres://admin@myserver:***@myserver.postgres.database.azure.com/db');
  });

  it('leaves a URL without a password as it is', () => {
    expect(redactUrl('http://127.0.0.1:18123')).toBe('http://127.0.0.1:18123');
    expect(redactUrl('postgres://tracing@db:5432/tracing')).toBe('postgres://tracing@db:5432/tracing');
    // An @ in the path of a URL without a password hides more than it must, never less.
    expect(redactUrl('postgres://tracing@db:5432/a@b')).toBe('postgres://tracing@db:***@b');
  });
});
