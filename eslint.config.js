import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/**',
      'node_modules/**',
      'coverage/**',
      'test-results/**',
      'examples/web/dist/**',
      '**/*.d.ts',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        console: 'readonly',
        process: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        setImmediate: 'readonly',
        queueMicrotask: 'readonly',
        URL: 'readonly',
        Buffer: 'readonly',
        TextEncoder: 'readonly',
        TextDecoder: 'readonly',
        performance: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'off',
    },
  },
  {
    // The client core must stay browser-safe: no Node built-ins.
    files: [
      'src/client/**/*.ts',
      'src/crypto/**/*.ts',
      'src/protocol/**/*.ts',
      'src/transport/memory.ts',
      'src/util/**/*.ts',
    ],
    ignores: ['src/client/stores/sqlite.ts', 'src/crypto/libsignal.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        // Bare module names as `paths` (a `crypto` pattern would also match ../crypto/*.js).
        { paths: ['fs', 'path', 'crypto', 'os', 'net', 'http'], patterns: ['node:*'] },
      ],
    },
  },
);
