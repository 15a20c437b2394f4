import { createClient } from '@clickhouse/client';
import { parseConfig } from '../../config/app-config';
import { clickHouseClientOptions } from './clickhouse-clients';

describe('clickHouseClientOptions', () => {
  const config = { ...parseConfig({}).clickhouse, user: 'env_user', password: 'env_password' };

  it('takes CLICKHOUSE_USER and CLICKHOUSE_PASSWORD when the URL has no credentials', () => {
    expect(clickHouseClientOptions(config, 'http://127.0.0.1:8123')).toMatchObject({ username: 'env_user', password: 'env_password' });
  });

  it("leaves the URL's credentials alone, so the client has nothing to override and warns about nothing", async () => {
    const both = clickHouseClientOptions(config, 'http://u:pw@127.0.0.1:8123');
    expect(both).not.toHaveProperty('username');
    expect(both).not.toHaveProperty('password');
    // A user alone in the URL still takes its password from CLICKHOUSE_PASSWORD.
    const userOnly = clickHouseClientOptions(config, 'http://u@127.0.0.1:8123');
    expect(userOnly).not.toHaveProperty('username');
    expect(userOnly).toMatchObject({ password: 'env_password' });

    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      await createClient(both).close();
      await createClient(userOnly).close();
      expect(warn).not.toHaveBeenCalled();
    } finally {
      warn.mockRestore();
    }
  });
});
