import { builtinModules } from 'node:module';
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
  ...boundaries(),
);

/**
 * The boundaries the code keeps by itself (issue 16): ESLint `no-restricted-imports`, one entry
 * per group of files with every restriction that applies to it (a later flat-config entry
 * replaces a rule's options, it does not merge them, so each file must match exactly one).
 * - Browser code (client, crypto, protocol, util, the memory and WebSocket client transports)
 *   imports no Node built-in.
 * - The client never imports the server; crypto never imports the client.
 * - A transport never imports another transport's file (shared WebSocket helpers live in
 *   ws-common.ts; the Node server half may re-export the client half's public names only).
 * - The server's Session reaches the server only through SessionHost (session-host.ts): it imports
 *   neither the façade (engine.ts) nor the parts behind it; and no part imports the façade.
 * - The memory server store takes its rules from the store kit (store-kit.ts) alone, the public
 *   module a store of one's own uses: it is the kit's worked example, so the kit cannot lack a
 *   rule a store needs without this failing.
 * test/lint-boundaries.test.ts proves each rule fails on a wrong import.
 */
function boundaries() {
  const nodeBuiltins = {
    paths: builtinModules.filter((m) => !m.startsWith('_')),
    patterns: ['node:*'],
    message: 'browser code: no Node built-ins (see eslint.config.js, boundaries)',
  };
  const noServer = {
    regex: '(^|/)server(/|$)|^postbox/server',
    message: 'the client never imports the server',
  };
  const noClient = { regex: '(^|/)client(/|$)|^postbox/client', message: 'crypto never imports the client' };
  const transport = (name) => ({
    regex: `^\\./${name}(\\.js)?$`,
    message: "a transport never imports another transport's file (shared WebSocket helpers: ws-common.ts)",
  });
  const entry = (files, { builtins = false, patterns = [], paths = [] }, ignores = []) => ({
    files,
    ignores,
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            ...(builtins ? nodeBuiltins.paths.map((name) => ({ name, message: nodeBuiltins.message })) : []),
            ...paths,
          ],
          patterns: [
            ...(builtins ? [{ group: nodeBuiltins.patterns, message: nodeBuiltins.message }] : []),
            ...patterns,
          ],
        },
      ],
    },
  });
  const serverParts = ['commit', 'routing', 'presence', 'typing', 'linking', 'key-directory', 'push-wake'];
  const noFacade = {
    regex: '^\\./engine(\\.js)?$',
    message: "the server's parts never import the façade (engine.ts); it hands them what they need",
  };
  const sessionOnlyHost = {
    regex: `^\\./(${serverParts.join('|')})(\\.js)?$`,
    message: 'a session reaches the server only through SessionHost (session-host.ts)',
  };
  return [
    entry(
      ['session', 'delivery', 'held-entries'].map((f) => `src/server/${f}.ts`),
      {
        patterns: [noFacade, sessionOnlyHost],
      },
    ),
    entry(
      [...serverParts, 'session-host', 'wire'].map((f) => `src/server/${f}.ts`),
      { patterns: [noFacade] },
    ),
    entry(['src/server/stores/memory.ts'], {
      patterns: [
        {
          regex:
            '^\\./(planner|relational|invites|gap-notices|directory)(\\.js)?$|^\\.\\./(quotas|users)(\\.js)?$',
          message:
            'the memory store takes its rules from the store kit (store-kit.ts), as a store of your own does',
        },
      ],
    }),
    entry(['src/client/**/*.ts'], { builtins: true, patterns: [noServer] }, ['src/client/stores/sqlite.ts']),
    entry(['src/client/stores/sqlite.ts'], { patterns: [noServer] }),
    entry(['src/crypto/**/*.ts'], { builtins: true, patterns: [noClient] }, ['src/crypto/libsignal.ts']),
    entry(['src/crypto/libsignal.ts'], { patterns: [noClient] }),
    entry(['src/protocol/**/*.ts', 'src/util/**/*.ts'], { builtins: true }),
    // postbox/media is browser code; its Node-only files are the `postbox/media/node` subpath and
    // the `node` export condition of `postbox/media` (index.node.ts).
    entry(['src/media/**/*.ts'], { builtins: true, patterns: [noServer] }, [
      'src/media/node.ts',
      'src/media/node-cipher.ts',
      'src/media/node-http.ts',
      'src/media/index.node.ts',
    ]),
    entry(['src/transport/memory.ts'], {
      builtins: true,
      patterns: [transport('websocket'), transport('websocket-client'), transport('ws-common')],
    }),
    entry(['src/transport/websocket-client.ts'], {
      builtins: true,
      patterns: [transport('memory'), transport('websocket')],
    }),
    entry(['src/transport/ws-common.ts'], {
      builtins: true,
      patterns: [transport('memory'), transport('websocket'), transport('websocket-client')],
    }),
    entry(['src/transport/websocket.ts'], {
      patterns: [transport('memory')],
      paths: [
        {
          name: './websocket-client.js',
          allowImportNames: [
            'websocketClientTransport',
            'WebSocketClientOptions',
            'WebSocketConstructor',
            'WebSocketConstructorOptions',
            'WebSocketLike',
          ],
          message:
            "only the client half's public names are re-exported here; shared helpers live in ws-common.ts",
        },
      ],
    }),
  ];
}
