import { shuffled } from './stats';

describe('shuffled', () => {
  const modes = ['off', 'off2', 'up', 'down', 'null'] as const;

  it('is a permutation, the same for the same seed', () => {
    for (let seed = 0; seed < 50; seed++) {
      const order = shuffled(modes, seed);
      expect([...order].sort()).toEqual([...modes].sort());
      expect(shuffled(modes, seed)).toEqual(order);
    }
  });

  it('over rounds puts each item after each other one, unlike a rotation', () => {
    const followers = new Map<string, Set<string>>(modes.map((m) => [m, new Set()]));
    for (let round = 0; round < 40; round++) {
      const order = shuffled(modes, 1 + round);
      for (let i = 1; i < order.length; i++) followers.get(order[i - 1])!.add(order[i]);
    }
    for (const mode of modes) expect(followers.get(mode)!.size).toBe(modes.length - 1);
  });
});
