import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Lab tests share loop devices and the 2 cores: run files one at a time.
    fileParallelism: false,
    testTimeout: 60_000,
    reporters: ['default', './test/summary-reporter.ts'],
    hookTimeout: 60_000,
  },
});
