/** The shared per-key WebSocket connection table (common/websocket-layout.ts): worker views over one buffer. */
import { describe, expect, it } from 'vitest';
import { WS_KEY_CELLS, WS_KEY_ROWS, WsConnectionTable, createWsConnectionTable } from '../../../common/websocket-layout.js';

describe('WsConnectionTable', () => {
  it('counts a key over every worker column and refuses past the limit, without changing the count', () => {
    const sab = createWsConnectionTable(2);
    const w0 = new WsConnectionTable(sab, 0);
    const w1 = new WsConnectionTable(sab, 1);
    expect(w0.acquire('chat', 'a 10.0.0.1', 3)).toBe(true);
    expect(w1.acquire('chat', 'a 10.0.0.1', 3)).toBe(true);
    expect(w1.acquire('chat', 'a 10.0.0.1', 3)).toBe(true);
    expect(w0.acquire('chat', 'a 10.0.0.1', 3)).toBe(false);
    expect(w1.acquire('chat', 'a 10.0.0.1', 3)).toBe(false);
    expect(w0.count('chat', 'a 10.0.0.1')).toBe(3);
    w1.release('chat', 'a 10.0.0.1');
    expect(w0.count('chat', 'a 10.0.0.1')).toBe(2);
    expect(w0.acquire('chat', 'a 10.0.0.1', 3)).toBe(true);
    expect(w1.count('chat', 'a 10.0.0.1')).toBe(3);
  });

  it('keeps routes and keys apart', () => {
    const t = new WsConnectionTable(createWsConnectionTable(1), 0);
    expect(t.acquire('chat', 'a 10.0.0.1', 1)).toBe(true);
    expect(t.acquire('feed', 'a 10.0.0.1', 1)).toBe(true);
    expect(t.acquire('chat', 'a 10.0.0.2', 1)).toBe(true);
    expect(t.acquire('chat', 'c 10.0.0.1', 1)).toBe(true);
    expect(t.acquire('chat', 'a 10.0.0.1', 1)).toBe(false);
  });

  it('reset() of a replacement worker drops the dead worker\'s counts only', () => {
    const sab = createWsConnectionTable(2);
    const dead = new WsConnectionTable(sab, 0);
    const other = new WsConnectionTable(sab, 1);
    dead.acquire('chat', 'c alice', 10);
    dead.acquire('chat', 'c alice', 10);
    other.acquire('chat', 'c alice', 10);
    expect(other.count('chat', 'c alice')).toBe(3);
    new WsConnectionTable(sab, 0).reset(); // the replacement of worker 0
    expect(other.count('chat', 'c alice')).toBe(1);
  });

  it('never counts a key lower than its true count; over-counts as rarely as documented', () => {
    const t = new WsConnectionTable(createWsConnectionTable(1), 0);
    const n = 20_000;
    for (let i = 0; i < n; i++) expect(t.acquire('r', `a key-${i}`, 1_000_000)).toBe(true);
    let over = 0;
    for (let i = 0; i < n; i++) {
      const c = t.count('r', `a key-${i}`);
      expect(c).toBeGreaterThanOrEqual(1);
      if (c > 1) over++;
    }
    // README / websocket-layout.ts: a key shares all 4 cells with probability ~(1 - e^(-K/65536))^4 (0.5% at 20,000).
    const expected = n * (1 - Math.exp(-n / WS_KEY_CELLS)) ** WS_KEY_ROWS;
    expect(over).toBeLessThan(expected * 1.5 + 5);
    for (let i = 0; i < n; i++) t.release('r', `a key-${i}`);
    for (let i = 0; i < n; i += 997) expect(t.count('r', `a key-${i}`)).toBe(0);
  });

  it('refuses a worker index without a column', () => {
    expect(() => new WsConnectionTable(createWsConnectionTable(2), 2)).toThrow(/no column for worker 2/);
  });
});
