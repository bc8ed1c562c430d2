import { defineConfig } from 'vitest/config';

// pool 'forks': a test that leaves a uWS app open inside a worker *thread*
// aborts the whole run (see ENVIRONMENT.md); processes contain the damage.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
