/**
 * server.backend: auto is the backend this runtime can serve
 * (common/runtime.ts): uws where the shipped uWS package has a native binary
 * for this Node's ABI (Node 20 here), node on any other Node (22, 24: uWS only
 * falls back to a JS imitation there), bun on Bun. Runs on whichever Node
 * runs vitest (CI: Node 20, and Node 22 in the node-backend step).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { autoBackend, uwsNativeAvailable } from '../../../common/runtime.js';
import { lines, minimal, valid } from './helpers.js';

/** ABIs @trufflesuite/uws-js-unofficial 20.30 ships binaries for (Node 16, 18, 20). */
const UWS_ABIS = ['93', '108', '115'];

const savedUws = process.env['TURNPIKE_UWS_MODULE'];
afterEach(() => {
  if (savedUws === undefined) delete process.env['TURNPIKE_UWS_MODULE'];
  else process.env['TURNPIKE_UWS_MODULE'] = savedUws;
});

describe('server.backend: auto', () => {
  it(`is uws on a Node whose ABI the uWS package has a binary for, node otherwise (this is Node ${process.versions.node}, ABI ${process.versions.modules})`, () => {
    delete process.env['TURNPIKE_UWS_MODULE'];
    const expected = UWS_ABIS.includes(process.versions.modules) ? 'uws' : 'node';
    expect(uwsNativeAvailable()).toBe(expected === 'uws');
    expect(autoBackend()).toBe(expected);
    expect(valid(minimal()).server.backend).toBe(expected);
    expect(valid({ ...minimal(), server: { backend: 'auto' } }).server.backend).toBe(expected);
  });

  it('is uws when TURNPIKE_UWS_MODULE names another uWS build (its loader reports if it cannot load)', () => {
    process.env['TURNPIKE_UWS_MODULE'] = '/nowhere/uws.node';
    expect(autoBackend()).toBe('uws');
    expect(valid(minimal()).server.backend).toBe('uws');
  });

  it('an explicit backend is kept as written, on every runtime', () => {
    for (const backend of ['uws', 'node', 'bun'] as const) {
      expect(valid({ ...minimal(), server: { backend } }).server.backend).toBe(backend);
    }
  });

  it('validate judges a route by the backend auto picks: an extension method is refused only where that is uWS', () => {
    delete process.env['TURNPIKE_UWS_MODULE'];
    const doc = { ...minimal(), routes: [{ id: 'r', path: '/r', upstream: 'users', methods: ['PURGE'] }] };
    if (autoBackend() === 'uws') {
      expect(lines(doc)[0]).toMatch(/PURGE can never reach this route on the uWS backend/);
    } else {
      expect(valid(doc).routes[0]!.methods).toEqual(['PURGE']);
    }
  });
});
