/**
 * Errors the admin API answers with, in the gateway's format
 * `{"error":{"code","message", ...details}}`. Like common/errors.ts: one
 * table, codes never reused for another meaning, add new ones at the end of
 * their section. The OpenAPI document's Error schema enumerates these codes.
 */

export interface AdminErrorDef {
  readonly code: string;
  readonly status: number;
  /** Default message: what went wrong and what to do next. */
  readonly message: string;
}

function def(code: string, status: number, message: string): AdminErrorDef {
  return Object.freeze({ code, status, message });
}

export const AdminErrors = Object.freeze({
  // -- request problems -------------------------------------------------------
  INVALID_QUERY: def('invalid_query', 400, 'A query parameter is invalid; "parameter" names it.'),
  MALFORMED_BODY: def('malformed_body', 400, 'The request body is not valid JSON or YAML; fix the syntax and send it again.'),
  UNEXPECTED_BODY: def('unexpected_body', 400, 'This endpoint takes no request body.'),
  UNAUTHORIZED: def('unauthorized', 401, 'Missing or invalid admin token; send "Authorization: Bearer <token>".'),
  FORBIDDEN: def('forbidden', 403, 'This token has the viewer role and may only read; writes need a token with the admin role.'),
  NOT_FOUND: def('not_found', 404, 'No such admin endpoint; GET /admin/openapi.json lists them.'),
  METHOD_NOT_ALLOWED: def('method_not_allowed', 405, 'This endpoint does not accept this method; see the Allow header.'),
  BODY_TOO_LARGE: def('body_too_large', 413, 'The request body is larger than this endpoint takes.'),
  UNSUPPORTED_MEDIA_TYPE: def('unsupported_media_type', 415, 'Send the body as application/json or application/yaml.'),
  INVALID_BODY: def('invalid_body', 422, 'The request body is not what this endpoint takes; "errors" says what is wrong.'),
  CONFLICT: def('conflict', 409, 'The request conflicts with the running configuration; the message says what to change.'),
  // -- config -----------------------------------------------------------------
  CONFIG_INVALID: def('config_invalid', 422, 'The configuration was refused and nothing was applied; the running config keeps serving. "errors" lists every problem by path.'),
  // -- admin thread -----------------------------------------------------------
  INTERNAL: def('internal_error', 500, 'The admin API failed unexpectedly; the error is logged.'),
  UNAVAILABLE: def('unavailable', 503, 'A store the admin API needs (the registry\'s Redis) cannot be reached; try again shortly.'),
});

export type AdminErrorName = keyof typeof AdminErrors;

/** Every code, for the OpenAPI Error schema. */
export const ADMIN_ERROR_CODES: readonly string[] = Object.values(AdminErrors).map((e) => e.code);

/** Thrown by handlers and the dispatcher; turned into the JSON error body. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly def: AdminErrorDef,
    message?: string,
    /** Extra fields inside `error` (`parameter`, `errors`). */
    readonly details: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message ?? def.message);
  }

  get status(): number {
    return this.def.status;
  }

  body(): { error: Record<string, unknown> } {
    return { error: { code: this.def.code, message: this.message, ...this.details } };
  }
}
