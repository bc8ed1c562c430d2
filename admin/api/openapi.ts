/**
 * The OpenAPI 3.1 document of the admin API, built from the endpoint table
 * (endpoints.ts) and the schema objects it points at (schemas.ts): the same
 * objects the dispatcher validates with. Schemas registered with `named()`
 * become components and are referenced by $ref; query schemas become
 * parameters. PUT /admin/config's request body is the config file's own
 * schema (common/config/schema.ts, a draft-07 resource with its own $id, so
 * its internal `#/definitions/...` refs resolve inside it).
 */
import type { Endpoint } from './endpoints.js';
import { SCHEMA_NAMES, type Schema } from './schemas.js';

const COMPONENT = '#/components/schemas/';

/** Deep copy with every named schema (but `root` itself) replaced by a $ref, collecting the names met. */
function refify(schema: unknown, root: unknown, found: Map<string, object>): unknown {
  if (Array.isArray(schema)) return schema.map((s) => refify(s, root, found));
  if (schema === null || typeof schema !== 'object') return schema;
  const name = SCHEMA_NAMES.get(schema);
  if (name !== undefined && schema !== root) {
    found.set(name, schema);
    return { $ref: COMPONENT + name };
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) out[k] = refify(v, root, found);
  return out;
}

export function buildOpenApi(endpoints: readonly Endpoint[], version: string): Record<string, unknown> {
  const found = new Map<string, object>();
  const ref = (s: Schema) => refify(s, null, found);
  const paths: Record<string, Record<string, unknown>> = {};
  for (const e of endpoints) {
    const props = (e.query['properties'] ?? {}) as Record<string, Schema>;
    const required = new Set((e.query['required'] ?? []) as string[]);
    const parameters = [
      ...Object.entries(e.params ?? {}).map(([name, schema]) => {
        const { description, ...rest } = schema;
        return { name, in: 'path', required: true, description, schema: rest };
      }),
      ...Object.entries(props).map(([name, schema]) => {
        const { description, ...rest } = schema;
        return { name, in: 'query', required: required.has(name), description, schema: rest };
      }),
    ];
    const responses: Record<string, unknown> = {};
    for (const [status, r] of Object.entries(e.responses)) {
      responses[status] = { description: r.description, content: { 'application/json': { schema: ref(r.schema) } } };
    }
    const op: Record<string, unknown> = {
      operationId: e.operationId,
      summary: e.summary,
      description: e.description,
      tags: [e.tag],
      security: [{ bearerAuth: [] }],
      'x-turnpike-role': e.role,
      ...(parameters.length > 0 ? { parameters } : {}),
      ...(e.body !== null ? {
        requestBody: {
          required: e.body.optional !== true,
          description: e.body.description,
          content: Object.fromEntries(e.body.contentTypes.map((ct) => [ct, { schema: ref(e.body!.schema) }])),
        },
      } : {}),
      responses,
    };
    (paths[e.path] ??= {})[e.method.toLowerCase()] = op;
  }
  // Components may refer to other components: expand until nothing new appears.
  const schemas: Record<string, unknown> = {};
  for (let added = true; added;) {
    added = false;
    for (const [name, s] of [...found]) {
      if (name in schemas) continue;
      schemas[name] = refify(s, s, found);
      added = true;
    }
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Turnpike admin API',
      version: `v1 (turnpike ${version})`,
      description: 'Control plane of the Turnpike gateway, on the admin listener (127.0.0.1:9901 by default). Every /admin endpoint needs "Authorization: Bearer <token>": role viewer for reads, admin for writes. Errors are {"error":{"code","message"}} with the stable codes of the Error schema. Lists are cursor paginated (?limit, ?cursor, "next" in the body). Times are ISO-8601 UTC strings (format date-time); durations in milliseconds. GET /health and GET /metrics are public and not part of this API.',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    servers: [{ url: '/', description: 'The admin listener (admin.host:admin.port).' }],
    tags: [
      { name: 'gateway', description: 'Status, latency, audit, this document.' },
      { name: 'config', description: 'Running configuration, reload, replacement, routes, upstreams.' },
      { name: 'identity', description: 'Consumers, API keys, groups, grants and the identity store\'s audit log. Times are ISO-8601 UTC strings; a new key\'s plaintext is in the 201 that made it and nowhere else.' },
    ],
    security: [{ bearerAuth: [] }],
    paths,
    components: {
      securitySchemes: {
        bearerAuth: { type: 'http', scheme: 'bearer', description: 'An admin API token: TURNPIKE_ADMIN_TOKEN, admin.tokensFile, or the generated .turnpike/admin-token-<admin port>.' },
      },
      schemas: Object.fromEntries(Object.entries(schemas).sort(([a], [b]) => (a < b ? -1 : 1))),
    },
  };
}
