/**
 * Secret redaction for anything the admin API shows of the config: the rule
 * lives in common/config/redact.ts, shared with log lines and validation
 * messages, so that a secret is hidden the same way wherever it is rendered.
 */
export { CREDENTIAL_HEADERS, REDACTED, SECRET_KEY, redactConfig as redact, redactUrl } from '../../common/config/redact.js';
