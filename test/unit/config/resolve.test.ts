import { UPSTREAM_TLS_DEFAULTS } from '../../../common/config/tls.js';
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../../common/config/load.js';
import { minimal, valid } from './helpers.js';
import { autoBackend } from '../../../common/runtime.js';

describe('defaults resolution', () => {
  it('fills every section of a minimal document', () => {
    const c = valid(minimal(), { version: 7, source: 'test.yaml' });
    expect(c.version).toBe(7);
    expect(c.source).toBe('test.yaml');
    expect(c.server).toEqual({
      host: '0.0.0.0',
      port: 8080,
      workers: Math.min(256, os.availableParallelism()),
      // auto resolves to this runtime's backend: uws on Node 20, node on Node 22+, bun on Bun (common/runtime.ts).
      backend: autoBackend(),
      drainTimeoutMs: 30000,
      drainDelayMs: 0,
      healthPath: null,
      limits: { maxBodyBytes: 10485760, maxUrlBytes: 8192, maxHeaderBytes: 32768, maxHeaderCount: 100 },
      timeouts: { headerMs: 10000, idleMs: 10000, bodyMs: 10000 },
      forwarded: { xForwardedFor: true, xForwardedProtoHost: true, forwarded: false },
      requestIdHeader: 'x-request-id',
      pathForwarding: 'normalized',
      trustedProxies: [],
      headers: { request: { add: [], set: [], remove: [] }, response: { add: [], set: [], remove: [] } },
      tls: null,
      redirectHttp: null,
      hsts: null,
    });
    expect(c.rateLimits).toEqual({});
    expect(c.redis).toBeNull();
    expect(c.rateLimitTable).toEqual({ capacity: 262144, quotaFile: null });
    expect(c.admin).toEqual({ enabled: true, host: '127.0.0.1', port: 9901, tokensFile: null, auditLog: null });
    expect(c.demo).toEqual({ enabled: false, port: 0 });
    const up = c.upstreams['users']!;
    expect(up).toEqual({
      name: 'users',
      targets: [{ url: 'http://127.0.0.1:9001', host: '127.0.0.1', port: 9001, tls: false, weight: 1 }],
      balance: 'round_robin',
      pool: { maxConnections: 256, idleTimeoutMs: 30000, maxPending: 1024 },
      timeouts: { connectMs: 1000, responseMs: 15000, idleMs: 30000, totalMs: 0 },
      headers: { request: { add: [], set: [], remove: [] }, response: { add: [], set: [], remove: [] } },
      breaker: null,
      healthCheck: null,
      outlierDetection: null,
      retry: null,
      dns: null,
      registry: null,
      hashOn: null,
      sticky: null,
      tls: UPSTREAM_TLS_DEFAULTS,
    });
    expect(c.routes[0]).toEqual({
      id: 'users',
      host: '*',
      path: '/users/:id',
      methods: [],
      priority: 0,
      match: { headers: [], query: [] },
      upstream: 'users',
      upstreams: null,
      hashOn: null,
      rewrite: { stripPrefix: null, replacePrefix: null, template: null },
      preserveHost: false,
      pathForwarding: null,
      headers: { request: { add: [], set: [], remove: [] }, response: { add: [], set: [], remove: [] } },
      maxBodyBytes: null,
      rateLimit: [],
      retryMethods: null,
      auth: null,
      websocket: { maxMessageBytes: 1048576, messagesPerSecond: 0, idleTimeoutMs: 120000, pingIntervalMs: 30000, messagesPerSecondAction: 'close', maxConnectionsPerKey: 0, compression: false, drainMs: 30000, perKeyLeaseMs: 15000 },
    });
  });

  it('defaults version 1 and source <inline>; an empty document is valid', () => {
    const c = valid({});
    expect(c.version).toBe(1);
    expect(c.source).toBe('<inline>');
    expect(c.routes).toEqual([]);
    expect(Object.keys(c.upstreams)).toEqual([]);
  });

  it('keeps explicit values and resolves workers: 4', () => {
    const c = valid({
      server: { host: '127.0.0.1', port: 0, workers: 4, backend: 'uws', drainTimeoutMs: 0, limits: { maxBodyBytes: 0 } },
      admin: { enabled: false, port: 0 },
    });
    expect(c.server.workers).toBe(4);
    expect(c.server.port).toBe(0);
    expect(c.server.backend).toBe('uws');
    expect(c.server.drainTimeoutMs).toBe(0);
    expect(c.server.limits.maxBodyBytes).toBe(0);
    expect(c.server.limits.maxUrlBytes).toBe(8192);
    expect(c.admin).toEqual({ enabled: false, host: '127.0.0.1', port: 0, tokensFile: null, auditLog: null });
  });

  it('normalises targets: trailing slash, case, default port 80 (443 for https), IPv6, weight', () => {
    const doc = minimal();
    doc['upstreams'] = {
      users: {
        targets: ['http://Example.COM/', { url: 'http://10.0.0.1:81', weight: 5 }, 'http://[::1]:9000', 'HTTPS://Example.COM'],
        balance: 'least_conn',
        pool: { maxConnections: 10 },
        timeouts: { totalMs: 5000 },
      },
    };
    const up = valid(doc).upstreams['users']!;
    expect(up.targets).toEqual([
      { url: 'http://example.com:80', host: 'example.com', port: 80, tls: false, weight: 1 },
      { url: 'http://10.0.0.1:81', host: '10.0.0.1', port: 81, tls: false, weight: 5 },
      { url: 'http://[::1]:9000', host: '::1', port: 9000, tls: false, weight: 1 },
      { url: 'https://example.com:443', host: 'example.com', port: 443, tls: true, weight: 1 },
    ]);
    expect(up.balance).toBe('least_conn');
    expect(up.pool).toEqual({ maxConnections: 10, idleTimeoutMs: 30000, maxPending: 1024 });
    expect(up.timeouts.totalMs).toBe(5000);
    expect(up.timeouts.connectMs).toBe(1000);
  });

  it('turns header maps into lowercase [name, value] arrays; numbers become strings', () => {
    const doc = minimal();
    doc['server'] = {
      requestIdHeader: 'X-Correlation-ID',
      headers: {
        request: { add: { 'X-Env': 'prod' }, set: { 'X-Version': 2, 'X-Flag': true }, remove: ['Cookie', 'cookie', 'X-Debug'] },
        response: { set: { Server: 'turnpike' } },
      },
    };
    const s = valid(doc).server;
    expect(s.requestIdHeader).toBe('x-correlation-id');
    expect(s.headers.request).toEqual({
      add: [['x-env', 'prod']],
      set: [['x-version', '2'], ['x-flag', 'true']],
      remove: ['cookie', 'x-debug'],
    });
    expect(s.headers.response.set).toEqual([['server', 'turnpike']]);
  });

  it('lowercases route host and match header names, uppercases and dedupes methods', () => {
    const doc = minimal();
    doc['routes'] = [{
      id: 'r', host: 'API.Example.com', path: '/x/:id', methods: ['get', 'Post', 'GET'], priority: -3,
      match: { headers: { 'X-Api-Version': 2 }, query: { V: '2' } },
      upstream: 'users', rewrite: { replacePrefix: { from: '/x', to: '/y' } }, preserveHost: true, maxBodyBytes: 1024,
    }];
    const r = valid(doc).routes[0]!;
    expect(r.host).toBe('api.example.com');
    expect(r.methods).toEqual(['GET', 'POST']);
    expect(r.priority).toBe(-3);
    expect(r.match).toEqual({ headers: [['x-api-version', '2']], query: [['V', '2']] });
    expect(r.rewrite).toEqual({ stripPrefix: null, replacePrefix: { from: '/x', to: '/y' }, template: null });
    expect(r.preserveHost).toBe(true);
    expect(r.maxBodyBytes).toBe(1024);
  });

  it('deep-freezes the result', () => {
    const c = valid(minimal());
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.server.limits)).toBe(true);
    expect(Object.isFrozen(c.upstreams['users']!.targets[0])).toBe(true);
    expect(Object.isFrozen(c.routes[0]!.match.headers)).toBe(true);
    expect(() => {
      (c.server as { port: number }).port = 1;
    }).toThrow(TypeError);
    expect(() => {
      (c.routes as unknown[]).push({});
    }).toThrow(TypeError);
  });

  it('does not modify the input document', () => {
    const doc = minimal();
    const before = JSON.stringify(doc);
    valid(doc);
    expect(JSON.stringify(doc)).toBe(before);
    expect(Object.isFrozen(doc)).toBe(false);
  });

  it('upstream lookup never reaches Object.prototype', () => {
    const c = valid(minimal());
    expect(c.upstreams['toString']).toBeUndefined();
    expect(c.upstreams['constructor']).toBeUndefined();
  });

  it('sets demo only when asked', () => {
    const r = validateConfig(minimal(), { demo: true });
    expect(r.ok && r.config.demo).toEqual({ enabled: true, port: 9090 });
  });
});
